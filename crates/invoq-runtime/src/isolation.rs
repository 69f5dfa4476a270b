//! How a sandbox is fenced off from invoq, from the host and from other sandboxes (Linux).
//!
//! With [`SandboxIsolation::Namespaces`] (the default where invoq runs as root and the kernel
//! allows it) a `bootstrap` starts like this:
//!
//! ```text
//! invoq ──fork──> monitor (in invoq's namespaces; joins the sandbox's cgroup, unshares
//!                  │        mount, pid, ipc and uts namespaces, then waits)
//!                  └─fork──> pid 1 of a new pid namespace: enters the sandbox's network
//!                            namespace, builds a root of read-only system directories, the
//!                            code at /var/task (read-only) and a fresh /tmp, pivots into it,
//!                            mounts its own /proc, drops to a uid of its own, exec bootstrap
//! ```
//!
//! The network namespace is made by invoq beforehand, in a short-lived thread, which also
//! binds the Runtime API listener on that namespace's own `127.0.0.1:9001`: only processes
//! inside the sandbox can reach it. The monitor forwards pid 1's exit status as its own, so
//! invoq sees the bootstrap's status; both die with their parent (`PR_SET_PDEATHSIG`), and
//! when pid 1 dies the kernel kills everything else in its pid namespace.
//!
//! [`SandboxIsolation::Process`] is the fallback: the bootstrap runs as invoq's user, in its
//! own process group, with a clean environment; the cgroup (or rlimits) still apply.

use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Uid};
use tokio::process::Command;

use crate::cgroup::{Cgroup, CgroupRoot, PIDS_MAX, path_cstring};

/// The port of the Runtime API inside a sandbox's own network namespace, as on Lambda.
pub(crate) const SANDBOX_RUNTIME_API_PORT: u16 = 9001;
/// Where the function's code appears inside a namespace sandbox (`LAMBDA_TASK_ROOT`).
pub(crate) const TASK_ROOT: &str = "/var/task";
/// `LAMBDA_RUNTIME_DIR` inside a namespace sandbox.
pub(crate) const RUNTIME_DIR: &str = "/var/runtime";
/// Lambda's `/tmp` size when `EphemeralStorage` is not set.
const TMP_SIZE_MB: u32 = 512;
/// The first of the uids sandboxes run as (one uid per live sandbox).
pub const DEFAULT_SANDBOX_UID_BASE: u32 = 1_000_000_000;

/// Which isolation the operator asked for (`--sandbox`, `INVOQ_SANDBOX`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SandboxIsolation {
    /// Namespaces where the kernel and invoq's privileges allow, otherwise the process
    /// fallback with a warning.
    #[default]
    Auto,
    /// Namespaces or refuse to start.
    Namespaces,
    /// The fallback only: a clean environment, limits and process-tree cleanup.
    Process,
}

impl FromStr for SandboxIsolation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(SandboxIsolation::Auto),
            "namespaces" => Ok(SandboxIsolation::Namespaces),
            "process" => Ok(SandboxIsolation::Process),
            other => Err(format!(
                "unknown sandbox isolation {other:?}: use auto, namespaces or process"
            )),
        }
    }
}

/// AWS credentials handed to every function, from explicit configuration only.
#[derive(Clone, PartialEq, Eq)]
pub struct FunctionCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for FunctionCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl FromStr for FunctionCredentials {
    type Err = String;

    /// `ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]`.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut parts = text.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(id), Some(secret), token) if !id.is_empty() && !secret.is_empty() => {
                Ok(FunctionCredentials {
                    access_key_id: id.to_owned(),
                    secret_access_key: secret.to_owned(),
                    session_token: token.filter(|token| !token.is_empty()).map(str::to_owned),
                })
            }
            _ => Err("expected ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]".to_owned()),
        }
    }
}

/// How the runtime's sandboxes are set up.
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    pub isolation: SandboxIsolation,
    pub function_credentials: Option<FunctionCredentials>,
    pub uid_base: u32,
    /// Where managed runtimes' interface clients are installed; `<data-dir>/runtimes` when
    /// unset.
    pub runtimes_dir: Option<PathBuf>,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            isolation: SandboxIsolation::Auto,
            function_credentials: None,
            uid_base: DEFAULT_SANDBOX_UID_BASE,
            runtimes_dir: None,
        }
    }
}

/// What this runtime found it can do, decided once at start-up.
pub(crate) struct Isolation {
    /// Set when sandboxes get their own namespaces; holds the empty directory each one mounts
    /// its root on (in its own mount namespace, invisible to the host).
    namespaces: Option<SystemLayout>,
    cgroups: Option<CgroupRoot>,
    uids: Arc<Mutex<UidSlots>>,
    pub(crate) credentials: Option<FunctionCredentials>,
}

/// The host directories a namespace sandbox sees, read-only.
struct SystemLayout {
    root_mount_point: PathBuf,
    entries: Vec<SystemEntry>,
}

enum SystemEntry {
    Directory(&'static str),
    /// A merged-`/usr` link such as `/bin -> usr/bin`, recreated as it is.
    Symlink(&'static str, PathBuf),
}

/// Host directories shared read-only with every namespace sandbox: programs and libraries.
const SYSTEM_DIRECTORIES: [&str; 8] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/etc",
];
/// Device nodes a sandbox gets (bound from the host's /dev).
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

impl Isolation {
    /// Finds out what the kernel and invoq's privileges allow; `scratch` is a directory of
    /// invoq's own for mount points. Logs a warning for every protection it must leave out.
    pub(crate) async fn detect(options: &SandboxOptions, scratch: &Path) -> Result<Self, String> {
        let cgroups = match CgroupRoot::detect() {
            Ok(root) => Some(root),
            Err(reason) => {
                tracing::warn!(
                    %reason,
                    "sandboxes run without cgroups: MemorySize is enforced per process with \
                     rlimits (RLIMIT_DATA), Max Memory Used is the bootstrap's own peak, and \
                     only a pid namespace (when available) ends processes a bootstrap detaches"
                );
                None
            }
        };
        let mut isolation = Isolation {
            namespaces: None,
            cgroups,
            uids: Arc::new(Mutex::new(UidSlots::new(options.uid_base))),
            credentials: options.function_credentials.clone(),
        };
        if options.isolation == SandboxIsolation::Process {
            tracing::warn!(
                "sandbox isolation is off (--sandbox process): functions run as invoq's own \
                 user and can see its files, processes and other functions' Runtime APIs"
            );
            return Ok(isolation);
        }
        match isolation.probe_namespaces(scratch).await {
            Ok(layout) => isolation.namespaces = Some(layout),
            Err(reason) if options.isolation == SandboxIsolation::Namespaces => {
                return Err(format!("namespace sandboxes are not available: {reason}"));
            }
            Err(reason) => tracing::warn!(
                %reason,
                "namespace sandboxes are not available; functions run as invoq's own user \
                 and can see its files, processes and other functions' Runtime APIs"
            ),
        }
        Ok(isolation)
    }

    pub(crate) fn uses_namespaces(&self) -> bool {
        self.namespaces.is_some()
    }

    /// Starts a trial sandbox running `/bin/true`: namespaces count as available only if a
    /// real one works end to end.
    async fn probe_namespaces(&self, scratch: &Path) -> Result<SystemLayout, String> {
        if !Uid::effective().is_root() {
            return Err("invoq is not running as root".to_owned());
        }
        let layout = SystemLayout::of_host(scratch)?;
        let probe_code = scratch.join("probe-code");
        std::fs::create_dir_all(&probe_code).map_err(|error| error.to_string())?;
        let network = SandboxNetwork::create()
            .await
            .map_err(|error| format!("cannot create a network namespace: {error}"))?;
        let mut command = Command::new("/bin/true");
        command.env_clear();
        let uid = self.take_uid();
        let plan = LaunchPlan {
            invoq_pid: std::process::id(),
            cgroup_procs: Vec::new(),
            rlimits: Vec::new(),
            namespaces: Some(layout.plan(&probe_code, None, network.namespace, uid.uid)?),
        };
        plan.install(&mut command);
        let status = command
            .status()
            .await
            .map_err(|error| format!("trial sandbox: {error}"))?;
        if !status.success() {
            return Err(format!("trial sandbox exited with {status}"));
        }
        Ok(layout)
    }

    fn take_uid(&self) -> UidLease {
        let uid = self.uids.lock().expect("uid slots poisoned").take();
        UidLease {
            uid,
            slots: self.uids.clone(),
        }
    }

    /// Prepares a sandbox for `code_dir` (and a managed runtime's `runtime_dir`): its
    /// network (namespace mode), cgroup and uid, and the steps its first process runs
    /// before exec.
    pub(crate) async fn prepare(
        &self,
        name: &str,
        memory_size_mb: u32,
        code_dir: &Path,
        runtime_dir: Option<&Path>,
    ) -> Result<PreparedSandbox, String> {
        let memory_bytes = u64::from(memory_size_mb) * 1024 * 1024;
        let cgroup = match &self.cgroups {
            Some(root) => Some(
                root.create(name, memory_bytes)
                    .map_err(|error| format!("cannot create the sandbox cgroup: {error}"))?,
            ),
            None => None,
        };
        let mut rlimits = Vec::new();
        if cgroup.is_none() {
            rlimits.push((Resource::RLIMIT_DATA, memory_bytes));
        }
        let cgroup_procs = cgroup.as_ref().map(Cgroup::procs_files).unwrap_or_default();
        let Some(layout) = &self.namespaces else {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .map_err(|error| format!("cannot start the runtime api: {error}"))?;
            return Ok(PreparedSandbox {
                listener,
                plan: LaunchPlan {
                    invoq_pid: std::process::id(),
                    cgroup_procs,
                    rlimits,
                    namespaces: None,
                },
                cgroup,
                uid: None,
                task_root: code_dir.to_path_buf(),
                // Custom runtimes have no runtime directory; Lambda's points at the code.
                runtime_dir: runtime_dir.unwrap_or(code_dir).to_path_buf(),
            });
        };
        let network = SandboxNetwork::create()
            .await
            .map_err(|error| format!("cannot create the sandbox network: {error}"))?;
        let uid = self.take_uid();
        // Counted per uid, and the uid is the sandbox's own: a second bound beside pids.max.
        rlimits.push((Resource::RLIMIT_NPROC, u64::from(PIDS_MAX)));
        let namespaces = layout.plan(code_dir, runtime_dir, network.namespace, uid.uid)?;
        Ok(PreparedSandbox {
            listener: network.listener,
            plan: LaunchPlan {
                invoq_pid: std::process::id(),
                cgroup_procs,
                rlimits,
                namespaces: Some(namespaces),
            },
            cgroup,
            uid: Some(uid),
            task_root: PathBuf::from(TASK_ROOT),
            runtime_dir: PathBuf::from(RUNTIME_DIR),
        })
    }
}

/// Everything a sandbox needs before its process starts.
pub(crate) struct PreparedSandbox {
    /// The Runtime API listener, reachable only from inside the sandbox in namespace mode.
    pub(crate) listener: TcpListener,
    pub(crate) plan: LaunchPlan,
    pub(crate) cgroup: Option<Cgroup>,
    pub(crate) uid: Option<UidLease>,
    /// The code directory as the process sees it.
    pub(crate) task_root: PathBuf,
    /// `LAMBDA_RUNTIME_DIR` as the process sees it.
    pub(crate) runtime_dir: PathBuf,
}

/// A network namespace with only its own loopback, and the Runtime API listener in it.
struct SandboxNetwork {
    listener: TcpListener,
    namespace: OwnedFd,
}

impl SandboxNetwork {
    async fn create() -> std::io::Result<Self> {
        // unshare(CLONE_NEWNET) moves the calling thread for good, so it runs in a thread
        // of its own that ends right after; the socket and the fd keep the namespace alive.
        let (sender, receiver) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("invoq-netns".into())
            .spawn(move || {
                let _ = sender.send(Self::create_in_this_thread());
            })?;
        receiver
            .await
            .map_err(|_| std::io::Error::other("the network namespace thread panicked"))?
    }

    fn create_in_this_thread() -> std::io::Result<Self> {
        unshare(CloneFlags::CLONE_NEWNET)?;
        bring_loopback_up()?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, SANDBOX_RUNTIME_API_PORT))?;
        let namespace = std::fs::File::open("/proc/thread-self/ns/net")?.into();
        Ok(SandboxNetwork {
            listener,
            namespace,
        })
    }
}

/// Sets `IFF_UP` on `lo` of the calling thread's network namespace.
#[allow(unsafe_code)]
fn bring_loopback_up() -> std::io::Result<()> {
    use nix::libc;
    // SAFETY: a plain socket(2); the result is checked and owned right away.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `socket` is a fresh, valid descriptor nobody else owns.
    let socket = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(socket) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write the ifreq we own, on our socket.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl SystemLayout {
    fn of_host(scratch: &Path) -> Result<Self, String> {
        let root_mount_point = scratch.join("root");
        std::fs::create_dir_all(&root_mount_point)
            .map_err(|error| format!("{}: {error}", root_mount_point.display()))?;
        let entries = SYSTEM_DIRECTORIES
            .into_iter()
            .filter_map(|path| {
                let metadata = std::fs::symlink_metadata(path).ok()?;
                if metadata.is_symlink() {
                    Some(SystemEntry::Symlink(path, std::fs::read_link(path).ok()?))
                } else {
                    metadata.is_dir().then_some(SystemEntry::Directory(path))
                }
            })
            .collect();
        Ok(SystemLayout {
            root_mount_point,
            entries,
        })
    }

    /// The mount steps for one sandbox, as C strings ready for the child.
    fn plan(
        &self,
        code_dir: &Path,
        runtime_dir: Option<&Path>,
        network: OwnedFd,
        uid: u32,
    ) -> Result<NamespacePlan, String> {
        let root = &self.root_mount_point;
        let inside = |path: &str| root.join(path.trim_start_matches('/'));
        let c = |path: &Path| {
            path_cstring(path).ok_or_else(|| format!("{} has a NUL byte", path.display()))
        };
        let mut steps = Vec::new();
        for dir in [
            "/var",
            TASK_ROOT,
            RUNTIME_DIR,
            "/opt",
            "/proc",
            "/dev",
            "/tmp",
        ] {
            steps.push(MountStep::Directory(c(&inside(dir))?));
        }
        for entry in &self.entries {
            match entry {
                SystemEntry::Directory(path) => {
                    let target = c(&inside(path))?;
                    steps.push(MountStep::Directory(target.clone()));
                    steps.push(MountStep::BindReadOnly {
                        source: c(Path::new(path))?,
                        target,
                    });
                }
                SystemEntry::Symlink(path, to) => steps.push(MountStep::Symlink {
                    to: c(to)?,
                    link: c(&inside(path))?,
                }),
            }
        }
        steps.push(MountStep::BindReadOnly {
            source: c(code_dir)?,
            target: c(&inside(TASK_ROOT))?,
        });
        if let Some(runtime_dir) = runtime_dir {
            steps.push(MountStep::BindReadOnly {
                source: c(runtime_dir)?,
                target: c(&inside(RUNTIME_DIR))?,
            });
        }
        for device in DEVICES {
            let host = PathBuf::from("/dev").join(device);
            if host.exists() {
                let target = c(&inside(&format!("/dev/{device}")))?;
                steps.push(MountStep::File(target.clone()));
                steps.push(MountStep::BindDevice {
                    source: c(&host)?,
                    target,
                });
            }
        }
        for (link, to) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            steps.push(MountStep::Symlink {
                to: c(Path::new(to))?,
                link: c(&inside(&format!("/dev/{link}")))?,
            });
        }
        steps.push(MountStep::Tmpfs {
            target: c(&inside("/tmp"))?,
            options: CString::new(format!("mode=1777,size={TMP_SIZE_MB}m")).expect("no NUL"),
        });
        Ok(NamespacePlan {
            network,
            root: c(root)?,
            steps,
            uid,
        })
    }
}

/// What the child does between fork and exec, prepared in the parent: after the fork only
/// async-signal-safe system calls may run, so every path is a ready C string.
pub(crate) struct LaunchPlan {
    invoq_pid: u32,
    cgroup_procs: Vec<CString>,
    rlimits: Vec<(Resource, u64)>,
    namespaces: Option<NamespacePlan>,
}

pub(crate) struct NamespacePlan {
    network: OwnedFd,
    root: CString,
    steps: Vec<MountStep>,
    uid: u32,
}

enum MountStep {
    Directory(CString),
    File(CString),
    Symlink { to: CString, link: CString },
    BindReadOnly { source: CString, target: CString },
    BindDevice { source: CString, target: CString },
    Tmpfs { target: CString, options: CString },
}

const C_ROOT: &CStr = c"/";
const C_DOT: &CStr = c".";
const C_PROC: &CStr = c"/proc";
const C_TMPFS: &CStr = c"tmpfs";
const C_TASK_ROOT: &CStr = c"/var/task";
const C_ROOT_OPTIONS: &CStr = c"mode=0755,size=1m";

impl LaunchPlan {
    /// Makes `command` run this plan in its child before exec.
    #[allow(unsafe_code)]
    pub(crate) fn install(self, command: &mut Command) {
        if self.namespaces.is_none() {
            // Its own process group, so a kill reaches what the bootstrap started.
            command.process_group(0);
        }
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe work is allowed: it makes plain system calls on data prepared
        // before the fork and allocates nothing (errors are built from raw errno values).
        unsafe {
            command.pre_exec(move || self.run_in_child());
        }
    }

    fn run_in_child(&self) -> std::io::Result<()> {
        die_with_parent(Some(self.invoq_pid))?;
        for procs in &self.cgroup_procs {
            join_cgroup(procs)?;
        }
        if let Some(namespaces) = &self.namespaces {
            namespaces.enter()?;
        }
        for &(resource, limit) in &self.rlimits {
            setrlimit(resource, limit, limit)?;
        }
        Ok(())
    }
}

impl NamespacePlan {
    /// Runs in the monitor; returns only in pid 1 of the new pid namespace, which then
    /// execs the bootstrap.
    #[allow(unsafe_code)]
    fn enter(&self) -> std::io::Result<()> {
        unshare(
            CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWUTS,
        )?;
        // SAFETY: the monitor is single-threaded (a fresh child of fork), so forking again
        // is sound; both sides only make async-signal-safe calls until exec or _exit.
        match unsafe { nix::unistd::fork() }? {
            ForkResult::Parent { child } => monitor(child),
            ForkResult::Child => {}
        }
        die_with_parent(None)?;
        setns(&self.network, CloneFlags::CLONE_NEWNET)?;
        self.build_root()?;
        let id = self.uid;
        nix::unistd::setgroups(&[])?;
        nix::unistd::setresgid(Gid::from_raw(id), Gid::from_raw(id), Gid::from_raw(id))?;
        nix::unistd::setresuid(Uid::from_raw(id), Uid::from_raw(id), Uid::from_raw(id))?;
        // setuid programs under /usr must not hand the function root back.
        nix::sys::prctl::set_no_new_privs()?;
        Ok(())
    }

    fn build_root(&self) -> std::io::Result<()> {
        let none: Option<&CStr> = None;
        // Nothing mounted from here on propagates back to the host.
        mount(
            none,
            C_ROOT,
            none,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            none,
        )?;
        mount(
            Some(C_TMPFS),
            self.root.as_c_str(),
            Some(C_TMPFS),
            MsFlags::MS_NOSUID,
            Some(C_ROOT_OPTIONS),
        )?;
        for step in &self.steps {
            step.apply()?;
        }
        // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only
        // the new root (the technique runc uses, with no directory for the old root).
        nix::unistd::chdir(self.root.as_c_str())?;
        nix::unistd::pivot_root(C_DOT, C_DOT)?;
        umount2(C_DOT, MntFlags::MNT_DETACH)?;
        nix::unistd::chdir(C_ROOT)?;
        mount(
            Some(c"proc"),
            C_PROC,
            Some(c"proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            none,
        )?;
        mount(
            none,
            C_ROOT,
            none,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID,
            none,
        )?;
        nix::unistd::chdir(C_TASK_ROOT)?;
        Ok(())
    }
}

impl MountStep {
    fn apply(&self) -> std::io::Result<()> {
        let none: Option<&CStr> = None;
        match self {
            MountStep::Directory(path) => {
                match nix::unistd::mkdir(path.as_c_str(), Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                    Err(error) => return Err(error.into()),
                }
            }
            MountStep::File(path) => {
                let fd = nix::fcntl::open(
                    path.as_c_str(),
                    nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY,
                    Mode::from_bits_truncate(0o644),
                )?;
                drop(fd);
            }
            MountStep::Symlink { to, link } => {
                nix::unistd::symlinkat(to.as_c_str(), nix::fcntl::AT_FDCWD, link.as_c_str())?;
            }
            MountStep::BindReadOnly { source, target } => {
                bind(source, target, MsFlags::MS_REC)?;
                let read_only = MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV;
                mount(none, target.as_c_str(), none, read_only, none)?;
            }
            MountStep::BindDevice { source, target } => bind(source, target, MsFlags::empty())?,
            MountStep::Tmpfs { target, options } => mount(
                Some(C_TMPFS),
                target.as_c_str(),
                Some(C_TMPFS),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(options.as_c_str()),
            )?,
        }
        Ok(())
    }
}

fn bind(source: &CStr, target: &CStr, flags: MsFlags) -> nix::Result<()> {
    let none: Option<&CStr> = None;
    mount(Some(source), target, none, MsFlags::MS_BIND | flags, none)
}

/// Has the kernel SIGKILL this process when its parent dies, even by SIGKILL: a crashed
/// invoq must not leave function processes behind. `expected_parent` closes the race with a
/// parent that died before the call. (The signal follows the spawning *thread*; tokio spawns
/// from worker threads, which live as long as the runtime.)
fn die_with_parent(expected_parent: Option<u32>) -> std::io::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    if let Some(parent) = expected_parent
        && u32::try_from(nix::unistd::getppid().as_raw()).ok() != Some(parent)
    {
        return Err(std::io::Error::from(nix::errno::Errno::ESRCH));
    }
    Ok(())
}

fn join_cgroup(procs: &CStr) -> std::io::Result<()> {
    let fd = nix::fcntl::open(procs, nix::fcntl::OFlag::O_WRONLY, Mode::empty())?;
    // "0" means the writing process itself.
    nix::unistd::write(&fd, b"0")?;
    Ok(())
}

/// The monitor's life: wait for pid 1 of the sandbox and leave with its status, so invoq
/// sees the bootstrap's exit code or signal as its own child's.
#[allow(unsafe_code)]
fn monitor(child: nix::unistd::Pid) -> ! {
    use nix::libc;
    // Keep no descriptor but stdio: std's exec-error pipe in particular, whose closing tells
    // invoq that the bootstrap's exec went through.
    // SAFETY: close_range(2) only closes descriptors of this process.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    loop {
        match waitpid(child, None) {
            // SAFETY: _exit(2) ends the process without running any user-space code.
            Ok(WaitStatus::Exited(_, code)) => unsafe { libc::_exit(code) },
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                // SAFETY: resetting a disposition and raising a signal are async-signal-safe.
                unsafe {
                    libc::signal(signal as libc::c_int, libc::SIG_DFL);
                    libc::raise(signal as libc::c_int);
                    libc::_exit(128 + signal as libc::c_int);
                }
            }
            Err(nix::errno::Errno::EINTR) | Ok(_) => {}
            // SAFETY: as above.
            Err(_) => unsafe { libc::_exit(127) },
        }
    }
}

/// Uids handed to live sandboxes: `base + slot`, lowest free slot first.
struct UidSlots {
    base: u32,
    free: BTreeSet<u32>,
    next: u32,
}

impl UidSlots {
    fn new(base: u32) -> Self {
        UidSlots {
            base,
            free: BTreeSet::new(),
            next: 0,
        }
    }

    fn take(&mut self) -> u32 {
        let slot = self.free.pop_first().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.base + slot
    }

    fn give_back(&mut self, uid: u32) {
        self.free.insert(uid - self.base);
    }
}

/// A sandbox's uid, given back when the sandbox is gone.
pub(crate) struct UidLease {
    uid: u32,
    slots: Arc<Mutex<UidSlots>>,
}

impl Drop for UidLease {
    fn drop(&mut self) {
        self.slots
            .lock()
            .expect("uid slots poisoned")
            .give_back(self.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_parse_with_and_without_a_token() {
        let plain: FunctionCredentials = "AKID:secret".parse().unwrap();
        assert_eq!(plain.access_key_id, "AKID");
        assert_eq!(plain.secret_access_key, "secret");
        assert_eq!(plain.session_token, None);
        let token: FunctionCredentials = "AKID:secret:to:ken".parse().unwrap();
        assert_eq!(token.session_token.as_deref(), Some("to:ken"));
        assert!("AKID".parse::<FunctionCredentials>().is_err());
        assert!(":secret".parse::<FunctionCredentials>().is_err());
        assert!(!format!("{plain:?}").contains("secret"), "Debug hides it");
    }

    #[test]
    fn uids_are_reused_lowest_first() {
        let mut slots = UidSlots::new(100);
        assert_eq!((slots.take(), slots.take(), slots.take()), (100, 101, 102));
        slots.give_back(101);
        slots.give_back(100);
        assert_eq!((slots.take(), slots.take(), slots.take()), (100, 101, 103));
    }
}

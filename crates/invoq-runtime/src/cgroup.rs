//! Control groups for sandboxes: the `MemorySize` limit, Lambda's process limit, the real
//! memory peak for REPORT, the OOM-kill count, and a way to end a whole process tree.
//!
//! invoq creates one group per sandbox below its own group: on cgroup v2 in
//! `<own>/invoq-<pid>/` (moving invoq itself into `<own>/invoq-<pid>-supervisor` when the
//! "no internal processes" rule requires it), on cgroup v1 in `<hierarchy>/<own>/invoq-<pid>/`
//! of the memory and pids hierarchies. Groups left behind by an invoq that was killed are
//! emptied and removed when the next one starts.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Lambda's limit on processes and threads in one execution environment.
pub(crate) const PIDS_MAX: u32 = 1024;

/// Where this process creates sandbox groups.
#[derive(Debug)]
pub(crate) enum CgroupRoot {
    /// A cgroup v2 directory with the memory and pids controllers enabled for its children.
    V2(PathBuf),
    /// cgroup v1: invoq's directories in the memory and (if mounted) pids hierarchies.
    V1 {
        memory: PathBuf,
        pids: Option<PathBuf>,
    },
}

/// One sandbox's group. Dropping it kills what is left in it and removes it.
#[derive(Debug)]
pub(crate) struct Cgroup {
    v2: bool,
    /// The memory group first; on v1 the pids group after it.
    dirs: Vec<PathBuf>,
}

impl CgroupRoot {
    /// Finds a writable cgroup hierarchy with a memory controller, or says why there is none.
    pub(crate) fn detect() -> Result<Self, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|error| format!("cannot read /proc/self/mountinfo: {error}"))?;
        let membership = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|error| format!("cannot read /proc/self/cgroup: {error}"))?;
        let mounts = cgroup_mounts(&mountinfo);
        let own_path = |controller: &str| {
            membership.lines().find_map(|line| {
                let mut fields = line.splitn(3, ':');
                let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
                let matches = if controller.is_empty() {
                    controllers.is_empty()
                } else {
                    controllers.split(',').any(|name| name == controller)
                };
                matches.then(|| path.trim_start_matches('/').to_owned())
            })
        };
        let name = format!("invoq-{}", std::process::id());

        let mut reasons = Vec::new();
        if let (Some(mount), Some(path)) = (mounts.v2.as_ref(), own_path("")) {
            match setup_v2(&mount.join(path), &name) {
                Ok(root) => return Ok(root),
                Err(reason) => reasons.push(format!("cgroup v2: {reason}")),
            }
        }
        if let (Some(mount), Some(path)) = (mounts.v1_memory.as_ref(), own_path("memory")) {
            let own = mount.join(&path);
            remove_stale(&own);
            let memory = own.join(&name);
            match std::fs::create_dir_all(&memory) {
                Ok(()) => {
                    let pids = mounts.v1_pids.as_ref().and_then(|mount| {
                        let own = mount.join(own_path("pids")?);
                        remove_stale(&own);
                        let dir = own.join(&name);
                        std::fs::create_dir_all(&dir).ok().map(|()| dir)
                    });
                    return Ok(CgroupRoot::V1 { memory, pids });
                }
                Err(error) => reasons.push(format!("cgroup v1 memory: {error}")),
            }
        }
        if reasons.is_empty() {
            reasons.push("no cgroup hierarchy with a memory controller is mounted".to_owned());
        }
        Err(reasons.join("; "))
    }

    /// Creates a sandbox's group, limited to `memory_bytes` and [`PIDS_MAX`].
    pub(crate) fn create(&self, name: &str, memory_bytes: u64) -> std::io::Result<Cgroup> {
        let memory_limit = memory_bytes.to_string();
        let pids_limit = PIDS_MAX.to_string();
        let group = match self {
            CgroupRoot::V2(root) => {
                let dir = root.join(name);
                std::fs::create_dir(&dir)?;
                let group = Cgroup {
                    v2: true,
                    dirs: vec![dir.clone()],
                };
                std::fs::write(dir.join("memory.max"), &memory_limit)?;
                // No swap: the limit is on memory, as Lambda's is. (Absent without swap.)
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                std::fs::write(dir.join("pids.max"), &pids_limit)?;
                group
            }
            CgroupRoot::V1 { memory, pids } => {
                let dir = memory.join(name);
                std::fs::create_dir(&dir)?;
                let mut group = Cgroup {
                    v2: false,
                    dirs: vec![dir.clone()],
                };
                std::fs::write(dir.join("memory.limit_in_bytes"), &memory_limit)?;
                // Present only where swap accounting is on; it must not be below the limit.
                let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), &memory_limit);
                if let Some(pids) = pids {
                    let dir = pids.join(name);
                    std::fs::create_dir(&dir)?;
                    group.dirs.push(dir.clone());
                    std::fs::write(dir.join("pids.max"), &pids_limit)?;
                }
                group
            }
        };
        Ok(group)
    }
}

impl Cgroup {
    /// The `cgroup.procs` files a new process writes `0` to, to join this group.
    pub(crate) fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|dir| path_cstring(&dir.join("cgroup.procs")))
            .collect()
    }

    /// The highest memory use since the group was made, in bytes.
    pub(crate) fn peak_bytes(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        read_number(&self.dirs[0].join(file))
    }

    /// How many processes the kernel killed for going over the memory limit.
    pub(crate) fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.dirs[0].join(file))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix("oom_kill "))
                    .and_then(|count| count.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// SIGKILLs every process in the group.
    pub(crate) fn kill_all(&self) {
        kill_members(&self.dirs[0], self.v2);
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill_all();
        let dirs = std::mem::take(&mut self.dirs);
        // A killed process leaves its group a moment later; removal waits for that.
        if dirs.iter().all(|dir| std::fs::remove_dir(dir).is_ok()) {
            return;
        }
        let v2 = self.v2;
        std::thread::spawn(move || remove_when_empty(&dirs, v2));
    }
}

fn remove_when_empty(dirs: &[PathBuf], v2: bool) {
    for _ in 0..100 {
        kill_members(&dirs[0], v2);
        if dirs
            .iter()
            .filter(|dir| dir.exists())
            .all(|dir| std::fs::remove_dir(dir).is_ok())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::warn!(group = %dirs[0].display(), "a sandbox cgroup could not be removed");
}

fn kill_members(dir: &Path, v2: bool) {
    // cgroup.kill (Linux 5.14) kills atomically, including processes forking meanwhile.
    if v2 && std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    // Otherwise a few passes: a process forking while it is killed appears in the next one.
    for _ in 0..8 {
        let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
            return;
        };
        let pids: Vec<i32> = procs.lines().filter_map(|pid| pid.parse().ok()).collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

fn setup_v2(own: &Path, name: &str) -> Result<CgroupRoot, String> {
    let controllers = std::fs::read_to_string(own.join("cgroup.controllers"))
        .map_err(|error| format!("{}: {error}", own.display()))?;
    let available: Vec<&str> = controllers.split_whitespace().collect();
    if !available.contains(&"memory") || !available.contains(&"pids") {
        return Err(format!(
            "the memory and pids controllers are not delegated to {} (it has: {})",
            own.display(),
            controllers.trim()
        ));
    }
    remove_stale(own);
    let enable = |dir: &Path| std::fs::write(dir.join("cgroup.subtree_control"), "+memory +pids");
    if enable(own).is_err() {
        // A group with processes cannot hand controllers to children: move invoq into a
        // leaf of its own first, as container runtimes do.
        let supervisor = own.join(format!("{name}-supervisor"));
        std::fs::create_dir_all(&supervisor)
            .and_then(|()| std::fs::write(supervisor.join("cgroup.procs"), "0"))
            .and_then(|()| enable(own))
            .map_err(|error| format!("cannot enable controllers in {}: {error}", own.display()))?;
    }
    let root = own.join(name);
    std::fs::create_dir_all(&root)
        .and_then(|()| enable(&root))
        .map_err(|error| format!("{}: {error}", root.display()))?;
    Ok(CgroupRoot::V2(root))
}

/// Empties and removes the groups of invoq processes that no longer run.
fn remove_stale(own: &Path) {
    let Ok(entries) = std::fs::read_dir(own) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("invoq-")
            .and_then(|rest| rest.parse::<i32>().ok())
        else {
            continue;
        };
        if pid as u32 == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        let v2 = dir.join("cgroup.controllers").exists();
        if let Ok(children) = std::fs::read_dir(&dir) {
            for child in children.flatten().filter(|child| child.path().is_dir()) {
                kill_members(&child.path(), v2);
                let _ = std::fs::remove_dir(child.path());
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

#[derive(Default)]
struct CgroupMounts {
    v2: Option<PathBuf>,
    v1_memory: Option<PathBuf>,
    v1_pids: Option<PathBuf>,
}

/// Mount points of the cgroup filesystems, from `/proc/self/mountinfo`.
fn cgroup_mounts(mountinfo: &str) -> CgroupMounts {
    let mut mounts = CgroupMounts::default();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = before.split(' ').nth(4) else {
            continue;
        };
        let mut after = after.split(' ');
        let (fs_type, _source, options) = (after.next(), after.next(), after.next());
        let mount_point = PathBuf::from(mount_point);
        match fs_type {
            Some("cgroup2") => mounts.v2 = mounts.v2.or(Some(mount_point)),
            Some("cgroup") => {
                let options: Vec<&str> = options.unwrap_or_default().split(',').collect();
                if options.contains(&"memory") {
                    mounts.v1_memory.get_or_insert(mount_point.clone());
                }
                if options.contains(&"pids") {
                    mounts.v1_pids.get_or_insert(mount_point);
                }
            }
            _ => {}
        }
    }
    mounts
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub(crate) fn path_cstring(path: &Path) -> Option<CString> {
    CString::new(path.as_os_str().as_encoded_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_read_from_mountinfo() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
32 25 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
33 25 0:29 / /proc rw - proc proc rw";
        let mounts = cgroup_mounts(mountinfo);
        assert_eq!(mounts.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(
            mounts.v1_memory,
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(mounts.v1_pids, Some(PathBuf::from("/sys/fs/cgroup/pids")));
    }
}

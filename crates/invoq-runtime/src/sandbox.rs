//! A sandbox is one function process (a `bootstrap`, or a managed runtime's interface
//! client) with its own Runtime API server. It runs one
//! invocation at a time; a sandbox whose process timed out, crashed or failed to initialise
//! is thrown away, any other goes back to its pool warm.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use invoq_domain::limits::{INIT_TIMEOUT_SECONDS, SYNC_RESPONSE_MAX_BYTES};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::cgroup::Cgroup;
use crate::invocation_log::InvocationLog;
use crate::isolation::{FunctionCredentials, Isolation, TASK_ROOT, UidLease};
use crate::managed::InstalledRuntime;
use crate::runtime_api::{ApiEvent, PendingInvocation, RuntimeApi};
use crate::{FunctionSpec, Invocation};

/// How an invocation ended, before it is turned into Lambda's payloads.
#[derive(Debug)]
pub(crate) enum Outcome {
    Response(Bytes),
    /// The handler reported an error; the body is what it posted.
    FunctionError(Bytes),
    TimedOut,
    /// The platform failed the invocation (crash, bad entrypoint, oversized response).
    PlatformError {
        error_type: String,
        message: String,
    },
    /// The bootstrap reported an initialisation error.
    InitError {
        body: Bytes,
        error_type: Option<String>,
    },
}

/// How many times a finished run yields to let pipe readers catch up.
const OUTPUT_DRAIN_YIELDS: usize = 4;

pub(crate) struct Sandbox {
    child: Child,
    api: RuntimeApi,
    /// The process's output, shared with the tasks that read its pipes.
    log: Arc<Mutex<InvocationLog>>,
    /// Set once the process has taken its first invocation: init is over.
    initialized: bool,
    spawned_at: Instant,
    /// The sandbox's memory and process limits; dropping it ends every process in it.
    cgroup: Option<Cgroup>,
    /// In namespace mode the child is the monitor and the process tree lives in its own
    /// pid namespace; otherwise the child leads a process group of its own.
    namespaces: bool,
    /// The sandbox's own uid, free again once the sandbox is gone.
    _uid: Option<UidLease>,
}

/// What one run of a sandbox produced.
pub(crate) struct SandboxRun {
    pub(crate) outcome: Outcome,
    /// Whether the process may serve another invocation.
    pub(crate) reusable: bool,
    /// Output the process wrote during this invocation (and its init, on a cold start).
    pub(crate) output: String,
    pub(crate) init_duration: Option<Duration>,
    pub(crate) max_memory_used_mb: Option<u64>,
}

impl Sandbox {
    /// Starts the function's process, fenced off as `isolation` allows: `bootstrap` from
    /// `code_dir` for a custom runtime, the runtime interface client of `managed` for a
    /// managed one. The error is the reason, in Lambda's words, why no process could start.
    pub(crate) async fn spawn(
        spec: &FunctionSpec,
        code_dir: &Path,
        managed: Option<&InstalledRuntime>,
        isolation: &Isolation,
    ) -> Result<Self, String> {
        if managed.is_none() && !code_dir.join("bootstrap").is_file() {
            let task_root = if isolation.uses_namespaces() {
                Path::new(TASK_ROOT)
            } else {
                code_dir
            };
            return Err(format!(
                "Couldn't find valid bootstrap(s): [{}]",
                task_root.join("bootstrap").display()
            ));
        }
        let prepared = isolation
            .prepare(
                &format!("sandbox-{}", uuid::Uuid::new_v4().simple()),
                spec.memory_size_mb,
                code_dir,
                managed.map(|runtime| runtime.dir.as_path()),
            )
            .await?;
        let api = RuntimeApi::serve(prepared.listener)
            .map_err(|error| format!("cannot start the runtime api: {error}"))?;
        let mut environment = process_environment(
            spec,
            &prepared.task_root,
            &prepared.runtime_dir,
            &api.addr.to_string(),
            isolation.credentials.as_ref(),
        );
        let (program, args) = match managed {
            Some(runtime) => {
                for (name, value) in runtime.environment(&prepared.task_root, &prepared.runtime_dir)
                {
                    environment.insert(name.to_owned(), value);
                }
                runtime.command(&prepared.runtime_dir, &spec.handler, spec.memory_size_mb)
            }
            None => (prepared.task_root.join("bootstrap"), Vec::new()),
        };
        let mut command = Command::new(&program);
        command
            .args(args)
            .env_clear()
            .envs(environment)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if !isolation.uses_namespaces() {
            command.current_dir(code_dir);
        }
        prepared.plan.install(&mut command);
        let mut child = command
            .spawn()
            .map_err(|error| format!("fork/exec {}: {error}", program.display()))?;
        let log = Arc::new(Mutex::new(InvocationLog::default()));
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(copy_output(stdout, log.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(copy_output(stderr, log.clone()));
        }
        Ok(Sandbox {
            child,
            api,
            log,
            initialized: false,
            spawned_at: Instant::now(),
            cgroup: prepared.cgroup,
            namespaces: isolation.uses_namespaces(),
            _uid: prepared.uid,
        })
    }

    /// Runs one invocation: hands it to the process and waits for its answer, its exit or
    /// its deadline, whichever comes first.
    pub(crate) async fn run(&mut self, invocation: &Invocation) -> SandboxRun {
        let cold = !self.initialized;
        let pending = PendingInvocation {
            request_id: invocation.request_id.clone(),
            payload: invocation.payload.clone(),
            invoked_function_arn: invocation.invoked_function_arn.clone(),
            client_context: invocation.client_context.clone(),
            trace_id: invocation.trace_id.clone(),
            timeout: invocation.function.timeout,
        };
        let (outcome, reusable) = if self.api.invocations.send(pending).await.is_err() {
            let message = "the runtime api server stopped".to_owned();
            (
                Outcome::PlatformError {
                    error_type: "Runtime.Unknown".into(),
                    message,
                },
                false,
            )
        } else {
            self.await_outcome(&invocation.request_id).await
        };
        // Over its memory limit the kernel killed a process of this sandbox: Lambda ends the
        // whole execution environment and reports it as out of memory.
        let (outcome, reusable) = match &self.cgroup {
            Some(cgroup) if cgroup.oom_kills() > 0 => {
                let message = platform_message(
                    &invocation.request_id,
                    "Runtime exited with error: signal: killed",
                );
                let error_type = "Runtime.OutOfMemory".to_owned();
                (
                    Outcome::PlatformError {
                        error_type,
                        message,
                    },
                    false,
                )
            }
            _ => (outcome, reusable),
        };
        if !reusable {
            self.kill().await;
        }
        // Output the process wrote before answering is already in the pipe, but the reader
        // tasks may not have run yet. Yielding lets the scheduler poll the I/O driver and run
        // them, so the log ends with that output, without sleeping on the hot path.
        for _ in 0..OUTPUT_DRAIN_YIELDS {
            tokio::task::yield_now().await;
        }
        let output = self.log.lock().expect("sandbox log poisoned").take();
        SandboxRun {
            outcome,
            reusable,
            output,
            init_duration: cold.then(|| self.spawned_at.elapsed()),
            max_memory_used_mb: self.max_memory_used_mb(),
        }
    }

    async fn await_outcome(&mut self, request_id: &str) -> (Outcome, bool) {
        // Before the process takes the invocation it is initialising, which Lambda bounds
        // separately from the function timeout.
        let mut deadline = if self.initialized {
            Instant::now() + Duration::from_secs(u64::from(INIT_TIMEOUT_SECONDS))
        } else {
            self.spawned_at + Duration::from_secs(u64::from(INIT_TIMEOUT_SECONDS))
        };
        loop {
            tokio::select! {
                biased;
                event = self.api.events.recv() => match event {
                    Some(ApiEvent::Delivered { request_id: id, deadline: at }) if id == request_id => {
                        self.initialized = true;
                        deadline = at;
                    }
                    Some(ApiEvent::Response { request_id: id, body }) if id == request_id => {
                        return (Outcome::Response(body), true);
                    }
                    Some(ApiEvent::Error { request_id: id, body, error_type }) if id == request_id => {
                        return (error_outcome(body, error_type), true);
                    }
                    Some(ApiEvent::ResponseTooLarge { request_id: id }) if id == request_id => {
                        let message = format!(
                            "Response payload size exceeded maximum allowed payload size \
                             ({SYNC_RESPONSE_MAX_BYTES} bytes)."
                        );
                        let error_type = "Function.ResponseSizeTooLarge".to_owned();
                        return (Outcome::PlatformError { error_type, message }, true);
                    }
                    Some(ApiEvent::InitError { body, error_type }) => {
                        return (Outcome::InitError { body, error_type }, false);
                    }
                    // An answer for an earlier invocation that already ended: ignore it.
                    Some(_) => {}
                    None => {
                        let message = "the runtime api server stopped".to_owned();
                        return (Outcome::PlatformError { error_type: "Runtime.Unknown".into(), message }, false);
                    }
                },
                status = self.child.wait() => {
                    let message = platform_message(request_id, &exit_message(status.ok()));
                    return (Outcome::PlatformError { error_type: "Runtime.ExitError".into(), message }, false);
                }
                _ = tokio::time::sleep_until(deadline) => return (Outcome::TimedOut, false),
            }
        }
    }

    /// The sandbox's peak memory: the cgroup's, which counts every process in it; without
    /// cgroups the bootstrap's own (VmHWM), which only the fallback mode can read.
    fn max_memory_used_mb(&self) -> Option<u64> {
        const MIB: u64 = 1024 * 1024;
        match &self.cgroup {
            Some(cgroup) => cgroup.peak_bytes().map(|bytes| bytes.div_ceil(MIB)),
            None if !self.namespaces => self.child.id().and_then(bootstrap_peak_mb),
            None => None,
        }
    }

    /// Kills every process of the sandbox and reaps the child.
    async fn kill(&mut self) {
        self.kill_tree();
        let _ = self.child.kill().await;
    }

    fn kill_tree(&self) {
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill_all();
        }
        // In namespace mode killing the monitor is enough: pid 1 dies with it, and the pid
        // namespace with pid 1.
        if !self.namespaces
            && let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok())
        {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // kill_on_drop only reaches the child itself, not what the bootstrap started; the
        // cgroup, dropped with the sandbox, kills its own members.
        if !self.namespaces
            && let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok())
        {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

fn error_outcome(body: Bytes, error_type: Option<String>) -> Outcome {
    if body.is_empty() {
        let body = serde_json::json!({
            "errorMessage": "",
            "errorType": error_type.unwrap_or_else(|| "Unhandled".to_owned()),
        });
        return Outcome::FunctionError(Bytes::from(body.to_string()));
    }
    Outcome::FunctionError(body)
}

/// Lambda prefixes platform error messages with the request id.
pub(crate) fn platform_message(request_id: &str, message: &str) -> String {
    format!("RequestId: {request_id} Error: {message}")
}

fn exit_message(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(status) if status.success() => "Runtime exited without providing a reason".into(),
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("Runtime exited with error: exit status {code}"),
            (None, Some(signal)) => {
                format!("Runtime exited with error: signal: {}", signal_name(signal))
            }
            (None, None) => format!("Runtime exited with error: {status}"),
        },
        None => "Runtime exited without providing a reason".into(),
    }
}

/// A signal as Lambda's messages name it (the wording of Go's `os/exec`).
fn signal_name(signal: i32) -> String {
    let name = match Signal::try_from(signal) {
        Ok(Signal::SIGHUP) => "hangup",
        Ok(Signal::SIGINT) => "interrupt",
        Ok(Signal::SIGQUIT) => "quit",
        Ok(Signal::SIGILL) => "illegal instruction",
        Ok(Signal::SIGTRAP) => "trace/breakpoint trap",
        Ok(Signal::SIGABRT) => "aborted",
        Ok(Signal::SIGBUS) => "bus error",
        Ok(Signal::SIGFPE) => "floating point exception",
        Ok(Signal::SIGKILL) => "killed",
        Ok(Signal::SIGSEGV) => "segmentation fault",
        Ok(Signal::SIGPIPE) => "broken pipe",
        Ok(Signal::SIGALRM) => "alarm clock",
        Ok(Signal::SIGTERM) => "terminated",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}

/// Lambda's `PATH` for custom runtimes.
const LAMBDA_PATH: &str = "/usr/local/bin:/usr/bin/:/bin:/opt/bin";

/// The environment Lambda gives a function process (lambda-spec.md §8): the Runtime API
/// address, the variables the Rust `lambda_runtime` crate requires, credentials from invoq's
/// configuration, and the function's own variables. Nothing comes from invoq's environment.
fn process_environment(
    spec: &FunctionSpec,
    task_root: &Path,
    runtime_dir: &Path,
    runtime_api: &str,
    credentials: Option<&FunctionCredentials>,
) -> BTreeMap<String, String> {
    let mut environment = spec.environment.clone();
    if let Some(credentials) = credentials {
        let mut configured = vec![
            ("AWS_ACCESS_KEY_ID", credentials.access_key_id.clone()),
            (
                "AWS_SECRET_ACCESS_KEY",
                credentials.secret_access_key.clone(),
            ),
        ];
        if let Some(token) = &credentials.session_token {
            configured.push(("AWS_SESSION_TOKEN", token.clone()));
        }
        for (name, value) in configured {
            environment.entry(name.to_owned()).or_insert(value);
        }
    }
    let log_stream = format!(
        "{}/[{}]{}",
        time::OffsetDateTime::now_utc().date(),
        spec.version,
        uuid::Uuid::new_v4().simple()
    );
    let reserved = [
        ("AWS_LAMBDA_RUNTIME_API", runtime_api.to_owned()),
        ("AWS_LAMBDA_FUNCTION_NAME", spec.function_name.clone()),
        ("AWS_LAMBDA_FUNCTION_VERSION", spec.version.clone()),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            spec.memory_size_mb.to_string(),
        ),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{}", spec.function_name),
        ),
        ("AWS_LAMBDA_LOG_STREAM_NAME", log_stream),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".to_owned()),
        ("AWS_EXECUTION_ENV", format!("AWS_Lambda_{}", spec.runtime)),
        ("AWS_REGION", spec.region.clone()),
        ("AWS_DEFAULT_REGION", spec.region.clone()),
        ("_HANDLER", spec.handler.clone()),
        ("LAMBDA_TASK_ROOT", task_root.display().to_string()),
        ("LAMBDA_RUNTIME_DIR", runtime_dir.display().to_string()),
        ("PATH", LAMBDA_PATH.to_owned()),
        ("LANG", "en_US.UTF-8".to_owned()),
        ("TZ", ":UTC".to_owned()),
    ];
    for (name, value) in reserved {
        environment.insert(name.to_owned(), value);
    }
    environment
}

async fn copy_output(mut pipe: impl tokio::io::AsyncRead + Unpin, log: Arc<Mutex<InvocationLog>>) {
    let mut buffer = vec![0u8; 8192];
    while let Ok(read) = pipe.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&buffer[..read]);
        log.lock().expect("sandbox log poisoned").push_output(&text);
    }
}

/// Peak resident memory of a process, from `/proc/<pid>/status` (VmHWM).
fn bootstrap_peak_mb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/status"))).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes.div_ceil(1024))
}

//! A sandbox is one `bootstrap` process with its own Runtime API server. It runs one
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

use crate::invocation_log::InvocationLog;
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
    /// Starts `bootstrap` from `code_dir`. The error is the reason, in Lambda's words, why
    /// no process could start.
    pub(crate) async fn spawn(spec: &FunctionSpec, code_dir: &Path) -> Result<Self, String> {
        let bootstrap = code_dir.join("bootstrap");
        if !bootstrap.is_file() {
            return Err(format!(
                "Couldn't find valid bootstrap(s): [{}]",
                bootstrap.display()
            ));
        }
        let api = RuntimeApi::start()
            .await
            .map_err(|error| format!("cannot start the runtime api: {error}"))?;
        let mut command = Command::new(&bootstrap);
        command
            .current_dir(code_dir)
            .env_clear()
            .envs(process_environment(spec, code_dir, &api.addr.to_string()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills the bootstrap's children too.
            .process_group(0)
            .kill_on_drop(true);
        die_with_invoq(&mut command);
        let mut child = command
            .spawn()
            .map_err(|error| format!("fork/exec {}: {error}", bootstrap.display()))?;
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
            max_memory_used_mb: self.child.id().and_then(max_memory_used_mb),
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

    /// Kills the whole process group and reaps the process.
    async fn kill(&mut self) {
        self.kill_group();
        let _ = self.child.kill().await;
    }

    fn kill_group(&self) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // kill_on_drop only reaches the bootstrap itself, not what it started.
        self.kill_group();
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

/// Has the kernel kill the bootstrap when invoq dies, even by SIGKILL: otherwise a crashed
/// invoq would leave function processes running with nobody to serve their Runtime API.
/// (The signal fires when the spawning thread exits; tokio spawns from its worker threads,
/// which live as long as the runtime.)
#[allow(unsafe_code)]
fn die_with_invoq(command: &mut Command) {
    let invoq_pid = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe work is allowed. It makes two plain syscalls (prctl, getppid) and
    // allocates nothing: errors are built from raw errno values.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // invoq may have died before the prctl took effect.
            if u32::try_from(nix::unistd::getppid().as_raw()).ok() != Some(invoq_pid) {
                return Err(std::io::Error::from(nix::errno::Errno::ESRCH));
            }
            Ok(())
        });
    }
}

/// Lambda prefixes platform error messages with the request id.
pub(crate) fn platform_message(request_id: &str, message: &str) -> String {
    format!("RequestId: {request_id} Error: {message}")
}

fn exit_message(status: Option<ExitStatus>) -> String {
    match status {
        Some(status) if status.success() => "Runtime exited without providing a reason".into(),
        Some(status) => match status.code() {
            Some(code) => format!("Runtime exited with error: exit status {code}"),
            None => format!("Runtime exited with error: {status}"),
        },
        None => "Runtime exited without providing a reason".into(),
    }
}

/// The environment Lambda gives a function process (lambda-spec.md §8): the Runtime API
/// address, the variables the Rust `lambda_runtime` crate requires, and the user's own.
fn process_environment(
    spec: &FunctionSpec,
    code_dir: &Path,
    runtime_api: &str,
) -> BTreeMap<String, String> {
    let mut environment = spec.environment.clone();
    // Test credentials and endpoints pass through, so functions can reach the same AWS (or
    // LocalStack, or moto) as invoq itself.
    for name in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_EC2_METADATA_DISABLED",
    ] {
        if let Ok(value) = std::env::var(name) {
            environment.entry(name.to_owned()).or_insert(value);
        }
    }
    let task_root = code_dir.display().to_string();
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
        ("LAMBDA_TASK_ROOT", task_root.clone()),
        ("LAMBDA_RUNTIME_DIR", task_root),
        (
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
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
fn max_memory_used_mb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/status"))).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes.div_ceil(1024))
}

//! [`LocalRuntime`]: runs invocations on this machine, with concurrency limits, warm process
//! pools per function revision, and Lambda's platform error payloads.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use invoq_domain::limits::ACCOUNT_CONCURRENCY;
use serde_json::{Value, json};

use crate::code_store::CodeStore;
use crate::invocation_log::{InvocationLog, Report};
use crate::isolation::{Isolation, SandboxOptions};
use crate::log_archive::LogArchive;
use crate::managed::{
    InstallOutput, InstalledRuntime, ManagedRuntime, ManagedRuntimeError, ManagedRuntimes,
};
use crate::sandbox::{Outcome, Sandbox, SandboxRun, platform_message};
use crate::{
    BUILTIN_RUNTIME, FunctionSpec, Invocation, InvocationResult, PROCESS_RUNTIMES, RuntimeError,
    RuntimeService, ThrottleReason, builtin,
};

/// How long a warm process may sit idle before it is stopped, as Lambda recycles idle
/// execution environments after some minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs functions on this machine. Data lives under `<data-dir>/runtime/`: unpacked code and
/// each function's kept logs; managed runtimes under `<data-dir>/runtimes/` (or the
/// directory [`SandboxOptions::runtimes_dir`] names).
pub struct LocalRuntime {
    code_store: Arc<CodeStore>,
    isolation: Isolation,
    managed: ManagedRuntimes,
    logs: LogArchive,
    functions: Arc<FunctionMap>,
    account_in_flight: Arc<AtomicU32>,
}

type FunctionMap = Mutex<HashMap<String, FunctionState>>;

/// Per function: invocations in flight (for reserved concurrency) and the warm pool of its
/// current revision.
#[derive(Clone)]
struct FunctionState {
    in_flight: Arc<AtomicU32>,
    pool: Arc<SandboxPool>,
}

struct SandboxPool {
    revision_id: String,
    /// The package this revision runs, kept unpacked while the pool lives.
    code_sha256_hex: Option<String>,
    /// Warm processes with the time each went idle; the most recently used is reused first,
    /// so a shrinking load lets the others age out.
    idle: Mutex<Vec<(Instant, Sandbox)>>,
}

/// Holds one unit of function and account concurrency until dropped.
struct ConcurrencyPermit {
    counters: [Arc<AtomicU32>; 2],
}

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        for counter in &self.counters {
            counter.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl LocalRuntime {
    /// Opens the runtime's data in `data_dir`, finds out how sandboxes can be isolated on
    /// this host (see [`SandboxOptions`]), and starts stopping processes idle for longer than
    /// `idle_timeout`. Must be called within a Tokio runtime.
    pub async fn open(
        data_dir: &Path,
        idle_timeout: Duration,
        sandbox: SandboxOptions,
    ) -> std::io::Result<Self> {
        let root = data_dir.join("runtime");
        let isolation = Isolation::detect(&sandbox, &root.join("sandbox"))
            .await
            .map_err(std::io::Error::other)?;
        let code_store = Arc::new(CodeStore::open(root.join("code"))?);
        let runtimes_dir = sandbox
            .runtimes_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("runtimes"));
        let managed = ManagedRuntimes::scan(runtimes_dir).await;
        tracing::info!(offered = ?managed.offered(), "managed runtimes this host can run");
        let functions = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(reap_idle_sandboxes(
            Arc::downgrade(&functions),
            code_store.clone(),
            idle_timeout,
        ));
        Ok(LocalRuntime {
            code_store,
            isolation,
            managed,
            logs: LogArchive::open(root.join("logs"))?,
            functions,
            account_in_flight: Arc::new(AtomicU32::new(0)),
        })
    }

    /// Whether sandboxes get namespaces of their own (see [`crate::SandboxIsolation`]).
    pub fn isolates_with_namespaces(&self) -> bool {
        self.isolation.uses_namespaces()
    }

    /// The function's state, with a fresh pool when its revision changed: processes of the
    /// old revision are never reused, and idle ones are stopped now.
    fn function_state(&self, spec: &FunctionSpec) -> FunctionState {
        let mut functions = self.functions.lock().expect("runtime state poisoned");
        let state = functions
            .entry(spec.function_arn.clone())
            .or_insert_with(|| FunctionState {
                in_flight: Arc::new(AtomicU32::new(0)),
                pool: SandboxPool::new(spec),
            });
        if state.pool.revision_id != spec.revision_id {
            state.pool = SandboxPool::new(spec);
        }
        state.clone()
    }

    /// Takes a unit of concurrency, or refuses the invocation as Lambda throttles it.
    fn admit(
        &self,
        spec: &FunctionSpec,
        state: &FunctionState,
    ) -> Result<ConcurrencyPermit, RuntimeError> {
        let function_count = state.in_flight.fetch_add(1, Ordering::AcqRel);
        let account_count = self.account_in_flight.fetch_add(1, Ordering::AcqRel);
        // From here on, dropping the permit gives both units back.
        let permit = ConcurrencyPermit {
            counters: [state.in_flight.clone(), self.account_in_flight.clone()],
        };
        if spec
            .reserved_concurrency
            .is_some_and(|reserved| function_count >= reserved)
        {
            return Err(RuntimeError::Throttled(
                ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded,
            ));
        }
        if account_count >= ACCOUNT_CONCURRENCY {
            return Err(RuntimeError::Throttled(
                ThrottleReason::ConcurrentInvocationLimitExceeded,
            ));
        }
        Ok(permit)
    }

    async fn run_process(
        &self,
        invocation: &Invocation,
        pool: &SandboxPool,
    ) -> Result<SandboxRun, RuntimeError> {
        let spec = &invocation.function;
        let code_sha256_hex = spec.code_sha256_hex.as_deref().unwrap_or_default();
        let Some(code_dir) = self.code_store.unpacked(code_sha256_hex) else {
            return Err(RuntimeError::CodeMissing(code_sha256_hex.to_owned()));
        };
        let mut sandbox = match pool.take_idle() {
            Some(sandbox) => sandbox,
            None => match Sandbox::spawn(
                spec,
                &code_dir,
                self.managed_runtime(spec).await?.as_ref(),
                &self.isolation,
            )
            .await
            {
                Ok(sandbox) => sandbox,
                Err(reason) => {
                    return Ok(SandboxRun {
                        outcome: Outcome::PlatformError {
                            error_type: "Runtime.InvalidEntrypoint".into(),
                            message: platform_message(&invocation.request_id, &reason),
                        },
                        reusable: false,
                        output: String::new(),
                        init_duration: None,
                        max_memory_used_mb: None,
                    });
                }
            },
        };
        let run = sandbox.run(invocation).await;
        if run.reusable {
            pool.put_idle(sandbox);
        }
        Ok(run)
    }

    /// The managed runtime `spec` runs on, installed first if this host does not hold it
    /// yet; `None` for a custom runtime. A failed install did not run the function: the
    /// caller may retry it.
    async fn managed_runtime(
        &self,
        spec: &FunctionSpec,
    ) -> Result<Option<InstalledRuntime>, RuntimeError> {
        let Some(runtime) = ManagedRuntime::named(&spec.runtime) else {
            return Ok(None);
        };
        self.managed
            .ready(runtime.name, InstallOutput::Captured)
            .await
            .map(Some)
            .map_err(|error| RuntimeError::Internal(error.to_string()))
    }

    /// The runtimes functions may use here, for error messages.
    fn offered(&self) -> String {
        let mut offered: Vec<&str> = PROCESS_RUNTIMES.to_vec();
        offered.extend(self.managed.offered());
        offered.push(BUILTIN_RUNTIME);
        offered.join(", ")
    }
}

#[async_trait]
impl RuntimeService for LocalRuntime {
    async fn invoke(&self, invocation: Invocation) -> Result<InvocationResult, RuntimeError> {
        let spec = &invocation.function;
        let state = self.function_state(spec);
        let _permit = self.admit(spec, &state)?;
        let started = Instant::now();
        let run = if spec.runtime == BUILTIN_RUNTIME {
            SandboxRun {
                outcome: builtin::run(&invocation).await,
                reusable: true,
                output: String::new(),
                init_duration: None,
                max_memory_used_mb: None,
            }
        } else {
            self.run_process(&invocation, &state.pool).await?
        };
        let duration = started.elapsed();

        let mut log = InvocationLog::default();
        log.start(&invocation.request_id, &spec.version);
        log.push_output(&run.output);
        if matches!(run.outcome, Outcome::TimedOut) {
            log.push_output(&format!(
                "{} {} Task timed out after {:.2} seconds\n",
                time::OffsetDateTime::now_utc(),
                invocation.request_id,
                spec.timeout.as_secs_f64()
            ));
        }
        let report = Report {
            memory_size_mb: spec.memory_size_mb,
            max_memory_used_mb: run.max_memory_used_mb,
            init_duration: run.init_duration,
        };
        log.end(&invocation.request_id, duration, &report);
        let log_tail = log.tail();
        self.logs.append(&spec.function_name, log.take()).await;

        let (payload, function_error) = lambda_payload(run.outcome, &invocation);
        Ok(InvocationResult {
            payload,
            function_error,
            log_tail,
            executed_version: spec.version.clone(),
            duration,
        })
    }

    async fn put_code(&self, code_sha256_hex: &str, zip: Bytes) -> Result<(), RuntimeError> {
        self.code_store.put(code_sha256_hex, zip).await
    }

    async fn check_runtime(&self, runtime: &str) -> Result<(), RuntimeError> {
        if runtime == BUILTIN_RUNTIME || PROCESS_RUNTIMES.contains(&runtime) {
            return Ok(());
        }
        self.managed.check(runtime).map(drop).map_err(|error| {
            let reason = match error {
                ManagedRuntimeError::Unavailable { reason, .. } => reason,
                other => other.to_string(),
            };
            RuntimeError::UnsupportedRuntime(format!(
                "{reason}. This host offers: {}.",
                self.offered()
            ))
        })
    }

    async fn prepare_runtime(&self, runtime: &str) -> Result<(), RuntimeError> {
        self.check_runtime(runtime).await?;
        if ManagedRuntime::named(runtime).is_some() {
            self.managed
                .ready(runtime, InstallOutput::Captured)
                .await
                .map_err(|error| RuntimeError::UnsupportedRuntime(error.to_string()))?;
        }
        Ok(())
    }
}

impl SandboxPool {
    fn new(spec: &FunctionSpec) -> Arc<Self> {
        Arc::new(SandboxPool {
            revision_id: spec.revision_id.clone(),
            code_sha256_hex: spec.code_sha256_hex.clone(),
            idle: Mutex::new(Vec::new()),
        })
    }

    fn take_idle(&self) -> Option<Sandbox> {
        self.idle
            .lock()
            .expect("sandbox pool poisoned")
            .pop()
            .map(|(_, sandbox)| sandbox)
    }

    fn put_idle(&self, sandbox: Sandbox) {
        self.idle
            .lock()
            .expect("sandbox pool poisoned")
            .push((Instant::now(), sandbox));
    }

    /// Stops processes idle for `idle_timeout` or longer; returns how many are left.
    fn reap(&self, idle_timeout: Duration) -> usize {
        let mut idle = self.idle.lock().expect("sandbox pool poisoned");
        idle.retain(|(since, _)| since.elapsed() < idle_timeout);
        idle.len()
    }
}

/// Stops idle processes past `idle_timeout`, forgets functions with nothing running and
/// nothing warm (deleted ones among them), and removes unpacked code no function runs any
/// more, until the runtime is dropped. Removed code is deployed again on its next cold start.
async fn reap_idle_sandboxes(
    functions: Weak<FunctionMap>,
    code_store: Arc<CodeStore>,
    idle_timeout: Duration,
) {
    let period = (idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
    loop {
        tokio::time::sleep(period).await;
        let Some(functions) = functions.upgrade() else {
            return;
        };
        let removed = {
            let mut functions = functions.lock().expect("runtime state poisoned");
            // A permit or an admission in progress holds a second reference to `in_flight`.
            functions.retain(|_, state| {
                state.pool.reap(idle_timeout) > 0 || Arc::strong_count(&state.in_flight) > 1
            });
            // Under the lock: a cold start registers its pool (and so its code) before it
            // looks the code up, so it either keeps the code or finds it gone and redeploys.
            let in_use = functions
                .values()
                .filter_map(|state| state.pool.code_sha256_hex.clone())
                .collect();
            code_store.remove_unused(&in_use, idle_timeout)
        };
        if !removed.is_empty() {
            tokio::task::spawn_blocking(move || {
                for dir in removed {
                    let _ = std::fs::remove_dir_all(dir);
                }
            });
        }
    }
}

/// Lambda's payload and `X-Amz-Function-Error` for an outcome (lambda-spec.md §1).
fn lambda_payload(outcome: Outcome, invocation: &Invocation) -> (Bytes, Option<String>) {
    let unhandled = Some("Unhandled".to_owned());
    match outcome {
        Outcome::Response(body) => (body, None),
        Outcome::FunctionError(body) => (body, unhandled),
        Outcome::TimedOut => {
            let message = format!(
                "Task timed out after {:.2} seconds",
                invocation.function.timeout.as_secs_f64()
            );
            let body = json!({
                "errorType": "Sandbox.Timedout",
                "errorMessage": platform_message(&invocation.request_id, &message),
            });
            (Bytes::from(body.to_string()), unhandled)
        }
        Outcome::PlatformError {
            error_type,
            message,
        } => {
            let body = json!({ "errorType": error_type, "errorMessage": message });
            (Bytes::from(body.to_string()), unhandled)
        }
        Outcome::InitError { body, error_type } => {
            // Lambda answers with the init error as posted, marked with an empty request id.
            let mut error = match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(error)) => error,
                _ => serde_json::Map::from_iter([(
                    "errorMessage".to_owned(),
                    Value::from(String::from_utf8_lossy(&body).into_owned()),
                )]),
            };
            if !error.contains_key("errorType") {
                let error_type = error_type.unwrap_or_else(|| "Runtime.Unknown".to_owned());
                error.insert("errorType".into(), error_type.into());
            }
            error.insert("requestId".into(), "".into());
            (Bytes::from(Value::Object(error).to_string()), unhandled)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write;

    use sha2::{Digest, Sha256};

    use super::*;

    /// A bootstrap that answers every invocation with a name of its sandbox, and keeps a
    /// process of that name running (pids say nothing: each sandbox's bootstrap is pid 1).
    const PID_BOOTSTRAP: &str = r#"#!/bin/sh
api="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
headers="$(mktemp)"
sandbox="$(cat /proc/sys/kernel/random/uuid)"
cp /bin/sleep "/tmp/marker-$sandbox" && "/tmp/marker-$sandbox" 600 &
while event="$(curl -sS -D "$headers" "$api/invocation/next")"; do
  id="$(grep -i '^lambda-runtime-aws-request-id:' "$headers" | tr -d '\r' | cut -d' ' -f2)"
  printf '{"sandbox":"%s"}' "$sandbox" | curl -sS -X POST "$api/invocation/$id/response" --data-binary @- >/dev/null
done
"#;

    /// How many processes on this host have `marker` in their command line.
    fn processes_named(marker: &str) -> usize {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
            .filter(|cmdline| String::from_utf8_lossy(cmdline).contains(marker))
            .count()
    }

    fn zip_of(bootstrap: &str) -> Bytes {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        zip.start_file("bootstrap", options).unwrap();
        zip.write_all(bootstrap.as_bytes()).unwrap();
        Bytes::from(zip.finish().unwrap().into_inner())
    }

    fn invocation(code_sha256_hex: &str) -> Invocation {
        Invocation {
            function: FunctionSpec {
                function_name: "pid".into(),
                function_arn: "arn:aws:lambda:us-east-1:000000000000:function:pid".into(),
                version: "$LATEST".into(),
                runtime: "provided.al2023".into(),
                handler: "pid".into(),
                timeout: Duration::from_secs(3),
                memory_size_mb: 128,
                environment: BTreeMap::new(),
                code_sha256_hex: Some(code_sha256_hex.into()),
                revision_id: "r1".into(),
                reserved_concurrency: None,
                region: "us-east-1".into(),
            },
            request_id: invoq_domain::new_request_id(),
            payload: Bytes::from_static(b"{}"),
            invoked_function_arn: "arn:aws:lambda:us-east-1:000000000000:function:pid".into(),
            client_context: None,
            attempt: 1,
            trace_id: None,
        }
    }

    #[tokio::test]
    async fn idle_processes_are_stopped_after_the_idle_timeout() {
        let data = tempfile::tempdir().unwrap();
        let runtime = LocalRuntime::open(
            data.path(),
            Duration::from_millis(200),
            SandboxOptions::default(),
        )
        .await
        .unwrap();
        let zip = zip_of(PID_BOOTSTRAP);
        let sha = format!("{:x}", Sha256::digest(&zip));
        runtime.put_code(&sha, zip).await.unwrap();

        let first = runtime.invoke(invocation(&sha)).await.unwrap();
        let second = runtime.invoke(invocation(&sha)).await.unwrap();
        assert_eq!(
            first.payload, second.payload,
            "warm process reused within the timeout"
        );
        let sandbox: serde_json::Value = serde_json::from_slice(&first.payload).unwrap();
        let marker = format!("marker-{}", sandbox["sandbox"].as_str().unwrap());
        assert_eq!(processes_named(&marker), 1, "the sandbox runs");

        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            processes_named(&marker),
            0,
            "idle sandbox stopped, with its children"
        );
        assert!(
            runtime.functions.lock().unwrap().is_empty(),
            "idle function forgotten"
        );
        // Code no function runs is removed with it; the caller deploys it again.
        let missing = runtime.invoke(invocation(&sha)).await.unwrap_err();
        assert_eq!(missing, RuntimeError::CodeMissing(sha.clone()));
        runtime.put_code(&sha, zip_of(PID_BOOTSTRAP)).await.unwrap();
        let third = runtime.invoke(invocation(&sha)).await.unwrap();
        assert_ne!(
            third.payload, first.payload,
            "a fresh process serves the next invoke"
        );
    }

    #[tokio::test]
    async fn code_is_checked_against_its_digest() {
        let data = tempfile::tempdir().unwrap();
        let runtime =
            LocalRuntime::open(data.path(), DEFAULT_IDLE_TIMEOUT, SandboxOptions::default())
                .await
                .unwrap();
        let error = runtime
            .put_code(&"0".repeat(64), zip_of("#!/bin/sh\n"))
            .await
            .unwrap_err();
        assert!(matches!(error, RuntimeError::InvalidCode(_)), "{error:?}");
        let missing = runtime
            .invoke(invocation(&"1".repeat(64)))
            .await
            .unwrap_err();
        assert_eq!(missing, RuntimeError::CodeMissing("1".repeat(64)));
    }
}

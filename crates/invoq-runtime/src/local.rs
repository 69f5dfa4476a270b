//! [`LocalRuntime`]: runs invocations on this machine, with concurrency limits, warm process
//! pools per function revision, and Lambda's platform error payloads.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use invoq_domain::limits::ACCOUNT_CONCURRENCY;
use serde_json::{Value, json};

use crate::code_store::CodeStore;
use crate::invocation_log::{InvocationLog, Report};
use crate::sandbox::{Outcome, Sandbox, SandboxRun, platform_message};
use crate::{
    BUILTIN_RUNTIME, FunctionSpec, Invocation, InvocationResult, RuntimeError, RuntimeService,
    ThrottleReason, builtin,
};

/// Runs functions on this machine. Data lives under `<data-dir>/runtime/`: unpacked code and
/// each function's kept logs.
pub struct LocalRuntime {
    code_store: CodeStore,
    log_dir: PathBuf,
    functions: Mutex<HashMap<String, FunctionState>>,
    account_in_flight: Arc<AtomicU32>,
}

/// Per function: invocations in flight (for reserved concurrency) and the warm pool of its
/// current revision.
#[derive(Clone)]
struct FunctionState {
    in_flight: Arc<AtomicU32>,
    pool: Arc<SandboxPool>,
}

struct SandboxPool {
    revision_id: String,
    idle: Mutex<Vec<Sandbox>>,
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
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let root = data_dir.join("runtime");
        let log_dir = root.join("logs");
        std::fs::create_dir_all(&log_dir)?;
        Ok(LocalRuntime {
            code_store: CodeStore::open(root.join("code"))?,
            log_dir,
            functions: Mutex::new(HashMap::new()),
            account_in_flight: Arc::new(AtomicU32::new(0)),
        })
    }

    /// The function's state, with a fresh pool when its revision changed: processes of the
    /// old revision are never reused, and idle ones are stopped now.
    fn function_state(&self, spec: &FunctionSpec) -> FunctionState {
        let mut functions = self.functions.lock().expect("runtime state poisoned");
        let state = functions
            .entry(spec.function_arn.clone())
            .or_insert_with(|| FunctionState {
                in_flight: Arc::new(AtomicU32::new(0)),
                pool: SandboxPool::new(&spec.revision_id),
            });
        if state.pool.revision_id != spec.revision_id {
            state.pool = SandboxPool::new(&spec.revision_id);
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
            None => match Sandbox::spawn(spec, &code_dir).await {
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

    /// Keeps the invocation's log in `<data-dir>/runtime/logs/<function>.log`.
    fn archive_log(&self, function_name: &str, log: &str) {
        let path = self.log_dir.join(format!("{function_name}.log"));
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(log.as_bytes()));
        if let Err(error) = appended {
            tracing::warn!(%error, path = %path.display(), "cannot keep function log");
        }
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
        self.archive_log(&spec.function_name, &log.take());

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
}

impl SandboxPool {
    fn new(revision_id: &str) -> Arc<Self> {
        Arc::new(SandboxPool {
            revision_id: revision_id.to_owned(),
            idle: Mutex::new(Vec::new()),
        })
    }

    fn take_idle(&self) -> Option<Sandbox> {
        self.idle.lock().expect("sandbox pool poisoned").pop()
    }

    fn put_idle(&self, sandbox: Sandbox) {
        self.idle
            .lock()
            .expect("sandbox pool poisoned")
            .push(sandbox);
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

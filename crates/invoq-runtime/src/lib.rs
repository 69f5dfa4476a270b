//! invoq-runtime runs functions. It owns the function processes (`bootstrap` executables that
//! speak Lambda's Runtime API) and the builtin handlers, and answers one question: "run this
//! invocation and tell me what the function said".
//!
//! The service is the [`RuntimeService`] trait. [`LocalRuntime`] implements it on this
//! machine; [`grpc::RuntimeGrpcClient`] implements it over gRPC, and
//! [`grpc::RuntimeGrpcServer`] exposes any implementation as a gRPC server. The all-in-one
//! process hands the frontend a `LocalRuntime` directly; the split deployment puts the gRPC
//! pair in between. Both run the same code.
//!
//! Boundary: this crate knows nothing of the HTTP API, the control plane or queues. It gets a
//! complete [`FunctionSpec`] with every invocation and keeps no function registry of its own.

mod builtin;
mod cgroup;
mod code_store;
pub mod grpc;
mod invocation_log;
mod isolation;
mod local;
mod log_archive;
pub mod managed;
pub mod package;
mod runtime_api;
mod sandbox;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use isolation::{
    DEFAULT_SANDBOX_UID_BASE, FunctionCredentials, SandboxIsolation, SandboxOptions,
};
pub use local::{DEFAULT_IDLE_TIMEOUT, LocalRuntime};
pub use managed::{MANAGED_RUNTIMES, ManagedRuntime};

/// The `Runtime` value that selects invoq's builtin handlers.
pub const BUILTIN_RUNTIME: &str = "invoq.builtin";
/// The custom runtimes whose `bootstrap` invoq runs as a process.
pub const PROCESS_RUNTIMES: [&str; 3] = ["provided", "provided.al2", "provided.al2023"];
/// Handlers of the builtin runtime.
pub const BUILTIN_HANDLERS: [&str; 4] = ["echo", "fail", "sleep", "flaky"];

/// What the runtime needs to run a version of a function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionSpec {
    pub function_name: String,
    /// Unqualified ARN.
    pub function_arn: String,
    pub version: String,
    pub runtime: String,
    pub handler: String,
    pub timeout: Duration,
    pub memory_size_mb: u32,
    pub environment: BTreeMap<String, String>,
    /// Hex SHA-256 of the deployment package, `None` for builtins without code.
    pub code_sha256_hex: Option<String>,
    /// Changes with every code or configuration change; warm processes are kept per revision.
    pub revision_id: String,
    pub reserved_concurrency: Option<u32>,
    pub region: String,
}

/// One invocation to run.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub function: FunctionSpec,
    pub request_id: String,
    pub payload: Bytes,
    /// The ARN as the caller named the function, qualifier included.
    pub invoked_function_arn: String,
    /// Decoded client context JSON.
    pub client_context: Option<String>,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub trace_id: Option<String>,
}

/// What the function answered. A function error is a result too, not an `Err`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvocationResult {
    pub payload: Bytes,
    /// `Some("Unhandled")` when the function failed: handler error, timeout, crash, init error.
    pub function_error: Option<String>,
    /// START / output / END / REPORT, at most the last 4 KB.
    pub log_tail: String,
    pub executed_version: String,
    pub duration: Duration,
}

/// Why an invocation could not run at all. None of these means the function ran.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("throttled: {0}")]
    Throttled(ThrottleReason),
    /// The runtime does not hold this deployment package yet: put it, then invoke again.
    #[error("code {0} is not deployed on this runtime")]
    CodeMissing(String),
    #[error("invalid deployment package: {0}")]
    InvalidCode(String),
    /// This runtime cannot run functions of that `Runtime`; the message says why and what
    /// it offers instead.
    #[error("{0}")]
    UnsupportedRuntime(String),
    #[error("runtime failure: {0}")]
    Internal(String),
}

/// Which concurrency limit refused an invocation (the `Reason` of TooManyRequestsException).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThrottleReason {
    /// The function's reserved concurrency is used up, or is zero.
    ReservedFunctionConcurrentInvocationLimitExceeded,
    /// The account's concurrency is used up.
    ConcurrentInvocationLimitExceeded,
}

impl ThrottleReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded => {
                "ReservedFunctionConcurrentInvocationLimitExceeded"
            }
            ThrottleReason::ConcurrentInvocationLimitExceeded => {
                "ConcurrentInvocationLimitExceeded"
            }
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded,
            ThrottleReason::ConcurrentInvocationLimitExceeded,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == text)
    }
}

impl std::fmt::Display for ThrottleReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The runtime service: run invocations, accept deployment packages.
#[async_trait]
pub trait RuntimeService: Send + Sync + 'static {
    /// Runs one invocation to completion (or to its timeout).
    async fn invoke(&self, invocation: Invocation) -> Result<InvocationResult, RuntimeError>;

    /// Stores a deployment package under its hex SHA-256. Idempotent.
    async fn put_code(&self, code_sha256_hex: &str, zip: Bytes) -> Result<(), RuntimeError>;

    /// Whether functions of this `Runtime` can run here, answered at once (CreateFunction
    /// asks): `UnsupportedRuntime` says why not.
    async fn check_runtime(&self, runtime: &str) -> Result<(), RuntimeError>;

    /// Readies a runtime for its first cold start: installs a managed runtime's interface
    /// client if this host does not hold it yet (while the function is Pending).
    async fn prepare_runtime(&self, runtime: &str) -> Result<(), RuntimeError>;
}

/// Runs an invocation, first handing the runtime the deployment package if it does not hold
/// it yet (a runtime that restarted empty, or joined later). `fetch_code` loads a package by
/// its hex SHA-256 from wherever the caller keeps packages.
pub async fn invoke_deploying<F, Fut>(
    runtime: &dyn RuntimeService,
    invocation: Invocation,
    fetch_code: F,
) -> Result<InvocationResult, RuntimeError>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<Bytes, RuntimeError>>,
{
    match runtime.invoke(invocation.clone()).await {
        Err(RuntimeError::CodeMissing(code_sha256_hex)) => {
            let zip = fetch_code(code_sha256_hex.clone()).await?;
            runtime.put_code(&code_sha256_hex, zip).await?;
            runtime.invoke(invocation).await
        }
        other => other,
    }
}

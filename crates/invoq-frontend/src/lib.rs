//! invoq-frontend serves Lambda's REST API: the control plane (functions, concurrency) and
//! Invoke. Callers are boto3, the AWS CLI and aws-sdk-rust with only the endpoint changed, so
//! paths, status codes, JSON fields and error texts follow botocore's service model and
//! lambda-spec.md exactly.
//!
//! Entry point: [`Frontend::open`] then [`Frontend::router`]. Functions run through any
//! [`RuntimeService`]: the in-process `LocalRuntime` or a gRPC client.
//!
//! Boundary: no process management and no function execution here; the frontend validates,
//! records and forwards.

mod auth;
mod configuration;
mod event_invoke_config;
mod event_source_mappings;
mod function_store;
mod functions;
pub mod grpc;
mod http;
mod invoke;
mod metrics;
mod queues;
pub mod server;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use invoq_domain::asynchronous::{AsyncSettings, EventInvokeConfig, JsonText};
use invoq_domain::recursion::RecursiveLoop;
use invoq_domain::{ApiError, FunctionRef, Location};
use invoq_queue::EventQueue;
use invoq_runtime::{FunctionSpec, RuntimeError, RuntimeService};

pub use crate::auth::{AccessKeys, AccessKeysError};
pub use crate::event_source_mappings::EventSourceChecker;
use crate::function_store::{FunctionRecord, FunctionState, FunctionStore, UpdateStatus};
use crate::metrics::Metrics;

/// Deployment packages arrive base64-encoded in JSON: 50 MB zipped, about 70 MB on the wire.
const CONTROL_PLANE_BODY_LIMIT: usize = 70 * 1024 * 1024;

/// The HTTP API's shared state.
/// A function as the retry worker sees it: its spec and everything its async settings are
/// made of.
#[derive(Clone, Debug)]
pub struct AsyncConfiguration {
    pub spec: FunctionSpec,
    pub event_invoke_config: Option<EventInvokeConfig>,
    pub dead_letter_target_arn: Option<String>,
    pub recursive_loop: RecursiveLoop,
}

pub struct Frontend {
    location: Location,
    store: FunctionStore,
    runtime: Arc<dyn RuntimeService>,
    /// Where Event invocations go: in process, the queue service, or SQS.
    queue: Arc<dyn EventQueue>,
    metrics: Metrics,
    mappings: event_source_mappings::MappingStore,
    event_source_checker: std::sync::OnceLock<Arc<dyn EventSourceChecker>>,
    /// Other services' counters, rendered after the frontend's own at `/metrics`.
    extra_metrics: std::sync::Mutex<Vec<MetricsSource>>,
}

/// Renders a service's counters in Prometheus' text format.
pub type MetricsSource = Box<dyn Fn() -> String + Send + Sync>;

impl Frontend {
    /// Opens the function registry in `data_dir` and resumes deployments a restart cut short.
    pub fn open(
        location: Location,
        data_dir: &Path,
        runtime: Arc<dyn RuntimeService>,
        queue: Arc<dyn EventQueue>,
    ) -> std::io::Result<Arc<Self>> {
        let frontend = Arc::new(Frontend {
            location,
            store: FunctionStore::open(data_dir)?,
            mappings: event_source_mappings::MappingStore::open(data_dir)?,
            event_source_checker: std::sync::OnceLock::new(),
            runtime,
            queue,
            metrics: Metrics::default(),
            extra_metrics: std::sync::Mutex::new(Vec::new()),
        });
        for name in frontend.store.settling() {
            tokio::spawn(frontend.clone().settle(name));
        }
        Ok(frontend)
    }

    /// The Lambda REST API; with `access_keys`, every request but `GET /metrics` must be
    /// SigV4-signed with one of them ([`auth`]).
    pub fn router(self: &Arc<Self>, access_keys: Option<Arc<AccessKeys>>) -> Router {
        let functions = "/2015-03-31/functions";
        let router = Router::new()
            .route(functions, post(functions::create).get(functions::list))
            .route(
                "/2015-03-31/functions/",
                post(functions::create).get(functions::list),
            )
            .route(
                &format!("{functions}/{{function_name}}"),
                get(functions::get).delete(functions::delete),
            )
            .route(
                &format!("{functions}/{{function_name}}/configuration"),
                get(functions::get_configuration).put(functions::update_configuration),
            )
            .route(
                &format!("{functions}/{{function_name}}/code"),
                put(functions::update_code),
            )
            .route(
                &format!("{functions}/{{function_name}}/invocations"),
                post(invoke::invoke),
            )
            .route(
                "/2017-10-31/functions/{function_name}/concurrency",
                put(functions::put_concurrency).delete(functions::delete_concurrency),
            )
            .route(
                "/2019-09-30/functions/{function_name}/concurrency",
                get(functions::get_concurrency),
            )
            .route(
                "/2024-08-31/functions/{function_name}/recursion-config",
                get(functions::get_recursion_config).put(functions::put_recursion_config),
            )
            .route(
                "/2019-09-25/functions/{function_name}/event-invoke-config",
                put(event_invoke_config::put)
                    .post(event_invoke_config::update)
                    .get(event_invoke_config::get)
                    .delete(event_invoke_config::delete),
            )
            .route(
                "/2019-09-25/functions/{function_name}/event-invoke-config/list",
                get(event_invoke_config::list),
            )
            .route(
                "/invoq/code/{code_sha256_hex}",
                get(functions::download_code),
            )
            .route(
                "/2014-11-13/functions/{function_name}/invoke-async",
                post(invoke::invoke_async),
            )
            .route(
                "/2014-11-13/functions/{function_name}/invoke-async/",
                post(invoke::invoke_async),
            )
            .route(
                "/2015-03-31/event-source-mappings",
                post(event_source_mappings::create).get(event_source_mappings::list),
            )
            .route(
                "/2015-03-31/event-source-mappings/",
                post(event_source_mappings::create).get(event_source_mappings::list),
            )
            .route(
                "/2015-03-31/event-source-mappings/{uuid}",
                get(event_source_mappings::get)
                    .put(event_source_mappings::update)
                    .delete(event_source_mappings::delete),
            )
            .route("/invoq/queues/{queue}", get(queues::inspect))
            .route("/invoq/parked/redrive", post(queues::redrive_parked))
            .route("/metrics", get(metrics::render))
            .fallback(http::unknown_operation)
            .layer(DefaultBodyLimit::max(CONTROL_PLANE_BODY_LIMIT))
            .layer(axum::middleware::map_response(http::lambda_error_shape));
        let router = match access_keys {
            Some(keys) => router.layer(axum::middleware::from_fn_with_state(keys, auth::verify)),
            None => router,
        };
        router
            .layer(axum::middleware::from_fn(http::ensure_request_id))
            .with_state(self.clone())
    }

    /// Deploys a function's latest change to the runtime, then marks it Active / Successful
    /// (or Failed). Runs after every create and code or configuration update.
    async fn settle(self: Arc<Self>, name: String) {
        let Some(record) = self.store.get(&name) else {
            return;
        };
        let mut outcome = Ok(());
        for attempt in 1..=SETTLE_ATTEMPTS {
            outcome = self.deploy(&record).await;
            // Only an unreachable runtime is worth waiting for.
            if !matches!(outcome, Err(RuntimeError::Internal(_))) || attempt == SETTLE_ATTEMPTS {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let settled = self.store.update(&name, |current| {
            // A newer change came in meanwhile; its own settle finishes it.
            if current.revision_id != record.revision_id {
                return Ok(());
            }
            let failed = outcome.as_ref().err().map(ToString::to_string);
            current.failure_reason = failed.clone();
            if current.state == FunctionState::Pending {
                current.state = if failed.is_some() {
                    FunctionState::Failed
                } else {
                    FunctionState::Active
                };
            }
            if current.last_update_status.is_some() {
                current.last_update_status = Some(if failed.is_some() {
                    UpdateStatus::Failed
                } else {
                    UpdateStatus::Successful
                });
            }
            Ok(())
        });
        if let Err(error) = settled {
            tracing::error!(function = %name, %error, "cannot record deployment outcome");
        }
    }

    /// Hands the runtime the function's code and readies its runtime (a managed runtime's
    /// interface client is installed on first use).
    async fn deploy(&self, record: &FunctionRecord) -> Result<(), RuntimeError> {
        if let Some(code_sha256_hex) = configuration::deployed_code(record) {
            let zip = self.code(code_sha256_hex)?;
            self.runtime.put_code(code_sha256_hex, zip).await?;
        }
        // Only a managed runtime has anything to prepare; the others ask nothing of the
        // runtime service until they run.
        if invoq_runtime::MANAGED_RUNTIMES.contains(&record.runtime.as_str()) {
            self.runtime.prepare_runtime(&record.runtime).await?;
        }
        Ok(())
    }

    /// What the retry worker needs to run an event of `function_name` now: the function's
    /// current spec and async settings. Only `$LATEST` exists.
    pub fn async_target(
        &self,
        function_name: &str,
        qualifier: &str,
    ) -> Option<(FunctionSpec, AsyncSettings)> {
        let found = self.async_configuration(function_name, qualifier)?;
        let settings = AsyncSettings::new(
            found.event_invoke_config,
            found.dead_letter_target_arn,
            found.recursive_loop,
        );
        Some((found.spec, settings))
    }

    /// What [`Frontend::async_target`] is made of, as it travels to a worker in another
    /// process.
    pub fn async_configuration(
        &self,
        function_name: &str,
        qualifier: &str,
    ) -> Option<AsyncConfiguration> {
        let record = self
            .store
            .get(function_name)
            .filter(|_| qualifier == invoq_domain::LATEST)?;
        Some(AsyncConfiguration {
            spec: configuration::function_spec(&record, &self.location),
            event_invoke_config: record.event_invoke_configs.get(qualifier).cloned(),
            dead_letter_target_arn: record.dead_letter_target_arn.clone(),
            recursive_loop: record.recursive_loop,
        })
    }

    /// Adds another service's counters to `/metrics`.
    pub fn add_metrics(&self, source: MetricsSource) {
        self.extra_metrics
            .lock()
            .expect("metrics sources poisoned")
            .push(source);
    }

    /// An asynchronous invoke of the function `function_arn` names, as a function
    /// destination receives its record; under `request_id` when given (the same for every
    /// redelivery of one record), a new one otherwise. `chain_depth` counts the invocations
    /// of the event's chain before this one.
    pub async fn invoke_event(
        &self,
        function_arn: &str,
        event: &str,
        request_id: Option<&str>,
        chain_depth: u32,
    ) -> Result<(), String> {
        let function = FunctionRef::parse(function_arn, None).map_err(|error| error.message)?;
        let record = self
            .store
            .get(&function.name)
            .ok_or_else(|| format!("destination function {function_arn} does not exist"))?;
        let request_id = request_id
            .filter(|id| !id.is_empty())
            .map_or_else(invoq_domain::new_request_id, str::to_owned);
        let invoked_arn = self.location.function_arn(&record.name);
        let event = JsonText::parse(event.as_bytes()).map_err(|error| error.to_string())?;
        self.accept_event(&request_id, &record.name, invoked_arn, event, chain_depth)
            .await
            .map_err(|error| error.0.message)
    }

    /// A stored deployment package, by hex SHA-256.
    pub fn code(&self, code_sha256_hex: &str) -> Result<bytes::Bytes, RuntimeError> {
        self.store
            .code(code_sha256_hex)
            .map_err(|error| RuntimeError::Internal(error.message))
    }

    fn not_found(&self, name: &str, qualifier: Option<&str>) -> ApiError {
        let arn = match qualifier {
            Some(qualifier) => self.location.qualified_function_arn(name, qualifier),
            None => self.location.function_arn(name),
        };
        ApiError::not_found(format!("Function not found: {arn}"))
    }
}

/// How often a deployment is tried while the runtime cannot be reached.
const SETTLE_ATTEMPTS: u32 = 30;

//! invoq-frontend serves Lambda's REST API: the control plane (functions, concurrency) and
//! Invoke. Callers are boto3, the AWS CLI and aws-sdk-rust with only the endpoint changed, so
//! paths, status codes, JSON fields and error texts follow botocore's service model and
//! lambda-spec.md exactly.
//!
//! Entry point: [`Frontend::new`] over a [`LocalRegistry`], then [`Frontend::router`].
//! Functions run through any [`RuntimeService`]: the in-process `LocalRuntime` or a gRPC
//! client.
//!
//! Boundary: HTTP only. The registry stores functions and mappings and writes Event
//! invocations to the queue; the runtime runs functions. The frontend validates, answers in
//! Lambda's shapes and forwards.

mod auth;
mod configuration;
mod event_invoke_config;
mod event_source_mappings;
mod functions;
mod http;
mod invoke;
mod metrics;
mod queues;
pub mod server;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use invoq_domain::ApiError;
use invoq_queue::EventQueue;
use invoq_registry::{EventSourceChecker, LocalRegistry};
use invoq_runtime::{RuntimeError, RuntimeService};

pub use crate::auth::{AccessKeys, AccessKeysError};
use crate::metrics::Metrics;
use prometheus_client::registry::Registry as MetricsRegistry;

/// Deployment packages arrive base64-encoded in JSON: 50 MB zipped, about 70 MB on the wire.
const CONTROL_PLANE_BODY_LIMIT: usize = 70 * 1024 * 1024;

/// The HTTP API's shared state.
pub struct Frontend {
    /// Functions, mappings, and the write point of Event invocations.
    registry: Arc<LocalRegistry>,
    runtime: Arc<dyn RuntimeService>,
    /// The queues `/invoq/queues` inspects and `/invoq/parked/redrive` moves between.
    queue: Arc<dyn EventQueue>,
    metrics: Metrics,
    event_source_checker: std::sync::OnceLock<Arc<dyn EventSourceChecker>>,
}

impl Frontend {
    /// The HTTP API over `registry`; synchronous invokes run on `runtime`.
    pub fn new(
        registry: Arc<LocalRegistry>,
        runtime: Arc<dyn RuntimeService>,
        queue: Arc<dyn EventQueue>,
    ) -> Arc<Self> {
        Arc::new(Frontend {
            metrics: Metrics::new(registry.counters().throttles.clone()),
            registry,
            runtime,
            queue,
            event_source_checker: std::sync::OnceLock::new(),
        })
    }

    /// Adds the frontend's counters (and the registry's) to the process's metrics.
    pub fn register_metrics(&self, metrics: &mut MetricsRegistry) {
        self.metrics
            .register(metrics, &self.registry.counters().events_accepted);
    }

    /// The Lambda REST API, with `metrics` at `GET /metrics`; with `access_keys`, every
    /// request but `GET /metrics` must be SigV4-signed with one of them ([`auth`]).
    pub fn router(
        self: &Arc<Self>,
        access_keys: Option<Arc<AccessKeys>>,
        metrics: Arc<MetricsRegistry>,
    ) -> Router {
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
            .route("/metrics", metrics::handler(metrics))
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

    /// A stored deployment package, by hex SHA-256.
    fn code(&self, code_sha256_hex: &str) -> Result<bytes::Bytes, RuntimeError> {
        self.registry.code_now(code_sha256_hex)
    }

    fn not_found(&self, name: &str, qualifier: Option<&str>) -> ApiError {
        self.registry.not_found(name, qualifier)
    }
}

//! The frontend's counters, and `GET /metrics`: every service's counters in this process,
//! from one prometheus-client registry, in the OpenMetrics text format.

use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry as MetricsRegistry;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = [(&'static str, &'static str); 2];

#[derive(Debug)]
pub(crate) struct Metrics {
    invocations: Family<Labels, Counter>,
    /// Synchronous invocations that ran, by whether the function succeeded.
    pub(crate) sync_succeeded: Counter,
    pub(crate) sync_function_errors: Counter,
    /// Invocations refused with 429: shared with the registry, which counts the Event ones.
    pub(crate) throttles: Counter,
    /// Synchronous invocations refused by recursive loop detection (Event invocations stopped
    /// by it are the worker's `RecursiveInvocationDetected` outcomes).
    pub(crate) recursive_invocations_refused: Counter,
}

impl Metrics {
    pub(crate) fn new(throttles: Counter) -> Self {
        let invocations = Family::<Labels, Counter>::default();
        let sync = |result| {
            invocations
                .get_or_create(&[("type", "RequestResponse"), ("result", result)])
                .clone()
        };
        Metrics {
            sync_succeeded: sync("success"),
            sync_function_errors: sync("function_error"),
            invocations,
            throttles,
            recursive_invocations_refused: Counter::default(),
        }
    }

    /// Adds the frontend's counters and the registry's `accepted` to `registry`.
    pub(crate) fn register(&self, registry: &mut MetricsRegistry, accepted: &Counter) {
        registry.register(
            "invoq_invocations",
            "Invocations run, by type and result.",
            self.invocations.clone(),
        );
        registry.register(
            "invoq_events_accepted",
            "Event invocations accepted (202).",
            accepted.clone(),
        );
        registry.register(
            "invoq_throttles",
            "Invocations refused with 429.",
            self.throttles.clone(),
        );
        registry.register(
            "invoq_recursive_invocations_refused",
            "Synchronous invocations refused by recursive loop detection (RecursiveInvocationException).",
            self.recursive_invocations_refused.clone(),
        );
    }
}

pub(crate) fn render(registry: &MetricsRegistry) -> Response {
    let mut text = String::new();
    match encode(&mut text, registry) {
        Ok(()) => ([(CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot encode the metrics");
            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The `/metrics` handler over the finished registry.
pub(crate) fn handler(
    registry: Arc<MetricsRegistry>,
) -> axum::routing::MethodRouter<Arc<crate::Frontend>> {
    axum::routing::get(move || {
        let registry = registry.clone();
        async move { render(&registry) }
    })
}

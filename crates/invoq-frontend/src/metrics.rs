//! Counters behind `GET /metrics`, in Prometheus' text format.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;

use crate::Frontend;

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Synchronous invocations that ran, by whether the function succeeded.
    pub(crate) sync_succeeded: AtomicU64,
    pub(crate) sync_function_errors: AtomicU64,
    /// Synchronous invocations refused with 429 (the registry counts the Event ones).
    pub(crate) throttles: AtomicU64,
    /// Synchronous invocations refused by recursive loop detection (Event invocations stopped
    /// by it are the worker's `RecursiveInvocationDetected` outcomes).
    pub(crate) recursive_invocations_dropped: AtomicU64,
}

impl Metrics {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) async fn render(State(frontend): State<Arc<Frontend>>) -> String {
    let metrics = &frontend.metrics;
    let accepted = frontend.registry.counters();
    let throttles = AtomicU64::new(
        metrics.throttles.load(Ordering::Relaxed) + accepted.throttles.load(Ordering::Relaxed),
    );
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# HELP invoq_invocations_total Invocations run, by type and result."
    );
    let _ = writeln!(text, "# TYPE invoq_invocations_total counter");
    for (result, counter) in [
        ("success", &metrics.sync_succeeded),
        ("function_error", &metrics.sync_function_errors),
    ] {
        let value = counter.load(Ordering::Relaxed);
        let _ = writeln!(
            text,
            "invoq_invocations_total{{type=\"RequestResponse\",result=\"{result}\"}} {value}"
        );
    }
    counter(
        &mut text,
        "invoq_events_accepted_total",
        "Event invocations accepted (202).",
        &accepted.events_accepted,
    );
    counter(
        &mut text,
        "invoq_throttles_total",
        "Invocations refused with 429.",
        &throttles,
    );
    counter(
        &mut text,
        "invoq_recursive_invocations_refused_total",
        "Synchronous invocations refused by recursive loop detection (RecursiveInvocationException).",
        &metrics.recursive_invocations_dropped,
    );
    for source in frontend
        .extra_metrics
        .lock()
        .expect("metrics sources poisoned")
        .iter()
    {
        text.push_str(&source());
    }
    text
}

fn counter(text: &mut String, name: &str, help: &str, value: &AtomicU64) {
    let value = value.load(Ordering::Relaxed);
    let _ = writeln!(
        text,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

//! invoq-worker is the retry worker of asynchronous invocation (lambda-spec.md §2). It leases
//! events from the `invocations` queue, runs each through the runtime service, and settles
//! the lease by Lambda's rules ([`policy`]): a retry goes back to `invocations` with a delay,
//! a terminal outcome (Success, RetriesExhausted, EventAgeExceeded, ZeroReservedConcurrency,
//! RecursiveInvocationDetected) goes to `deliveries` with Lambda's invocation record, in the
//! same step that ends the lease.
//!
//! Invariants kept here:
//! - a heartbeat keeps an event's lease for the whole attempt, however long, so no other
//!   worker runs it meanwhile; an attempt whose lease was lost anyway settles nothing;
//! - an event's request id never changes across attempts;
//! - events run the function's code and settings current when they run.
//!
//! Boundary: talks to the queue, the runtime and the function registry through traits only.

pub mod policy;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use invoq_domain::asynchronous::{
    Condition, FunctionResponse, InvocationRecord, Outcome, QueueMessage, QueuedInvocation,
    RequestContext, now_ms,
};
use invoq_domain::recursion;
use invoq_queue::{
    DELIVERIES, EventQueue, INVOCATIONS, Lease, QueueError, QueueItem, while_leased,
};
use invoq_registry::{AsyncTarget, Registry};
use invoq_runtime::{Invocation, InvocationResult, RuntimeError, RuntimeService};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry as MetricsRegistry;

use crate::policy::{AttemptResult, Decision, RetryPolicy};

/// How long a lease lasts; a heartbeat ([`while_leased`]) renews it every third of that while the attempt
/// runs, however long that is. It is also about how long a crashed worker's events wait
/// before another worker takes them, so it stays short.
const LEASE: Duration = Duration::from_secs(10);
/// How long an event waits when the function registry cannot be reached.
const REGISTRY_RETRY_PAUSE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
pub struct WorkerConfig {
    /// Invocations run at the same time, at most.
    pub concurrency: usize,
    pub retry_policy: RetryPolicy,
}

pub struct Worker {
    queue: Arc<dyn EventQueue>,
    runtime: Arc<dyn RuntimeService>,
    registry: Arc<dyn Registry>,
    config: WorkerConfig,
    metrics: Arc<WorkerMetrics>,
}

/// Counters behind `/metrics`: terminal outcomes by condition, retries scheduled, and events
/// dropped without an outcome.
#[derive(Debug)]
pub struct WorkerMetrics {
    outcomes: Family<[(&'static str, &'static str); 1], Counter>,
    retries: Counter,
    dropped: Family<[(&'static str, &'static str); 1], Counter>,
}

impl Default for WorkerMetrics {
    /// Every condition and reason starts at 0, so each series shows before it first counts.
    fn default() -> Self {
        let metrics = WorkerMetrics {
            outcomes: Family::default(),
            retries: Counter::default(),
            dropped: Family::default(),
        };
        for condition in CONDITIONS {
            let _ = metrics
                .outcomes
                .get_or_create(&[("condition", condition.as_str())]);
        }
        for reason in DropReason::ALL {
            let _ = metrics.dropped.get_or_create(&[("reason", reason.label())]);
        }
        metrics
    }
}

/// What to do with a leased event once its attempt is over.
enum Settlement {
    /// No outcome can ever come of it.
    Drop(DropReason),
    /// Back to the queue after a pause, not the event's fault.
    Release(Duration),
    Finish(Box<Finished>),
    Retry {
        event: QueuedInvocation,
        delay: Duration,
    },
}

/// A terminal outcome, ready to be handed to the router.
struct Finished {
    event: QueuedInvocation,
    target: AsyncTarget,
    condition: Condition,
    response: Option<InvocationResult>,
}

/// Why an event ended without an outcome (`invoq_events_dropped_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DropReason {
    /// Its function was deleted before it ran.
    FunctionDeleted,
    /// Its queued form cannot be read.
    Unreadable,
}

impl DropReason {
    const ALL: [DropReason; 2] = [DropReason::FunctionDeleted, DropReason::Unreadable];

    fn label(self) -> &'static str {
        match self {
            DropReason::FunctionDeleted => "function_deleted",
            DropReason::Unreadable => "unreadable",
        }
    }
}

const CONDITIONS: [Condition; 5] = [
    Condition::Success,
    Condition::RetriesExhausted,
    Condition::EventAgeExceeded,
    Condition::ZeroReservedConcurrency,
    Condition::RecursiveInvocationDetected,
];

impl WorkerMetrics {
    fn dropped(&self, reason: DropReason) {
        self.dropped
            .get_or_create(&[("reason", reason.label())])
            .inc();
    }

    fn finished(&self, condition: Condition) {
        self.outcomes
            .get_or_create(&[("condition", condition.as_str())])
            .inc();
    }

    /// Adds these counters to `registry` (each name gains `_total`).
    pub fn register(&self, registry: &mut MetricsRegistry) {
        registry.register(
            "invoq_async_outcomes",
            "Events that reached a terminal outcome, by condition.",
            self.outcomes.clone(),
        );
        registry.register(
            "invoq_async_retries",
            "Attempts scheduled again (function errors, throttles).",
            self.retries.clone(),
        );
        registry.register(
            "invoq_events_dropped",
            "Accepted events that ended without an outcome, by reason.",
            self.dropped.clone(),
        );
    }
}

impl Worker {
    pub fn new(
        queue: Arc<dyn EventQueue>,
        runtime: Arc<dyn RuntimeService>,
        registry: Arc<dyn Registry>,
        config: WorkerConfig,
    ) -> Arc<Self> {
        Arc::new(Worker {
            metrics: Arc::default(),
            queue,
            runtime,
            registry,
            config,
        })
    }

    pub fn metrics(&self) -> Arc<WorkerMetrics> {
        self.metrics.clone()
    }

    /// Leases and runs events until the process ends.
    pub async fn run(self: Arc<Self>) {
        let concurrency = self.config.concurrency;
        let queue = self.queue.clone();
        invoq_queue::consume(queue, INVOCATIONS, concurrency, LEASE, move |lease| {
            let worker = self.clone();
            async move { worker.process(lease).await }
        })
        .await;
    }

    /// Runs one attempt of a leased event and settles the lease. A heartbeat keeps the
    /// lease for the whole attempt (registry lookup, concurrency, cold start, the run); if
    /// the lease is lost the attempt is abandoned and nothing is settled: whoever holds the
    /// event now runs it.
    async fn process(&self, lease: Lease) {
        let attempt = self.attempt(&lease);
        let kept = while_leased(self.queue.clone(), lease.clone(), LEASE, attempt).await;
        let Some((lease, settlement)) = kept else {
            tracing::warn!(id = %lease.item.id, "lease lost during the attempt; its result is discarded");
            return;
        };
        match settlement {
            Settlement::Drop(reason) => {
                self.metrics.dropped(reason);
                let _ = self.queue.ack(&lease).await;
            }
            Settlement::Release(pause) => {
                let _ = self.queue.nack(&lease, pause).await;
            }
            Settlement::Finish(finished) => {
                let Finished {
                    event,
                    target,
                    condition,
                    response,
                } = *finished;
                self.finish(&lease, &event, &target, condition, response.as_ref())
                    .await;
            }
            Settlement::Retry { event, delay } => {
                let item = QueueItem {
                    id: event.request_id.clone(),
                    body: Bytes::from(event.encode()),
                };
                match self
                    .queue
                    .settle_and_enqueue(&lease, INVOCATIONS, item, delay)
                    .await
                {
                    Ok(()) => {
                        self.metrics.retries.inc();
                    }
                    Err(error) => {
                        tracing::warn!(%error, request_id = %event.request_id,
                            "retry not recorded; the lease will expire and the attempt repeat");
                    }
                }
            }
        }
    }

    /// One attempt, up to the decision of what to do with the event.
    async fn attempt(&self, lease: &Lease) -> Settlement {
        let mut event = match QueuedInvocation::decode(&lease.item.body) {
            Ok(event) => event,
            Err(error) => {
                // Nothing can ever run it; keep it out of the way of the rest.
                tracing::error!(%error, id = %lease.item.id, "unreadable queued invocation dropped");
                return Settlement::Drop(DropReason::Unreadable);
            }
        };
        let resolved = self
            .registry
            .resolve(&event.function_name, &event.qualifier)
            .await;
        let target = match resolved {
            Ok(Some(target)) => target,
            Ok(None) => {
                tracing::warn!(request_id = %event.request_id, function = %event.function_name,
                    "function deleted before its event ran; event dropped");
                return Settlement::Drop(DropReason::FunctionDeleted);
            }
            Err(error) => {
                // Not the event's fault: it runs once the registry answers again.
                tracing::warn!(%error, request_id = %event.request_id, "cannot resolve the function");
                return Settlement::Release(REGISTRY_RETRY_PAUSE);
            }
        };
        let policy = self.config.retry_policy;
        let finish = |event, target, condition| {
            Settlement::Finish(Box::new(Finished {
                event,
                target,
                condition,
                response: None,
            }))
        };
        if target.spec.reserved_concurrency == Some(0) {
            return finish(event, target, Condition::ZeroReservedConcurrency);
        }
        if policy.expired(&event, &target.settings, now_ms()) {
            return finish(event, target, Condition::EventAgeExceeded);
        }
        if target.settings.recursive_loop.stops(event.chain_depth) {
            tracing::warn!(request_id = %event.request_id, function = %event.function_name,
                chain_depth = event.chain_depth, "recursive loop detected; event stopped");
            return finish(event, target, Condition::RecursiveInvocationDetected);
        }

        let invocation = Invocation {
            function: target.spec.clone(),
            request_id: event.request_id.clone(),
            payload: Bytes::copy_from_slice(event.payload.as_str().as_bytes()),
            invoked_function_arn: event.invoked_function_arn.clone(),
            client_context: None,
            attempt: event.attempts + 1,
            trace_id: Some(recursion::trace_header(
                None,
                &event.request_id,
                event.chain_depth,
            )),
        };
        let registry = self.registry.clone();
        timeline(&event.request_id, event.attempts + 1, "attempt started");
        let result =
            invoq_runtime::invoke_deploying(self.runtime.as_ref(), invocation, |sha| async move {
                registry.code(&sha).await.map_err(RuntimeError::from)
            })
            .await;
        timeline(&event.request_id, event.attempts + 1, "attempt ended");
        let (attempt, response) = match result {
            Ok(result) => {
                event.attempts += 1;
                event.throttles = 0;
                let attempt = if result.function_error.is_some() {
                    AttemptResult::FunctionError
                } else {
                    AttemptResult::Succeeded
                };
                (attempt, Some(result))
            }
            Err(error) => {
                tracing::debug!(%error, request_id = %event.request_id, "attempt did not run");
                event.throttles += 1;
                (AttemptResult::NotRun, None)
            }
        };
        match policy.decide(&event, attempt, &target.settings, now_ms()) {
            Decision::Finish(condition) => Settlement::Finish(Box::new(Finished {
                event,
                target,
                condition,
                response,
            })),
            Decision::RetryAfter(delay) => Settlement::Retry { event, delay },
        }
    }

    /// Hands the terminal outcome to the deliveries queue, ending the lease in the same step.
    /// An outcome too large for the queue is handed over without its payloads (as Lambda
    /// drops payloads from records too large for their destination), never retried forever.
    async fn finish(
        &self,
        lease: &Lease,
        event: &QueuedInvocation,
        target: &AsyncTarget,
        condition: Condition,
        response: Option<&InvocationResult>,
    ) {
        let mut outcome = outcome(event, target, condition, response);
        let mut settled = self.hand_over(lease, &outcome).await;
        while let Err(QueueError::TooLarge { size, limit }) = settled
            && outcome.record.drop_a_payload()
        {
            tracing::warn!(request_id = %event.request_id, size, limit,
                "outcome too large for the deliveries queue; a payload left out of its record");
            settled = self.hand_over(lease, &outcome).await;
        }
        match settled {
            Ok(()) => {
                self.metrics.finished(condition);
                tracing::debug!(request_id = %event.request_id, ?condition, "event finished");
            }
            Err(error) => tracing::warn!(%error, request_id = %event.request_id,
                "outcome not recorded; the lease will expire and the event run again"),
        }
    }

    async fn hand_over(&self, lease: &Lease, outcome: &Outcome) -> Result<(), QueueError> {
        let item = QueueItem {
            id: outcome.record.request_context.request_id.clone(),
            body: Bytes::from(outcome.encode()),
        };
        self.queue
            .settle_and_enqueue(lease, DELIVERIES, item, Duration::ZERO)
            .await
    }
}

/// Lambda's invocation record for a terminal outcome (lambda-spec.md §4).
fn outcome(
    event: &QueuedInvocation,
    target: &AsyncTarget,
    condition: Condition,
    response: Option<&InvocationResult>,
) -> Outcome {
    let executed_version = response
        .map(|response| response.executed_version.as_str())
        .unwrap_or(&event.qualifier);
    let error_message = response
        .filter(|response| response.function_error.is_some())
        .and_then(|response| error_message(&response.payload))
        .map(|message| message.chars().take(1024).collect());
    let request_context = RequestContext {
        request_id: event.request_id.clone(),
        function_arn: format!("{}:{executed_version}", target.spec.function_arn),
        condition,
        approximate_invoke_count: event.attempts,
    };
    let response = response.map(|response| FunctionResponse {
        executed_version: &response.executed_version,
        function_error: response.function_error.as_deref(),
        payload: &response.payload,
    });
    Outcome {
        record: InvocationRecord::new(request_context, event.payload.clone(), response),
        destinations: target.settings.destinations.clone(),
        error_message,
        chain_depth: event.chain_depth,
        delivery: Default::default(),
    }
}

/// The `errorMessage` of a function error's payload, read without building the whole
/// document.
fn error_message(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct FunctionError {
        #[serde(rename = "errorMessage")]
        error_message: Option<String>,
    }
    serde_json::from_slice::<FunctionError>(payload)
        .ok()?
        .error_message
}

/// One step of an event's life, for `invoq bench` and other tracers: a TRACE event on the
/// `invoq::timeline` target (off unless asked for, e.g. `RUST_LOG=invoq::timeline=trace`),
/// with the wall-clock time in microseconds so that another process can line it up.
fn timeline(request_id: &str, attempt: u32, step: &'static str) {
    tracing::trace!(target: "invoq::timeline", request_id, attempt, at_us = now_us(), "{step}");
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

//! invoq-router delivers the outcomes of asynchronous invocations (lambda-spec.md §4-§5).
//! It leases outcomes from the `deliveries` queue and sends Lambda's invocation record to
//! the `OnSuccess` or `OnFailure` destination, and the original event to the dead-letter
//! queue on final failure, through `invoq-destinations` (SQS, SNS, EventBridge, files) or, for a
//! function destination, as an async invoke of that invoq function.
//!
//! Unlike Lambda, it never drops a record: a round with a failed target goes back to
//! `deliveries` with exponential backoff (scaled by `INVOQ_TIME_SCALE`), remembering which
//! targets already have it, and after [`RouterConfig::max_attempts`] rounds the outcome is
//! parked in the `parked` queue, from where it can be listed and redriven.
//!
//! Boundary: no wire protocol of any destination here; those are the adapters'.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use invoq_destinations::{Delivery, DeliveryKind, Destination};
use invoq_domain::arn::Service;
use invoq_domain::asynchronous::{
    Condition, EVENT_PAYLOAD_MAX_BYTES, JsonText, Outcome, QueueMessage, doubling_backoff,
};
use invoq_queue::{DELIVERIES, EventQueue, Lease, PARKED, QueueItem, while_leased};
use invoq_registry::Registry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry as MetricsRegistry;

/// How long a lease lasts; a heartbeat ([`while_leased`]) renews it while a round of deliveries runs. It is
/// about how long a crashed router's outcomes wait before another router takes them.
const LEASE: Duration = Duration::from_secs(10);
/// How long one call to a destination may take before it counts as failed (and is retried
/// with the round's backoff).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest SQS message (since August 2025; queues set to less refuse larger records, and
/// those deliveries fail and park like any other failure).
const SQS_MESSAGE_MAX_BYTES: usize = 1_048_576;
/// Largest SNS message and EventBridge entry.
const SNS_EVENTBRIDGE_MAX_BYTES: usize = 262_144;

#[derive(Clone, Copy, Debug)]
pub struct RouterConfig {
    /// Outcomes delivered at the same time, at most.
    pub concurrency: usize,
    /// Failed delivery rounds before an outcome is parked.
    pub max_attempts: u32,
    /// Multiplies the backoff between rounds.
    pub time_scale: f64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        // Backoff 1, 2, 4 ... 256, 300, 300 s: parked after about 20 minutes of trying.
        RouterConfig {
            concurrency: 256,
            max_attempts: 12,
            time_scale: 1.0,
        }
    }
}

/// Counters behind `/metrics`.
#[derive(Debug, Default)]
pub struct RouterMetrics {
    pub delivered: Counter,
    /// Failed deliveries to OnSuccess / OnFailure destinations (Lambda's
    /// `DestinationDeliveryFailures`).
    pub destination_delivery_failures: Counter,
    /// Failed deliveries to dead-letter queues (Lambda's `DeadLetterErrors`).
    pub dead_letter_errors: Counter,
    pub parked: Counter,
}

impl RouterMetrics {
    /// Adds these counters to `registry` (each name gains `_total`).
    pub fn register(&self, registry: &mut MetricsRegistry) {
        for (name, help, counter) in [
            (
                "invoq_destination_deliveries",
                "Messages delivered to destinations and dead-letter queues.",
                &self.delivered,
            ),
            (
                "invoq_destination_delivery_failures",
                "Failed deliveries to OnSuccess/OnFailure destinations (DestinationDeliveryFailures).",
                &self.destination_delivery_failures,
            ),
            (
                "invoq_dead_letter_errors",
                "Failed deliveries to dead-letter queues (DeadLetterErrors).",
                &self.dead_letter_errors,
            ),
            (
                "invoq_parked",
                "Outcomes parked after every delivery round failed.",
                &self.parked,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
    }
}

pub struct Router {
    queue: Arc<dyn EventQueue>,
    destinations: Arc<dyn Destination>,
    registry: Arc<dyn Registry>,
    config: RouterConfig,
    metrics: Arc<RouterMetrics>,
}

/// One place an outcome goes.
/// How a delivery round ends.
enum RoundEnd {
    /// Every target has the outcome.
    Delivered,
    /// Into `queue` again (a later round, or parked), with what this round learned.
    Requeue {
        queue: &'static str,
        body: Bytes,
        delay: Duration,
    },
}

struct Target {
    /// `on_success`, `on_failure` or `dead_letter`, as recorded in the outcome's progress.
    key: &'static str,
    arn: String,
}

impl Router {
    pub fn new(
        queue: Arc<dyn EventQueue>,
        destinations: Arc<dyn Destination>,
        registry: Arc<dyn Registry>,
        config: RouterConfig,
    ) -> Arc<Self> {
        Arc::new(Router {
            queue,
            destinations,
            registry,
            config,
            metrics: Arc::default(),
        })
    }

    pub fn metrics(&self) -> Arc<RouterMetrics> {
        self.metrics.clone()
    }

    /// Leases and delivers outcomes until the process ends.
    pub async fn run(self: Arc<Self>) {
        let concurrency = self.config.concurrency;
        let queue = self.queue.clone();
        invoq_queue::consume(queue, DELIVERIES, concurrency, LEASE, move |lease| {
            let router = self.clone();
            async move { router.deliver(lease).await }
        })
        .await;
    }
    /// One delivery round for a leased outcome, with the lease kept by a heartbeat for as
    /// long as the round takes. A round whose lease was lost settles nothing: the router
    /// that holds the outcome now delivers it (with the same deduplication ids).
    async fn deliver(&self, lease: Lease) {
        let id = lease.item.id.clone();
        let round = self.round(&lease);
        let kept = while_leased(self.queue.clone(), lease.clone(), LEASE, round).await;
        let Some((lease, ending)) = kept else {
            tracing::warn!(%id, "lease lost during a delivery round; it is not settled here");
            return;
        };
        match ending {
            RoundEnd::Delivered => {
                if let Err(error) = self.queue.ack(&lease).await {
                    tracing::warn!(%error, request_id = %id, "delivered, but the ack failed; it will be delivered again");
                }
            }
            RoundEnd::Requeue { queue, body, delay } => {
                self.settle(&lease, queue, body, delay).await;
            }
        }
    }

    /// Sends the outcome to every target it has not reached yet; says what becomes of it.
    async fn round(&self, lease: &Lease) -> RoundEnd {
        let mut outcome = match Outcome::decode(&lease.item.body) {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::error!(%error, id = %lease.item.id, "unreadable outcome parked");
                return RoundEnd::Requeue {
                    queue: PARKED,
                    body: lease.item.body.clone(),
                    delay: Duration::ZERO,
                };
            }
        };
        let mut failures = Vec::new();
        for target in targets(&outcome) {
            if outcome
                .delivery
                .delivered
                .iter()
                .any(|done| done == target.key)
            {
                continue;
            }
            let sent = tokio::time::timeout(DELIVERY_TIMEOUT, self.send(&outcome, &target))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no answer from {} within {} s",
                        target.arn,
                        DELIVERY_TIMEOUT.as_secs()
                    ))
                });
            match sent {
                Ok(()) => {
                    self.metrics.delivered.inc();
                    outcome.delivery.delivered.push(target.key.to_owned());
                }
                Err(error) => {
                    let counter = if target.key == "dead_letter" {
                        &self.metrics.dead_letter_errors
                    } else {
                        &self.metrics.destination_delivery_failures
                    };
                    counter.inc();
                    tracing::warn!(%error, request_id = %lease.item.id, target = %target.arn, "delivery failed");
                    failures.push(error);
                }
            }
        }
        if failures.is_empty() {
            return RoundEnd::Delivered;
        }
        outcome.delivery.failed_attempts += 1;
        outcome.delivery.last_error = Some(failures.join("; "));
        let body = Bytes::from(outcome.encode());
        if outcome.delivery.failed_attempts >= self.config.max_attempts {
            self.metrics.parked.inc();
            tracing::error!(request_id = %lease.item.id, "delivery gave up; outcome parked");
            RoundEnd::Requeue {
                queue: PARKED,
                body,
                delay: Duration::ZERO,
            }
        } else {
            let delay =
                doubling_backoff(outcome.delivery.failed_attempts).mul_f64(self.config.time_scale);
            RoundEnd::Requeue {
                queue: DELIVERIES,
                body,
                delay,
            }
        }
    }

    async fn send(&self, outcome: &Outcome, target: &Target) -> Result<(), String> {
        let record = &outcome.record;
        let request_id = &record.request_context.request_id;
        let condition = record.request_context.condition;
        let service = invoq_domain::Arn::parse(&target.arn)
            .map(|arn| arn.service)
            .ok();
        let record_json = record.to_json_within(service.and_then(record_limit));
        let deduplication_id = format!("{request_id}-{condition:?}-{}", target.key);
        if target.key != "dead_letter" && service == Some(Service::Lambda) {
            let request_id = invoq_domain::stable_request_id(&deduplication_id);
            return self
                .registry
                .invoke_event(
                    &target.arn,
                    &record_json,
                    &request_id,
                    outcome.chain_depth + 1,
                )
                .await
                .map_err(|error| error.to_string());
        }
        let (kind, body) = if target.key == "dead_letter" {
            let error_message = outcome
                .error_message
                .clone()
                .unwrap_or_else(|| format!("{condition:?}"));
            (
                DeliveryKind::DeadLetter { error_message },
                original_event(outcome),
            )
        } else {
            let kind = DeliveryKind::Record {
                success: condition.is_success(),
                function_arn: record.request_context.function_arn.clone(),
            };
            (kind, record_json)
        };
        let delivery = Delivery {
            target_arn: target.arn.clone(),
            kind,
            body,
            request_id: request_id.clone(),
            deduplication_id,
        };
        self.destinations
            .deliver(&delivery)
            .await
            .map_err(|error| error.to_string())
    }

    async fn settle(&self, lease: &Lease, target: &str, body: Bytes, delay: Duration) {
        let item = QueueItem {
            id: lease.item.id.clone(),
            body,
        };
        if let Err(error) = self
            .queue
            .settle_and_enqueue(lease, target, item, delay)
            .await
        {
            tracing::warn!(%error, request_id = %lease.item.id, "outcome not re-queued; the lease will expire and the round repeat");
        }
    }
}

/// Where an outcome goes: OnSuccess on success; OnFailure and the dead-letter queue (both,
/// when both are set) on failure. An event stopped by recursive loop detection never goes to
/// a function destination: that invoke would be the loop's next step.
fn targets(outcome: &Outcome) -> Vec<Target> {
    let destinations = &outcome.destinations;
    let condition = outcome.record.request_context.condition;
    let candidates = if condition.is_success() {
        vec![("on_success", &destinations.on_success)]
    } else {
        vec![
            ("on_failure", &destinations.on_failure),
            ("dead_letter", &destinations.dead_letter),
        ]
    };
    candidates
        .into_iter()
        .filter_map(|(key, arn)| arn.clone().map(|arn| Target { key, arn }))
        .filter(|target| {
            let loops_on = condition == Condition::RecursiveInvocationDetected
                && invoq_domain::Arn::parse(&target.arn)
                    .is_ok_and(|arn| arn.service == Service::Lambda);
            if loops_on {
                tracing::warn!(request_id = %outcome.record.request_context.request_id,
                    target = %target.arn, "recursive loop stopped: its record is not sent to a function");
            }
            !loops_on
        })
        .collect()
}

/// The event as the caller sent it: the dead-letter message body.
fn original_event(outcome: &Outcome) -> String {
    outcome
        .record
        .request_payload
        .as_ref()
        .map_or("{}", JsonText::as_str)
        .to_owned()
}

/// The largest record a destination of `service` takes; over it, payloads are left out of
/// the record as Lambda does, rather than failing the delivery round after round.
fn record_limit(service: Service) -> Option<usize> {
    match service {
        Service::Sqs => Some(SQS_MESSAGE_MAX_BYTES),
        Service::Sns | Service::Events => Some(SNS_EVENTBRIDGE_MAX_BYTES),
        Service::Lambda => Some(EVENT_PAYLOAD_MAX_BYTES),
        Service::S3 => None,
    }
}

//! The router against the in-memory queue and destinations, with injected faults.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use invoq_destinations::memory::{FaultInjecting, MemoryDestinations};
use invoq_destinations::{DeliveryKind, Destination};
use invoq_domain::asynchronous::{
    Condition, Destinations, InvocationRecord, JsonText, Outcome, QueueMessage, RequestContext,
    ResponseContext,
};
use invoq_domain::event_source::EventSourceMapping;
use invoq_queue::{DELIVERIES, EmbeddedQueue, EmbeddedQueueOptions, EventQueue, PARKED, QueueItem};
use invoq_registry::{AsyncConfiguration, Registry, RegistryError};
use invoq_router::{Router, RouterConfig};

#[derive(Default)]
struct RecordingInvoker {
    events: Mutex<Vec<(String, String)>>,
    request_ids: Mutex<Vec<String>>,
    chain_depths: Mutex<Vec<u32>>,
}

/// Records the function destinations' invokes; the router asks the registry nothing else.
#[async_trait]
impl Registry for RecordingInvoker {
    async fn async_configuration(
        &self,
        _function_name: &str,
        _qualifier: &str,
    ) -> Result<Option<AsyncConfiguration>, RegistryError> {
        Ok(None)
    }

    async fn code(&self, code_sha256_hex: &str) -> Result<Bytes, RegistryError> {
        Err(RegistryError::Refused(format!("no code {code_sha256_hex}")))
    }

    fn watch_mappings(&self) -> tokio::sync::watch::Receiver<Vec<EventSourceMapping>> {
        tokio::sync::watch::channel(Vec::new()).1
    }

    async fn invoke_event(
        &self,
        function_arn: &str,
        event: &str,
        request_id: &str,
        chain_depth: u32,
    ) -> Result<(), RegistryError> {
        self.request_ids.lock().unwrap().push(request_id.to_owned());
        self.chain_depths.lock().unwrap().push(chain_depth);
        self.events
            .lock()
            .unwrap()
            .push((function_arn.to_owned(), event.to_owned()));
        Ok(())
    }
}

fn outcome(request_id: &str, condition: Condition, destinations: Destinations) -> Outcome {
    Outcome {
        record: InvocationRecord {
            version: "1.0".into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            request_context: RequestContext {
                request_id: request_id.into(),
                function_arn: "arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST".into(),
                condition,
                approximate_invoke_count: 1,
            },
            request_payload: Some(JsonText::parse(br#"{"order": 1}"#).unwrap()),
            response_context: Some(ResponseContext {
                status_code: 200,
                executed_version: "$LATEST".into(),
                function_error: (!condition.is_success()).then(|| "Unhandled".into()),
            }),
            response_payload: Some(JsonText::parse(br#"{"errorMessage":"boom"}"#).unwrap()),
        },
        destinations,
        error_message: (!condition.is_success()).then(|| "boom".into()),
        chain_depth: 3,
        delivery: Default::default(),
    }
}

struct Setup {
    queue: Arc<dyn EventQueue>,
    memory: Arc<MemoryDestinations>,
    faults: Arc<FaultInjecting>,
    invoker: Arc<RecordingInvoker>,
    router: Arc<Router>,
}

fn setup(max_attempts: u32) -> Setup {
    let queue: Arc<dyn EventQueue> =
        Arc::new(EmbeddedQueue::in_memory(EmbeddedQueueOptions::default()).unwrap());
    let memory = Arc::new(MemoryDestinations::default());
    let faults = Arc::new(FaultInjecting::new(memory.clone()));
    let invoker = Arc::new(RecordingInvoker::default());
    let config = RouterConfig {
        concurrency: 4,
        max_attempts,
        time_scale: 0.01,
    };
    let destinations: Arc<dyn Destination> = faults.clone();
    let router = Router::new(queue.clone(), destinations, invoker.clone(), config);
    tokio::spawn(router.clone().run());
    Setup {
        queue,
        memory,
        faults,
        invoker,
        router,
    }
}

async fn enqueue(queue: &Arc<dyn EventQueue>, outcome: &Outcome) {
    let id = outcome.record.request_context.request_id.clone();
    let body = Bytes::from(outcome.encode());
    queue
        .enqueue(DELIVERIES, QueueItem { id, body }, Duration::ZERO)
        .await
        .unwrap();
}

async fn until(mut condition: impl FnMut() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("condition not reached");
}

const SQS: &str = "arn:aws:sqs:us-east-2:123456789012:destination";
const DLQ: &str = "arn:aws:sqs:us-east-2:123456789012:dlq";

#[tokio::test]
async fn success_goes_to_on_success_and_failure_to_on_failure_and_the_dlq() {
    let setup = setup(5);
    let destinations = Destinations {
        on_success: Some(SQS.into()),
        on_failure: Some("arn:aws:sns:us-east-1:123456789012:failures".into()),
        dead_letter: Some(DLQ.into()),
    };
    enqueue(
        &setup.queue,
        &outcome("ok", Condition::Success, destinations.clone()),
    )
    .await;
    enqueue(
        &setup.queue,
        &outcome("bad", Condition::RetriesExhausted, destinations),
    )
    .await;
    until(|| setup.memory.delivered().len() == 3).await;
    let delivered = setup.memory.delivered();
    let to = |arn: &str| {
        delivered
            .iter()
            .find(|d| d.target_arn == arn)
            .unwrap()
            .clone()
    };

    let success = to(SQS);
    assert_eq!(
        success.kind,
        DeliveryKind::Record {
            success: true,
            function_arn: "arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST".into()
        }
    );
    let record: serde_json::Value = serde_json::from_str(&success.body).unwrap();
    assert_eq!(record["requestContext"]["condition"], "Success");
    assert_eq!(success.request_id, "ok");

    let failure = to("arn:aws:sns:us-east-1:123456789012:failures");
    assert!(matches!(
        failure.kind,
        DeliveryKind::Record { success: false, .. }
    ));
    let dead_letter = to(DLQ);
    assert_eq!(
        dead_letter.body, r#"{"order": 1}"#,
        "the DLQ gets the original event, as its text was"
    );
    assert_eq!(
        dead_letter.kind,
        DeliveryKind::DeadLetter {
            error_message: "boom".into()
        }
    );
    until_settled(&setup.queue).await;
}

/// Waits until the deliveries queue is empty: every outcome settled.
async fn until_settled(queue: &Arc<dyn EventQueue>) {
    for _ in 0..200 {
        if queue.stats(DELIVERIES).await.unwrap().depth == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("deliveries never settled");
}

#[tokio::test]
async fn a_destination_outage_loses_nothing_and_repeats_nothing() {
    let setup = setup(20);
    setup.faults.set_down(true);
    let destinations = Destinations {
        on_failure: Some(SQS.into()),
        dead_letter: Some(DLQ.into()),
        ..Default::default()
    };
    enqueue(
        &setup.queue,
        &outcome("held", Condition::RetriesExhausted, destinations),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(setup.memory.delivered().is_empty());
    let metrics = setup.router.metrics();
    assert!(metrics.destination_delivery_failures.get() >= 1);
    assert!(metrics.dead_letter_errors.get() >= 1);
    // Back up, but the next delivery fails once more: one target gets through that round.
    setup.faults.set_down(false);
    setup.faults.fail_next(1);
    until(|| setup.memory.delivered().len() == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let targets: Vec<String> = setup
        .memory
        .delivered()
        .into_iter()
        .map(|d| d.target_arn)
        .collect();
    assert_eq!(targets.len(), 2, "each target exactly once: {targets:?}");
    assert!(targets.contains(&SQS.to_owned()) && targets.contains(&DLQ.to_owned()));
}

#[tokio::test]
async fn undeliverable_outcomes_are_parked_with_their_progress() {
    let setup = setup(3);
    setup.faults.set_down(true);
    let destinations = Destinations {
        on_success: Some(SQS.into()),
        ..Default::default()
    };
    enqueue(
        &setup.queue,
        &outcome("stuck", Condition::Success, destinations),
    )
    .await;
    let parked = loop {
        let items = setup
            .queue
            .peek(PARKED, invoq_queue::PeekLimit::items(10))
            .await
            .unwrap();
        if !items.is_empty() {
            break items;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let parked = Outcome::decode(&parked[0].body).unwrap();
    assert_eq!(parked.delivery.failed_attempts, 3);
    assert!(
        parked
            .delivery
            .last_error
            .unwrap()
            .contains("injected fault")
    );
    assert_eq!(setup.router.metrics().parked.get(), 1);
    assert_eq!(setup.queue.stats(DELIVERIES).await.unwrap().depth, 0);
}

#[tokio::test]
async fn function_destinations_are_invoked_asynchronously_and_empty_outcomes_dropped() {
    let setup = setup(5);
    let function = "arn:aws:lambda:us-east-1:000000000000:function:next";
    let destinations = Destinations {
        on_success: Some(function.into()),
        ..Default::default()
    };
    enqueue(
        &setup.queue,
        &outcome("chain", Condition::Success, destinations),
    )
    .await;
    enqueue(
        &setup.queue,
        &outcome("nowhere", Condition::Success, Destinations::default()),
    )
    .await;
    until(|| setup.invoker.events.lock().unwrap().len() == 1).await;
    let (arn, event) = setup.invoker.events.lock().unwrap()[0].clone();
    assert_eq!(arn, function);
    let record: serde_json::Value = serde_json::from_str(&event).unwrap();
    assert_eq!(record["requestContext"]["requestId"], "chain");
    until_settled(&setup.queue).await;
    assert!(setup.memory.delivered().is_empty());

    // The same outcome delivered again (a redelivery after a crash) carries the same
    // request id, so the destination function's side can tell it is not a new event.
    enqueue(
        &setup.queue,
        &outcome("chain", Condition::Success, destinations_to(function)),
    )
    .await;
    until(|| setup.invoker.events.lock().unwrap().len() == 2).await;
    let ids = setup.invoker.request_ids.lock().unwrap().clone();
    assert_eq!(ids[0], ids[1], "one request id per outcome and target");
    assert_ne!(ids[0], "chain", "not the source event's own id");
    let depths = setup.invoker.chain_depths.lock().unwrap().clone();
    assert_eq!(
        depths,
        [4, 4],
        "a destination's invoke is one deeper in the chain"
    );
}

#[tokio::test]
async fn a_record_too_large_for_sns_arrives_without_its_payloads() {
    let setup = setup(5);
    let topic = "arn:aws:sns:us-east-1:123456789012:results";
    let mut large = outcome(
        "large",
        Condition::Success,
        Destinations {
            on_success: Some(topic.into()),
            ..Default::default()
        },
    );
    large.record.response_payload = Some(JsonText::from_value(&"x".repeat(300_000)));
    enqueue(&setup.queue, &large).await;
    until(|| setup.memory.delivered().len() == 1).await;
    let delivered = setup.memory.delivered()[0].clone();
    assert!(delivered.body.len() < 262_144);
    let record: serde_json::Value = serde_json::from_str(&delivered.body).unwrap();
    assert_eq!(record["requestContext"]["condition"], "Success");
    assert_eq!(record["requestPayload"], serde_json::json!({"order": 1}));
    assert!(record.get("responsePayload").is_none());
    until_settled(&setup.queue).await;
}

fn destinations_to(function: &str) -> Destinations {
    Destinations {
        on_success: Some(function.into()),
        ..Default::default()
    }
}

//! One conformance suite for every destination adapter: memory, file, and the AWS adapter
//! against a real AWS stand-in (moto or LocalStack). Each adapter delivers an invocation record
//! and a dead-letter message to an SQS ARN in another region and account than invoq's, and the
//! suite reads them back the way that adapter's consumer would.

use std::collections::BTreeMap;
use std::sync::Arc;

use invoq_destinations::aws::AwsDestinations;
use invoq_destinations::file::FileDestinations;
use invoq_destinations::memory::MemoryDestinations;
use invoq_destinations::{Delivery, DeliveryError, DeliveryKind, Destination};
use serde_json::Value;

use crate::harness::AwsStandIn;

/// A message as its consumer reads it: body, and attributes by name.
type Received = (String, BTreeMap<String, String>);

/// A destination target: the stand-ins' account, a region other than invoq's.
fn target(queue: &str) -> String {
    format!("arn:aws:sqs:us-east-2:123456789012:{queue}")
}

fn record_delivery(queue: &str) -> Delivery {
    Delivery {
        target_arn: target(queue),
        kind: DeliveryKind::Record {
            success: true,
            function_arn: "arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST".into(),
        },
        body: r#"{"version":"1.0","requestContext":{"requestId":"req-1"}}"#.into(),
        request_id: "req-1".into(),
        deduplication_id: "req-1-Success-on_success".into(),
    }
}

fn dead_letter_delivery(queue: &str) -> Delivery {
    Delivery {
        target_arn: target(queue),
        kind: DeliveryKind::DeadLetter {
            error_message: "it broke".into(),
        },
        body: r#"{"order":9}"#.into(),
        request_id: "req-2".into(),
        deduplication_id: "req-2-RetriesExhausted-dead_letter".into(),
    }
}

/// What every adapter must do, given a way to read back what reached a queue.
async fn conformance<R, F>(name: &str, adapter: Arc<dyn Destination>, read: R)
where
    R: Fn(String) -> F,
    F: Future<Output = Vec<Received>>,
{
    adapter
        .deliver(&record_delivery("records"))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    adapter
        .deliver(&dead_letter_delivery("dead-letters"))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));

    let records = read("records".into()).await;
    assert_eq!(records.len(), 1, "{name}: {records:?}");
    let record: Value = serde_json::from_str(&records[0].0).unwrap();
    assert_eq!(record["requestContext"]["requestId"], "req-1", "{name}");

    let dead_letters = read("dead-letters".into()).await;
    assert_eq!(dead_letters.len(), 1, "{name}: {dead_letters:?}");
    let (body, attributes) = &dead_letters[0];
    assert_eq!(body, r#"{"order":9}"#, "{name}: the original event");
    assert_eq!(
        attributes.get("RequestID").map(String::as_str),
        Some("req-2"),
        "{name}"
    );
    assert_eq!(
        attributes.get("ErrorCode").map(String::as_str),
        Some("200"),
        "{name}"
    );
    assert_eq!(
        attributes.get("ErrorMessage").map(String::as_str),
        Some("it broke"),
        "{name}"
    );

    let unsupported = Delivery {
        target_arn: "arn:aws:iam::123456789012:role/x".into(),
        ..record_delivery("x")
    };
    assert!(
        matches!(
            adapter.deliver(&unsupported).await,
            Err(DeliveryError::Unsupported(_))
        ),
        "{name}: an IAM role is not a destination"
    );
}

#[tokio::test]
async fn the_memory_adapter_conforms() {
    let memory = Arc::new(MemoryDestinations::default());
    let reader = memory.clone();
    // The memory adapter takes anything; the unsupported check is for real adapters only,
    // so it runs behind a filter like theirs.
    let adapter: Arc<dyn Destination> = Arc::new(OnlyQueues(memory));
    conformance("memory", adapter, |queue| {
        let delivered = reader.delivered();
        async move {
            delivered
                .into_iter()
                .filter(|delivery| delivery.target_arn == target(&queue))
                .map(|delivery| {
                    let attributes = match delivery.kind {
                        DeliveryKind::DeadLetter { .. } => delivery
                            .attributes()
                            .into_iter()
                            .map(|a| (a.name.to_owned(), a.value))
                            .collect(),
                        DeliveryKind::Record { .. } => BTreeMap::new(),
                    };
                    (delivery.body, attributes)
                })
                .collect()
        }
    })
    .await;
}

/// Refuses non-queue ARNs like the real adapters do.
struct OnlyQueues(Arc<MemoryDestinations>);

#[async_trait::async_trait]
impl Destination for OnlyQueues {
    async fn deliver(&self, delivery: &Delivery) -> Result<(), DeliveryError> {
        if !delivery.target_arn.starts_with("arn:aws:sqs:") {
            return Err(DeliveryError::Unsupported(delivery.target_arn.clone()));
        }
        self.0.deliver(delivery).await
    }
}

#[tokio::test]
async fn the_file_adapter_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let files = Arc::new(FileDestinations::new(dir.path().join("destinations")));
    let adapter: Arc<dyn Destination> = files.clone();
    conformance("file", adapter, |queue| {
        let path = files.path_of(&target(&queue)).unwrap();
        async move {
            assert!(
                path.ends_with(format!("destinations/sqs/{queue}.jsonl")),
                "{}",
                path.display()
            );
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            text.lines()
                .map(|line| {
                    let value: Value = serde_json::from_str(line).unwrap();
                    match value.get("messageAttributes") {
                        // Dead-letter lines: the event plus its attributes.
                        Some(attributes) => (
                            value["body"].as_str().unwrap().to_owned(),
                            attributes
                                .as_object()
                                .unwrap()
                                .iter()
                                .map(|(k, v)| {
                                    (k.clone(), v["StringValue"].as_str().unwrap().to_owned())
                                })
                                .collect(),
                        ),
                        // Record lines: the record itself.
                        None => (line.to_owned(), BTreeMap::new()),
                    }
                })
                .collect()
        }
    })
    .await;
}

#[tokio::test]
async fn the_aws_adapter_conforms_against_an_aws_stand_in() {
    let aws = AwsStandIn::start();
    let config = aws.sdk_config().await;
    // The queues live in us-east-2, as the target ARNs say; invoq's own region is us-east-1.
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&config)
            .region(aws_sdk_sqs::config::Region::new("us-east-2"))
            .build(),
    );
    for queue in ["records", "dead-letters"] {
        sqs.create_queue().queue_name(queue).send().await.unwrap();
    }
    let adapter: Arc<dyn Destination> = Arc::new(AwsDestinations::new(config));
    conformance("aws", adapter, |queue| {
        let sqs = sqs.clone();
        async move {
            let url = sqs.get_queue_url().queue_name(&queue).send().await.unwrap();
            let output = sqs
                .receive_message()
                .queue_url(url.queue_url().unwrap())
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .send()
                .await
                .unwrap();
            output
                .messages()
                .iter()
                .map(|message| {
                    let attributes: BTreeMap<String, String> = message
                        .message_attributes()
                        .into_iter()
                        .flatten()
                        .map(|(name, value)| {
                            (
                                name.clone(),
                                value.string_value().unwrap_or_default().to_owned(),
                            )
                        })
                        .collect();
                    (message.body().unwrap_or_default().to_owned(), attributes)
                })
                .collect()
        }
    })
    .await;
}

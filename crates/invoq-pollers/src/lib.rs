//! invoq-pollers runs event source mappings (lambda-spec.md §6): for every enabled mapping,
//! pollers long-poll its SQS queue with aws-sdk-sqs (so `AWS_ENDPOINT_URL` points them at
//! LocalStack or moto), gather a batch (BatchSize within MaximumBatchingWindowInSeconds),
//! invoke the function synchronously with Lambda's SQS event, and delete what succeeded.
//!
//! - A function error leaves the batch to the queue's visibility timeout and redrive policy.
//! - With `ReportBatchItemFailures`, only the listed messages stay; a malformed answer (bad
//!   JSON, a null, empty or unknown `itemIdentifier`) fails the whole batch, as in Lambda.
//! - FIFO sources keep per-group order: after a failed message, the rest of its group in
//!   the batch stays in the queue too.
//! - FilterCriteria: messages that match no pattern are deleted without an invoke.
//! - invoq extension: with `DestinationConfig.OnFailure`, a message that failed
//!   `1 + MaximumRetryAttempts` times goes to that destination as an invocation record
//!   (condition RetriesExhausted, requestPayload = the SQS event of that message) through the
//!   router's `deliveries` queue, and is then deleted from the source.
//!
//! [`Pollers::run`] follows the frontend's mapping list and starts, restarts or stops pollers
//! as mappings change, so mappings resume after a restart.

mod filter;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use bytes::Bytes;
use invoq_aws::{DisplayErrorContext, PerRegion, QueueUrls};
use invoq_domain::asynchronous::{
    Condition, Destinations, FunctionResponse, InvocationRecord, JsonText, Outcome, QueueMessage,
    RequestContext,
};
use invoq_domain::event_source::{DEFAULT_SQS_MAXIMUM_RETRY_ATTEMPTS, EventSourceMapping};
use invoq_queue::{DELIVERIES, EventQueue, QueueItem};
use invoq_registry::{EventSourceChecker, Registry};
use invoq_runtime::{Invocation, InvocationResult, RuntimeError, RuntimeService};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Pollers per mapping when ScalingConfig does not say.
const DEFAULT_POLLERS: u32 = 2;
/// Long-poll wait of one ReceiveMessage.
const RECEIVE_WAIT_SECONDS: i32 = 5;

/// SQS clients by region, with queue URLs by ARN.
struct Sqs {
    clients: PerRegion<aws_sdk_sqs::Client>,
    urls: QueueUrls,
}

impl Sqs {
    fn new(config: SdkConfig) -> Self {
        Sqs {
            clients: PerRegion::new(config, invoq_aws::sqs_client),
            urls: QueueUrls::default(),
        }
    }

    /// The client and queue URL for a queue ARN.
    async fn queue(&self, arn: &str) -> Result<(aws_sdk_sqs::Client, String), String> {
        let target = invoq_domain::Arn::parse(arn).map_err(|error| format!("{arn}: {error}"))?;
        let client = self.clients.get(&target.region);
        let url = self.urls.resolve(&client, &target).await.map_err(|error| {
            let code = error.as_service_error().and_then(|e| aws_sdk_sqs::error::ProvideErrorMetadata::code(e).map(str::to_owned));
            match code.as_deref() {
                Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist") => {
                    "Error occurred while ReceiveMessage. SQS Error Code: AWS.SimpleQueueService.NonExistentQueue. \
                     SQS Error Message: The specified queue does not exist."
                        .to_owned()
                }
                _ => format!("cannot reach {arn}: {}", DisplayErrorContext(&error)),
            }
        })?;
        Ok((client, url))
    }

    /// Forgets the URL of a queue whose calls failed: it may have been recreated.
    fn forget(&self, arn: &str) {
        if let Ok(target) = invoq_domain::Arn::parse(arn) {
            self.urls.forget(&target);
        }
    }
}

/// A mapping as its pollers were started, and their tasks.
type RunningMapping = (EventSourceMapping, Vec<JoinHandle<()>>);

pub struct Pollers {
    sqs: Sqs,
    runtime: Arc<dyn RuntimeService>,
    registry: Arc<dyn Registry>,
    queue: Arc<dyn EventQueue>,
    running: Mutex<HashMap<String, RunningMapping>>,
}

impl Pollers {
    pub fn new(
        config: SdkConfig,
        runtime: Arc<dyn RuntimeService>,
        registry: Arc<dyn Registry>,
        queue: Arc<dyn EventQueue>,
    ) -> Arc<Self> {
        Arc::new(Pollers {
            sqs: Sqs::new(config),
            runtime,
            registry,
            queue,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Keeps one set of pollers per enabled mapping, following every change.
    pub async fn run(self: Arc<Self>, mut mappings: watch::Receiver<Vec<EventSourceMapping>>) {
        loop {
            let wanted = mappings.borrow_and_update().clone();
            self.reconcile(wanted);
            if mappings.changed().await.is_err() {
                return;
            }
        }
    }

    fn reconcile(self: &Arc<Self>, wanted: Vec<EventSourceMapping>) {
        let mut running = self.running.lock().expect("pollers poisoned");
        let wanted: HashMap<String, EventSourceMapping> = wanted
            .into_iter()
            .filter(|m| m.enabled)
            .map(|m| (m.uuid.clone(), m))
            .collect();
        running.retain(|uuid, (mapping, tasks)| {
            let keep = wanted.get(uuid) == Some(mapping);
            if !keep {
                tasks.iter().for_each(JoinHandle::abort);
            }
            keep
        });
        for (uuid, mapping) in wanted {
            if running.contains_key(&uuid) {
                continue;
            }
            let pollers = mapping
                .maximum_concurrency
                .unwrap_or(DEFAULT_POLLERS)
                .max(1);
            let tasks = (0..pollers)
                .map(|_| tokio::spawn(self.clone().poll(mapping.clone())))
                .collect();
            running.insert(uuid, (mapping, tasks));
        }
    }

    async fn poll(self: Arc<Self>, mapping: EventSourceMapping) {
        loop {
            match self.poll_once(&mapping).await {
                Ok(()) => {}
                Err(error) => {
                    tracing::warn!(%error, mapping = %mapping.uuid, "polling failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn poll_once(&self, mapping: &EventSourceMapping) -> Result<(), String> {
        let (sqs, url) = self.sqs.queue(&mapping.event_source_arn).await?;
        let messages = receive_batch(&sqs, &url, mapping)
            .await
            .inspect_err(|_| self.sqs.forget(&mapping.event_source_arn))?;
        if messages.is_empty() {
            return Ok(());
        }
        let region = invoq_domain::Arn::parse(&mapping.event_source_arn)
            .map(|arn| arn.region)
            .unwrap_or_default();
        let records: Vec<(Message, Value)> = messages
            .into_iter()
            .map(|message| {
                let record = sqs_record(&message, &mapping.event_source_arn, &region);
                (message, record)
            })
            .collect();
        // Filtered-out messages are consumed without an invoke, as Lambda does.
        let (kept, dropped): (Vec<_>, Vec<_>) = records
            .into_iter()
            .partition(|(_, record)| filter::keeps(&mapping.filters, &with_parsed_body(record)));
        delete(&sqs, &url, dropped.iter().map(|(message, _)| message)).await?;
        if kept.is_empty() {
            return Ok(());
        }

        let event =
            json!({ "Records": kept.iter().map(|(_, record)| record.clone()).collect::<Vec<_>>() });
        let result = self.invoke(mapping, &event).await;
        let failed: HashSet<String> = match &result {
            Ok(result) if result.function_error.is_none() => {
                if mapping.reports_batch_item_failures() {
                    batch_item_failures(&result.payload, &kept)
                } else {
                    HashSet::new()
                }
            }
            _ => kept
                .iter()
                .map(|(message, _)| message_id(message))
                .collect(),
        };
        let failed = if mapping.is_fifo() {
            block_failed_groups(&kept, failed)
        } else {
            failed
        };

        // Succeeded messages are deleted; failed ones stay for the queue's visibility
        // timeout, unless their retries are used up and their record reached OnFailure.
        let mut done: Vec<&Message> = Vec::new();
        for (message, record) in &kept {
            let succeeded = !failed.contains(&message_id(message));
            let handed_off = !succeeded
                && self.exhausted(mapping, message)
                && self
                    .send_to_on_failure(mapping, record, result.as_ref().ok())
                    .await;
            if succeeded || handed_off {
                done.push(message);
            }
        }
        delete(&sqs, &url, done.into_iter()).await
    }

    async fn invoke(
        &self,
        mapping: &EventSourceMapping,
        event: &Value,
    ) -> Result<InvocationResult, String> {
        let target = self
            .registry
            .resolve(&mapping.function_name, invoq_domain::LATEST)
            .await
            .map_err(|error| error.to_string())?
            .ok_or_else(|| format!("function {} does not exist", mapping.function_name))?;
        let invocation = Invocation {
            function: target.spec,
            request_id: invoq_domain::new_request_id(),
            payload: Bytes::from(event.to_string()),
            invoked_function_arn: mapping.function_arn.clone(),
            client_context: None,
            attempt: 1,
            trace_id: None,
        };
        let registry = self.registry.clone();
        invoq_runtime::invoke_deploying(self.runtime.as_ref(), invocation, |sha| async move {
            registry.code(&sha).await.map_err(RuntimeError::from)
        })
        .await
        .map_err(|error| error.to_string())
    }

    /// Whether a failed message has used up its retries (invoq's OnFailure extension).
    fn exhausted(&self, mapping: &EventSourceMapping, message: &Message) -> bool {
        let Some(_) = &mapping.on_failure else {
            return false;
        };
        let retries = mapping
            .maximum_retry_attempts
            .unwrap_or(DEFAULT_SQS_MAXIMUM_RETRY_ATTEMPTS);
        receive_count(message) > retries
    }

    /// Hands the failure record of one message to the router; true once it is durable.
    async fn send_to_on_failure(
        &self,
        mapping: &EventSourceMapping,
        record: &Value,
        response: Option<&InvocationResult>,
    ) -> bool {
        let message_id = record["messageId"].as_str().unwrap_or_default().to_owned();
        let request_context = RequestContext {
            request_id: message_id.clone(),
            function_arn: mapping.function_arn.clone(),
            condition: Condition::RetriesExhausted,
            approximate_invoke_count: record["attributes"]["ApproximateReceiveCount"]
                .as_str()
                .and_then(|count| count.parse().ok())
                .unwrap_or(1),
        };
        let response = response.map(|response| FunctionResponse {
            executed_version: &response.executed_version,
            function_error: response.function_error.as_deref(),
            payload: &response.payload,
        });
        let request_payload = JsonText::from_value(&json!({ "Records": [record] }));
        let outcome = Outcome {
            record: InvocationRecord::new(request_context, request_payload, response),
            destinations: Destinations {
                on_failure: mapping.on_failure.clone(),
                ..Destinations::default()
            },
            error_message: None,
            chain_depth: 0,
            delivery: Default::default(),
        };
        let body = Bytes::from(outcome.encode());
        match self
            .queue
            .enqueue(
                DELIVERIES,
                QueueItem {
                    id: message_id,
                    body,
                },
                Duration::ZERO,
            )
            .await
        {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "failure record not queued; the message stays in its source");
                false
            }
        }
    }
}

/// Up to BatchSize messages: one long poll, then more within the batching window.
async fn receive_batch(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    mapping: &EventSourceMapping,
) -> Result<Vec<Message>, String> {
    let window = Duration::from_secs(u64::from(mapping.maximum_batching_window_seconds));
    let started = tokio::time::Instant::now();
    let mut messages = Vec::new();
    loop {
        let wanted = (mapping.batch_size as usize - messages.len()).min(10) as i32;
        let wait = if messages.is_empty() {
            RECEIVE_WAIT_SECONDS
        } else {
            1
        };
        let output = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(wanted)
            .wait_time_seconds(wait)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|error| format!("ReceiveMessage failed: {error}"))?;
        messages.extend(output.messages().iter().cloned());
        let full = messages.len() >= mapping.batch_size as usize;
        if messages.is_empty() || full || started.elapsed() >= window {
            return Ok(messages);
        }
    }
}

async fn delete<'a>(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    messages: impl Iterator<Item = &'a Message>,
) -> Result<(), String> {
    let entries: Vec<DeleteMessageBatchRequestEntry> = messages
        .enumerate()
        .filter_map(|(index, message)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(index.to_string())
                .receipt_handle(message.receipt_handle()?)
                .build()
                .ok()
        })
        .collect();
    for chunk in entries.chunks(10) {
        sqs.delete_message_batch()
            .queue_url(url)
            .set_entries(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|error| format!("DeleteMessageBatch failed: {error}"))?;
    }
    Ok(())
}

/// Lambda's SQS event record for one message (lambda-spec.md §6).
fn sqs_record(message: &Message, event_source_arn: &str, region: &str) -> Value {
    let attributes: serde_json::Map<String, Value> = message
        .attributes()
        .into_iter()
        .flatten()
        .map(|(name, value)| (name.as_str().to_owned(), Value::from(value.clone())))
        .collect();
    let message_attributes: serde_json::Map<String, Value> = message
        .message_attributes()
        .into_iter()
        .flatten()
        .map(|(name, value)| {
            (
                name.clone(),
                json!({
                    "stringValue": value.string_value(),
                    "stringListValues": [],
                    "binaryListValues": [],
                    "dataType": value.data_type(),
                }),
            )
        })
        .collect();
    json!({
        "messageId": message.message_id(),
        "receiptHandle": message.receipt_handle(),
        "body": message.body(),
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfMessageAttributes": message.md5_of_message_attributes(),
        "md5OfBody": message.md5_of_body(),
        "eventSource": "aws:sqs",
        "eventSourceARN": event_source_arn,
        "awsRegion": region,
    })
}

/// Filters see the body as JSON when it is JSON.
fn with_parsed_body(record: &Value) -> Value {
    let mut record = record.clone();
    if let Some(body) = record["body"]
        .as_str()
        .and_then(|body| serde_json::from_str::<Value>(body).ok())
    {
        record["body"] = body;
    }
    record
}

/// The messages a ReportBatchItemFailures answer names, or all of them when the answer is
/// malformed (Lambda's strict rules).
fn batch_item_failures(payload: &[u8], batch: &[(Message, Value)]) -> HashSet<String> {
    let all = || {
        batch
            .iter()
            .map(|(message, _)| message_id(message))
            .collect()
    };
    let known: HashSet<String> = all();
    let answer: Value = match serde_json::from_slice(payload) {
        Ok(answer) => answer,
        Err(_) => return all(),
    };
    let failures = match &answer {
        Value::Null => return HashSet::new(),
        Value::Object(fields) => match fields.get("batchItemFailures") {
            None | Some(Value::Null) => return HashSet::new(),
            Some(Value::Array(items)) => items,
            Some(_) => return all(),
        },
        _ => return all(),
    };
    let mut failed = HashSet::new();
    for item in failures {
        match item.get("itemIdentifier").and_then(Value::as_str) {
            Some(id) if !id.is_empty() && known.contains(id) => {
                failed.insert(id.to_owned());
            }
            _ => return all(),
        }
    }
    failed
}

/// FIFO order: once a message of a group failed, the later ones of that group stay too.
fn block_failed_groups(batch: &[(Message, Value)], mut failed: HashSet<String>) -> HashSet<String> {
    let mut blocked: HashSet<String> = HashSet::new();
    for (message, record) in batch {
        let group = record["attributes"]["MessageGroupId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let id = message_id(message);
        if blocked.contains(&group) {
            failed.insert(id);
        } else if failed.contains(&id) {
            blocked.insert(group);
        }
    }
    failed
}

fn message_id(message: &Message) -> String {
    message.message_id().unwrap_or_default().to_owned()
}

fn receive_count(message: &Message) -> u32 {
    message
        .attributes()
        .and_then(|attributes| attributes.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|count| count.parse().ok())
        .unwrap_or(1)
}

/// Checks mapped queues exist, with AWS's error text when they do not.
pub struct SqsSourceChecker {
    sqs: Sqs,
}

impl SqsSourceChecker {
    pub fn new(config: SdkConfig) -> Self {
        SqsSourceChecker {
            sqs: Sqs::new(config),
        }
    }
}

#[async_trait]
impl EventSourceChecker for SqsSourceChecker {
    async fn check(&self, event_source_arn: &str) -> Result<(), String> {
        // Always asked afresh: the queue must exist now, not when it was last seen.
        self.sqs.forget(event_source_arn);
        self.sqs.queue(event_source_arn).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(messages: &[(&str, &str)]) -> Vec<(Message, Value)> {
        messages
            .iter()
            .map(|(id, group)| {
                let message = Message::builder().message_id(*id).build();
                let record = json!({ "messageId": id, "attributes": { "MessageGroupId": group } });
                (message, record)
            })
            .collect()
    }

    fn ids(set: HashSet<String>) -> Vec<String> {
        let mut ids: Vec<String> = set.into_iter().collect();
        ids.sort();
        ids
    }

    proptest::proptest! {
        /// Whatever a function answers, the parser decides without panicking, and only ever
        /// names messages of the batch.
        #[test]
        fn any_answer_to_a_batch_is_parsed_without_panicking(
            answer in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            text in "\\PC{0,160}",
        ) {
            let batch = batch(&[("a", ""), ("b", "")]);
            for payload in [answer.as_slice(), text.as_bytes()] {
                let failed = batch_item_failures(payload, &batch);
                proptest::prop_assert!(failed.iter().all(|id| id == "a" || id == "b"));
            }
        }
    }

    #[test]
    fn batch_item_failures_follow_lambdas_strict_rules() {
        let batch = batch(&[("a", ""), ("b", "")]);
        let failures = |answer: &str| ids(batch_item_failures(answer.as_bytes(), &batch));
        // Full success: empty or null list, empty or null response.
        for success in [
            r#"{"batchItemFailures":[]}"#,
            r#"{"batchItemFailures":null}"#,
            "{}",
            "null",
        ] {
            assert!(failures(success).is_empty(), "{success}");
        }
        assert_eq!(
            failures(r#"{"batchItemFailures":[{"itemIdentifier":"b"}]}"#),
            ["b"]
        );
        // Full failure: invalid JSON, empty / null / unknown identifier, wrong key.
        for malformed in [
            "not json",
            r#"{"batchItemFailures":[{"itemIdentifier":""}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":null}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":"zzz"}]}"#,
            r#"{"batchItemFailures":[{"id":"a"}]}"#,
            r#"{"batchItemFailures":"a"}"#,
        ] {
            assert_eq!(failures(malformed), ["a", "b"], "{malformed}");
        }
    }

    #[test]
    fn a_failed_fifo_message_holds_back_the_rest_of_its_group() {
        let batch = batch(&[
            ("a1", "a"),
            ("b1", "b"),
            ("a2", "a"),
            ("a3", "a"),
            ("b2", "b"),
        ]);
        let failed = HashSet::from(["a2".to_owned()]);
        assert_eq!(ids(block_failed_groups(&batch, failed)), ["a2", "a3"]);
    }
}

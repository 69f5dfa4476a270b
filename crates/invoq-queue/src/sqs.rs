//! The SQS backend (`INVOQ_QUEUE=sqs`): the queues are SQS FIFO queues shared by any number
//! of processes on any number of machines. SQS is the distributed engine; invoq adds no
//! coordination of its own.
//!
//! Mapping of the [`EventQueue`] contract:
//! - each queue is `<prefix><queue>.fifo` (prefix `invoq-` by default), created on first use
//!   with high-throughput FIFO settings (deduplication and throughput per message group);
//! - an item is one message: its id in the `invoq-id` attribute and as its message group, so
//!   messages of one event are handed over in order and never leased in parallel;
//! - a lease is a receive with a visibility timeout; its receipt is `<message id> <receipt
//!   handle>`; extend and nack change the visibility;
//! - delays: FIFO queues refuse per-message `DelaySeconds`, so a delayed message carries its
//!   due time (`invoq-visible-at`) and the first receive before then hides it until due with
//!   `ChangeMessageVisibility` (12 hours at a time);
//! - sends, deletes and visibility changes from concurrent callers are coalesced into the
//!   batch APIs ([`Batcher`]), so throughput follows batch size, not round trips.
//!
//! Where it is weaker than the embedded backend (each documented in ARCHITECTURE.md too):
//! - **No cross-queue transaction.** [`EventQueue::settle_and_enqueue`] first re-checks the
//!   lease (a visibility change, which also gives the hand-off time to finish), then sends the
//!   new message, then deletes the leased one. A process killed between the send and the
//!   delete leaves the old message to be leased again; its second hand-off carries the same
//!   `MessageDeduplicationId` (derived from the leased message's id and the target queue), so
//!   SQS drops it if it comes within SQS's 5-minute deduplication window. A re-run that takes
//!   longer, or that ends differently (a retry the first time, a success the second), can
//!   still hand off twice: outcomes carry the request id for idempotent consumers.
//! - **Stale receipts.** SQS does not always refuse a receipt from an expired lease (LocalStack
//!   and moto accept it), so a slow holder may still settle; the deduplication above keeps
//!   that to one hand-off.
//! - **Approximate statistics.** Depth is SQS's approximate count (visible + in flight), the
//!   depth limit is checked against a value refreshed at most every `depth_refresh`, and the
//!   age of the oldest item is unknown.
//! - **Peek** receives with a zero visibility timeout: it sees only visible items (not leased
//!   or delayed ones) and counts as a receive.
//! - Durations are whole seconds; a delay or visibility past 12 hours is capped at 12 hours.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, Message, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use base64::Engine as _;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{
    EventQueue, Lease, PayloadBucket, PeekLimit, QueueError, QueueItem, QueueStats, now_ms,
};

const ID_ATTRIBUTE: &str = "invoq-id";
const VISIBLE_AT_ATTRIBUTE: &str = "invoq-visible-at";
const ENCODING_ATTRIBUTE: &str = "invoq-body-encoding";
/// Set on a message whose body is in the payload bucket: the bucket's name (the body is the
/// object's key).
const OBJECT_ATTRIBUTE: &str = "invoq-body-object";
/// The longest visibility timeout SQS accepts.
const MAX_VISIBILITY_SECONDS: i32 = 12 * 60 * 60;
/// The longest long poll SQS accepts.
const MAX_WAIT_SECONDS: u64 = 20;
/// How long a lease is held while it is handed off: the send and the delete must fit.
const HAND_OFF_GRACE_SECONDS: i32 = 30;
/// SQS batch limit: entries per call. The byte limit per call is the message size limit.
const MAX_BATCH_ENTRIES: usize = 10;
/// SQS's message size limit unless told otherwise: the default of queues in LocalStack, moto
/// and SQS before August 2025. SQS now accepts up to 1 MiB where a queue is set to it.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 262_144;
/// The largest `MaximumMessageSize` SQS accepts.
const MAX_MESSAGE_BYTES_CEILING: usize = 1_048_576;
/// Batch calls in flight per queue and operation.
const FLUSHES_IN_FLIGHT: usize = 16;

#[derive(Clone, Debug)]
pub struct SqsQueueOptions {
    /// Queue names are `<prefix><queue>.fifo`.
    pub prefix: String,
    /// Plain enqueues are refused past this many items in the target queue.
    pub max_depth: u64,
    /// How old the depth used for the limit may be.
    pub depth_refresh: Duration,
    /// Largest message (body and attributes) sent, and the `MaximumMessageSize` of the
    /// queues invoq creates; larger items are refused with [`QueueError::TooLarge`].
    pub max_message_bytes: usize,
}

impl Default for SqsQueueOptions {
    fn default() -> Self {
        SqsQueueOptions {
            prefix: "invoq-".into(),
            max_depth: 1_000_000,
            depth_refresh: Duration::from_secs(1),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// Queues in SQS, through one client.
pub struct SqsQueue {
    client: Client,
    options: SqsQueueOptions,
    queues: Mutex<HashMap<String, Arc<SqsQueueHandle>>>,
    /// Held while a queue's URL is looked up (or the queue created), so that the first burst
    /// of calls for a queue makes one lookup, not one each.
    resolving: tokio::sync::Mutex<()>,
    /// Where bodies too large for a message go; without one they are refused as too large.
    payloads: Option<PayloadBucket>,
}

/// One SQS queue: its URL, its batchers and the depth last seen.
struct SqsQueueHandle {
    name: String,
    url: String,
    max_message_bytes: usize,
    sends: Batcher<Outgoing>,
    deletes: Batcher<String>,
    visibility_changes: Batcher<(String, i32)>,
    depth: Mutex<Option<(Instant, u64)>>,
    /// Held by the one request that refreshes `depth`; the others use the value last seen.
    depth_refreshing: tokio::sync::Mutex<()>,
}

/// A message to send.
struct Outgoing {
    item: QueueItem,
    visible_at_ms: Option<u64>,
    deduplication_id: String,
    /// Whether the body goes as it is (SQS takes it as text) or base64-encoded.
    as_text: bool,
    /// The payload bucket holding the real body, when the body is an object key.
    object: Option<String>,
}

impl Outgoing {
    fn new(item: QueueItem, delay: Duration, deduplication_id: String) -> Self {
        let as_text =
            std::str::from_utf8(&item.body).is_ok_and(|text| text.chars().all(sqs_allows));
        Outgoing {
            item,
            visible_at_ms: (!delay.is_zero()).then(|| now_ms() + delay.as_millis() as u64),
            deduplication_id,
            as_text,
            object: None,
        }
    }

    /// The size SQS counts against its limit: the body as sent and every attribute's name,
    /// type and value.
    fn size(&self) -> usize {
        let attribute =
            |name: &str, data_type: &str, value: usize| name.len() + data_type.len() + value;
        let body = if self.as_text {
            self.item.body.len()
        } else {
            self.item.body.len().div_ceil(3) * 4
        };
        let mut size = body + attribute(ID_ATTRIBUTE, "String", self.item.id.len());
        if self.visible_at_ms.is_some() {
            size += attribute(VISIBLE_AT_ATTRIBUTE, "Number", 20);
        }
        if !self.as_text {
            size += attribute(ENCODING_ATTRIBUTE, "String", "base64".len());
        }
        if let Some(bucket) = &self.object {
            size += attribute(OBJECT_ATTRIBUTE, "String", bucket.len());
        }
        size
    }
}

impl SqsQueue {
    /// Queues reached through `client`. The queues are created when first used.
    pub fn new(client: Client, options: SqsQueueOptions) -> Result<Self, QueueError> {
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if !options.prefix.chars().all(valid) || options.prefix.len() > 40 {
            return Err(QueueError::Storage(format!(
                "SQS queue prefix {:?} must be at most 40 letters, digits, hyphens or underscores",
                options.prefix
            )));
        }
        if !(1024..=MAX_MESSAGE_BYTES_CEILING).contains(&options.max_message_bytes) {
            return Err(QueueError::Storage(format!(
                "SQS message size limit {} must be from 1024 to {MAX_MESSAGE_BYTES_CEILING} bytes",
                options.max_message_bytes
            )));
        }
        Ok(SqsQueue {
            client,
            options,
            queues: Mutex::new(HashMap::new()),
            resolving: tokio::sync::Mutex::new(()),
            payloads: None,
        })
    }

    /// Keeps bodies too large for one message in `bucket` instead of refusing them.
    pub fn with_payload_bucket(mut self, bucket: PayloadBucket) -> Self {
        self.payloads = Some(bucket);
        self
    }

    /// A message too large for SQS, with a payload bucket: its body is stored as an object
    /// and the message carries the key instead. Anything else is left as it is (and refused
    /// as too large when sent, without a bucket).
    async fn offload(
        &self,
        handle: &SqsQueueHandle,
        outgoing: &mut Outgoing,
    ) -> Result<(), QueueError> {
        let Some(bucket) = &self.payloads else {
            return Ok(());
        };
        if outgoing.size() <= handle.max_message_bytes {
            return Ok(());
        }
        let key = format!("{}/{}", handle.name, outgoing.deduplication_id);
        let body = std::mem::replace(&mut outgoing.item.body, Bytes::from(key.clone()));
        bucket.put(&key, body).await?;
        outgoing.as_text = true;
        outgoing.object = Some(bucket.name().to_owned());
        Ok(())
    }

    /// A received message's body, fetched from the payload bucket if it is kept there.
    /// `false` if the message cannot be handed out: its object is gone (a copy of it was
    /// settled already, so the message is deleted too) or cannot be read now (the message
    /// comes back after its visibility timeout). One such message never fails the others.
    async fn fetch_body(&self, handle: &SqsQueueHandle, lease: &mut Lease) -> bool {
        let Some(key) = object_of(lease) else {
            return true;
        };
        let Some(bucket) = &self.payloads else {
            tracing::warn!(id = %lease.item.id, "a message keeps its body in S3, and no payload bucket is configured");
            return false;
        };
        match bucket.get(key).await {
            Ok(Some(body)) => {
                lease.item.body = body;
                true
            }
            Ok(None) => {
                tracing::warn!(id = %lease.item.id, key, "a message's body object is gone; the message was settled before");
                let _ = handle.delete(lease).await;
                false
            }
            Err(error) => {
                tracing::warn!(id = %lease.item.id, %error, "cannot read a message's body object");
                false
            }
        }
    }

    /// After a message is deleted: its body's object goes too.
    async fn forget_body(&self, lease: &Lease) {
        if let (Some(key), Some(bucket)) = (object_of(lease), &self.payloads) {
            bucket.delete(key).await;
        }
    }

    async fn queue(&self, queue: &str) -> Result<Arc<SqsQueueHandle>, QueueError> {
        let cached = || {
            self.queues
                .lock()
                .expect("queues poisoned")
                .get(queue)
                .cloned()
        };
        if let Some(handle) = cached() {
            return Ok(handle);
        }
        let _resolving = self.resolving.lock().await;
        if let Some(handle) = cached() {
            return Ok(handle);
        }
        let name = format!("{}{queue}.fifo", self.options.prefix);
        let url = self.url_of(&name).await?;
        let handle = Arc::new(SqsQueueHandle::new(
            self.client.clone(),
            name,
            url,
            self.options.max_message_bytes,
        ));
        Ok(self
            .queues
            .lock()
            .expect("queues poisoned")
            .entry(queue.to_owned())
            .or_insert(handle)
            .clone())
    }

    /// The URL of the queue `name`, creating the queue if it does not exist yet.
    async fn url_of(&self, name: &str) -> Result<String, QueueError> {
        match self.client.get_queue_url().queue_name(name).send().await {
            Ok(output) => return Ok(output.queue_url.unwrap_or_default()),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_queue_does_not_exist()) => {}
            Err(error) => return Err(sdk_error(error)),
        }
        let max_message_bytes = self.options.max_message_bytes.to_string();
        let attributes = [
            (
                QueueAttributeName::MaximumMessageSize,
                max_message_bytes.as_str(),
            ),
            (QueueAttributeName::FifoQueue, "true"),
            (QueueAttributeName::DeduplicationScope, "messageGroup"),
            (QueueAttributeName::FifoThroughputLimit, "perMessageGroupId"),
            (QueueAttributeName::MessageRetentionPeriod, "1209600"),
        ];
        let mut request = self.client.create_queue().queue_name(name);
        for (attribute, value) in attributes {
            request = request.attributes(attribute, value);
        }
        let output = request.send().await.map_err(sdk_error)?;
        tracing::info!(queue = name, "created SQS queue");
        Ok(output.queue_url.unwrap_or_default())
    }

    /// The queue's depth for the admission limit, at most `depth_refresh` old.
    /// One request at a time asks SQS; under load the others go on with the last value.
    async fn depth_for_limit(&self, handle: &SqsQueueHandle) -> Result<u64, QueueError> {
        let cached = || *handle.depth.lock().expect("depth poisoned");
        let fresh = |seen: Instant| seen.elapsed() < self.options.depth_refresh;
        let _refreshing = match (cached(), handle.depth_refreshing.try_lock()) {
            (Some((seen, depth)), _) if fresh(seen) => return Ok(depth),
            (Some((_, depth)), Err(_)) => return Ok(depth),
            (_, Ok(guard)) => guard,
            (None, Err(_)) => {
                let guard = handle.depth_refreshing.lock().await;
                if let Some((seen, depth)) = cached()
                    && fresh(seen)
                {
                    return Ok(depth);
                }
                guard
            }
        };
        let depth = self.stats_of(handle).await?.depth;
        *handle.depth.lock().expect("depth poisoned") = Some((Instant::now(), depth));
        Ok(depth)
    }

    async fn stats_of(&self, handle: &SqsQueueHandle) -> Result<QueueStats, QueueError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(&handle.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(sdk_error)?;
        let depth = output
            .attributes
            .unwrap_or_default()
            .values()
            .filter_map(|count| count.parse::<u64>().ok())
            .sum();
        Ok(QueueStats {
            depth,
            oldest_age: None,
        })
    }

    async fn receive(
        &self,
        handle: &SqsQueueHandle,
        max: usize,
        visibility_seconds: i32,
        wait_seconds: i32,
    ) -> Result<Vec<Message>, QueueError> {
        let output = self
            .client
            .receive_message()
            .queue_url(&handle.url)
            .max_number_of_messages(max.clamp(1, MAX_BATCH_ENTRIES) as i32)
            .visibility_timeout(visibility_seconds)
            .wait_time_seconds(wait_seconds)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(output.messages.unwrap_or_default())
    }
}

#[async_trait]
impl EventQueue for SqsQueue {
    async fn enqueue(
        &self,
        queue: &str,
        item: QueueItem,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let handle = self.queue(queue).await?;
        let depth = self.depth_for_limit(&handle).await?;
        if depth >= self.options.max_depth {
            return Err(QueueError::Full {
                queue: queue.to_owned(),
                depth,
            });
        }
        // A resent enqueue (the same item, after a timeout) is deduplicated by SQS.
        let deduplication_id = digest(&[b"enqueue", item.id.as_bytes(), &item.body]);
        let mut outgoing = Outgoing::new(item, delay, deduplication_id);
        self.offload(&handle, &mut outgoing).await?;
        handle.send(outgoing).await?;
        if let Some((_, depth)) = handle.depth.lock().expect("depth poisoned").as_mut() {
            *depth += 1;
        }
        Ok(())
    }

    async fn lease(
        &self,
        queue: &str,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        let handle = self.queue(queue).await?;
        let visibility_seconds = whole_seconds(visibility).max(1);
        let deadline = Instant::now() + wait;
        let mut leases = Vec::new();
        while leases.len() < max {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let wait_seconds = if leases.is_empty() {
                remaining.as_secs().min(MAX_WAIT_SECONDS) as i32
            } else {
                0
            };
            let wanted = (max - leases.len()).min(MAX_BATCH_ENTRIES);
            let messages = self
                .receive(&handle, wanted, visibility_seconds, wait_seconds)
                .await?;
            let received = messages.len();
            let now = now_ms();
            for message in messages {
                let (mut lease, visible_at_ms) = decode(queue, message)?;
                match visible_at_ms {
                    Some(due) if due > now => handle.hide_until_due(&lease, due - now),
                    _ => {
                        if self.fetch_body(&handle, &mut lease).await {
                            leases.push(lease);
                        }
                    }
                }
            }
            if received == wanted {
                continue; // perhaps more are visible
            }
            if !leases.is_empty() || remaining.is_zero() {
                break;
            }
            if wait_seconds == 0 {
                // Less than a second left: SQS cannot long-poll that, so look once more.
                tokio::time::sleep(remaining).await;
            }
        }
        Ok(leases)
    }

    async fn extend(&self, lease: &Lease, visibility: Duration) -> Result<Lease, QueueError> {
        let handle = self.queue(&lease.queue).await?;
        handle
            .change_visibility(lease, whole_seconds(visibility).max(1))
            .await?;
        Ok(lease.clone())
    }

    async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
        let handle = self.queue(&lease.queue).await?;
        handle.delete(lease).await?;
        self.forget_body(lease).await;
        Ok(())
    }

    async fn nack(&self, lease: &Lease, delay: Duration) -> Result<(), QueueError> {
        let handle = self.queue(&lease.queue).await?;
        handle.change_visibility(lease, whole_seconds(delay)).await
    }

    async fn settle_and_enqueue(
        &self,
        lease: &Lease,
        target: &str,
        item: QueueItem,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let source = self.queue(&lease.queue).await?;
        let target_handle = self.queue(target).await?;
        // Refuses a lease that is gone, and keeps it while the hand-off runs.
        source
            .change_visibility(lease, HAND_OFF_GRACE_SECONDS)
            .await?;
        let (message_id, _) = split_receipt(lease)?;
        let deduplication_id = digest(&[
            b"hand-off",
            source.name.as_bytes(),
            message_id.as_bytes(),
            target_handle.name.as_bytes(),
        ]);
        let mut outgoing = Outgoing::new(item, delay, deduplication_id);
        self.offload(&target_handle, &mut outgoing).await?;
        target_handle.send(outgoing).await?;
        source.delete(lease).await?;
        self.forget_body(lease).await;
        Ok(())
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let handle = self.queue(queue).await?;
        self.stats_of(&handle).await
    }

    async fn peek(&self, queue: &str, limit: PeekLimit) -> Result<Vec<QueueItem>, QueueError> {
        let handle = self.queue(queue).await?;
        let mut items: Vec<QueueItem> = Vec::new();
        let mut bytes = 0;
        // Receives with a zero visibility timeout may return the same messages again; stop
        // when a round brings nothing new. Bounded by `limit.items` rounds.
        'rounds: for _ in 0..limit.items.div_ceil(MAX_BATCH_ENTRIES).max(1) {
            let mut new = 0;
            for message in self.receive(&handle, MAX_BATCH_ENTRIES, 0, 0).await? {
                let (mut lease, _) = decode(queue, message)?;
                if items.iter().any(|seen| seen.id == lease.item.id) {
                    continue;
                }
                if !self.fetch_body(&handle, &mut lease).await {
                    continue;
                }
                if !limit.admits(items.len(), bytes, lease.item.body.len()) {
                    break 'rounds;
                }
                bytes += lease.item.body.len();
                items.push(lease.item);
                new += 1;
            }
            if new == 0 {
                break;
            }
        }
        Ok(items)
    }
}

impl SqsQueueHandle {
    fn new(client: Client, name: String, url: String, max_message_bytes: usize) -> Self {
        let sends = {
            let (client, url) = (client.clone(), url.clone());
            Batcher::start(max_message_bytes, move |batch: Vec<Outgoing>| {
                let (client, url) = (client.clone(), url.clone());
                async move { send_batch(&client, &url, batch).await }
            })
        };
        let deletes = {
            let (client, url) = (client.clone(), url.clone());
            Batcher::start(max_message_bytes, move |batch: Vec<String>| {
                let (client, url) = (client.clone(), url.clone());
                async move { delete_batch(&client, &url, batch).await }
            })
        };
        let visibility_changes = {
            let (client, url) = (client, url.clone());
            Batcher::start(max_message_bytes, move |batch: Vec<(String, i32)>| {
                let (client, url) = (client.clone(), url.clone());
                async move { change_visibility_batch(&client, &url, batch).await }
            })
        };
        SqsQueueHandle {
            name,
            url,
            max_message_bytes,
            sends,
            deletes,
            visibility_changes,
            depth: Mutex::new(None),
            depth_refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends a message, refused with [`QueueError::TooLarge`] before any call if SQS would
    /// refuse it for its size.
    async fn send(&self, outgoing: Outgoing) -> Result<(), QueueError> {
        let size = outgoing.size();
        if size > self.max_message_bytes {
            return Err(QueueError::TooLarge {
                size,
                limit: self.max_message_bytes,
            });
        }
        self.sends.submit(outgoing, size).await
    }

    async fn delete(&self, lease: &Lease) -> Result<(), QueueError> {
        let (_, receipt_handle) = split_receipt(lease)?;
        self.deletes
            .submit(receipt_handle.to_owned(), receipt_handle.len())
            .await
    }

    async fn change_visibility(&self, lease: &Lease, seconds: i32) -> Result<(), QueueError> {
        let (_, receipt_handle) = split_receipt(lease)?;
        let seconds = seconds.clamp(0, MAX_VISIBILITY_SECONDS);
        match self
            .visibility_changes
            .submit((receipt_handle.to_owned(), seconds), receipt_handle.len())
            .await
        {
            Err(QueueError::LeaseLost { .. }) => Err(QueueError::LeaseLost {
                receipt: lease.receipt.clone(),
            }),
            other => other,
        }
    }

    /// A delayed message received before it is due: hidden again until then. If this fails
    /// the message only comes back after the lease's visibility, and is hidden again.
    fn hide_until_due(self: &Arc<Self>, lease: &Lease, remaining_ms: u64) {
        let handle = self.clone();
        let lease = lease.clone();
        let seconds = whole_seconds(Duration::from_millis(remaining_ms));
        tokio::spawn(async move {
            if let Err(error) = handle.change_visibility(&lease, seconds).await {
                tracing::warn!(%error, queue = handle.name, "cannot hide a delayed message");
            }
        });
    }
}

async fn send_batch(
    client: &Client,
    url: &str,
    batch: Vec<Outgoing>,
) -> Vec<Result<(), QueueError>> {
    let count = batch.len();
    let entries = batch.into_iter().enumerate().map(encode).collect();
    match client
        .send_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(output) => batch_results(count, output.failed, Refusal::Storage),
        Err(error) => vec![Err(sdk_error(error)); count],
    }
}

async fn delete_batch(
    client: &Client,
    url: &str,
    batch: Vec<String>,
) -> Vec<Result<(), QueueError>> {
    let count = batch.len();
    let entries = batch
        .into_iter()
        .enumerate()
        .map(|(index, receipt_handle)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(index.to_string())
                .receipt_handle(receipt_handle)
                .build()
                .expect("id and receipt handle are set")
        })
        .collect();
    match client
        .delete_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(output) => batch_results(count, output.failed, Refusal::Storage),
        Err(error) => vec![Err(sdk_error(error)); count],
    }
}

async fn change_visibility_batch(
    client: &Client,
    url: &str,
    batch: Vec<(String, i32)>,
) -> Vec<Result<(), QueueError>> {
    let count = batch.len();
    let entries = batch
        .into_iter()
        .enumerate()
        .map(|(index, (receipt_handle, seconds))| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(index.to_string())
                .receipt_handle(receipt_handle)
                .visibility_timeout(seconds)
                .build()
                .expect("id and receipt handle are set")
        })
        .collect();
    match client
        .change_message_visibility_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        // A refused visibility change means the message is gone or leased again.
        Ok(output) => batch_results(count, output.failed, Refusal::LeaseLost),
        Err(error) => vec![Err(sdk_error(error)); count],
    }
}

/// What a refused batch entry means.
#[derive(Clone, Copy)]
enum Refusal {
    Storage,
    LeaseLost,
}

/// Per-entry results of a batch call whose entry ids are their indexes.
fn batch_results(
    count: usize,
    failed: Vec<BatchResultErrorEntry>,
    refusal: Refusal,
) -> Vec<Result<(), QueueError>> {
    let mut results = vec![Ok(()); count];
    for failure in failed {
        let Some(result) = failure
            .id
            .parse::<usize>()
            .ok()
            .and_then(|index| results.get_mut(index))
        else {
            continue;
        };
        *result = Err(match refusal {
            Refusal::LeaseLost => QueueError::LeaseLost {
                receipt: String::new(),
            },
            Refusal::Storage => QueueError::Storage(format!(
                "SQS refused a batch entry: {} {}",
                failure.code,
                failure.message.as_deref().unwrap_or_default()
            )),
        });
    }
    results
}

fn encode((index, outgoing): (usize, Outgoing)) -> SendMessageBatchRequestEntry {
    let Outgoing {
        item,
        visible_at_ms,
        deduplication_id,
        as_text,
        object,
    } = outgoing;
    let string = |value: String| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .expect("data type is set")
    };
    // SQS bodies are text; anything else travels base64-encoded.
    let body = match std::str::from_utf8(&item.body) {
        Ok(text) if as_text => text.to_owned(),
        _ => base64::engine::general_purpose::STANDARD.encode(&item.body),
    };
    let mut entry = SendMessageBatchRequestEntry::builder()
        .id(index.to_string())
        .message_body(body)
        .message_group_id(group_id(&item.id))
        .message_deduplication_id(deduplication_id)
        .message_attributes(ID_ATTRIBUTE, string(item.id));
    if let Some(visible_at_ms) = visible_at_ms {
        entry = entry.message_attributes(
            VISIBLE_AT_ATTRIBUTE,
            MessageAttributeValue::builder()
                .data_type("Number")
                .string_value(visible_at_ms.to_string())
                .build()
                .expect("data type is set"),
        );
    }
    if let Some(bucket) = object {
        entry = entry.message_attributes(OBJECT_ATTRIBUTE, string(bucket));
    }
    if !as_text {
        entry = entry.message_attributes(ENCODING_ATTRIBUTE, string("base64".into()));
    }
    entry.build().expect("id and body are set")
}

/// A received message as a lease, with the time it is due if it was sent delayed.
fn decode(queue: &str, mut message: Message) -> Result<(Lease, Option<u64>), QueueError> {
    // Taken out before the closures below borrow the message, so the body is not copied.
    let message_id = message.message_id.take().unwrap_or_default();
    let body = message.body.take().unwrap_or_default();
    let receipt_handle = message.receipt_handle.take().unwrap_or_default();
    let attribute = |name: &str| {
        message
            .message_attributes
            .as_ref()
            .and_then(|attributes| attributes.get(name))
            .and_then(|value| value.string_value.clone())
    };
    let system = |name: MessageSystemAttributeName| {
        message
            .attributes
            .as_ref()
            .and_then(|attributes| attributes.get(&name))
            .and_then(|value| value.parse::<u64>().ok())
    };
    let body = if attribute(ENCODING_ATTRIBUTE).as_deref() == Some("base64") {
        Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(|error| QueueError::Storage(format!("message {message_id}: {error}")))?,
        )
    } else {
        Bytes::from(body)
    };
    // A body kept in the payload bucket: its key rides in the receipt, for the delete.
    let receipt = match attribute(OBJECT_ATTRIBUTE) {
        Some(_) => format!(
            "{message_id} {receipt_handle} {}",
            String::from_utf8_lossy(&body)
        ),
        None => format!("{message_id} {receipt_handle}"),
    };
    let lease = Lease {
        queue: queue.to_owned(),
        item: QueueItem {
            // A message sent by something else than invoq is named by its message id.
            id: attribute(ID_ATTRIBUTE).unwrap_or_else(|| message_id.clone()),
            body,
        },
        receipt,
        receive_count: system(MessageSystemAttributeName::ApproximateReceiveCount).unwrap_or(1)
            as u32,
        enqueued_at_ms: system(MessageSystemAttributeName::SentTimestamp).unwrap_or_else(now_ms),
    };
    let visible_at_ms = attribute(VISIBLE_AT_ATTRIBUTE).and_then(|at| at.parse().ok());
    Ok((lease, visible_at_ms))
}

/// The message id and receipt handle of a lease of this backend.
fn split_receipt(lease: &Lease) -> Result<(&str, &str), QueueError> {
    let mut parts = lease.receipt.split(' ');
    match (parts.next(), parts.next()) {
        (Some(message_id), Some(receipt_handle)) => Ok((message_id, receipt_handle)),
        _ => Err(QueueError::LeaseLost {
            receipt: lease.receipt.clone(),
        }),
    }
}

/// The payload bucket key of a lease whose body is kept there.
fn object_of(lease: &Lease) -> Option<&str> {
    lease.receipt.split(' ').nth(2)
}

/// Characters SQS accepts in a message body.
fn sqs_allows(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// The message group of an item: its id when SQS accepts it as one, else a digest of it.
fn group_id(id: &str) -> String {
    if !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic()) {
        id.to_owned()
    } else {
        digest(&[id.as_bytes()])
    }
}

fn digest(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    format!("{:x}", hasher.finalize())
}

fn whole_seconds(duration: Duration) -> i32 {
    duration
        .as_millis()
        .div_ceil(1000)
        .min(MAX_VISIBILITY_SECONDS as u128) as i32
}

fn sdk_error<E>(
    error: aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
) -> QueueError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    QueueError::Storage(format!("SQS: {}", DisplayErrorContext(&error)))
}

/// Coalesces concurrent single requests into SQS batch calls.
///
/// Full batches go out at once, up to `FLUSHES_IN_FLIGHT` together; at most one partial
/// batch is in flight, and requests that arrive meanwhile join the next one. A lone request
/// is sent without waiting, and when the server is slower than the arrivals, batches fill up
/// instead of many small calls queueing at the server (LocalStack serves them one at a time).
struct Batcher<T> {
    requests: mpsc::UnboundedSender<Pending<T>>,
}

struct Pending<T> {
    entry: T,
    size: usize,
    done: oneshot::Sender<Result<(), QueueError>>,
}

/// A batch being collected, within SQS's entry and byte limits.
struct Collecting<T> {
    batch: Vec<Pending<T>>,
    bytes: usize,
    max_bytes: usize,
}

impl<T> Collecting<T> {
    fn new(first: Pending<T>, max_bytes: usize) -> Self {
        Collecting {
            bytes: first.size,
            batch: vec![first],
            max_bytes,
        }
    }

    fn is_full(&self) -> bool {
        self.batch.len() >= MAX_BATCH_ENTRIES
    }

    /// Adds `next`, or gives it back when it would break the byte limit.
    fn push(&mut self, next: Pending<T>) -> Result<(), Pending<T>> {
        if self.bytes + next.size > self.max_bytes {
            return Err(next);
        }
        self.bytes += next.size;
        self.batch.push(next);
        Ok(())
    }
}

impl<T: Send + 'static> Batcher<T> {
    /// `flush` sends one batch of at most `max_bytes` and answers one result per entry, in
    /// order.
    fn start<F, Fut>(max_bytes: usize, flush: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<(), QueueError>>> + Send + 'static,
    {
        let (requests, mut incoming) = mpsc::unbounded_channel::<Pending<T>>();
        let flush = Arc::new(flush);
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(FLUSHES_IN_FLIGHT));
            let partial = Arc::new(Semaphore::new(1));
            let mut carried: Option<Pending<T>> = None;
            loop {
                let first = match carried.take() {
                    Some(pending) => pending,
                    None => match incoming.recv().await {
                        Some(pending) => pending,
                        None => return,
                    },
                };
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let mut collecting = Collecting::new(first, max_bytes);
                while !collecting.is_full() && carried.is_none() {
                    match incoming.try_recv() {
                        Ok(next) => carried = collecting.push(next).err(),
                        Err(_) => break,
                    }
                }
                // A partial batch waits for the partial one in flight, and keeps filling.
                let mut partial_permit = None;
                while !collecting.is_full() && carried.is_none() {
                    tokio::select! {
                        biased;
                        permit = partial.clone().acquire_owned() => {
                            partial_permit = permit.ok();
                            break;
                        }
                        Some(next) = incoming.recv() => carried = collecting.push(next).err(),
                    }
                }
                let flush = flush.clone();
                tokio::spawn(async move {
                    let (entries, waiters): (Vec<T>, Vec<_>) = collecting
                        .batch
                        .into_iter()
                        .map(|pending| (pending.entry, pending.done))
                        .unzip();
                    let count = waiters.len();
                    let mut results = flush(entries).await;
                    results.resize_with(count, || {
                        Err(QueueError::Storage("SQS batch answered no result".into()))
                    });
                    for (waiter, result) in waiters.into_iter().zip(results) {
                        let _ = waiter.send(result);
                    }
                    drop((slot, partial_permit));
                });
            }
        });
        Batcher { requests }
    }

    async fn submit(&self, entry: T, size: usize) -> Result<(), QueueError> {
        let (done, result) = oneshot::channel();
        let stopped = || QueueError::Storage("SQS batcher stopped".into());
        self.requests
            .send(Pending { entry, size, done })
            .map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lone request goes at once; requests trickling in while it is in flight are collected
    /// into full batches, which go straight away, and the remainder waits for it.
    #[tokio::test(start_paused = true)]
    async fn the_batcher_sends_full_batches_and_one_partial_at_a_time() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let batcher = {
            let sizes = sizes.clone();
            Arc::new(Batcher::start(
                DEFAULT_MAX_MESSAGE_BYTES,
                move |batch: Vec<u32>| {
                    sizes.lock().unwrap().push(batch.len());
                    async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        batch.iter().map(|_| Ok(())).collect()
                    }
                },
            ))
        };
        let lone = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.submit(0, 1).await }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        let mut crowd = Vec::new();
        for entry in 1..=25 {
            let batcher = batcher.clone();
            crowd.push(tokio::spawn(async move { batcher.submit(entry, 1).await }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lone.await.unwrap().unwrap();
        for request in crowd {
            request.await.unwrap().unwrap();
        }
        assert_eq!(*sizes.lock().unwrap(), [1, 10, 10, 5]);
    }
}

//! invoq-queue owns the durable queues of asynchronous invocation: `invocations`, filled by
//! the frontend before it answers 202 and drained by the retry worker, and `deliveries`,
//! filled by the worker with terminal outcomes for the router (DESIGN.md, "Data flow").
//!
//! The service is the [`EventQueue`] trait: leases with a visibility timeout, delayed
//! delivery, ack / nack, and [`EventQueue::settle_and_enqueue`], which ends a lease and
//! enqueues another item as one atomic step. It is shaped so that SQS can implement it
//! (delays, visibility changes, receipts, no cross-queue transactions).
//!
//! Backends: [`EmbeddedQueue`] stores everything in a redb database in the data directory,
//! with group commit; [`EmbeddedQueue::in_memory`] is the same engine on redb's in-memory
//! backend; [`SqsQueue`] keeps them in SQS FIFO queues shared by many machines (see its
//! module for where it is weaker). [`grpc`] serves any backend over gRPC and calls one
//! remotely.
//!
//! Boundary: bytes, ids, delays and leases; nothing of Lambda.

mod consumer;
mod embedded;
pub mod grpc;
mod heartbeat;
mod payload_bucket;
mod sqs;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use consumer::consume;
pub use embedded::{EmbeddedQueue, EmbeddedQueueOptions};
pub use heartbeat::{Heartbeat, while_leased};
pub use payload_bucket::PayloadBucket;
pub use sqs::{
    DEFAULT_MAX_MESSAGE_BYTES as SQS_DEFAULT_MAX_MESSAGE_BYTES, SqsQueue, SqsQueueOptions,
};

/// The queue the frontend fills with accepted Event invocations.
pub const INVOCATIONS: &str = "invocations";
/// The queue the worker fills with terminal outcomes for the router.
pub const DELIVERIES: &str = "deliveries";
/// Where the router parks outcomes it could not deliver, until they are redriven.
pub const PARKED: &str = "parked";

/// One message: an opaque body under a stable id (the request id for invocations), which
/// consumers use to deduplicate where delivery is at least once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueItem {
    pub id: String,
    pub body: Bytes,
}

/// A leased item: invisible to other consumers until the lease expires or is settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub queue: String,
    pub item: QueueItem,
    /// Identifies this lease of the item; a newer lease of the same item has another.
    pub receipt: String,
    /// How many times the item has been leased, this lease included.
    pub receive_count: u32,
    /// When the item was first enqueued, in milliseconds since the Unix epoch.
    pub enqueued_at_ms: u64,
}

/// Depth and age of a queue, for back-pressure and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Items in the queue, leased or not.
    pub depth: u64,
    /// Age of the oldest item.
    pub oldest_age: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue holds as many items as it may; try again later.
    #[error("queue {queue} is full ({depth} items)")]
    Full { queue: String, depth: u64 },
    /// The lease expired and the item was leased again, or the receipt is unknown.
    #[error("lease {receipt} is no longer held")]
    LeaseLost { receipt: String },
    /// The item is larger than the backend can store as one message.
    #[error("a message of {size} bytes is over the queue's limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("queue storage failed: {0}")]
    Storage(String),
}

/// The queue service. Every method that changes an item is durable when it returns.
#[async_trait]
pub trait EventQueue: Send + Sync + 'static {
    /// Appends an item, visible after `delay`. Refused with [`QueueError::Full`] past the
    /// backend's depth limit: this is the admission point of new work. Refused with
    /// [`QueueError::TooLarge`] (here and in every method that stores an item) when the
    /// backend cannot hold an item that size.
    async fn enqueue(
        &self,
        queue: &str,
        item: QueueItem,
        delay: Duration,
    ) -> Result<(), QueueError>;

    /// Leases up to `max` visible items for `visibility`, waiting up to `wait` for one to
    /// become visible (long polling).
    async fn lease(
        &self,
        queue: &str,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Lease>, QueueError>;

    /// Moves the lease's expiry to `visibility` from now; returns the renewed lease.
    async fn extend(&self, lease: &Lease, visibility: Duration) -> Result<Lease, QueueError>;

    /// Removes a leased item. Acking an item that is already gone succeeds.
    async fn ack(&self, lease: &Lease) -> Result<(), QueueError>;

    /// Returns a leased item to the queue, visible again after `delay`.
    async fn nack(&self, lease: &Lease, delay: Duration) -> Result<(), QueueError>;

    /// Removes the leased item and enqueues `item` in `target` after `delay`, as one step:
    /// either both happen or neither. Never refused for depth, so work in flight can always
    /// move on.
    async fn settle_and_enqueue(
        &self,
        lease: &Lease,
        target: &str,
        item: QueueItem,
        delay: Duration,
    ) -> Result<(), QueueError>;

    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError>;

    /// Items oldest first, without leasing them, within `limit`: for inspection.
    async fn peek(&self, queue: &str, limit: PeekLimit) -> Result<Vec<QueueItem>, QueueError>;

    /// Whether the backend can store right now (false while it recovers from a storage
    /// failure): what health checks report.
    fn is_healthy(&self) -> bool {
        true
    }
}

/// How much one peek may return: at most `items` items of at most `bytes` bytes of bodies in
/// all (the first item is always returned, so a peek makes progress).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeekLimit {
    pub items: usize,
    pub bytes: usize,
}

impl PeekLimit {
    /// The byte bound every peek has unless told otherwise: under gRPC's 4 MiB message
    /// limit, and small enough that an admin listing never costs much memory.
    pub const DEFAULT_BYTES: usize = 3 * 1024 * 1024;

    pub const fn items(items: usize) -> Self {
        PeekLimit {
            items,
            bytes: Self::DEFAULT_BYTES,
        }
    }

    /// Whether one more item of `size` bytes fits after `taken` items of `taken_bytes`.
    pub fn admits(&self, taken: usize, taken_bytes: usize, size: usize) -> bool {
        taken == 0 || (taken < self.items && taken_bytes + size <= self.bytes)
    }
}

/// Wall-clock milliseconds since the Unix epoch: enqueue times and visibility deadlines.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

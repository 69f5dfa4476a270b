//! invoq-queue will own the durable event queue behind asynchronous invocation: the
//! `invocations` queue the frontend fills on a 202 and the `deliveries` queue the retry worker
//! fills for the router (DESIGN.md, "Data flow").
//!
//! Nothing here runs yet: this crate holds the contract the backends (embedded on disk,
//! memory, SQS) will implement, so the services built around it can be written against it.
//! Until a backend exists, invoq refuses `InvocationType: Event` instead of answering 202.
//!
//! Boundary: knows bytes, ids, delays and leases; nothing of Lambda.

use std::time::Duration;

/// One message in a queue: an opaque body under a stable id (the request id for
/// invocations), used to deduplicate where a backend can only deliver at least once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueItem {
    pub id: String,
    pub body: Vec<u8>,
}

/// A leased item: invisible to other consumers until the lease expires or is settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub item: QueueItem,
    /// Backend-specific handle that settles this lease (an SQS receipt handle, say).
    pub receipt: String,
    /// How many times the item has been leased, this lease included.
    pub delivery_count: u32,
}

/// Depth and age of a queue, for back-pressure (429 past the depth limit) and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub depth: u64,
    pub oldest_age: Option<Duration>,
}

/// The operations every backend provides. Shaped so SQS can implement it: delays up to
/// 900 s natively and longer through visibility changes, and no cross-queue transactions,
/// which is why `settle_and_enqueue` is one call the backend makes as atomic as it can.
pub trait EventQueue: Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Appends an item, visible after `delay`; returns once it is durable.
    fn enqueue(
        &self,
        queue: &str,
        item: QueueItem,
        delay: Duration,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Leases up to `max` visible items for `visibility`.
    fn lease(
        &self,
        queue: &str,
        max: usize,
        visibility: Duration,
    ) -> impl Future<Output = Result<Vec<Lease>, Self::Error>> + Send;

    /// Removes a leased item for good. Settling an already settled lease is not an error.
    fn ack(
        &self,
        queue: &str,
        lease: &Lease,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Makes a leased item visible again after `delay`.
    fn nack(
        &self,
        queue: &str,
        lease: &Lease,
        delay: Duration,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Acks `lease` in `queue` and enqueues `item` in `target` as one step: the worker's
    /// hand-off of a terminal outcome to the router.
    fn settle_and_enqueue(
        &self,
        queue: &str,
        lease: &Lease,
        target: &str,
        item: QueueItem,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    fn stats(&self, queue: &str) -> impl Future<Output = Result<QueueStats, Self::Error>> + Send;
}

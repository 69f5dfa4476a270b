//! invoq-router will deliver the outcomes of asynchronous invocations (lambda-spec.md §4-§5):
//! it leases terminal outcomes from the deliveries queue, builds Lambda's invocation record,
//! and hands it to the `OnSuccess` / `OnFailure` destination and the dead-letter queue through
//! `invoq-adapters`, retrying with backoff and parking what it cannot deliver, never dropping.
//!
//! Nothing is implemented yet, and nothing pretends to be.
//!
//! Boundary: knows records and destinations by ARN; the wire protocols of SQS, SNS and
//! EventBridge stay in `invoq-adapters`.

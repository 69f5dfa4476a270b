//! invoq-adapters will deliver invocation records to destinations: SQS, SNS, EventBridge and
//! Lambda by ARN, through the AWS SDKs (so AWS, LocalStack and moto all work), or to JSON-lines
//! files under the data directory for local development, chosen by `INVOQ_DESTINATIONS`.
//!
//! Only the contract exists so far; no adapter is implemented, and none pretends to be.
//!
//! Boundary: one delivery at a time, no retries (the router retries), no knowledge of queues.

/// One message for a destination: the JSON body plus the attributes that let consumers
/// deduplicate (the request id) and, for dead-letter queues, learn why the event failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The destination ARN, e.g. `arn:aws:sqs:us-east-2:123456789012:destination`.
    pub target_arn: String,
    pub body: String,
    pub attributes: Vec<(String, String)>,
}

/// A place records can be delivered to.
pub trait Destination: Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Delivers once; the caller decides whether and when to retry.
    fn deliver(&self, delivery: &Delivery) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

//! Event source mappings (lambda-spec.md §6): an SQS queue polled in batches for a function.

use serde::{Deserialize, Serialize};

/// Default BatchSize for SQS sources.
pub const DEFAULT_BATCH_SIZE: u32 = 10;
pub const MAX_BATCH_SIZE: u32 = 10_000;
pub const MAX_FIFO_BATCH_SIZE: u32 = 10;
pub const MAX_BATCHING_WINDOW_SECONDS: u32 = 300;
/// invoq extension: how often a message of an SQS source with an OnFailure destination is
/// retried before it goes there (receives = 1 + this).
pub const DEFAULT_SQS_MAXIMUM_RETRY_ATTEMPTS: u32 = 2;

/// A mapping as stored and as pollers run it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventSourceMapping {
    pub uuid: String,
    pub event_source_arn: String,
    pub function_name: String,
    /// The function ARN as the caller gave it (qualified only if they qualified it).
    pub function_arn: String,
    pub batch_size: u32,
    pub maximum_batching_window_seconds: u32,
    pub enabled: bool,
    /// Creating, Enabled, Disabled, Updating...
    pub state: String,
    pub function_response_types: Vec<String>,
    pub maximum_concurrency: Option<u32>,
    /// FilterCriteria patterns, JSON text each.
    pub filters: Vec<String>,
    /// invoq extension for SQS sources: where records of messages that keep failing go.
    pub on_failure: Option<String>,
    pub maximum_retry_attempts: Option<u32>,
    /// Epoch seconds.
    pub last_modified: f64,
}

impl EventSourceMapping {
    pub fn reports_batch_item_failures(&self) -> bool {
        self.function_response_types
            .iter()
            .any(|kind| kind == "ReportBatchItemFailures")
    }

    pub fn is_fifo(&self) -> bool {
        self.event_source_arn.ends_with(".fifo")
    }
}

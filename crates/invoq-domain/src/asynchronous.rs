//! Asynchronous invocation's data (lambda-spec.md §2-§4): the settings of a function's event
//! invoke config, the event as it waits in the queue, and the terminal outcome with Lambda's
//! invocation record.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const DEFAULT_MAXIMUM_RETRY_ATTEMPTS: u32 = 2;
pub const MAX_MAXIMUM_RETRY_ATTEMPTS: u32 = 2;
pub const DEFAULT_MAXIMUM_EVENT_AGE_SECONDS: u32 = 21_600;
pub const MIN_MAXIMUM_EVENT_AGE_SECONDS: u32 = 60;
pub const MAX_MAXIMUM_EVENT_AGE_SECONDS: u32 = 21_600;
/// Largest Event payload (lambda-spec.md §1: 1 MB since Oct 2025).
pub const EVENT_PAYLOAD_MAX_BYTES: usize = 1_048_576;
/// Largest payload of the deprecated InvokeAsync.
pub const INVOKE_ASYNC_MAX_BYTES: usize = 262_144;

/// A function's event invoke config for one qualifier, as stored. Unset numbers mean
/// Lambda's defaults and are never echoed back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventInvokeConfig {
    pub maximum_retry_attempts: Option<u32>,
    pub maximum_event_age_seconds: Option<u32>,
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
    /// Epoch seconds.
    pub last_modified: f64,
}

/// What the retry worker applies to one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsyncSettings {
    pub maximum_retry_attempts: u32,
    pub maximum_event_age: Duration,
    pub destinations: Destinations,
}

/// Where the outcome of an event goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destinations {
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
    /// The function's `DeadLetterConfig.TargetArn`.
    pub dead_letter: Option<String>,
}

impl AsyncSettings {
    pub fn new(config: Option<EventInvokeConfig>, dead_letter: Option<String>) -> Self {
        let config = config.unwrap_or_default();
        AsyncSettings {
            maximum_retry_attempts: config
                .maximum_retry_attempts
                .unwrap_or(DEFAULT_MAXIMUM_RETRY_ATTEMPTS),
            maximum_event_age: Duration::from_secs(u64::from(
                config
                    .maximum_event_age_seconds
                    .unwrap_or(DEFAULT_MAXIMUM_EVENT_AGE_SECONDS),
            )),
            destinations: Destinations {
                on_success: config.on_success,
                on_failure: config.on_failure,
                dead_letter,
            },
        }
    }
}

/// An accepted Event invocation, as it waits in the `invocations` queue between attempts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedInvocation {
    /// The id the function sees on every attempt.
    pub request_id: String,
    pub function_name: String,
    /// `$LATEST`, a version or an alias.
    pub qualifier: String,
    /// The ARN the caller used, for `Lambda-Runtime-Invoked-Function-Arn`.
    pub invoked_function_arn: String,
    /// The event, JSON text.
    pub payload: String,
    /// When the 202 was sent, in milliseconds since the Unix epoch: event age counts from here.
    pub accepted_at_ms: u64,
    /// Attempts that ran the function (Lambda's `approximateInvokeCount`).
    pub attempts: u32,
    /// Consecutive throttles or system errors, which back off without using up retries.
    pub throttles: u32,
}

/// How an event ended (`requestContext.condition`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    Success,
    RetriesExhausted,
    EventAgeExceeded,
    ZeroReservedConcurrency,
}

impl Condition {
    pub fn is_success(self) -> bool {
        self == Condition::Success
    }
}

/// A terminal outcome, as the worker hands it to the router through the `deliveries` queue:
/// Lambda's invocation record plus where it must go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub record: InvocationRecord,
    pub destinations: Destinations,
    /// The function's error message, for the dead-letter queue's `ErrorMessage`.
    pub error_message: Option<String>,
    /// What the router has done with it so far.
    #[serde(default)]
    pub delivery: DeliveryProgress,
}

/// The router's progress on one outcome, kept with it across retries and parking, so a
/// retry never sends again what already arrived.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryProgress {
    /// Delivery rounds that failed.
    pub failed_attempts: u32,
    /// Targets already delivered to (`on_success`, `on_failure`, `dead_letter`).
    pub delivered: Vec<String>,
    /// Why the last round failed.
    pub last_error: Option<String>,
}

/// Lambda's destination invocation record (lambda-spec.md §4), field for field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvocationRecord {
    pub version: String,
    pub timestamp: String,
    pub request_context: RequestContext,
    pub request_payload: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_context: Option<ResponseContext>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_payload: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestContext {
    pub request_id: String,
    pub function_arn: String,
    pub condition: Condition,
    pub approximate_invoke_count: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseContext {
    pub status_code: u16,
    pub executed_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_serialises_in_lambda_shape() {
        let record = InvocationRecord {
            version: "1.0".into(),
            timestamp: "2019-11-14T18:16:05.568Z".into(),
            request_context: RequestContext {
                request_id: "id".into(),
                function_arn: "arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST".into(),
                condition: Condition::RetriesExhausted,
                approximate_invoke_count: 3,
            },
            request_payload: serde_json::json!({"a": 1}),
            response_context: Some(ResponseContext {
                status_code: 200,
                executed_version: "$LATEST".into(),
                function_error: Some("Unhandled".into()),
            }),
            response_payload: Some(serde_json::json!({"errorMessage": "x"})),
        };
        assert_eq!(
            serde_json::to_value(&record).unwrap(),
            serde_json::json!({
                "version": "1.0",
                "timestamp": "2019-11-14T18:16:05.568Z",
                "requestContext": {
                    "requestId": "id",
                    "functionArn": "arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST",
                    "condition": "RetriesExhausted",
                    "approximateInvokeCount": 3
                },
                "requestPayload": {"a": 1},
                "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
                "responsePayload": {"errorMessage": "x"}
            })
        );
    }
}

//! Asynchronous invocation's data (lambda-spec.md §2-§4): the settings of a function's event
//! invoke config, the event as it waits in the queue, and the terminal outcome with Lambda's
//! invocation record.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::recursion::RecursiveLoop;

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
    pub recursive_loop: RecursiveLoop,
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
    pub fn new(
        config: Option<EventInvokeConfig>,
        dead_letter: Option<String>,
        recursive_loop: RecursiveLoop,
    ) -> Self {
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
            recursive_loop,
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
    /// The event, as the caller sent it.
    pub payload: JsonText,
    /// When the 202 was sent, in milliseconds since the Unix epoch: event age counts from here.
    pub accepted_at_ms: u64,
    /// Attempts that ran the function (Lambda's `approximateInvokeCount`).
    pub attempts: u32,
    /// Consecutive throttles or system errors, which back off without using up retries.
    pub throttles: u32,
    /// Invocations of the same chain of events that came before this one (the count Lambda
    /// keeps in the trace header's lineage): what recursive loop detection counts.
    #[serde(default)]
    pub chain_depth: u32,
}

/// A message that travels through invoq's queues, with its one wire form: JSON, payloads
/// embedded as their own text ([`JsonText`]). Every producer and consumer goes through
/// these two functions, so the form can change in one place.
pub trait QueueMessage: Serialize + serde::de::DeserializeOwned {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("queue messages serialise")
    }

    fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl QueueMessage for QueuedInvocation {}
impl QueueMessage for Outcome {}

/// A JSON document kept as the text it arrived as: never parsed into values, never escaped
/// into a string. Events and responses travel through queues and invocation records this
/// way, so a 1 MB event is about 1 MB in every queue, and a dead-letter message carries the
/// caller's own text (only whitespace around the document is not kept).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JsonText(Box<RawValue>);

impl JsonText {
    /// The document in `bytes`, which must be one JSON value.
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let text = std::str::from_utf8(bytes).map_err(serde::de::Error::custom)?;
        RawValue::from_string(text.to_owned()).map(JsonText)
    }

    /// `bytes` as they are if they are JSON, otherwise as a JSON string of their text: how
    /// a function's response appears in a record (a function may answer anything).
    pub fn or_string(bytes: &[u8]) -> Self {
        JsonText::parse(bytes)
            .unwrap_or_else(|_| JsonText::from_value(&String::from_utf8_lossy(bytes)))
    }

    /// The JSON text of any serialisable value.
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Self {
        JsonText(serde_json::value::to_raw_value(value).expect("values serialise"))
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.get().is_empty()
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for JsonText {}

/// How an event ended (`requestContext.condition`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    Success,
    RetriesExhausted,
    EventAgeExceeded,
    ZeroReservedConcurrency,
    /// Stopped by recursive loop detection before it ran (invoq's name; Lambda documents
    /// that such events go to the dead-letter queue or OnFailure destination, not the
    /// condition it writes).
    RecursiveInvocationDetected,
}

impl Condition {
    /// The name as records write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Success => "Success",
            Condition::RetriesExhausted => "RetriesExhausted",
            Condition::EventAgeExceeded => "EventAgeExceeded",
            Condition::ZeroReservedConcurrency => "ZeroReservedConcurrency",
            Condition::RecursiveInvocationDetected => "RecursiveInvocationDetected",
        }
    }

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
    /// The chain depth of the event (see [`crate::recursion`]): a function destination's
    /// invoke is one deeper.
    #[serde(default)]
    pub chain_depth: u32,
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
    /// The event; left out only where a destination cannot take a record that large.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_payload: Option<JsonText>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_context: Option<ResponseContext>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_payload: Option<JsonText>,
}

/// How a function answered one invocation, as a record shows it.
#[derive(Clone, Copy, Debug)]
pub struct FunctionResponse<'a> {
    pub executed_version: &'a str,
    /// `Unhandled` or `Handled` when the function failed.
    pub function_error: Option<&'a str>,
    pub payload: &'a [u8],
}

impl InvocationRecord {
    /// Lambda's record of an invocation that ended as `request_context.condition`, stamped
    /// now: the one place records are made (async outcomes and event source failures).
    pub fn new(
        request_context: RequestContext,
        request_payload: JsonText,
        response: Option<FunctionResponse<'_>>,
    ) -> Self {
        InvocationRecord {
            version: "1.0".into(),
            timestamp: record_timestamp(),
            request_context,
            request_payload: Some(request_payload),
            response_context: response.map(|response| ResponseContext {
                status_code: 200,
                executed_version: response.executed_version.to_owned(),
                function_error: response.function_error.map(str::to_owned),
            }),
            response_payload: response.map(|response| JsonText::or_string(response.payload)),
        }
    }

    /// The record as JSON for a destination that takes at most `limit` bytes: whole if it
    /// fits, else without the response payload, else without either payload, as Lambda
    /// drops payloads from records too large for their destination. The condition, request
    /// id and function always stay.
    pub fn to_json_within(&self, limit: Option<usize>) -> String {
        let mut json = serde_json::to_string(self).expect("records serialise");
        let Some(limit) = limit else { return json };
        let mut trimmed = None;
        while json.len() > limit {
            let record = trimmed.get_or_insert_with(|| self.clone());
            if !record.drop_a_payload() {
                break;
            }
            json = serde_json::to_string(record).expect("records serialise");
        }
        json
    }

    /// Leaves out the next payload for a record too large for where it goes: the response
    /// first, then the request. `false` when there is none left to drop.
    pub fn drop_a_payload(&mut self) -> bool {
        self.response_payload.take().is_some() || self.request_payload.take().is_some()
    }
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

/// Wall-clock milliseconds since the Unix epoch: the clock of `accepted_at_ms` and event age.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// Now, as records write it: `2019-11-14T18:16:05.568Z`.
fn record_timestamp() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

/// The `round`-th wait of a doubling backoff: 1 s, 2 s, 4 s ... up to 5 minutes. Throttled
/// attempts and failed delivery rounds both back off this way.
pub fn doubling_backoff(round: u32) -> Duration {
    const MAX: Duration = Duration::from_secs(300);
    Duration::from_secs(1u64 << round.saturating_sub(1).min(16)).min(MAX)
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
            request_payload: Some(JsonText::parse(br#"{"a": 1}"#).unwrap()),
            response_context: Some(ResponseContext {
                status_code: 200,
                executed_version: "$LATEST".into(),
                function_error: Some("Unhandled".into()),
            }),
            response_payload: Some(JsonText::or_string(br#"{"errorMessage": "x"}"#)),
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

    #[test]
    fn condition_names_are_the_serialised_ones() {
        for condition in [
            Condition::Success,
            Condition::RetriesExhausted,
            Condition::EventAgeExceeded,
            Condition::ZeroReservedConcurrency,
            Condition::RecursiveInvocationDetected,
        ] {
            let serialised = serde_json::to_string(&condition).unwrap();
            assert_eq!(serialised, format!("\"{}\"", condition.as_str()));
        }
    }

    #[test]
    fn backoff_doubles_from_a_second_to_five_minutes() {
        let waits: Vec<u64> = (1..=11)
            .map(|round| doubling_backoff(round).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(doubling_backoff(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn a_queued_event_carries_the_payload_text_unescaped() {
        let payload = br#"{"quotes": "\"\"\"\"", "spaced" :  [1, 2]}"#;
        let event = QueuedInvocation {
            request_id: "id".into(),
            function_name: "f".into(),
            qualifier: "$LATEST".into(),
            invoked_function_arn: "arn".into(),
            payload: JsonText::parse(payload).unwrap(),
            accepted_at_ms: 1,
            attempts: 0,
            throttles: 0,
            chain_depth: 0,
        };
        let encoded = event.encode();
        let text = String::from_utf8(encoded.clone()).unwrap();
        assert!(
            text.contains(std::str::from_utf8(payload).unwrap()),
            "{text}"
        );
        assert!(encoded.len() < payload.len() + 200);
        let decoded = QueuedInvocation::decode(&encoded).unwrap();
        assert_eq!(decoded.payload.as_str().as_bytes(), payload);
    }

    #[test]
    fn payloads_that_are_not_json_are_refused_or_kept_as_strings() {
        assert!(JsonText::parse(b"{").is_err());
        assert!(JsonText::parse(b"\xff").is_err());
        assert_eq!(
            JsonText::or_string(b"plain text").as_str(),
            r#""plain text""#
        );
        assert_eq!(JsonText::or_string(b"[1]").as_str(), "[1]");
    }

    #[test]
    fn a_record_too_large_for_its_destination_loses_its_payloads_not_its_condition() {
        let record = InvocationRecord {
            version: "1.0".into(),
            timestamp: "t".into(),
            request_context: RequestContext {
                request_id: "id".into(),
                function_arn: "arn".into(),
                condition: Condition::RetriesExhausted,
                approximate_invoke_count: 1,
            },
            request_payload: Some(JsonText::from_value(&"r".repeat(1000))),
            response_context: None,
            response_payload: Some(JsonText::from_value(&"s".repeat(1000))),
        };
        let whole = record.to_json_within(None);
        assert!(whole.len() > 2000);
        assert_eq!(record.to_json_within(Some(whole.len())), whole);
        let without_response = record.to_json_within(Some(1500));
        assert!(without_response.contains("requestPayload"));
        assert!(!without_response.contains("responsePayload"));
        let bare = record.to_json_within(Some(100));
        assert!(!bare.contains("requestPayload") && bare.contains("RetriesExhausted"));
    }
}

//! invoq-destinations delivers messages to destinations named by ARN: invocation records to
//! `OnSuccess` / `OnFailure` destinations and original events to dead-letter queues
//! (lambda-spec.md §4-§5).
//!
//! [`Destination`] is the contract. Implementations:
//! - [`aws::AwsDestinations`]: SQS, SNS, EventBridge and S3 through the AWS SDKs, configured from
//!   the standard environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, credentials), so one binary
//!   talks to AWS, LocalStack or moto; region and account come from each ARN;
//! - [`file::FileDestinations`]: JSON lines under `<data-dir>/destinations/`, for local work;
//! - [`memory::MemoryDestinations`] and [`memory::FaultInjecting`], for tests.
//!
//! [`from_setting`] picks one from `INVOQ_DESTINATIONS` (`aws` or `file`).
//!
//! Boundary: one delivery attempt per call; retries, backoff and parking are the router's.
//! Lambda-function destinations are the router's too (they are async invokes of invoq).

pub mod aws;
pub mod file;
pub mod memory;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

/// One message for one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// e.g. `arn:aws:sqs:us-east-2:123456789012:destination`.
    pub target_arn: String,
    pub kind: DeliveryKind,
    /// The invocation record (JSON), or for a dead-letter queue the original event.
    pub body: String,
    /// Carried as the `RequestID` message attribute, so consumers can drop duplicates.
    pub request_id: String,
    /// Stable per outcome and target kind: FIFO targets deduplicate on it.
    pub deduplication_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryKind {
    /// A destination invocation record.
    Record {
        success: bool,
        /// The function's qualified ARN (EventBridge lists it in `Resources`).
        function_arn: String,
    },
    /// A dead-letter message: the original event with why it failed.
    DeadLetter { error_message: String },
}

impl Delivery {
    /// The message attributes SQS and SNS receive: `RequestID` always, and for dead-letter
    /// messages `ErrorCode` (Number, "200" for function errors) and `ErrorMessage`.
    pub fn attributes(&self) -> Vec<Attribute> {
        let mut attributes = vec![Attribute::string("RequestID", &self.request_id)];
        if let DeliveryKind::DeadLetter { error_message } = &self.kind {
            attributes.push(Attribute {
                name: "ErrorCode",
                data_type: "Number",
                value: "200".into(),
            });
            attributes.push(Attribute::string("ErrorMessage", error_message));
        }
        attributes
    }
}

impl Delivery {
    /// Where an S3 destination keeps this record: Lambda's layout,
    /// `aws/lambda/async/<function-name>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<uuid>`, from the
    /// record's own timestamp and a UUID derived from the deduplication id, so a redelivery
    /// writes the same object again instead of a second one.
    pub fn s3_key(&self) -> Result<String, DeliveryError> {
        #[derive(serde::Deserialize)]
        struct Stamped<'a> {
            #[serde(borrow)]
            timestamp: std::borrow::Cow<'a, str>,
        }
        let target = &self.target_arn;
        let DeliveryKind::Record { function_arn, .. } = &self.kind else {
            return Err(DeliveryError::Unsupported(target.clone()));
        };
        let function = function_arn
            .split(':')
            .nth(6)
            .filter(|name| invoq_domain::is_valid_name(name))
            .ok_or_else(|| DeliveryError::failed(target, "record without a function name"))?;
        let stamped: Stamped = serde_json::from_str(&self.body)
            .map_err(|error| DeliveryError::failed(target, error))?;
        // 2019-11-14T18:16:05.568Z
        let stamp = stamped.timestamp.as_ref();
        let well_formed = stamp.len() >= 19
            && stamp.is_char_boundary(19)
            && stamp[..19].bytes().enumerate().all(|(at, byte)| match at {
                4 | 7 => byte == b'-',
                10 => byte == b'T',
                13 | 16 => byte == b':',
                _ => byte.is_ascii_digit(),
            });
        if !well_formed {
            return Err(DeliveryError::failed(target, "record without a timestamp"));
        }
        let (year, month, day) = (&stamp[..4], &stamp[5..7], &stamp[8..10]);
        let time = stamp[11..19].replace(':', ".");
        let id = invoq_domain::stable_request_id(&self.deduplication_id);
        Ok(format!(
            "aws/lambda/async/{function}/{year}/{month}/{day}/{year}-{month}-{day}T{time}-{id}"
        ))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    pub name: &'static str,
    pub data_type: &'static str,
    pub value: String,
}

impl Attribute {
    fn string(name: &'static str, value: &str) -> Self {
        Attribute {
            name,
            data_type: "String",
            value: value.to_owned(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// This adapter cannot deliver to that kind of ARN at all.
    #[error("cannot deliver to {0}: unsupported destination")]
    Unsupported(String),
    /// The attempt failed; a later one may succeed.
    #[error("delivery to {target} failed: {message}")]
    Failed { target: String, message: String },
}

impl DeliveryError {
    fn failed(target: &str, message: impl std::fmt::Display) -> Self {
        DeliveryError::Failed {
            target: target.to_owned(),
            message: message.to_string(),
        }
    }
}

/// A place messages can be delivered to.
#[async_trait]
pub trait Destination: Send + Sync + 'static {
    /// Delivers once; the caller decides whether and when to retry.
    async fn deliver(&self, delivery: &Delivery) -> Result<(), DeliveryError>;
}

#[cfg(test)]
mod s3_key_tests {
    use super::*;

    fn record(body: &str) -> Delivery {
        Delivery {
            target_arn: "arn:aws:s3:::failures".into(),
            kind: DeliveryKind::Record {
                success: false,
                function_arn: "arn:aws:lambda:us-east-1:000000000000:function:orders:$LATEST"
                    .into(),
            },
            body: body.into(),
            request_id: "id".into(),
            deduplication_id: "id-RetriesExhausted-on_failure".into(),
        }
    }

    #[test]
    fn s3_keys_follow_lambdas_layout_and_repeat_for_a_redelivery() {
        let delivery = record(r#"{"version":"1.0","timestamp":"2019-11-14T18:16:05.568Z"}"#);
        let key = delivery.s3_key().unwrap();
        let prefix = "aws/lambda/async/orders/2019/11/14/2019-11-14T18.16.05-";
        assert!(key.starts_with(prefix), "{key}");
        assert_eq!(key.len(), prefix.len() + 36, "a UUID: {key}");
        assert_eq!(delivery.s3_key().unwrap(), key);
        assert!(record(r#"{"timestamp":"yesterday"}"#).s3_key().is_err());
        assert!(
            record(r#"{"timestamp":"2019-11-14T18:1\u00e9:05Z"}"#)
                .s3_key()
                .is_err()
        );
        assert!(record("not json").s3_key().is_err());
    }
}

/// Which adapters `INVOQ_DESTINATIONS` names.
#[derive(Debug, thiserror::Error)]
#[error("INVOQ_DESTINATIONS must be `aws` or `file`, not {0:?}")]
pub struct UnknownAdapters(pub String);

/// The adapters for `setting` (`aws` or `file`), validated at start-up. `aws_config` is the
/// AWS environment the `aws` adapters use (see [`invoq_aws::sdk_config_from_env`]).
pub fn from_setting(
    setting: &str,
    data_dir: &Path,
    aws_config: &aws_config::SdkConfig,
) -> Result<Arc<dyn Destination>, UnknownAdapters> {
    match setting {
        "aws" => Ok(Arc::new(aws::AwsDestinations::new(aws_config.clone()))),
        "file" => Ok(Arc::new(file::FileDestinations::new(
            data_dir.join("destinations"),
        ))),
        other => Err(UnknownAdapters(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_attributes_match_lambda() {
        let delivery = Delivery {
            target_arn: "arn:aws:sqs:us-east-1:123456789012:dlq".into(),
            kind: DeliveryKind::DeadLetter {
                error_message: "boom".into(),
            },
            body: "{}".into(),
            request_id: "id-1".into(),
            deduplication_id: "id-1-dlq".into(),
        };
        let attributes: Vec<_> = delivery
            .attributes()
            .into_iter()
            .map(|a| (a.name, a.data_type, a.value))
            .collect();
        assert_eq!(
            attributes,
            [
                ("RequestID", "String", "id-1".to_owned()),
                ("ErrorCode", "Number", "200".to_owned()),
                ("ErrorMessage", "String", "boom".to_owned()),
            ]
        );
    }
}

//! Amazon Resource Names of the resources invoq sends to or reads from: SQS queues, SNS
//! topics, EventBridge buses, S3 buckets, Lambda functions. [`Arn::parse`] checks partition,
//! region, account and the resource name by AWS's naming rules, so a name that reaches a file
//! path or a URL is known to be one AWS would accept (no `/`, no `..`, no NUL).

use std::fmt;

/// A validated ARN. The fields borrow nothing: it can be kept and sent across threads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Arn {
    pub partition: String,
    pub service: Service,
    /// Empty for S3 buckets.
    pub region: String,
    /// Empty for S3 buckets.
    pub account: String,
    /// The resource part as written (`orders`, `event-bus/default`, `function:f:live`).
    pub resource: String,
}

/// The services whose ARNs invoq understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    Sqs,
    Sns,
    Events,
    S3,
    Lambda,
}

impl Service {
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Sqs => "sqs",
            Service::Sns => "sns",
            Service::Events => "events",
            Service::S3 => "s3",
            Service::Lambda => "lambda",
        }
    }
}

/// Why a string is not an ARN invoq can use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArnError {
    #[error("not an ARN (arn:partition:service:region:account:resource)")]
    Malformed,
    #[error("unsupported service {0:?}")]
    UnsupportedService(String),
    #[error("invalid partition {0:?}")]
    Partition(String),
    #[error("invalid region {0:?}")]
    Region(String),
    #[error("invalid account id {0:?}")]
    Account(String),
    #[error("invalid {service} resource name {name:?}")]
    ResourceName { service: &'static str, name: String },
}

/// ARNs longer than this are refused outright (Lambda's destination limit is 350).
pub const MAX_ARN_LENGTH: usize = 1024;

impl Arn {
    pub fn parse(text: &str) -> Result<Self, ArnError> {
        if text.len() > MAX_ARN_LENGTH {
            return Err(ArnError::Malformed);
        }
        let mut parts = text.splitn(6, ':');
        let (
            Some("arn"),
            Some(partition),
            Some(service),
            Some(region),
            Some(account),
            Some(resource),
        ) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        )
        else {
            return Err(ArnError::Malformed);
        };
        if !is_partition(partition) {
            return Err(ArnError::Partition(partition.to_owned()));
        }
        let service = match service {
            "sqs" => Service::Sqs,
            "sns" => Service::Sns,
            "events" => Service::Events,
            "s3" => Service::S3,
            "lambda" => Service::Lambda,
            other => return Err(ArnError::UnsupportedService(other.to_owned())),
        };
        // S3 bucket ARNs name neither region nor account; everything else names both.
        if service == Service::S3 {
            if !region.is_empty() {
                return Err(ArnError::Region(region.to_owned()));
            }
            if !account.is_empty() {
                return Err(ArnError::Account(account.to_owned()));
            }
        } else {
            if !is_region(region) {
                return Err(ArnError::Region(region.to_owned()));
            }
            if !(account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())) {
                return Err(ArnError::Account(account.to_owned()));
            }
        }
        let arn = Arn {
            partition: partition.to_owned(),
            service,
            region: region.to_owned(),
            account: account.to_owned(),
            resource: resource.to_owned(),
        };
        if !arn.has_valid_resource() {
            return Err(ArnError::ResourceName {
                service: service.as_str(),
                name: resource.to_owned(),
            });
        }
        Ok(arn)
    }

    /// The resource's own name: queue, topic, bucket or function name, or the bus name
    /// without `event-bus/`.
    pub fn resource_name(&self) -> &str {
        match self.service {
            Service::Events => self
                .resource
                .strip_prefix("event-bus/")
                .unwrap_or(&self.resource),
            Service::Lambda => self
                .resource
                .strip_prefix("function:")
                .and_then(|rest| rest.split(':').next())
                .unwrap_or(&self.resource),
            _ => &self.resource,
        }
    }

    /// Whether the resource name is one AWS allows for the service.
    fn has_valid_resource(&self) -> bool {
        let name = self.resource.as_str();
        let word = |name: &str, max: usize| {
            (1..=max).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        match self.service {
            // Queue and topic names: letters, digits, - and _, with .fifo for FIFO ones.
            Service::Sqs => word(name.strip_suffix(".fifo").unwrap_or(name), 80),
            Service::Sns => word(name.strip_suffix(".fifo").unwrap_or(name), 256),
            // Bus names allow . and / (partner buses: aws.partner/...), never "..".
            Service::Events => name.strip_prefix("event-bus/").is_some_and(|bus| {
                (1..=256).contains(&bus.len())
                    && bus.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/')
                    })
                    && !bus.split('/').any(|part| part.is_empty() || part == "..")
            }),
            // Bucket names: 3-63 of lowercase letters, digits, . and -, starting and ending
            // with a letter or digit, no "..".
            Service::S3 => {
                (3..=63).contains(&name.len())
                    && name.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
                    })
                    && name.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && name.ends_with(|c: char| c.is_ascii_alphanumeric())
                    && !name.contains("..")
            }
            Service::Lambda => name.strip_prefix("function:").is_some_and(|rest| {
                let mut parts = rest.splitn(2, ':');
                let function = parts.next().unwrap_or_default();
                let qualifier_ok = parts
                    .next()
                    .is_none_or(|qualifier| qualifier == crate::LATEST || word(qualifier, 128));
                crate::is_valid_name(function) && qualifier_ok
            }),
        }
    }

    /// The resource name, if it can name a file as it is: no separator, no dot file.
    pub fn file_name(&self) -> Option<&str> {
        let name = self.resource_name();
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && !name.contains(['/', '\\', '\0'])
            && name.len() <= 255;
        plain.then_some(name)
    }
}

impl fmt::Display for Arn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "arn:{}:{}:{}:{}:{}",
            self.partition,
            self.service.as_str(),
            self.region,
            self.account,
            self.resource
        )
    }
}

fn is_partition(partition: &str) -> bool {
    partition
        .strip_prefix("aws")
        .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// `[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d`, as in Lambda's ARN patterns.
fn is_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    let lower = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase());
    let digit = |part: &str| part.len() == 1 && part.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        [area, name, number] => area.len() == 2 && lower(area) && lower(name) && digit(number),
        [area, kind, name, number] => {
            area.len() == 2
                && lower(area)
                && (*kind == "gov"
                    || kind
                        .strip_prefix("iso")
                        .is_some_and(|k| k.len() <= 1 && k.bytes().all(|b| b.is_ascii_lowercase())))
                && lower(name)
                && digit(number)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_arns_of_every_service_parse() {
        for text in [
            "arn:aws:sqs:us-east-1:000000000000:orders",
            "arn:aws:sqs:eu-west-2:123456789012:orders.fifo",
            "arn:aws:sns:us-gov-west-1:123456789012:alerts",
            "arn:aws-cn:events:cn-north-1:123456789012:event-bus/default",
            "arn:aws:events:us-east-1:123456789012:event-bus/aws.partner/acme/bus",
            "arn:aws:s3:::my-bucket.logs",
            "arn:aws:lambda:us-east-1:123456789012:function:f",
            "arn:aws:lambda:us-east-1:123456789012:function:f:live",
            "arn:aws:lambda:us-east-1:123456789012:function:f:$LATEST",
        ] {
            let arn = Arn::parse(text).unwrap_or_else(|error| panic!("{text}: {error}"));
            assert_eq!(arn.to_string(), text);
        }
        let bus = Arn::parse("arn:aws:events:us-east-1:123456789012:event-bus/default").unwrap();
        assert_eq!(bus.resource_name(), "default");
        assert_eq!(bus.file_name(), Some("default"));
        let function = Arn::parse("arn:aws:lambda:us-east-1:123456789012:function:f:7").unwrap();
        assert_eq!(function.resource_name(), "f");
    }

    #[test]
    fn traversal_and_malformed_arns_are_refused() {
        for text in [
            "arn:aws:sqs:us-east-1:000000000000:../../../../tmp/x",
            "arn:aws:sqs:us-east-1:000000000000:a/b",
            "arn:aws:sqs:us-east-1:000000000000:",
            "arn:aws:sqs:us-east-1:000000000000:.hidden",
            "arn:aws:sns:us-east-1:000000000000:x\0y",
            "arn:aws:events:us-east-1:000000000000:event-bus/../x",
            "arn:aws:events:us-east-1:000000000000:event-bus//x",
            "arn:aws:events:us-east-1:000000000000:rule/x",
            "arn:aws:s3:::../x",
            "arn:aws:s3:::UPPER",
            "arn:aws:s3:us-east-1::bucket",
            "arn:aws:lambda:us-east-1:000000000000:function:../x",
            "arn:aws:sqs:us-east-1:0000:orders",
            "arn:aws:sqs:US-EAST-1:000000000000:orders",
            "arn:gcp:sqs:us-east-1:000000000000:orders",
            "arn:aws:iam::000000000000:role/x",
            "/tmp/absolute",
            "arn:aws:sqs",
        ] {
            assert!(Arn::parse(text).is_err(), "{text} parsed");
        }
        let partner =
            Arn::parse("arn:aws:events:us-east-1:123456789012:event-bus/aws.partner/x").unwrap();
        assert_eq!(
            partner.file_name(),
            None,
            "a bus name with / is no file name"
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn parsing_any_text_never_panics(text in "\\PC{0,200}") {
            let _ = Arn::parse(&text);
        }

        #[test]
        fn arn_shaped_text_never_panics_and_round_trips(
            service in "(sqs|sns|events|s3|lambda|iam)",
            region in "[a-z0-9-]{0,16}",
            account in "[0-9]{0,14}",
            resource in "[a-zA-Z0-9_./:$-]{0,90}",
        ) {
            let text = format!("arn:aws:{service}:{region}:{account}:{resource}");
            if let Ok(arn) = Arn::parse(&text) {
                prop_assert_eq!(arn.to_string(), text);
                // A name that may become a file name is one plain component.
                if let Some(name) = arn.file_name() {
                    prop_assert!(!name.contains('/') && !name.starts_with('.') && !name.is_empty());
                }
            }
        }
    }
}

//! SQS, SNS, EventBridge and S3 destinations through the AWS SDKs (`INVOQ_DESTINATIONS=aws`).
//!
//! Configuration is the standard AWS environment read once by aws-config (endpoint,
//! credentials); each delivery's region comes from its target ARN, and an SQS queue's URL is
//! looked up by name and owning account, so a destination like
//! `arn:aws:sqs:us-east-2:123456789012:destination` works wherever it lives.
//!
//! Lambda's own deliveries carry no message attributes; invoq adds `RequestID` to every SQS
//! and SNS message, and derives `MessageGroupId` / `MessageDeduplicationId` for FIFO targets,
//! so at-least-once delivery can be deduplicated by consumers.

use async_trait::async_trait;
use aws_config::SdkConfig;
use invoq_aws::{DisplayErrorContext, PerRegion, QueueUrls};
use invoq_domain::arn::{Arn, Service};

use crate::{Attribute, Delivery, DeliveryError, DeliveryKind, Destination};

const SUCCESS_DETAIL_TYPE: &str = "Lambda Function Invocation Result - Success";
const FAILURE_DETAIL_TYPE: &str = "Lambda Function Invocation Result - Failure";

pub struct AwsDestinations {
    /// S3 bucket ARNs name no region: one client, in the configured region.
    s3: aws_sdk_s3::Client,
    clients: PerRegion<RegionClients>,
    queue_urls: QueueUrls,
}

#[derive(Clone)]
struct RegionClients {
    sqs: aws_sdk_sqs::Client,
    sns: aws_sdk_sns::Client,
    eventbridge: aws_sdk_eventbridge::Client,
}

impl RegionClients {
    fn new(config: &SdkConfig, region: &str) -> Self {
        let sns = aws_sdk_sns::config::Builder::from(config)
            .region(aws_sdk_sns::config::Region::new(region.to_owned()))
            .build();
        let eventbridge = aws_sdk_eventbridge::config::Builder::from(config)
            .region(aws_sdk_eventbridge::config::Region::new(region.to_owned()))
            .build();
        RegionClients {
            sqs: invoq_aws::sqs_client(config, region),
            sns: aws_sdk_sns::Client::from_conf(sns),
            eventbridge: aws_sdk_eventbridge::Client::from_conf(eventbridge),
        }
    }
}

impl AwsDestinations {
    pub fn new(config: SdkConfig) -> Self {
        AwsDestinations {
            s3: invoq_aws::s3_client(&config),
            clients: PerRegion::new(config, RegionClients::new),
            queue_urls: QueueUrls::default(),
        }
    }

    async fn send_to_queue(&self, arn: &Arn, delivery: &Delivery) -> Result<(), DeliveryError> {
        let target = &delivery.target_arn;
        let sqs = self.clients.get(&arn.region).sqs;
        let queue_url = self
            .queue_urls
            .resolve(&sqs, arn)
            .await
            .map_err(|error| failed(target, error))?;
        let mut request = sqs
            .send_message()
            .queue_url(&queue_url)
            .message_body(&delivery.body);
        for attribute in delivery.attributes() {
            request =
                request.message_attributes(attribute.name, sqs_attribute(&attribute, target)?);
        }
        if arn.resource.ends_with(".fifo") {
            request = request
                .message_group_id(&delivery.request_id)
                .message_deduplication_id(&delivery.deduplication_id);
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(error) => {
                self.queue_urls.forget(arn);
                Err(failed(target, error))
            }
        }
    }

    async fn publish(&self, arn: &Arn, delivery: &Delivery) -> Result<(), DeliveryError> {
        let target = &delivery.target_arn;
        let sns = self.clients.get(&arn.region).sns;
        let mut request = sns.publish().topic_arn(target).message(&delivery.body);
        for attribute in delivery.attributes() {
            let value = aws_sdk_sns::types::MessageAttributeValue::builder()
                .data_type(attribute.data_type)
                .string_value(&attribute.value)
                .build()
                .map_err(|error| failed(target, error))?;
            request = request.message_attributes(attribute.name, value);
        }
        if arn.resource.ends_with(".fifo") {
            request = request
                .message_group_id(&delivery.request_id)
                .message_deduplication_id(&delivery.deduplication_id);
        }
        request
            .send()
            .await
            .map(drop)
            .map_err(|error| failed(target, error))
    }

    async fn put_event(&self, arn: &Arn, delivery: &Delivery) -> Result<(), DeliveryError> {
        let target = &delivery.target_arn;
        let DeliveryKind::Record {
            success,
            function_arn,
        } = &delivery.kind
        else {
            return Err(DeliveryError::Unsupported(target.clone()));
        };
        let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .source("lambda")
            .detail_type(if *success {
                SUCCESS_DETAIL_TYPE
            } else {
                FAILURE_DETAIL_TYPE
            })
            .detail(&delivery.body)
            .event_bus_name(target)
            .resources(target)
            .resources(function_arn)
            .build();
        let eventbridge = self.clients.get(&arn.region).eventbridge;
        let output = eventbridge
            .put_events()
            .entries(entry)
            .send()
            .await
            .map_err(|error| failed(target, error))?;
        if output.failed_entry_count() > 0 {
            let reason = output
                .entries()
                .iter()
                .find_map(|entry| entry.error_message())
                .unwrap_or("entry rejected");
            return Err(DeliveryError::failed(target, reason));
        }
        Ok(())
    }
}

impl AwsDestinations {
    /// One object per record, at Lambda's key layout ([`Delivery::s3_key`]).
    async fn put_object(&self, arn: &Arn, delivery: &Delivery) -> Result<(), DeliveryError> {
        let target = &delivery.target_arn;
        let key = delivery.s3_key()?;
        self.s3
            .put_object()
            .bucket(&arn.resource)
            .key(key)
            .content_type("application/json")
            .body(aws_sdk_s3::primitives::ByteStream::from(
                delivery.body.clone().into_bytes(),
            ))
            .send()
            .await
            .map(drop)
            .map_err(|error| failed(target, error))
    }
}

#[async_trait]
impl Destination for AwsDestinations {
    async fn deliver(&self, delivery: &Delivery) -> Result<(), DeliveryError> {
        let target = &delivery.target_arn;
        let arn = Arn::parse(target).map_err(|_| DeliveryError::Unsupported(target.clone()))?;
        match arn.service {
            Service::Sqs => self.send_to_queue(&arn, delivery).await,
            Service::Sns => self.publish(&arn, delivery).await,
            Service::Events => self.put_event(&arn, delivery).await,
            Service::S3 => self.put_object(&arn, delivery).await,
            Service::Lambda => Err(DeliveryError::Unsupported(target.clone())),
        }
    }
}

fn sqs_attribute(
    attribute: &Attribute,
    target: &str,
) -> Result<aws_sdk_sqs::types::MessageAttributeValue, DeliveryError> {
    aws_sdk_sqs::types::MessageAttributeValue::builder()
        .data_type(attribute.data_type)
        .string_value(&attribute.value)
        .build()
        .map_err(|error| failed(target, error))
}

/// SDK errors print only their kind by default; their context says what went wrong.
fn failed<E: std::error::Error>(target: &str, error: E) -> DeliveryError {
    DeliveryError::failed(target, DisplayErrorContext(error))
}

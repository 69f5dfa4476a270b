//! AWS plumbing shared by every part of invoq that calls AWS through the SDKs (the SQS queue
//! backend, the event source pollers, the destination adapters): the SDK configuration from
//! the standard environment, clients per region, and SQS queue URLs by ARN.
//!
//! Calls take their region from an ARN, not from the configuration, so one process reaches
//! queues and topics in any region with one configuration; clients are built once per region
//! and queue URLs looked up once per queue.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_sqs::error::SdkError;
use aws_sdk_sqs::operation::get_queue_url::GetQueueUrlError;
use invoq_domain::arn::Arn;

pub use aws_sdk_sqs::error::DisplayErrorContext;

/// More distinct entries than this in a cache (regions, queues) and it starts afresh: ARNs
/// come from configuration, so a bound this high is only reached by a flood of them.
const MAX_CACHED: usize = 10_000;

/// The standard AWS environment (endpoint, credentials) for clients that take each call's
/// region from an ARN: the default region comes from `AWS_REGION` / `AWS_DEFAULT_REGION` only
/// and is never looked up on the instance-metadata service.
pub async fn sdk_config_from_env() -> SdkConfig {
    let region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|region| !region.is_empty()))
        .unwrap_or_else(|| "us-east-1".to_owned());
    aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new(region))
        .load()
        .await
}

/// An S3 client for `config`, with path-style addressing where an endpoint is set
/// (LocalStack, moto), since `bucket.127.0.0.1` is no host.
pub fn s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    let s3 = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(config.endpoint_url().is_some())
        .build();
    aws_sdk_s3::Client::from_conf(s3)
}

/// An SQS client for `region`, otherwise configured as `config`.
pub fn sqs_client(config: &SdkConfig, region: &str) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(config)
            .region(aws_sdk_sqs::config::Region::new(region.to_owned()))
            .build(),
    )
}

/// Clients (or bundles of clients) built once per region from one configuration.
pub struct PerRegion<C> {
    config: SdkConfig,
    build: fn(&SdkConfig, &str) -> C,
    clients: Mutex<HashMap<String, C>>,
}

impl<C: Clone> PerRegion<C> {
    /// `build` makes the client of a region from the shared configuration.
    pub fn new(config: SdkConfig, build: fn(&SdkConfig, &str) -> C) -> Self {
        PerRegion {
            config,
            build,
            clients: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &SdkConfig {
        &self.config
    }

    /// The client of `region`, built on first use.
    pub fn get(&self, region: &str) -> C {
        let mut clients = self.clients.lock().expect("aws clients poisoned");
        if let Some(client) = clients.get(region) {
            return client.clone();
        }
        if clients.len() >= MAX_CACHED {
            clients.clear();
        }
        let client = (self.build)(&self.config, region);
        clients.insert(region.to_owned(), client.clone());
        client
    }
}

/// SQS queue URLs by queue ARN, looked up by name and owning account (`GetQueueUrl`) once,
/// so a queue like `arn:aws:sqs:us-east-2:123456789012:orders` is found wherever it lives.
#[derive(Default)]
pub struct QueueUrls {
    urls: Mutex<HashMap<String, String>>,
}

impl QueueUrls {
    /// The URL of the queue `arn` names, asking `sqs` (a client of the queue's region) the
    /// first time.
    pub async fn resolve(
        &self,
        sqs: &aws_sdk_sqs::Client,
        arn: &Arn,
    ) -> Result<String, SdkError<GetQueueUrlError>> {
        let key = arn.to_string();
        if let Some(url) = self.urls.lock().expect("queue urls poisoned").get(&key) {
            return Ok(url.clone());
        }
        let mut request = sqs.get_queue_url().queue_name(&arn.resource);
        if !arn.account.is_empty() {
            request = request.queue_owner_aws_account_id(&arn.account);
        }
        let url = request.send().await?.queue_url.unwrap_or_default();
        let mut urls = self.urls.lock().expect("queue urls poisoned");
        if urls.len() >= MAX_CACHED {
            urls.clear();
        }
        urls.insert(key, url.clone());
        Ok(url)
    }

    /// Drops a URL that stopped working: the queue may have been deleted and recreated
    /// under a new one.
    pub fn forget(&self, arn: &Arn) {
        self.urls
            .lock()
            .expect("queue urls poisoned")
            .remove(&arn.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_built_once_per_region() {
        let config = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .build();
        let clients = PerRegion::new(config, |_, region| region.to_owned() + "!");
        assert_eq!(clients.get("us-east-1"), "us-east-1!");
        assert_eq!(clients.get("eu-west-1"), "eu-west-1!");
        assert_eq!(clients.clients.lock().unwrap().len(), 2);
        clients.get("us-east-1");
        assert_eq!(clients.clients.lock().unwrap().len(), 2);
    }
}

//! Bodies too large for one SQS message, kept in S3 (the SQS extended-client pattern): the
//! message carries the object's key instead of the body, the lease fetches the body back,
//! and the object is deleted with the message.
//!
//! Keys are `<queue name>/<deduplication id>`: a resent message (deduplicated by SQS) writes
//! the same object again instead of a second one.

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use crate::QueueError;

/// An S3 bucket for large bodies, through one client.
#[derive(Clone, Debug)]
pub struct PayloadBucket {
    client: Client,
    bucket: String,
}

impl PayloadBucket {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        PayloadBucket {
            client,
            bucket: bucket.into(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.bucket
    }

    pub(crate) async fn put(&self, key: &str, body: Bytes) -> Result<(), QueueError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map(drop)
            .map_err(|error| s3_error("put", key, error))
    }

    /// The body kept at `key`; `None` if the object is gone (its message was settled).
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Bytes>, QueueError> {
        let object = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(object) => object,
            Err(error) if error.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                return Ok(None);
            }
            Err(error) => return Err(s3_error("get", key, error)),
        };
        let body = object
            .body
            .collect()
            .await
            .map_err(|error| QueueError::Storage(format!("S3 get {key}: {error}")))?;
        Ok(Some(body.into_bytes()))
    }

    /// Best effort: an object left behind costs storage, never correctness.
    pub(crate) async fn delete(&self, key: &str) {
        if let Err(error) = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            tracing::warn!(key, error = %DisplayErrorContext(&error), "cannot delete a large body's object");
        }
    }
}

fn s3_error<E>(what: &str, key: &str, error: aws_sdk_s3::error::SdkError<E>) -> QueueError
where
    E: std::error::Error + Send + Sync + 'static,
{
    QueueError::Storage(format!("S3 {what} {key}: {}", DisplayErrorContext(&error)))
}

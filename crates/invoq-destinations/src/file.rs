//! File destinations (`INVOQ_DESTINATIONS=file`): each message becomes one JSON line in
//! `<root>/<service>/<resource-name>.jsonl`, e.g. `sqs/orders-success.jsonl`. Records are
//! written as they are; dead-letter messages as `{"body", "messageAttributes"}`. An S3
//! destination gets one file per record, as the bucket gets one object:
//! `<root>/s3/<bucket>/<key>` at Lambda's key layout.
//!
//! A delivery counts as done only once its line is fsynced. One writer thread appends every
//! line pending at the moment and fsyncs each touched file once (group commit), so concurrent
//! deliveries share an fsync instead of queueing for one each.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use invoq_domain::arn::{Arn, Service};

use crate::{Delivery, DeliveryError, DeliveryKind, Destination};

/// Lines written under one fsync at most.
const MAX_BATCH: usize = 1024;

pub struct FileDestinations {
    root: PathBuf,
    lines: mpsc::UnboundedSender<PendingLine>,
}

struct PendingLine {
    path: PathBuf,
    line: String,
    done: oneshot::Sender<Result<(), String>>,
}

impl FileDestinations {
    pub fn new(root: PathBuf) -> Self {
        let (lines, receiver) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("invoq-file-destinations".into())
            .spawn(move || write_lines(receiver))
            .expect("spawn the file destination writer");
        FileDestinations { root, lines }
    }

    /// The file a target's lines go to: only for an ARN whose resource name is a plain file
    /// name, so no name can reach outside `<root>/<service>/`.
    pub fn path_of(&self, target_arn: &str) -> Option<PathBuf> {
        let arn = Arn::parse(target_arn).ok()?;
        let file_name = arn.file_name()?;
        Some(
            self.root
                .join(arn.service.as_str())
                .join(format!("{file_name}.jsonl")),
        )
    }
}

#[async_trait]
impl Destination for FileDestinations {
    async fn deliver(&self, delivery: &Delivery) -> Result<(), DeliveryError> {
        let target = &delivery.target_arn;
        if let Ok(arn) = Arn::parse(target)
            && arn.service == Service::S3
        {
            return self.put_object(&arn, delivery).await;
        }
        let supported = matches!(
            Arn::parse(target).map(|arn| arn.service),
            Ok(Service::Sqs | Service::Sns | Service::Events)
        );
        let path = self
            .path_of(target)
            .filter(|_| supported)
            .ok_or_else(|| DeliveryError::Unsupported(target.clone()))?;
        let line = match &delivery.kind {
            DeliveryKind::Record { .. } => delivery.body.clone(),
            DeliveryKind::DeadLetter { .. } => {
                let attributes: BTreeMap<&str, serde_json::Value> = delivery
                    .attributes()
                    .into_iter()
                    .map(|a| {
                        (
                            a.name,
                            json!({ "DataType": a.data_type, "StringValue": a.value }),
                        )
                    })
                    .collect();
                json!({ "body": delivery.body, "messageAttributes": attributes }).to_string()
            }
        };
        let (done, written) = oneshot::channel();
        self.lines
            .send(PendingLine { path, line, done })
            .map_err(|_| DeliveryError::failed(target, "file writer stopped"))?;
        written
            .await
            .map_err(|_| DeliveryError::failed(target, "file writer stopped"))?
            .map_err(|error| DeliveryError::failed(target, error))
    }
}

impl FileDestinations {
    async fn put_object(&self, arn: &Arn, delivery: &Delivery) -> Result<(), DeliveryError> {
        let target = &delivery.target_arn;
        let bucket = arn
            .file_name()
            .ok_or_else(|| DeliveryError::Unsupported(target.clone()))?;
        // The key is invoq's own (function name, digits, a UUID), so it stays in the bucket.
        let path = self.root.join("s3").join(bucket).join(delivery.s3_key()?);
        let body = delivery.body.clone().into_bytes();
        tokio::task::spawn_blocking(move || write_durably(&path, &body))
            .await
            .map_err(|error| DeliveryError::failed(target, error))?
            .map_err(|error| DeliveryError::failed(target, error))
    }
}

/// Writes a whole file under a temporary name, fsyncs it and renames it into place, so a
/// reader never sees half an object.
fn write_durably(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let parent = path.parent().expect("object paths have a directory");
    std::fs::create_dir_all(parent)?;
    let mut partial_name = path
        .file_name()
        .expect("object paths name a file")
        .to_owned();
    partial_name.push(".partial");
    let partial = path.with_file_name(partial_name);
    let mut file = File::create(&partial)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    std::fs::rename(&partial, path)?;
    File::open(parent)?.sync_all()
}

/// The writer thread: appends batches of lines, one fsync per file per batch.
fn write_lines(mut receiver: mpsc::UnboundedReceiver<PendingLine>) {
    while let Some(first) = receiver.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(line) => batch.push(line),
                Err(_) => break,
            }
        }
        let mut by_file: HashMap<PathBuf, Vec<PendingLine>> = HashMap::new();
        for line in batch {
            by_file.entry(line.path.clone()).or_default().push(line);
        }
        for (path, lines) in by_file {
            let text: String = lines
                .iter()
                .map(|pending| format!("{}\n", pending.line))
                .collect();
            let result = append_durably(&path, text.as_bytes()).map_err(|error| error.to_string());
            for pending in lines {
                let _ = pending.done.send(result.clone());
            }
        }
    }
}

fn append_durably(path: &PathBuf, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file: File = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_resource_names_become_files() {
        let root = PathBuf::from("/data/destinations");
        let files = FileDestinations::new(root.clone());
        assert_eq!(
            files.path_of("arn:aws:sqs:us-east-1:000000000000:orders"),
            Some(root.join("sqs/orders.jsonl"))
        );
        assert_eq!(
            files.path_of("arn:aws:events:us-east-1:000000000000:event-bus/default"),
            Some(root.join("events/default.jsonl"))
        );
        for refused in [
            "arn:aws:sqs:us-east-1:000000000000:../../../../tmp/x",
            "arn:aws:sns:us-east-1:000000000000:/etc/passwd",
            "arn:aws:events:us-east-1:000000000000:event-bus/aws.partner/x",
            "arn:aws:events:us-east-1:000000000000:event-bus/..",
            "/tmp/absolute",
        ] {
            assert_eq!(files.path_of(refused), None, "{refused}");
        }
    }
}

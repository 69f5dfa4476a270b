//! File destinations (`INVOQ_DESTINATIONS=file`): each message becomes one JSON line in
//! `<root>/<service>/<resource-name>.jsonl`, e.g. `sqs/orders-success.jsonl`. Records are
//! written as they are; dead-letter messages as `{"body", "messageAttributes"}`. Every line
//! is fsynced before the delivery counts as done.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use async_trait::async_trait;
use serde_json::json;

use crate::{Delivery, DeliveryError, DeliveryKind, Destination, TargetArn};

pub struct FileDestinations {
    root: PathBuf,
    /// One append at a time, so concurrent lines never interleave.
    writing: tokio::sync::Mutex<()>,
}

impl FileDestinations {
    pub fn new(root: PathBuf) -> Self {
        FileDestinations {
            root,
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// The file a target's lines go to.
    pub fn path_of(&self, target_arn: &str) -> Option<PathBuf> {
        let arn = TargetArn::parse(target_arn)?;
        Some(
            self.root
                .join(arn.service)
                .join(format!("{}.jsonl", arn.resource_name())),
        )
    }
}

#[async_trait]
impl Destination for FileDestinations {
    async fn deliver(&self, delivery: &Delivery) -> Result<(), DeliveryError> {
        let target = &delivery.target_arn;
        let path = self
            .path_of(target)
            .filter(|_| {
                matches!(
                    TargetArn::parse(target).map(|a| a.service),
                    Some("sqs" | "sns" | "events")
                )
            })
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
        let _writing = self.writing.lock().await;
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            file.write_all(format!("{line}\n").as_bytes())?;
            file.sync_data()
        })
        .await
        .map_err(|error| DeliveryError::failed(target, error))?
        .map_err(|error| DeliveryError::failed(target, error))
    }
}

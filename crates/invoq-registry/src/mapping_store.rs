//! Event source mappings, persisted in `<data-dir>/event-source-mappings/<uuid>.json` (written
//! atomically, like function records); every change is published to the pollers
//! ([`MappingStore::subscribe`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use invoq_domain::ApiError;
use invoq_domain::event_source::EventSourceMapping;
use tokio::sync::watch;

use crate::function_store::{read_json_dir, storage_error, write_atomically};

/// The event source mappings, by UUID.
pub struct MappingStore {
    dir: PathBuf,
    mappings: Mutex<BTreeMap<String, EventSourceMapping>>,
    published: watch::Sender<Vec<EventSourceMapping>>,
}

impl MappingStore {
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("event-source-mappings");
        std::fs::create_dir_all(&dir)?;
        let mappings: BTreeMap<String, EventSourceMapping> =
            read_json_dir::<EventSourceMapping>(&dir)?
                .into_iter()
                .map(|mapping| (mapping.uuid.clone(), mapping))
                .collect();
        let (published, _) = watch::channel(mappings.values().cloned().collect());
        Ok(MappingStore {
            dir,
            mappings: Mutex::new(mappings),
            published,
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<Vec<EventSourceMapping>> {
        self.published.subscribe()
    }

    pub fn get(&self, uuid: &str) -> Option<EventSourceMapping> {
        self.lock().get(uuid).cloned()
    }

    pub fn all(&self) -> Vec<EventSourceMapping> {
        self.lock().values().cloned().collect()
    }

    pub fn put(&self, mapping: EventSourceMapping) -> Result<(), ApiError> {
        let json = serde_json::to_vec_pretty(&mapping).map_err(|e| storage_error(e.into()))?;
        write_atomically(&self.dir.join(format!("{}.json", mapping.uuid)), &json)
            .map_err(storage_error)?;
        let mut mappings = self.lock();
        mappings.insert(mapping.uuid.clone(), mapping);
        self.published
            .send_replace(mappings.values().cloned().collect());
        Ok(())
    }

    pub fn remove(&self, uuid: &str) -> Result<(), ApiError> {
        std::fs::remove_file(self.dir.join(format!("{uuid}.json"))).map_err(storage_error)?;
        let mut mappings = self.lock();
        mappings.remove(uuid);
        self.published
            .send_replace(mappings.values().cloned().collect());
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, EventSourceMapping>> {
        self.mappings.lock().expect("mapping store poisoned")
    }
}

//! The function registry, persisted in the data directory so it survives restarts:
//! `<data-dir>/functions/<name>.json` per function and `<data-dir>/code/<sha256-hex>.zip` per
//! deployment package. Every write goes to a temporary file that is fsynced and renamed into
//! place, so a crash leaves either the old or the new record, never a torn one.

use std::collections::{BTreeMap, btree_map::Entry};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use std::time::Duration;

use invoq_domain::asynchronous::EventInvokeConfig;
use invoq_domain::limits::{DEFAULT_MEMORY_SIZE_MB, DEFAULT_TIMEOUT_SECONDS};
use invoq_domain::recursion::RecursiveLoop;
use invoq_domain::{ApiError, LATEST, Location};
use invoq_runtime::{BUILTIN_RUNTIME, FunctionSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Lifecycle state of a function (Lambda's `State`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FunctionState {
    Pending,
    Active,
    Failed,
}

/// Progress of the last update (Lambda's `LastUpdateStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateStatus {
    InProgress,
    Successful,
    Failed,
}

/// Everything invoq knows about a function's `$LATEST`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionRecord {
    pub name: String,
    pub runtime: String,
    pub role: String,
    pub handler: String,
    pub description: String,
    pub timeout_seconds: u32,
    pub memory_size_mb: u32,
    pub environment: Option<BTreeMap<String, String>>,
    pub dead_letter_target_arn: Option<String>,
    pub tracing_mode: String,
    pub architectures: Vec<String>,
    pub ephemeral_storage_mb: u32,
    pub tags: BTreeMap<String, String>,
    pub code: CodeRef,
    pub last_modified: String,
    pub revision_id: String,
    pub state: FunctionState,
    /// Why the function is in `Failed`, or why the last update failed.
    pub failure_reason: Option<String>,
    /// `None` until the first update after creation, as Lambda shows it.
    pub last_update_status: Option<UpdateStatus>,
    pub reserved_concurrency: Option<u32>,
    /// Event invoke configs by qualifier.
    #[serde(default)]
    pub event_invoke_configs: BTreeMap<String, EventInvokeConfig>,
    /// `PutFunctionRecursionConfig`'s setting.
    #[serde(default)]
    pub recursive_loop: RecursiveLoop,
}

/// A stored deployment package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRef {
    pub sha256_hex: String,
    /// Lambda's `CodeSha256`: base64 of the digest.
    pub sha256_base64: String,
    pub size: u64,
}

impl FunctionRecord {
    /// A fresh `$LATEST` with Lambda's defaults, before a request's settings apply.
    pub fn new(name: &str, code: CodeRef) -> Self {
        FunctionRecord {
            name: name.to_owned(),
            runtime: String::new(),
            role: String::new(),
            handler: String::new(),
            description: String::new(),
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            memory_size_mb: DEFAULT_MEMORY_SIZE_MB,
            environment: None,
            dead_letter_target_arn: None,
            tracing_mode: "PassThrough".to_owned(),
            architectures: vec!["x86_64".to_owned()],
            ephemeral_storage_mb: 512,
            tags: BTreeMap::new(),
            code,
            last_modified: now_timestamp(),
            revision_id: uuid::Uuid::new_v4().to_string(),
            state: FunctionState::Pending,
            failure_reason: None,
            last_update_status: None,
            reserved_concurrency: None,
            event_invoke_configs: BTreeMap::new(),
            recursive_loop: Default::default(),
        }
    }

    /// Marks the record as changed: new revision, new LastModified, update in progress.
    pub fn mark_updated(&mut self) {
        self.last_modified = now_timestamp();
        self.revision_id = uuid::Uuid::new_v4().to_string();
        self.last_update_status = Some(UpdateStatus::InProgress);
        self.failure_reason = None;
    }

    /// The package the runtime must hold to run this function, if it runs a process.
    pub fn deployed_code(&self) -> Option<&str> {
        (self.runtime != BUILTIN_RUNTIME).then_some(self.code.sha256_hex.as_str())
    }

    /// What the runtime needs to run `$LATEST`.
    pub fn spec(&self, location: &Location) -> FunctionSpec {
        FunctionSpec {
            function_name: self.name.clone(),
            function_arn: location.function_arn(&self.name),
            version: LATEST.to_owned(),
            runtime: self.runtime.clone(),
            handler: self.handler.clone(),
            timeout: Duration::from_secs(u64::from(self.timeout_seconds)),
            memory_size_mb: self.memory_size_mb,
            environment: self.environment.clone().unwrap_or_default(),
            code_sha256_hex: self.deployed_code().map(str::to_owned),
            revision_id: self.revision_id.clone(),
            reserved_concurrency: self.reserved_concurrency,
            region: location.region.clone(),
        }
    }

    /// Functions still being created, or whose creation failed, cannot be invoked.
    pub fn check_active(&self) -> Result<(), ApiError> {
        if self.state == FunctionState::Active {
            return Ok(());
        }
        let state = if self.state == FunctionState::Pending {
            "Pending"
        } else {
            "Failed"
        };
        Err(ApiError::conflict(format!(
            "The operation cannot be performed at this time. The function is currently in the \
             following state: {state}"
        )))
    }

    /// Whether the control plane is still deploying this function's latest change.
    pub fn is_settling(&self) -> bool {
        self.state == FunctionState::Pending
            || self.last_update_status == Some(UpdateStatus::InProgress)
    }
}

/// Every function, in memory and on disk.
pub struct FunctionStore {
    functions_dir: PathBuf,
    code_dir: PathBuf,
    /// Shared, not cloned, on every read: invokes read the record on the hot path.
    functions: Mutex<BTreeMap<String, Arc<FunctionRecord>>>,
}

impl FunctionStore {
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let functions_dir = data_dir.join("functions");
        let code_dir = data_dir.join("code");
        std::fs::create_dir_all(&functions_dir)?;
        std::fs::create_dir_all(&code_dir)?;
        let functions = read_json_dir::<FunctionRecord>(&functions_dir)?
            .into_iter()
            .map(|record| (record.name.clone(), Arc::new(record)))
            .collect();
        Ok(FunctionStore {
            functions_dir,
            code_dir,
            functions: Mutex::new(functions),
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<FunctionRecord>> {
        self.lock().get(name).cloned()
    }

    /// Up to `max_items` functions whose names sort after `marker`, and whether more follow.
    pub fn list(&self, marker: Option<&str>, max_items: usize) -> (Vec<Arc<FunctionRecord>>, bool) {
        let functions = self.lock();
        let mut after = functions
            .values()
            .filter(|record| marker.is_none_or(|marker| record.name.as_str() > marker));
        let page: Vec<Arc<FunctionRecord>> = after.by_ref().take(max_items).cloned().collect();
        let more = after.next().is_some();
        (page, more)
    }

    /// Total reserved concurrency of all functions except `except`.
    pub fn reserved_concurrency_except(&self, except: &str) -> u32 {
        self.lock()
            .values()
            .filter(|record| record.name != except)
            .filter_map(|record| record.reserved_concurrency)
            .sum()
    }

    /// Names of functions whose latest change is still being deployed.
    pub fn settling(&self) -> Vec<String> {
        self.lock()
            .values()
            .filter(|record| record.is_settling())
            .map(|r| r.name.clone())
            .collect()
    }

    pub fn create(&self, record: FunctionRecord) -> Result<FunctionRecord, ApiError> {
        let mut functions = self.lock();
        match functions.entry(record.name.clone()) {
            Entry::Occupied(_) => Err(ApiError::conflict(format!(
                "Function already exist: {}",
                record.name
            ))),
            Entry::Vacant(slot) => {
                self.persist(&record)?;
                slot.insert(Arc::new(record.clone()));
                Ok(record)
            }
        }
    }

    /// Applies `change` to a function and persists the result; `None` if it does not exist.
    pub fn update(
        &self,
        name: &str,
        change: impl FnOnce(&mut FunctionRecord) -> Result<(), ApiError>,
    ) -> Result<Option<FunctionRecord>, ApiError> {
        let mut functions = self.lock();
        let Some(current) = functions.get(name) else {
            return Ok(None);
        };
        let mut updated = FunctionRecord::clone(current);
        change(&mut updated)?;
        self.persist(&updated)?;
        let previous = functions.insert(name.to_owned(), Arc::new(updated.clone()));
        // Only a code change can leave the previous package unreferenced.
        if let Some(previous) = previous
            && previous.code.sha256_hex != updated.code.sha256_hex
        {
            self.remove_unreferenced_code(&functions, &previous.code.sha256_hex);
        }
        Ok(Some(updated))
    }

    pub fn delete(&self, name: &str) -> Result<Option<Arc<FunctionRecord>>, ApiError> {
        let mut functions = self.lock();
        if !functions.contains_key(name) {
            return Ok(None);
        }
        std::fs::remove_file(self.record_path(name)).map_err(storage_error)?;
        let removed = functions.remove(name);
        if let Some(removed) = &removed {
            self.remove_unreferenced_code(&functions, &removed.code.sha256_hex);
        }
        Ok(removed)
    }

    /// Deletes a package no function runs any more (after a code update or a delete).
    /// Packages are stored before the record that names them is committed, so one written
    /// in the last minute may be about to be referenced: it stays.
    fn remove_unreferenced_code(
        &self,
        functions: &BTreeMap<String, Arc<FunctionRecord>>,
        sha256_hex: &str,
    ) {
        const JUST_STORED: std::time::Duration = std::time::Duration::from_secs(60);
        let referenced = functions
            .values()
            .any(|record| record.code.sha256_hex == sha256_hex);
        if referenced {
            return;
        }
        let path = self.code_path(sha256_hex);
        let just_stored = std::fs::metadata(&path)
            .and_then(|metadata| metadata.modified())
            .is_ok_and(|modified| modified.elapsed().unwrap_or_default() < JUST_STORED);
        if !just_stored {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Stores a deployment package, named by its digest.
    pub fn put_code(&self, zip: &[u8]) -> Result<CodeRef, ApiError> {
        let digest = Sha256::digest(zip);
        let code = CodeRef {
            sha256_hex: format!("{digest:x}"),
            sha256_base64: BASE64.encode(digest),
            size: zip.len() as u64,
        };
        let path = self.code_path(&code.sha256_hex);
        if !path.exists() {
            write_atomically(&path, zip).map_err(storage_error)?;
        }
        Ok(code)
    }

    pub fn code(&self, sha256_hex: &str) -> Result<Bytes, ApiError> {
        std::fs::read(self.code_path(sha256_hex))
            .map(Bytes::from)
            .map_err(storage_error)
    }

    fn code_path(&self, sha256_hex: &str) -> PathBuf {
        self.code_dir.join(format!("{sha256_hex}.zip"))
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.functions_dir.join(format!("{name}.json"))
    }

    fn persist(&self, record: &FunctionRecord) -> Result<(), ApiError> {
        let json =
            serde_json::to_vec_pretty(record).map_err(|error| storage_error(error.into()))?;
        write_atomically(&self.record_path(&record.name), &json).map_err(storage_error)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<FunctionRecord>>> {
        self.functions.lock().expect("function store poisoned")
    }
}

/// `FunctionConfiguration.LastModified`: `2019-11-14T18:16:05.568+0000`.
fn now_timestamp() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+0000"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

/// Every `*.json` file in `dir`, parsed: how the stores load what they wrote.
pub(crate) fn read_json_dir<T: serde::de::DeserializeOwned>(dir: &Path) -> std::io::Result<Vec<T>> {
    let mut parsed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .extension()
            .is_some_and(|extension| extension == "json")
        {
            let value = serde_json::from_slice(&std::fs::read(&path)?)
                .map_err(|error| std::io::Error::other(format!("{}: {error}", path.display())))?;
            parsed.push(value);
        }
    }
    Ok(parsed)
}

/// Writes `contents` to `path` so that a crash leaves the old file or the new one: a fsynced
/// temporary file renamed into place, then the directory fsynced.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let mut file = File::create(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// A storage failure, logged, as the caller sees it.
pub fn storage_error(error: std::io::Error) -> ApiError {
    tracing::error!(%error, "function store i/o failed");
    ApiError::service(format!("invoq could not store the change: {error}"))
}

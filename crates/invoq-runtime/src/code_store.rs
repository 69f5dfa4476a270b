//! Deployment packages, unpacked once per SHA-256 under `<root>/<sha256-hex>/` and shared by
//! every process that runs them. Unpacking goes to a scratch folder renamed into place, so a
//! crash never leaves a half-unpacked package behind a valid name.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::RuntimeError;
use crate::package::{self, PackageError};

#[derive(Debug)]
pub(crate) struct CodeStore {
    root: PathBuf,
}

impl CodeStore {
    pub(crate) fn open(root: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&root)?;
        // Leftovers of unpacks and removals a crash interrupted.
        for entry in std::fs::read_dir(&root)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(CodeStore { root })
    }

    /// The unpacked package, if this store holds it.
    pub(crate) fn unpacked(&self, code_sha256_hex: &str) -> Option<PathBuf> {
        let dir = self.root.join(code_sha256_hex);
        dir.is_dir().then_some(dir)
    }

    /// Removes every unpacked package not in `in_use`. Each is first renamed out of its
    /// name, so a lookup either finds it whole or reports the code missing (and the caller
    /// deploys it again); the slow removal happens after.
    /// Only packages unpacked at least `min_age` ago go, so a package just deployed for an
    /// invocation in progress stays.
    pub(crate) fn remove_unused(
        &self,
        in_use: &HashSet<String>,
        min_age: Duration,
    ) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let young = entry
                .metadata()
                .and_then(|metadata| metadata.modified())
                .is_ok_and(|modified| modified.elapsed().unwrap_or_default() < min_age);
            if name.starts_with('.') || in_use.contains(&name) || young {
                continue;
            }
            let doomed = self
                .root
                .join(format!(".removing-{}", uuid::Uuid::new_v4().simple()));
            if std::fs::rename(entry.path(), &doomed).is_ok() {
                removed.push(doomed);
            }
        }
        removed
    }

    pub(crate) async fn put(&self, code_sha256_hex: &str, zip: Bytes) -> Result<(), RuntimeError> {
        if self.unpacked(code_sha256_hex).is_some() {
            return Ok(());
        }
        let actual = format!("{:x}", Sha256::digest(&zip));
        if actual != code_sha256_hex {
            return Err(RuntimeError::InvalidCode(format!(
                "package hashes to {actual}, not {code_sha256_hex}"
            )));
        }
        let root = self.root.clone();
        let name = code_sha256_hex.to_owned();
        tokio::task::spawn_blocking(move || unpack(&root, &name, &zip))
            .await
            .map_err(|error| RuntimeError::Internal(error.to_string()))?
    }
}

fn unpack(root: &Path, name: &str, zip: &[u8]) -> Result<(), RuntimeError> {
    let scratch = root.join(format!(".unpacking-{}", uuid::Uuid::new_v4().simple()));
    if let Err(error) = package::unpack(zip, &scratch) {
        let _ = std::fs::remove_dir_all(&scratch);
        return Err(match error {
            PackageError::Io(message) => RuntimeError::Internal(message),
            refused => RuntimeError::InvalidCode(refused.to_string()),
        });
    }
    match std::fs::rename(&scratch, root.join(name)) {
        Ok(()) => Ok(()),
        // Another put of the same package won the race; its copy is identical.
        Err(_) if root.join(name).is_dir() => {
            let _ = std::fs::remove_dir_all(&scratch);
            Ok(())
        }
        Err(error) => Err(RuntimeError::Internal(format!(
            "cannot store code: {error}"
        ))),
    }
}

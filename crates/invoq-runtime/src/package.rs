//! Deployment packages: zips checked before they are stored and unpacked within Lambda's
//! unzipped-size limit. Sizes are counted on the bytes actually inflated, never taken from
//! the zip's own (forgeable) headers, and nothing is written past the limit.

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

/// Lambda's limit on a function's unzipped code.
pub const UNZIPPED_MAX_BYTES: u64 = 262_144_000;

/// Why a deployment package is refused, in Lambda's words (the frontend answers 400
/// `InvalidParameterValueException` with this text).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    #[error("Unzipped size must be smaller than {UNZIPPED_MAX_BYTES} bytes")]
    TooLarge,
    #[error("Could not unzip uploaded file. Please check your file, then try to upload again.")]
    Unreadable,
    #[error("cannot write the unpacked package: {0}")]
    Io(String),
}

/// Checks that `zip` is a readable zip whose contents inflate to at most
/// [`UNZIPPED_MAX_BYTES`]; returns that size. Reads every entry, stopping at the limit.
pub fn check(zip: &[u8]) -> Result<u64, PackageError> {
    let mut archive = open(zip)?;
    let mut total = 0;
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index(index)
            .map_err(|_| PackageError::Unreadable)?;
        if entry.enclosed_name().is_none() {
            return Err(PackageError::Unreadable);
        }
        total += inflate(&mut entry, &mut std::io::sink(), UNZIPPED_MAX_BYTES - total)?;
    }
    Ok(total)
}

/// Unpacks `zip` into `into` (which must not exist yet). Entries are written before any
/// symlink is made, so no entry is ever written through a link.
pub(crate) fn unpack(zip: &[u8], into: &Path) -> Result<(), PackageError> {
    let io = |error: std::io::Error| PackageError::Io(error.to_string());
    let mut archive = open(zip)?;
    std::fs::create_dir(into).map_err(io)?;
    let mut links: Vec<(PathBuf, String)> = Vec::new();
    let mut total = 0;
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index(index)
            .map_err(|_| PackageError::Unreadable)?;
        let relative = entry.enclosed_name().ok_or(PackageError::Unreadable)?;
        let path = into.join(relative);
        if entry.is_dir() {
            std::fs::create_dir_all(&path).map_err(io)?;
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        if entry.is_symlink() {
            let mut target = String::new();
            let mut limited = (&mut entry).take(4096);
            limited
                .read_to_string(&mut target)
                .map_err(|_| PackageError::Unreadable)?;
            links.push((path, target));
            continue;
        }
        let mut file = std::fs::File::create(&path).map_err(io)?;
        total += inflate(&mut entry, &mut file, UNZIPPED_MAX_BYTES - total)?;
        // Permissions as packaged (bootstrap must stay executable), but never set-id bits.
        let mode = entry.unix_mode().unwrap_or(0o644) & 0o777;
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(io)?;
    }
    for (path, target) in links {
        std::os::unix::fs::symlink(target, path).map_err(io)?;
    }
    Ok(())
}

/// Opens a package, refusing it at once when its own headers add up past the limit (forged
/// headers are caught while inflating).
fn open(zip: &[u8]) -> Result<zip::ZipArchive<Cursor<&[u8]>>, PackageError> {
    let archive = zip::ZipArchive::new(Cursor::new(zip)).map_err(|_| PackageError::Unreadable)?;
    if archive
        .decompressed_size()
        .is_some_and(|size| size > u128::from(UNZIPPED_MAX_BYTES))
    {
        return Err(PackageError::TooLarge);
    }
    Ok(archive)
}

/// Copies one entry, at most `budget` bytes of it; more is [`PackageError::TooLarge`], with
/// nothing past the budget written.
fn inflate(entry: &mut impl Read, out: &mut impl Write, budget: u64) -> Result<u64, PackageError> {
    let read_error = |error: std::io::Error| {
        if error.kind() == std::io::ErrorKind::InvalidData {
            PackageError::Unreadable
        } else {
            PackageError::Io(error.to_string())
        }
    };
    let copied = std::io::copy(&mut entry.take(budget), out).map_err(read_error)?;
    if copied == budget && entry.read(&mut [0u8; 1]).map_err(read_error)? > 0 {
        return Err(PackageError::TooLarge);
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zip_of(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, body, mode) in entries {
            let options = zip::write::SimpleFileOptions::default()
                .unix_permissions(*mode)
                .large_file(body.len() > u32::MAX as usize);
            zip.start_file(*name, options).unwrap();
            zip.write_all(body).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    /// A zip bomb: one deflated MiB of zeros copied into 251 entries (about 300 KB that
    /// inflate to 251 MiB, past the limit).
    fn bomb() -> Vec<u8> {
        let one = zip_of(&[("zeros", &vec![0u8; 1 << 20], 0o644)]);
        let mut source = zip::ZipArchive::new(Cursor::new(one)).unwrap();
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for index in 0..=(UNZIPPED_MAX_BYTES >> 20) {
            let entry = source.by_index(0).unwrap();
            zip.raw_copy_file_rename(entry, format!("zeros-{index}"))
                .unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    #[test]
    fn a_zip_bomb_is_refused_without_writing_past_the_limit() {
        let zip = bomb();
        assert!(zip.len() < 1 << 20, "the bomb is small: {}", zip.len());
        assert_eq!(check(&zip), Err(PackageError::TooLarge));
        let dir = tempfile::tempdir().unwrap();
        let into = dir.path().join("code");
        assert_eq!(unpack(&zip, &into), Err(PackageError::TooLarge));
        assert!(
            !into.exists(),
            "the headers already tell: nothing is written"
        );
        assert_eq!(
            PackageError::TooLarge.to_string(),
            "Unzipped size must be smaller than 262144000 bytes"
        );
    }

    #[test]
    fn garbage_and_escaping_paths_are_unreadable() {
        assert_eq!(check(b"not a zip"), Err(PackageError::Unreadable));
        let escaping = zip_of(&[("../outside", b"x", 0o644)]);
        assert_eq!(check(&escaping), Err(PackageError::Unreadable));
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            unpack(&escaping, &dir.path().join("code")),
            Err(PackageError::Unreadable)
        );
        assert!(!dir.path().join("outside").exists());
    }

    #[test]
    fn modes_are_kept_without_set_id_bits() {
        use std::os::unix::fs::PermissionsExt;
        let zip = zip_of(&[
            ("bootstrap", b"#!/bin/sh\n", 0o4755),
            ("lib/a.txt", b"a", 0o644),
        ]);
        assert_eq!(check(&zip), Ok(11));
        let dir = tempfile::tempdir().unwrap();
        let into = dir.path().join("code");
        unpack(&zip, &into).unwrap();
        let mode = |path: &str| {
            std::fs::metadata(into.join(path))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("bootstrap"), 0o755);
        assert_eq!(mode("lib/a.txt"), 0o644);
    }
}

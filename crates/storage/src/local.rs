//! Writing a file into a local store: staged in a temporary file under the store's directory
//! (so it is removed on every error path, by its drop) and renamed into place, file and
//! directories synced before the write returns.
//!
//! `object_store`'s own multipart upload stages as `name#N` next to the object and leaves that
//! file behind when the final rename fails (a key whose name is already a folder of other
//! objects); here such a key is told apart as a conflict and nothing stays.

use crate::{StorageError, STAGING_DIR};
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::Path;

/// Copies `src` into the store under `key` (already checked by `parse_key`), refusing files
/// over `limit_bytes`; returns the size.
pub(crate) fn put_file(
    root: &Path,
    key: &str,
    src: &Path,
    limit_bytes: u64,
) -> Result<u64, StorageError> {
    let io = |e| StorageError::io(key, e);
    let dest = root.join(key);
    let parent = dest.parent().unwrap_or(root);
    let existing = parent
        .ancestors()
        .find(|dir| dir.is_dir())
        .unwrap_or(root)
        .to_path_buf();
    if let Err(e) = std::fs::create_dir_all(parent) {
        return Err(match e.kind() {
            ErrorKind::NotADirectory | ErrorKind::AlreadyExists => {
                StorageError::Conflict(key.to_string(), "is under an existing object")
            }
            _ => io(e),
        });
    }
    let staging = root.join(STAGING_DIR);
    std::fs::create_dir_all(&staging).map_err(io)?;
    let mut tmp = tempfile::Builder::new()
        .prefix("put-")
        .tempfile_in(&staging)
        .map_err(io)?;
    let mut file = File::open(src).map_err(io)?;
    let copied =
        std::io::copy(&mut (&mut file).take(limit_bytes + 1), tmp.as_file_mut()).map_err(io)?;
    if copied > limit_bytes {
        return Err(StorageError::TooLarge {
            key: key.to_string(),
            limit_bytes,
        });
    }
    tmp.as_file().sync_all().map_err(io)?;
    if dest.is_dir() {
        return Err(StorageError::Conflict(
            key.to_string(),
            "names a folder of other objects",
        ));
    }
    tmp.persist(&dest).map_err(|e| match e.error.kind() {
        ErrorKind::IsADirectory | ErrorKind::DirectoryNotEmpty => {
            StorageError::Conflict(key.to_string(), "names a folder of other objects")
        }
        // `e.file` is dropped here, which removes the staged file.
        _ => io(e.error),
    })?;
    // The new name, and every directory made for it, must survive a power cut.
    for dir in parent.ancestors().take_while(|d| d.starts_with(&existing)) {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(copied)
}

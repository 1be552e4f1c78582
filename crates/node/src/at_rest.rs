//! Files of the data dir that hold secrets or identity: private to the node's user (files
//! 0600, directories 0700), and written whole or not at all.
//!
//! An identity file (`cluster.key`, `node.id`, `admin.key`) is written under a temporary
//! name in the same directory, synced, renamed over its final name, then the directory is
//! synced: a power cut leaves the old file or the new one, never a torn or empty one (a torn
//! `node.id` would make a restarted node found a second cluster or fail to start).
//! Files that an older version wrote with the default mode are made private at start-up.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every file that holds a secret or replicated state.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Mode of the data dir and the registry's directory.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Creates `dir` (and its parents) if needed and makes it private to this user.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
}

/// Makes an existing file private (one an older version wrote world-readable); a missing
/// file is fine.
pub(crate) fn tighten(path: &Path) -> std::io::Result<()> {
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Writes `bytes` to `path` through a synced temporary file renamed into place, mode 0600,
/// then syncs the directory.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("a file of the data dir has no directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("a file of the data dir has no name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    // A temporary file left by a crash in the middle of an earlier write goes first.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn identity_files_are_private_replace_the_old_one_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        private_dir(&data).unwrap();
        assert_eq!(mode(&data), DIR_MODE);
        let path = data.join("node.id");
        // A temporary file a crash left behind does not stop the next write.
        std::fs::write(data.join(".node.id.tmp"), "torn").unwrap();
        write_file(&path, b"1\n").unwrap();
        write_file(&path, b"2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "2\n");
        assert_eq!(mode(&path), FILE_MODE);
        let names: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("node.id")]);
    }

    #[test]
    fn a_file_an_older_version_left_world_readable_is_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        std::fs::write(&path, "00").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        tighten(&path).unwrap();
        assert_eq!(mode(&path), FILE_MODE);
        tighten(&dir.path().join("missing")).unwrap();
    }
}

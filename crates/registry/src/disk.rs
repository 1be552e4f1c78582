//! Free space on the registry's disk. openraft stops for good when a log write fails, so the
//! registry never lets the log meet a full disk: while the free space of the data dir's file
//! system is under a reserve, it refuses new writes (`storage_full`) and the entries a leader
//! sends it, and says it is not ready. When space comes back it takes writes again by
//! itself, with nothing to restart.
//!
//! The reserve is [`DISK_RESERVE_BYTES`] plus the size of the latest snapshot: the next
//! snapshot is written beside the old one before it replaces it, and must fit.

use std::path::PathBuf;

/// Free bytes the registry keeps on its disk beyond the room for its next snapshot.
pub const DISK_RESERVE_BYTES: u64 = 64 * 1024 * 1024;

/// The data dir, whose file system's free space is read, and the snapshot that sizes the reserve.
#[derive(Debug)]
pub(crate) struct Disk {
    dir: PathBuf,
    snapshot: PathBuf,
}

impl Disk {
    pub(crate) fn new(dir: PathBuf, snapshot: PathBuf) -> Disk {
        Disk { dir, snapshot }
    }

    /// Why the disk is full, or `None` while there is room. Two system calls (`statvfs` and
    /// the snapshot's `stat`): cheap enough to ask on every write. A file system whose space
    /// cannot be read counts as having room (the write then fails on its own if it must).
    pub(crate) fn full(&self) -> Option<String> {
        let free = free_bytes(&self.dir)?;
        let snapshot = std::fs::metadata(&self.snapshot).map_or(0, |m| m.len());
        let reserve = DISK_RESERVE_BYTES + snapshot;
        (free < reserve).then(|| {
            format!(
                "the registry's disk is full: {} MiB free at {}, under the {} MiB kept for the log and the next snapshot",
                free >> 20,
                self.dir.display(),
                reserve >> 20
            )
        })
    }
}

/// Bytes an unprivileged process may still write on the file system holding `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_with_room_is_not_full_and_one_under_the_reserve_is() {
        let dir = std::env::temp_dir();
        let free = free_bytes(&dir).expect("statvfs of the temp dir");
        assert!(free > 0);
        let disk = Disk::new(dir.clone(), dir.join("no-such-snapshot"));
        assert_eq!(disk.full().is_some(), free < DISK_RESERVE_BYTES);
        // A snapshot as large as the free space pushes the reserve over it. A sparse file
        // takes no room, so this does not fill the test machine's disk.
        let tmp = tempfile::tempdir().unwrap();
        let snapshot = tmp.path().join("snapshot.json");
        std::fs::File::create(&snapshot)
            .unwrap()
            .set_len(free_bytes(tmp.path()).unwrap())
            .unwrap();
        let why = Disk::new(tmp.path().to_path_buf(), snapshot).full();
        assert!(why.is_some_and(|w| w.contains("disk is full")));
    }
}

//! The log store and state machine on a real redb file and snapshot directory: openraft's own
//! storage suite (the contract every `RaftLogStorage` and `RaftStateMachine` must meet:
//! appends, reads, truncation, purges, votes, applying entries, building and installing
//! snapshots), and what survives closing and reopening the database.

use super::{open_db, LogStore};
use crate::pace::LogBytes;
use crate::state_machine::{SnapshotFile, StateMachine};
use crate::TypeConfig;
use model::NodeId;
use openraft::storage::RaftLogStorage;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, LogId, RaftLogReader, StorageError, Vote};
use std::path::Path;
use std::sync::Arc;

/// Builds a fresh store in a temporary directory, removed when the suite drops the guard.
#[derive(Debug)]
struct Fresh;

fn open(dir: &Path) -> (LogStore, StateMachine) {
    let db = open_db(&dir.join("raft.redb")).expect("the database opens");
    let (sm, _shared) = StateMachine::open(SnapshotFile::new(
        dir,
        db.clone(),
        Arc::default(),
        LogBytes::default(),
    ))
    .expect("opens");
    (LogStore::new(db, LogBytes::default()), sm)
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Fresh {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (log, sm) = open(dir.path());
        Ok((dir, log, sm))
    }
}

#[test]
fn the_store_passes_openrafts_storage_suite() {
    Suite::test_all(Fresh).expect("every storage test passes");
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// What raft keeps outside the entries outlives the process: the vote (raft's safety needs
/// it), the purge point, and the committed index, which is written without an fsync of its
/// own and rides along with the next durable commit (here the purge).
#[tokio::test]
async fn vote_purge_point_and_committed_index_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm) = open(dir.path());
        assert_eq!(log.read_vote().await.unwrap(), None);
        log.save_vote(&Vote::new(3, 2)).await.unwrap();
        log.save_committed(Some(log_id(3, 7))).await.unwrap();
        log.purge(log_id(3, 5)).await.unwrap();
    }
    let (mut log, _sm) = open(dir.path());
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(3, 7)));
    let state = log.get_log_state().await.unwrap();
    // With every entry purged, the purge point is also the last log id.
    assert_eq!(state.last_purged_log_id, Some(log_id(3, 5)));
    assert_eq!(state.last_log_id, Some(log_id(3, 5)));
    assert!(log.try_get_log_entries(..).await.unwrap().is_empty());
}

/// A data dir is stamped with its format when it is created; one stamped by a newer binary
/// is refused with what to do, and the refusal changes nothing in it.
#[tokio::test]
async fn a_data_dir_of_a_newer_format_is_refused_and_left_as_it_was() {
    use redb::ReadableDatabase;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    let read_format = |db: &redb::Database| -> Option<u32> {
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(super::META).unwrap();
        let value = meta.get(super::META_FORMAT).unwrap()?;
        Some(serde_json::from_slice(value.value()).unwrap())
    };
    {
        let (mut log, _sm) = open(dir.path());
        log.save_vote(&Vote::new(2, 1)).await.unwrap();
    }
    let newer = super::DATA_FORMAT + 1;
    {
        let db = open_db(&path).unwrap();
        assert_eq!(
            read_format(&db),
            Some(super::DATA_FORMAT),
            "stamped when created"
        );
        let txn = db.begin_write().unwrap();
        txn.open_table(super::META)
            .unwrap()
            .insert(
                super::META_FORMAT,
                serde_json::to_vec(&newer).unwrap().as_slice(),
            )
            .unwrap();
        txn.commit().unwrap();
    }
    let refused = open_db(&path).map(|_| ()).unwrap_err().to_string();
    assert!(
        refused.contains(&format!("format {newer}")) && refused.contains("newer chorus"),
        "{refused}"
    );
    // Still the newer binary's: its stamp and its vote are as they were.
    let db = std::sync::Arc::new(redb::Database::open(&path).unwrap());
    assert_eq!(read_format(&db), Some(newer));
    let mut log = LogStore::new(db, LogBytes::default());
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
}

/// The committed index costs no transaction of its own (openraft waits for it between an
/// entry's commit and its apply): an append carries it once it moved
/// `COMMITTED_CARRY_EVERY` entries since it was last written, a purge always does, and a
/// graceful stop writes what nothing carried.
#[tokio::test]
async fn the_committed_index_rides_along_with_a_later_append_or_is_flushed_at_a_stop() {
    type S = Suite<TypeConfig, LogStore, StateMachine, Fresh, tempfile::TempDir>;
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm) = open(dir.path());
        log.save_committed(Some(log_id(1, 3))).await.unwrap();
        // Read back before any write: the value openraft gave, not what the disk has.
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 3)));
        // Eleven appends, but index 3 is not far enough from nothing written to ride along.
        S::feed_10_logs_vote_self(&mut log).await.unwrap();
    }
    // A crash here: the hint was never written; a restart waits for a leader instead.
    {
        let (mut log, _sm) = open(dir.path());
        assert_eq!(log.read_committed().await.unwrap(), None);
        log.save_committed(Some(log_id(1, 9))).await.unwrap();
        log.flush_committed().await.unwrap();
    }
    {
        let (mut log, _sm) = open(dir.path());
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 9)));
        let far = 9 + super::COMMITTED_CARRY_EVERY;
        log.save_committed(Some(log_id(1, far))).await.unwrap();
        S::feed_10_logs_vote_self(&mut log).await.unwrap();
        log.save_committed(Some(log_id(1, far + 1))).await.unwrap();
    }
    // A crash again: the first append carried the far index, nothing carried the next one.
    let (mut log, _sm) = open(dir.path());
    let far = 9 + super::COMMITTED_CARRY_EVERY;
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, far)));
}

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
    let log = LogStore::open(db, dir, LogBytes::default()).expect("the log opens");
    (log, sm)
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

type S = Suite<TypeConfig, LogStore, StateMachine, Fresh, tempfile::TempDir>;

/// Runs openraft's storage suite case by case, each on a fresh store, and names the failures.
async fn run_suite<F, Fut>(cases: Vec<(&'static str, F)>) -> Vec<String>
where
    F: Fn(LogStore, StateMachine) -> Fut,
    Fut: std::future::Future<Output = Result<(), StorageError<NodeId>>>,
{
    let mut failed = Vec::new();
    for (name, case) in cases {
        let (_dir, log, sm) = Fresh.build().await.unwrap();
        let outcome =
            futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(case(log, sm))).await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(format!("{name}: {e}")),
            Err(_) => failed.push(format!("{name}: panicked")),
        }
    }
    failed
}

#[tokio::test]
async fn the_store_passes_openrafts_storage_suite() {
    macro_rules! cases {
        ($($f:ident),* $(,)?) => {
            vec![$((stringify!($f), Box::new(|l, m| Box::pin(S::$f(l, m)) as std::pin::Pin<Box<dyn std::future::Future<Output = _>>>) as Box<dyn Fn(LogStore, StateMachine) -> _>)),*]
        };
    }
    let failed = run_suite(cases![
        last_membership_in_log_initial,
        last_membership_in_log,
        last_membership_in_log_multi_step,
        get_membership_initial,
        get_membership_from_log_and_empty_sm,
        get_membership_from_empty_log_and_sm,
        get_membership_from_log_le_sm_last_applied,
        get_membership_from_log_gt_sm_last_applied_1,
        get_membership_from_log_gt_sm_last_applied_2,
        get_initial_state_without_init,
        get_initial_state_with_state,
        get_initial_state_last_log_gt_sm,
        get_initial_state_last_log_lt_sm,
        get_initial_state_log_ids,
        get_initial_state_re_apply_committed,
        save_vote,
        get_log_entries,
        limited_get_log_entries,
        try_get_log_entry,
        initial_logs,
        get_log_state,
        get_log_id,
        last_id_in_log,
        last_applied_state,
        purge_logs_upto_0,
        purge_logs_upto_5,
        purge_logs_upto_20,
        delete_logs_since_11,
        delete_logs_since_0,
        append_to_log,
        snapshot_meta,
        apply_single,
        apply_multiple,
    ])
    .await;
    // Left out: `get_initial_state_membership_from_log_and_sm`, which appends entry 3 right
    // after entry 1. openraft's contract for `append` rules holes out ("there must not be a
    // hole in logs"), and this log refuses one rather than keep it.
    assert!(failed.is_empty(), "{failed:#?}");
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
    let mut log = LogStore::open(db, dir.path(), LogBytes::default()).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
}

/// The committed index costs no transaction of its own (openraft waits for it between an
/// entry's commit and its apply): an append carries it once it moved
/// `COMMITTED_CARRY_EVERY` entries since it was last written, a purge always does, and a
/// graceful stop writes what nothing carried.
#[tokio::test]
async fn the_committed_index_rides_along_with_a_later_append_or_is_flushed_at_a_stop() {
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
        // The same eleven entries again, over the old ones (the log takes no hole or overlap).
        log.truncate(log_id(1, 0)).await.unwrap();
        S::feed_10_logs_vote_self(&mut log).await.unwrap();
        log.save_committed(Some(log_id(1, far + 1))).await.unwrap();
    }
    // A crash again: the first append carried the far index, nothing carried the next one.
    let (mut log, _sm) = open(dir.path());
    let far = 9 + super::COMMITTED_CARRY_EVERY;
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, far)));
}

mod segment_files {
    use super::super::segments::Segments;
    use std::io::Write;
    use std::path::Path;

    fn payload(index: u64) -> Vec<u8> {
        format!("entry {index} {}", "x".repeat((index % 7) as usize * 100)).into_bytes()
    }

    /// Appends `indexes` one write (and one sync) each.
    fn append(log: &mut Segments, indexes: std::ops::RangeInclusive<u64>) {
        for i in indexes {
            if let Some(file) = log.append(&[(i, payload(i))], None).unwrap() {
                file.sync_data().unwrap();
            }
        }
    }

    fn read(log: &Segments, start: u64, end: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for span in log.spans(start, end) {
            span.read(|b| {
                out.push(b.to_vec());
                Ok(true)
            })
            .unwrap();
        }
        out
    }

    fn expect(log: &Segments, range: std::ops::RangeInclusive<u64>) {
        let want: Vec<_> = range.clone().map(payload).collect();
        assert_eq!(read(log, 0, u64::MAX), want, "entries {range:?}");
    }

    /// Small segments (1 KiB) so that a few entries span several files.
    fn open(dir: &Path, purged: Option<u64>) -> Segments {
        Segments::open(dir, 1024, purged).unwrap()
    }

    /// Segments roll at their size, every entry reads back across them and after a reopen, a
    /// purge deletes only the segments wholly at or below its point, and entries below it
    /// are never read again, not even from a segment that is kept.
    #[test]
    fn entries_span_segments_and_a_purge_deletes_whole_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), None);
        append(&mut log, 1..=40);
        let files = log.files();
        assert!(files.len() >= 5, "{files:?}");
        expect(&log, 1..=40);
        assert_eq!(
            read(&log, 17, 20),
            (17..20).map(payload).collect::<Vec<_>>()
        );
        drop(log);
        let mut log = open(dir.path(), None);
        expect(&log, 1..=40);
        log.purge(20).unwrap();
        expect(&log, 21..=40);
        let kept = log.files();
        assert!(kept.len() < files.len(), "{kept:?}");
        let on_disk = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(on_disk, kept.len());
        // The purge point comes from redb at open; a segment the purge removed is gone.
        drop(log);
        let log = open(dir.path(), Some(20));
        expect(&log, 21..=40);
        assert_eq!(log.last_index(), Some(40));
    }

    /// A write cut short by a crash (never reported, since appends are reported once
    /// synced) is cut off at the next open, and appends go on from the entry before it;
    /// damage in a segment before the last is an error that names the file, not a log cut
    /// short in silence.
    #[test]
    fn a_torn_last_write_is_cut_off_and_damage_before_it_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), None);
        append(&mut log, 1..=30);
        let files = log.files();
        let (last, len) = files.last().cloned().unwrap();
        drop(log);
        // Half of the next record's header and a few bytes of garbage where the next record
        // goes, and more further on, past the zeros the file was grown by.
        let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[9, 0, 0, 0, 1, 2, 3], len).unwrap();
        drop(f);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&last)
            .unwrap();
        f.write_all(&[7; 40]).unwrap();
        drop(f);
        let mut log = open(dir.path(), None);
        expect(&log, 1..=30);
        assert_eq!(std::fs::metadata(&last).unwrap().len(), len, "cut back");
        append(&mut log, 31..=33);
        expect(&log, 1..=33);
        let (last, len) = log.files().last().cloned().unwrap();
        drop(log);
        // The last record's payload, flipped: its checksum no longer matches.
        let mut bad = std::fs::read(&last).unwrap();
        bad[len as usize - 2] ^= 0xff;
        std::fs::write(&last, &bad).unwrap();
        let log = open(dir.path(), None);
        expect(&log, 1..=32);
        drop(log);
        // The same damage in the first segment: refused, with the file named.
        let first = files[0].0.clone();
        let mut bad = std::fs::read(&first).unwrap();
        bad[20] ^= 0xff;
        std::fs::write(&first, &bad).unwrap();
        let e = Segments::open(dir.path(), 1024, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&first.display().to_string()) && e.contains("checksum"),
            "{e}"
        );
    }

    /// A truncation (a leader's entries replacing conflicting ones) deletes later segments
    /// and cuts the one it falls in; it holds after a reopen, and appends go on from it.
    #[test]
    fn a_truncation_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), None);
        append(&mut log, 1..=40);
        log.truncate(12).unwrap();
        expect(&log, 1..=11);
        drop(log);
        let mut log = open(dir.path(), None);
        expect(&log, 1..=11);
        let e = log.append(&[(13, payload(13))], None).unwrap_err();
        assert!(e.to_string().contains("after entry 11"), "{e}");
        append(&mut log, 12..=15);
        expect(&log, 1..=15);
        log.truncate(1).unwrap();
        assert_eq!(log.last_index(), None);
        assert!(log.files().is_empty());
    }
}

/// A data dir of format 2 has its entries in redb: the first open moves them to segment
/// files, empties the table, stamps the current format, and keeps every entry, the vote and
/// the purge point; a second open finds nothing more to move.
#[tokio::test]
async fn a_data_dir_of_format_2_has_its_log_moved_to_segment_files() {
    let dir = tempfile::tempdir().unwrap();
    let (entries, vote) = {
        let (mut log, _sm) = open(dir.path());
        S::feed_10_logs_vote_self(&mut log).await.unwrap();
        let vote = log.read_vote().await.unwrap();
        (log.try_get_log_entries(..).await.unwrap(), vote)
    };
    assert!(vote.is_some());
    assert_eq!(entries.len(), 11);
    // Rewrite the data dir as format 2 had it: the entries in the `logs` table, no files.
    std::fs::remove_dir_all(dir.path().join(super::SEGMENTS_DIR)).unwrap();
    {
        let db = open_db(&dir.path().join("raft.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(super::LOGS).unwrap();
            for e in &entries {
                table
                    .insert(e.log_id.index, serde_json::to_vec(e).unwrap().as_slice())
                    .unwrap();
            }
            txn.open_table(super::META)
                .unwrap()
                .insert(super::META_FORMAT, b"2".as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    for _ in 0..2 {
        let (mut log, _sm) = open(dir.path());
        assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries);
        assert_eq!(log.read_vote().await.unwrap(), vote);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(entries[10].log_id));
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let txn = log.db.begin_read().unwrap();
        assert_eq!(txn.open_table(super::LOGS).unwrap().len().unwrap(), 0);
        let format = txn
            .open_table(super::META)
            .unwrap()
            .get(super::META_FORMAT)
            .unwrap()
            .map(|v| v.value().to_vec());
        assert_eq!(format, Some(super::DATA_FORMAT.to_string().into_bytes()));
    }
}

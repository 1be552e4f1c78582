//! The raft log: its entries in append-only segment files (see [`segments`]), its vote, purge
//! point and committed index in redb. Every append is written and `fdatasync`ed before it is
//! reported to openraft.

use crate::pace::LogBytes;
use crate::{RegistryError, TypeConfig};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, Mutex};

mod segments;
#[cfg(test)]
mod tests;

use segments::Segments;

type NodeId = model::NodeId;

pub(crate) const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const META_VOTE: &str = "vote";
const META_COMMITTED: &str = "committed";
const META_LAST_PURGED: &str = "last_purged";
const META_FORMAT: &str = "format";

/// The format of a data dir: its log entries (JSON `model::Command`s), its snapshot (the
/// encoded `model::State`) and the meta values here. A new data dir is stamped with it; a data
/// dir stamped with a newer one is refused at start (this binary might misread it), before
/// anything in it is changed; an older one is read as it is, since every field added since
/// has a default. Bump it with a change that the binaries before it cannot read (a new
/// command, a new meaning of a field), so that such a binary says so instead of failing on
/// the first entry it cannot parse.
///
/// - 1: data dirs from before the format was stamped (they are stamped with the current
///   format when opened, which reads them as they are);
/// - 2: `Command::Continued` (a run's next decision in the entry that ends a step);
/// - 3: the entries in segment files under `log/` rather than in redb's `logs` table (a data
///   dir of an older format has them moved there when it is opened).
///
/// Not yet: between nodes. A node of a newer format proposes entries an older peer cannot
/// read; a rolling upgrade needs the cluster to agree on the format in effect first (the
/// safe releases to come).
pub const DATA_FORMAT: u32 = 3;

/// redb's page cache (its default is 1 GiB): redb holds only small meta values and the
/// latest snapshot's record here, so a small cache serves it.
const LOG_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Opens redb (created with the current format if new), refusing a data dir of a newer
/// format; [`LogStore::open`] brings an older one up to date.
pub(crate) fn open_db(path: &Path) -> Result<Arc<Database>, RegistryError> {
    let db = Database::builder()
        .set_cache_size(LOG_CACHE_BYTES)
        .create(path)
        .map_err(|e| RegistryError::Storage(format!("{}: {e}", path.display())))?;
    // Create the tables up front so that read transactions never meet a missing table.
    let txn = db.begin_write().map_err(storage)?;
    txn.open_table(LOGS).map_err(storage)?;
    {
        let mut meta = txn.open_table(META).map_err(storage)?;
        let found = match meta.get(META_FORMAT).map_err(storage)? {
            Some(v) => Some(serde_json::from_slice::<u32>(v.value()).map_err(storage)?),
            None => None,
        };
        match found {
            // Dropped uncommitted: nothing in the data dir changes.
            Some(found) if found > DATA_FORMAT => {
                return Err(RegistryError::Storage(format!(
                    "{}: this data dir is in format {found}, written by a newer chorus; this \
                     binary reads formats up to {DATA_FORMAT}: run the newer binary (nothing \
                     was changed)",
                    path.display()
                )))
            }
            Some(_) => {}
            None => {
                let stamp = serde_json::to_vec(&DATA_FORMAT).map_err(storage)?;
                meta.insert(META_FORMAT, stamp.as_slice())
                    .map_err(storage)?;
            }
        }
    }
    txn.open_table(crate::state_machine::SNAPSHOT)
        .map_err(storage)?;
    txn.commit().map_err(storage)?;
    Ok(Arc::new(db))
}

fn storage(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Storage(e.to_string())
}

fn read_err(e: impl std::error::Error + Send + Sync + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + Send + Sync + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

#[derive(Clone, Debug)]
pub(crate) struct LogStore {
    db: Arc<Database>,
    /// The entries. Held only to find or change where they are; the reads and the `fdatasync`
    /// themselves run outside it.
    segments: Arc<Mutex<Segments>>,
    /// The committed index openraft reported last, while no write has carried it to disk yet
    /// (see [`RaftLogStorage::save_committed`] below).
    committed: Arc<Mutex<Committed>>,
    /// Bytes of entries appended, for the snapshot pacer (see [`crate::pace`]).
    appended: LogBytes,
}

/// The committed index as openraft reported it and as the disk has it.
#[derive(Debug, Default)]
struct Committed {
    /// Reported and not written yet.
    pending: Option<Option<LogId<NodeId>>>,
    /// The index last written.
    written: u64,
}

/// An append carries the committed index (a record in the same write) only once it moved
/// this far since it was last written, to keep the log small. A restart after a crash then
/// applies at most this many entries late (once a leader commits again).
const COMMITTED_CARRY_EVERY: u64 = 64;

/// The segment files' directory in a data dir.
const SEGMENTS_DIR: &str = "log";

impl LogStore {
    /// Opens the log of the data dir `dir`, whose redb `open_db` opened. A data dir of a
    /// format before 3 has its entries in redb's `logs` table: they are moved to segment files
    /// (written and synced first, then removed from redb with the new stamp in one commit; a
    /// crash in between moves them again from the start).
    pub(crate) fn open(
        db: Arc<Database>,
        dir: &Path,
        appended: LogBytes,
    ) -> Result<LogStore, RegistryError> {
        let purged = read_meta_in::<LogId<NodeId>>(&db, META_LAST_PURGED)
            .map_err(|e| RegistryError::Storage(e.to_string()))?
            .map(|l| l.index);
        let segments_dir = dir.join(SEGMENTS_DIR);
        let at =
            |e: std::io::Error| RegistryError::Storage(format!("{}: {e}", segments_dir.display()));
        let mut segments =
            Segments::open(&segments_dir, segments::SEGMENT_BYTES, purged).map_err(at)?;
        let format = read_meta_in::<u32>(&db, META_FORMAT)
            .map_err(|e| RegistryError::Storage(e.to_string()))?
            .unwrap_or(1);
        let rows = {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(LOGS).map_err(storage)?;
            let mut rows = Vec::new();
            for row in table.range::<u64>(..).map_err(storage)? {
                let (index, value) = row.map_err(storage)?;
                rows.push((index.value(), value.value().to_vec()));
            }
            rows
        };
        // Also entries under the current stamp: a data dir from before formats were stamped
        // is stamped with the current one when redb first opens it.
        if format < DATA_FORMAT || !rows.is_empty() {
            segments.clear().map_err(at)?;
            if let Some(file) = segments.append(&rows, None).map_err(at)? {
                file.sync_data().map_err(at)?;
            }
            let txn = db.begin_write().map_err(storage)?;
            txn.open_table(LOGS)
                .map_err(storage)?
                .retain(|_, _| false)
                .map_err(storage)?;
            let stamp = serde_json::to_vec(&DATA_FORMAT).map_err(storage)?;
            txn.open_table(META)
                .map_err(storage)?
                .insert(META_FORMAT, stamp.as_slice())
                .map_err(storage)?;
            txn.commit().map_err(storage)?;
            tracing::info!(
                entries = rows.len(),
                from = format,
                to = DATA_FORMAT,
                "the log moved to segment files"
            );
        }
        Ok(LogStore {
            db,
            segments: Arc::new(Mutex::new(segments)),
            committed: Arc::default(),
            appended,
        })
    }

    fn segments(&self) -> std::sync::MutexGuard<'_, Segments> {
        self.segments.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decodes the entries `start..end` that exist, in order, while `more` (given each
    /// entry's stored bytes) says to go on.
    fn entries(
        &self,
        start: u64,
        end: u64,
        mut more: impl FnMut(usize) -> bool,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let spans = self.segments().spans(start, end);
        let mut entries = Vec::new();
        for span in spans {
            let through = span
                .read(|bytes| {
                    if !more(bytes.len()) && !entries.is_empty() {
                        return Ok(false);
                    }
                    entries.push(serde_json::from_slice(bytes).map_err(std::io::Error::other)?);
                    Ok(true)
                })
                .map_err(read_err)?;
            if !through {
                break;
            }
        }
        Ok(entries)
    }

    /// The committed index not yet on disk, if any, to write in the transaction at hand; once
    /// that transaction committed, [`LogStore::carried`] forgets it.
    fn to_carry(&self, always: bool) -> Option<Option<LogId<NodeId>>> {
        let committed = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        let pending = committed.pending?;
        let index = pending.map_or(0, |l| l.index);
        (always || index >= committed.written.saturating_add(COMMITTED_CARRY_EVERY))
            .then_some(pending)
    }

    fn carried(&self, written: Option<Option<LogId<NodeId>>>) {
        let Some(written) = written else { return };
        let mut committed = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        committed.written = written.map_or(0, |l| l.index);
        if committed.pending == Some(written) {
            committed.pending = None;
        }
    }

    /// Writes the committed index openraft reported last, if no write carried it yet, with an
    /// fsync: at a graceful stop, so that the next start applies everything committed before
    /// it rather than wait for a leader to say so.
    pub(crate) async fn flush_committed(&self) -> Result<(), StorageError<NodeId>> {
        let Some(committed) = self.to_carry(true) else {
            return Ok(());
        };
        self.write_meta(META_COMMITTED, &committed, Durability::Immediate)
            .await?;
        self.carried(Some(committed));
        Ok(())
    }

    /// The index of the last entry purged from the log (after a snapshot), if any.
    pub(crate) fn last_purged_index(&self) -> Result<Option<u64>, RegistryError> {
        let purged: Option<LogId<NodeId>> = self
            .read_meta(META_LAST_PURGED)
            .map_err(|e| RegistryError::Storage(e.to_string()))?;
        Ok(purged.map(|l| l.index))
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError<NodeId>> {
        read_meta_in(&self.db, key)
    }

    /// Writes one meta value on a blocking thread (a durable commit waits for fsync).
    async fn write_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(value).map_err(write_err)?;
        let db = self.db.clone();
        blocking(move || {
            let mut txn = db.begin_write().map_err(write_err)?;
            txn.set_durability(durability).map_err(write_err)?;
            insert_meta(&txn, key, &bytes)?;
            txn.commit().map_err(write_err)
        })
        .await
    }
}

fn read_meta_in<T: serde::de::DeserializeOwned>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, StorageError<NodeId>> {
    let txn = db.begin_read().map_err(read_err)?;
    let table = txn.open_table(META).map_err(read_err)?;
    let Some(value) = table.get(key).map_err(read_err)? else {
        return Ok(None);
    };
    serde_json::from_slice(value.value())
        .map(Some)
        .map_err(read_err)
}

/// Puts one meta value (JSON `bytes`) in `txn`.
fn insert_meta(
    txn: &redb::WriteTransaction,
    key: &str,
    bytes: &[u8],
) -> Result<(), StorageError<NodeId>> {
    txn.open_table(META)
        .map_err(write_err)?
        .insert(key, bytes)
        .map_err(write_err)?;
    Ok(())
}

/// Writes the committed index not yet on disk, if any, in `txn` (see `save_committed`).
fn carry(
    txn: &redb::WriteTransaction,
    committed: Option<Option<LogId<NodeId>>>,
) -> Result<(), StorageError<NodeId>> {
    let Some(committed) = committed else {
        return Ok(());
    };
    let bytes = serde_json::to_vec(&committed).map_err(write_err)?;
    insert_meta(txn, META_COMMITTED, &bytes)
}

/// Runs an append's `fdatasync` on the calling thread: openraft's core awaits
/// every append before it does anything else, so handing the write to a pool thread only added
/// two thread wake-ups to each commit (the pool's thread, then the core's), the cost that
/// bounded a fan-out of no-op jobs (closed loop of fan100 runs, one node: 107 to 109 runs/s
/// through the pool, 138 to 143 in place). `block_in_place` first hands this worker's other
/// tasks to another thread, so none waits behind the fsync. A current-thread runtime (unit
/// tests) has no other thread to hand them to: there the write simply runs.
fn in_place<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError<NodeId>> + Send + 'static,
) -> Result<T, StorageError<NodeId>> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageIOError::write_logs(&e).into())
        .and_then(|r| r)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        self.entries(start, end, |_| true)
    }

    /// Entries from `start` for one `AppendEntries` request: up to `end`, and only while they
    /// fit in [`crate::APPEND_BYTES_MAX`] as stored (the size they travel at); always the
    /// first one, whatever its size. openraft sends what it gets and carries on from the last
    /// entry the follower took.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let mut bytes = 0;
        self.entries(start, end, |len| {
            bytes += len;
            bytes <= crate::APPEND_BYTES_MAX
        })
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> = self.read_meta(META_LAST_PURGED)?;
        let last_index = self.segments().last_index();
        let last = match last_index {
            Some(index) => {
                let entry = self.entries(index, index + 1, |_| true)?.pop();
                entry.map(|e| e.log_id).or(last_purged)
            }
            _ => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        // A vote must survive a crash: raft's safety depends on never voting twice in a term.
        self.write_meta(META_VOTE, vote, Durability::Immediate)
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(META_VOTE)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Only a hint for a faster restart (the leader re-establishes the commit index).
        // openraft awaits this call between an entry's commit and its apply, so it writes
        // nothing here: a later append (once it moved `COMMITTED_CARRY_EVERY` entries) or
        // purge carries it in its own transaction, and a graceful stop writes it
        // (`flush_committed`). After a crash the hint on disk may be that many entries
        // behind, which a restart tolerates: the rest is applied once a leader commits again.
        self.committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        if let Some(pending) = self.to_carry(true) {
            return Ok(pending);
        }
        // Written by a purge or a stop (redb) or carried by an append (the log): the later.
        let in_meta = self
            .read_meta::<Option<LogId<NodeId>>>(META_COMMITTED)?
            .flatten();
        let in_log = match self.segments().committed() {
            Some(bytes) => {
                serde_json::from_slice::<Option<LogId<NodeId>>>(bytes).map_err(read_err)?
            }
            None => None,
        };
        Ok(in_meta.max(in_log))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        for entry in entries {
            rows.push((
                entry.log_id.index,
                serde_json::to_vec(&entry).map_err(write_err)?,
            ));
        }
        self.appended
            .add(rows.iter().map(|(_, bytes)| bytes.len() as u64).sum());
        let committed = self.to_carry(false);
        let carried = match committed {
            Some(c) => Some(serde_json::to_vec(&c).map_err(write_err)?),
            None => None,
        };
        let written = self
            .segments()
            .append(&rows, carried.as_deref())
            .map_err(write_err);
        let result = written.and_then(|file| match file {
            Some(file) => in_place(|| file.sync_data()).map_err(write_err),
            None => Ok(()),
        });
        if result.is_ok() {
            self.carried(committed);
        }
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let segments = self.segments.clone();
        blocking(move || {
            segments
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .truncate(log_id.index)
                .map_err(write_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(&Some(log_id)).map_err(write_err)?;
        let db = self.db.clone();
        let started = std::time::Instant::now();
        let committed = self.to_carry(true);
        let segments = self.segments.clone();
        let purged = blocking(move || {
            // The purge point first: segments it covers that a crash brings back are deleted
            // at the next open.
            let txn = db.begin_write().map_err(write_err)?;
            insert_meta(&txn, META_LAST_PURGED, &bytes)?;
            carry(&txn, committed)?;
            txn.commit().map_err(write_err)?;
            segments
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .purge(log_id.index)
                .map_err(write_err)
        })
        .await;
        if purged.is_ok() {
            self.carried(committed);
        }
        tracing::debug!(
            upto = log_id.index,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "log purged"
        );
        purged
    }
}

//! The raft log, vote and committed index in redb. Every append is a durable (fsync'd) redb
//! commit, reported to openraft only once it is on disk.

use crate::pace::LogBytes;
use crate::{RegistryError, TypeConfig};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[cfg(test)]
mod tests;

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
/// - 2: `Command::Continued` (a run's next decision in the entry that ends a step).
///
/// Not yet: between nodes. A node of a newer format proposes entries an older peer cannot
/// read; a rolling upgrade needs the cluster to agree on the format in effect first (the
/// safe releases to come).
pub const DATA_FORMAT: u32 = 2;

/// redb's page cache (its default is 1 GiB): the log is written once and read back mostly
/// while it is recent (apply, replication, catch-up), so a small cache serves it, and memory
/// follows the history that is kept rather than all that was ever written. redb keeps every
/// page it writes in this cache while there is room, so the log since the last snapshot (as
/// large as that snapshot at most, see `pace`) would fill a larger one and stay there.
const LOG_CACHE_BYTES: usize = 4 * 1024 * 1024;

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

/// An append carries the committed index only once it moved this far since it was last
/// written: writing it touches the `meta` table's pages too, about a tenth of an append's
/// page writes (9.7 pages per commit with it, 8.8 without). A restart after a crash then
/// applies at most this many entries late (once a leader commits again).
const COMMITTED_CARRY_EVERY: u64 = 64;

impl LogStore {
    pub(crate) fn new(db: Arc<Database>, appended: LogBytes) -> LogStore {
        LogStore {
            db,
            committed: Arc::default(),
            appended,
        }
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
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(META).map_err(read_err)?;
        let Some(value) = table.get(key).map_err(read_err)? else {
            return Ok(None);
        };
        serde_json::from_slice(value.value())
            .map(Some)
            .map_err(read_err)
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

/// Runs a blocking append (a durable redb commit) on the calling thread: openraft's core awaits
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
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOGS).map_err(read_err)?;
        let mut entries = Vec::new();
        for row in table.range(range).map_err(read_err)? {
            let (_, value) = row.map_err(read_err)?;
            entries.push(serde_json::from_slice(value.value()).map_err(read_err)?);
        }
        Ok(entries)
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
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOGS).map_err(read_err)?;
        let mut entries = Vec::new();
        let mut bytes = 0;
        for row in table.range(start..end).map_err(read_err)? {
            let (_, value) = row.map_err(read_err)?;
            bytes += value.value().len();
            if bytes > crate::APPEND_BYTES_MAX && !entries.is_empty() {
                break;
            }
            entries.push(serde_json::from_slice(value.value()).map_err(read_err)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> = self.read_meta(META_LAST_PURGED)?;
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOGS).map_err(read_err)?;
        let last = match table.last().map_err(read_err)? {
            Some((_, value)) => {
                let entry: Entry<TypeConfig> =
                    serde_json::from_slice(value.value()).map_err(read_err)?;
                Some(entry.log_id)
            }
            None => last_purged,
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
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(META_COMMITTED)?
            .flatten())
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
        let db = self.db.clone();
        let committed = self.to_carry(false);
        let result = in_place(move || {
            let txn = db.begin_write().map_err(write_err)?;
            {
                let mut table = txn.open_table(LOGS).map_err(write_err)?;
                for (index, bytes) in &rows {
                    table.insert(*index, bytes.as_slice()).map_err(write_err)?;
                }
            }
            carry(&txn, committed)?;
            txn.commit().map_err(write_err)
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
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write().map_err(write_err)?;
            txn.open_table(LOGS)
                .map_err(write_err)?
                .retain_in(log_id.index.., |_, _| false)
                .map_err(write_err)?;
            txn.commit().map_err(write_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(&Some(log_id)).map_err(write_err)?;
        let db = self.db.clone();
        let started = std::time::Instant::now();
        let committed = self.to_carry(true);
        let purged = blocking(move || {
            let txn = db.begin_write().map_err(write_err)?;
            insert_meta(&txn, META_LAST_PURGED, &bytes)?;
            carry(&txn, committed)?;
            txn.open_table(LOGS)
                .map_err(write_err)?
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(write_err)?;
            txn.commit().map_err(write_err)
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

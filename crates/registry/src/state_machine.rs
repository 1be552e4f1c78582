//! The state machine: [`model::State`] in memory, made durable by the log and by snapshots
//! kept in a file of their own (see [`SnapshotFile`]).
//!
//! Snapshot file layout: one JSON line of [`SnapshotHeader`], then the state's JSON. Readers
//! and the API see the state through [`Shared`], behind a short-held lock.

use crate::{RegistryError, TypeConfig};
use model::{NodeId, Response, State};
use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// Where data dirs made before snapshots had their own file kept them.
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const SNAPSHOT_KEY: &str = "current";
const SNAPSHOT_FILE: &str = "snapshot.json";

/// The latest snapshot, in its own file next to the log's redb file: written under a temporary
/// name, synced, renamed over the old one, and the directory synced. Not in the log's
/// database: redb runs one write transaction at a time, and writing a snapshot of a large
/// state (megabytes, then an fsync) there held every log append, and so every commit, for
/// up to a few hundred milliseconds.
#[derive(Debug)]
pub(crate) struct SnapshotFile {
    dir: PathBuf,
    db: Arc<Database>,
}

impl SnapshotFile {
    pub(crate) fn new(dir: &Path, db: Arc<Database>) -> SnapshotFile {
        SnapshotFile {
            dir: dir.to_path_buf(),
            db,
        }
    }

    fn read(&self) -> Result<Option<Vec<u8>>, StorageError<NodeId>> {
        match std::fs::read(self.dir.join(SNAPSHOT_FILE)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => read_snapshot_bytes(&self.db),
            Err(e) => Err(snap_err(e)),
        }
    }

    /// Writes `bytes` as the latest snapshot: a temporary file, synced, renamed over the old
    /// one, then the directory synced. Blocking.
    fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = self.dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(SNAPSHOT_FILE))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

/// Runs `work` on a thread of its own at a lower CPU priority (nice 10) and waits for it.
///
/// Building a snapshot is background work: encoding a large state costs tens of milliseconds
/// of CPU, and every node of a cluster builds one at about the same log index. At equal
/// priority, on a small machine, that competes with the commits and requests clients wait
/// for. Not tokio's blocking pool: an unprivileged thread cannot raise its priority back,
/// and that pool's threads also write the log.
async fn in_background<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StorageError<NodeId>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("snapshot".into())
        .spawn(move || {
            // SAFETY: plain system calls on the calling thread (on Linux a thread has a nice
            // value of its own); no memory is shared with them. Failing leaves the default
            // priority, which is only slower for others, so the result is not checked.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, SNAPSHOT_NICE);
            }
            let _ = tx.send(work());
        })
        .map_err(sm_err)?;
    rx.await.map_err(sm_err)
}

/// The nice value of the thread that encodes and writes a snapshot.
const SNAPSHOT_NICE: libc::c_int = 10;

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    meta: SnapshotMeta<NodeId, BasicNode>,
}

/// What the raft side and the readers share.
#[derive(Debug)]
pub(crate) struct Shared {
    inner: RwLock<Inner>,
    applied_tx: watch::Sender<u64>,
    committed: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    state: State,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
}

impl Shared {
    pub(crate) fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        f(&inner.state)
    }

    pub(crate) fn applied(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    pub(crate) fn committed_index(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// The membership as applied here: committed, unlike the latest one in raft's metrics,
    /// which counts a membership change from the moment its entry is appended.
    pub(crate) fn membership(&self) -> StoredMembership<NodeId, BasicNode> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.membership.clone()
    }
}

#[derive(Debug)]
pub(crate) struct StateMachine {
    snapshots: Arc<SnapshotFile>,
    shared: Arc<Shared>,
}

fn sm_err(e: impl std::error::Error + Send + Sync + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

fn snap_err(e: impl std::error::Error + Send + Sync + 'static) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, &e).into()
}

impl StateMachine {
    /// Opens the state machine, loading the latest snapshot if there is one.
    pub(crate) fn open(
        snapshots: SnapshotFile,
    ) -> Result<(StateMachine, Arc<Shared>), RegistryError> {
        let snapshots = Arc::new(snapshots);
        let mut inner = Inner::default();
        if let Some(bytes) = snapshots
            .read()
            .map_err(|e| RegistryError::Storage(e.to_string()))?
        {
            let (header, state) =
                decode(&bytes).map_err(|e| RegistryError::Storage(format!("snapshot: {e}")))?;
            inner = Inner {
                state,
                last_applied: header.meta.last_log_id,
                membership: header.meta.last_membership,
            };
        }
        let applied = inner.last_applied.map_or(0, |l| l.index);
        let shared = Arc::new(Shared {
            inner: RwLock::new(inner),
            applied_tx: watch::Sender::new(applied),
            committed: AtomicU64::new(applied),
        });
        Ok((
            StateMachine {
                snapshots,
                shared: shared.clone(),
            },
            shared,
        ))
    }

    fn write_inner(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.shared.inner.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn read_snapshot_bytes(db: &Database) -> Result<Option<Vec<u8>>, StorageError<NodeId>> {
    let txn = db.begin_read().map_err(snap_err)?;
    let table = txn.open_table(SNAPSHOT).map_err(snap_err)?;
    Ok(table
        .get(SNAPSHOT_KEY)
        .map_err(snap_err)?
        .map(|v| v.value().to_vec()))
}

fn decode(bytes: &[u8]) -> Result<(SnapshotHeader, State), serde_json::Error> {
    let split = bytes
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(bytes.len());
    let header: SnapshotHeader = serde_json::from_slice(&bytes[..split])?;
    let state = State::decode(bytes.get(split + 1..).unwrap_or_default())?;
    Ok((header, state))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let inner = self.shared.inner.read().unwrap_or_else(|p| p.into_inner());
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        let last = {
            let mut inner = self.write_inner();
            for entry in entries {
                inner.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Response::Done,
                    EntryPayload::Normal(command) => inner.state.apply(command),
                    EntryPayload::Membership(membership) => {
                        inner.membership = StoredMembership::new(Some(entry.log_id), membership);
                        Response::Done
                    }
                };
                responses.push(response);
            }
            inner.last_applied.map_or(0, |l| l.index)
        };
        self.shared.committed.fetch_max(last, Ordering::Relaxed);
        self.shared.applied_tx.send_replace(last);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            snapshots: self.snapshots.clone(),
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let (_, state) = decode(&bytes).map_err(snap_err)?;
        let snapshots = self.snapshots.clone();
        tokio::task::spawn_blocking(move || snapshots.write(&bytes))
            .await
            .map_err(sm_err)?
            .map_err(sm_err)?;
        let last = meta.last_log_id.map_or(0, |l| l.index);
        {
            let mut inner = self.write_inner();
            *inner = Inner {
                state,
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
            };
        }
        self.shared.committed.fetch_max(last, Ordering::Relaxed);
        self.shared.applied_tx.send_replace(last);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let Some(bytes) = self.snapshots.read()? else {
            return Ok(None);
        };
        let split = bytes
            .iter()
            .position(|b| *b == b'\n')
            .unwrap_or(bytes.len());
        let header: SnapshotHeader = serde_json::from_slice(&bytes[..split]).map_err(snap_err)?;
        Ok(Some(Snapshot {
            meta: header.meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

#[derive(Debug)]
pub(crate) struct SnapshotBuilder {
    snapshots: Arc<SnapshotFile>,
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Copy the state under the read lock, encode and write it outside, at low priority:
        // applies wait only for the copy (the jobs are shared, so about 1 ms for 20,000 of
        // them; a deep copy took 30-80 ms), not for the JSON encoding (40-100 ms).
        let started = std::time::Instant::now();
        let (meta, state) = {
            let inner = self.shared.inner.read().unwrap_or_else(|p| p.into_inner());
            let snapshot_id = format!(
                "{}-{}",
                inner.last_applied.map_or(0, |l| l.leader_id.term),
                inner.last_applied.map_or(0, |l| l.index)
            );
            let meta = SnapshotMeta {
                last_log_id: inner.last_applied,
                last_membership: inner.membership.clone(),
                snapshot_id,
            };
            (meta, inner.state.snapshot_copy())
        };
        let copied = started.elapsed();
        let header = serde_json::to_vec(&SnapshotHeader { meta: meta.clone() }).map_err(sm_err)?;
        let snapshots = self.snapshots.clone();
        let encode_and_write = move || {
            let mut bytes = header;
            bytes.push(b'\n');
            bytes.extend_from_slice(&state.encode());
            let encoded = started.elapsed();
            snapshots.write(&bytes).map(|()| (bytes, encoded))
        };
        let (bytes, encoded) = in_background(encode_and_write).await?.map_err(sm_err)?;
        tracing::debug!(
            index = meta.last_log_id.map_or(0, |l| l.index),
            bytes = bytes.len(),
            copy_ms = copied.as_secs_f64() * 1e3,
            encode_ms = (encoded - copied).as_secs_f64() * 1e3,
            write_ms = (started.elapsed() - encoded).as_secs_f64() * 1e3,
            "snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

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

    async fn store(&self, bytes: Vec<u8>) -> Result<(), StorageError<NodeId>> {
        let dir = self.dir.clone();
        let write = move || -> std::io::Result<()> {
            use std::io::Write;
            let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
            std::fs::File::open(&dir)?.sync_all()
        };
        tokio::task::spawn_blocking(write)
            .await
            .map_err(sm_err)?
            .map_err(sm_err)
    }
}

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
        self.snapshots.store(bytes).await?;
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
        // Copy the state under the read lock, encode it outside: applies wait only for the
        // copy (a few milliseconds for tens of thousands of jobs), not for the JSON encoding,
        // which takes several times longer and would stall every write behind it.
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
            (meta, inner.state.clone())
        };
        let header = serde_json::to_vec(&SnapshotHeader { meta: meta.clone() }).map_err(sm_err)?;
        let encode = move || {
            let mut bytes = header;
            bytes.push(b'\n');
            bytes.extend_from_slice(&state.encode());
            bytes
        };
        let bytes = tokio::task::spawn_blocking(encode).await.map_err(sm_err)?;
        self.snapshots.store(bytes.clone()).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

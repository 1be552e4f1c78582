//! The state machine: [`model::State`] in memory, made durable by the log and by snapshots
//! kept in a file of their own (see [`SnapshotFile`]).
//!
//! Snapshot file layout: one JSON line of [`SnapshotHeader`], then the state's JSON. Readers
//! and the API see the state through [`Shared`], behind a short-held lock.

use crate::pace::{Latest, LogBytes, Taken};
use crate::{RegistryError, TypeConfig};
use model::{NodeId, Response, State};
use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;

/// Where data dirs made before snapshots had their own file kept them.
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const SNAPSHOT_KEY: &str = "current";
const SNAPSHOT_FILE: &str = "snapshot.json";
/// The buffer a snapshot is encoded into on its way to the file.
const SNAPSHOT_WRITE_BUFFER: usize = 1024 * 1024;

/// The latest snapshot, in its own file next to the log's redb file: written under a temporary
/// name, synced, renamed over the old one, and the directory synced. Not in the log's
/// database: redb runs one write transaction at a time, and writing a snapshot of a large
/// state (megabytes, then an fsync) there held every log append, and so every commit, for
/// up to a few hundred milliseconds.
///
/// openraft builds a snapshot on a task of its own while the state machine may install one
/// sent by the leader, so two writes can overlap: they are taken one at a time, and an older
/// snapshot never replaces a newer one. A slow build finishing after an install would
/// otherwise put back a state older than the log's purge point, and the node could not
/// restart from its own disk; and two writers sharing the temporary file corrupted it, or
/// failed the build, which stops openraft's core for good.
#[derive(Debug)]
pub(crate) struct SnapshotFile {
    dir: PathBuf,
    db: Arc<Database>,
    /// The log index of the snapshot on disk (0: none), held while one is written.
    on_disk: Mutex<u64>,
    /// The latest snapshot's figures, for the pacer (see [`crate::pace`]).
    latest: Arc<Latest>,
    log_bytes: LogBytes,
}

impl SnapshotFile {
    /// Where the latest snapshot of the registry in `dir` is.
    pub(crate) fn path(dir: &Path) -> PathBuf {
        dir.join(SNAPSHOT_FILE)
    }

    pub(crate) fn new(
        dir: &Path,
        db: Arc<Database>,
        latest: Arc<Latest>,
        log_bytes: LogBytes,
    ) -> SnapshotFile {
        SnapshotFile {
            dir: dir.to_path_buf(),
            db,
            on_disk: Mutex::new(0),
            latest,
            log_bytes,
        }
    }

    /// Tells the pacer about the snapshot at `index` (`bytes` long) this node now holds, which
    /// took from `started` until now to make.
    fn taken(&self, index: u64, bytes: usize, started: std::time::Instant) {
        self.latest.set(Taken {
            index,
            bytes: bytes as u64,
            cost: started.elapsed(),
            at: std::time::Instant::now(),
            log_bytes_at: self.log_bytes.get(),
        });
    }

    fn read(&self) -> Result<Option<Vec<u8>>, StorageError<NodeId>> {
        match std::fs::read(self.dir.join(SNAPSHOT_FILE)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => read_snapshot_bytes(&self.db),
            Err(e) => Err(snap_err(e)),
        }
    }

    /// Writes `bytes`, the snapshot as of log `index`, as the latest one (see
    /// [`SnapshotFile::write_with`]).
    fn write(
        &self,
        bytes: &[u8],
        index: u64,
        started: std::time::Instant,
    ) -> std::io::Result<bool> {
        Ok(self
            .write_with(index, started, |out| out.write_all(bytes))?
            .is_some())
    }

    /// Writes the snapshot as of log `index` as the latest one, its bytes written by `encode`
    /// (through a buffer, so a state of tens of megabytes is never one buffer in memory): a
    /// temporary file, synced, renamed over the old one, then the directory synced.
    /// Blocking. Answers its size, or `None` (and nothing written, `encode` not called) when
    /// the file already holds a snapshot at `index` or later. `started`: when making it
    /// began, for its cost.
    fn write_with(
        &self,
        index: u64,
        started: std::time::Instant,
        encode: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> std::io::Result<Option<u64>> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut on_disk = self.on_disk.lock().unwrap_or_else(|p| p.into_inner());
        if *on_disk >= index && *on_disk > 0 {
            return Ok(None);
        }
        let tmp = self.dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        // Private from the start: the snapshot holds the whole replicated state.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut out = std::io::BufWriter::with_capacity(SNAPSHOT_WRITE_BUFFER, file);
        encode(&mut out)?;
        out.flush()?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let bytes = file.metadata()?.len();
        std::fs::rename(&tmp, self.dir.join(SNAPSHOT_FILE))?;
        crate::sync_dir(&self.dir)?;
        *on_disk = index;
        self.taken(index, bytes as usize, started);
        Ok(Some(bytes))
    }

    /// Records the index of the snapshot found on disk at start-up.
    fn loaded(&self, index: u64) {
        *self.on_disk.lock().unwrap_or_else(|p| p.into_inner()) = index;
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
    digests: Mutex<Digests>,
}

/// Digests of the state kept per node: enough for a checker polling every few seconds to see
/// every one at a few hundred entries a second.
pub const STATE_DIGESTS_MAX: usize = 256;

/// A digest of what a node has applied, as of one log index: SHA-256 over the log id of the
/// entry, the membership and the state's snapshot encoding. Two nodes that applied the same
/// log have the same digest at the same index, whatever their pace or how they got there
/// (log replay or an installed snapshot).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDigest {
    pub index: u64,
    pub term: u64,
    pub sha256: String,
}

/// The latest [`STATE_DIGESTS_MAX`] digests, recorded every `every_entries` applied indexes
/// (0: off; the node turns it on with fault injection, for the chaos suite's checker).
#[derive(Debug, Default)]
struct Digests {
    every_entries: u64,
    ring: VecDeque<StateDigest>,
}

/// What a digest covers, copied under the state lock and hashed outside it.
struct DigestInput {
    log_id: LogId<NodeId>,
    membership: StoredMembership<NodeId, BasicNode>,
    state: State,
}

impl DigestInput {
    /// Hashes the input. The snapshot encoding is deterministic: the state holds ordered maps
    /// only (its one hash map, the idempotency index, is derived and not encoded), and JSON
    /// objects inside jobs are ordered maps too (serde_json without `preserve_order`).
    fn digest(&self) -> StateDigest {
        use sha2::Digest;
        let mut hasher = HashWriter(sha2::Sha256::new());
        let encoded = serde_json::to_writer(&mut hasher, &(&self.log_id, &self.membership))
            .and_then(|()| serde_json::to_writer(&mut hasher, &self.state));
        if let Err(e) = encoded {
            // Encoding into a hasher cannot fail on I/O, and the state always encodes (its
            // snapshots would fail too): a failure here is a bug worth a loud log line.
            tracing::error!(error = %e, "state digest: encoding failed");
        }
        StateDigest {
            index: self.log_id.index,
            term: self.log_id.leader_id.term,
            sha256: hex::encode(hasher.0.finalize()),
        }
    }
}

/// Feeds what serde_json writes into a SHA-256, so no copy of the encoded state is kept.
struct HashWriter(sha2::Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(&mut self.0, bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Inner {
    state: State,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
}

impl Inner {
    /// What the digest at `log_id` covers: cheap, the jobs are shared (see
    /// [`State::snapshot_copy`]).
    fn digest_input(&self, log_id: LogId<NodeId>) -> DigestInput {
        DigestInput {
            log_id,
            membership: self.membership.clone(),
            state: self.state.snapshot_copy(),
        }
    }
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

    fn digests(&self) -> std::sync::MutexGuard<'_, Digests> {
        self.digests.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a digest of the state every `every_entries` applied indexes from now on (0:
    /// stop).
    pub(crate) fn record_digests(&self, every_entries: u64) {
        self.digests().every_entries = every_entries;
    }

    /// The digests recorded so far, oldest first.
    pub(crate) fn state_digests(&self) -> Vec<StateDigest> {
        self.digests().ring.iter().cloned().collect()
    }

    fn digest_due(&self, index: u64) -> bool {
        let every = self.digests().every_entries;
        every > 0 && index.is_multiple_of(every)
    }

    /// Hashes the copies taken while applying and keeps the digests, outside the state lock.
    fn keep_digests(&self, inputs: Vec<DigestInput>) {
        for input in inputs {
            let digest = input.digest();
            let mut digests = self.digests();
            if digests.ring.len() == STATE_DIGESTS_MAX {
                digests.ring.pop_front();
            }
            digests.ring.push_back(digest);
        }
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
        let started = std::time::Instant::now();
        if let Some(bytes) = snapshots
            .read()
            .map_err(|e| RegistryError::Storage(e.to_string()))?
        {
            let (header, state) =
                decode(&bytes).map_err(|e| RegistryError::Storage(format!("snapshot: {e}")))?;
            let index = header.meta.last_log_id.map_or(0, |l| l.index);
            snapshots.loaded(index);
            snapshots.taken(index, bytes.len(), started);
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
            digests: Mutex::default(),
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
        let mut digest_inputs = Vec::new();
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
                if self.shared.digest_due(entry.log_id.index) {
                    digest_inputs.push(inner.digest_input(entry.log_id));
                }
            }
            inner.last_applied.map_or(0, |l| l.index)
        };
        self.shared.keep_digests(digest_inputs);
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
        let started = std::time::Instant::now();
        let bytes = snapshot.into_inner();
        let (_, state) = decode(&bytes).map_err(snap_err)?;
        let snapshots = self.snapshots.clone();
        let last = meta.last_log_id.map_or(0, |l| l.index);
        tokio::task::spawn_blocking(move || snapshots.write(&bytes, last, started))
            .await
            .map_err(sm_err)?
            .map_err(sm_err)?;
        let digest_input = {
            let mut inner = self.write_inner();
            *inner = Inner {
                state,
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
            };
            meta.last_log_id
                .filter(|l| self.shared.digest_due(l.index))
                .map(|l| inner.digest_input(l))
        };
        self.shared.keep_digests(digest_input.into_iter().collect());
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
        let meta_index = meta.last_log_id.map_or(0, |l| l.index);
        // Encoded straight into the file: a buffer of the whole state (grown by doubling, each
        // time a copy and fresh pages to fault in) was a tenth of a busy node's CPU.
        let encode_and_write = move || {
            snapshots.write_with(meta_index, started, |out| {
                out.write_all(&header)?;
                out.write_all(b"\n")?;
                state.encode_to(out)
            })
        };
        let written = in_background(encode_and_write).await?.map_err(sm_err)?;
        tracing::debug!(
            index = meta_index,
            bytes = written,
            copy_ms = copied.as_secs_f64() * 1e3,
            encode_and_write_ms = (started.elapsed() - copied).as_secs_f64() * 1e3,
            "snapshot built"
        );
        // openraft keeps only the meta of a snapshot it asked for (`sm::worker` drops the
        // data) and reads the file through `get_current_snapshot` to send it: no copy of the
        // bytes is held here.
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{Command, FunctionSpec, JobSpec};
    use openraft::CommittedLeaderId;

    fn digest_of(state: &State, index: u64) -> StateDigest {
        DigestInput {
            log_id: LogId::new(CommittedLeaderId::new(3, 1), index),
            membership: StoredMembership::default(),
            state: state.snapshot_copy(),
        }
        .digest()
    }

    fn submit(state: &mut State, now_ms: u64, input: serde_json::Value) {
        let job = JobSpec {
            function: "noop".into(),
            input,
            files: vec![],
            priority: 0,
            idempotency_key: Some(format!("key-{now_ms}")),
        };
        state.apply(Command::SubmitJobs {
            now_ms,
            jobs: vec![job],
            place: vec![],
        });
    }

    /// A build and an install write at once, in any order: every write succeeds, and the file
    /// ends with the newest snapshot whole, whichever finished last.
    #[test]
    fn overlapping_snapshot_writes_keep_the_newest_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::log_store::open_db(&dir.path().join("raft.redb")).unwrap();
        let file = Arc::new(SnapshotFile::new(
            dir.path(),
            db,
            Arc::default(),
            LogBytes::default(),
        ));
        // Large enough that writes overlap: a few megabytes each, a distinct byte per index.
        let writers: Vec<_> = (1..=8u64)
            .rev()
            .map(|index| {
                let file = file.clone();
                std::thread::spawn(move || {
                    let bytes = vec![b'0' + index as u8; 4 << 20];
                    file.write(&bytes, index * 200, std::time::Instant::now())
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap().expect("no overlapping write fails");
        }
        let on_disk = file.read().unwrap().unwrap();
        assert_eq!(on_disk.len(), 4 << 20);
        assert!(
            on_disk.iter().all(|b| *b == b'8'),
            "the newest snapshot, whole"
        );
        // An older snapshot finishing late changes nothing.
        assert!(!file
            .write(b"stale", 400, std::time::Instant::now())
            .unwrap());
        assert_eq!(file.read().unwrap().unwrap().len(), 4 << 20);
        assert!(file
            .write(b"newer", 1_800, std::time::Instant::now())
            .unwrap());
        assert_eq!(file.read().unwrap().unwrap(), b"newer");
    }

    #[test]
    fn a_state_and_its_snapshot_have_one_digest_and_a_change_gives_another() {
        let mut state = State::default();
        state.apply(Command::DeployFunction {
            spec: FunctionSpec::builtin("noop"),
        });
        // Objects with keys out of order, floats: what a hash map or a lossy float would
        // make differ.
        submit(
            &mut state,
            1,
            serde_json::json!({ "z": 1, "a": [0.1, 2.5e-7], "m": {} }),
        );
        let decoded = State::decode(&state.encode()).unwrap();
        assert_eq!(digest_of(&state, 64), digest_of(&decoded, 64));
        assert_ne!(
            digest_of(&state, 64).sha256,
            digest_of(&state, 128).sha256,
            "the log id is covered"
        );
        let before = digest_of(&state, 64);
        submit(&mut state, 2, serde_json::json!({}));
        assert_ne!(digest_of(&state, 64), before);
    }
}

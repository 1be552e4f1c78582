//! The registry: chorus's replicated state. Every state change is a [`model::Command`] in an
//! openraft log; every node applies the same log to its own [`model::State`].
//!
//! This is the only crate that knows openraft. Storage is local disk: the log's entries in
//! append-only segment files under `log/` (fsync'd on every append), the vote, the committed
//! index and the purge point in `raft.redb`, the latest snapshot in `snapshot.json`. The state
//! machine itself is in memory; it is rebuilt on start from the latest snapshot plus the log
//! after it.
//!
//! Writes go through a group-commit proposer (see [`proposer`]): commands from concurrent
//! callers that arrive while a log write is in flight are packed into one
//! [`model::Command::Batch`] entry, so throughput grows with load while one fsync is paid per
//! entry, not per command.

// openraft's error types (StorageError, RaftError) are large by design and fixed by its trait
// signatures; boxing them here would only add conversions at every call.
#![allow(clippy::result_large_err)]

mod disk;
mod log_store;
pub use log_store::DATA_FORMAT;
mod network;
mod pace;
mod proposer;
mod state_machine;

use model::{Command, NodeId, Response, State};
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;

pub use disk::DISK_RESERVE_BYTES;
pub use network::{
    Direction, FaultAction, FaultRule, PeerLink, RaftRpcError, CLUSTER_KEY_ID, FAULT_DELAY_MS_MAX,
    RAFT_BODY_BYTES_MAX,
};
pub use state_machine::{StateDigest, STATE_DIGESTS_MAX};

openraft::declare_raft_types!(
    /// openraft's view of chorus: commands in, responses out, nodes addressed by `host:port`.
    pub TypeConfig:
        D = Command,
        R = Response,
);

pub type RaftInstance = Raft<TypeConfig>;

/// A node's role in the raft membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Voter,
    Learner,
    /// Not a member any more.
    Removed,
}

/// How long a forwarded call waits for a leader or for its entry to be applied here, and how
/// long a call keeps trying while the leader changes.
const LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Pause between two tries of a forwarded call while the leader changes (an election takes
/// a few hundred milliseconds).
const FORWARD_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Longest a membership change (adding a learner, changing a role) waits for its commit.
const MEMBERSHIP_CHANGE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest raft may take to shut down.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Bytes of log entries per `AppendEntries` request, at most (a larger entry goes alone): a
/// request must reach the follower and be written there within openraft's deadline for it,
/// one heartbeat interval.
pub(crate) const APPEND_BYTES_MAX: usize = 512 * 1024;
/// Entries per `AppendEntries` request, at most (openraft's `max_payload_entries`).
const APPEND_ENTRIES_MAX: u64 = 300;
/// How long a snapshot chunk may take to reach a follower and, for the last one, to be
/// decoded and installed there (a registry of 200,000 jobs is a snapshot of about 45 MB).
const SNAPSHOT_INSTALL_TIMEOUT_MS: u64 = 60_000;

/// Rounds a leader tries to confirm its leadership for one linearizable read.
const READ_INDEX_TRIES: u32 = 3;
/// Log entries between snapshots at least, by default (see `pace`); a snapshot lets the log
/// before it be purged.
pub const SNAPSHOT_LOGS_DEFAULT: u64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("this node is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(NodeId, String)> },
    /// A call to a peer never reached it (the connection was refused, or fault injection
    /// refused to send it): the peer did nothing, so the call may be sent again.
    #[error("the registry is unavailable: {0}")]
    NotDelivered(String),
    #[error("the registry is unavailable: {0}")]
    Unavailable(String),
    #[error("registry storage failed: {0}")]
    Storage(String),
    /// The disk is under its reserve (see [`DISK_RESERVE_BYTES`]); writes wait for space.
    #[error("{0}")]
    StorageFull(String),
}

/// A snapshot of raft's own figures, for metrics and health checks.
#[derive(Clone, Debug, Default)]
pub struct RaftFigures {
    pub term: u64,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub leader: Option<NodeId>,
    pub is_leader: bool,
    pub voters: usize,
    /// Last log index in this node's latest snapshot (built here or installed from the
    /// leader); 0 without one.
    pub snapshot_index: u64,
    /// Last log index purged from this node's log (after a snapshot); 0 before any purge.
    pub purged_index: u64,
    /// This node's raft role: `Leader`, `Follower`, `Candidate` or `Learner`.
    pub server_state: String,
    /// Voters and learners of the membership this node holds (the joint config's union
    /// while a change is in flight), with `joint` set then.
    pub voter_ids: Vec<NodeId>,
    pub learner_ids: Vec<NodeId>,
    pub joint: bool,
    /// On the leader: the last log index each member is known to hold (none yet: absent).
    pub matched: BTreeMap<NodeId, u64>,
}

/// Voters in the cluster: the first nodes to join (and catch up) become voters up to this
/// many; later ones stay learners (full replicas without a vote).
pub const VOTERS_DEFAULT: usize = 3;

/// How a node takes part when it opens the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Founding {
    /// A pristine node makes itself a one-member cluster.
    Found,
    /// A pristine node waits to be added by the leader (`chorus serve --join`).
    Join,
}

/// The answer to a forwarded `propose`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum ProposeAnswer {
    /// Committed at `index` on the leader, with its response.
    Applied(network::Forwarded<Response>),
    /// The node asked does not lead (any more): the command was not appended there.
    NotLeader,
}

/// A running member of the registry.
#[derive(Clone)]
pub struct Registry {
    id: NodeId,
    raft: RaftInstance,
    state: Arc<state_machine::Shared>,
    proposer: proposer::Handle,
    peers: network::Peers,
    disk: Arc<disk::Disk>,
    /// The log store's handle for writing the committed index at a graceful stop.
    committed: log_store::LogStore,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Opens (or creates) the registry in `dir` and starts raft. A pristine node initializes
    /// itself as a one-member cluster: a single node is just the smallest cluster.
    /// `cluster_secret` (hex) signs raft RPC between nodes, sent through `link`. A snapshot is taken every
    /// `snapshot_logs` entries, and a fifth of that is kept in the log after it (so that a
    /// follower a little behind catches up from the log, one far behind from the snapshot).
    pub async fn open(
        dir: &Path,
        id: NodeId,
        addr: &str,
        founding: Founding,
        cluster_secret: &str,
        snapshot_logs: u64,
        link: PeerLink,
    ) -> Result<Registry, RegistryError> {
        private_files(dir)
            .map_err(|e| RegistryError::Storage(format!("{}: {e}", dir.display())))?;
        let db = log_store::open_db(&dir.join("raft.redb"))?;
        private_files(dir)
            .map_err(|e| RegistryError::Storage(format!("{}: {e}", dir.display())))?;
        let log_bytes = pace::LogBytes::default();
        let log_store = log_store::LogStore::open(db.clone(), dir, log_bytes.clone())?;
        let committed = log_store.clone();
        let disk = Arc::new(disk::Disk::new(
            dir.to_path_buf(),
            state_machine::SnapshotFile::path(dir),
        ));
        let latest_snapshot = Arc::new(pace::Latest::default());
        let snapshots =
            state_machine::SnapshotFile::new(dir, db, latest_snapshot.clone(), log_bytes.clone());
        let (sm, shared) = state_machine::StateMachine::open(snapshots)?;
        // The state must reach the log: a snapshot older than the log's purge point leaves a
        // hole no replay can fill, and openraft would stop at the first entry it cannot read.
        // Said at start-up, where an operator sees it, rather than as a node that never
        // applies again.
        let applied = shared.applied().borrow().to_owned();
        if let Some(purged) = log_store.last_purged_index()? {
            if applied < purged {
                return Err(RegistryError::Storage(format!(
                    "the snapshot (log index {applied}) is older than the log's purge point \
                     (index {purged}): this registry cannot be restored; remove its data dir and \
                     join the cluster again"
                )));
            }
        }
        let config = Config {
            cluster_name: "chorus".into(),
            // A new leader within a second of losing one: heartbeats every 50 ms, elections
            // after 150 to 300 ms of silence (randomised so candidates rarely collide).
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            // Snapshots are paced by chorus (`pace`): by entries, log bytes and cost.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: snapshot_logs / 5,
            // Snapshots travel in chunks of this size (binary; see `network`), each within
            // the install time-out; entries in requests bounded in count here and in bytes
            // by the log reader (`APPEND_BYTES_MAX`).
            snapshot_max_chunk_size: network::SNAPSHOT_CHUNK_BYTES,
            install_snapshot_timeout: SNAPSHOT_INSTALL_TIMEOUT_MS,
            max_payload_entries: APPEND_ENTRIES_MAX,
            ..Config::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| RegistryError::Unavailable(e.to_string()))?,
        );
        let peers =
            network::Peers::new(cluster_secret, addr, link).map_err(RegistryError::Unavailable)?;
        let raft = Raft::new(
            id,
            config,
            network::Network::new(peers.clone()),
            log_store,
            sm,
        )
        .await
        .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        if !initialized && founding == Founding::Found {
            let members = BTreeMap::from([(id, BasicNode::new(addr))]);
            raft.initialize(members)
                .await
                .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        }
        tokio::spawn(pace::pace_snapshots(
            raft.clone(),
            shared.applied(),
            latest_snapshot,
            log_bytes,
            snapshot_logs,
        ));
        let proposer = proposer::Handle::spawn(raft.clone());
        Ok(Registry {
            id,
            raft,
            state: shared,
            proposer,
            peers,
            disk,
            committed,
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Appends `command` to the log and returns its response once applied. On a follower the
    /// command is forwarded to the leader, and the answer comes back once this node has
    /// applied it too (so a caller reads its own writes here).
    ///
    /// During a leader change the write waits for the new leader (up to [`LEADER_WAIT`]), but
    /// is sent again only when it provably did not commit: the leader asked refused the
    /// connection, or answered that it does not lead (openraft refuses a write on a node that
    /// does not lead, and fails a pending one only when its entry is truncated, which never
    /// happens to a committed entry). A forward that timed out or lost its connection midway
    /// may have committed: it is sent again only if applying it twice does no harm
    /// ([`Command::is_idempotent`], e.g. jobs with idempotency keys); otherwise the caller
    /// hears `unavailable` and decides.
    pub async fn propose(&self, command: Command) -> Result<Response, RegistryError> {
        self.check_disk()?;
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            let error = match self.propose_once(command.clone()).await {
                Ok(response) => return Ok(response),
                Err(e) => e,
            };
            let not_committed = matches!(
                error,
                RegistryError::NotLeader { .. } | RegistryError::NotDelivered(_)
            );
            let unknown = matches!(error, RegistryError::Unavailable(_));
            let again = not_committed || (unknown && command.is_idempotent());
            if !again || tokio::time::Instant::now() + FORWARD_RETRY_PAUSE >= deadline {
                return Err(error);
            }
            tracing::debug!(error = %error, "write not taken during a leader change; again");
            tokio::time::sleep(FORWARD_RETRY_PAUSE).await;
        }
    }

    async fn propose_once(&self, command: Command) -> Result<Response, RegistryError> {
        if self.figures().is_leader {
            return self.proposer.propose(command).await;
        }
        let body =
            serde_json::to_vec(&command).map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        let answer = self
            .forward("propose", body, network::FORWARD_TIMEOUT)
            .await?;
        let answer: ProposeAnswer = serde_json::from_slice(&answer)
            .map_err(|e| RegistryError::Unavailable(format!("leader answered: {e}")))?;
        match answer {
            ProposeAnswer::Applied(forwarded) => {
                self.wait_applied(forwarded.index).await?;
                Ok(forwarded.value)
            }
            ProposeAnswer::NotLeader => Err(RegistryError::NotLeader { leader: None }),
        }
    }

    /// Refuses a write while this node's disk is under its reserve (see [`disk`]).
    fn check_disk(&self) -> Result<(), RegistryError> {
        match self.disk.full() {
            Some(why) => Err(RegistryError::StorageFull(why)),
            None => Ok(()),
        }
    }

    /// Whether this node's disk is under its reserve: it takes no writes until space is back.
    pub fn storage_full(&self) -> bool {
        self.disk.full().is_some()
    }

    /// Sends an RPC to the leader and waits at most `timeout` for its answer.
    async fn forward(
        &self,
        kind: &str,
        body: Vec<u8>,
        timeout: std::time::Duration,
    ) -> Result<Vec<u8>, RegistryError> {
        let (leader, addr) = self.leader_addr().await?;
        if leader == self.id {
            // Nothing was sent: the write provably did not commit, so `propose` tries again,
            // here as the leader (a kill of the leader made this race common enough for a
            // write without a key to fail).
            return Err(RegistryError::NotDelivered(
                "this node became leader while forwarding".into(),
            ));
        }
        self.peers.call(&addr, kind, body, timeout).await
    }

    /// The leader and its address. A node that just joined may hear from the leader before
    /// it has replicated the membership that holds the leader's address: wait for both.
    async fn leader_addr(&self) -> Result<(NodeId, String), RegistryError> {
        let mut metrics = self.raft.metrics();
        let wait = async {
            loop {
                {
                    let m = metrics.borrow();
                    if let Some(leader) = m.current_leader {
                        if let Some(node) = m.membership_config.membership().get_node(&leader) {
                            return Ok((leader, node.addr.clone()));
                        }
                    }
                }
                if metrics.changed().await.is_err() {
                    return Err(RegistryError::Unavailable("raft stopped".into()));
                }
            }
        };
        tokio::time::timeout(LEADER_WAIT, wait).await.map_err(|_| {
            RegistryError::Unavailable("no leader with a known address in time".into())
        })?
    }

    async fn wait_applied(&self, index: u64) -> Result<(), RegistryError> {
        let mut applied = self.applied();
        let reached = tokio::time::timeout(LEADER_WAIT, applied.wait_for(|a| *a >= index))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            Ok(())
        } else {
            Err(RegistryError::Unavailable(format!(
                "log index {index} not applied here in time"
            )))
        }
    }

    /// Serves a `propose` forwarded by a follower, once decoded (see [`Registry::handle_rpc`]):
    /// a caller may complete the command first, as the node does with the placement of
    /// submitted jobs, which only the leader can choose.
    pub async fn serve_propose(&self, command: Command) -> Result<Vec<u8>, RaftRpcError> {
        let answer = match self.propose_here(command).await {
            Ok(forwarded) => ProposeAnswer::Applied(forwarded),
            // Said as an answer, not an error, so the follower knows the write was not taken.
            Err(RegistryError::NotLeader { .. }) => ProposeAnswer::NotLeader,
            Err(e) => return Err(rpc_error(e)),
        };
        Ok(serde_json::to_vec(&answer)?)
    }

    /// Answers a forwarded `propose` that the leader's checks refused, without appending it
    /// (a node that does not lead says so, and the follower asks the leader).
    pub fn refuse_forwarded(&self, refused: model::ApiError) -> Result<Vec<u8>, RaftRpcError> {
        let answer = if self.figures().is_leader {
            ProposeAnswer::Applied(network::Forwarded {
                index: 0,
                value: Response::Rejected(refused),
            })
        } else {
            ProposeAnswer::NotLeader
        };
        Ok(serde_json::to_vec(&answer)?)
    }

    /// Proposes on the leader (the serving side of a forwarded `propose`).
    async fn propose_here(
        &self,
        command: Command,
    ) -> Result<network::Forwarded<Response>, RegistryError> {
        self.check_disk()?;
        let value = self.proposer.propose(command).await?;
        let index = self.state.committed_index();
        Ok(network::Forwarded { index, value })
    }

    /// Adds a node to the membership as a learner and starts replicating to it, without
    /// waiting for it to catch up: a learner has no vote, so one that never catches up costs
    /// the quorum nothing. Promoting it to voter once it has caught up, or removing it if it
    /// does not in time, is the caller's business (see [`Registry::change_role`]). Only on the
    /// leader.
    pub async fn add_learner(&self, id: NodeId, addr: &str) -> Result<(), RegistryError> {
        self.check_disk()?;
        let added = self.raft.add_learner(id, BasicNode::new(addr), false);
        match tokio::time::timeout(MEMBERSHIP_CHANGE_WAIT, added).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(match e.forward_to_leader() {
                Some(_) => RegistryError::NotLeader { leader: None },
                None => RegistryError::Unavailable(e.to_string()),
            }),
            Err(_) => Err(RegistryError::Unavailable(format!(
                "adding the learner was not committed within {} s (no quorum?)",
                MEMBERSHIP_CHANGE_WAIT.as_secs()
            ))),
        }
    }

    /// Makes a learner a voter, or a voter a learner; removes a node from the membership.
    pub async fn change_role(&self, id: NodeId, role: Role) -> Result<(), RegistryError> {
        if !self.figures().is_leader {
            let body = serde_json::to_vec(&(id, role))
                .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
            self.forward("change_role", body, network::FORWARD_TIMEOUT)
                .await?;
            return Ok(());
        }
        self.check_disk()?;
        let ids = std::collections::BTreeSet::from([id]);
        let is_voter = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id);
        let change = match role {
            Role::Voter => openraft::ChangeMembers::AddVoterIds(ids),
            Role::Learner => openraft::ChangeMembers::RemoveVoters(ids),
            // openraft removes only learners with `RemoveNodes`: a voter is removed as a
            // voter without `retain`, which takes it out of the nodes as well.
            Role::Removed if is_voter => openraft::ChangeMembers::RemoveVoters(ids),
            Role::Removed => openraft::ChangeMembers::RemoveNodes(ids),
        };
        // `retain = true` keeps a demoted voter as a learner.
        let changed = self.raft.change_membership(change, role == Role::Learner);
        match tokio::time::timeout(MEMBERSHIP_CHANGE_WAIT, changed).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(RegistryError::Unavailable(e.to_string())),
            Err(_) => Err(RegistryError::Unavailable(format!(
                "the membership change was not committed within {} s (no quorum?)",
                MEMBERSHIP_CHANGE_WAIT.as_secs()
            ))),
        }
    }

    /// Voters and learners, as committed (applied here): a node counts as a voter once the
    /// change that makes it one has committed in full (every config of a joint membership
    /// has it), so a caller never takes a change in flight for a done one.
    pub fn members(&self) -> Vec<(NodeId, Role)> {
        let stored = self.state.membership();
        let membership = stored.membership();
        let configs = membership.get_joint_config();
        membership
            .nodes()
            .map(|(id, _)| {
                let voter = !configs.is_empty() && configs.iter().all(|c| c.contains(id));
                (*id, if voter { Role::Voter } else { Role::Learner })
            })
            .collect()
    }

    /// Runs `f` on the state as applied on this node (possibly behind the leader).
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        self.state.read(f)
    }

    /// Waits until this node has applied everything the leader had committed when called
    /// (read-index): after it, a local read is linearizable.
    ///
    /// Asking for the read index changes nothing, so during a leader change it is asked
    /// again, of the new leader, until [`LEADER_WAIT`] has passed.
    pub async fn sync(&self) -> Result<(), RegistryError> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        let index = loop {
            let error = match self.read_index().await {
                Ok(index) => break index,
                Err(e) => e,
            };
            // A leader that cannot confirm its lead has already tried several rounds.
            let leader_failed =
                matches!(error, RegistryError::Unavailable(_)) && self.figures().is_leader;
            if leader_failed || tokio::time::Instant::now() + FORWARD_RETRY_PAUSE >= deadline {
                return Err(error);
            }
            tracing::debug!(error = %error, "read index not answered during a leader change; again");
            tokio::time::sleep(FORWARD_RETRY_PAUSE).await;
        };
        self.wait_applied(index).await
    }

    async fn read_index(&self) -> Result<u64, RegistryError> {
        if self.figures().is_leader {
            return self.read_index_here().await;
        }
        let answer = self
            .forward("read_index", Vec::new(), network::FORWARD_TIMEOUT)
            .await?;
        serde_json::from_slice(&answer).map_err(|e| RegistryError::Unavailable(e.to_string()))
    }

    /// The read index: the leader's commit index, once a quorum has confirmed it still
    /// leads. One confirmation round fails if a single follower answers late (a busy disk),
    /// and with two voters that is the quorum; so a failed round is tried again, up to
    /// [`READ_INDEX_TRIES`] rounds, before the read is refused. A deposed leader is told at
    /// once (`NotLeader`).
    async fn read_index_here(&self) -> Result<u64, RegistryError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let error = match self.raft.ensure_linearizable().await {
                Ok(read) => return Ok(read.map_or(0, |l| l.index)),
                Err(e) => e,
            };
            if let Some(fwd) = error.forward_to_leader() {
                return Err(RegistryError::NotLeader {
                    leader: fwd
                        .leader_id
                        .zip(fwd.leader_node.as_ref().map(|n| n.addr.clone())),
                });
            }
            if tries == READ_INDEX_TRIES {
                return Err(RegistryError::Unavailable(error.to_string()));
            }
            tracing::debug!(tries, error = %error, "read index: leadership not confirmed; again");
        }
    }

    /// Ticks whenever entries are applied; the value is the last applied index.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.state.applied()
    }

    /// Whether this node leads the cluster now. The loops that only lead ask it at every
    /// pass: this reads one field where [`Registry::figures`] copies raft's metrics.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    pub fn figures(&self) -> RaftFigures {
        let m = self.raft.metrics().borrow().clone();
        RaftFigures {
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index: m
                .last_applied
                .map_or(0, |l| l.index)
                .max(self.state.committed_index()),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            leader: m.current_leader,
            is_leader: m.current_leader == Some(self.id),
            voters: m.membership_config.membership().voter_ids().count(),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            server_state: format!("{:?}", m.state),
            voter_ids: m.membership_config.membership().voter_ids().collect(),
            learner_ids: m.membership_config.membership().learner_ids().collect(),
            joint: m.membership_config.membership().get_joint_config().len() > 1,
            matched: m
                .replication
                .iter()
                .flatten()
                .filter_map(|(id, log)| Some((*id, log.as_ref()?.index)))
                .collect(),
        }
    }

    /// Waits until this node knows a leader, or `timeout` passes.
    pub async fn wait_for_leader(
        &self,
        timeout: std::time::Duration,
    ) -> Result<NodeId, RegistryError> {
        let mut metrics = self.raft.metrics();
        let wait = async {
            loop {
                if let Some(leader) = metrics.borrow().current_leader {
                    return Ok(leader);
                }
                if metrics.changed().await.is_err() {
                    return Err(RegistryError::Unavailable("raft stopped".into()));
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| RegistryError::Unavailable("no leader elected in time".into()))?
    }

    /// Handles RPCs from peers (the API mounts them; bodies are JSON but for snapshot
    /// chunks): raft's own, and the ones followers forward to the leader.
    pub async fn handle_rpc(&self, kind: &str, body: &[u8]) -> Result<Vec<u8>, RaftRpcError> {
        let unavailable = rpc_error;
        match kind {
            "propose" => self.serve_propose(serde_json::from_slice(body)?).await,
            "read_index" => Ok(serde_json::to_vec(
                &self.read_index_here().await.map_err(unavailable)?,
            )?),
            "change_role" => {
                let (id, role): (NodeId, Role) = serde_json::from_slice(body)?;
                self.change_role(id, role).await.map_err(unavailable)?;
                Ok(b"{}".to_vec())
            }
            _ => network::handle(&self.raft, kind, body, || self.disk.full()).await,
        }
    }

    /// Applies the incoming fault rule for a peer's RPC, sent from `from` (its address, as
    /// signed in the request): a delay waits, a refusal or a drop (after a long hold) fails.
    pub async fn admit_peer(&self, from: Option<&str>) -> Result<(), RaftRpcError> {
        self.peers.admit(from).await
    }

    /// Sets the fault-injection rules (see [`FaultRule`]), each with its peer's address; an
    /// empty list heals.
    pub fn set_faults(&self, rules: Vec<(String, FaultRule)>) {
        tracing::warn!(?rules, "fault injection: raft traffic rules set");
        self.peers.set_faults(rules);
    }

    pub fn faults(&self) -> Vec<FaultRule> {
        self.peers.faults()
    }

    /// From now on, records a digest of the applied state every `every_entries` log indexes
    /// (the latest [`STATE_DIGESTS_MAX`] are kept; 0 stops). Nodes that applied the same log
    /// have equal digests at equal indexes: a checker compares them (fault injection).
    pub fn record_state_digests(&self, every_entries: u64) {
        self.state.record_digests(every_entries);
    }

    /// The state digests recorded so far, oldest first.
    pub fn state_digests(&self) -> Vec<StateDigest> {
        self.state.state_digests()
    }

    /// Checks the cluster signature of an RPC from a peer.
    pub fn verify_peer(
        &self,
        canonical: &model::signature::Canonical<'_>,
        signature_hex: &str,
    ) -> bool {
        self.peers.verify(canonical, signature_hex)
    }

    /// Stops the proposer and raft, waiting at most [`SHUTDOWN_WAIT`] for raft (whose
    /// replication tasks may be stuck on an unreachable peer): the process ends either way.
    pub async fn shutdown(&self) {
        self.proposer.stop().await;
        match tokio::time::timeout(SHUTDOWN_WAIT, self.raft.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "raft did not shut down cleanly"),
            Err(_) => tracing::warn!(
                "raft did not shut down within {} s; leaving it",
                SHUTDOWN_WAIT.as_secs()
            ),
        }
        if let Err(e) = self.committed.flush_committed().await {
            tracing::warn!(error = %e, "could not write the committed index; a restart applies the rest once a leader commits");
        }
    }
}

/// How a failure on the serving side of a forwarded call travels back to its sender.
fn rpc_error(e: RegistryError) -> RaftRpcError {
    match e {
        RegistryError::StorageFull(why) => RaftRpcError::StorageFull(why),
        other => RaftRpcError::Unavailable(other.to_string()),
    }
}

/// Makes the registry's directory private to this user (0700) and its files too (0600): the
/// log and the snapshot hold the whole replicated state. Files an older version wrote with
/// the default mode are tightened here; new snapshots are created private.
/// Makes the entries of `dir` (files created, renamed or removed in it) survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn private_files(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

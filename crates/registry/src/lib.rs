//! The registry: chorus's replicated state. Every state change is a [`model::Command`] in an
//! openraft log; every node applies the same log to its own [`model::State`].
//!
//! This is the only crate that knows openraft. Storage is redb on local disk: the log (fsync'd
//! on every append), the vote, the committed index and the latest snapshot live in
//! `raft.redb`. The state machine itself is in memory; it is rebuilt on start from the latest
//! snapshot plus the log after it.
//!
//! Writes go through a group-commit proposer (see [`proposer`]): commands from concurrent
//! callers that arrive while a log write is in flight are packed into one
//! [`model::Command::Batch`] entry, so throughput grows with load while one fsync is paid per
//! entry, not per command.

mod log_store;
mod network;
mod proposer;
mod state_machine;

use model::{Command, NodeId, Response, State};
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;

pub use network::RaftRpcError;

openraft::declare_raft_types!(
    /// openraft's view of chorus: commands in, responses out, nodes addressed by `host:port`.
    pub TypeConfig:
        D = Command,
        R = Response,
);

pub type RaftInstance = Raft<TypeConfig>;

/// Log entries between snapshots; a snapshot lets the log before it be purged.
const SNAPSHOT_LOGS_SINCE_LAST: u64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("this node is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(NodeId, String)> },
    #[error("the registry is unavailable: {0}")]
    Unavailable(String),
    #[error("registry storage failed: {0}")]
    Storage(String),
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
}

/// A running member of the registry.
#[derive(Clone)]
pub struct Registry {
    id: NodeId,
    raft: RaftInstance,
    state: Arc<state_machine::Shared>,
    proposer: proposer::Handle,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Registry {
    /// Opens (or creates) the registry in `dir` and starts raft. A pristine node initializes
    /// itself as a one-member cluster: a single node is just the smallest cluster.
    pub async fn open(dir: &Path, id: NodeId, addr: &str) -> Result<Registry, RegistryError> {
        std::fs::create_dir_all(dir).map_err(|e| RegistryError::Storage(format!("{}: {e}", dir.display())))?;
        let db = log_store::open_db(&dir.join("raft.redb"))?;
        let log_store = log_store::LogStore::new(db.clone());
        let (sm, shared) = state_machine::StateMachine::open(db)?;
        let config = Config {
            cluster_name: "chorus".into(),
            heartbeat_interval: 100,
            election_timeout_min: 300,
            election_timeout_max: 600,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_LOGS_SINCE_LAST),
            max_in_snapshot_log_to_keep: 1_000,
            ..Config::default()
        };
        let config = Arc::new(config.validate().map_err(|e| RegistryError::Unavailable(e.to_string()))?);
        let raft = Raft::new(id, config, network::Network::new(), log_store, sm)
            .await
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        let initialized = raft.is_initialized().await.map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        if !initialized {
            let members = BTreeMap::from([(id, BasicNode::new(addr))]);
            raft.initialize(members).await.map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        }
        let proposer = proposer::Handle::spawn(raft.clone());
        Ok(Registry { id, raft, state: shared, proposer })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Appends `command` to the log and returns its response once applied here.
    pub async fn propose(&self, command: Command) -> Result<Response, RegistryError> {
        self.proposer.propose(command).await
    }

    /// Runs `f` on the state as applied on this node (possibly behind the leader).
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        self.state.read(f)
    }

    /// Waits until this node has applied everything the leader had committed when called.
    pub async fn sync(&self) -> Result<(), RegistryError> {
        self.raft.ensure_linearizable().await.map(|_| ()).map_err(|e| match e.forward_to_leader() {
            Some(fwd) => RegistryError::NotLeader {
                leader: fwd.leader_id.zip(fwd.leader_node.as_ref().map(|n| n.addr.clone())),
            },
            None => RegistryError::Unavailable(e.to_string()),
        })
    }

    /// Ticks whenever entries are applied; the value is the last applied index.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.state.applied()
    }

    pub fn figures(&self) -> RaftFigures {
        let m = self.raft.metrics().borrow().clone();
        RaftFigures {
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index: m.last_applied.map_or(0, |l| l.index).max(self.state.committed_index()),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            leader: m.current_leader,
            is_leader: m.current_leader == Some(self.id),
            voters: m.membership_config.membership().voter_ids().count(),
        }
    }

    /// Waits until this node knows a leader, or `timeout` passes.
    pub async fn wait_for_leader(&self, timeout: std::time::Duration) -> Result<NodeId, RegistryError> {
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

    /// Handles raft RPCs from peers (the API mounts them); bodies are JSON.
    pub async fn handle_rpc(&self, kind: &str, body: &[u8]) -> Result<Vec<u8>, RaftRpcError> {
        network::handle(&self.raft, kind, body).await
    }

    pub async fn shutdown(&self) {
        self.proposer.stop().await;
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
    }
}

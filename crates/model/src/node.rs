//! Cluster members as the registry holds them: address, slots, labels, liveness and load.

use crate::ids::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Whether a node takes new work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    #[default]
    Up,
    /// Takes no new work; finishes what it runs, then can be stopped with no job lost. Set
    /// by an operator (`chorus nodes drain`); it outlives restarts until `undrain`.
    Draining,
    /// Its process is shutting down (SIGTERM or SIGINT): no new work while it finishes what it
    /// runs. The node is up again when it restarts.
    Stopping,
    /// Missed its heartbeats; its attempts were failed over.
    Down,
    /// Admitted to the cluster (`JoinNode`) and catching up as a learner: no work, no vote,
    /// not judged by heartbeats until it registers; the leader removes it again if it has not
    /// caught up in time.
    Joining,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Up => "up",
            NodeStatus::Draining => "draining",
            NodeStatus::Stopping => "stopping",
            NodeStatus::Down => "down",
            NodeStatus::Joining => "joining",
        }
    }

    /// Whether the scheduler may give the node new work.
    pub fn takes_work(self) -> bool {
        self == NodeStatus::Up
    }
}

/// What a node reports in its heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// Smoothed CPU use of the whole machine, 0 to 100.
    pub cpu_percent: f64,
    pub memory_used_bytes: u64,
    pub running: u32,
    pub free_slots: u32,
    /// Idle warm workers per pool (function@version).
    pub warm_workers: BTreeMap<String, u32>,
    /// Attempts the node wants to hold waiting for a slot, sized to its recent run times.
    #[serde(default)]
    pub prefetch: u32,
}

/// A member of the cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// `host:port` of its API.
    pub addr: String,
    /// Attempts it may run at once.
    pub slots: u32,
    #[serde(default)]
    pub labels: BTreeSet<String>,
    #[serde(default)]
    pub status: NodeStatus,
    /// An operator drained the node (`chorus nodes drain`) and has not undrained it: it is
    /// [`NodeStatus::Draining`] whenever it is not down or stopping, across restarts.
    #[serde(default)]
    pub drained: bool,
    /// When the leader last heard from it (the proposer's clock).
    #[serde(default)]
    pub last_heartbeat_ms: u64,
    #[serde(default)]
    pub load: NodeLoad,
}

impl NodeInfo {
    pub fn new(id: NodeId) -> NodeInfo {
        NodeInfo {
            id,
            addr: String::new(),
            slots: 0,
            labels: BTreeSet::new(),
            status: NodeStatus::Up,
            drained: false,
            last_heartbeat_ms: 0,
            load: NodeLoad::default(),
        }
    }

    /// The status of a node whose process runs: up, or draining if an operator said so.
    pub fn running_status(&self) -> NodeStatus {
        if self.drained {
            NodeStatus::Draining
        } else {
            NodeStatus::Up
        }
    }
}

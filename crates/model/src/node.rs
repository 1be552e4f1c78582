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
    /// Takes no new work; finishes what it runs, then can be stopped with no job lost.
    Draining,
    /// Missed its heartbeats; its attempts were failed over.
    Down,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Up => "up",
            NodeStatus::Draining => "draining",
            NodeStatus::Down => "down",
        }
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
            last_heartbeat_ms: 0,
            load: NodeLoad::default(),
        }
    }
}

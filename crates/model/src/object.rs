//! Objects as the registry knows them, for a cluster whose nodes keep objects on their own
//! disks (the default local store): each object's key, size, SHA-256 and the nodes that hold
//! a copy ([`ObjectInfo`]), recorded with `Command::RecordObjects` once the copies are on
//! disk. A node that does not hold an object reads it from a holder named here.
//!
//! The choices about copies are pure and live here: which nodes a new object is copied to
//! ([`copy_targets`]), in which order a reader asks the holders ([`read_order`]), and how long
//! a copy between nodes may take ([`copy_deadline`]). With an S3-compatible store nothing is
//! recorded: every node reads the one store.

use crate::ids::NodeId;
use crate::node::{NodeInfo, NodeStatus};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Copies of an object the cluster keeps while it has that many live nodes: the node that
/// wrote it and one more, so that losing one disk loses no object.
pub const OBJECT_COPIES: usize = 2;
/// Holders one record may name.
pub const OBJECT_HOLDERS_MAX: usize = 8;
/// Longest object key (the storage crate's key grammar has the same limit).
pub const OBJECT_KEY_LEN_MAX: usize = 1024;
/// Records in one `RecordObjects` command at most.
pub const OBJECTS_PER_COMMAND_MAX: usize = 65_536;
/// A copy between nodes may take this long whatever its size (as long as a forwarded write:
/// a peer that stopped answering holds up the attempt whose output or log waits for it, and
/// is marked down within seconds, after which no copy goes there)...
const COPY_DEADLINE_BASE: Duration = Duration::from_secs(5);
/// ...plus the time to move its bytes at this slowest rate we still wait for.
const COPY_BYTES_PER_S_MIN: u64 = 8 * 1024 * 1024;

/// What the registry knows of one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub size: u64,
    /// Lowercase hex SHA-256 of the object's bytes: a copy fetched from a holder is checked
    /// against it.
    pub sha256: String,
    /// Nodes with a copy on their disk; never empty.
    pub holders: BTreeSet<NodeId>,
    /// When it was recorded (the proposer's clock).
    pub recorded_at_ms: u64,
}

/// One object as a node proposes it, once its copies are written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub key: String,
    pub size: u64,
    pub sha256: String,
    pub holders: BTreeSet<NodeId>,
}

impl ObjectRecord {
    /// Refuses a record that cannot describe an object: an empty or over-long key, a digest
    /// that is not 64 lowercase hex digits, no holder or too many.
    pub fn check(&self) -> Result<(), String> {
        if self.key.is_empty() || self.key.len() > OBJECT_KEY_LEN_MAX {
            return Err(format!(
                "object key must be 1 to {OBJECT_KEY_LEN_MAX} bytes"
            ));
        }
        if !is_sha256_hex(&self.sha256) {
            return Err(format!(
                "object {:?}: its digest is not a hex SHA-256",
                self.key
            ));
        }
        if self.holders.is_empty() || self.holders.len() > OBJECT_HOLDERS_MAX {
            return Err(format!(
                "object {:?}: 1 to {OBJECT_HOLDERS_MAX} holders",
                self.key
            ));
        }
        Ok(())
    }
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether a node's process runs and can take a copy or serve one: up or drained (a drained
/// node takes no new work but its disk serves as any other). Not a node that is down,
/// stopping (it is about to go away) or still joining.
pub fn holds_copies(node: &NodeInfo) -> bool {
    matches!(node.status, NodeStatus::Up | NodeStatus::Draining)
}

/// The nodes a node `me` copies a new object `key` to, best first: every other live node,
/// in rendezvous order of `(key, node)` (so copies spread over the cluster, and the same key
/// goes to the same nodes while the cluster stays the same). The writer takes the first
/// that answers; an empty list means `me` is the only live node and one copy is all there is.
pub fn copy_targets<'a>(
    nodes: impl IntoIterator<Item = &'a NodeInfo>,
    me: NodeId,
    key: &str,
) -> Vec<NodeId> {
    let live = nodes
        .into_iter()
        .filter(|n| n.id != me && holds_copies(n))
        .map(|n| n.id);
    by_rendezvous(live, key)
}

/// The holders a node `me` that does not hold `key` (or whose copy is gone) asks, in order:
/// live holders first, then the others (a node marked down may be back before the registry
/// knows it), each group in rendezvous order. `me` is never in the list.
pub fn read_order(
    info: &ObjectInfo,
    nodes: &BTreeMap<NodeId, &NodeInfo>,
    me: NodeId,
    key: &str,
) -> Vec<NodeId> {
    let others = info.holders.iter().copied().filter(|&id| id != me);
    let (live, rest): (Vec<NodeId>, Vec<NodeId>) =
        others.partition(|id| nodes.get(id).is_some_and(|n| holds_copies(n)));
    let mut order = by_rendezvous(live, key);
    order.extend(by_rendezvous(rest, key));
    order
}

/// A holder marked down this long is counted as lost: its objects are copied again to
/// another node. Shorter absences (a restart, a deploy) are waited out rather than paid for
/// with a copy of everything the node held.
pub const HOLDER_LOST_AFTER_MS: u64 = 60_000;

/// An object a node should copy again, and where to, best first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    pub key: String,
    pub size: u64,
    pub sha256: String,
    /// Live nodes without a copy, in the key's rendezvous order; the node takes the first
    /// ones that answer until the object has the copies the cluster wants.
    pub targets: Vec<NodeId>,
    /// Copies it still needs.
    pub missing: usize,
}

/// The objects `me` holds that have fewer copies than the cluster wants ([`OBJECT_COPIES`],
/// or every live node when fewer are live), counting a holder as kept while it is live or
/// down for less than [`HOLDER_LOST_AFTER_MS`]; at most `max` of them. Each is `me`'s to
/// repair only if `me` comes first, in the key's rendezvous order, among its live holders,
/// so one node copies each object and the others leave it.
pub fn object_repairs<'a>(
    objects: impl IntoIterator<Item = (&'a str, &'a ObjectInfo)>,
    nodes: &BTreeMap<NodeId, &NodeInfo>,
    me: NodeId,
    now_ms: u64,
    max: usize,
) -> Vec<Repair> {
    let live: Vec<NodeId> = nodes
        .values()
        .filter(|n| holds_copies(n))
        .map(|n| n.id)
        .collect();
    let wanted = OBJECT_COPIES.min(live.len());
    let kept = |id: &NodeId| {
        nodes.get(id).is_some_and(|n| {
            holds_copies(n) || now_ms.saturating_sub(n.last_heartbeat_ms) < HOLDER_LOST_AFTER_MS
        })
    };
    let mut repairs = Vec::new();
    for (key, info) in objects {
        if repairs.len() >= max {
            break;
        }
        if !info.holders.contains(&me) {
            continue;
        }
        let have = info.holders.iter().filter(|id| kept(id)).count();
        if have >= wanted {
            continue;
        }
        let live_holders = info.holders.iter().copied().filter(|id| live.contains(id));
        if by_rendezvous(live_holders, key).first() != Some(&me) {
            continue;
        }
        let targets = by_rendezvous(
            live.iter().copied().filter(|id| !info.holders.contains(id)),
            key,
        );
        repairs.push(Repair {
            key: key.to_string(),
            size: info.size,
            sha256: info.sha256.clone(),
            targets,
            missing: wanted - have,
        });
    }
    repairs
}

/// How long a copy of `size_bytes` between two nodes may take, sending or fetching.
pub fn copy_deadline(size_bytes: u64) -> Duration {
    COPY_DEADLINE_BASE + Duration::from_secs(size_bytes / COPY_BYTES_PER_S_MIN)
}

/// Sorts nodes by their rendezvous score for `key`, highest first (ties by id).
fn by_rendezvous(nodes: impl IntoIterator<Item = NodeId>, key: &str) -> Vec<NodeId> {
    let mut scored: Vec<(u64, NodeId)> = nodes
        .into_iter()
        .map(|id| (rendezvous_score(key, id), id))
        .collect();
    scored.sort_by(|a, b| b.cmp(a));
    scored.into_iter().map(|(_, id)| id).collect()
}

/// FNV-1a over the key and the node id, then a splitmix64 finish: stable across versions
/// and platforms, which `std`'s hasher does not promise.
fn rendezvous_score(key: &str, node: NodeId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain(node.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId, status: NodeStatus) -> NodeInfo {
        NodeInfo {
            status,
            ..NodeInfo::new(id)
        }
    }

    #[test]
    fn copies_go_to_live_nodes_other_than_the_writer() {
        let nodes = [
            node(1, NodeStatus::Up),
            node(2, NodeStatus::Down),
            node(3, NodeStatus::Draining),
            node(4, NodeStatus::Joining),
            node(5, NodeStatus::Up),
            node(6, NodeStatus::Stopping),
        ];
        let targets = copy_targets(&nodes, 1, "uploads/a");
        assert_eq!(
            targets.iter().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([3, 5])
        );
        assert!(copy_targets(&nodes[..2], 1, "uploads/a").is_empty());
        // The order is the key's: stable for one key, and not the same for every key.
        assert_eq!(copy_targets(&nodes, 1, "uploads/a"), targets);
        let firsts: BTreeSet<NodeId> = (0..64)
            .map(|i| copy_targets(&nodes, 1, &format!("uploads/{i}"))[0])
            .collect();
        assert_eq!(
            firsts,
            BTreeSet::from([3, 5]),
            "copies spread over the nodes"
        );
    }

    #[test]
    fn readers_ask_live_holders_first_and_never_themselves() {
        let nodes = [
            node(1, NodeStatus::Up),
            node(2, NodeStatus::Down),
            node(3, NodeStatus::Up),
        ];
        let by_id: BTreeMap<NodeId, &NodeInfo> = nodes.iter().map(|n| (n.id, n)).collect();
        let info = ObjectInfo {
            size: 1,
            sha256: "0".repeat(64),
            holders: BTreeSet::from([1, 2, 3, 9]),
            recorded_at_ms: 0,
        };
        let order = read_order(&info, &by_id, 1, "k");
        assert_eq!(order[0], 3, "{order:?}");
        assert_eq!(
            order[1..].iter().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([2, 9])
        );
        assert!(!read_order(&info, &by_id, 3, "k").contains(&3));
    }

    #[test]
    fn objects_whose_holders_are_lost_are_repaired_by_one_live_holder() {
        let now = 1_000_000;
        let mut nodes = vec![
            node(1, NodeStatus::Up),
            node(2, NodeStatus::Up),
            node(3, NodeStatus::Up),
            // Down for two minutes: lost. Down for ten seconds: waited for.
            NodeInfo {
                last_heartbeat_ms: now - 120_000,
                ..node(4, NodeStatus::Down)
            },
            NodeInfo {
                last_heartbeat_ms: now - 10_000,
                ..node(5, NodeStatus::Down)
            },
        ];
        nodes[0].last_heartbeat_ms = now;
        let by_id: BTreeMap<NodeId, &NodeInfo> = nodes.iter().map(|n| (n.id, n)).collect();
        let info = |holders: &[NodeId]| ObjectInfo {
            size: 7,
            sha256: "ab".repeat(32),
            holders: holders.iter().copied().collect(),
            recorded_at_ms: 0,
        };
        let objects: BTreeMap<String, ObjectInfo> = [
            ("healthy".to_string(), info(&[1, 2])),
            ("lost-one".to_string(), info(&[1, 4])),
            ("restarting".to_string(), info(&[1, 5])),
            ("removed-holder".to_string(), info(&[2, 9])),
            ("lost-both-but-me".to_string(), info(&[3, 4])),
        ]
        .into_iter()
        .collect();
        let mine = |me| -> BTreeMap<String, Repair> {
            object_repairs(pairs(&objects), &by_id, me, now, 100)
                .into_iter()
                .map(|r| (r.key.clone(), r))
                .collect()
        };
        let one = mine(1);
        assert_eq!(one.keys().collect::<Vec<_>>(), ["lost-one"]);
        let repair = &one["lost-one"];
        assert_eq!(repair.missing, 1);
        assert_eq!(
            repair.targets.iter().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([2, 3]),
            "live nodes without a copy"
        );
        assert_eq!(mine(2).keys().collect::<Vec<_>>(), ["removed-holder"]);
        assert_eq!(mine(3).keys().collect::<Vec<_>>(), ["lost-both-but-me"]);
        // Two live holders short of copies: only the first in the key's order repairs.
        let shared: BTreeMap<String, ObjectInfo> = [("k".to_string(), info(&[1, 2]))].into();
        let three = [
            node(1, NodeStatus::Up),
            node(2, NodeStatus::Up),
            node(3, NodeStatus::Up),
        ];
        let by_id: BTreeMap<NodeId, &NodeInfo> = three.iter().map(|n| (n.id, n)).collect();
        let repairers: Vec<NodeId> = [1, 2]
            .into_iter()
            .filter(|&me| !object_repairs(pairs(&shared), &by_id, me, now, 100).is_empty())
            .collect();
        assert!(repairers.is_empty(), "two copies are enough: {repairers:?}");
        let one_node = [node(1, NodeStatus::Up)];
        let by_id: BTreeMap<NodeId, &NodeInfo> = one_node.iter().map(|n| (n.id, n)).collect();
        let alone: BTreeMap<String, ObjectInfo> = [("k".to_string(), info(&[1]))].into();
        assert!(
            object_repairs(pairs(&alone), &by_id, 1, now, 100).is_empty(),
            "one live node: one copy is all there is"
        );
        assert_eq!(
            object_repairs(pairs(&objects), &by_id_all(&nodes), 1, now, 0),
            vec![]
        );
    }

    fn pairs(objects: &BTreeMap<String, ObjectInfo>) -> impl Iterator<Item = (&str, &ObjectInfo)> {
        objects.iter().map(|(k, v)| (k.as_str(), v))
    }

    fn by_id_all(nodes: &[NodeInfo]) -> BTreeMap<NodeId, &NodeInfo> {
        nodes.iter().map(|n| (n.id, n)).collect()
    }

    #[test]
    fn records_are_checked() {
        let good = ObjectRecord {
            key: "uploads/a".into(),
            size: 3,
            sha256: "ab".repeat(32),
            holders: BTreeSet::from([1, 2]),
        };
        assert!(good.check().is_ok());
        for bad in [
            ObjectRecord {
                key: String::new(),
                ..good.clone()
            },
            ObjectRecord {
                key: "k".repeat(OBJECT_KEY_LEN_MAX + 1),
                ..good.clone()
            },
            ObjectRecord {
                sha256: "AB".repeat(32),
                ..good.clone()
            },
            ObjectRecord {
                sha256: "ab".into(),
                ..good.clone()
            },
            ObjectRecord {
                holders: BTreeSet::new(),
                ..good.clone()
            },
            ObjectRecord {
                holders: (1..=OBJECT_HOLDERS_MAX as u64 + 1).collect(),
                ..good.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_copy_may_take_longer_the_larger_it_is() {
        assert_eq!(copy_deadline(0), COPY_DEADLINE_BASE);
        assert_eq!(
            copy_deadline(4 << 30),
            COPY_DEADLINE_BASE + Duration::from_secs(512)
        );
    }
}

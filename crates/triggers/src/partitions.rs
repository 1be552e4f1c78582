//! Which node consumes each partition of a Kafka trigger's topic: one consumer per
//! partition across the cluster, placed like jobs and moved when its node is lost.
//!
//! [`place_partitions`] is the rule, data in and moves out (the leader proposes them, each
//! with the partition's next epoch, in one `AssignKafka` entry):
//! 1. a partition whose owner is live stays where it is (a move costs a consumer restart);
//! 2. a partition without an owner, or whose owner is not live (lost, removed, draining,
//!    stopping), goes to the live node that consumes the fewest of the trigger's partitions;
//! 3. only when nothing of the trigger is orphaned, and its spread is uneven by two or more
//!    (a node joined, or one came back), one partition moves from the busiest node to the
//!    least busy one per pass: at most one of the trigger's consumers restarts at a time.
//!
//! Ties go to the node first in a rendezvous order of (trigger, node), so that triggers
//! with one partition each spread over the nodes instead of all landing on the lowest id.
//!
//! Moving a partition is safe at any time because of its epoch: the entry that moves it
//! gives it the next epoch, and every entry of a consumer carries the epoch it holds its
//! partitions at and is refused whole at apply once that is not the partition's epoch any
//! more (`model::Command::Fenced`). So an old owner that wakes up after a pause, or a node
//! declared lost that was only slow, can neither start jobs nor move the cursor; the new
//! owner starts reading at the cursor, which no one else can move.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// Partitions of one Kafka trigger's topic the cluster consumes at most; the rest are
/// left unread (and said so in the log).
pub const KAFKA_PARTITIONS_MAX: usize = 1_024;

/// The node that consumes a partition, and the epoch it holds it at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOwner {
    pub node: u64,
    /// Grows by one each time the partition is given to a node (the first owner holds it at
    /// 1); the fencing token of that owner's entries.
    pub epoch: u64,
}

/// Moves of partitions, `(partition, new owner)`, ordered by partition. Empty when
/// everything stays.
pub fn place_partitions(
    trigger: &str,
    partitions: &[i32],
    owners: &BTreeMap<i32, PartitionOwner>,
    live: &BTreeSet<u64>,
) -> Vec<(i32, u64)> {
    if live.is_empty() {
        return Vec::new();
    }
    let order = rendezvous(trigger, live);
    let rank = |node: u64| order.iter().position(|&n| n == node).unwrap_or(usize::MAX);
    let partitions: BTreeSet<i32> = partitions
        .iter()
        .copied()
        .take(KAFKA_PARTITIONS_MAX)
        .collect();
    let mut load: BTreeMap<u64, BTreeSet<i32>> =
        live.iter().map(|&n| (n, BTreeSet::new())).collect();
    let mut orphans = Vec::new();
    for &p in &partitions {
        match owners.get(&p).filter(|o| live.contains(&o.node)) {
            Some(o) => {
                load.entry(o.node).or_default().insert(p);
            }
            None => orphans.push(p),
        }
    }
    // The least busy node, ties in rendezvous order.
    let least = |load: &BTreeMap<u64, BTreeSet<i32>>| {
        *load
            .iter()
            .min_by_key(|(&n, ps)| (ps.len(), rank(n)))
            .map(|(n, _)| n)
            .expect("live is not empty")
    };
    let mut moves = Vec::new();
    if orphans.is_empty() {
        let busiest = *load
            .iter()
            .max_by_key(|(&n, ps)| (ps.len(), std::cmp::Reverse(rank(n))))
            .map(|(n, _)| n)
            .expect("live is not empty");
        let to = least(&load);
        if load[&busiest].len() >= load[&to].len() + 2 {
            // Its highest partition, so that a node keeps its lower ones across passes.
            let p = *load[&busiest].last().expect("busiest has two or more");
            moves.push((p, to));
        }
        return moves;
    }
    for p in orphans {
        let to = least(&load);
        load.entry(to).or_default().insert(p);
        moves.push((p, to));
    }
    moves
}

/// The nodes in the order a trigger prefers them: by SHA-256 of (trigger, node).
fn rendezvous(trigger: &str, nodes: &BTreeSet<u64>) -> Vec<u64> {
    let mut ranked: Vec<([u8; 32], u64)> = nodes
        .iter()
        .map(|&n| {
            let mut h = Sha256::new();
            h.update(trigger.as_bytes());
            h.update([0]);
            h.update(n.to_be_bytes());
            (h.finalize().into(), n)
        })
        .collect();
    ranked.sort();
    ranked.into_iter().map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    /// Runs passes until nothing moves (at most 20), applying each pass's moves with the
    /// next epoch; shows each pass's moves and then who owns what (`node:partitions`).
    fn check(owners: &[(i32, u64, u64)], partitions: i32, live: &[u64], expect: Expect) {
        let mut owners: BTreeMap<i32, PartitionOwner> = owners
            .iter()
            .map(|&(p, node, epoch)| (p, PartitionOwner { node, epoch }))
            .collect();
        let live: BTreeSet<u64> = live.iter().copied().collect();
        let partitions: Vec<i32> = (0..partitions).collect();
        let mut out = Vec::new();
        for _ in 0..20 {
            let moves = place_partitions("t", &partitions, &owners, &live);
            if moves.is_empty() {
                break;
            }
            let shown: Vec<String> = moves.iter().map(|(p, n)| format!("{p}->{n}")).collect();
            out.push(format!("pass: {}", shown.join(" ")));
            for (p, node) in moves {
                let epoch = owners.get(&p).map_or(0, |o| o.epoch) + 1;
                owners.insert(p, PartitionOwner { node, epoch });
            }
        }
        let mut by_node: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (p, o) in &owners {
            by_node
                .entry(o.node)
                .or_default()
                .push(format!("{p}@{}", o.epoch));
        }
        for (n, ps) in by_node {
            out.push(format!("{n}: {}", ps.join(",")));
        }
        expect.assert_eq(&out.join("\n"));
    }

    #[test]
    fn a_new_trigger_spreads_evenly() {
        check(
            &[],
            6,
            &[1, 2, 3],
            expect![[r#"
                pass: 0->3 1->2 2->1 3->3 4->2 5->1
                1: 2@1,5@1
                2: 1@1,4@1
                3: 0@1,3@1"#]],
        );
        check(
            &[],
            2,
            &[1, 2, 3],
            expect![[r#"
                pass: 0->3 1->2
                2: 1@1
                3: 0@1"#]],
        );
    }

    #[test]
    fn a_lost_nodes_partitions_move_with_a_new_epoch_and_the_rest_stay() {
        let spread = [
            (0, 3, 1),
            (1, 1, 1),
            (2, 2, 1),
            (3, 3, 1),
            (4, 1, 1),
            (5, 2, 1),
        ];
        check(
            &spread,
            6,
            &[1, 2],
            expect![[r#"
                pass: 0->2 3->1
                1: 1@1,3@2,4@1
                2: 0@2,2@1,5@1"#]],
        );
        // Down to one node, everything is its.
        check(
            &spread,
            6,
            &[2],
            expect![[r#"
                pass: 0->2 1->2 3->2 4->2
                2: 0@2,1@2,2@1,3@2,4@2,5@1"#]],
        );
    }

    #[test]
    fn a_node_that_joins_takes_a_share_one_partition_a_pass() {
        let on_two = [
            (0, 1, 2),
            (1, 1, 1),
            (2, 1, 1),
            (3, 2, 2),
            (4, 2, 1),
            (5, 2, 1),
        ];
        check(
            &on_two,
            6,
            &[1, 2, 3],
            expect![[r#"
                pass: 5->3
                pass: 2->3
                1: 0@2,1@1
                2: 3@2,4@1
                3: 2@2,5@2"#]],
        );
    }

    #[test]
    fn an_even_or_nearly_even_spread_is_left_alone() {
        let uneven_by_one = [(0, 1, 1), (1, 1, 1), (2, 2, 1), (3, 3, 1), (4, 2, 4)];
        check(
            &uneven_by_one,
            5,
            &[1, 2, 3],
            expect![[r#"
                1: 0@1,1@1
                2: 2@1,4@4
                3: 3@1"#]],
        );
        // No live node: nothing moves, even the owners that are gone.
        check(&[(0, 9, 1)], 1, &[], expect!["9: 0@1"]);
    }

    #[test]
    fn orphans_are_placed_before_any_rebalance() {
        // Node 3 is lost while node 1 holds four: its partition goes to the least busy
        // survivor, and the uneven spread is fixed only in a later pass.
        let skewed = [(0, 1, 1), (1, 1, 1), (2, 1, 1), (3, 1, 1), (4, 3, 1)];
        check(
            &skewed,
            5,
            &[1, 2],
            expect![[r#"
                pass: 4->2
                pass: 3->2
                1: 0@1,1@1,2@1
                2: 3@2,4@2"#]],
        );
    }

    #[test]
    fn partitions_past_the_limit_are_not_placed() {
        let many: Vec<i32> = (0..(KAFKA_PARTITIONS_MAX as i32 + 10)).collect();
        let moves = place_partitions("t", &many, &BTreeMap::new(), &BTreeSet::from([1]));
        assert_eq!(moves.len(), KAFKA_PARTITIONS_MAX);
        assert!(moves
            .iter()
            .all(|&(p, _)| (p as usize) < KAFKA_PARTITIONS_MAX));
    }
}

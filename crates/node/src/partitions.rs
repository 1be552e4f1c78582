//! The leader places each Kafka trigger's partitions on nodes, one consumer per partition
//! across the cluster (the consumers themselves are `node::sources`').
//!
//! Every [`PLACE_PASS`], while its node leads:
//! 1. for each active Kafka trigger, it reads the topic's partitions from the brokers (a
//!    client of the topic's metadata per trigger, kept while the node leads);
//! 2. the live nodes are those that take work (`NodeStatus::Up`): a node the liveness scan
//!    declared down, a removed, draining or stopping one, or one still joining holds none;
//! 3. `triggers::place_partitions` says which partitions move where, and one
//!    `AssignKafka` entry gives each the next epoch. Each node sees its share in its applied
//!    state and (re)starts its consumer from the cursor; an old owner's entries are fenced.
//!
//! So a node that dies loses its partitions within the liveness scan's `DOWN_AFTER` plus a
//! pass, and none of its records is missed or started twice: the new owner starts at the
//! cursor, the jobs' idempotency keys drop what the old one may have proposed in flight.
//!
//! Every [`WATERMARKS_EVERY`] it also reads the partitions' high watermarks, for the lag
//! (high watermark minus cursor) in the trigger's status and `chorus_source_lag`. A topic
//! that cannot be read (brokers down, no such topic) makes the trigger report failing, and
//! its recovery ok, with back-off between tries.

use crate::sources::Backoff;
use crate::Node;
use events::kafka::Topic;
use model::{Command, NodeId, Trigger};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;
use triggers::{KafkaSource, PartitionOwner};

/// How often the leader places partitions.
const PLACE_PASS: Duration = Duration::from_secs(1);
/// How often the leader reads each topic's high watermarks.
const WATERMARKS_EVERY: Duration = Duration::from_secs(5);

/// What the leader keeps per Kafka trigger between passes.
#[derive(Debug)]
struct Placing {
    source: KafkaSource,
    topic: Topic,
    backoff: Backoff,
    /// Whether this loop reported the topic unreadable (and owes a recovery).
    failing: bool,
    watermarks_at: Option<Instant>,
}

/// The leader's loop (see the module's protocol); owned by `Node`.
pub(crate) async fn place(node: Node) {
    let mut placing: BTreeMap<String, Placing> = BTreeMap::new();
    loop {
        tokio::select! {
            () = node.inner.shutdown.cancelled() => return,
            () = tokio::time::sleep(PLACE_PASS) => {}
        }
        if !node.inner.registry.is_leader() {
            // The watermarks this node read are the leader's to show now.
            let sources = &node.inner.sources;
            for name in std::mem::take(&mut placing).into_keys() {
                if sources.get(&name).is_some() {
                    sources.with(&name, |s| s.high_watermarks.clear());
                }
            }
            continue;
        }
        let active: Vec<Trigger> = node.read(|s| {
            s.triggers()
                .filter(|t| !t.paused && t.spec.kafka.is_some())
                .cloned()
                .collect()
        });
        placing.retain(|name, p| {
            active
                .iter()
                .any(|t| &t.spec.name == name && t.spec.kafka.as_ref() == Some(&p.source))
        });
        for t in &active {
            let Some(p) = placing_of(&node, &mut placing, t).await else {
                continue;
            };
            if p.backoff.ready() {
                pass(&node, t, p).await;
            }
        }
    }
}

/// The trigger's entry, made on first sight (a client librdkafka refuses is reported).
async fn placing_of<'p>(
    node: &Node,
    placing: &'p mut BTreeMap<String, Placing>,
    t: &Trigger,
) -> Option<&'p mut Placing> {
    let source = t.spec.kafka.as_ref()?;
    let name = &t.spec.name;
    if !placing.contains_key(name) {
        match Topic::new(source) {
            Ok(topic) => {
                placing.insert(
                    name.clone(),
                    Placing {
                        source: source.clone(),
                        topic,
                        backoff: Backoff::new(),
                        failing: false,
                        watermarks_at: None,
                    },
                );
            }
            Err(e) => {
                node.report(name, Some(e.to_string())).await;
                return None;
            }
        }
    }
    placing.get_mut(name)
}

/// One trigger's pass: its partitions, their placement, and now and then their watermarks.
async fn pass(node: &Node, t: &Trigger, p: &mut Placing) {
    let name = &t.spec.name;
    let partitions = match p.topic.partitions().await {
        Ok(partitions) => partitions,
        Err(e) => {
            tracing::warn!(trigger = %name, error = %e, "cannot read the Kafka topic's partitions");
            p.backoff.failed();
            p.failing = true;
            node.report(name, Some(e.to_string())).await;
            return;
        }
    };
    p.backoff.succeeded();
    if std::mem::take(&mut p.failing) {
        node.report(name, None).await;
    }
    if partitions.len() > triggers::KAFKA_PARTITIONS_MAX {
        tracing::warn!(
            trigger = %name,
            partitions = partitions.len(),
            "the topic has more partitions than a trigger reads: {} are read",
            triggers::KAFKA_PARTITIONS_MAX
        );
    }
    assign(node, name, &partitions).await;
    if p.watermarks_at
        .is_none_or(|at| at.elapsed() >= WATERMARKS_EVERY)
    {
        p.watermarks_at = Some(Instant::now());
        read_watermarks(node, name, p, partitions).await;
    }
}

/// Proposes the moves `triggers::place_partitions` asks for, each at the next epoch.
async fn assign(node: &Node, name: &str, partitions: &[i32]) {
    let owners = node.read(|s| {
        let cursor = s.trigger(name)?.kafka.as_ref()?;
        let live: BTreeSet<NodeId> = s
            .nodes()
            .filter(|n| n.status.takes_work())
            .map(|n| n.id)
            .collect();
        let moves = triggers::place_partitions(name, partitions, &cursor.owners, &live);
        let owners: Vec<(i32, PartitionOwner)> = moves
            .into_iter()
            .map(|(partition, node)| {
                let epoch = cursor.owners.get(&partition).map_or(0, |o| o.epoch) + 1;
                (partition, PartitionOwner { node, epoch })
            })
            .collect();
        Some(owners)
    });
    let Some(owners) = owners.filter(|o| !o.is_empty()) else {
        return;
    };
    tracing::info!(trigger = name, moves = ?owners, "placing Kafka partitions");
    let command = Command::AssignKafka {
        name: name.to_string(),
        owners,
    };
    if let Err(e) = node.propose(command).await {
        tracing::warn!(trigger = name, error = %e, "could not place Kafka partitions");
    }
}

/// Reads the high watermarks into the trigger's status and the lag into the metrics.
async fn read_watermarks(node: &Node, name: &str, p: &Placing, partitions: Vec<i32>) {
    let partitions = partitions
        .into_iter()
        .take(triggers::KAFKA_PARTITIONS_MAX)
        .collect();
    let high = match p.topic.high_watermarks(partitions).await {
        Ok(high) => high,
        Err(e) => {
            tracing::debug!(trigger = name, error = %e, "could not read the high watermarks");
            return;
        }
    };
    let lag: BTreeMap<i32, i64> = node.read(|s| {
        let cursor = s
            .trigger(name)
            .and_then(|t| t.kafka.clone())
            .unwrap_or_default();
        high.iter()
            .map(|&(partition, h)| (partition, (h - cursor.next_offset(partition)).max(0)))
            .collect()
    });
    node.inner.metrics.source_lag(name, &lag);
    node.inner
        .sources
        .with(name, |s| s.high_watermarks = high.into_iter().collect());
}

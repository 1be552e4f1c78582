//! Bucket and Kafka triggers in the cluster: the leader reads each active trigger's source
//! through the `events` crate, asks the pure `triggers` crate what is new, and proposes the
//! jobs (or a workflow's runs: `triggering::Starts`) and the trigger's cursor in one log
//! entry.
//!
//! Bucket triggers, exactly once per object version:
//! 1. every [`SOURCE_PASS`] the leader lists the prefix (an S3-compatible store), or reads the
//!    replicated object records (local stores: each node's directory holds its own copies);
//! 2. `BucketCursor::due` picks the versions not seen yet, oldest first;
//! 3. one entry, `Batch[SubmitJobs, AdvanceBucket]`, starts their jobs (keyed
//!    `bucket:{trigger}:{hash of key and version}`, the object as the input file) and adds
//!    them to the cursor. A new leader lists again and finds them seen; an entry whose fate
//!    was unknown finds its jobs by their keys.
//!
//! Kafka triggers, at-least-once delivery and exactly-once job creation, one consumer per
//! partition across the cluster:
//! 1. the leader gives each partition of an active Kafka trigger's topic to a live node, with
//!    a new epoch each time (`node::partitions`, the rule is `triggers::place_partitions`);
//! 2. every node runs, per active Kafka trigger of which it holds partitions, one consumer
//!    assigned exactly those partitions (no group rebalancing), each read from the trigger's
//!    cursor in the log; it restarts the consumer when its partitions change, and stops it
//!    when the trigger is paused or deleted (a resumed trigger goes on from the cursor);
//! 3. each poll's records past the cursor (`KafkaCursor::is_new`) are batched into jobs keyed
//!    `kafka:{trigger}:{topic}:{partition}:{first offset}`, proposed with an `AdvanceKafka` per
//!    partition in one entry, `Fenced` by the epochs the node holds those partitions at (a
//!    follower's entry goes through the leader, as every write does); an entry that fails is
//!    proposed again, the same records in the same batches, until it commits or is fenced
//!    (the partitions moved: the consumer stops, the new owner goes on from the cursor);
//! 4. only then are the group's offsets committed, for lag tools: the cursor, not the group,
//!    says where a consumer starts.
//!
//! A source that fails (store unreachable, brokers down, topic unknown) is retried with
//! back-off from [`BACKOFF_MIN`] to [`BACKOFF_MAX`]; the first failure records a
//! `source_failed` event and the recovery a `source_recovered` one; meanwhile the trigger's
//! status says what failed ([`Node::source_status`]).

use crate::triggering::Starts;
use crate::{now_ms, Node};
use model::{Command, EventKind, NewEvent, Trigger};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use triggers::{BucketSource, ObjectVersion, Seen};

/// How often the leader looks at its sources (lists buckets, starts or stops consumers).
const SOURCE_PASS: Duration = Duration::from_secs(1);
/// The first wait after a source failed; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a Kafka poll waits for a first record.
#[cfg(feature = "kafka")]
const POLL_WAIT: Duration = Duration::from_millis(500);
/// Records a Kafka trigger takes per entry at most.
#[cfg(feature = "kafka")]
const RECORDS_PER_ENTRY_MAX: usize = 1_000;

/// How a trigger's source fares, as the leader sees it (kept in memory, not in the log).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SourceStatus {
    /// `ok`, or `failing` with `error` saying why.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub since_ms: u64,
    /// Records (or objects) read, their bytes, and those refused.
    pub records_in: u64,
    pub bytes_in: u64,
    pub rejected: u64,
    /// Refused records the dead-letter topic acknowledged.
    pub dead_lettered: u64,
    /// Kafka, on the leader: each partition's high watermark as last read (see
    /// [`Node::kafka_partitions`]).
    #[serde(skip)]
    pub(crate) high_watermarks: BTreeMap<i32, i64>,
}

/// One partition of a Kafka trigger's topic as the API shows it: who consumes it at which
/// epoch, the cursor (the next offset no job was started for), and, where the answering
/// node reads them (the leader), the high watermark and the lag (high watermark minus
/// cursor).
#[derive(Clone, Debug, serde::Serialize)]
pub struct PartitionView {
    pub partition: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<model::NodeId>,
    pub epoch: u64,
    pub next: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high_watermark: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
}

/// Every trigger's source status on this node.
#[derive(Debug, Default)]
pub(crate) struct Statuses(Mutex<BTreeMap<String, SourceStatus>>);

impl Statuses {
    pub(crate) fn with<R>(&self, name: &str, f: impl FnOnce(&mut SourceStatus) -> R) -> R {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let status = all.entry(name.to_string()).or_insert_with(|| SourceStatus {
            state: "ok",
            since_ms: now_ms(),
            ..SourceStatus::default()
        });
        f(status)
    }

    fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|name, _| keep(name));
    }

    pub(crate) fn get(&self, name: &str) -> Option<SourceStatus> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }
}

impl Node {
    /// How the trigger's source fares, if this node reads it (the leader does).
    pub fn source_status(&self, name: &str) -> Option<SourceStatus> {
        self.inner.sources.get(name)
    }

    /// A Kafka trigger's partitions: owner, epoch and cursor from the replicated state, the
    /// high watermark and lag where this node reads them (the leader does). Empty for other
    /// triggers.
    pub fn kafka_partitions(&self, trigger: &Trigger) -> Vec<PartitionView> {
        let Some(cursor) = &trigger.kafka else {
            return Vec::new();
        };
        let high = self
            .inner
            .sources
            .get(&trigger.spec.name)
            .map(|s| s.high_watermarks)
            .unwrap_or_default();
        let partitions: std::collections::BTreeSet<i32> = cursor
            .owners
            .keys()
            .chain(cursor.next.keys())
            .chain(high.keys())
            .copied()
            .collect();
        partitions
            .into_iter()
            .map(|p| {
                let owner = cursor.owners.get(&p);
                let next = cursor.next_offset(p);
                let high_watermark = high.get(&p).copied();
                PartitionView {
                    partition: p,
                    node: owner.map(|o| o.node),
                    epoch: owner.map_or(0, |o| o.epoch),
                    next,
                    high_watermark,
                    lag: high_watermark.map(|h| (h - next).max(0)),
                }
            })
            .collect()
    }

    /// Records a source's health: the change from ok to failing (or back) is an event.
    pub(crate) async fn report(&self, name: &str, error: Option<String>) {
        let changed = self.inner.sources.with(name, |s| {
            let failing = error.is_some();
            let was_failing = s.state == "failing";
            s.error.clone_from(&error);
            if failing != was_failing {
                s.state = if failing { "failing" } else { "ok" };
                s.since_ms = now_ms();
                true
            } else {
                false
            }
        });
        if !changed {
            return;
        }
        let (kind, message) = match error {
            Some(e) => (
                EventKind::SourceFailed,
                format!("trigger {name} cannot read its source, retrying: {e}"),
            ),
            None => (
                EventKind::SourceRecovered,
                format!("trigger {name} reads its source again"),
            ),
        };
        self.record_events(vec![NewEvent {
            kind,
            node: Some(self.id()),
            message,
        }])
        .await;
    }

    /// Proposes a trigger's jobs or runs with its cursor's move, in one entry; `Ok` once
    /// committed (a start refused on its own is logged: the cursor moves past it).
    async fn propose_with_starts(
        &self,
        name: &str,
        starts: Starts,
        advances: Vec<Command>,
    ) -> Result<(), String> {
        self.propose_fenced_starts(name, starts, advances, None)
            .await
            .map_err(|e| e.to_string())
    }

    /// As [`Node::propose_with_starts`], the entry `Fenced` when a fence is given; the error
    /// as the API would say it (`conflict`: fenced).
    async fn propose_fenced_starts(
        &self,
        name: &str,
        starts: Starts,
        advances: Vec<Command>,
        fence: Option<Fence>,
    ) -> Result<(), model::ApiError> {
        let wrap = |batch: Command| match fence {
            None => batch,
            Some(Fence {
                node,
                partitions,
                first,
            }) => Command::Fenced {
                name: name.to_string(),
                node,
                partitions,
                first,
                command: Box::new(batch),
            },
        };
        let started = self
            .propose_starts_in(now_ms(), starts, advances, wrap)
            .await?;
        crate::triggering::warn_refused(name, &started);
        Ok(())
    }
}

/// Who proposes a Kafka consumer's entry and the epochs it holds the entry's partitions at.
#[derive(Clone, Debug)]
struct Fence {
    node: model::NodeId,
    partitions: Vec<(i32, u64)>,
    /// Per partition, the offset of the entry's first record (see `Command::Fenced`).
    first: Vec<(i32, i64)>,
}

/// One trigger's back-off: when it may be tried again, and the next wait.
#[derive(Debug)]
pub(crate) struct Backoff {
    until: Instant,
    wait: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff {
            until: Instant::now(),
            wait: BACKOFF_MIN,
        }
    }

    pub(crate) fn ready(&self) -> bool {
        Instant::now() >= self.until
    }

    pub(crate) fn failed(&mut self) {
        self.until = Instant::now() + self.wait;
        self.wait = (self.wait * 2).min(BACKOFF_MAX);
    }

    pub(crate) fn succeeded(&mut self) {
        *self = Backoff::new();
    }
}

/// Every node's loop over bucket and Kafka triggers (see the module's protocol): Kafka
/// consumers for the partitions the node holds, and, while it leads, the bucket passes.
/// Owned by `Node`; its consumers are owned by it and stop with it.
pub(crate) async fn watch(node: Node) {
    let mut backoffs: BTreeMap<String, Backoff> = BTreeMap::new();
    let mut consumers = Consumers::default();
    let me = node.id();
    loop {
        tokio::select! {
            () = node.inner.shutdown.cancelled() => break,
            () = tokio::time::sleep(SOURCE_PASS) => {}
        }
        let leading = node.inner.registry.is_leader();
        let active: Vec<Trigger> =
            node.read(|s| s.triggers().filter(|t| !t.paused).cloned().collect());
        consumers.keep(&node, &active);
        let buckets = active.iter().filter(|t| t.spec.bucket.is_some());
        for t in buckets.filter(|_| leading) {
            let backoff = backoffs
                .entry(t.spec.name.clone())
                .or_insert_with(Backoff::new);
            if !backoff.ready() {
                continue;
            }
            match bucket_pass(&node, t).await {
                Ok(()) => {
                    backoff.succeeded();
                    node.report(&t.spec.name, None).await;
                }
                Err(e) => {
                    backoff.failed();
                    tracing::warn!(trigger = %t.spec.name, error = %e, "bucket trigger");
                    node.report(&t.spec.name, Some(e)).await;
                }
            }
        }
        backoffs.retain(|name, _| leading && active.iter().any(|t| &t.spec.name == name));
        // Only a node that reads a source tells how it fares: the leader (bucket passes,
        // Kafka partitions and watermarks) and the nodes that hold Kafka partitions.
        node.inner.sources.retain(|name| {
            active.iter().any(|t| {
                t.spec.name == name
                    && (leading || t.kafka.as_ref().is_some_and(|c| !c.owned_by(me).is_empty()))
            })
        });
    }
    consumers.stop_all().await;
}

/// The versions to list for a bucket trigger: the store's listing, or the object records of
/// a cluster on local stores.
async fn bucket_listing(node: &Node, source: &BucketSource) -> Result<Vec<ObjectVersion>, String> {
    if node.store().is_local() {
        return node
            .read(|s| {
                let records = s.objects().map(|(key, o)| events::bucket::Recorded {
                    key,
                    size: o.size,
                    sha256: &o.sha256,
                    recorded_at_ms: o.recorded_at_ms,
                });
                events::bucket::from_records(source, records)
            })
            .map_err(|e| e.to_string());
    }
    events::bucket::list(node.store(), source)
        .await
        .map_err(|e| e.to_string())
}

/// One pass of a bucket trigger: the new versions' jobs and the cursor's move, in one entry.
async fn bucket_pass(node: &Node, t: &Trigger) -> Result<(), String> {
    let Some(source) = &t.spec.bucket else {
        return Ok(());
    };
    let listing = bucket_listing(node, source).await?;
    let name = &t.spec.name;
    let now = now_ms();
    // The cursor as applied now, not as the pass began: a pass never repeats the one before.
    let planned = node.read(|s| {
        let t = s.trigger(name)?;
        let due = t.bucket.as_ref()?.due(source, t.created_at_ms, &listing);
        let seen = Seen::of(&due);
        let due: Vec<ObjectVersion> = due.into_iter().cloned().collect();
        let catalogued = s.source_of_trigger(name).map(|s| s.spec.clone());
        Some((t.spec.clone(), due, seen, catalogued))
    });
    let Some((spec, due, seen, catalogued)) = planned.filter(|(_, due, ..)| !due.is_empty()) else {
        return Ok(());
    };
    let count = due.len() as u64;
    let bytes: u64 = due.iter().map(|o| o.size).sum();
    let (taken, letters) =
        crate::catalogue::judge_objects(node, name, catalogued.as_ref(), due).await?;
    let mut starts = Starts::default();
    for o in &taken {
        let input = triggers::bucket_input(&spec.input, name, o);
        let key = triggers::bucket_idempotency_key(name, o);
        starts.push(now, &spec, input, vec![o.key.clone()], key);
    }
    let rejected = letters.len() as u64;
    let mut advances = Vec::new();
    if !letters.is_empty() {
        advances.push(Command::DeadLetters {
            now_ms: now,
            letters,
        });
    }
    advances.push(Command::AdvanceBucket {
        name: name.clone(),
        seen,
    });
    node.propose_with_starts(name, starts, advances).await?;
    node.inner.sources.with(name, |s| {
        s.records_in += count;
        s.bytes_in += bytes;
        s.rejected += rejected;
    });
    node.inner
        .metrics
        .source_records(name, count, bytes, rejected);
    Ok(())
}

/// What a node's consumer of one Kafka trigger reads: the source, and the partitions the
/// node holds with their epochs.
type Reading = (triggers::KafkaSource, BTreeMap<i32, u64>);

/// The Kafka consumers this node runs, one task per trigger of which it holds partitions.
#[derive(Default)]
struct Consumers {
    tasks: JoinSet<()>,
    running: BTreeMap<String, (Reading, CancellationToken)>,
    /// Per trigger, held by its consumer task while it runs: a consumer restarted with other
    /// partitions waits until the one it replaces has ended (its entry in flight committed
    /// or given up) before it reads the cursor, which that entry may still move.
    turns: BTreeMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>,
}

impl std::fmt::Debug for Consumers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.running.keys()).finish()
    }
}

impl Consumers {
    /// Runs a consumer for each active Kafka trigger of which this node holds partitions,
    /// restarts one whose partitions (or epochs) changed, and stops the others.
    fn keep(&mut self, node: &Node, active: &[Trigger]) {
        let me = node.id();
        let wanted: BTreeMap<&str, Reading> = active
            .iter()
            .filter_map(|t| {
                let owned = t.kafka.as_ref()?.owned_by(me);
                let source = t.spec.kafka.clone()?;
                (!owned.is_empty()).then_some((t.spec.name.as_str(), (source, owned)))
            })
            .collect();
        self.running.retain(|name, (reading, stop)| {
            let keep = wanted.get(name.as_str()) == Some(&*reading) && !stop.is_cancelled();
            if !keep {
                stop.cancel();
            }
            keep
        });
        // A turn is kept while a task may still hold it.
        self.turns.retain(|name, turn| {
            wanted.contains_key(name.as_str()) || std::sync::Arc::strong_count(turn) > 1
        });
        // Reap the tasks that ended (stopped, fenced, or gave up on a client).
        while let Some(ended) = self.tasks.try_join_next() {
            if let Err(e) = ended {
                tracing::warn!(error = %e, "a Kafka consumer task failed");
            }
        }
        #[cfg(feature = "kafka")]
        for (name, reading) in wanted {
            if self.running.contains_key(name) {
                continue;
            }
            let stop = node.inner.shutdown.child_token();
            self.running
                .insert(name.to_string(), (reading.clone(), stop.clone()));
            let (source, owned) = reading;
            let turn = self.turns.entry(name.to_string()).or_default().clone();
            self.tasks.spawn(kafka::consume(
                node.clone(),
                name.to_string(),
                source,
                owned,
                turn,
                stop,
            ));
        }
        #[cfg(not(feature = "kafka"))]
        let _ = (node, wanted);
    }

    async fn stop_all(&mut self) {
        for (_, stop) in self.running.values() {
            stop.cancel();
        }
        while self.tasks.join_next().await.is_some() {}
    }
}

#[cfg(feature = "kafka")]
mod kafka;

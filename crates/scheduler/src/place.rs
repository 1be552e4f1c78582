//! One placement call: the inputs ([`NodeView`], [`PendingJob`], [`Config`]), the state the
//! caller keeps between calls ([`SchedulerState`]), the answer ([`Placement`]) and [`place`].

use crate::breaker::{
    Breaker, BreakerChange, CPU_HYSTERESIS_PERCENT_DEFAULT, CPU_THRESHOLD_PERCENT_DEFAULT,
};
use crate::splitmix::SplitMix64;
use crate::Strategy;
use model::throttle::{Held, Throttle};
use model::{JobId, NodeId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

/// A node as the scheduler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    pub id: NodeId,
    /// Attempts it may hold at once (running or waiting for a free worker slot): the
    /// concurrency cap. A node at its cap gets nothing, whatever the strategy.
    pub capacity: u32,
    /// Attempts it holds now.
    pub assigned: u32,
    /// Its share under weighted round-robin; also breaks least-request ties. 0 takes the node
    /// out of rotation for every strategy (a zero share is no share).
    pub weight: u32,
    /// Labels such as `pool=private`, `pool=burst`, `class=realtime`.
    pub labels: BTreeSet<String>,
    /// Smoothed CPU (see [`crate::smooth`]), 0 to 100.
    pub cpu_percent: f64,
    /// False when the node is not reachable: it gets nothing, and its (stale) CPU figure does
    /// not move its breaker.
    pub up: bool,
    /// True while the node is leaving: it gets nothing new and finishes what it holds.
    pub draining: bool,
}

impl NodeView {
    /// An up, idle, unlabelled node of weight 1 that is not draining.
    pub fn new(id: NodeId, capacity: u32, assigned: u32) -> NodeView {
        NodeView {
            id,
            capacity,
            assigned,
            weight: 1,
            labels: BTreeSet::new(),
            cpu_percent: 0.0,
            up: true,
            draining: false,
        }
    }
}

/// A job due now, with what its function asks of the placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingJob {
    pub id: JobId,
    /// The function's own strategy; `None` uses [`Config::default_strategy`].
    pub strategy: Option<Strategy>,
    /// Labels a node must all carry to run it.
    pub required_labels: BTreeSet<String>,
    /// Extra attempts to start at once, each on a distinct node (so `1 + backups` in all).
    pub backups: u32,
    /// Nodes it must not go to: a running job getting a hedge goes to a node it does not
    /// run on yet.
    pub excluded: BTreeSet<NodeId>,
    /// Cluster-wide limits it starts under (see [`Throttles`]); a hedge, which is no new
    /// start, carries none.
    pub throttles: Vec<Throttle>,
}

impl PendingJob {
    /// A job with no requirements: default strategy, no labels, no backups.
    pub fn new(id: JobId) -> PendingJob {
        PendingJob {
            id,
            strategy: None,
            required_labels: BTreeSet::new(),
            backups: 0,
            excluded: BTreeSet::new(),
            throttles: Vec::new(),
        }
    }
}

/// The scheduler's settings, fixed for the life of a leader.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Used by jobs whose function names none.
    pub default_strategy: Strategy,
    /// Smoothed CPU at or above which a node's breaker opens.
    pub cpu_threshold_percent: f64,
    /// An open breaker closes when CPU falls below `cpu_threshold_percent` minus this.
    pub cpu_hysteresis_percent: f64,
    /// Seeds the PRNG of a fresh [`SchedulerState`].
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            default_strategy: Strategy::default(),
            cpu_threshold_percent: CPU_THRESHOLD_PERCENT_DEFAULT,
            cpu_hysteresis_percent: CPU_HYSTERESIS_PERCENT_DEFAULT,
            seed: 0,
        }
    }
}

/// Everything the scheduler remembers between calls. The caller owns it and passes it to
/// every [`place`]; nothing is kept anywhere else, so a call is a function of its arguments.
/// Entries of nodes missing from a call's view are dropped (node ids are never reused), which
/// keeps the state as small as the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerState {
    /// Smooth weighted round-robin: each node's current weight.
    pub round_robin_weights: BTreeMap<NodeId, i64>,
    /// Each known node's CPU breaker; a node missing here is closed.
    pub breakers: BTreeMap<NodeId, Breaker>,
    /// The PRNG's state (least-request and random draw from it).
    pub rng_state: u64,
}

impl SchedulerState {
    /// The state of a new leader: breakers closed, round-robin at zero, PRNG at the seed.
    pub fn new(config: &Config) -> SchedulerState {
        SchedulerState {
            round_robin_weights: BTreeMap::new(),
            breakers: BTreeMap::new(),
            rng_state: config.seed,
        }
    }
}

/// The answer of one [`place`] call.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    /// Attempts to start per node, nodes in id order, jobs in the order they were given. A job
    /// with backups appears under `1 + backups` distinct nodes. Nodes that get nothing are left
    /// out.
    pub attempts: Vec<(NodeId, Vec<JobId>)>,
    /// Jobs that got no attempt, in the order they were given, with the reason.
    pub unplaced: Vec<Unplaced>,
    /// Breakers that opened or closed in this call, in node id order.
    pub breaker_changes: Vec<BreakerChange>,
}

/// A job left queued by [`place`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unplaced {
    pub job: JobId,
    pub reason: Reason,
}

/// Why a job got no attempt. A job is placed whole or not at all: it never gets fewer
/// attempts than `1 + backups`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No node in the view carries every required label: it waits for the cluster to change.
    NoNodeWithLabels,
    /// Every node that carries the labels is excluded (a hedge with nowhere else to go).
    AllExcluded,
    /// Fewer nodes that carry the labels, are up, not draining and of non-zero weight than the
    /// distinct nodes it asks for: it waits for the cluster to change.
    TooFewNodes { wanted: u32, usable: u32 },
    /// Enough such nodes, but fewer of them than it asks for have a free slot and a closed
    /// breaker now: it waits for the next call.
    Busy { wanted: u32, available: u32 },
    /// A cluster-wide throttle of its function or step holds it: it waits for one of the
    /// bucket's jobs to end, or for the rate's window to move on.
    Throttled(Held),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoNodeWithLabels => write!(f, "no node carries the required labels"),
            Reason::AllExcluded => write!(f, "every node with the labels is excluded"),
            Reason::TooFewNodes { wanted, usable } => {
                write!(f, "needs {wanted} distinct nodes up, not draining, with the labels; there are {usable}")
            }
            Reason::Busy { wanted, available } => {
                write!(f, "needs {wanted} distinct nodes with room and a closed breaker; there are {available} now")
            }
            Reason::Throttled(held) => held.fmt(f),
        }
    }
}

/// The usage of every throttle bucket the due jobs name, at one instant: what the state holds
/// (jobs running per bucket, latest starts), then what the call places. Built by the caller
/// for each call; [`place_throttled`] counts each job it places, so a call never goes past a
/// limit however many jobs of a bucket are due.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Throttles {
    now_ms: u64,
    buckets: BTreeMap<String, (u32, VecDeque<u64>)>,
}

impl Throttles {
    /// No bucket used yet, at `now_ms`.
    pub fn new(now_ms: u64) -> Throttles {
        Throttles {
            now_ms,
            buckets: BTreeMap::new(),
        }
    }

    /// Sets a bucket's usage: `running` jobs of it run, its latest starts were at
    /// `starts_ms` (oldest first). A bucket never set is unused.
    pub fn set(&mut self, bucket: &str, running: u32, starts_ms: &VecDeque<u64>) {
        self.buckets
            .insert(bucket.to_string(), (running, starts_ms.clone()));
    }

    /// Whether `bucket`'s usage was set.
    pub fn has(&self, bucket: &str) -> bool {
        self.buckets.contains_key(bucket)
    }

    /// The first of `job`'s throttles that holds it back now, if any.
    pub fn check(&self, job: &PendingJob) -> Result<(), Held> {
        static NONE: VecDeque<u64> = VecDeque::new();
        for t in &job.throttles {
            let (running, starts_ms) = self
                .buckets
                .get(&t.bucket)
                .map_or((0, &NONE), |(r, s)| (*r, s));
            let usage = model::throttle::Usage { running, starts_ms };
            model::throttle::admits(t, usage, self.now_ms)?;
        }
        Ok(())
    }

    /// Counts `job` as started now in each of its buckets.
    pub fn take(&mut self, job: &PendingJob) {
        for t in &job.throttles {
            let (running, starts) = self.buckets.entry(t.bucket.clone()).or_default();
            *running += 1;
            model::throttle::record_start(t, starts, self.now_ms);
        }
    }
}

/// A node during one call: its view plus what the call has done to it.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) id: NodeId,
    pub(crate) capacity: u32,
    pub(crate) assigned: u32,
    pub(crate) weight: u32,
    pub(crate) cpu_percent: f64,
    pub(crate) round_robin_weight: i64,
    /// Up, not draining and of non-zero weight: fixed for the call.
    usable: bool,
    breaker: Breaker,
    placed: Vec<JobId>,
}

impl Slot {
    fn available(&self) -> bool {
        self.usable && self.breaker == Breaker::Closed && self.assigned < self.capacity
    }
}

/// The nodes carrying one set of required labels, found once per distinct set rather than
/// once per job (this is what keeps 10,000 jobs on 100 nodes to a few milliseconds).
#[derive(Debug)]
struct LabelGroup {
    /// Indices into the slots, in node id order.
    members: Vec<usize>,
    usable: u32,
}

/// Places `jobs` (in priority order) on `nodes`; see the crate docs for the steps, the
/// strategies and the breaker. Deterministic: the same arguments and `state` give the same
/// placement and the same new `state`. The order of `nodes` does not matter. Jobs that
/// carry throttles are judged as if no bucket were used: see [`place_throttled`].
///
/// # Panics
///
/// If two nodes share an id (the caller builds the view from a map, so this is a bug).
pub fn place(
    config: &Config,
    state: &mut SchedulerState,
    nodes: &[NodeView],
    jobs: &[PendingJob],
) -> Placement {
    place_throttled(config, state, nodes, jobs, &mut Throttles::default())
}

/// [`place`], holding every job to its throttles given the buckets' usage in `throttles`,
/// which counts each job placed.
pub fn place_throttled(
    config: &Config,
    state: &mut SchedulerState,
    nodes: &[NodeView],
    jobs: &[PendingJob],
    throttles: &mut Throttles,
) -> Placement {
    let mut views: Vec<&NodeView> = nodes.iter().collect();
    views.sort_by_key(|n| n.id);
    assert!(
        views.windows(2).all(|w| w[0].id != w[1].id),
        "node ids in a view must be unique"
    );
    let known = |id: &NodeId| views.binary_search_by_key(id, |n| n.id).is_ok();
    state.round_robin_weights.retain(|id, _| known(id));
    state.breakers.retain(|id, _| known(id));

    let (mut slots, breaker_changes) = step_breakers(config, state, &views);
    let mut rng = SplitMix64::new(state.rng_state);
    // Candidate groups by (labels, excluded nodes): most jobs share both, so most share one.
    let mut groups: BTreeMap<(&BTreeSet<String>, &BTreeSet<NodeId>), LabelGroup> = BTreeMap::new();
    let mut unplaced = Vec::new();
    let mut candidates = Vec::with_capacity(slots.len());
    let mut chosen = Vec::new();
    for job in jobs {
        let group = groups
            .entry((&job.required_labels, &job.excluded))
            .or_insert_with(|| label_group(&views, &slots, job));
        let strategy = job.strategy.unwrap_or(config.default_strategy);
        let placed = place_job(
            strategy,
            job,
            group,
            throttles,
            &mut slots,
            &mut rng,
            &mut candidates,
            &mut chosen,
        );
        if let Err(reason) = placed {
            unplaced.push(Unplaced {
                job: job.id,
                reason,
            });
        }
    }

    state.rng_state = rng.state();
    let mut attempts = Vec::new();
    for slot in slots {
        state
            .round_robin_weights
            .insert(slot.id, slot.round_robin_weight);
        if !slot.placed.is_empty() {
            attempts.push((slot.id, slot.placed));
        }
    }
    Placement {
        attempts,
        unplaced,
        breaker_changes,
    }
}

/// Moves every up node's breaker one step (see [`Breaker::next`]) and builds the call's slots.
fn step_breakers(
    config: &Config,
    state: &mut SchedulerState,
    views: &[&NodeView],
) -> (Vec<Slot>, Vec<BreakerChange>) {
    let mut changes = Vec::new();
    let mut slots: Vec<Slot> = views
        .iter()
        .map(|view| {
            let before = state.breakers.get(&view.id).copied().unwrap_or_default();
            let breaker = if view.up {
                before.next(view.cpu_percent, config)
            } else {
                before
            };
            if breaker != before {
                changes.push(BreakerChange {
                    node: view.id,
                    breaker,
                    cpu_percent: view.cpu_percent,
                });
            }
            state.breakers.insert(view.id, breaker);
            Slot {
                id: view.id,
                capacity: view.capacity,
                assigned: view.assigned,
                weight: view.weight,
                cpu_percent: view.cpu_percent,
                round_robin_weight: state
                    .round_robin_weights
                    .get(&view.id)
                    .copied()
                    .unwrap_or(0),
                usable: usable(view),
                breaker,
                placed: Vec::new(),
            }
        })
        .collect();
    // The breaker steers work away from hot nodes while cooler ones can take it. When every
    // usable node is hot, refusing all work would only stall the cluster (and a node busy
    // with its own attempts is hot by design), so open breakers are ignored for this call;
    // they stay open in the state and were reported when they opened.
    if !slots
        .iter()
        .any(|s| s.usable && s.breaker == Breaker::Closed)
    {
        for slot in &mut slots {
            slot.breaker = Breaker::Closed;
        }
    }
    (slots, changes)
}

/// Whether `view` may run `job` at all: it carries the labels and is not excluded.
pub(crate) fn in_group(view: &NodeView, job: &PendingJob) -> bool {
    job.required_labels.is_subset(&view.labels) && !job.excluded.contains(&view.id)
}

/// Whether a node may get new work at all: up, not draining, of non-zero weight.
fn usable(view: &NodeView) -> bool {
    view.up && !view.draining && view.weight > 0
}

/// The checks that no amount of free room can pass: the job waits for the cluster to change.
fn structural(job: &PendingJob, members: usize, usable: u32) -> Result<(), Reason> {
    if members == 0 && job.excluded.is_empty() {
        return Err(Reason::NoNodeWithLabels);
    }
    if members == 0 {
        return Err(Reason::AllExcluded);
    }
    let wanted = job.backups.saturating_add(1);
    if usable < wanted {
        return Err(Reason::TooFewNodes { wanted, usable });
    }
    Ok(())
}

/// Why `job` cannot be placed on these nodes however idle they are (no node with its labels,
/// every such node excluded, fewer usable ones than the distinct nodes it needs), or `None`
/// when it only needs room. [`place`] would leave such a job queued with the same reason; a
/// caller that takes due jobs a few at a time must look past these, or they would hold the
/// head of the queue, and every job behind them, until the cluster changes.
pub fn waits_for_cluster(job: &PendingJob, views: &[NodeView]) -> Option<Reason> {
    let members = views.iter().filter(|v| in_group(v, job));
    let (count, usable_count) = members.fold((0, 0), |(n, u), v| (n + 1, u + usable(v) as u32));
    structural(job, count, usable_count).err()
}

fn label_group(views: &[&NodeView], slots: &[Slot], job: &PendingJob) -> LabelGroup {
    let members: Vec<usize> = (0..views.len())
        .filter(|&i| in_group(views[i], job))
        .collect();
    let usable = members.iter().filter(|&&i| slots[i].usable).count() as u32;
    LabelGroup { members, usable }
}

/// Places `1 + backups` attempts of one job on distinct nodes, or none. The order of the
/// checks is [`crate::explain`]'s: the cluster's shape, the throttles, then free room.
#[allow(clippy::too_many_arguments)] // the call's scratch buffers, passed to be reused
fn place_job(
    strategy: Strategy,
    job: &PendingJob,
    group: &LabelGroup,
    throttles: &mut Throttles,
    slots: &mut [Slot],
    rng: &mut SplitMix64,
    candidates: &mut Vec<usize>,
    chosen: &mut Vec<usize>,
) -> Result<(), Reason> {
    structural(job, group.members.len(), group.usable)?;
    throttles.check(job).map_err(Reason::Throttled)?;
    let wanted = job.backups.saturating_add(1);
    chosen.clear();
    for round in 0..wanted {
        candidates.clear();
        candidates.extend(
            group
                .members
                .iter()
                .copied()
                .filter(|&i| slots[i].available() && !chosen.contains(&i)),
        );
        if round == 0 && (candidates.len() as u32) < wanted {
            return Err(Reason::Busy {
                wanted,
                available: candidates.len() as u32,
            });
        }
        // Each pick removes one candidate and changes no other node's availability, so the
        // check above guarantees a candidate in every round.
        let i = crate::strategy::pick(strategy, slots, candidates, rng);
        assert!(
            !chosen.contains(&i) && slots[i].available(),
            "picked a node that is not a candidate"
        );
        slots[i].assigned += 1;
        chosen.push(i);
    }
    for &i in chosen.iter() {
        slots[i].placed.push(job.id);
    }
    throttles.take(job);
    Ok(())
}

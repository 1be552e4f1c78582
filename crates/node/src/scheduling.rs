//! The scheduling loop. Every node runs it; it acts only while its node is the leader, so
//! exactly one node places jobs at a time (a deposed leader's `StartAttempts` fails to
//! commit). Placement itself is the pure [`scheduler::place`]; this loop feeds it the due jobs
//! and a view of the nodes, keeps the scheduler's state between calls, and turns its answer
//! into `StartAttempts` entries, one per node.
//!
//! A node holds up to `slots + prefetch` attempts: `slots` running and the rest waiting in the
//! node for a free slot. Each node sizes its prefetch to about [`PREFETCH_WORK`] of work at its
//! recent run times and reports it in its heartbeat: small jobs get a deep queue, so one log
//! entry starts hundreds of them; long jobs get a shallow one, so they spread over the
//! cluster instead of piling up on one node.
//!
//! Cluster-wide throttles (a function's or a step's) are held here, in the one place that
//! starts jobs: each pass builds the usage of the buckets its due jobs name from the applied
//! state ([`model::State::throttle_usage`]), passes over the jobs a throttle holds (so they
//! never hold back the jobs behind them), and lets [`scheduler::place_throttled`] count what
//! it places. The loop wakes when a rate's window lets the next job start. Applying the
//! start checks again (`model::State`), so a submit placed at once or an old leader cannot
//! start a job over a limit either; such a submit is not placed at once anyway.
//!
//! Cluster config read live on every pass (set with `chorus config set`):
//! `scheduler.strategy` (default `least-request`), `scheduler.cpu_threshold` (default 85) and
//! `node.{id}.weight` (default 1; a node's share under weighted round-robin, 0 for none).

use crate::{now_ms, Node};
use model::{Command, NodeStatus, State, WaitCode, Waiting};
use scheduler::{Config, NodeView, PendingJob, Reason, SchedulerState, Throttles};
use std::collections::BTreeMap;
use std::time::Duration;

/// Attempts waiting per slot before a node has reported its own prefetch.
const PREFETCH_PER_SLOT_DEFAULT: u32 = 8;
/// How much work a node's prefetch should cover.
pub(crate) const PREFETCH_WORK: Duration = Duration::from_millis(50);
/// Attempts a node holds waiting at most.
pub(crate) const PREFETCH_MAX: u32 = 2_048;
/// How often the loop looks even if nothing changed (delayed retries becoming due).
const IDLE_TICK: Duration = Duration::from_millis(500);

fn config(s: &State) -> Config {
    let settings = s.config().settings();
    let mut config = Config::default();
    if let Some(strategy) = settings.strategy {
        config.default_strategy = strategy;
    }
    if let Some(threshold) = settings.cpu_threshold_percent {
        config.cpu_threshold_percent = threshold;
    }
    config
}

fn view(s: &State) -> Vec<NodeView> {
    s.nodes()
        .map(|n| {
            let prefetch = match n.load.prefetch {
                0 => n.slots.saturating_mul(PREFETCH_PER_SLOT_DEFAULT),
                reported => reported.min(PREFETCH_MAX),
            };
            let mut v = NodeView::new(
                n.id,
                n.slots.saturating_add(prefetch),
                s.running_count(n.id) as u32,
            );
            v.labels = n.labels.clone();
            if let Some(weight) = s.config().settings().weight(n.id) {
                v.weight = weight;
            }
            v.cpu_percent = n.load.cpu_percent;
            v.up = !matches!(n.status, NodeStatus::Down | NodeStatus::Joining);
            v.draining = matches!(n.status, NodeStatus::Draining | NodeStatus::Stopping);
            v
        })
        .collect()
}

/// Chooses nodes for jobs being submitted, so that they start in the same log entry that
/// creates them. Only on the leader, and only while nothing is waiting: new jobs must not
/// jump the queue. An empty answer means "let the scheduling loop place them". Also returns
/// the events of breakers that changed on the way.
pub(crate) fn place_new(
    node: &Node,
    specs: &[model::JobSpec],
) -> (Vec<Option<model::NodeId>>, Vec<model::NewEvent>) {
    if !node.inner.registry.is_leader() {
        return (Vec::new(), Vec::new());
    }
    node.read(|s| {
        let nodes = view(s);
        if !due_placeable(s, &nodes, now_ms(), 1).jobs.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let config = config(s);
        let mut state = scheduler_state(node);
        let state = state.get_or_insert_with(|| SchedulerState::new(&config));
        // Placeholder ids: the real ones are assigned when the entry is applied.
        // Jobs whose backups start together are left to the loop: one node per job here.
        // Throttled jobs too: their buckets are known once they exist, and the loop, which
        // counts every start of a pass, is the one place that starts them.
        let pending: Vec<PendingJob> = specs
            .iter()
            .enumerate()
            .filter_map(|(i, spec)| {
                let f = s.function(&spec.function)?;
                (!f.keeps_all_attempts() && f.throttle.is_none())
                    .then(|| pending_job(model::JobId(u64::MAX - i as u64), f))
            })
            .collect();
        let placement = scheduler::place(&config, state, &nodes, &pending);
        let mut place = vec![None; specs.len()];
        for (target, jobs) in placement.attempts {
            for job in jobs {
                place[(u64::MAX - job.0) as usize] = Some(target);
            }
        }
        (
            place,
            placement
                .breaker_changes
                .iter()
                .map(breaker_event)
                .collect(),
        )
    })
}

/// The node a continuation this node proposes may start its jobs on: this node, unless its
/// CPU is at the breaker's threshold or the cluster places by another strategy than
/// `least-request` (a free slot here is then no better than one elsewhere). The state checks
/// the rest when it applies the entry (`State::continues_on`).
pub(crate) fn continues_here(node: &Node, s: &State) -> Option<model::NodeId> {
    let config = config(s);
    let me = s.node(node.id())?;
    (config.default_strategy == model::Strategy::LeastRequest
        && me.load.cpu_percent < config.cpu_threshold_percent)
        .then_some(me.id)
}

pub(crate) async fn run(node: Node) {
    let mut applied = node.inner.registry.applied();
    // When the next hedge falls due, as of the last pass; a new attempt is an applied change,
    // which starts a new pass, so this is never older than the attempts it is about.
    let mut next_hedge_ms: Option<u64> = None;
    // Functions whose queued jobs wait for the cluster to change, as last reported.
    let mut reported_waiting: BTreeMap<String, Reason> = BTreeMap::new();
    // When a rate throttle lets the next held job start, as of the last pass.
    let mut next_throttle_ms: Option<u64> = None;
    loop {
        let next_due = node.read(|s| {
            let due = s.next_due_ms().into_iter().chain(next_hedge_ms);
            due.chain(next_throttle_ms).min()
        });
        let wait = next_due.map_or(IDLE_TICK, |due| {
            Duration::from_millis(due.saturating_sub(now_ms())).min(IDLE_TICK)
        });
        tokio::select! {
            () = node.inner.shutdown.cancelled() => return,
            changed = applied.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
        if !node.inner.registry.is_leader() {
            // A new leader starts from a fresh scheduler state.
            *scheduler_state(&node) = None;
            next_hedge_ms = None;
            next_throttle_ms = None;
            reported_waiting.clear();
            continue;
        }
        let now = now_ms();
        let mut verdicts = BTreeMap::new();
        let placement = node.read(|s| {
            let (hedges, next_hedge) = s.hedges_due(now);
            next_hedge_ms = next_hedge;
            let config = config(s);
            let mut state = scheduler_state(&node);
            let state = state.get_or_insert_with(|| SchedulerState::new(&config));
            let nodes = view(s);
            let free: u32 = nodes
                .iter()
                .filter(|n| n.up && !n.draining)
                .map(|n| n.capacity.saturating_sub(n.assigned))
                .sum();
            if free == 0 {
                // Nothing can start, but jobs that wait for the cluster (every node with
                // their labels draining, say) are still reported.
                verdicts = due_placeable(s, &nodes, now, 1).verdicts;
                return None;
            }
            // Hedges first: they are few, and each is a job already late.
            let mut due: Vec<PendingJob> = hedges
                .into_iter()
                .filter_map(|(id, running_on)| {
                    let mut p = pending_job(id, s.function(&s.job(id)?.function)?);
                    p.backups = 0;
                    p.excluded = running_on.into_iter().collect();
                    Some(p)
                })
                .collect();
            let mut pass = due_placeable(s, &nodes, now, free as usize);
            verdicts = pass.verdicts;
            next_throttle_ms = pass.next_throttle_ms;
            due.extend(
                pass.jobs
                    .iter()
                    .filter_map(|j| Some(job_pending(j, s.function(&j.function)?))),
            );
            if due.is_empty() {
                return None;
            }
            Some(scheduler::place_throttled(
                &config,
                state,
                &nodes,
                &due,
                &mut pass.throttles,
            ))
        });
        let waiting = report_waiting(&mut reported_waiting, verdicts);
        if !waiting.is_empty() {
            node.record_events(waiting).await;
        }
        let Some(placement) = placement else { continue };
        if !placement.breaker_changes.is_empty() {
            let events = placement
                .breaker_changes
                .iter()
                .map(breaker_event)
                .collect();
            node.record_events(events).await;
        }
        // One entry for every node's attempts: a job's backups start together or not at all.
        let mut starts: Vec<Command> = placement
            .attempts
            .into_iter()
            .map(|(target, jobs)| Command::StartAttempts {
                now_ms: now,
                node: target,
                jobs,
            })
            .collect();
        let command = match starts.len() {
            0 => continue,
            1 => starts.remove(0),
            _ => Command::Batch(starts),
        };
        if let Err(e) = node.propose(command).await {
            tracing::warn!(error = %e, "could not start attempts");
        }
    }
}

/// Per function looked at: why its jobs wait for the cluster, with the nodes that keep them
/// waiting (`None`: they can be placed).
type Verdicts = BTreeMap<String, Option<(Reason, String)>>;

/// What one look at the queue finds: see [`due_placeable`].
struct Pass<'s> {
    /// Due jobs the scheduler may place now, highest priority first.
    jobs: Vec<&'s model::Job>,
    /// Per function looked at, why its jobs wait for the cluster.
    verdicts: Verdicts,
    /// The usage of every throttle bucket the jobs name, as the state holds it.
    throttles: Throttles,
    /// When a rate throttle lets the first job it holds start.
    next_throttle_ms: Option<u64>,
}

/// The usage of `job`'s throttle buckets, read from the state into `throttles` (each bucket
/// once).
fn read_usage(s: &State, job: &model::Job, throttles: &mut Throttles) {
    for t in &job.throttles {
        if !throttles.has(&t.bucket) {
            let usage = s.throttle_usage(&t.bucket);
            throttles.set(&t.bucket, usage.running, usage.starts_ms);
        }
    }
}

/// Due jobs the scheduler may place now, at most `limit`, highest priority first, passing
/// over jobs that wait for the cluster to change ([`scheduler::waits_for_cluster`]: no node
/// with their labels, too few usable nodes for their backups), whose function is gone, or
/// that a throttle holds (counting the jobs taken before them). Without that, `limit` such
/// jobs at the head of the queue would hold back every job behind them. Also returns, for
/// each function looked at, the reason its jobs wait (`None`: they can be placed) with the
/// nodes that keep them waiting. Each function is judged once per call.
fn due_placeable<'s>(s: &'s State, nodes: &[NodeView], now: u64, limit: usize) -> Pass<'s> {
    let mut verdicts: BTreeMap<&'s str, Option<Option<(Reason, String)>>> = BTreeMap::new();
    let mut throttles = Throttles::new(now);
    // What the jobs taken so far would use: a bucket full after them holds the rest.
    let mut taken = Throttles::new(now);
    let mut next_throttle_ms: Option<u64> = None;
    let due = s.due_jobs_where(now, limit, |job| {
        if !job.throttles.is_empty() {
            read_usage(s, job, &mut throttles);
            read_usage(s, job, &mut taken);
            let pending = job_throttles(job);
            if let Err(held) = taken.check(&pending) {
                if let scheduler::Limit::Rate { until_ms, .. } = held.limit {
                    next_throttle_ms = Some(next_throttle_ms.map_or(until_ms, |t| t.min(until_ms)));
                }
                return false;
            }
            taken.take(&pending);
        }
        let verdict = verdicts.entry(job.function.as_str()).or_insert_with(|| {
            let f = s.function(&job.function)?;
            let pending = pending_job(job.id, f);
            let Some(reason) = scheduler::waits_for_cluster(&pending, nodes) else {
                return Some(None);
            };
            // Breakers play no part in a wait for the cluster: judged with none open.
            let state = SchedulerState::new(&Config::default());
            let bars = match scheduler::explain(&pending, nodes, &state, &Throttles::new(now)) {
                scheduler::Explanation::TooFewNodes { bars, .. } => barred(s, &bars),
                _ => String::new(),
            };
            Some(Some((reason, bars)))
        });
        matches!(verdict, Some(None))
    });
    let verdicts = verdicts
        .into_iter()
        .filter_map(|(f, verdict)| Some((f.to_string(), verdict?)))
        .collect();
    Pass {
        jobs: due,
        verdicts,
        throttles,
        next_throttle_ms,
    }
}

/// The `jobs_waiting` alerts to raise: one per function whose jobs newly wait for the
/// cluster, or wait for another reason than last reported. A function that can be placed
/// again is forgotten, so that it is reported if it gets stuck again.
fn report_waiting(
    reported: &mut BTreeMap<String, Reason>,
    verdicts: Verdicts,
) -> Vec<model::NewEvent> {
    let mut events = Vec::new();
    for (function, verdict) in verdicts {
        let Some((reason, bars)) = verdict else {
            reported.remove(&function);
            continue;
        };
        if reported.get(&function) == Some(&reason) {
            continue;
        }
        events.push(model::NewEvent {
            kind: model::EventKind::JobsWaiting,
            node: None,
            message: if bars.is_empty() {
                format!("queued jobs of function {function} wait for the cluster: {reason}")
            } else {
                format!(
                    "queued jobs of function {function} wait for the cluster: {reason} ({bars})"
                )
            },
        });
        reported.insert(function, reason);
    }
    events
}

/// The scheduler's state kept between placements (see `Node`'s field); locked while the
/// applied state's read lock is held, never the other way round.
pub(crate) fn scheduler_state(node: &Node) -> std::sync::MutexGuard<'_, Option<SchedulerState>> {
    node.inner
        .scheduler
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// A queued job as the scheduler sees it: [`pending_job`] with the job's throttles.
fn job_pending(job: &model::Job, f: &model::FunctionSpec) -> PendingJob {
    let mut p = pending_job(job.id, f);
    p.throttles.clone_from(&job.throttles);
    p
}

/// Only a job's throttles, for checking them.
fn job_throttles(job: &model::Job) -> PendingJob {
    let mut p = PendingJob::new(job.id);
    p.throttles.clone_from(&job.throttles);
    p
}

/// A job as the scheduler sees it: its function's strategy, labels and backups (started
/// together in mode `all`; a hedge is placed on its own, later). No throttles: a hedge is
/// no new start, and a queued job's come from the job ([`job_pending`]).
fn pending_job(id: model::JobId, f: &model::FunctionSpec) -> PendingJob {
    let mut p = PendingJob::new(id);
    p.strategy = f.strategy.as_deref().and_then(|v| v.parse().ok());
    p.required_labels = f.labels.iter().cloned().collect();
    p.backups = if f.keeps_all_attempts() { f.backups } else { 0 };
    p
}

/// The alert for a breaker that opened, or the all-clear for one that closed.
fn breaker_event(change: &scheduler::BreakerChange) -> model::NewEvent {
    let (kind, what) = match change.breaker {
        scheduler::Breaker::Open => (
            model::EventKind::BreakerOpened,
            "opened: no new work for the node",
        ),
        scheduler::Breaker::Closed => (
            model::EventKind::BreakerClosed,
            "closed: the node takes work again",
        ),
    };
    model::NewEvent {
        kind,
        node: Some(change.node),
        message: format!(
            "CPU breaker {what} (smoothed CPU {:.0}%)",
            change.cpu_percent
        ),
    }
}

/// Why a queued job has not started, as its read answers it (`None` unless it is queued). The
/// nodes are judged as the scheduling loop judges them; CPU breakers are known to the leader
/// only, so a follower's answer takes them as closed.
pub(crate) fn waiting(node: &Node, s: &State, job: &model::Job, now: u64) -> Option<Waiting> {
    if job.state != model::JobState::Queued {
        return None;
    }
    let wait = |code, message: String| Some(Waiting { code, message });
    if job.not_before_ms > now {
        return wait(
            WaitCode::Backoff,
            format!(
                "retry back-off after try {}: due in {:.1} s",
                job.tries,
                (job.not_before_ms - now) as f64 / 1000.0
            ),
        );
    }
    let Some(f) = s.function(&job.function) else {
        return wait(
            WaitCode::FunctionMissing,
            format!("function {} is not deployed", job.function),
        );
    };
    let config = config(s);
    let state = scheduler_state(node)
        .clone()
        .unwrap_or_else(|| SchedulerState::new(&config));
    let mut throttles = Throttles::new(now);
    read_usage(s, job, &mut throttles);
    let labels = || {
        let list: Vec<&str> = f.labels.iter().map(String::as_str).collect();
        format!("[{}]", list.join(", "))
    };
    match scheduler::explain(&job_pending(job, f), &view(s), &state, &throttles) {
        scheduler::Explanation::NoNodeWithLabels => wait(
            WaitCode::NoNodeWithLabels,
            format!(
                "no node carries the labels {} that function {} requires",
                labels(),
                f.name
            ),
        ),
        scheduler::Explanation::TooFewNodes { wanted, bars } => wait(
            WaitCode::TooFewNodes,
            format!(
                "needs {wanted} node(s){} that are up and take work; {}",
                if f.labels.is_empty() {
                    String::new()
                } else {
                    format!(" with the labels {}", labels())
                },
                if bars.is_empty() {
                    "there are not that many".to_string()
                } else {
                    barred(s, &bars)
                }
            ),
        ),
        scheduler::Explanation::Busy { wanted, bars } => wait(
            WaitCode::NoCapacity,
            format!(
                "needs {wanted} node(s) with room; every node that can run it is busy: {}",
                barred(s, &bars)
            ),
        ),
        scheduler::Explanation::Throttled(held) => wait(WaitCode::Throttled, throttled(&held, now)),
        scheduler::Explanation::Placeable => {
            let ahead = s.queued_ahead(job.id).unwrap_or(0);
            wait(
                WaitCode::InQueue,
                format!("{ahead} job(s) ahead of it; the scheduler places it on its next pass"),
            )
        }
    }
}

/// The nodes that cannot take a job, each with why: "node 2 drained by an operator (...)".
fn barred(s: &State, bars: &[(model::NodeId, scheduler::Bar)]) -> String {
    bars.iter()
        .map(|(id, bar)| match (bar, s.node(*id)) {
            (scheduler::Bar::Draining, Some(n)) if n.drained => {
                format!("node {id} drained by an operator (`chorus nodes undrain {id}`)")
            }
            (scheduler::Bar::Draining, Some(n)) if n.status == NodeStatus::Stopping => {
                format!("node {id} stopping")
            }
            (scheduler::Bar::Down, Some(n)) if n.status == NodeStatus::Joining => {
                format!("node {id} joining")
            }
            _ => format!("node {id} {bar}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a throttle holding a job says: the bucket, its limit, and when the next start may be.
fn throttled(held: &scheduler::Held, now: u64) -> String {
    match held.limit {
        scheduler::Limit::Concurrency { limit, running } => format!(
            "throttle {} allows {limit} of its jobs running at once across the cluster; {running} run",
            held.bucket
        ),
        scheduler::Limit::Rate { rate, until_ms } => format!(
            "throttle {} allows {} start(s) per {:.3} s across the cluster; the next may start in {:.1} s",
            held.bucket,
            rate.starts,
            rate.window_ms as f64 / 1000.0,
            until_ms.saturating_sub(now) as f64 / 1000.0
        ),
    }
}

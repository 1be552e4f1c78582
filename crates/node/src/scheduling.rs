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
//! Cluster config read live on every pass (set with `chorus config set`):
//! `scheduler.strategy` (default `least-request`), `scheduler.cpu_threshold` (default 85) and
//! `node.{id}.weight` (default 1; a node's share under weighted round-robin, 0 for none).

use crate::{now_ms, Node};
use model::{Command, NodeStatus, State};
use scheduler::{Config, NodeView, PendingJob, Reason, SchedulerState};
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
    if !node.inner.registry.figures().is_leader {
        return (Vec::new(), Vec::new());
    }
    node.read(|s| {
        let nodes = view(s);
        if !due_placeable(s, &nodes, now_ms(), 1).0.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let config = config(s);
        let mut state = scheduler_state(node);
        let state = state.get_or_insert_with(|| SchedulerState::new(&config));
        // Placeholder ids: the real ones are assigned when the entry is applied.
        // Jobs whose backups start together are left to the loop: one node per job here.
        let pending: Vec<PendingJob> = specs
            .iter()
            .enumerate()
            .filter_map(|(i, spec)| {
                let f = s.function(&spec.function)?;
                (!f.keeps_all_attempts()).then(|| pending_job(model::JobId(u64::MAX - i as u64), f))
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

pub(crate) async fn run(node: Node) {
    let mut applied = node.inner.registry.applied();
    // When the next hedge falls due, as of the last pass; a new attempt is an applied change,
    // which starts a new pass, so this is never older than the attempts it is about.
    let mut next_hedge_ms: Option<u64> = None;
    // Functions whose queued jobs wait for the cluster to change, as last reported.
    let mut reported_waiting: BTreeMap<String, Reason> = BTreeMap::new();
    loop {
        let next_due = node.read(|s| s.next_due_ms().into_iter().chain(next_hedge_ms).min());
        let wait = next_due.map_or(IDLE_TICK, |due| {
            Duration::from_millis(due.saturating_sub(now_ms())).min(IDLE_TICK)
        });
        tokio::select! {
            () = node.inner.shutdown.cancelled() => return,
            changed = applied.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
        if !node.inner.registry.figures().is_leader {
            // A new leader starts from a fresh scheduler state.
            *scheduler_state(&node) = None;
            next_hedge_ms = None;
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
            let (placeable, seen) = due_placeable(s, &nodes, now, free as usize);
            verdicts = seen;
            due.extend(
                placeable
                    .iter()
                    .filter_map(|j| Some(pending_job(j.id, s.function(&j.function)?))),
            );
            if due.is_empty() {
                return None;
            }
            Some(scheduler::place(&config, state, &nodes, &due))
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

/// Due jobs the scheduler may place now, at most `limit`, highest priority first, passing
/// over jobs that wait for the cluster to change ([`scheduler::waits_for_cluster`]: no node
/// with their labels, too few usable nodes for their backups) or whose function is gone.
/// Without that, `limit` such jobs at the head of the queue would hold back every job behind
/// them. Also returns, for each function looked at, the reason its jobs wait (`None`: they
/// can be placed). Each function is judged once per call.
fn due_placeable<'s>(
    s: &'s State,
    nodes: &[NodeView],
    now: u64,
    limit: usize,
) -> (Vec<&'s model::Job>, BTreeMap<String, Option<Reason>>) {
    let mut verdicts: BTreeMap<&'s str, Option<Option<Reason>>> = BTreeMap::new();
    let due = s.due_jobs_where(now, limit, |job| {
        let verdict = verdicts.entry(job.function.as_str()).or_insert_with(|| {
            let f = s.function(&job.function)?;
            Some(scheduler::waits_for_cluster(&pending_job(job.id, f), nodes))
        });
        matches!(verdict, Some(None))
    });
    let seen = verdicts
        .into_iter()
        .filter_map(|(f, verdict)| Some((f.to_string(), verdict?)))
        .collect();
    (due, seen)
}

/// The `jobs_waiting` alerts to raise: one per function whose jobs newly wait for the
/// cluster, or wait for another reason than last reported. A function that can be placed
/// again is forgotten, so that it is reported if it gets stuck again.
fn report_waiting(
    reported: &mut BTreeMap<String, Reason>,
    verdicts: BTreeMap<String, Option<Reason>>,
) -> Vec<model::NewEvent> {
    let mut events = Vec::new();
    for (function, verdict) in verdicts {
        let Some(reason) = verdict else {
            reported.remove(&function);
            continue;
        };
        if reported.get(&function) == Some(&reason) {
            continue;
        }
        events.push(model::NewEvent {
            kind: model::EventKind::JobsWaiting,
            node: None,
            message: format!("queued jobs of function {function} wait for the cluster: {reason}"),
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

/// A job as the scheduler sees it: its function's strategy, labels and backups (started
/// together in mode `all`; a hedge is placed on its own, later).
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

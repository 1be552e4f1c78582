//! Node liveness, separate from raft's own heartbeats.
//!
//! - Every node proposes a `Heartbeat` with its load every [`HEARTBEAT_INTERVAL`].
//! - The leader scans the members every [`SCAN_INTERVAL`]: a node not heard from for
//!   [`DOWN_AFTER`] is marked down and its running attempts fail with `node_lost`, so they
//!   are retried elsewhere. The scan runs only while its node is leader; a deposed leader's
//!   proposals fail, which fences it by term.
//! - A node marked down that heartbeats again is up again.
//! - Stuck attempts on a live node are its own business, since only it knows when an attempt
//!   really began to run (prefetched ones wait for a slot): its watchdog stops an attempt busy
//!   far past its time-out (`stuck`), and a task that panicked is reported (`internal`); both
//!   are retried by policy (see `running`).
//! - When a voter has been down for [`PROMOTE_AFTER`] and a learner is up, the leader
//!   promotes the learner and demotes the dead voter, so the quorum heals itself.

use crate::{now_ms, Node};
use model::{Command, ErrorCode, NodeLoad, NodeStatus};
use std::time::Duration;

pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
const SCAN_INTERVAL: Duration = Duration::from_millis(250);
const DOWN_AFTER: Duration = Duration::from_millis(2_000);
const PROMOTE_AFTER: Duration = Duration::from_secs(10);
/// Weight of a new CPU sample in the smoothed figure.
const CPU_SMOOTHING: f64 = 0.3;

pub(crate) async fn heartbeat(node: Node) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    let mut cpu = CpuMeter::default();
    let mut cpu_percent = 0.0;
    loop {
        tokio::select! {
            () = node.inner.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(sample) = cpu.sample() {
            cpu_percent = CPU_SMOOTHING * sample + (1.0 - CPU_SMOOTHING) * cpu_percent;
        }
        let me = node.id();
        let running = node.read(|s| s.running_count(me)) as u32;
        let slots = node.inner.config.slots;
        let load = NodeLoad {
            cpu_percent,
            memory_used_bytes: memory_used_bytes().unwrap_or(0),
            running,
            free_slots: slots.saturating_sub(running),
            warm_workers: node
                .inner
                .executor
                .warm_workers()
                .into_iter()
                .map(|(k, v)| (k, v as u32))
                .collect(),
            prefetch: prefetch(
                slots,
                node.inner
                    .run_time_ewma_us
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
        };
        if let Err(e) = node
            .propose(Command::Heartbeat {
                node: me,
                now_ms: now_ms(),
                load,
            })
            .await
        {
            tracing::debug!(error = %e, "heartbeat not recorded");
        }
    }
}

pub(crate) async fn scan(node: Node) {
    let mut tick = tokio::time::interval(SCAN_INTERVAL);
    // When this node became leader: a new leader gives every node a full DOWN_AFTER before
    // judging it, since heartbeats may have been lost in the election.
    let mut leader_since: Option<u64> = None;
    loop {
        tokio::select! {
            () = node.inner.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !node.inner.registry.is_leader() {
            leader_since = None;
            continue;
        }
        let now = now_ms();
        let since = *leader_since.get_or_insert(now);
        let down_after_ms = DOWN_AFTER.as_millis() as u64;
        let lost: Vec<u64> = node.read(|s| {
            s.nodes()
                .filter(|n| !matches!(n.status, NodeStatus::Down | NodeStatus::Joining))
                .filter(|n| n.id != node.id())
                .filter(|n| now.saturating_sub(n.last_heartbeat_ms.max(since)) > down_after_ms)
                .map(|n| n.id)
                .collect()
        });
        for id in lost {
            tracing::warn!(
                node = id,
                "node missed its heartbeats; marking it down and failing over its attempts"
            );
            if let Err(e) = node.propose(fail_over(id, now)).await {
                tracing::warn!(node = id, error = %e, "could not fail the node over");
            }
        }
        promote_learners(&node, now).await;
        crate::membership::admit(&node, now).await;
    }
}

/// One log entry that marks a silent node down, fails its attempts over (`node_lost`, so
/// they are retried elsewhere at once) and records the event: either all of it happens or
/// none, and a scan that fails tries the whole again on its next tick.
fn fail_over(id: model::NodeId, now_ms: u64) -> Command {
    let message = format!(
        "node {id} missed its heartbeats for {} s: marked down, its attempts failed over",
        DOWN_AFTER.as_secs_f64()
    );
    Command::Batch(vec![
        Command::SetNodeStatus {
            node: id,
            status: NodeStatus::Down,
        },
        Command::AbandonAttempts {
            now_ms,
            node: id,
            code: ErrorCode::NodeLost.as_str().into(),
        },
        Command::RecordEvents {
            now_ms,
            events: vec![model::NewEvent {
                kind: model::EventKind::NodeLost,
                node: Some(id),
                message,
            }],
        },
    ])
}

/// Replaces voters that have been down for long with learners that are up.
async fn promote_learners(node: &Node, now: u64) {
    let members = node.members();
    let promote_after_ms = PROMOTE_AFTER.as_millis() as u64;
    let (dead_voters, live_learners) = node.read(|s| {
        let status = |id| s.node(id).map(|n| (n.status, n.last_heartbeat_ms));
        let dead: Vec<u64> = members
            .iter()
            .filter(|(_, role)| *role == registry::Role::Voter)
            .filter(|(id, _)| matches!(status(*id), Some((NodeStatus::Down, t)) if now.saturating_sub(t) > promote_after_ms))
            .map(|(id, _)| *id)
            .collect();
        let live: Vec<u64> = members
            .iter()
            .filter(|(_, role)| *role == registry::Role::Learner)
            .filter(|(id, _)| matches!(status(*id), Some((NodeStatus::Up, _))))
            .map(|(id, _)| *id)
            .collect();
        (dead, live)
    });
    for (dead, live) in dead_voters.into_iter().zip(live_learners) {
        tracing::warn!(
            dead,
            live,
            "promoting a learner in place of a voter that is gone"
        );
        let promoted = node
            .inner
            .registry
            .change_role(live, registry::Role::Voter)
            .await;
        let demoted = node
            .inner
            .registry
            .change_role(dead, registry::Role::Learner)
            .await;
        match promoted.and(demoted) {
            Ok(()) => {
                let message = format!(
                    "node {live} took the vote of node {dead}, down for over {} s",
                    PROMOTE_AFTER.as_secs()
                );
                node.record_events(vec![model::NewEvent {
                    kind: model::EventKind::VoterReplaced,
                    node: Some(live),
                    message,
                }])
                .await;
            }
            Err(e) => tracing::warn!(error = %e, "could not replace the voter"),
        }
    }
}

/// Attempts to hold waiting: enough to keep every slot busy for about
/// [`crate::scheduling::PREFETCH_WORK`] at the recent mean run time, at least one per slot.
fn prefetch(slots: u32, run_time_us: u64) -> u32 {
    let work_us = crate::scheduling::PREFETCH_WORK.as_micros() as u64;
    let per_slot = work_us / run_time_us.max(1);
    (u64::from(slots) * per_slot)
        .clamp(u64::from(slots), u64::from(crate::scheduling::PREFETCH_MAX)) as u32
}

/// Whole-machine CPU use from `/proc/stat`, between two calls.
#[derive(Debug, Default)]
struct CpuMeter {
    last: Option<(u64, u64)>,
}

impl CpuMeter {
    fn sample(&mut self) -> Option<f64> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = text
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let total: u64 = fields.iter().sum();
        // idle + iowait
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        let previous = self.last.replace((total, idle));
        let (t0, i0) = previous?;
        let dt = total.saturating_sub(t0);
        (dt > 0).then(|| 100.0 * (1.0 - idle.saturating_sub(i0) as f64 / dt as f64))
    }
}

fn memory_used_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((kib("MemTotal:")? - kib("MemAvailable:")?) * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{FunctionSpec, JobSpec, JobState, State};

    #[test]
    fn failing_a_node_over_is_one_entry_that_marks_it_down_and_requeues_its_attempts() {
        let mut state = State::default();
        state.apply(Command::DeployFunction {
            spec: FunctionSpec::builtin("noop"),
        });
        for id in [1, 2] {
            state.apply(Command::RegisterNode {
                id,
                addr: format!("n{id}"),
                slots: 1,
                labels: Default::default(),
                now_ms: 0,
            });
        }
        let spec = JobSpec {
            function: "noop".into(),
            input: serde_json::json!({}),
            files: vec![],
            priority: 0,
            idempotency_key: None,
        };
        state.apply(Command::SubmitJobs {
            now_ms: 0,
            jobs: vec![spec],
            place: vec![Some(2)],
        });
        assert_eq!(state.running_count(2), 1);
        let events_before = state.last_event_seq();

        let entry = fail_over(2, 5_000);
        assert!(matches!(entry, Command::Batch(_)), "one log entry");
        state.apply(entry);

        assert_eq!(state.node(2).map(|n| n.status), Some(NodeStatus::Down));
        assert_eq!(state.running_count(2), 0);
        let job = state.jobs_after(None).next().expect("the job");
        assert_eq!(job.state, JobState::Queued, "retried elsewhere");
        let code = job.attempts[0].error.as_ref().map(|e| e.code.as_str());
        assert_eq!(code, Some("node_lost"));
        assert_eq!(state.last_event_seq(), events_before + 1);
    }
}

//! The scheduling loop. Every node runs it; it acts only while its node is the leader, so
//! exactly one node places jobs at a time. Placement itself is the pure
//! [`scheduler::place`]; this loop feeds it and turns its answer into `StartAttempts`.
//!
//! A node holds up to `slots * (1 + PREFETCH_PER_SLOT)` attempts: `slots` running and the rest
//! waiting in the node for a free slot. Prefetching lets one log entry start many jobs, which
//! is what makes small jobs cheap; it costs nothing in fairness on one node.

use crate::{now_ms, Node};
use model::Command;
use scheduler::NodeView;
use std::time::Duration;

/// Attempts a node holds waiting per slot.
pub(crate) const PREFETCH_PER_SLOT: u32 = 32;
/// How often the loop looks even if nothing changed (delayed retries becoming due).
const IDLE_TICK: Duration = Duration::from_millis(500);

pub(crate) async fn run(node: Node) {
    let mut applied = node.inner.registry.applied();
    loop {
        let next_due = node.read(|s| s.next_due_ms());
        let wait = next_due.map_or(IDLE_TICK, |due| Duration::from_millis(due.saturating_sub(now_ms())).min(IDLE_TICK));
        tokio::select! {
            () = node.inner.shutdown.cancelled() => return,
            changed = applied.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
        if !node.inner.registry.figures().is_leader {
            continue;
        }
        let now = now_ms();
        let placement = node.read(|s| {
            let nodes: Vec<NodeView> = s
                .nodes()
                .map(|n| NodeView {
                    id: n.id,
                    capacity: n.slots.saturating_mul(1 + PREFETCH_PER_SLOT),
                    assigned: s.running_count(n.id) as u32,
                })
                .collect();
            let free: u32 = nodes.iter().map(|n| n.capacity.saturating_sub(n.assigned)).sum();
            if free == 0 {
                return Vec::new();
            }
            let due: Vec<_> = s.due_jobs(now, free as usize).iter().map(|j| j.id).collect();
            scheduler::place(&nodes, &due)
        });
        for (target, jobs) in placement {
            if let Err(e) = node.propose(Command::StartAttempts { now_ms: now, node: target, jobs }).await {
                tracing::warn!(error = %e, "could not start attempts");
                break;
            }
        }
    }
}

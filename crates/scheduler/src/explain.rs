//! Why a queued job does not start: what an operator asks of `chorus jobs get`. Pure, like
//! [`crate::place`], and built on the same rules: a node takes a job only if it carries the
//! job's labels, is not excluded, is up, not draining, of non-zero weight, has room and a
//! closed breaker.

use crate::breaker::Breaker;
use crate::place::{in_group, NodeView, PendingJob, SchedulerState, Throttles};
use model::throttle::Held;
use model::NodeId;

/// Why one node that carries a job's labels does not take it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    /// Not reachable, or still joining.
    Down,
    /// Leaving (an operator's drain or a graceful stop): it finishes what it holds.
    Draining,
    /// Weight 0 takes a node out of rotation.
    ZeroWeight,
    /// It holds as many attempts as it may.
    Full { assigned: u32, capacity: u32 },
    /// Its CPU breaker is open.
    BreakerOpen,
}

/// What [`explain`] finds for one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Explanation {
    /// No node carries every label the job requires (or every one that does is excluded).
    NoNodeWithLabels,
    /// The job needs `wanted` distinct nodes that can take work; fewer exist. `bars` says,
    /// node by node, why each labelled node that cannot is out.
    TooFewNodes {
        wanted: u32,
        bars: Vec<(NodeId, Bar)>,
    },
    /// A cluster-wide throttle holds it (checked once the cluster has the nodes it needs, as
    /// `place` does).
    Throttled(Held),
    /// Enough nodes exist, but fewer than `wanted` have room and a closed breaker now.
    Busy {
        wanted: u32,
        bars: Vec<(NodeId, Bar)>,
    },
    /// Nodes can take it now: it waits for the scheduler's next pass, behind the jobs ahead.
    Placeable,
}

/// Why `job` has not started on `views`, judged as [`crate::place_throttled`] would judge it
/// now with the breakers in `state` and the buckets' usage in `throttles`. Nodes come out in
/// id order.
pub fn explain(
    job: &PendingJob,
    views: &[NodeView],
    state: &SchedulerState,
    throttles: &Throttles,
) -> Explanation {
    let mut members: Vec<&NodeView> = views.iter().filter(|v| in_group(v, job)).collect();
    members.sort_by_key(|v| v.id);
    if members.is_empty() {
        return Explanation::NoNodeWithLabels;
    }
    let wanted = job.backups.saturating_add(1);
    let structural = |v: &NodeView| {
        if !v.up {
            Some(Bar::Down)
        } else if v.draining {
            Some(Bar::Draining)
        } else if v.weight == 0 {
            Some(Bar::ZeroWeight)
        } else {
            None
        }
    };
    let usable = members.iter().filter(|v| structural(v).is_none()).count() as u32;
    if usable < wanted {
        let bars = members
            .iter()
            .filter_map(|v| Some((v.id, structural(v)?)))
            .collect();
        return Explanation::TooFewNodes { wanted, bars };
    }
    if let Err(held) = throttles.check(job) {
        return Explanation::Throttled(held);
    }
    // `place` ignores open breakers when every usable node's is open (refusing all work
    // would stall the cluster), so an open breaker bars a node only while another is closed.
    let open = |v: &NodeView| state.breakers.get(&v.id) == Some(&Breaker::Open);
    let any_closed = views
        .iter()
        .any(|v| v.up && !v.draining && v.weight > 0 && !open(v));
    let busy = |v: &NodeView| {
        if v.assigned >= v.capacity {
            Some(Bar::Full {
                assigned: v.assigned,
                capacity: v.capacity,
            })
        } else if any_closed && open(v) {
            Some(Bar::BreakerOpen)
        } else {
            None
        }
    };
    let available = members
        .iter()
        .filter(|v| structural(v).is_none() && busy(v).is_none())
        .count() as u32;
    if available < wanted {
        let bars = members
            .iter()
            .filter_map(|v| Some((v.id, structural(v).or_else(|| busy(v))?)))
            .collect();
        return Explanation::Busy { wanted, bars };
    }
    Explanation::Placeable
}

impl std::fmt::Display for Bar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bar::Down => f.write_str("down"),
            Bar::Draining => f.write_str("draining"),
            Bar::ZeroWeight => f.write_str("weight 0"),
            Bar::Full { assigned, capacity } => {
                write!(f, "full ({assigned} of {capacity} attempts held)")
            }
            Bar::BreakerOpen => f.write_str("CPU breaker open"),
        }
    }
}

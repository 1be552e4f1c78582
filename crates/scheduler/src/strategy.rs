//! The placement strategies: how one attempt picks its node among the candidates (nodes that
//! are usable, carry the job's labels, have a closed breaker and a free slot, and do not
//! already hold an attempt of the same job). See the crate docs for what each one is for.

use crate::place::Slot;
use crate::splitmix::SplitMix64;
use model::Strategy;
use std::cmp::Ordering;

/// Picks one of `candidates` (indices into `slots`, in node id order, never empty) and
/// returns its index into `slots`. Only weighted round-robin writes to `slots` (its
/// current weights); counting the attempt is the caller's job.
pub(crate) fn pick(
    strategy: Strategy,
    slots: &mut [Slot],
    candidates: &[usize],
    rng: &mut SplitMix64,
) -> usize {
    assert!(
        !candidates.is_empty(),
        "a pick needs at least one candidate"
    );
    match strategy {
        Strategy::LeastRequest => two_choices(slots, candidates, rng),
        Strategy::CpuLoad => min_by(slots, candidates, |a, b| {
            a.cpu_percent
                .total_cmp(&b.cpu_percent)
                .then_with(|| share_cmp(a, b))
        }),
        Strategy::Concurrency => min_by(slots, candidates, share_cmp),
        Strategy::WeightedRoundRobin => smooth_round_robin(slots, candidates),
        Strategy::Random => candidates[rng.below(candidates.len())],
    }
}

/// Compares assigned/capacity exactly: `a/b < c/d` exactly when `a*d < c*b`. Candidates always
/// have a free slot, so no capacity is zero.
fn share_cmp(a: &Slot, b: &Slot) -> Ordering {
    let lhs = u64::from(a.assigned) * u64::from(b.capacity);
    let rhs = u64::from(b.assigned) * u64::from(a.capacity);
    lhs.cmp(&rhs)
}

/// The first candidate (so the lowest node id) among the least by `cmp`.
fn min_by(slots: &[Slot], candidates: &[usize], cmp: impl Fn(&Slot, &Slot) -> Ordering) -> usize {
    let mut best = candidates[0];
    for &i in &candidates[1..] {
        if cmp(&slots[i], &slots[best]) == Ordering::Less {
            best = i;
        }
    }
    best
}

/// Power of two choices: draw two distinct candidates and keep the one with the lower
/// assigned/capacity; on a tie the higher weight, then the first drawn. Looking at two random
/// nodes instead of all of them keeps a leader with stale counts from sending every job to
/// the same "emptiest" node, while still avoiding the loaded ones.
fn two_choices(slots: &[Slot], candidates: &[usize], rng: &mut SplitMix64) -> usize {
    if candidates.len() == 1 {
        return candidates[0];
    }
    let first = rng.below(candidates.len());
    let mut second = rng.below(candidates.len() - 1);
    if second >= first {
        second += 1;
    }
    let (a, b) = (candidates[first], candidates[second]);
    let order = share_cmp(&slots[a], &slots[b]).then_with(|| slots[b].weight.cmp(&slots[a].weight));
    if order == Ordering::Greater {
        b
    } else {
        a
    }
}

/// Smooth weighted round-robin (nginx `ngx_http_upstream_get_peer`): every candidate's current
/// weight grows by its weight, the largest wins (the first on a tie) and loses the sum of the
/// weights. Over any run of `sum(weights)` picks each node is chosen exactly `weight` times,
/// and the picks are interleaved rather than bunched.
fn smooth_round_robin(slots: &mut [Slot], candidates: &[usize]) -> usize {
    let mut total: i64 = 0;
    let mut best = candidates[0];
    for &i in candidates {
        let weight = i64::from(slots[i].weight);
        slots[i].round_robin_weight += weight;
        total += weight;
        if slots[i].round_robin_weight > slots[best].round_robin_weight {
            best = i;
        }
    }
    slots[best].round_robin_weight -= total;
    best
}

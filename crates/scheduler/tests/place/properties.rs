//! Property tests of `place` over random clusters and queues: its documented invariants hold
//! whatever the nodes, jobs, strategies and breaker states, call after call.
//! 256 cases (proptest's default, well under a second); more with `PROPTEST_CASES=50000`.

use model::{JobId, NodeId};
use proptest::prelude::*;
use scheduler::{
    place, waits_for_cluster, Breaker, Config, NodeView, PendingJob, Placement, Reason,
    SchedulerState,
};
// The prelude's `Strategy` is proptest's generator trait; the scheduler's goes by its path.
use scheduler::Strategy as Placing;
use std::collections::{BTreeMap, BTreeSet};

/// Labels nodes carry and jobs require.
const LABELS: [&str; 2] = ["gpu", "pool=a"];
/// Node ids are drawn below this (so ids are sparse, and excluded ids may name no node).
const NODE_ID_MAX: u64 = 12;

fn labels() -> impl Strategy<Value = BTreeSet<String>> {
    prop::collection::btree_set(prop::sample::select(&LABELS[..]), 0..=2)
        .prop_map(|set| set.into_iter().map(String::from).collect())
}

fn strategy() -> impl Strategy<Value = Placing> {
    prop::sample::select(&Placing::ALL[..])
}

fn node(id: NodeId) -> impl Strategy<Value = NodeView> {
    (
        0..6u32,
        // Mostly idle, sometimes full or past full (capacity fell after a change).
        prop_oneof![3 => Just(0u32), 2 => 0..7u32],
        prop::sample::select(&[0u32, 1, 1, 2, 3][..]),
        labels(),
        0.0..100.0f64,
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.15),
    )
        .prop_map(
            move |(capacity, assigned, weight, labels, cpu_percent, up, draining)| NodeView {
                id,
                capacity,
                assigned,
                weight,
                labels,
                cpu_percent,
                up,
                draining,
            },
        )
}

fn nodes() -> impl Strategy<Value = Vec<NodeView>> {
    prop::collection::btree_set(1..NODE_ID_MAX, 0..8)
        .prop_flat_map(|ids| ids.into_iter().map(node).collect::<Vec<_>>().prop_shuffle())
}

fn jobs() -> impl Strategy<Value = Vec<PendingJob>> {
    let job = (
        prop::option::weighted(0.5, strategy()),
        prop::option::weighted(0.3, labels()).prop_map(Option::unwrap_or_default),
        prop::sample::select(&[0u32, 0, 0, 1, 2, 3][..]),
        prop::collection::btree_set(1..NODE_ID_MAX, 0..3),
        prop::bool::weighted(0.2),
    );
    prop::collection::vec(job, 0..30).prop_map(|jobs| {
        jobs.into_iter()
            .enumerate()
            .map(
                |(i, (strategy, required_labels, backups, excluded, hedge))| PendingJob {
                    id: JobId(i as u64 + 1),
                    strategy,
                    required_labels,
                    backups,
                    // Only a hedge excludes nodes: the ones its job runs on.
                    excluded: if hedge { excluded } else { BTreeSet::new() },
                    throttles: Vec::new(),
                },
            )
            .collect()
    })
}

fn config() -> impl Strategy<Value = Config> {
    (strategy(), 50.0..100.0f64, 0.0..20.0f64, any::<u64>()).prop_map(
        |(default_strategy, cpu_threshold_percent, cpu_hysteresis_percent, seed)| Config {
            default_strategy,
            cpu_threshold_percent,
            cpu_hysteresis_percent,
            seed,
        },
    )
}

fn usable(n: &NodeView) -> bool {
    n.up && !n.draining && n.weight > 0
}

/// Checks one call's placement against its inputs and the breakers after the call.
fn check_placement(
    nodes: &[NodeView],
    jobs: &[PendingJob],
    breakers: &BTreeMap<NodeId, Breaker>,
    placement: &Placement,
) -> Result<(), TestCaseError> {
    let views: BTreeMap<NodeId, &NodeView> = nodes.iter().map(|n| (n.id, n)).collect();
    let open = |id: &NodeId| breakers.get(id) == Some(&Breaker::Open);
    // Open breakers are passed over unless every usable node is hot.
    let some_cool = nodes.iter().any(|n| usable(n) && !open(&n.id));
    let mut nodes_of: BTreeMap<JobId, Vec<NodeId>> = BTreeMap::new();
    let ids: Vec<NodeId> = placement.attempts.iter().map(|(id, _)| *id).collect();
    prop_assert!(ids.windows(2).all(|w| w[0] < w[1]), "nodes in id order");
    for (id, placed) in &placement.attempts {
        let view = views
            .get(id)
            .ok_or_else(|| TestCaseError::fail("placed on no node"))?;
        prop_assert!(
            usable(view),
            "placed on node {} that is down, draining or of weight 0",
            id
        );
        prop_assert!(
            !(some_cool && open(id)),
            "placed on node {} with an open breaker",
            id
        );
        prop_assert!(
            placed.len() as u32 <= view.capacity.saturating_sub(view.assigned),
            "node {} got {} with {}/{} held",
            id,
            placed.len(),
            view.assigned,
            view.capacity
        );
        for job in placed {
            nodes_of.entry(*job).or_default().push(*id);
        }
    }
    let unplaced: BTreeMap<JobId, Reason> = placement
        .unplaced
        .iter()
        .map(|u| (u.job, u.reason.clone()))
        .collect();
    prop_assert_eq!(
        unplaced.len(),
        placement.unplaced.len(),
        "a job unplaced twice"
    );
    for job in jobs {
        let on = nodes_of.remove(&job.id).unwrap_or_default();
        let cluster_reason = waits_for_cluster(job, nodes);
        match unplaced.get(&job.id) {
            Some(reason) => {
                prop_assert!(on.is_empty(), "job {} both placed and unplaced", job.id);
                // The reasons that no free slot can cure are exactly waits_for_cluster's.
                let structural = !matches!(reason, Reason::Busy { .. });
                prop_assert_eq!(cluster_reason, structural.then(|| reason.clone()));
            }
            None => {
                prop_assert_eq!(
                    on.len() as u32,
                    1 + job.backups,
                    "job {} on {:?}",
                    job.id,
                    on
                );
                let distinct: BTreeSet<&NodeId> = on.iter().collect();
                prop_assert_eq!(distinct.len(), on.len(), "job {} twice on a node", job.id);
                for id in &on {
                    prop_assert!(job.required_labels.is_subset(&views[id].labels));
                    prop_assert!(
                        !job.excluded.contains(id),
                        "job {} on excluded {}",
                        job.id,
                        id
                    );
                }
                prop_assert_eq!(cluster_reason, None);
            }
        }
    }
    prop_assert!(
        nodes_of.is_empty(),
        "placed jobs that were not asked for: {:?}",
        nodes_of
    );
    Ok(())
}

proptest! {
    /// Two calls in a row (the state, breakers and rotation, carried over, as a leader does),
    /// each checked, and each repeated on a copy of the state with the nodes in reverse order:
    /// the same placement and the same new state.
    #[test]
    fn placements_keep_their_invariants_and_are_deterministic(
        config in config(),
        rounds in prop::collection::vec((nodes(), jobs()), 2),
    ) {
        let mut state = SchedulerState::new(&config);
        for (nodes, jobs) in &rounds {
            let mut again = state.clone();
            let placement = place(&config, &mut state, nodes, jobs);
            check_placement(nodes, jobs, &state.breakers, &placement)?;
            let reversed: Vec<NodeView> = nodes.iter().rev().cloned().collect();
            prop_assert_eq!(place(&config, &mut again, &reversed, jobs), placement);
            prop_assert_eq!(&again, &state);
        }
    }
}

/// The generator reaches what the property is about: jobs placed with backups, every reason
/// to leave a job queued, breakers that open. Sampled with a fixed seed.
#[test]
fn the_generator_reaches_every_outcome() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut reasons = std::collections::HashSet::new();
    let (mut with_backups, mut opened) = (0, 0);
    for _ in 0..300 {
        let config = config().new_tree(&mut runner).expect("a config").current();
        let (nodes, jobs) = (nodes(), jobs())
            .new_tree(&mut runner)
            .expect("a call")
            .current();
        let placement = place(&config, &mut SchedulerState::new(&config), &nodes, &jobs);
        let placed: BTreeSet<JobId> = placement
            .attempts
            .iter()
            .flat_map(|(_, j)| j.clone())
            .collect();
        with_backups += jobs
            .iter()
            .filter(|j| j.backups > 0 && placed.contains(&j.id))
            .count();
        opened += placement.breaker_changes.len();
        reasons.extend(
            placement
                .unplaced
                .iter()
                .map(|u| std::mem::discriminant(&u.reason)),
        );
    }
    assert_eq!(reasons.len(), 4, "every kind of reason");
    assert!(
        with_backups > 50 && opened > 50,
        "backups {with_backups}, breakers {opened}"
    );
}

proptest! {
    /// `explain` agrees with `place` for a job placed on its own: it calls a job placeable
    /// exactly when `place` places it, and names a node as barred only for a reason `place`
    /// keeps to (down, draining, weight 0, full, open breaker while a usable one is closed).
    #[test]
    fn explain_agrees_with_place(
        config in config(),
        nodes in nodes(),
        jobs in jobs(),
    ) {
        for job in &jobs {
            let mut state = SchedulerState::new(&config);
            let placement = place(&config, &mut state, &nodes, std::slice::from_ref(job));
            let placed = placement.unplaced.is_empty();
            // `place` stepped the breakers before placing: explain with the state it used.
            let explanation = scheduler::explain(job, &nodes, &state, &scheduler::Throttles::new(0));
            prop_assert_eq!(
                matches!(explanation, scheduler::Explanation::Placeable),
                placed,
                "job {:?}: {:?} but placed = {}",
                job,
                explanation,
                placed
            );
            if let scheduler::Explanation::TooFewNodes { bars, .. }
            | scheduler::Explanation::Busy { bars, .. } = &explanation
            {
                for (id, bar) in bars {
                    let view = nodes.iter().find(|n| n.id == *id).unwrap();
                    prop_assert!(job.required_labels.is_subset(&view.labels));
                    let holds = match bar {
                        scheduler::Bar::Down => !view.up,
                        scheduler::Bar::Draining => view.up && view.draining,
                        scheduler::Bar::ZeroWeight => view.weight == 0,
                        scheduler::Bar::Full { assigned, capacity } => {
                            *assigned == view.assigned && *capacity == view.capacity
                                && view.assigned >= view.capacity
                        }
                        scheduler::Bar::BreakerOpen => {
                            state.breakers.get(id) == Some(&Breaker::Open)
                        }
                    };
                    prop_assert!(holds, "node {} barred as {:?}: {:?}", id, bar, view);
                }
            }
        }
    }
}

/// Buckets the throttled jobs share, each with a fixed limit (as one spec gives them).
fn bucket_throttle(i: usize) -> model::throttle::Throttle {
    let (concurrency, rate) = [
        (Some(1), None),
        (Some(3), Some(model::throttle::Rate::per_s(2.0))),
        (None, Some(model::throttle::Rate::per_s(0.5))),
    ][i];
    model::throttle::Throttle {
        bucket: format!("b{i}"),
        concurrency,
        rate,
    }
}

proptest! {
    /// Whatever the usage the state holds and however many jobs of a bucket are due, one call
    /// places no more of a bucket than its concurrency leaves, nor more starts than its rate
    /// leaves in the window; and `explain` calls a lone job placeable exactly when `place`
    /// places it.
    #[test]
    fn throttles_hold_within_one_call(
        config in config(),
        nodes in nodes(),
        jobs in jobs(),
        per_job in prop::collection::vec(prop::collection::btree_set(0..3usize, 0..=2), 30),
        usage in prop::collection::vec((0..4u32, prop::collection::vec(0..3_000u64, 0..3)), 3),
        now_ms in 0..3_000u64,
    ) {
        let jobs: Vec<PendingJob> = jobs
            .into_iter()
            .zip(per_job)
            .map(|(mut job, buckets)| {
                job.throttles = buckets.into_iter().map(bucket_throttle).collect();
                job
            })
            .collect();
        let mut throttles = scheduler::Throttles::new(now_ms);
        for (i, (running, mut starts)) in usage.iter().cloned().enumerate() {
            starts.sort_unstable();
            starts.retain(|t| *t <= now_ms);
            throttles.set(&format!("b{i}"), running, &starts.into_iter().collect());
        }
        let before = throttles.clone();
        let mut state = SchedulerState::new(&config);
        let placement =
            scheduler::place_throttled(&config, &mut state, &nodes, &jobs, &mut throttles);
        let placed: BTreeSet<JobId> =
            placement.attempts.iter().flat_map(|(_, j)| j.iter().copied()).collect();
        for (i, (running, starts)) in usage.iter().enumerate() {
            let t = bucket_throttle(i);
            let count = jobs
                .iter()
                .filter(|j| placed.contains(&j.id) && j.throttles.contains(&t))
                .count() as u32;
            if let Some(limit) = t.concurrency {
                prop_assert!(
                    count == 0 || running + count <= limit,
                    "bucket {}: {} running, {} placed, limit {}", i, running, count, limit
                );
            }
            if let Some(rate) = t.rate {
                let in_window = starts
                    .iter()
                    .filter(|s| **s <= now_ms && **s + rate.window_ms > now_ms)
                    .count() as u32;
                prop_assert!(
                    count == 0 || in_window + count <= rate.starts,
                    "bucket {}: {} starts in the window, {} placed, rate {:?}",
                    i, in_window, count, rate
                );
            }
        }
        for job in &jobs {
            let mut state = SchedulerState::new(&config);
            let mut alone = before.clone();
            let placement = scheduler::place_throttled(
                &config, &mut state, &nodes, std::slice::from_ref(job), &mut alone,
            );
            let explanation = scheduler::explain(job, &nodes, &state, &before);
            prop_assert_eq!(
                matches!(explanation, scheduler::Explanation::Placeable),
                placement.unplaced.is_empty()
            );
            if let Some(u) = placement.unplaced.first() {
                prop_assert_eq!(
                    matches!(u.reason, Reason::Throttled(_)),
                    matches!(explanation, scheduler::Explanation::Throttled(_))
                );
            }
        }
    }
}

//! The scheduler's behaviour, data in and snapshot out: one `check_*` helper per feature
//! (distribution per strategy, labels, backups, breaker, node availability, smoothing).

#[path = "place/properties.rs"]
mod properties;

use expect_test::{expect, Expect};
use model::throttle::{self, Rate, Throttle};
use model::{JobId, NodeId};
use scheduler::{
    place, place_throttled, smooth, Config, NodeView, PendingJob, Placement, SchedulerState,
    Strategy, Throttles,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

const SEED: u64 = 42;

fn config(strategy: Strategy) -> Config {
    Config {
        default_strategy: strategy,
        seed: SEED,
        ..Config::default()
    }
}

fn labels(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|l| l.to_string()).collect()
}

fn jobs(count: u64) -> Vec<PendingJob> {
    (1..=count).map(|id| PendingJob::new(JobId(id))).collect()
}

fn counts(placement: &Placement) -> BTreeMap<NodeId, usize> {
    placement
        .attempts
        .iter()
        .map(|(node, jobs)| (*node, jobs.len()))
        .collect()
}

/// Every node with its count (0 included), then the unplaced jobs by reason.
fn render_counts(nodes: &[NodeView], placement: &Placement) -> String {
    let counts = counts(placement);
    let mut lines: Vec<String> = nodes
        .iter()
        .map(|n| format!("node {}: {}", n.id, counts.get(&n.id).copied().unwrap_or(0)))
        .collect();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for unplaced in &placement.unplaced {
        *reasons.entry(unplaced.reason.to_string()).or_default() += 1;
    }
    lines.extend(
        reasons
            .iter()
            .map(|(reason, count)| format!("unplaced {count}: {reason}")),
    );
    lines.join("\n")
}

/// Each node with the ids it got, then each unplaced job with its reason.
fn render_jobs(placement: &Placement) -> String {
    let mut lines: Vec<String> = placement
        .attempts
        .iter()
        .map(|(node, jobs)| {
            format!(
                "node {node}: {:?}",
                jobs.iter().map(|j| j.0).collect::<Vec<_>>()
            )
        })
        .collect();
    lines.extend(
        placement
            .unplaced
            .iter()
            .map(|u| format!("job {}: {}", u.job, u.reason)),
    );
    lines.join("\n")
}

/// Asserts what holds for every placement: no node over its capacity, attempts of one job on
/// distinct nodes, every job either placed with all its attempts or reported unplaced.
fn must_be_consistent(nodes: &[NodeView], jobs: &[PendingJob], placement: &Placement) {
    let mut attempts_per_job: BTreeMap<JobId, usize> = BTreeMap::new();
    for (node, placed) in &placement.attempts {
        let view = nodes.iter().find(|n| n.id == *node).unwrap();
        assert!(
            view.assigned as usize + placed.len() <= view.capacity as usize,
            "node {node} over capacity"
        );
        assert!(view.up && !view.draining, "node {node} is not usable");
        let distinct: BTreeSet<_> = placed.iter().collect();
        assert_eq!(distinct.len(), placed.len(), "a job twice on node {node}");
        for job in placed {
            *attempts_per_job.entry(*job).or_default() += 1;
        }
    }
    let unplaced: BTreeSet<JobId> = placement.unplaced.iter().map(|u| u.job).collect();
    for job in jobs {
        let attempts = attempts_per_job.get(&job.id).copied().unwrap_or(0);
        if unplaced.contains(&job.id) {
            assert_eq!(attempts, 0, "job {} unplaced but has attempts", job.id);
        } else {
            assert_eq!(
                attempts,
                1 + job.backups as usize,
                "job {} has the wrong number of attempts",
                job.id
            );
        }
    }
}

fn run(
    config: &Config,
    state: &mut SchedulerState,
    nodes: &[NodeView],
    jobs: &[PendingJob],
) -> Placement {
    let placement = place(config, state, nodes, jobs);
    must_be_consistent(nodes, jobs, &placement);
    placement
}

// --- distribution -------------------------------------------------------------------------

fn check_distribution(
    strategy: Strategy,
    nodes: &[NodeView],
    job_count: u64,
    expected: Expect,
) -> BTreeMap<NodeId, usize> {
    let config = config(strategy);
    let placement = run(
        &config,
        &mut SchedulerState::new(&config),
        nodes,
        &jobs(job_count),
    );
    expected.assert_eq(&render_counts(nodes, &placement));
    counts(&placement)
}

#[test]
fn least_request_avoids_loaded_and_full_nodes() {
    let nodes = [
        NodeView::new(1, 500, 0),
        NodeView::new(2, 500, 200),
        NodeView::new(3, 100, 100), // full from the start
        NodeView::new(4, 50, 0),    // small: must never go over its 50
        NodeView::new(5, 1000, 0),
    ];
    let counts = check_distribution(
        Strategy::LeastRequest,
        &nodes,
        1000,
        expect![[r#"
            node 1: 332
            node 2: 137
            node 3: 0
            node 4: 34
            node 5: 497"#]],
    );
    assert_eq!(counts.get(&3), None, "a full node got work");
    assert!(counts[&4] <= 50);
    assert_eq!(counts.values().sum::<usize>(), 1000);
}

#[test]
fn cpu_load_fills_the_coolest_node_first() {
    let mut nodes = [
        NodeView::new(1, 400, 0),
        NodeView::new(2, 400, 0),
        NodeView::new(3, 400, 0),
    ];
    for (node, cpu_percent) in nodes.iter_mut().zip([30.0, 10.0, 20.0]) {
        node.cpu_percent = cpu_percent;
    }
    check_distribution(
        Strategy::CpuLoad,
        &nodes,
        1000,
        expect![[r#"
            node 1: 200
            node 2: 400
            node 3: 400"#]],
    );
}

#[test]
fn concurrency_evens_out_assigned_over_capacity() {
    let nodes = [
        NodeView::new(1, 200, 0),
        NodeView::new(2, 400, 0),
        NodeView::new(3, 600, 0),
        NodeView::new(4, 800, 100),
    ];
    check_distribution(
        Strategy::Concurrency,
        &nodes,
        1000,
        expect![[r#"
            node 1: 110
            node 2: 220
            node 3: 330
            node 4: 340"#]],
    );
}

/// The scheduler's original least-request, kept as `concurrency`: the same answers as before.
fn check_original(nodes: &[(NodeId, u32, u32)], job_count: u64, expected: Expect) {
    let nodes: Vec<NodeView> = nodes
        .iter()
        .map(|&(id, capacity, assigned)| NodeView::new(id, capacity, assigned))
        .collect();
    let config = config(Strategy::Concurrency);
    let placement = run(
        &config,
        &mut SchedulerState::new(&config),
        &nodes,
        &jobs(job_count),
    );
    let attempts = Placement {
        unplaced: Vec::new(),
        ..placement
    };
    expected.assert_eq(&render_jobs(&attempts));
}

#[test]
fn concurrency_keeps_the_original_answers() {
    check_original(&[(1, 3, 0)], 5, expect!["node 1: [1, 2, 3]"]);
    check_original(&[(1, 3, 3)], 5, expect![""]);
    check_original(
        &[(1, 4, 0), (2, 4, 2)],
        4,
        expect![[r#"
        node 1: [1, 2, 3]
        node 2: [4]"#]],
    );
    check_original(
        &[(1, 2, 0), (2, 8, 0)],
        5,
        expect![[r#"
        node 1: [1]
        node 2: [2, 3, 4, 5]"#]],
    );
}

#[test]
fn weighted_round_robin_matches_weights_exactly() {
    let mut nodes = [
        NodeView::new(1, 1000, 0),
        NodeView::new(2, 1000, 0),
        NodeView::new(3, 1000, 0),
        NodeView::new(4, 1000, 0),
    ];
    for (node, weight) in nodes.iter_mut().zip([4, 3, 2, 1]) {
        node.weight = weight;
    }
    let counts = check_distribution(
        Strategy::WeightedRoundRobin,
        &nodes,
        1000,
        expect![[r#"
            node 1: 400
            node 2: 300
            node 3: 200
            node 4: 100"#]],
    );
    for node in &nodes {
        assert_eq!(counts[&node.id], 100 * node.weight as usize);
    }
}

#[test]
fn weighted_round_robin_interleaves_and_carries_over_calls() {
    let mut nodes = [
        NodeView::new(1, 100, 0),
        NodeView::new(2, 100, 0),
        NodeView::new(3, 100, 0),
    ];
    for (node, weight) in nodes.iter_mut().zip([5, 1, 1]) {
        node.weight = weight;
    }
    let config = config(Strategy::WeightedRoundRobin);
    let mut state = SchedulerState::new(&config);
    // One job per call: the rotation must live in the state, not in the call.
    let picks: Vec<String> = (1..=14)
        .map(|id| {
            let placement = run(&config, &mut state, &nodes, &[PendingJob::new(JobId(id))]);
            placement.attempts[0].0.to_string()
        })
        .collect();
    // nginx's documented sequence for weights 5, 1, 1 is a a b a c a a.
    expect!["1 1 2 1 3 1 1 1 1 2 1 3 1 1"].assert_eq(&picks.join(" "));
}

#[test]
fn random_spreads_evenly_within_a_tolerance() {
    let nodes = [
        NodeView::new(1, 1000, 0),
        NodeView::new(2, 1000, 0),
        NodeView::new(3, 1000, 0),
        NodeView::new(4, 1000, 0),
    ];
    let counts = check_distribution(
        Strategy::Random,
        &nodes,
        1000,
        expect![[r#"
            node 1: 273
            node 2: 252
            node 3: 230
            node 4: 245"#]],
    );
    // 250 each expected; one standard deviation is about 14.
    for count in counts.values() {
        assert!(count.abs_diff(250) < 60, "{counts:?}");
    }
}

#[test]
fn every_strategy_stops_at_capacity_and_reports_the_rest() {
    let nodes = [
        NodeView::new(1, 300, 0),
        NodeView::new(2, 300, 100),
        NodeView::new(3, 300, 0),
    ];
    let got: Vec<String> = Strategy::ALL
        .iter()
        .map(|&strategy| {
            let config = config(strategy);
            let placement = run(
                &config,
                &mut SchedulerState::new(&config),
                &nodes,
                &jobs(1000),
            );
            format!(
                "{strategy}: {}",
                render_counts(&nodes, &placement).replace('\n', ", ")
            )
        })
        .collect();
    expect![[r#"
        least-request: node 1: 300, node 2: 200, node 3: 300, unplaced 200: needs 1 distinct nodes with room and a closed breaker; there are 0 now
        cpu-load: node 1: 300, node 2: 200, node 3: 300, unplaced 200: needs 1 distinct nodes with room and a closed breaker; there are 0 now
        concurrency: node 1: 300, node 2: 200, node 3: 300, unplaced 200: needs 1 distinct nodes with room and a closed breaker; there are 0 now
        weighted-round-robin: node 1: 300, node 2: 200, node 3: 300, unplaced 200: needs 1 distinct nodes with room and a closed breaker; there are 0 now
        random: node 1: 300, node 2: 200, node 3: 300, unplaced 200: needs 1 distinct nodes with room and a closed breaker; there are 0 now"#]]
    .assert_eq(&got.join("\n"));
}

#[test]
fn the_same_inputs_give_the_same_placement() {
    let nodes = [
        NodeView::new(3, 500, 0),
        NodeView::new(1, 500, 10),
        NodeView::new(2, 500, 20),
    ];
    let mut reversed = nodes.clone();
    reversed.reverse();
    for strategy in Strategy::ALL {
        let config = config(strategy);
        let (mut a, mut b) = (SchedulerState::new(&config), SchedulerState::new(&config));
        let first = run(&config, &mut a, &nodes, &jobs(700));
        let second = run(&config, &mut b, &reversed, &jobs(700));
        assert_eq!(first, second, "{strategy}");
        assert_eq!(a, b, "{strategy}");
    }
}

#[test]
fn a_job_can_override_the_default_strategy() {
    let mut nodes = [NodeView::new(1, 10, 0), NodeView::new(2, 10, 5)];
    nodes[0].cpu_percent = 70.0;
    nodes[1].cpu_percent = 5.0;
    let config = config(Strategy::Concurrency);
    let mut jobs = jobs(2);
    jobs[1].strategy = Some(Strategy::CpuLoad);
    let placement = run(&config, &mut SchedulerState::new(&config), &nodes, &jobs);
    expect![[r#"
        node 1: [1]
        node 2: [2]"#]]
    .assert_eq(&render_jobs(&placement));
}

// --- labels and pools ---------------------------------------------------------------------

fn check_labels(nodes: &[NodeView], jobs: &[PendingJob], expected: Expect) {
    for strategy in Strategy::ALL {
        let config = config(strategy);
        let placement = run(&config, &mut SchedulerState::new(&config), nodes, jobs);
        for (node, placed) in &placement.attempts {
            let view = nodes.iter().find(|n| n.id == *node).unwrap();
            for id in placed {
                let job = jobs.iter().find(|j| j.id == *id).unwrap();
                assert!(
                    job.required_labels.is_subset(&view.labels),
                    "{strategy}: job {id} on node {node}"
                );
            }
        }
        if strategy == Strategy::Concurrency {
            expected.assert_eq(&render_jobs(&placement));
        }
    }
}

fn pools() -> Vec<NodeView> {
    let with = |id, list: &[&str]| NodeView {
        labels: labels(list),
        ..NodeView::new(id, 3, 0)
    };
    vec![
        with(1, &["pool=private"]),
        with(2, &["pool=private", "class=realtime"]),
        with(3, &["pool=burst"]),
        with(4, &["pool=burst", "class=realtime"]),
    ]
}

fn job_with(id: u64, list: &[&str]) -> PendingJob {
    PendingJob {
        required_labels: labels(list),
        ..PendingJob::new(JobId(id))
    }
}

#[test]
fn realtime_jobs_run_only_on_realtime_nodes() {
    let jobs: Vec<PendingJob> = (1..=8)
        .map(|id| job_with(id, &["class=realtime"]))
        .collect();
    check_labels(
        &pools(),
        &jobs,
        expect![[r#"
            node 2: [1, 3, 5]
            node 4: [2, 4, 6]
            job 7: needs 1 distinct nodes with room and a closed breaker; there are 0 now
            job 8: needs 1 distinct nodes with room and a closed breaker; there are 0 now"#]],
    );
}

#[test]
fn the_burst_pool_is_used_only_when_labels_allow() {
    // Private jobs stay queued rather than spill to burst; unlabelled jobs may go anywhere.
    let mut jobs: Vec<PendingJob> = (1..=8).map(|id| job_with(id, &["pool=private"])).collect();
    jobs.push(job_with(9, &["pool=burst", "class=realtime"]));
    jobs.extend((10..=15).map(|id| job_with(id, &[])));
    check_labels(
        &pools(),
        &jobs,
        expect![[r#"
            node 1: [1, 3, 5]
            node 2: [2, 4, 6]
            node 3: [10, 11, 13]
            node 4: [9, 12, 14]
            job 7: needs 1 distinct nodes with room and a closed breaker; there are 0 now
            job 8: needs 1 distinct nodes with room and a closed breaker; there are 0 now
            job 15: needs 1 distinct nodes with room and a closed breaker; there are 0 now"#]],
    );
}

#[test]
fn a_job_no_node_can_take_says_why() {
    let mut nodes = pools();
    nodes[3].up = false;
    let jobs = [
        job_with(1, &["pool=gpu"]),
        job_with(2, &["pool=burst", "class=realtime"]),
    ];
    check_labels(
        &nodes,
        &jobs,
        expect![[r#"
            job 1: no node carries the required labels
            job 2: needs 1 distinct nodes up, not draining, with the labels; there are 0"#]],
    );
}

#[test]
fn jobs_that_wait_for_the_cluster_are_told_apart_from_jobs_that_wait_for_room() {
    // Node 1 is full, node 4 is down: room is short, and some jobs can never fit as is.
    let mut nodes = pools();
    nodes[0].assigned = 3;
    nodes[3].up = false;
    let mut hedge = job_with(4, &["pool=private"]);
    hedge.excluded = [1, 2].into();
    let jobs = [
        job_with(1, &["pool=gpu"]),
        job_with(2, &["pool=burst", "class=realtime"]),
        PendingJob {
            backups: 3,
            ..job_with(3, &[])
        },
        hedge,
        job_with(5, &["pool=private"]),
        job_with(6, &["pool=private"]),
        job_with(7, &["pool=private"]),
        job_with(8, &["pool=private"]),
    ];
    // `waits_for_cluster` gives exactly the reasons `place` gives that no room would cure.
    let config = config(Strategy::LeastRequest);
    let placement = run(&config, &mut SchedulerState::new(&config), &nodes, &jobs);
    let mut lines = Vec::new();
    for job in &jobs {
        let waits = scheduler::waits_for_cluster(job, &nodes);
        let unplaced = placement.unplaced.iter().find(|u| u.job == job.id);
        match (waits, unplaced) {
            (Some(reason), Some(u)) => {
                assert_eq!(u.reason, reason, "job {}", job.id.0);
                lines.push(format!("job {}: waits for the cluster: {reason}", job.id.0));
            }
            (None, Some(u)) => {
                lines.push(format!("job {}: waits for room: {}", job.id.0, u.reason))
            }
            (None, None) => lines.push(format!("job {}: placed", job.id.0)),
            (Some(reason), None) => panic!("job {} was placed, yet {reason}", job.id.0),
        }
    }
    expect![[r#"
        job 1: waits for the cluster: no node carries the required labels
        job 2: waits for the cluster: needs 1 distinct nodes up, not draining, with the labels; there are 0
        job 3: waits for the cluster: needs 4 distinct nodes up, not draining, with the labels; there are 3
        job 4: waits for the cluster: every node with the labels is excluded
        job 5: placed
        job 6: placed
        job 7: placed
        job 8: waits for room: needs 1 distinct nodes with room and a closed breaker; there are 0 now"#]]
    .assert_eq(&lines.join("\n"));
}

// --- backups ------------------------------------------------------------------------------

fn check_backups(nodes: &[NodeView], jobs: &[PendingJob], expected: Expect) {
    let rendered: Vec<String> = Strategy::ALL
        .iter()
        .map(|&strategy| {
            let config = config(strategy);
            // must_be_consistent checks the attempts are on distinct nodes.
            let placement = run(&config, &mut SchedulerState::new(&config), nodes, jobs);
            format!("{strategy}:\n{}", render_jobs(&placement))
        })
        .collect();
    expected.assert_eq(&rendered.join("\n"));
}

fn with_backups(id: u64, backups: u32) -> PendingJob {
    PendingJob {
        backups,
        ..PendingJob::new(JobId(id))
    }
}

#[test]
fn backups_run_on_distinct_nodes() {
    let nodes = [
        NodeView::new(1, 10, 0),
        NodeView::new(2, 10, 0),
        NodeView::new(3, 10, 0),
    ];
    check_backups(
        &nodes,
        &[with_backups(1, 2), with_backups(2, 1), with_backups(3, 1)],
        expect![[r#"
            least-request:
            node 1: [1, 2, 3]
            node 2: [1, 2]
            node 3: [1, 3]
            cpu-load:
            node 1: [1, 2, 3]
            node 2: [1, 2]
            node 3: [1, 3]
            concurrency:
            node 1: [1, 2, 3]
            node 2: [1, 2]
            node 3: [1, 3]
            weighted-round-robin:
            node 1: [1, 3]
            node 2: [1, 2, 3]
            node 3: [1, 2]
            random:
            node 1: [1, 2, 3]
            node 2: [1, 2]
            node 3: [1, 3]"#]],
    );
}

#[test]
fn backups_stay_unplaced_without_enough_distinct_nodes() {
    let mut nodes = [
        NodeView::new(1, 10, 0),
        NodeView::new(2, 10, 0),
        NodeView::new(3, 1, 1),
        NodeView::new(4, 10, 0),
    ];
    nodes[3].draining = true;
    // Job 1 wants four nodes and only three are usable; job 2 wants three and one is full.
    let jobs = [with_backups(1, 3), with_backups(2, 2), with_backups(3, 1)];
    let config = config(Strategy::LeastRequest);
    let placement = run(&config, &mut SchedulerState::new(&config), &nodes, &jobs);
    expect![[r#"
        node 1: [3]
        node 2: [3]
        job 1: needs 4 distinct nodes up, not draining, with the labels; there are 3
        job 2: needs 3 distinct nodes with room and a closed breaker; there are 2 now"#]]
    .assert_eq(&render_jobs(&placement));
}

#[test]
fn a_hedge_goes_to_a_node_not_running_its_job() {
    let nodes = [
        NodeView::new(1, 10, 0),
        NodeView::new(2, 10, 5),
        NodeView::new(3, 10, 0),
    ];
    // Jobs 1 and 2 run on nodes 1 and 3; the emptiest nodes are exactly the excluded ones.
    let hedge = |id, running_on: &[NodeId]| PendingJob {
        excluded: running_on.iter().copied().collect(),
        ..PendingJob::new(JobId(id))
    };
    check_backups(
        &nodes,
        &[hedge(1, &[1, 3]), hedge(2, &[1, 2, 3])],
        expect![[r#"
            least-request:
            node 2: [1]
            job 2: every node with the labels is excluded
            cpu-load:
            node 2: [1]
            job 2: every node with the labels is excluded
            concurrency:
            node 2: [1]
            job 2: every node with the labels is excluded
            weighted-round-robin:
            node 2: [1]
            job 2: every node with the labels is excluded
            random:
            node 2: [1]
            job 2: every node with the labels is excluded"#]],
    );
}

// --- CPU breaker --------------------------------------------------------------------------

/// Node 1 goes through `cpu_percents`, one call each, next to a cool node 2. Each call places
/// one job with concurrency, which takes node 1 (the lower id on a tie) unless its breaker is
/// open.
fn check_breaker(cpu_percents: &[f64], expected: Expect) {
    let config = config(Strategy::Concurrency);
    let mut state = SchedulerState::new(&config);
    let mut lines = Vec::new();
    for (call, &cpu_percent) in cpu_percents.iter().enumerate() {
        let nodes = [
            NodeView {
                cpu_percent,
                ..NodeView::new(1, 1000, 0)
            },
            NodeView::new(2, 1000, 0),
        ];
        let placement = run(
            &config,
            &mut state,
            &nodes,
            &[PendingJob::new(JobId(call as u64 + 1))],
        );
        let changes: Vec<String> = placement
            .breaker_changes
            .iter()
            .map(|c| format!("{:?} {:?}", c.node, c.breaker))
            .collect();
        lines.push(format!(
            "cpu {cpu_percent:5.1}: {:?} -> node {}{}",
            state.breakers[&1],
            placement.attempts[0].0,
            if changes.is_empty() {
                String::new()
            } else {
                format!(", changed: {}", changes.join(", "))
            },
        ));
    }
    expected.assert_eq(&lines.join("\n"));
}

#[test]
fn breaker_opens_at_the_threshold_and_closes_below_the_band() {
    check_breaker(
        &[
            50.0, 84.9, 85.0, 99.0, 80.0, 75.1, 75.0, 74.9, 80.0, 84.9, 85.0,
        ],
        expect![[r#"
            cpu  50.0: Closed -> node 1
            cpu  84.9: Closed -> node 1
            cpu  85.0: Open -> node 2, changed: 1 Open
            cpu  99.0: Open -> node 2
            cpu  80.0: Open -> node 2
            cpu  75.1: Open -> node 2
            cpu  75.0: Open -> node 2
            cpu  74.9: Closed -> node 1, changed: 1 Closed
            cpu  80.0: Closed -> node 1
            cpu  84.9: Closed -> node 1
            cpu  85.0: Open -> node 2, changed: 1 Open"#]],
    );
}

#[test]
fn breaker_of_a_down_node_keeps_its_state_and_forgotten_nodes_are_dropped() {
    let config = config(Strategy::WeightedRoundRobin);
    let mut state = SchedulerState::new(&config);
    let hot = NodeView {
        cpu_percent: 95.0,
        ..NodeView::new(1, 10, 0)
    };
    let nodes = [hot.clone(), NodeView::new(2, 10, 0)];
    run(&config, &mut state, &nodes, &jobs(1));
    let down_and_cool = NodeView {
        up: false,
        cpu_percent: 0.0,
        ..hot
    };
    let placement = run(
        &config,
        &mut state,
        &[down_and_cool, NodeView::new(2, 10, 0)],
        &jobs(1),
    );
    assert!(placement.breaker_changes.is_empty());
    expect![[r#"
        SchedulerState {
            round_robin_weights: {
                1: 0,
                2: 0,
            },
            breakers: {
                1: Open,
                2: Closed,
            },
            rng_state: 42,
        }"#]]
    .assert_eq(&format!("{state:#?}"));
    run(&config, &mut state, &[NodeView::new(2, 10, 0)], &jobs(1));
    expect![[r#"
        SchedulerState {
            round_robin_weights: {
                2: 0,
            },
            breakers: {
                2: Closed,
            },
            rng_state: 42,
        }"#]]
    .assert_eq(&format!("{state:#?}"));
}

// --- down and draining nodes --------------------------------------------------------------

#[test]
fn down_draining_and_zero_weight_nodes_get_nothing() {
    let nodes = [
        NodeView::new(1, 1000, 0),
        NodeView {
            up: false,
            ..NodeView::new(2, 1000, 0)
        },
        NodeView {
            draining: true,
            ..NodeView::new(3, 1000, 0)
        },
        NodeView {
            weight: 0,
            ..NodeView::new(4, 1000, 0)
        },
        NodeView::new(5, 1000, 0),
    ];
    for strategy in Strategy::ALL {
        let config = config(strategy);
        let placement = run(
            &config,
            &mut SchedulerState::new(&config),
            &nodes,
            &jobs(1000),
        );
        let got = counts(&placement);
        assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            [1, 5],
            "{strategy}"
        );
        assert_eq!(got.values().sum::<usize>(), 1000, "{strategy}");
    }
}

// --- smoothing and names ------------------------------------------------------------------

fn check_smooth(samples: &[f64], alpha: f64, expected: Expect) {
    let mut value = samples[0];
    let mut series = Vec::new();
    for &sample in samples {
        value = smooth(value, sample, alpha);
        series.push(format!("{value:.2}"));
    }
    expected.assert_eq(&series.join(" "));
}

#[test]
fn smooth_is_an_ewma() {
    check_smooth(
        &[0.0, 100.0, 100.0, 100.0, 0.0],
        0.5,
        expect!["0.00 50.00 75.00 87.50 43.75"],
    );
    check_smooth(&[10.0, 90.0, 90.0], 1.0, expect!["10.00 90.00 90.00"]);
    check_smooth(
        &[10.0, 90.0, f64::NAN, 90.0],
        0.2,
        expect!["10.00 26.00 26.00 38.80"],
    );
    check_smooth(&[10.0, 90.0], 7.0, expect!["10.00 90.00"]);
}

#[test]
fn strategies_print_and_parse_by_name() {
    let names: Vec<String> = Strategy::ALL.iter().map(|s| s.to_string()).collect();
    expect!["least-request cpu-load concurrency weighted-round-robin random"]
        .assert_eq(&names.join(" "));
    for strategy in Strategy::ALL {
        assert_eq!(strategy.to_string().parse::<Strategy>(), Ok(strategy));
    }
    expect!["unknown strategy `fastest`, expected one of: least-request, cpu-load, concurrency, weighted-round-robin, random"]
        .assert_eq(&"fastest".parse::<Strategy>().unwrap_err().to_string());
    assert_eq!(Config::default().default_strategy, Strategy::LeastRequest);
}

#[test]
fn when_every_node_is_hot_work_still_flows_but_cool_nodes_win() {
    use model::JobId;
    use scheduler::{place, Breaker, Config, NodeView, PendingJob, SchedulerState};
    let config = Config::default();
    let mut state = SchedulerState::new(&config);
    let hot = |id| {
        let mut v = NodeView::new(id, 10, 0);
        v.cpu_percent = 99.0;
        v
    };
    let jobs: Vec<PendingJob> = (1..=4).map(|i| PendingJob::new(JobId(i))).collect();
    // Only hot nodes: their breakers open, and the jobs are placed all the same.
    let all_hot = place(&config, &mut state, &[hot(1), hot(2)], &jobs);
    assert_eq!(all_hot.breaker_changes.len(), 2);
    assert!(all_hot
        .breaker_changes
        .iter()
        .all(|c| c.breaker == Breaker::Open));
    assert_eq!(
        all_hot
            .attempts
            .iter()
            .map(|(_, js)| js.len())
            .sum::<usize>(),
        4
    );
    // A cool node appears: it takes everything while the hot ones stay open.
    let placed = place(
        &config,
        &mut state,
        &[hot(1), hot(2), NodeView::new(3, 10, 0)],
        &jobs,
    );
    assert_eq!(
        placed.attempts,
        vec![(3, jobs.iter().map(|j| j.id).collect())]
    );
}

/// What `explain` says of a job on a small cluster, node by node.
fn check_explain(nodes: &[NodeView], job: &PendingJob, state: &SchedulerState, expect: Expect) {
    let throttles = scheduler::Throttles::new(0);
    expect.assert_eq(&format!(
        "{:?}",
        scheduler::explain(job, nodes, state, &throttles)
    ));
}

#[test]
fn explain_names_each_node_that_cannot_take_a_queued_job() {
    let config = config(Strategy::LeastRequest);
    let state = SchedulerState::new(&config);
    let mut gpu = PendingJob::new(JobId(1));
    gpu.required_labels = labels(&["gpu"]);
    let plain = |id: u64, capacity: u32, assigned: u32| NodeView::new(id, capacity, assigned);
    let with_gpu = |mut n: NodeView| {
        n.labels = labels(&["gpu"]);
        n
    };
    check_explain(
        &[plain(1, 4, 0)],
        &gpu,
        &state,
        expect![[r#"NoNodeWithLabels"#]],
    );
    let mut draining = with_gpu(plain(2, 4, 0));
    draining.draining = true;
    let mut down = with_gpu(plain(3, 4, 0));
    down.up = false;
    check_explain(
        &[plain(1, 4, 0), draining.clone(), down],
        &gpu,
        &state,
        expect![[r#"TooFewNodes { wanted: 1, bars: [(2, Draining), (3, Down)] }"#]],
    );
    check_explain(
        &[draining, with_gpu(plain(4, 2, 2))],
        &gpu,
        &state,
        expect![[
            r#"Busy { wanted: 1, bars: [(2, Draining), (4, Full { assigned: 2, capacity: 2 })] }"#
        ]],
    );
    check_explain(
        &[with_gpu(plain(4, 2, 1))],
        &gpu,
        &state,
        expect![[r#"Placeable"#]],
    );
    let mut backups = gpu.clone();
    backups.backups = 1;
    check_explain(
        &[with_gpu(plain(4, 2, 1))],
        &backups,
        &state,
        expect![[r#"TooFewNodes { wanted: 2, bars: [] }"#]],
    );
}

// --- cluster-wide throttles ---------------------------------------------------------------

fn throttle(bucket: &str, concurrency: Option<u32>, rate_per_s: Option<f64>) -> Throttle {
    Throttle {
        bucket: bucket.into(),
        concurrency,
        rate: rate_per_s.map(Rate::per_s),
    }
}

fn throttled(id: u64, throttles: &[&Throttle]) -> PendingJob {
    PendingJob {
        throttles: throttles.iter().map(|t| (*t).clone()).collect(),
        ..PendingJob::new(JobId(id))
    }
}

/// One call per entry of `calls` (time, jobs ending since the previous call), each placing
/// whatever of `jobs` is still queued; the state's usage is kept between calls as the
/// replicated state keeps it. One line per call: what started, what waits and why.
fn check_throttles(
    nodes: &[NodeView],
    jobs: &[PendingJob],
    calls: &[(u64, &[u64])],
    expected: Expect,
) {
    let config = config(Strategy::Concurrency);
    let mut state = SchedulerState::new(&config);
    let mut queued: Vec<PendingJob> = jobs.to_vec();
    let mut running: Vec<PendingJob> = Vec::new();
    let mut starts: BTreeMap<String, VecDeque<u64>> = BTreeMap::new();
    let mut lines = Vec::new();
    for &(now_ms, ended) in calls {
        running.retain(|j| !ended.contains(&j.id.0));
        let mut throttles = Throttles::new(now_ms);
        let mut usage: BTreeMap<&str, u32> = BTreeMap::new();
        for t in running.iter().flat_map(|j| &j.throttles) {
            *usage.entry(&t.bucket).or_default() += 1;
        }
        let none = VecDeque::new();
        for t in queued.iter().chain(&running).flat_map(|j| &j.throttles) {
            let count = usage.get(t.bucket.as_str()).copied().unwrap_or(0);
            throttles.set(&t.bucket, count, starts.get(&t.bucket).unwrap_or(&none));
        }
        let placement = place_throttled(&config, &mut state, nodes, &queued, &mut throttles);
        must_be_consistent(nodes, &queued, &placement);
        let placed: BTreeSet<JobId> = placement
            .attempts
            .iter()
            .flat_map(|(_, jobs)| jobs.iter().copied())
            .collect();
        for job in queued.iter().filter(|j| placed.contains(&j.id)) {
            for t in &job.throttles {
                throttle::record_start(t, starts.entry(t.bucket.clone()).or_default(), now_ms);
            }
            running.push(job.clone());
        }
        queued.retain(|j| !placed.contains(&j.id));
        let mut line = format!(
            "t={now_ms}: started {:?}",
            placed.iter().map(|j| j.0).collect::<Vec<_>>()
        );
        for u in &placement.unplaced {
            line.push_str(&format!("\n  job {}: {}", u.job, u.reason));
        }
        lines.push(line);
    }
    expected.assert_eq(&lines.join("\n"));
}

#[test]
fn a_concurrency_throttle_holds_across_every_node() {
    // Three idle nodes with room for all, but at most two of the bucket at once: jobs start
    // as others end, and the job outside the bucket is never held back.
    let nodes = [
        NodeView::new(1, 10, 0),
        NodeView::new(2, 10, 0),
        NodeView::new(3, 10, 0),
    ];
    let t = throttle("function:f", Some(2), None);
    let mut jobs: Vec<PendingJob> = (1..=4).map(|id| throttled(id, &[&t])).collect();
    jobs.push(PendingJob::new(JobId(5)));
    check_throttles(
        &nodes,
        &jobs,
        &[(0, &[]), (100, &[]), (200, &[1]), (300, &[2, 3])],
        expect![[r#"
            t=0: started [1, 2, 5]
              job 3: throttle function:f allows 2 running at once across the cluster; 2 run
              job 4: throttle function:f allows 2 running at once across the cluster; 2 run
            t=100: started []
              job 3: throttle function:f allows 2 running at once across the cluster; 2 run
              job 4: throttle function:f allows 2 running at once across the cluster; 2 run
            t=200: started [3]
              job 4: throttle function:f allows 2 running at once across the cluster; 2 run
            t=300: started [4]"#]],
    );
}

#[test]
fn a_rate_throttle_spaces_starts_by_its_window() {
    let nodes = [NodeView::new(1, 100, 0), NodeView::new(2, 100, 0)];
    let t = throttle("step:w/a", None, Some(2.0));
    let jobs: Vec<PendingJob> = (1..=5).map(|id| throttled(id, &[&t])).collect();
    check_throttles(
        &nodes,
        &jobs,
        &[(0, &[]), (999, &[]), (1000, &[]), (2000, &[])],
        expect![[r#"
            t=0: started [1, 2]
              job 3: throttle step:w/a allows 2 start(s) per 1000 ms across the cluster; the next may start at 1000 ms
              job 4: throttle step:w/a allows 2 start(s) per 1000 ms across the cluster; the next may start at 1000 ms
              job 5: throttle step:w/a allows 2 start(s) per 1000 ms across the cluster; the next may start at 1000 ms
            t=999: started []
              job 3: throttle step:w/a allows 2 start(s) per 1000 ms across the cluster; the next may start at 1000 ms
              job 4: throttle step:w/a allows 2 start(s) per 1000 ms across the cluster; the next may start at 1000 ms
              job 5: throttle step:w/a allows 2 start(s) per 1000 ms across the cluster; the next may start at 1000 ms
            t=1000: started [3, 4]
              job 5: throttle step:w/a allows 2 start(s) per 1000 ms across the cluster; the next may start at 2000 ms
            t=2000: started [5]"#]],
    );
}

#[test]
fn keyed_buckets_and_both_throttles_of_a_step_hold_each() {
    // A step's job carries its function's throttle and its step's, one bucket per key: acme's
    // jobs are held by the step's limit of one per customer, globex's by the function's two.
    let nodes = [NodeView::new(1, 100, 0)];
    let function = throttle("function:f", Some(2), None);
    let acme = throttle("step:w/a:acme", Some(1), None);
    let globex = throttle("step:w/a:globex", Some(1), None);
    let jobs = [
        throttled(1, &[&function, &acme]),
        throttled(2, &[&function, &acme]),
        throttled(3, &[&function, &globex]),
        throttled(4, &[&function, &globex]),
    ];
    check_throttles(
        &nodes,
        &jobs,
        &[(0, &[]), (10, &[1])],
        expect![[r#"
            t=0: started [1, 3]
              job 2: throttle step:w/a:acme allows 1 running at once across the cluster; 1 run
              job 4: throttle function:f allows 2 running at once across the cluster; 2 run
            t=10: started [2]
              job 4: throttle function:f allows 2 running at once across the cluster; 2 run"#]],
    );
}

#[test]
fn a_throttle_is_checked_after_the_shape_of_the_cluster_and_before_room() {
    // A job that needs a label nobody has waits for the cluster, not for its throttle, and
    // takes no room in the bucket; a throttled job says so even when every node is full.
    let t = throttle("function:f", Some(1), None);
    let full = [NodeView::new(1, 1, 1)];
    let mut gpu = throttled(1, &[&t]);
    gpu.required_labels = labels(&["gpu"]);
    check_throttles(
        &[NodeView::new(1, 10, 0)],
        &[gpu, throttled(2, &[&t])],
        &[(0, &[])],
        expect![[r#"
            t=0: started [2]
              job 1: no node carries the required labels"#]],
    );
    let config = config(Strategy::Concurrency);
    let state = SchedulerState::new(&config);
    let mut usage = Throttles::new(0);
    usage.set("function:f", 1, &VecDeque::new());
    expect![[
        r#"Throttled(Held { bucket: "function:f", limit: Concurrency { limit: 1, running: 1 } })"#
    ]]
    .assert_eq(&format!(
        "{:?}",
        scheduler::explain(&throttled(3, &[&t]), &full, &state, &usage)
    ));
}

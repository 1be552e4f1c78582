//! How long one `place` call takes for a large backlog: 10,000 pending jobs on 100 nodes, per
//! strategy. It must stay well under 50 ms, since the leader calls it on every tick. A plain
//! `harness = false` bench (no criterion) that prints the median of several runs.

use model::{JobId, NodeId};
use scheduler::{place, Config, NodeView, PendingJob, SchedulerState, Strategy};
use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

const NODES: u64 = 100;
const JOBS: u64 = 10_000;
const RUNS: usize = 21;
/// The budget the leader's loop can afford per call.
const BUDGET_MS: f64 = 50.0;

fn labels(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|l| l.to_string()).collect()
}

/// 100 nodes with room for every job: a fifth of them realtime, a tenth in the burst pool,
/// weights 1 to 4, CPU spread over 0 to 80%, some already busy.
fn nodes() -> Vec<NodeView> {
    (1..=NODES)
        .map(|id: NodeId| {
            let mut list = vec![if id.is_multiple_of(10) {
                "pool=burst"
            } else {
                "pool=private"
            }];
            if id.is_multiple_of(5) {
                list.push("class=realtime");
            }
            NodeView {
                weight: (id % 4 + 1) as u32,
                labels: labels(&list),
                cpu_percent: (id * 37 % 80) as f64,
                ..NodeView::new(id, 200, (id % 7 * 10) as u32)
            }
        })
        .collect()
}

/// 10,000 jobs: most plain, some needing realtime nodes or the private pool, some with a backup.
fn jobs() -> Vec<PendingJob> {
    (1..=JOBS)
        .map(|id| {
            let mut job = PendingJob::new(JobId(id));
            match id % 10 {
                0 => job.required_labels = labels(&["class=realtime"]),
                1 | 2 => job.required_labels = labels(&["pool=private"]),
                3 => job.backups = 1,
                _ => {}
            }
            job
        })
        .collect()
}

fn main() {
    let (nodes, jobs) = (nodes(), jobs());
    println!("place: {JOBS} jobs on {NODES} nodes, median of {RUNS} runs");
    for strategy in Strategy::ALL {
        let config = Config {
            default_strategy: strategy,
            seed: 7,
            ..Config::default()
        };
        let mut times: Vec<Duration> = Vec::with_capacity(RUNS);
        let mut unplaced = 0;
        for _ in 0..RUNS {
            let mut state = SchedulerState::new(&config);
            let start = Instant::now();
            let placement = black_box(place(
                &config,
                &mut state,
                black_box(&nodes),
                black_box(&jobs),
            ));
            times.push(start.elapsed());
            unplaced = placement.unplaced.len();
        }
        times.sort();
        let median_ms = times[RUNS / 2].as_secs_f64() * 1e3;
        let verdict = if median_ms < BUDGET_MS {
            "ok"
        } else {
            "OVER BUDGET"
        };
        println!(
            "{:>22}: {median_ms:7.3} ms  ({unplaced} unplaced, {verdict})",
            strategy.name()
        );
    }
}

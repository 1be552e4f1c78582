//! Catch-up at real sizes: a node joins a cluster whose snapshot is many megabytes (well over
//! the 2-3 MiB that one request could carry before snapshots travelled in chunks), and a voter
//! that was down while many jobs ran rejoins. CI runs sizes that prove the point; with
//! `RUN_SLOW_TESTS` set, the sizes of issue 10 (join at 200,000 jobs, rejoin after 50,000).
//! Each test prints its figures (jobs, snapshot bytes, catch-up seconds).

use crate::cluster::{cluster, leader, leader_index};
use crate::harness::{must_finish, TestNode};
use model::{JobId, JobSpec, JobState};
use serde_json::json;
use std::time::{Duration, Instant};

/// Jobs per `POST /v1/jobs/batch` (the API's limit).
const BATCH_JOBS: usize = 10_000;

fn slow() -> bool {
    std::env::var_os("RUN_SLOW_TESTS").is_some()
}

/// How long a wait in these tests may take: loading and moving hundreds of thousands of jobs
/// on a shared test machine takes minutes, not the harness's one.
fn deadline(jobs: usize) -> Duration {
    Duration::from_secs(120 + (jobs / 1_000) as u64 * 3)
}

fn noops(n: usize, tag: &str) -> Vec<JobSpec> {
    (0..n)
        .map(|i| JobSpec {
            function: "noop".into(),
            input: json!({ "n": i, "tag": tag }),
            files: vec![],
            priority: 0,
            idempotency_key: None,
        })
        .collect()
}

/// Submits `jobs` no-op jobs through `node` in batches; the ids of the first and last.
async fn submit_many(node: &TestNode, jobs: usize, tag: &str) -> (JobId, JobId) {
    let mut ids = Vec::new();
    let mut left = jobs;
    while left > 0 {
        let n = left.min(BATCH_JOBS);
        let results = node.client.submit_batch(&noops(n, tag)).await.unwrap();
        assert_eq!(results.len(), n);
        for r in [results.first(), results.last()].into_iter().flatten() {
            match r {
                client::BatchResult::Submitted { id, .. } => ids.push(*id),
                other => panic!("{other:?}"),
            }
        }
        left -= n;
    }
    (ids[0], ids[ids.len() - 1])
}

/// Jobs in `state` on `node`, from its metrics.
async fn jobs_in(node: &TestNode, state: &str) -> u64 {
    let label = format!("state=\"{state}\"");
    node.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("chorus_jobs{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Polls until `probe` holds; panics with `what` after `within`.
async fn wait_for<F, Fut>(what: &str, within: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !probe().await {
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn figure(node: &TestNode, name: &str) -> Option<u64> {
    node.client.cluster().await.ok()?[name].as_u64()
}

/// Waits until `node` has applied `index`; the time it took.
async fn must_catch_up(node: &TestNode, index: u64, within: Duration) -> Duration {
    let started = Instant::now();
    wait_for("the node has applied the leader's log", within, || async {
        figure(node, "applied_index").await >= Some(index)
    })
    .await;
    started.elapsed()
}

fn snapshot_bytes(node: &TestNode) -> u64 {
    let path = node.dir.path().join("data/raft/snapshot.json");
    std::fs::metadata(&path).map_or(0, |m| m.len())
}

/// Waits until `node` holds `jobs` succeeded jobs.
async fn must_run_all(node: &TestNode, jobs: u64, within: Duration) {
    wait_for(&format!("{jobs} jobs succeeded"), within, || async {
        jobs_in(node, "succeeded").await >= jobs
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_a_cluster_with_a_multi_megabyte_snapshot_and_catches_up() {
    let jobs = if slow() { 200_000 } else { 40_000 };
    let first = TestNode::start().await;
    let (oldest, newest) = submit_many(&first, jobs, "join").await;
    must_run_all(&first, jobs as u64, deadline(jobs)).await;
    // A snapshot that holds them all, so the newcomer must receive it in many chunks.
    wait_for("a snapshot of every job", deadline(jobs), || async {
        snapshot_bytes(&first) > 8 << 20
            && figure(&first, "snapshot_index").await
                >= figure(&first, "commit_index")
                    .await
                    .map(|c| c.saturating_sub(400))
    })
    .await;
    let bytes = snapshot_bytes(&first);
    let index = figure(&first, "commit_index").await.unwrap();

    let started = Instant::now();
    let second = TestNode::join(&first).await;
    let ready = started.elapsed();
    must_catch_up(&second, index, deadline(jobs)).await;
    let caught_up = started.elapsed();
    eprintln!(
        "join: {jobs} jobs, snapshot {:.1} MB, ready in {:.1} s, caught up (index {index}) in {:.1} s",
        bytes as f64 / 1e6,
        ready.as_secs_f64(),
        caught_up.as_secs_f64()
    );
    assert!(
        snapshot_bytes(&second) > 8 << 20,
        "the newcomer installed the leader's snapshot"
    );
    for id in [oldest, newest] {
        let (status, _) = second
            .client
            .raw("GET", &format!("/v1/jobs/{id}?stale=true"), Vec::new())
            .await
            .unwrap();
        assert_eq!(status, 200, "the newcomer holds job {id}");
    }
    // And it serves: a job submitted through it runs.
    let job = second.client.submit(&noops(1, "after")[0]).await.unwrap();
    assert_eq!(
        must_finish(&second.client, job.id).await.state,
        JobState::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_down_while_many_jobs_ran_rejoins_and_catches_up() {
    let jobs = if slow() { 50_000 } else { 30_000 };
    let mut nodes = cluster().await;
    let li = leader_index(&nodes, leader(&nodes[0]).await);
    let down = (li + 1) % 3;
    nodes[down].kill_9();
    let (oldest, newest) = submit_many(&nodes[li], jobs, "rejoin").await;
    must_run_all(&nodes[li], jobs as u64, deadline(jobs)).await;
    let index = figure(&nodes[li], "commit_index").await.unwrap();
    let bytes = snapshot_bytes(&nodes[li]);

    let started = Instant::now();
    nodes[down].restart().await;
    let ready = started.elapsed();
    must_catch_up(&nodes[down], index, deadline(jobs)).await;
    let caught_up = started.elapsed();
    eprintln!(
        "rejoin: {jobs} jobs ran while down, leader's snapshot {:.1} MB, ready in {:.1} s, caught up (index {index}) in {:.1} s",
        bytes as f64 / 1e6,
        ready.as_secs_f64(),
        caught_up.as_secs_f64()
    );
    for id in [oldest, newest] {
        let (status, body) = nodes[down]
            .client
            .raw("GET", &format!("/v1/jobs/{id}?stale=true"), Vec::new())
            .await
            .unwrap();
        assert_eq!(status, 200, "the rejoined voter holds job {id}");
        let job: model::Job = serde_json::from_slice(&body).unwrap();
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    }
}

/// Restart-to-ready of a node that holds many jobs (slow runs only: it is a figure to
/// report, at the 200,000 jobs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_holding_many_jobs_restarts_to_ready() {
    if !slow() {
        eprintln!("restart-to-ready at 200,000 jobs runs with RUN_SLOW_TESTS");
        return;
    }
    let jobs = 200_000;
    let mut node = TestNode::start().await;
    submit_many(&node, jobs, "restart").await;
    must_run_all(&node, jobs as u64, deadline(jobs)).await;
    node.kill_9();
    let started = Instant::now();
    node.restart().await;
    let ready = started.elapsed();
    assert_eq!(jobs_in(&node, "succeeded").await, jobs as u64);
    eprintln!(
        "restart: {jobs} jobs, snapshot {:.1} MB, ready in {:.1} s",
        snapshot_bytes(&node) as f64 / 1e6,
        ready.as_secs_f64()
    );
}

//! Cluster-wide throttles on real nodes: a function's concurrency limit held across three
//! nodes, and a step's rate limit held within 10 %, both checked from the attempts' recorded
//! start and end times; a job a throttle holds says so in its `waiting`.

use crate::cluster::cluster;
use crate::harness::{must_find, TestNode};
use crate::workflows::{deploy_echo, must_end};
use client::BatchResult;
use model::throttle::ThrottleSpec;
use model::workflow::RunStatus;
use model::{FunctionKind, FunctionSpec, JobId, JobSpec, JobState, WaitCode};
use serde_json::json;

/// The most attempts that overlap at any instant; an attempt that ends at the instant
/// another starts does not overlap it.
fn most_at_once(spans: &[(u64, u64)]) -> usize {
    let mut edges: Vec<(u64, i32)> = spans
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    // Ends before starts at the same instant.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_throttle_holds_across_three_nodes() {
    let nodes = cluster().await;
    let client = &nodes[0].client;
    let mut nap = FunctionSpec::builtin("nap");
    nap.kind = FunctionKind::Command;
    nap.command = vec![
        "sh".into(),
        "-c".into(),
        "while IFS= read -r line; do sleep 0.3; echo '{\"output\":{}}'; done".into(),
    ];
    nap.throttle = Some(ThrottleSpec {
        concurrency: Some(2),
        ..ThrottleSpec::default()
    });
    client.deploy(&nap).await.unwrap();
    let specs: Vec<JobSpec> = (0..12)
        .map(|i| JobSpec {
            function: "nap".into(),
            input: json!({ "i": i }),
            files: vec![],
            priority: 0,
            idempotency_key: None,
        })
        .collect();
    let ids: Vec<JobId> = client
        .submit_batch(&specs)
        .await
        .unwrap()
        .into_iter()
        .map(|r| match r {
            BatchResult::Submitted { id, .. } => id,
            BatchResult::Rejected { error } => panic!("{error:?}"),
        })
        .collect();
    // The last job waits while the first ones run, and says why (once the scheduler has
    // started the first two: before that it is only in the queue).
    let last = *ids.last().unwrap();
    let reason = must_find("the last job held by the throttle", || async {
        let detail = client.job_detail(last).await.ok()?;
        detail.waiting.filter(|w| w.code == WaitCode::Throttled)
    })
    .await;
    assert!(reason.message.contains("function:nap"), "{reason:?}");
    let mut spans = Vec::new();
    let mut on_nodes = std::collections::BTreeSet::new();
    for id in &ids {
        let job = crate::harness::must_finish(client, *id).await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        for a in &job.attempts {
            spans.push((a.started_at_ms, a.finished_at_ms.unwrap()));
            on_nodes.insert(a.node);
        }
    }
    assert_eq!(most_at_once(&spans), 2, "{spans:?}");
    assert!(
        on_nodes.len() >= 2,
        "the jobs ran on one node only, so the limit was not tested across nodes: {on_nodes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_throttle_on_a_step_holds_within_ten_percent() {
    let node = TestNode::start().await;
    deploy_echo(&node.client, "echo", None).await;
    let spec = r#"
name = "paced"
[[steps]]
name = "tick"
function = "echo"
for_each = "{{ input.items }}"
input = { item = "{{ item }}" }
throttle = { rate_per_s = 10.0 }
"#;
    node.client.deploy_workflow(spec).await.unwrap();
    let items: Vec<u32> = (0..60).collect();
    let run = node
        .client
        .start_run("paced", &json!({ "items": items }), None)
        .await
        .unwrap();
    // While the run goes, a held element's job says that the step's throttle holds it.
    let reason = must_find("a job held by the step's rate", || async {
        let run = node.client.run(run.summary.id).await.ok()?;
        for id in run.jobs.values() {
            let detail = node.client.job_detail(*id).await.ok()?;
            if let Some(w) = detail.waiting.filter(|w| w.code == WaitCode::Throttled) {
                return Some(w);
            }
        }
        None
    })
    .await;
    assert!(reason.message.contains("step:paced/tick"), "{reason:?}");
    let run = must_end(&node.client, run.summary.id).await;
    assert_eq!(run.summary.state, RunStatus::Succeeded, "{:?}", run.summary);
    let mut starts = Vec::new();
    for id in run.jobs.values() {
        let job = node.client.job(*id).await.unwrap();
        starts.extend(job.attempts.iter().map(|a| a.started_at_ms));
    }
    starts.sort_unstable();
    assert_eq!(starts.len(), 60);
    // Held: no window of one second has more than ten starts.
    for (i, &t) in starts.iter().enumerate() {
        let in_window = starts[i..].iter().take_while(|&&s| s < t + 1000).count();
        assert!(
            in_window <= 10,
            "{in_window} starts in the second from {t}: {starts:?}"
        );
    }
    // And not much slower than allowed: 60 starts at 10 per second take the six windows of
    // one second that begin at the first start, less the last one's unused rest.
    let span_ms = starts[59] - starts[0];
    let rate_per_s = 60.0 / ((span_ms + 1000) as f64 / 1000.0);
    assert!(
        (9.0..=11.0).contains(&rate_per_s),
        "{rate_per_s:.2} starts per second over {span_ms} ms: {starts:?}"
    );
}

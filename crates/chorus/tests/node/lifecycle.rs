//! A node's life with real processes: SIGTERM and start again, kill -9 and restart at once,
//! leader changes under writes, joins that never catch up (issue 10).

use crate::cluster::{cluster, leader, leader_index, sleeps, submit};
use crate::harness::{must_find, must_finish, wait_until, TestNode};
use model::{JobSpec, JobState};
use serde_json::json;
use std::time::Duration;

/// What SIGTERM may take beyond its grace period: marking the node stopping, failing over
/// what still runs, and the bounded shutdown (5 s each for tasks, workers, raft, the API).
const STOP_BOUND: Duration = Duration::from_secs(30);

fn noop(key: Option<String>) -> JobSpec {
    JobSpec {
        function: "noop".into(),
        input: json!({}),
        files: vec![],
        priority: 0,
        idempotency_key: key,
    }
}

/// The `status` and `role` of node `id` in the listing, if it is listed.
async fn listed(node: &TestNode, id: u64) -> Option<(String, String)> {
    let list = node.client.nodes().await.ok()?;
    let row = list["nodes"].as_array()?.iter().find(|n| n["id"] == id)?;
    Some((
        row["status"].as_str()?.to_string(),
        row["role"].as_str()?.to_string(),
    ))
}

async fn event_kinds(node: &TestNode) -> Vec<(String, Option<u64>)> {
    let (status, body) = node
        .client
        .raw("GET", "/v1/events", Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap().to_string(), e["node"].as_u64()))
        .collect()
}

/// Admits a node at an address nobody answers at: a joining node that died before it caught
/// up. Returns its id.
async fn join_that_never_catches_up(member: &TestNode) -> u64 {
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = nobody.local_addr().unwrap().to_string();
    drop(nobody);
    member.client.join(&addr, 2, &[], None).await.unwrap().id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_by_sigterm_comes_back_up_and_runs_new_jobs() {
    let mut node = TestNode::start().await;
    let id = node.id();
    let first = node.client.submit(&noop(None)).await.unwrap();
    assert_eq!(
        must_finish(&node.client, first.id).await.state,
        JobState::Succeeded
    );
    let (_, success) = node.must_stop_by_sigterm(STOP_BOUND).await;
    assert!(success, "a graceful stop exits with success");
    node.start_again().await;
    assert_eq!(
        listed(&node, id).await.map(|(status, _)| status).as_deref(),
        Some("up")
    );
    let next = node.client.submit(&noop(None)).await.unwrap();
    assert_eq!(
        must_finish(&node.client, next.id).await.state,
        JobState::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_drain_outlives_a_restart_until_undrain() {
    let mut node = TestNode::start().await;
    let id = node.id();
    node.client.node_action(id, "drain").await.unwrap();
    node.restart().await;
    assert_eq!(
        listed(&node, id).await.map(|(status, _)| status).as_deref(),
        Some("draining")
    );
    node.client.node_action(id, "undrain").await.unwrap();
    let job = node.client.submit(&noop(None)).await.unwrap();
    assert_eq!(
        must_finish(&node.client, job.id).await.state,
        JobState::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_long_attempt_and_an_unreachable_peer_fails_it_over_and_exits_in_time() {
    let grace = Duration::from_secs(2);
    let mut node = TestNode::start_with(2, &["--drain-timeout-s", "2"]).await;
    // A learner that never answers: raft keeps trying to replicate to it.
    let ghost = join_that_never_catches_up(&node).await;
    wait_until("the ghost is a learner", || async {
        listed(&node, ghost)
            .await
            .is_some_and(|(_, role)| role == "learner")
    })
    .await;
    let long = submit(&node, &sleeps(1, 600_000)).await[0];
    wait_until("the long job runs", || async {
        node.client
            .job(long)
            .await
            .is_ok_and(|j| j.state == JobState::Running)
    })
    .await;

    let (took, success) = node.must_stop_by_sigterm(grace + STOP_BOUND).await;
    assert!(success, "a graceful stop exits with success");
    eprintln!("SIGTERM to exit: {took:?} (grace {grace:?})");

    // The attempt was failed over as node_lost when the grace period ended, so it is retried
    // (here by the node itself, once it is back).
    node.start_again().await;
    let job = node.client.job(long).await.unwrap();
    let first = &job.attempts[0];
    assert_eq!(
        first.error.as_ref().map(|e| e.code.as_str()),
        Some("node_lost"),
        "{job:?}"
    );
    assert_eq!(
        listed(&node, node.id()).await.map(|(s, _)| s).as_deref(),
        Some("up")
    );
    node.client.cancel(long).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_in_time_when_the_peers_are_gone() {
    let mut nodes = cluster().await;
    let leader_id = leader(&nodes[0]).await;
    let li = leader_index(&nodes, leader_id);
    // Both followers die: no quorum, nothing the leader proposes can commit.
    for (i, node) in nodes.iter_mut().enumerate() {
        if i != li {
            node.kill_9();
        }
    }
    let (took, _) = nodes[li].must_stop_by_sigterm(STOP_BOUND).await;
    eprintln!("SIGTERM to exit without a quorum: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_and_restarted_at_once_rejoins() {
    let mut nodes = cluster().await;
    let leader_id = leader(&nodes[0]).await;
    let li = leader_index(&nodes, leader_id);
    // `restart` is kill -9 and the same command at once; it returns once the node is ready.
    nodes[li].restart().await;
    let other = (li + 1) % 3;
    wait_until("the restarted node is an up voter again", || async {
        listed(&nodes[other], leader_id)
            .await
            .is_some_and(|(status, role)| status == "up" && role == "voter")
    })
    .await;
    let ids = submit(&nodes[li], &sleeps(3, 1)).await;
    for id in ids {
        assert_eq!(
            must_finish(&nodes[li].client, id).await.state,
            JobState::Succeeded
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_follower_wait_for_the_new_leader_when_the_leader_is_killed() {
    let mut nodes = cluster().await;
    let leader_id = leader(&nodes[0]).await;
    let li = leader_index(&nodes, leader_id);
    let follower = (li + 1) % 3;
    let client = nodes[follower].client.clone();
    let killed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen_kill = killed.clone();
    // Keyed submits in flight while the leader dies, and 30 more after: any whose fate the
    // follower cannot know is sent again, which the key makes safe.
    let keyed = tokio::spawn(async move {
        let mut failures = Vec::new();
        let mut after_kill = 0;
        for i in 0.. {
            if seen_kill.load(std::sync::atomic::Ordering::Acquire) {
                after_kill += 1;
                if after_kill > 30 {
                    break;
                }
            }
            let spec = noop(Some(format!("leader-change-{i}")));
            if let Err(e) = client.submit(&spec).await {
                failures.push(format!("submit {i}: {e}"));
            }
        }
        failures
    });
    wait_until("some keyed submits went through", || async {
        nodes[follower]
            .client
            .list_jobs(&Default::default())
            .await
            .is_ok_and(|page| page.jobs.len() >= 3)
    })
    .await;
    nodes[li].kill_9();
    killed.store(true, std::sync::atomic::Ordering::Release);
    // Right after the kill, before any election: a write without a key is refused by the dead
    // leader's port, so it provably did not commit and waits for the new leader.
    let unkeyed = nodes[follower].client.submit(&noop(None)).await;
    let failures = keyed.await.unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
    let unkeyed = unkeyed.expect("an unkeyed submit right after the leader's death");
    assert_eq!(
        must_finish(&nodes[follower].client, unkeyed.id).await.state,
        JobState::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_that_never_catches_up_costs_no_quorum_and_is_undone() {
    let node = TestNode::start_with(2, &["--join-catch-up-s", "5"]).await;
    let me = node.id();
    let removed_by_hand = join_that_never_catches_up(&node).await;
    let timed_out = join_that_never_catches_up(&node).await;
    // Both are learners at most: the node alone is still the quorum.
    wait_until("both joins are learners", || async {
        let a = listed(&node, removed_by_hand).await;
        let b = listed(&node, timed_out).await;
        a.is_some_and(|(s, r)| s == "joining" && r == "learner")
            && b.is_some_and(|(s, r)| s == "joining" && r == "learner")
    })
    .await;
    let job = node.client.submit(&noop(None)).await.unwrap();
    assert_eq!(
        must_finish(&node.client, job.id).await.state,
        JobState::Succeeded
    );
    assert_eq!(
        listed(&node, me).await,
        Some(("up".to_string(), "voter".to_string()))
    );
    // An operator can remove a node that never came up.
    node.client
        .node_action(removed_by_hand, "remove")
        .await
        .unwrap();
    assert_eq!(listed(&node, removed_by_hand).await, None);
    // The other is removed by the leader once its time to catch up is over.
    must_find("the join that timed out is undone", || async {
        let list = node.client.nodes().await.ok()?;
        let rows = list["nodes"].as_array()?;
        (rows.len() == 1).then_some(())
    })
    .await;
    let events = event_kinds(&node).await;
    assert!(
        events.contains(&("join_failed".to_string(), Some(timed_out))),
        "{events:?}"
    );
    let job = node.client.submit(&noop(None)).await.unwrap();
    assert_eq!(
        must_finish(&node.client, job.id).await.state,
        JobState::Succeeded
    );
}

/// `GET /v1/jobs/{id}` of a queued job, as `chorus jobs get` reads it: the wait's code and
/// message.
async fn waiting(node: &TestNode, id: model::JobId) -> Option<(String, String)> {
    let detail = node.client.job_detail(id).await.unwrap();
    let w = detail.waiting?;
    let code = serde_json::to_value(w.code).unwrap();
    Some((code.as_str().unwrap().to_string(), w.message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_says_why_it_waits_drain_labels_and_back_off() {
    let node = TestNode::start().await;
    let id = node.id();

    // An operator's drain: the job waits, says which node and how to undo it, and an event
    // says so too.
    node.client.node_action(id, "drain").await.unwrap();
    let drained = node.client.submit(&noop(None)).await.unwrap().id;
    let (code, message) = waiting(&node, drained)
        .await
        .expect("a queued job says why");
    assert_eq!(code, "too_few_nodes", "{message}");
    assert!(
        message.contains(&format!("node {id} drained by an operator"))
            && message.contains(&format!("chorus nodes undrain {id}")),
        "{message}"
    );
    wait_until("an event names the drained node", || async {
        let (status, body) = node
            .client
            .raw("GET", "/v1/events", Vec::new())
            .await
            .unwrap();
        status == 200
            && String::from_utf8_lossy(&body).contains(&format!(
                "wait for the cluster: needs 1 distinct nodes up, not draining, with the labels; there are 0 (node {id} drained by an operator"
            ))
    })
    .await;
    node.client.node_action(id, "undrain").await.unwrap();
    assert_eq!(
        must_finish(&node.client, drained).await.state,
        JobState::Succeeded
    );
    // A finished job waits for nothing.
    assert_eq!(waiting(&node, drained).await, None);

    // Labels no node carries.
    let mut gpu = model::FunctionSpec::builtin("gpu-only");
    gpu.kind = model::FunctionKind::Command;
    gpu.command = vec!["cat".into()];
    gpu.labels = vec!["gpu".into()];
    node.client.deploy(&gpu).await.unwrap();
    let stuck = node
        .client
        .submit(&JobSpec {
            function: "gpu-only".into(),
            ..noop(None)
        })
        .await
        .unwrap()
        .id;
    let (code, message) = waiting(&node, stuck).await.unwrap();
    assert_eq!(code, "no_node_with_labels", "{message}");
    assert!(message.contains("[gpu]"), "{message}");

    // A retry's back-off.
    let mut flaky = model::FunctionSpec::builtin("fail");
    flaky.retry.max_attempts = 2;
    flaky.retry.backoff_initial_ms = 60_000;
    flaky.retry.jitter = 0.0;
    node.client.deploy(&flaky).await.unwrap();
    let backing_off = node
        .client
        .submit(&JobSpec {
            function: "fail".into(),
            input: json!({ "code": "flaky" }),
            ..noop(None)
        })
        .await
        .unwrap()
        .id;
    wait_until("the first try fails", || async {
        waiting(&node, backing_off)
            .await
            .is_some_and(|(code, _)| code == "backoff")
    })
    .await;
    let (_, message) = waiting(&node, backing_off).await.unwrap();
    assert!(message.contains("after try 1: due in"), "{message}");

    // The CLI prints it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args([
            "jobs",
            "get",
            &stuck.to_string(),
            "--server",
            &node.addr,
            "--data-dir",
        ])
        .arg(node.dir.path().join("data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("waiting: no_node_with_labels: no node carries the labels [gpu]"),
        "{out}"
    );
}

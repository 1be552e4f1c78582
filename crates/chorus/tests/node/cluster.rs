//! Multi-process clusters on loopback: three real nodes, faults by `kill -9`.

use crate::harness::{must_find, must_finish, wait_until, TestNode};
use model::{JobId, JobSpec, JobState};
use serde_json::json;
use std::collections::BTreeSet;

pub(crate) async fn cluster() -> Vec<TestNode> {
    let first = TestNode::start().await;
    let second = TestNode::join(&first).await;
    let third = TestNode::join(&first).await;
    let nodes = vec![first, second, third];
    wait_until("three voters are up", || async {
        let Ok(list) = nodes[0].client.nodes().await else {
            return false;
        };
        let rows = list["nodes"].as_array().unwrap();
        rows.len() == 3
            && rows
                .iter()
                .all(|n| n["status"] == "up" && n["role"] == "voter")
    })
    .await;
    nodes
}

pub(crate) fn leader_index(nodes: &[TestNode], leader: u64) -> usize {
    nodes.iter().position(|n| n.id() == leader).unwrap()
}

pub(crate) async fn leader(node: &TestNode) -> u64 {
    must_find("a leader is known", || async {
        node.client
            .nodes()
            .await
            .ok()
            .and_then(|n| n["leader"].as_u64())
    })
    .await
}

pub(crate) fn sleeps(n: usize, ms: u64) -> Vec<JobSpec> {
    (0..n)
        .map(|_| JobSpec {
            function: "sleep".into(),
            input: json!({ "ms": ms }),
            files: vec![],
            priority: 0,
            idempotency_key: None,
        })
        .collect()
}

pub(crate) async fn submit(node: &TestNode, specs: &[JobSpec]) -> Vec<JobId> {
    node.client
        .submit_batch(specs)
        .await
        .unwrap()
        .into_iter()
        .map(|r| match r {
            client::BatchResult::Submitted { id, .. } => id,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_another_and_loses_no_acknowledged_job() {
    let mut nodes = cluster().await;
    let old = leader(&nodes[0]).await;
    let li = leader_index(&nodes, old);
    let follower = (li + 1) % 3;
    let ids = submit(&nodes[follower], &sleeps(30, 300)).await;
    nodes[li].kill_9();
    let new = leader(&nodes[follower]).await;
    assert_ne!(new, old, "a new leader was elected");
    for id in ids {
        let job = must_finish(&nodes[follower].client, id).await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        assert!(
            job.attempts.last().unwrap().node != old || job.attempts.len() == 1,
            "{job:?}"
        );
    }
    // The cluster still takes writes with two of three voters.
    let more = submit(&nodes[(li + 2) % 3], &sleeps(3, 1)).await;
    for id in more {
        assert_eq!(
            must_finish(&nodes[follower].client, id).await.state,
            JobState::Succeeded
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_submitted_through_a_follower_starts_in_the_entry_that_submits_it() {
    let nodes = cluster().await;
    let li = leader_index(&nodes, leader(&nodes[0]).await);
    let follower = &nodes[(li + 1) % 3];
    // The leader places what a follower forwards: the attempts start at the submit's own
    // time (one entry), not at a later one proposed by the scheduling loop.
    for id in submit(follower, &sleeps(3, 1)).await {
        let job = must_finish(&follower.client, id).await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        assert_eq!(
            job.attempts[0].started_at_ms, job.submitted_at_ms,
            "{job:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_of_a_killed_node_finish_elsewhere() {
    let mut nodes = cluster().await;
    let leader_id = leader(&nodes[0]).await;
    let li = leader_index(&nodes, leader_id);
    let victim = (li + 1) % 3;
    let victim_id = nodes[victim].id();
    let ids = submit(&nodes[li], &sleeps(12, 2_000)).await;
    // Wait until the victim runs some of them, then kill it.
    wait_until("the victim runs attempts", || async {
        let Ok(list) = nodes[li].client.nodes().await else {
            return false;
        };
        list["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == victim_id && n["running"].as_u64() > Some(0))
    })
    .await;
    nodes[victim].kill_9();
    let mut moved = 0;
    for id in ids {
        let job = must_finish(&nodes[li].client, id).await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        if job.attempts.iter().any(|a| a.node == victim_id) {
            let lost = &job.attempts[0];
            assert_eq!(
                lost.error.as_ref().map(|e| e.code.as_str()),
                Some("node_lost"),
                "{job:?}"
            );
            assert_ne!(job.attempts.last().unwrap().node, victim_id);
            moved += 1;
        }
    }
    assert!(moved > 0, "some jobs ran on the killed node and moved");
    let list = nodes[li].client.nodes().await.unwrap();
    let status: BTreeSet<(u64, String)> = list["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_u64().unwrap(),
                n["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        status.contains(&(victim_id, "down".to_string())),
        "{status:?}"
    );
    // The loss is an alert in the cluster's events.
    let events = crate::harness::must_read_events(&nodes[li]).await;
    let lost = events.iter().find(|e| e["kind"] == "node_lost");
    let lost = lost.unwrap_or_else(|| panic!("no node_lost event: {events:?}"));
    assert_eq!(
        (lost["node"].as_u64(), lost["alert"].as_bool()),
        (Some(victim_id), Some(true))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_finishes_its_work_and_takes_no_more() {
    let nodes = cluster().await;
    let target_id = nodes[2].id();
    let first = submit(&nodes[0], &sleeps(6, 500)).await;
    nodes[0]
        .client
        .node_action(target_id, "drain")
        .await
        .unwrap();
    let later = submit(&nodes[1], &sleeps(12, 10)).await;
    for id in &first {
        assert_eq!(
            must_finish(&nodes[0].client, *id).await.state,
            JobState::Succeeded
        );
    }
    for id in &later {
        let job = must_finish(&nodes[0].client, *id).await;
        assert_eq!(job.state, JobState::Succeeded);
        assert!(
            job.attempts.iter().all(|a| a.node != target_id),
            "job {id} ran on the drained node"
        );
    }
    // Config set through one node is seen by every other.
    nodes[1]
        .client
        .set_config("scheduler.strategy", "cpu-load")
        .await
        .unwrap();
    for n in &nodes {
        let config = n.client.config().await.unwrap();
        assert_eq!(config["config"]["scheduler.strategy"], "cpu-load");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_replaces_a_voter_that_is_gone() {
    let mut nodes = cluster().await;
    // A fourth node joins as a learner: the cluster has its three voters.
    nodes.push(TestNode::join(&nodes[0]).await);
    let learner_id = nodes[3].id();
    let role_of = |list: &serde_json::Value, id: u64| {
        list["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .map(|n| n["role"].as_str().unwrap().to_string())
    };
    wait_until("the fourth node is a learner", || async {
        // A read may fail while the membership changes: that is a "not yet".
        let Ok(list) = nodes[0].client.nodes().await else {
            return false;
        };
        role_of(&list, learner_id).as_deref() == Some("learner")
    })
    .await;
    // Kill a voter that is not the leader; after the stabilisation time the learner takes its
    // vote, and the dead node is demoted.
    let leader_id = leader(&nodes[0]).await;
    let li = leader_index(&nodes[..3], leader_id);
    let victim = (li + 1) % 3;
    let victim_id = nodes[victim].id();
    nodes[victim].kill_9();
    wait_until(
        "the learner is promoted and the dead voter demoted",
        || async {
            let Ok(list) = nodes[li].client.nodes().await else {
                return false;
            };
            role_of(&list, learner_id).as_deref() == Some("voter")
                && role_of(&list, victim_id).as_deref() == Some("learner")
        },
    )
    .await;
    // The cluster still commits.
    let ids = submit(&nodes[3], &sleeps(2, 1)).await;
    for id in ids {
        assert_eq!(
            must_finish(&nodes[li].client, id).await.state,
            JobState::Succeeded
        );
    }
}

/// A command function from a shell script: `sh -c SCRIPT`, each request one line on stdin.
fn script_function(name: &str, script: &str) -> model::FunctionSpec {
    let mut spec = model::FunctionSpec::builtin(name);
    spec.kind = model::FunctionKind::Command;
    spec.command = vec!["sh".into(), "-c".into(), script.into()];
    spec
}

fn one(function: &str) -> Vec<JobSpec> {
    vec![JobSpec {
        function: function.into(),
        input: json!({}),
        files: vec![],
        priority: 0,
        idempotency_key: None,
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_in_mode_all_run_everywhere_and_keep_every_output() {
    let nodes = cluster().await;
    // Each attempt writes a file into its out dir and answers with its own process id.
    let mut spec = script_function(
        "record",
        r#"while IFS= read -r line; do
             out=$(printf '%s' "$line" | sed 's/.*"out_dir":"\([^"]*\)".*/\1/')
             sleep 0.2; echo "take $$" > "$out/take.txt"
             printf '{"output":{"pid":%s}}\n' $$
           done"#,
    );
    spec.backups = 2;
    nodes[0].client.deploy(&spec).await.unwrap();
    let ids = submit(&nodes[1], &[one("record"), one("record")].concat()).await;
    for id in ids {
        let job = must_finish(&nodes[0].client, id).await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        let on: BTreeSet<u64> = job.attempts.iter().map(|a| a.node).collect();
        assert_eq!(
            (job.attempts.len(), on.len()),
            (3, 3),
            "three attempts on three nodes: {job:?}"
        );
        assert_eq!(job.tries, 1);
        let mut pids = BTreeSet::new();
        for attempt in &job.attempts {
            assert!(attempt.error.is_none(), "{job:?}");
            pids.insert(
                attempt
                    .output
                    .as_ref()
                    .expect("every attempt keeps its output")["pid"]
                    .as_u64()
                    .unwrap(),
            );
            assert_eq!(
                attempt.objects,
                vec![format!("jobs/{id}/{}/take.txt", attempt.id)]
            );
            // Each take is stored by the node that recorded it.
            let ran = nodes.iter().find(|n| n.id() == attempt.node).unwrap();
            let take = ran.client.get_object(&attempt.objects[0]).await.unwrap();
            assert!(take.starts_with(b"take "), "{take:?}");
        }
        assert_eq!(pids.len(), 3, "three processes: {job:?}");
        assert_eq!(job.objects.len(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedge_overtakes_a_straggler_which_is_then_stopped() {
    let nodes = cluster().await;
    // The first attempt to run takes the marker and straggles; any later one answers at once.
    let marker = nodes[0].dir.path().join("straggler");
    let mut spec = script_function(
        "hedged",
        r#"while IFS= read -r line; do
             if mkdir "$MARKER" 2>/dev/null; then sleep 30; fi
             printf '{"output":{"pid":%s}}\n' $$
           done"#,
    );
    spec.env
        .insert("MARKER".into(), marker.display().to_string());
    spec.backups = 1;
    spec.backup_mode = model::BackupMode::Hedge;
    spec.hedge_delay_ms = 300;
    nodes[0].client.deploy(&spec).await.unwrap();
    let id = submit(&nodes[2], &one("hedged")).await[0];
    let job = must_finish(&nodes[0].client, id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.attempts.len(), 2, "{job:?}");
    let (straggler, hedge) = (&job.attempts[0], &job.attempts[1]);
    assert_ne!(straggler.node, hedge.node);
    assert!(
        hedge.started_at_ms >= straggler.started_at_ms + 300,
        "the hedge waited its delay: {job:?}"
    );
    assert!(
        job.finished_at_ms.unwrap() < straggler.started_at_ms + 10_000,
        "the hedge won: {job:?}"
    );
    assert_eq!(
        straggler.error.as_ref().map(|e| e.code.as_str()),
        Some("superseded")
    );
    assert!(marker.exists());
    // The straggler's node stops it: nothing runs there any more.
    wait_until("the straggler is stopped", || async {
        let Ok(list) = nodes[0].client.nodes().await else {
            return false;
        };
        list["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["running"].as_u64() == Some(0))
    })
    .await;
}

/// Tells `node` to send no raft traffic to `blocked` (fault injection).
pub(crate) async fn cut_off(node: &TestNode, blocked: &[u64]) {
    let body = serde_json::to_vec(&json!({ "blocked_nodes": blocked })).unwrap();
    let (status, answer) = node.client.raw("PUT", "/v1/faults", body).await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_cannot_commit_while_the_majority_carries_on_then_it_heals() {
    let nodes = cluster().await;
    let old = leader(&nodes[0]).await;
    let li = leader_index(&nodes, old);
    let (a, b) = ((li + 1) % 3, (li + 2) % 3);
    // The leader alone on one side, the two others on the other.
    cut_off(&nodes[li], &[nodes[a].id(), nodes[b].id()]).await;
    cut_off(&nodes[a], &[old]).await;
    cut_off(&nodes[b], &[old]).await;

    // The majority elects a new leader and takes writes; its jobs run and finish.
    let new = must_find("the majority elects a leader", || async {
        let list = nodes[a].client.nodes().await.ok()?;
        list["leader"].as_u64().filter(|&l| l != old)
    })
    .await;
    assert!(new == nodes[a].id() || new == nodes[b].id());
    let during = submit(&nodes[b], &sleeps(6, 50)).await;
    for id in &during {
        let job = must_finish(&nodes[a].client, *id).await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    }

    // The minority cannot commit: a write there fails in bounded time with `unavailable`,
    // and so does a linearizable read; a stale read still answers.
    let refused = nodes[li].client.submit(&sleeps(1, 1)[0]).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(model::ErrorCode::Unavailable),
        "{refused}"
    );
    let (status, _) = nodes[li]
        .client
        .raw("GET", &format!("/v1/jobs/{}", during[0]), Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 503, "a linearizable read on the minority");
    let (status, _) = nodes[li]
        .client
        .raw("GET", "/v1/jobs?stale=true", Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 200, "a stale read on the minority");

    // Heal: the old leader follows the new one and catches up on what it missed.
    for node in &nodes {
        cut_off(node, &[]).await;
    }
    for id in &during {
        let job = must_find("the healed node has the majority's jobs", || async {
            nodes[li]
                .client
                .job(*id)
                .await
                .ok()
                .filter(|j| j.state == JobState::Succeeded)
        })
        .await;
        assert_eq!(job.id, *id);
    }
    let after = submit(&nodes[li], &sleeps(3, 1)).await;
    for id in after {
        assert_eq!(
            must_finish(&nodes[a].client, id).await.state,
            JobState::Succeeded
        );
    }
    // One history: every node lists the same jobs; the refused write left none behind.
    let listed = |i: usize| {
        let client = &nodes[i].client;
        async move {
            let page = client.list_jobs(&Default::default()).await.unwrap();
            page.jobs
                .iter()
                .map(|j| (j.id, j.state))
                .collect::<Vec<_>>()
        }
    };
    let first = listed(0).await;
    assert_eq!(first.len(), during.len() + 3, "{first:?}");
    assert_eq!(listed(1).await, first);
    assert_eq!(listed(2).await, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_weights_share_out_work_under_weighted_round_robin() {
    let nodes = cluster().await;
    let client = &nodes[0].client;
    let (heavy, light, off) = (nodes[0].id(), nodes[1].id(), nodes[2].id());
    for (key, value) in [
        ("scheduler.strategy".to_string(), "weighted-round-robin"),
        (format!("node.{heavy}.weight"), "3"),
        (format!("node.{light}.weight"), "1"),
        (format!("node.{off}.weight"), "0"),
    ] {
        client.set_config(&key, value).await.unwrap();
    }
    for (key, bad) in [
        (format!("node.{heavy}.weight"), "-1"),
        ("scheduler.cpu_threshold".into(), "120"),
    ] {
        let refused = client.set_config(&key, bad).await.unwrap_err();
        let code = refused.code();
        assert_eq!(
            code,
            Some(model::ErrorCode::InvalidInput),
            "{key}={bad}: {refused}"
        );
    }
    let mut ran: std::collections::BTreeMap<u64, usize> = Default::default();
    // Small batches, each placed while the nodes have room, so the weights alone decide.
    for _ in 0..8 {
        for id in submit(&nodes[1], &sleeps(4, 1)).await {
            let job = must_finish(client, id).await;
            assert_eq!(job.state, JobState::Succeeded, "{job:?}");
            *ran.entry(job.attempts[0].node).or_default() += 1;
        }
    }
    assert_eq!(ran.get(&off), None, "a node of weight 0 got work: {ran:?}");
    assert_eq!(
        (ran[&heavy], ran[&light]),
        (24, 8),
        "3:1 by weight: {ran:?}"
    );
}

async fn snapshot_index(node: &TestNode) -> u64 {
    let cluster = node.client.cluster().await.unwrap();
    cluster["snapshot_index"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_late_catches_up_from_a_snapshot() {
    let first = TestNode::start().await;
    // Test nodes snapshot every 200 entries and keep 40 after: jobs one after the other (a
    // submit and a result entry each) until the early log is purged.
    let mut ids = Vec::new();
    while snapshot_index(&first).await < 400 {
        let id = submit(&first, &sleeps(1, 0)).await[0];
        assert_eq!(
            must_finish(&first.client, id).await.state,
            JobState::Succeeded
        );
        ids.push(id);
        let cluster = first.client.cluster().await.unwrap();
        assert!(
            ids.len() < 2_000,
            "no snapshot after {} jobs: {cluster}",
            ids.len()
        );
    }
    let second = TestNode::join(&first).await;
    // The newcomer holds the whole history, read from its own state.
    for id in [ids[0], ids[ids.len() / 2], ids[ids.len() - 1]] {
        must_find("the newcomer has the job", || async {
            let path = format!("/v1/jobs/{id}?stale=true");
            let (status, _) = second.client.raw("GET", &path, Vec::new()).await.ok()?;
            (status == 200).then_some(())
        })
        .await;
    }
    assert!(
        snapshot_index(&second).await >= 400,
        "the newcomer installed the leader's snapshot"
    );
    // And it serves: jobs submitted through it run.
    for id in submit(&second, &sleeps(4, 1)).await {
        assert_eq!(
            must_finish(&second.client, id).await.state,
            JobState::Succeeded
        );
    }
}

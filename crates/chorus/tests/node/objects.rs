//! Issue 11, point 1: with the default local store, objects cross nodes. An upload is on two
//! nodes' disks before it is acknowledged, any node runs a job on it (fetching it from a node
//! that holds it), outputs and logs read through every node, and losing the node that took an
//! upload loses nothing.

use crate::harness::{must_finish, wait_until, TestNode};
use model::{FunctionSpec, JobSpec, JobState};
use serde_json::json;

/// Three nodes labelled `n1`, `n2` and `n3`, all voters and up.
async fn labelled_cluster() -> Vec<TestNode> {
    let first = TestNode::start_with(2, &["--label", "n1"]).await;
    let second = TestNode::join_with(&first, &["--label", "n2"]).await;
    let third = TestNode::join_with(&first, &["--label", "n3"]).await;
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

/// Deploys the example `hello` function (it logs a greeting and writes the size and SHA-256
/// of each input file to `sizes.json`) as `name`, for nodes with `label` only.
async fn deploy_hello_on(node: &TestNode, name: &str, label: &str) {
    let root = crate::harness::repo_root();
    let text = std::fs::read_to_string(root.join("examples/hello.toml")).unwrap();
    let mut spec: FunctionSpec = toml::from_str(&text).unwrap();
    spec.name = name.into();
    spec.command[1] = root.join("examples/hello.py").display().to_string();
    spec.labels = vec![label.into()];
    // Right after a node is killed the cluster may be electing a leader: asked again then.
    crate::harness::must_find("the function is deployed", || async {
        match node.client.deploy(&spec).await {
            Ok(_) => Some(()),
            Err(e) if e.code() == Some(model::ErrorCode::Unavailable) => None,
            Err(e) => panic!("deploying {name}: {e}"),
        }
    })
    .await;
}

fn hello(function: &str, file: &str) -> JobSpec {
    JobSpec {
        function: function.into(),
        input: json!({ "name": "ada" }),
        files: vec![file.into()],
        priority: 0,
        idempotency_key: None,
    }
}

/// Which of the nodes hold a copy of `key` on their disk.
fn holders(nodes: &[TestNode], key: &str) -> Vec<usize> {
    (0..nodes.len())
        .filter(|&i| nodes[i].dir.path().join("data/objects").join(key).is_file())
        .collect()
}

/// Uploads `bytes` as `key` through `node`; returns the SHA-256 the job will report.
async fn upload(node: &TestNode, key: &str, bytes: &[u8]) -> String {
    let file = node.dir.path().join("upload.bin");
    std::fs::write(&file, bytes).unwrap();
    node.client.put_object(key, &file).await.unwrap();
    model::signature::body_sha256_hex(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_uploaded_through_one_node_runs_on_the_others_and_outputs_and_logs_read_everywhere(
) {
    let nodes = labelled_cluster().await;
    let key = "uploads/cross.bin";
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sha256 = upload(&nodes[0], key, &data).await;
    // Acknowledged once on two disks: the node that took it and one more.
    let held = holders(&nodes, key);
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(held.contains(&0), "{held:?}");
    // A short name makes a log small enough to travel in the log entry; a long one makes it
    // an object with copies of its own.
    let long_name = "ada".repeat(500);
    for (label, index, name) in [("n2", 1, "ada"), ("n3", 2, long_name.as_str())] {
        let function = format!("hello-{label}");
        deploy_hello_on(&nodes[0], &function, label).await;
        let mut job = hello(&function, key);
        job.input = json!({ "name": name });
        let submitted = nodes[0].client.submit(&job).await.unwrap();
        let done = must_finish(&nodes[0].client, submitted.id).await;
        assert_eq!(done.state, JobState::Succeeded, "{done:?}");
        assert_eq!(done.attempts.len(), 1, "{done:?}");
        assert_eq!(done.attempts[0].node, nodes[index].id(), "{done:?}");
        assert_eq!(done.objects.len(), 1, "{done:?}");
        // Its output and its log read the same through every node.
        for node in &nodes {
            let output = node.client.get_object(&done.objects[0]).await.unwrap();
            let sizes: serde_json::Value = serde_json::from_slice(&output).unwrap();
            assert_eq!(
                sizes,
                json!([{ "bytes": data.len(), "sha256": sha256 }]),
                "through {}",
                node.addr
            );
            let log = node.client.logs(submitted.id, None).await.unwrap();
            assert_eq!(String::from_utf8_lossy(&log), format!("greeting {name}\n"));
        }
        let log_key = format!("logs/{}/{}.log", done.id, done.attempts[0].id);
        if name.len() > model::LOG_INLINE_MAX {
            assert_eq!(done.attempts[0].log, None);
            assert_eq!(holders(&nodes, &log_key).len(), 2, "the log has two copies");
        } else {
            assert!(done.attempts[0].log.is_some());
            assert!(
                holders(&nodes, &log_key).is_empty(),
                "a small log is no file"
            );
        }
        let output_held = holders(&nodes, &done.objects[0]);
        assert_eq!(output_held.len(), 2, "{output_held:?}");
        assert!(output_held.contains(&index), "{output_held:?}");
    }
    // The input reads through every node too, also one that holds no copy.
    for node in &nodes {
        assert_eq!(node.client.get_object(key).await.unwrap().to_vec(), data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_outlives_kill_9_of_the_node_that_took_it() {
    let mut nodes = labelled_cluster().await;
    let key = "uploads/survivor.bin";
    let data = vec![5u8; 200_000];
    let sha256 = upload(&nodes[0], key, &data).await;
    let held = holders(&nodes, key);
    assert_eq!(held.len(), 2, "{held:?}");
    // The job runs on the live node that holds no copy: it must fetch the input from the
    // other one, while the node that took the upload is gone.
    let copy = *held.iter().find(|&&i| i != 0).unwrap();
    let runner = 3 - copy;
    let label = format!("n{}", runner + 1);
    nodes[0].kill_9();
    deploy_hello_on(&nodes[copy], "hello-after", &label).await;
    let submitted = nodes[copy]
        .client
        .submit(&hello("hello-after", key))
        .await
        .unwrap();
    let done = must_finish(&nodes[copy].client, submitted.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(
        done.attempts.last().unwrap().node,
        nodes[runner].id(),
        "{done:?}"
    );
    let output = nodes[runner]
        .client
        .get_object(&done.objects[0])
        .await
        .unwrap();
    let sizes: serde_json::Value = serde_json::from_slice(&output).unwrap();
    assert_eq!(sizes, json!([{ "bytes": data.len(), "sha256": sha256 }]));
    // With two nodes left, a new upload still gets its second copy.
    upload(&nodes[runner], "uploads/after.bin", b"after").await;
    assert_eq!(holders(&nodes, "uploads/after.bin").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_may_copy_objects() {
    let node = TestNode::start().await;
    let file = node.dir.path().join("x.bin");
    std::fs::write(&file, b"x").unwrap();
    node.client.put_object("uploads/x", &file).await.unwrap();
    // An admin key is not the cluster key.
    for (method, body) in [("GET", Vec::new()), ("PUT", b"y".to_vec())] {
        let (status, answer) = node
            .client
            .raw(method, "/v1/peer/objects/uploads/x", body)
            .await
            .unwrap();
        assert_eq!(status, 403, "{}", String::from_utf8_lossy(&answer));
        let error: model::ApiError = serde_json::from_slice(&answer).unwrap();
        assert_eq!(error.code, model::ErrorCode::Forbidden);
    }
    // A bad cluster signature is refused, even on a connection with a node's certificate.
    let forged = node.node_client_with(node::CLUSTER_KEY_ID, &"00".repeat(32));
    let (status, answer) = forged
        .raw("GET", "/v1/peer/objects/uploads/x", Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&answer));
    // The cluster key is for raft and copies, nothing else.
    let (status, _) = forged.raw("GET", "/v1/jobs", Vec::new()).await.unwrap();
    assert_eq!(status, 403);
}

/// A node that held a copy is lost for good (killed, then removed): the object's other holder
/// copies it to the node that had none, so a second loss still loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_lost_with_its_node_is_made_again_on_another() {
    let mut nodes = labelled_cluster().await;
    let key = "uploads/twice-lost.bin";
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    upload(&nodes[0], key, &data).await;
    let held = holders(&nodes, key);
    assert_eq!(held.len(), 2, "{held:?}");
    let lost = *held.iter().find(|&&i| i != 0).unwrap();
    let spare = (0..3).find(|i| !held.contains(i)).unwrap();
    nodes[lost].kill_9();
    let lost_id = nodes[lost].id();
    crate::harness::must_find("the lost node is removed", || async {
        nodes[0].client.node_action(lost_id, "remove").await.ok()
    })
    .await;
    wait_until("the object is copied to the node that had none", || async {
        holders(&nodes, key).contains(&spare)
    })
    .await;
    // Recorded once committed: the writer's metric counts it then.
    wait_until("the repair is recorded", || async {
        let Ok((_, body)) = nodes[0].client.get_public("/metrics").await else {
            return false;
        };
        let text = String::from_utf8_lossy(&body);
        crate::harness::metric(&text, "chorus_object_repairs_total") == Some(1.0)
    })
    .await;
    // With the writer gone too, the spare reads its own copy: its record names it a holder
    // (one voter of two is left: no quorum and no write, but what a node holds reads).
    nodes[0].kill_9();
    wait_until("the spare reads the object alone", || async {
        nodes[spare]
            .client
            .get_object(key)
            .await
            .is_ok_and(|b| b.to_vec() == data)
    })
    .await;
}

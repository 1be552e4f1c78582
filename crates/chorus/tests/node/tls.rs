//! TLS by default (issue 14): a cluster started as the README says runs over mutual TLS, a
//! client must trust the cluster CA, a join pins the CA, and plain HTTP is only what an
//! operator asks for, on loopback.

use crate::harness::{must_finish, wait_until, TestNode, DEADLINE};
use crate::security::cluster_client;
use client::ClientError;
use model::{ErrorCode, JobState};
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Up nodes in the listing `node` answers.
async fn up_nodes(node: &TestNode) -> usize {
    let nodes = node.client.nodes().await.unwrap();
    nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["status"] == "up")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_runs_over_mutual_tls() {
    let first = TestNode::start().await;
    let second = TestNode::join(&first).await;
    let third = TestNode::join(&first).await;
    wait_until("three nodes are up", || async {
        up_nodes(&first).await == 3
    })
    .await;
    // Every node presents a certificate of the one cluster CA, and its keys are private.
    for node in [&first, &second, &third] {
        assert_eq!(node.ca_pin(), first.ca_pin());
        let data = node.dir.path().join("data");
        for file in [node::tls::NODE_KEY_FILE, node::tls::CA_KEY_FILE] {
            assert_eq!(mode(&data.join(file)), 0o600, "{file}");
        }
    }
    // Writes through a follower travel to the leader and back over mutual TLS; the jobs run.
    for node in [&second, &third] {
        let job = node
            .client
            .submit(&crate::job("noop", serde_json::json!({})))
            .await
            .unwrap();
        assert_eq!(
            must_finish(&node.client, job.id).await.state,
            JobState::Succeeded
        );
    }
    // The raft routes want a node certificate besides the cluster secret: with the secret
    // alone, on a connection without a client certificate, a call is refused.
    let secret = std::fs::read_to_string(first.dir.path().join("data/cluster.key")).unwrap();
    let without_certificate = first.client_with(node::CLUSTER_KEY_ID, secret.trim());
    let (status, body) = without_certificate
        .raw("POST", "/v1/raft/read_index?from=x", b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains("node certificate"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // With a node's certificate the same secret is a node's call.
    let (status, body) = cluster_client(&second)
        .raw("POST", "/v1/raft/read_index?from=x", b"{}".to_vec())
        .await
        .unwrap();
    assert_ne!(status, 403, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_request_to_a_node_is_refused() {
    let node = TestNode::start().await;
    let plain = crate::harness::plain_http();
    let answer = plain
        .get(format!("http://{}/healthz", node.addr))
        .send()
        .await;
    assert!(answer.is_err(), "a node answered plain HTTP: {answer:?}");
    // The node is none the worse for it.
    assert_eq!(node.client.get_public("/healthz").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_without_the_cluster_ca_is_refused() {
    let node = TestNode::start().await;
    // The system's roots know nothing of the cluster CA.
    let stranger = client::Client::new(&node.addr, node.credentials());
    let error = stranger.list_jobs(&Default::default()).await.unwrap_err();
    assert!(matches!(error, ClientError::Untrusted(_)), "{error:?}");
    assert_eq!(error.code(), Some(ErrorCode::UntrustedServer));
    // Another cluster's CA is no better.
    let other = TestNode::start().await;
    let wrong_ca = other.client_at(&node.addr, node.credentials());
    let error = wrong_ca.list_jobs(&Default::default()).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::UntrustedServer), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_shows_the_chain_from_the_cluster_ca() {
    let node = TestNode::start().await;
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect", &node.addr, "-showcerts", "-CAfile"])
        .arg(node.ca_file())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("openssl is installed (Debian: openssl)");
    let text = String::from_utf8_lossy(&out.stdout);
    // The node's certificate, issued by the cluster CA, then the CA itself.
    assert_eq!(
        text.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "{text}"
    );
    assert!(
        text.contains("s:CN=chorus node") || text.contains("s:CN = chorus node"),
        "{text}"
    );
    assert!(
        text.contains("i:CN=chorus cluster CA") || text.contains("i:CN = chorus cluster CA"),
        "{text}"
    );
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_with_a_wrong_ca_pin_fails_with_a_clear_error() {
    let first = TestNode::start().await;
    let other = TestNode::start().await;
    // The pin of another cluster's CA: the member's chain does not hold it.
    let mut node = TestNode::joining(&first, first.credentials());
    let pin = other.ca_pin();
    node.set_args(&["--ca-pin", &pin]);
    node.launch();
    let started = Instant::now();
    while !node.has_exited() {
        assert!(started.elapsed() < DEADLINE, "the join did not fail");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let log = node.log();
    assert!(log.contains("untrusted_server"), "{log}");
    assert!(log.contains("does not hold the pinned CA"), "{log}");
    assert!(log.contains(&pin), "{log}");
    // Nothing reached the cluster: no node was admitted.
    let nodes = first.client.nodes().await.unwrap();
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 1, "{nodes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_served_only_when_asked_for_and_only_on_loopback() {
    let node = TestNode::start_with(2, &["--insecure-http"]).await;
    assert!(node.client.base_url().starts_with("http://"));
    assert_eq!(node.client.get_public("/readyz").await.unwrap().0, 200);
    assert!(!node.ca_file().exists(), "no CA without TLS");
    // On a network address it takes a second flag.
    let port = crate::harness::free_port();
    let data = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["serve", "--insecure-http", "--listen"])
        .arg(format!("0.0.0.0:{port}"))
        .arg("--data-dir")
        .arg(data.path())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--insecure-http-any-address"), "{stderr}");
}

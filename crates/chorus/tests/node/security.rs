//! Security findings, one test each, named after the finding: files at rest, least privilege
//! of keys, replays and signatures, secrets in the replicated state.

use crate::harness::{must_finish, TestNode};
use crate::job;
use model::{ErrorCode, JobState, Scope};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_key_is_not_world_readable() {
    let node = TestNode::start().await;
    let data = node.dir.path().join("data");
    for file in ["cluster.key", "node.id", node::ADMIN_KEY_FILE] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    assert_eq!(mode(&data), 0o700, "the data dir");
    // Nothing is left under a temporary name: the identity files were renamed into place.
    let names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

/// Submits jobs until the node has written a snapshot (the harness snapshots every 200
/// entries: one entry per submit); the registry's directory.
async fn must_snapshot(node: &TestNode) -> std::path::PathBuf {
    let raft = node.dir.path().join("data/raft");
    let mut submitted = 0;
    while !raft.join("snapshot.json").exists() {
        assert!(submitted < 2_000, "no snapshot after {submitted} submits");
        let mut jobs = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let client = node.client.clone();
            jobs.spawn(async move { client.submit(&job("noop", json!({}))).await.unwrap() });
        }
        let last = jobs.join_all().await.pop().unwrap();
        submitted += 20;
        must_finish(&node.client, last.id).await;
    }
    raft
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_log_and_snapshot_are_not_world_readable() {
    let node = TestNode::start().await;
    let raft = must_snapshot(&node).await;
    assert_eq!(mode(&raft), 0o700, "the registry's directory");
    assert_eq!(mode(&raft.join("raft.redb")), 0o600, "vote and meta");
    assert_eq!(mode(&raft.join("snapshot.json")), 0o600, "the snapshot");
    assert_eq!(mode(&raft.join("log")), 0o700, "the log's directory");
    let segments = log_segments(&raft);
    assert!(!segments.is_empty(), "the log has segment files");
    for segment in segments {
        assert_eq!(mode(&segment), 0o600, "{}", segment.display());
    }
}

/// The log's segment files in a registry directory.
fn log_segments(raft: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(raft.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// A client that calls as a node: with the node's certificate and the cluster key from its
/// data dir.
pub(crate) fn cluster_client(node: &TestNode) -> client::Client {
    let secret = std::fs::read_to_string(node.dir.path().join("data/cluster.key")).unwrap();
    node.node_client_with(node::CLUSTER_KEY_ID, secret.trim())
}

fn error_code(body: &[u8]) -> ErrorCode {
    serde_json::from_slice::<model::ApiError>(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
        .code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_routes_accept_the_cluster_identity_only_never_an_admin_key() {
    let node = TestNode::start().await;
    let grab = json!({ "create_key": { "key": {
        "id": "ck_minted", "secret": "00".repeat(32), "scopes": ["admin"], "created_at_ms": 0
    }}});
    for kind in ["propose", "read_index", "append", "vote"] {
        let (status, body) = node
            .client
            .raw(
                "POST",
                &format!("/v1/raft/{kind}?from=x"),
                serde_json::to_vec(&grab).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            (status, error_code(&body)),
            (403, ErrorCode::Forbidden),
            "{kind}"
        );
    }
    let keys = node.client.list_keys().await.unwrap();
    assert!(!keys.to_string().contains("ck_minted"), "{keys}");
}

/// What the leader answered a forwarded `propose`: the command's response.
async fn propose_as_a_follower(node: &TestNode, command: serde_json::Value) -> serde_json::Value {
    let (status, body) = cluster_client(node)
        .raw(
            "POST",
            "/v1/raft/propose?from=127.0.0.1:1",
            serde_json::to_vec(&command).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propose_from_a_follower_is_validated_by_the_leader_as_the_api_call_would_be() {
    let node = TestNode::start().await;
    let answer = propose_as_a_follower(
        &node,
        json!({ "set_config": { "key": "retention", "value": "garbage" } }),
    )
    .await;
    assert_eq!(
        answer["applied"]["value"]["rejected"]["code"], "invalid_input",
        "{answer}"
    );
    let config = node.client.config().await.unwrap();
    assert!(config["config"].get("retention").is_none(), "{config}");
    // A placement on a node the cluster does not have.
    let queued = node
        .client
        .submit(&job("sleep", json!({ "ms": 0 })))
        .await
        .unwrap();
    let answer = propose_as_a_follower(
        &node,
        json!({ "start_attempts": { "now_ms": 0, "node": 4242, "jobs": [queued.id] } }),
    )
    .await;
    assert_eq!(
        answer["applied"]["value"]["rejected"]["code"], "invalid_input",
        "{answer}"
    );
    // A good one is taken as before.
    let answer = propose_as_a_follower(
        &node,
        json!({ "set_config": { "key": "retention", "value": "3d" } }),
    )
    .await;
    assert_eq!(answer["applied"]["value"], "done", "{answer}");
    assert_eq!(
        must_finish(&node.client, queued.id).await.state,
        JobState::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_key_cannot_forge_outputs_or_logs_or_cancel_jobs_of_others() {
    let node = TestNode::start().await;
    let key = node.client.create_key(&[Scope::Submit]).await.unwrap();
    let submitter = node.client_with(&key.id, &key.secret);
    let file = node.dir.path().join("forged.txt");
    std::fs::write(&file, "FORGED by submit key").unwrap();
    for forged in ["jobs/1/1/out.txt", "logs/1/1.log", "elsewhere/x"] {
        let err = submitter.put_object(forged, &file).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{forged}: {err}");
    }
    // Not even an admin writes where only nodes write.
    let err = node
        .client
        .put_object("logs/1/1.log", &file)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    submitter
        .put_object("uploads/song.txt", &file)
        .await
        .unwrap();
    // Another's job: neither cancelled nor read by the submit key; its own job is both.
    let theirs = node
        .client
        .submit(&job("sleep", json!({ "ms": 60_000 })))
        .await
        .unwrap();
    let err = submitter.cancel(theirs.id).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    assert_eq!(
        submitter.job(theirs.id).await.unwrap_err().code(),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        submitter.logs(theirs.id, None).await.unwrap_err().code(),
        Some(ErrorCode::Forbidden)
    );
    let listing = submitter.list_jobs(&client::JobFilter::default()).await;
    assert_eq!(listing.unwrap_err().code(), Some(ErrorCode::Forbidden));
    let mine = submitter
        .submit(&job("sleep", json!({ "ms": 60_000 })))
        .await
        .unwrap();
    assert_eq!(
        submitter.cancel(mine.id).await.unwrap().state,
        JobState::Cancelled
    );
    assert_eq!(
        node.client.cancel(theirs.id).await.unwrap().state,
        JobState::Cancelled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_works_with_a_submit_only_key() {
    let node = TestNode::start().await;
    let key = node.client.create_key(&[Scope::Submit]).await.unwrap();
    let server = node.cli_server_args();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
            .args(["submit", "noop", "--wait", "--json"])
            .args(&server)
            .env("CHORUS_KEY_ID", &key.id)
            .env("CHORUS_KEY_SECRET", &key.secret)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["state"], "succeeded", "{job}");
    // One job, not a duplicate from a retried wait.
    let all = node
        .client
        .list_jobs(&client::JobFilter::default())
        .await
        .unwrap();
    assert_eq!(all.jobs.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_and_the_listing_shows_their_last_use() {
    let node = TestNode::start().await;
    let short = node
        .client
        .create_key_expiring(&[Scope::Read], Some(std::time::Duration::from_secs(1)))
        .await
        .unwrap();
    let expires_at = short.expires_at_ms.expect("an expiry");
    let reader = node.client_with(&short.id, &short.secret);
    // Used while it is valid (the call may already come too late on a slow machine).
    let used = reader.list_jobs(&client::JobFilter::default()).await;
    crate::harness::wait_until("the key expires", || async {
        let answer = reader.list_jobs(&client::JobFilter::default()).await;
        answer.is_err_and(|e| e.code() == Some(ErrorCode::Unauthorized))
    })
    .await;
    assert!(crate::harness::now_ms() >= expires_at);
    if used.is_ok() {
        crate::harness::wait_until("the listing shows the key's use", || async {
            let keys = node.client.list_keys().await.unwrap();
            keys["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["id"] == short.id.as_str() && k["last_used_ms"].is_u64())
        })
        .await;
    }
    // The admin key of the node itself is used by this test: the CLI shows when.
    // HTTPS, trusting the cluster CA the CLI finds in the data dir.
    let server = node.client.base_url().to_string();
    let data = node.dir.path().join("data");
    let cli = move |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
            .args(args)
            .args(["--server", &server])
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let created = tokio::task::spawn_blocking({
        let cli = cli.clone();
        move || {
            cli(&[
                "keys", "create", "--scope", "submit", "--ttl", "1h", "--json",
            ])
        }
    })
    .await
    .unwrap();
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let ttl_ms = created["expires_at_ms"].as_u64().unwrap() - crate::harness::now_ms();
    assert!((3_500_000..=3_600_000).contains(&ttl_ms), "{created}");
    let admin_id = node.credentials().key_id;
    crate::harness::wait_until("keys list shows the admin key's last use", || {
        let cli = cli.clone();
        let admin_id = admin_id.clone();
        async move {
            let listing = tokio::task::spawn_blocking(move || cli(&["keys", "list"]))
                .await
                .unwrap();
            listing
                .lines()
                .any(|l| l.starts_with(&admin_id) && l.contains("last used 20"))
        }
    })
    .await;
}

/// A `POST /v1/jobs` signed for `signed_for` (its host), sent to the node at `to` as it was
/// captured: same headers, same Host, same body. The status and the error code, if any.
async fn send_captured(
    http: &reqwest::Client,
    headers: &[(&'static str, String)],
    signed_for: &str,
    to: &str,
    body: &[u8],
) -> (u16, Option<ErrorCode>) {
    let mut request = http
        .post(format!("https://{to}/v1/jobs"))
        .header("host", signed_for)
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status().as_u16();
    let bytes = answer.bytes().await.unwrap();
    let code = serde_json::from_slice::<model::ApiError>(&bytes)
        .ok()
        .map(|e| e.code);
    (status, code)
}

fn captured_submit(node: &TestNode) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let body = serde_json::to_vec(&json!({ "function": "noop" })).unwrap();
    let hash = model::signature::body_sha256_hex(&body);
    let now_s = crate::harness::now_ms() / 1000;
    (node.client.sign("POST", "/v1/jobs", &hash, now_s), body)
}

async fn job_count(node: &TestNode) -> usize {
    let filter = client::JobFilter::default();
    node.client.list_jobs(&filter).await.unwrap().jobs.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_replayed_to_the_other_node_of_a_two_node_cluster_is_refused() {
    let first = TestNode::start().await;
    let second = TestNode::join(&first).await;
    let (headers, body) = captured_submit(&first);
    let http = first.http();
    let taken = send_captured(&http, &headers, &first.addr, &first.addr, &body).await;
    assert_eq!(taken.0, 201, "{taken:?}");
    let replayed = send_captured(&http, &headers, &first.addr, &second.addr, &body).await;
    assert_eq!(replayed, (401, Some(ErrorCode::Unauthorized)));
    // Under the second node's own name the signature does not verify: it covers the host.
    let renamed = send_captured(&http, &headers, &second.addr, &second.addr, &body).await;
    assert_eq!(renamed, (401, Some(ErrorCode::Unauthorized)));
    assert_eq!(job_count(&first).await, 1, "no duplicate job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_replayed_to_the_same_node_after_a_restart_is_refused() {
    let mut node = TestNode::start().await;
    let (headers, body) = captured_submit(&node);
    let http = node.http();
    let taken = send_captured(&http, &headers, &node.addr, &node.addr, &body).await;
    assert_eq!(taken.0, 201, "{taken:?}");
    node.restart().await;
    let replayed = send_captured(&http, &headers, &node.addr, &node.addr, &body).await;
    assert_eq!(replayed, (401, Some(ErrorCode::Unauthorized)));
    assert_eq!(job_count(&node).await, 1, "no duplicate job");
}

/// An endpoint that keeps the head and body of every post it is sent (answered 200).
async fn header_keeping_receiver() -> (String, Arc<Mutex<Vec<(String, Vec<u8>)>>>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/T0KEN", listener.local_addr().unwrap());
    let posts = Arc::new(Mutex::new(Vec::new()));
    let kept = posts.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let post = crate::read_post(&mut socket).await;
            kept.lock().unwrap().push(post);
            let answer = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
            socket.write_all(answer.as_bytes()).await.unwrap();
        }
    });
    (url, posts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_posts_are_signed_and_the_config_never_shows_the_webhook_url() {
    use hmac::{Hmac, Mac};
    let node = TestNode::start().await;
    let (url, posts) = header_keeping_receiver().await;
    let answer = node
        .client
        .set_config("alerts.webhook", &url)
        .await
        .unwrap();
    let secret = answer["signing_secret"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"))
        .to_string();
    let reader = node.client.create_key(&[Scope::Read]).await.unwrap();
    let reader = node.client_with(&reader.id, &reader.secret);
    for client in [&node.client, &reader] {
        let config = client.config().await.unwrap().to_string();
        assert!(!config.contains("T0KEN"), "{config}");
        assert!(config.contains("alerts.webhook"), "{config}");
    }
    crate::queue_a_job_no_node_can_take(&node, "unplaceable", "gpu").await;
    let (head, body) = crate::harness::must_find("a signed post", || async {
        posts.lock().unwrap().first().cloned()
    })
    .await;
    let header = head
        .lines()
        .find_map(|l| l.strip_prefix("x-chorus-webhook-signature:"))
        .unwrap_or_else(|| panic!("no signature header in {head}"))
        .trim()
        .to_string();
    let (t, v1) = header
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
        .unwrap_or_else(|| panic!("{header}"));
    let t: u64 = t.parse().unwrap();
    assert!(crate::harness::now_ms() / 1000 - t < 300, "{header}");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&body);
    assert_eq!(hex::encode(mac.finalize().into_bytes()), v1, "{header}");
    assert!(String::from_utf8_lossy(&body).contains("unplaceable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaked_snapshot_or_log_does_not_leak_key_secrets() {
    let mut node = TestNode::start().await;
    let key = node.client.create_key(&[Scope::Submit]).await.unwrap();
    let admin = node.credentials();
    let raft = must_snapshot(&node).await;
    let mut needles = Vec::new();
    for secret in [&key.secret, &admin.secret] {
        needles.push(secret.clone());
        needles.push(hex::encode(model::signature::signing_key(secret).unwrap()));
    }
    let mut files = vec![raft.join("raft.redb"), raft.join("snapshot.json")];
    files.extend(log_segments(&raft));
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        for needle in &needles {
            let found = bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
            assert!(
                !found,
                "{} holds a key's secret or signing key",
                file.display()
            );
        }
    }
    // The keys still work from the sealed values, after a restart too.
    node.restart().await;
    let submitter = node.client_with(&key.id, &key.secret);
    let done = submitter.submit(&job("noop", json!({}))).await.unwrap();
    assert_eq!(
        must_finish(&submitter, done.id).await.state,
        JobState::Succeeded
    );
}

//! End-to-end tests of one node: real `chorus serve` processes on loopback ports, driven
//! through the signed API with the client crate. Faults are real too: `kill -9` of the node,
//! workers that crash or hang.

mod catalogue;
mod catchup;
mod chaos;
mod cluster;
mod contract;
mod dashboard;
mod examples;
mod faults;
mod fuzz;
mod harness;
mod history;
mod lifecycle;
mod objects;
mod run_controls;
mod run_hooks;
mod security;
mod sink;
mod sources;
mod throttles;
mod tls;
mod triggers;
mod workflows;

use client::ClientError;
use harness::{must_finish, wait_until, TestNode};
use model::{ErrorCode, FunctionSpec, JobId, JobSpec, JobState, Scope};
use serde_json::json;
use std::time::Duration;

fn job(function: &str, input: serde_json::Value) -> JobSpec {
    JobSpec {
        function: function.into(),
        input,
        files: vec![],
        priority: 0,
        idempotency_key: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_jobs_survive_kill_9_of_the_node() {
    let mut node = TestNode::start().await;
    let specs: Vec<JobSpec> = (0..500)
        .map(|i| job("sleep", json!({ "ms": i % 3 })))
        .collect();
    let results = node.client.submit_batch(&specs).await.unwrap();
    let ids: Vec<JobId> = results
        .iter()
        .map(|r| match r {
            client::BatchResult::Submitted {
                id,
                existing: false,
            } => *id,
            other => panic!("unexpected batch result {other:?}"),
        })
        .collect();
    // Right after the acknowledgement, before most jobs ran.
    node.kill_9();
    node.restart().await;
    for id in &ids {
        let job = must_finish(&node.client, *id).await;
        assert_eq!(
            job.state,
            JobState::Succeeded,
            "job {id} after restart: {job:?}"
        );
    }
    // Attempts that were running when the node died were failed over and retried.
    let retried = node
        .client
        .list_jobs(&client::JobFilter {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(retried.jobs.len(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_worker_fails_its_attempt_and_the_node_carries_on() {
    let node = TestNode::start().await;
    let mut spec = FunctionSpec::builtin("crasher");
    spec.kind = model::FunctionKind::Command;
    spec.command = vec![
        "sh".into(),
        "-c".into(),
        "read line; echo about to crash >&2; exit 3".into(),
    ];
    spec.retry.max_attempts = 2;
    spec.retry.backoff_initial_ms = 10;
    node.client.deploy(&spec).await.unwrap();
    let submitted = node
        .client
        .submit(&job("crasher", json!({})))
        .await
        .unwrap();
    let done = must_finish(&node.client, submitted.id).await;
    assert_eq!(done.state, JobState::Failed);
    assert_eq!(done.attempts.len(), 2);
    let error = done.error.unwrap();
    assert_eq!(error.code, "worker_crashed");
    assert!(
        error.message.contains("exit status: 3"),
        "{}",
        error.message
    );
    let log = node.client.logs(submitted.id, None).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&log), "about to crash\n");
    // The node still runs other work.
    let ok = node.client.submit(&job("noop", json!({}))).await.unwrap();
    assert_eq!(
        must_finish(&node.client, ok.id).await.state,
        JobState::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_worker_is_killed_at_its_time_out() {
    let node = TestNode::start().await;
    let mut spec = FunctionSpec::builtin("sleep");
    spec.timeout_ms = 300;
    spec.retry.max_attempts = 1;
    node.client.deploy(&spec).await.unwrap();
    let submitted = node
        .client
        .submit(&job("sleep", json!({ "ms": 60_000 })))
        .await
        .unwrap();
    let done = must_finish(&node.client, submitted.id).await;
    assert_eq!(done.state, JobState::Failed);
    assert_eq!(done.error.as_ref().unwrap().code, "timeout");
    let attempt = &done.attempts[0];
    let ran_ms = attempt.finished_at_ms.unwrap() - attempt.started_at_ms;
    assert!(
        (300..10_000).contains(&ran_ms),
        "the attempt ran {ran_ms} ms"
    );
    // What it logged before it was killed is kept.
    let log = node.client.logs(submitted.id, None).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&log), "sleeping 60000 ms\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_with_back_off_except_codes_never_retried() {
    let node = TestNode::start().await;
    let mut spec = FunctionSpec::builtin("fail");
    spec.retry.max_attempts = 3;
    spec.retry.backoff_initial_ms = 200;
    spec.retry.jitter = 0.2;
    node.client.deploy(&spec).await.unwrap();
    let retried = node
        .client
        .submit(&job("fail", json!({ "code": "flaky" })))
        .await
        .unwrap();
    let done = must_finish(&node.client, retried.id).await;
    assert_eq!(done.state, JobState::Failed);
    assert_eq!(done.attempts.len(), 3);
    // Back-off: at least 200 ms * 0.8 before the second attempt, 400 ms * 0.8 before the third.
    let gap =
        |i: usize| done.attempts[i].started_at_ms - done.attempts[i - 1].finished_at_ms.unwrap();
    assert!(gap(1) >= 160, "first back-off was {} ms", gap(1));
    assert!(gap(2) >= 320, "second back-off was {} ms", gap(2));
    let fatal = node
        .client
        .submit(&job("fail", json!({ "code": "invalid_input" })))
        .await
        .unwrap();
    let done = must_finish(&node.client, fatal.id).await;
    assert_eq!((done.state, done.attempts.len()), (JobState::Failed, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_same_job() {
    let node = TestNode::start().await;
    let mut spec = job("noop", json!({}));
    spec.idempotency_key = Some("song-42".into());
    let first = node.client.submit(&spec).await.unwrap();
    let second = node.client.submit(&spec).await.unwrap();
    assert_eq!(first.id, second.id);
    let batch = node
        .client
        .submit_batch(&[spec.clone(), spec])
        .await
        .unwrap();
    for r in batch {
        assert_eq!(
            r,
            client::BatchResult::Submitted {
                id: first.id,
                existing: true
            }
        );
    }
    let all = node
        .client
        .list_jobs(&client::JobFilter::default())
        .await
        .unwrap();
    assert_eq!(all.jobs.len(), 1, "one job, never a second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_job_and_frees_its_slot() {
    let node = TestNode::start_with_slots(1).await;
    let long = node
        .client
        .submit(&job("sleep", json!({ "ms": 60_000 })))
        .await
        .unwrap();
    wait_until("the job runs", || async {
        node.client.job(long.id).await.unwrap().state == JobState::Running
    })
    .await;
    let cancelled = node.client.cancel(long.id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    // The only slot is free again: a new job runs to completion long before 60 s.
    let next = node.client.submit(&job("noop", json!({}))).await.unwrap();
    assert_eq!(
        must_finish(&node.client, next.id).await.state,
        JobState::Succeeded
    );
    // Cancelling a finished job changes nothing.
    assert_eq!(
        node.client.cancel(next.id).await.unwrap().state,
        JobState::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_stable_codes() {
    let node = TestNode::start().await;
    let call = |method: &'static str, path: &'static str, body: Vec<u8>| {
        let c = node.client.clone();
        async move { c.raw(method, path, body).await.unwrap() }
    };
    let code = |body: &[u8]| {
        serde_json::from_slice::<model::ApiError>(body)
            .unwrap()
            .code
    };
    let (status, body) = call("POST", "/v1/jobs", b"{not json".to_vec()).await;
    assert_eq!((status, code(&body)), (400, ErrorCode::InvalidInput));
    let (status, body) = call("POST", "/v1/jobs", br#"{"function":"nope"}"#.to_vec()).await;
    assert_eq!((status, code(&body)), (404, ErrorCode::NotFound));
    let big = json!({ "function": "noop", "input": { "blob": "x".repeat(300 * 1024) } });
    let (status, body) = call("POST", "/v1/jobs", serde_json::to_vec(&big).unwrap()).await;
    assert_eq!((status, code(&body)), (413, ErrorCode::TooLarge));
    let (status, body) = call("GET", "/v1/jobs/999999", vec![]).await;
    assert_eq!((status, code(&body)), (404, ErrorCode::NotFound));
    let (status, body) = call("GET", "/v1/jobs/abc", vec![]).await;
    assert_eq!((status, code(&body)), (400, ErrorCode::InvalidInput));
    let (status, body) = call("GET", "/v1/jobs?state=bogus", vec![]).await;
    assert_eq!((status, code(&body)), (400, ErrorCode::InvalidInput));
    let (status, body) = call("PUT", "/v1/objects/a%5C..%5Cb", b"x".to_vec()).await;
    assert_eq!(
        (status, code(&body)),
        (400, ErrorCode::InvalidInput),
        "a key that climbs out of the store"
    );
    let (status, body) = call("GET", "/v1/objects/uploads/missing", vec![]).await;
    assert_eq!((status, code(&body)), (404, ErrorCode::NotFound));
    let bad_fn = json!({ "name": "x", "kind": "command" });
    let (status, body) = call(
        "POST",
        "/v1/functions",
        serde_json::to_vec(&bad_fn).unwrap(),
    )
    .await;
    assert_eq!((status, code(&body)), (400, ErrorCode::InvalidInput));
    // After all that, the node still serves.
    let ok = node.client.submit(&job("noop", json!({}))).await.unwrap();
    assert_eq!(
        must_finish(&node.client, ok.id).await.state,
        JobState::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_auth_failure_is_refused() {
    let node = TestNode::start().await;
    let url = format!("{}/v1/jobs", node.client.base_url());
    let http = node.http();
    let status_of = |r: reqwest::Response| r.status().as_u16();
    // No signature at all.
    assert_eq!(status_of(http.get(&url).send().await.unwrap()), 401);
    // A good signature, then the same request again: a replay.
    let empty = model::signature::body_sha256_hex(b"");
    let headers = node.client.sign("GET", "/v1/jobs", &empty, now_s());
    let send = |headers: &[(&'static str, String)]| {
        let mut r = http.get(&url);
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        r.send()
    };
    assert_eq!(status_of(send(&headers).await.unwrap()), 200);
    assert_eq!(
        status_of(send(&headers).await.unwrap()),
        401,
        "replayed nonce"
    );
    // Clock skew over five minutes.
    let old = node.client.sign("GET", "/v1/jobs", &empty, now_s() - 400);
    assert_eq!(status_of(send(&old).await.unwrap()), 401, "skewed clock");
    // Bad signature: a tampered path.
    let tampered = node.client.sign("GET", "/v1/functions", &empty, now_s());
    assert_eq!(
        status_of(send(&tampered).await.unwrap()),
        401,
        "signature for another path"
    );
    // Unknown key.
    let stranger = node.client_with("ck_unknown", "00ff");
    assert_eq!(
        stranger.job(JobId(1)).await.unwrap_err().code(),
        Some(ErrorCode::Unauthorized)
    );
    // Body that does not match its signed hash.
    let mut forged = node.client.sign("POST", "/v1/jobs", &empty, now_s());
    forged.retain(|(k, _)| *k != "content-type");
    let mut r = http.post(&url).body(r#"{"function":"noop"}"#);
    for (k, v) in &forged {
        r = r.header(*k, v);
    }
    assert_eq!(
        status_of(r.send().await.unwrap()),
        401,
        "body swapped after signing"
    );
    // Scopes: read cannot submit, submit cannot deploy or make keys; revoked keys are dead.
    let reader = node.client.create_key(&[Scope::Read]).await.unwrap();
    let reader = node.client_with(&reader.id, &reader.secret);
    assert!(reader
        .list_jobs(&client::JobFilter::default())
        .await
        .is_ok());
    let err = reader.submit(&job("noop", json!({}))).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let submitter = node.client.create_key(&[Scope::Submit]).await.unwrap();
    let submitter_client = node.client_with(&submitter.id, &submitter.secret);
    assert!(submitter_client
        .submit(&job("noop", json!({})))
        .await
        .is_ok());
    let err = submitter_client
        .deploy(&FunctionSpec::builtin("noop"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    assert_eq!(
        submitter_client
            .create_key(&[Scope::Admin])
            .await
            .unwrap_err()
            .code(),
        Some(ErrorCode::Forbidden)
    );
    node.client.revoke_key(&submitter.id).await.unwrap();
    let err = submitter_client
        .submit(&job("noop", json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized));
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_functions_get_files_and_keep_outputs() {
    let node = TestNode::start().await;
    let text = std::fs::read_to_string(harness::repo_root().join("examples/hello.toml")).unwrap();
    let mut spec: FunctionSpec = toml::from_str(&text).unwrap();
    spec.command[1] = harness::repo_root()
        .join("examples/hello.py")
        .display()
        .to_string();
    node.client.deploy(&spec).await.unwrap();
    let file = node.dir.path().join("song.bin");
    std::fs::write(&file, vec![7u8; 100_000]).unwrap();
    node.client
        .put_object("uploads/song.bin", &file)
        .await
        .unwrap();
    let mut spec = job("hello", json!({ "name": "ada" }));
    spec.files = vec!["uploads/song.bin".into()];
    let submitted = node.client.submit(&spec).await.unwrap();
    let done = must_finish(&node.client, submitted.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(
        done.output.unwrap(),
        json!({ "greeting": "hello ada", "files": 1 })
    );
    assert_eq!(done.objects.len(), 1);
    let sizes: serde_json::Value =
        serde_json::from_slice(&node.client.get_object(&done.objects[0]).await.unwrap()).unwrap();
    assert_eq!(sizes[0]["bytes"], 100_000);
    assert_eq!(
        String::from_utf8_lossy(&node.client.logs(submitted.id, None).await.unwrap()),
        "greeting ada\n"
    );
    // A function's own error code comes through, and is not retried when policy says so.
    let bad = node.client.submit(&job("hello", json!({}))).await.unwrap();
    let done = must_finish(&node.client, bad.id).await;
    assert_eq!(
        (done.state, done.error.unwrap().code.as_str()),
        (JobState::Failed, "invalid_input")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_stay_warm_then_scale_to_zero() {
    let node = TestNode::start_with_slots(1).await;
    let mut spec = FunctionSpec::builtin("noop");
    spec.idle_timeout_ms = 1_500;
    node.client.deploy(&spec).await.unwrap();
    for _ in 0..5 {
        let j = node.client.submit(&job("noop", json!({}))).await.unwrap();
        assert_eq!(
            must_finish(&node.client, j.id).await.state,
            JobState::Succeeded
        );
    }
    let metrics = node.metrics().await;
    assert_eq!(
        harness::metric(&metrics, "chorus_cold_starts_total{function=\"noop\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        harness::metric(&metrics, "chorus_warm_workers{pool=\"noop@2\"}"),
        Some(1.0)
    );
    wait_until("the idle worker is stopped", || async {
        harness::metric(
            &node.metrics().await,
            "chorus_warm_workers{pool=\"noop@2\"}",
        )
        .is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reports_unreachable_servers_plainly() {
    let c = client::Client::new(
        "127.0.0.1:1",
        client::Credentials {
            key_id: "k".into(),
            secret: "00".into(),
        },
    );
    assert!(matches!(c.job(JobId(1)).await, Err(ClientError::Http(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_when_the_job_finishes_or_at_the_time_out() {
    let node = TestNode::start().await;
    let slow = node
        .client
        .submit(&job("sleep", json!({ "ms": 5_000 })))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let still = node
        .client
        .wait(slow.id, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(!still.state.is_terminal());
    assert!(started.elapsed() >= Duration::from_millis(300));
    let done = node
        .client
        .wait(slow.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.state, JobState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_jobs_and_raft_and_pass_promtool() {
    let node = TestNode::start().await;
    let ok = node.client.submit(&job("noop", json!({}))).await.unwrap();
    must_finish(&node.client, ok.id).await;
    let text = node.metrics().await;
    for sample in [
        "chorus_jobs{function=\"noop\",state=\"succeeded\"}",
        "chorus_jobs{function=\"noop\",state=\"queued\"}",
        "chorus_job_queue_wait_seconds_count{function=\"noop\"}",
        "chorus_attempt_run_seconds_count{function=\"noop\"}",
        "chorus_cold_starts_total{function=\"noop\"}",
        "chorus_raft_term",
        "chorus_raft_commit_index",
        "chorus_raft_apply_lag",
    ] {
        assert!(
            harness::metric(&text, sample).is_some(),
            "no sample {sample} in\n{text}"
        );
    }
    assert_eq!(
        harness::metric(&text, "chorus_jobs{function=\"noop\",state=\"succeeded\"}"),
        Some(1.0)
    );
    // promtool (Debian's prometheus package; CI installs it) must find nothing to complain about.
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is needed: apt-get install prometheus");
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_outputs_and_logs_expire_after_the_retention() {
    let node = TestNode::start().await;
    let refused = node
        .client
        .set_config("retention", "soon")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::InvalidInput), "{refused}");
    let mut spec = FunctionSpec::builtin("keep");
    spec.kind = model::FunctionKind::Command;
    let script = r#"while IFS= read -r line; do
        out=$(printf '%s' "$line" | sed 's/.*"out_dir":"\([^"]*\)".*/\1/')
        echo kept > "$out/kept.txt"
        # A log over the inline limit, so it is an object with a directory of its own.
        head -c 3000 /dev/zero | tr '\0' x >&2; echo >&2
        printf '{"output":{}}\n'
    done"#;
    spec.command = vec!["sh".into(), "-c".into(), script.into()];
    node.client.deploy(&spec).await.unwrap();
    // A long job, still running when the short one expires, and uploaded inputs stay.
    let long = node
        .client
        .submit(&job("sleep", json!({ "ms": 8_000 })))
        .await
        .unwrap();
    let input = node.dir.path().join("input.bin");
    std::fs::write(&input, b"input").unwrap();
    node.client
        .put_object("uploads/input.bin", &input)
        .await
        .unwrap();
    let mut short = job("keep", json!({}));
    short.idempotency_key = Some("keep-once".into());
    let short = node.client.submit(&short).await.unwrap();
    let done = must_finish(&node.client, short.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(
        node.client
            .get_object(&done.objects[0])
            .await
            .unwrap()
            .as_ref(),
        b"kept\n"
    );
    assert_eq!(done.attempts[0].log_bytes, 3001);
    assert_eq!(done.attempts[0].log, None, "over the inline limit");

    // The local store leaves no empty directories behind: `jobs/{job}/` and `logs/{job}/` go.
    let objects = node.dir.path().join("data/objects");
    let output_file = objects.join(&done.objects[0]);
    let job_dirs = [
        output_file
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf(),
        objects.join(format!("logs/{}", short.id)),
    ];
    assert!(job_dirs.iter().all(|d| d.is_dir()), "{job_dirs:?}");
    node.client.set_config("retention", "2s").await.unwrap();
    harness::must_find("the finished job is purged", || async {
        let gone = node.client.job(short.id).await.err()?.code() == Some(ErrorCode::NotFound);
        gone.then_some(())
    })
    .await;
    wait_until(
        "its output, log and their directories are deleted",
        || async {
            let output = node.client.get_object(&done.objects[0]).await;
            let log = node
                .client
                .logs(short.id, Some(done.attempts[0].id.0))
                .await;
            output.is_err() && log.is_err() && job_dirs.iter().all(|d| !d.exists())
        },
    )
    .await;
    assert_eq!(
        node.client
            .get_object("uploads/input.bin")
            .await
            .unwrap()
            .as_ref(),
        b"input"
    );
    let running = node.client.job(long.id).await.unwrap();
    assert!(!running.state.is_terminal(), "{running:?}");
    // The purged job's idempotency key is free again.
    let mut again = job("keep", json!({}));
    again.idempotency_key = Some("keep-once".into());
    assert_ne!(node.client.submit(&again).await.unwrap().id, short.id);
    let metrics =
        String::from_utf8_lossy(&node.client.get_public("/metrics").await.unwrap().1).into_owned();
    assert!(
        harness::metric(&metrics, "chorus_purged_jobs_total") >= Some(1.0),
        "{metrics}"
    );
}

/// A small log travels in the log entry: readable as ever, and no file or directory for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_log_costs_no_file_and_no_directory() {
    let node = TestNode::start().await;
    let mut spec = FunctionSpec::builtin("chatty");
    spec.kind = model::FunctionKind::Command;
    let script = r#"while IFS= read -r line; do
        echo "one line of log, é" >&2
        printf '{"output":{}}\n'
    done"#;
    spec.command = vec!["sh".into(), "-c".into(), script.into()];
    node.client.deploy(&spec).await.unwrap();
    let submitted = node.client.submit(&job("chatty", json!({}))).await.unwrap();
    let done = must_finish(&node.client, submitted.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let attempt = &done.attempts[0];
    let expected = "one line of log, é\n";
    assert_eq!(attempt.log.as_deref(), Some(expected));
    assert_eq!(attempt.log_bytes, expected.len() as u64);
    let read = node.client.logs(done.id, Some(attempt.id.0)).await.unwrap();
    assert_eq!(read.as_ref(), expected.as_bytes());
    let logs_dir = node.dir.path().join("data/objects/logs");
    assert!(
        !logs_dir.join(done.id.to_string()).exists(),
        "a small log has no directory"
    );
}

async fn events(node: &TestNode, after: u64) -> Vec<serde_json::Value> {
    let path = format!("/v1/events?after={after}");
    let (status, body) = node.client.raw("GET", &path, Vec::new()).await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    page["events"].as_array().unwrap().clone()
}

/// A 16-bit mono WAV of a 440 Hz tone, `seconds` long.
pub(crate) fn tone_wav(seconds: f64) -> Vec<u8> {
    let rate = 22_050u32;
    let samples: Vec<i16> = (0..(seconds * f64::from(rate)) as u32)
        .map(|i| {
            let t = f64::from(i) / f64::from(rate);
            ((t * 440.0 * std::f64::consts::TAU).sin() * 8_000.0) as i16
        })
        .collect();
    let data_len = samples.len() as u32 * 2;
    let mut wav = Vec::with_capacity(44 + data_len as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    for field in [16u32, 1 | (1 << 16), rate, rate * 2, 2 | (16 << 16)] {
        wav.extend_from_slice(&field.to_le_bytes());
    }
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for sample in samples {
        wav.extend_from_slice(&sample.to_le_bytes());
    }
    wav
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ingest_of_a_directory_neither_uploads_nor_runs_anything_again() {
    let node = TestNode::start().await;
    let songs = node.dir.path().join("songs");
    std::fs::create_dir_all(&songs).unwrap();
    std::fs::write(songs.join("tone.wav"), tone_wav(4.0)).unwrap();
    let (server, data) = (
        node.client.base_url().to_string(),
        node.dir.path().join("data"),
    );
    let ingest = move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
            .arg("ingest")
            .arg(&songs)
            .args(["--json", "--server", &server])
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = answer["results"].as_array().unwrap().clone();
        assert_eq!(rows.len(), 1, "{answer}");
        rows[0].clone()
    };
    let first = tokio::task::spawn_blocking(ingest.clone()).await.unwrap();
    assert_eq!(first["skipped"], false, "{first}");
    assert_eq!(first["job"]["state"], "succeeded", "{first}");
    let upload = node.dir.path().join("data/objects").join(
        first["job"]["files"][0]
            .as_str()
            .unwrap_or_else(|| panic!("{first}")),
    );
    let uploaded_at = std::fs::metadata(&upload).unwrap().modified().unwrap();
    let second = tokio::task::spawn_blocking(ingest).await.unwrap();
    assert_eq!(second["skipped"], true, "{second}");
    assert_eq!(second["job"]["id"], first["job"]["id"]);
    assert_eq!(
        std::fs::metadata(&upload).unwrap().modified().unwrap(),
        uploaded_at,
        "the song was uploaded again"
    );
}

/// Deploys a function for nodes labelled `label` only (which no test node is).
async fn deploy_for_label(node: &TestNode, function: &str, label: &str) {
    let mut spec = FunctionSpec::builtin(function);
    spec.kind = model::FunctionKind::Command;
    spec.command = vec!["cat".into()];
    spec.labels = vec![label.into()];
    node.client.deploy(&spec).await.unwrap();
}

/// Queues a job no node can take: the leader raises a `jobs_waiting` alert naming `function`.
async fn queue_a_job_no_node_can_take(node: &TestNode, function: &str, label: &str) {
    deploy_for_label(node, function, label).await;
    node.client.submit(&job(function, json!({}))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_no_node_can_take_wait_without_holding_back_the_queue_and_raise_an_alert() {
    let node = TestNode::start().await;
    // Jobs for nodes labelled `gpu`, which this cluster has none of, ahead of everything else
    // (higher priority) and more of them than a node ever takes at once (slots + prefetch).
    deploy_for_label(&node, "gpu-only", "gpu").await;
    let stuck: Vec<JobSpec> = (0..2_100)
        .map(|_| JobSpec {
            priority: 10,
            ..job("gpu-only", json!({}))
        })
        .collect();
    let results = node.client.submit_batch(&stuck).await.unwrap();
    let Some(client::BatchResult::Submitted { id: first, .. }) = results.first().cloned() else {
        panic!("{:?}", results.first())
    };
    // Work behind them still runs, both what is placed at submit and what the loop places.
    let behind = vec![job("noop", json!({})); 3];
    for result in node.client.submit_batch(&behind).await.unwrap() {
        let client::BatchResult::Submitted { id, .. } = result else {
            panic!("{result:?}")
        };
        assert_eq!(
            must_finish(&node.client, id).await.state,
            JobState::Succeeded
        );
    }
    let alerts = || async {
        let all = events(&node, 0).await;
        all.into_iter()
            .filter(|e| e["kind"] == "jobs_waiting")
            .collect::<Vec<_>>()
    };
    wait_until("the waiting jobs raise an alert", || async {
        !alerts().await.is_empty()
    })
    .await;
    let once_more = node.client.submit(&job("noop", json!({}))).await.unwrap();
    must_finish(&node.client, once_more.id).await;
    let raised = alerts().await;
    assert_eq!(
        raised.len(),
        1,
        "one alert per function and reason: {raised:?}"
    );
    assert_eq!(raised[0]["alert"], true);
    let message = raised[0]["message"].as_str().unwrap();
    assert!(
        message.contains("gpu-only") && message.contains("no node carries the required labels"),
        "{message}"
    );
    assert_eq!(
        node.client.job(first).await.unwrap().state,
        JobState::Queued
    );
}

/// One HTTP request read from `socket`: its head (lower-cased) and its body.
async fn read_post(socket: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut request = Vec::new();
    let mut chunk = [0u8; 4096];
    let body_start = loop {
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the post ended early");
        request.extend_from_slice(&chunk[..n]);
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..body_start]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    while request.len() < body_start + length {
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the post ended early");
        request.extend_from_slice(&chunk[..n]);
    }
    (head, request[body_start..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_posted_to_the_webhook_retried_until_taken_and_never_twice_once_taken() {
    let node = TestNode::start().await;
    for bad in ["hooks.example.com", "ftp://hooks.example.com/x"] {
        let refused = node
            .client
            .set_config("alerts.webhook", bad)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Some(ErrorCode::InvalidInput), "{refused}");
    }
    // An alert from before the webhook is set: not posted (no history).
    queue_a_job_no_node_can_take(&node, "before-hook", "gpu").await;
    wait_until("the first alert", || async {
        events(&node, 0)
            .await
            .iter()
            .any(|e| e["kind"] == "jobs_waiting")
    })
    .await;
    // Answers the first post with 500 and the others with 200.
    let (url, posts) = run_hooks::receiver(1).await;
    node.client
        .set_config("alerts.webhook", &url)
        .await
        .unwrap();
    queue_a_job_no_node_can_take(&node, "after-hook", "tpu").await;
    // The receiver refuses the first post; the retry (about a second later) is taken.
    let posted = |needle: &'static str| {
        let posts = posts.clone();
        move || {
            let posts = posts.clone();
            async move {
                let posts = posts.lock().unwrap();
                posts
                    .iter()
                    .skip(1)
                    .any(|(_, body)| String::from_utf8_lossy(body).contains(needle))
            }
        }
    };
    wait_until("the alert is posted and taken", posted("after-hook")).await;
    queue_a_job_no_node_can_take(&node, "later", "fpga").await;
    wait_until("the next alert is posted", posted("later")).await;
    let posts: Vec<serde_json::Value> = posts
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| serde_json::from_slice(body).unwrap())
        .collect();
    assert_eq!(
        posts[0], posts[1],
        "the refused post is sent again as it was"
    );
    let alert = posts[1]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["message"].as_str().unwrap().contains("after-hook"))
        .unwrap_or_else(|| panic!("{posts:?}"));
    assert_eq!(
        (&alert["kind"], &alert["alert"]),
        (&json!("jobs_waiting"), &json!(true))
    );
    // Nothing from before the webhook, and nothing taken is posted again.
    let seqs: Vec<u64> = posts[1..]
        .iter()
        .flat_map(|p| p["events"].as_array().unwrap().clone())
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{posts:?}");
    assert!(
        posts.iter().all(|p| !p.to_string().contains("before-hook")),
        "{posts:?}"
    );
    let metrics =
        String::from_utf8_lossy(&node.client.get_public("/metrics").await.unwrap().1).into_owned();
    assert_eq!(
        harness::metric(&metrics, r#"chorus_webhook_posts_total{result="failed"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        harness::metric(&metrics, r#"chorus_webhook_posts_total{result="ok"}"#) >= Some(2.0),
        "{metrics}"
    );
    // An empty value switches it off.
    node.client.set_config("alerts.webhook", "").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cpu_breaker_raises_an_alert_when_it_opens_and_an_all_clear_when_it_closes() {
    let node = TestNode::start().await;
    // A threshold of 0 % makes any CPU figure too hot: the breaker opens at the next placement.
    node.client
        .set_config("scheduler.cpu_threshold", "0")
        .await
        .unwrap();
    let first = node.client.submit(&job("noop", json!({}))).await.unwrap();
    // A lone node still gets work when every node is hot: the job finishes anyway.
    assert_eq!(
        must_finish(&node.client, first.id).await.state,
        JobState::Succeeded
    );
    let opened = harness::must_find("a breaker_opened event", || async {
        events(&node, 0)
            .await
            .into_iter()
            .find(|e| e["kind"] == "breaker_opened")
    })
    .await;
    assert_eq!(opened["node"].as_u64(), Some(node.id()));
    assert_eq!(opened["alert"], true);
    let breaker_gauge = format!("chorus_breaker_open{{node=\"{}\"}}", node.id());
    let gauge = || async { harness::metric(&node.metrics().await, &breaker_gauge) };
    assert_eq!(
        gauge().await,
        Some(1.0),
        "the leader reports the open breaker"
    );
    node.client
        .set_config("scheduler.cpu_threshold", "100")
        .await
        .unwrap();
    let second = node.client.submit(&job("noop", json!({}))).await.unwrap();
    must_finish(&node.client, second.id).await;
    let seq = opened["seq"].as_u64().unwrap();
    let closed = harness::must_find("a breaker_closed event", || async {
        events(&node, seq)
            .await
            .into_iter()
            .find(|e| e["kind"] == "breaker_closed")
    })
    .await;
    assert_eq!(closed["alert"], false);
    assert_eq!(gauge().await, Some(0.0));
    assert!(events(&node, closed["seq"].as_u64().unwrap())
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_records_the_cpu_time_and_peak_memory_of_its_worker() {
    let node = TestNode::start().await;
    let mut spec = FunctionSpec::builtin("burn");
    spec.kind = model::FunctionKind::Command;
    let script = "import sys, json, time\n\
                  for line in sys.stdin:\n\
                  \x20   i = json.loads(line)['input']\n\
                  \x20   block = b'x' * (i['mb'] << 20)\n\
                  \x20   end = time.process_time() + i['cpu_ms'] / 1000\n\
                  \x20   while time.process_time() < end: pass\n\
                  \x20   del block\n\
                  \x20   print(json.dumps({'output': {}}), flush=True)\n";
    spec.command = vec!["python3".into(), "-c".into(), script.into()];
    node.client.deploy(&spec).await.unwrap();
    let usage = |job: &model::Job| job.attempts[0].usage.expect("usage recorded");
    let heavy = node
        .client
        .submit(&job("burn", json!({ "mb": 64, "cpu_ms": 300 })))
        .await
        .unwrap();
    let heavy = must_finish(&node.client, heavy.id).await;
    assert_eq!(heavy.state, JobState::Succeeded, "{heavy:?}");
    let used = usage(&heavy);
    assert!(used.cpu_ms >= 250, "{used:?}");
    assert!(used.peak_rss_bytes >= 64 << 20, "{used:?}");
    // The same warm worker, a light attempt: its peak is its own, not the last one's.
    let light = node
        .client
        .submit(&job("burn", json!({ "mb": 0, "cpu_ms": 0 })))
        .await
        .unwrap();
    let light = must_finish(&node.client, light.id).await;
    let light_used = usage(&light);
    assert!(
        light_used.peak_rss_bytes < 48 << 20 && light_used.cpu_ms < 200,
        "{light_used:?} after {used:?}"
    );
}

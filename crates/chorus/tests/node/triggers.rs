//! Triggers end to end: the synchronous invoke, cron triggers firing once per tick across a
//! `kill -9` of the leader, CloudEvents ingestion (dedup, filters, malformed events), and
//! triggers that start workflow runs instead of jobs.

use crate::cluster::{cluster, leader, leader_index};
use crate::harness::{must_finish, wait_until, TestNode};
use crate::workflows::{deploy_echo, must_end};
use client::Invoked;
use model::workflow::RunStatus;
use model::{ErrorCode, FunctionSpec, JobState, TriggerSpec};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_answers_the_output_or_the_job_to_follow_or_its_error() {
    let node = TestNode::start().await;
    let c = &node.client;
    let done = c
        .invoke("noop", &json!({ "song": 1 }), Duration::from_secs(30))
        .await
        .unwrap();
    let Invoked::Done { id, output, .. } = done else {
        panic!("{done:?}")
    };
    assert_eq!(c.job(id).await.unwrap().output, Some(output));
    // A job slower than the call's time-out: 202 with its id, and it finishes later.
    let pending = c
        .invoke("sleep", &json!({ "ms": 1_500 }), Duration::from_millis(200))
        .await
        .unwrap();
    let Invoked::Pending { id, state } = pending else {
        panic!("{pending:?}")
    };
    assert!(matches!(state, JobState::Queued | JobState::Running));
    assert_eq!(must_finish(c, id).await.state, JobState::Succeeded);
    // A failed job answers its error in the {code, message} contract.
    let mut fail = FunctionSpec::builtin("fail");
    fail.retry.max_attempts = 1;
    c.deploy(&fail).await.unwrap();
    let err = c
        .invoke("fail", &json!({ "code": "flaky" }), Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FunctionFailed), "{err}");
    assert!(err.to_string().contains("flaky"), "{err}");
    assert!(
        matches!(err, client::ClientError::Api { status: 502, .. }),
        "{err}"
    );
    let err = c
        .invoke("nope", &json!({}), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    let (status, _) = c
        .raw(
            "POST",
            "/v1/functions/noop/invoke?timeout_ms=300001",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
}

fn cron_spec(name: &str, schedule: &str) -> TriggerSpec {
    serde_json::from_value(json!({
        "name": name,
        "function": "noop",
        "cron": { "schedule": schedule, "missed": "catch_up", "catch_up_max": 300 },
    }))
    .unwrap()
}

/// The ticks of trigger `name` that started a job, from every job's idempotency key, each
/// with how many jobs carry it.
async fn ticks(node: &TestNode, name: &str) -> BTreeMap<u64, usize> {
    // A read during a leader change may answer `unavailable` ("try again"): a client retries.
    let filter = client::JobFilter {
        function: Some("noop".into()),
        limit: Some(1_000),
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let page = loop {
        match node.client.list_jobs(&filter).await {
            Ok(page) => break page,
            Err(client::ClientError::Api { status: 503, .. })
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("listing jobs: {e}"),
        }
    };
    let prefix = format!("trigger:{name}:");
    let mut ticks = BTreeMap::new();
    for job in page.jobs {
        let Some(tick) = job
            .idempotency_key
            .as_deref()
            .and_then(|k| k.strip_prefix(&prefix))
        else {
            continue;
        };
        let tick: u64 = tick.parse().unwrap();
        assert_eq!(job.input["trigger"]["tick_ms"], json!(tick), "{job:?}");
        *ticks.entry(tick).or_insert(0) += 1;
    }
    ticks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_trigger_fires_each_tick_once_across_a_kill_9_of_the_leader() {
    let mut nodes = cluster().await;
    let li = leader_index(&nodes, leader(&nodes[0]).await);
    let follower = (li + 1) % 3;
    nodes[follower]
        .client
        .create_trigger(&cron_spec("every-second", "* * * * * *"))
        .await
        .unwrap();
    wait_until("three ticks fired", || async {
        ticks(&nodes[follower], "every-second").await.len() >= 3
    })
    .await;
    nodes[li].kill_9();
    let before = ticks(&nodes[follower], "every-second").await.len();
    wait_until("a new leader fires three more ticks", || async {
        ticks(&nodes[follower], "every-second").await.len() >= before + 3
    })
    .await;
    let fired = ticks(&nodes[follower], "every-second").await;
    // No tick twice; none lost while the leader changed (catch-up covers the outage).
    assert!(fired.values().all(|&n| n == 1), "{fired:?}");
    let list: Vec<u64> = fired.keys().copied().collect();
    for pair in list.windows(2) {
        assert_eq!(pair[1] - pair[0], 1_000, "a tick was lost: {list:?}");
    }
    let t = nodes[follower]
        .client
        .trigger("every-second")
        .await
        .unwrap();
    assert!(
        t["cursor_ms"].as_u64().unwrap() >= *list.last().unwrap(),
        "{t}"
    );
    // Paused, it fires nothing; the survivors agree on the jobs.
    nodes[follower]
        .client
        .pause_trigger("every-second", true)
        .await
        .unwrap();
    let paused_at = ticks(&nodes[follower], "every-second").await.len();
    let other = (li + 2) % 3;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let after_pause = ticks(&nodes[other], "every-second").await;
    // A tick fired in the entry just before the pause committed may still show up.
    assert!(after_pause.len() <= paused_at + 1, "{after_pause:?}");
    for node in [&nodes[follower], &nodes[other]] {
        for job in node
            .client
            .list_jobs(&client::JobFilter::default())
            .await
            .unwrap()
            .jobs
        {
            must_finish(&node.client, job.id).await;
        }
    }
}

/// A refused ingest call: content type, headers, body, and the status and code it answers.
type MalformedCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);

fn events_spec(name: &str, filters: Value) -> TriggerSpec {
    serde_json::from_value(json!({
        "name": name,
        "function": "noop",
        "input": { "from": name },
        "events": { "filters": filters },
    }))
    .unwrap()
}

/// The triggers and jobs of each event in an ingest answer.
fn started(answer: &Value) -> Vec<Vec<(String, u64, bool)>> {
    answer["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| {
                    (
                        j["trigger"].as_str().unwrap().to_string(),
                        j["job"].as_u64().unwrap(),
                        j["existing"].as_bool().unwrap(),
                    )
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_events_start_one_job_per_matching_trigger_and_redeliveries_none() {
    let node = TestNode::start().await;
    let c = &node.client;
    c.create_trigger(&events_spec(
        "uploads",
        json!([{ "exact": { "type": "song.uploaded" } }]),
    ))
    .await
    .unwrap();
    c.create_trigger(&events_spec(
        "studio-lossless",
        json!([{ "prefix": { "source": "/studio/" } }, { "not": { "suffix": { "subject": ".mp3" } } }]),
    ))
    .await
    .unwrap();
    c.create_trigger(&events_spec(
        "orders",
        json!([{ "any": [{ "exact": { "type": "order.paid" } }, { "exact": { "type": "order.refunded" } }] }]),
    ))
    .await
    .unwrap();
    // Binary mode.
    let headers = [
        ("ce-specversion", "1.0"),
        ("ce-id", "e1"),
        ("ce-source", "/studio/a"),
        ("ce-type", "song.uploaded"),
        ("ce-subject", "x.flac"),
    ];
    let (status, first) = c
        .ingest_events("application/json", &headers, br#"{"song": 42}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(status, 200, "{first}");
    let jobs = started(&first);
    let triggers: Vec<&str> = jobs[0].iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(triggers, ["studio-lossless", "uploads"], "{first}");
    assert!(jobs[0].iter().all(|(_, _, existing)| !existing));
    let job = must_finish(c, model::JobId(jobs[0][1].1)).await;
    assert_eq!(job.input["from"], "uploads");
    assert_eq!(job.input["trigger"]["event"]["data"]["song"], 42);
    assert_eq!(job.input["trigger"]["event"]["subject"], "x.flac");
    // Delivered again: the same jobs, none new.
    let (_, again) = c
        .ingest_events("application/json", &headers, br#"{"song": 42}"#.to_vec())
        .await
        .unwrap();
    let again = started(&again);
    assert!(again[0].iter().all(|(_, _, existing)| *existing));
    assert_eq!(
        again[0].iter().map(|j| j.1).collect::<Vec<_>>(),
        jobs[0].iter().map(|j| j.1).collect::<Vec<_>>()
    );
    // Structured mode, and a batch in which the first event is the redelivery once more.
    let order = json!({ "specversion": "1.0", "id": "o1", "source": "/shop", "type": "order.paid", "data": { "total": 3 } });
    let (status, answer) = c
        .ingest_events(
            "application/cloudevents+json",
            &[],
            serde_json::to_vec(&order).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(started(&answer)[0].len(), 1);
    assert_eq!(started(&answer)[0][0].0, "orders");
    let mp3 = json!({ "specversion": "1.0", "id": "e2", "source": "/studio/b", "type": "song.uploaded", "subject": "y.mp3" });
    let first_again = json!({ "specversion": "1.0", "id": "e1", "source": "/studio/a", "type": "song.uploaded", "subject": "x.flac" });
    let (status, answer) = c
        .ingest_events(
            "application/cloudevents-batch+json",
            &[],
            serde_json::to_vec(&json!([first_again, mp3])).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let batch = started(&answer);
    assert!(
        batch[0].iter().all(|(_, _, existing)| *existing),
        "{answer}"
    );
    let triggers: Vec<&str> = batch[1].iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(triggers, ["uploads"], "{answer}");
    let total = c
        .list_jobs(&client::JobFilter::default())
        .await
        .unwrap()
        .jobs
        .len();
    assert_eq!(total, 4, "two for e1, one for o1, one for e2");

    // Malformed events: a stable code each, and nothing started.
    let cases: Vec<MalformedCase> = vec![
        ("application/json", headers[1..].to_vec(), b"{}".to_vec(), 400, "invalid_event"),
        ("application/json", vec![("ce-specversion", "0.3"), headers[1], headers[2], headers[3]], vec![], 400, "invalid_event"),
        ("application/json", vec![], b"{}".to_vec(), 400, "invalid_event"),
        ("application/cloudevents+json", vec![], br#"{"specversion":"1.0","source":"s","type":"t"}"#.to_vec(), 400, "invalid_event"),
        ("application/cloudevents+json", vec![], b"{not json".to_vec(), 400, "invalid_event"),
        ("application/cloudevents-batch+json", vec![], serde_json::to_vec(&json!([order, { "id": "x" }])).unwrap(), 400, "invalid_event"),
        ("application/cloudevents+json", vec![], serde_json::to_vec(&json!({ "specversion": "1.0", "id": "big", "source": "s", "type": "t", "data": "x".repeat(200_000) })).unwrap(), 413, "too_large"),
        ("application/json", headers.to_vec(), vec![b' '; 5 << 20], 413, "too_large"),
    ];
    let credentials = node.credentials();
    for (content_type, headers, body, status, code) in cases {
        // A fresh connection per call: a refused body closes the connection.
        let fresh = node.client_with(&credentials.key_id, &credentials.secret);
        let (got, answer) = fresh
            .ingest_events(content_type, &headers, body)
            .await
            .unwrap();
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{answer}"
        );
        assert!(!answer["message"].as_str().unwrap().is_empty());
    }
    let after = c
        .list_jobs(&client::JobFilter::default())
        .await
        .unwrap()
        .jobs
        .len();
    assert_eq!(after, total, "a refused call started nothing");
}

/// Triggers of a workflow: a CloudEvent starts one run (its redelivery finds it), each cron
/// tick one run keyed by the tick, and a trigger naming an unknown workflow is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_of_a_workflow_start_one_run_per_event_and_per_tick() {
    let node = TestNode::start().await;
    let c = &node.client;
    deploy_echo(c, "echo", None).await;
    c.deploy_workflow(
        r#"
name = "on-upload"
[[steps]]
name = "a"
function = "echo"
input = { song = "{{ input.trigger.event.data.song }}", from = "{{ input.from }}" }
"#,
    )
    .await
    .unwrap();
    c.deploy_workflow(
        r#"
name = "nightly"
[[steps]]
name = "a"
function = "echo"
input = { tick = "{{ input.trigger.tick_ms }}" }
"#,
    )
    .await
    .unwrap();
    let spec = |v: Value| -> TriggerSpec { serde_json::from_value(v).unwrap() };
    c.create_trigger(&spec(json!({
        "name": "runs-on-upload",
        "workflow": "on-upload",
        "input": { "from": "label" },
        "events": { "filters": [{ "exact": { "type": "song.uploaded" } }] },
    })))
    .await
    .unwrap();
    let err = c
        .create_trigger(&spec(
            json!({ "name": "x", "workflow": "nope", "events": {} }),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    let err = c
        .create_trigger(&spec(
            json!({ "name": "x", "workflow": "nightly", "function": "echo", "events": {} }),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidInput), "{err}");

    let headers = [
        ("ce-specversion", "1.0"),
        ("ce-id", "u1"),
        ("ce-source", "/label"),
        ("ce-type", "song.uploaded"),
    ];
    let run_of = |answer: &Value| -> (u64, bool) {
        let started = &answer["events"][0]["jobs"][0];
        assert_eq!(started["trigger"], "runs-on-upload", "{answer}");
        assert!(started.get("job").is_none(), "{answer}");
        (
            started["run"].as_u64().unwrap(),
            started["existing"].as_bool().unwrap(),
        )
    };
    let (status, first) = c
        .ingest_events("application/json", &headers, br#"{"song": 42}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(status, 200, "{first}");
    let (run, existing) = run_of(&first);
    assert!(!existing);
    let (_, again) = c
        .ingest_events("application/json", &headers, br#"{"song": 42}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(
        run_of(&again),
        (run, true),
        "a redelivery starts no second run"
    );
    let ended = must_end(c, run).await;
    assert_eq!(
        ended.summary.state,
        RunStatus::Succeeded,
        "{:?}",
        ended.summary
    );
    let output = ended.summary.steps[0].step.output.as_ref().unwrap();
    assert_eq!(output["input"]["song"], 42, "{output}");
    assert_eq!(output["input"]["from"], "label", "{output}");
    assert!(
        ended
            .idempotency_key
            .as_deref()
            .is_some_and(|k| k.starts_with("event:runs-on-upload:")),
        "{:?}",
        ended.idempotency_key
    );
    let filter = |workflow: &str| client::RunFilter {
        workflow: Some(workflow.into()),
        ..Default::default()
    };
    assert_eq!(c.list_runs(&filter("on-upload")).await.unwrap().len(), 1);

    // Cron: one run per tick, keyed by the tick, its input carrying it.
    c.create_trigger(&spec(json!({
        "name": "nightly-runs",
        "workflow": "nightly",
        "cron": { "schedule": "* * * * * *" },
    })))
    .await
    .unwrap();
    wait_until("two ticks started runs", || async {
        c.list_runs(&filter("nightly")).await.unwrap().len() >= 2
    })
    .await;
    c.pause_trigger("nightly-runs", true).await.unwrap();
    let mut ticks = std::collections::BTreeSet::new();
    for summary in c.list_runs(&filter("nightly")).await.unwrap() {
        let run = must_end(c, summary.id).await;
        assert_eq!(run.summary.state, RunStatus::Succeeded, "{:?}", run.summary);
        let key = run.idempotency_key.clone().unwrap();
        let tick: u64 = key
            .strip_prefix("trigger:nightly-runs:")
            .unwrap_or_else(|| panic!("{key}"))
            .parse()
            .unwrap();
        let output = run.summary.steps[0].step.output.as_ref().unwrap();
        assert_eq!(output["input"]["tick"], tick, "{output}");
        assert!(ticks.insert(tick), "tick {tick} started two runs");
    }
    let t = c.trigger("nightly-runs").await.unwrap();
    assert!(t["fired"].as_u64().unwrap() >= ticks.len() as u64, "{t}");
    // No function job started outside the runs' steps.
    let jobs = c
        .list_jobs(&client::JobFilter::default())
        .await
        .unwrap()
        .jobs;
    assert!(
        jobs.iter().all(|j| j
            .idempotency_key
            .as_deref()
            .is_some_and(|k| k.starts_with("run:"))),
        "{jobs:?}"
    );
}

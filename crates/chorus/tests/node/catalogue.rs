//! The source catalogue end to end: sources registered (through the CLI and the API), read
//! by triggers, and what they refuse (records that fail the schema, jobs that refuse their
//! input) delivered to their dead-letter topic (a real tansu broker) or objects under a
//! prefix, with the reason, and counted.

use crate::harness::{free_port, wait_until, TestNode};
use crate::sources::{
    all_jobs, create_topic, must_commit_to, must_read_dead_letters, node_on_s3, plays_started, s3,
    s3_put, tansu_on,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Waits until the source's log-kept counts are `want` (`rejected`, `failed_invalid_input`,
/// `dead_lettered`) with nothing pending; answers the source.
async fn must_count(node: &TestNode, name: &str, want: (u64, u64, u64)) -> Value {
    let what = format!("source {name} counts {want:?}");
    wait_until(&what, || async {
        let s = node.client.source(name).await.unwrap();
        let c = &s["counts"];
        let got = (
            c["rejected"].as_u64().unwrap(),
            c["failed_invalid_input"].as_u64().unwrap(),
            c["dead_lettered"].as_u64().unwrap(),
        );
        got == want && c["dead_letter_pending"] == 0
    })
    .await;
    node.client.source(name).await.unwrap()
}

/// A Kafka topic registered with a schema and a dead-letter topic: a trigger that names it
/// starts jobs for the records that match, the others reach the dead-letter topic with the
/// reason and the source in their headers; the counts say so, and the source cannot be
/// deleted while the trigger reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_source_dead_letters_what_fails_its_schema_to_a_topic() {
    let broker = tansu_on(free_port()).await;
    create_topic(&broker, "plays", 1);
    create_topic(&broker, "plays-dlq", 1);
    let brokers = format!("127.0.0.1:{}", broker.port);
    let node = TestNode::start().await;
    let spec = |schema: Value| -> model::SourceSpec {
        serde_json::from_value(json!({
            "name": "plays",
            "owner": "listening-team",
            "description": "one record per play",
            "kafka": { "brokers": brokers, "topic": "plays" },
            "schema": schema,
            "dead_letter": { "topic": "plays-dlq" },
        }))
        .unwrap()
    };
    let bad = node
        .client
        .register_source(&spec(json!({ "type": "nonsense" })))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Some(model::ErrorCode::InvalidInput), "{bad}");
    let schema = json!({ "type": "object", "required": ["play"],
                         "properties": { "play": { "type": "integer" } } });
    node.client.register_source(&spec(schema)).await.unwrap();
    let trigger: model::TriggerSpec = serde_json::from_value(json!({
        "name": "on-play", "function": "noop", "source": "plays",
    }))
    .unwrap();
    let created = node.client.create_trigger(&trigger).await.unwrap();
    assert_eq!(created["spec"]["kafka"]["topic"], "plays", "{created}");

    let producer = events::kafka::Producer::new(&brokers).unwrap();
    let sent: [&[u8]; 4] = [
        br#"{"play": 1}"#,
        b"not json",
        br#"{"play": "x"}"#,
        br#"{"play": 2}"#,
    ];
    let mut end = 0;
    for value in sent {
        let (_, offset) = producer
            .send("plays", Some(0), Some(b"k"), value)
            .await
            .unwrap();
        end = offset + 1;
    }
    wait_until("the good records started jobs", || async {
        plays_started(&node).await.len() == 2
    })
    .await;
    let s = must_count(&node, "plays", (2, 0, 2)).await;
    assert_eq!(s["seen"]["records_in"], 4, "{s}");
    assert_eq!(s["triggers"], json!(["on-play"]), "{s}");
    must_commit_to(
        &brokers,
        "chorus-on-play",
        "plays",
        &BTreeMap::from([(0, end)]),
    )
    .await;

    let dead = must_read_dead_letters(&brokers, "plays-dlq", 2).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    let codes: Vec<_> = dead
        .iter()
        .map(|d| d.header("chorus.error.code").unwrap())
        .collect();
    assert_eq!(codes, ["invalid_input", "schema_mismatch"]);
    for (d, value) in dead.iter().zip([&sent[1], &sent[2]]) {
        assert_eq!(d.record.value.as_deref(), Some(*value));
        assert_eq!(d.record.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(d.header("chorus.source").as_deref(), Some("plays"));
        assert_eq!(d.header("chorus.trigger").as_deref(), Some("on-play"));
        assert_eq!(d.header("chorus.source.topic").as_deref(), Some("plays"));
    }
    let offsets: Vec<_> = dead
        .iter()
        .map(|d| d.header("chorus.source.offset").unwrap())
        .collect();
    assert_eq!(offsets, ["1", "2"]);

    // Read by a trigger, the source stays; then it goes.
    let refused = node.client.delete_source("plays").await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(model::ErrorCode::Conflict),
        "{refused}"
    );
    node.client.delete_trigger("on-play").await.unwrap();
    node.client.delete_source("plays").await.unwrap();
    let gone = node.client.source("plays").await.unwrap_err();
    assert_eq!(gone.code(), Some(model::ErrorCode::NotFound), "{gone}");
    let metrics = node.metrics().await;
    assert!(
        metrics.contains("chorus_source_dead_lettered_total{trigger=\"on-play\"} 2"),
        "{metrics}"
    );
}

/// The CloudEvents ingest registered through the CLI, with a schema file and objects under
/// a prefix as its dead-letter destination: an event whose data fails the schema starts no
/// job and becomes an object with the reason; a job of a good event that fails with
/// `invalid_input` does too; `sources get` shows the counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_source_dead_letters_refused_events_and_jobs_to_objects() {
    let node = TestNode::start().await;
    let mut refuser = model::FunctionSpec::builtin("fail");
    refuser.retry.max_attempts = 1;
    node.client.deploy(&refuser).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("song.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "required": ["song"], "properties": {"song": {"type": "string"}}}"#,
    )
    .unwrap();
    let schema = schema.to_str().unwrap();
    let out = node
        .must_cli(&[
            "sources",
            "register",
            "uploads",
            "--ingest",
            "--filter",
            r#"{"exact": {"type": "song.uploaded"}}"#,
            "--owner",
            "label-team",
            "--schema",
            schema,
            "--dead-letter",
            "bucket:dead/",
        ])
        .await;
    assert!(out.contains("uploads"), "{out}");
    for (name, function, input) in [
        ("catalogue", "noop", json!({})),
        (
            "strict",
            "fail",
            json!({ "code": "invalid_input", "message": "no such label" }),
        ),
    ] {
        let spec: model::TriggerSpec = serde_json::from_value(json!({
            "name": name, "function": function, "input": input, "source": "uploads",
        }))
        .unwrap();
        node.client.create_trigger(&spec).await.unwrap();
    }
    let events = json!([
        { "specversion": "1.0", "id": "1", "source": "app", "type": "song.uploaded",
          "data": { "song": "a.flac" } },
        { "specversion": "1.0", "id": "2", "source": "app", "type": "song.uploaded",
          "data": { "song": 7 } },
    ]);
    let (status, answer) = node
        .client
        .ingest_events(
            "application/cloudevents-batch+json",
            &[],
            serde_json::to_vec(&events).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let second = &answer["events"][1]["jobs"];
    assert_eq!(second.as_array().unwrap().len(), 2, "{answer}");
    assert!(
        second
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["error"]["code"] == "schema_mismatch"),
        "{answer}"
    );
    assert_eq!(all_jobs(&node, "noop").await.len(), 1);
    // One refused event, one job that refused its input: two objects with the reasons.
    let s = must_count(&node, "uploads", (1, 1, 2)).await;
    assert_eq!(s["seen"]["records_in"], 2, "{s}");
    let mut letters: Vec<Value> = Vec::new();
    for seq in 0..2 {
        let key = format!("dead/uploads/{seq:020}.json");
        let body = node.client.get_object(&key).await.unwrap();
        letters.push(serde_json::from_slice(&body).unwrap());
    }
    let by_code: BTreeMap<String, &Value> = letters
        .iter()
        .map(|l| (l["error"]["code"].as_str().unwrap().to_string(), l))
        .collect();
    let mismatch = by_code["schema_mismatch"];
    assert_eq!(mismatch["record"]["id"], "2", "{mismatch}");
    assert_eq!(mismatch["record"]["data"]["song"], 7, "{mismatch}");
    assert!(
        mismatch["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/song"),
        "{mismatch}"
    );
    let refused = by_code["invalid_input"];
    assert_eq!(refused["trigger"], "strict", "{refused}");
    assert_eq!(
        refused["record"]["input"]["trigger"]["event"]["id"], "1",
        "{refused}"
    );
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no such label"),
        "{refused}"
    );

    let shown = node.must_cli(&["sources", "get", "uploads"]).await;
    assert!(shown.contains("dead-lettered: 2"), "{shown}");
    assert!(shown.contains("objects under dead/"), "{shown}");
    let listed = node.must_cli(&["sources", "list", "--json"]).await;
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed["sources"][0]["spec"]["owner"], "label-team",
        "{listed}"
    );
}

/// A bucket prefix of an S3-compatible store (moto's server) registered with a schema: a
/// `.json` object that fails it starts no job and is dead-lettered under the source's
/// prefix, in the same store, with the reason; the others start their jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_source_dead_letters_json_objects_that_fail_its_schema() {
    let server = s3("labels").await;
    let (node, store) = node_on_s3(&server, "labels").await;
    let spec: model::SourceSpec = serde_json::from_value(json!({
        "name": "drops",
        "owner": "label-ops",
        "bucket": { "prefix": "drops/", "suffixes": [".json", ".flac"] },
        "schema": { "type": "object", "required": ["artist"] },
        "dead_letter": { "prefix": "dead/" },
    }))
    .unwrap();
    node.client.register_source(&spec).await.unwrap();
    let trigger: model::TriggerSpec = serde_json::from_value(json!({
        "name": "on-drop", "function": "noop", "source": "drops",
    }))
    .unwrap();
    node.client.create_trigger(&trigger).await.unwrap();
    s3_put(&store, "drops/a.json", r#"{"artist": "A"}"#).await;
    s3_put(&store, "drops/b.json", r#"{"title": "no artist"}"#).await;
    s3_put(&store, "drops/c.json", "not json").await;
    s3_put(&store, "drops/d.flac", "audio").await;
    wait_until("the good objects started jobs", || async {
        all_jobs(&node, "noop").await.len() == 2
    })
    .await;
    let s = must_count(&node, "drops", (2, 0, 2)).await;
    assert_eq!(s["seen"]["records_in"], 4, "{s}");
    let listing = store.list("dead/drops/", 10).await.unwrap();
    assert_eq!(listing.objects.len(), 2, "{listing:?}");
    let mut reasons = BTreeMap::new();
    for o in &listing.objects {
        let letter: Value =
            serde_json::from_slice(&store.get_bytes(&o.key, 1 << 20).await.unwrap()).unwrap();
        let key = letter["record"]["key"].as_str().unwrap().to_string();
        reasons.insert(key, letter["error"]["code"].as_str().unwrap().to_string());
    }
    assert_eq!(
        reasons,
        BTreeMap::from([
            ("drops/b.json".to_string(), "schema_mismatch".to_string()),
            ("drops/c.json".to_string(), "invalid_input".to_string()),
        ])
    );
    let started: Vec<String> = all_jobs(&node, "noop")
        .await
        .iter()
        .map(|j| {
            j.input["trigger"]["object"]["key"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(started.len(), 2);
    assert!(started.contains(&"drops/a.json".to_string()), "{started:?}");
    assert!(started.contains(&"drops/d.flac".to_string()), "{started:?}");
}

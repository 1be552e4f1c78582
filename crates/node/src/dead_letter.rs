//! Dead letters on their way: the leader delivers each record a source refused (or whose
//! job refused it) to the source's destination, a Kafka topic or an object under a prefix
//! of the cluster's store, with the reason, and only then counts it.
//!
//! # Delivery, step by step
//!
//! 1. A dead letter enters the replicated queue (`State::pending_dead_letters`, numbered in
//!    log order) in the same entry that moves its trigger's cursor past the record, or that
//!    ends its job. Nothing waits for it.
//! 2. This task (on the leader only) wakes on every applied entry and every [`TICK`], takes
//!    the oldest [`LETTERS_PER_PASS_MAX`] and groups them by source. Each source gets its
//!    letters in order, one at a time; a source whose delivery failed waits out its back-off
//!    (from [`RETRY_FIRST`] doubling to [`RETRY_LAST`]) and is tried again, for as long as it
//!    takes: a dead letter is never given up.
//! 3. To a topic: the record's key and value as they were (a CloudEvent, an object or a
//!    job's input as JSON), with headers `chorus.error.code`, `chorus.error.message`,
//!    `chorus.source`, `chorus.trigger` and, for a Kafka record, `chorus.source.topic`,
//!    `chorus.source.partition`, `chorus.source.offset` (after Kafka Connect's dead-letter
//!    queues), acknowledged by the brokers. To a prefix: the object
//!    `{prefix}{source}/{number, 20 digits}.json`, a JSON envelope of the reason and the
//!    record, stored as an upload is (on two nodes' disks with the local store).
//! 4. One `DeadLettersDone` entry takes what was delivered out of the queue and counts it
//!    against its source.
//!
//! At least once: a leader that dies between a delivery and the commit of
//! `DeadLettersDone` leaves the letter pending, and the next leader delivers it again (an
//! object under the same key; a topic gets it twice, with the same headers).

use crate::{now_ms, Node};
use model::{Command, EventKind, NewEvent, PendingDeadLetter};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use triggers::Destination;

/// Pending letters looked at in one pass at most (the oldest).
const LETTERS_PER_PASS_MAX: usize = 256;
/// How often the leader looks even if nothing was applied (for back-offs that ran out).
const TICK: Duration = Duration::from_millis(250);
/// Back-off after a failed delivery: doubles from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_LAST: Duration = Duration::from_secs(30);
/// The largest dead-letter object: a letter is at most `model::DEAD_LETTER_BYTES_MAX`,
/// hex doubles a record's bytes at most, and the envelope adds little.
const OBJECT_BYTES_MAX: u64 = 4 * model::DEAD_LETTER_BYTES_MAX as u64;

/// A source whose delivery failed: when to try again, the next wait, and whether the
/// failure was told (a `source_failed` event) so that the recovery is too.
#[derive(Debug)]
struct Failing {
    until: Instant,
    wait: Duration,
}

pub(crate) async fn deliver(node: Node) {
    let mut applied = node.inner.registry.applied();
    let mut failing: HashMap<String, Failing> = HashMap::new();
    let mut out = Outlets::default();
    while let Some(leading) = node.next_drain_pass(&mut applied, TICK).await {
        if !leading {
            failing.clear();
            continue;
        }
        let pending: Vec<PendingDeadLetter> = node.read(|s| {
            s.pending_dead_letters()
                .take(LETTERS_PER_PASS_MAX)
                .cloned()
                .collect()
        });
        if pending.is_empty() {
            continue;
        }
        let mut by_source: BTreeMap<String, Vec<PendingDeadLetter>> = BTreeMap::new();
        for letter in pending {
            by_source
                .entry(letter.letter.source.clone())
                .or_default()
                .push(letter);
        }
        let mut delivered = Vec::new();
        for (source, letters) in by_source {
            if failing
                .get(&source)
                .is_some_and(|f| Instant::now() < f.until)
            {
                continue;
            }
            let (done, error) = out.deliver_in_order(&node, &source, letters).await;
            for letter in &done {
                node.inner
                    .metrics
                    .source_dead_lettered(&letter.letter.trigger, 1);
            }
            delivered.extend(done.iter().map(|l| l.seq));
            match error {
                Some(e) => {
                    let first = !failing.contains_key(&source);
                    let f = failing.entry(source.clone()).or_insert(Failing {
                        until: Instant::now(),
                        wait: RETRY_FIRST,
                    });
                    f.until = Instant::now() + f.wait;
                    f.wait = (f.wait * 2).min(RETRY_LAST);
                    tracing::warn!(source, error = %e, "dead letters: delivery failed; trying again");
                    if first {
                        tell(
                            &node,
                            EventKind::SourceFailed,
                            format!(
                                "source {source} cannot deliver its dead letters, retrying: {e}"
                            ),
                        )
                        .await;
                    }
                }
                None => {
                    if failing.remove(&source).is_some() {
                        tell(
                            &node,
                            EventKind::SourceRecovered,
                            format!("source {source} delivers its dead letters again"),
                        )
                        .await;
                    }
                }
            }
        }
        if delivered.is_empty() {
            continue;
        }
        if let Err(e) = node.propose(Command::DeadLettersDone { delivered }).await {
            // They stay pending and are delivered again: at least once.
            tracing::warn!(error = %e, "dead letters: could not record what was delivered");
        }
    }
}

async fn tell(node: &Node, kind: EventKind, message: String) {
    let event = NewEvent {
        kind,
        node: Some(node.id()),
        message,
    };
    node.record_events(vec![event]).await;
}

/// Kafka producers by brokers, made on first use and kept while this node leads.
#[derive(Default)]
struct Outlets {
    #[cfg(feature = "kafka")]
    producers: HashMap<String, events::kafka::Producer>,
}

impl std::fmt::Debug for Outlets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outlets").finish_non_exhaustive()
    }
}

impl Outlets {
    /// Delivers one source's letters oldest first, stopping at the first that fails.
    async fn deliver_in_order(
        &mut self,
        node: &Node,
        source: &str,
        letters: Vec<PendingDeadLetter>,
    ) -> (Vec<PendingDeadLetter>, Option<String>) {
        let Some(spec) = node.read(|s| s.source(source).map(|s| s.spec.clone())) else {
            // A source is not deleted while it has letters pending.
            return (Vec::new(), Some(format!("no source {source:?}")));
        };
        let mut done = Vec::new();
        for letter in letters {
            let sent = match spec.destination() {
                Some(Destination::Objects { prefix }) => to_object(node, prefix, &letter).await,
                Some(Destination::Topic { brokers, topic }) => {
                    self.send_to_topic(brokers, topic, &letter).await
                }
                None => Err("the source has no dead-letter destination".to_string()),
            };
            match sent {
                Ok(()) => done.push(letter),
                Err(e) => return (done, Some(e)),
            }
        }
        (done, None)
    }

    #[cfg(feature = "kafka")]
    async fn send_to_topic(
        &mut self,
        brokers: &str,
        topic: &str,
        pending: &PendingDeadLetter,
    ) -> Result<(), String> {
        use std::collections::hash_map::Entry;
        let producer = match self.producers.entry(brokers.to_string()) {
            Entry::Occupied(p) => p.into_mut(),
            Entry::Vacant(v) => {
                v.insert(events::kafka::Producer::new(brokers).map_err(|e| e.to_string())?)
            }
        };
        let letter = &pending.letter;
        let bytes =
            |hex_text: &Option<String>| hex_text.as_deref().and_then(|h| hex::decode(h).ok());
        let key = bytes(&letter.key_hex);
        let value = bytes(&letter.value_hex)
            .or_else(|| serde_json::to_vec(&letter.record).ok())
            .unwrap_or_default();
        let mut headers: Vec<(&str, String)> = vec![
            ("chorus.error.code", letter.code.as_str().to_string()),
            ("chorus.error.message", letter.message.clone()),
            ("chorus.source", letter.source.clone()),
            ("chorus.trigger", letter.trigger.clone()),
        ];
        if let Some(original) = letter.record.get("topic").and_then(|t| t.as_str()) {
            headers.push(("chorus.source.topic", original.to_string()));
            for field in ["partition", "offset"] {
                if let Some(v) = letter.record.get(field) {
                    let name = if field == "partition" {
                        "chorus.source.partition"
                    } else {
                        "chorus.source.offset"
                    };
                    headers.push((name, v.to_string()));
                }
            }
        }
        if let Some(job) = letter.job {
            headers.push(("chorus.job", job.to_string()));
        }
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        producer
            .send_with_headers(topic, None, key.as_deref(), Some(&value), &headers)
            .await
            .map(|_| ())
            .map_err(|e| format!("dead-letter topic {topic}: {e}"))
    }

    #[cfg(not(feature = "kafka"))]
    async fn send_to_topic(
        &mut self,
        _brokers: &str,
        topic: &str,
        _pending: &PendingDeadLetter,
    ) -> Result<(), String> {
        Err(format!(
            "dead-letter topic {topic}: this build has no Kafka (feature `kafka`)"
        ))
    }
}

/// Stores a letter as `{prefix}{source}/{seq:020}.json`: the reason, the record, and where
/// it came from, as one JSON object.
async fn to_object(node: &Node, prefix: &str, pending: &PendingDeadLetter) -> Result<(), String> {
    use sha2::Digest;
    let letter = &pending.letter;
    let key = format!("{prefix}{}/{:020}.json", letter.source, pending.seq);
    let envelope = serde_json::json!({
        "error": { "code": letter.code, "message": letter.message },
        "source": letter.source,
        "trigger": letter.trigger,
        "job": letter.job,
        "at_ms": pending.at_ms,
        "record": letter.record,
        "key_hex": letter.key_hex,
        "value_hex": letter.value_hex,
    });
    let body = serde_json::to_vec_pretty(&envelope).map_err(|e| e.to_string())?;
    let sha256 = hex::encode(sha2::Sha256::digest(&body));
    let dir = node.receiving_dir();
    let path = dir.join(format!("dead-letter-{}-{}.json", pending.seq, now_ms()));
    let written = async {
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::write(&path, &body).await
    }
    .await;
    if let Err(e) = written {
        return Err(format!("dead letter {key}: writing it: {e}"));
    }
    let stored = node
        .put_object(&key, &path, &sha256, OBJECT_BYTES_MAX)
        .await;
    let _ = tokio::fs::remove_file(&path).await;
    stored
        .map(|_| ())
        .map_err(|e| format!("dead letter {key}: {}", e.message))
}

//! The source catalogue on a node: registering and deleting sources (log entries), a
//! source as the API shows it (its spec, what the log counted, and what this node saw of
//! its records), and the samples behind the dashboard's sources panel.
//!
//! Counts come from two places. What a source refused and where it went (`rejected`,
//! `failed_invalid_input`, `dead_lettered`, `dead_letter_pending`) is counted by the log,
//! so every node tells the same. Records and bytes in and Kafka lag are counted in memory by
//! the node that reads them: the leader for Kafka and bucket sources, the node that took the
//! call for the CloudEvents ingest. Every [`SAMPLE_EVERY`] the node keeps a sample of each
//! source's figures, the latest [`SAMPLES_MAX`] of them (an hour), for the panel's chart.

use crate::{now_ms, rejected, Node};
use model::{ApiError, Command, ErrorCode, Source, SourceSpec};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// How often each source's figures are sampled for the chart.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples kept per source: an hour at [`SAMPLE_EVERY`].
pub const SAMPLES_MAX: usize = 360;

/// One source's figures at one time; counters are totals since this node started counting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub at_ms: u64,
    pub records_in: u64,
    pub bytes_in: u64,
    pub rejected: u64,
    pub dead_lettered: u64,
    /// Kafka: the sum over partitions of the largest lag of any trigger reading them.
    pub lag: i64,
}

/// What this node saw of a source's records.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Seen {
    pub records_in: u64,
    pub bytes_in: u64,
    /// Kafka: per partition, the largest lag of the triggers that read the source.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub lag: BTreeMap<i32, i64>,
}

/// The node's in-memory part of the catalogue: events ingested per source, and samples.
#[derive(Debug, Default)]
pub(crate) struct Catalogue {
    ingested: Mutex<BTreeMap<String, (u64, u64)>>,
    samples: Mutex<BTreeMap<String, VecDeque<Sample>>>,
}

impl Catalogue {
    /// Counts events the ingest took for a source (records and bytes).
    pub(crate) fn ingested(&self, source: &str, records: u64, bytes: u64) {
        let mut all = self.ingested.lock().unwrap_or_else(|e| e.into_inner());
        let seen = all.entry(source.to_string()).or_default();
        seen.0 += records;
        seen.1 += bytes;
    }
}

impl Node {
    pub async fn register_source(&self, spec: SourceSpec) -> Result<Source, ApiError> {
        let name = spec.name.clone();
        let command = Command::RegisterSource {
            now_ms: now_ms(),
            spec,
        };
        rejected(self.propose(command).await?)?;
        self.source(&name)
    }

    pub fn source(&self, name: &str) -> Result<Source, ApiError> {
        self.read(|s| s.source(name).cloned())
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no source {name:?}")))
    }

    /// Refused (`conflict`) while a trigger reads it or dead letters of it are on their way.
    pub async fn delete_source(&self, name: String) -> Result<(), ApiError> {
        rejected(self.propose(Command::DeleteSource { name }).await?).map(|_| ())
    }

    /// What this node saw of a source's records: the statuses of the triggers that read it
    /// (while this node reads them) and the events it ingested for it.
    pub fn source_seen(&self, name: &str) -> Seen {
        let readers: Vec<model::Trigger> = self.read(|s| {
            s.triggers()
                .filter(|t| t.spec.source.as_deref() == Some(name))
                .cloned()
                .collect()
        });
        let mut seen = Seen::default();
        for status in readers
            .iter()
            .filter_map(|t| self.source_status(&t.spec.name))
        {
            seen.records_in += status.records_in;
            seen.bytes_in += status.bytes_in;
        }
        // The lag where this node reads the high watermarks (the leader does).
        for p in readers.iter().flat_map(|t| self.kafka_partitions(t)) {
            if let Some(lag) = p.lag {
                let at = seen.lag.entry(p.partition).or_insert(0);
                *at = (*at).max(lag);
            }
        }
        let ingested = self
            .inner
            .catalogue
            .ingested
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(&(records, bytes)) = ingested.get(name) {
            seen.records_in += records;
            seen.bytes_in += bytes;
        }
        seen
    }

    /// A source's samples, oldest first (the latest hour).
    pub fn source_samples(&self, name: &str) -> Vec<Sample> {
        let samples = self
            .inner
            .catalogue
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        samples
            .get(name)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    fn take_samples(&self) {
        let sources: Vec<Source> = self.read(|s| s.sources().cloned().collect());
        let at_ms = now_ms();
        let taken: Vec<(String, Sample)> = sources
            .iter()
            .map(|source| {
                let seen = self.source_seen(&source.spec.name);
                let sample = Sample {
                    at_ms,
                    records_in: seen.records_in,
                    bytes_in: seen.bytes_in,
                    rejected: source.counts.rejected + source.counts.failed_invalid_input,
                    dead_lettered: source.counts.dead_lettered,
                    lag: seen.lag.values().sum(),
                };
                (source.spec.name.clone(), sample)
            })
            .collect();
        let mut samples = self
            .inner
            .catalogue
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        samples.retain(|name, _| sources.iter().any(|s| &s.spec.name == name));
        for (name, sample) in taken {
            let ring = samples.entry(name).or_default();
            if ring.len() == SAMPLES_MAX {
                ring.pop_front();
            }
            ring.push_back(sample);
        }
    }
}

/// Samples every source's figures every [`SAMPLE_EVERY`] (the first at once); owned by
/// `Node`.
pub(crate) async fn sample(node: Node) {
    loop {
        node.take_samples();
        tokio::select! {
            () = node.inner.shutdown.cancelled() => return,
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

/// What one ingest call's events came to at their triggers' sources: records counted per
/// source, events a source's schema refused (a dead letter once per source and event, an
/// error in the answer per trigger), and each source's compiled schema.
#[derive(Default)]
pub(crate) struct Judged {
    pub(crate) counted: BTreeMap<String, (u64, u64)>,
    pub(crate) letters: Vec<model::DeadLetter>,
    /// (event index, trigger, why) of each refusal.
    pub(crate) refusals: Vec<(usize, String, ApiError)>,
    schemas: BTreeMap<String, Option<triggers::Validator>>,
    /// Per (source, event index) judged: why it was refused, if it was.
    verdicts: BTreeMap<(String, usize), Option<ApiError>>,
}

impl std::fmt::Debug for Judged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Judged")
            .field("counted", &self.counted)
            .field("letters", &self.letters.len())
            .finish_non_exhaustive()
    }
}

impl Judged {
    /// Whether event `i` may start a job of trigger `t`: always, unless `t` reads a source
    /// whose schema the event's data does not match (then `Err`, and the event is a dead
    /// letter of the source, once).
    pub(crate) fn event(
        &mut self,
        state: &model::State,
        t: &model::Trigger,
        i: usize,
        event: &triggers::Event,
    ) -> Result<(), ApiError> {
        let Some(source) = t.spec.source.as_deref().and_then(|n| state.source(n)) else {
            return Ok(());
        };
        let name = source.spec.name.clone();
        let key = (name.clone(), i);
        if let Some(verdict) = self.verdicts.get(&key) {
            return verdict.clone().map_or(Ok(()), Err);
        }
        let json = event.to_json();
        let bytes = serde_json::to_vec(&json).map_or(0, |v| v.len()) as u64;
        let c = self.counted.entry(name.clone()).or_default();
        c.0 += 1;
        c.1 += bytes;
        let schema = self.schemas.entry(name.clone()).or_insert_with(|| {
            source.spec.validator().unwrap_or_else(|e| {
                tracing::warn!(source = %source.spec.name, error = %e, "the source's schema is ignored");
                None
            })
        });
        let verdict = match schema.as_ref().map(|v| triggers::judge_event(event, v)) {
            None | Some(Ok(())) => None,
            Some(Err(e)) => {
                let error = model::source_error(e);
                self.letters.push(model::DeadLetter {
                    source: name,
                    trigger: t.spec.name.clone(),
                    code: error.code,
                    message: error.message.clone(),
                    record: json,
                    key_hex: None,
                    value_hex: None,
                    job: None,
                    kafka: None,
                });
                Some(error)
            }
        };
        self.verdicts.insert(key, verdict.clone());
        verdict.map_or(Ok(()), Err)
    }
}

/// The dead letters of a Kafka trigger's refused records, if it reads a source: one
/// `DeadLetters`, to go first in the entry that moves its cursor past them.
pub(crate) fn kafka_letters(
    state: &model::State,
    trigger: &str,
    rejected: &[(triggers::Record, triggers::Error)],
) -> Option<Command> {
    let source = state.source_of_trigger(trigger)?;
    if rejected.is_empty() {
        return None;
    }
    let letters = rejected
        .iter()
        .map(|(r, e)| {
            let error = model::source_error(e.clone());
            model::DeadLetter {
                source: source.spec.name.clone(),
                trigger: trigger.to_string(),
                code: error.code,
                message: error.message,
                record: serde_json::json!({
                    "topic": r.topic,
                    "partition": r.partition,
                    "offset": r.offset,
                    "timestamp_ms": r.timestamp_ms,
                }),
                key_hex: r.key.as_deref().map(hex::encode),
                value_hex: r.value.as_deref().map(hex::encode),
                job: None,
                kafka: Some((r.partition, r.offset)),
            }
        })
        .collect();
    Some(Command::DeadLetters {
        now_ms: now_ms(),
        letters,
    })
}

/// The largest JSON object a bucket source's schema judges; a larger one is refused
/// (`too_large`).
pub const JSON_OBJECT_BYTES_MAX: u64 = 1024 * 1024;

/// Splits a bucket trigger's new objects into those that start jobs and the dead letters of
/// those its source refuses: with a schema, an object whose key ends with `.json` must be
/// JSON (at most [`JSON_OBJECT_BYTES_MAX`]) that matches it. An object that cannot be read
/// fails the pass (it is tried again).
pub(crate) async fn judge_objects(
    node: &Node,
    trigger: &str,
    source: Option<&SourceSpec>,
    due: Vec<triggers::ObjectVersion>,
) -> Result<(Vec<triggers::ObjectVersion>, Vec<model::DeadLetter>), String> {
    let schema = match source.map(SourceSpec::validator) {
        Some(Ok(Some(schema))) => schema,
        Some(Err(e)) => return Err(e.to_string()),
        _ => return Ok((due, Vec::new())),
    };
    let source = source.expect("a schema comes from a source");
    let mut taken = Vec::with_capacity(due.len());
    let mut letters = Vec::new();
    for o in due {
        if !o.key.ends_with(".json") {
            taken.push(o);
            continue;
        }
        let what = format!("object {}", o.key);
        let judged = if o.size > JSON_OBJECT_BYTES_MAX {
            Err(triggers::Error::new(
                triggers::Code::TooLarge,
                format!(
                    "{what} is {} bytes; the schema judges at most {JSON_OBJECT_BYTES_MAX}",
                    o.size
                ),
            ))
        } else {
            let bytes = node
                .object_bytes(&o.key, JSON_OBJECT_BYTES_MAX)
                .await
                .map_err(|e| format!("reading {what}: {}", e.message))?;
            triggers::judge_json(&what, &bytes, &schema)
        };
        match judged {
            Ok(()) => taken.push(o),
            Err(e) => {
                let error = model::source_error(e);
                letters.push(model::DeadLetter {
                    source: source.name.clone(),
                    trigger: trigger.to_string(),
                    code: error.code,
                    message: error.message,
                    record: serde_json::json!({
                        "key": o.key,
                        "size": o.size,
                        "modified_ms": o.modified_ms,
                        "version": o.version,
                    }),
                    key_hex: None,
                    value_hex: None,
                    job: None,
                    kafka: None,
                });
            }
        }
    }
    Ok((taken, letters))
}

//! The source catalogue in the replicated state, and the dead-letter queue of its sources.
//!
//! A source (see `triggers::SourceSpec`) is registered once and named by triggers, which read
//! it with its schema. A record a source refuses (it does not match the schema, it is over a
//! limit), and a job started from a source's record that fails with `invalid_input`, is a
//! *dead letter*: it is put in a replicated queue ([`PendingDeadLetter`]) in the same log
//! entry that moves the trigger's cursor past it or ends the job, and the leader delivers it
//! to the source's destination (`node::dead_letter`), then logs `DeadLettersDone`, which
//! counts it. A crash in between delivers it again: at least once, never lost. A source
//! without a destination counts what it refuses and keeps nothing.

use crate::state::State;
use crate::{ApiError, Command, ErrorCode, JobId, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
pub use triggers::SourceSpec;

/// Sources in the catalogue at most.
pub const SOURCES_MAX: usize = 256;
/// Dead letters waiting for delivery at most, over every source; a command that would pass
/// it is refused (the trigger tries again: back-pressure, not loss).
pub const DEAD_LETTERS_PENDING_MAX: usize = 10_000;
/// Bytes of dead letters waiting for delivery at most, over every source.
pub const DEAD_LETTERS_PENDING_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The largest dead letter kept whole: a larger one keeps the reason and where the record
/// was, not its bytes (`record.truncated`).
pub const DEAD_LETTER_BYTES_MAX: usize = 256 * 1024;
/// Dead letters in one command at most.
pub const DEAD_LETTERS_PER_COMMAND_MAX: usize = 1_000;

/// A source of the catalogue and what became of its records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub spec: SourceSpec,
    pub created_at_ms: u64,
    #[serde(default)]
    pub counts: SourceCounts,
}

/// What a source refused and where it went, counted by the log (so every node tells the
/// same, across leader changes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCounts {
    /// Records the source refused: over a limit, not JSON, not matching its schema.
    pub rejected: u64,
    /// Jobs started from its records that failed with `invalid_input`.
    pub failed_invalid_input: u64,
    /// Dead letters its destination took.
    pub dead_lettered: u64,
    /// Dead letters waiting for delivery.
    pub dead_letter_pending: u64,
}

/// A record that starts no job, or whose job refused it, on its way to its source's
/// dead-letter destination.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub source: String,
    pub trigger: String,
    pub code: ErrorCode,
    pub message: String,
    /// The original record as JSON: a Kafka record (`topic`, `partition`, `offset`,
    /// `timestamp_ms`), a CloudEvent, an object (`key`, `size`, `version`), or a failed job
    /// (`job`, `input`).
    pub record: Value,
    /// A Kafka record's key and value bytes (hex), so a topic gets them as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_hex: Option<String>,
    /// The failed job, for a job's dead letter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    /// A Kafka record's partition and offset: a letter of a record the trigger's cursor has
    /// passed is one an earlier entry took already (this one was proposed again), and is
    /// passed over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<(i32, i64)>,
}

impl DeadLetter {
    /// Its size as the log holds it.
    pub fn bytes(&self) -> usize {
        serde_json::to_vec(self).map_or(usize::MAX, |v| v.len())
    }

    /// Itself, or, over [`DEAD_LETTER_BYTES_MAX`], the reason and where the record was
    /// without its bytes.
    pub fn bounded(mut self) -> DeadLetter {
        let bytes = self.bytes();
        if bytes <= DEAD_LETTER_BYTES_MAX {
            return self;
        }
        let mut kept = serde_json::Map::new();
        if let Value::Object(record) = &self.record {
            for key in [
                "topic",
                "partition",
                "offset",
                "timestamp_ms",
                "key",
                "size",
                "id",
                "source",
                "type",
            ] {
                if let Some(v) = record.get(key).filter(|v| !v.is_object() && !v.is_array()) {
                    let short = v.as_str().is_none_or(|s| s.len() <= 1_024);
                    if short {
                        kept.insert(key.to_string(), v.clone());
                    }
                }
            }
        }
        kept.insert("truncated".into(), Value::Bool(true));
        kept.insert("bytes".into(), Value::from(bytes));
        self.record = Value::Object(kept);
        self.key_hex = None;
        self.value_hex = None;
        self.message
            .truncate(self.message.floor_char_boundary_compat(4_096));
        self
    }
}

/// `str::floor_char_boundary` is unstable: the largest char boundary at or below `at`.
trait FloorBoundary {
    fn floor_char_boundary_compat(&self, at: usize) -> usize;
}

impl FloorBoundary for String {
    fn floor_char_boundary_compat(&self, at: usize) -> usize {
        if at >= self.len() {
            return self.len();
        }
        (0..=at)
            .rev()
            .find(|&i| self.is_char_boundary(i))
            .unwrap_or(0)
    }
}

/// A dead letter in the replicated queue, numbered in log order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingDeadLetter {
    pub seq: u64,
    pub at_ms: u64,
    pub letter: DeadLetter,
}

impl State {
    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.get(name)
    }

    /// Every source, by name.
    pub fn sources(&self) -> impl Iterator<Item = &Source> {
        self.sources.values()
    }

    /// Dead letters waiting for delivery, oldest first.
    pub fn pending_dead_letters(&self) -> impl Iterator<Item = &PendingDeadLetter> {
        self.dead_letters.values()
    }

    /// The source a trigger reads, if it names one.
    pub fn source_of_trigger(&self, trigger: &str) -> Option<&Source> {
        let name = self.trigger(trigger)?.spec.source.as_deref()?;
        self.sources.get(name)
    }

    pub(crate) fn apply_source(&mut self, command: Command) -> Response {
        match command {
            Command::RegisterSource { now_ms, spec } => self.register_source(now_ms, spec),
            Command::DeleteSource { name } => self.delete_source(&name),
            Command::DeadLetters { now_ms, letters } => self.enqueue_dead_letters(now_ms, letters),
            Command::DeadLettersDone { delivered } => {
                for seq in delivered {
                    let Some(done) = self.dead_letters.remove(&seq) else {
                        continue;
                    };
                    if let Some(s) = self.sources.get_mut(&done.letter.source) {
                        s.counts.dead_lettered += 1;
                        s.counts.dead_letter_pending =
                            s.counts.dead_letter_pending.saturating_sub(1);
                    }
                }
                Response::Done
            }
            _ => unreachable!("apply_source takes the catalogue's commands only"),
        }
    }

    fn register_source(&mut self, now_ms: u64, spec: SourceSpec) -> Response {
        if let Err(e) = spec.validate() {
            return Response::Rejected(source_error(e));
        }
        if self.sources.contains_key(&spec.name) {
            return Response::Rejected(ApiError::new(
                ErrorCode::Conflict,
                format!("source {} exists; delete it first", spec.name),
            ));
        }
        if self.sources.len() >= SOURCES_MAX {
            return Response::Rejected(ApiError::new(
                ErrorCode::TooLarge,
                format!("the catalogue has {SOURCES_MAX} sources, the most it takes"),
            ));
        }
        let source = Source {
            spec,
            created_at_ms: now_ms,
            counts: SourceCounts::default(),
        };
        self.sources.insert(source.spec.name.clone(), source);
        Response::Done
    }

    fn delete_source(&mut self, name: &str) -> Response {
        if !self.sources.contains_key(name) {
            return no_source(name);
        }
        let users: Vec<&str> = self
            .triggers()
            .filter(|t| t.spec.source.as_deref() == Some(name))
            .map(|t| t.spec.name.as_str())
            .collect();
        if !users.is_empty() {
            return Response::Rejected(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "source {name} is read by trigger(s) {}: delete them first",
                    users.join(", ")
                ),
            ));
        }
        if self.dead_letters.values().any(|p| p.letter.source == name) {
            return Response::Rejected(ApiError::new(
                ErrorCode::Conflict,
                format!("source {name} has dead letters on their way to its destination: try again once they are delivered"),
            ));
        }
        self.sources.remove(name);
        Response::Done
    }

    /// Counts each letter against its source and queues it for delivery (a source without a
    /// destination only counts it). All or nothing: refused (`unavailable`) if the queue
    /// would pass its limits, so the caller tries again and nothing is lost.
    fn enqueue_dead_letters(&mut self, now_ms: u64, letters: Vec<DeadLetter>) -> Response {
        if letters.len() > DEAD_LETTERS_PER_COMMAND_MAX {
            return Response::Rejected(ApiError::new(
                ErrorCode::TooLarge,
                format!("at most {DEAD_LETTERS_PER_COMMAND_MAX} dead letters per entry"),
            ));
        }
        if let Some(l) = letters
            .iter()
            .find(|l| !self.sources.contains_key(&l.source))
        {
            return no_source(&l.source);
        }
        let letters: Vec<DeadLetter> = letters
            .into_iter()
            .filter(|l| self.is_new_letter(l))
            .map(DeadLetter::bounded)
            .collect();
        let kept: Vec<&DeadLetter> = letters
            .iter()
            .filter(|l| self.sources[&l.source].spec.destination().is_some())
            .collect();
        let pending_bytes: usize = self.dead_letters.values().map(|p| p.letter.bytes()).sum();
        let new_bytes: usize = kept.iter().map(|l| l.bytes()).sum();
        if self.dead_letters.len() + kept.len() > DEAD_LETTERS_PENDING_MAX
            || pending_bytes + new_bytes > DEAD_LETTERS_PENDING_BYTES_MAX
        {
            return Response::Rejected(ApiError::new(
                ErrorCode::Unavailable,
                format!("the dead-letter queue is full ({DEAD_LETTERS_PENDING_MAX} letters or {DEAD_LETTERS_PENDING_BYTES_MAX} bytes): its destinations are not taking them; try again"),
            ));
        }
        for letter in letters {
            self.push_dead_letter(now_ms, letter);
        }
        Response::Done
    }

    /// False for a Kafka record's letter its trigger's cursor has passed: taken already.
    fn is_new_letter(&self, letter: &DeadLetter) -> bool {
        let Some((partition, offset)) = letter.kafka else {
            return true;
        };
        self.trigger(&letter.trigger)
            .and_then(|t| t.kafka.as_ref())
            .is_none_or(|cursor| cursor.is_new(partition, offset))
    }

    /// Counts one letter and queues it if its source has a destination; false if the queue
    /// is full (then it is only counted).
    fn push_dead_letter(&mut self, now_ms: u64, letter: DeadLetter) -> bool {
        let Some(source) = self.sources.get_mut(&letter.source) else {
            return false;
        };
        if letter.job.is_some() {
            source.counts.failed_invalid_input += 1;
        } else {
            source.counts.rejected += 1;
        }
        if source.spec.destination().is_none() {
            return true;
        }
        if self.dead_letters.len() >= DEAD_LETTERS_PENDING_MAX {
            return false;
        }
        source.counts.dead_letter_pending += 1;
        let seq = self.next_dead_letter_seq;
        self.next_dead_letter_seq += 1;
        self.dead_letters.insert(
            seq,
            PendingDeadLetter {
                seq,
                at_ms: now_ms,
                letter,
            },
        );
        true
    }

    /// A job a source's record started that failed with `invalid_input` is a dead letter
    /// of that source, with the job's input as the record. Called when a job ends.
    pub(crate) fn dead_letter_job(&mut self, now_ms: u64, id: JobId) {
        let Some(job) = self.job(id) else { return };
        if job.state != crate::JobState::Failed {
            return;
        }
        let Some(error) = job
            .error
            .as_ref()
            .filter(|e| e.code == ErrorCode::InvalidInput.as_str())
        else {
            return;
        };
        let Some(trigger) = job.idempotency_key.as_deref().and_then(source_trigger) else {
            return;
        };
        let Some(source) = self.source_of_trigger(trigger) else {
            return;
        };
        let letter = DeadLetter {
            source: source.spec.name.clone(),
            trigger: trigger.to_string(),
            code: ErrorCode::InvalidInput,
            message: format!("job {id} refused its input: {}", error.message),
            record: serde_json::json!({ "job": id, "input": job.input }),
            key_hex: None,
            value_hex: None,
            job: Some(id),
            kafka: None,
        }
        .bounded();
        let source = source.spec.name.clone();
        if !self.push_dead_letter(now_ms, letter) {
            // The queue is full and a job's end cannot wait: said in the event log.
            let message = format!("source {source}: the dead-letter queue is full; job {id}'s refused input was not queued (it stays in the job)");
            let event = crate::NewEvent {
                kind: crate::EventKind::SourceFailed,
                node: None,
                message,
            };
            self.record_event(now_ms, event, None);
        }
    }
}

/// The trigger of a job key of a source's record: `kafka:{trigger}:…`, `bucket:{trigger}:…`
/// or `event:{trigger}:…` (trigger names hold no ':').
fn source_trigger(key: &str) -> Option<&str> {
    let (kind, rest) = key.split_once(':')?;
    if !matches!(kind, "kafka" | "bucket" | "event") {
        return None;
    }
    rest.split_once(':').map(|(trigger, _)| trigger)
}

fn no_source(name: &str) -> Response {
    Response::Rejected(ApiError::new(
        ErrorCode::NotFound,
        format!("no source {name:?}"),
    ))
}

/// A `triggers` error (a spec refused, a record refused) as the API says it.
pub fn source_error(e: triggers::Error) -> ApiError {
    let code = match e.code {
        triggers::Code::TooLarge => ErrorCode::TooLarge,
        triggers::Code::InvalidInput | triggers::Code::InvalidEvent => ErrorCode::InvalidInput,
        triggers::Code::SchemaMismatch => ErrorCode::SchemaMismatch,
    };
    ApiError::new(code, e.message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, FunctionSpec, Response, State};
    use serde_json::json;

    fn must_apply(state: &mut State, command: Command) -> Response {
        let answer = state.apply(command);
        state.assert_invariants();
        answer
    }

    fn refused(answer: &Response) -> Option<ErrorCode> {
        match answer {
            Response::Rejected(e) => Some(e.code),
            _ => None,
        }
    }

    fn letter(source: &str, trigger: &str, kafka: Option<(i32, i64)>) -> DeadLetter {
        DeadLetter {
            source: source.into(),
            trigger: trigger.into(),
            code: ErrorCode::SchemaMismatch,
            message: "at /: no".into(),
            record: json!({ "topic": "songs", "partition": 0, "offset": 3 }),
            key_hex: None,
            value_hex: Some(hex::encode(b"[1]")),
            job: None,
            kafka,
        }
    }

    /// Register, name from a trigger, refuse deletes while it is read or owed letters, queue
    /// and deliver letters (a Kafka letter proposed again counts once), all in snapshots.
    #[test]
    fn the_catalogue_lives_in_the_replicated_state() {
        let mut s = State::default();
        must_apply(
            &mut s,
            Command::DeployFunction {
                spec: FunctionSpec::builtin("noop"),
            },
        );
        let spec = |v| serde_json::from_value::<SourceSpec>(v).unwrap();
        let register = |spec| Command::RegisterSource { now_ms: 1, spec };
        let songs = spec(json!({ "name": "songs", "owner": "team",
            "kafka": { "brokers": "h:9092", "topic": "songs" },
            "schema": { "type": "object" }, "dead_letter": { "prefix": "dead/" } }));
        assert_eq!(must_apply(&mut s, register(songs.clone())), Response::Done);
        assert_eq!(
            refused(&must_apply(&mut s, register(songs))),
            Some(ErrorCode::Conflict)
        );
        let bad = spec(json!({ "name": "bad", "events": {}, "schema": { "type": 7 } }));
        assert_eq!(
            refused(&must_apply(&mut s, register(bad))),
            Some(ErrorCode::InvalidInput)
        );
        let quiet = spec(json!({ "name": "quiet", "events": {} }));
        assert_eq!(must_apply(&mut s, register(quiet)), Response::Done);

        let trigger = |name: &str, source: &str| Command::CreateTrigger {
            now_ms: 2,
            spec: serde_json::from_value(
                json!({ "name": name, "function": "noop", "source": source }),
            )
            .unwrap(),
        };
        assert_eq!(
            refused(&must_apply(&mut s, trigger("t", "nope"))),
            Some(ErrorCode::NotFound)
        );
        assert_eq!(must_apply(&mut s, trigger("t", "songs")), Response::Done);
        let t = s.trigger("t").unwrap();
        assert_eq!(t.spec.kafka.as_ref().unwrap().topic, "songs");
        assert!(t.kafka.is_some(), "a Kafka trigger's cursor");
        let delete = |name: &str| Command::DeleteSource { name: name.into() };
        let in_use = must_apply(&mut s, delete("songs"));
        assert!(
            matches!(&in_use, Response::Rejected(e) if e.code == ErrorCode::Conflict && e.message.contains("trigger(s) t")),
            "{in_use:?}"
        );

        // Two letters; the same entry again (its fate was unknown) after the cursor moved.
        let entry = Command::Batch(vec![
            Command::DeadLetters {
                now_ms: 3,
                letters: vec![
                    letter("songs", "t", Some((0, 3))),
                    letter("songs", "t", Some((0, 4))),
                ],
            },
            Command::AdvanceKafka {
                name: "t".into(),
                partition: 0,
                next_offset: 5,
                records: 2,
            },
        ]);
        assert!(entry.is_idempotent());
        must_apply(&mut s, entry.clone());
        must_apply(&mut s, entry);
        let counts = s.source("songs").unwrap().counts;
        assert_eq!((counts.rejected, counts.dead_letter_pending), (2, 2));
        let seqs: Vec<u64> = s.pending_dead_letters().map(|p| p.seq).collect();
        assert_eq!(seqs, [0, 1]);
        // A source without a destination counts and keeps nothing.
        must_apply(
            &mut s,
            Command::DeadLetters {
                now_ms: 3,
                letters: vec![letter("quiet", "x", None)],
            },
        );
        assert_eq!(s.source("quiet").unwrap().counts.rejected, 1);
        assert_eq!(s.pending_dead_letters().count(), 2);
        let copy = State::decode(&s.snapshot_copy().encode()).unwrap();
        assert_eq!(copy.source("songs"), s.source("songs"));
        assert_eq!(copy.pending_dead_letters().count(), 2);

        must_apply(&mut s, Command::DeleteTrigger { name: "t".into() });
        assert_eq!(
            refused(&must_apply(&mut s, delete("songs"))),
            Some(ErrorCode::Conflict),
            "letters owed"
        );
        must_apply(
            &mut s,
            Command::DeadLettersDone {
                delivered: vec![0, 1, 7],
            },
        );
        must_apply(&mut s, Command::DeadLettersDone { delivered: vec![0] });
        let counts = s.source("songs").unwrap().counts;
        assert_eq!((counts.dead_lettered, counts.dead_letter_pending), (2, 0));
        assert_eq!(must_apply(&mut s, delete("songs")), Response::Done);
        assert_eq!(
            refused(&must_apply(&mut s, delete("songs"))),
            Some(ErrorCode::NotFound)
        );
        let orphan = Command::DeadLetters {
            now_ms: 4,
            letters: vec![letter("songs", "t", None)],
        };
        assert_eq!(
            refused(&must_apply(&mut s, orphan)),
            Some(ErrorCode::NotFound)
        );
    }

    /// A letter over the limit keeps the reason and where the record was, not its bytes.
    #[test]
    fn a_large_letter_keeps_where_it_was() {
        let mut big = letter("s", "t", Some((0, 3)));
        big.value_hex = Some("ab".repeat(DEAD_LETTER_BYTES_MAX));
        let kept = big.bounded();
        assert!(kept.bytes() <= DEAD_LETTER_BYTES_MAX);
        assert_eq!(kept.value_hex, None);
        assert_eq!(kept.record["offset"], 3);
        assert_eq!(kept.record["truncated"], true);
    }

    #[test]
    fn job_keys_name_their_trigger() {
        assert_eq!(source_trigger("kafka:t:songs:0:12"), Some("t"));
        assert_eq!(source_trigger("event:ingest:abc"), Some("ingest"));
        assert_eq!(source_trigger("trigger:t:12"), None);
        assert_eq!(source_trigger("hook:x:y"), None);
    }
}

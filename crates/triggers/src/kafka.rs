//! Kafka triggers as data: a record as a job's input shows it, which records a trigger has
//! not started jobs for yet (its cursor: per partition, the next offset), and how records are
//! grouped into the jobs of one log entry. Consuming and committing is IO, done by the
//! `events` crate.
//!
//! The cursor lives in the replicated log and moves in the same entry as the jobs of the
//! records it passes, so it, not the group's committed offset, says what was started: the
//! group's offset is committed after that entry and may lag behind it (a crash between the
//! two), and a consumer that resumes there is handed records the cursor has passed, which
//! [`KafkaCursor::is_new`] drops. The jobs' idempotency keys (topic, partition, first
//! offset) are the second guard.

use crate::{Code, Error, PartitionOwner};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Largest record value (and key) a trigger starts a job for; a larger one is rejected.
pub const RECORD_BYTES_MAX: usize = 64 * 1024;
/// Largest total of record bytes in one job's input, so that a batch stays well within a
/// job's input limit.
pub const BATCH_BYTES_MAX: usize = 192 * 1024;

/// One Kafka record as the trigger read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// Bytes as JSON: the JSON value they hold, else the text, else hex (`{"hex": "..."}`).
fn bytes_json(bytes: &[u8]) -> Value {
    if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
        return value;
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_string()),
        Err(_) => json!({ "hex": hex::encode(bytes) }),
    }
}

impl Record {
    /// `{"topic", "partition", "offset", "timestamp_ms", "key", "value"}`; key and value as
    /// the JSON they hold, or the text, or `{"hex": ...}` for other bytes.
    pub fn to_json(&self) -> Value {
        json!({
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "key": self.key.as_deref().map(bytes_json),
            "value": self.value.as_deref().map(bytes_json),
        })
    }

    /// Key and value bytes.
    pub fn len(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a record may start a job: its key and value within [`RECORD_BYTES_MAX`]
/// (`too_large`), and with a schema, its value JSON (`invalid_input`) that matches it
/// (`schema_mismatch`, naming up to `workflow::SCHEMA_ERRORS_MAX` mismatches and where).
pub fn judge(record: &Record, schema: Option<&jsonschema::Validator>) -> Result<(), Error> {
    for (what, bytes) in [("key", &record.key), ("value", &record.value)] {
        let len = bytes.as_ref().map_or(0, Vec::len);
        if len > RECORD_BYTES_MAX {
            return Err(Error::new(
                Code::TooLarge,
                format!("the record's {what} is {len} bytes; the limit is {RECORD_BYTES_MAX}"),
            ));
        }
    }
    let Some(schema) = schema else {
        return Ok(());
    };
    match record.value.as_deref() {
        Some(value) => judge_json("the record's value", value, schema),
        None => Err(Error::input("the record has no value")),
    }
}

/// Whether `bytes` (`what`: "the record's value", "object in/a.json") are JSON that matches
/// the schema: `invalid_input` if not JSON, `schema_mismatch` (naming up to
/// `workflow::SCHEMA_ERRORS_MAX` mismatches and where) if it does not match.
pub fn judge_json(what: &str, bytes: &[u8], schema: &jsonschema::Validator) -> Result<(), Error> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::input(format!("{what} is not JSON: {e}")))?;
    judge_value(what, &value, schema)
}

/// Whether a JSON value matches the schema (`schema_mismatch` if not).
pub(crate) fn judge_value(
    what: &str,
    value: &Value,
    schema: &jsonschema::Validator,
) -> Result<(), Error> {
    let Some(found) = workflow::schema_mismatches(schema, value) else {
        return Ok(());
    };
    let message = format!("{what} does not match the schema: {found}");
    Err(Error::new(Code::SchemaMismatch, message))
}

/// How far a Kafka trigger got: per partition of its topic, the next offset it has not
/// started a job for; and which node consumes each partition, at which epoch (see
/// [`crate::place_partitions`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaCursor {
    pub next: BTreeMap<i32, i64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub owners: BTreeMap<i32, PartitionOwner>,
}

impl KafkaCursor {
    /// The next offset of `partition` no job was started for.
    pub fn next_offset(&self, partition: i32) -> i64 {
        self.next.get(&partition).copied().unwrap_or(0)
    }

    /// Whether the record is past the cursor (not a redelivery of one already started).
    pub fn is_new(&self, partition: i32, offset: i64) -> bool {
        offset >= self.next_offset(partition)
    }

    /// Moves a partition's cursor forward to `next`; never back, so taking an entry twice
    /// changes nothing more.
    pub fn advance(&mut self, partition: i32, next: i64) {
        let at = self.next.entry(partition).or_insert(0);
        *at = (*at).max(next);
    }

    /// Gives `partition` to `owner` if its epoch is later than the partition's: an
    /// assignment taken twice, or proposed from an older view, changes nothing. True if
    /// taken.
    pub fn assign(&mut self, partition: i32, owner: PartitionOwner) -> bool {
        let later = self
            .owners
            .get(&partition)
            .is_none_or(|o| owner.epoch > o.epoch);
        if later {
            self.owners.insert(partition, owner);
        }
        later
    }

    /// Whether `node` holds `partition` at `epoch` (the fence of a consumer's entries).
    pub fn holds(&self, node: u64, partition: i32, epoch: u64) -> bool {
        self.owners.get(&partition) == Some(&PartitionOwner { node, epoch })
    }

    /// The partitions `node` consumes, each with the epoch it holds it at.
    pub fn owned_by(&self, node: u64) -> BTreeMap<i32, u64> {
        self.owners
            .iter()
            .filter(|(_, o)| o.node == node)
            .map(|(&p, o)| (p, o.epoch))
            .collect()
    }
}

/// Groups records into the jobs of one entry: consecutive records of one partition, at most
/// `batch_max` records and [`BATCH_BYTES_MAX`] bytes a job (a record is never split).
pub fn batches(records: Vec<Record>, batch_max: usize) -> Vec<Vec<Record>> {
    let mut out: Vec<Vec<Record>> = Vec::new();
    let mut bytes = 0;
    for record in records {
        let fits = out.last().is_some_and(|b| {
            b.len() < batch_max.max(1)
                && b[0].partition == record.partition
                && bytes + record.len() <= BATCH_BYTES_MAX
        });
        if fits {
            bytes += record.len();
            out.last_mut().expect("checked above").push(record);
        } else {
            bytes = record.len();
            out.push(vec![record]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn record(partition: i32, offset: i64, value: &[u8]) -> Record {
        Record {
            topic: "songs".into(),
            partition,
            offset,
            timestamp_ms: Some(1_700_000_000_000),
            key: None,
            value: Some(value.to_vec()),
        }
    }

    /// A record's size, JSON and schema, each refused with its own code and where.
    #[test]
    fn records_are_judged_by_size_then_schema() {
        let schema = serde_json::json!({
            "type": "object",
            "required": ["play"],
            "properties": { "play": { "type": "integer" } },
        });
        let validator = jsonschema::validator_for(&schema).unwrap();
        let judged = |value: &[u8], schema: Option<&jsonschema::Validator>| match judge(
            &record(0, 0, value),
            schema,
        ) {
            Ok(()) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        expect!["ok"].assert_eq(&judged(br#"{"play": 1}"#, Some(&validator)));
        expect!["ok"].assert_eq(&judged(b"not json", None));
        expect!["invalid_input: the record's value is not JSON: expected ident at line 1 column 2"]
            .assert_eq(&judged(b"not json", Some(&validator)));
        expect![[r#"schema_mismatch: the record's value does not match the schema: at /play: "one" is not of type "integer""#]]
            .assert_eq(&judged(br#"{"play": "one"}"#, Some(&validator)));
        expect![[r#"schema_mismatch: the record's value does not match the schema: at /: "play" is a required property"#]]
            .assert_eq(&judged(b"{}", Some(&validator)));
        let big = vec![b' '; RECORD_BYTES_MAX + 1];
        expect!["too_large: the record's value is 65537 bytes; the limit is 65536"]
            .assert_eq(&judged(&big, Some(&validator)));
    }

    #[test]
    fn records_show_as_json_text_or_hex() {
        let shown: Vec<String> = [&b"{\"song\":1}"[..], b"plain", &[0xff, 0x00]]
            .iter()
            .map(|v| record(0, 7, v).to_json()["value"].to_string())
            .collect();
        expect![[r#"{"song":1} | "plain" | {"hex":"ff00"}"#]].assert_eq(&shown.join(" | "));
    }

    #[test]
    fn batches_keep_to_one_partition_and_their_caps() {
        let records = vec![
            record(0, 1, b"1"),
            record(0, 2, b"1"),
            record(0, 3, b"1"),
            record(1, 1, b"1"),
            record(0, 4, b"1"),
        ];
        let shape = |batches: Vec<Vec<Record>>| {
            batches
                .iter()
                .map(|b| {
                    b.iter()
                        .map(|r| format!("{}:{}", r.partition, r.offset))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect::<Vec<_>>()
                .join(" | ")
        };
        expect!["0:1,0:2 | 0:3 | 1:1 | 0:4"].assert_eq(&shape(batches(records.clone(), 2)));
        expect!["0:1 | 0:2 | 0:3 | 1:1 | 0:4"].assert_eq(&shape(batches(records, 1)));
        let big = vec![0u8; BATCH_BYTES_MAX / 2 + 1];
        let records = vec![record(0, 1, &big), record(0, 2, &big)];
        expect!["0:1 | 0:2"].assert_eq(&shape(batches(records, 100)));
    }

    #[test]
    fn the_cursor_drops_redeliveries_and_never_moves_back() {
        let mut cursor = KafkaCursor::default();
        assert!(cursor.is_new(0, 0));
        cursor.advance(0, 10);
        cursor.advance(0, 5);
        assert!(!cursor.is_new(0, 9));
        assert!(cursor.is_new(0, 10));
        assert!(cursor.is_new(1, 0));
    }

    #[test]
    fn an_assignment_is_taken_only_at_a_later_epoch() {
        let mut cursor = KafkaCursor::default();
        let owner = |node, epoch| PartitionOwner { node, epoch };
        assert!(cursor.assign(0, owner(1, 1)));
        assert!(!cursor.assign(0, owner(2, 1)), "same epoch, other node");
        assert!(cursor.holds(1, 0, 1));
        assert!(cursor.assign(0, owner(2, 2)));
        assert!(!cursor.holds(1, 0, 1), "the old owner is fenced");
        assert!(
            !cursor.assign(0, owner(1, 1)),
            "an older view changes nothing"
        );
        assert!(cursor.assign(3, owner(1, 1)));
        assert_eq!(cursor.owned_by(1), BTreeMap::from([(3, 1)]));
        assert_eq!(cursor.owned_by(2), BTreeMap::from([(0, 2)]));
    }
}

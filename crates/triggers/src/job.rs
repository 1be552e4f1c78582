//! What a trigger's job looks like: its input (the trigger's input with the key `trigger`
//! added) and its idempotency key, which makes a tick or an event start one job however often
//! it is fired or delivered.

use crate::bucket::ObjectVersion;
use crate::event::Event;
use crate::kafka::Record;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn with_trigger(input: &Value, trigger: Value) -> Value {
    let mut map = input.as_object().cloned().unwrap_or_default();
    map.insert("trigger".into(), trigger);
    Value::Object(map)
}

/// The input of the job a cron tick starts: `{..input, "trigger": {"name", "tick_ms"}}`.
pub fn cron_input(input: &Value, name: &str, tick_ms: u64) -> Value {
    with_trigger(input, json!({ "name": name, "tick_ms": tick_ms }))
}

/// `trigger:{name}:{tick_ms}`: one job per tick of a trigger, whichever leader fires it.
pub fn cron_idempotency_key(name: &str, tick_ms: u64) -> String {
    format!("trigger:{name}:{tick_ms}")
}

/// The input of the job an event starts: `{..input, "trigger": {"name", "event"}}`, the event
/// in the JSON format (attributes and data).
pub fn event_input(input: &Value, name: &str, event: &Event) -> Value {
    with_trigger(input, json!({ "name": name, "event": event.to_json() }))
}

/// `event:{name}:{hash}`, the hash (SHA-256, hex) over the event's `source` and `id`, which
/// identify an event: a redelivered event starts no second job of a trigger. Hashed so the
/// key stays within the idempotency key's length limit whatever the source and id are.
pub fn event_idempotency_key(name: &str, event: &Event) -> String {
    let mut hash = Sha256::new();
    // Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
    hash.update((event.source().len() as u64).to_be_bytes());
    hash.update(event.source().as_bytes());
    hash.update(event.id().as_bytes());
    format!("event:{name}:{}", hex::encode(hash.finalize()))
}

/// The input of the job an object version starts: `{..input, "trigger": {"name", "object":
/// {"key", "size", "modified_ms", "version"}}}`; the object is also the job's input file.
pub fn bucket_input(input: &Value, name: &str, object: &ObjectVersion) -> Value {
    with_trigger(input, json!({ "name": name, "object": object }))
}

/// `bucket:{name}:{id}`, the id a hash of the object's key and version (see
/// [`ObjectVersion::id`]): one job per version of an object, whichever leader lists it.
pub fn bucket_idempotency_key(name: &str, object: &ObjectVersion) -> String {
    format!("bucket:{name}:{}", object.id())
}

/// The input of the job a batch of Kafka records starts: `{..input, "trigger": {"name",
/// "records": [...]}}`, each record as [`Record::to_json`] shows it.
pub fn kafka_input(input: &Value, name: &str, records: &[Record]) -> Value {
    let records: Vec<Value> = records.iter().map(Record::to_json).collect();
    with_trigger(input, json!({ "name": name, "records": records }))
}

/// `kafka:{name}:{topic}:{partition}:{offset}`, the offset the batch's first: a record
/// delivered again starts no second job.
pub fn kafka_idempotency_key(name: &str, first: &Record) -> String {
    format!(
        "kafka:{name}:{}:{}:{}",
        first.topic, first.partition, first.offset
    )
}

/// The trigger a job's (or run's) idempotency key names, if a trigger made the key: the name
/// between the kind (`trigger`, `event`, `bucket`, `kafka`) and the next `:` (a trigger's name
/// has no `:`).
pub fn trigger_of_key(key: &str) -> Option<&str> {
    let (kind, rest) = key.split_once(':')?;
    if !matches!(kind, "trigger" | "event" | "bucket" | "kafka") {
        return None;
    }
    let (name, _) = rest.split_once(':')?;
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn inputs_carry_the_tick_or_the_event() {
        let input = json!({ "bucket": "songs" });
        expect![[r#"{"bucket":"songs","trigger":{"name":"nightly","tick_ms":1700000000000}}"#]]
            .assert_eq(&cron_input(&input, "nightly", 1_700_000_000_000).to_string());
        let event = crate::parse_structured(
            br#"{"specversion":"1.0","id":"e1","source":"/s","type":"t","data":{"song":1}}"#,
        )
        .unwrap();
        expect![[r#"{"bucket":"songs","trigger":{"event":{"data":{"song":1},"id":"e1","source":"/s","specversion":"1.0","type":"t"},"name":"on-upload"}}"#]]
            .assert_eq(&event_input(&input, "on-upload", &event).to_string());
        expect!["trigger:nightly:1700000000000"]
            .assert_eq(&cron_idempotency_key("nightly", 1_700_000_000_000));
    }

    #[test]
    fn event_keys_tell_source_and_id_apart() {
        let event = |source: &str, id: &str| {
            crate::parse_structured(
                format!(r#"{{"specversion":"1.0","id":"{id}","source":"{source}","type":"t"}}"#)
                    .as_bytes(),
            )
            .unwrap()
        };
        let a = event_idempotency_key("t", &event("ab", "c"));
        assert_ne!(a, event_idempotency_key("t", &event("a", "bc")));
        assert_ne!(a, event_idempotency_key("u", &event("ab", "c")));
        assert_eq!(a, event_idempotency_key("t", &event("ab", "c")));
        assert!(a.len() <= 6 + crate::TRIGGER_NAME_LEN_MAX + 1 + 64);
    }

    #[test]
    fn a_trigger_key_names_its_trigger() {
        let names: Vec<Option<&str>> = [
            "trigger:nightly:1700000000000",
            "event:chain.b:ab12",
            "bucket:in_flac:00ff",
            "kafka:plays:songs:0:41",
            "hook:x:y",
            "event::ab",
            "event:nocolon",
        ]
        .into_iter()
        .map(super::trigger_of_key)
        .collect();
        assert_eq!(
            names,
            [
                Some("nightly"),
                Some("chain.b"),
                Some("in_flac"),
                Some("plays"),
                None,
                None,
                None
            ]
        );
    }
}

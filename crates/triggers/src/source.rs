//! The source catalogue as data: a named Kafka topic, bucket prefix or subscription to the
//! CloudEvents ingest, with an owner, a description, a JSON Schema its records must match
//! and where the records that start no job go (a dead-letter topic, or objects under a
//! prefix of the cluster's store). Triggers name a source instead of carrying their own
//! connection; creating one fills in what it reads from the source ([`SourceSpec::reader`]).

use crate::spec::{check_brokers, check_schema, check_topic, compile_schema};
use crate::{BucketSource, Error, EventSource, KafkaSource, TriggerSpec, TRIGGER_NAME_LEN_MAX};
use serde::{Deserialize, Serialize};

/// Longest owner of a source (a team, a person, an address).
pub const SOURCE_OWNER_LEN_MAX: usize = 128;
/// Longest description of a source.
pub const SOURCE_DESCRIPTION_LEN_MAX: usize = 1_024;
/// Longest dead-letter object prefix.
pub const DEAD_LETTER_PREFIX_LEN_MAX: usize = 256;

/// A source of the catalogue: exactly one of `kafka`, `bucket` and `events`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaTopic>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<BucketSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<EventSource>,
    /// A JSON Schema every record must match: a Kafka record's value, a CloudEvent's data,
    /// a JSON object's content. A record that does not starts no job and is dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetter>,
}

/// A topic on Kafka brokers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTopic {
    /// Bootstrap servers, `host:port` separated by commas.
    pub brokers: String,
    pub topic: String,
}

/// Where a source's refused records go, with the reason: a Kafka `topic` (on the source's
/// brokers unless `brokers` names others; a bucket or ingest source must name them) or
/// objects under `prefix` in the cluster's object store (exactly one of `topic` and
/// `prefix`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brokers: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A dead-letter destination, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination<'a> {
    Topic { brokers: &'a str, topic: &'a str },
    Objects { prefix: &'a str },
}

impl DeadLetter {
    /// `bucket:PREFIX` (objects under a prefix of the cluster's store) or a topic name, as
    /// the CLI's `--dead-letter` takes it.
    pub fn parse(text: &str) -> DeadLetter {
        match text.strip_prefix("bucket:") {
            Some(prefix) => DeadLetter {
                topic: None,
                brokers: None,
                prefix: Some(prefix.to_string()),
            },
            None => DeadLetter {
                topic: Some(text.to_string()),
                brokers: None,
                prefix: None,
            },
        }
    }
}

impl SourceSpec {
    /// Where its refused records go, if anywhere (validated specs resolve).
    pub fn destination(&self) -> Option<Destination<'_>> {
        let d = self.dead_letter.as_ref()?;
        if let Some(prefix) = &d.prefix {
            return Some(Destination::Objects { prefix });
        }
        let topic = d.topic.as_deref()?;
        let brokers = d
            .brokers
            .as_deref()
            .or(self.kafka.as_ref().map(|k| k.brokers.as_str()))?;
        Some(Destination::Topic { brokers, topic })
    }

    /// The compiled schema, if it has one (validated specs' schemas compile).
    pub fn validator(&self) -> Result<Option<jsonschema::Validator>, Error> {
        self.schema.as_ref().map(compile_schema).transpose()
    }

    /// What a trigger that names this source reads: `trigger` with the source's kind
    /// filled in. A Kafka trigger reads in its own group (`chorus-{trigger}`), one record
    /// per job; the source's schema judges its records, and what it refuses goes to the
    /// source's dead-letter destination (not the trigger's, which it has none of).
    pub fn reader(&self, trigger: &TriggerSpec) -> Result<TriggerSpec, Error> {
        if trigger.cron.is_some()
            || trigger.events.is_some()
            || trigger.bucket.is_some()
            || trigger.kafka.is_some()
        {
            return Err(Error::input(format!(
                "trigger {} names source {}: it takes its connection from it, so it has none of \"cron\", \"events\", \"bucket\" and \"kafka\"",
                trigger.name, self.name
            )));
        }
        let mut spec = trigger.clone();
        spec.source = Some(self.name.clone());
        spec.events = self.events.clone();
        spec.bucket = self.bucket.clone();
        spec.kafka = self.kafka.as_ref().map(|k| KafkaSource {
            brokers: k.brokers.clone(),
            topic: k.topic.clone(),
            group: None,
            batch: 1,
            schema: self.schema.clone(),
            dead_letter: None,
        });
        Ok(spec)
    }

    /// Every check that does not need the cluster's state.
    pub fn validate(&self) -> Result<(), Error> {
        check_name(&self.name, "source")?;
        if self.owner.len() > SOURCE_OWNER_LEN_MAX {
            return Err(Error::input(format!(
                "an owner is at most {SOURCE_OWNER_LEN_MAX} bytes"
            )));
        }
        if self.description.len() > SOURCE_DESCRIPTION_LEN_MAX {
            return Err(Error::input(format!(
                "a description is at most {SOURCE_DESCRIPTION_LEN_MAX} bytes"
            )));
        }
        match (&self.kafka, &self.bucket, &self.events) {
            (Some(kafka), None, None) => {
                check_brokers(&kafka.brokers)?;
                check_topic(&kafka.topic)?;
            }
            (None, Some(bucket), None) => bucket.validate()?,
            (None, None, Some(events)) => events.validate()?,
            _ => {
                return Err(Error::input(
                    "a source is exactly one of \"kafka\" (a topic), \"bucket\" (objects under a prefix) and \"events\" (the CloudEvents ingest)",
                ))
            }
        }
        if let Some(schema) = &self.schema {
            check_schema(schema)?;
        }
        if let Some(d) = &self.dead_letter {
            self.check_dead_letter(d)?;
        }
        Ok(())
    }

    fn check_dead_letter(&self, d: &DeadLetter) -> Result<(), Error> {
        match (&d.topic, &d.prefix) {
            (Some(topic), None) => {
                check_topic(topic)?;
                if let Some(brokers) = &d.brokers {
                    check_brokers(brokers)?;
                }
                let Some(Destination::Topic { brokers, .. }) = self.destination() else {
                    return Err(Error::input(
                        "a dead-letter topic of a bucket or ingest source needs its \"brokers\"",
                    ));
                };
                let reads = self.kafka.as_ref().is_some_and(|k| k.topic == *topic && k.brokers == brokers);
                if reads {
                    return Err(Error::input(
                        "the dead-letter topic must not be the topic the source is",
                    ));
                }
                Ok(())
            }
            (None, Some(prefix)) => {
                let ok = !prefix.is_empty()
                    && prefix.len() <= DEAD_LETTER_PREFIX_LEN_MAX
                    && prefix.ends_with('/')
                    && !prefix.starts_with('/')
                    && prefix.split('/').filter(|s| !s.is_empty()).all(|s| !s.starts_with('.'))
                    && !prefix.contains("//")
                    && !prefix.chars().any(|c| c.is_control() || c == '\\' || c == '#');
                if !ok {
                    return Err(Error::input(format!(
                        "a dead-letter prefix is a folder of the store: 1 to {DEAD_LETTER_PREFIX_LEN_MAX} bytes ending with '/', not starting with '/', no segment starting with '.'"
                    )));
                }
                if d.brokers.is_some() {
                    return Err(Error::input("\"brokers\" goes with a dead-letter \"topic\""));
                }
                let watched = self.bucket.as_ref().is_some_and(|b| prefix.starts_with(&b.prefix));
                if watched {
                    return Err(Error::input(
                        "the dead-letter prefix must not be under the prefix the source watches",
                    ));
                }
                Ok(())
            }
            _ => Err(Error::input(
                "a dead letter is exactly one of \"topic\" (a Kafka topic) and \"prefix\" (objects in the store, `bucket:PREFIX` on the command line)",
            )),
        }
    }
}

/// Whether a CloudEvent's data matches a source's schema: it must have JSON data
/// (`invalid_input`) that matches (`schema_mismatch`).
pub fn judge_event(event: &crate::Event, schema: &jsonschema::Validator) -> Result<(), Error> {
    match event.data_json() {
        Some(data) => crate::kafka::judge_value("the event's data", data, schema),
        None => Err(Error::input(
            "the event has no JSON data for the source's schema to judge",
        )),
    }
}

/// A trigger's or a source's name: 1 to [`TRIGGER_NAME_LEN_MAX`] characters of a-z, 0-9,
/// '-', '_' and '.', not starting with '.' (it is part of job keys and object keys).
pub(crate) fn check_name(name: &str, what: &str) -> Result<(), Error> {
    let name_ok = !name.is_empty()
        && name.len() <= TRIGGER_NAME_LEN_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && !name.starts_with('.');
    if !name_ok {
        return Err(Error::input(format!(
            "{what} name {name:?} must be 1 to {TRIGGER_NAME_LEN_MAX} characters of a-z, 0-9, '-', '_' and '.', not starting with '.'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};
    use serde_json::json;

    fn check(spec: serde_json::Value, expected: Expect) {
        let answer = match serde_json::from_value::<SourceSpec>(spec) {
            Err(e) => format!("does not parse: {e}"),
            Ok(spec) => match spec.validate() {
                Ok(()) => "ok".to_string(),
                Err(e) => e.to_string(),
            },
        };
        expected.assert_eq(&answer);
    }

    #[test]
    fn sources_are_checked_when_registered() {
        let kafka = json!({ "brokers": "h:9092", "topic": "songs" });
        check(
            json!({ "name": "songs", "owner": "ingest-team", "kafka": kafka,
                    "schema": { "type": "object" }, "dead_letter": { "topic": "songs-dlq" } }),
            expect!["ok"],
        );
        check(
            json!({ "name": "drops", "bucket": { "prefix": "in/", "suffixes": [".flac"] },
                    "dead_letter": { "prefix": "dead/" } }),
            expect!["ok"],
        );
        check(
            json!({ "name": "drops", "bucket": { "prefix": "in/" }, "dead_letter": { "prefix": "in/dead/" } }),
            expect!["invalid_input: the dead-letter prefix must not be under the prefix the source watches"],
        );
        check(
            json!({ "name": "app", "events": {}, "dead_letter": { "topic": "x" } }),
            expect![[
                r#"invalid_input: a dead-letter topic of a bucket or ingest source needs its "brokers""#
            ]],
        );
        check(
            json!({ "name": "app", "events": {}, "dead_letter": { "topic": "x", "brokers": "h:1" } }),
            expect!["ok"],
        );
        check(
            json!({ "name": "songs", "kafka": kafka, "dead_letter": { "topic": "songs" } }),
            expect!["invalid_input: the dead-letter topic must not be the topic the source is"],
        );
        check(
            json!({ "name": "songs", "kafka": kafka, "schema": { "type": "nonsense" } }),
            expect![[
                r#"invalid_input: the record schema is not a usable JSON Schema: "nonsense" is not valid under any of the schemas listed in the 'anyOf' keyword"#
            ]],
        );
        check(
            json!({ "name": "songs", "kafka": kafka, "schema": { "description": "x".repeat(70_000) } }),
            expect!["too_large: the schema is 70018 bytes; the limit is 65536"],
        );
        check(
            json!({ "name": "songs", "kafka": kafka, "events": {} }),
            expect![[
                r#"invalid_input: a source is exactly one of "kafka" (a topic), "bucket" (objects under a prefix) and "events" (the CloudEvents ingest)"#
            ]],
        );
        check(
            json!({ "name": "Songs!", "kafka": kafka }),
            expect![[
                r#"invalid_input: source name "Songs!" must be 1 to 64 characters of a-z, 0-9, '-', '_' and '.', not starting with '.'"#
            ]],
        );
        check(
            json!({ "name": "d", "events": {}, "dead_letter": { "prefix": "../x/" } }),
            expect!["invalid_input: a dead-letter prefix is a folder of the store: 1 to 256 bytes ending with '/', not starting with '/', no segment starting with '.'"],
        );
        check(
            json!({ "name": "d", "events": {}, "dead_letter": {} }),
            expect![[
                r#"invalid_input: a dead letter is exactly one of "topic" (a Kafka topic) and "prefix" (objects in the store, `bucket:PREFIX` on the command line)"#
            ]],
        );
    }

    /// A trigger that names a source reads what the source is, with its schema; one that
    /// also brings its own connection is refused.
    #[test]
    fn a_trigger_reads_its_source() {
        let source: SourceSpec = serde_json::from_value(json!({
            "name": "songs", "kafka": { "brokers": "h:9092", "topic": "songs" },
            "schema": { "type": "object" }, "dead_letter": { "prefix": "dead/" },
        }))
        .unwrap();
        let trigger: TriggerSpec = serde_json::from_value(json!({
            "name": "t", "function": "f", "source": "songs",
        }))
        .unwrap();
        assert_eq!(trigger.validate(), Ok(()));
        let read = source.reader(&trigger).unwrap();
        assert_eq!(read.validate(), Ok(()));
        let kafka = read.kafka.unwrap();
        assert_eq!((kafka.topic.as_str(), kafka.batch), ("songs", 1));
        assert_eq!(kafka.schema, source.schema);
        assert_eq!(kafka.dead_letter, None);
        assert_eq!(
            source.destination(),
            Some(Destination::Objects { prefix: "dead/" })
        );
        let mut both = trigger.clone();
        both.events = Some(EventSource::default());
        expect![[r#"invalid_input: trigger t names source songs: it takes its connection from it, so it has none of "cron", "events", "bucket" and "kafka""#]]
            .assert_eq(&source.reader(&both).unwrap_err().to_string());
        assert_eq!(
            DeadLetter::parse("bucket:dead/").prefix.as_deref(),
            Some("dead/")
        );
        assert_eq!(DeadLetter::parse("dlq").topic.as_deref(), Some("dlq"));
    }
}

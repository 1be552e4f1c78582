//! The trigger spec, as a client sends it and the replicated state keeps it, and its
//! validation: everything a spec shows wrong is refused when it is created, so a trigger never
//! fails later for a reason its spec already showed.

use crate::cron::{Schedule, CATCH_UP_MAX};
use crate::filter::Filter;
use crate::Error;
use serde::{Deserialize, Serialize};

/// Longest trigger name.
pub const TRIGGER_NAME_LEN_MAX: usize = 64;
/// Longest cron expression.
pub const CRON_LEN_MAX: usize = 256;
/// Ticks caught up after an outage when `catch_up_max` is not given.
pub const CATCH_UP_DEFAULT: u32 = 10;
/// Largest trigger input, as serialized JSON: with an event of at most
/// [`crate::EVENT_BYTES_MAX`] it stays well within a job's input limit.
pub const TRIGGER_INPUT_BYTES_MAX: usize = 64 * 1024;
/// Longest bucket prefix (an object key is at most 1,024 bytes).
pub const BUCKET_PREFIX_LEN_MAX: usize = 512;
/// Longest suffix of a bucket trigger.
const SUFFIX_LEN_MAX: usize = 64;
/// Longest list of Kafka bootstrap servers.
const BROKERS_LEN_MAX: usize = 1_024;
/// Longest topic or consumer group name (Kafka allows 249; a job key names the topic).
pub const TOPIC_LEN_MAX: usize = 128;
/// Records one job of a Kafka trigger takes at most.
pub const KAFKA_BATCH_MAX: u32 = 100;
/// Largest record schema, as serialized JSON.
pub const RECORD_SCHEMA_BYTES_MAX: usize = 64 * 1024;
/// Longest time zone name (the longest in the tz database is 32 bytes).
const TIMEZONE_LEN_MAX: usize = 64;

/// What starts jobs of `function` (or runs of `workflow`: exactly one of the two) by
/// itself: a cron schedule, a CloudEvents subscription, new objects in the object store or
/// records of a Kafka topic (exactly one of `cron`, `events`, `bucket` and `kafka`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// The input of every job or run it starts (a JSON object), with the key `trigger`
    /// added: see [`crate::cron_input`] and [`crate::event_input`].
    #[serde(default = "empty_object")]
    pub input: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<CronSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<EventSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<BucketSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSource>,
    /// A source of the catalogue (see [`crate::SourceSpec`]): the trigger reads it, with its
    /// connection, schema and dead-letter destination. A client names it and gives none of
    /// `events`, `bucket` and `kafka`; creating the trigger fills in the one the source is
    /// ([`crate::SourceSpec::reader`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Where the completion of each job (or run) it starts goes, as a CloudEvent (see
    /// [`crate::Sink`]): a Knative trigger's reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<crate::Sink>,
}

/// What a trigger starts: jobs of a function or runs of a workflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Function(&'a str),
    Workflow(&'a str),
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// A cron schedule: five fields (minute to day of week) or six (seconds first), in a time
/// zone of the tz database.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CronSource {
    pub schedule: String,
    #[serde(default = "utc")]
    pub timezone: String,
    /// What to do with ticks that fell due while no leader could fire them.
    #[serde(default)]
    pub missed: Missed,
    /// With `catch_up`: the latest ticks fired at most ([`CATCH_UP_DEFAULT`] if not given,
    /// at most [`CATCH_UP_MAX`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up_max: Option<u32>,
}

fn utc() -> String {
    "UTC".to_string()
}

/// The policy for ticks that fell due while the cluster could not fire them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Fire only the latest due tick.
    #[default]
    Skip,
    /// Fire the latest `catch_up_max` due ticks, oldest first.
    CatchUp,
}

/// A subscription to the events posted to `/v1/events/ingest`: an event matches when every
/// filter does (no filter: every event).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSource {
    #[serde(default)]
    pub filters: Vec<Filter>,
}

impl EventSource {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        for (i, filter) in self.filters.iter().enumerate() {
            filter
                .validate()
                .map_err(|e| Error::input(format!("filters[{i}]: {}", e.message)))?;
        }
        Ok(())
    }
}

/// New or changed objects under a prefix of the cluster's object store (see
/// [`crate::BucketCursor`]): each version starts one job with the object as its input file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketSource {
    /// Keys that start with it (a folder ends with `/`).
    pub prefix: String,
    /// Keys that end with one of them, e.g. `.flac` (none: every key under the prefix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suffixes: Vec<String>,
}

impl BucketSource {
    /// Whether an object of this key starts a job.
    pub fn matches(&self, key: &str) -> bool {
        key.starts_with(&self.prefix)
            && (self.suffixes.is_empty() || self.suffixes.iter().any(|s| key.ends_with(s)))
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.prefix.len() > BUCKET_PREFIX_LEN_MAX {
            return Err(Error::input(format!(
                "a bucket prefix is at most {BUCKET_PREFIX_LEN_MAX} bytes"
            )));
        }
        if self.prefix.starts_with('/') || self.prefix.starts_with('.') {
            return Err(Error::input(
                "a bucket prefix is relative to the store: it does not start with '/' or '.'",
            ));
        }
        if self.suffixes.len() > crate::BUCKET_SUFFIXES_MAX {
            return Err(Error::input(format!(
                "at most {} suffixes",
                crate::BUCKET_SUFFIXES_MAX
            )));
        }
        if self
            .suffixes
            .iter()
            .any(|s| s.is_empty() || s.len() > SUFFIX_LEN_MAX)
        {
            return Err(Error::input(format!(
                "a suffix is 1 to {SUFFIX_LEN_MAX} bytes"
            )));
        }
        Ok(())
    }
}

/// Records of a Kafka topic, read in a consumer group: each record (or each `batch` of
/// records of one partition) starts one job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSource {
    /// Bootstrap servers, `host:port` separated by commas.
    pub brokers: String,
    pub topic: String,
    /// The consumer group (`chorus-{trigger}` if not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Records per job, 1 to [`KAFKA_BATCH_MAX`].
    #[serde(default = "one")]
    pub batch: u32,
    /// A JSON Schema every record's value must match (the value must then be JSON); a record
    /// that does not starts no job (see [`crate::judge`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// A topic on the same brokers that takes the records that start no job (over the size
    /// limit, or not matching `schema`), each with the reason in its headers. Without it such
    /// records are only counted and logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
}

fn one() -> u32 {
    1
}

/// A record schema within [`RECORD_SCHEMA_BYTES_MAX`] that compiles.
pub(crate) fn check_schema(schema: &serde_json::Value) -> Result<(), Error> {
    let len = serde_json::to_vec(schema).map_or(usize::MAX, |v| v.len());
    if len > RECORD_SCHEMA_BYTES_MAX {
        return Err(Error::new(
            crate::Code::TooLarge,
            format!("the schema is {len} bytes; the limit is {RECORD_SCHEMA_BYTES_MAX}"),
        ));
    }
    compile_schema(schema).map(|_| ())
}

/// A record schema, compiled (without the HTTP and file resolvers: no IO).
pub(crate) fn compile_schema(schema: &serde_json::Value) -> Result<jsonschema::Validator, Error> {
    jsonschema::validator_for(schema).map_err(|e| {
        Error::input(format!(
            "the record schema is not a usable JSON Schema: {e}"
        ))
    })
}

/// Bootstrap servers: `host:port`, separated by commas.
pub(crate) fn check_brokers(brokers: &str) -> Result<(), Error> {
    let brokers_ok = !brokers.is_empty()
        && brokers.len() <= BROKERS_LEN_MAX
        && brokers.split(',').all(|b| {
            b.rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        });
    if !brokers_ok {
        return Err(Error::input(format!(
            "brokers {brokers:?} must be host:port, separated by commas (at most {BROKERS_LEN_MAX} bytes)"
        )));
    }
    Ok(())
}

/// Kafka's own rule for a topic name, with a shorter limit so the job key stays within bounds.
pub(crate) fn check_topic(topic: &str) -> Result<(), Error> {
    let topic_ok = !topic.is_empty()
        && topic.len() <= TOPIC_LEN_MAX
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !topic_ok {
        return Err(Error::input(format!(
            "topic {topic:?} must be 1 to {TOPIC_LEN_MAX} characters of a-z, A-Z, 0-9, '.', '_' and '-'"
        )));
    }
    Ok(())
}

impl KafkaSource {
    /// The compiled record schema, if the source has one (validated sources' schemas
    /// compile). Compile it once per batch of records, not per record.
    pub fn validator(&self) -> Result<Option<jsonschema::Validator>, Error> {
        self.schema.as_ref().map(compile_schema).transpose()
    }

    /// The consumer group the trigger reads in.
    pub fn group(&self, trigger: &str) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| format!("chorus-{trigger}"))
    }

    fn validate(&self) -> Result<(), Error> {
        check_brokers(&self.brokers)?;
        check_topic(&self.topic)?;
        if let Some(dead_letter) = &self.dead_letter {
            check_topic(dead_letter)?;
            if *dead_letter == self.topic {
                return Err(Error::input(
                    "the dead-letter topic must not be the topic the trigger reads",
                ));
            }
        }
        if let Some(schema) = &self.schema {
            check_schema(schema)?;
        }
        if let Some(group) = &self.group {
            if group.is_empty() || group.len() > TOPIC_LEN_MAX {
                return Err(Error::input(format!(
                    "a consumer group is 1 to {TOPIC_LEN_MAX} bytes"
                )));
            }
        }
        if self.batch == 0 || self.batch > KAFKA_BATCH_MAX {
            return Err(Error::input(format!("batch is 1 to {KAFKA_BATCH_MAX}")));
        }
        Ok(())
    }
}

impl CronSource {
    /// Ticks fired at most per pass: 1 when skipping, the cap when catching up.
    pub fn ticks_max(&self) -> u32 {
        match self.missed {
            Missed::Skip => 1,
            Missed::CatchUp => self.catch_up_max.unwrap_or(CATCH_UP_DEFAULT),
        }
    }

    /// The parsed schedule; validated specs always have one.
    pub fn schedule(&self) -> Result<Schedule, Error> {
        Schedule::parse(&self.schedule, &self.timezone)
    }
}

impl TriggerSpec {
    /// What it starts; validated specs always name exactly one function or workflow.
    pub fn target(&self) -> Result<Target<'_>, Error> {
        match (self.function.as_deref(), self.workflow.as_deref()) {
            (Some(f), None) if !f.is_empty() => Ok(Target::Function(f)),
            (None, Some(w)) if !w.is_empty() => Ok(Target::Workflow(w)),
            _ => Err(Error::input(
                "a trigger starts jobs of a \"function\" or runs of a \"workflow\": name exactly one",
            )),
        }
    }

    /// Every check that does not need the cluster's state (the function's existence is
    /// checked where the state is).
    pub fn validate(&self) -> Result<(), Error> {
        crate::source::check_name(&self.name, "trigger")?;
        self.target()?;
        match &self.input {
            serde_json::Value::Object(map) if map.contains_key("trigger") => {
                return Err(Error::input(
                    "input must not have the key \"trigger\": the trigger adds it to every job's input",
                ))
            }
            serde_json::Value::Object(_) => {
                let len = serde_json::to_vec(&self.input).map_or(usize::MAX, |v| v.len());
                if len > TRIGGER_INPUT_BYTES_MAX {
                    return Err(Error::new(
                        crate::Code::TooLarge,
                        format!("input is {len} bytes; the limit is {TRIGGER_INPUT_BYTES_MAX}"),
                    ));
                }
            }
            _ => return Err(Error::input("input must be a JSON object")),
        }
        let kinds = (&self.cron, &self.events, &self.bucket, &self.kafka);
        if let Some(source) = &self.source {
            crate::source::check_name(source, "source")?;
            if matches!(kinds, (None, None, None, None)) {
                // Named, not yet filled in from the catalogue.
                return Ok(());
            }
            if self.cron.is_some() {
                return Err(Error::input(
                    "a cron trigger reads no source: leave out \"source\"",
                ));
            }
        }
        match kinds {
            (Some(cron), None, None, None) => cron.validate(),
            (None, Some(events), None, None) => events.validate(),
            (None, None, Some(bucket), None) => bucket.validate(),
            (None, None, None, Some(kafka)) => kafka.validate(),
            _ => Err(Error::input(
                "a trigger has exactly one of \"cron\" (a schedule), \"events\" (a subscription), \"bucket\" (objects under a prefix) and \"kafka\" (records of a topic)",
            )),
        }
    }
}

impl CronSource {
    fn validate(&self) -> Result<(), Error> {
        if self.schedule.len() > CRON_LEN_MAX {
            return Err(Error::input(format!(
                "a cron schedule is at most {CRON_LEN_MAX} bytes"
            )));
        }
        if self.timezone.len() > TIMEZONE_LEN_MAX {
            return Err(Error::input(format!(
                "a time zone name is at most {TIMEZONE_LEN_MAX} bytes"
            )));
        }
        self.schedule()?;
        match (self.missed, self.catch_up_max) {
            (Missed::Skip, Some(_)) => {
                Err(Error::input("catch_up_max goes with missed = \"catch_up\""))
            }
            (Missed::CatchUp, Some(n)) if n == 0 || n > CATCH_UP_MAX => {
                Err(Error::input(format!("catch_up_max is 1 to {CATCH_UP_MAX}")))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    fn check(spec: serde_json::Value, expected: Expect) {
        let answer = match serde_json::from_value::<TriggerSpec>(spec) {
            Err(e) => format!("does not parse: {e}"),
            Ok(spec) => match spec.validate() {
                Ok(()) => "ok".to_string(),
                Err(e) => e.to_string(),
            },
        };
        expected.assert_eq(&answer);
    }

    #[test]
    fn specs_are_checked_when_created() {
        use serde_json::json;
        let cron = |c: serde_json::Value| json!({ "name": "t", "function": "f", "cron": c });
        check(
            cron(json!({ "schedule": "*/5 * * * *", "timezone": "Europe/Berlin" })),
            expect!["ok"],
        );
        check(
            cron(json!({ "schedule": "* * * * * *", "missed": "catch_up", "catch_up_max": 5 })),
            expect!["ok"],
        );
        check(
            cron(json!({ "schedule": "61 * * * *" })),
            expect![[
                r#"invalid_input: cron schedule "61 * * * *" does not parse: Component error: Number out of bounds."#
            ]],
        );
        check(
            cron(json!({ "schedule": "* * * * *", "timezone": "Mars/Olympus" })),
            expect!["invalid_input: \"Mars/Olympus\" is not a time zone of the tz database (e.g. UTC, Europe/Berlin)"],
        );
        check(
            cron(json!({ "schedule": "0 0 30 2 *" })),
            expect!["invalid_input: cron schedule \"0 0 30 2 *\" never falls due"],
        );
        check(
            cron(json!({ "schedule": "* * * * *", "catch_up_max": 5 })),
            expect![[r#"invalid_input: catch_up_max goes with missed = "catch_up""#]],
        );
        check(
            cron(json!({ "schedule": "* * * * *", "missed": "catch_up", "catch_up_max": 0 })),
            expect!["invalid_input: catch_up_max is 1 to 1000"],
        );
        check(
            json!({ "name": "t", "function": "f" }),
            expect![[
                r#"invalid_input: a trigger has exactly one of "cron" (a schedule), "events" (a subscription), "bucket" (objects under a prefix) and "kafka" (records of a topic)"#
            ]],
        );
        check(
            json!({ "name": "t", "workflow": "w", "events": {} }),
            expect!["ok"],
        );
        check(
            json!({ "name": "t", "function": "f", "workflow": "w", "events": {} }),
            expect![[
                r#"invalid_input: a trigger starts jobs of a "function" or runs of a "workflow": name exactly one"#
            ]],
        );
        check(
            json!({ "name": "t", "events": {} }),
            expect![[
                r#"invalid_input: a trigger starts jobs of a "function" or runs of a "workflow": name exactly one"#
            ]],
        );
        check(
            json!({ "name": "t", "function": "f", "bucket": { "prefix": "in/", "suffixes": [".flac"] } }),
            expect!["ok"],
        );
        check(
            json!({ "name": "t", "function": "f", "bucket": { "prefix": "/abs" } }),
            expect!["invalid_input: a bucket prefix is relative to the store: it does not start with '/' or '.'"],
        );
        check(
            json!({ "name": "t", "function": "f", "bucket": { "prefix": "", "suffixes": [""] } }),
            expect!["invalid_input: a suffix is 1 to 64 bytes"],
        );
        check(
            json!({ "name": "t", "function": "f", "kafka": { "brokers": "127.0.0.1:9092", "topic": "songs", "batch": 10 } }),
            expect!["ok"],
        );
        check(
            json!({ "name": "t", "function": "f", "kafka": { "brokers": "nowhere", "topic": "songs" } }),
            expect![[
                r#"invalid_input: brokers "nowhere" must be host:port, separated by commas (at most 1024 bytes)"#
            ]],
        );
        check(
            json!({ "name": "t", "function": "f", "kafka": { "brokers": "h:1", "topic": "a/b" } }),
            expect![[
                r#"invalid_input: topic "a/b" must be 1 to 128 characters of a-z, A-Z, 0-9, '.', '_' and '-'"#
            ]],
        );
        check(
            json!({ "name": "t", "function": "f", "kafka": { "brokers": "h:1", "topic": "t", "schema": { "type": "object" }, "dead_letter": "t-dlq" } }),
            expect!["ok"],
        );
        check(
            json!({ "name": "t", "function": "f", "kafka": { "brokers": "h:1", "topic": "t", "dead_letter": "t" } }),
            expect!["invalid_input: the dead-letter topic must not be the topic the trigger reads"],
        );
        check(
            json!({ "name": "t", "function": "f", "kafka": { "brokers": "h:1", "topic": "t", "schema": { "type": "nonsense" } } }),
            expect![[
                r#"invalid_input: the record schema is not a usable JSON Schema: "nonsense" is not valid under any of the schemas listed in the 'anyOf' keyword"#
            ]],
        );
        check(
            json!({ "name": "t", "function": "f", "kafka": { "brokers": "h:1", "topic": "t", "batch": 0 } }),
            expect!["invalid_input: batch is 1 to 100"],
        );
        check(
            json!({ "name": "Bad Name", "function": "f", "events": {} }),
            expect![[
                r#"invalid_input: trigger name "Bad Name" must be 1 to 64 characters of a-z, 0-9, '-', '_' and '.', not starting with '.'"#
            ]],
        );
        check(
            json!({ "name": "t", "function": "f", "input": [1], "events": {} }),
            expect!["invalid_input: input must be a JSON object"],
        );
        check(
            json!({ "name": "t", "function": "f", "input": { "trigger": 1 }, "events": {} }),
            expect![[
                r#"invalid_input: input must not have the key "trigger": the trigger adds it to every job's input"#
            ]],
        );
        check(
            json!({ "name": "t", "function": "f", "events": { "filters": [{ "exact": {} }] } }),
            expect!["invalid_input: filters[0]: exact takes exactly one attribute and its value"],
        );
        check(
            json!({ "name": "t", "function": "f", "events": { "filters": [{ "sql": "type = 'x'" }] } }),
            expect!["does not parse: unknown variant `sql`, expected one of `exact`, `prefix`, `suffix`, `all`, `any`, `not`"],
        );
    }
}

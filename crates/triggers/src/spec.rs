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
/// Longest time zone name (the longest in the tz database is 32 bytes).
const TIMEZONE_LEN_MAX: usize = 64;

/// What starts jobs of `function` by itself: a cron schedule or a CloudEvents subscription
/// (exactly one of `cron` and `events`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    pub name: String,
    pub function: String,
    /// The input of every job it starts (a JSON object), with the key `trigger` added: see
    /// [`crate::cron_input`] and [`crate::event_input`].
    #[serde(default = "empty_object")]
    pub input: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<CronSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<EventSource>,
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
    /// Every check that does not need the cluster's state (the function's existence is
    /// checked where the state is).
    pub fn validate(&self) -> Result<(), Error> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= TRIGGER_NAME_LEN_MAX
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
            && !self.name.starts_with('.');
        if !name_ok {
            return Err(Error::input(format!(
                "trigger name {:?} must be 1 to {TRIGGER_NAME_LEN_MAX} characters of a-z, 0-9, '-', '_' and '.', not starting with '.'",
                self.name
            )));
        }
        if self.function.is_empty() {
            return Err(Error::input("a trigger needs a function"));
        }
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
        match (&self.cron, &self.events) {
            (Some(cron), None) => cron.validate(),
            (None, Some(events)) => {
                for (i, filter) in events.filters.iter().enumerate() {
                    filter
                        .validate()
                        .map_err(|e| Error::input(format!("filters[{i}]: {}", e.message)))?;
                }
                Ok(())
            }
            _ => Err(Error::input(
                "a trigger has exactly one of \"cron\" (a schedule) and \"events\" (a subscription)",
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
                r#"invalid_input: a trigger has exactly one of "cron" (a schedule) and "events" (a subscription)"#
            ]],
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

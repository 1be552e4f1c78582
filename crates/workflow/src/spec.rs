//! The workflow spec as users write it (TOML) and as the log carries it (JSON): steps, their
//! needs, templates, retry policies, time-outs and hooks, with the limits every part has.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

use crate::error::{Code, Error};

/// Steps in one workflow at most, the `finally` step included.
pub const STEPS_MAX: usize = 256;
/// Longest workflow, step or function name.
pub const NAME_LEN_MAX: usize = 128;
/// Elements one `for_each` may yield at most; a longer list fails the step (`too_large`).
pub const FAN_OUT_MAX: usize = 1_000;
/// Longest template or condition, in bytes.
pub const TEMPLATE_LEN_MAX: usize = 4_096;
/// Bytes of a step's input template (as JSON) at most.
pub const INPUT_TEMPLATE_BYTES_MAX: usize = 64 * 1024;
/// Nesting of a step's input template (objects and arrays) at most.
pub const INPUT_TEMPLATE_DEPTH_MAX: usize = 16;
/// Input files of one step element at most (a job's limit).
pub const FILES_PER_STEP_MAX: usize = 64;
/// Attempts of one step element in one round at most, whatever a spec asks.
pub const ATTEMPTS_MAX: u32 = 100;
/// Longest back-off or time-out a spec may ask for: 30 days.
pub const DURATION_MS_MAX: u64 = 30 * 24 * 3_600 * 1_000;
/// Back-off multiplier at most.
pub const MULTIPLIER_MAX: f64 = 100.0;
/// Error codes one list of a retry policy may name, and per-code overrides, at most.
pub const RETRY_CODES_MAX: usize = 64;
/// Hooks per stage (before a step, after it, each end of a run) at most.
pub const HOOKS_PER_STAGE_MAX: usize = 8;
/// Longest hook URL.
pub const URL_LEN_MAX: usize = 2_048;
/// Errors one validation reports at most; the rest are counted in the last one.
pub const SPEC_ERRORS_MAX: usize = 50;
/// Bytes of an input schema (as JSON) at most.
pub const INPUT_SCHEMA_BYTES_MAX: usize = 64 * 1024;
/// Schema errors one refused run input reports at most.
pub const SCHEMA_ERRORS_MAX: usize = 5;
/// Bytes of a TOML spec at most.
pub const SPEC_BYTES_MAX: usize = 1024 * 1024;

/// A deployable workflow: a DAG of steps, each calling a function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    pub name: String,
    /// Assigned by the registry on deploy (previous version + 1), as for functions; ignored
    /// on input. A run keeps the version it started with.
    #[serde(default)]
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The whole run's time-out, from its start to its last step (the `finally` step is
    /// still run after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// A JSON Schema (draft 2020-12 unless it says `$schema`) a run's input must match: a
    /// run whose input does not is refused (`schema_mismatch`) and nothing starts. Only
    /// references within the schema resolve; nothing is fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    /// Retry policy of every step that has none of its own.
    #[serde(default)]
    pub retry: RetrySpec,
    /// Hooks fired when the run ends.
    #[serde(default, skip_serializing_if = "RunHooks::is_empty")]
    pub hooks: RunHooks,
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    /// The clean-up step (the issue's `on_abort`): it runs once every other step is done,
    /// whatever happened to the run (succeeded, failed, timed out or aborted).
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "on_abort")]
    pub finally: Option<StepSpec>,
}

/// One node of the DAG.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub name: String,
    /// The function each attempt runs (built-in or deployed command function).
    pub function: String,
    /// The function's input: any JSON (a TOML table) whose strings are templates.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub input: Value,
    /// The job's input files (object keys or URLs, in order; an audio function reads the
    /// first): a template, or a list of templates, each giving a string or a list of strings.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub files: Value,
    /// Steps that must be done (succeeded, or skipped) before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// A template yielding a list: the step runs once per element (`{{ item }}`,
    /// `{{ index }}`), and its output is the list of the elements' outputs, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// With `for_each`: elements running at once at most (all of them if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// A condition (see the crate README); the step is skipped when it is false.
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// This step's retry policy; the workflow's `retry` if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// The step's time-out: from its first attempt's start to its end, retries and every
    /// element included. Each attempt also has its function's own `timeout_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "StepHooks::is_empty")]
    pub hooks: StepHooks,
    /// A cluster-wide limit on this step's jobs, across every run of the workflow (per key of
    /// the step's rendered input if it names one); the function's own throttle holds too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<throttle::ThrottleSpec>,
}

/// Which failed attempts are tried again, and after how long.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySpec {
    /// Attempts in all per element and round, the first one included.
    pub max_attempts: u32,
    /// If not empty, only these codes are retried.
    pub retry_codes: Vec<String>,
    /// These codes are never retried (this wins over `retry_codes`).
    pub never_codes: Vec<String>,
    pub backoff: Backoff,
    /// Back-off for particular codes, where it differs (e.g. `rate_limited` waits longer
    /// than `timeout`); unset fields are taken from `backoff`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub per_code: BTreeMap<String, BackoffOverride>,
}

/// Exponential back-off: the wait before attempt `n + 1` is
/// `min(initial_ms * multiplier^(n-1), max_ms)`, scaled by a factor in `[1 - jitter, 1]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    pub initial_ms: u64,
    pub multiplier: f64,
    pub max_ms: u64,
    pub jitter: f64,
}

/// A per-code back-off: each field set replaces the policy's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
}

/// Hooks around one step. They notify; they never hold the step back (a check that must
/// gate a step is a step of its own).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StepHooks {
    /// Fired when the step starts (its first attempt of a round).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub before: Vec<Hook>,
    /// Fired when the step ends: succeeded, failed, skipped or cancelled.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<Hook>,
}

/// Hooks fired when a run ends, by how it ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunHooks {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub succeeded: Vec<Hook>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<Hook>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aborted: Vec<Hook>,
}

/// One hook: either a function called with a rendered input, or a URL that gets the hook's
/// event as a JSON POST. Exactly one of `function` and `url` is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// For a function hook: its input template (the event is available as `event`).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl Default for RetrySpec {
    fn default() -> RetrySpec {
        RetrySpec {
            max_attempts: 3,
            retry_codes: Vec::new(),
            never_codes: ["invalid_input", "unsupported_format", "cancelled"]
                .map(String::from)
                .to_vec(),
            backoff: Backoff::default(),
            per_code: BTreeMap::new(),
        }
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial_ms: 1_000,
            multiplier: 2.0,
            max_ms: 60_000,
            jitter: 0.2,
        }
    }
}

impl StepHooks {
    pub fn is_empty(&self) -> bool {
        self.before.is_empty() && self.after.is_empty()
    }
}

impl RunHooks {
    pub fn is_empty(&self) -> bool {
        self.succeeded.is_empty() && self.failed.is_empty() && self.aborted.is_empty()
    }
}

impl WorkflowSpec {
    /// Parses a TOML spec. This checks the shape only; [`crate::validate`] checks the rest.
    pub fn from_toml(text: &str) -> Result<WorkflowSpec, Error> {
        if text.len() > SPEC_BYTES_MAX {
            return Err(Error::new(
                Code::TooLarge,
                "",
                format!("the spec is {} bytes, over {SPEC_BYTES_MAX}", text.len()),
            ));
        }
        toml::from_str(text).map_err(|e| {
            let message = e.message().to_string();
            let at = e
                .span()
                .map(|span| {
                    let before = text.get(..span.start).unwrap_or(text);
                    let line = before.matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            Error::new(
                Code::InvalidInput,
                "",
                format!("malformed spec{at}: {message}"),
            )
        })
    }

    /// The step called `name`: one of `steps` or the `finally` step.
    pub fn step(&self, name: &str) -> Option<&StepSpec> {
        self.steps
            .iter()
            .chain(self.finally.as_ref())
            .find(|s| s.name == name)
    }

    /// Every step, the `finally` step last.
    pub fn all_steps(&self) -> impl Iterator<Item = &StepSpec> {
        self.steps.iter().chain(self.finally.as_ref())
    }

    /// The retry policy `step` follows.
    pub fn retry_of<'a>(&'a self, step: &'a StepSpec) -> &'a RetrySpec {
        step.retry.as_ref().unwrap_or(&self.retry)
    }

    /// Whether `name` is the `finally` step.
    pub fn is_finally(&self, name: &str) -> bool {
        self.finally.as_ref().is_some_and(|f| f.name == name)
    }
}

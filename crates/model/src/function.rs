//! Function specs: what a function is, how it runs, how it is retried.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest function name accepted.
pub const FUNCTION_NAME_LEN_MAX: usize = 128;

/// A named unit of work. Deployed from TOML by users, or registered by the node for built-ins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    pub name: String,
    /// Assigned by the registry on deploy (previous version + 1); ignored on input.
    #[serde(default)]
    pub version: u32,
    /// How attempts run: see [`FunctionKind`].
    #[serde(default)]
    pub kind: FunctionKind,
    /// For `kind = "command"`: the program and its arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Extra environment for command workers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Wall-clock limit of one attempt; the worker is killed past it (code `timeout`).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Address-space limit of a worker process, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Idle workers of this function are stopped after this long (scale to zero).
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Placement strategy for this function's jobs (e.g. `cpu-load`); the cluster's default
    /// if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Labels a node must have to run this function's jobs (e.g. `pool=realtime`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Extra attempts of each job, each on a distinct node; what they are for is
    /// [`FunctionSpec::backup_mode`].
    #[serde(default)]
    pub backups: u32,
    #[serde(default)]
    pub backup_mode: BackupMode,
    /// Mode `hedge`: how long the newest attempt runs without a result before the next
    /// backup starts.
    #[serde(default = "default_hedge_delay_ms")]
    pub hedge_delay_ms: u64,
    /// A cluster-wide limit on this function's jobs (running at once, starts per second),
    /// per key of the input if it names one. A job keeps the limits of the version it was
    /// submitted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<throttle::ThrottleSpec>,
}

/// What a function's backups are for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupMode {
    /// `1 + backups` attempts start together on distinct nodes and all run to completion;
    /// every output is kept (on its attempt). The job succeeds if any of them does.
    #[default]
    All,
    /// One attempt starts; while it runs longer than `hedge_delay_ms` without a result,
    /// another starts on a node not running the job, up to `backups` more. The first success
    /// wins and the others are stopped (`superseded`).
    Hedge,
}

impl BackupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupMode::All => "all",
            BackupMode::Hedge => "hedge",
        }
    }
}

/// Where the code of a function lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FunctionKind {
    /// Served by `chorus worker` (the same binary).
    #[default]
    Builtin,
    /// Any executable speaking the stdin/stdout JSON-lines protocol (see [`crate::protocol`]).
    Command,
}

/// When and how often a failed attempt is tried again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Each retry waits `backoff_initial_ms * 2^(n-1)`, capped, then scaled by a jitter
    /// factor in `[1 - jitter, 1]`.
    pub jitter: f64,
    /// Error codes that are never retried: retrying cannot help them.
    pub no_retry_codes: Vec<String>,
}

fn default_timeout_ms() -> u64 {
    60_000
}

fn default_idle_timeout_ms() -> u64 {
    60_000
}

fn default_hedge_delay_ms() -> u64 {
    5_000
}

/// Backups per job at most: each one holds a slot on another node.
pub const BACKUPS_MAX: u32 = 8;

/// Attempts in all may not exceed this, whatever a spec asks.
const MAX_ATTEMPTS_LIMIT: u32 = 100;

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            backoff_initial_ms: 200,
            backoff_max_ms: 30_000,
            jitter: 0.2,
            no_retry_codes: ["invalid_input", "unsupported_format", "cancelled"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl RetryPolicy {
    /// Whether an attempt that failed with `code`, being attempt number `attempt_no` (1-based),
    /// is followed by another.
    pub fn retries(&self, code: &str, attempt_no: u32) -> bool {
        attempt_no < self.max_attempts && !self.no_retry_codes.iter().any(|c| c == code)
    }

    /// Delay before attempt `attempt_no + 1`. `seed` makes the jitter deterministic, so every
    /// replica computes the same delay for the same job.
    pub fn backoff_ms(&self, attempt_no: u32, seed: u64) -> u64 {
        let exp = attempt_no.saturating_sub(1).min(32);
        let base = self
            .backoff_initial_ms
            .saturating_mul(1u64 << exp)
            .min(self.backoff_max_ms);
        // splitmix64: a tiny, well-known mixer; a dependency for eight lines is not worth it.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
        let jitter = self.jitter.clamp(0.0, 1.0);
        (base as f64 * (1.0 - jitter * unit)) as u64
    }
}

impl FunctionSpec {
    /// Whether the job's attempts all run to completion, each keeping its output.
    pub fn keeps_all_attempts(&self) -> bool {
        self.backups > 0 && self.backup_mode == BackupMode::All
    }

    /// Whether slow attempts get a hedge.
    pub fn hedges(&self) -> bool {
        self.backups > 0 && self.backup_mode == BackupMode::Hedge
    }

    /// A built-in function with default limits.
    pub fn builtin(name: &str) -> FunctionSpec {
        FunctionSpec {
            name: name.to_string(),
            version: 0,
            kind: FunctionKind::Builtin,
            command: Vec::new(),
            env: BTreeMap::new(),
            retry: RetryPolicy::default(),
            timeout_ms: default_timeout_ms(),
            memory_mb: None,
            idle_timeout_ms: default_idle_timeout_ms(),
            strategy: None,
            labels: Vec::new(),
            backups: 0,
            backup_mode: BackupMode::All,
            hedge_delay_ms: default_hedge_delay_ms(),
            throttle: None,
        }
    }

    /// Checks what serde cannot: names, limits, a command for command functions.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= FUNCTION_NAME_LEN_MAX
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !name_ok {
            return Err(format!(
                "function name {:?} must be 1 to {FUNCTION_NAME_LEN_MAX} characters of a-z, A-Z, 0-9, '.', '_', '-'",
                self.name
            ));
        }
        match self.kind {
            FunctionKind::Command if self.command.is_empty() => {
                return Err(
                    "a command function needs `command = [\"program\", \"arg\", ...]`".into(),
                )
            }
            FunctionKind::Builtin if !self.command.is_empty() => {
                return Err(
                    "a built-in function takes no `command`; set `kind = \"command\"`".into(),
                )
            }
            _ => {}
        }
        if self.retry.max_attempts == 0 || self.retry.max_attempts > MAX_ATTEMPTS_LIMIT {
            return Err(format!(
                "retry.max_attempts must be 1 to {MAX_ATTEMPTS_LIMIT}"
            ));
        }
        if !(0.0..=1.0).contains(&self.retry.jitter) {
            return Err("retry.jitter must be between 0 and 1".into());
        }
        if self.timeout_ms == 0 {
            return Err("timeout_ms must be positive".into());
        }
        if self.backups > BACKUPS_MAX {
            return Err(format!("backups must be 0 to {BACKUPS_MAX}"));
        }
        if let Some(throttle) = &self.throttle {
            throttle.validate()?;
        }
        Ok(())
    }
}

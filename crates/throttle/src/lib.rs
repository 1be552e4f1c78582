//! Cluster-wide throttles as data. A function or a workflow step may declare a
//! [`ThrottleSpec`]: at most `concurrency` of its jobs running at once, at most `rate_per_s`
//! starts per second, each optionally per value of a key taken from the job's input (a JSON
//! pointer such as `/customer`). Pure: no IO, no clock (the time is an argument).
//!
//! # How a limit is held
//!
//! 1. When a job is submitted, each throttle that applies to it (its function's, its step's)
//!    is resolved against its input into a [`Throttle`]: a *bucket* name
//!    (`function:NAME[:KEY]` or `step:WORKFLOW/STEP[:KEY]`) with the limits as integers. The
//!    job carries these for its life, so a redeploy does not change the limits of jobs
//!    already queued.
//! 2. The leader's placement (`scheduler`) starts a queued job only if [`admits`] says so
//!    for every throttle it carries, given each bucket's [`Usage`]: the jobs of the bucket
//!    running now and its latest starts. It counts what it places within one pass.
//! 3. Applying the start (`model::State`) checks again with the same function and the
//!    replicated usage, so no race between proposers (a submit placed at once, the
//!    scheduling loop, a new leader) can start a job over a limit: a start refused there
//!    leaves the job queued.
//!
//! A rate of `r` per second is held as "at most `n` starts in any window of `w` ms"
//! ([`Rate`]), `n = max(1, floor(r))` and `w = n * 1000 / r`: exactly `r` per second in the
//! long run, bursts of at most `n`. Only the latest `n` starts of a bucket matter.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::fmt;

/// Largest concurrency limit a spec may set.
pub const CONCURRENCY_MAX: u32 = 100_000;
/// Largest rate a spec may set (starts per second); it is also the most starts a bucket keeps.
pub const RATE_PER_S_MAX: f64 = 1_000.0;
/// Smallest rate a spec may set: one start every 1,000 s.
pub const RATE_PER_S_MIN: f64 = 0.001;
/// Longest window a rate can have (the smallest rate's).
pub const WINDOW_MS_MAX: u64 = 1_000_000;
/// Longest key (JSON pointer) a spec may name.
pub const KEY_LEN_MAX: usize = 256;
/// Longest key value kept as it is in a bucket name; a longer one is named by its SHA-256.
pub const KEY_VALUE_LEN_MAX: usize = 128;

/// A throttle as a spec declares it (a function's `[throttle]` table, a step's `throttle`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleSpec {
    /// Jobs running at once at most, across the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Starts per second at most, across the cluster (may be fractional: 0.5 is one start
    /// every 2 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_s: Option<f64>,
    /// A JSON pointer into the job's input (`/customer`): the limits hold per value found
    /// there; a job without the value counts under `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A throttle resolved for one job: the bucket it counts in and its limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttle {
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
}

/// At most `starts` starts in any window of `window_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub starts: u32,
    pub window_ms: u64,
}

impl Rate {
    /// The rate `per_s` (validated: within [`RATE_PER_S_MIN`] and [`RATE_PER_S_MAX`]) as
    /// starts per window.
    pub fn per_s(per_s: f64) -> Rate {
        let per_s = per_s.clamp(RATE_PER_S_MIN, RATE_PER_S_MAX);
        let starts = (per_s.floor() as u32).max(1);
        let window_ms = (f64::from(starts) * 1000.0 / per_s).round() as u64;
        Rate {
            starts,
            window_ms: window_ms.clamp(1, WINDOW_MS_MAX),
        }
    }
}

/// What a bucket has used: its jobs running now and its latest starts (oldest first).
#[derive(Clone, Copy, Debug)]
pub struct Usage<'a> {
    pub running: u32,
    pub starts_ms: &'a VecDeque<u64>,
}

/// Why a throttle holds a job back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub bucket: String,
    pub limit: Limit,
}

/// The limit that holds, with the figures that make it hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `running` jobs of the bucket run, and `limit` may.
    Concurrency { limit: u32, running: u32 },
    /// The bucket started `rate.starts` jobs in the last `rate.window_ms`; the next may
    /// start at `until_ms`.
    Rate { rate: Rate, until_ms: u64 },
}

impl fmt::Display for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.limit {
            Limit::Concurrency { limit, running } => write!(
                f,
                "throttle {} allows {limit} running at once across the cluster; {running} run",
                self.bucket
            ),
            Limit::Rate { rate, until_ms } => write!(
                f,
                "throttle {} allows {} start(s) per {} ms across the cluster; the next may start at {until_ms} ms",
                self.bucket, rate.starts, rate.window_ms
            ),
        }
    }
}

impl ThrottleSpec {
    /// Checks what serde cannot: at least one limit, each within its bounds, a key that is a
    /// JSON pointer.
    pub fn validate(&self) -> Result<(), String> {
        if self.concurrency.is_none() && self.rate_per_s.is_none() {
            return Err("a throttle needs `concurrency`, `rate_per_s` or both".into());
        }
        if let Some(c) = self.concurrency {
            if c == 0 || c > CONCURRENCY_MAX {
                return Err(format!(
                    "throttle concurrency must be 1 to {CONCURRENCY_MAX}"
                ));
            }
        }
        if let Some(r) = self.rate_per_s {
            if !(RATE_PER_S_MIN..=RATE_PER_S_MAX).contains(&r) {
                return Err(format!(
                    "throttle rate_per_s must be {RATE_PER_S_MIN} to {RATE_PER_S_MAX}"
                ));
            }
        }
        if let Some(key) = &self.key {
            if !key.starts_with('/') || key.len() > KEY_LEN_MAX {
                return Err(format!(
                    "throttle key {key:?} must be a JSON pointer into the input (`/customer`), at most {KEY_LEN_MAX} bytes"
                ));
            }
        }
        Ok(())
    }

    /// The throttle of one job: its bucket is `scope`, followed by `:` and the key's value in
    /// `input` if the spec has a key.
    pub fn resolve(&self, scope: &str, input: &Value) -> Throttle {
        let bucket = match &self.key {
            None => scope.to_string(),
            Some(key) => {
                let value = match input.pointer(key) {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => "null".to_string(),
                };
                if value.len() > KEY_VALUE_LEN_MAX {
                    format!("{scope}:sha256={}", hex::encode(Sha256::digest(&value)))
                } else {
                    format!("{scope}:{value}")
                }
            }
        };
        Throttle {
            bucket,
            concurrency: self.concurrency,
            rate: self.rate_per_s.map(Rate::per_s),
        }
    }
}

/// Whether a job carrying `throttle` may start at `now_ms`, given its bucket's usage. The
/// one rule both the scheduler and the state machine apply.
pub fn admits(throttle: &Throttle, usage: Usage<'_>, now_ms: u64) -> Result<(), Held> {
    let held = |limit| {
        Err(Held {
            bucket: throttle.bucket.clone(),
            limit,
        })
    };
    if let Some(limit) = throttle.concurrency {
        if usage.running >= limit {
            return held(Limit::Concurrency {
                limit,
                running: usage.running,
            });
        }
    }
    if let Some(rate) = throttle.rate {
        let n = rate.starts as usize;
        let len = usage.starts_ms.len();
        if len >= n {
            // The n-th latest start must have left the window.
            let until_ms = usage.starts_ms[len - n].saturating_add(rate.window_ms);
            if now_ms < until_ms {
                return held(Limit::Rate { rate, until_ms });
            }
        }
    }
    Ok(())
}

/// Records a start at `now_ms` in a bucket's latest starts, keeping only the latest
/// `rate.starts`: all that [`admits`] looks at.
pub fn record_start(throttle: &Throttle, starts_ms: &mut VecDeque<u64>, now_ms: u64) {
    let Some(rate) = throttle.rate else { return };
    starts_ms.push_back(now_ms);
    let keep = (rate.starts as usize).min(RATE_PER_S_MAX as usize);
    while starts_ms.len() > keep {
        starts_ms.pop_front();
    }
}

#[cfg(test)]
mod tests;

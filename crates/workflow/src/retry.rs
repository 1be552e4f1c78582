//! Retry decisions by error code: whether a failed attempt is tried again, and the back-off
//! before it, with jitter derived from the run, step, element and attempt (no RNG, so every
//! replica computes the same wait).

use crate::spec::{Backoff, RetrySpec};

impl RetrySpec {
    /// Whether an attempt that failed with `code`, being attempt `attempt` (1-based) of its
    /// element's round, is followed by another.
    pub fn retries(&self, code: &str, attempt: u32) -> bool {
        attempt < self.max_attempts
            && !self.never_codes.iter().any(|c| c == code)
            && (self.retry_codes.is_empty() || self.retry_codes.iter().any(|c| c == code))
    }

    /// The back-off that applies to `code`: the policy's, with the code's own fields over it.
    pub fn backoff_for(&self, code: &str) -> Backoff {
        let mut backoff = self.backoff.clone();
        if let Some(o) = self.per_code.get(code) {
            backoff.initial_ms = o.initial_ms.unwrap_or(backoff.initial_ms);
            backoff.multiplier = o.multiplier.unwrap_or(backoff.multiplier);
            backoff.max_ms = o.max_ms.unwrap_or(backoff.max_ms);
            backoff.jitter = o.jitter.unwrap_or(backoff.jitter);
        }
        backoff
    }

    /// The wait after attempt `attempt` (1-based) failed with `code`. `seed` makes the
    /// jitter deterministic: see [`jitter_seed`].
    pub fn delay_ms(&self, code: &str, attempt: u32, seed: u64) -> u64 {
        self.backoff_for(code).delay_ms(attempt, seed)
    }
}

impl Backoff {
    /// `min(initial_ms * multiplier^(attempt-1), max_ms)`, scaled by a factor in
    /// `[1 - jitter, 1]` drawn from `seed`. Out-of-range fields (which validation refuses)
    /// are clamped, never a panic.
    pub fn delay_ms(&self, attempt: u32, seed: u64) -> u64 {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let multiplier = if self.multiplier.is_finite() {
            self.multiplier.max(1.0)
        } else {
            1.0
        };
        let grown = self.initial_ms as f64 * multiplier.powi(exponent);
        let base = if grown.is_finite() {
            grown.min(self.max_ms as f64)
        } else {
            self.max_ms as f64
        };
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let unit = (splitmix64(seed) >> 11) as f64 / (1u64 << 53) as f64;
        (base * (1.0 - jitter * unit)).max(0.0) as u64
    }
}

/// The jitter seed of one retry: the same run, step, element and attempt always give the
/// same seed, and neighbours give unrelated ones.
pub fn jitter_seed(run: u64, step: &str, element: usize, attempt: u32) -> u64 {
    // FNV-1a over the step name, then mixed with the numbers.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in step.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix64(splitmix64(run ^ hash) ^ ((element as u64) << 20) ^ u64::from(attempt))
}

/// SplitMix64's finaliser: a well-known 64-bit mixer, a few lines not worth a dependency.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

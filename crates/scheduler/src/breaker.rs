//! The CPU circuit breaker: a hot node gets no new work until it has cooled down, with a
//! hysteresis band so that a node hovering at the threshold does not flap. Also the CPU
//! smoothing (EWMA) the caller applies to raw samples before they reach the breaker.

use crate::Config;
use model::NodeId;

/// Smoothed CPU at or above which a node's breaker opens.
pub const CPU_THRESHOLD_PERCENT_DEFAULT: f64 = 85.0;
/// How far below the threshold smoothed CPU must fall before an open breaker closes.
pub const CPU_HYSTERESIS_PERCENT_DEFAULT: f64 = 10.0;

/// Smooths CPU samples with an exponentially weighted moving average:
/// `previous + alpha * (sample - previous)`. `alpha` is clamped to `0..=1`; 1 keeps only the
/// new sample, small values remember longer. Seed the series with the first sample as
/// `previous`. A sample that is not a finite number (a failed read) leaves the value as it was.
pub fn smooth(previous_percent: f64, sample_percent: f64, alpha: f64) -> f64 {
    if !sample_percent.is_finite() {
        return previous_percent;
    }
    if !previous_percent.is_finite() {
        return sample_percent;
    }
    let alpha = if alpha.is_nan() {
        1.0
    } else {
        alpha.clamp(0.0, 1.0)
    };
    previous_percent + alpha * (sample_percent - previous_percent)
}

/// A node's breaker. Open: the node gets no new work (what it runs is left alone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Breaker {
    #[default]
    Closed,
    Open,
}

impl Breaker {
    /// One step of the breaker for a node whose smoothed CPU is `cpu_percent`.
    ///
    /// 1. Closed, and CPU at or above the threshold: it opens.
    /// 2. Open, and CPU below `threshold - hysteresis`: it closes.
    /// 3. Otherwise it stays as it was: in the band between the two a node keeps the state it
    ///    had, so a node at 80% stays open after a spike and stays closed on the way up.
    ///
    /// A CPU figure that is not a number compares false both ways and changes nothing.
    pub(crate) fn next(self, cpu_percent: f64, config: &Config) -> Breaker {
        let close_below_percent =
            config.cpu_threshold_percent - config.cpu_hysteresis_percent.max(0.0);
        match self {
            Breaker::Closed if cpu_percent >= config.cpu_threshold_percent => Breaker::Open,
            Breaker::Open if cpu_percent < close_below_percent => Breaker::Closed,
            unchanged => unchanged,
        }
    }
}

/// A breaker that opened or closed in one call to [`crate::place`], for an alert event.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerChange {
    pub node: NodeId,
    /// The state it is in now.
    pub breaker: Breaker,
    /// The smoothed CPU that made it change.
    pub cpu_percent: f64,
}

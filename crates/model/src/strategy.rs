//! Placement strategies by name: the vocabulary a function spec (`strategy`) and the cluster
//! config (`scheduler.strategy`) share. How each one picks a node is the scheduler's business.

use std::fmt;
use std::str::FromStr;

/// How an attempt picks its node. Printed and parsed as `least-request`, `cpu-load`,
/// `concurrency`, `weighted-round-robin` and `random`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Strategy {
    /// Power of two choices: two random candidates, the less loaded one wins.
    #[default]
    LeastRequest,
    /// The candidate with the lowest smoothed CPU.
    CpuLoad,
    /// The candidate with the lowest assigned/capacity (the scheduler's original behaviour).
    Concurrency,
    /// Smooth weighted round-robin, as nginx does it.
    WeightedRoundRobin,
    /// A uniformly random candidate.
    Random,
}

impl Strategy {
    /// Every strategy, in the order they are documented.
    pub const ALL: [Strategy; 5] = [
        Strategy::LeastRequest,
        Strategy::CpuLoad,
        Strategy::Concurrency,
        Strategy::WeightedRoundRobin,
        Strategy::Random,
    ];

    /// The name used in configuration and function specs.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::LeastRequest => "least-request",
            Strategy::CpuLoad => "cpu-load",
            Strategy::Concurrency => "concurrency",
            Strategy::WeightedRoundRobin => "weighted-round-robin",
            Strategy::Random => "random",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A strategy name that is not one of [`Strategy::ALL`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownStrategy(pub String);

impl fmt::Display for UnknownStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Strategy::ALL.iter().map(|s| s.name()).collect();
        write!(
            f,
            "unknown strategy `{}`, expected one of: {}",
            self.0,
            names.join(", ")
        )
    }
}

impl std::error::Error for UnknownStrategy {}

impl FromStr for Strategy {
    type Err = UnknownStrategy;

    fn from_str(text: &str) -> Result<Strategy, UnknownStrategy> {
        Strategy::ALL
            .into_iter()
            .find(|s| s.name() == text)
            .ok_or_else(|| UnknownStrategy(text.to_owned()))
    }
}

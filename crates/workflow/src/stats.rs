//! Statistics over a workflow's runs in a window: runs by state, success rate, durations
//! (p50, p95, max) per run and per step, attempts, retries and error codes.

use serde::Serialize;
use std::collections::BTreeMap;

use crate::run::{RunState, RunStatus, StepStatus};

/// Figures for the runs of one workflow that started in a window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkflowStats {
    pub runs: usize,
    pub by_status: BTreeMap<RunStatus, usize>,
    /// Succeeded runs over finished ones; `None` before any run has finished.
    pub success_rate: Option<f64>,
    /// Durations of the finished runs.
    pub duration_ms: Option<DurationStats>,
    pub steps: BTreeMap<String, StepStats>,
}

/// Figures for one step over the same runs (its current round in each).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StepStats {
    pub by_status: BTreeMap<StepStatus, usize>,
    /// Succeeded over succeeded and failed.
    pub success_rate: Option<f64>,
    /// From the step's first start to its end, for steps that ran and ended.
    pub duration_ms: Option<DurationStats>,
    pub attempts: usize,
    /// Attempts after the first of their element.
    pub retries: usize,
    /// Failed attempts by error code.
    pub errors: BTreeMap<String, usize>,
}

/// Nearest-rank percentiles of a set of durations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DurationStats {
    pub count: usize,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub max_ms: u64,
}

impl DurationStats {
    /// `None` for no samples.
    pub fn of(mut samples: Vec<u64>) -> Option<DurationStats> {
        samples.sort_unstable();
        let max_ms = *samples.last()?;
        let rank = |p: usize| samples[(samples.len() * p).div_ceil(100).max(1) - 1];
        Some(DurationStats {
            count: samples.len(),
            p50_ms: rank(50),
            p95_ms: rank(95),
            max_ms,
        })
    }
}

fn rate(good: usize, all: usize) -> Option<f64> {
    (all > 0).then(|| good as f64 / all as f64)
}

/// Statistics of the runs that started in `[since_ms, until_ms)`.
pub fn stats<'r>(
    runs: impl IntoIterator<Item = &'r RunState>,
    since_ms: u64,
    until_ms: u64,
) -> WorkflowStats {
    let mut by_status: BTreeMap<RunStatus, usize> = BTreeMap::new();
    let mut durations = Vec::new();
    let mut step_durations: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut steps: BTreeMap<String, StepStats> = BTreeMap::new();
    let mut count = 0;
    for run in runs {
        if run.started_at_ms < since_ms || run.started_at_ms >= until_ms {
            continue;
        }
        count += 1;
        *by_status.entry(run.status).or_default() += 1;
        durations.extend(run.duration_ms());
        for (name, step) in &run.steps {
            let s = steps.entry(name.clone()).or_default();
            *s.by_status.entry(step.status).or_default() += 1;
            for element in &step.elements {
                s.attempts += element.attempts.len();
                s.retries += element.attempts.len().saturating_sub(1);
                for attempt in &element.attempts {
                    if let Some(error) = &attempt.error {
                        *s.errors.entry(error.code.clone()).or_default() += 1;
                    }
                }
            }
            if let (Some(start), Some(end)) = (step.started_at_ms, step.finished_at_ms) {
                step_durations
                    .entry(name.clone())
                    .or_default()
                    .push(end.saturating_sub(start));
            }
        }
    }
    for (name, s) in steps.iter_mut() {
        let ok = s
            .by_status
            .get(&StepStatus::Succeeded)
            .copied()
            .unwrap_or(0);
        let failed = s.by_status.get(&StepStatus::Failed).copied().unwrap_or(0);
        s.success_rate = rate(ok, ok + failed);
        s.duration_ms = step_durations.remove(name).and_then(DurationStats::of);
    }
    let succeeded = by_status.get(&RunStatus::Succeeded).copied().unwrap_or(0);
    let finished = count - by_status.get(&RunStatus::Running).copied().unwrap_or(0);
    WorkflowStats {
        runs: count,
        by_status,
        success_rate: rate(succeeded, finished),
        duration_ms: DurationStats::of(durations),
        steps,
    }
}

//! Operator controls on a run: retry a failed step, skip a step, abort, restart from a step.
//! Each is checked whole before anything changes: an error leaves the run as it was.
//!
//! A control only changes the run's state; the next [`crate::advance`] does the rest
//! (cancels the attempts of a skipped or aborted step, starts what is ready, runs the
//! `finally` step).

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

use crate::error::{Code, Error};
use crate::run::{Ending, RunState, RunStatus, SkipCause, StepError, StepRun, StepStatus};
use crate::spec::WorkflowSpec;

/// One operator control.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "control")]
pub enum Control {
    /// A failed run: run the failed step again (every failed step if none is named), and
    /// the steps after it. Steps that succeeded keep their outputs.
    Retry {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<String>,
    },
    /// A running run: the step is skipped (its running attempts are cancelled) and the steps
    /// after it go on. A failed run: its failed step is skipped and the run goes on.
    Skip { step: String },
    /// A running run: its running steps are cancelled and the `finally` step runs.
    Abort,
    /// A finished run: run it again from `from` (from the start if unset). Steps that
    /// succeeded and do not come after `from` keep their outputs.
    Restart {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
    },
}

/// Applies `control` to `run`, or says why it cannot.
pub fn control(
    spec: &WorkflowSpec,
    run: &mut RunState,
    control: &Control,
    now_ms: u64,
) -> Result<(), Error> {
    match control {
        Control::Retry { step } => retry(spec, run, step.as_deref(), now_ms),
        Control::Skip { step } => skip(spec, run, step, now_ms),
        Control::Abort => abort(run),
        Control::Restart { from } => restart(spec, run, from.as_deref(), now_ms),
    }
}

fn conflict(message: impl Into<String>) -> Error {
    Error::new(Code::Conflict, "", message)
}

fn known_step<'s>(
    spec: &WorkflowSpec,
    run: &'s RunState,
    name: &str,
) -> Result<&'s StepRun, Error> {
    match (spec.step(name), run.steps.get(name)) {
        (Some(_), Some(s)) => Ok(s),
        _ => Err(Error::new(
            Code::NotFound,
            "step",
            format!("workflow {:?} has no step {name:?}", run.workflow),
        )),
    }
}

fn retry(
    spec: &WorkflowSpec,
    run: &mut RunState,
    step: Option<&str>,
    now_ms: u64,
) -> Result<(), Error> {
    if let Some(name) = step {
        let s = known_step(spec, run, name)?;
        if s.status != StepStatus::Failed {
            return Err(conflict(format!(
                "step {name:?} is {}; only a failed step can be retried",
                s.status
            )));
        }
    }
    if run.status != RunStatus::Failed {
        return Err(conflict(format!(
            "the run is {}; only a failed run's steps can be retried",
            still(run)
        )));
    }
    let failed: BTreeSet<String> = match step {
        Some(name) => BTreeSet::from([name.to_string()]),
        None => run
            .steps
            .iter()
            .filter(|(_, s)| s.status == StepStatus::Failed)
            .map(|(n, _)| n.clone())
            .collect(),
    };
    if failed.is_empty() {
        return Err(conflict(
            "no step failed (the run timed out or was aborted); restart it instead",
        ));
    }
    let mut reset = downstream(spec, &failed);
    reset.extend(cancelled(run));
    reopen(spec, run, &reset, now_ms);
    Ok(())
}

fn skip(spec: &WorkflowSpec, run: &mut RunState, name: &str, now_ms: u64) -> Result<(), Error> {
    let status = known_step(spec, run, name)?.status;
    if spec.is_finally(name) {
        return Err(conflict(format!(
            "{name:?} is the finally step, which always runs"
        )));
    }
    let reopens = match (run.status, &run.ending, status) {
        (RunStatus::Running, None, StepStatus::Waiting | StepStatus::Running) => false,
        (RunStatus::Failed, _, StepStatus::Failed) => true,
        (RunStatus::Running, None, _) => {
            return Err(conflict(format!("step {name:?} is already {status}")))
        }
        _ => {
            return Err(conflict(format!(
                "the run is {}; a step can be skipped while the run runs, or a failed step of a failed run",
                still(run)
            )))
        }
    };
    if reopens {
        let reset = cancelled(run);
        reopen(spec, run, &reset, now_ms);
    }
    if let Some(s) = run.steps.get_mut(name) {
        s.status = StepStatus::Skipped;
        s.skip = Some(SkipCause::Operator);
        s.error = None;
        s.finished_at_ms = Some(now_ms);
    }
    Ok(())
}

fn abort(run: &mut RunState) -> Result<(), Error> {
    if run.is_finished() {
        return Err(conflict(format!("the run is already {}", run.status)));
    }
    let aborted = Ending {
        status: RunStatus::Aborted,
        error: Some(StepError::new("cancelled", "aborted by an operator")),
    };
    match &mut run.ending {
        Some(ending) if ending.status == RunStatus::Aborted => {
            Err(conflict("the run is already being aborted"))
        }
        // The run was already ending (its `finally` step runs): it ends aborted.
        Some(ending) => {
            *ending = aborted;
            Ok(())
        }
        None => {
            run.ending = Some(aborted);
            Ok(())
        }
    }
}

fn restart(
    spec: &WorkflowSpec,
    run: &mut RunState,
    from: Option<&str>,
    now_ms: u64,
) -> Result<(), Error> {
    if let Some(name) = from {
        known_step(spec, run, name)?;
        if spec.is_finally(name) {
            return Err(conflict(format!(
                "{name:?} is the finally step; restart from a step before it"
            )));
        }
    }
    if !run.is_finished() {
        return Err(conflict("the run is still running; abort it first"));
    }
    let reset: BTreeSet<String> = match from {
        None => run.steps.keys().cloned().collect(),
        Some(name) => {
            let mut reset = downstream(spec, &BTreeSet::from([name.to_string()]));
            reset.extend(
                run.steps
                    .iter()
                    .filter(|(_, s)| s.status != StepStatus::Succeeded)
                    .map(|(n, _)| n.clone()),
            );
            reset
        }
    };
    reopen(spec, run, &reset, now_ms);
    Ok(())
}

fn still(run: &RunState) -> String {
    match (&run.ending, run.status) {
        (Some(ending), RunStatus::Running) => {
            format!("ending ({}, its clean-up still runs)", ending.status)
        }
        (_, status) => status.to_string(),
    }
}

/// Steps that were cancelled when the run ended: they run again when it re-opens.
fn cancelled(run: &RunState) -> BTreeSet<String> {
    run.steps
        .iter()
        .filter(|(_, s)| s.status == StepStatus::Cancelled)
        .map(|(n, _)| n.clone())
        .collect()
}

/// `roots` and every main step that needs one of them, directly or not.
fn downstream(spec: &WorkflowSpec, roots: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = roots.clone();
    // A fixpoint over the needs: at most one round per step.
    for _ in 0..=spec.steps.len() {
        let before = out.len();
        for step in &spec.steps {
            if step.needs.iter().any(|n| out.contains(n)) {
                out.insert(step.name.clone());
            }
        }
        if out.len() == before {
            break;
        }
    }
    out
}

/// Re-opens a run: the `reset` steps and the `finally` step start a new round, and the run
/// is running again, its clock (and so its time-out) started anew at `now_ms`.
fn reopen(spec: &WorkflowSpec, run: &mut RunState, reset: &BTreeSet<String>, now_ms: u64) {
    for (name, step) in run.steps.iter_mut() {
        if reset.contains(name) || spec.is_finally(name) {
            *step = StepRun::new(step.round.saturating_add(1));
        }
    }
    run.status = RunStatus::Running;
    run.finished_at_ms = None;
    run.ending = None;
    run.end_hooks_fired = false;
    run.generation = run.generation.saturating_add(1);
    run.started_at_ms = now_ms;
}

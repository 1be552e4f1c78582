//! What [`crate::advance`] decides, as data ([`RunCommand`]), and [`apply`]: the one place a
//! command changes a run. The caller puts the commands in its log and every replica applies
//! them with the same `now_ms`, so every replica holds the same run.
//!
//! `apply` is total: a command that no longer fits the run (a stale start, a second finish)
//! changes nothing.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

use crate::run::{
    AttemptRecord, ElementRun, ElementStatus, Ending, RunState, RunStatus, SkipCause, StepError,
    StepStatus,
};
use crate::spec::WorkflowSpec;

/// One decision about a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "command")]
pub enum RunCommand {
    /// The step's needs are done and its `if` holds: it starts, with one element per item
    /// (`for_each`) or a single element.
    StartStep {
        step: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        items: Option<Vec<Value>>,
    },
    /// Create a job: `function` with `input` and input `files`, idempotency key `job_key`.
    StartAttempt {
        step: String,
        element: usize,
        attempt: u32,
        function: String,
        input: Value,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        files: Vec<String>,
        job_key: String,
    },
    /// Cancel the job `job_key`; its result, if one still comes, is ignored.
    CancelAttempt {
        step: String,
        element: usize,
        job_key: String,
    },
    /// Every element succeeded: the step's output is set.
    FinishStep {
        step: String,
        output: Value,
    },
    SkipStep {
        step: String,
        cause: SkipCause,
    },
    /// The step failed for good.
    FailStep {
        step: String,
        error: StepError,
    },
    /// The run is ending before the step could finish (or start).
    CancelStep {
        step: String,
    },
    /// The run's outcome is decided; the `finally` step runs next, if there is one.
    EndRun {
        status: RunStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<StepError>,
    },
    /// Deliver a hook (at least once; a function hook's job key makes it once).
    FireHook(HookCall),
    /// The run is over.
    FinishRun {
        status: RunStatus,
    },
}

/// When a hook fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookStage {
    BeforeStep,
    AfterStep,
    RunSucceeded,
    RunFailed,
    RunAborted,
}

/// One hook to deliver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HookCall {
    pub stage: HookStage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The hook's place in its stage's list.
    pub index: usize,
    /// What happened: the body of a URL hook, `event` in a function hook's input.
    pub event: Value,
    pub target: HookTarget,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookTarget {
    /// Submit a job of `function` with the rendered `input` and idempotency key `job_key`.
    Function {
        function: String,
        input: Value,
        job_key: String,
    },
    /// POST `event` as JSON to `url`.
    Post { url: String },
}

/// Applies one command to `run`. Commands that no longer fit are ignored.
pub fn apply(run: &mut RunState, command: &RunCommand, now_ms: u64) {
    if run.is_finished() {
        return;
    }
    match command {
        RunCommand::StartStep { step, items } => {
            let Some(s) = run.steps.get_mut(step) else {
                return;
            };
            if s.status != StepStatus::Waiting {
                return;
            }
            let count = items.as_ref().map_or(1, Vec::len);
            s.status = StepStatus::Running;
            s.started_at_ms = Some(now_ms);
            s.items = items.clone().map(Arc::new);
            s.elements = (0..count).map(|_| ElementRun::new()).collect();
        }
        RunCommand::StartAttempt {
            step,
            element,
            attempt,
            input,
            files,
            job_key,
            ..
        } => {
            let Some(s) = run.steps.get_mut(step) else {
                return;
            };
            if s.status != StepStatus::Running {
                return;
            }
            let Some(e) = s.elements.get_mut(*element) else {
                return;
            };
            if e.status != ElementStatus::Waiting || e.attempts.len() as u32 + 1 != *attempt {
                return;
            }
            e.status = ElementStatus::Running;
            if attempt == &1 {
                e.input = Arc::new(input.clone());
                e.files = files.clone();
            }
            e.attempts.push(AttemptRecord {
                number: *attempt,
                job_key: job_key.clone(),
                started_at_ms: now_ms,
                finished_at_ms: None,
                error: None,
            });
        }
        RunCommand::CancelAttempt {
            step,
            element,
            job_key,
        } => {
            let Some(e) = run
                .steps
                .get_mut(step)
                .and_then(|s| s.elements.get_mut(*element))
            else {
                return;
            };
            if e.live_attempt().is_some_and(|a| &a.job_key == job_key) {
                e.status = ElementStatus::Cancelled;
                if let Some(a) = e.attempts.last_mut() {
                    a.finished_at_ms = Some(now_ms);
                    a.error = Some(StepError::new("cancelled", "cancelled by the workflow"));
                }
            }
        }
        RunCommand::FinishStep { step, output } => {
            let Some(s) = run.steps.get_mut(step) else {
                return;
            };
            if s.status == StepStatus::Running {
                s.status = StepStatus::Succeeded;
                s.output = Some(Arc::new(output.clone()));
                s.finished_at_ms = Some(now_ms);
            }
        }
        RunCommand::SkipStep { step, cause } => {
            let Some(s) = run.steps.get_mut(step) else {
                return;
            };
            if s.status == StepStatus::Waiting {
                s.status = StepStatus::Skipped;
                s.skip = Some(*cause);
                s.finished_at_ms = Some(now_ms);
            }
        }
        RunCommand::FailStep { step, error } => {
            let Some(s) = run.steps.get_mut(step) else {
                return;
            };
            if !s.is_done() {
                s.status = StepStatus::Failed;
                s.error = Some(error.clone());
                s.finished_at_ms = Some(now_ms);
            }
        }
        RunCommand::CancelStep { step } => {
            let Some(s) = run.steps.get_mut(step) else {
                return;
            };
            if !s.is_done() {
                s.status = StepStatus::Cancelled;
                s.finished_at_ms = Some(now_ms);
            }
        }
        RunCommand::EndRun { status, error } => {
            if run.ending.is_none() && *status != RunStatus::Running {
                run.ending = Some(Ending {
                    status: *status,
                    error: error.clone(),
                });
            }
        }
        RunCommand::FireHook(call) => match call.stage {
            HookStage::BeforeStep | HookStage::AfterStep => {
                let step = call.step.as_deref().unwrap_or_default();
                if let Some(s) = run.steps.get_mut(step) {
                    if call.stage == HookStage::BeforeStep {
                        s.before_hooks_fired = true;
                    } else {
                        s.after_hooks_fired = true;
                    }
                }
            }
            _ => run.end_hooks_fired = true,
        },
        RunCommand::FinishRun { status } => {
            if *status != RunStatus::Running && no_live_attempts(run) {
                run.status = *status;
                run.finished_at_ms = Some(now_ms);
            }
        }
    }
}

fn no_live_attempts(run: &RunState) -> bool {
    run.steps
        .values()
        .all(|s| s.elements.iter().all(|e| e.live_attempt().is_none()))
}

/// Whether a recorded result was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    Taken,
    /// Not the live attempt of that element (cancelled, superseded by a new round, or a
    /// duplicate): nothing changed.
    Stale,
}

/// Records how the attempt whose job is `job_key` ended. Only the live attempt of its element
/// is taken (fencing). A failure leaves the element waiting for a retry if the step's policy
/// retries its code, and failed otherwise.
pub fn record_attempt(
    spec: &WorkflowSpec,
    run: &mut RunState,
    step: &str,
    element: usize,
    job_key: &str,
    outcome: Result<Value, StepError>,
    now_ms: u64,
) -> Recorded {
    if run.is_finished() {
        return Recorded::Stale;
    }
    let Some(step_spec) = spec.step(step) else {
        return Recorded::Stale;
    };
    let retry = spec.retry_of(step_spec);
    let Some(s) = run.steps.get_mut(step) else {
        return Recorded::Stale;
    };
    if s.status != StepStatus::Running {
        return Recorded::Stale;
    }
    let Some(e) = s.elements.get_mut(element) else {
        return Recorded::Stale;
    };
    if e.live_attempt().is_none_or(|a| a.job_key != job_key) {
        return Recorded::Stale;
    }
    let Some(attempt) = e.attempts.last_mut() else {
        return Recorded::Stale;
    };
    attempt.finished_at_ms = Some(now_ms);
    match outcome {
        Ok(output) => {
            e.status = ElementStatus::Succeeded;
            e.output = Some(Arc::new(output));
        }
        Err(error) => {
            e.status = if retry.retries(&error.code, attempt.number) {
                ElementStatus::Waiting
            } else {
                ElementStatus::Failed
            };
            attempt.error = Some(error);
        }
    }
    Recorded::Taken
}

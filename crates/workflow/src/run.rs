//! A run's state: the run, each step, each element of a step (one, or one per `for_each`
//! item) and each attempt. It is a wire format: the replicated log and snapshots carry it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::spec::WorkflowSpec;

/// How a run stands. `Running` until its last step (the `finally` step included) is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Aborted,
}

/// How a step stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started: its needs are not done, or the run has not got to it.
    Waiting,
    /// At least one element has started; some are not done.
    Running,
    Succeeded,
    /// Failed for good (no retry left, a code never retried, a time-out, a template error).
    Failed,
    Skipped,
    /// Stopped (or never started) because the run failed, timed out or was aborted.
    Cancelled,
}

/// Why a step was skipped: it matters to the steps after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipCause {
    /// Its `if` was false.
    Condition,
    /// A step it needs was skipped by a condition, and it has no `if` of its own.
    Need,
    /// An operator skipped it; the steps after it go on.
    Operator,
}

/// How an element stands. An element whose last attempt failed and that will be retried is
/// `Waiting` with that failed attempt last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElementStatus {
    Waiting,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// Why an attempt or a step failed: a stable code (a platform code such as `timeout`, or a
/// function's own) and a sentence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    pub code: String,
    pub message: String,
}

/// A run of one version of a workflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Chosen by the caller (the log index that started it, say); part of every job key and
    /// the seed of every retry's jitter.
    pub id: u64,
    pub workflow: String,
    pub workflow_version: u32,
    /// Shared, like every input and output in a run: `advance` copies the run on every
    /// call, and a copy should cost a pointer per value, not the value.
    pub input: Arc<Value>,
    #[serde(rename = "state")]
    pub status: RunStatus,
    pub started_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// Set when the run's outcome is decided (a step failed for good, a time-out, an abort,
    /// every step done) while the `finally` step may still have to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ending: Option<Ending>,
    /// Whether the end-of-run hooks have been fired.
    #[serde(default)]
    pub end_hooks_fired: bool,
    /// Bumped each time a control re-opens the finished run (retry, skip, restart): part of
    /// the end hooks' job keys, so the run's next end fires them again.
    #[serde(default)]
    pub generation: u32,
    /// Every step of the spec, the `finally` step included, by name.
    pub steps: BTreeMap<String, StepRun>,
}

/// How a run is ending, decided before its `finally` step runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ending {
    pub status: RunStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
}

/// One step in one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRun {
    #[serde(rename = "state")]
    pub status: StepStatus,
    /// Bumped by each retry or restart of the step: part of its jobs' keys, so a new round
    /// never collides with the jobs of an old one.
    #[serde(default)]
    pub round: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<SkipCause>,
    /// When the step's first attempt of this round started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// `for_each` steps: the items, one per element. A plain step has one element and no
    /// items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Arc<Vec<Value>>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub elements: Vec<ElementRun>,
    /// The element's output, or for `for_each` the list of outputs in item order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Arc<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub before_hooks_fired: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub after_hooks_fired: bool,
}

/// One element of a step: the step itself, or one `for_each` item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ElementRun {
    #[serde(rename = "state")]
    pub status: ElementStatus,
    /// The rendered input its attempts run with.
    #[serde(default, skip_serializing_if = "is_null")]
    pub input: Arc<Value>,
    /// The rendered input files its attempts run with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Arc<Value>>,
}

/// One try of an element.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// 1-based within the element's round.
    pub number: u32,
    /// The idempotency key of the attempt's job.
    pub job_key: String,
    pub started_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
}

impl RunState {
    /// A new run of `spec`, every step waiting.
    pub fn new(spec: &WorkflowSpec, id: u64, input: Value, now_ms: u64) -> RunState {
        RunState {
            id,
            workflow: spec.name.clone(),
            workflow_version: spec.version,
            input: Arc::new(input),
            status: RunStatus::Running,
            started_at_ms: now_ms,
            finished_at_ms: None,
            ending: None,
            end_hooks_fired: false,
            generation: 0,
            steps: spec
                .all_steps()
                .map(|s| (s.name.clone(), StepRun::new(0)))
                .collect(),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.status != RunStatus::Running
    }

    /// The run's duration, once it is finished.
    pub fn duration_ms(&self) -> Option<u64> {
        self.finished_at_ms
            .map(|end| end.saturating_sub(self.started_at_ms))
    }
}

impl StepRun {
    pub fn new(round: u32) -> StepRun {
        StepRun {
            status: StepStatus::Waiting,
            round,
            skip: None,
            started_at_ms: None,
            finished_at_ms: None,
            items: None,
            elements: Vec::new(),
            output: None,
            error: None,
            before_hooks_fired: false,
            after_hooks_fired: false,
        }
    }

    /// Succeeded, failed, skipped or cancelled.
    pub fn is_done(&self) -> bool {
        !matches!(self.status, StepStatus::Waiting | StepStatus::Running)
    }

    /// Attempts in all, over every element of this round.
    pub fn attempt_count(&self) -> usize {
        self.elements.iter().map(|e| e.attempts.len()).sum()
    }
}

impl ElementRun {
    pub(crate) fn new() -> ElementRun {
        ElementRun {
            status: ElementStatus::Waiting,
            input: Arc::new(Value::Null),
            files: Vec::new(),
            attempts: Vec::new(),
            output: None,
        }
    }

    /// The attempt running now, if any.
    pub fn live_attempt(&self) -> Option<&AttemptRecord> {
        self.attempts
            .last()
            .filter(|a| self.status == ElementStatus::Running && a.finished_at_ms.is_none())
    }
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Aborted => "aborted",
        }
    }
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Waiting => "waiting",
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl StepError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> StepError {
        StepError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// The idempotency key of an attempt's job: the same run, step, round, element and attempt
/// always give the same key, so a new leader that proposes a start again creates no second
/// job.
pub fn job_key(run: u64, step: &str, round: u32, element: usize, attempt: u32) -> String {
    JobKey {
        run,
        step: step.to_string(),
        round,
        element,
        attempt,
    }
    .to_string()
}

/// An attempt's job key, read back: which run, step and element a finished job belongs to.
/// Written `run:{run}:{step}:{round}:{element}:{attempt}`; step names have no `:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobKey {
    pub run: u64,
    pub step: String,
    pub round: u32,
    pub element: usize,
    pub attempt: u32,
}

impl JobKey {
    /// The parts of an attempt's job key; `None` for any other key (a hook's, a plain job's).
    pub fn parse(key: &str) -> Option<JobKey> {
        let mut parts = key.split(':');
        if parts.next()? != "run" {
            return None;
        }
        let run = parts.next()?.parse().ok()?;
        let step = parts.next()?.to_string();
        let round = parts.next()?.parse().ok()?;
        let element = parts.next()?.parse().ok()?;
        let attempt = parts.next()?.parse().ok()?;
        if parts.next().is_some() || step.is_empty() {
            return None;
        }
        Some(JobKey {
            run,
            step,
            round,
            element,
            attempt,
        })
    }
}

impl fmt::Display for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let JobKey {
            run,
            step,
            round,
            element,
            attempt,
        } = self;
        write!(f, "run:{run}:{step}:{round}:{element}:{attempt}")
    }
}

/// A run as people and clients see it (`runs get --json`): the run, then its steps in the
/// spec's order, the `finally` step last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: u64,
    pub workflow: String,
    pub version: u32,
    /// `running` until the run finishes (its `finally` step included).
    pub state: RunStatus,
    pub started_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// Why the run failed or was aborted, once that is decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
    pub steps: Vec<StepSummary>,
}

/// One step of a [`RunSummary`]: its name, then its state as the run holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepSummary {
    pub name: String,
    #[serde(flatten)]
    pub step: StepRun,
}

fn is_false(b: &bool) -> bool {
    !b
}

fn is_null(value: &Arc<Value>) -> bool {
    value.is_null()
}

impl RunState {
    /// What every event of this run carries: `run`, `workflow`, `version`, `generation`
    /// (a hook's body, a run event on the alert webhook).
    pub fn run_event(&self) -> Value {
        serde_json::json!({
            "run": self.id,
            "workflow": self.workflow,
            "version": self.workflow_version,
            "generation": self.generation,
        })
    }

    /// A step's event (`step_started`, `step_finished`): the run's fields, the step, its
    /// round, its state and its error if it has one.
    pub fn step_event(&self, kind: &str, step: &str) -> Value {
        let mut event = self.run_event();
        event["event"] = serde_json::json!(kind);
        event["step"] = serde_json::json!(step);
        if let Some(s) = self.steps.get(step) {
            event["round"] = serde_json::json!(s.round);
            event["state"] = serde_json::json!(s.status.as_str());
            if let Some(error) = &s.error {
                event["error"] = serde_json::json!({"code": error.code, "message": error.message});
            }
        }
        event
    }

    /// The run's end as an event (`run_finished`): the run's fields, its state and, failed
    /// or aborted, its error.
    pub fn finish_event(&self) -> Value {
        let mut event = self.run_event();
        event["event"] = serde_json::json!("run_finished");
        event["state"] = serde_json::json!(self.status.as_str());
        if let (Some(error), RunStatus::Failed | RunStatus::Aborted) = (
            self.ending.as_ref().and_then(|e| e.error.as_ref()),
            self.status,
        ) {
            event["error"] = serde_json::json!({"code": error.code, "message": error.message});
        }
        event
    }

    /// The run with its steps in `spec`'s order.
    pub fn summary(&self, spec: &WorkflowSpec) -> RunSummary {
        let steps = spec
            .all_steps()
            .filter_map(|step| {
                let s = self.steps.get(&step.name)?;
                Some(StepSummary {
                    name: step.name.clone(),
                    step: s.clone(),
                })
            })
            .collect();
        RunSummary {
            id: self.id,
            workflow: self.workflow.clone(),
            version: self.workflow_version,
            state: self.status,
            started_at_ms: self.started_at_ms,
            finished_at_ms: self.finished_at_ms,
            error: self.ending.as_ref().and_then(|e| e.error.clone()),
            steps,
        }
    }
}

//! Workflows as data: a DAG of steps deployed from TOML ([`WorkflowSpec`]), checked whole at
//! deploy time ([`validate`]), and run by a pure function, [`advance`], that says what to do
//! next in a run ([`RunState`]) as [`RunCommand`]s. No IO, no clock, no randomness: time comes
//! in as `now_ms`, retry jitter is derived from the run, and the same arguments always give
//! the same commands, so every replica of the log agrees.
//!
//! # The life of a run, step by step
//!
//! 1. The caller creates a [`RunState`] with [`RunState::new`]: every step `waiting`.
//! 2. It calls [`advance`] and puts the commands in its log; every replica [`apply`]s them
//!    in order with the same `now_ms`. A [`RunCommand::StartAttempt`] asks for a job (the
//!    function, the rendered input, a deterministic idempotency key), a
//!    [`RunCommand::CancelAttempt`] for a job's cancellation, a [`RunCommand::FireHook`] for
//!    a hook's delivery.
//! 3. When a job ends, the caller records it with [`record_attempt`] (only the live attempt
//!    is taken: fencing) and calls [`advance`] again; also at [`Advance::wake_at_ms`] (a
//!    retry's back-off, a step or run time-out) and after each [`control`].
//! 4. A waiting step whose needs are done (succeeded or skipped) is skipped if a need was
//!    skipped by a condition and it has no `if` of its own, or if its `if` is false; else it
//!    starts with one element, or one per `for_each` item. Elements start up to the step's
//!    `concurrency`, in order.
//! 5. A failed attempt is retried after its back-off if the step's policy retries its code;
//!    otherwise the element, and so the step, fails. A step that runs over its `timeout_ms`
//!    fails with `timeout`. A step whose elements all succeeded gets its output (the list of
//!    outputs, in item order, for `for_each`).
//! 6. A failed step fails the run; every step done succeeds it; the run's `timeout_ms` or an
//!    abort ends it. Either way the run's outcome is decided ([`RunState::ending`]): steps
//!    still running are cancelled, then the `finally` step runs, then the end hooks fire and
//!    the run finishes (`succeeded`, `failed` or `aborted`; a succeeded run whose `finally`
//!    step failed is `failed`).

mod advance;
mod command;
mod control;
mod error;
mod retry;
mod run;
mod schema;
mod scope;
mod spec;
mod stats;
mod template;
mod validate;

pub use advance::{advance, Advance, ADVANCE_PASSES_MAX, RENDERED_INPUT_BYTES_MAX};
pub use command::{apply, record_attempt, HookCall, HookStage, HookTarget, Recorded, RunCommand};
pub use control::{control, Control};
pub use error::{Code, Error, SpecErrors};
pub use retry::jitter_seed;
pub use run::{
    job_key, AttemptRecord, ElementRun, ElementStatus, Ending, JobKey, RunState, RunStatus,
    RunSummary, SkipCause, StepError, StepRun, StepStatus, StepSummary,
};
pub use schema::{check_input, schema_mismatches};
pub use spec::*;
pub use stats::{stats, DurationStats, StepStats, WorkflowStats};
pub use template::{truthy, Condition, Path, Segment, Template, EXPR_DEPTH_MAX, PATH_SEGMENTS_MAX};
pub use validate::{deploy, validate, DESCRIPTION_LEN_MAX};

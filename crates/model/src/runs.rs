//! Workflows and their runs in the replicated state: deploying a spec, starting a run,
//! applying what the leader's `workflow::advance` decided, operators' controls, and feeding a
//! finished job's result to its run.
//!
//! The decisions (`workflow::RunCommand`s) are computed by the leader and logged, not computed
//! here: replaying the log gives the same runs even after `advance` itself changes. What is
//! done here is only what must happen in the same entry as a decision or a result:
//!
//! 1. a `StartAttempt` that the run takes submits its job, with the command's job key as the
//!    idempotency key and a [`RunLink`] back to the element; a job that cannot be created
//!    (its function is gone, its input too large) is recorded as a failed attempt at once;
//! 2. a `CancelAttempt` cancels the job of that key; a function hook submits its job;
//! 3. when a linked job ends (succeeded, failed or cancelled), its result is recorded in the
//!    run (`workflow::record_attempt`, fenced by the job key) in the entry that ends it. So a
//!    result can never be lost between the job's end and the run: there is no window in
//!    which a leader change could drop it.
//!
//! Every change bumps the run's `revision`, which the leader's driver uses to pass over runs
//! that have not changed since it last advanced them, and which fences a continuation: a
//! decision taken ahead by the node proposing the entry (see [`Continuation`]), applied in
//! that entry only if the run is exactly as that node saw it.
//!
//! A URL hook is not posted here (applying does no IO): firing one puts it in the pending
//! hooks, numbered in log order, and the leader's `node::hooks` posts them and logs what was
//! taken or given up (`HooksDone`). While an alert webhook is set, a run's start, each step's
//! end and the run's end are also recorded as events (`run_started`, `step_finished`,
//! `run_finished`), which the alert webhook posts in order with the others.

use crate::command::{Continuation, JobSpec, Response, SubmitResult};
use crate::ids::NodeId;
use crate::job::{JobState, RunLink};
use crate::state::State;
use crate::{ApiError, ErrorCode, EventKind, JobId, NewEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use workflow::{HookTarget, RunCommand, RunState, RunStatus, StepError, WorkflowSpec};

/// Largest run input, as serialized JSON (the same as a job's).
pub const RUN_INPUT_BYTES_MAX: usize = crate::INPUT_BYTES_MAX;
/// Runs one list call returns at most.
pub const RUNS_LIST_MAX: usize = 1_000;
/// Longest idempotency key of a run.
const RUN_KEY_LEN_MAX: usize = 256;
/// URL hooks waiting to be posted at most; a hook fired while this many wait is given up at
/// once (a `hook_failed` event), so a dead receiver cannot grow the state without bound.
pub const HOOKS_PENDING_MAX: usize = 10_000;
/// Longest error text kept of a hook given up.
const HOOK_ERROR_LEN_MAX: usize = 512;

/// A URL hook fired by a run and not yet taken by its receiver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingHook {
    /// Numbered in log order from 1: the receiver's `x-chorus-hook-id`, to drop repeats.
    pub seq: u64,
    pub at_ms: u64,
    pub run: u64,
    pub url: String,
    /// The body: the hook's event (see the `workflow` crate's README, "Hooks").
    pub event: serde_json::Value,
}

/// A URL hook the leader gave up on, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailedHook {
    pub seq: u64,
    pub error: String,
}

/// A run as the registry holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub state: RunState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Bumped by every change to the run (a decision, a result, a control).
    #[serde(default)]
    pub revision: u64,
}

/// Which runs a list call wants.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub workflow: Option<String>,
    pub state: Option<RunStatus>,
}

/// A workflow error (a spec's or a control's) as the API answers it: the field path is in
/// the message (`invalid_input: steps[2].needs[0]: ...`).
pub fn workflow_error(e: &workflow::Error) -> ApiError {
    let code = match e.code {
        workflow::Code::InvalidInput => ErrorCode::InvalidInput,
        workflow::Code::TooLarge => ErrorCode::TooLarge,
        workflow::Code::NotFound => ErrorCode::NotFound,
        workflow::Code::Conflict => ErrorCode::Conflict,
        workflow::Code::SchemaMismatch => ErrorCode::SchemaMismatch,
    };
    ApiError::new(code, e.to_string())
}

impl State {
    // --- reads ---

    /// The latest version of a workflow.
    pub fn workflow(&self, name: &str) -> Option<&WorkflowSpec> {
        self.workflows
            .get(name)
            .and_then(|versions| versions.last())
    }

    /// One version of a workflow.
    pub fn workflow_version(&self, name: &str, version: u32) -> Option<&WorkflowSpec> {
        version_of(&self.workflows, name, version)
    }

    /// The latest version of every workflow, by name.
    pub fn workflows(&self) -> impl Iterator<Item = &WorkflowSpec> {
        self.workflows
            .values()
            .filter_map(|versions| versions.last())
    }

    pub fn run(&self, id: u64) -> Option<&Run> {
        self.runs.get(&id).map(|run| &**run)
    }

    /// The spec version a run follows.
    pub fn run_spec(&self, run: &RunState) -> Option<&WorkflowSpec> {
        self.workflow_version(&run.workflow, run.workflow_version)
    }

    pub fn run_by_idempotency_key(&self, key: &str) -> Option<u64> {
        self.run_keys.get(key).copied()
    }

    /// Runs matching `filter`, newest first, at most `limit` (and [`RUNS_LIST_MAX`]).
    pub fn runs(&self, filter: &RunFilter, limit: usize) -> Vec<&Run> {
        self.runs
            .values()
            .rev()
            .filter(|r| {
                filter
                    .workflow
                    .as_ref()
                    .is_none_or(|w| *w == r.state.workflow)
            })
            .filter(|r| filter.state.is_none_or(|s| s == r.state.status))
            .take(limit.min(RUNS_LIST_MAX))
            .map(|r| &**r)
            .collect()
    }

    /// Every run of `workflow`, oldest first (for statistics: no limit).
    pub fn runs_of<'s>(&'s self, workflow: &'s str) -> impl Iterator<Item = &'s Run> + 's {
        self.runs
            .values()
            .filter(move |r| r.state.workflow == workflow)
            .map(|r| &**r)
    }

    /// URL hooks waiting to be posted, oldest first.
    pub fn pending_hooks(&self) -> impl Iterator<Item = &PendingHook> {
        self.hooks_pending.values()
    }

    /// Runs that are not finished, with their revision: what the leader's driver advances.
    pub fn running_runs(&self) -> impl Iterator<Item = &Run> {
        self.live_runs.iter().map(|id| &*self.runs[id])
    }

    /// Finished runs that finished before `finished_before_ms`, lowest id first, at most
    /// `limit`: what a retention sweep may purge.
    pub fn expired_runs(&self, finished_before_ms: u64, limit: usize) -> Vec<u64> {
        self.runs
            .values()
            .filter(|r| run_expired(r, finished_before_ms))
            .map(|r| r.state.id)
            .take(limit)
            .collect()
    }

    /// Checks a run start against the limits; the node runs the same check before proposing.
    pub fn check_run_start(
        &self,
        workflow: &str,
        input: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> Result<(), ApiError> {
        if self.workflow(workflow).is_none() {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no workflow {workflow:?}"),
            ));
        }
        let input_len = serde_json::to_vec(input).map_or(usize::MAX, |v| v.len());
        if input_len > RUN_INPUT_BYTES_MAX {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!("input is {input_len} bytes; the limit is {RUN_INPUT_BYTES_MAX}"),
            ));
        }
        if idempotency_key.is_some_and(|k| k.is_empty() || k.len() > RUN_KEY_LEN_MAX) {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!("idempotency key must be 1 to {RUN_KEY_LEN_MAX} bytes"),
            ));
        }
        let spec = self.workflow(workflow).expect("checked above");
        workflow::check_input(spec, input).map_err(|e| workflow_error(&e))
    }

    // --- transitions (called from `State::apply`) ---

    pub(crate) fn deploy_workflow(&mut self, mut spec: WorkflowSpec) -> Response {
        let versions = self.workflows.entry(spec.name.clone()).or_default();
        let latest = versions.last().map_or(0, |w| w.version);
        spec.version = latest;
        if versions.last() == Some(&spec) {
            return Response::Deployed { version: latest };
        }
        spec.version = latest + 1;
        versions.push(spec);
        Response::Deployed {
            version: latest + 1,
        }
    }

    pub(crate) fn start_run(
        &mut self,
        now_ms: u64,
        workflow: String,
        input: serde_json::Value,
        idempotency_key: Option<String>,
    ) -> Response {
        if let Some(run) = idempotency_key
            .as_deref()
            .and_then(|k| self.run_keys.get(k))
        {
            return Response::RunStarted {
                run: *run,
                existing: true,
            };
        }
        if let Err(e) = self.check_run_start(&workflow, &input, idempotency_key.as_deref()) {
            return Response::Rejected(e);
        }
        let id = self.next_run_id + 1;
        let spec = self.workflow(&workflow).expect("checked above");
        let state = RunState::new(spec, id, input, now_ms);
        self.next_run_id = id;
        if let Some(key) = &idempotency_key {
            self.run_keys.insert(key.clone(), id);
        }
        let run = Run {
            state,
            idempotency_key,
            revision: 1,
        };
        self.runs.insert(id, Arc::new(run));
        self.index_run(id);
        if self.follows_runs() {
            let run = &self.runs[&id].state;
            let mut event = run.run_event();
            event["event"] = serde_json::json!("run_started");
            let message = format!("run {id} of {} started", run.workflow);
            self.record_run_event(now_ms, EventKind::RunStarted, message, event);
        }
        Response::RunStarted {
            run: id,
            existing: false,
        }
    }

    /// Applies a run's decisions; `place` (a continuation's proposer) is where the jobs they
    /// create may start at once (see [`State::continues_on`]).
    pub(crate) fn run_commands(
        &mut self,
        now_ms: u64,
        id: u64,
        commands: Vec<RunCommand>,
        place: Option<NodeId>,
    ) -> Response {
        if !self.runs.contains_key(&id) {
            return Response::Rejected(ApiError::new(ErrorCode::NotFound, format!("no run {id}")));
        }
        let follows = self.follows_runs();
        for command in commands {
            let run = self.run_mut(id).expect("checked above");
            let before = follows.then(|| ended(&run.state, &command)).flatten();
            let was_finished = run.state.is_finished();
            workflow::apply(&mut run.state, &command, now_ms);
            run.revision += 1;
            if !was_finished && run.state.is_finished() {
                self.emit_run_end(now_ms, id);
            }
            if let Some(before) = before {
                self.record_ending(now_ms, id, &before);
            }
            let run = self.run_mut(id).expect("checked above");
            match command {
                RunCommand::StartAttempt {
                    step,
                    element,
                    function,
                    input,
                    files,
                    job_key,
                    ..
                } => {
                    let taken = run
                        .state
                        .steps
                        .get(&step)
                        .and_then(|s| s.elements.get(element))
                        .and_then(|e| e.live_attempt())
                        .is_some_and(|a| a.job_key == job_key);
                    if taken {
                        let link = RunLink {
                            run: id,
                            step,
                            element,
                        };
                        let spec = JobSpec {
                            files,
                            ..job_spec(function, input, job_key)
                        };
                        let created = self.submit_attempt_job(now_ms, spec, link);
                        if let (Some(job), Some(node)) = (created, place) {
                            if self.continues_on(node, job, now_ms) {
                                self.start(now_ms, node, vec![job]);
                            }
                        }
                    }
                }
                RunCommand::CancelAttempt { job_key, .. } => {
                    if let Some(job) = self.job_by_idempotency_key(&job_key) {
                        self.cancel_job(now_ms, job);
                    }
                }
                RunCommand::FireHook(call) => match call.target {
                    HookTarget::Function {
                        function,
                        input,
                        job_key,
                    } => {
                        // A hook notifies, it never holds the run back: a hook job that cannot
                        // be created (its function is gone) is passed over.
                        let spec = job_spec(function, input, job_key);
                        let _ = self.submit_job(now_ms, spec, None);
                    }
                    HookTarget::Post { url } => self.queue_hook(now_ms, id, url, call.event),
                },
                _ => {}
            }
        }
        self.index_run(id);
        Response::Done
    }

    /// Submits the job of an attempt the run has taken. If the job cannot be created, or its
    /// key names a job that has already ended, that is the attempt's result at once. Returns
    /// the job it created.
    fn submit_attempt_job(&mut self, now_ms: u64, spec: JobSpec, link: RunLink) -> Option<JobId> {
        let job_key = spec.idempotency_key.clone().unwrap_or_default();
        match self.submit_job(now_ms, spec, Some(link.clone())) {
            SubmitResult::Created(job) => return Some(job),
            SubmitResult::Existing(job) => {
                if self.job(job).is_some_and(|j| j.state.is_terminal()) {
                    self.record_job_end(now_ms, job);
                }
            }
            SubmitResult::Rejected(e) => {
                let error = StepError::new(e.code.as_str(), e.message);
                self.record_in_run(now_ms, &link, &job_key, Err(error));
            }
        }
        None
    }

    /// Records the end of job `id` in its run, if it belongs to one. Called in the entry that
    /// ends the job.
    pub(crate) fn record_job_end(&mut self, now_ms: u64, id: JobId) {
        self.emit_job_end(now_ms, id);
        let Some(job) = self.job(id) else { return };
        let (Some(link), Some(key)) = (job.run.clone(), job.idempotency_key.clone()) else {
            return;
        };
        let Some(outcome) = run_outcome(job) else {
            return;
        };
        self.record_in_run(now_ms, &link, &key, outcome);
    }

    /// Applies `command`, then each continuation whose run is exactly as its proposer foresaw
    /// it (see [`Continuation`]); the others are dropped and the driver decides instead.
    pub(crate) fn continued(
        &mut self,
        command: crate::Command,
        then: Vec<Continuation>,
    ) -> Response {
        let revision = |s: &State, run: u64| s.runs.get(&run).map_or(0, |r| r.revision);
        let before: Vec<u64> = then.iter().map(|c| revision(self, c.run)).collect();
        let response = self.apply(command);
        // The entry's clock, as its command moved it.
        let now_ms = self.clock_ms;
        for (c, from) in then.into_iter().zip(before) {
            let foreseen = from == c.from
                && self.runs.get(&c.run).is_some_and(|r| {
                    r.revision == c.to
                        && r.state.workflow_version == c.version
                        && !r.state.is_finished()
                });
            if foreseen {
                self.run_commands(now_ms, c.run, c.commands, c.place);
            }
        }
        response
    }

    /// The continuations of a `FinishAttempts` of `results` that `node` is about to propose:
    /// for each run whose job these results end, the run's next decision once they are
    /// recorded. Foreseen on a copy of each job and run, with the state machine's own
    /// [`settle`](crate::state::settle) and `workflow::record_attempt`, then the pure
    /// `workflow::advance`, so a continuation that passes its revision fence is exactly what
    /// the driver would decide.
    pub fn foresee_finish(
        &self,
        results: &[crate::AttemptResult],
        now_ms: u64,
        node: Option<NodeId>,
    ) -> Vec<Continuation> {
        let mut jobs: BTreeMap<JobId, crate::Job> = BTreeMap::new();
        // Per run: the copy, its revision before, its revision after.
        let mut runs: BTreeMap<u64, (RunState, u64, u64)> = BTreeMap::new();
        for result in results {
            let Some(job) = jobs
                .remove(&result.job)
                .or_else(|| self.job(result.job).filter(|j| j.run.is_some()).cloned())
            else {
                continue;
            };
            let mut job = job;
            if !job.live_attempts().any(|a| a.id == result.attempt) {
                jobs.insert(job.id, job);
                continue;
            }
            let f = self.function(&job.function);
            let retry = f.map(|f| f.retry.clone()).unwrap_or_default();
            let keep_all = f.is_some_and(crate::FunctionSpec::keeps_all_attempts);
            crate::state::settle(&mut job, result.clone(), &retry, keep_all, now_ms);
            if let (Some(link), Some(key), Some(outcome)) = (
                job.run.clone(),
                job.idempotency_key.clone(),
                run_outcome(&job),
            ) {
                if let Some(run) = self.runs.get(&link.run) {
                    let entry = runs
                        .entry(link.run)
                        .or_insert_with(|| (run.state.clone(), run.revision, run.revision));
                    if let Some(spec) = self.run_spec(&entry.0) {
                        let recorded = workflow::record_attempt(
                            spec,
                            &mut entry.0,
                            &link.step,
                            link.element,
                            &key,
                            outcome,
                            now_ms,
                        );
                        if recorded == workflow::Recorded::Taken {
                            entry.2 += 1;
                        }
                    }
                }
            }
            jobs.insert(job.id, job);
        }
        runs.into_iter()
            .filter(|(_, (_, from, to))| to > from)
            .filter_map(|(id, (state, from, to))| {
                let spec = self.run_spec(&state)?;
                let advance = workflow::advance(spec, &state, now_ms);
                (!advance.commands.is_empty()).then_some(Continuation {
                    run: id,
                    version: state.workflow_version,
                    from,
                    to,
                    commands: advance.commands,
                    place: node,
                })
            })
            .collect()
    }

    /// The continuation of a `StartRun` of `workflow` that `node` is about to propose: the new
    /// run's first decision, foreseen for the id the run will get if `ahead` runs are created
    /// before it (0: it is the next; more for the later starts of one entry). A start that
    /// another start overtakes gets another id, and its continuation is dropped.
    pub fn foresee_start(
        &self,
        workflow: &str,
        input: &serde_json::Value,
        now_ms: u64,
        ahead: u64,
        node: Option<NodeId>,
    ) -> Option<Continuation> {
        let spec = self.workflow(workflow)?;
        let id = self.next_run_id + 1 + ahead;
        let state = RunState::new(spec, id, input.clone(), now_ms);
        let advance = workflow::advance(spec, &state, now_ms);
        (!advance.commands.is_empty()).then_some(Continuation {
            run: id,
            version: spec.version,
            from: 0,
            to: 1,
            commands: advance.commands,
            place: node,
        })
    }

    fn record_in_run(
        &mut self,
        now_ms: u64,
        link: &RunLink,
        job_key: &str,
        outcome: Result<serde_json::Value, StepError>,
    ) {
        // The spec and the run are borrowed from their own fields, so that recording a job's
        // end copies no spec (it did for every element of a fan-out).
        let Some(run) = self.runs.get_mut(&link.run).map(Arc::make_mut) else {
            return;
        };
        let Some(spec) = version_of(
            &self.workflows,
            &run.state.workflow,
            run.state.workflow_version,
        ) else {
            return;
        };
        let recorded = workflow::record_attempt(
            spec,
            &mut run.state,
            &link.step,
            link.element,
            job_key,
            outcome,
            now_ms,
        );
        if recorded == workflow::Recorded::Taken {
            run.revision += 1;
        }
        self.index_run(link.run);
    }

    pub(crate) fn control_run(
        &mut self,
        now_ms: u64,
        id: u64,
        control: workflow::Control,
    ) -> Response {
        let Some(run) = self.runs.get(&id) else {
            return Response::Rejected(ApiError::new(ErrorCode::NotFound, format!("no run {id}")));
        };
        let Some(spec) = self.run_spec(&run.state).cloned() else {
            return Response::Rejected(ApiError::new(
                ErrorCode::Internal,
                format!("run {id} follows a workflow version that is gone"),
            ));
        };
        // `control` is all or nothing: on an error the run is as it was.
        let mut state = run.state.clone();
        match workflow::control(&spec, &mut state, &control, now_ms) {
            Ok(()) => {
                let skipped: Vec<String> = if self.follows_runs() {
                    let old = &run.state;
                    spec.all_steps()
                        .map(|step| step.name.as_str())
                        .filter(|name| {
                            let done =
                                |r: &RunState| r.steps.get(*name).is_some_and(|s| s.is_done());
                            !done(old) && done(&state)
                        })
                        .map(str::to_string)
                        .collect()
                } else {
                    Vec::new()
                };
                let run = self.run_mut(id).expect("checked above");
                let was_finished = run.state.is_finished();
                run.state = state;
                run.revision += 1;
                if !was_finished && run.state.is_finished() {
                    self.emit_run_end(now_ms, id);
                }
                for step in skipped {
                    self.record_ending(now_ms, id, &Ending::Step(step));
                }
                self.index_run(id);
                Response::Done
            }
            Err(e) => Response::Rejected(workflow_error(&e)),
        }
    }

    pub(crate) fn purge_runs(&mut self, finished_before_ms: u64, runs: Vec<u64>) -> Response {
        let mut purged = 0;
        for id in runs {
            if self
                .runs
                .get(&id)
                .is_some_and(|r| run_expired(r, finished_before_ms))
            {
                let run = self.runs.remove(&id).expect("checked above");
                self.live_runs.remove(&id);
                if let Some(key) = &run.idempotency_key {
                    self.run_keys.remove(key);
                }
                purged += 1;
            }
        }
        Response::Purged { jobs: purged }
    }

    /// Whether runs are followed as events: only while an alert webhook is set, so that a
    /// busy cluster's event ring is not filled with runs nobody follows.
    fn follows_runs(&self) -> bool {
        self.config().settings().webhook.is_some()
    }

    /// Records `step_finished` or `run_finished` if what `ending` names has ended.
    fn record_ending(&mut self, now_ms: u64, id: u64, ending: &Ending) {
        let Some(run) = self.runs.get(&id).map(|r| &r.state) else {
            return;
        };
        let (kind, message, event) = match ending {
            Ending::Step(step) => {
                let Some(s) = run.steps.get(step).filter(|s| s.is_done()) else {
                    return;
                };
                let message = format!(
                    "run {id} of {}: step {step:?} {}",
                    run.workflow,
                    s.status.as_str()
                );
                let event = run.step_event("step_finished", step);
                (EventKind::StepFinished, message, event)
            }
            Ending::Run => {
                if !run.is_finished() {
                    return;
                }
                let message = format!("run {id} of {} {}", run.workflow, run.status.as_str());
                (EventKind::RunFinished, message, run.finish_event())
            }
        };
        self.record_run_event(now_ms, kind, message, event);
    }

    fn record_run_event(
        &mut self,
        now_ms: u64,
        kind: EventKind,
        message: String,
        event: serde_json::Value,
    ) {
        let new = NewEvent {
            kind,
            node: None,
            message,
        };
        self.record_event(now_ms, new, Some(event));
    }

    /// Puts a fired URL hook in the queue the leader posts from.
    fn queue_hook(&mut self, now_ms: u64, run: u64, url: String, event: serde_json::Value) {
        if self.hooks_pending.len() >= HOOKS_PENDING_MAX {
            let message = format!(
                "a hook of run {run} to {} was dropped: {HOOKS_PENDING_MAX} hooks wait already",
                host_of(&url)
            );
            let new = NewEvent {
                kind: EventKind::HookFailed,
                node: None,
                message,
            };
            self.record_event(now_ms, new, None);
            return;
        }
        self.next_hook_seq += 1;
        let seq = self.next_hook_seq;
        let hook = PendingHook {
            seq,
            at_ms: now_ms,
            run,
            url,
            event,
        };
        self.hooks_pending.insert(seq, hook);
    }

    /// The leader's posts: taken hooks leave the queue, given-up ones too, as events.
    pub(crate) fn hooks_done(
        &mut self,
        now_ms: u64,
        delivered: Vec<u64>,
        failed: Vec<FailedHook>,
    ) -> Response {
        for seq in delivered {
            self.hooks_pending.remove(&seq);
        }
        for FailedHook { seq, error } in failed {
            let Some(hook) = self.hooks_pending.remove(&seq) else {
                continue;
            };
            let mut error = error;
            if error.len() > HOOK_ERROR_LEN_MAX {
                let mut end = HOOK_ERROR_LEN_MAX;
                while !error.is_char_boundary(end) {
                    end -= 1;
                }
                error.truncate(end);
            }
            let what = hook.event["event"].as_str().unwrap_or("event").to_string();
            let message = format!(
                "the {what} hook of run {} to {} was given up: {error}",
                hook.run,
                host_of(&hook.url)
            );
            let new = NewEvent {
                kind: EventKind::HookFailed,
                node: None,
                message,
            };
            self.record_event(now_ms, new, None);
        }
        Response::Done
    }

    fn run_mut(&mut self, id: u64) -> Option<&mut Run> {
        self.runs.get_mut(&id).map(Arc::make_mut)
    }

    /// Keeps [`State::running_runs`]' index in step with a run that may have changed.
    fn index_run(&mut self, id: u64) {
        match self.runs.get(&id) {
            Some(run) if !run.state.is_finished() => self.live_runs.insert(id),
            _ => self.live_runs.remove(&id),
        };
    }
}

/// Version `version` of workflow `name` among `workflows` (a free function, so that a caller
/// holding a run mutably can look up its spec).
fn version_of<'w>(
    workflows: &'w BTreeMap<String, Vec<WorkflowSpec>>,
    name: &str,
    version: u32,
) -> Option<&'w WorkflowSpec> {
    workflows.get(name)?.iter().find(|w| w.version == version)
}

/// What a run command may end: a step or the run.
enum Ending {
    Step(String),
    Run,
}

/// What `command` may end in `run`, if it is not ended already (so applying it and finding
/// it ended means the command ended it).
fn ended(run: &RunState, command: &RunCommand) -> Option<Ending> {
    match command {
        RunCommand::FinishStep { step, .. }
        | RunCommand::SkipStep { step, .. }
        | RunCommand::FailStep { step, .. }
        | RunCommand::CancelStep { step } => {
            let open = run.steps.get(step).is_some_and(|s| !s.is_done());
            open.then(|| Ending::Step(step.clone()))
        }
        RunCommand::FinishRun { .. } => (!run.is_finished()).then_some(Ending::Run),
        _ => None,
    }
}

/// The host of a URL, for messages: hook URLs often carry a token in their path.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.rsplit('@').next().unwrap_or_default()
}

fn run_expired(run: &Run, finished_before_ms: u64) -> bool {
    run.state.is_finished()
        && run
            .state
            .finished_at_ms
            .is_some_and(|t| t < finished_before_ms)
}

fn job_spec(function: String, input: serde_json::Value, job_key: String) -> JobSpec {
    JobSpec {
        function,
        input,
        files: Vec::new(),
        priority: 0,
        idempotency_key: Some(job_key),
    }
}

/// What a run records of its job's end: the output, or the error; `None` while the job may
/// still run (queued again, or attempts still live).
fn run_outcome(job: &crate::Job) -> Option<Result<serde_json::Value, StepError>> {
    Some(match (job.state, &job.output, &job.error) {
        (JobState::Succeeded, Some(output), _) => Ok(output.clone()),
        (JobState::Succeeded, None, _) => Ok(serde_json::Value::Null),
        (JobState::Failed | JobState::Cancelled, _, Some(e)) => {
            Err(StepError::new(e.code.clone(), e.message.clone()))
        }
        (JobState::Failed | JobState::Cancelled, _, None) => Err(StepError::new(
            job.state.as_str(),
            format!("job {} ended {}", job.id, job.state.as_str()),
        )),
        (JobState::Queued | JobState::Running, ..) => return None,
    })
}

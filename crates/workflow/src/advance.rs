//! Step advancement: given a spec, a run and the time, what happens next. Pure and total:
//! the same arguments give the same commands, and no run, however odd, makes it panic.
//!
//! [`advance`] works on a copy of the run: it decides, applies each decision to the copy
//! with [`apply`] (so a later decision sees an earlier one: a skip propagates down a chain in
//! one call), and repeats until nothing more happens now. The commands it returns, applied
//! in order to the caller's run, give the same run as the copy.

use serde_json::{json, Value};

use crate::command::{apply, HookCall, HookStage, HookTarget, RunCommand};
use crate::retry::jitter_seed;
use crate::run::{job_key, ElementStatus, RunState, RunStatus, SkipCause, StepError, StepStatus};
use crate::scope::RunScope;
use crate::spec::{Hook, StepSpec, WorkflowSpec, FAN_OUT_MAX, FILES_PER_STEP_MAX, STEPS_MAX};
use crate::template::{type_name, Condition, Template};

/// Bytes of one rendered step input at most (the same as a job's input).
pub const RENDERED_INPUT_BYTES_MAX: usize = 256 * 1024;

/// Decision passes in one call at most. Every pass but the last changes the run, and a run
/// can change only so often before it has to wait for a result or for time to pass: each
/// step starts, ends and fires its hooks once.
pub const ADVANCE_PASSES_MAX: usize = 8 * STEPS_MAX + 16;

/// What to do now, and when to look again if nothing else happens.
#[derive(Clone, Debug, PartialEq)]
pub struct Advance {
    pub commands: Vec<RunCommand>,
    /// The earliest time a retry, a step time-out or the run time-out is due; call
    /// [`advance`] again then (or at the next result, whichever comes first).
    pub wake_at_ms: Option<u64>,
}

/// Decides what happens next in `run` at `now_ms`. See the crate README for the life of a
/// run step by step.
pub fn advance(spec: &WorkflowSpec, run: &RunState, now_ms: u64) -> Advance {
    let mut pass = Pass {
        spec,
        run: run.clone(),
        now_ms,
        commands: Vec::new(),
        wake_at_ms: None,
    };
    for _ in 0..ADVANCE_PASSES_MAX {
        let before = pass.commands.len();
        pass.wake_at_ms = None;
        pass.once();
        if pass.commands.len() == before {
            break;
        }
    }
    Advance {
        commands: pass.commands,
        wake_at_ms: pass.wake_at_ms,
    }
}

struct Pass<'s> {
    spec: &'s WorkflowSpec,
    /// The caller's run with every command so far applied.
    run: RunState,
    now_ms: u64,
    commands: Vec<RunCommand>,
    wake_at_ms: Option<u64>,
}

impl Pass<'_> {
    fn emit(&mut self, command: RunCommand) {
        apply(&mut self.run, &command, self.now_ms);
        self.commands.push(command);
    }

    fn wake(&mut self, at_ms: u64) {
        self.wake_at_ms = Some(self.wake_at_ms.map_or(at_ms, |w| w.min(at_ms)));
    }

    fn once(&mut self) {
        if self.run.is_finished() {
            return;
        }
        self.cancel_orphans();
        if self.run.ending.is_none() {
            self.run_timeout();
        }
        let spec = self.spec;
        if self.run.ending.is_none() {
            for step in &spec.steps {
                self.step(step);
            }
            self.after_hooks();
            self.decide_ending();
        } else {
            self.wind_down();
        }
    }

    /// Live attempts of a step that is done (failed, skipped by an operator, cancelled) are
    /// cancelled.
    fn cancel_orphans(&mut self) {
        let mut cancels = Vec::new();
        for (name, step) in &self.run.steps {
            if !step.is_done() {
                continue;
            }
            for (i, element) in step.elements.iter().enumerate() {
                if let Some(attempt) = element.live_attempt() {
                    cancels.push(RunCommand::CancelAttempt {
                        step: name.clone(),
                        element: i,
                        job_key: attempt.job_key.clone(),
                    });
                }
            }
        }
        for command in cancels {
            self.emit(command);
        }
    }

    fn run_timeout(&mut self) {
        let Some(timeout_ms) = self.spec.timeout_ms else {
            return;
        };
        let deadline = self.run.started_at_ms.saturating_add(timeout_ms);
        if self.now_ms >= deadline {
            self.emit(RunCommand::EndRun {
                status: RunStatus::Failed,
                error: Some(StepError::new(
                    "timeout",
                    format!("the run ran over its time-out of {timeout_ms} ms"),
                )),
            });
        } else {
            self.wake(deadline);
        }
    }

    fn step(&mut self, step: &StepSpec) {
        match self.run.steps.get(&step.name).map(|s| s.status) {
            Some(StepStatus::Waiting) => self.start_if_ready(step),
            Some(StepStatus::Running) => self.drive(step),
            _ => {}
        }
    }

    /// A waiting step whose needs are all done is skipped, failed (a bad condition or
    /// `for_each`) or started.
    fn start_if_ready(&mut self, step: &StepSpec) {
        let mut skipped_need = false;
        for need in &step.needs {
            match self.run.steps.get(need) {
                Some(s) if s.status == StepStatus::Succeeded => {}
                Some(s) if s.status == StepStatus::Skipped => {
                    skipped_need |= s.skip != Some(SkipCause::Operator);
                }
                // Not done yet; or failed or cancelled, and the run is ending.
                _ => return,
            }
        }
        if skipped_need && step.condition.is_none() {
            return self.emit(RunCommand::SkipStep {
                step: step.name.clone(),
                cause: SkipCause::Need,
            });
        }
        let scope = RunScope::new(&self.run);
        if let Some(condition) = &step.condition {
            match Condition::parse(condition)
                .map_err(|e| e.message)
                .and_then(|c| c.holds(&scope))
            {
                Ok(true) => {}
                Ok(false) => {
                    return self.emit(RunCommand::SkipStep {
                        step: step.name.clone(),
                        cause: SkipCause::Condition,
                    })
                }
                Err(e) => return self.fail(step, "invalid_input", format!("`if`: {e}")),
            }
        }
        let items = match &step.for_each {
            None => None,
            Some(for_each) => match Template::parse(for_each)
                .map_err(|e| e.message)
                .and_then(|t| t.render(&scope))
            {
                Ok(Value::Array(items)) if items.len() > FAN_OUT_MAX => {
                    let message = format!(
                        "for_each gave {} items, over the limit of {FAN_OUT_MAX}",
                        items.len()
                    );
                    return self.fail(step, "too_large", message);
                }
                Ok(Value::Array(items)) => Some(items),
                Ok(other) => {
                    let message = format!("for_each gave {}, not a list", type_name(&other));
                    return self.fail(step, "invalid_input", message);
                }
                Err(e) => return self.fail(step, "invalid_input", format!("for_each: {e}")),
            },
        };
        self.emit(RunCommand::StartStep {
            step: step.name.clone(),
            items,
        });
        let event = self.step_event("step_started", &step.name);
        self.fire(
            HookStage::BeforeStep,
            Some(&step.name),
            &step.hooks.before,
            event,
        );
    }

    fn fail(&mut self, step: &StepSpec, code: &str, message: String) {
        self.emit(RunCommand::FailStep {
            step: step.name.clone(),
            error: StepError::new(code, message),
        });
    }

    /// A running step: its time-out, its end, or its elements' retries and starts up to its
    /// concurrency.
    fn drive(&mut self, step: &StepSpec) {
        let started = self.run.steps.get(&step.name).and_then(|s| s.started_at_ms);
        if let (Some(timeout_ms), Some(started)) = (step.timeout_ms, started) {
            let deadline = started.saturating_add(timeout_ms);
            if self.now_ms >= deadline {
                let message = format!("the step ran over its time-out of {timeout_ms} ms");
                return self.fail(step, "timeout", message);
            }
            self.wake(deadline);
        }
        if let Some(end) = self.step_end(step) {
            return self.emit(end);
        }
        self.start_elements(step);
    }

    /// A step with an element failed for good fails; one whose elements all succeeded
    /// succeeds, with the list of outputs in item order if it fans out.
    fn step_end(&self, step: &StepSpec) -> Option<RunCommand> {
        let s = self.run.steps.get(&step.name)?;
        let fans_out = s.items.is_some();
        let failed =
            s.elements.iter().enumerate().find(|(_, e)| {
                matches!(e.status, ElementStatus::Failed | ElementStatus::Cancelled)
            });
        if let Some((i, e)) = failed {
            let mut error = e
                .attempts
                .last()
                .and_then(|a| a.error.clone())
                .unwrap_or_else(|| StepError::new("cancelled", "the element was cancelled"));
            if fans_out {
                error.message = format!("element {i}: {}", error.message);
            }
            let step = step.name.clone();
            return Some(RunCommand::FailStep { step, error });
        }
        if !s
            .elements
            .iter()
            .all(|e| e.status == ElementStatus::Succeeded)
        {
            return None;
        }
        let mut outputs = s
            .elements
            .iter()
            .map(|e| e.output.as_deref().cloned().unwrap_or_default());
        let output = if fans_out {
            Value::Array(outputs.collect())
        } else {
            outputs.next().unwrap_or_default()
        };
        let step = step.name.clone();
        Some(RunCommand::FinishStep { step, output })
    }

    /// Starts waiting elements in item order while fewer than the step's concurrency run: a
    /// first attempt with its input rendered, or a retry whose back-off is over.
    fn start_elements(&mut self, step: &StepSpec) {
        let Some(s) = self.run.steps.get(&step.name) else {
            return;
        };
        let fans_out = s.items.is_some();
        let retry = self.spec.retry_of(step);
        let cap = step.concurrency.map_or(usize::MAX, |c| c as usize);
        let mut running = s
            .elements
            .iter()
            .filter(|e| e.status == ElementStatus::Running)
            .count();
        let mut starts = Vec::new();
        let mut wakes = Vec::new();
        for (i, e) in s.elements.iter().enumerate() {
            if running >= cap {
                break;
            }
            if e.status != ElementStatus::Waiting {
                continue;
            }
            let (attempt, input, files) = match e.attempts.last() {
                None => {
                    let item = s.items.as_ref().and_then(|items| items.get(i));
                    let scope = match item {
                        Some(item) => RunScope::new(&self.run).with_item(item, i),
                        None => RunScope::new(&self.run),
                    };
                    let rendered = render_input(&step.input, &scope)
                        .map_err(|(code, message)| (code, format!("input: {message}")))
                        .and_then(|input| Ok((input, render_files(&step.files, &scope)?)));
                    match rendered {
                        Ok((input, files)) => (1, input, files),
                        Err((code, message)) => {
                            let message = if fans_out {
                                format!("element {i}: {message}")
                            } else {
                                message
                            };
                            return self.fail(step, code, message);
                        }
                    }
                }
                Some(last) => {
                    let code = last.error.as_ref().map_or("", |e| e.code.as_str());
                    let seed = jitter_seed(self.run.id, &step.name, i, last.number);
                    let delay = retry.delay_ms(code, last.number, seed);
                    let due = last
                        .finished_at_ms
                        .unwrap_or(last.started_at_ms)
                        .saturating_add(delay);
                    if self.now_ms < due {
                        wakes.push(due);
                        continue;
                    }
                    (
                        last.number.saturating_add(1),
                        Value::clone(&e.input),
                        e.files.clone(),
                    )
                }
            };
            running += 1;
            starts.push(RunCommand::StartAttempt {
                step: step.name.clone(),
                element: i,
                attempt,
                function: step.function.clone(),
                input,
                files,
                job_key: job_key(self.run.id, &step.name, s.round, i, attempt),
            });
        }
        for at in wakes {
            self.wake(at);
        }
        for command in starts {
            self.emit(command);
        }
    }

    /// After hooks of every step that is done, once per round. A step cancelled before it
    /// started has none: it never began, so it has not ended either.
    fn after_hooks(&mut self) {
        let spec = self.spec;
        for step in spec.all_steps().filter(|s| !s.hooks.after.is_empty()) {
            let Some(s) = self.run.steps.get(&step.name) else {
                continue;
            };
            let ended =
                s.is_done() && (s.status != StepStatus::Cancelled || s.started_at_ms.is_some());
            if ended && !s.after_hooks_fired {
                let event = self.step_event("step_finished", &step.name);
                self.fire(
                    HookStage::AfterStep,
                    Some(&step.name),
                    &step.hooks.after,
                    event,
                );
            }
        }
    }

    /// The main steps decide the run: one failed is a failed run; all done is a succeeded
    /// one (the `finally` step still to run in both cases).
    fn decide_ending(&mut self) {
        let spec = self.spec;
        // One walk over the run's steps (no look-ups): this runs on every pass.
        let finally = spec.finally.as_ref().map(|f| f.name.as_str());
        let mut main = self
            .run
            .steps
            .iter()
            .filter(|(name, _)| Some(name.as_str()) != finally);
        if main.clone().any(|(_, s)| s.status == StepStatus::Failed) {
            // The first failed step in the spec's order names the run's error.
            let failed = spec.steps.iter().find_map(|step| {
                let s = self.run.steps.get(&step.name)?;
                (s.status == StepStatus::Failed).then(|| (step.name.clone(), s.error.clone()))
            });
            let Some((name, error)) = failed else {
                return;
            };
            let error = error.unwrap_or_else(|| StepError::new("internal", ""));
            let message = format!("step {name:?} failed: {}", error.message);
            return self.emit(RunCommand::EndRun {
                status: RunStatus::Failed,
                error: Some(StepError::new(error.code, message)),
            });
        }
        if main.all(|(_, s)| s.is_done()) {
            self.emit(RunCommand::EndRun {
                status: RunStatus::Succeeded,
                error: None,
            });
        }
    }

    /// The run's outcome is decided: stop the main steps, run the `finally` step, fire the
    /// end hooks, finish.
    fn wind_down(&mut self) {
        let spec = self.spec;
        for step in &spec.steps {
            if self.run.steps.get(&step.name).is_some_and(|s| !s.is_done()) {
                self.emit(RunCommand::CancelStep {
                    step: step.name.clone(),
                });
            }
        }
        self.cancel_orphans();
        if let Some(finally) = &spec.finally {
            self.step(finally);
        }
        self.after_hooks();
        let finally_done = spec
            .finally
            .as_ref()
            .is_none_or(|f| self.run.steps.get(&f.name).is_none_or(|s| s.is_done()));
        let live = self
            .run
            .steps
            .values()
            .any(|s| s.elements.iter().any(|e| e.live_attempt().is_some()));
        if !finally_done || live {
            return;
        }
        let Some(ending) = self.run.ending.clone() else {
            return;
        };
        let finally_failed = spec.finally.as_ref().is_some_and(|f| {
            self.run
                .steps
                .get(&f.name)
                .is_some_and(|s| s.status == StepStatus::Failed)
        });
        let status = match ending.status {
            RunStatus::Succeeded if finally_failed => RunStatus::Failed,
            RunStatus::Running => RunStatus::Failed,
            other => other,
        };
        if !self.run.end_hooks_fired {
            let (stage, hooks) = match status {
                RunStatus::Succeeded => (HookStage::RunSucceeded, &spec.hooks.succeeded),
                RunStatus::Aborted => (HookStage::RunAborted, &spec.hooks.aborted),
                _ => (HookStage::RunFailed, &spec.hooks.failed),
            };
            let mut event = self.run_event();
            event["state"] = json!(status.as_str());
            if let (Some(error), RunStatus::Failed | RunStatus::Aborted) = (&ending.error, status) {
                event["error"] = json!({"code": error.code, "message": error.message});
            }
            self.fire(stage, None, hooks, event);
        }
        self.emit(RunCommand::FinishRun { status });
    }

    fn run_event(&self) -> Value {
        self.run.run_event()
    }

    fn step_event(&self, kind: &str, step: &str) -> Value {
        self.run.step_event(kind, step)
    }

    fn fire(&mut self, stage: HookStage, step: Option<&str>, hooks: &[Hook], mut event: Value) {
        if hooks.is_empty() {
            return;
        }
        if step.is_none() {
            event["event"] = json!("run_finished");
        }
        let round = step
            .and_then(|s| self.run.steps.get(s))
            .map_or(self.run.generation, |s| s.round);
        let mut calls = Vec::new();
        for (index, hook) in hooks.iter().enumerate() {
            let target = match (&hook.function, &hook.url) {
                (Some(function), _) => {
                    let scope = RunScope::new(&self.run).with_event(&event);
                    let input = render_input(&hook.input, &scope)
                        .unwrap_or_else(|(_, e)| json!({"event": event, "template_error": e}));
                    let job_key = match step {
                        Some(step) => {
                            format!("hook:{}:{stage}:{step}:{round}:{index}", self.run.id)
                        }
                        None => format!("hook:{}:{stage}:{round}:{index}", self.run.id),
                    };
                    HookTarget::Function {
                        function: function.clone(),
                        input,
                        job_key,
                    }
                }
                (None, Some(url)) => HookTarget::Post { url: url.clone() },
                (None, None) => continue,
            };
            calls.push(HookCall {
                stage,
                step: step.map(String::from),
                index,
                event: event.clone(),
                target,
            });
        }
        for call in calls {
            self.emit(RunCommand::FireHook(call));
        }
    }
}

/// Renders an input template: every string in it is a template. Gives the error's code and
/// message.
fn render_input(template: &Value, scope: &RunScope<'_>) -> Result<Value, (&'static str, String)> {
    let rendered = render_value(template, scope).map_err(|e| ("invalid_input", e))?;
    let bytes = rendered.to_string().len();
    if bytes > RENDERED_INPUT_BYTES_MAX {
        return Err((
            "too_large",
            format!("{bytes} bytes, over the limit of {RENDERED_INPUT_BYTES_MAX}"),
        ));
    }
    Ok(rendered)
}

/// Renders a step's `files`: a template or a list of templates, each giving an object key or
/// URL or a list of them, flattened in order. Gives the error's code and message.
fn render_files(
    template: &Value,
    scope: &RunScope<'_>,
) -> Result<Vec<String>, (&'static str, String)> {
    let rendered = render_value(template, scope).map_err(|e| ("invalid_input", e))?;
    let parts = match rendered {
        Value::Null => Vec::new(),
        Value::Array(parts) => parts,
        one => vec![one],
    };
    let mut files = Vec::new();
    for part in parts {
        match part {
            Value::String(file) => files.push(file),
            Value::Array(list) => {
                for item in list {
                    match item {
                        Value::String(file) => files.push(file),
                        other => return Err(not_a_file(&other)),
                    }
                }
            }
            other => return Err(not_a_file(&other)),
        }
        if files.len() > FILES_PER_STEP_MAX {
            return Err((
                "too_large",
                format!("files: over the limit of {FILES_PER_STEP_MAX}"),
            ));
        }
    }
    Ok(files)
}

fn not_a_file(value: &Value) -> (&'static str, String) {
    (
        "invalid_input",
        format!(
            "files: gave {}, not an object key or URL (a string)",
            type_name(value)
        ),
    )
}

fn render_value(template: &Value, scope: &RunScope<'_>) -> Result<Value, String> {
    Ok(match template {
        Value::String(text) => Template::parse(text)
            .map_err(|e| e.message)?
            .render(scope)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| render_value(i, scope))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_value(v, scope)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

impl std::fmt::Display for HookStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl HookStage {
    pub fn as_str(self) -> &'static str {
        match self {
            HookStage::BeforeStep => "before_step",
            HookStage::AfterStep => "after_step",
            HookStage::RunSucceeded => "run_succeeded",
            HookStage::RunFailed => "run_failed",
            HookStage::RunAborted => "run_aborted",
        }
    }
}

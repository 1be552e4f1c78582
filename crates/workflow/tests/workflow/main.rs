//! The workflow crate's behaviour, data in and snapshot out: deploy-time validation, the
//! template language, step advancement through whole runs, controls, statistics, and a
//! property test over random DAGs. `Sim` drives a run as the node will: advance, apply,
//! feed results back.

mod properties;
mod runs;
mod spec;

use serde_json::{json, Value};
use workflow::{
    advance, apply, control, deploy, record_attempt, Control, HookTarget, Recorded, RunCommand,
    RunState, StepError, StepStatus, WorkflowSpec,
};

/// Every function exists but `missing`.
pub(crate) fn function_exists(name: &str) -> bool {
    name != "missing"
}

pub(crate) fn must_deploy(toml: &str) -> WorkflowSpec {
    match deploy(toml, &function_exists) {
        Ok(spec) => spec,
        Err(e) => panic!("the spec does not deploy: {e}"),
    }
}

/// One run, driven step by step; every command and action goes into a transcript.
pub(crate) struct Sim {
    pub(crate) spec: WorkflowSpec,
    pub(crate) run: RunState,
    pub(crate) now_ms: u64,
    pub(crate) log: Vec<String>,
    /// The most elements of one step running at once, over the whole run.
    pub(crate) peak_running: std::collections::BTreeMap<String, usize>,
}

impl Sim {
    pub(crate) fn new(toml: &str, input: Value) -> Sim {
        let spec = must_deploy(toml);
        let run = RunState::new(&spec, 7, input, 0);
        Sim {
            spec,
            run,
            now_ms: 0,
            log: Vec::new(),
            peak_running: Default::default(),
        }
    }

    /// Advances the run, applies the commands, and logs them.
    pub(crate) fn advance(&mut self) -> Vec<RunCommand> {
        let result = advance(&self.spec, &self.run, self.now_ms);
        for command in &result.commands {
            must_fit(&self.spec, &self.run, command);
            apply(&mut self.run, command, self.now_ms);
            self.log.push(format!("  {}", render(command)));
        }
        for (name, step) in &self.run.steps {
            let running = step
                .elements
                .iter()
                .filter(|e| e.live_attempt().is_some())
                .count();
            let peak = self.peak_running.entry(name.clone()).or_default();
            *peak = (*peak).max(running);
        }
        if let Some(wake) = result.wake_at_ms {
            self.log.push(format!("  wake at {wake}"));
        }
        // The commands must have been everything there was to do.
        let again = advance(&self.spec, &self.run, self.now_ms);
        assert!(
            again.commands.is_empty(),
            "a second advance did more: {:?}",
            again.commands
        );
        result.commands
    }

    pub(crate) fn at(&mut self, now_ms: u64) -> &mut Sim {
        self.now_ms = now_ms;
        self.log.push(format!("@{now_ms}"));
        self
    }

    fn live_key(&self, step: &str, element: usize) -> String {
        let e = &self.run.steps[step].elements[element];
        match e.live_attempt() {
            Some(a) => a.job_key.clone(),
            None => panic!("{step}[{element}] has no live attempt"),
        }
    }

    pub(crate) fn ok(&mut self, step: &str, element: usize, output: Value) -> &mut Sim {
        self.log.push(format!("{step}[{element}] ok {output}"));
        self.finish(step, element, Ok(output))
    }

    pub(crate) fn err(&mut self, step: &str, element: usize, code: &str) -> &mut Sim {
        self.log.push(format!("{step}[{element}] fails {code}"));
        self.finish(
            step,
            element,
            Err(StepError::new(code, format!("{code} happened"))),
        )
    }

    /// Records the result of the element's live attempt, which must be taken.
    fn finish(
        &mut self,
        step: &str,
        element: usize,
        outcome: Result<Value, StepError>,
    ) -> &mut Sim {
        let key = self.live_key(step, element);
        let recorded = record_attempt(
            &self.spec,
            &mut self.run,
            step,
            element,
            &key,
            outcome,
            self.now_ms,
        );
        assert_eq!(recorded, Recorded::Taken);
        self
    }

    pub(crate) fn control(&mut self, c: Control) -> &mut Sim {
        let result = control(&self.spec, &mut self.run, &c, self.now_ms);
        self.log.push(format!(
            "control {c:?}: {}",
            result.map_or_else(|e| e.to_string(), |()| "ok".into())
        ));
        self
    }

    /// Advances and logs; for chaining.
    pub(crate) fn step(&mut self) -> &mut Sim {
        self.advance();
        self
    }

    /// The transcript, then the run's and each step's final state.
    pub(crate) fn transcript(&self) -> String {
        let mut lines = self.log.clone();
        lines.push(format!("run: {}", self.run.status));
        for step in self.spec.all_steps() {
            let s = &self.run.steps[&step.name];
            let mut line = format!("  {}: {} (round {})", step.name, s.status, s.round);
            if let Some(output) = &s.output {
                line.push_str(&format!(" output {output}"));
            }
            if let Some(error) = &s.error {
                line.push_str(&format!(" error {}: {}", error.code, error.message));
            }
            lines.push(line);
        }
        lines.join("\n")
    }
}

/// What every command must respect: a start only when the step's needs are done.
pub(crate) fn must_fit(spec: &WorkflowSpec, run: &RunState, command: &RunCommand) {
    if let RunCommand::StartStep { step, .. } = command {
        let needs = spec.step(step).map(|s| s.needs.clone()).unwrap_or_default();
        for need in needs {
            let status = run.steps[&need].status;
            assert!(
                matches!(status, StepStatus::Succeeded | StepStatus::Skipped),
                "{step} started while its need {need} is {status}"
            );
        }
        if spec.is_finally(step) {
            for other in &spec.steps {
                assert!(
                    run.steps[&other.name].is_done(),
                    "the finally step started while {} is not done",
                    other.name
                );
            }
        }
    }
}

pub(crate) fn render(command: &RunCommand) -> String {
    match command {
        RunCommand::StartStep { step, items } => match items {
            Some(items) => format!("start step {step} over {}", json!(items)),
            None => format!("start step {step}"),
        },
        RunCommand::StartAttempt {
            step,
            element,
            attempt,
            function,
            input,
            files,
            job_key,
        } => {
            let files = match files.is_empty() {
                true => String::new(),
                false => format!(" files {}", json!(files)),
            };
            format!("start {step}[{element}] #{attempt} {function}({input}){files} key {job_key}")
        }
        RunCommand::CancelAttempt { step, element, .. } => format!("cancel {step}[{element}]"),
        RunCommand::FinishStep { step, output } => format!("finish step {step}: {output}"),
        RunCommand::SkipStep { step, cause } => format!("skip step {step} ({cause:?})"),
        RunCommand::FailStep { step, error } => {
            format!("fail step {step}: {}: {}", error.code, error.message)
        }
        RunCommand::CancelStep { step } => format!("cancel step {step}"),
        RunCommand::EndRun { status, error } => match error {
            Some(e) => format!("end run {status}: {}: {}", e.code, e.message),
            None => format!("end run {status}"),
        },
        RunCommand::FireHook(call) => {
            let target = match &call.target {
                HookTarget::Function {
                    function,
                    input,
                    job_key,
                } => format!("{function}({input}) key {job_key}"),
                HookTarget::Post { url } => format!("POST {url} {}", call.event),
            };
            format!(
                "hook {} {}#{}: {target}",
                call.stage.as_str(),
                call.step.as_deref().unwrap_or("run"),
                call.index
            )
        }
        RunCommand::FinishRun { status } => format!("finish run {status}"),
    }
}

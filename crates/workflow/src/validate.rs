//! Deploy-time checks: everything that can be wrong with a spec is found here, with the path
//! of the offending field, so that no run ever fails for a reason its spec already showed.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Code, Error, SpecErrors};
use crate::spec::*;
use crate::template::{Condition, Path, Segment, Template};

/// Longest description.
pub const DESCRIPTION_LEN_MAX: usize = 4_096;

/// Parses and validates a TOML spec: what `chorus workflows deploy` runs.
pub fn deploy(
    text: &str,
    function_exists: &dyn Fn(&str) -> bool,
) -> Result<WorkflowSpec, SpecErrors> {
    let spec = WorkflowSpec::from_toml(text).map_err(|e| SpecErrors(vec![e]))?;
    validate(&spec, function_exists)?;
    Ok(spec)
}

/// Checks a parsed spec: names, limits, the DAG (unknown needs, cycles), templates (syntax
/// and that every path names something the step can see), retry policies, time-outs and
/// hooks. `function_exists` answers whether a function name is deployed or built in.
pub fn validate(
    spec: &WorkflowSpec,
    function_exists: &dyn Fn(&str) -> bool,
) -> Result<(), SpecErrors> {
    let mut v = Validator {
        spec,
        function_exists,
        errors: Vec::new(),
        dropped: 0,
    };
    v.workflow();
    if v.errors.is_empty() {
        return Ok(());
    }
    if v.dropped > 0 {
        v.errors.push(Error::new(
            Code::InvalidInput,
            "",
            format!("and {} more errors", v.dropped),
        ));
    }
    Err(SpecErrors(v.errors))
}

/// Where a template sits, which decides the roots it may name.
#[derive(Clone, Copy, PartialEq)]
enum Place {
    /// A step's input or `for_each` item template: `item` and `index` allowed if it fans out.
    StepInput { fans_out: bool },
    /// A step's `for_each` or `if`.
    StepHead,
    /// A hook's input: `event` allowed.
    Hook,
}

struct Validator<'a> {
    spec: &'a WorkflowSpec,
    function_exists: &'a dyn Fn(&str) -> bool,
    errors: Vec<Error>,
    dropped: usize,
}

fn is_name(name: &str, extra: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_LEN_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || extra.contains(c))
}

impl<'a> Validator<'a> {
    fn error(&mut self, code: Code, path: impl Into<String>, message: impl Into<String>) {
        if self.errors.len() < SPEC_ERRORS_MAX - 1 {
            self.errors.push(Error::new(code, path, message));
        } else {
            self.dropped += 1;
        }
    }

    fn workflow(&mut self) {
        let spec = self.spec;
        if !is_name(&spec.name, ".") {
            self.error(
                Code::InvalidInput,
                "name",
                format!(
                    "workflow name {:?} must be 1 to {NAME_LEN_MAX} characters of a-z, A-Z, 0-9, '.', '_', '-'",
                    spec.name
                ),
            );
        }
        if spec
            .description
            .as_ref()
            .is_some_and(|d| d.len() > DESCRIPTION_LEN_MAX)
        {
            self.error(
                Code::TooLarge,
                "description",
                format!("longer than {DESCRIPTION_LEN_MAX} bytes"),
            );
        }
        self.timeout("timeout_ms", spec.timeout_ms);
        if let Some(e) = spec
            .input_schema
            .as_ref()
            .and_then(crate::schema::schema_error)
        {
            self.error(e.code, e.path, e.message);
        }
        self.retry("retry", &spec.retry);
        let count = spec.all_steps().count();
        if spec.steps.is_empty() {
            self.error(
                Code::InvalidInput,
                "steps",
                "a workflow needs at least one step",
            );
        }
        if count > STEPS_MAX {
            self.error(
                Code::TooLarge,
                "steps",
                format!("{count} steps, over the limit of {STEPS_MAX}"),
            );
            return;
        }
        let mut seen = BTreeSet::new();
        for (i, step) in spec.all_steps().enumerate() {
            let at = step_path(spec, i);
            if !seen.insert(step.name.as_str()) {
                self.error(
                    Code::InvalidInput,
                    format!("{at}.name"),
                    format!("two steps are called {:?}", step.name),
                );
            }
        }
        let Some(ancestors) = self.dag() else {
            return;
        };
        let all: BTreeSet<&str> = spec.steps.iter().map(|s| s.name.as_str()).collect();
        for (i, step) in spec.all_steps().enumerate() {
            let at = step_path(spec, i);
            let visible = if spec.is_finally(&step.name) {
                &all
            } else {
                &ancestors[&step.name]
            };
            self.step(&at, step, visible);
        }
        for (stage, hooks) in [
            ("succeeded", &spec.hooks.succeeded),
            ("failed", &spec.hooks.failed),
            ("aborted", &spec.hooks.aborted),
        ] {
            self.hooks(&format!("hooks.{stage}"), hooks, &all);
        }
    }

    /// Checks `needs` and looks for cycles; gives each step's transitive needs, or `None`
    /// when the graph is not a DAG (templates cannot be checked then).
    fn dag(&mut self) -> Option<BTreeMap<String, BTreeSet<&'a str>>> {
        let spec = self.spec;
        let names: BTreeSet<&str> = spec.steps.iter().map(|s| s.name.as_str()).collect();
        let mut ok = true;
        for (i, step) in spec.all_steps().enumerate() {
            let at = step_path(spec, i);
            if spec.is_finally(&step.name) && !step.needs.is_empty() {
                self.error(
                    Code::InvalidInput,
                    format!("{at}.needs"),
                    "the finally step runs after every other step and needs none",
                );
                ok = false;
                continue;
            }
            let mut seen = BTreeSet::new();
            for (j, need) in step.needs.iter().enumerate() {
                let path = format!("{at}.needs[{j}]");
                if need == &step.name {
                    self.error(
                        Code::InvalidInput,
                        path,
                        format!("step {:?} needs itself", step.name),
                    );
                    ok = false;
                } else if spec.is_finally(need) {
                    self.error(
                        Code::InvalidInput,
                        path,
                        format!(
                            "{need:?} is the finally step, which runs last; no step can need it"
                        ),
                    );
                    ok = false;
                } else if !names.contains(need.as_str()) {
                    self.error(
                        Code::InvalidInput,
                        path,
                        format!(
                            "step {:?} needs {need:?}, which is not a step of this workflow",
                            step.name
                        ),
                    );
                    ok = false;
                } else if !seen.insert(need) {
                    self.error(
                        Code::InvalidInput,
                        path,
                        format!("{need:?} is listed twice"),
                    );
                }
            }
        }
        if !ok {
            return None;
        }
        if let Some(cycle) = find_cycle(spec) {
            let first = spec
                .steps
                .iter()
                .position(|s| s.name == cycle[0])
                .unwrap_or(0);
            self.error(
                Code::InvalidInput,
                format!("steps[{first}].needs"),
                format!("the steps form a cycle: {}", cycle.join(" -> ")),
            );
            return None;
        }
        Some(ancestors(spec))
    }

    fn step(&mut self, at: &str, step: &StepSpec, visible: &BTreeSet<&str>) {
        if !is_name(&step.name, "") {
            self.error(
                Code::InvalidInput,
                format!("{at}.name"),
                format!(
                    "step name {:?} must be 1 to {NAME_LEN_MAX} characters of a-z, A-Z, 0-9, '_', '-'",
                    step.name
                ),
            );
        }
        self.function(&format!("{at}.function"), &step.function);
        let fans_out = step.for_each.is_some();
        self.input(
            &format!("{at}.input"),
            &step.input,
            Place::StepInput { fans_out },
            visible,
        );
        self.files(&format!("{at}.files"), &step.files, fans_out, visible);
        if let Some(for_each) = &step.for_each {
            self.template(
                &format!("{at}.for_each"),
                for_each,
                Place::StepHead,
                visible,
            );
        }
        match (step.concurrency, fans_out) {
            (Some(_), false) => self.error(
                Code::InvalidInput,
                format!("{at}.concurrency"),
                "concurrency caps the elements of a for_each; this step has no for_each",
            ),
            (Some(c), true) if c == 0 || c as usize > FAN_OUT_MAX => self.error(
                Code::InvalidInput,
                format!("{at}.concurrency"),
                format!("must be 1 to {FAN_OUT_MAX}"),
            ),
            _ => {}
        }
        if let Some(condition) = &step.condition {
            let path = format!("{at}.if");
            match Condition::parse(condition) {
                Ok(c) => self.paths(&path, &c.paths(), Place::StepHead, visible),
                Err(e) => self.template_error(&path, e),
            }
        }
        if let Some(retry) = &step.retry {
            self.retry(&format!("{at}.retry"), retry);
        }
        self.timeout(&format!("{at}.timeout_ms"), step.timeout_ms);
        if let Some(Err(message)) = step.throttle.as_ref().map(throttle::ThrottleSpec::validate) {
            self.error(Code::InvalidInput, format!("{at}.throttle"), message);
        }
        let mut with_self = visible.clone();
        with_self.insert(&step.name);
        self.hooks(&format!("{at}.hooks.before"), &step.hooks.before, visible);
        self.hooks(&format!("{at}.hooks.after"), &step.hooks.after, &with_self);
    }

    fn function(&mut self, path: &str, name: &str) {
        if !is_name(name, ".") {
            self.error(
                Code::InvalidInput,
                path,
                format!("{name:?} is not a function name"),
            );
        } else if !(self.function_exists)(name) {
            self.error(
                Code::NotFound,
                path,
                format!("no function is called {name:?}"),
            );
        }
    }

    fn timeout(&mut self, path: &str, timeout_ms: Option<u64>) {
        if timeout_ms.is_some_and(|t| t == 0 || t > DURATION_MS_MAX) {
            self.error(
                Code::InvalidInput,
                path,
                format!("must be 1 to {DURATION_MS_MAX} ms"),
            );
        }
    }

    fn retry(&mut self, at: &str, retry: &RetrySpec) {
        if retry.max_attempts == 0 || retry.max_attempts > ATTEMPTS_MAX {
            self.error(
                Code::InvalidInput,
                format!("{at}.max_attempts"),
                format!("must be 1 to {ATTEMPTS_MAX}"),
            );
        }
        self.codes(&format!("{at}.retry_codes"), &retry.retry_codes);
        self.codes(&format!("{at}.never_codes"), &retry.never_codes);
        for code in &retry.retry_codes {
            if retry.never_codes.contains(code) {
                self.error(
                    Code::InvalidInput,
                    format!("{at}.never_codes"),
                    format!("{code:?} is both retried and never retried"),
                );
            }
        }
        self.backoff(&format!("{at}.backoff"), &retry.backoff);
        if retry.per_code.len() > RETRY_CODES_MAX {
            self.error(
                Code::TooLarge,
                format!("{at}.per_code"),
                format!("more than {RETRY_CODES_MAX} codes"),
            );
            return;
        }
        for code in retry.per_code.keys() {
            let path = format!("{at}.per_code.{code}");
            if !is_name(code, ".") {
                self.error(
                    Code::InvalidInput,
                    path,
                    format!("{code:?} is not an error code"),
                );
                continue;
            }
            self.backoff(&path, &retry.backoff_for(code));
        }
    }

    fn codes(&mut self, path: &str, codes: &[String]) {
        if codes.len() > RETRY_CODES_MAX {
            self.error(
                Code::TooLarge,
                path,
                format!("more than {RETRY_CODES_MAX} codes"),
            );
        }
        for (i, code) in codes.iter().enumerate() {
            if !is_name(code, ".") {
                self.error(
                    Code::InvalidInput,
                    format!("{path}[{i}]"),
                    format!("{code:?} is not an error code"),
                );
            }
        }
    }

    fn backoff(&mut self, at: &str, b: &Backoff) {
        if b.initial_ms > DURATION_MS_MAX {
            self.error(
                Code::InvalidInput,
                format!("{at}.initial_ms"),
                format!("must be at most {DURATION_MS_MAX} ms"),
            );
        }
        if b.max_ms > DURATION_MS_MAX || b.max_ms < b.initial_ms {
            self.error(
                Code::InvalidInput,
                format!("{at}.max_ms"),
                format!(
                    "must be between initial_ms ({}) and {DURATION_MS_MAX} ms",
                    b.initial_ms
                ),
            );
        }
        if !(1.0..=MULTIPLIER_MAX).contains(&b.multiplier) {
            self.error(
                Code::InvalidInput,
                format!("{at}.multiplier"),
                format!("must be 1 to {MULTIPLIER_MAX}"),
            );
        }
        if !(0.0..=1.0).contains(&b.jitter) {
            self.error(Code::InvalidInput, format!("{at}.jitter"), "must be 0 to 1");
        }
    }

    fn hooks(&mut self, at: &str, hooks: &[Hook], visible: &BTreeSet<&str>) {
        if hooks.len() > HOOKS_PER_STAGE_MAX {
            self.error(
                Code::TooLarge,
                at,
                format!(
                    "{} hooks, over the limit of {HOOKS_PER_STAGE_MAX}",
                    hooks.len()
                ),
            );
            return;
        }
        for (i, hook) in hooks.iter().enumerate() {
            let path = format!("{at}[{i}]");
            match (&hook.function, &hook.url) {
                (Some(function), None) => {
                    self.function(&format!("{path}.function"), function);
                    self.input(&format!("{path}.input"), &hook.input, Place::Hook, visible);
                }
                (None, Some(url)) => {
                    let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
                    if !scheme_ok || url.len() > URL_LEN_MAX || url.chars().any(char::is_whitespace)
                    {
                        self.error(
                            Code::InvalidInput,
                            format!("{path}.url"),
                            format!("{url:?} is not an http(s) URL of at most {URL_LEN_MAX} bytes"),
                        );
                    }
                    if !hook.input.is_null() {
                        self.error(
                            Code::InvalidInput,
                            format!("{path}.input"),
                            "a URL hook POSTs its event; input is for function hooks",
                        );
                    }
                }
                _ => self.error(
                    Code::InvalidInput,
                    path,
                    "a hook has exactly one of `function` and `url`",
                ),
            }
        }
    }

    /// A step's `files`: one template, or a list of at most `FILES_PER_STEP_MAX` templates.
    fn files(&mut self, at: &str, files: &Value, fans_out: bool, visible: &BTreeSet<&str>) {
        let place = Place::StepInput { fans_out };
        match files {
            Value::Null => {}
            Value::String(text) => self.template(at, text, place, visible),
            Value::Array(items) if items.len() > FILES_PER_STEP_MAX => self.error(
                Code::TooLarge,
                at,
                format!(
                    "{} files, over the limit of {FILES_PER_STEP_MAX}",
                    items.len()
                ),
            ),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(text) => {
                            self.template(&format!("{at}[{i}]"), text, place, visible)
                        }
                        _ => self.error(
                            Code::InvalidInput,
                            format!("{at}[{i}]"),
                            "a file is a template giving an object key or URL (a string)",
                        ),
                    }
                }
            }
            _ => self.error(
                Code::InvalidInput,
                at,
                "files is a template or a list of templates (strings)",
            ),
        }
    }

    /// An input template: any JSON whose strings are templates.
    fn input(&mut self, at: &str, input: &Value, place: Place, visible: &BTreeSet<&str>) {
        let bytes = input.to_string().len();
        if bytes > INPUT_TEMPLATE_BYTES_MAX {
            self.error(
                Code::TooLarge,
                at,
                format!("{bytes} bytes, over the limit of {INPUT_TEMPLATE_BYTES_MAX}"),
            );
            return;
        }
        self.input_value(at, input, place, visible, 0);
    }

    fn input_value(
        &mut self,
        at: &str,
        value: &Value,
        place: Place,
        visible: &BTreeSet<&str>,
        depth: usize,
    ) {
        if depth > INPUT_TEMPLATE_DEPTH_MAX {
            self.error(
                Code::TooLarge,
                at,
                format!("nested deeper than {INPUT_TEMPLATE_DEPTH_MAX}"),
            );
            return;
        }
        match value {
            Value::String(s) => self.template(at, s, place, visible),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.input_value(&format!("{at}[{i}]"), item, place, visible, depth + 1);
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    self.input_value(&format!("{at}.{key}"), item, place, visible, depth + 1);
                }
            }
            _ => {}
        }
    }

    fn template(&mut self, at: &str, text: &str, place: Place, visible: &BTreeSet<&str>) {
        match Template::parse(text) {
            Ok(t) => self.paths(at, &t.paths(), place, visible),
            Err(e) => self.template_error(at, e),
        }
    }

    fn template_error(&mut self, at: &str, error: Error) {
        self.error(error.code, at, error.message);
    }

    /// Every path must name something the template can see.
    fn paths(&mut self, at: &str, paths: &[&Path], place: Place, visible: &BTreeSet<&str>) {
        for path in paths {
            if let Err(e) = check_path(path, place, visible, self.spec) {
                self.error(Code::InvalidInput, at, format!("`{path}` {e}"));
            }
        }
    }
}

fn check_path(
    path: &Path,
    place: Place,
    visible: &BTreeSet<&str>,
    spec: &WorkflowSpec,
) -> Result<(), String> {
    let first = path.segments.first();
    match path.root.as_str() {
        "input" => Ok(()),
        "run" => match first {
            None => Ok(()),
            Some(Segment::Key(k))
                if RUN_FIELDS.contains(&k.as_str()) && path.segments.len() == 1 =>
            {
                Ok(())
            }
            Some(_) => Err(format!(
                "names nothing: a run has {}",
                RUN_FIELDS.join(", ")
            )),
        },
        "steps" => {
            let Some(Segment::Key(step)) = first else {
                return Err("names nothing: `steps.` is followed by a step name".into());
            };
            if spec.step(step).is_none() {
                return Err(format!("names nothing: there is no step {step:?}"));
            }
            if !visible.contains(step.as_str()) {
                return Err(format!(
                    "names step {step:?}, which this step does not need (directly or through its needs)"
                ));
            }
            match path.segments.get(1) {
                Some(Segment::Key(k)) if k == "output" || k == "error" => Ok(()),
                Some(Segment::Key(k)) if k == "state" && path.segments.len() == 2 => Ok(()),
                _ => Err(format!(
                    "names nothing: write steps.{step}.output, .state or .error"
                )),
            }
        }
        "item" | "index" => match place {
            Place::StepInput { fans_out: true }
                if path.root == "item" || path.segments.is_empty() =>
            {
                Ok(())
            }
            Place::StepInput { fans_out: true } => {
                Err("names nothing: an index has no parts".into())
            }
            _ => Err(format!(
                "names nothing here: `{}` exists only in the input of a step with for_each",
                path.root
            )),
        },
        "event" if place == Place::Hook => Ok(()),
        root => Err(format!(
            "names nothing: {root:?} is not one of input, steps, run{}",
            match place {
                Place::StepInput { fans_out: true } => ", item, index",
                Place::Hook => ", event",
                _ => "",
            }
        )),
    }
}

/// What `run.<field>` may name.
pub(crate) const RUN_FIELDS: [&str; 5] = ["id", "workflow", "version", "state", "started_at_ms"];

fn step_path(spec: &WorkflowSpec, index: usize) -> String {
    if index < spec.steps.len() {
        format!("steps[{index}]")
    } else {
        "finally".to_string()
    }
}

/// A cycle among the main steps, as names from a step back to it, if there is one.
pub(crate) fn find_cycle(spec: &WorkflowSpec) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let index: BTreeMap<&str, usize> = spec
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut marks = vec![Mark::New; spec.steps.len()];
    for start in 0..spec.steps.len() {
        if marks[start] != Mark::New {
            continue;
        }
        // Iterative DFS: (step, next need to look at); the stack is the open path.
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        marks[start] = Mark::Open;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let needs = &spec.steps[node].needs;
            if *next == needs.len() {
                marks[node] = Mark::Done;
                stack.pop();
                continue;
            }
            let need = &needs[*next];
            *next += 1;
            let Some(&child) = index.get(need.as_str()) else {
                continue;
            };
            match marks[child] {
                Mark::New => {
                    marks[child] = Mark::Open;
                    stack.push((child, 0));
                }
                Mark::Open => {
                    let from = stack.iter().position(|&(n, _)| n == child).unwrap_or(0);
                    // The stack runs from a step to what it needs; a cycle reads better in the
                    // order things run, so it is reversed.
                    let mut cycle: Vec<String> = stack[from..]
                        .iter()
                        .rev()
                        .map(|&(n, _)| spec.steps[n].name.clone())
                        .collect();
                    cycle.push(cycle[0].clone());
                    return Some(cycle);
                }
                Mark::Done => {}
            }
        }
    }
    None
}

/// Each main step's transitive needs. The graph must be acyclic.
fn ancestors(spec: &WorkflowSpec) -> BTreeMap<String, BTreeSet<&str>> {
    let mut out: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for step in &spec.steps {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&str> = step.needs.iter().map(String::as_str).collect();
        while let Some(name) = todo.pop() {
            if seen.insert(name) {
                if let Some(s) = spec.steps.iter().find(|s| s.name == name) {
                    todo.extend(s.needs.iter().map(String::as_str));
                }
            }
        }
        out.insert(step.name.clone(), seen);
    }
    out
}

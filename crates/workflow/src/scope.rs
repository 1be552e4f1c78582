//! What templates see in a run: `input`, `run`, `steps.NAME.{output,state,error}`, and
//! `item`/`index` in a `for_each` element or `event` in a hook.

use serde_json::{json, Value};
use std::borrow::Cow;

use crate::run::RunState;
use crate::template::{follow, Path, Segment};

pub(crate) struct RunScope<'r> {
    run: &'r RunState,
    /// `run.*`, built once.
    run_value: Value,
    item: Option<(&'r Value, usize)>,
    event: Option<&'r Value>,
}

impl<'r> RunScope<'r> {
    pub(crate) fn new(run: &'r RunState) -> RunScope<'r> {
        let state = run.ending.as_ref().map_or(run.status, |e| e.status);
        RunScope {
            run,
            run_value: json!({
                "id": run.id,
                "workflow": run.workflow,
                "version": run.workflow_version,
                "state": state.as_str(),
                "started_at_ms": run.started_at_ms,
            }),
            item: None,
            event: None,
        }
    }

    pub(crate) fn with_item(mut self, item: &'r Value, index: usize) -> RunScope<'r> {
        self.item = Some((item, index));
        self
    }

    pub(crate) fn with_event(mut self, event: &'r Value) -> RunScope<'r> {
        self.event = Some(event);
        self
    }
}

static NULL: Value = Value::Null;

impl RunScope<'_> {
    /// What `path` names: `Ok(None)` for a path that names nothing in this run (a missing
    /// key, an index past the end), `Err` for one that can never name anything (an unknown
    /// root).
    pub(crate) fn lookup<'s>(&'s self, path: &Path) -> Result<Option<Cow<'s, Value>>, String> {
        let segments = path.segments.as_slice();
        let found = match path.root.as_str() {
            "input" => follow(&self.run.input, segments).map(Cow::Borrowed),
            "run" => follow(&self.run_value, segments).map(Cow::Borrowed),
            "item" => match self.item {
                Some((item, _)) => follow(item, segments).map(Cow::Borrowed),
                None => return Err("`item` exists only in a for_each element".into()),
            },
            "index" => match (self.item, segments) {
                (Some((_, index)), []) => Some(Cow::Owned(Value::from(index))),
                _ => return Err("`index` exists only in a for_each element".into()),
            },
            "event" => match self.event {
                Some(event) => follow(event, segments).map(Cow::Borrowed),
                None => return Err("`event` exists only in a hook".into()),
            },
            "steps" => {
                let Some(Segment::Key(name)) = segments.first() else {
                    return Err("`steps.` is followed by a step name".into());
                };
                let Some(step) = self.run.steps.get(name) else {
                    return Err(format!("there is no step {name:?}"));
                };
                match segments.get(1) {
                    Some(Segment::Key(k)) if k == "state" && segments.len() == 2 => {
                        Some(Cow::Owned(Value::from(step.status.as_str())))
                    }
                    // A step that did not succeed has no output: it and everything in it
                    // read as null, so a condition can test for it.
                    Some(Segment::Key(k)) if k == "output" => match &step.output {
                        Some(output) => follow(output, &segments[2..]).map(Cow::Borrowed),
                        None => Some(Cow::Borrowed(&NULL)),
                    },
                    Some(Segment::Key(k)) if k == "error" => match &step.error {
                        Some(error) => {
                            let error = json!({"code": error.code, "message": error.message});
                            follow(&error, &segments[2..]).cloned().map(Cow::Owned)
                        }
                        None => Some(Cow::Borrowed(&NULL)),
                    },
                    _ => return Err(format!("write steps.{name}.output, .state or .error")),
                }
            }
            root => return Err(format!("{root:?} is not a root a template can name")),
        };
        Ok(found)
    }
}

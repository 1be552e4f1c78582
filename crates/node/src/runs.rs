//! Workflows and runs on a node: the client-facing calls (deploy, start, list, get, wait,
//! controls) and the leader's driver, which advances runs.
//!
//! # How the leader drives a run, step by step
//!
//! 1. `StartRun` puts a new run in the replicated state (every step `waiting`).
//! 2. The driver ([`drive`], on the leader only) wakes on every applied entry and at the
//!    earliest `wake_at_ms` of the runs it knows. For each unfinished run whose `revision`
//!    changed since it last looked, or whose wake-up time has come, it calls the pure
//!    `workflow::advance` and proposes the commands it returns as `RunCommands` (many runs in
//!    one `Batch` entry).
//! 3. Applying a `StartAttempt` submits the attempt's job in the same entry, with the job key
//!    as its idempotency key; the scheduling loop places it like any job.
//! 4. The entry that ends the job (`FinishAttempts`, `CancelJob`, `AbandonAttempts`) records
//!    its result in the run (`workflow::record_attempt`), which bumps the run's revision: the
//!    driver sees it at step 2.
//!
//! A new leader starts with an empty memory and advances every unfinished run once: a
//! decision the old leader proposed but did not commit is decided again, with the same job
//! keys, so no step starts twice; a decision it did commit is in the state already, and
//! `advance` does not repeat it. The driver proposes one entry at a time and reads the state
//! after it is applied, so it never proposes the same decision twice itself.

use crate::{now_ms, rejected, unexpected, Node, WAIT_MAX};
use model::workflow::{Control, RunStatus, RunSummary, WorkflowSpec};
use model::{ApiError, Command, ErrorCode, JobId, Response, RunFilter, State};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// How often the driver looks even if nothing changed.
const DRIVE_IDLE_TICK: Duration = Duration::from_secs(1);
/// Runs advanced in one pass (one log entry) at most; the rest wait for the next pass.
const RUNS_PER_PASS_MAX: usize = 256;

/// A run as `runs get` shows it: the run and its steps in spec order, the jobs of its
/// attempts (job key → job id, for `jobs logs`), and its revision (for waiting on a change).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct RunView {
    #[serde(flatten)]
    pub summary: RunSummary,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub revision: u64,
    pub jobs: BTreeMap<String, JobId>,
    /// The DAG of the run's spec version: each step's needs (the dashboard draws it).
    #[serde(default)]
    pub needs: BTreeMap<String, Vec<String>>,
    /// The run's `finally` step, if its spec has one (it runs after all the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finally: Option<String>,
}

fn run_view(s: &State, id: u64) -> Result<RunView, ApiError> {
    let run = s
        .run(id)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no run {id}")))?;
    let spec = s.run_spec(&run.state).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Internal,
            format!("run {id} follows a workflow version that is gone"),
        )
    })?;
    let jobs = run
        .state
        .steps
        .values()
        .flat_map(|step| &step.elements)
        .flat_map(|element| &element.attempts)
        .filter_map(|a| Some((a.job_key.clone(), s.job_by_idempotency_key(&a.job_key)?)))
        .collect();
    Ok(RunView {
        summary: run.state.summary(spec),
        idempotency_key: run.idempotency_key.clone(),
        revision: run.revision,
        jobs,
        needs: spec
            .all_steps()
            .map(|step| (step.name.clone(), step.needs.clone()))
            .collect(),
        finally: spec.finally.as_ref().map(|f| f.name.clone()),
    })
}

impl Node {
    /// The secret the posts of each URL hook of `spec` are signed with, by URL (as the alert
    /// webhook's: derived from the cluster secret and the URL, so nothing is stored).
    pub fn hook_secrets(&self, spec: &WorkflowSpec) -> BTreeMap<String, String> {
        hook_urls(spec)
            .into_iter()
            .map(|url| (url.to_string(), crate::webhook::secret(self, url)))
            .collect()
    }

    /// Parses and validates a TOML spec (every function it names must be deployed) and
    /// deploys it: a changed spec gets a new version, an unchanged one keeps its version.
    pub async fn deploy_workflow(&self, toml: &str) -> Result<WorkflowSpec, ApiError> {
        if toml.len() > model::workflow::SPEC_BYTES_MAX {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "a spec is at most {} bytes",
                    model::workflow::SPEC_BYTES_MAX
                ),
            ));
        }
        let spec = self
            .read(|s| model::workflow::deploy(toml, &|name| s.function(name).is_some()))
            .map_err(|errors| {
                let code = errors
                    .0
                    .first()
                    .map_or(ErrorCode::InvalidInput, |e| model::workflow_error(e).code);
                ApiError::new(code, errors.to_string())
            })?;
        let name = spec.name.clone();
        match rejected(
            self.propose(Command::DeployWorkflow {
                spec: Box::new(spec),
            })
            .await?,
        )? {
            Response::Deployed { version } => self
                .read(|s| s.workflow_version(&name, version).cloned())
                .ok_or_else(|| ApiError::new(ErrorCode::Internal, "deployed spec not found")),
            other => Err(unexpected(other)),
        }
    }

    /// The latest version of every workflow.
    pub fn workflows(&self) -> Vec<WorkflowSpec> {
        self.read(|s| s.workflows().cloned().collect())
    }

    pub fn workflow(&self, name: &str) -> Result<WorkflowSpec, ApiError> {
        self.read(|s| s.workflow(name).cloned())
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no workflow {name:?}")))
    }

    /// Starts a run of the workflow's latest version, or returns the run its idempotency key
    /// started before (`true`: it existed).
    pub async fn start_run(
        &self,
        workflow: String,
        input: serde_json::Value,
        idempotency_key: Option<String>,
    ) -> Result<(RunView, bool), ApiError> {
        let (id, existing) = self
            .propose_run_start(workflow, input, idempotency_key)
            .await?;
        Ok((self.get_run(id)?, existing))
    }

    /// Starts a run (as [`Node::start_run`]) and waits up to `timeout` for it to end: the run
    /// as it is then, ended or still running. One call where a client would otherwise start
    /// and then wait, so a short run costs one round trip.
    pub async fn invoke_run(
        &self,
        workflow: String,
        input: serde_json::Value,
        idempotency_key: Option<String>,
        timeout: Duration,
    ) -> Result<(RunView, bool), ApiError> {
        let (id, existing) = self
            .propose_run_start(workflow, input, idempotency_key)
            .await?;
        Ok((self.wait_run(id, None, timeout).await?, existing))
    }

    /// The run a start made (or its key named), and whether it existed.
    async fn propose_run_start(
        &self,
        workflow: String,
        input: serde_json::Value,
        idempotency_key: Option<String>,
    ) -> Result<(u64, bool), ApiError> {
        let known = idempotency_key
            .as_deref()
            .is_some_and(|k| self.read(|s| s.run_by_idempotency_key(k).is_some()));
        if !known {
            self.read(|s| s.check_run_start(&workflow, &input, idempotency_key.as_deref()))?;
        }
        let now = now_ms();
        // The run's first decision, taken here: its first steps start in the entry that
        // creates it (see `model::Continuation`).
        let then = self.read(|s| {
            s.foresee_start(
                &workflow,
                &input,
                now,
                0,
                crate::scheduling::continues_here(self, s),
            )
        });
        let mut start = Command::StartRun {
            now_ms: now,
            workflow,
            input,
            idempotency_key,
        };
        if let Some(then) = then {
            start = Command::Continued {
                command: Box::new(start),
                then: vec![then],
            };
        }
        match rejected(self.propose(start).await?)? {
            Response::RunStarted { run, existing } => Ok((run, existing)),
            other => Err(unexpected(other)),
        }
    }

    /// Statistics of the runs of `name` that started in the last `window`: runs by state,
    /// success rate, durations per run and per step (`workflow::stats`), and per step what
    /// its attempts cost: queue wait (submit to start), CPU time and peak memory of the
    /// worker, from the jobs the steps ran.
    pub fn workflow_stats(
        &self,
        name: &str,
        window: std::time::Duration,
    ) -> Result<serde_json::Value, ApiError> {
        let now = now_ms();
        let since = now.saturating_sub(window.as_millis() as u64);
        self.read(|s| {
            if s.workflow(name).is_none() {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("no workflow {name:?}"),
                ));
            }
            let in_window: Vec<&model::workflow::RunState> = s
                .runs_of(name)
                .map(|r| &r.state)
                .filter(|r| r.started_at_ms >= since)
                .collect();
            let stats =
                model::workflow::stats(in_window.iter().copied(), since, now.saturating_add(1));
            let mut steps = serde_json::Map::new();
            let mut costs: BTreeMap<&str, StepCost> = BTreeMap::new();
            for run in &in_window {
                for (step, state) in &run.steps {
                    let cost = costs.entry(step.as_str()).or_default();
                    let jobs = state
                        .elements
                        .iter()
                        .flat_map(|e| &e.attempts)
                        .filter_map(|a| s.job(s.job_by_idempotency_key(&a.job_key)?));
                    for job in jobs {
                        if let Some(first) = job.attempts.first() {
                            cost.queue_wait_ms
                                .push(first.started_at_ms.saturating_sub(job.submitted_at_ms));
                        }
                        for usage in job.attempts.iter().filter_map(|a| a.usage) {
                            cost.measured += 1;
                            cost.cpu_ms += usage.cpu_ms;
                            cost.peak_rss_bytes = cost.peak_rss_bytes.max(usage.peak_rss_bytes);
                        }
                    }
                }
            }
            for (step, cost) in costs {
                steps.insert(
                    step.to_string(),
                    serde_json::json!({
                        "queue_wait_ms": model::workflow::DurationStats::of(cost.queue_wait_ms),
                        "attempts_measured": cost.measured,
                        "cpu_ms_total": cost.cpu_ms,
                        "cpu_ms_mean": (cost.measured > 0).then(|| cost.cpu_ms / cost.measured),
                        "peak_rss_bytes_max": cost.peak_rss_bytes,
                    }),
                );
            }
            Ok(serde_json::json!({
                "workflow": name,
                "window_s": window.as_secs(),
                "stats": stats,
                "resources": steps,
            }))
        })
    }

    pub fn get_run(&self, id: u64) -> Result<RunView, ApiError> {
        self.read(|s| run_view(s, id))
    }

    /// Runs matching `filter`, newest first.
    pub fn runs(&self, filter: &RunFilter, limit: usize) -> Vec<RunSummary> {
        self.read(|s| {
            s.runs(filter, limit)
                .into_iter()
                .filter_map(|r| Some(r.state.summary(s.run_spec(&r.state)?)))
                .collect()
        })
    }

    /// Applies an operator's control; a control the run does not allow changes nothing and
    /// answers `conflict` (`not_found` for an unknown step).
    pub async fn control_run(&self, id: u64, control: Control) -> Result<RunView, ApiError> {
        let command = Command::ControlRun {
            now_ms: now_ms(),
            run: id,
            control,
        };
        rejected(self.propose(command).await?)?;
        self.get_run(id)
    }

    /// Applies `control` (retry or abort) to every run of `workflow` it fits (failed runs for
    /// a retry, running ones for an abort), at most [`BULK_RUNS_MAX`] oldest first, in one log
    /// entry. A run that changed meanwhile so that the control no longer fits is passed over.
    pub async fn control_runs(
        &self,
        workflow: &str,
        control: BulkControl,
    ) -> Result<BulkOutcome, ApiError> {
        let (wanted, per_run) = match control {
            BulkControl::Retry => (RunStatus::Failed, Control::Retry { step: None }),
            BulkControl::Abort => (RunStatus::Running, Control::Abort),
        };
        let now = now_ms();
        let (runs, more) = self.read(|s| {
            if s.workflow(workflow).is_none() {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("no workflow {workflow:?}"),
                ));
            }
            let mut matching = s
                .runs_of(workflow)
                .filter(|r| r.state.status == wanted)
                .map(|r| r.state.id);
            let runs: Vec<u64> = matching.by_ref().take(BULK_RUNS_MAX).collect();
            Ok((runs, matching.next().is_some()))
        })?;
        let commands: Vec<Command> = runs
            .iter()
            .map(|&run| Command::ControlRun {
                now_ms: now,
                run,
                control: per_run.clone(),
            })
            .collect();
        let responses = match commands.len() {
            0 => Vec::new(),
            _ => match rejected(self.propose(Command::Batch(commands)).await?)? {
                Response::Batch(responses) => responses,
                other => return Err(unexpected(other)),
            },
        };
        let touched: Vec<u64> = runs
            .iter()
            .zip(&responses)
            .filter(|(_, r)| matches!(r, Response::Done))
            .map(|(&run, _)| run)
            .collect();
        Ok(BulkOutcome {
            workflow: workflow.to_string(),
            control,
            passed_over: runs.len() - touched.len(),
            touched,
            more,
        })
    }

    /// Waits until the run's revision is not `revision` (it changed: a step started or
    /// ended), it is finished, or `timeout` passes; returns it as it is then.
    pub async fn wait_run(
        &self,
        id: u64,
        revision: Option<u64>,
        timeout: Duration,
    ) -> Result<RunView, ApiError> {
        let deadline = tokio::time::Instant::now() + timeout.min(WAIT_MAX);
        let mut applied = self.inner.registry.applied();
        loop {
            // The whole view (every attempt's job looked up) only for the answer: a waiter
            // wakes at every applied entry, and a fan-out's run has hundreds of attempts.
            let now = self.read(|s| s.run(id).map(|r| (r.revision, r.state.status)));
            let Some((now_revision, state)) = now else {
                return self.get_run(id);
            };
            let changed = revision.is_some_and(|r| r != now_revision);
            if changed || state != RunStatus::Running {
                return self.get_run(id);
            }
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return self.get_run(id) },
                () = tokio::time::sleep_until(deadline) => return self.get_run(id),
                () = self.inner.shutdown.cancelled() => return self.get_run(id),
            }
        }
    }
}

/// Every URL the hooks of `spec` post to.
fn hook_urls(spec: &WorkflowSpec) -> BTreeSet<&str> {
    let run = &spec.hooks;
    let steps = spec.steps.iter().chain(&spec.finally);
    let step_hooks = steps.flat_map(|step| step.hooks.before.iter().chain(&step.hooks.after));
    run.succeeded
        .iter()
        .chain(&run.failed)
        .chain(&run.aborted)
        .chain(step_hooks)
        .filter_map(|hook| hook.url.as_deref())
        .collect()
}

/// Runs one bulk control changes at most (one log entry); `more` in the answer says to call
/// again.
pub const BULK_RUNS_MAX: usize = 1_000;

/// A control on every run of a workflow it fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkControl {
    /// Every failed run: each failed step (and what follows it) runs again.
    Retry,
    /// Every running run: running steps are cancelled, the `finally` step runs.
    Abort,
}

/// What a bulk control did.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct BulkOutcome {
    pub workflow: String,
    pub control: BulkControl,
    /// The runs it changed, oldest first.
    pub touched: Vec<u64>,
    /// Runs that no longer fitted when the entry was applied (they changed meanwhile).
    pub passed_over: usize,
    /// More runs fit than [`BULK_RUNS_MAX`]: call again.
    pub more: bool,
}

/// What the driver knows of a run since it last advanced it.
#[derive(Clone, Copy, Debug)]
struct Seen {
    revision: u64,
    wake_at_ms: Option<u64>,
}

/// The leader's run driver (see the module doc).
pub(crate) async fn drive(node: Node) {
    let mut applied = node.inner.registry.applied();
    let mut seen: HashMap<u64, Seen> = HashMap::new();
    loop {
        let next_wake = seen.values().filter_map(|s| s.wake_at_ms).min();
        let wait = next_wake.map_or(DRIVE_IDLE_TICK, |at| {
            Duration::from_millis(at.saturating_sub(now_ms())).min(DRIVE_IDLE_TICK)
        });
        tokio::select! {
            () = node.inner.shutdown.cancelled() => return,
            changed = applied.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
        if !node.inner.registry.is_leader() {
            // A new leader starts from nothing: it advances every unfinished run once.
            seen.clear();
            continue;
        }
        let now = now_ms();
        let commands = node.read(|s| decide(s, &mut seen, now));
        let command = match commands.len() {
            0 => continue,
            1 => commands.into_iter().next().expect("one command"),
            _ => Command::Batch(commands),
        };
        if let Err(e) = node.propose(command).await {
            // Nothing is lost: the runs are advanced again from what the state holds.
            tracing::warn!(error = %e, "could not advance runs");
            seen.clear();
        }
    }
}

/// Advances the runs that changed or whose wake-up time has come; forgets finished ones.
fn decide(s: &State, seen: &mut HashMap<u64, Seen>, now: u64) -> Vec<Command> {
    let mut commands = Vec::new();
    let mut live = Vec::new();
    for run in s.running_runs() {
        let id = run.state.id;
        live.push(id);
        if commands.len() >= RUNS_PER_PASS_MAX {
            continue;
        }
        let due = seen.get(&id).is_none_or(|known| {
            known.revision != run.revision || known.wake_at_ms.is_some_and(|at| at <= now)
        });
        if !due {
            continue;
        }
        let Some(spec) = s.run_spec(&run.state) else {
            continue;
        };
        let advance = model::workflow::advance(spec, &run.state, now);
        seen.insert(
            id,
            Seen {
                revision: run.revision,
                wake_at_ms: advance.wake_at_ms,
            },
        );
        if !advance.commands.is_empty() {
            commands.push(Command::RunCommands {
                now_ms: now,
                run: id,
                commands: advance.commands,
            });
        }
    }
    if seen.len() > live.len() {
        let live: std::collections::HashSet<u64> = live.into_iter().collect();
        seen.retain(|id, _| live.contains(id));
    }
    commands
}

/// What one step's attempts cost, summed over a window's runs.
#[derive(Default)]
struct StepCost {
    queue_wait_ms: Vec<u64>,
    measured: u64,
    cpu_ms: u64,
    peak_rss_bytes: u64,
}

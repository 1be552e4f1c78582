//! Triggers: the calls that create and change them, event ingestion, and the leader's cron
//! loop. What a trigger means (its ticks, its filters, its jobs' inputs and keys) is the pure
//! `triggers` crate; this module turns it into log entries.
//!
//! Exactly once per tick, across leader changes:
//! 1. Every node runs [`fire`]; it acts only while its node leads (a deposed leader's
//!    proposals fail to commit, fenced by term).
//! 2. A pass reads each active cron trigger's cursor (the latest tick it fired) and asks
//!    `Schedule::due` for the ticks after it, up to now, under the missed-tick policy.
//! 3. It proposes one log entry, a `Batch` of the `SubmitJobs` of every due tick (each job
//!    keyed `trigger:{name}:{tick_ms}`) and an `AdvanceTrigger` per trigger: the jobs and
//!    the cursor move together or not at all.
//! 4. A new leader that has not applied an entry the old one committed fires the same ticks
//!    again: their idempotency keys find the jobs already created, and the cursor only moves
//!    forward. A tick is never fired twice, and none is lost beyond what `skip` or the
//!    catch-up cap drops.
//!
//! Events: each event of an ingest call is matched against every active event trigger; each
//! match is one job keyed `event:{trigger}:{hash of source and id}`, all of them submitted in
//! one log entry, so a redelivered event finds its jobs and starts none.
//!
//! A trigger with a `workflow` instead of a `function` starts a run where it would start a
//! job ([`Starts`]): a `StartRun` in the same entry, with the same idempotency key (run keys
//! are apart from job keys), so the rules above hold for runs as they do for jobs.

use crate::{now_ms, rejected, unexpected, Node};
use model::{ApiError, Command, ErrorCode, JobId, JobSpec, Response, SubmitResult, Trigger};
use serde_json::Value;
use std::time::Duration;
use triggers::{Event, Filter, Target, TriggerSpec};

/// The longest the cron loop sleeps: a new trigger fires its first tick at most this late.
const FIRE_IDLE_TICK: Duration = Duration::from_millis(500);
/// The shortest sleep between two passes, so a pass whose proposal fails does not spin.
const FIRE_PASS_MIN: Duration = Duration::from_millis(20);
/// Jobs one ingest call may start at most (events times the triggers each matches).
pub const INGEST_JOBS_MAX: usize = 10_000;

/// What one ingested event started: per matching trigger, its job.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Ingested {
    pub id: String,
    pub source: String,
    pub jobs: Vec<TriggeredJob>,
}

/// One trigger's job (or run, for a trigger of a workflow) for an event: created, found (a
/// redelivery), or refused.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TriggeredJob {
    pub trigger: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<u64>,
    /// True when the event had started this job or run before (a redelivery).
    pub existing: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

/// Which kind a start is, in the order they were pushed.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Job,
    Run,
}

/// What trigger firings start, gathered for one log entry: jobs of functions (one placed
/// `SubmitJobs`) and runs of workflows (a `StartRun` each), every one under the idempotency
/// key of what fired it (a tick, an event, an object version, a batch of records).
#[derive(Clone, Debug, Default)]
pub(crate) struct Starts {
    jobs: Vec<JobSpec>,
    runs: Vec<Command>,
    order: Vec<Slot>,
}

/// What one start led to.
#[derive(Clone, Debug)]
pub(crate) enum Started {
    Job(SubmitResult),
    /// The run and whether it existed already, or why it was refused.
    Run(Result<(u64, bool), ApiError>),
}

impl Started {
    /// Why it was refused, if it was.
    pub(crate) fn refused(&self) -> Option<&ApiError> {
        match self {
            Started::Job(SubmitResult::Rejected(e)) | Started::Run(Err(e)) => Some(e),
            Started::Job(_) | Started::Run(Ok(_)) => None,
        }
    }
}

impl Starts {
    /// Adds what `spec` starts for one firing: a job of its function with `files` as its
    /// input files, or a run of its workflow (a run takes no files: a bucket trigger's object
    /// is in its input, `trigger.object`). False, and nothing added, for a spec without a
    /// target (only one an older version took).
    pub(crate) fn push(
        &mut self,
        now_ms: u64,
        spec: &TriggerSpec,
        input: Value,
        files: Vec<String>,
        key: String,
    ) -> bool {
        match spec.target() {
            Ok(Target::Function(function)) => {
                self.jobs.push(JobSpec {
                    function: function.to_string(),
                    input,
                    files,
                    priority: 0,
                    idempotency_key: Some(key),
                });
                self.order.push(Slot::Job);
            }
            Ok(Target::Workflow(workflow)) => {
                self.runs.push(Command::StartRun {
                    now_ms,
                    workflow: workflow.to_string(),
                    input,
                    idempotency_key: Some(key),
                });
                self.order.push(Slot::Run);
            }
            Err(e) => {
                tracing::warn!(trigger = %spec.name, error = %e, "a trigger without a target starts nothing");
                return false;
            }
        }
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Each run start with its run's first decision (see `model::Continuation`), foreseen for the
/// id it gets if every start before it in the entry creates a run. A start whose key names a
/// run already creates none and gets none; a guess that another start upsets is dropped when
/// applied, and that run goes the driver's way.
fn continued_starts(
    s: &model::State,
    runs: Vec<Command>,
    place: Option<model::NodeId>,
) -> Vec<Command> {
    let mut ahead = 0;
    runs.into_iter()
        .map(|start| {
            let Command::StartRun {
                now_ms,
                workflow,
                input,
                idempotency_key,
            } = &start
            else {
                return start;
            };
            if idempotency_key
                .as_deref()
                .is_some_and(|k| s.run_by_idempotency_key(k).is_some())
            {
                return start;
            }
            let then = s.foresee_start(workflow, input, *now_ms, ahead, place);
            ahead += 1;
            match then {
                Some(then) => Command::Continued {
                    command: Box::new(start),
                    then: vec![then],
                },
                None => start,
            }
        })
        .collect()
}

impl Node {
    /// Proposes `starts` and `advances` (the triggers' cursor moves) in one log entry:
    /// `Batch[SubmitJobs, StartRun.., advances..]`. Answers each start's outcome in the order
    /// they were pushed, or an error if the entry did not commit or an advance was refused
    /// (its trigger is gone).
    pub(crate) async fn propose_starts(
        &self,
        now_ms: u64,
        starts: Starts,
        advances: Vec<Command>,
    ) -> Result<Vec<Started>, ApiError> {
        self.propose_starts_in(now_ms, starts, advances, std::convert::identity)
            .await
    }

    /// As [`Node::propose_starts`], the entry's batch wrapped by `wrap` (a Kafka consumer's
    /// `Command::Fenced`); a wrapper that refuses the whole answers its error.
    pub(crate) async fn propose_starts_in(
        &self,
        now_ms: u64,
        starts: Starts,
        advances: Vec<Command>,
        wrap: impl FnOnce(Command) -> Command,
    ) -> Result<Vec<Started>, ApiError> {
        let Starts { jobs, runs, order } = starts;
        let has_jobs = !jobs.is_empty();
        let runs_len = runs.len();
        let mut batch = Vec::with_capacity(1 + runs_len + advances.len());
        if has_jobs {
            batch.push(self.placed_submit(now_ms, jobs).await);
        }
        let runs =
            self.read(|s| continued_starts(s, runs, crate::scheduling::continues_here(self, s)));
        batch.extend(runs);
        batch.extend(advances);
        let mut answers = match self.propose(wrap(Command::Batch(batch))).await? {
            Response::Batch(answers) => answers.into_iter(),
            Response::Rejected(e) => return Err(e),
            other => return Err(unexpected(other)),
        };
        let mut jobs = match has_jobs.then(|| answers.next()).flatten() {
            None => Vec::new().into_iter(),
            Some(Response::Submitted(results)) => results.into_iter(),
            Some(Response::Rejected(e)) => return Err(e),
            Some(other) => return Err(unexpected(other)),
        };
        let mut runs: Vec<Response> = answers.by_ref().take(runs_len).collect::<Vec<_>>();
        for answer in answers {
            if let Response::Rejected(e) = answer {
                return Err(e);
            }
        }
        let mut runs = runs.drain(..);
        let missing = || ApiError::new(ErrorCode::Internal, "an entry answered fewer starts");
        order
            .into_iter()
            .map(|slot| match slot {
                Slot::Job => jobs.next().map(Started::Job).ok_or_else(missing),
                Slot::Run => match runs.next() {
                    Some(Response::RunStarted { run, existing }) => {
                        Ok(Started::Run(Ok((run, existing))))
                    }
                    Some(Response::Rejected(e)) => Ok(Started::Run(Err(e))),
                    Some(other) => Err(unexpected(other)),
                    None => Err(missing()),
                },
            })
            .collect()
    }
}

/// Logs the starts an entry refused (a trigger's input the workflow's schema refuses, a
/// function deleted meanwhile); the trigger's cursor moved past them all the same.
pub(crate) fn warn_refused(trigger: &str, started: &[Started]) {
    for e in started.iter().filter_map(Started::refused) {
        tracing::warn!(trigger, error = %e, "a trigger's job or run was refused");
    }
}

impl Node {
    pub async fn create_trigger(&self, spec: TriggerSpec) -> Result<Trigger, ApiError> {
        let name = spec.name.clone();
        rejected(
            self.propose(Command::CreateTrigger {
                now_ms: now_ms(),
                spec,
            })
            .await?,
        )?;
        self.trigger(&name)
    }

    pub fn trigger(&self, name: &str) -> Result<Trigger, ApiError> {
        self.read(|s| s.trigger(name).cloned())
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no trigger {name:?}")))
    }

    pub async fn delete_trigger(&self, name: String) -> Result<(), ApiError> {
        rejected(self.propose(Command::DeleteTrigger { name }).await?).map(|_| ())
    }

    /// Pauses or resumes a trigger; a resumed cron trigger fires the ticks after the resume.
    pub async fn pause_trigger(&self, name: String, paused: bool) -> Result<Trigger, ApiError> {
        rejected(
            self.propose(Command::PauseTrigger {
                now_ms: now_ms(),
                name: name.clone(),
                paused,
            })
            .await?,
        )?;
        self.trigger(&name)
    }

    /// Starts one job (or run) per event and matching trigger, all in one log entry; one an
    /// event started before is found by its idempotency key, not started again.
    pub async fn ingest(&self, events: Vec<Event>) -> Result<Vec<Ingested>, ApiError> {
        let now = now_ms();
        let (mut answer, starts, owners, judged) = self.read(|s| {
            let active: Vec<&Trigger> = s
                .triggers()
                .filter(|t| !t.paused)
                .filter(|t| t.spec.events.is_some())
                .collect();
            let mut answer = Vec::with_capacity(events.len());
            let mut starts = Starts::default();
            // (event index, trigger name) of each start.
            let mut owners = Vec::new();
            let mut judged = crate::catalogue::Judged::default();
            for (i, event) in events.iter().enumerate() {
                for t in &active {
                    let filters = t.spec.events.as_ref().map_or(&[][..], |e| &e.filters[..]);
                    if !Filter::all_match(filters, event) {
                        continue;
                    }
                    if let Err(e) = judged.event(s, t, i, event) {
                        judged.refusals.push((i, t.spec.name.clone(), e));
                        continue;
                    }
                    let input = triggers::event_input(&t.spec.input, &t.spec.name, event);
                    let key = triggers::event_idempotency_key(&t.spec.name, event);
                    if starts.push(now, &t.spec, input, Vec::new(), key) {
                        owners.push((i, t.spec.name.clone()));
                    }
                }
                answer.push(Ingested {
                    id: event.id().to_string(),
                    source: event.source().to_string(),
                    jobs: Vec::new(),
                });
            }
            (answer, starts, owners, judged)
        });
        for (i, trigger, error) in judged.refusals {
            answer[i].jobs.push(TriggeredJob {
                trigger,
                job: None,
                run: None,
                existing: false,
                error: Some(error),
            });
        }
        if starts.len() > INGEST_JOBS_MAX {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "these events would start {} jobs or runs; one call starts at most {INGEST_JOBS_MAX}",
                    starts.len()
                ),
            ));
        }
        for (source, (records, bytes)) in &judged.counted {
            self.inner.catalogue.ingested(source, *records, *bytes);
        }
        let letters = (!judged.letters.is_empty()).then_some(Command::DeadLetters {
            now_ms: now,
            letters: judged.letters,
        });
        if starts.is_empty() && letters.is_none() {
            return Ok(answer);
        }
        let results = self
            .propose_starts(now, starts, letters.into_iter().collect())
            .await?;
        for ((i, trigger), result) in owners.into_iter().zip(results) {
            let mut started = TriggeredJob {
                trigger,
                job: None,
                run: None,
                existing: false,
                error: None,
            };
            match result {
                Started::Job(SubmitResult::Created(id)) => started.job = Some(id),
                Started::Job(SubmitResult::Existing(id)) => {
                    started.job = Some(id);
                    started.existing = true;
                }
                Started::Run(Ok((run, existing))) => {
                    started.run = Some(run);
                    started.existing = existing;
                }
                Started::Job(SubmitResult::Rejected(e)) | Started::Run(Err(e)) => {
                    started.error = Some(e);
                }
            }
            answer[i].jobs.push(started);
        }
        Ok(answer)
    }
}

/// What one pass fires: the jobs or runs of the due ticks and each trigger's new cursor.
struct Firing {
    starts: Starts,
    advances: Vec<Command>,
}

/// The cron ticks due at `now` of every active cron trigger (see the module's protocol).
/// `None` if nothing is due; also returns when the next tick falls due.
fn due(node: &Node, now: u64) -> (Option<Firing>, Option<u64>) {
    node.read(|s| {
        let mut starts = Starts::default();
        let mut advances = Vec::new();
        let mut next_ms: Option<u64> = None;
        for t in s.triggers().filter(|t| !t.paused) {
            let Some(cron) = &t.spec.cron else { continue };
            // Specs are validated when created, so this fails only for a schedule an older
            // version took: it is logged and skipped.
            let schedule = match cron.schedule() {
                Ok(schedule) => schedule,
                Err(e) => {
                    tracing::warn!(trigger = %t.spec.name, error = %e, "cannot fire trigger");
                    continue;
                }
            };
            let ticks = schedule.due(t.cursor_ms, now, cron.ticks_max());
            let after = ticks.last().copied().unwrap_or(t.cursor_ms).max(now);
            if let Some(next) = schedule.next_after(after) {
                next_ms = Some(next_ms.map_or(next, |n| n.min(next)));
            }
            let Some(&last) = ticks.last() else { continue };
            for &tick in &ticks {
                let input = triggers::cron_input(&t.spec.input, &t.spec.name, tick);
                let key = triggers::cron_idempotency_key(&t.spec.name, tick);
                starts.push(now, &t.spec, input, Vec::new(), key);
            }
            advances.push(Command::AdvanceTrigger {
                name: t.spec.name.clone(),
                cursor_ms: last,
                fired: ticks.len() as u64,
            });
        }
        let fire = (!advances.is_empty()).then_some(Firing { starts, advances });
        (fire, next_ms)
    })
}

/// The leader's cron loop (see the module's protocol).
pub(crate) async fn fire(node: Node) {
    let mut wait = FIRE_IDLE_TICK;
    loop {
        tokio::select! {
            () = node.inner.shutdown.cancelled() => return,
            () = tokio::time::sleep(wait.max(FIRE_PASS_MIN)) => {}
        }
        wait = FIRE_IDLE_TICK;
        if !node.inner.registry.is_leader() {
            continue;
        }
        let now = now_ms();
        let (fire, next_ms) = due(&node, now);
        if let Some(next) = next_ms {
            wait = wait.min(Duration::from_millis(next.saturating_sub(now_ms())));
        }
        let Some(Firing { starts, advances }) = fire else {
            continue;
        };
        match node.propose_starts(now, starts, advances).await {
            Ok(started) => warn_refused("cron", &started),
            // Not committed, or not known to be: the next pass fires the same ticks again,
            // under the same keys.
            Err(e) => tracing::warn!(error = %e, "could not fire triggers"),
        }
    }
}

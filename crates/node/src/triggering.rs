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

use crate::{now_ms, rejected, unexpected, Node};
use model::{ApiError, Command, ErrorCode, JobId, JobSpec, Response, SubmitResult, Trigger};
use std::time::Duration;
use triggers::{Event, Filter, TriggerSpec};

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

/// One trigger's job for an event: created, found (a redelivery), or refused.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TriggeredJob {
    pub trigger: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    /// True when the event had started this job before (a redelivery).
    pub existing: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
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

    /// Starts one job per event and matching trigger, all in one log entry; a job an event
    /// started before is found by its idempotency key, not started again.
    pub async fn ingest(&self, events: Vec<Event>) -> Result<Vec<Ingested>, ApiError> {
        let (mut answer, jobs, owners) = self.read(|s| {
            let active: Vec<&Trigger> = s
                .triggers()
                .filter(|t| !t.paused)
                .filter(|t| t.spec.events.is_some())
                .collect();
            let mut answer = Vec::with_capacity(events.len());
            let mut jobs = Vec::new();
            // (event index, trigger name) of each job.
            let mut owners = Vec::new();
            for (i, event) in events.iter().enumerate() {
                for t in &active {
                    let filters = t.spec.events.as_ref().map_or(&[][..], |e| &e.filters[..]);
                    if !Filter::all_match(filters, event) {
                        continue;
                    }
                    jobs.push(JobSpec {
                        function: t.spec.function.clone(),
                        input: triggers::event_input(&t.spec.input, &t.spec.name, event),
                        files: Vec::new(),
                        priority: 0,
                        idempotency_key: Some(triggers::event_idempotency_key(&t.spec.name, event)),
                    });
                    owners.push((i, t.spec.name.clone()));
                }
                answer.push(Ingested {
                    id: event.id().to_string(),
                    source: event.source().to_string(),
                    jobs: Vec::new(),
                });
            }
            (answer, jobs, owners)
        });
        if jobs.len() > INGEST_JOBS_MAX {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "these events would start {} jobs; one call starts at most {INGEST_JOBS_MAX}",
                    jobs.len()
                ),
            ));
        }
        if jobs.is_empty() {
            return Ok(answer);
        }
        let results = self.submit(jobs).await?;
        for ((i, trigger), result) in owners.into_iter().zip(results) {
            let (job, existing, error) = match result {
                SubmitResult::Created(id) => (Some(id), false, None),
                SubmitResult::Existing(id) => (Some(id), true, None),
                SubmitResult::Rejected(e) => (None, false, Some(e)),
            };
            answer[i].jobs.push(TriggeredJob {
                trigger,
                job,
                existing,
                error,
            });
        }
        Ok(answer)
    }
}

/// What one pass fires: the jobs of the due ticks and each trigger's new cursor.
struct Firing {
    jobs: Vec<JobSpec>,
    advances: Vec<Command>,
}

/// The cron ticks due at `now` of every active cron trigger (see the module's protocol).
/// `None` if nothing is due; also returns when the next tick falls due.
fn due(node: &Node, now: u64) -> (Option<Firing>, Option<u64>) {
    node.read(|s| {
        let mut jobs = Vec::new();
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
                jobs.push(JobSpec {
                    function: t.spec.function.clone(),
                    input: triggers::cron_input(&t.spec.input, &t.spec.name, tick),
                    files: Vec::new(),
                    priority: 0,
                    idempotency_key: Some(triggers::cron_idempotency_key(&t.spec.name, tick)),
                });
            }
            advances.push(Command::AdvanceTrigger {
                name: t.spec.name.clone(),
                cursor_ms: last,
                fired: ticks.len() as u64,
            });
        }
        let fire = (!advances.is_empty()).then_some(Firing { jobs, advances });
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
        if !node.inner.registry.figures().is_leader {
            continue;
        }
        let now = now_ms();
        let (fire, next_ms) = due(&node, now);
        if let Some(next) = next_ms {
            wait = wait.min(Duration::from_millis(next.saturating_sub(now_ms())));
        }
        let Some(Firing { jobs, advances }) = fire else {
            continue;
        };
        let submit = node.placed_submit(now, jobs).await;
        let mut batch = vec![submit];
        batch.extend(advances);
        match node.propose(Command::Batch(batch)).await {
            Ok(Response::Batch(answers)) => {
                for answer in answers {
                    if let Response::Submitted(results) = answer {
                        for r in results {
                            if let SubmitResult::Rejected(e) = r {
                                tracing::warn!(error = %e, "a trigger's job was refused");
                            }
                        }
                    }
                }
            }
            Ok(other) => tracing::warn!(error = %unexpected(other), "firing triggers"),
            // Not committed, or not known to be: the next pass fires the same ticks again,
            // under the same keys.
            Err(e) => tracing::warn!(error = %e, "could not fire triggers"),
        }
    }
}

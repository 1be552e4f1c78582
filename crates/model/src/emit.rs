//! Completion CloudEvents in the replicated state: which completions go where, the bounded
//! queue they wait in until their sink has confirmed them, and the events themselves.
//!
//! # Which completions, to which sinks
//!
//! - A job or run a trigger started (its idempotency key names the trigger) goes to the
//!   trigger's `reply`, if it has one: a Knative trigger's reply.
//! - Every job and run goes to the cluster's `events.sink`, if one is set.
//! - Every cluster event (see [`crate::Event`]) goes to `alerts.sink`, if one is set.
//!
//! Applying the entry that ends a job (or a run, or records an event) puts one
//! [`PendingEmit`] per sink in `State::emits_pending`, numbered in log order; nothing waits
//! for it. The leader's `node::emit` sends them and logs what its sinks confirmed
//! (`Command::EmitsDone`); an emit leaves the queue only then, so a leader change neither
//! loses one nor, beyond sending the last ones again under the same event id, repeats one.
//!
//! The queue holds at most [`EMITS_PENDING_MAX`]: a completion that finds it full is not
//! queued, and a `sink_failed` alert says so (its sinks were failing for long). A job's event
//! is made from the job when it is sent (the queue holds its id, not its output), so a job
//! purged by retention before its sink came back is given up, with an alert.
//!
//! An event's id is fixed by what it tells (`chorus-job-{job}-{attempt}`,
//! `chorus-run-{run}`, `chorus-event-{seq}`), so a receiver recognises one sent twice.

use crate::job::Job;
use crate::state::State;
use crate::{Event, EventKind, JobId, NewEvent};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use triggers::Sink;

/// Completions waiting for their sink at most; see the module documentation.
pub const EMITS_PENDING_MAX: usize = 10_000;
/// A job's output larger than this (as JSON) is not put in its event: the event says its
/// size, and the job has it (`GET /v1/jobs/{id}`). Keeps every event well under the ingest's
/// [`triggers::EVENT_BYTES_MAX`].
pub const EMIT_OUTPUT_BYTES_MAX: usize = 64 * 1024;
/// Longest error text kept of an emit given up.
const EMIT_ERROR_LEN_MAX: usize = 512;

/// The CloudEvents `type` prefix of everything chorus emits.
pub const EVENT_TYPE_PREFIX: &str = "io.chorus";

/// What a pending emit tells.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Emitted {
    /// A job ended; its event is made from the job when it is sent.
    Job { id: JobId },
    /// A run ended.
    Run { id: u64 },
    /// A cluster event, as recorded (the ring may drop it before it is sent).
    Event(Event),
}

/// A completion waiting for its sink's confirmation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingEmit {
    /// Numbered in log order from 1.
    pub seq: u64,
    pub at_ms: u64,
    pub sink: Sink,
    pub what: Emitted,
    /// The trigger whose reply this is (`None`: a cluster sink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

/// An emit the leader gave up on (its sink refused it for good, or what it tells is gone),
/// and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailedEmit {
    pub seq: u64,
    pub error: String,
}

impl State {
    /// Completions waiting for their sinks, oldest first.
    pub fn pending_emits(&self) -> impl Iterator<Item = &PendingEmit> {
        self.emits_pending.values()
    }

    pub fn pending_emits_count(&self) -> usize {
        self.emits_pending.len()
    }

    /// The trigger that started a job or run with this idempotency key, if it has a reply.
    fn reply_of(&self, key: Option<&str>) -> Option<(String, Sink)> {
        let name = triggers::trigger_of_key(key?)?;
        let reply = self.trigger(name)?.spec.reply.clone()?;
        Some((name.to_string(), reply))
    }

    /// Queues a finished job's completion for its trigger's reply and the cluster's sink.
    pub(crate) fn emit_job_end(&mut self, now_ms: u64, id: JobId) {
        let Some(job) = self.job(id) else { return };
        if !job.state.is_terminal() {
            return;
        }
        // Not `submitted_by`: the jobs of ingested events are submitted by the ingest's
        // caller. A client that submits under a trigger's kind of key gets that trigger's
        // reply: it could have posted the event to the ingest as well.
        let reply = self.reply_of(job.idempotency_key.as_deref());
        let hops = input_hops(&job.input);
        let sink = self.config().settings().events_sink.clone();
        self.queue_emits(now_ms, Emitted::Job { id }, hops, reply, sink);
    }

    /// Queues a finished run's completion, as [`State::emit_job_end`] a job's.
    pub(crate) fn emit_run_end(&mut self, now_ms: u64, id: u64) {
        let Some(run) = self.runs.get(&id) else {
            return;
        };
        if !run.state.is_finished() {
            return;
        }
        let reply = self.reply_of(run.idempotency_key.as_deref());
        let hops = input_hops(&run.state.input);
        let sink = self.config().settings().events_sink.clone();
        self.queue_emits(now_ms, Emitted::Run { id }, hops, reply, sink);
    }

    /// Queues a cluster event for `alerts.sink`, if one is set.
    pub(crate) fn emit_event(&mut self, now_ms: u64, event: &Event) {
        if let Some(sink) = self.config().settings().alerts_sink.clone() {
            self.queue_emit(now_ms, sink, Emitted::Event(event.clone()), None);
        }
    }

    fn queue_emits(
        &mut self,
        now_ms: u64,
        what: Emitted,
        hops: u32,
        reply: Option<(String, Sink)>,
        sink: Option<Sink>,
    ) {
        if let Some((trigger, reply)) = reply {
            if reply == Sink::Ingest && hops >= triggers::REPLY_HOPS_MAX {
                let message = format!(
                    "the reply of trigger {trigger} was not sent to the ingest: its chain of \
                     replies made {hops} trips already (does the trigger match its own replies?)"
                );
                self.sink_failed(now_ms, message);
            } else {
                self.queue_emit(now_ms, reply, what.clone(), Some(trigger));
            }
        }
        if let Some(sink) = sink {
            self.queue_emit(now_ms, sink, what, None);
        }
    }

    fn queue_emit(&mut self, now_ms: u64, sink: Sink, what: Emitted, trigger: Option<String>) {
        if self.emits_pending.len() >= EMITS_PENDING_MAX {
            let message = format!(
                "a completion event to {} was dropped: {EMITS_PENDING_MAX} wait for their sinks already",
                sink.redacted()
            );
            self.sink_failed(now_ms, message);
            return;
        }
        self.next_emit_seq += 1;
        let seq = self.next_emit_seq;
        let emit = PendingEmit {
            seq,
            at_ms: now_ms,
            sink,
            what,
            trigger,
        };
        self.emits_pending.insert(seq, emit);
    }

    /// Records a `sink_failed` alert without queueing it for `alerts.sink` itself: the
    /// queue it would go to is what failed.
    fn sink_failed(&mut self, now_ms: u64, message: String) {
        let new = NewEvent {
            kind: EventKind::SinkFailed,
            node: None,
            message,
        };
        self.push_event(now_ms, new, None);
    }

    /// The leader's sends: confirmed emits leave the queue, given-up ones too, as alerts.
    pub(crate) fn emits_done(
        &mut self,
        now_ms: u64,
        delivered: Vec<u64>,
        failed: Vec<FailedEmit>,
    ) -> crate::Response {
        for seq in delivered {
            self.emits_pending.remove(&seq);
        }
        for FailedEmit { seq, mut error } in failed {
            let Some(emit) = self.emits_pending.remove(&seq) else {
                continue;
            };
            if error.len() > EMIT_ERROR_LEN_MAX {
                let mut end = EMIT_ERROR_LEN_MAX;
                while !error.is_char_boundary(end) {
                    end -= 1;
                }
                error.truncate(end);
            }
            let message = format!(
                "a completion event to {} was given up: {error}",
                emit.sink.redacted()
            );
            self.sink_failed(now_ms, message);
        }
        crate::Response::Done
    }

    /// The CloudEvent a pending emit sends, or why there is none (what it tells was purged).
    pub fn cloud_event(&self, emit: &PendingEmit) -> Result<triggers::Event, String> {
        let mut event = match &emit.what {
            Emitted::Job { id } => {
                let job = self
                    .job(*id)
                    .ok_or_else(|| format!("job {id} was purged before its event was sent"))?;
                job_event(job)
            }
            Emitted::Run { id } => {
                let run = self
                    .run(*id)
                    .ok_or_else(|| format!("run {id} was purged before its event was sent"))?;
                run_event(&run.state)
            }
            Emitted::Event(e) => json!({
                "id": format!("chorus-event-{}", e.seq),
                "source": "/chorus/events",
                "type": format!("{EVENT_TYPE_PREFIX}.event.{}", kind_name(e.kind)),
                "subject": e.seq.to_string(),
                "time": triggers::rfc3339(e.at_ms),
                "data": e,
            }),
        };
        event["specversion"] = json!("1.0");
        event["datacontenttype"] = json!("application/json");
        if let Some(trigger) = &emit.trigger {
            event["chorustrigger"] = json!(trigger);
        }
        let body = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
        triggers::parse_structured(&body).map_err(|e| e.message)
    }
}

/// A job's completion event (without `specversion` and `datacontenttype`).
fn job_event(job: &Job) -> Value {
    let attempt = job.attempts.last().map_or(0, |a| a.id.0);
    let mut data = json!({
        "job": job.id,
        "function": job.function,
        "version": job.function_version,
        "state": job.state.as_str(),
        "attempts": job.attempts.len(),
    });
    if let Some(output) = &job.output {
        let size = serde_json::to_vec(output).map_or(usize::MAX, |v| v.len());
        if size <= EMIT_OUTPUT_BYTES_MAX {
            data["output"] = output.clone();
        } else {
            data["output_bytes"] = json!(size);
        }
    }
    if !job.objects.is_empty() {
        data["objects"] = json!(job.objects);
    }
    if let Some(e) = &job.error {
        data["error"] = json!({"code": e.code, "message": e.message});
    }
    if let Some(name) = job.input["trigger"]["name"].as_str() {
        data["trigger"] = json!(name);
    }
    // Only ended jobs are queued; a job is never emitted while it may still change.
    let state = if job.state.is_terminal() {
        job.state.as_str()
    } else {
        "ended"
    };
    json!({
        "id": format!("chorus-job-{}-{attempt}", job.id),
        "source": format!("/chorus/functions/{}", job.function),
        "type": format!("{EVENT_TYPE_PREFIX}.job.{state}"),
        "subject": job.id.to_string(),
        "time": triggers::rfc3339(job.finished_at_ms.unwrap_or(job.submitted_at_ms)),
        triggers::HOPS_ATTRIBUTE: (input_hops(&job.input) + 1).to_string(),
        "data": data,
    })
}

/// A run's completion event (without `specversion` and `datacontenttype`).
fn run_event(run: &workflow::RunState) -> Value {
    // The body a workflow's `run_finished` hook gets; the steps' outputs are the run's
    // (`GET /v1/runs/{id}`).
    let data = run.finish_event();
    json!({
        "id": format!("chorus-run-{}", run.id),
        "source": format!("/chorus/workflows/{}", run.workflow),
        "type": format!("{EVENT_TYPE_PREFIX}.run.{}", run.status.as_str()),
        "subject": run.id.to_string(),
        "time": triggers::rfc3339(run.finished_at_ms.unwrap_or(run.started_at_ms)),
        triggers::HOPS_ATTRIBUTE: (input_hops(&run.input) + 1).to_string(),
        "data": data,
    })
}

/// Trips through the ingest the event that started a job or run had made (0: no event
/// started it).
fn input_hops(input: &Value) -> u32 {
    input["trigger"]["event"][triggers::HOPS_ATTRIBUTE]
        .as_str()
        .and_then(|h| h.parse().ok())
        .unwrap_or(0)
}

/// An event kind as spelled on the wire (`source_failed`).
fn kind_name(kind: EventKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

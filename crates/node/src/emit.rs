//! Completion CloudEvents on their way out: the leader sends what waits in the replicated
//! queue (`State::pending_emits`, see `model::emit`) to its sinks, and logs what they
//! confirmed.
//!
//! # Delivery, step by step
//!
//! 1. Applying the entry that ends a job or a run (or records a cluster event) queues one
//!    emit per sink that wants it, numbered in log order.
//! 2. This task (on the leader only) wakes on every applied entry and every `TICK` (as URL
//!    hooks' delivery does, `node::hooks`, whose timings it shares), takes the oldest
//!    [`EMITS_PER_PASS_MAX`] emits of the sinks not waiting out a back-off (a failing sink's
//!    backlog never holds the others back), makes each one's CloudEvent from the state
//!    (`State::cloud_event`) and groups them by sink. Up to [`SINKS_PER_PASS_MAX`] sinks are
//!    sent to at once.
//! 3. Per sink:
//!    - Kafka (`events::sink`): every event of the pass is produced at once, in the Kafka
//!      binding's binary mode, keyed by the job's (run's, event's) number; an event counts
//!      when the broker acknowledged it (`acks=all`, idempotent producer);
//!    - a URL: posted one at a time, oldest first, in the HTTP binding's binary mode, signed
//!      as the alert webhook's posts are (`x-chorus-webhook-signature`, the secret derived
//!      from the cluster secret and the URL); a 2xx within `POST_TIMEOUT` counts; a 4xx
//!      other than 408 and 429 will not change by trying again: the event is given up;
//!    - the ingest: the events go through `Node::ingest`, as `POST /v1/events/ingest` would
//!      take them, [`INGEST_EVENTS_PER_CALL_MAX`] at a time; they count when the jobs or
//!      runs they start are in the log.
//! 4. A sink that failed waits before its next try, from 0.5 s doubling to 30 s
//!    (`hooks::back_off`), for as long as it fails: its events stay queued, so a broker that is
//!    down loses nothing and gets everything once it is back. After [`FAILING_AFTER`] failed
//!    tries in a row a `sink_failed` alert says so; the first success after it a
//!    `sink_recovered` event.
//! 5. What was confirmed and what was given up is logged in one `EmitsDone` entry; an event
//!    given up is a `sink_failed` alert.
//!
//! Delivery is at least once: a leader that dies between a sink's confirmation and the
//! commit of `EmitsDone` leaves the emits queued, and the next leader sends them again under
//! the same event ids (`chorus-job-{job}-{attempt}` ...), so a receiver recognises them; the
//! ingest itself drops them, as an event's `source` and `id` key the jobs it starts.

use crate::hooks::{back_off, POST_TIMEOUT, TICK};
use crate::{now_ms, Node};
use model::signature::{webhook_signature, HEADER_WEBHOOK_SIGNATURE};
use model::{Command, EventKind, FailedEmit, NewEvent, PendingEmit};
use std::collections::{BTreeMap, HashMap};
use triggers::Sink;

/// Pending emits looked at in one pass at most (the oldest).
const EMITS_PER_PASS_MAX: usize = 512;
/// Sinks sent to at once at most; the others wait for the next pass.
const SINKS_PER_PASS_MAX: usize = 32;
/// Events handed to the ingest in one call at most.
const INGEST_EVENTS_PER_CALL_MAX: usize = 100;
/// Failed tries of a sink in a row before a `sink_failed` alert.
const FAILING_AFTER: u32 = 3;

/// A sink's failed tries in a row, on this leader.
#[derive(Clone, Copy, Debug, Default)]
struct Failing {
    count: u32,
    next_at_ms: u64,
    alerted: bool,
}

/// What one sink's sends in a pass came to.
#[derive(Debug, Default)]
struct Outcome {
    delivered: Vec<u64>,
    given_up: Vec<FailedEmit>,
    /// Why the sink failed this pass (its unsent events wait for the next try).
    failed: Option<String>,
}

/// An emit with its event, or why it has none.
type Ready = (u64, Result<triggers::Event, String>);

/// The clients the sinks are reached through.
#[derive(Debug)]
struct Clients {
    http: reqwest::Client,
    #[cfg(feature = "kafka")]
    kafka: events::sink::Sink,
}

pub(crate) async fn deliver(node: Node) {
    let http = match reqwest::Client::builder().timeout(POST_TIMEOUT).build() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "emit: no HTTP client; completion events are not sent");
            return;
        }
    };
    let clients = Clients {
        http,
        #[cfg(feature = "kafka")]
        kafka: events::sink::Sink::new(),
    };
    let mut applied = node.inner.registry.applied();
    let mut failing: HashMap<Sink, Failing> = HashMap::new();
    loop {
        let Some(leads) = node.next_drain_pass(&mut applied, TICK).await else {
            return;
        };
        if !leads {
            failing.clear();
            continue;
        }
        let now = now_ms();
        let due = node.read(|s| {
            let mut by_sink: BTreeMap<Sink, Vec<Ready>> = BTreeMap::new();
            let mut taken = 0;
            // A sink that waits out its back-off is passed over without counting, so its
            // events (up to the whole queue) never hold back the other sinks'.
            for emit in s.pending_emits() {
                if taken == EMITS_PER_PASS_MAX {
                    break;
                }
                if failing.get(&emit.sink).is_some_and(|f| f.next_at_ms > now) {
                    continue;
                }
                taken += 1;
                by_sink
                    .entry(emit.sink.clone())
                    .or_default()
                    .push(ready(s, emit));
            }
            by_sink
        });
        if due.is_empty() {
            continue;
        }
        let sends = due
            .into_iter()
            .take(SINKS_PER_PASS_MAX)
            .map(|(sink, emits)| async {
                let outcome = send(&node, &clients, &sink, emits).await;
                (sink, outcome)
            });
        let outcomes = futures::future::join_all(sends).await;
        let mut delivered = Vec::new();
        let mut given_up = Vec::new();
        let mut alerts = Vec::new();
        for (sink, outcome) in outcomes {
            let kind = sink.kind();
            node.inner
                .metrics
                .sink_events(kind, "ok", outcome.delivered.len() as u64);
            node.inner
                .metrics
                .sink_events(kind, "given_up", outcome.given_up.len() as u64);
            delivered.extend(outcome.delivered);
            given_up.extend(outcome.given_up);
            let Some(error) = outcome.failed else {
                if failing.remove(&sink).is_some_and(|f| f.alerted) {
                    alerts.push(NewEvent {
                        kind: EventKind::SinkRecovered,
                        node: None,
                        message: format!("completion events reach {} again", sink.redacted()),
                    });
                }
                continue;
            };
            node.inner.metrics.sink_events(kind, "failed", 1);
            let f = failing.entry(sink.clone()).or_default();
            f.count += 1;
            f.next_at_ms = now_ms() + back_off(f.count);
            tracing::warn!(sink = %sink.redacted(), tries = f.count, %error, "emit: sink failed");
            if f.count >= FAILING_AFTER && !f.alerted {
                f.alerted = true;
                alerts.push(NewEvent {
                    kind: EventKind::SinkFailed,
                    node: None,
                    message: format!(
                        "completion events cannot reach {} ({} tries): {error}; they wait in the queue",
                        sink.redacted(),
                        f.count
                    ),
                });
            }
        }
        let mut commands = Vec::new();
        if !delivered.is_empty() || !given_up.is_empty() {
            commands.push(Command::EmitsDone {
                now_ms: now_ms(),
                delivered,
                failed: given_up,
            });
        }
        if !alerts.is_empty() {
            commands.push(Command::RecordEvents {
                now_ms: now_ms(),
                events: alerts,
            });
        }
        for command in commands {
            if let Err(e) = node.propose(command).await {
                // The emits stay queued and are sent again: at least once.
                tracing::warn!(error = %e, "emit: could not record what was sent");
            }
        }
    }
}

fn ready(state: &model::State, emit: &PendingEmit) -> Ready {
    (emit.seq, state.cloud_event(emit))
}

/// Sends one sink's events of this pass.
async fn send(node: &Node, clients: &Clients, sink: &Sink, emits: Vec<Ready>) -> Outcome {
    let mut outcome = Outcome::default();
    let mut events = Vec::with_capacity(emits.len());
    for (seq, event) in emits {
        match event {
            Ok(event) => events.push((seq, event)),
            Err(error) => outcome.given_up.push(FailedEmit { seq, error }),
        }
    }
    if events.is_empty() {
        return outcome;
    }
    match sink {
        Sink::Ingest => to_ingest(node, events, &mut outcome).await,
        Sink::Url(url) => to_url(node, &clients.http, url, events, &mut outcome).await,
        #[cfg(feature = "kafka")]
        Sink::Kafka { brokers, topic } => {
            to_kafka(&clients.kafka, brokers, topic, events, &mut outcome).await;
        }
        #[cfg(not(feature = "kafka"))]
        Sink::Kafka { .. } => {
            outcome.failed = Some("this chorus was built without the kafka feature".into());
        }
    }
    outcome
}

async fn to_ingest(node: &Node, events: Vec<(u64, triggers::Event)>, outcome: &mut Outcome) {
    for chunk in events.chunks(INGEST_EVENTS_PER_CALL_MAX) {
        let batch: Vec<triggers::Event> = chunk.iter().map(|(_, e)| e.clone()).collect();
        match node.ingest(batch).await {
            Ok(_) => outcome.delivered.extend(chunk.iter().map(|(seq, _)| *seq)),
            // Events the ingest refuses as such are refused on every try.
            Err(e) if matches!(e.code, model::ErrorCode::InvalidEvent) => {
                outcome
                    .given_up
                    .extend(chunk.iter().map(|(seq, _)| FailedEmit {
                        seq: *seq,
                        error: e.to_string(),
                    }));
            }
            Err(e) => {
                outcome.failed = Some(e.to_string());
                return;
            }
        }
    }
}

async fn to_url(
    node: &Node,
    client: &reqwest::Client,
    url: &str,
    events: Vec<(u64, triggers::Event)>,
    outcome: &mut Outcome,
) {
    let secret = crate::webhook::secret(node, url);
    for (seq, event) in events {
        let binary = event.to_http_binary();
        let signed = webhook_signature(secret.as_bytes(), now_ms() / 1000, &binary.body);
        let mut post = client
            .post(url)
            .header(HEADER_WEBHOOK_SIGNATURE, signed)
            .body(binary.body);
        for (name, value) in &binary.headers {
            post = post.header(name.as_str(), value.as_str());
        }
        match post.send().await {
            Ok(answer) if answer.status().is_success() => outcome.delivered.push(seq),
            Ok(answer)
                if answer.status().is_client_error()
                    && !matches!(answer.status().as_u16(), 408 | 429) =>
            {
                outcome.given_up.push(FailedEmit {
                    seq,
                    error: format!("the receiver answered {}", answer.status()),
                });
            }
            Ok(answer) => {
                outcome.failed = Some(format!("the receiver answered {}", answer.status()));
                return;
            }
            Err(e) => {
                // Without the URL: URLs often carry a token in their path.
                outcome.failed = Some(e.without_url().to_string());
                return;
            }
        }
    }
}

#[cfg(feature = "kafka")]
async fn to_kafka(
    kafka: &events::sink::Sink,
    brokers: &str,
    topic: &str,
    events: Vec<(u64, triggers::Event)>,
    outcome: &mut Outcome,
) {
    let records: Vec<events::sink::SinkRecord> = events
        .iter()
        .map(|(_, event)| {
            let binary = event.to_kafka_binary();
            events::sink::SinkRecord {
                key: event.attribute("subject").unwrap_or_default().into(),
                headers: binary.headers,
                value: binary.body,
            }
        })
        .collect();
    match kafka.send(brokers, topic, &records).await {
        Ok(results) => {
            for ((seq, _), result) in events.iter().zip(results) {
                match result {
                    Ok(()) => outcome.delivered.push(*seq),
                    Err(e) => {
                        outcome.failed.get_or_insert(e.to_string());
                    }
                }
            }
        }
        Err(e) => outcome.failed = Some(e.to_string()),
    }
}

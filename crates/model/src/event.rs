//! Cluster events: what an operator should hear about without reading logs. The leader
//! proposes them (`Command::RecordEvents`), so every node holds the same recent history in a
//! bounded ring; `GET /v1/events` reads it and the dashboard shows it.

use crate::ids::NodeId;
use serde::{Deserialize, Serialize};

/// Events kept at most; older ones are dropped first.
pub const EVENTS_MAX: usize = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A node's smoothed CPU crossed the threshold: it gets no new work (an alert).
    BreakerOpened,
    /// A node's CPU fell below the threshold minus the hysteresis: it gets work again.
    BreakerClosed,
    /// A node missed its heartbeats: marked down, its attempts failed over (an alert).
    NodeLost,
    /// A learner took the vote of a voter that had been down for long.
    VoterReplaced,
    /// Queued jobs of a function cannot be placed until the cluster changes (no node with
    /// its labels, too few usable nodes for its backups): an alert, raised once per function
    /// and reason while the leader leads.
    JobsWaiting,
    /// A node that joined caught up and became a voter (while there were fewer than three).
    VoterAdded,
    /// A node admitted to the cluster did not catch up in time and was removed again (an
    /// alert).
    JoinFailed,
    /// A bucket or Kafka trigger cannot read its source (store unreachable, brokers down,
    /// topic unknown): it retries with back-off and catches up (an alert).
    SourceFailed,
    /// A trigger whose source had failed reads it again.
    SourceRecovered,
    /// A workflow's URL hook was not taken after every try (or its queue was full): the run
    /// went on without it (an alert).
    HookFailed,
    /// A run started (recorded while an alert webhook is set, so another system can follow
    /// runs; `run` carries the event).
    RunStarted,
    /// A step of a run ended: succeeded, failed, skipped or cancelled (as `RunStarted`).
    StepFinished,
    /// A run finished: succeeded, failed or aborted (as `RunStarted`).
    RunFinished,
    /// Completion events cannot reach a sink (it refuses them, or is down for long), one was
    /// given up, or one was dropped because the queue of them is full (an alert).
    SinkFailed,
    /// A sink that had failed takes completion events again.
    SinkRecovered,
}

impl EventKind {
    /// Whether someone should act on it.
    pub fn is_alert(self) -> bool {
        matches!(
            self,
            EventKind::BreakerOpened
                | EventKind::NodeLost
                | EventKind::JobsWaiting
                | EventKind::JoinFailed
                | EventKind::SourceFailed
                | EventKind::HookFailed
                | EventKind::SinkFailed
        )
    }
}

/// An event as proposed; the registry numbers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    pub message: String,
}

/// An event as recorded: numbered in log order from 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub at_ms: u64,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    pub message: String,
    pub alert: bool,
    /// A run event's body (`run_started`, `step_finished`, `run_finished`), the same JSON a
    /// workflow's URL hook gets: run, workflow, version, generation, step, round, state, error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<serde_json::Value>,
}

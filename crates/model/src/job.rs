//! Jobs and their attempts, as the registry holds them and the API shows them.

use crate::ids::{AttemptId, JobId, NodeId};
use crate::ErrorCode;
use serde::{Deserialize, Serialize};

/// The life of a job:
///
/// ```text
/// queued --start--> running --success--> succeeded
///   ^                  |  \--failure, no retry left--> failed
///   |                  \--failure, retryable--> queued (after back-off)
///   +-- any non-terminal state --cancel--> cancelled
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// Why an attempt or a job failed. `code` is stable (platform codes such as `timeout`, or a
/// function's own codes); `message` is for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

impl JobError {
    /// An error with one of the platform's own codes (a function may use codes of its own).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> JobError {
        JobError {
            code: code.as_str().to_string(),
            message: message.into(),
        }
    }
}

/// One try of a job on one node. It is live (running, or waiting for a slot on its node)
/// while its job is running and it has no `finished_at_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub id: AttemptId,
    pub node: NodeId,
    pub started_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// This attempt's own output, kept when its function's backups all run to completion
    /// (mode `all`); otherwise the job's output is the only copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// Object keys this attempt produced (mode `all`, as `output`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// Bytes of stderr kept for this attempt (0: no log).
    #[serde(default)]
    pub log_bytes: u64,
    /// The log itself when it was small enough to travel in the log entry (see
    /// [`crate::AttemptResult::log`]); otherwise it is the object `logs/{job}/{attempt}.log`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// What it cost its worker (recorded with its result, where measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ResourceUse>,
}

/// An attempt's resource use, measured on its worker process by the executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceUse {
    /// User and system CPU time.
    pub cpu_ms: u64,
    /// Peak resident memory while it ran.
    pub peak_rss_bytes: u64,
}

/// One invocation of a function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub function: String,
    pub function_version: u32,
    pub input: serde_json::Value,
    /// Object keys (in the node's store) or URLs of the input files, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub state: JobState,
    pub attempts: Vec<Attempt>,
    /// Times the job went from queued to running: the retry policy counts these, so a job
    /// with backups uses one try for all the attempts that run together.
    #[serde(default)]
    pub tries: u32,
    pub submitted_at_ms: u64,
    /// A queued job is not started before this time (retry back-off).
    pub not_before_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// Object keys of the files the successful attempt produced (every successful attempt's
    /// in mode `all`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// The workflow run, step and element this job is an attempt of: its end is recorded in
    /// the run in the entry that ends it (see [`crate::State`]'s runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunLink>,
    /// The API key whose request submitted it (`None`: the cluster's own, e.g. a trigger's
    /// or a run's): a key with only the `submit` scope may read and cancel its own jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<crate::KeyId>,
    /// The cluster-wide limits it starts under (its function's, its step's), resolved
    /// against its input when it was submitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throttles: Vec<throttle::Throttle>,
}

/// Which element of which run a job is an attempt of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunLink {
    pub run: u64,
    pub step: String,
    pub element: usize,
}

impl Job {
    /// The attempts running now (more than one with backups), on distinct nodes.
    pub fn live_attempts(&self) -> impl Iterator<Item = &Attempt> {
        let running = self.state == JobState::Running;
        self.attempts
            .iter()
            .filter(move |a| running && a.finished_at_ms.is_none())
    }

    /// The live attempt on `node`, if any.
    pub fn live_attempt_on(&self, node: NodeId) -> Option<&Attempt> {
        self.live_attempts().find(|a| a.node == node)
    }
}

/// Why a queued job has not started, as `GET /v1/jobs/{id}` tells it: worked out when the job
/// is read, from the state and the cluster as they are then; never stored in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    pub code: WaitCode,
    pub message: String,
}

/// The stable part of [`Waiting`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitCode {
    /// Its last try failed and it waits out its retry back-off.
    Backoff,
    /// Its function is no longer deployed.
    FunctionMissing,
    /// No node carries every label its function requires.
    NoNodeWithLabels,
    /// Too few nodes with the labels are up, not draining and of non-zero weight.
    TooFewNodes,
    /// Every node that could take it is full or has its CPU breaker open.
    NoCapacity,
    /// Nodes can take it: it waits behind the jobs ahead of it for the scheduler's next pass.
    InQueue,
    /// A cluster-wide throttle of its function or step holds it: as many of its jobs run as
    /// the throttle allows, or it started as many as its rate allows in the current window.
    Throttled,
}

/// A job as `GET /v1/jobs/{id}` answers it: the job, and why it waits if it is queued.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: Job,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
}

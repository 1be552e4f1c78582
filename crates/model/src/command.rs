//! The replicated commands: every state change in chorus is one of these, appended to the log
//! and applied in order by [`crate::State::apply`] on every node.
//!
//! Commands carry everything that is not a pure function of the state: the time (`now_ms`,
//! stamped by the node that proposes) and ids chosen outside (API keys). That keeps `apply`
//! deterministic.

use crate::function::FunctionSpec;
use crate::ids::{AttemptId, JobId, KeyId, NodeId};
use crate::job::{JobError, JobState};
use crate::node::{NodeLoad, NodeStatus};
use crate::object::ObjectRecord;
use crate::state::ApiKey;
use crate::ApiError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// What a client asks to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub function: String,
    #[serde(default)]
    pub input: serde_json::Value,
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// How one attempt ended, as reported by the node that ran it.
/// The largest attempt log kept in the log entry itself ([`AttemptResult::log`]); a larger
/// one, or one that is not UTF-8, is stored as an object. At 1 KiB, the state of 300,000
/// jobs with logs this size holds about 300 MB of them at most, which retention bounds;
/// most logs of small jobs are a line or two.
pub const LOG_INLINE_MAX: usize = 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptResult {
    pub job: JobId,
    pub attempt: AttemptId,
    pub outcome: Outcome,
    pub log_bytes: u64,
    /// The log itself when it is small ([`crate::LOG_INLINE_MAX`] bytes of UTF-8 at most):
    /// carried in the log entry rather than stored as an object, so a small log costs no
    /// file, no directory and no copy to a peer (every node holds the state anyway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// What the attempt cost its worker, where the node could measure it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::ResourceUse>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded {
        output: serde_json::Value,
        objects: Vec<String>,
    },
    Failed(JobError),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    DeployFunction {
        spec: FunctionSpec,
    },
    /// Many jobs in one entry: a batch costs one log write. `place[i]`, when given, starts
    /// job `i` on that node in the same entry (the leader chose it while nothing was waiting),
    /// which saves a log write on the way from submit to start.
    SubmitJobs {
        now_ms: u64,
        jobs: Vec<JobSpec>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        place: Vec<Option<NodeId>>,
    },
    /// The leader places queued jobs on a node.
    StartAttempts {
        now_ms: u64,
        node: NodeId,
        jobs: Vec<JobId>,
    },
    FinishAttempts {
        now_ms: u64,
        results: Vec<AttemptResult>,
    },
    CancelJob {
        now_ms: u64,
        job: JobId,
    },
    /// Every attempt running on `node` failed with `code` (the node restarted or died).
    AbandonAttempts {
        now_ms: u64,
        node: NodeId,
        code: String,
    },
    /// A node (re)starts: its address, slots and labels. The founding node registers itself.
    RegisterNode {
        id: NodeId,
        addr: String,
        slots: u32,
        labels: BTreeSet<String>,
        now_ms: u64,
    },
    /// A new node asks to join; it gets a fresh id (`Response::Joined`).
    JoinNode {
        addr: String,
        slots: u32,
        labels: BTreeSet<String>,
        now_ms: u64,
    },
    /// A node's periodic sign of life, with its load.
    Heartbeat {
        node: NodeId,
        now_ms: u64,
        load: NodeLoad,
    },
    SetNodeStatus {
        node: NodeId,
        status: NodeStatus,
    },
    RemoveNode {
        node: NodeId,
    },
    CreateKey {
        key: ApiKey,
    },
    RevokeKey {
        id: KeyId,
    },
    SetConfig {
        key: String,
        value: String,
    },
    /// Forgets finished jobs (the leader's retention sweep chose them). A job is dropped only
    /// if it is finished and finished before `finished_before_ms`; its idempotency key is
    /// free again.
    PurgeJobs {
        finished_before_ms: u64,
        jobs: Vec<JobId>,
    },
    /// Events the leader noticed (see [`crate::Event`]).
    RecordEvents {
        now_ms: u64,
        events: Vec<crate::NewEvent>,
    },
    /// The alert webhook has received every event up to `seq` (see
    /// [`crate::State::events_delivered`]); never moves back.
    EventsDelivered {
        seq: u64,
    },
    /// The leader posted URL hooks: `delivered` were taken by their receivers, `failed` were
    /// given up after every try (each becomes a `hook_failed` event). Both leave
    /// [`crate::State::pending_hooks`]; numbers no longer pending are passed over.
    HooksDone {
        now_ms: u64,
        delivered: Vec<u64>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        failed: Vec<crate::FailedHook>,
    },
    /// The leader sent completion events: `delivered` were confirmed by their sinks,
    /// `failed` were given up (each becomes a `sink_failed` alert). Both leave
    /// [`crate::State::pending_emits`]; numbers no longer pending are passed over.
    EmitsDone {
        now_ms: u64,
        delivered: Vec<u64>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        failed: Vec<crate::FailedEmit>,
    },
    /// A workflow spec, already validated by the proposer against the deployed functions; it
    /// gets the next version (an unchanged spec keeps its version).
    DeployWorkflow {
        spec: Box<workflow::WorkflowSpec>,
    },
    /// Starts a run of the workflow's latest version; an idempotency key seen before returns
    /// that run instead.
    StartRun {
        now_ms: u64,
        workflow: String,
        #[serde(default)]
        input: serde_json::Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
    },
    /// What the leader's `workflow::advance` decided for a run. Applying a `StartAttempt`
    /// submits its job (idempotency key = the job key) in the same entry, a `CancelAttempt`
    /// cancels it, a function hook submits its job.
    RunCommands {
        now_ms: u64,
        run: u64,
        commands: Vec<workflow::RunCommand>,
    },
    /// An operator's control on a run (retry, skip, abort, restart); all or nothing.
    ControlRun {
        now_ms: u64,
        run: u64,
        control: workflow::Control,
    },
    /// Forgets finished runs (the retention sweep chose them); each is checked again.
    PurgeRuns {
        finished_before_ms: u64,
        runs: Vec<u64>,
    },
    /// Objects written to the nodes' own disks (the default local store), each with the
    /// nodes that hold a copy (see [`crate::ObjectInfo`]). A record replaces the one of the
    /// same key; holders the registry does not know are left out, and a record left with none
    /// is dropped. The whole command is refused if a record is malformed.
    RecordObjects {
        now_ms: u64,
        objects: Vec<ObjectRecord>,
    },
    /// More nodes now hold a copy of an object (a node copied it again after holders were
    /// lost; see [`crate::object_repairs`]). Taken only while the record still has this
    /// SHA-256, so a repair of an old version never names holders of a newer one; applying
    /// it twice changes nothing more.
    AddObjectHolders {
        key: String,
        sha256: String,
        holders: std::collections::BTreeSet<crate::NodeId>,
    },
    /// A new trigger (refused if its spec is invalid, its function does not exist, its name
    /// is taken or there are [`crate::TRIGGERS_MAX`]). A cron trigger's cursor starts at
    /// `now_ms`: it fires the ticks after its creation.
    CreateTrigger {
        now_ms: u64,
        spec: crate::TriggerSpec,
    },
    DeleteTrigger {
        name: String,
    },
    /// Pauses or resumes a trigger. Resuming moves a cron trigger's cursor to `now_ms`: the
    /// ticks of the pause are not missed ticks, and never fire.
    PauseTrigger {
        now_ms: u64,
        name: String,
        paused: bool,
    },
    /// A cron trigger fired `fired` ticks, the last at `cursor_ms`: proposed by the leader in
    /// one `Batch` with the `SubmitJobs` of those ticks. Taken only if it moves the cursor
    /// forward, so applying it twice changes nothing more.
    AdvanceTrigger {
        name: String,
        cursor_ms: u64,
        fired: u64,
    },
    /// A bucket trigger started jobs for these object versions: proposed by the leader in
    /// one `Batch` with their `SubmitJobs`. At most `triggers::BUCKET_OBJECTS_PER_PASS_MAX`;
    /// a version already seen counts once.
    AdvanceBucket {
        name: String,
        seen: Vec<triggers::Seen>,
    },
    /// A Kafka trigger started jobs for `records` records of `partition`, up to (not
    /// including) `next_offset`: proposed in one `Batch` with their `SubmitJobs`. Taken only
    /// if it moves the partition's cursor forward.
    AdvanceKafka {
        name: String,
        partition: i32,
        next_offset: i64,
        records: u64,
    },
    /// The leader gives partitions of a Kafka trigger's topic to nodes
    /// (`triggers::place_partitions`): each one taken only if its epoch is later than the
    /// partition's (so taking it twice, or a proposal from an older view, changes nothing).
    /// At most `triggers::KAFKA_PARTITIONS_MAX`, on nodes the cluster has.
    AssignKafka {
        name: String,
        owners: Vec<(i32, triggers::PartitionOwner)>,
    },
    /// A Kafka consumer's entry: `command` (its jobs and cursor moves) is applied only while
    /// `node` still holds each of `partitions` at the epoch given, else the whole is refused
    /// (`conflict`) and nothing of it is taken. This fences an owner the partitions were taken
    /// from (declared lost while only slow, or paused and woken): it can start no job and
    /// move no cursor once the new owner holds them.
    ///
    /// `first` gives, per partition, the offset of the entry's first record: the entry is
    /// refused too (`conflict`) if the cursor has passed it, that is if another entry took
    /// some of its records first. A consumer restarted before its last entry was applied
    /// where it reads may batch those records again with other bounds; a batch whose key
    /// exists is dropped whole, so taking such an entry would move the cursor past records
    /// no job holds. Refused, the consumer starts again from the cursor.
    Fenced {
        name: String,
        node: crate::NodeId,
        partitions: Vec<(i32, u64)>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        first: Vec<(i32, i64)>,
        command: Box<Command>,
    },
    /// `command`, then what its proposer decided ahead for the runs it changes (see
    /// [`Continuation`]): the end of a step's job and the start of the next step are one log
    /// entry instead of three (the end, the driver's decision, the placement).
    Continued {
        command: Box<Command>,
        then: Vec<Continuation>,
    },
    /// A new source of the catalogue (refused if its spec is invalid, its name is taken or
    /// there are [`crate::SOURCES_MAX`]).
    RegisterSource {
        now_ms: u64,
        spec: crate::SourceSpec,
    },
    /// Refused while a trigger reads the source or dead letters of it wait for delivery.
    DeleteSource {
        name: String,
    },
    /// Records sources refused (or whose jobs refused them): counted, and queued for their
    /// source's dead-letter destination (see [`crate::PendingDeadLetter`]). Proposed in the
    /// entry that moves a trigger's cursor past them; all or nothing.
    DeadLetters {
        now_ms: u64,
        letters: Vec<crate::DeadLetter>,
    },
    /// The leader delivered these dead letters: they leave the queue and are counted.
    /// Numbers no longer pending are passed over.
    DeadLettersDone {
        delivered: Vec<u64>,
    },
    /// Commands from many callers grouped into one log entry (group commit).
    Batch(Vec<Command>),
    /// A command proposed while serving a client's signed request: the log orders the
    /// requests' nonces, so a nonce accepted anywhere in the cluster is refused everywhere
    /// (and after a restart) until it leaves the replay window at `expires_ms`. `request` is
    /// chosen at random by the node that accepted the request: the commands of one request
    /// (and the same command sent again after a leader change) share it, a replay through
    /// any node has another one and is refused. The inner command is applied on behalf of
    /// `key` (a job records who submitted it; a key without the `admin` scope cancels only
    /// its own jobs).
    Signed {
        key: KeyId,
        nonce: String,
        request: u64,
        expires_ms: u64,
        command: Box<Command>,
    },
    /// The latest use of each key that nodes saw (see `ApiKey::last_used_ms`); a use never
    /// moves back.
    KeysUsed {
        uses: Vec<(KeyId, u64)>,
    },
}

impl Command {
    /// The proposer's clock, for a command that carries one; `State::apply` moves it up to
    /// the state's clock. Every command is named, so a new one must say whether it has one.
    pub(crate) fn now_ms_mut(&mut self) -> Option<&mut u64> {
        match self {
            Command::SubmitJobs { now_ms, .. }
            | Command::StartAttempts { now_ms, .. }
            | Command::FinishAttempts { now_ms, .. }
            | Command::CancelJob { now_ms, .. }
            | Command::AbandonAttempts { now_ms, .. }
            | Command::RegisterNode { now_ms, .. }
            | Command::JoinNode { now_ms, .. }
            | Command::Heartbeat { now_ms, .. }
            | Command::RecordEvents { now_ms, .. }
            | Command::HooksDone { now_ms, .. }
            | Command::EmitsDone { now_ms, .. }
            | Command::StartRun { now_ms, .. }
            | Command::RunCommands { now_ms, .. }
            | Command::ControlRun { now_ms, .. }
            | Command::RecordObjects { now_ms, .. }
            | Command::CreateTrigger { now_ms, .. }
            | Command::RegisterSource { now_ms, .. }
            | Command::DeadLetters { now_ms, .. }
            | Command::PauseTrigger { now_ms, .. } => Some(now_ms),
            Command::Signed { command, .. }
            | Command::Fenced { command, .. }
            | Command::Continued { command, .. } => command.now_ms_mut(),
            Command::DeployFunction { .. }
            | Command::DeployWorkflow { .. }
            | Command::PurgeRuns { .. }
            | Command::SetNodeStatus { .. }
            | Command::RemoveNode { .. }
            | Command::CreateKey { .. }
            | Command::RevokeKey { .. }
            | Command::SetConfig { .. }
            | Command::PurgeJobs { .. }
            | Command::EventsDelivered { .. }
            | Command::DeleteTrigger { .. }
            | Command::AdvanceTrigger { .. }
            | Command::AddObjectHolders { .. }
            | Command::KeysUsed { .. }
            | Command::AdvanceBucket { .. }
            | Command::AdvanceKafka { .. }
            | Command::AssignKafka { .. }
            | Command::DeleteSource { .. }
            | Command::DeadLettersDone { .. }
            | Command::Batch(_) => None,
        }
    }

    /// Whether applying the command twice has the effect of applying it once, so a write
    /// whose fate is unknown (its leader died while it was in flight) may be proposed again:
    /// jobs that all carry an idempotency key, a run start with one, results (fenced by
    /// attempt ids), heartbeats, a node's registration or status, the webhook's progress, and
    /// object records (a record replaces the one of its key).
    pub fn is_idempotent(&self) -> bool {
        match self {
            Command::SubmitJobs { jobs, .. } => jobs.iter().all(|j| j.idempotency_key.is_some()),
            Command::FinishAttempts { .. }
            | Command::Heartbeat { .. }
            | Command::RegisterNode { .. }
            | Command::SetNodeStatus { .. }
            | Command::EventsDelivered { .. }
            | Command::HooksDone { .. }
            | Command::EmitsDone { .. }
            | Command::RecordObjects { .. }
            | Command::AddObjectHolders { .. }
            | Command::AdvanceTrigger { .. }
            | Command::AdvanceBucket { .. }
            | Command::AdvanceKafka { .. }
            | Command::AssignKafka { .. }
            | Command::DeadLettersDone { .. }
            | Command::KeysUsed { .. } => true,
            Command::StartRun {
                idempotency_key, ..
            } => idempotency_key.is_some(),
            // Letters of Kafka records are passed over once the cursor is past them.
            Command::DeadLetters { letters, .. } => letters.iter().all(|l| l.kafka.is_some()),
            Command::Batch(commands) => commands.iter().all(Command::is_idempotent),
            // Sent again, it carries the same request: its nonce is not taken for a replay.
            Command::Signed { command, .. } => command.is_idempotent(),
            // Taken again, its jobs are found by their keys and its cursor moves are no-ops.
            Command::Fenced { command, .. } => command.is_idempotent(),
            // Taken again, its continuations find their runs' revisions moved on.
            Command::Continued { command, .. } => command.is_idempotent(),
            _ => false,
        }
    }
}

/// A run's next decision taken ahead by the node that proposes an entry changing the run:
/// the node whose job of the run ended (the decision after recording that result) or the node
/// that starts the run (its first decision). The pure `workflow::advance` computes it there,
/// on the proposer's applied state, exactly as the leader's driver would compute it once the
/// entry is applied; the revisions fence it: it is applied, in the same entry, only if the
/// run was at revision `from` before the entry (0: the entry creates the run) and is at `to`
/// after the entry's own change, with spec `version`. Anything else (the proposer's view was
/// stale, another result or a control came first) drops it whole, and the driver decides as
/// it always does. The decision is in the log, so a replay never depends on `advance`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Continuation {
    pub run: u64,
    pub version: u32,
    pub from: u64,
    pub to: u64,
    pub commands: Vec<workflow::RunCommand>,
    /// The proposer: a job these commands create starts on it in the same entry if it may
    /// ([`crate::State`]'s `continues_on`), else the scheduling loop places it as any job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<NodeId>,
}

/// What submitting one job led to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubmitResult {
    Created(JobId),
    /// The idempotency key was seen before: this is the job it created.
    Existing(JobId),
    Rejected(ApiError),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Done,
    Deployed {
        version: u32,
    },
    Submitted(Vec<SubmitResult>),
    Started(Vec<(JobId, AttemptId)>),
    /// How many results were taken; the rest were stale (superseded attempts).
    Finished {
        taken: u32,
        stale: u32,
    },
    Cancelled {
        previous: JobState,
    },
    Abandoned {
        attempts: u32,
    },
    Joined {
        id: NodeId,
    },
    Purged {
        jobs: u32,
    },
    /// A run was started, or (`existing`) its idempotency key named an earlier one.
    RunStarted {
        run: u64,
        existing: bool,
    },
    Rejected(ApiError),
    Batch(Vec<Response>),
}

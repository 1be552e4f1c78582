//! The replicated state and its deterministic transition function.
//!
//! Invariants (all of them in [`State::check_invariants`], which tests run after every command):
//! - a job is in `queue` iff it is queued and due now-or-never-delayed, in `delayed` iff it is
//!   queued with a back-off; never both;
//! - a job is in `running[node]`, with the id of its live attempt there, iff it is running and
//!   has a live attempt on `node` (at most one per node: backups run on distinct nodes);
//! - an idempotency key maps to exactly one job, which carries that key.

use crate::command::{AttemptResult, Command, JobSpec, Outcome, Response, SubmitResult};
use crate::config::ClusterConfig;
use crate::function::FunctionSpec;
use crate::ids::{AttemptId, JobId, KeyId, NodeId};
use crate::job::{Attempt, Job, JobError, JobState};
use crate::node::{NodeInfo, NodeLoad, NodeStatus};
use crate::object::{ObjectInfo, ObjectRecord, OBJECTS_PER_COMMAND_MAX, OBJECT_HOLDERS_MAX};
use crate::trigger::{Trigger, TriggerSpec, TRIGGERS_MAX};
use crate::{ApiError, ErrorCode, Event, EVENTS_MAX};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

mod invariants;
mod requests;

pub use requests::{SeenNonce, NONCES_MAX};

/// Largest job input, as serialized JSON.
pub const INPUT_BYTES_MAX: usize = 256 * 1024;
/// Largest output JSON an attempt may report; bigger results belong in objects.
pub const OUTPUT_BYTES_MAX: usize = 256 * 1024;
/// Longest idempotency key.
const IDEMPOTENCY_KEY_LEN_MAX: usize = 256;
/// Input files per job.
const FILES_PER_JOB_MAX: usize = 64;

/// What an API key may do. `Admin` implies the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Admin,
    Submit,
    Read,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "admin" => Some(Scope::Admin),
            "submit" => Some(Scope::Submit),
            "read" => Some(Scope::Read),
            _ => None,
        }
    }
}

/// An API key. The registry holds what verifies its signatures, sealed: the signing key
/// derived from the secret (`signature::signing_key`), encrypted under the cluster's
/// key-encryption key (`node::sealing`), so a leaked log or snapshot leaks no key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: KeyId,
    /// The hex secret itself, in the clear: only keys created before sealing (empty since).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret: String,
    /// The sealed signing key (hex: nonce, then ciphertext and tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
    pub scopes: Vec<Scope>,
    pub created_at_ms: u64,
    #[serde(default)]
    pub revoked: bool,
    /// After this time the key is refused (`--ttl`); `None`: it never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// The latest use the nodes recorded (to within [`crate::KEY_USE_RESOLUTION_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_ms: Option<u64>,
}

impl ApiKey {
    /// Whether the key has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms >= at)
    }

    pub fn allows(&self, scope: Scope) -> bool {
        !self.revoked
            && self
                .scopes
                .iter()
                .any(|s| *s == Scope::Admin || *s == scope)
    }
}

/// Jobs per (function, state), for metrics.
pub type JobCounts = BTreeMap<(String, JobState), u64>;

/// The whole replicated state. `Serialize` is the snapshot format.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    functions: BTreeMap<String, FunctionSpec>,
    /// Shared, so that a snapshot's copy of the state costs a pointer per job rather than a
    /// deep copy (which took tens of milliseconds for ~20,000 jobs, while applies waited);
    /// a job is copied on its next change only if a snapshot still holds it.
    jobs: BTreeMap<JobId, Arc<Job>>,
    keys: BTreeMap<KeyId, ApiKey>,
    nodes: BTreeMap<NodeId, NodeInfo>,
    config: ClusterConfig,
    next_job_id: u64,
    next_attempt_id: u64,
    /// Node ids are never reused: a node that leaves and comes back gets a new one.
    #[serde(default)]
    next_node_id: u64,
    /// The latest [`EVENTS_MAX`] events, oldest first.
    #[serde(default)]
    events: VecDeque<Event>,
    #[serde(default)]
    next_event_seq: u64,
    /// The last event the alert webhook has received.
    #[serde(default)]
    events_delivered: u64,
    /// The latest time any applied command carried: a command proposed earlier but committed
    /// later (its leader died, it waited for a quorum) is applied at this time, not its own,
    /// so what it records never ends before what the log already holds began (a node failed
    /// over with attempts started after the leader decided to, say).
    #[serde(default)]
    pub(crate) clock_ms: u64,
    /// Every deployed version of each workflow, oldest first: a run keeps its version.
    #[serde(default)]
    pub(crate) workflows: BTreeMap<String, Vec<workflow::WorkflowSpec>>,
    /// Shared with snapshot copies, as jobs are.
    #[serde(default)]
    pub(crate) runs: BTreeMap<u64, Arc<crate::Run>>,
    #[serde(default)]
    pub(crate) next_run_id: u64,
    /// URL hooks fired and not yet taken by their receiver nor given up, by number (see
    /// [`crate::PendingHook`]); at most [`crate::HOOKS_PENDING_MAX`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) hooks_pending: BTreeMap<u64, crate::PendingHook>,
    #[serde(default)]
    pub(crate) next_hook_seq: u64,
    /// Completions waiting for their sinks' confirmation, by number (see
    /// [`crate::PendingEmit`]); at most [`crate::EMITS_PENDING_MAX`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) emits_pending: BTreeMap<u64, crate::PendingEmit>,
    #[serde(default)]
    pub(crate) next_emit_seq: u64,
    /// Objects on the nodes' own disks, by key (see [`crate::ObjectInfo`]); empty with an
    /// S3-compatible store. Shared as the jobs are, so a snapshot's copy is cheap.
    #[serde(default)]
    objects: BTreeMap<String, Arc<ObjectInfo>>,
    #[serde(default)]
    triggers: BTreeMap<String, Trigger>,
    /// The source catalogue, by name (see [`crate::Source`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) sources: BTreeMap<String, crate::Source>,
    /// Dead letters not yet delivered to their source's destination, by number (see
    /// [`crate::PendingDeadLetter`]); at most [`crate::DEAD_LETTERS_PENDING_MAX`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) dead_letters: BTreeMap<u64, crate::PendingDeadLetter>,
    #[serde(default)]
    pub(crate) next_dead_letter_seq: u64,
    /// Nonces of signed requests that changed the state, until they leave the replay window
    /// (see [`Command::Signed`]), by `"{key} {nonce}"`.
    #[serde(default)]
    nonces: BTreeMap<String, SeenNonce>,
    /// Each throttle bucket's latest starts (oldest first; only as many as its rate looks at),
    /// for the rate limits (see the `throttle` crate).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    throttle_starts: BTreeMap<String, VecDeque<u64>>,
    /// When buckets whose latest start left every window were last dropped.
    #[serde(default)]
    throttle_pruned_ms: u64,
    // Derived indexes, rebuilt after a snapshot is loaded.
    #[serde(skip)]
    queue: BTreeSet<(Reverse<i32>, JobId)>,
    #[serde(skip)]
    delayed: BTreeSet<(u64, JobId)>,
    /// The live attempt of each job running on each node (see `attempts_on`).
    #[serde(skip)]
    running: BTreeMap<NodeId, BTreeMap<JobId, AttemptId>>,
    #[serde(skip)]
    idempotency: HashMap<String, JobId>,
    #[serde(skip)]
    pub(crate) run_keys: HashMap<String, u64>,
    /// The runs not finished, by id: what the run driver looks at after every entry, where
    /// the runs kept are many times more.
    #[serde(skip)]
    pub(crate) live_runs: BTreeSet<u64>,
    /// `nonces` by expiry, to forget them in order.
    #[serde(skip)]
    nonce_expiry: BTreeSet<(u64, String)>,
    /// The key whose signed request is being applied (see [`Command::Signed`]); `None`
    /// between commands and for the nodes' own.
    #[serde(skip)]
    requester: Option<KeyId>,
    /// Running jobs per throttle bucket (a job counts once, whatever its backups).
    #[serde(skip)]
    throttle_running: HashMap<String, u32>,
}

impl State {
    /// Decodes a snapshot and rebuilds the derived indexes.
    pub fn decode(bytes: &[u8]) -> Result<State, serde_json::Error> {
        let mut state: State = serde_json::from_slice(bytes)?;
        state.rebuild_indexes();
        Ok(state)
    }

    /// A copy of what a snapshot holds (the derived indexes stay empty): cheap, the jobs are
    /// shared with `self`. Taken under the state machine's lock, encoded outside it.
    pub fn snapshot_copy(&self) -> State {
        // Every field named, so that a new one cannot be left out of snapshots unnoticed.
        let State {
            functions,
            jobs,
            keys,
            nodes,
            config,
            next_job_id,
            next_attempt_id,
            next_node_id,
            events,
            next_event_seq,
            events_delivered,
            clock_ms,
            workflows,
            runs,
            next_run_id,
            hooks_pending,
            next_hook_seq,
            emits_pending,
            next_emit_seq,
            objects,
            triggers,
            sources,
            dead_letters,
            next_dead_letter_seq,
            nonces,
            throttle_starts,
            throttle_pruned_ms,
            queue: _,
            delayed: _,
            running: _,
            idempotency: _,
            run_keys: _,
            live_runs: _,
            nonce_expiry: _,
            requester: _,
            throttle_running: _,
        } = self;
        State {
            functions: functions.clone(),
            jobs: jobs.clone(),
            keys: keys.clone(),
            nodes: nodes.clone(),
            config: config.clone(),
            next_job_id: *next_job_id,
            next_attempt_id: *next_attempt_id,
            next_node_id: *next_node_id,
            events: events.clone(),
            next_event_seq: *next_event_seq,
            events_delivered: *events_delivered,
            clock_ms: *clock_ms,
            workflows: workflows.clone(),
            runs: runs.clone(),
            next_run_id: *next_run_id,
            hooks_pending: hooks_pending.clone(),
            next_hook_seq: *next_hook_seq,
            emits_pending: emits_pending.clone(),
            next_emit_seq: *next_emit_seq,
            objects: objects.clone(),
            triggers: triggers.clone(),
            sources: sources.clone(),
            dead_letters: dead_letters.clone(),
            next_dead_letter_seq: *next_dead_letter_seq,
            nonces: nonces.clone(),
            throttle_starts: throttle_starts.clone(),
            throttle_pruned_ms: *throttle_pruned_ms,
            ..State::default()
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("the state is always representable as JSON")
    }

    /// [`State::encode`] into `out` as it goes (a snapshot of tens of megabytes streams into
    /// its file rather than into one buffer); what [`State::decode`] reads.
    pub fn encode_to(&self, out: impl std::io::Write) -> std::io::Result<()> {
        serde_json::to_writer(out, self).map_err(std::io::Error::other)
    }

    fn rebuild_indexes(&mut self) {
        self.queue.clear();
        self.delayed.clear();
        self.running.clear();
        self.idempotency.clear();
        self.nonce_expiry = self
            .nonces
            .iter()
            .map(|(id, seen)| (seen.expires_ms, id.clone()))
            .collect();
        self.throttle_running.clear();
        self.run_keys = self
            .runs
            .values()
            .filter_map(|r| Some((r.idempotency_key.clone()?, r.state.id)))
            .collect();
        self.live_runs = self
            .runs
            .values()
            .filter(|r| !r.state.is_finished())
            .map(|r| r.state.id)
            .collect();
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            self.index_insert(id);
            let job = &self.jobs[&id];
            if let Some(key) = &job.idempotency_key {
                self.idempotency.insert(key.clone(), id);
            }
        }
    }

    // --- reads ---

    pub fn function(&self, name: &str) -> Option<&FunctionSpec> {
        self.functions.get(name)
    }

    pub fn functions(&self) -> impl Iterator<Item = &FunctionSpec> {
        self.functions.values()
    }

    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id).map(|job| &**job)
    }

    /// The job, shared: a clone is a pointer's (the state copies a job on write).
    pub fn shared_job(&self, id: JobId) -> Option<&Arc<Job>> {
        self.jobs.get(&id)
    }

    /// Jobs in id order starting after `after`, newest last.
    pub fn jobs_after(&self, after: Option<JobId>) -> impl DoubleEndedIterator<Item = &Job> {
        let start = after.map_or(0, |id| id.0.saturating_add(1));
        self.jobs.range(JobId(start)..).map(|(_, job)| &**job)
    }

    /// Jobs in id order, ending before `before`, newest first.
    pub fn jobs_before(&self, before: Option<JobId>) -> impl Iterator<Item = &Job> {
        let end = before.map_or(u64::MAX, |id| id.0);
        self.jobs.range(..JobId(end)).rev().map(|(_, job)| &**job)
    }

    pub fn job_by_idempotency_key(&self, key: &str) -> Option<JobId> {
        self.idempotency.get(key).copied()
    }

    pub fn key(&self, id: &KeyId) -> Option<&ApiKey> {
        self.keys.get(id)
    }

    pub fn keys(&self) -> impl Iterator<Item = &ApiKey> {
        self.keys.values()
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&id)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values()
    }

    /// What the registry knows of the object `key`, if it was recorded.
    pub fn object(&self, key: &str) -> Option<&ObjectInfo> {
        self.objects.get(key).map(|o| &**o)
    }

    /// Recorded objects, in key order.
    pub fn objects(&self) -> impl Iterator<Item = (&str, &ObjectInfo)> {
        self.objects.iter().map(|(k, o)| (k.as_str(), &**o))
    }

    /// The cluster config: typed through [`ClusterConfig::settings`].
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Jobs queued and due at `now_ms`, highest priority first, then oldest first; at most
    /// `limit` of them.
    pub fn due_jobs(&self, now_ms: u64, limit: usize) -> Vec<&Job> {
        self.due_jobs_where(now_ms, limit, |_| true)
    }

    /// Like [`State::due_jobs`], passing over the jobs `keep` refuses (which are still looked
    /// at, one by one: keep the test cheap).
    pub fn due_jobs_where<'s>(
        &'s self,
        now_ms: u64,
        limit: usize,
        mut keep: impl FnMut(&'s Job) -> bool,
    ) -> Vec<&'s Job> {
        let mut due: Vec<&Job> = self
            .queue
            .iter()
            .map(|(_, id)| &*self.jobs[id])
            .filter(|job| keep(job))
            .take(limit)
            .collect();
        let delayed_due = self
            .delayed
            .iter()
            .take_while(|(t, _)| *t <= now_ms)
            .map(|(_, id)| &*self.jobs[id])
            .filter(|job| keep(job))
            .take(limit);
        due.extend(delayed_due);
        if due.len() > limit {
            due.sort_by_key(|job| (Reverse(job.priority), job.id));
            due.truncate(limit);
        }
        due
    }

    /// How many due jobs are ahead of `id` in the queue (higher priority, or as high and
    /// older); `None` unless `id` is queued and due. Counts them one by one: for a single
    /// job's read, not for a loop.
    pub fn queued_ahead(&self, id: JobId) -> Option<usize> {
        let job = self.jobs.get(&id)?;
        let key = (Reverse(job.priority), id);
        self.queue
            .contains(&key)
            .then(|| self.queue.range(..key).count())
    }

    /// Finished jobs that finished before `finished_before_ms`, lowest id first, at most
    /// `limit`: what a retention sweep may purge.
    pub fn expired_jobs(&self, finished_before_ms: u64, limit: usize) -> Vec<JobId> {
        self.jobs
            .values()
            .filter(|j| {
                j.state.is_terminal() && j.finished_at_ms.is_some_and(|t| t < finished_before_ms)
            })
            .map(|j| j.id)
            .take(limit)
            .collect()
    }

    /// The last event the alert webhook has received (0: none yet).
    pub fn events_delivered(&self) -> u64 {
        self.events_delivered
    }

    /// The number of the latest event (0: none yet).
    pub fn last_event_seq(&self) -> u64 {
        self.next_event_seq
    }

    /// Adds an event to the ring (the oldest goes if it is full) and queues it for
    /// `alerts.sink`.
    pub(crate) fn record_event(
        &mut self,
        now_ms: u64,
        new: crate::NewEvent,
        run: Option<serde_json::Value>,
    ) {
        self.push_event(now_ms, new, run);
        if let Some(event) = self.events.back().cloned() {
            self.emit_event(now_ms, &event);
        }
    }

    /// Adds an event to the ring (the oldest goes if it is full).
    pub(crate) fn push_event(
        &mut self,
        now_ms: u64,
        new: crate::NewEvent,
        run: Option<serde_json::Value>,
    ) {
        self.next_event_seq += 1;
        if self.events.len() == EVENTS_MAX {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            seq: self.next_event_seq,
            at_ms: now_ms,
            alert: new.kind.is_alert(),
            kind: new.kind,
            node: new.node,
            message: new.message,
            run,
        });
    }

    /// Events numbered after `after`, oldest first.
    pub fn events_after(&self, after: u64) -> impl Iterator<Item = &Event> {
        // Numbers are consecutive, so the first wanted one's position is known.
        let first = self.events.front().map_or(0, |e| e.seq);
        let skip = (after + 1).saturating_sub(first) as usize;
        self.events.iter().skip(skip)
    }

    pub fn trigger(&self, name: &str) -> Option<&Trigger> {
        self.triggers.get(name)
    }

    /// Every trigger, by name.
    pub fn triggers(&self) -> impl Iterator<Item = &Trigger> {
        self.triggers.values()
    }

    /// The earliest time a delayed job becomes due, if any.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.delayed.first().map(|(t, _)| *t)
    }

    /// The live attempts on `node`, by job, in job order: what a node's dispatcher compares
    /// with what it runs after every entry, without looking up a job.
    pub fn attempts_on(&self, node: NodeId) -> Option<&BTreeMap<JobId, AttemptId>> {
        self.running.get(&node)
    }

    pub fn running_count(&self, node: NodeId) -> usize {
        self.running.get(&node).map_or(0, BTreeMap::len)
    }

    pub fn job_counts(&self) -> JobCounts {
        let mut counts = JobCounts::new();
        for job in self.jobs.values() {
            *counts.entry((job.function.clone(), job.state)).or_default() += 1;
        }
        counts
    }

    // --- the transition function ---

    /// Applies one command. Deterministic: the same commands in the same order give the same
    /// state and responses on every replica.
    pub fn apply(&mut self, mut command: Command) -> Response {
        if let Some(now_ms) = command.now_ms_mut() {
            self.clock_ms = self.clock_ms.max(*now_ms);
            *now_ms = self.clock_ms;
        }
        match command {
            Command::DeployFunction { spec } => self.deploy(spec),
            Command::SubmitJobs {
                now_ms,
                jobs,
                place,
            } => {
                let mut results = Vec::with_capacity(jobs.len());
                for (i, spec) in jobs.into_iter().enumerate() {
                    let result = self.submit_job(now_ms, spec, None);
                    if let (SubmitResult::Created(id), Some(Some(node))) = (&result, place.get(i)) {
                        self.start(now_ms, *node, vec![*id]);
                    }
                    results.push(result);
                }
                Response::Submitted(results)
            }
            Command::StartAttempts { now_ms, node, jobs } => self.start(now_ms, node, jobs),
            Command::FinishAttempts { now_ms, results } => self.finish(now_ms, results),
            Command::CancelJob { now_ms, job } => match self.may_change(job) {
                Ok(()) => self.cancel_job(now_ms, job),
                Err(e) => Response::Rejected(e),
            },
            Command::AbandonAttempts { now_ms, node, code } => self.abandon(now_ms, node, code),
            Command::RegisterNode {
                id,
                addr,
                slots,
                labels,
                now_ms,
            } => {
                self.next_node_id = self.next_node_id.max(id);
                let node = self.nodes.entry(id).or_insert_with(|| NodeInfo::new(id));
                node.addr = addr;
                node.slots = slots;
                node.labels = labels;
                node.last_heartbeat_ms = now_ms;
                // The process runs again: whatever stopped it (SIGTERM, a crash) is over, and
                // only an operator's drain carries over.
                node.status = node.running_status();
                Response::Done
            }
            Command::JoinNode {
                addr,
                slots,
                labels,
                now_ms,
            } => {
                self.next_node_id = self
                    .next_node_id
                    .max(self.nodes.keys().max().copied().unwrap_or(0))
                    + 1;
                let id = self.next_node_id;
                let mut node = NodeInfo::new(id);
                node.status = NodeStatus::Joining;
                node.addr = addr;
                node.slots = slots;
                node.labels = labels;
                node.last_heartbeat_ms = now_ms;
                self.nodes.insert(id, node);
                Response::Joined { id }
            }
            Command::Heartbeat { node, now_ms, load } => self.heartbeat(node, now_ms, load),
            Command::SetNodeStatus { node, status } => match self.nodes.get_mut(&node) {
                Some(n) => {
                    // `Draining` and `Up` are the operator's drain and undrain; `Stopping` and
                    // `Down` are the process's state and leave the operator's wish as it was.
                    match status {
                        NodeStatus::Draining => n.drained = true,
                        NodeStatus::Up => n.drained = false,
                        NodeStatus::Stopping | NodeStatus::Down | NodeStatus::Joining => {}
                    }
                    n.status = status;
                    Response::Done
                }
                None => Response::Rejected(ApiError::new(
                    ErrorCode::NotFound,
                    format!("no node {node}"),
                )),
            },
            Command::RemoveNode { node } => match self.nodes.remove(&node) {
                Some(_) => {
                    // Its attempts end with it (`node_lost`, retried by policy): nothing
                    // would ever fail them over once it is gone, and its jobs would stay
                    // running for good. At the state's clock: the command carries none.
                    self.abandon(self.clock_ms, node, ErrorCode::NodeLost.as_str().into());
                    self.forget_holder(node);
                    Response::Done
                }
                None => Response::Rejected(ApiError::new(
                    ErrorCode::NotFound,
                    format!("no node {node}"),
                )),
            },
            Command::CreateKey { key } => {
                if self.keys.contains_key(&key.id) {
                    return Response::Rejected(ApiError::new(
                        ErrorCode::Conflict,
                        format!("key {} exists", key.id),
                    ));
                }
                self.keys.insert(key.id.clone(), key);
                Response::Done
            }
            Command::RevokeKey { id } => match self.keys.get_mut(&id) {
                Some(key) => {
                    key.revoked = true;
                    Response::Done
                }
                None => {
                    Response::Rejected(ApiError::new(ErrorCode::NotFound, format!("no key {id}")))
                }
            },
            Command::SetConfig { key, value } => {
                self.config.set(key, value);
                Response::Done
            }
            Command::PurgeJobs {
                finished_before_ms,
                jobs,
            } => self.purge(finished_before_ms, jobs),
            Command::EventsDelivered { seq } => {
                self.events_delivered = self.events_delivered.max(seq);
                Response::Done
            }
            Command::RecordEvents { now_ms, events } => {
                for new in events {
                    self.record_event(now_ms, new, None);
                }
                Response::Done
            }
            Command::HooksDone {
                now_ms,
                delivered,
                failed,
            } => self.hooks_done(now_ms, delivered, failed),
            Command::EmitsDone {
                now_ms,
                delivered,
                failed,
            } => self.emits_done(now_ms, delivered, failed),
            Command::DeployWorkflow { spec } => self.deploy_workflow(*spec),
            Command::StartRun {
                now_ms,
                workflow,
                input,
                idempotency_key,
            } => self.start_run(now_ms, workflow, input, idempotency_key),
            Command::RunCommands {
                now_ms,
                run,
                commands,
            } => self.run_commands(now_ms, run, commands, None),
            Command::ControlRun {
                now_ms,
                run,
                control,
            } => self.control_run(now_ms, run, control),
            Command::PurgeRuns {
                finished_before_ms,
                runs,
            } => self.purge_runs(finished_before_ms, runs),
            Command::RecordObjects { now_ms, objects } => self.record_objects(now_ms, objects),
            Command::AddObjectHolders {
                key,
                sha256,
                holders,
            } => {
                let known: Vec<NodeId> = holders
                    .into_iter()
                    .filter(|id| self.nodes.contains_key(id))
                    .collect();
                if let Some(info) = self.objects.get_mut(&key) {
                    if info.sha256 == sha256 {
                        let info = Arc::make_mut(info);
                        for id in known {
                            if info.holders.len() >= OBJECT_HOLDERS_MAX {
                                break;
                            }
                            info.holders.insert(id);
                        }
                    }
                }
                Response::Done
            }
            Command::CreateTrigger { now_ms, spec } => self.create_trigger(now_ms, spec),
            Command::DeleteTrigger { name } => match self.triggers.remove(&name) {
                Some(_) => Response::Done,
                None => no_trigger(&name),
            },
            Command::PauseTrigger {
                now_ms,
                name,
                paused,
            } => match self.triggers.get_mut(&name) {
                Some(t) => {
                    if t.paused && !paused {
                        t.cursor_ms = t.cursor_ms.max(now_ms);
                    }
                    t.paused = paused;
                    Response::Done
                }
                None => no_trigger(&name),
            },
            Command::AdvanceTrigger {
                name,
                cursor_ms,
                fired,
            } => match self.triggers.get_mut(&name) {
                Some(t) => {
                    if cursor_ms > t.cursor_ms {
                        t.cursor_ms = cursor_ms;
                        t.fired += fired;
                    }
                    Response::Done
                }
                None => no_trigger(&name),
            },
            Command::AdvanceBucket { name, seen } => self.advance_bucket(&name, &seen),
            Command::AdvanceKafka {
                name,
                partition,
                next_offset,
                records,
            } => self.advance_kafka(&name, partition, next_offset, records),
            Command::AssignKafka { name, owners } => self.assign_kafka(&name, owners),
            Command::Fenced {
                name,
                node,
                partitions,
                first,
                command,
            } => match self.fence(&name, node, &partitions, &first) {
                Ok(()) => self.apply(*command),
                Err(e) => Response::Rejected(e),
            },
            command @ (Command::RegisterSource { .. }
            | Command::DeleteSource { .. }
            | Command::DeadLetters { .. }
            | Command::DeadLettersDone { .. }) => self.apply_source(command),
            Command::Batch(commands) => {
                Response::Batch(commands.into_iter().map(|c| self.apply(c)).collect())
            }
            Command::Signed {
                key,
                nonce,
                request,
                expires_ms,
                command,
            } => self.apply_signed(key, nonce, request, expires_ms, *command),
            Command::KeysUsed { uses } => self.keys_used(uses),
            Command::Continued { command, then } => self.continued(*command, then),
        }
    }

    fn record_objects(&mut self, now_ms: u64, objects: Vec<ObjectRecord>) -> Response {
        if objects.len() > OBJECTS_PER_COMMAND_MAX {
            return Response::Rejected(ApiError::new(
                ErrorCode::TooLarge,
                format!("at most {OBJECTS_PER_COMMAND_MAX} objects per record"),
            ));
        }
        if let Some(why) = objects.iter().find_map(|o| o.check().err()) {
            return Response::Rejected(ApiError::new(ErrorCode::InvalidInput, why));
        }
        for record in objects {
            let holders: BTreeSet<NodeId> = record
                .holders
                .into_iter()
                .filter(|id| self.nodes.contains_key(id))
                .collect();
            if holders.is_empty() {
                // Every node that held it was removed meanwhile: the object is gone.
                self.objects.remove(&record.key);
                continue;
            }
            let info = ObjectInfo {
                size: record.size,
                sha256: record.sha256,
                holders,
                recorded_at_ms: now_ms,
            };
            self.objects.insert(record.key, Arc::new(info));
        }
        Response::Done
    }

    /// A removed node holds nothing any more; an object it alone held is gone.
    fn forget_holder(&mut self, node: NodeId) {
        let held: Vec<String> = self
            .objects
            .iter()
            .filter(|(_, o)| o.holders.contains(&node))
            .map(|(k, _)| k.clone())
            .collect();
        for key in held {
            let info = Arc::make_mut(self.objects.get_mut(&key).expect("listed above"));
            info.holders.remove(&node);
            if info.holders.is_empty() {
                self.objects.remove(&key);
            }
        }
    }

    /// Forgets the records of a purged job's outputs and logs (`jobs/{id}/…`,
    /// `logs/{id}/…`): retention deletes their files on every node.
    fn forget_job_objects(&mut self, id: JobId) {
        for prefix in [format!("jobs/{id}/"), format!("logs/{id}/")] {
            let keys: Vec<String> = self
                .objects
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .collect();
            for key in keys {
                self.objects.remove(&key);
            }
        }
    }
    fn create_trigger(&mut self, now_ms: u64, spec: TriggerSpec) -> Response {
        let invalid = |e| Response::Rejected(crate::source::source_error(e));
        if let Err(e) = spec.validate() {
            return invalid(e);
        }
        // A trigger that names a source reads what the source is.
        let spec = match spec
            .source
            .as_deref()
            .map(|name| (name, self.sources.get(name)))
        {
            None => spec,
            Some((name, None)) => {
                return Response::Rejected(ApiError::new(
                    ErrorCode::NotFound,
                    format!("no source {name:?}"),
                ))
            }
            Some((_, Some(source))) => match source.spec.reader(&spec) {
                Ok(spec) => spec,
                Err(e) => return invalid(e),
            },
        };
        let missing = match spec.target() {
            Ok(triggers::Target::Function(f)) => {
                (!self.functions.contains_key(f)).then(|| format!("no function {f:?}"))
            }
            Ok(triggers::Target::Workflow(w)) => {
                (!self.workflows.contains_key(w)).then(|| format!("no workflow {w:?}"))
            }
            Err(e) => Some(e.message),
        };
        if let Some(message) = missing {
            return Response::Rejected(ApiError::new(ErrorCode::NotFound, message));
        }
        if self.triggers.contains_key(&spec.name) {
            return Response::Rejected(ApiError::new(
                ErrorCode::Conflict,
                format!("trigger {} exists; delete it first", spec.name),
            ));
        }
        if self.triggers.len() >= TRIGGERS_MAX {
            return Response::Rejected(ApiError::new(
                ErrorCode::TooLarge,
                format!("the cluster has {TRIGGERS_MAX} triggers, the most it takes"),
            ));
        }
        let trigger = Trigger {
            bucket: spec
                .bucket
                .as_ref()
                .map(|_| triggers::BucketCursor::default()),
            kafka: spec
                .kafka
                .as_ref()
                .map(|_| triggers::KafkaCursor::default()),
            spec,
            created_at_ms: now_ms,
            paused: false,
            cursor_ms: now_ms,
            fired: 0,
        };
        self.triggers.insert(trigger.spec.name.clone(), trigger);
        Response::Done
    }

    fn advance_bucket(&mut self, name: &str, seen: &[triggers::Seen]) -> Response {
        if seen.len() > triggers::BUCKET_OBJECTS_PER_PASS_MAX {
            return Response::Rejected(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "a bucket trigger takes at most {} objects per entry",
                    triggers::BUCKET_OBJECTS_PER_PASS_MAX
                ),
            ));
        }
        let Some(t) = self.triggers.get_mut(name) else {
            return no_trigger(name);
        };
        let Some(cursor) = t.bucket.as_mut() else {
            return not_a(name, "bucket");
        };
        let new = seen
            .iter()
            .filter(|s| !cursor.seen.contains_key(&s.id))
            .count();
        cursor.advance(seen);
        t.fired += new as u64;
        Response::Done
    }

    fn advance_kafka(&mut self, name: &str, partition: i32, next: i64, records: u64) -> Response {
        let Some(t) = self.triggers.get_mut(name) else {
            return no_trigger(name);
        };
        let Some(cursor) = t.kafka.as_mut() else {
            return not_a(name, "Kafka");
        };
        if next > cursor.next_offset(partition) {
            cursor.advance(partition, next);
            t.fired += records;
        }
        Response::Done
    }

    fn assign_kafka(
        &mut self,
        name: &str,
        owners: Vec<(i32, triggers::PartitionOwner)>,
    ) -> Response {
        if owners.len() > triggers::KAFKA_PARTITIONS_MAX {
            return Response::Rejected(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "a Kafka trigger has at most {} partitions",
                    triggers::KAFKA_PARTITIONS_MAX
                ),
            ));
        }
        if let Some((_, o)) = owners
            .iter()
            .find(|(_, o)| !self.nodes.contains_key(&o.node))
        {
            return Response::Rejected(ApiError::new(
                ErrorCode::InvalidInput,
                format!("no node {} to give partitions to", o.node),
            ));
        }
        let Some(t) = self.triggers.get_mut(name) else {
            return no_trigger(name);
        };
        let Some(cursor) = t.kafka.as_mut() else {
            return not_a(name, "Kafka");
        };
        for (partition, owner) in owners {
            cursor.assign(partition, owner);
        }
        Response::Done
    }

    /// Whether `node` still holds each of a Kafka trigger's `partitions` at its epoch.
    fn fence(
        &self,
        name: &str,
        node: NodeId,
        partitions: &[(i32, u64)],
        first: &[(i32, i64)],
    ) -> Result<(), ApiError> {
        let Some(t) = self.triggers.get(name) else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no trigger {name:?}"),
            ));
        };
        let cursor = t.kafka.as_ref();
        match partitions
            .iter()
            .find(|&&(p, epoch)| !cursor.is_some_and(|c| c.holds(node, p, epoch)))
        {
            None => {}
            Some((p, epoch)) => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                    "node {node} no longer holds partition {p} of trigger {name} at epoch {epoch}"
                ),
                ))
            }
        }
        match first
            .iter()
            .find(|&&(p, offset)| cursor.is_some_and(|c| c.next_offset(p) > offset))
        {
            None => Ok(()),
            Some((p, offset)) => Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "the cursor of partition {p} of trigger {name} is past offset {offset}: \
                     another entry took these records"
                ),
            )),
        }
    }

    fn purge(&mut self, finished_before_ms: u64, jobs: Vec<JobId>) -> Response {
        let mut purged = 0;
        for id in jobs {
            let expired = self.jobs.get(&id).is_some_and(|j| {
                j.state.is_terminal() && j.finished_at_ms.is_some_and(|t| t < finished_before_ms)
            });
            if expired {
                let job = self.jobs.remove(&id).expect("checked above");
                if let Some(key) = &job.idempotency_key {
                    self.idempotency.remove(key);
                }
                self.forget_job_objects(id);
                purged += 1;
            }
        }
        Response::Purged { jobs: purged }
    }

    fn heartbeat(&mut self, id: NodeId, now_ms: u64, load: NodeLoad) -> Response {
        let Some(node) = self.nodes.get_mut(&id) else {
            return Response::Rejected(ApiError::new(ErrorCode::NotFound, format!("no node {id}")));
        };
        node.last_heartbeat_ms = now_ms;
        node.load = load;
        // A node that was marked down and is heard from again is back (a drained one stays
        // draining until an operator says otherwise; a stopping one stays stopping).
        if node.status == NodeStatus::Down {
            node.status = node.running_status();
        }
        Response::Done
    }

    fn deploy(&mut self, mut spec: FunctionSpec) -> Response {
        if let Err(message) = spec.validate() {
            return Response::Rejected(ApiError::new(ErrorCode::InvalidInput, message));
        }
        spec.version = self
            .functions
            .get(&spec.name)
            .map_or(1, |old| old.version + 1);
        let version = spec.version;
        self.functions.insert(spec.name.clone(), spec);
        Response::Deployed { version }
    }

    /// Checks a job spec against the limits; the API runs the same check before proposing.
    pub fn check_job_spec(&self, spec: &JobSpec) -> Result<(), ApiError> {
        if !self.functions.contains_key(&spec.function) {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no function {:?}", spec.function),
            ));
        }
        let input_len = serde_json::to_vec(&spec.input).map_or(usize::MAX, |v| v.len());
        if input_len > INPUT_BYTES_MAX {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!("input is {input_len} bytes; the limit is {INPUT_BYTES_MAX}"),
            ));
        }
        if spec.files.len() > FILES_PER_JOB_MAX {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!("at most {FILES_PER_JOB_MAX} files per job"),
            ));
        }
        if let Some(key) = &spec.idempotency_key {
            if key.is_empty() || key.len() > IDEMPOTENCY_KEY_LEN_MAX {
                return Err(ApiError::new(
                    ErrorCode::InvalidInput,
                    format!("idempotency key must be 1 to {IDEMPOTENCY_KEY_LEN_MAX} bytes"),
                ));
            }
        }
        Ok(())
    }

    /// Creates a job; `run` links it to the run element it is an attempt of.
    pub(crate) fn submit_job(
        &mut self,
        now_ms: u64,
        spec: JobSpec,
        run: Option<crate::RunLink>,
    ) -> SubmitResult {
        if let Some(key) = &spec.idempotency_key {
            if let Some(id) = self.idempotency.get(key) {
                return SubmitResult::Existing(*id);
            }
        }
        if let Err(e) = self.check_job_spec(&spec) {
            return SubmitResult::Rejected(e);
        }
        self.next_job_id += 1;
        let id = JobId(self.next_job_id);
        let version = self.functions[&spec.function].version;
        let throttles = self.throttles(&spec, run.as_ref());
        if let Some(key) = &spec.idempotency_key {
            self.idempotency.insert(key.clone(), id);
        }
        let job = Job {
            id,
            function: spec.function,
            function_version: version,
            input: spec.input,
            files: spec.files,
            priority: spec.priority,
            idempotency_key: spec.idempotency_key,
            state: JobState::Queued,
            attempts: Vec::new(),
            submitted_at_ms: now_ms,
            not_before_ms: 0,
            finished_at_ms: None,
            output: None,
            objects: Vec::new(),
            error: None,
            tries: 0,
            run,
            submitted_by: self.requester.clone(),
            throttles,
        };
        self.jobs.insert(id, Arc::new(job));
        self.index_insert(id);
        SubmitResult::Created(id)
    }

    pub(crate) fn start(&mut self, now_ms: u64, node: NodeId, jobs: Vec<JobId>) -> Response {
        let mut started = Vec::with_capacity(jobs.len());
        for id in jobs {
            // A job may have been cancelled, finished or started here since the leader chose it.
            if !self.startable(id, node) {
                continue;
            }
            let job = &self.jobs[&id];
            let new_try = job.state == JobState::Queued;
            // The scheduler placed it within its throttles, but another proposer (a submit
            // placed at once, an old leader) may have started one of its bucket since.
            if new_try && self.throttled(job, now_ms).is_some() {
                continue;
            }
            if new_try {
                self.record_throttled_start(id, now_ms);
            }
            self.index_remove(id);
            self.next_attempt_id += 1;
            let attempt = AttemptId(self.next_attempt_id);
            let job = self.job_mut(id).expect("startable jobs exist");
            if job.state == JobState::Queued {
                job.state = JobState::Running;
                job.tries += 1;
            }
            job.attempts.push(Attempt {
                id: attempt,
                node,
                started_at_ms: now_ms,
                finished_at_ms: None,
                output: None,
                objects: Vec::new(),
                error: None,
                log_bytes: 0,
                log: None,
                usage: None,
            });
            self.index_insert(id);
            started.push((id, attempt));
        }
        Response::Started(started)
    }

    /// Whether job `id`, just created by a continuation that `node` proposed, starts on it in
    /// the same entry: the node is up, has a free slot (not only room in its prefetch) and
    /// carries the function's labels, no other job waits in the queue (a continuation never
    /// jumps it), and neither the function (a strategy of its own, backups) nor an operator
    /// (a weight of 0) says to place it otherwise. Throttles are checked by the start itself.
    /// Else the scheduling loop places it as any job.
    pub(crate) fn continues_on(&self, node: NodeId, id: JobId, now_ms: u64) -> bool {
        let (Some(n), Some(job)) = (self.nodes.get(&node), self.jobs.get(&id)) else {
            return false;
        };
        let Some(f) = self.functions.get(&job.function) else {
            return false;
        };
        let others_wait = self.queue.iter().any(|(_, queued)| *queued != id);
        n.status == NodeStatus::Up
            && (self.running_count(node) as u64) < u64::from(n.slots)
            && !others_wait
            && job.state == JobState::Queued
            && job.not_before_ms <= now_ms
            && f.strategy.is_none()
            && !f.keeps_all_attempts()
            && f.labels.iter().all(|l| n.labels.contains(l))
            && self.config.settings().weight(node) != Some(0)
    }

    /// A queued job may start anywhere; a running one may get a backup on a node it does not
    /// run on yet, while it has fewer live attempts than its function allows.
    fn startable(&self, id: JobId, node: NodeId) -> bool {
        // A placement proposed before its node was removed and committed after it would start
        // an attempt nothing runs and nothing fails over (found by the chaos suite).
        if !self.nodes.contains_key(&node) {
            return false;
        }
        let Some(job) = self.jobs.get(&id) else {
            return false;
        };
        match job.state {
            JobState::Queued => true,
            JobState::Running => {
                let wanted =
                    1 + self.functions.get(&job.function).map_or(0, |f| f.backups) as usize;
                job.live_attempts().count() < wanted && job.live_attempt_on(node).is_none()
            }
            _ => false,
        }
    }

    /// Running jobs that want a hedge at `now_ms`: their function hedges, they have fewer live
    /// attempts than it allows, and the newest has run `hedge_delay_ms` without a result.
    /// Each comes with the nodes it runs on (a hedge goes elsewhere). Also returns when the
    /// next hedge falls due, if one will.
    pub fn hedges_due(&self, now_ms: u64) -> (Vec<(JobId, Vec<NodeId>)>, Option<u64>) {
        let mut due = Vec::new();
        let mut next_ms: Option<u64> = None;
        if !self.functions.values().any(FunctionSpec::hedges) {
            return (due, next_ms);
        }
        let running: BTreeSet<JobId> = self
            .running
            .values()
            .flat_map(|m| m.keys())
            .copied()
            .collect();
        for id in running {
            let job = &self.jobs[&id];
            let Some(f) = self.functions.get(&job.function).filter(|f| f.hedges()) else {
                continue;
            };
            let live: Vec<&Attempt> = job.live_attempts().collect();
            let newest_ms = live.iter().map(|a| a.started_at_ms).max().unwrap_or(now_ms);
            if live.len() > f.backups as usize {
                continue;
            }
            let at_ms = newest_ms.saturating_add(f.hedge_delay_ms);
            if at_ms <= now_ms {
                due.push((id, live.iter().map(|a| a.node).collect()));
            } else {
                next_ms = Some(next_ms.map_or(at_ms, |t| t.min(at_ms)));
            }
        }
        (due, next_ms)
    }

    fn finish(&mut self, now_ms: u64, results: Vec<AttemptResult>) -> Response {
        let (mut taken, mut stale) = (0, 0);
        for result in results {
            if self.finish_one(now_ms, result) {
                taken += 1;
            } else {
                stale += 1;
            }
        }
        Response::Finished { taken, stale }
    }

    /// Records one attempt's end. Returns false (and changes nothing but the log size) when
    /// the result is stale: the attempt is not live any more (fencing).
    ///
    /// The job ends when its last live attempt does: succeeded if one of them succeeded,
    /// else queued again or failed by its retry policy. Without backups, or in mode `hedge`,
    /// the first success ends the job at once and stops the other attempts (`superseded`).
    fn finish_one(&mut self, now_ms: u64, result: AttemptResult) -> bool {
        let live = self
            .jobs
            .get(&result.job)
            .is_some_and(|job| job.live_attempts().any(|a| a.id == result.attempt));
        if !live {
            // Still record the log size of a superseded attempt, so its log can be read.
            if let Some(a) = self.attempt_mut(result.job, result.attempt) {
                a.log_bytes = result.log_bytes;
                a.log = result.log;
            }
            return false;
        }
        self.index_remove(result.job);
        let spec = self.functions.get(&self.jobs[&result.job].function);
        let retry = spec.map(|f| f.retry.clone()).unwrap_or_default();
        let keep_all = spec.is_some_and(FunctionSpec::keeps_all_attempts);
        let id = result.job;
        let job = self.job_mut(id).expect("live attempts have a job");
        settle(job, result, &retry, keep_all, now_ms);
        self.index_insert(id);
        self.record_job_end(now_ms, id);
        self.dead_letter_job(now_ms, id);
        true
    }

    /// The job to change, copied first if a snapshot copy still shares it.
    fn job_mut(&mut self, id: JobId) -> Option<&mut Job> {
        self.jobs.get_mut(&id).map(Arc::make_mut)
    }

    fn attempt_mut(&mut self, job: JobId, attempt: AttemptId) -> Option<&mut Attempt> {
        self.job_mut(job)?
            .attempts
            .iter_mut()
            .find(|a| a.id == attempt)
    }

    pub(crate) fn cancel_job(&mut self, now_ms: u64, id: JobId) -> Response {
        let Some(job) = self.jobs.get(&id) else {
            return Response::Rejected(ApiError::new(ErrorCode::NotFound, format!("no job {id}")));
        };
        let previous = job.state;
        if previous.is_terminal() {
            return Response::Cancelled { previous };
        }
        self.index_remove(id);
        let job = self.job_mut(id).expect("checked above");
        for attempt in job
            .attempts
            .iter_mut()
            .filter(|a| a.finished_at_ms.is_none())
        {
            attempt.finished_at_ms = Some(now_ms);
            attempt.error = Some(JobError::new(ErrorCode::Cancelled, "cancelled by request"));
        }
        job.state = JobState::Cancelled;
        job.finished_at_ms = Some(now_ms);
        job.error = Some(JobError::new(ErrorCode::Cancelled, "cancelled by request"));
        self.record_job_end(now_ms, id);
        Response::Cancelled { previous }
    }

    fn abandon(&mut self, now_ms: u64, node: NodeId, code: String) -> Response {
        let attempts: Vec<(JobId, AttemptId)> = self
            .running
            .get(&node)
            .into_iter()
            .flatten()
            .map(|(job, attempt)| (*job, *attempt))
            .collect();
        let results = attempts
            .iter()
            .map(|&(job, attempt)| AttemptResult {
                job,
                attempt,
                outcome: Outcome::Failed(JobError {
                    code: code.clone(),
                    message: format!("node {node} lost the attempt"),
                }),
                log_bytes: 0,
                log: None,
                usage: None,
            })
            .collect();
        self.finish(now_ms, results);
        Response::Abandoned {
            attempts: attempts.len() as u32,
        }
    }

    fn index_insert(&mut self, id: JobId) {
        let job = &self.jobs[&id];
        match job.state {
            JobState::Queued if job.not_before_ms > 0 => {
                self.delayed.insert((job.not_before_ms, id));
            }
            JobState::Queued => {
                self.queue.insert((Reverse(job.priority), id));
            }
            JobState::Running => {
                for attempt in job.live_attempts() {
                    self.running
                        .entry(attempt.node)
                        .or_default()
                        .insert(id, attempt.id);
                }
                for t in &job.throttles {
                    *self.throttle_running.entry(t.bucket.clone()).or_default() += 1;
                }
            }
            _ => {}
        }
    }

    fn index_remove(&mut self, id: JobId) {
        let job = &self.jobs[&id];
        match job.state {
            JobState::Queued => {
                self.queue.remove(&(Reverse(job.priority), id));
                self.delayed.remove(&(job.not_before_ms, id));
            }
            JobState::Running => {
                for attempt in job.live_attempts() {
                    if let Some(on_node) = self.running.get_mut(&attempt.node) {
                        on_node.remove(&id);
                    }
                }
                for t in &job.throttles {
                    if let Some(n) = self.throttle_running.get_mut(&t.bucket) {
                        *n -= 1;
                        if *n == 0 {
                            self.throttle_running.remove(&t.bucket);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Panics if an invariant is broken (see [`State::check_invariants`]). For tests.
    pub fn assert_invariants(&self) {
        if let Err(broken) = self.check_invariants() {
            panic!("a state invariant is broken: {broken}");
        }
    }
}

fn not_a(name: &str, kind: &str) -> Response {
    Response::Rejected(ApiError::new(
        ErrorCode::InvalidInput,
        format!("trigger {name:?} is not a {kind} trigger"),
    ))
}

fn no_trigger(name: &str) -> Response {
    Response::Rejected(ApiError::new(
        ErrorCode::NotFound,
        format!("no trigger {name:?}"),
    ))
}

// --- throttles ---

/// How often buckets whose latest start has left every window are dropped.
const THROTTLE_PRUNE_EVERY_MS: u64 = 60_000;

impl State {
    /// A throttle bucket's usage: its jobs running now and its latest starts.
    pub fn throttle_usage(&self, bucket: &str) -> throttle::Usage<'_> {
        static NONE: VecDeque<u64> = VecDeque::new();
        throttle::Usage {
            running: self.throttle_running.get(bucket).copied().unwrap_or(0),
            starts_ms: self.throttle_starts.get(bucket).unwrap_or(&NONE),
        }
    }

    /// The first of `job`'s throttles that holds it back at `now_ms`, if one does.
    pub fn throttled(&self, job: &Job, now_ms: u64) -> Option<throttle::Held> {
        job.throttles
            .iter()
            .find_map(|t| throttle::admits(t, self.throttle_usage(&t.bucket), now_ms).err())
    }

    /// The throttles a new job starts under: its function's, then its step's, each resolved
    /// against its input.
    fn throttles(&self, spec: &JobSpec, run: Option<&crate::RunLink>) -> Vec<throttle::Throttle> {
        let mut throttles = Vec::new();
        if let Some(t) = self
            .functions
            .get(&spec.function)
            .and_then(|f| f.throttle.as_ref())
        {
            throttles.push(t.resolve(&format!("function:{}", spec.function), &spec.input));
        }
        let step = run.and_then(|link| {
            let run = self.run(link.run)?;
            let spec = self.run_spec(&run.state)?;
            let step = spec
                .steps
                .iter()
                .chain(spec.finally.as_ref())
                .find(|s| s.name == link.step)?;
            Some((spec.name.as_str(), step))
        });
        if let Some((workflow, step)) = step {
            if let Some(t) = &step.throttle {
                let scope = format!("step:{workflow}/{}", step.name);
                throttles.push(t.resolve(&scope, &spec.input));
            }
        }
        throttles
    }

    /// Records a new try's start in its rate-limited buckets; now and then drops the buckets
    /// whose latest start has left every window, so the map stays as small as recent work.
    fn record_throttled_start(&mut self, id: JobId, now_ms: u64) {
        let job = &self.jobs[&id];
        for t in job.throttles.iter().filter(|t| t.rate.is_some()) {
            let starts = self.throttle_starts.entry(t.bucket.clone()).or_default();
            throttle::record_start(t, starts, now_ms);
        }
        if now_ms
            >= self
                .throttle_pruned_ms
                .saturating_add(THROTTLE_PRUNE_EVERY_MS)
        {
            self.throttle_starts.retain(|_, starts| {
                starts
                    .back()
                    .is_some_and(|t| t.saturating_add(throttle::WINDOW_MS_MAX) > now_ms)
            });
            self.throttle_pruned_ms = now_ms;
        }
    }
}

/// What a live attempt's result does to its job (the state machine's part of
/// `FinishAttempts`, apart so that a node can foresee it: `State::foresee_finish`). The job
/// ends when its last live attempt does: succeeded if one of them succeeded, else queued
/// again or failed by its retry policy. Without backups, or in mode `hedge`, the first
/// success ends the job at once and stops the other attempts (`superseded`).
pub(crate) fn settle(
    job: &mut Job,
    result: AttemptResult,
    retry: &crate::RetryPolicy,
    keep_all: bool,
    now_ms: u64,
) {
    let Some(attempt) = job.attempts.iter_mut().find(|a| a.id == result.attempt) else {
        return;
    };
    attempt.finished_at_ms = Some(now_ms);
    attempt.log_bytes = result.log_bytes;
    attempt.log = result.log;
    attempt.usage = result.usage;
    match result.outcome {
        Outcome::Succeeded { output, objects } if keep_all => {
            attempt.output = Some(output.clone());
            attempt.objects = objects.clone();
            job.output.get_or_insert(output);
            job.objects.extend(objects);
            job.error = None;
        }
        Outcome::Succeeded { output, objects } => {
            job.output = Some(output);
            job.objects = objects;
            job.error = None;
            let superseded =
                JobError::new(ErrorCode::Superseded, "another attempt succeeded first");
            for other in job
                .attempts
                .iter_mut()
                .filter(|a| a.finished_at_ms.is_none())
            {
                other.finished_at_ms = Some(now_ms);
                other.error = Some(superseded.clone());
            }
        }
        Outcome::Failed(error) => {
            attempt.error = Some(error.clone());
            if job.output.is_none() {
                job.error = Some(error);
            }
        }
    }
    if job.attempts.iter().all(|a| a.finished_at_ms.is_some()) {
        if job.output.is_some() {
            job.state = JobState::Succeeded;
            job.finished_at_ms = Some(now_ms);
        } else {
            let code = job.error.as_ref().map_or("", |e| e.code.as_str());
            // A run's job is tried once: the workflow's retry policy decides what comes
            // next, with a new job.
            if job.run.is_none() && retry.retries(code, job.tries) {
                job.state = JobState::Queued;
                let seed = job.id.0 ^ (u64::from(job.tries) << 48);
                job.not_before_ms = now_ms + retry.backoff_ms(job.tries, seed);
            } else {
                job.state = JobState::Failed;
                job.finished_at_ms = Some(now_ms);
            }
        }
    }
}

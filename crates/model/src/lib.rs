//! The shared vocabulary of chorus: ids, function specs, jobs and attempts, the replicated
//! [`Command`] and the deterministic [`State::apply`] that every node runs on the same log.
//!
//! This crate is pure: no IO, no clock, no randomness. Time and jitter arrive inside commands
//! (stamped by the proposer) so that every replica computes the same state.

mod code;
mod command;
mod config;
mod emit;
mod event;
mod function;
mod ids;
mod job;
mod node;
mod object;
pub mod protocol;
mod runs;
pub mod signature;
mod source;
mod state;
mod strategy;
mod trigger;

pub use code::{ApiError, ErrorCode};
pub use command::{
    AttemptResult, Command, Continuation, JobSpec, Outcome, Response, SubmitResult, LOG_INLINE_MAX,
};
pub use config::{ClusterConfig, ConfigKey, Setting, Settings, CONFIG_VALUE_LEN_MAX};
pub use emit::{
    Emitted, FailedEmit, PendingEmit, EMITS_PENDING_MAX, EMIT_OUTPUT_BYTES_MAX, EVENT_TYPE_PREFIX,
};
pub use event::{Event, EventKind, NewEvent, EVENTS_MAX};
pub use function::{
    BackupMode, FunctionKind, FunctionSpec, RetryPolicy, BACKUPS_MAX, FUNCTION_NAME_LEN_MAX,
};
pub use ids::{AttemptId, JobId, KeyId, NodeId};
pub use job::{
    Attempt, Job, JobDetail, JobError, JobState, ResourceUse, RunLink, WaitCode, Waiting,
};
pub use node::{NodeInfo, NodeLoad, NodeStatus};
pub use object::{
    copy_deadline, copy_targets, holds_copies, object_repairs, read_order, ObjectInfo,
    ObjectRecord, Repair, HOLDER_LOST_AFTER_MS, OBJECTS_PER_COMMAND_MAX, OBJECT_COPIES,
    OBJECT_HOLDERS_MAX, OBJECT_KEY_LEN_MAX,
};
pub use runs::{
    workflow_error, FailedHook, PendingHook, Run, RunFilter, HOOKS_PENDING_MAX, RUNS_LIST_MAX,
    RUN_INPUT_BYTES_MAX,
};
pub use source::{
    source_error, DeadLetter, PendingDeadLetter, Source, SourceCounts, SourceSpec,
    DEAD_LETTERS_PENDING_BYTES_MAX, DEAD_LETTERS_PENDING_MAX, DEAD_LETTERS_PER_COMMAND_MAX,
    DEAD_LETTER_BYTES_MAX, SOURCES_MAX,
};
pub use state::{
    ApiKey, JobCounts, Scope, SeenNonce, State, INPUT_BYTES_MAX, NONCES_MAX, OUTPUT_BYTES_MAX,
};
/// Where a source's dead letters go, as its spec says (`topic` or `prefix`).
pub use triggers::DeadLetter as DeadLetterSpec;

/// A key's last use is recorded to within this: a node proposes a use only when the one
/// the log holds is older, so a busy key costs one log entry a minute, not one a request.
pub const KEY_USE_RESOLUTION_MS: u64 = 60_000;
pub use strategy::{Strategy, UnknownStrategy};
/// Cluster-wide throttles (a function's `[throttle]`, a step's `throttle`).
pub use throttle;
pub use trigger::{BucketCursor, KafkaCursor, Trigger, TriggerSpec, TRIGGERS_MAX};
/// The workflow crate, so that the node, the API and the client name its types through the
/// vocabulary crate they already use.
pub use workflow;

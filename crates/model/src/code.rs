//! The closed set of stable error codes that the API answers with, and that attempts fail with.
//!
//! Codes are part of the wire contract: clients and retry policies match on them, so a code
//! is never renamed, only added.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A stable, machine-readable error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body or a parameter is malformed.
    InvalidInput,
    /// The request or an uploaded file is over its size limit.
    TooLarge,
    /// No signature, an unknown key, a bad signature, a skewed clock or a replayed nonce.
    Unauthorized,
    /// The key is valid but lacks the scope for this call.
    Forbidden,
    /// The job, function, object or key does not exist.
    NotFound,
    /// The request conflicts with the current state (e.g. cancelling a finished job).
    Conflict,
    /// The node is not ready (no leader yet, shutting down): try again.
    Unavailable,
    /// Local disk or object store is full.
    StorageFull,
    /// An unexpected failure; details are in the node's log.
    Internal,
    /// The route exists but not with this HTTP method.
    MethodNotAllowed,
    /// The request's path and query are over their length limit.
    UriTooLong,
    /// A CloudEvent that is malformed, lacks a required attribute or is not version 1.0.
    InvalidEvent,
    /// A run's input does not match its workflow's declared input schema.
    SchemaMismatch,
    /// Attempt outcomes (an HTTP answer only where a call waits for its job: invoke).
    Timeout,
    WorkerCrashed,
    Cancelled,
    UnsupportedFormat,
    FunctionFailed,
    /// The worker ran out of the memory its function allows (`memory_mb`).
    MemoryLimit,
    /// The worker process could not be started (no such program, not executable, ...).
    SpawnFailed,
    /// The attempt's node stopped sending heartbeats and was marked down.
    NodeLost,
    /// The attempt's node restarted: whatever it ran was lost with the old process.
    NodeRestarted,
    /// The attempt's node was removed from the cluster.
    NodeRemoved,
    /// The attempt stayed busy long past its time-out and was stopped by its node.
    Stuck,
    /// Another attempt of the job succeeded first (backups in mode `hedge`).
    Superseded,
    /// The server's TLS certificate is not from the CA the client trusts (a wrong
    /// `--ca-pin` or `--ca`): refused by the client before anything was sent.
    UntrustedServer,
}

impl ErrorCode {
    /// The wire spelling of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::Internal => "internal",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UriTooLong => "uri_too_long",
            ErrorCode::InvalidEvent => "invalid_event",
            ErrorCode::SchemaMismatch => "schema_mismatch",
            ErrorCode::Timeout => "timeout",
            ErrorCode::WorkerCrashed => "worker_crashed",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::UnsupportedFormat => "unsupported_format",
            ErrorCode::FunctionFailed => "function_failed",
            ErrorCode::MemoryLimit => "memory_limit",
            ErrorCode::SpawnFailed => "spawn_failed",
            ErrorCode::NodeLost => "node_lost",
            ErrorCode::NodeRestarted => "node_restarted",
            ErrorCode::NodeRemoved => "node_removed",
            ErrorCode::Stuck => "stuck",
            ErrorCode::Superseded => "superseded",
            ErrorCode::UntrustedServer => "untrusted_server",
        }
    }
}

impl ErrorCode {
    /// Every code, for tests and for reading a code back from its spelling.
    pub const ALL: [ErrorCode; 26] = [
        ErrorCode::InvalidInput,
        ErrorCode::TooLarge,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::Unavailable,
        ErrorCode::StorageFull,
        ErrorCode::Internal,
        ErrorCode::MethodNotAllowed,
        ErrorCode::UriTooLong,
        ErrorCode::InvalidEvent,
        ErrorCode::SchemaMismatch,
        ErrorCode::Timeout,
        ErrorCode::WorkerCrashed,
        ErrorCode::Cancelled,
        ErrorCode::UnsupportedFormat,
        ErrorCode::FunctionFailed,
        ErrorCode::MemoryLimit,
        ErrorCode::SpawnFailed,
        ErrorCode::NodeLost,
        ErrorCode::NodeRestarted,
        ErrorCode::NodeRemoved,
        ErrorCode::Stuck,
        ErrorCode::Superseded,
        ErrorCode::UntrustedServer,
    ];

    /// The code spelled `s`, if it is one of ours (a function may fail with codes of its own).
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every error answer: `{"code": "...", "message": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

//! The worker protocol: how a node talks to a worker process. Built-in workers (`chorus
//! worker`) and command functions in any language speak the same protocol.
//!
//! 1. The node starts the worker with stdin and stdout as pipes; stderr is the log.
//! 2. For each attempt the node writes one [`Request`] as a single line of JSON on stdin.
//! 3. The worker does the work and writes one [`Reply`] as a single line of JSON on stdout,
//!    then waits for the next line. Anything it writes to stderr while the attempt runs is
//!    that attempt's log.
//! 4. End of stdin means: exit now. The node closes stdin when it scales the pool down.
//!
//! A worker that exits, or writes a line that is not a reply, fails its attempt with
//! `worker_crashed` (`memory_limit` when its function sets `memory_mb` and its log shows a
//! failed allocation); one that takes longer than the function's time-out is killed (`timeout`).
//!
//! Example exchange:
//! ```text
//! > {"job":7,"attempt":9,"function":"hello","input":{"name":"x"},"files":[],"out_dir":"/tmp/o"}
//! < {"output":{"greeting":"hello x"}}
//! > {"job":8,"attempt":10,"function":"hello","input":{},"files":[],"out_dir":"/tmp/p"}
//! < {"error":{"code":"invalid_input","message":"name is missing"}}
//! ```

use crate::job::JobError;
use serde::{Deserialize, Serialize};

/// Longest reply line a worker may write.
pub const REPLY_BYTES_MAX: usize = 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub job: u64,
    pub attempt: u64,
    pub function: String,
    pub input: serde_json::Value,
    /// Local paths of the job's input files, in order.
    pub files: Vec<String>,
    /// A fresh, empty directory: files written here become the job's output objects.
    pub out_dir: String,
}

/// Exactly one of `output` or `error`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
}

impl Reply {
    pub fn ok(output: serde_json::Value) -> Reply {
        Reply {
            output: Some(output),
            error: None,
        }
    }

    pub fn err(code: &str, message: impl Into<String>) -> Reply {
        Reply {
            output: None,
            error: Some(JobError {
                code: code.to_string(),
                message: message.into(),
            }),
        }
    }
}

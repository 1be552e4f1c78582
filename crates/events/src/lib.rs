//! Event sources: the IO of triggers that watch something outside the cluster. Bucket
//! triggers list a prefix of the object store ([`bucket`]); Kafka triggers consume the
//! partitions of a topic their node holds and commit the group's offsets, and the leader
//! reads a topic's partitions and high watermarks ([`kafka`], behind the default-on `kafka`
//! feature). What a listing or a record means (which objects are new, the jobs' inputs and
//! keys, the cursors, where partitions go) is the pure `triggers` crate's; proposing the jobs
//! is `node`'s, which wires this crate in `node::sources` and `node::partitions`. Completion
//! CloudEvents are produced to Kafka topics by [`sink`] (behind the same feature), for
//! `node::emit`.
//!
//! This is the only crate that knows `rdkafka`.

pub mod bucket;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "kafka")]
pub mod sink;

/// What went wrong with a source; the message names the source, never a server path.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The object store could not be listed (unreachable, refused, ...).
    #[error("listing objects under {prefix:?}: {detail}")]
    Store { prefix: String, detail: String },
    /// More objects under a prefix than one listing takes: the trigger would miss some.
    #[error("more than {limit} objects under {prefix:?}: narrow the prefix")]
    TooManyObjects { prefix: String, limit: usize },
    /// The Kafka client failed (broker down, topic unknown, bad configuration).
    #[error("kafka: {0}")]
    Kafka(String),
}

//! Triggers as data: what starts a job (or a workflow's run) without a client asking for it. A trigger is a cron
//! schedule in a time zone (with a policy for ticks missed while the cluster was down), a
//! subscription to CloudEvents with filters in the dialects of the CloudEvents
//! Subscriptions API, new objects under a prefix of the object store, or the records of a
//! Kafka topic. This crate holds the pure parts: the spec and its validation, tick
//! computation, CloudEvents parsing, filter evaluation, the bucket and Kafka cursors, which node
//! consumes each Kafka partition, and the
//! mapping from a tick, an event, an object or a record to a job's input and idempotency
//! key. Listing a store and consuming a topic is the `events` crate's.
//!
//! No IO: no clock (`now_ms` is an argument), no files, no network. The errors carry codes
//! spelled as `model::ErrorCode`'s (a test in `model` holds them to it); the crate does not
//! depend on `model`, so that `model`'s replicated state can hold trigger specs.

mod bucket;
mod cron;
mod error;
mod event;
mod filter;
mod job;
mod kafka;
mod partitions;
mod reply;
mod source;
mod spec;

/// A compiled record schema.
pub use jsonschema::Validator;

pub use bucket::{
    BucketCursor, ObjectVersion, Seen, BUCKET_LOOKBACK_MS, BUCKET_OBJECTS_PER_PASS_MAX,
    BUCKET_SEEN_MAX, BUCKET_SUFFIXES_MAX,
};
pub use cron::{Schedule, CATCH_UP_MAX};
pub use error::{Code, Error};
pub use event::{
    parse_batch, parse_binary, parse_structured, Event, ATTRIBUTES_MAX, ATTRIBUTE_VALUE_LEN_MAX,
    EVENTS_PER_REQUEST_MAX, EVENT_BYTES_MAX,
};
pub use filter::{Filter, FILTER_DEPTH_MAX, FILTER_NODES_MAX};
pub use job::{
    bucket_idempotency_key, bucket_input, cron_idempotency_key, cron_input, event_idempotency_key,
    event_input, kafka_idempotency_key, kafka_input, trigger_of_key,
};
pub use kafka::{
    batches, judge, judge_json, KafkaCursor, Record, BATCH_BYTES_MAX, RECORD_BYTES_MAX,
};
pub use partitions::{place_partitions, PartitionOwner, KAFKA_PARTITIONS_MAX};
pub use reply::{rfc3339, Binary, Sink, HOPS_ATTRIBUTE, REPLY_HOPS_MAX, SINK_LEN_MAX};
pub use source::{
    judge_event, DeadLetter, Destination, KafkaTopic, SourceSpec, DEAD_LETTER_PREFIX_LEN_MAX,
    SOURCE_DESCRIPTION_LEN_MAX, SOURCE_OWNER_LEN_MAX,
};
pub use spec::{
    BucketSource, CronSource, EventSource, KafkaSource, Missed, Target, TriggerSpec,
    BUCKET_PREFIX_LEN_MAX, CATCH_UP_DEFAULT, CRON_LEN_MAX, KAFKA_BATCH_MAX,
    RECORD_SCHEMA_BYTES_MAX, TOPIC_LEN_MAX, TRIGGER_INPUT_BYTES_MAX, TRIGGER_NAME_LEN_MAX,
};

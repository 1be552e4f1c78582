//! Triggers as data: what starts a job without a client asking for it. A trigger is a cron
//! schedule in a time zone (with a policy for ticks missed while the cluster was down) or a
//! subscription to CloudEvents with filters in the dialects of the CloudEvents
//! Subscriptions API. This crate holds the pure parts: the spec and its validation, tick
//! computation, CloudEvents parsing, filter evaluation and the mapping from a tick or an
//! event to a job's input and idempotency key.
//!
//! No IO: no clock (`now_ms` is an argument), no files, no network. The errors carry codes
//! spelled as `model::ErrorCode`'s (a test in `model` holds them to it); the crate does not
//! depend on `model`, so that `model`'s replicated state can hold trigger specs.

mod cron;
mod error;
mod event;
mod filter;
mod job;
mod spec;

pub use cron::{Schedule, CATCH_UP_MAX};
pub use error::{Code, Error};
pub use event::{
    parse_batch, parse_binary, parse_structured, Event, ATTRIBUTES_MAX, ATTRIBUTE_VALUE_LEN_MAX,
    EVENTS_PER_REQUEST_MAX, EVENT_BYTES_MAX,
};
pub use filter::{Filter, FILTER_DEPTH_MAX, FILTER_NODES_MAX};
pub use job::{cron_idempotency_key, cron_input, event_idempotency_key, event_input};
pub use spec::{
    CronSource, EventSource, Missed, TriggerSpec, CATCH_UP_DEFAULT, CRON_LEN_MAX,
    TRIGGER_INPUT_BYTES_MAX, TRIGGER_NAME_LEN_MAX,
};

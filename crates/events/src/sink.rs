//! Producing completion CloudEvents to Kafka topics, through librdkafka (`rdkafka`).
//!
//! Each record is one event in the Kafka protocol binding's binary mode: the attributes in
//! `ce_*` headers, `content-type`, the data as the value, and a key the caller chooses (a
//! job's id, so a job's events stay in one partition, in order). An event counts as sent
//! only when the broker has acknowledged it with every in-sync replica (`acks=all`); the
//! producer is idempotent, so librdkafka's own retries never write a record twice.
//!
//! One producer per list of bootstrap servers, made on first use and kept (at most
//! [`PRODUCERS_MAX`]); librdkafka reconnects by itself, and a send that gets no
//! acknowledgement within [`SEND_TIMEOUT`] fails, so the caller can keep the event and try
//! again later.

use crate::EventsError;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Records one [`Sink::send`] takes at most.
pub const SEND_RECORDS_MAX: usize = 1_000;
/// Producers (lists of bootstrap servers) kept at most; the least recently made goes first.
pub const PRODUCERS_MAX: usize = 16;
/// A record the broker has not acknowledged within this has failed (librdkafka's
/// `message.timeout.ms`: its retries and reconnects happen within it).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// One record to produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkRecord {
    pub key: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub value: Vec<u8>,
}

/// The producers of the cluster's Kafka sinks.
#[derive(Default)]
pub struct Sink {
    /// By bootstrap servers, with the order they were made in.
    producers: Mutex<HashMap<String, (u64, FutureProducer)>>,
    made: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").finish_non_exhaustive()
    }
}

fn kafka(e: rdkafka::error::KafkaError) -> EventsError {
    EventsError::Kafka(e.to_string())
}

impl Sink {
    pub fn new() -> Sink {
        Sink::default()
    }

    /// The producer for `brokers`, made if there is none yet.
    fn producer(&self, brokers: &str) -> Result<FutureProducer, EventsError> {
        let mut producers = self.producers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, p)) = producers.get(brokers) {
            return Ok(p.clone());
        }
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", SEND_TIMEOUT.as_millis().to_string())
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "5000")
            .create()
            .map_err(kafka)?;
        if producers.len() >= PRODUCERS_MAX {
            let oldest = producers
                .iter()
                .min_by_key(|(_, (made, _))| *made)
                .map(|(b, _)| b.clone());
            if let Some(oldest) = oldest {
                producers.remove(&oldest);
            }
        }
        let made = self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        producers.insert(brokers.to_string(), (made, producer.clone()));
        Ok(producer)
    }

    /// Produces `records` to `topic` on `brokers`, all in flight at once, and answers for
    /// each, in order, whether the broker acknowledged it. More than [`SEND_RECORDS_MAX`]
    /// records is refused as a whole.
    pub async fn send(
        &self,
        brokers: &str,
        topic: &str,
        records: &[SinkRecord],
    ) -> Result<Vec<Result<(), EventsError>>, EventsError> {
        if records.len() > SEND_RECORDS_MAX {
            return Err(EventsError::Kafka(format!(
                "{} records in one send; the limit is {SEND_RECORDS_MAX}",
                records.len()
            )));
        }
        let producer = self.producer(brokers)?;
        let sends = records.iter().map(|r| {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (key, value) in &r.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            let record = FutureRecord::to(topic)
                .key(&r.key[..])
                .payload(&r.value[..])
                .headers(headers);
            let producer = &producer;
            async move {
                producer
                    .send(record, SEND_TIMEOUT)
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| kafka(e))
            }
        });
        let results = futures::future::join_all(sends).await;
        if results.iter().any(Result::is_err) {
            // The next try gets a new producer: an idempotent producer that lost its
            // broker's state (a broker that came back empty) may be stuck in a fatal error.
            let mut producers = self.producers.lock().unwrap_or_else(|e| e.into_inner());
            producers.remove(brokers);
        }
        Ok(results)
    }
}

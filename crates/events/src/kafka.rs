//! Consuming a Kafka topic for a trigger, through librdkafka (`rdkafka`).
//!
//! A trigger's [`Consumer`] is assigned the partitions its node holds
//! ([`Consumer::assigned`], from the trigger's cursor; no group membership, so no
//! rebalancing), with automatic commits off: the node commits a partition's offset in the
//! trigger's group itself ([`Consumer::commit`]) once the jobs of the records before it are
//! in the log, for lag tools. [`Consumer::new`] joins a group instead (a reader of a
//! dead-letter topic). A [`Topic`] tells the leader a topic's partitions and high
//! watermarks. The client reconnects to brokers by itself; what it reports
//! meanwhile (all brokers down, an unknown topic) is kept as the consumer's latest error
//! ([`Consumer::error`]) so the trigger can say so, and cleared when records flow again.

use crate::EventsError;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use triggers::{KafkaSource, Record};

/// Records one [`Consumer::poll`] returns at most.
pub const POLL_RECORDS_MAX: usize = 1_000;
/// How long a call that waits on the brokers (commit, watermarks) may take.
const BROKER_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest error text kept.
const ERROR_LEN_MAX: usize = 512;

/// Keeps what librdkafka reports outside the calls that fail (its error callback).
#[derive(Debug, Default)]
struct Context {
    error: Mutex<Option<String>>,
}

impl Context {
    fn set(&self, error: Option<String>) {
        let mut slot = self.error.lock().unwrap_or_else(|e| e.into_inner());
        *slot = error.map(|mut e| {
            e.truncate(ERROR_LEN_MAX);
            e
        });
    }
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "kafka client error");
        self.set(Some(format!("{error}: {reason}")));
    }
}

impl ConsumerContext for Context {}

/// One trigger's consumer of its topic.
pub struct Consumer {
    inner: Arc<StreamConsumer<Context>>,
    topic: String,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.topic)
            .finish()
    }
}

fn kafka(e: KafkaError) -> EventsError {
    EventsError::Kafka(e.to_string())
}

/// A consumer's settings: commits by the node only, from the earliest offset when there is
/// none, quick to see a new topic and to reconnect.
fn client(source: &KafkaSource, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &source.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // A trigger reads a topic that exists; it does not create one by reading it.
        .set("allow.auto.create.topics", "false")
        // A topic created after the trigger is seen within seconds (the default: 5 min).
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "5000");
    config
}

/// A client of a topic's metadata, for the leader: which partitions it has (to place them
/// on nodes) and their high watermarks (for the lag). Joins no group.
pub struct Topic {
    inner: Arc<BaseConsumer<Context>>,
    topic: String,
}

impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic").field("topic", &self.topic).finish()
    }
}

impl Topic {
    pub fn new(source: &KafkaSource) -> Result<Topic, EventsError> {
        let inner: BaseConsumer<Context> = ClientConfig::new()
            .set("bootstrap.servers", &source.brokers)
            .set("allow.auto.create.topics", "false")
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "5000")
            .create_with_context(Context::default())
            .map_err(kafka)?;
        Ok(Topic {
            inner: Arc::new(inner),
            topic: source.topic.clone(),
        })
    }

    /// The topic's partitions, in order; an error if the brokers do not answer or do not
    /// know the topic.
    pub async fn partitions(&self) -> Result<Vec<i32>, EventsError> {
        let inner = Arc::clone(&self.inner);
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let metadata = inner
                .fetch_metadata(Some(&topic), BROKER_CALL_TIMEOUT)
                .map_err(kafka)?;
            let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
                return Err(EventsError::Kafka(format!("no topic {topic}")));
            };
            if let Some(e) = t.error() {
                let e = rdkafka::error::RDKafkaErrorCode::from(e);
                return Err(EventsError::Kafka(format!("topic {topic}: {e}")));
            }
            let mut partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
            partitions.sort_unstable();
            Ok(partitions)
        })
        .await
        .map_err(|e| EventsError::Kafka(e.to_string()))?
    }

    /// The high watermark (the offset after the last record) of each of `partitions`.
    pub async fn high_watermarks(
        &self,
        partitions: Vec<i32>,
    ) -> Result<Vec<(i32, i64)>, EventsError> {
        let inner = Arc::clone(&self.inner);
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            partitions
                .into_iter()
                .map(|p| {
                    let (_, high) = inner
                        .fetch_watermarks(&topic, p, BROKER_CALL_TIMEOUT)
                        .map_err(kafka)?;
                    Ok((p, high))
                })
                .collect()
        })
        .await
        .map_err(|e| EventsError::Kafka(e.to_string()))?
    }
}

impl Consumer {
    /// Joins `group` and subscribes to the source's topic; a new group starts at the
    /// earliest offset. Fails only on a configuration librdkafka refuses: brokers that do not
    /// answer are reported later, by [`Consumer::error`].
    pub fn new(source: &KafkaSource, group: &str) -> Result<Consumer, EventsError> {
        let consumer: StreamConsumer<Context> = client(source, group)
            // A consumer killed with its node holds its partitions until its session times
            // out: short, so that another member takes over within seconds.
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .create_with_context(Context::default())
            .map_err(kafka)?;
        consumer
            .subscribe(&[source.topic.as_str()])
            .map_err(kafka)?;
        Ok(Consumer {
            inner: Arc::new(consumer),
            topic: source.topic.clone(),
        })
    }

    /// Reads exactly the given partitions of the source's topic, each from its offset (the
    /// trigger's cursor), with no group membership and so no rebalancing: which node reads
    /// which partition is the cluster's decision, not the group's. `group` only names where
    /// [`Consumer::commit`] writes the offsets, for lag tools. An offset the topic no longer
    /// holds starts at the earliest one.
    pub fn assigned(
        source: &KafkaSource,
        group: &str,
        starts: &[(i32, i64)],
    ) -> Result<Consumer, EventsError> {
        let consumer: StreamConsumer<Context> = client(source, group)
            .create_with_context(Context::default())
            .map_err(kafka)?;
        let mut list = TopicPartitionList::new();
        for &(partition, offset) in starts {
            list.add_partition_offset(&source.topic, partition, Offset::Offset(offset))
                .map_err(kafka)?;
        }
        consumer.assign(&list).map_err(kafka)?;
        Ok(Consumer {
            inner: Arc::new(consumer),
            topic: source.topic.clone(),
        })
    }

    /// Waits up to `wait` for a record, then takes those already fetched, up to `max`
    /// (at most [`POLL_RECORDS_MAX`]). An empty answer is no error: nothing came.
    pub async fn poll(&self, max: usize, wait: Duration) -> Result<Vec<Record>, EventsError> {
        self.poll_as(max, wait, record).await
    }

    /// As [`Consumer::poll`], each record with its headers (a dead-letter topic's readers
    /// want the reason).
    pub async fn poll_delivered(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivered>, EventsError> {
        self.poll_as(max, wait, |m| Delivered {
            record: record(m),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .await
    }

    async fn poll_as<T>(
        &self,
        max: usize,
        wait: Duration,
        each: impl Fn(&BorrowedMessage<'_>) -> T,
    ) -> Result<Vec<T>, EventsError> {
        let max = max.clamp(1, POLL_RECORDS_MAX);
        let mut records = Vec::new();
        let first = match tokio::time::timeout(wait, self.inner.recv()).await {
            Err(_) => return Ok(records),
            Ok(message) => message.map_err(kafka)?,
        };
        records.push(each(&first));
        drop(first);
        while records.len() < max {
            // Fetched records are answered at once; an empty queue ends the poll.
            match tokio::time::timeout(Duration::from_millis(1), self.inner.recv()).await {
                Ok(Ok(m)) => records.push(each(&m)),
                Ok(Err(e)) => {
                    // Records taken so far are answered; the error shows on the next poll.
                    self.inner.context().set(Some(e.to_string()));
                    break;
                }
                Err(_) => break,
            }
        }
        self.inner.context().set(None);
        Ok(records)
    }

    /// The latest error the client reported and has not got past (brokers down, ...).
    pub fn error(&self) -> Option<String> {
        self.inner
            .context()
            .error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Commits, per partition, the next offset to read, and waits for the group's answer.
    pub async fn commit(&self, next: &[(i32, i64)]) -> Result<(), EventsError> {
        if next.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for &(partition, offset) in next {
            list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
                .map_err(kafka)?;
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.commit(&list, CommitMode::Sync))
            .await
            .map_err(|e| EventsError::Kafka(e.to_string()))?
            .map_err(kafka)
    }

    /// Per partition of the topic: the group's committed offset and the high watermark.
    pub async fn positions(&self) -> Result<Vec<Position>, EventsError> {
        let inner = Arc::clone(&self.inner);
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || positions(&*inner, &topic))
            .await
            .map_err(|e| EventsError::Kafka(e.to_string()))?
    }
}

/// The group's committed offset and the high watermark of every partition of `topic`, as
/// the consumer's group sees them (blocking: at most a few broker calls' deadlines).
fn positions<C: rdkafka::consumer::Consumer<X>, X: ConsumerContext>(
    consumer: &C,
    topic: &str,
) -> Result<Vec<Position>, EventsError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), BROKER_CALL_TIMEOUT)
        .map_err(kafka)?;
    let mut list = TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            list.add_partition(topic, p.id());
        }
    }
    let committed = consumer
        .committed_offsets(list, BROKER_CALL_TIMEOUT)
        .map_err(kafka)?;
    let mut out = Vec::new();
    for e in committed.elements_for_topic(topic) {
        let (_, high) = consumer
            .fetch_watermarks(topic, e.partition(), BROKER_CALL_TIMEOUT)
            .map_err(kafka)?;
        out.push(Position {
            partition: e.partition(),
            committed: match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            },
            high_watermark: high,
        });
    }
    Ok(out)
}

/// Where `group` stands on each partition of `topic`, read without joining the group.
pub async fn group_positions(
    brokers: &str,
    group: &str,
    topic: &str,
) -> Result<Vec<Position>, EventsError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(kafka)?;
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || positions(&consumer, &topic))
        .await
        .map_err(|e| EventsError::Kafka(e.to_string()))?
}

/// Writes records to a topic, each acknowledged by the broker before `send` returns (no
/// batching: `linger.ms` is 0).
pub struct Producer {
    inner: FutureProducer,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

impl Producer {
    pub fn new(brokers: &str) -> Result<Producer, EventsError> {
        let inner = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "0")
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .create()
            .map_err(kafka)?;
        Ok(Producer { inner })
    }

    /// Sends one record to `partition` (or the partitioner's choice) and waits for the
    /// broker's acknowledgement; returns its partition and offset.
    pub async fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Result<(i32, i64), EventsError> {
        self.send_with_headers(topic, partition, key, Some(value), &[])
            .await
    }

    /// Sends a record that starts no job to the dead-letter `topic`, its key and value as
    /// they were, with why and where from in its headers (as Kafka Connect's dead-letter
    /// queues do, under chorus' own names; see [`DEAD_LETTER_HEADERS`]), and waits for the
    /// broker's acknowledgement.
    pub async fn dead_letter(
        &self,
        topic: &str,
        trigger: &str,
        original: &Record,
        error: &triggers::Error,
    ) -> Result<(i32, i64), EventsError> {
        let partition = original.partition.to_string();
        let offset = original.offset.to_string();
        let values: [&[u8]; 6] = [
            error.code.as_str().as_bytes(),
            error.message.as_bytes(),
            trigger.as_bytes(),
            original.topic.as_bytes(),
            partition.as_bytes(),
            offset.as_bytes(),
        ];
        let headers: Vec<(&str, &[u8])> = DEAD_LETTER_HEADERS.into_iter().zip(values).collect();
        self.send_with_headers(
            topic,
            None,
            original.key.as_deref(),
            original.value.as_deref(),
            &headers,
        )
        .await
    }

    /// Sends one record with headers and waits for the broker's acknowledgement.
    pub async fn send_with_headers(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
    ) -> Result<(i32, i64), EventsError> {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic);
        if let Some(value) = value {
            record = record.payload(value);
        }
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if !headers.is_empty() {
            let mut owned = OwnedHeaders::new_with_capacity(headers.len());
            for (key, value) in headers {
                owned = owned.insert(Header {
                    key,
                    value: Some(*value),
                });
            }
            record = record.headers(owned);
        }
        let delivered = self
            .inner
            .send(record, BROKER_CALL_TIMEOUT * 6)
            .await
            .map_err(|(e, _)| kafka(e))?;
        Ok((delivered.partition, delivered.offset))
    }
}

/// The headers of a dead-letter record: the error's code and message, the trigger, and the
/// original record's topic, partition and offset.
pub const DEAD_LETTER_HEADERS: [&str; 6] = [
    "chorus.error.code",
    "chorus.error.message",
    "chorus.trigger",
    "chorus.source.topic",
    "chorus.source.partition",
    "chorus.source.offset",
];

/// A record with its headers.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub record: Record,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Delivered {
    /// The value of header `key` as text, if it has one.
    pub fn header(&self, key: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Where a consumer group stands on one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub partition: i32,
    pub committed: Option<i64>,
    pub high_watermark: i64,
}

fn record(m: &BorrowedMessage<'_>) -> Record {
    Record {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
    }
}

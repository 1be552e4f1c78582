//! One Kafka trigger's consumer task on a node that holds partitions of its topic (see the
//! parent module's protocol): read those partitions from the cursor, poll, drop what the
//! cursor has passed, send the records that start no job (over the size limit, not matching
//! the trigger's schema) to its dead-letter topic and wait for the broker's acknowledgement,
//! propose the jobs and the cursor's move in one entry fenced by the partitions' epochs
//! (again, unchanged, until it commits or is fenced), then commit the group's offsets. A
//! refused record is dead-lettered before the entry that moves the cursor past it: a crash
//! between the two sends it again (at least once), never loses it.

use super::{Backoff, Fence, POLL_WAIT, RECORDS_PER_ENTRY_MAX};
use crate::triggering::Starts;
use crate::Node;
use events::kafka::{Consumer, Producer};
use model::{Command, ErrorCode};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use triggers::{KafkaSource, Record};

/// What one poll's records become: the jobs, the cursor's moves, the offsets to commit, and
/// the records refused.
#[derive(Debug, Default)]
struct Planned {
    starts: Starts,
    advances: Vec<Command>,
    commits: Vec<(i32, i64)>,
    rejected: Vec<(Record, triggers::Error)>,
    /// The timestamps of the records that start jobs (those that have one).
    timestamps_ms: Vec<i64>,
    bytes: u64,
    records: u64,
    /// Per partition, the offset of the first record past the cursor.
    first: BTreeMap<i32, i64>,
}

/// Sleeps `wait`, or less if the task is stopped; false if it was.
async fn pause(stop: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

/// Consumes `owned` (partition to epoch) of the trigger's topic until stopped or fenced.
pub(super) async fn consume(
    node: Node,
    name: String,
    source: KafkaSource,
    owned: BTreeMap<i32, u64>,
    turn: Arc<tokio::sync::Mutex<()>>,
    stop: CancellationToken,
) {
    // The consumer this one replaces has ended once this is held (see `Consumers::turns`).
    let _turn = tokio::select! {
        () = stop.cancelled() => return,
        held = turn.lock_owned() => held,
    };
    let mut backoff = Backoff::new();
    let consumer = loop {
        // The cursor as applied here once the node holds the partitions: no one else can
        // move it any more (their entries are fenced), so it is where to start.
        let Some(starts) = node.read(|s| {
            let cursor = s.trigger(&name)?.kafka.as_ref()?;
            let starts: Vec<(i32, i64)> =
                owned.keys().map(|&p| (p, cursor.next_offset(p))).collect();
            Some(starts)
        }) else {
            return; // The trigger is gone.
        };
        match Consumer::assigned(&source, &source.group(&name), &starts) {
            Ok(c) => break c,
            Err(e) => {
                node.report(&name, Some(e.to_string())).await;
                backoff.failed();
                if !pause(&stop, backoff.wait).await {
                    return;
                }
            }
        }
    };
    tracing::info!(trigger = %name, partitions = ?owned, "consuming Kafka partitions");
    let fence = |planned: &Planned| Fence {
        node: node.id(),
        partitions: planned
            .advances
            .iter()
            .filter_map(|a| match a {
                Command::AdvanceKafka { partition, .. } => {
                    owned.get(partition).map(|&epoch| (*partition, epoch))
                }
                _ => None,
            })
            .collect(),
        first: planned.first.iter().map(|(&p, &o)| (p, o)).collect(),
    };
    let dead_letter = match &source.dead_letter {
        None => None,
        Some(topic) => loop {
            match Producer::new(&source.brokers) {
                Ok(p) => break Some((topic.clone(), p)),
                Err(e) => {
                    node.report(&name, Some(e.to_string())).await;
                    backoff.failed();
                    if !pause(&stop, backoff.wait).await {
                        return;
                    }
                }
            }
        },
    };
    while !stop.is_cancelled() {
        let polled = tokio::select! {
            () = stop.cancelled() => return,
            polled = consumer.poll(RECORDS_PER_ENTRY_MAX, POLL_WAIT) => polled,
        };
        let records = match polled {
            Ok(records) => records,
            Err(e) => {
                node.report(&name, Some(e.to_string())).await;
                backoff.failed();
                if !pause(&stop, backoff.wait).await {
                    return;
                }
                continue;
            }
        };
        if records.is_empty() {
            // Brokers down or the topic missing show here: the client retries by itself.
            node.report(&name, consumer.error()).await;
            continue;
        }
        backoff.succeeded();
        node.report(&name, None).await;
        // Only the partitions held: a record of another one would be no one's to take.
        let records: Vec<Record> = records
            .into_iter()
            .filter(|r| owned.contains_key(&r.partition))
            .collect();
        let Some(planned) = plan(&node, &name, records) else {
            return; // The trigger is gone.
        };
        let fence = fence(&planned);
        if !take(
            &node,
            &name,
            planned,
            fence,
            &consumer,
            dead_letter.as_ref(),
            &stop,
        )
        .await
        {
            return;
        }
    }
}

/// Proposes a poll's jobs until they commit, then commits the group's offsets; false if the
/// task was stopped first.
async fn take(
    node: &Node,
    name: &str,
    planned: Planned,
    fence: Fence,
    consumer: &Consumer,
    dead_letter: Option<&(String, Producer)>,
    stop: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::new();
    let mut dead_lettered = 0u64;
    for (r, error) in &planned.rejected {
        tracing::warn!(
            trigger = name,
            topic = %r.topic,
            partition = r.partition,
            offset = r.offset,
            bytes = r.len(),
            %error,
            "a record starts no job"
        );
        let Some((topic, producer)) = dead_letter else {
            continue;
        };
        // Until the broker has it: the cursor must not move past a record that is nowhere.
        loop {
            match producer.dead_letter(topic, name, r, error).await {
                Ok(_) => {
                    dead_lettered += 1;
                    break;
                }
                Err(e) => {
                    let e = format!("dead-letter topic {topic}: {e}");
                    node.report(name, Some(e)).await;
                    backoff.failed();
                    if !pause(stop, backoff.wait).await {
                        return false;
                    }
                }
            }
        }
    }
    if dead_lettered > 0 {
        node.report(name, None).await;
        backoff.succeeded();
    }
    if !planned.advances.is_empty() {
        loop {
            let starts = planned.starts.clone();
            let advances = planned.advances.clone();
            match node
                .propose_fenced_starts(name, starts, advances, Some(fence.clone()))
                .await
            {
                Ok(()) => {
                    let now = crate::now_ms();
                    node.inner
                        .metrics
                        .source_latency(name, now, &planned.timestamps_ms);
                    break;
                }
                Err(e) if e.code == ErrorCode::Conflict || e.code == ErrorCode::NotFound => {
                    // The partitions moved to another node (or the trigger is gone): it goes
                    // on from the cursor, which this entry did not move.
                    tracing::info!(trigger = name, reason = %e.message, "the Kafka consumer stops: fenced");
                    stop.cancel();
                    return false;
                }
                Err(e) => {
                    tracing::warn!(trigger = name, error = %e, "could not start a Kafka trigger's jobs; trying again");
                    backoff.failed();
                    if !pause(stop, backoff.wait).await {
                        return false;
                    }
                    if !still_holds(node, name, &fence) {
                        // The new owner reads these records from the cursor.
                        stop.cancel();
                        return false;
                    }
                }
            }
        }
    }
    node.inner.sources.with(name, |s| {
        s.records_in += planned.records;
        s.bytes_in += planned.bytes;
        s.rejected += planned.rejected.len() as u64;
        s.dead_lettered += dead_lettered;
    });
    node.inner.metrics.source_dead_lettered(name, dead_lettered);
    node.inner.metrics.source_records(
        name,
        planned.records,
        planned.bytes,
        planned.rejected.len() as u64,
    );
    if let Err(e) = consumer.commit(&planned.commits).await {
        // The cursor in the log holds: the records come again and are dropped.
        tracing::warn!(trigger = name, error = %e, "could not commit offsets");
    }
    true
}

/// The jobs and cursor moves for a poll's records, against the cursor as applied now.
fn plan(node: &Node, name: &str, records: Vec<Record>) -> Option<Planned> {
    let now = crate::now_ms();
    node.read(|s| {
        let t = s.trigger(name)?;
        let cursor = t.kafka.as_ref()?;
        let batch_max = t.spec.kafka.as_ref().map_or(1, |k| k.batch) as usize;
        // Validated specs' schemas compile: an error is only a spec an older version took.
        let schema = match t.spec.kafka.as_ref().map(triggers::KafkaSource::validator) {
            Some(Ok(schema)) => schema,
            Some(Err(e)) => {
                tracing::warn!(trigger = name, error = %e, "the trigger's record schema is ignored");
                None
            }
            None => None,
        };
        let mut planned = Planned::default();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let mut counts: BTreeMap<i32, u64> = BTreeMap::new();
        let mut fresh = Vec::new();
        for r in records {
            let at = next.entry(r.partition).or_insert(0);
            *at = (*at).max(r.offset + 1);
            if !cursor.is_new(r.partition, r.offset) {
                continue;
            }
            *counts.entry(r.partition).or_insert(0) += 1;
            let first = planned.first.entry(r.partition).or_insert(r.offset);
            *first = (*first).min(r.offset);
            planned.records += 1;
            planned.bytes += r.len() as u64;
            match triggers::judge(&r, schema.as_ref()) {
                Ok(()) => {
                    planned.timestamps_ms.extend(r.timestamp_ms);
                    fresh.push(r);
                }
                Err(e) => planned.rejected.push((r, e)),
            }
        }
        for batch in triggers::batches(fresh, batch_max) {
            let input = triggers::kafka_input(&t.spec.input, name, &batch);
            let key = triggers::kafka_idempotency_key(name, &batch[0]);
            planned.starts.push(now, &t.spec, input, Vec::new(), key);
        }
        // A source's refused records go to its dead letters, in the entry of the cursor.
        planned.advances.extend(crate::catalogue::kafka_letters(s, name, &planned.rejected));
        for (&partition, &next_offset) in &next {
            planned.commits.push((partition, next_offset));
            if let Some(&records) = counts.get(&partition) {
                planned.advances.push(Command::AdvanceKafka {
                    name: name.to_string(),
                    partition,
                    next_offset,
                    records,
                });
            }
        }
        Some(planned)
    })
}

/// Whether this node still holds the fence's partitions at its epochs, as applied here.
fn still_holds(node: &Node, name: &str, fence: &Fence) -> bool {
    node.read(|s| {
        let Some(cursor) = s.trigger(name).and_then(|t| t.kafka.as_ref()) else {
            return false;
        };
        fence
            .partitions
            .iter()
            .all(|&(p, epoch)| cursor.holds(fence.node, p, epoch))
    })
}

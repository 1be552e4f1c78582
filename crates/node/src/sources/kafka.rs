//! One Kafka trigger's consumer task on the leader (see the parent module's protocol): poll,
//! drop what the cursor has passed, send the records that start no job (over the size limit,
//! not matching the trigger's schema) to its dead-letter topic and wait for the broker's
//! acknowledgement, propose the jobs and the cursor's move in one entry (again, unchanged,
//! until it commits), then commit the group's offsets. A refused record is dead-lettered
//! before the entry that moves the cursor past it: a crash between the two sends it again
//! (at least once), never loses it.

use super::{Backoff, POLL_WAIT, RECORDS_PER_ENTRY_MAX};
use crate::triggering::Starts;
use crate::Node;
use events::kafka::{Consumer, Producer};
use model::Command;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use triggers::{KafkaSource, Record};

/// How often the group's lag is read while records flow or not.
const LAG_EVERY: Duration = Duration::from_secs(5);

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
}

/// Sleeps `wait`, or less if the task is stopped; false if it was.
async fn pause(stop: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

pub(super) async fn consume(
    node: Node,
    name: String,
    source: KafkaSource,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new();
    let consumer = loop {
        match Consumer::new(&source, &source.group(&name)) {
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
    let mut lag_at = tokio::time::Instant::now();
    while !stop.is_cancelled() {
        if lag_at.elapsed() >= LAG_EVERY {
            lag_at = tokio::time::Instant::now();
            read_lag(&node, &name, &consumer).await;
        }
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
        let Some(planned) = plan(&node, &name, records) else {
            return; // The trigger is gone.
        };
        if !take(
            &node,
            &name,
            planned,
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
            match node
                .propose_with_starts(name, starts, planned.advances.clone())
                .await
            {
                Ok(()) => {
                    let now = crate::now_ms();
                    node.inner
                        .metrics
                        .source_latency(name, now, &planned.timestamps_ms);
                    break;
                }
                Err(e) => {
                    tracing::warn!(trigger = name, error = %e, "could not start a Kafka trigger's jobs; trying again");
                    backoff.failed();
                    if !pause(stop, backoff.wait).await {
                        return false;
                    }
                    if !node.inner.registry.figures().is_leader {
                        // The next leader's consumer takes these records from the group's
                        // offsets; its cursor says which it has.
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

/// Reads the group's lag per partition into the status and the metrics.
async fn read_lag(node: &Node, name: &str, consumer: &Consumer) {
    match consumer.positions().await {
        Ok(positions) => {
            let lag: BTreeMap<i32, i64> = positions
                .iter()
                .map(|p| {
                    let committed = p.committed.unwrap_or(0);
                    (p.partition, (p.high_watermark - committed).max(0))
                })
                .collect();
            node.inner.metrics.source_lag(name, &lag);
            node.inner.sources.with(name, |s| s.lag = lag);
        }
        Err(e) => tracing::debug!(trigger = name, error = %e, "could not read the group's lag"),
    }
}

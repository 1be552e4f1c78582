//! The node's Prometheus metrics. Event metrics (histograms, counters) are recorded as things
//! happen; state metrics (jobs per state, raft figures, warm workers) are read at scrape time.

use model::{JobState, State};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FunctionLabels {
    pub(crate) function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    function: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub(crate) function: String,
    pub(crate) outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    trigger: String,
    partition: i32,
}

#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    jobs: Family<JobLabels, Gauge>,
    pub(crate) queue_wait: Family<FunctionLabels, Histogram>,
    pub(crate) run_time: Family<FunctionLabels, Histogram>,
    pub(crate) attempts: Family<OutcomeLabels, Counter>,
    pub(crate) cold_starts: Family<FunctionLabels, Counter>,
    warm_workers: Family<PoolLabels, Gauge>,
    raft_term: Gauge,
    raft_commit_index: Gauge,
    raft_applied_index: Gauge,
    raft_apply_lag: Gauge,
    raft_is_leader: Gauge,
    pub(crate) purged_jobs: Counter,
    breaker_open: Family<NodeLabels, Gauge>,
    pub(crate) expired_objects: Counter,
    pub(crate) object_repairs: Counter,
    pub(crate) object_copy_failures: Counter,
    webhook_posts: Family<ResultLabels, Counter>,
    hook_posts: Family<ResultLabels, Counter>,
    sink_events: Family<SinkLabels, Counter>,
    emits_pending: Gauge,
    source_records: Family<SourceLabels, Counter>,
    source_bytes: Family<SourceLabels, Counter>,
    source_rejected: Family<SourceLabels, Counter>,
    source_dead_lettered: Family<SourceLabels, Counter>,
    source_latency: Family<SourceLabels, Histogram>,
    source_lag: Family<PartitionLabels, Gauge>,
}

fn seconds_histogram() -> Histogram {
    // 100 µs to about 1.7 hours.
    Histogram::new(exponential_buckets(0.0001, 4.0, 13))
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("chorus");
        let jobs = Family::<JobLabels, Gauge>::default();
        registry.register(
            "jobs",
            "Jobs held by the registry, by function and state",
            jobs.clone(),
        );
        let queue_wait = Family::<FunctionLabels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        registry.register(
            "job_queue_wait_seconds",
            "Time from submit to the start of the first attempt",
            queue_wait.clone(),
        );
        let run_time = Family::<FunctionLabels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        registry.register(
            "attempt_run_seconds",
            "Time an attempt spent in its worker",
            run_time.clone(),
        );
        let attempts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "attempts",
            "Attempts finished on this node, by function and outcome code",
            attempts.clone(),
        );
        let cold_starts = Family::<FunctionLabels, Counter>::default();
        registry.register(
            "cold_starts",
            "Worker processes started because no warm worker was idle",
            cold_starts.clone(),
        );
        let warm_workers = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "warm_workers",
            "Idle warm workers per pool (function@version)",
            warm_workers.clone(),
        );
        let raft_term = Gauge::default();
        registry.register("raft_term", "Current raft term", raft_term.clone());
        let raft_commit_index = Gauge::default();
        registry.register(
            "raft_commit_index",
            "Highest log index known committed",
            raft_commit_index.clone(),
        );
        let raft_applied_index = Gauge::default();
        registry.register(
            "raft_applied_index",
            "Highest log index applied to this node's state",
            raft_applied_index.clone(),
        );
        let raft_apply_lag = Gauge::default();
        registry.register(
            "raft_apply_lag",
            "Log entries appended here but not yet applied",
            raft_apply_lag.clone(),
        );
        let raft_is_leader = Gauge::default();
        registry.register(
            "raft_is_leader",
            "1 if this node is the raft leader",
            raft_is_leader.clone(),
        );
        let purged_jobs = Counter::default();
        registry.register(
            "purged_jobs",
            "Finished jobs this node purged from the registry as leader (retention)",
            purged_jobs.clone(),
        );
        let expired_objects = Counter::default();
        registry.register(
            "expired_objects",
            "Outputs and logs deleted from this node's store (retention)",
            expired_objects.clone(),
        );
        let object_repairs = Counter::default();
        registry.register(
            "object_repairs",
            "Copies of objects this node made again after one of their holders was lost",
            object_repairs.clone(),
        );
        let object_copy_failures = Counter::default();
        registry.register(
            "object_copy_failures",
            "Copies of objects this node sent again that a peer did not take",
            object_copy_failures.clone(),
        );
        let breaker_open = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "breaker_open",
            "1 while a node's CPU breaker is open (it gets no new work); reported by the leader",
            breaker_open.clone(),
        );
        let webhook_posts = Family::<ResultLabels, Counter>::default();
        registry.register(
            "webhook_posts",
            "Posts of events to the alert webhook by this node as leader, by result (ok, failed)",
            webhook_posts.clone(),
        );
        let hook_posts = Family::<ResultLabels, Counter>::default();
        registry.register(
            "hook_posts",
            "Posts of workflows' URL hooks by this node as leader, by result (ok, failed)",
            hook_posts.clone(),
        );
        let sink_events = Family::<SinkLabels, Counter>::default();
        registry.register(
            "sink_events",
            "Completion CloudEvents this node sent as leader, by sink kind (kafka, url, ingest) and result (ok: confirmed; failed: a try of the sink failed, its events wait; given_up)",
            sink_events.clone(),
        );
        let emits_pending = Gauge::default();
        registry.register(
            "sink_pending",
            "Completion CloudEvents waiting for their sinks in the replicated queue",
            emits_pending.clone(),
        );
        let source_records = Family::<SourceLabels, Counter>::default();
        registry.register(
            "source_records",
            "Records (Kafka) or objects (bucket) a trigger read on this node as leader",
            source_records.clone(),
        );
        let source_bytes = Family::<SourceLabels, Counter>::default();
        registry.register(
            "source_bytes",
            "Bytes of the records or objects a trigger read on this node as leader",
            source_bytes.clone(),
        );
        let source_rejected = Family::<SourceLabels, Counter>::default();
        registry.register(
            "source_rejected",
            "Records a trigger refused (over the size limit, or not matching its schema) on this node as leader",
            source_rejected.clone(),
        );
        let source_dead_lettered = Family::<SourceLabels, Counter>::default();
        registry.register(
            "source_dead_lettered",
            "Refused records a Kafka trigger sent to its dead-letter topic (acknowledged) on this node as leader",
            source_dead_lettered.clone(),
        );
        let source_latency = Family::<SourceLabels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        registry.register(
            "source_record_to_log_seconds",
            "Time from a Kafka record's timestamp to the committed log entry that holds its job or run (the job starts in it when a slot is free; chorus_job_queue_wait_seconds has the rest)",
            source_latency.clone(),
        );
        let source_lag = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "source_lag",
            "A Kafka trigger's consumer group lag per partition (high watermark minus committed offset), as kafka_exporter's kafka_consumergroup_lag",
            source_lag.clone(),
        );
        Metrics {
            registry,
            source_records,
            source_bytes,
            source_rejected,
            source_dead_lettered,
            source_latency,
            source_lag,
            webhook_posts,
            hook_posts,
            sink_events,
            emits_pending,
            breaker_open,
            purged_jobs,
            expired_objects,
            object_repairs,
            object_copy_failures,
            jobs,
            queue_wait,
            run_time,
            attempts,
            cold_starts,
            warm_workers,
            raft_term,
            raft_commit_index,
            raft_applied_index,
            raft_apply_lag,
            raft_is_leader,
        }
    }

    /// Renders every metric in the Prometheus text format, reading state-derived values first.
    /// Counts one post to the alert webhook.
    pub(crate) fn hook_post(&self, result: &str) {
        self.hook_posts
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts completion events sent to a sink of `kind`, or one failed try of it.
    pub(crate) fn sink_events(&self, kind: &str, result: &str, events: u64) {
        if events == 0 {
            return;
        }
        self.sink_events
            .get_or_create(&SinkLabels {
                sink: kind.to_string(),
                result: result.to_string(),
            })
            .inc_by(events);
    }

    pub(crate) fn webhook_post(&self, result: &str) {
        self.webhook_posts
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts what a trigger's source delivered.
    pub(crate) fn source_records(&self, trigger: &str, records: u64, bytes: u64, rejected: u64) {
        let labels = SourceLabels {
            trigger: trigger.to_string(),
        };
        self.source_records.get_or_create(&labels).inc_by(records);
        self.source_bytes.get_or_create(&labels).inc_by(bytes);
        self.source_rejected.get_or_create(&labels).inc_by(rejected);
    }

    /// Counts refused records a trigger's dead-letter topic acknowledged.
    pub(crate) fn source_dead_lettered(&self, trigger: &str, records: u64) {
        let labels = SourceLabels {
            trigger: trigger.to_string(),
        };
        self.source_dead_lettered
            .get_or_create(&labels)
            .inc_by(records);
    }

    /// Observes, per record, the time from its timestamp to now (its entry committed).
    pub(crate) fn source_latency(&self, trigger: &str, now_ms: u64, timestamps_ms: &[i64]) {
        let labels = SourceLabels {
            trigger: trigger.to_string(),
        };
        let histogram = self.source_latency.get_or_create(&labels);
        for &at in timestamps_ms {
            let ms = (now_ms as i64).saturating_sub(at).max(0);
            histogram.observe(ms as f64 / 1_000.0);
        }
    }

    /// Sets a Kafka trigger's lag per partition.
    pub(crate) fn source_lag(&self, trigger: &str, lag: &BTreeMap<i32, i64>) {
        for (&partition, &lag) in lag {
            let labels = PartitionLabels {
                trigger: trigger.to_string(),
                partition,
            };
            self.source_lag.get_or_create(&labels).set(lag);
        }
    }

    pub(crate) fn render(
        &self,
        state: &State,
        raft: &registry::RaftFigures,
        warm: &BTreeMap<String, usize>,
        breakers: Option<&BTreeMap<model::NodeId, scheduler::Breaker>>,
    ) -> String {
        self.breaker_open.clear();
        for (node, breaker) in breakers.into_iter().flatten() {
            let open = *breaker == scheduler::Breaker::Open;
            self.breaker_open
                .get_or_create(&NodeLabels {
                    node: node.to_string(),
                })
                .set(i64::from(open));
        }
        self.emits_pending.set(state.pending_emits_count() as i64);
        self.jobs.clear();
        for ((function, job_state), count) in state.job_counts() {
            self.jobs
                .get_or_create(&JobLabels {
                    function,
                    state: job_state.as_str().into(),
                })
                .set(count as i64);
        }
        // Functions with no jobs in a state still report zero, so rates and alerts see them.
        for f in state.functions() {
            for st in JobState::ALL {
                let _ = self.jobs.get_or_create(&JobLabels {
                    function: f.name.clone(),
                    state: st.as_str().into(),
                });
            }
        }
        self.warm_workers.clear();
        for (pool, n) in warm {
            self.warm_workers
                .get_or_create(&PoolLabels { pool: pool.clone() })
                .set(*n as i64);
        }
        self.raft_term.set(raft.term as i64);
        self.raft_commit_index.set(raft.commit_index as i64);
        self.raft_applied_index.set(raft.applied_index as i64);
        self.raft_apply_lag
            .set(raft.last_log_index.saturating_sub(raft.applied_index) as i64);
        self.raft_is_leader.set(i64::from(raft.is_leader));
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// Rewrites OpenMetrics text as the classic Prometheus text format (0.0.4), for scrapers and
/// linters (`promtool check metrics`) that do not speak OpenMetrics. prometheus-client only
/// writes OpenMetrics, where a counter family `x` has samples `x_total`; the classic format
/// names the family `x_total` and has no `# UNIT` or `# EOF` lines.
pub(crate) fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn counters_are_renamed_for_the_classic_format() {
        let om = "# HELP chorus_attempts Attempts.\n# TYPE chorus_attempts counter\nchorus_attempts_total{function=\"noop\"} 3\n# HELP chorus_raft_term Term.\n# TYPE chorus_raft_term gauge\nchorus_raft_term 2\n# EOF\n";
        expect![[r#"
            # HELP chorus_attempts_total Attempts.
            # TYPE chorus_attempts_total counter
            chorus_attempts_total{function="noop"} 3
            # HELP chorus_raft_term Term.
            # TYPE chorus_raft_term gauge
            chorus_raft_term 2
        "#]]
        .assert_eq(&to_prometheus_text(om));
    }
}

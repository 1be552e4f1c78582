//! Retention: finished jobs, their outputs and their logs are kept for the cluster's
//! `retention` (config key, a duration such as `7d` or `12h`; default [`RETENTION_DEFAULT`]).
//!
//! Two sweeps, every [`sweep_interval`]:
//! 1. on the leader only, a cluster job: finished jobs and workflow runs that finished longer
//!    ago than the retention are purged from the replicated state (`PurgeJobs`, `PurgeRuns`, at most
//!    [`PURGE_JOBS_MAX`] per entry). A deposed leader's proposal fails to commit (fenced by
//!    term), and `apply` checks each job again, so a purge can never drop a live job.
//! 2. on every node, a per-node job: objects under `jobs/` (outputs) and `logs/` last modified
//!    longer ago than the retention are deleted from the node's store, at most
//!    [`DELETE_OBJECTS_MAX`] per prefix and sweep. Inputs (`uploads/`) are never touched.

use crate::{now_ms, Node};
use model::{Command, Response};
use std::time::Duration;

/// Retention when the config has none.
const RETENTION_DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Jobs purged per log entry at most.
const PURGE_JOBS_MAX: usize = 10_000;
/// Objects deleted per prefix and sweep at most.
const DELETE_OBJECTS_MAX: usize = 10_000;
/// How often the sweep looks at the config.
const SWEEP_TICK: Duration = Duration::from_secs(1);
/// Prefixes of what a node's jobs produce.
const EXPIRING_PREFIXES: [&str; 2] = ["jobs", "logs"];

fn retention(node: &Node) -> Duration {
    node.read(|s| s.config().settings().retention)
        .unwrap_or(RETENTION_DEFAULT)
}

/// A quarter of the retention, between one second and ten minutes: expired things stay at
/// most a quarter longer than asked.
fn sweep_interval(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

pub(crate) async fn sweep(node: Node) {
    // Ticks of a second so that a new retention (`config set`) takes effect at once, while
    // the sweeps themselves run once per interval.
    let mut last_sweep = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = node.inner.shutdown.cancelled() => return,
            () = tokio::time::sleep(SWEEP_TICK) => {}
        }
        let retention = retention(&node);
        if last_sweep.elapsed() < sweep_interval(retention) {
            continue;
        }
        last_sweep = tokio::time::Instant::now();
        let cutoff_ms = now_ms().saturating_sub(retention.as_millis() as u64);
        if node.inner.registry.is_leader() {
            purge_jobs(&node, cutoff_ms).await;
            purge_runs(&node, cutoff_ms).await;
        }
        for prefix in EXPIRING_PREFIXES {
            match node
                .inner
                .store
                .delete_older_than(prefix, cutoff_ms as i64, DELETE_OBJECTS_MAX)
                .await
            {
                Ok(0) => {}
                Ok(deleted) => {
                    tracing::info!(prefix, deleted, "retention: deleted expired objects");
                    node.inner.metrics.expired_objects.inc_by(deleted as u64);
                }
                Err(e) => {
                    tracing::warn!(prefix, error = %e, "retention: could not delete expired objects")
                }
            }
        }
    }
}

async fn purge_runs(node: &Node, cutoff_ms: u64) {
    let runs = node.read(|s| s.expired_runs(cutoff_ms, PURGE_JOBS_MAX));
    if runs.is_empty() {
        return;
    }
    let command = Command::PurgeRuns {
        finished_before_ms: cutoff_ms,
        runs,
    };
    match node.propose(command).await {
        Ok(Response::Purged { jobs: runs }) => {
            tracing::info!(runs, "retention: purged finished runs")
        }
        Ok(other) => tracing::warn!(?other, "retention: unexpected answer to a purge"),
        Err(e) => tracing::warn!(error = %e, "retention: could not purge finished runs"),
    }
}

async fn purge_jobs(node: &Node, cutoff_ms: u64) {
    let jobs = node.read(|s| s.expired_jobs(cutoff_ms, PURGE_JOBS_MAX));
    if jobs.is_empty() {
        return;
    }
    let command = Command::PurgeJobs {
        finished_before_ms: cutoff_ms,
        jobs,
    };
    match node.propose(command).await {
        Ok(Response::Purged { jobs }) => {
            tracing::info!(jobs, "retention: purged finished jobs");
            node.inner.metrics.purged_jobs.inc_by(u64::from(jobs));
        }
        Ok(other) => tracing::warn!(?other, "retention: unexpected answer to a purge"),
        Err(e) => tracing::warn!(error = %e, "retention: could not purge finished jobs"),
    }
}

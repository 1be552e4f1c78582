//! The executor: runs attempts in worker processes, never in the node process.
//!
//! This is the only crate that spawns processes. Workers speak [`model::protocol`]. Each
//! function version has its own pool of warm workers: an attempt takes an idle worker (or
//! starts one: a cold start), and gives it back when the attempt succeeds or fails cleanly.
//! A worker that crashes, times out, is cancelled, or answers nonsense is killed and never
//! reused. Idle workers are stopped after their function's idle time-out, so an unused
//! function scales to zero.
//!
//! Each worker is started in its own process group with `PR_SET_PDEATHSIG`, so a node killed
//! with `kill -9` takes its workers with it; an address-space limit (`RLIMIT_AS`) applies when
//! the function sets `memory_mb`, and a worker that dies saying an allocation failed ends its
//! attempt with `memory_limit`. Whatever a worker starts ends with it: the node is a
//! subreaper and kills and reaps every process a worker leaves behind ([`tree`]).

mod tree;
mod usage;
mod worker;

pub use tree::{Swept, WORKER_ENV};
pub use usage::Usage;

use model::protocol::Request;
use model::{ErrorCode, JobError};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use worker::{Exchange, Worker};

/// Bytes of stderr kept per attempt; the rest is counted and dropped.
pub const LOG_BYTES_MAX: usize = 1024 * 1024;
/// Idle workers kept per pool at most, whatever the load was.
const IDLE_WORKERS_PER_POOL_MAX: usize = 64;

/// How to start a worker for one function version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub memory_mb: Option<u64>,
    pub timeout_ms: u64,
    pub idle_timeout_ms: u64,
}

/// What an attempt came to.
#[derive(Debug)]
pub struct Finished {
    pub reply: Result<serde_json::Value, JobError>,
    /// The attempt's stderr, at most [`LOG_BYTES_MAX`] bytes, with a note if cut.
    pub log: Vec<u8>,
    /// Whether a worker had to be started for it.
    pub cold_start: bool,
    pub run_time: Duration,
    /// The CPU time and peak memory of its worker while it ran, where `/proc` tells.
    pub usage: Option<Usage>,
}

#[derive(Debug, Default)]
struct Pool {
    idle: Vec<Worker>,
    idle_timeout: Duration,
}

/// Counters the node exports as metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub cold_starts: AtomicU64,
    pub worker_crashes: AtomicU64,
    pub timeouts: AtomicU64,
    /// Attempts that ended with `memory_limit`.
    pub memory_limits: AtomicU64,
    /// Attempts running in a worker now (a graceful stop waits for these, not for results
    /// that a cluster without quorum cannot record).
    pub running: AtomicU64,
}

/// Counts one attempt in [`Counters::running`] while it lives.
#[derive(Debug)]
struct RunningGuard<'a>(&'a AtomicU64);

impl<'a> RunningGuard<'a> {
    fn new(running: &'a AtomicU64) -> RunningGuard<'a> {
        running.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        RunningGuard(running)
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[derive(Debug)]
pub struct Executor {
    pools: Mutex<HashMap<String, Pool>>,
    counters: Arc<Counters>,
}

impl Default for Executor {
    fn default() -> Executor {
        Executor::new()
    }
}

impl Executor {
    /// An executor with no workers yet. It makes this process the subreaper of its
    /// descendants (process-wide and for good), so that what workers leave comes back to it.
    /// Its sweeps reap every zombie child that is not a worker: a process with an executor
    /// spawns no children of its own (only this crate spawns processes).
    pub fn new() -> Executor {
        if let Err(e) = tree::become_subreaper() {
            tracing::warn!(error = %e, "cannot become a subreaper: children of ended workers may outlive them");
        }
        Executor {
            pools: Mutex::default(),
            counters: Arc::default(),
        }
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Runs one attempt in a worker of pool `pool` (one pool per function version).
    pub async fn run(
        &self,
        pool: &str,
        spec: &ProcessSpec,
        request: &Request,
        cancel: &CancellationToken,
    ) -> Finished {
        let _running = RunningGuard::new(&self.counters.running);
        let started = Instant::now();
        let line = match serde_json::to_string(request) {
            Ok(mut line) => {
                line.push('\n');
                line
            }
            Err(e) => {
                return finished(
                    Err(JobError::new(ErrorCode::InvalidInput, e.to_string())),
                    Vec::new(),
                    false,
                    started,
                )
            }
        };
        // A warm worker may have died while idle; then start a fresh one, once.
        let mut cold_start = false;
        let mut exchange = None;
        while exchange.is_none() {
            let mut worker = match self.take_idle(pool) {
                Some(w) => w,
                None => {
                    cold_start = true;
                    self.counters.cold_starts.fetch_add(1, Ordering::Relaxed);
                    match Worker::spawn(spec) {
                        Ok(w) => w,
                        Err(e) => {
                            let message = format!("cannot start {}: {e}", spec.program.display());
                            return finished(
                                Err(JobError::new(ErrorCode::SpawnFailed, message)),
                                Vec::new(),
                                true,
                                started,
                            );
                        }
                    }
                }
            };
            let meter = worker.probe().and_then(|probe| probe.start());
            match worker.send(&line).await {
                Ok(()) => exchange = Some((worker, meter)),
                Err(e) if cold_start => {
                    let message = format!("worker did not take the request: {e}");
                    self.end(worker).await;
                    let error = JobError::new(ErrorCode::WorkerCrashed, message);
                    return finished(Err(error), Vec::new(), true, started);
                }
                Err(_) => self.end(worker).await,
            }
        }
        let (mut worker, meter) = exchange.expect("set above");
        let deadline = tokio::time::Instant::now() + Duration::from_millis(spec.timeout_ms);
        let outcome = worker.await_reply(deadline, cancel).await;
        let usage = meter
            .as_ref()
            .and_then(|m| worker.probe().and_then(|probe| probe.read(m)));
        let log = worker.take_log();
        let reply = match outcome {
            Exchange::Reply(reply) => {
                self.give_back(pool, worker, Duration::from_millis(spec.idle_timeout_ms));
                reply
            }
            Exchange::Broken(error) => {
                let counter = match error.code.as_str() {
                    c if c == ErrorCode::Timeout.as_str() => Some(&self.counters.timeouts),
                    c if c == ErrorCode::WorkerCrashed.as_str() => {
                        Some(&self.counters.worker_crashes)
                    }
                    c if c == ErrorCode::MemoryLimit.as_str() => Some(&self.counters.memory_limits),
                    _ => None,
                };
                if let Some(counter) = counter {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                self.end(worker).await;
                Err(error)
            }
        };
        Finished {
            usage,
            ..finished(reply, log, cold_start, started)
        }
    }

    /// Kills a worker that must not be reused and everything it started.
    async fn end(&self, worker: Worker) {
        worker.kill().await;
        Executor::sweep().await;
    }

    /// Kills what ended workers left behind and reaps zombie children (see [`tree`]). The
    /// idle reaper runs it on every tick; it is cheap (one read of `/proc`).
    pub async fn sweep() -> Swept {
        tokio::task::spawn_blocking(tree::sweep)
            .await
            .unwrap_or_default()
    }

    fn take_idle(&self, pool: &str) -> Option<Worker> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.get_mut(pool)?.idle.pop()
    }

    fn give_back(&self, pool: &str, mut worker: Worker, idle_timeout: Duration) {
        worker.last_used = Instant::now();
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let entry = pools.entry(pool.to_string()).or_default();
        entry.idle_timeout = idle_timeout;
        if entry.idle.len() < IDLE_WORKERS_PER_POOL_MAX {
            entry.idle.push(worker);
        }
        // Else the worker is dropped: it is killed, and the next sweep kills what it left.
    }

    /// Idle workers per pool, for metrics and node load reports.
    pub fn warm_workers(&self) -> BTreeMap<String, usize> {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .iter()
            .filter(|(_, p)| !p.idle.is_empty())
            .map(|(k, p)| (k.clone(), p.idle.len()))
            .collect()
    }

    /// Stops workers idle for longer than their pool's idle time-out, and what they started,
    /// then [`Executor::sweep`]s. Returns how many workers it stopped.
    pub async fn reap_idle(&self) -> usize {
        let now = Instant::now();
        let expired: Vec<Worker> = {
            let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            let mut expired = Vec::new();
            for pool in pools.values_mut() {
                let timeout = pool.idle_timeout;
                let (old, fresh): (Vec<Worker>, Vec<Worker>) = pool
                    .idle
                    .drain(..)
                    .partition(|w| now.duration_since(w.last_used) >= timeout);
                pool.idle = fresh;
                expired.extend(old);
            }
            pools.retain(|_, p| !p.idle.is_empty());
            expired
        };
        let count = expired.len();
        for worker in expired {
            worker.stop().await;
        }
        Executor::sweep().await;
        count
    }

    /// Stops every idle worker (node shutdown).
    pub async fn shutdown(&self) {
        let all: Vec<Worker> = {
            let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools.drain().flat_map(|(_, p)| p.idle).collect()
        };
        for worker in all {
            worker.stop().await;
        }
        Executor::sweep().await;
    }
}

fn finished(
    reply: Result<serde_json::Value, JobError>,
    log: Vec<u8>,
    cold_start: bool,
    started: Instant,
) -> Finished {
    Finished {
        reply,
        log,
        cold_start,
        run_time: started.elapsed(),
        usage: None,
    }
}

//! Running this node's attempts.
//!
//! The life of an attempt on its node:
//! 1. the leader's `StartAttempts` assigns it here; [`dispatch`] sees it in the applied state
//!    and starts a task for it;
//! 2. the task waits for a free slot, fetches the input files, and hands the request to the
//!    executor (a warm or new worker process);
//! 3. on success, files the worker wrote become objects under `jobs/{job}/{attempt}/`; any
//!    stderr becomes `logs/{job}/{attempt}.log`; with the local store each is copied to a
//!    second node first (see [`crate::objects`]), and an output that finds no second node
//!    while the cluster has one fails the attempt (`unavailable`, retried by policy);
//! 4. the result goes to [`report`], which batches results into `FinishAttempts` entries,
//!    each with a `RecordObjects` of the objects those attempts wrote (one entry: a job is
//!    never seen succeeded before its outputs are recorded);
//! 5. if the state stops showing the attempt as live on this node (cancelled, or superseded
//!    by a hedge that succeeded first), its task is cancelled and the worker killed. A late
//!    result from such an attempt is fenced off by the state machine.

use crate::metrics::{FunctionLabels, OutcomeLabels};
use crate::objects::{sha256_file, Source};
use crate::{now_ms, Node};
use executor::ProcessSpec;
use model::protocol::Request;
use model::{
    AttemptId, AttemptResult, Command, ErrorCode, FunctionKind, FunctionSpec, Job, JobError, JobId,
    ObjectRecord, Outcome,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Results waiting to be written to the log.
pub(crate) const RESULTS_QUEUE_LEN_MAX: usize = 16_384;
/// Results per `FinishAttempts` entry at most.
const RESULTS_PER_ENTRY_MAX: usize = 4_096;
/// Largest input file fetched for an attempt, and largest output file kept.
const FILE_BYTES_MAX: u64 = crate::OBJECT_COPY_BYTES_MAX;
/// How often idle workers are checked against their idle time-out.
const REAP_INTERVAL: Duration = Duration::from_millis(500);
/// How long past its function's time-out an attempt may stay busy before it is stuck.
const STUCK_GRACE: Duration = Duration::from_secs(600);
/// Pause before a failed result write is tried again.
const REPORT_RETRY: Duration = Duration::from_millis(200);

pub(crate) fn log_key(job: JobId, attempt: AttemptId) -> String {
    format!("logs/{job}/{attempt}.log")
}

/// An attempt's result, with the objects it wrote (their records go into the same entry).
#[derive(Debug)]
pub(crate) struct Finished {
    result: AttemptResult,
    objects: Vec<ObjectRecord>,
}

/// What an attempt task needs, copied out of the state.
struct Assignment {
    /// Shared with the state (a fan-out assigns hundreds at once: copies of each job and
    /// function were the pages a node faulted in most under one).
    job: Arc<Job>,
    attempt: AttemptId,
    function: Arc<FunctionSpec>,
}

/// Work directories, one per running attempt, reused from attempt to attempt: creating and
/// removing directories costs milliseconds of journal traffic on a busy disk, more than a
/// small job itself.
#[derive(Debug)]
struct WorkDirs {
    root: PathBuf,
    free: std::sync::Mutex<Vec<PathBuf>>,
    next: std::sync::atomic::AtomicU64,
}

impl WorkDirs {
    fn new(root: PathBuf) -> WorkDirs {
        // Dirs of a previous process may hold leftovers: start from scratch.
        let _ = std::fs::remove_dir_all(&root);
        WorkDirs {
            root,
            free: std::sync::Mutex::new(Vec::new()),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A directory with empty `in/` and `out/` subdirectories.
    fn take(&self) -> std::io::Result<PathBuf> {
        if let Some(dir) = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(dir);
        }
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.root.join(format!("w{n}"));
        std::fs::create_dir_all(dir.join("in"))?;
        std::fs::create_dir_all(dir.join("out"))?;
        Ok(dir)
    }

    /// Empties the directory (reading an empty one costs no write) and keeps it for reuse.
    /// `out_empty`: the attempt's end found `out/` empty already (see [`keep_outputs`]), so it
    /// is not read again.
    fn give_back(&self, dir: PathBuf, out_empty: bool) {
        let subs: &[&str] = if out_empty { &["in"] } else { &["in", "out"] };
        for sub in subs {
            let path = dir.join(sub);
            let empty = std::fs::read_dir(&path).is_ok_and(|mut entries| entries.next().is_none());
            if !empty {
                let _ = std::fs::remove_dir_all(&path);
                if let Err(e) = std::fs::create_dir(&path) {
                    tracing::warn!(dir = %path.display(), error = %e, "could not reset a work dir; dropping it");
                    return;
                }
            }
        }
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(dir);
    }
}

pub(crate) async fn dispatch(node: Node, results: mpsc::Sender<Finished>) {
    let me = node.id();
    let slots = Arc::new(Semaphore::new(node.inner.config.slots as usize));
    let work_dirs = Arc::new(WorkDirs::new(node.inner.config.data_dir.join("work")));
    let mut applied = node.inner.registry.applied();
    let mut local: HashMap<JobId, (AttemptId, CancellationToken)> = HashMap::new();
    let mut tasks = JoinSet::new();
    // Which attempt each task runs, so that a task that panicked still gets a result.
    let mut task_attempts: HashMap<tokio::task::Id, (JobId, AttemptId)> = HashMap::new();
    // Whether the state changed since the last reconcile: a task's end changes nothing the
    // state says (its result is an entry of its own), and a reconcile is a pass over every
    // attempt assigned here, thousands while a fan-out is queued.
    let mut stale = true;
    loop {
        if stale {
            stale = false;
            // Reconcile what runs here with what the state assigns here: the state's index of
            // the attempts on this node answers without a look at any job but the new ones
            // (this pass follows every entry, over hundreds of attempts in a fan-out).
            let new = node.read(|s| {
                let on_me = s.attempts_on(me);
                local.retain(|job, (attempt, token)| {
                    let keep = on_me.and_then(|m| m.get(job)) == Some(attempt);
                    if !keep {
                        token.cancel();
                    }
                    keep
                });
                let mut new = Vec::new();
                let mut functions: HashMap<&str, Arc<FunctionSpec>> = HashMap::new();
                for (job_id, &attempt) in on_me.into_iter().flatten() {
                    if local.get(job_id).is_some_and(|(a, _)| *a == attempt) {
                        continue;
                    }
                    let Some(job) = s.shared_job(*job_id) else {
                        continue;
                    };
                    let function = match functions.get(job.function.as_str()) {
                        Some(f) => f.clone(),
                        None => {
                            let Some(f) = s.function(&job.function) else {
                                continue;
                            };
                            let f = Arc::new(f.clone());
                            functions.insert(job.function.as_str(), f.clone());
                            f
                        }
                    };
                    new.push(Assignment {
                        job: job.clone(),
                        attempt,
                        function,
                    });
                }
                new
            });
            for a in new {
                let token = CancellationToken::new();
                local.insert(a.job.id, (a.attempt, token.clone()));
                let ids = (a.job.id, a.attempt);
                let task = tasks.spawn(run_attempt(
                    node.clone(),
                    a,
                    token,
                    slots.clone(),
                    work_dirs.clone(),
                    results.clone(),
                ));
                task_attempts.insert(task.id(), ids);
            }
        }
        tokio::select! {
            () = node.inner.shutdown.cancelled() => break,
            changed = applied.changed() => if changed.is_err() { break } else { stale = true },
            Some(ended) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                ended_task(ended, &mut task_attempts, &mut local, &results).await;
            }
        }
    }
    for (_, (_, token)) in local {
        token.cancel();
    }
    while tasks.join_next().await.is_some() {}
}

/// An attempt's task ended: forget it; if it panicked (a bug, not the job's fault), report
/// the attempt failed rather than leave it running forever (the retry policy decides what
/// happens next).
async fn ended_task(
    ended: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    task_attempts: &mut HashMap<tokio::task::Id, (JobId, AttemptId)>,
    local: &mut HashMap<JobId, (AttemptId, CancellationToken)>,
    results: &mpsc::Sender<Finished>,
) {
    let id = ended.as_ref().map_or_else(|e| e.id(), |(id, ())| *id);
    let Some((job, attempt)) = task_attempts.remove(&id) else {
        return;
    };
    let Err(e) = ended else { return };
    if e.is_panic() {
        tracing::error!(%job, %attempt, error = %e, "an attempt's task panicked");
        local.remove(&job);
        let error = JobError::new(
            ErrorCode::Internal,
            format!("the node failed running the attempt: {e}"),
        );
        let result = AttemptResult {
            job,
            attempt,
            outcome: Outcome::Failed(error),
            log_bytes: 0,
            log: None,
            usage: None,
        };
        let _ = results
            .send(Finished {
                result,
                objects: Vec::new(),
            })
            .await;
    }
}

async fn run_attempt(
    node: Node,
    a: Assignment,
    cancel: CancellationToken,
    slots: Arc<Semaphore>,
    work_dirs: Arc<WorkDirs>,
    results: mpsc::Sender<Finished>,
) {
    let _permit = tokio::select! {
        permit = slots.acquire_owned() => match permit { Ok(p) => p, Err(_) => return },
        () = cancel.cancelled() => return,
    };
    let labels = FunctionLabels {
        function: a.job.function.clone(),
    };
    if a.job.attempts.len() == 1 {
        let waited_ms = now_ms().saturating_sub(a.job.submitted_at_ms);
        node.inner
            .metrics
            .queue_wait
            .get_or_create(&labels)
            .observe(waited_ms as f64 / 1000.0);
    }
    let (outcome, log, mut objects, usage) = match work_dirs.take() {
        Ok(work_dir) => {
            // The watchdog: an attempt still busy long past its function's time-out is stuck
            // (an input download or output upload that hangs; the worker itself is killed at
            // the time-out by the executor). It is stopped and fails with `stuck`.
            let run = cancel.child_token();
            let limit = Duration::from_millis(a.function.timeout_ms) + STUCK_GRACE;
            let watchdog = async {
                tokio::time::sleep(limit).await;
                run.cancel();
                std::future::pending::<()>().await;
            };
            let mut out_empty = false;
            let mut done = tokio::select! {
                done = attempt_in(&node, &a, &work_dir, &run, &labels, &mut out_empty) => done,
                () = watchdog => unreachable!("the watchdog never ends"),
            };
            if run.is_cancelled() && !cancel.is_cancelled() {
                let message = format!(
                    "still busy {} s past the time-out; stopped",
                    STUCK_GRACE.as_secs()
                );
                done.0 = Outcome::Failed(JobError::new(ErrorCode::Stuck, message));
            }
            work_dirs.give_back(work_dir, out_empty);
            done
        }
        Err(e) => {
            let error = JobError {
                code: storage_code(&e).into(),
                message: format!("work dir: {e}"),
            };
            (Outcome::Failed(error), Vec::new(), Vec::new(), None)
        }
    };
    if cancel.is_cancelled() {
        return; // The state has moved on; nobody waits for this result.
    }
    let code = match &outcome {
        Outcome::Succeeded { .. } => "ok".to_string(),
        Outcome::Failed(e) => e.code.clone(),
    };
    node.inner
        .metrics
        .attempts
        .get_or_create(&OutcomeLabels {
            function: a.job.function.clone(),
            outcome: code,
        })
        .inc();
    let mut log_bytes = log.len() as u64;
    // A small log travels in the log entry (no file, no directory, no copy); see
    // `model::LOG_INLINE_MAX`.
    let inline = (!log.is_empty() && log.len() <= model::LOG_INLINE_MAX)
        .then(|| std::str::from_utf8(&log).ok().map(str::to_owned))
        .flatten();
    if !log.is_empty() && inline.is_none() {
        match keep_log(&node, log_key(a.job.id, a.attempt), log.into()).await {
            Ok(record) => objects.extend(record),
            Err(e) => {
                tracing::warn!(job = %a.job.id, error = %e, "could not keep an attempt's log");
                log_bytes = 0;
            }
        }
    }
    let result = AttemptResult {
        job: a.job.id,
        attempt: a.attempt,
        outcome,
        log_bytes,
        log: inline,
        usage,
    };
    let _ = results.send(Finished { result, objects }).await;
}

/// Stores an attempt's log; with the local store, copies it to a second node if one takes
/// it (a log is kept with one copy rather than not at all) and returns its record.
async fn keep_log(
    node: &Node,
    key: String,
    log: bytes::Bytes,
) -> Result<Option<ObjectRecord>, storage::StorageError> {
    node.inner.store.put_bytes(&key, log.clone()).await?;
    if !node.inner.store.is_local() {
        return Ok(None);
    }
    let size = log.len() as u64;
    let sha256 = model::signature::body_sha256_hex(&log);
    let copies = node
        .copy_to_peers(&key, Source::Bytes(log), size, &sha256)
        .await;
    if copies.short(&key).is_some() {
        tracing::warn!(key, "an attempt's log is kept on this node only");
    }
    Ok(Some(ObjectRecord {
        key,
        size,
        sha256,
        holders: copies.holders,
    }))
}

async fn attempt_in(
    node: &Node,
    a: &Assignment,
    work_dir: &Path,
    cancel: &CancellationToken,
    labels: &FunctionLabels,
    out_empty: &mut bool,
) -> (
    Outcome,
    Vec<u8>,
    Vec<ObjectRecord>,
    Option<model::ResourceUse>,
) {
    let in_dir = work_dir.join("in");
    let out_dir = work_dir.join("out");
    let files = match fetch_inputs(node, &a.job.files, &in_dir).await {
        Ok(files) => files,
        Err(e) => return (Outcome::Failed(e), Vec::new(), Vec::new(), None),
    };
    let request = Request {
        job: a.job.id.0,
        attempt: a.attempt.0,
        function: a.job.function.clone(),
        input: a.job.input.clone(),
        files,
        out_dir: out_dir.display().to_string(),
    };
    let pool = format!("{}@{}", a.function.name, a.function.version);
    let spec = process_spec(node, &a.function);
    let finished = node
        .inner
        .executor
        .run(&pool, &spec, &request, cancel)
        .await;
    node.inner
        .metrics
        .run_time
        .get_or_create(labels)
        .observe(finished.run_time.as_secs_f64());
    // An exponentially weighted mean (1/8 per sample); races between slots only blur it.
    let ewma = &node.inner.run_time_ewma_us;
    let old = ewma.load(std::sync::atomic::Ordering::Relaxed);
    let sample = finished.run_time.as_micros() as u64;
    ewma.store(
        old - old / 8 + sample / 8,
        std::sync::atomic::Ordering::Relaxed,
    );
    if finished.cold_start {
        node.inner.metrics.cold_starts.get_or_create(labels).inc();
    }
    let mut records = Vec::new();
    let outcome = match finished.reply {
        Ok(output) => match keep_outputs(node, a, &out_dir, &mut records, out_empty).await {
            Ok(objects) => Outcome::Succeeded { output, objects },
            Err(e) => Outcome::Failed(e),
        },
        Err(e) => Outcome::Failed(e),
    };
    let usage = finished.usage.map(|u| model::ResourceUse {
        cpu_ms: u.cpu_ms,
        peak_rss_bytes: u.peak_rss_bytes,
    });
    (outcome, finished.log, records, usage)
}

fn process_spec(node: &Node, f: &FunctionSpec) -> ProcessSpec {
    let (program, args) = match f.kind {
        FunctionKind::Builtin => (
            node.inner.config.worker_program.clone(),
            vec!["worker".to_string()],
        ),
        FunctionKind::Command => (PathBuf::from(&f.command[0]), f.command[1..].to_vec()),
    };
    ProcessSpec {
        program,
        args,
        env: f.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        memory_mb: f.memory_mb,
        timeout_ms: f.timeout_ms,
        idle_timeout_ms: f.idle_timeout_ms,
    }
}

fn storage_code(e: &std::io::Error) -> &'static str {
    if e.raw_os_error() == Some(28) {
        "storage_full"
    } else {
        "internal"
    }
}

/// Downloads the job's input objects into `dir`, returning their local paths in order.
async fn fetch_inputs(node: &Node, keys: &[String], dir: &Path) -> Result<Vec<String>, JobError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut paths = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let name = key.rsplit('/').next().unwrap_or("input");
        let path = dir.join(format!("{i}-{name}"));
        node.object_to_file(key, &path, FILE_BYTES_MAX)
            .await
            .map_err(|api| {
                let code = if api.code == model::ErrorCode::NotFound {
                    "invalid_input"
                } else {
                    api.code.as_str()
                };
                JobError {
                    code: code.into(),
                    message: format!("input file {key:?}: {}", api.message),
                }
            })?;
        paths.push(path.display().to_string());
    }
    Ok(paths)
}

/// Uploads every file the worker wrote under `out_dir`; returns their object keys. With the
/// local store each is copied to a second node, and its record added to `records`.
async fn keep_outputs(
    node: &Node,
    a: &Assignment,
    out_dir: &Path,
    records: &mut Vec<ObjectRecord>,
    out_empty: &mut bool,
) -> Result<Vec<String>, JobError> {
    let mut objects = Vec::new();
    let mut pending = vec![out_dir.to_path_buf()];
    let mut entries_seen = 0usize;
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| JobError::new(ErrorCode::Internal, e.to_string()))?;
        for entry in entries {
            entries_seen += 1;
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(path);
                continue;
            }
            if !kind.is_file() {
                continue; // Links and the like are not outputs.
            }
            let rel = path
                .strip_prefix(out_dir)
                .expect("walked from out_dir")
                .to_string_lossy()
                .replace('\\', "/");
            let key = format!("jobs/{}/{}/{rel}", a.job.id, a.attempt);
            let failed = |api: model::ApiError| JobError {
                code: api.code.as_str().into(),
                message: format!("output {rel:?}: {}", api.message),
            };
            let size = node
                .inner
                .store
                .put_file(&key, &path, FILE_BYTES_MAX)
                .await
                .map_err(|e| failed(crate::storage_error(e)))?;
            if node.inner.store.is_local() {
                let sha256 = sha256_file(&path).await.map_err(|e| {
                    failed(model::ApiError::new(ErrorCode::Internal, e.to_string()))
                })?;
                let copies = node
                    .copy_to_peers(&key, Source::File(&path), size, &sha256)
                    .await;
                if let Some(e) = copies.short(&key) {
                    return Err(failed(e));
                }
                records.push(ObjectRecord {
                    key: key.clone(),
                    size,
                    sha256,
                    holders: copies.holders,
                });
            }
            objects.push(key);
        }
    }
    objects.sort();
    *out_empty = entries_seen == 0;
    Ok(objects)
}

/// Writes attempt results to the log in batches: whatever arrived while the previous write
/// was in flight goes into the next entry.
pub(crate) async fn report(node: Node, mut results: mpsc::Receiver<Finished>) {
    loop {
        let first = tokio::select! {
            () = node.inner.shutdown.cancelled() => return,
            r = results.recv() => match r { Some(r) => r, None => return },
        };
        let mut batch = vec![first];
        while batch.len() < RESULTS_PER_ENTRY_MAX {
            match results.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        tracing::debug!(results = batch.len(), "recording results");
        let objects: Vec<ObjectRecord> = batch
            .iter_mut()
            .flat_map(|f| std::mem::take(&mut f.objects))
            .collect();
        let batch: Vec<AttemptResult> = batch.into_iter().map(|f| f.result).collect();
        loop {
            let now = now_ms();
            let mut finish = Command::FinishAttempts {
                now_ms: now,
                results: batch.clone(),
            };
            // The next step of each run these results end, decided here and started in the
            // same entry (see `model::Continuation`).
            let then = node.read(|s| {
                s.foresee_finish(&batch, now, crate::scheduling::continues_here(&node, s))
            });
            if !then.is_empty() {
                finish = Command::Continued {
                    command: Box::new(finish),
                    then,
                };
            }
            // The objects first, in the same entry: whoever sees the job finished can read
            // its outputs and logs.
            let command = if objects.is_empty() {
                finish
            } else {
                Command::Batch(vec![
                    Command::RecordObjects {
                        now_ms: now_ms(),
                        objects: objects.clone(),
                    },
                    finish,
                ])
            };
            match node.propose(command).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, results = batch.len(), "could not record results; trying again");
                    tokio::select! {
                        () = node.inner.shutdown.cancelled() => return,
                        () = tokio::time::sleep(REPORT_RETRY) => {}
                    }
                }
            }
        }
    }
}

pub(crate) async fn reap_idle_workers(node: Node) {
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    loop {
        tokio::select! {
            () = node.inner.shutdown.cancelled() => return,
            _ = tick.tick() => {
                let stopped = node.inner.executor.reap_idle().await;
                if stopped > 0 {
                    tracing::debug!(stopped, "scaled idle workers down");
                }
            }
        }
    }
}

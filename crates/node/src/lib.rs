//! A chorus node: wires the registry, the scheduler loop, the executor and storage, and owns
//! every background task. The API crate calls the methods here; nothing here knows HTTP.
//!
//! Start-up, step by step:
//! 1. open the registry (a pristine node makes itself a one-member cluster) and wait for a
//!    leader;
//! 2. on the leader: deploy missing built-in functions, create the admin key on first start
//!    (written to `DATA_DIR/admin.key` for the CLI on this machine);
//! 3. register this node with its slots, then fail over any attempt the registry still shows
//!    running here (they died with the previous process; code `node_restarted`, retried by
//!    policy);
//! 4. start the tasks: scheduling (acts while leader), running (this node's attempts),
//!    reporting (batches attempt results into the log) and the idle-worker reaper.
//!
//! Shutdown cancels the tasks, stops idle workers and shuts raft down.

mod liveness;
mod metrics;
mod retention;
mod running;
mod scheduling;
mod webhook;

use model::{
    ApiError, ApiKey, Command, ErrorCode, FunctionSpec, Job, JobId, JobSpec, KeyId, NodeId,
    Response, Scope, State, SubmitResult,
};
use rand::RngCore;
use registry::{Registry, RegistryError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use storage::{StorageError, Store};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use registry::{
    Direction, FaultAction, FaultRule, RaftRpcError, CLUSTER_KEY_ID, RAFT_BODY_BYTES_MAX,
    SNAPSHOT_LOGS_DEFAULT,
};
pub use storage::Store as ObjectStore;

/// Raft roles, for the API's node listing.
pub mod registry_role {
    pub use registry::Role;
}

/// How long start-up waits for the registry to elect a leader.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// Longest a client may wait for a job in one call.
pub const WAIT_MAX: Duration = Duration::from_secs(300);

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// `host:port` other nodes and clients reach this node's API at.
    pub advertise_addr: String,
    /// Attempts this node runs at once.
    pub slots: u32,
    /// `s3://bucket/prefix` or `file:///dir`; `None`: `DATA_DIR/objects`.
    pub storage_url: Option<String>,
    /// The executable that serves built-in functions (`chorus`), started as `PROGRAM worker`.
    pub worker_program: PathBuf,
    /// Names of the built-in functions that `worker_program` serves.
    pub builtin_functions: Vec<String>,
    /// Placement labels, e.g. `pool=burst`.
    pub labels: Vec<String>,
    /// Join an existing cluster through this node, instead of founding one.
    pub join: Option<JoinTarget>,
    /// Whether [`Node::set_faults`] may cut this node off from peers (partition tests).
    pub fault_injection: bool,
    /// Log entries between snapshots ([`SNAPSHOT_LOGS_DEFAULT`] unless testing).
    pub snapshot_logs: u64,
}

/// Where and how a new node asks to join.
#[derive(Clone, Debug)]
pub struct JoinTarget {
    /// `host:port` of any member.
    pub addr: String,
    /// An admin key of the cluster.
    pub key_id: String,
    pub secret: String,
}

/// How long a write waits to be committed before the caller hears `unavailable`.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The file that holds the cluster secret (hex), which signs raft traffic between nodes.
const CLUSTER_KEY_FILE: &str = "cluster.key";
/// How long a joining node waits to be admitted and to hear from a leader.
const JOIN_WAIT: Duration = Duration::from_secs(60);

/// The admin key written on first start, read by the CLI on the same machine.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct KeyFile {
    pub id: String,
    pub secret: String,
}

/// The file name of the admin key inside the data dir.
pub const ADMIN_KEY_FILE: &str = "admin.key";

#[derive(Clone, Debug)]
pub struct Node {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: NodeConfig,
    registry: Registry,
    store: Store,
    executor: executor::Executor,
    metrics: metrics::Metrics,
    shutdown: CancellationToken,
    tasks: tokio::sync::Mutex<JoinSet<()>>,
    /// The scheduler's state between placements (breakers, rotation, PRNG), shared by the
    /// scheduling loop and the placement of new jobs; `None` until this node leads.
    scheduler: std::sync::Mutex<Option<scheduler::SchedulerState>>,
    cluster_secret: String,
    /// Set once start-up has finished (the tasks run).
    running: std::sync::atomic::AtomicBool,
    /// Smoothed run time of this node's attempts, in µs (sizes its prefetch).
    run_time_ewma_us: std::sync::atomic::AtomicU64,
}

/// Milliseconds since the epoch: the one clock the node stamps commands with.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn unavailable(e: RegistryError) -> ApiError {
    match e {
        RegistryError::NotLeader { leader } => ApiError::new(
            ErrorCode::Unavailable,
            format!("not the leader; the leader is {leader:?}"),
        ),
        RegistryError::Storage(m) if m.contains("No space left") => {
            ApiError::new(ErrorCode::StorageFull, m)
        }
        RegistryError::StorageFull(m) => ApiError::new(ErrorCode::StorageFull, m),
        other => ApiError::new(ErrorCode::Unavailable, other.to_string()),
    }
}

/// Maps a storage failure to the API's codes.
pub fn storage_error(e: StorageError) -> ApiError {
    let code = match &e {
        StorageError::NotFound(_) => ErrorCode::NotFound,
        StorageError::InvalidKey(..) | StorageError::InvalidUrl(..) => ErrorCode::InvalidInput,
        StorageError::TooLarge { .. } => ErrorCode::TooLarge,
        StorageError::Full(_) => ErrorCode::StorageFull,
        StorageError::Io(_) => ErrorCode::Internal,
    };
    ApiError::new(code, e.to_string())
}

fn rejected(response: Response) -> Result<Response, ApiError> {
    match response {
        Response::Rejected(e) => Err(e),
        other => Ok(other),
    }
}

fn internal(what: &str, e: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, format!("{what}: {e}"))
}

impl Node {
    /// Opens and runs a node; for callers that serve the API themselves only after it is up
    /// (a founding node needs no peer to reach it while it starts).
    pub async fn start(config: NodeConfig) -> Result<Node, ApiError> {
        let node = Node::open(config).await?;
        node.run().await?;
        Ok(node)
    }

    /// Phase one of start-up: find this node's identity (founding, restarting, or joining
    /// through `config.join`) and open the registry. From here on the API can serve raft RPC,
    /// which a joining node needs before phase two.
    pub async fn open(config: NodeConfig) -> Result<Node, ApiError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| internal("data dir", &e))?;
        let (id, secret, founding) = identity(&config).await?;
        let registry = Registry::open(
            &config.data_dir.join("raft"),
            id,
            &config.advertise_addr,
            founding,
            &secret,
            config.snapshot_logs,
        )
        .await
        .map_err(unavailable)?;
        let store = match &config.storage_url {
            Some(url) => Store::open(url),
            None => Store::local(&config.data_dir.join("objects")),
        }
        .map_err(storage_error)?;
        Ok(Node {
            inner: Arc::new(Inner {
                config,
                registry,
                store,
                executor: executor::Executor::new(),
                metrics: metrics::Metrics::new(),
                shutdown: CancellationToken::new(),
                tasks: tokio::sync::Mutex::new(JoinSet::new()),
                scheduler: std::sync::Mutex::new(None),
                cluster_secret: secret,
                running: std::sync::atomic::AtomicBool::new(false),
                run_time_ewma_us: std::sync::atomic::AtomicU64::new(10_000),
            }),
        })
    }

    /// Phase two: wait for a leader and catch up, bootstrap, start the tasks.
    pub async fn run(&self) -> Result<(), ApiError> {
        let wait = if self.inner.config.join.is_some() {
            JOIN_WAIT
        } else {
            LEADER_WAIT
        };
        self.inner
            .registry
            .wait_for_leader(wait)
            .await
            .map_err(unavailable)?;
        self.inner.registry.sync().await.map_err(unavailable)?;
        self.bootstrap().await?;
        self.spawn_tasks().await;
        self.inner
            .running
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    async fn bootstrap(&self) -> Result<(), ApiError> {
        let cfg = &self.inner.config;
        let missing: Vec<String> = self.read(|s| {
            cfg.builtin_functions
                .iter()
                .filter(|f| s.function(f).is_none())
                .cloned()
                .collect()
        });
        for name in missing {
            self.propose(Command::DeployFunction {
                spec: FunctionSpec::builtin(&name),
            })
            .await?;
        }
        let key_path = cfg.data_dir.join(ADMIN_KEY_FILE);
        if !key_path.exists() {
            // A joining node keeps the key it joined with, for the CLI on its machine.
            let key = match &cfg.join {
                Some(join) => KeyFile {
                    id: join.key_id.clone(),
                    secret: join.secret.clone(),
                },
                None => {
                    let (id, secret) = self.create_key(vec![Scope::Admin]).await?;
                    KeyFile { id: id.0, secret }
                }
            };
            write_key_file(&key_path, &key)
                .map_err(|e| internal(&key_path.display().to_string(), &e))?;
        }
        let id = self.id();
        let labels = cfg.labels.iter().cloned().collect();
        let register = Command::RegisterNode {
            id,
            addr: cfg.advertise_addr.clone(),
            slots: cfg.slots,
            labels,
            now_ms: now_ms(),
        };
        self.propose(register).await?;
        if self.read(|s| s.running_count(id)) > 0 {
            let code = "node_restarted".to_string();
            let response = self
                .propose(Command::AbandonAttempts {
                    now_ms: now_ms(),
                    node: id,
                    code,
                })
                .await?;
            tracing::info!(
                ?response,
                "failed over attempts left running by the previous process"
            );
        }
        Ok(())
    }

    async fn spawn_tasks(&self) {
        let mut tasks = self.inner.tasks.lock().await;
        let (results_tx, results_rx) = tokio::sync::mpsc::channel(running::RESULTS_QUEUE_LEN_MAX);
        tasks.spawn(scheduling::run(self.clone()));
        tasks.spawn(running::dispatch(self.clone(), results_tx));
        tasks.spawn(running::report(self.clone(), results_rx));
        tasks.spawn(running::reap_idle_workers(self.clone()));
        tasks.spawn(liveness::heartbeat(self.clone()));
        tasks.spawn(liveness::scan(self.clone()));
        tasks.spawn(retention::sweep(self.clone()));
        tasks.spawn(webhook::deliver(self.clone()));
    }

    /// Takes no new work, waits (up to `limit`) until what runs here has finished, then shuts
    /// down. Queued jobs stay in the registry for other nodes or the next start.
    pub async fn drain_and_stop(&self, limit: Duration) {
        let me = self.id();
        let status = Command::SetNodeStatus {
            node: me,
            status: model::NodeStatus::Draining,
        };
        // Without a quorum nothing can be recorded: do not wait for it forever.
        let marked = tokio::time::timeout(LEADER_WAIT, self.propose(status)).await;
        let marked = marked.unwrap_or_else(|_| {
            Err(ApiError::new(
                ErrorCode::Unavailable,
                "no quorum to record the drain",
            ))
        });
        match marked {
            Ok(_) => {
                let deadline = tokio::time::Instant::now() + limit;
                let mut applied = self.inner.registry.applied();
                while self.read(|s| s.running_count(me)) > 0 {
                    tokio::select! {
                        _ = applied.changed() => {}
                        () = tokio::time::sleep_until(deadline) => {
                            tracing::warn!("drain time is up; stopping with attempts still running (they will be retried)");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not mark this node draining"),
        }
        self.shutdown().await;
    }

    /// Admits a new node: gives it an id and the cluster secret, and adds it to the raft
    /// membership (as a learner, then a voter while there are fewer than three) once it
    /// answers.
    pub async fn join(
        &self,
        addr: String,
        slots: u32,
        labels: Vec<String>,
    ) -> Result<(NodeId, String), ApiError> {
        let command = Command::JoinNode {
            addr: addr.clone(),
            slots,
            labels: labels.into_iter().collect(),
            now_ms: now_ms(),
        };
        let id = match rejected(self.propose(command).await?)? {
            Response::Joined { id } => id,
            other => return Err(unexpected(other)),
        };
        let registry = self.inner.registry.clone();
        let shutdown = self.inner.shutdown.clone();
        self.inner.tasks.lock().await.spawn(async move {
            let deadline = tokio::time::Instant::now() + JOIN_WAIT;
            loop {
                match registry.add_member(id, &addr).await {
                    Ok(()) => {
                        tracing::info!(node = id, %addr, "node joined");
                        return;
                    }
                    Err(e) if tokio::time::Instant::now() < deadline => {
                        tracing::debug!(node = id, error = %e, "adding node; trying again");
                    }
                    Err(e) => {
                        tracing::warn!(node = id, error = %e, "gave up adding node");
                        return;
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        });
        Ok((id, self.inner.cluster_secret.clone()))
    }

    /// Changes a node's raft role or status: `drain`, `undrain`, `promote`, `demote`, `remove`.
    pub async fn node_action(&self, id: NodeId, action: &str) -> Result<(), ApiError> {
        if self.read(|s| s.node(id).is_none()) {
            return Err(ApiError::new(ErrorCode::NotFound, format!("no node {id}")));
        }
        let status = |status| Command::SetNodeStatus { node: id, status };
        match action {
            "drain" => {
                rejected(self.propose(status(model::NodeStatus::Draining)).await?).map(|_| ())
            }
            "undrain" => rejected(self.propose(status(model::NodeStatus::Up)).await?).map(|_| ()),
            "promote" => self
                .inner
                .registry
                .change_role(id, registry::Role::Voter)
                .await
                .map_err(unavailable),
            "demote" => self
                .inner
                .registry
                .change_role(id, registry::Role::Learner)
                .await
                .map_err(unavailable),
            "remove" => {
                if id == self.id() {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        "a node cannot remove itself; ask another node",
                    ));
                }
                self.inner
                    .registry
                    .change_role(id, registry::Role::Removed)
                    .await
                    .map_err(unavailable)?;
                let now = now_ms();
                self.propose(Command::AbandonAttempts {
                    now_ms: now,
                    node: id,
                    code: "node_removed".into(),
                })
                .await?;
                rejected(self.propose(Command::RemoveNode { node: id }).await?).map(|_| ())
            }
            other => Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!("unknown node action {other:?}"),
            )),
        }
    }

    /// Changes cluster config through the log; every node reads it live.
    pub async fn set_config(&self, key: String, value: String) -> Result<(), ApiError> {
        if key.is_empty() || key.len() > 128 || value.len() > 4096 {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                "config keys are 1 to 128 bytes, values at most 4096",
            ));
        }
        if key == retention::RETENTION_KEY {
            retention::parse(&value).map_err(|m| ApiError::new(ErrorCode::InvalidInput, m))?;
        }
        // An empty value switches the webhook off.
        if key == webhook::WEBHOOK_KEY && !value.is_empty() {
            webhook::parse(&value).map_err(|m| ApiError::new(ErrorCode::InvalidInput, m))?;
            // A new webhook hears of what happens from now on, not of the whole history.
            let from_now = self.read(|s| s.last_event_seq());
            let set = Command::Batch(vec![
                Command::SetConfig { key, value },
                Command::EventsDelivered { seq: from_now },
            ]);
            return match self.propose(set).await? {
                Response::Batch(answers) => answers
                    .into_iter()
                    .try_for_each(|answer| rejected(answer).map(|_| ())),
                other => Err(unexpected(other)),
            };
        }
        let is_weight = key
            .strip_prefix("node.")
            .and_then(|k| k.strip_suffix(".weight"))
            .and_then(|id| id.parse().ok())
            .is_some_and(|id| key == scheduling::weight_key(id));
        if is_weight && value.parse::<u32>().is_err() {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!("a node weight is a whole number (0 takes the node out of rotation), not {value:?}"),
            ));
        }
        let percent_ok = value
            .parse::<f64>()
            .is_ok_and(|p| (0.0..=100.0).contains(&p));
        if key == "scheduler.cpu_threshold" && !percent_ok {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!("scheduler.cpu_threshold is a percentage from 0 to 100, not {value:?}"),
            ));
        }
        if key == "scheduler.strategy" && value.parse::<scheduler::Strategy>().is_err() {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!("unknown strategy {value:?}"),
            ));
        }
        rejected(self.propose(Command::SetConfig { key, value }).await?).map(|_| ())
    }

    /// Raft roles of the members.
    pub fn members(&self) -> Vec<(NodeId, registry::Role)> {
        self.inner.registry.members()
    }

    /// Makes local reads linearizable: waits until this node has applied what the leader had
    /// committed at the time of the call.
    pub async fn sync(&self) -> Result<(), ApiError> {
        self.inner.registry.sync().await.map_err(unavailable)
    }

    /// Checks the cluster signature of an RPC from a peer.
    pub fn verify_peer(
        &self,
        canonical: &model::signature::Canonical<'_>,
        signature_hex: &str,
    ) -> bool {
        self.inner.registry.verify_peer(canonical, signature_hex)
    }

    /// Stops the tasks, the idle workers and raft.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let mut tasks = self.inner.tasks.lock().await;
        while tasks.join_next().await.is_some() {}
        self.inner.executor.shutdown().await;
        self.inner.registry.shutdown().await;
    }

    pub fn id(&self) -> NodeId {
        self.inner.registry.id()
    }

    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Reads the state as applied on this node.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        self.inner.registry.read(f)
    }

    pub fn raft_figures(&self) -> registry::RaftFigures {
        self.inner.registry.figures()
    }

    /// Whether the node can serve writes now.
    pub fn ready(&self) -> bool {
        self.inner
            .running
            .load(std::sync::atomic::Ordering::Acquire)
            && self.raft_figures().leader.is_some()
            && !self.inner.shutdown.is_cancelled()
            && !self.inner.registry.storage_full()
    }

    async fn propose(&self, command: Command) -> Result<Response, ApiError> {
        // Without a quorum (a partition, most voters down) a write waits forever: answer in
        // bounded time instead. The entry may still commit if the cluster heals while this
        // node leads; idempotency keys make a retry safe.
        match tokio::time::timeout(PROPOSE_TIMEOUT, self.inner.registry.propose(command)).await {
            Ok(answer) => answer.map_err(unavailable),
            Err(_) => Err(ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "no quorum: the write was not committed within {} s (it may still be); retry with an idempotency key",
                    PROPOSE_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    /// Records events in the replicated history (a log line each too); alerts are logged as
    /// warnings. A failure to record is logged, not returned: an event must not stop the work
    /// that noticed it.
    pub(crate) async fn record_events(&self, events: Vec<model::NewEvent>) {
        for e in &events {
            if e.kind.is_alert() {
                tracing::warn!(kind = ?e.kind, node = e.node, "alert: {}", e.message);
            } else {
                tracing::info!(kind = ?e.kind, node = e.node, "{}", e.message);
            }
        }
        let command = Command::RecordEvents {
            now_ms: now_ms(),
            events,
        };
        if let Err(e) = self.propose(command).await {
            tracing::warn!(error = %e, "could not record events");
        }
    }

    /// Sets the fault-injection rules for raft traffic between this node and others (see
    /// [`NodeConfig::fault_injection`] and [`FaultRule`]); an empty list heals. A rule on
    /// one node covers only that node's side: a partition both ways needs both sides told.
    pub fn set_faults(&self, rules: Vec<FaultRule>) -> Result<Vec<FaultRule>, ApiError> {
        if !self.inner.config.fault_injection {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "fault injection is off on this node (start it with --fault-injection)",
            ));
        }
        let rules = self.read(|s| {
            rules
                .into_iter()
                .map(|rule| {
                    rule.check()
                        .map_err(|why| ApiError::new(ErrorCode::InvalidInput, why))?;
                    let node = s.node(rule.node).ok_or_else(|| {
                        ApiError::new(ErrorCode::NotFound, format!("no node {}", rule.node))
                    })?;
                    Ok((node.addr.clone(), rule))
                })
                .collect::<Result<Vec<_>, ApiError>>()
        })?;
        self.inner.registry.set_faults(rules);
        Ok(self.inner.registry.faults())
    }

    pub async fn deploy(&self, spec: FunctionSpec) -> Result<u32, ApiError> {
        if spec.kind == model::FunctionKind::Builtin
            && !self.inner.config.builtin_functions.contains(&spec.name)
        {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!(
                    "{:?} is not a built-in function; set kind = \"command\" and a command",
                    spec.name
                ),
            ));
        }
        match rejected(self.propose(Command::DeployFunction { spec }).await?)? {
            Response::Deployed { version } => Ok(version),
            other => Err(unexpected(other)),
        }
    }

    /// Submits jobs in one log entry; each gets its own result.
    pub async fn submit(&self, jobs: Vec<JobSpec>) -> Result<Vec<SubmitResult>, ApiError> {
        let submit = self.placed_submit(now_ms(), jobs).await;
        match self.propose(submit).await? {
            Response::Submitted(results) => Ok(results),
            other => Err(unexpected(other)),
        }
    }

    /// `SubmitJobs` with the jobs placed now, if this node leads and no older work waits:
    /// such jobs start in the entry that submits them, one commit instead of two. A follower
    /// cannot place (the scheduler runs on the leader); the leader places what it forwards.
    async fn placed_submit(&self, now_ms: u64, jobs: Vec<JobSpec>) -> Command {
        let (place, breaker_events) = scheduling::place_new(self, &jobs);
        if !breaker_events.is_empty() {
            self.record_events(breaker_events).await;
        }
        Command::SubmitJobs {
            now_ms,
            jobs,
            place,
        }
    }

    pub fn job(&self, id: JobId) -> Result<Job, ApiError> {
        self.read(|s| s.job(id).cloned())
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no job {id}")))
    }

    pub async fn cancel(&self, id: JobId) -> Result<Job, ApiError> {
        rejected(
            self.propose(Command::CancelJob {
                now_ms: now_ms(),
                job: id,
            })
            .await?,
        )?;
        self.job(id)
    }

    /// Waits until the job is finished or `timeout` passes, and returns it as it is then.
    pub async fn wait(&self, id: JobId, timeout: Duration) -> Result<Job, ApiError> {
        let deadline = tokio::time::Instant::now() + timeout.min(WAIT_MAX);
        let mut applied = self.inner.registry.applied();
        loop {
            let job = self.job(id)?;
            if job.state.is_terminal() {
                return Ok(job);
            }
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return Ok(job) },
                () = tokio::time::sleep_until(deadline) => return Ok(job),
                () = self.inner.shutdown.cancelled() => return Ok(job),
            }
        }
    }

    /// Creates an API key; the secret is returned once and only here.
    pub async fn create_key(&self, scopes: Vec<Scope>) -> Result<(KeyId, String), ApiError> {
        let mut bytes = [0u8; 40];
        rand::rng().fill_bytes(&mut bytes);
        let id = KeyId(format!("ck_{}", hex::encode(&bytes[..8])));
        let secret = hex::encode(&bytes[8..]);
        let key = ApiKey {
            id: id.clone(),
            secret: secret.clone(),
            scopes,
            created_at_ms: now_ms(),
            revoked: false,
        };
        rejected(self.propose(Command::CreateKey { key }).await?)?;
        Ok((id, secret))
    }

    pub async fn revoke_key(&self, id: KeyId) -> Result<(), ApiError> {
        rejected(self.propose(Command::RevokeKey { id }).await?).map(|_| ())
    }

    /// The attempt's captured stderr (empty if it logged nothing).
    pub async fn attempt_log(
        &self,
        job: JobId,
        attempt: model::AttemptId,
    ) -> Result<bytes::Bytes, ApiError> {
        let j = self.job(job)?;
        let a = j.attempts.iter().find(|a| a.id == attempt).ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("job {job} has no attempt {attempt}"),
            )
        })?;
        if a.log_bytes == 0 {
            return Ok(bytes::Bytes::new());
        }
        let limit = executor::LOG_BYTES_MAX as u64 + 1024;
        self.inner
            .store
            .get_bytes(&running::log_key(job, attempt), limit)
            .await
            .map_err(storage_error)
    }

    /// This node's metrics, in OpenMetrics text, or the classic Prometheus text format.
    pub fn metrics_text(&self, openmetrics: bool) -> String {
        let raft = self.raft_figures();
        let warm = self.inner.executor.warm_workers();
        let text = self.read(|s| {
            // The breakers live in the leader's scheduler state: only the leader reports them.
            let scheduler = scheduling::scheduler_state(self);
            let breakers = scheduler.as_ref().map(|st| &st.breakers);
            self.inner.metrics.render(s, &raft, &warm, breakers)
        });
        if openmetrics {
            text
        } else {
            metrics::to_prometheus_text(&text)
        }
    }
}

fn unexpected(response: Response) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!("unexpected registry response {response:?}"),
    )
}

/// This node's id, the cluster secret, and whether a pristine registry founds a cluster.
///
/// `DATA_DIR/node.id` is written last, so it marks a complete identity: a node that has it
/// restarts as the member it was. Without it, a node founds a cluster as node 1, or joins one
/// and gets a fresh id from the leader (ids are never reused).
async fn identity(config: &NodeConfig) -> Result<(NodeId, String, registry::Founding), ApiError> {
    let dir = &config.data_dir;
    let id_path = dir.join("node.id");
    let secret_path = dir.join(CLUSTER_KEY_FILE);
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|t| t.trim().to_string())
            .map_err(|e| internal(&p.display().to_string(), &e))
    };
    if id_path.exists() {
        let id = read(&id_path)?
            .parse()
            .map_err(|e| internal(&id_path.display().to_string(), &e))?;
        return Ok((id, read(&secret_path)?, registry::Founding::Join));
    }
    let (id, secret, founding) = match &config.join {
        None => {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            (1, hex::encode(bytes), registry::Founding::Found)
        }
        Some(join) => {
            let credentials = client::Credentials {
                key_id: join.key_id.clone(),
                secret: join.secret.clone(),
            };
            let member = client::Client::new(&join.addr, credentials);
            let deadline = tokio::time::Instant::now() + JOIN_WAIT;
            let answer = loop {
                match member
                    .join(&config.advertise_addr, config.slots, &config.labels)
                    .await
                {
                    Ok(answer) => break answer,
                    Err(e)
                        if e.code() != Some(ErrorCode::Unavailable)
                            && !matches!(e, client::ClientError::Http(_)) =>
                    {
                        return Err(ApiError::new(
                            ErrorCode::Unavailable,
                            format!("joining through {}: {e}", join.addr),
                        ));
                    }
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        return Err(ApiError::new(
                            ErrorCode::Unavailable,
                            format!("joining through {}: {e}", join.addr),
                        ));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            (answer.id, answer.cluster_secret, registry::Founding::Join)
        }
    };
    std::fs::write(&secret_path, format!("{secret}\n"))
        .map_err(|e| internal(&secret_path.display().to_string(), &e))?;
    std::fs::write(&id_path, format!("{id}\n"))
        .map_err(|e| internal(&id_path.display().to_string(), &e))?;
    Ok((id, secret, founding))
}

fn write_key_file(path: &Path, key: &KeyFile) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = serde_json::to_string_pretty(key).map_err(std::io::Error::other)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

impl Node {
    /// Serves a raft RPC from the peer at `from` (as signed in the request).
    pub async fn raft_rpc(
        &self,
        kind: &str,
        from: Option<&str>,
        body: &[u8],
    ) -> Result<Vec<u8>, registry::RaftRpcError> {
        self.inner.registry.admit_peer(from).await?;
        if kind != "propose" {
            return self.inner.registry.handle_rpc(kind, body).await;
        }
        let command = match serde_json::from_slice(body)? {
            Command::SubmitJobs {
                now_ms,
                jobs,
                place,
            } if place.is_empty() => self.placed_submit(now_ms, jobs).await,
            other => other,
        };
        self.inner.registry.serve_propose(command).await
    }
}

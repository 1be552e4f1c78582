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

mod metrics;
mod running;
mod scheduling;

use model::{
    ApiError, ApiKey, Command, ErrorCode, FunctionSpec, Job, JobId, JobSpec, KeyId, NodeId, NodeInfo, Response,
    Scope, State, SubmitResult,
};
use rand::RngCore;
use registry::{Registry, RegistryError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use storage::{StorageError, Store};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use storage::Store as ObjectStore;

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
}

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
}

/// Milliseconds since the epoch: the one clock the node stamps commands with.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn unavailable(e: RegistryError) -> ApiError {
    match e {
        RegistryError::NotLeader { leader } => {
            ApiError::new(ErrorCode::Unavailable, format!("not the leader; the leader is {leader:?}"))
        }
        RegistryError::Storage(m) if m.contains("No space left") => ApiError::new(ErrorCode::StorageFull, m),
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

impl Node {
    /// Starts a node on `config.data_dir`; see the module docs for the steps.
    pub async fn start(config: NodeConfig) -> Result<Node, ApiError> {
        let internal = |what: &str, e: &dyn std::fmt::Display| ApiError::new(ErrorCode::Internal, format!("{what}: {e}"));
        std::fs::create_dir_all(&config.data_dir).map_err(|e| internal("data dir", &e))?;
        let id = node_id(&config.data_dir).map_err(|e| internal("node id", &e))?;
        let registry = Registry::open(&config.data_dir.join("raft"), id, &config.advertise_addr)
            .await
            .map_err(unavailable)?;
        registry.wait_for_leader(LEADER_WAIT).await.map_err(unavailable)?;
        let store = match &config.storage_url {
            Some(url) => Store::open(url),
            None => Store::local(&config.data_dir.join("objects")),
        }
        .map_err(storage_error)?;
        let node = Node {
            inner: Arc::new(Inner {
                config,
                registry,
                store,
                executor: executor::Executor::new(),
                metrics: metrics::Metrics::new(),
                shutdown: CancellationToken::new(),
                tasks: tokio::sync::Mutex::new(JoinSet::new()),
            }),
        };
        node.bootstrap().await?;
        node.spawn_tasks().await;
        Ok(node)
    }

    async fn bootstrap(&self) -> Result<(), ApiError> {
        let cfg = &self.inner.config;
        let missing: Vec<String> = self.read(|s| {
            cfg.builtin_functions.iter().filter(|f| s.function(f).is_none()).cloned().collect()
        });
        for name in missing {
            self.propose(Command::DeployFunction { spec: FunctionSpec::builtin(&name) }).await?;
        }
        let key_path = cfg.data_dir.join(ADMIN_KEY_FILE);
        if !key_path.exists() {
            let (id, secret) = self.create_key(vec![Scope::Admin]).await?;
            write_key_file(&key_path, &KeyFile { id: id.0, secret })
                .map_err(|e| ApiError::new(ErrorCode::Internal, format!("{}: {e}", key_path.display())))?;
        }
        let id = self.id();
        let info = NodeInfo { id, addr: cfg.advertise_addr.clone(), slots: cfg.slots };
        self.propose(Command::RegisterNode { node: info }).await?;
        if self.read(|s| s.running_count(id)) > 0 {
            let code = "node_restarted".to_string();
            let response = self.propose(Command::AbandonAttempts { now_ms: now_ms(), node: id, code }).await?;
            tracing::info!(?response, "failed over attempts left running by the previous process");
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
        self.raft_figures().leader.is_some() && !self.inner.shutdown.is_cancelled()
    }

    async fn propose(&self, command: Command) -> Result<Response, ApiError> {
        self.inner.registry.propose(command).await.map_err(unavailable)
    }

    pub async fn deploy(&self, spec: FunctionSpec) -> Result<u32, ApiError> {
        if spec.kind == model::FunctionKind::Builtin && !self.inner.config.builtin_functions.contains(&spec.name) {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!("{:?} is not a built-in function; set kind = \"command\" and a command", spec.name),
            ));
        }
        match rejected(self.propose(Command::DeployFunction { spec }).await?)? {
            Response::Deployed { version } => Ok(version),
            other => Err(unexpected(other)),
        }
    }

    /// Submits jobs in one log entry; each gets its own result.
    pub async fn submit(&self, jobs: Vec<JobSpec>) -> Result<Vec<SubmitResult>, ApiError> {
        match self.propose(Command::SubmitJobs { now_ms: now_ms(), jobs }).await? {
            Response::Submitted(results) => Ok(results),
            other => Err(unexpected(other)),
        }
    }

    pub fn job(&self, id: JobId) -> Result<Job, ApiError> {
        self.read(|s| s.job(id).cloned()).ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no job {id}")))
    }

    pub async fn cancel(&self, id: JobId) -> Result<Job, ApiError> {
        rejected(self.propose(Command::CancelJob { now_ms: now_ms(), job: id }).await?)?;
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
        let key = ApiKey { id: id.clone(), secret: secret.clone(), scopes, created_at_ms: now_ms(), revoked: false };
        rejected(self.propose(Command::CreateKey { key }).await?)?;
        Ok((id, secret))
    }

    pub async fn revoke_key(&self, id: KeyId) -> Result<(), ApiError> {
        rejected(self.propose(Command::RevokeKey { id }).await?).map(|_| ())
    }

    /// The attempt's captured stderr (empty if it logged nothing).
    pub async fn attempt_log(&self, job: JobId, attempt: model::AttemptId) -> Result<bytes::Bytes, ApiError> {
        let j = self.job(job)?;
        let a = j.attempts.iter().find(|a| a.id == attempt).ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("job {job} has no attempt {attempt}"))
        })?;
        if a.log_bytes == 0 {
            return Ok(bytes::Bytes::new());
        }
        let limit = executor::LOG_BYTES_MAX as u64 + 1024;
        self.inner.store.get_bytes(&running::log_key(job, attempt), limit).await.map_err(storage_error)
    }

    /// This node's metrics, in OpenMetrics text, or the classic Prometheus text format.
    pub fn metrics_text(&self, openmetrics: bool) -> String {
        let raft = self.raft_figures();
        let warm = self.inner.executor.warm_workers();
        let text = self.read(|s| self.inner.metrics.render(s, &raft, &warm));
        if openmetrics {
            text
        } else {
            metrics::to_prometheus_text(&text)
        }
    }
}

fn unexpected(response: Response) -> ApiError {
    ApiError::new(ErrorCode::Internal, format!("unexpected registry response {response:?}"))
}

/// This node's id: read from `DATA_DIR/node.id`, or 1 for a pristine node that founds a
/// cluster. Ids are never reused: the cluster issues new ones to joining nodes.
fn node_id(data_dir: &Path) -> std::io::Result<NodeId> {
    let path = data_dir.join("node.id");
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|e| std::io::Error::other(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, "1\n")?;
            Ok(1)
        }
        Err(e) => Err(e),
    }
}

fn write_key_file(path: &Path, key: &KeyFile) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = serde_json::to_string_pretty(key).map_err(std::io::Error::other)?;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

impl Node {
    /// Serves a raft RPC from a peer.
    pub async fn raft_rpc(&self, kind: &str, body: &[u8]) -> Result<Vec<u8>, registry::RaftRpcError> {
        self.inner.registry.handle_rpc(kind, body).await
    }
}

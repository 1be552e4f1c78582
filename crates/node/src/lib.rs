//! A chorus node: wires the registry, the scheduler loop, the executor and storage, and owns
//! every background task. The API crate calls the methods here; nothing here knows HTTP.

mod at_rest;
mod catalogue;
mod dead_letter;
mod emit;
mod hooks;
mod jobs;
mod liveness;
mod membership;
mod metrics;
mod objects;
#[cfg(feature = "kafka")]
mod partitions;
mod peer_rpc;
mod requests;
mod retention;
mod running;
mod runs;
mod scheduling;
mod sealing;
mod sources;
mod startup;
pub mod tls;
mod triggering;
mod webhook;

use model::{ApiError, Command, ErrorCode, NodeId, Response, State};
use registry::{Registry, RegistryError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use storage::{StorageError, Store};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use catalogue::{Sample, Seen as SourceSeen, JSON_OBJECT_BYTES_MAX, SAMPLES_MAX, SAMPLE_EVERY};
pub use hooks::HEADER_HOOK_ID;
pub use jobs::NewKey;
pub use membership::Joined;
pub use objects::{ObjectStream, OBJECT_COPY_BYTES_MAX, PEER_OBJECTS_PATH};
pub use registry::{
    Direction, FaultAction, FaultRule, RaftRpcError, StateDigest, CLUSTER_KEY_ID,
    FAULT_DELAY_MS_MAX, RAFT_BODY_BYTES_MAX, SNAPSHOT_LOGS_DEFAULT, STATE_DIGESTS_MAX,
};
pub use requests::{serve as serve_signed, SignedRequest};
pub use runs::{BulkControl, BulkOutcome, RunView, BULK_RUNS_MAX};
pub use sources::{PartitionView, SourceStatus};
pub use storage::Store as ObjectStore;
pub use tls::{Issued, TlsSetup};
pub use triggering::{Ingested, TriggeredJob, INGEST_JOBS_MAX};

/// Raft roles, for the API's node listing.
pub mod registry_role {
    pub use registry::Role;
}

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
    /// Log entries between snapshots at least ([`SNAPSHOT_LOGS_DEFAULT`] unless testing).
    pub snapshot_logs: u64,
    /// How long a node that joins may take to catch up and register before the leader
    /// removes it again ([`JOIN_CATCH_UP_DEFAULT`] unless testing).
    pub join_catch_up: Duration,
    /// TLS for the API and between nodes (the cluster CA unless the operator brings their
    /// own certificates or asks for plain HTTP).
    pub tls: TlsSetup,
}

/// How long a joining node has to catch up and register by default.
pub const JOIN_CATCH_UP_DEFAULT: Duration = Duration::from_secs(300);

/// Log indexes between two state digests (fault injection only; see [`Node::state_digests`]).
/// Each digest encodes the whole state, so not every entry: at a few dozen entries a second
/// this is one digest every second or two.
pub const STATE_DIGEST_EVERY_ENTRIES: u64 = 64;

/// Where and how a new node asks to join.
#[derive(Clone, Debug)]
pub struct JoinTarget {
    /// `host:port` of any member.
    pub addr: String,
    /// An admin key of the cluster.
    pub key_id: String,
    pub secret: String,
    /// Whom to trust when joining: the CA pinned by `--ca-pin`, or `--ca FILE` (plain HTTP
    /// only when asked for). Nothing secret is sent to a member this does not trust.
    pub trust: client::Transport,
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
    /// Seals and opens API keys' signing keys (see [`sealing`]).
    kek: sealing::Kek,
    /// Signed calls to peers' object routes (see [`objects`]), over mutual TLS unless the
    /// node serves plain HTTP.
    peer_http: reqwest::Client,
    /// `https`, or `http` when asked for.
    peer_scheme: &'static str,
    /// This node's certificates, unless it serves plain HTTP.
    certs: Option<tls::Certs>,
    /// Set once start-up has finished (the tasks run).
    running: std::sync::atomic::AtomicBool,
    /// Smoothed run time of this node's attempts, in µs (sizes its prefetch).
    run_time_ewma_us: std::sync::atomic::AtomicU64,
    key_uses: requests::KeyUses,
    /// How the sources of bucket and Kafka triggers fare, while this node reads them.
    sources: sources::Statuses,
    /// The catalogue's figures this node counts and samples.
    catalogue: catalogue::Catalogue,
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
        StorageError::Conflict(..) => ErrorCode::Conflict,
        StorageError::TooLarge { .. } => ErrorCode::TooLarge,
        StorageError::Full(_) => ErrorCode::StorageFull,
        StorageError::Io { .. } => ErrorCode::Internal,
    };
    if matches!(code, ErrorCode::StorageFull | ErrorCode::Internal) {
        // The details name server paths: they go to the log, not to the client.
        tracing::warn!(error = %e, "storage failed");
    }
    ApiError::new(code, e.public_message())
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
    /// Changes cluster config through the log; every node reads it live. The key and value
    /// are checked by [`model::Setting::parse`] before anything is proposed.
    /// Setting the alert webhook answers the secret its posts are signed with.
    pub async fn set_config(&self, key: String, value: String) -> Result<Option<String>, ApiError> {
        let setting = model::Setting::parse(&key, &value)?;
        let key = setting.key().to_string();
        if let model::Setting::AlertsWebhook(Some(url)) = setting {
            let secret = webhook::secret(self, url.as_str());
            // A new webhook hears of what happens from now on, not of the whole history.
            let from_now = self.read(|s| s.last_event_seq());
            let set = Command::Batch(vec![
                Command::SetConfig { key, value },
                Command::EventsDelivered { seq: from_now },
            ]);
            return match self.propose(set).await? {
                Response::Batch(answers) => answers
                    .into_iter()
                    .try_for_each(|answer| rejected(answer).map(|_| ()))
                    .map(|()| Some(secret)),
                other => Err(unexpected(other)),
            };
        }
        rejected(self.propose(Command::SetConfig { key, value }).await?).map(|_| None)
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

    pub fn id(&self) -> NodeId {
        self.inner.registry.id()
    }

    /// How the API serves TLS (see [`tls::TlsSetup`]); `None`: plain HTTP, as asked for.
    pub fn server_tls(&self) -> Result<Option<Arc<rustls::ServerConfig>>, ApiError> {
        self.inner
            .certs
            .as_ref()
            .map(tls::server_config)
            .transpose()
    }

    /// The cluster CA's fingerprint (`sha256:<hex>`), which a joining node pins; `None` when
    /// the node serves plain HTTP.
    pub fn ca_fingerprint(&self) -> Result<Option<String>, ApiError> {
        self.inner
            .certs
            .as_ref()
            .map(tls::ca_fingerprint)
            .transpose()
    }

    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Waits for the next pass of a queue the leader drains (URL hooks, dead letters): an
    /// entry applied, or `tick` passed. `None` once the node stops; else whether it leads.
    pub(crate) async fn next_drain_pass(
        &self,
        applied: &mut tokio::sync::watch::Receiver<u64>,
        tick: std::time::Duration,
    ) -> Option<bool> {
        tokio::select! {
            () = self.inner.shutdown.cancelled() => return None,
            changed = applied.changed() => changed.ok()?,
            () = tokio::time::sleep(tick) => {}
        }
        Some(self.inner.registry.is_leader())
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
        let command = requests::wrap(command);
        let signed = matches!(command, Command::Signed { .. });
        match tokio::time::timeout(PROPOSE_TIMEOUT, self.inner.registry.propose(command)).await {
            // A signed request refused as a whole (a replayed nonce) is an error to any caller.
            Ok(Ok(Response::Rejected(e))) if signed => Err(e),
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

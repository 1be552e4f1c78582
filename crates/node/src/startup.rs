//! Start-up and shutdown of a node: its identity, opening the registry, the bootstrap
//! proposals and the tasks it owns.
//!
//! Start-up, step by step:
//! 1. open the registry (a pristine node makes itself a one-member cluster) and wait for a
//!    leader, as long as [`START_WAIT`], retrying every step below that fails for want of a
//!    leader or a quorum (a node restarted right after the leader's death must not exit);
//! 2. on the leader: deploy missing built-in functions, create the admin key on first start
//!    (written to `DATA_DIR/admin.key` for the CLI on this machine);
//! 3. register this node with its slots (which makes it `up` again, or `draining` if an
//!    operator drained it), then fail over any attempt the registry still shows running
//!    here (they died with the previous process; code `node_restarted`, retried by policy);
//! 4. start the tasks: scheduling and the cron triggers (act while leader), running (this node's attempts),
//!    reporting (batches attempt results into the log) and the idle-worker reaper.
//!
//! The graceful stop ([`Node::drain_and_stop`]) marks the node `stopping`, lets its attempts
//! finish within a grace period, fails over the rest, then shuts down with every wait
//! bounded.

use crate::{
    at_rest, internal, liveness, metrics, now_ms, requests, retention, running, runs, scheduling,
    sources, storage_error, tls, triggering, unavailable, webhook, Inner, JoinTarget, KeyFile,
    Node, NodeConfig, TlsSetup, ADMIN_KEY_FILE, CLUSTER_KEY_FILE, JOIN_WAIT,
};
use model::{ApiError, Command, ErrorCode, FunctionSpec, NodeId, Scope};
use rand::RngCore;
use registry::Registry;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use storage::Store;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Longest start-up waits for a leader and a quorum (generous: a cluster may take a while
/// to come back, and a node that gives up is only restarted by its supervisor).
pub(crate) const START_WAIT: Duration = Duration::from_secs(600);
/// How often a waiting start-up says so in the log.
const START_LOG_INTERVAL: Duration = Duration::from_secs(5);
/// Pause before start-up tries a failed step again.
const START_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How long a graceful stop gives the results of its last attempts to be recorded once no
/// worker runs any.
const DRAIN_SETTLE: Duration = Duration::from_secs(2);
/// How often a graceful stop looks at its workers.
const DRAIN_TICK: Duration = Duration::from_millis(100);
/// Longest the shutdown waits for the node's tasks, and for its idle workers.
const STOP_WAIT: Duration = Duration::from_secs(5);

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
        at_rest::private_dir(&config.data_dir).map_err(|e| internal("data dir", &e))?;
        client::tls::install_default_provider();
        let (id, secret, founding, certs) = identity(&config).await?;
        let transport = match &certs {
            Some(certs) => tls::peer_transport(certs)?,
            None => client::Transport::InsecureHttp,
        };
        let peer_scheme = transport.default_scheme();
        let link = registry::PeerLink {
            http: transport.configure(reqwest::Client::builder()),
            scheme: peer_scheme,
        };
        let registry = Registry::open(
            &config.data_dir.join("raft"),
            id,
            &config.advertise_addr,
            founding,
            &secret,
            config.snapshot_logs,
            link,
        )
        .await
        .map_err(unavailable)?;
        if config.fault_injection {
            registry.record_state_digests(crate::STATE_DIGEST_EVERY_ENTRIES);
        }
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
                kek: crate::sealing::Kek::of_cluster(&secret)
                    .map_err(|e| internal(CLUSTER_KEY_FILE, &e))?,
                cluster_secret: secret,
                peer_http: transport
                    .configure(
                        reqwest::Client::builder()
                            .connect_timeout(crate::objects::PEER_CONNECT_TIMEOUT),
                    )
                    .build()
                    .map_err(|e| internal("HTTP client", &e))?,
                peer_scheme,
                certs,
                running: std::sync::atomic::AtomicBool::new(false),
                run_time_ewma_us: std::sync::atomic::AtomicU64::new(10_000),
                key_uses: Default::default(),
                sources: Default::default(),
                catalogue: Default::default(),
            }),
        })
    }

    /// Phase two: wait for a leader and catch up, bootstrap, start the tasks.
    ///
    /// A node may start while there is no leader (it restarts right after the leader was
    /// killed, or the cluster is still electing): every step that fails for want of a leader
    /// or a quorum (`unavailable`) is tried again until [`START_WAIT`] has passed, and the log
    /// says every [`START_LOG_INTERVAL`] what the node is waiting for. Other errors end the
    /// start at once, as does [`Node::shutdown`].
    pub async fn run(&self) -> Result<(), ApiError> {
        let started = tokio::time::Instant::now();
        let deadline = started + START_WAIT;
        let mut next_log = started + START_LOG_INTERVAL;
        loop {
            let error = match self.catch_up_and_bootstrap().await {
                Ok(()) => break,
                Err(e) => e,
            };
            let now = tokio::time::Instant::now();
            if error.code != ErrorCode::Unavailable || now >= deadline {
                return Err(ApiError::new(
                    error.code,
                    format!(
                        "start-up gave up after {} s: {}",
                        (now - started).as_secs(),
                        error.message
                    ),
                ));
            }
            if now >= next_log {
                tracing::info!(
                    waited_s = (now - started).as_secs(),
                    limit_s = START_WAIT.as_secs(),
                    error = %error.message,
                    "waiting for a leader and a quorum to start"
                );
                next_log = now + START_LOG_INTERVAL;
            }
            tokio::select! {
                () = tokio::time::sleep(START_RETRY_PAUSE) => {}
                () = self.inner.shutdown.cancelled() => {
                    return Err(ApiError::new(ErrorCode::Unavailable, "stopped while starting"));
                }
            }
        }
        self.spawn_tasks().await;
        self.inner
            .running
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// One try of start-up's registry steps; each is safe to repeat.
    async fn catch_up_and_bootstrap(&self) -> Result<(), ApiError> {
        self.inner
            .registry
            .wait_for_leader(START_LOG_INTERVAL)
            .await
            .map_err(unavailable)?;
        self.inner.registry.sync().await.map_err(unavailable)?;
        self.bootstrap().await
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
                    let key = self.create_key(vec![Scope::Admin], None).await?;
                    KeyFile {
                        id: key.id.0,
                        secret: key.secret,
                    }
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
            let code = ErrorCode::NodeRestarted.as_str().to_string();
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
        tasks.spawn(crate::hooks::deliver(self.clone()));
        tasks.spawn(crate::emit::deliver(self.clone()));
        tasks.spawn(runs::drive(self.clone()));
        tasks.spawn(triggering::fire(self.clone()));
        tasks.spawn(crate::objects::repair(self.clone()));
        tasks.spawn(requests::flush_key_uses(self.clone()));
        tasks.spawn(sources::watch(self.clone()));
        #[cfg(feature = "kafka")]
        tasks.spawn(crate::partitions::place(self.clone()));
        tasks.spawn(crate::catalogue::sample(self.clone()));
        tasks.spawn(crate::dead_letter::deliver(self.clone()));
    }

    /// The graceful stop (SIGTERM, SIGINT), bounded whatever the peers do:
    /// 1. mark this node `stopping` in the log (at most `PROPOSE_TIMEOUT`: without a quorum
    ///    nothing can be recorded, and nothing new can be placed here either); the scheduler
    ///    gives it no new work;
    /// 2. wait until no attempt runs here, or until `grace` (counted from the call) is over;
    /// 3. fail over what still runs (`node_lost`, so other nodes retry it at once);
    /// 4. [`Node::shutdown`], whose every wait is bounded.
    ///
    /// Queued jobs stay in the registry for other nodes or the next start, and the next start
    /// brings the node back `up` (unless an operator drained it).
    pub async fn drain_and_stop(&self, grace: Duration) {
        let me = self.id();
        let deadline = tokio::time::Instant::now() + grace;
        let stopping = Command::SetNodeStatus {
            node: me,
            status: model::NodeStatus::Stopping,
        };
        if let Err(e) = self.propose(stopping).await {
            tracing::warn!(error = %e, "could not mark this node stopping; draining anyway");
        }
        // Done when the log shows nothing running here, or when no worker here runs an
        // attempt any more and their results had [`DRAIN_SETTLE`] to be recorded (without a
        // quorum they never are: waiting out the grace period would help nobody).
        let mut applied = self.inner.registry.applied();
        let mut idle_since: Option<tokio::time::Instant> = None;
        while self.read(|s| s.running_count(me)) > 0 {
            let now = tokio::time::Instant::now();
            let running = self
                .inner
                .executor
                .counters()
                .running
                .load(std::sync::atomic::Ordering::Acquire);
            if running > 0 {
                idle_since = None;
            } else if now >= *idle_since.get_or_insert(now) + DRAIN_SETTLE {
                break;
            }
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { break },
                () = tokio::time::sleep(DRAIN_TICK) => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let left = self.read(|s| s.running_count(me));
        if left > 0 {
            tracing::warn!(
                attempts = left,
                grace_s = grace.as_secs(),
                "the grace period is over with attempts still running: failing them over"
            );
            let abandon = Command::AbandonAttempts {
                now_ms: now_ms(),
                node: me,
                code: "node_lost".into(),
            };
            if let Err(e) = self.propose(abandon).await {
                tracing::warn!(error = %e, "could not fail the attempts over; the leader will once this node is silent");
            }
        }
        self.shutdown().await;
    }

    /// Stops the tasks, the idle workers and raft; each wait is bounded ([`STOP_WAIT`], and
    /// raft's own), so a stuck task or peer cannot keep the process alive.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        {
            let mut tasks = self.inner.tasks.lock().await;
            let joined = async { while tasks.join_next().await.is_some() {} };
            if tokio::time::timeout(STOP_WAIT, joined).await.is_err() {
                tracing::warn!(
                    "tasks did not stop within {} s; aborting them",
                    STOP_WAIT.as_secs()
                );
                tasks.abort_all();
            }
        }
        if tokio::time::timeout(STOP_WAIT, self.inner.executor.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("idle workers did not stop within {} s", STOP_WAIT.as_secs());
        }
        self.inner.registry.shutdown().await;
    }
}

/// This node's id, the cluster secret, whether a pristine registry founds a cluster, and its
/// TLS certificates (none when it serves plain HTTP).
type Identity = (NodeId, String, registry::Founding, Option<tls::Certs>);

/// This node's identity (see [`Identity`]).
///
/// `DATA_DIR/node.id` is written last, so it marks a complete identity: a node that has it
/// restarts as the member it was. Without it, a node founds a cluster as node 1 (and makes
/// the cluster CA), or joins one and gets a fresh id and its certificate from a member (ids
/// are never reused).
async fn identity(config: &NodeConfig) -> Result<Identity, ApiError> {
    let dir = &config.data_dir;
    let id_path = dir.join("node.id");
    let secret_path = dir.join(CLUSTER_KEY_FILE);
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|t| t.trim().to_string())
            .map_err(|e| internal(&p.display().to_string(), &e))
    };
    if id_path.exists() {
        for file in [&id_path, &secret_path, &dir.join(ADMIN_KEY_FILE)] {
            at_rest::tighten(file).map_err(|e| internal(&file.display().to_string(), &e))?;
        }
        let id = read(&id_path)?
            .parse()
            .map_err(|e| internal(&id_path.display().to_string(), &e))?;
        let certs = certs_of_member(config)?;
        return Ok((id, read(&secret_path)?, registry::Founding::Join, certs));
    }
    let (id, secret, founding, certs) = match &config.join {
        None => {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            let certs = match &config.tls {
                TlsSetup::ClusterCa => Some(tls::found(dir, &config.advertise_addr)?),
                TlsSetup::Own { .. } | TlsSetup::InsecureHttp => certs_of_member(config)?,
            };
            (1, hex::encode(bytes), registry::Founding::Found, certs)
        }
        Some(join) => {
            let (id, secret, certs) = join_cluster(config, join).await?;
            (id, secret, registry::Founding::Join, certs)
        }
    };
    at_rest::write_file(&secret_path, format!("{secret}\n").as_bytes())
        .map_err(|e| internal(&secret_path.display().to_string(), &e))?;
    at_rest::write_file(&id_path, format!("{id}\n").as_bytes())
        .map_err(|e| internal(&id_path.display().to_string(), &e))?;
    Ok((id, secret, founding, certs))
}

/// The certificates of a node that has them already: the operator's own, or those in the
/// data dir.
fn certs_of_member(config: &NodeConfig) -> Result<Option<tls::Certs>, ApiError> {
    match &config.tls {
        TlsSetup::InsecureHttp => Ok(None),
        TlsSetup::Own { cert, key, ca } => tls::own(cert, key, ca).map(Some),
        TlsSetup::ClusterCa => tls::load(&config.data_dir)?.map(Some).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Internal,
                format!(
                    "{} has no TLS certificate ({}): a version without TLS made it; start it with --insecure-http, or with --tls-cert, --tls-key and --ca",
                    config.data_dir.display(),
                    tls::NODE_CERT_FILE
                ),
            )
        }),
    }
}

/// Asks a member to admit this node, over TLS that trusts only what `join.trust` says: a
/// member it does not trust hears nothing (no key, no request). With the cluster CA, the
/// node sends a certificate request and keeps the certificate it gets back.
async fn join_cluster(
    config: &NodeConfig,
    join: &JoinTarget,
) -> Result<(NodeId, String, Option<tls::Certs>), ApiError> {
    let request = match &config.tls {
        TlsSetup::ClusterCa => Some(tls::request(&config.advertise_addr)?),
        TlsSetup::Own { .. } | TlsSetup::InsecureHttp => None,
    };
    let credentials = client::Credentials {
        key_id: join.key_id.clone(),
        secret: join.secret.clone(),
    };
    let member = client::Client::with_transport(&join.addr, credentials, &join.trust);
    let csr = request.as_ref().map(|(_, csr)| csr.as_str());
    let deadline = tokio::time::Instant::now() + JOIN_WAIT;
    let failed = |e: &client::ClientError| {
        ApiError::new(
            e.code()
                .filter(|c| *c == ErrorCode::UntrustedServer)
                .unwrap_or(ErrorCode::Unavailable),
            format!("joining through {}: {e}", join.addr),
        )
    };
    let answer = loop {
        match member
            .join(&config.advertise_addr, config.slots, &config.labels, csr)
            .await
        {
            Ok(answer) => break answer,
            // Not trusted: nothing was sent, and trying again would not change the chain.
            Err(e) if e.code() == Some(ErrorCode::UntrustedServer) => return Err(failed(&e)),
            Err(e)
                if e.code() != Some(ErrorCode::Unavailable)
                    && !matches!(e, client::ClientError::Http(_)) =>
            {
                return Err(failed(&e));
            }
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(failed(&e)),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let certs = match request {
        Some((key_pem, _)) => {
            let (Some(chain_pem), Some(ca_pem), Some(ca_key_pem)) =
                (answer.certificate, answer.ca_certificate, answer.ca_key)
            else {
                return Err(ApiError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "{} admitted this node without a certificate: its cluster does not use a cluster CA (join with --tls-cert, --tls-key and --ca, or --insecure-http as it does)",
                        join.addr
                    ),
                ));
            };
            let certs = tls::Certs {
                ca_pem,
                chain_pem,
                key_pem,
                ca_key_pem: Some(ca_key_pem),
            };
            tls::save(&config.data_dir, &certs)?;
            Some(certs)
        }
        None => certs_of_member(config)?,
    };
    Ok((answer.id, answer.cluster_secret, certs))
}

fn write_key_file(path: &Path, key: &KeyFile) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(key).map_err(std::io::Error::other)?;
    at_rest::write_file(path, text.as_bytes())
}

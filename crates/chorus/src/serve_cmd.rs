//! `chorus serve`: start a node and its API, and stop both cleanly on SIGINT or SIGTERM.

use anyhow::Context;
use node::{Node, NodeConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Where the registry, objects and the admin key live.
    #[arg(long, env = "CHORUS_DATA_DIR", default_value = "./chorus-data")]
    data_dir: PathBuf,
    /// Address the API listens on.
    #[arg(long, env = "CHORUS_LISTEN", default_value = "127.0.0.1:7700")]
    listen: String,
    /// Attempts this node runs at once (default: the number of CPUs).
    #[arg(long)]
    slots: Option<u32>,
    /// Object storage: s3://bucket/prefix (AWS_* variables for endpoint and credentials) or
    /// file:///dir. Default: DATA_DIR/objects.
    #[arg(long, env = "CHORUS_STORAGE")]
    storage: Option<String>,
    /// Join the cluster that the node at this host:port belongs to (credentials from
    /// CHORUS_KEY_ID / CHORUS_KEY_SECRET: an admin key of that cluster).
    #[arg(long)]
    join: Option<String>,
    /// With --join: the cluster CA's fingerprint (`sha256:<hex>`, printed by the first node
    /// at start-up). The join is refused, before anything secret is sent, unless the member's
    /// certificate chain holds that CA.
    #[arg(long, requires = "join", env = "CHORUS_CA_PIN")]
    ca_pin: Option<String>,
    /// A CA certificate file (PEM): with --join, the CA to trust instead of --ca-pin; with
    /// --tls-cert and --tls-key, the CA of every member's certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// This node's own certificate chain (PEM) instead of one from the cluster CA; needs
    /// --tls-key and --ca.
    #[arg(long, requires_all = ["tls_key", "ca"])]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// No TLS: serve the API and talk to peers over plain HTTP, on a loopback address only
    /// (see --insecure-http-any-address). Every node of the cluster must be started so.
    #[arg(long, conflicts_with_all = ["tls_cert", "ca_pin", "ca"])]
    insecure_http: bool,
    /// With --insecure-http: allow a non-loopback address, where anyone on the network can
    /// read requests, raft traffic and the cluster secret handed to joining nodes.
    #[arg(long, requires = "insecure_http")]
    insecure_http_any_address: bool,
    /// A placement label such as pool=burst (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// The grace period of SIGTERM and SIGINT: how long running attempts may take to finish
    /// before they are failed over to other nodes (as node_lost) and the process exits.
    #[arg(long, default_value_t = 60)]
    drain_timeout_s: u64,
    /// Allow `PUT /v1/faults` (admin keys only): cut this node off from chosen peers, for
    /// partition tests and drills. Off unless asked for.
    #[arg(long)]
    fault_injection: bool,
    /// Log entries between snapshots of the registry, at least (see `registry::pace`).
    #[arg(long, default_value_t = node::SNAPSHOT_LOGS_DEFAULT, hide = true)]
    snapshot_logs: u64,
    /// How long a node that joins may take to catch up before this node, as leader, removes
    /// it again.
    #[arg(long, default_value_t = node::JOIN_CATCH_UP_DEFAULT.as_secs(), hide = true)]
    join_catch_up_s: u64,
}

/// Longest the API server takes to close its connections once the node has stopped.
const API_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHORUS_LOG")
                .unwrap_or_else(|_| "info,openraft=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let addr = local.to_string();
    let tls = tls_setup(&args, local.ip().is_loopback())?;
    let slots = args
        .slots
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get() as u32));
    let join = match args.join.clone() {
        Some(addr) => {
            let key_id = std::env::var("CHORUS_KEY_ID")
                .context("--join needs CHORUS_KEY_ID (an admin key of the cluster)")?;
            let secret =
                std::env::var("CHORUS_KEY_SECRET").context("--join needs CHORUS_KEY_SECRET")?;
            Some(node::JoinTarget {
                addr,
                key_id,
                secret,
                trust: join_trust(&args)?,
            })
        }
        None => None,
    };
    let config = NodeConfig {
        data_dir: args.data_dir.clone(),
        advertise_addr: addr.clone(),
        slots,
        storage_url: args.storage,
        worker_program: std::env::current_exe().context("cannot find my own executable")?,
        builtin_functions: worker::builtin_functions()
            .into_iter()
            .map(String::from)
            .collect(),
        labels: args.labels,
        join,
        fault_injection: args.fault_injection,
        snapshot_logs: args.snapshot_logs,
        join_catch_up: std::time::Duration::from_secs(args.join_catch_up_s),
        tls,
    };
    // Open first and serve the API before running: a joining node must answer its new
    // peers' raft traffic before it can hear from a leader.
    let node = Node::open(config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    match node.ca_fingerprint().map_err(|e| anyhow::anyhow!("{e}"))? {
        Some(pin) => tracing::info!(
            ca_pin = %pin,
            "serving HTTPS; other nodes join with --join {addr} --ca-pin {pin}"
        ),
        None => tracing::warn!(%addr, "serving plain HTTP (--insecure-http): no TLS"),
    }
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(api::serve(node.clone(), listener, shutdown.clone()));
    // Start-up may wait long for a leader; a signal meanwhile ends it.
    let started = tokio::select! {
        started = node.run() => started,
        () = wait_for_signal() => Err(model::ApiError::new(
            model::ErrorCode::Unavailable,
            "stopped by a signal while starting",
        )),
    };
    if let Err(e) = started {
        shutdown.cancel();
        node.shutdown().await;
        let _ = tokio::time::timeout(API_STOP_WAIT, server).await;
        anyhow::bail!("{e}");
    }
    tracing::info!(
        node = node.id(),
        %addr,
        slots,
        admin_key = %args.data_dir.join(node::ADMIN_KEY_FILE).display(),
        "chorus is serving"
    );
    wait_for_signal().await;
    tracing::info!("draining, then shutting down");
    node.drain_and_stop(std::time::Duration::from_secs(args.drain_timeout_s))
        .await;
    shutdown.cancel();
    match tokio::time::timeout(API_STOP_WAIT, server).await {
        Ok(served) => served
            .context("the API server task failed")?
            .context("the API server failed")?,
        Err(_) => tracing::warn!(
            "the API server did not close its connections within {} s; exiting anyway",
            API_STOP_WAIT.as_secs()
        ),
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// TLS as the arguments ask: the cluster CA by default, the operator's own files, or plain
/// HTTP, which only a loopback address gets unless forced.
fn tls_setup(args: &ServeArgs, loopback: bool) -> anyhow::Result<node::TlsSetup> {
    if args.insecure_http {
        if !loopback && !args.insecure_http_any_address {
            anyhow::bail!(
                "--insecure-http serves plain HTTP on loopback addresses only, not {}: add --insecure-http-any-address to force it (anyone on the network then reads every request and the cluster secret)",
                args.listen
            );
        }
        if !loopback {
            tracing::warn!(
                listen = %args.listen,
                "PLAIN HTTP ON A NETWORK ADDRESS (--insecure-http-any-address): requests, API keys' signatures, raft traffic and the cluster secret handed to joining nodes travel in the clear"
            );
        }
        return Ok(node::TlsSetup::InsecureHttp);
    }
    Ok(match (&args.tls_cert, &args.tls_key, &args.ca) {
        (Some(cert), Some(key), Some(ca)) => node::TlsSetup::Own {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
        },
        _ => node::TlsSetup::ClusterCa,
    })
}

/// Whom a joining node trusts: the pinned CA, the CA file, or nobody over plain HTTP.
fn join_trust(args: &ServeArgs) -> anyhow::Result<client::Transport> {
    if args.insecure_http {
        return Ok(client::Transport::InsecureHttp);
    }
    if let Some(pin) = &args.ca_pin {
        return Ok(client::Transport::pinned(pin)?);
    }
    match &args.ca {
        Some(ca) => {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            Ok(client::Transport::trusting(&pem, None)?)
        }
        None => anyhow::bail!(
            "--join needs --ca-pin sha256:... (the first node prints it at start-up) or --ca FILE, so that nothing secret goes to a server that is not of the cluster"
        ),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

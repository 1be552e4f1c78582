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
    /// Log entries between snapshots of the registry.
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
    let addr = listener.local_addr()?.to_string();
    let slots = args
        .slots
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get() as u32));
    let join = match args.join {
        Some(addr) => {
            let key_id = std::env::var("CHORUS_KEY_ID")
                .context("--join needs CHORUS_KEY_ID (an admin key of the cluster)")?;
            let secret =
                std::env::var("CHORUS_KEY_SECRET").context("--join needs CHORUS_KEY_SECRET")?;
            Some(node::JoinTarget {
                addr,
                key_id,
                secret,
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
    };
    // Open first and serve the API before running: a joining node must answer its new
    // peers' raft traffic before it can hear from a leader.
    let node = Node::open(config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
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

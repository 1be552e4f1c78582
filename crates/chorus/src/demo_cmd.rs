//! `chorus demo`: what chorus is for, in a minute. Starts an embedded one-node cluster,
//! synthesises songs with a known verse/chorus arrangement (or takes `--dir`), runs
//! `audio.ingest` on each as jobs through the node's own signed API, and prints what it found
//! next to the truth, where the outputs are, and the dashboard's address.

use crate::ingest_cmd::{self, SongResult};
use crate::synth;
use anyhow::Context;
use client::{Client, Credentials};
use node::{Node, NodeConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Analyse these songs instead of synthesised ones.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the node's data here (default: a new directory under the system's temp dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where the embedded node listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Keep the node (and the dashboard) up until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
    /// Transcodes per song.
    #[arg(long, default_value = "mp3:192k,opus:96k")]
    to: String,
}

pub(crate) async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("chorus-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&data_dir)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    // Plain HTTP, on loopback only: the dashboard link must open in a browser without a
    // certificate warning, which a certificate of the node's own CA would raise.
    anyhow::ensure!(
        local.ip().is_loopback(),
        "chorus demo serves plain HTTP and listens on a loopback address only, not {local}; `chorus serve` serves HTTPS"
    );
    let addr = local.to_string();
    let slots = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
    let config = NodeConfig {
        data_dir: data_dir.clone(),
        advertise_addr: addr.clone(),
        slots,
        storage_url: None,
        worker_program: std::env::current_exe().context("cannot find my own executable")?,
        builtin_functions: worker::builtin_functions()
            .into_iter()
            .map(String::from)
            .collect(),
        labels: Vec::new(),
        join: None,
        fault_injection: false,
        snapshot_logs: node::SNAPSHOT_LOGS_DEFAULT,
        join_catch_up: node::JOIN_CATCH_UP_DEFAULT,
        tls: node::TlsSetup::InsecureHttp,
    };
    outln!(
        "chorus demo: starting a one-node cluster in {}",
        data_dir.display()
    )?;
    let node = Node::open(config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(api::serve(node.clone(), listener, shutdown.clone()));
    node.run().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let credentials = crate::client_cmd::read_admin_key(&data_dir)?;
    let client =
        Client::with_transport(&addr, credentials.clone(), &client::Transport::InsecureHttp);

    let (files, truth) = match &args.dir {
        Some(dir) => (ingest_cmd::find_audio(dir)?, Vec::new()),
        None => {
            let songs_dir = data_dir.join("songs");
            std::fs::create_dir_all(&songs_dir)?;
            outln!("synthesising songs with a known arrangement (intro, verse, chorus, verse, chorus, bridge, chorus, outro)")?;
            let songs = synth::demo_songs();
            let mut files = Vec::new();
            for song in &songs {
                let path = songs_dir.join(format!("{}.wav", song.name));
                synth::write_wav(song, &path)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                files.push(path);
            }
            (files, songs)
        }
    };
    anyhow::ensure!(!files.is_empty(), "no songs to analyse");
    let input = serde_json::json!({ "outputs": ingest_cmd::parse_outputs(&args.to)? });
    outln!(
        "running audio.ingest on {} songs as jobs on the node at http://{addr}",
        files.len()
    )?;
    let bar = ingest_cmd::progress_bar(files.len(), false);
    let results = ingest_cmd::run(&client, &files, &input, slots as usize, &bar).await?;
    bar.finish_and_clear();
    outln!()?;
    ingest_cmd::print_table(&results)?;
    print_truth(&truth, &results)?;
    let failed = results
        .iter()
        .filter(|r| {
            r.job
                .as_ref()
                .is_none_or(|j| j.state != model::JobState::Succeeded)
        })
        .count();
    outln!(
        "\noutputs (manifest, waveform.png, transcodes): {}",
        data_dir.join("objects").join("jobs").display()
    )?;
    // The page only reads: it gets a read key of its own that expires, never the admin key.
    let viewer = client
        .create_key_expiring(&[model::Scope::Read], Some(DASHBOARD_KEY_TTL))
        .await?;
    let viewer = Credentials {
        key_id: viewer.id,
        secret: viewer.secret,
    };
    outln!(
        "the dashboard's key reads only and is valid for {} h (`chorus keys create --scope read --ttl 1h` makes another)",
        DASHBOARD_KEY_TTL.as_secs() / 3600
    )?;
    outln!("dashboard: {}", dashboard_url(&addr, &viewer))?;
    if args.keep_running {
        outln!("the node keeps running; Ctrl-C stops it")?;
        let _ = tokio::signal::ctrl_c().await;
    }
    node.drain_and_stop(std::time::Duration::from_secs(10))
        .await;
    shutdown.cancel();
    let _ = server.await;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// How long the dashboard's read key works.
const DASHBOARD_KEY_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// The dashboard signs its requests in the browser; the key travels in the URL fragment,
/// which browsers never send to the server, and the page keeps it in `sessionStorage` only
/// (gone when the tab closes).
fn dashboard_url(addr: &str, key: &Credentials) -> String {
    format!("http://{addr}/#key={}:{}", key.key_id, key.secret)
}

fn print_truth(truth: &[synth::Song], results: &[SongResult]) -> anyhow::Result<()> {
    if truth.is_empty() {
        return Ok(());
    }
    outln!("\nwhat the songs really are:")?;
    for (song, r) in truth.iter().zip(results) {
        let found = r.job.as_ref().and_then(|j| j.output.as_ref()).map(|m| {
            (
                m["chorus"]["start_s"].as_f64(),
                m["chorus"]["end_s"].as_f64(),
            )
        });
        let hit = match found {
            Some((Some(start), Some(end))) => {
                let overlaps = song
                    .choruses_s
                    .iter()
                    .any(|(a, b)| start < f64::from(*b) && end > f64::from(*a));
                if overlaps {
                    "found a chorus"
                } else {
                    "missed the choruses"
                }
            }
            _ => "no chorus reported",
        };
        let choruses: Vec<String> = song
            .choruses_s
            .iter()
            .map(|(a, b)| format!("{a:.1}-{b:.1}s"))
            .collect();
        outln!(
            "  {:<28} {:>5.0} BPM  {:<8}  choruses at {}  -> {hit}",
            song.name,
            song.bpm,
            song.key,
            choruses.join(", ")
        )?;
    }
    Ok(())
}

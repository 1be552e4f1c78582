//! The `chorus` binary: `serve` runs a node, `worker` serves built-in functions inside a
//! worker process, and the rest are client commands. This is the only crate that reads
//! arguments and the environment; errors end here as a message and an exit code.

/// `println!` that hands a failed write back instead of panicking: `outln!(...)?`. A reader
/// that closed the pipe (`chorus jobs list | head -1`) becomes [`StdoutClosed`], which ends
/// the command quietly.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*).map_err(crate::stdout_error)
    }};
}

mod audio_cmd;
mod client_cmd;
mod demo_cmd;
mod ingest_cmd;
mod runs_cmd;
mod serve_cmd;
mod source_cmd;
mod synth;
mod trigger_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc gives freed memory back to the system a few milliseconds after it is freed; with
/// glibc's malloc a node kept the memory of a purged history (120 MB for 30,000 jobs) for good.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "chorus",
    version,
    about = "A self-hosted platform for processing a music catalogue"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a node: registry, scheduler, executor and API.
    Serve(serve_cmd::ServeArgs),
    /// Serve built-in functions over stdin/stdout (started by a node, not by hand).
    #[command(hide = true)]
    Worker,
    /// Submit a job.
    Submit(client_cmd::SubmitArgs),
    /// Run a job of a function and print its output (waits for it).
    Invoke(trigger_cmd::InvokeArgs),
    /// Cron schedules, event subscriptions, bucket prefixes and Kafka topics that start jobs
    /// or workflow runs by themselves.
    // Boxed: its create command's many options would size every variant.
    Triggers(Box<trigger_cmd::TriggersArgs>),
    /// The source catalogue: Kafka topics, bucket prefixes and the CloudEvents ingest, with
    /// owners, schemas, dead-letter destinations and counts.
    Sources(Box<source_cmd::SourcesArgs>),
    /// List, inspect, cancel jobs and read their logs.
    Jobs(client_cmd::JobsArgs),
    /// Deploy and list functions.
    Functions(client_cmd::FunctionsArgs),
    /// Deploy, list and show workflows (DAGs of steps).
    Workflows(runs_cmd::WorkflowsArgs),
    /// Start, list, inspect and control workflow runs.
    Runs(runs_cmd::RunsArgs),
    /// Create, list and revoke API keys.
    Keys(client_cmd::KeysArgs),
    /// List nodes; drain, promote, demote or remove one.
    Nodes(client_cmd::NodesArgs),
    /// Read or change cluster config (applied live on every node).
    Config(client_cmd::ConfigArgs),
    /// The main job in a minute: a node, songs analysed as jobs, a table of results.
    Demo(demo_cmd::DemoArgs),
    /// Ingest a directory of songs through a node: analysis and transcodes, resumable.
    Ingest(ingest_cmd::IngestArgs),
    /// Analyse audio files locally (no server needed).
    Analyze(audio_cmd::AnalyzeArgs),
    /// Transcode an audio file locally, one decode for all outputs.
    Transcode(audio_cmd::TranscodeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Worker => run_worker(),
        Cmd::Serve(args) => runtime().and_then(|rt| {
            let served = rt.block_on(serve_cmd::serve(args));
            // Dropping a runtime waits for its blocking threads without limit (a snapshot
            // being written, a file being read): the process must end once it has stopped.
            rt.shutdown_timeout(RUNTIME_STOP_WAIT);
            served
        }),
        Cmd::Submit(args) => runtime().and_then(|rt| rt.block_on(client_cmd::submit(args))),
        Cmd::Invoke(args) => runtime().and_then(|rt| rt.block_on(trigger_cmd::invoke(args))),
        Cmd::Triggers(args) => runtime().and_then(|rt| rt.block_on(trigger_cmd::triggers(*args))),
        Cmd::Sources(args) => runtime().and_then(|rt| rt.block_on(source_cmd::sources(*args))),
        Cmd::Jobs(args) => runtime().and_then(|rt| rt.block_on(client_cmd::jobs(args))),
        Cmd::Functions(args) => runtime().and_then(|rt| rt.block_on(client_cmd::functions(args))),
        Cmd::Workflows(args) => runtime().and_then(|rt| rt.block_on(runs_cmd::workflows(args))),
        Cmd::Runs(args) => runtime().and_then(|rt| rt.block_on(runs_cmd::runs(args))),
        Cmd::Keys(args) => runtime().and_then(|rt| rt.block_on(client_cmd::keys(args))),
        Cmd::Nodes(args) => runtime().and_then(|rt| rt.block_on(client_cmd::nodes(args))),
        Cmd::Config(args) => runtime().and_then(|rt| rt.block_on(client_cmd::config(args))),
        Cmd::Demo(args) => runtime().and_then(|rt| rt.block_on(demo_cmd::demo(args))),
        Cmd::Ingest(args) => runtime().and_then(|rt| rt.block_on(ingest_cmd::ingest(args))),
        Cmd::Analyze(args) => audio_cmd::analyze(args),
        Cmd::Transcode(args) => audio_cmd::transcode(args),
    };
    match result {
        Ok(code) => code,
        // The reader has what it wanted; as with SIGPIPE's default, nothing to say.
        Err(e) if e.downcast_ref::<StdoutClosed>().is_some() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Standard output was closed by its reader.
#[derive(Debug)]
struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Tells a closed pipe apart from other write failures (a full disk is still an error).
fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(e).context("writing to standard output")
    }
}
/// Longest `chorus serve` waits for blocking threads once the node has stopped.
const RUNTIME_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run_worker() -> anyhow::Result<ExitCode> {
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    worker::serve(stdin, stdout)?;
    Ok(ExitCode::SUCCESS)
}

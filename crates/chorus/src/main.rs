//! The `chorus` binary: `serve` runs a node, `worker` serves built-in functions inside a
//! worker process, and the rest are client commands. This is the only crate that reads
//! arguments and the environment; errors end here as a message and an exit code.

mod audio_cmd;
mod client_cmd;
mod demo_cmd;
mod ingest_cmd;
mod runs_cmd;
mod serve_cmd;
mod synth;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

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
        Cmd::Serve(args) => runtime().and_then(|rt| rt.block_on(serve_cmd::serve(args))),
        Cmd::Submit(args) => runtime().and_then(|rt| rt.block_on(client_cmd::submit(args))),
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
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

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

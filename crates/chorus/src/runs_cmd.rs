//! Workflow and run commands: `chorus workflows deploy|list|get` and `chorus runs
//! start|list|get|abort|retry|skip|restart`. Human output by default, `--json` for scripts.

use crate::client_cmd::Conn;
use anyhow::Context;
use client::{Client, Run, RunFilter};
use model::workflow::{Control, RunStatus, StepRun};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// How long one server-side wait lasts before `--wait` asks again.
const WAIT_POLL: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub(crate) struct WorkflowsArgs {
    #[command(subcommand)]
    command: WorkflowsCmd,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, clap::Subcommand)]
enum WorkflowsCmd {
    /// Deploy a workflow from a TOML spec (e.g. examples/greet.workflow.toml); a changed spec gets
    /// a new version.
    Deploy {
        file: PathBuf,
    },
    List,
    /// A workflow's latest spec.
    Get {
        name: String,
    },
    /// Runs by state, success rate, durations, and per step attempts, retries, errors, queue
    /// wait, CPU time and peak memory, over the runs started within the window.
    Stats {
        name: String,
        #[arg(long, default_value = "24h")]
        window: String,
    },
}

pub(crate) async fn workflows(args: WorkflowsArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let json = args.conn.json;
    match args.command {
        WorkflowsCmd::Deploy { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let client::Deployed { spec, hook_secrets } =
                client.deploy_workflow_with_secrets(&text).await?;
            if json {
                let mut answer = serde_json::json!({ "name": spec.name, "version": spec.version });
                if !hook_secrets.is_empty() {
                    answer["hook_secrets"] = serde_json::json!(hook_secrets);
                }
                println!("{answer}");
            } else {
                println!("deployed workflow {} version {}", spec.name, spec.version);
                if !hook_secrets.is_empty() {
                    println!("# URL hook posts carry x-chorus-webhook-signature: t=TIME,v1=HMAC-SHA256(secret, \"TIME.BODY\")");
                }
                for (url, secret) in hook_secrets {
                    println!("# signing secret of {url}: {secret}");
                }
            }
        }
        WorkflowsCmd::List => {
            let workflows = client.workflows().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&workflows)?);
            } else {
                println!("{:<24} {:>7} {:>6}", "name", "version", "steps");
                for w in workflows {
                    println!(
                        "{:<24} {:>7} {:>6}",
                        w.name,
                        w.version,
                        w.all_steps().count()
                    );
                }
            }
        }
        WorkflowsCmd::Stats { name, window } => {
            let stats = client.workflow_stats(&name, &window).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print_stats(&stats);
            }
        }
        WorkflowsCmd::Get { name } => {
            let spec = client.workflow(&name).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&spec)?);
            } else {
                println!("{}", toml::to_string_pretty(&spec)?);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunsArgs {
    #[command(subcommand)]
    command: RunsCmd,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, clap::Subcommand)]
enum RunsCmd {
    /// Start a run of a workflow's latest version.
    Start {
        workflow: String,
        /// The run's input, as JSON.
        #[arg(long, default_value = "{}")]
        input: String,
        /// The same key returns the same run.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// `NAME=PATH`: uploads the local file PATH and sets the input's field NAME to its
        /// object key, which a step passes to its job with `files = "{{ input.NAME }}"`
        /// (repeatable).
        #[arg(long = "file", value_name = "NAME=PATH")]
        files: Vec<String>,
        /// Show progress until the run ends; the exit code tells whether it succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// Newest runs first.
    List {
        #[arg(long)]
        workflow: Option<String>,
        /// running, succeeded, failed or aborted.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// A run: each step's state, attempts (with their job ids), input, output and error.
    Get { id: u64 },
    /// Wait until the run ends.
    Wait { id: u64 },
    /// Cancel the running steps; the finally step runs. With --workflow instead of an id:
    /// every running run of that workflow.
    Abort {
        #[arg(required_unless_present = "workflow")]
        id: Option<u64>,
        #[arg(long, conflicts_with = "id")]
        workflow: Option<String>,
    },
    /// Run a failed step again (every failed step without --step), and what follows it. With
    /// --workflow W --failed instead of an id: every failed run of that workflow.
    Retry {
        #[arg(required_unless_present = "workflow")]
        id: Option<u64>,
        #[arg(long, conflicts_with_all = ["id", "step"], requires = "failed")]
        workflow: Option<String>,
        /// With --workflow: the failed runs (the only ones a retry fits).
        #[arg(long, requires = "workflow")]
        failed: bool,
        #[arg(long)]
        step: Option<String>,
    },
    /// Skip a waiting, running or failed step; the steps after it go on.
    Skip {
        id: u64,
        #[arg(long)]
        step: String,
    },
    /// Run a finished run again from a step (from the start without --from).
    Restart {
        id: u64,
        #[arg(long)]
        from: Option<String>,
    },
}

pub(crate) async fn runs(args: RunsArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let json = args.conn.json;
    let control = match args.command {
        RunsCmd::Start {
            workflow,
            input,
            idempotency_key,
            files,
            wait,
        } => {
            let mut input: serde_json::Value =
                serde_json::from_str(&input).context("--input is not valid JSON")?;
            for file in &files {
                let (name, path) = file
                    .split_once('=')
                    .with_context(|| format!("--file {file:?} is not NAME=PATH"))?;
                let Some(fields) = input.as_object_mut() else {
                    anyhow::bail!("--file needs an --input that is a JSON object");
                };
                let key = crate::client_cmd::upload(&client, std::path::Path::new(path)).await?;
                fields.insert(name.to_string(), key.into());
            }
            let run = client
                .start_run(&workflow, &input, idempotency_key.as_deref())
                .await?;
            if !wait {
                print_run(&run, json);
                return Ok(ExitCode::SUCCESS);
            }
            let run = wait_with_progress(&client, run, json).await?;
            print_run(&run, json);
            return Ok(exit_code(&run));
        }
        RunsCmd::List {
            workflow,
            state,
            limit,
        } => {
            let filter = RunFilter {
                workflow,
                state,
                limit: Some(limit),
            };
            let runs = client.list_runs(&filter).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                println!(
                    "{:>8}  {:<24} {:>7}  {:<10} steps",
                    "id", "workflow", "version", "state"
                );
                for r in runs {
                    let done = r.steps.iter().filter(|s| s.step.is_done()).count();
                    println!(
                        "{:>8}  {:<24} {:>7}  {:<10} {done}/{}",
                        r.id,
                        r.workflow,
                        r.version,
                        r.state.as_str(),
                        r.steps.len()
                    );
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        RunsCmd::Get { id } => {
            print_run(&client.run(id).await?, json);
            return Ok(ExitCode::SUCCESS);
        }
        RunsCmd::Wait { id } => {
            let run = client.run(id).await?;
            let run = wait_with_progress(&client, run, json).await?;
            print_run(&run, json);
            return Ok(exit_code(&run));
        }
        RunsCmd::Abort { id, workflow } => match (id, workflow) {
            (Some(id), _) => (id, Control::Abort),
            (None, Some(workflow)) => return bulk(&client, &workflow, "abort", json).await,
            (None, None) => anyhow::bail!("name a run id or --workflow"),
        },
        RunsCmd::Retry {
            id,
            workflow,
            failed: _,
            step,
        } => match (id, workflow) {
            (Some(id), _) => (id, Control::Retry { step }),
            (None, Some(workflow)) => return bulk(&client, &workflow, "retry", json).await,
            (None, None) => anyhow::bail!("name a run id or --workflow W --failed"),
        },
        RunsCmd::Skip { id, step } => (id, Control::Skip { step }),
        RunsCmd::Restart { id, from } => (id, Control::Restart { from }),
    };
    let (id, control) = control;
    print_run(&client.control_run(id, &control).await?, json);
    Ok(ExitCode::SUCCESS)
}

/// A control on every run of a workflow it fits, called again while the cluster says more
/// runs fit (each call changes a bounded number in one log entry).
async fn bulk(
    client: &Client,
    workflow: &str,
    control: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut touched = Vec::new();
    let mut passed_over = 0;
    loop {
        let outcome = client.control_workflow_runs(workflow, control).await?;
        let progress = !outcome.touched.is_empty();
        touched.extend(outcome.touched);
        passed_over += outcome.passed_over;
        if !outcome.more || !progress {
            break;
        }
    }
    if json {
        let answer = serde_json::json!({
            "workflow": workflow,
            "control": control,
            "touched": touched,
            "passed_over": passed_over,
        });
        println!("{answer}");
    } else {
        let done = if control == "retry" {
            "retried"
        } else {
            "aborted"
        };
        println!("{done} {} runs of {workflow}", touched.len());
        if passed_over > 0 {
            println!("{passed_over} runs changed meanwhile and were passed over");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn exit_code(run: &Run) -> ExitCode {
    if run.summary.state == RunStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Prints a line each time the run changes (steps done of all), until it ends.
async fn wait_with_progress(client: &Client, mut run: Run, quiet: bool) -> anyhow::Result<Run> {
    let mut last = None;
    loop {
        let (done, total) = run.progress();
        if !quiet && last != Some(done) {
            eprintln!("run {}: {done}/{total} steps done", run.summary.id);
            last = Some(done);
        }
        if run.is_finished() {
            return Ok(run);
        }
        run = client
            .wait_run(run.summary.id, Some(run.revision), WAIT_POLL)
            .await?;
    }
}

fn print_run(run: &Run, json: bool) {
    let s = &run.summary;
    if json {
        let mut value = serde_json::to_value(s).expect("runs serialize");
        value["jobs"] = serde_json::json!(run.jobs);
        value["revision"] = serde_json::json!(run.revision);
        value["existing"] = serde_json::json!(run.existing);
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("JSON prints")
        );
        return;
    }
    let existing = if run.existing { "  (existing run)" } else { "" };
    println!(
        "run {}  {} v{}  {}{existing}",
        s.id,
        s.workflow,
        s.version,
        s.state.as_str()
    );
    if let Some(e) = &s.error {
        println!("  error: {}: {}", e.code, e.message);
    }
    for step in &s.steps {
        print_step(&step.name, &step.step, run);
    }
}

fn print_step(name: &str, step: &StepRun, run: &Run) {
    let round = if step.round > 0 {
        format!(" (round {})", step.round)
    } else {
        String::new()
    };
    println!("  {name:<20} {}{round}", step.status.as_str());
    for (i, element) in step.elements.iter().enumerate() {
        let label = if step.items.is_some() {
            format!("    [{i}] ")
        } else {
            "    ".to_string()
        };
        for a in &element.attempts {
            let job = run
                .jobs
                .get(&a.job_key)
                .map_or("-".to_string(), |id| id.to_string());
            let how = a.error.as_ref().map_or_else(
                || {
                    if a.finished_at_ms.is_some() {
                        "ok".into()
                    } else {
                        "running".into()
                    }
                },
                |e| format!("{}: {}", e.code, e.message),
            );
            println!("{label}attempt {} job {job}: {how}", a.number);
        }
        if !element.input.is_null() {
            println!("{label}input: {}", element.input);
        }
    }
    if let Some(output) = &step.output {
        println!("    output: {output}");
    }
    if let Some(e) = &step.error {
        println!("    error: {}: {}", e.code, e.message);
    }
}

/// A workflow's statistics as a table: the runs, then a row per step.
fn print_stats(stats: &serde_json::Value) {
    let s = &stats["stats"];
    let ms = |v: &serde_json::Value, k: &str| v[k].as_u64().map_or("-".into(), |n| n.to_string());
    let rate = |v: &serde_json::Value| {
        v.as_f64()
            .map_or("-".into(), |r| format!("{:.1}%", r * 100.0))
    };
    println!(
        "workflow {}, runs started in the last {} s: {} ({}), success {}, duration p50 {} ms, p95 {} ms, max {} ms",
        stats["workflow"].as_str().unwrap_or_default(),
        stats["window_s"],
        s["runs"],
        s["by_status"],
        rate(&s["success_rate"]),
        ms(&s["duration_ms"], "p50_ms"),
        ms(&s["duration_ms"], "p95_ms"),
        ms(&s["duration_ms"], "max_ms"),
    );
    println!(
        "{:<20} {:>8} {:>8} {:>8} {:>9} {:>9} {:>10} {:>10} {:>10}",
        "step",
        "success",
        "attempts",
        "retries",
        "p50 ms",
        "p95 ms",
        "wait p95",
        "cpu ms",
        "peak MB"
    );
    let empty = serde_json::Map::new();
    for (step, st) in s["steps"].as_object().unwrap_or(&empty) {
        let r = &stats["resources"][step];
        let peak = r["peak_rss_bytes_max"]
            .as_u64()
            .map_or("-".into(), |b| format!("{:.1}", b as f64 / 1e6));
        println!(
            "{:<20} {:>8} {:>8} {:>8} {:>9} {:>9} {:>10} {:>10} {:>10}",
            step,
            rate(&st["success_rate"]),
            st["attempts"],
            st["retries"],
            ms(&st["duration_ms"], "p50_ms"),
            ms(&st["duration_ms"], "p95_ms"),
            ms(&r["queue_wait_ms"], "p95_ms"),
            ms(r, "cpu_ms_total"),
            peak,
        );
    }
}

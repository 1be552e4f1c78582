//! Client commands: talk to a node over the signed API. Human output by default, `--json`
//! for scripts.

use anyhow::{bail, Context};
use client::{Client, Credentials, JobFilter};
use model::{FunctionSpec, Job, JobId, JobSpec, JobState, Scope};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Where a client command finds the server and its credentials.
#[derive(Debug, clap::Args)]
pub(crate) struct Conn {
    /// The node's API.
    #[arg(
        long,
        env = "CHORUS_SERVER",
        default_value = "https://127.0.0.1:7700",
        global = true
    )]
    server: String,
    /// The CA certificate (PEM) to trust for an HTTPS server; default: the cluster CA in
    /// --data-dir, else the system's roots.
    #[arg(long, env = "CHORUS_CA", global = true)]
    ca: Option<PathBuf>,
    /// Data dir of a node on this machine, whose admin key is used when no key is given.
    #[arg(
        long,
        env = "CHORUS_DATA_DIR",
        default_value = "./chorus-data",
        global = true
    )]
    data_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

impl Conn {
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        let credentials = match (
            std::env::var("CHORUS_KEY_ID"),
            std::env::var("CHORUS_KEY_SECRET"),
        ) {
            (Ok(key_id), Ok(secret)) => Credentials { key_id, secret },
            _ => read_admin_key(&self.data_dir)?,
        };
        Ok(Client::with_transport(
            &self.server,
            credentials,
            &self.transport()?,
        ))
    }

    /// Whom the client trusts: `--ca`, else the cluster CA of the node in `--data-dir`, else
    /// the system's roots (a server with a certificate of a public CA).
    fn transport(&self) -> anyhow::Result<client::Transport> {
        let local = self.data_dir.join(node::tls::CA_CERT_FILE);
        let ca = match &self.ca {
            Some(ca) => ca,
            None if local.exists() => &local,
            None => return Ok(client::Transport::SystemRoots),
        };
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        Ok(client::Transport::trusting(&pem, None)?)
    }
}

pub(crate) fn read_admin_key(data_dir: &Path) -> anyhow::Result<Credentials> {
    let path = data_dir.join(node::ADMIN_KEY_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("no credentials: set CHORUS_KEY_ID and CHORUS_KEY_SECRET, or point --data-dir at a node's data dir ({} not readable)", path.display())
    })?;
    let key: node::KeyFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a key file", path.display()))?;
    Ok(Credentials {
        key_id: key.id,
        secret: key.secret,
    })
}

#[derive(Debug, clap::Args)]
pub(crate) struct SubmitArgs {
    function: String,
    /// Input as JSON.
    #[arg(long, default_value = "{}")]
    input: String,
    /// A local file to upload and pass to the job (repeatable).
    #[arg(long = "file")]
    files: Vec<PathBuf>,
    #[arg(long)]
    idempotency_key: Option<String>,
    #[arg(long, default_value_t = 0)]
    priority: i32,
    /// Wait until the job is finished; the exit code tells whether it succeeded.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    conn: Conn,
}

pub(crate) async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let input: serde_json::Value =
        serde_json::from_str(&args.input).context("--input is not valid JSON")?;
    let mut files = Vec::new();
    for path in &args.files {
        files.push(upload(&client, path).await?);
    }
    let spec = JobSpec {
        function: args.function,
        input,
        files,
        priority: args.priority,
        idempotency_key: args.idempotency_key,
    };
    let job = client.submit(&spec).await?;
    if !args.wait {
        print_job(&job, args.conn.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let job = wait_with_progress(&client, job.id, args.conn.json).await?;
    print_job(&job, args.conn.json)?;
    Ok(if job.state == JobState::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Uploads a file under a key derived from its content, so the same file is stored once.
pub(crate) async fn upload(client: &Client, path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    upload_hashed(client, path, &Sha256::digest(&bytes)).await
}

/// Uploads `path`, whose SHA-256 the caller has already computed, under its content key.
pub(crate) async fn upload_hashed(
    client: &Client,
    path: &Path,
    sha256: &[u8],
) -> anyhow::Result<String> {
    let digest = hex::encode(&sha256[..12]);
    let name: String = path
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        })
        .unwrap_or_else(|| "file".into());
    let key = format!("uploads/{digest}/{name}");
    client.put_object(&key, path).await?;
    Ok(key)
}

async fn wait_with_progress(client: &Client, id: JobId, quiet: bool) -> anyhow::Result<Job> {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.enable_steady_tick(Duration::from_millis(100));
    let started = Instant::now();
    loop {
        let job = client.wait(id, Duration::from_secs(1)).await?;
        bar.set_message(format!(
            "job {id}: {} ({:.1}s)",
            job.state.as_str(),
            started.elapsed().as_secs_f64()
        ));
        if job.state.is_terminal() {
            bar.finish_and_clear();
            return Ok(job);
        }
    }
}

/// A wait code as the API spells it.
fn wait_code(code: model::WaitCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

fn print_job(job: &Job, json: bool) -> anyhow::Result<()> {
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(job).expect("jobs serialize")
        )?;
        return Ok(());
    }
    outln!("job {}  {}  {}", job.id, job.function, job.state.as_str())?;
    for a in &job.attempts {
        let took = a
            .finished_at_ms
            .map(|f| format!("{} ms", f.saturating_sub(a.started_at_ms)))
            .unwrap_or_else(|| "running".into());
        let how = a
            .error
            .as_ref()
            .map(|e| format!("{}: {}", e.code, e.message))
            .unwrap_or_else(|| "ok".into());
        outln!("  attempt {} on node {}: {took}, {how}", a.id, a.node)?;
    }
    if let Some(output) = &job.output {
        outln!("  output: {output}")?;
    }
    for o in &job.objects {
        outln!("  object: {o}")?;
    }
    if let (Some(e), true) = (&job.error, job.state.is_terminal()) {
        outln!("  error: {}: {}", e.code, e.message)?;
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(crate) struct JobsArgs {
    #[command(subcommand)]
    command: JobsCmd,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, clap::Subcommand)]
enum JobsCmd {
    /// Newest jobs first.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        function: Option<String>,
        #[arg(long)]
        before: Option<u64>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    Get {
        id: u64,
    },
    /// The job's log (its last attempt's, unless --attempt).
    Logs {
        id: u64,
        #[arg(long)]
        attempt: Option<u64>,
    },
    Cancel {
        id: u64,
    },
    /// Wait until the job is finished.
    Wait {
        id: u64,
    },
}

pub(crate) async fn jobs(args: JobsArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let json = args.conn.json;
    match args.command {
        JobsCmd::List {
            state,
            function,
            before,
            limit,
        } => {
            let page = client
                .list_jobs(&JobFilter {
                    state,
                    function,
                    before: before.map(JobId),
                    limit: Some(limit),
                    ..JobFilter::default()
                })
                .await?;
            if json {
                outln!(
                    "{}",
                    serde_json::json!({ "jobs": page.jobs, "next_before": page.next_before })
                )?;
            } else {
                outln!(
                    "{:>8}  {:<20} {:<10} {:>8}  error",
                    "id",
                    "function",
                    "state",
                    "attempts"
                )?;
                for j in &page.jobs {
                    let error = j.error.as_ref().map(|e| e.code.as_str()).unwrap_or("");
                    outln!(
                        "{:>8}  {:<20} {:<10} {:>8}  {error}",
                        j.id.0,
                        j.function,
                        j.state.as_str(),
                        j.attempts.len()
                    )?;
                }
                if let Some(next) = page.next_before {
                    outln!("(more: --before {next})")?;
                }
            }
        }
        JobsCmd::Get { id } => {
            let detail = client.job_detail(JobId(id)).await?;
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&detail).expect("jobs serialize")
                )?;
            } else {
                print_job(&detail.job, false)?;
                if let Some(w) = &detail.waiting {
                    outln!("  waiting: {}: {}", wait_code(w.code), w.message)?;
                }
            }
        }
        JobsCmd::Logs { id, attempt } => {
            use std::io::Write;
            let log = client.logs(JobId(id), attempt).await?;
            std::io::stdout()
                .write_all(&log)
                .map_err(crate::stdout_error)?;
        }
        JobsCmd::Cancel { id } => print_job(&client.cancel(JobId(id)).await?, json)?,
        JobsCmd::Wait { id } => {
            let job = wait_with_progress(&client, JobId(id), json).await?;
            print_job(&job, json)?;
            if job.state != JobState::Succeeded {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub(crate) struct FunctionsArgs {
    #[command(subcommand)]
    command: FunctionsCmd,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, clap::Subcommand)]
enum FunctionsCmd {
    /// Deploy a function from a TOML spec (see examples/).
    Deploy {
        file: PathBuf,
    },
    List,
}

pub(crate) async fn functions(args: FunctionsArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    match args.command {
        FunctionsCmd::Deploy { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let spec: FunctionSpec = toml::from_str(&text)
                .with_context(|| format!("{} is not a function spec", file.display()))?;
            let version = client.deploy(&spec).await?;
            if args.conn.json {
                outln!(
                    "{}",
                    serde_json::json!({ "name": spec.name, "version": version })
                )?;
            } else {
                outln!("deployed {} version {version}", spec.name)?;
            }
        }
        FunctionsCmd::List => {
            let functions = client.functions().await?;
            if args.conn.json {
                outln!("{}", serde_json::to_string_pretty(&functions)?)?;
            } else {
                outln!(
                    "{:<24} {:>7}  {:<8} {:>10}  command",
                    "name",
                    "version",
                    "kind",
                    "timeout"
                )?;
                for f in functions {
                    let kind = format!("{:?}", f.kind).to_lowercase();
                    outln!(
                        "{:<24} {:>7}  {:<8} {:>8}ms  {}",
                        f.name,
                        f.version,
                        kind,
                        f.timeout_ms,
                        f.command.join(" ")
                    )?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub(crate) struct KeysArgs {
    #[command(subcommand)]
    command: KeysCmd,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, clap::Subcommand)]
enum KeysCmd {
    /// Create a key; its secret is shown once.
    Create {
        /// admin, submit or read (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// The key stops working this long after it is created (e.g. 1h, 30d).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    List,
    Revoke {
        id: String,
    },
}

pub(crate) async fn keys(args: KeysArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    match args.command {
        KeysCmd::Create { scopes, ttl } => {
            let mut parsed = Vec::new();
            for s in &scopes {
                match Scope::parse(s) {
                    Some(scope) => parsed.push(scope),
                    None => bail!("unknown scope {s:?}: use admin, submit or read"),
                }
            }
            let key = client.create_key_expiring(&parsed, ttl).await?;
            if args.conn.json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "id": key.id,
                        "secret": key.secret,
                        "scopes": key.scopes,
                        "expires_at_ms": key.expires_at_ms,
                    })
                )?;
            } else {
                outln!("CHORUS_KEY_ID={}\nCHORUS_KEY_SECRET={}", key.id, key.secret)?;
                if let Some(at) = key.expires_at_ms {
                    outln!("# expires {}", time_of(at))?;
                }
            }
        }
        KeysCmd::List => {
            let keys = client.list_keys().await?;
            if args.conn.json {
                outln!("{keys}")?;
            } else {
                for k in keys["keys"].as_array().into_iter().flatten() {
                    let revoked = if k["revoked"].as_bool() == Some(true) {
                        "  (revoked)"
                    } else {
                        ""
                    };
                    let last_used = k["last_used_ms"]
                        .as_u64()
                        .map_or_else(|| "never".to_string(), time_of);
                    let expires = k["expires_at_ms"]
                        .as_u64()
                        .map_or_else(String::new, |at| format!("  expires {}", time_of(at)));
                    outln!(
                        "{}  {}  last used {last_used}{expires}{revoked}",
                        k["id"].as_str().unwrap_or("?"),
                        k["scopes"]
                    )?;
                }
            }
        }
        KeysCmd::Revoke { id } => {
            client.revoke_key(&id).await?;
            if !args.conn.json {
                outln!("revoked {id}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub(crate) struct NodesArgs {
    #[command(subcommand)]
    command: NodesCmd,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, clap::Subcommand)]
enum NodesCmd {
    List,
    /// Take no new work; finish what runs (then the node can be stopped with no job lost).
    Drain {
        id: u64,
    },
    Undrain {
        id: u64,
    },
    /// Make a learner a voter.
    Promote {
        id: u64,
    },
    /// Make a voter a learner.
    Demote {
        id: u64,
    },
    /// Remove a node from the cluster; its attempts are retried elsewhere.
    Remove {
        id: u64,
    },
}

pub(crate) async fn nodes(args: NodesArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let (id, action) = match args.command {
        NodesCmd::List => {
            let nodes = client.nodes().await?;
            if args.conn.json {
                outln!("{nodes}")?;
                return Ok(ExitCode::SUCCESS);
            }
            let leader = nodes["leader"].as_u64();
            outln!(
                "{:>4}  {:<21} {:<9} {:<8} {:>5} {:>7} {:>6}  labels",
                "id",
                "addr",
                "status",
                "role",
                "slots",
                "running",
                "cpu%"
            )?;
            for n in nodes["nodes"].as_array().into_iter().flatten() {
                let id = n["id"].as_u64().unwrap_or(0);
                let star = if Some(id) == leader { "*" } else { " " };
                outln!(
                    "{id:>3}{star}  {:<21} {:<9} {:<8} {:>5} {:>7} {:>6.1}  {}",
                    n["addr"].as_str().unwrap_or("?"),
                    n["status"].as_str().unwrap_or("?"),
                    n["role"].as_str().unwrap_or("?"),
                    n["slots"],
                    n["running"],
                    n["load"]["cpu_percent"].as_f64().unwrap_or(0.0),
                    n["labels"]
                )?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        NodesCmd::Drain { id } => (id, "drain"),
        NodesCmd::Undrain { id } => (id, "undrain"),
        NodesCmd::Promote { id } => (id, "promote"),
        NodesCmd::Demote { id } => (id, "demote"),
        NodesCmd::Remove { id } => (id, "remove"),
    };
    let answer = client.node_action(id, action).await?;
    if args.conn.json {
        outln!("{answer}")?;
    } else {
        outln!("node {id}: {action} done")?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub(crate) struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCmd,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, clap::Subcommand)]
enum ConfigCmd {
    /// Show the cluster config.
    Get,
    /// Change a key on every node, live. Keys: `scheduler.strategy` (least-request, cpu-load,
    /// concurrency, weighted-round-robin, random), `scheduler.cpu_threshold` (percent),
    /// `node.ID.weight` (0 takes a node out of rotation), `retention` (e.g. 7d, 12h),
    /// `alerts.webhook` (an http(s) URL that gets every cluster event; empty: off),
    /// `events.sink` (where every job's and run's completion goes as a CloudEvent: `ingest`,
    /// an http(s) URL or kafka://host:port/topic; empty: off), `alerts.sink` (where every
    /// cluster event goes as a CloudEvent, the same forms).
    Set { key: String, value: String },
}

pub(crate) async fn config(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    match args.command {
        ConfigCmd::Get => {
            let config = client.config().await?;
            if args.conn.json {
                outln!("{config}")?;
            } else {
                for (k, v) in config["config"].as_object().into_iter().flatten() {
                    outln!("{k} = {}", v.as_str().unwrap_or_default())?;
                }
            }
        }
        ConfigCmd::Set { key, value } => {
            let answer = client.set_config(&key, &value).await?;
            if args.conn.json {
                outln!("{answer}")?;
            } else {
                outln!("{key} = {value}")?;
                if let Some(secret) = answer["signing_secret"].as_str() {
                    outln!("# posts carry x-chorus-webhook-signature: t=TIME,v1=HMAC-SHA256(secret, \"TIME.BODY\")")?;
                    outln!("# signing secret (shown when the webhook is set): {secret}")?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A time from the API (ms since the epoch) as people read it, in UTC.
fn time_of(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

//! `chorus invoke` (run a job and wait for its output) and `chorus triggers` (cron schedules,
//! event subscriptions, bucket prefixes and Kafka topics that start jobs or workflow runs by
//! themselves).

use crate::client_cmd::Conn;
use anyhow::{bail, Context};
use client::Invoked;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub(crate) struct InvokeArgs {
    function: String,
    /// Input as JSON.
    #[arg(long, default_value = "{}")]
    input: String,
    /// How long the server waits for the job (at most 300000); past it the job's id is
    /// printed and the exit code is 3.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    #[command(flatten)]
    conn: Conn,
}

pub(crate) async fn invoke(args: InvokeArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let input: serde_json::Value =
        serde_json::from_str(&args.input).context("--input is not valid JSON")?;
    let answer = client
        .invoke(
            &args.function,
            &input,
            Duration::from_millis(args.timeout_ms),
        )
        .await?;
    match answer {
        Invoked::Done {
            id,
            output,
            objects,
        } => {
            if args.conn.json {
                outln!(
                    "{}",
                    serde_json::json!({ "id": id, "output": output, "objects": objects })
                )?;
            } else {
                outln!("{output}")?;
                for o in objects {
                    outln!("object: {o}")?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Invoked::Pending { id, state } => {
            if args.conn.json {
                outln!("{}", serde_json::json!({ "id": id, "state": state }))?;
            } else {
                outln!(
                    "job {id} is still {}: follow it with `chorus jobs wait {id}`",
                    state.as_str()
                )?;
            }
            Ok(ExitCode::from(3))
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct TriggersArgs {
    #[command(subcommand)]
    command: TriggersCmd,
    #[command(flatten)]
    conn: Conn,
}

// Parsed once per process: the size of `Create` beside the other variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
enum TriggersCmd {
    /// Create a trigger: `--cron SCHEDULE` (five fields, or six with seconds first),
    /// `--events` with `--filter`s (CloudEvents Subscriptions API dialects: exact, prefix,
    /// suffix, all, any, not), `--bucket PREFIX` with `--suffix`es (new or changed objects of
    /// the object store), or `--kafka-brokers HOST:PORT --topic TOPIC` (records of a topic).
    Create {
        name: String,
        /// Start jobs of this function.
        #[arg(
            long,
            required_unless_present = "workflow",
            conflicts_with = "workflow"
        )]
        function: Option<String>,
        /// Start runs of this workflow instead, with the input a job would get.
        #[arg(long)]
        workflow: Option<String>,
        /// The input of every job or run (a JSON object); the trigger adds the key `trigger`.
        #[arg(long, default_value = "{}")]
        input: String,
        #[arg(long, conflicts_with = "events")]
        cron: Option<String>,
        /// A time zone of the tz database, e.g. Europe/Berlin.
        #[arg(long, default_value = "UTC", requires = "cron")]
        timezone: String,
        /// Ticks missed while the cluster was down: skip (fire the latest) or catch-up.
        #[arg(long, value_parser = ["skip", "catch-up"], default_value = "skip", requires = "cron")]
        missed: String,
        /// With --missed catch-up: the latest ticks fired at most.
        #[arg(long, requires = "cron")]
        catch_up_max: Option<u32>,
        /// Subscribe to the events posted to /v1/events/ingest.
        #[arg(long)]
        events: bool,
        /// A filter as JSON, e.g. '{"exact": {"type": "song.uploaded"}}' (repeatable; all
        /// must match).
        #[arg(long = "filter", requires = "events")]
        filters: Vec<String>,
        /// Start a job for each new or changed object whose key starts with PREFIX.
        #[arg(long, value_name = "PREFIX")]
        bucket: Option<String>,
        /// With --bucket: only keys that end with it, e.g. .flac (repeatable).
        #[arg(long = "suffix", requires = "bucket")]
        suffixes: Vec<String>,
        /// Start jobs for the records of --topic on these Kafka brokers (host:port,...).
        #[arg(long, requires = "topic")]
        kafka_brokers: Option<String>,
        #[arg(long, requires = "kafka_brokers")]
        topic: Option<String>,
        /// The consumer group (chorus-NAME if not given).
        #[arg(long, requires = "kafka_brokers")]
        group: Option<String>,
        /// Records per job (1 to 100).
        #[arg(long, default_value_t = 1, requires = "kafka_brokers")]
        batch: u32,
        /// A JSON Schema every record's value must match; a record that does not starts no
        /// job.
        #[arg(long, requires = "kafka_brokers")]
        schema: Option<String>,
        /// A topic on the same brokers for the records that start no job, with the reason
        /// in their headers.
        #[arg(long, requires = "kafka_brokers")]
        dead_letter: Option<String>,
        /// Read a source of the catalogue (`chorus sources register`), with its connection,
        /// schema and dead-letter destination.
        #[arg(long, conflicts_with_all = ["cron", "events", "bucket", "kafka_brokers"])]
        source: Option<String>,
        /// Where each job's (or run's) completion goes as a CloudEvent: `ingest` (starts
        /// the event triggers it matches), an http(s) URL, or kafka://host:port/topic.
        #[arg(long, value_name = "SINK")]
        reply: Option<String>,
    },
    List,
    Get {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Stop firing until resumed.
    Pause {
        name: String,
    },
    /// Fire again, from now on: the ticks of the pause never fire.
    Resume {
        name: String,
    },
}

fn spec(command: TriggersCmd) -> anyhow::Result<serde_json::Value> {
    let TriggersCmd::Create {
        name,
        function,
        workflow,
        input,
        cron,
        timezone,
        missed,
        catch_up_max,
        events,
        filters,
        bucket,
        suffixes,
        kafka_brokers,
        topic,
        group,
        batch,
        schema,
        dead_letter,
        source,
        reply,
    } = command
    else {
        bail!("not a create command")
    };
    let input: serde_json::Value =
        serde_json::from_str(&input).context("--input is not valid JSON")?;
    let mut spec = serde_json::json!({ "name": name, "input": input });
    if let Some(reply) = reply {
        spec["reply"] = reply.into();
    }
    match (function, workflow) {
        (Some(function), None) => spec["function"] = function.into(),
        (None, Some(workflow)) => spec["workflow"] = workflow.into(),
        _ => bail!("a trigger takes one of --function F and --workflow W"),
    }
    if let Some(source) = source {
        spec["source"] = source.into();
        return Ok(spec);
    }
    let sources = usize::from(cron.is_some())
        + usize::from(events)
        + usize::from(bucket.is_some())
        + usize::from(kafka_brokers.is_some());
    if sources != 1 {
        bail!(
            "a trigger takes one of --cron SCHEDULE, --events, --bucket PREFIX, --kafka-brokers and --source NAME"
        );
    }
    if let Some(prefix) = bucket {
        spec["bucket"] = serde_json::json!({ "prefix": prefix, "suffixes": suffixes });
        return Ok(spec);
    }
    if let Some(brokers) = kafka_brokers {
        let mut kafka = serde_json::json!({ "brokers": brokers, "topic": topic, "batch": batch });
        if let Some(group) = group {
            kafka["group"] = group.into();
        }
        if let Some(schema) = schema {
            kafka["schema"] =
                serde_json::from_str(&schema).context("--schema is not valid JSON")?;
        }
        if let Some(topic) = dead_letter {
            kafka["dead_letter"] = topic.into();
        }
        spec["kafka"] = kafka;
        return Ok(spec);
    }
    match (cron, events) {
        (Some(schedule), false) => {
            let missed = if missed == "catch-up" {
                "catch_up"
            } else {
                "skip"
            };
            let mut cron = serde_json::json!({
                "schedule": schedule,
                "timezone": timezone,
                "missed": missed,
            });
            if let Some(max) = catch_up_max {
                cron["catch_up_max"] = max.into();
            }
            spec["cron"] = cron;
        }
        (None, true) => {
            let mut parsed = Vec::new();
            for f in &filters {
                let value: serde_json::Value = serde_json::from_str(f)
                    .with_context(|| format!("--filter {f:?} is not valid JSON"))?;
                parsed.push(value);
            }
            spec["events"] = serde_json::json!({ "filters": parsed });
        }
        _ => bail!("a trigger takes --cron SCHEDULE or --events"),
    }
    Ok(spec)
}

fn print_trigger(t: &serde_json::Value) -> anyhow::Result<()> {
    let spec = &t["spec"];
    let what = if let Some(cron) = spec["cron"].as_object() {
        format!(
            "cron {:?} {} missed={}",
            cron["schedule"].as_str().unwrap_or("?"),
            cron["timezone"].as_str().unwrap_or("UTC"),
            cron["missed"].as_str().unwrap_or("skip"),
        )
    } else if let Some(bucket) = spec["bucket"].as_object() {
        format!(
            "bucket {:?} suffixes={}",
            bucket["prefix"].as_str().unwrap_or(""),
            spec["bucket"]["suffixes"]
        )
    } else if let Some(kafka) = spec["kafka"].as_object() {
        format!(
            "kafka {} topic={} batch={}",
            kafka["brokers"].as_str().unwrap_or("?"),
            kafka["topic"].as_str().unwrap_or("?"),
            kafka["batch"]
        )
    } else {
        format!("events filters={}", spec["events"]["filters"])
    };
    let state = if t["paused"] == true {
        "paused"
    } else {
        "active"
    };
    let target = match (spec["function"].as_str(), spec["workflow"].as_str()) {
        (Some(function), _) => function.to_string(),
        (None, Some(workflow)) => format!("workflow:{workflow}"),
        (None, None) => "?".to_string(),
    };
    let what = match spec["source"].as_str() {
        Some(source) => format!("source {source}: {what}"),
        None => what,
    };
    outln!(
        "{:<24} {:<20} {:<7} {what}",
        spec["name"].as_str().unwrap_or("?"),
        target,
        state
    )?;
    Ok(())
}

pub(crate) async fn triggers(args: TriggersArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let json = args.conn.json;
    let answer = match args.command {
        command @ TriggersCmd::Create { .. } => {
            let spec: model::TriggerSpec =
                serde_json::from_value(spec(command)?).context("not a trigger spec")?;
            client.create_trigger(&spec).await?
        }
        TriggersCmd::List => {
            let list = client.triggers().await?;
            if json {
                outln!("{list}")?;
            } else {
                for t in list["triggers"].as_array().into_iter().flatten() {
                    print_trigger(t)?;
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        TriggersCmd::Get { name } => client.trigger(&name).await?,
        TriggersCmd::Delete { name } => {
            client.delete_trigger(&name).await?;
            if !json {
                outln!("deleted trigger {name}")?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        TriggersCmd::Pause { name } => client.pause_trigger(&name, true).await?,
        TriggersCmd::Resume { name } => client.pause_trigger(&name, false).await?,
    };
    if json {
        outln!("{answer}")?;
    } else {
        print_trigger(&answer)?;
        if let Some(next) = answer["next_tick_ms"].as_u64() {
            outln!("  next tick at {next} ms (unix time)")?;
        }
        outln!("  fired: {}", answer["fired"].as_u64().unwrap_or(0))?;
        if let Some(status) = answer["status"].as_object() {
            outln!(
                "  source: {} {}",
                status["state"].as_str().unwrap_or("?"),
                status.get("error").and_then(|e| e.as_str()).unwrap_or("")
            )?;
        }
        for p in answer["partitions"].as_array().into_iter().flatten() {
            let shown = |key: &str| match &p[key] {
                serde_json::Value::Null => "-".to_string(),
                v => v.to_string(),
            };
            outln!(
                "  partition {:<4} node {:<6} epoch {:<4} next {:<10} lag {}",
                shown("partition"),
                shown("node"),
                shown("epoch"),
                shown("next"),
                shown("lag")
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

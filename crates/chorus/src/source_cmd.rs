//! `chorus sources`: the source catalogue. Register a Kafka topic, a bucket prefix or the
//! CloudEvents ingest with an owner, a description, a JSON Schema for its records and a
//! dead-letter destination; list and read sources with their counts; delete one.

use crate::client_cmd::Conn;
use anyhow::{bail, Context};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct SourcesArgs {
    #[command(subcommand)]
    command: SourcesCmd,
    #[command(flatten)]
    conn: Conn,
}

// Parsed once per process: the size of `Register` beside the other variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
enum SourcesCmd {
    /// Register a source: `--kafka BROKERS --topic T`, `--bucket PREFIX [--suffix S]...` or
    /// `--ingest [--filter JSON]...` (the CloudEvents posted to /v1/events/ingest).
    Register {
        name: String,
        /// Kafka bootstrap servers (host:port,...), with --topic.
        #[arg(long, requires = "topic", conflicts_with_all = ["bucket", "ingest"])]
        kafka: Option<String>,
        #[arg(long, requires = "kafka")]
        topic: Option<String>,
        /// Objects of the cluster's store whose keys start with PREFIX.
        #[arg(long, value_name = "PREFIX", conflicts_with = "ingest")]
        bucket: Option<String>,
        /// With --bucket: only keys that end with it, e.g. .flac (repeatable).
        #[arg(long = "suffix", requires = "bucket")]
        suffixes: Vec<String>,
        /// The CloudEvents posted to /v1/events/ingest.
        #[arg(long)]
        ingest: bool,
        /// With --ingest: a filter as JSON, e.g. '{"exact": {"type": "song.uploaded"}}'
        /// (repeatable; all must match).
        #[arg(long = "filter", requires = "ingest")]
        filters: Vec<String>,
        /// Who to ask about it (a team, a person).
        #[arg(long, default_value = "")]
        owner: String,
        #[arg(long, default_value = "")]
        description: String,
        /// A file holding the JSON Schema its records must match.
        #[arg(long, value_name = "FILE")]
        schema: Option<std::path::PathBuf>,
        /// Where refused records go: a Kafka topic, or `bucket:PREFIX` (objects under a
        /// prefix of the cluster's store).
        #[arg(long, value_name = "TOPIC|bucket:PREFIX")]
        dead_letter: Option<String>,
        /// The brokers of a dead-letter topic (a Kafka source's own if not given).
        #[arg(long, requires = "dead_letter")]
        dead_letter_brokers: Option<String>,
    },
    List,
    Get {
        name: String,
    },
    /// Refused while a trigger reads it.
    Delete {
        name: String,
    },
}

fn spec(command: SourcesCmd) -> anyhow::Result<model::SourceSpec> {
    let SourcesCmd::Register {
        name,
        kafka,
        topic,
        bucket,
        suffixes,
        ingest,
        filters,
        owner,
        description,
        schema,
        dead_letter,
        dead_letter_brokers,
    } = command
    else {
        bail!("not a register command")
    };
    let mut spec = serde_json::json!({ "name": name, "owner": owner, "description": description });
    match (kafka, bucket, ingest) {
        (Some(brokers), None, false) => {
            spec["kafka"] = serde_json::json!({ "brokers": brokers, "topic": topic });
        }
        (None, Some(prefix), false) => {
            spec["bucket"] = serde_json::json!({ "prefix": prefix, "suffixes": suffixes });
        }
        (None, None, true) => {
            let mut parsed = Vec::new();
            for f in &filters {
                let value: serde_json::Value = serde_json::from_str(f)
                    .with_context(|| format!("--filter {f:?} is not valid JSON"))?;
                parsed.push(value);
            }
            spec["events"] = serde_json::json!({ "filters": parsed });
        }
        _ => bail!("a source is one of --kafka BROKERS --topic T, --bucket PREFIX and --ingest"),
    }
    if let Some(file) = schema {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading --schema {}", file.display()))?;
        spec["schema"] = serde_json::from_str(&text)
            .with_context(|| format!("--schema {} is not JSON", file.display()))?;
    }
    let mut spec: model::SourceSpec = serde_json::from_value(spec).context("not a source spec")?;
    if let Some(text) = dead_letter {
        let mut d = model::DeadLetterSpec::parse(&text);
        d.brokers = dead_letter_brokers;
        spec.dead_letter = Some(d);
    }
    Ok(spec)
}

fn print_source(s: &serde_json::Value) -> anyhow::Result<()> {
    let spec = &s["spec"];
    let what = if let Some(kafka) = spec["kafka"].as_object() {
        format!(
            "kafka {} topic={}",
            kafka["brokers"].as_str().unwrap_or("?"),
            kafka["topic"].as_str().unwrap_or("?")
        )
    } else if let Some(bucket) = spec["bucket"].as_object() {
        format!(
            "bucket {:?} suffixes={}",
            bucket["prefix"].as_str().unwrap_or(""),
            spec["bucket"]["suffixes"]
        )
    } else {
        format!("ingest filters={}", spec["events"]["filters"])
    };
    let counts = &s["counts"];
    outln!(
        "{:<24} {:<16} {what} in={} rejected={} dead-lettered={}",
        spec["name"].as_str().unwrap_or("?"),
        spec["owner"].as_str().unwrap_or("-"),
        s["seen"]["records_in"].as_u64().unwrap_or(0),
        counts["rejected"].as_u64().unwrap_or(0)
            + counts["failed_invalid_input"].as_u64().unwrap_or(0),
        counts["dead_lettered"].as_u64().unwrap_or(0),
    )?;
    Ok(())
}

fn print_detail(s: &serde_json::Value) -> anyhow::Result<()> {
    print_source(s)?;
    let spec = &s["spec"];
    if let Some(d) = spec["description"].as_str() {
        outln!("  description: {d}")?;
    }
    outln!(
        "  schema: {}",
        if spec["schema"].is_object() {
            "yes"
        } else {
            "none"
        }
    )?;
    let destination = match spec["dead_letter"].as_object() {
        None => "none (refused records are counted only)".to_string(),
        Some(d) => match (d.get("topic"), d.get("prefix")) {
            (Some(topic), _) => format!("topic {}", topic.as_str().unwrap_or("?")),
            (_, Some(prefix)) => format!("objects under {}", prefix.as_str().unwrap_or("?")),
            _ => "?".to_string(),
        },
    };
    outln!("  dead letters: {destination}")?;
    let seen = &s["seen"];
    let counts = &s["counts"];
    outln!(
        "  records in: {}  bytes in: {}",
        seen["records_in"],
        seen["bytes_in"]
    )?;
    outln!(
        "  rejected: {}  jobs failed invalid_input: {}  dead-lettered: {}  on their way: {}",
        counts["rejected"],
        counts["failed_invalid_input"],
        counts["dead_lettered"],
        counts["dead_letter_pending"]
    )?;
    if let Some(lag) = seen["lag"].as_object() {
        for (partition, lag) in lag {
            outln!("  lag partition {partition}: {lag}")?;
        }
    }
    let triggers: Vec<&str> = s["triggers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str())
        .collect();
    outln!("  triggers: {}", triggers.join(", "))?;
    Ok(())
}

pub(crate) async fn sources(args: SourcesArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let json = args.conn.json;
    let answer = match args.command {
        command @ SourcesCmd::Register { .. } => client.register_source(&spec(command)?).await?,
        SourcesCmd::List => {
            let list = client.sources(false).await?;
            if json {
                outln!("{list}")?;
            } else {
                for s in list["sources"].as_array().into_iter().flatten() {
                    print_source(s)?;
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        SourcesCmd::Get { name } => client.source(&name).await?,
        SourcesCmd::Delete { name } => {
            client.delete_source(&name).await?;
            if !json {
                outln!("deleted source {name}")?;
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    if json {
        outln!("{answer}")?;
    } else {
        print_detail(&answer)?;
    }
    Ok(ExitCode::SUCCESS)
}

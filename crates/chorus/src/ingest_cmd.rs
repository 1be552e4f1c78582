//! `chorus ingest DIR`: push a directory of songs through a node's `audio.ingest`, with a
//! progress bar, bounded concurrency and idempotency (the content hash and the options are the
//! idempotency key, so a second run skips what is done). `chorus demo` uses the same runner.

use crate::client_cmd::{upload_hashed, Conn};
use anyhow::Context;
use client::{Client, JobFilter};
use indicatif::{ProgressBar, ProgressStyle};
use model::{Job, JobId, JobSpec, JobState};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Files a directory walk takes at most.
const FILES_MAX: usize = 1_000_000;
/// Audio file endings ingest picks up.
const AUDIO_EXTENSIONS: &[&str] = &[
    "mp3", "ogg", "oga", "opus", "flac", "wav", "aiff", "aif", "m4a", "mp4", "aac",
];
/// Priority of bulk ingest jobs: below online work (priority 0), so it keeps its latency.
const INGEST_PRIORITY: i32 = -10;

#[derive(Debug, clap::Args)]
pub(crate) struct IngestArgs {
    /// A directory of songs (searched recursively).
    dir: PathBuf,
    /// Transcodes to make, e.g. `opus:96k,mp3:320k,flac`.
    #[arg(long, default_value = "")]
    to: String,
    /// Normalise transcodes to this loudness (LUFS).
    #[arg(long)]
    normalize: Option<f64>,
    /// Jobs in flight at most (default: 4).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    #[command(flatten)]
    conn: Conn,
}

/// The outcome for one song.
#[derive(Debug)]
pub(crate) struct SongResult {
    pub(crate) path: PathBuf,
    /// The job, once there is one.
    pub(crate) job: Option<Job>,
    /// True when an earlier run had already done it.
    pub(crate) skipped: bool,
    pub(crate) error: Option<String>,
}

/// Turns `opus:96k,mp3:320k,flac` into audio.ingest `outputs`.
pub(crate) fn parse_outputs(spec: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut outputs = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (format, rate) = part
            .split_once(':')
            .map_or((part, None), |(f, r)| (f, Some(r)));
        let mut output = serde_json::json!({ "format": format });
        if let Some(rate) = rate {
            let kbps: u32 = rate
                .trim_end_matches(['k', 'K'])
                .parse()
                .with_context(|| format!("bad bit rate in {part:?}"))?;
            output["bitrate_kbps"] = kbps.into();
        }
        outputs.push(output);
    }
    Ok(outputs)
}

pub(crate) fn find_audio(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries =
            std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| AUDIO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            {
                found.push(path);
                anyhow::ensure!(
                    found.len() <= FILES_MAX,
                    "more than {FILES_MAX} files under {}",
                    dir.display()
                );
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Uploads and submits every file (at most `concurrency` jobs in flight) and waits for all.
pub(crate) async fn run(
    client: &Client,
    files: &[PathBuf],
    input: &serde_json::Value,
    concurrency: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Vec<SongResult>> {
    let options_hash = hex::encode(&Sha256::digest(serde_json::to_vec(input)?)[..6]);
    let mut results: Vec<SongResult> = files
        .iter()
        .map(|p| SongResult {
            path: p.clone(),
            job: None,
            skipped: false,
            error: None,
        })
        .collect();
    let mut waiting: VecDeque<(usize, JobId)> = VecDeque::new();
    let started = Instant::now();
    let mut next = 0;
    let mut done = 0;
    while done < files.len() {
        // Keep the window full.
        while next < files.len() && waiting.len() < concurrency.max(1) {
            let i = next;
            next += 1;
            match submit_one(client, &files[i], input, &options_hash).await {
                Ok(job) if job.state.is_terminal() => {
                    results[i].skipped = job.state == JobState::Succeeded;
                    results[i].job = Some(job);
                    done += 1;
                    bar.inc(1);
                }
                Ok(job) => waiting.push_back((i, job.id)),
                Err(e) => {
                    results[i].error = Some(format!("{e:#}"));
                    done += 1;
                    bar.inc(1);
                }
            }
        }
        let Some((i, id)) = waiting.pop_front() else {
            continue;
        };
        let job = client.wait(id, Duration::from_millis(500)).await?;
        if job.state.is_terminal() {
            results[i].job = Some(job);
            done += 1;
            bar.inc(1);
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!("{rate:.1} songs/s"));
        } else {
            waiting.push_back((i, id));
        }
    }
    Ok(results)
}

async fn submit_one(
    client: &Client,
    path: &Path,
    input: &serde_json::Value,
    options_hash: &str,
) -> anyhow::Result<Job> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let sha256 = Sha256::digest(&bytes);
    let content = hex::encode(sha256);
    let idempotency_key = format!("ingest:{content}:{options_hash}");
    // Submitted by an earlier run: its job answers, and the song is not uploaded again.
    let earlier = client
        .list_jobs(&JobFilter {
            idempotency_key: Some(idempotency_key.clone()),
            ..JobFilter::default()
        })
        .await?;
    if let Some(job) = earlier.jobs.into_iter().next() {
        return Ok(job);
    }
    let key = upload_hashed(client, path, &sha256).await?;
    let spec = JobSpec {
        function: "audio.ingest".into(),
        input: input.clone(),
        files: vec![key],
        priority: INGEST_PRIORITY,
        idempotency_key: Some(idempotency_key),
    };
    Ok(client.submit(&spec).await?)
}

pub(crate) fn progress_bar(len: usize, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} songs  {msg}  ETA {eta}",
        )
        .expect("the template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Prints one row per song: the analysis at a glance.
pub(crate) fn print_table(results: &[SongResult]) -> anyhow::Result<()> {
    outln!(
        "{:<28} {:>6} {:>7} {:>6}  {:<9} {:>13}  {:<16} {:>7}",
        "song",
        "dur",
        "LUFS",
        "BPM",
        "key",
        "chorus",
        "transcodes",
        "took"
    )?;
    for r in results {
        let name: String = r
            .path
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(28).collect())
            .unwrap_or_default();
        let Some(job) = r.job.as_ref().filter(|j| j.state == JobState::Succeeded) else {
            let why = r.error.clone().or_else(|| {
                r.job.as_ref().and_then(|j| {
                    j.error
                        .as_ref()
                        .map(|e| format!("{}: {}", e.code, e.message))
                })
            });
            outln!(
                "{name:<28} failed: {}",
                why.unwrap_or_else(|| "unknown".into())
            )?;
            continue;
        };
        let m = job.output.clone().unwrap_or_default();
        let num = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
        let clock = |s: f64| format!("{}:{:02}", (s / 60.0) as u32, (s % 60.0) as u32);
        let chorus = match (
            m["chorus"]["start_s"].as_f64(),
            m["chorus"]["end_s"].as_f64(),
        ) {
            (Some(a), Some(b)) => format!("{}-{}", clock(a), clock(b)),
            _ => "-".into(),
        };
        let transcodes: Vec<String> = m["outputs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["format"].as_str().map(String::from))
            .collect();
        let took = job
            .attempts
            .last()
            .and_then(|a| a.finished_at_ms.map(|f| f.saturating_sub(a.started_at_ms)))
            .map_or("-".into(), |ms| format!("{:.2}s", ms as f64 / 1000.0));
        let took = if r.skipped {
            "skipped".to_string()
        } else {
            took
        };
        outln!(
            "{name:<28} {:>6} {:>7} {:>6}  {:<9} {:>13}  {:<16} {:>7}",
            m["duration_s"].as_f64().map_or("-".into(), clock),
            num(&m["loudness"]["integrated_lufs"]),
            num(&m["tempo"]["bpm"]),
            m["key"]["name"].as_str().unwrap_or("-"),
            chorus,
            if transcodes.is_empty() {
                "-".into()
            } else {
                transcodes.join(",")
            },
            took
        )?;
    }
    Ok(())
}

pub(crate) async fn ingest(args: IngestArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let files = find_audio(&args.dir)?;
    anyhow::ensure!(
        !files.is_empty(),
        "no audio files under {}",
        args.dir.display()
    );
    let mut input = serde_json::json!({ "outputs": parse_outputs(&args.to)? });
    if let Some(lufs) = args.normalize {
        input["normalize_lufs"] = lufs.into();
    }
    let bar = progress_bar(files.len(), args.conn.json);
    let results = run(&client, &files, &input, args.concurrency, &bar).await?;
    bar.finish_and_clear();
    let failed: Vec<&SongResult> = results
        .iter()
        .filter(|r| {
            r.job
                .as_ref()
                .is_none_or(|j| j.state != JobState::Succeeded)
        })
        .collect();
    let skipped = results.iter().filter(|r| r.skipped).count();
    if args.conn.json {
        let rows: Vec<serde_json::Value> = results
            .iter()
            .map(|r| serde_json::json!({ "file": r.path, "job": r.job, "skipped": r.skipped, "error": r.error }))
            .collect();
        outln!("{}", serde_json::json!({ "results": rows }))?;
    } else {
        print_table(&results)?;
        outln!(
            "\n{} done ({} skipped as already done), {} failed",
            results.len() - failed.len(),
            skipped,
            failed.len()
        )?;
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

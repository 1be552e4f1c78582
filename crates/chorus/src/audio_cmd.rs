//! `chorus analyze` and `chorus transcode`: the audio engine on local files,
//! no server needed. Same code path as the `audio.*` built-in functions.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::Context;
use audio::ingest::{self, Plan};
use audio::manifest::Manifest;
use audio::request::{self, Request};

/// Analyse audio files: loudness, tempo, key, chorus, sections, fingerprint.
#[derive(Debug, clap::Args)]
pub(crate) struct AnalyzeArgs {
    /// Audio files (any format symphonia or libopus decodes).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Print one JSON object per file (JSON lines, in input order).
    #[arg(long)]
    json: bool,
    /// Files analysed at once (default: one per core).
    #[arg(long)]
    jobs: Option<usize>,
}

/// Transcode one file to several formats from a single decode.
#[derive(Debug, clap::Args)]
pub(crate) struct TranscodeArgs {
    /// The source audio file.
    file: PathBuf,
    /// Outputs, e.g. "opus:96k,mp3:320k,flac,wav:24bit" (also :q0-9, :mono, :22050hz).
    #[arg(long)]
    to: String,
    /// Normalise the outputs to this loudness in LUFS (peaks kept under -1 dBTP).
    #[arg(long, allow_hyphen_values = true)]
    normalize: Option<f64>,
    /// Output directory (default: the current directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the manifest as JSON.
    #[arg(long)]
    json: bool,
}

/// One file's result: the manifest, or the error code and message.
type Outcome = Result<Manifest, (String, String)>;

pub(crate) fn analyze(args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = args.jobs.unwrap_or(cores).clamp(1, args.files.len().max(1));
    // The waveform peaks are for players, not for a terminal.
    let plan = Plan {
        waveform: false,
        ..Plan::everything(Vec::new())
    };
    let request = Request::default();
    let progress = indicatif::ProgressBar::new(args.files.len() as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} files, {elapsed} elapsed, ETA {eta}",
        )
        .context("progress template")?,
    );
    if args.files.len() < 2 {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; args.files.len()]);
    // Files are shared out to one thread per core; each analysis is single-threaded.
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(path) = args.files.get(index) else {
                    break;
                };
                let outcome = ingest::run(path, &plan, &request, None)
                    .map(|(manifest, _)| manifest)
                    .map_err(|err| (err.code().to_string(), err.to_string()));
                results.lock().expect("no panics while holding the lock")[index] = Some(outcome);
                progress.inc(1);
            });
        }
    });
    progress.finish_and_clear();
    let results = results.into_inner().expect("threads joined");
    let mut failures = 0;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !args.json {
        writeln!(out, "{}", table_header()).map_err(crate::stdout_error)?;
    }
    for (path, outcome) in args.files.iter().zip(results) {
        match outcome.expect("every file was processed") {
            Ok(manifest) if args.json => writeln!(out, "{}", serde_json::to_string(&manifest)?)
                .map_err(crate::stdout_error)?,
            Ok(manifest) => {
                writeln!(out, "{}", table_row(&manifest)).map_err(crate::stdout_error)?
            }
            Err((code, message)) => {
                failures += 1;
                if args.json {
                    let line = serde_json::json!({"source": path, "error": {"code": code, "message": message}});
                    writeln!(out, "{line}").map_err(crate::stdout_error)?;
                }
                eprintln!("{}: {message} ({code})", path.display());
            }
        }
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn table_header() -> String {
    format!(
        "{:<32} {:>8} {:>7} {:>6} {:>7} {:>7}  {:<9} {:<15} {:>5}",
        "file", "duration", "LUFS", "LRA", "peak", "BPM", "key", "chorus", "conf"
    )
}

fn table_row(m: &Manifest) -> String {
    let dash = || "-".to_string();
    let fmt = |v: Option<f64>, decimals: usize| v.map_or_else(dash, |v| format!("{v:.decimals$}"));
    let loudness = m.loudness.as_ref();
    let chorus = m.chorus.as_ref().and_then(|c| c.as_ref());
    let mut name = m.source.clone();
    if name.chars().count() > 32 {
        name = name.chars().take(31).collect::<String>() + "…";
    }
    format!(
        "{:<32} {:>8} {:>7} {:>6} {:>7} {:>7}  {:<9} {:<15} {:>5}",
        name,
        m.duration_s.map_or_else(dash, clock),
        fmt(loudness.and_then(|l| l.integrated_lufs), 1),
        fmt(loudness.map(|l| l.range_lu), 1),
        fmt(loudness.and_then(|l| l.true_peak_dbtp), 1),
        fmt(m.tempo.as_ref().and_then(|t| t.as_ref()).map(|t| t.bpm), 1),
        m.key
            .as_ref()
            .and_then(|k| k.as_ref())
            .map_or_else(dash, |k| k.name.clone()),
        chorus.map_or_else(dash, |c| format!("{}-{}", clock(c.start_s), clock(c.end_s))),
        fmt(chorus.map(|c| c.confidence), 2),
    )
}

/// Seconds as m:ss.
fn clock(seconds: f64) -> String {
    let whole = seconds.max(0.0).round() as u64;
    format!("{}:{:02}", whole / 60, whole % 60)
}

pub(crate) fn transcode(args: TranscodeArgs) -> anyhow::Result<ExitCode> {
    let outputs = request::parse_outputs(&args.to).map_err(|err| anyhow::anyhow!("--to: {err}"))?;
    anyhow::ensure!(!outputs.is_empty(), "--to names no output");
    let request = Request {
        outputs,
        normalize_lufs: args.normalize,
        ..Request::default()
    };
    // The same JSON the worker receives, validated the same way.
    let input = serde_json::to_value(&request)?;
    let request = Request::parse(&input).map_err(|err| anyhow::anyhow!("{err}"))?;
    let out_dir = args.out.unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let plan = Plan {
        targets: request.targets().map_err(|err| anyhow::anyhow!("{err}"))?,
        ..Plan::default()
    };
    match ingest::run(&args.file, &plan, &request, Some(&out_dir)) {
        Ok((manifest, _)) if args.json => outln!("{}", serde_json::to_string_pretty(&manifest)?)?,
        Ok((manifest, _)) => {
            for output in manifest.outputs.unwrap_or_default() {
                outln!(
                    "{}  {} {} Hz {} ch{}{}  {} bytes",
                    out_dir.join(&output.file).display(),
                    output.format,
                    output.sample_rate_hz,
                    output.channels,
                    output
                        .bitrate_kbps
                        .map_or_else(String::new, |k| format!(" {k} kbps")),
                    if output.gain_db != 0.0 {
                        format!(" gain {:+.2} dB", output.gain_db)
                    } else {
                        String::new()
                    },
                    output.bytes
                )?;
            }
        }
        Err(err) => {
            eprintln!("{}: {err} ({})", args.file.display(), err.code());
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

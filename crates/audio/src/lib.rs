//! Audio IO for chorus: decode, probe, fingerprint, transcode, waveform
//! pictures and ingest, exposed as the built-in `audio.*` functions.
//!
//! Architecture invariant: this crate owns every audio file format; the pure
//! signal processing lives in `dsp` and this crate never re-implements it.
//! The worker (through [`execute`]) and the local CLI (through [`ingest::run`])
//! share one code path, and one decode per job. Input JSON for each function
//! is documented in the crate README.

pub mod decode;
mod error;
pub mod fingerprint;
pub mod ingest;
pub mod manifest;
pub mod picture;
pub mod request;
pub mod transcode;

use std::path::{Path, PathBuf};

pub use error::AudioError;
use ingest::Plan;
use request::Request;

/// Names of the built-in audio functions.
pub const FUNCTIONS: &[&str] = &[
    "audio.probe",
    "audio.loudness",
    "audio.features",
    "audio.chorus",
    "audio.waveform",
    "audio.fingerprint",
    "audio.transcode",
    "audio.ingest",
];

/// One call of an audio function, as the worker hands it over.
#[derive(Debug)]
pub struct Task<'a> {
    pub function: &'a str,
    pub input: &'a serde_json::Value,
    /// Local copies of the job's input objects, in order; the first is the audio.
    pub files: &'a [PathBuf],
    /// Output files are written here.
    pub out_dir: &'a Path,
}

/// The result of an audio function.
#[derive(Debug)]
pub struct Output {
    pub json: serde_json::Value,
    /// Files written, relative to the task's `out_dir`.
    pub files: Vec<PathBuf>,
}

/// Runs one audio function.
pub fn execute(task: Task<'_>) -> Result<Output, AudioError> {
    let request = Request::parse(task.input)?;
    let plan = plan_for(task.function, &request)?;
    let [path, ..] = task.files else {
        return Err(AudioError::InvalidInput(format!(
            "{} needs an input file",
            task.function
        )));
    };
    let (manifest, files) = ingest::run(path, &plan, &request, Some(task.out_dir))?;
    let json = serde_json::to_value(&manifest)
        .map_err(|err| AudioError::InvalidInput(format!("manifest: {err}")))?;
    if task.function == "audio.ingest" {
        let name = "manifest.json";
        let path = task.out_dir.join(name);
        let text = serde_json::to_vec_pretty(&json)
            .map_err(|err| AudioError::InvalidInput(err.to_string()))?;
        std::fs::write(&path, text).map_err(|err| AudioError::io(&path, err))?;
        let mut files = files;
        files.push(PathBuf::from(name));
        return Ok(Output { json, files });
    }
    Ok(Output { json, files })
}

fn plan_for(function: &str, request: &Request) -> Result<Plan, AudioError> {
    let only = Plan::default();
    Ok(match function {
        "audio.probe" => only,
        "audio.loudness" => Plan {
            loudness: true,
            ..only
        },
        "audio.features" => Plan {
            features: true,
            ..only
        },
        "audio.chorus" => Plan {
            chorus: true,
            ..only
        },
        "audio.waveform" => Plan {
            waveform: true,
            chorus: request.png.unwrap_or(true),
            ..only
        },
        "audio.fingerprint" => Plan {
            fingerprint: true,
            ..only
        },
        "audio.transcode" => {
            if request.outputs.is_empty() {
                return Err(AudioError::InvalidInput(
                    "audio.transcode needs at least one output".into(),
                ));
            }
            Plan {
                targets: request.targets()?,
                ..only
            }
        }
        "audio.ingest" => Plan::everything(request.targets()?),
        other => return Err(AudioError::UnknownFunction(other.to_string())),
    })
}

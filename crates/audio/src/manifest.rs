//! The wire JSON of the audio functions: one manifest shape, each function
//! filling the parts it computes. Field names carry their units.

use std::collections::BTreeMap;

use serde::Serialize;

/// Everything known about one input file. Absent parts are omitted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Manifest {
    /// Manifest schema version, bumped on incompatible changes.
    pub version: u32,
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loudness: Option<LoudnessJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tempo: Option<Option<TempoJson>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beats_s: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Option<KeyJson>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spectral: Option<SpectralJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfcc: Option<MfccJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chroma_mean: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onset_rate_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chorus: Option<Option<ChorusJson>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sections: Option<Vec<SectionJson>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview_start_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waveform: Option<WaveformJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<OutputJson>>,
    /// Wall time per stage, for capacity planning.
    pub timings_ms: BTreeMap<&'static str, f64>,
    /// CPU time of the working thread per stage: unlike wall time, it does
    /// not grow when other processes share the core.
    pub cpu_ms: BTreeMap<&'static str, f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeJson {
    pub container: String,
    pub codec: String,
    pub duration_s: Option<f64>,
    pub sample_rate_hz: u32,
    pub channels: usize,
    pub bits_per_sample: Option<u32>,
    pub bit_rate_kbps: Option<f64>,
    pub file_bytes: u64,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoudnessJson {
    /// `null` for silence (everything gated away).
    pub integrated_lufs: Option<f64>,
    pub range_lu: f64,
    pub true_peak_dbtp: Option<f64>,
    pub sample_peak_dbfs: Option<f64>,
    pub target_lufs: f64,
    /// Gain to reach the target (not peak-limited); `null` for silence.
    pub gain_db: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TempoJson {
    pub bpm: f64,
    pub confidence: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyJson {
    /// e.g. "A minor".
    pub name: String,
    pub tonic: String,
    pub mode: String,
    pub confidence: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpectralJson {
    pub centroid_hz: f64,
    pub rolloff_hz: f64,
    pub bandwidth_hz: f64,
    pub flatness: f64,
    pub zcr: f64,
    pub rms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MfccJson {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChorusJson {
    pub start_s: f64,
    pub end_s: f64,
    pub confidence: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SectionJson {
    pub label: String,
    pub start_s: f64,
    pub end_s: f64,
    pub is_chorus: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct WaveformJson {
    pub points: usize,
    /// `[min, max]` per point, in [-1, 1].
    pub peaks: Vec<[f32; 2]>,
    /// Path of the picture relative to the output directory, if drawn.
    pub png: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputJson {
    pub format: String,
    /// Path relative to the output directory.
    pub file: String,
    pub bytes: u64,
    pub sample_rate_hz: u32,
    pub channels: usize,
    pub bitrate_kbps: Option<u32>,
    pub gain_db: f64,
}

/// Rounds for the wire: milliseconds are plenty for times, hundredths for dB.
pub(crate) fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

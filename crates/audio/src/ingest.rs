//! One decode feeding every requested analysis and transcode.
//!
//! Every audio function is a [`Plan`] over the same pipeline, so the worker
//! and the CLI share one code path:
//! 1. probe the container (all a bare `audio.probe` needs);
//! 2. decode once (only the first 120 s when the fingerprint is all that is asked);
//! 3. loudness on the native channels and rate;
//! 4. downmix and resample once to the analysis rate; one STFT feeds
//!    features and chorus detection;
//! 5. waveform peaks and picture, fingerprint, transcodes from the same samples;
//! 6. the manifest gathers what was computed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use dsp::analysis::Analysis;
use dsp::loudness::{Loudness, TARGET_DEFAULT_LUFS};

use crate::decode::{self, Decoded, Info};
use crate::manifest::*;
use crate::request::{Request, PNG_HEIGHT_DEFAULT, WAVEFORM_POINTS_DEFAULT};
use crate::transcode::{self, Normalize, Target};
use crate::{fingerprint, picture, AudioError};

/// Manifest schema version.
pub const MANIFEST_VERSION: u32 = 1;
/// File name of the waveform picture in the output directory.
pub const WAVEFORM_PNG: &str = "waveform.png";

/// Which stages to run.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub loudness: bool,
    pub features: bool,
    pub chorus: bool,
    pub waveform: bool,
    pub fingerprint: bool,
    /// Transcode outputs (need an output directory).
    pub targets: Vec<Target>,
}

impl Plan {
    /// Everything: what `audio.ingest` and `chorus analyze` run.
    pub fn everything(targets: Vec<Target>) -> Plan {
        Plan {
            loudness: true,
            features: true,
            chorus: true,
            waveform: true,
            fingerprint: true,
            targets,
        }
    }

    fn needs_analysis(&self) -> bool {
        self.features || self.chorus || self.waveform
    }

    fn needs_decode(&self) -> bool {
        self.loudness || self.needs_analysis() || self.fingerprint || !self.targets.is_empty()
    }
}

/// Runs `plan` on `path`; output files go to `out_dir` (required for
/// transcodes and pictures). Returns the manifest and the files written,
/// relative to `out_dir`.
pub fn run(
    path: &Path,
    plan: &Plan,
    request: &Request,
    out_dir: Option<&Path>,
) -> Result<(Manifest, Vec<PathBuf>), AudioError> {
    let mut timings_ms: BTreeMap<&'static str, f64> = BTreeMap::new();
    let mut cpu_ms: BTreeMap<&'static str, f64> = BTreeMap::new();
    let mut clock = Instant::now();
    let mut cpu_clock_ms = thread_cpu_ms();
    let mut lap = |name: &'static str, timings: &mut BTreeMap<&'static str, f64>| {
        timings.insert(name, round_to(clock.elapsed().as_secs_f64() * 1000.0, 1));
        clock = Instant::now();
        let now_ms = thread_cpu_ms();
        cpu_ms.insert(name, round_to(now_ms - cpu_clock_ms, 1));
        cpu_clock_ms = now_ms;
    };
    let mut manifest = Manifest {
        version: MANIFEST_VERSION,
        source: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        ..Manifest::default()
    };
    let mut files = Vec::new();
    if !plan.needs_decode() {
        let info = decode::probe(path)?;
        let duration_s = info
            .frames_declared
            .filter(|_| info.rate_hz > 0)
            .map(|f| f as f64 / f64::from(info.rate_hz));
        manifest.duration_s = duration_s.map(|d| round_to(d, 3));
        manifest.probe = Some(probe_json(&info, duration_s));
        lap("probe", &mut timings_ms);
        manifest.timings_ms = timings_ms;
        manifest.cpu_ms = cpu_ms;
        return Ok((manifest, files));
    }
    let fingerprint_only =
        plan.fingerprint && !plan.loudness && !plan.needs_analysis() && plan.targets.is_empty();
    // A second more than the fingerprint covers: its filter reads past the end.
    let limit_s = fingerprint_only.then_some(fingerprint::FINGERPRINT_LEN_S + 1.0);
    let decoded = decode::decode(path, limit_s)?;
    lap("decode", &mut timings_ms);
    let duration_s = decoded.duration_s();
    manifest.duration_s = Some(round_to(duration_s, 3));
    manifest.probe = Some(probe_json(
        &decoded.info,
        (!fingerprint_only).then_some(duration_s),
    ));

    let needs_loudness = plan.loudness || request.normalize_lufs.is_some();
    let loudness = if needs_loudness {
        let measured = dsp::loudness::measure(&decoded.samples, decoded.channels, decoded.rate_hz)?;
        lap("loudness", &mut timings_ms);
        Some(measured)
    } else {
        None
    };
    if plan.loudness {
        if let Some(measured) = &loudness {
            manifest.loudness = Some(loudness_json(
                measured,
                request.target_lufs.unwrap_or(TARGET_DEFAULT_LUFS),
            ));
        }
    }

    // One downmix serves the analysis signal and the fingerprint.
    let mixed = if plan.needs_analysis() || plan.fingerprint {
        let mixed = dsp::mono::downmix(&decoded.samples, decoded.channels)?;
        lap("downmix", &mut timings_ms);
        Some(mixed)
    } else {
        None
    };
    if let Some(mixed) = mixed.as_ref().filter(|_| plan.needs_analysis()) {
        let signal = dsp::mono::analysis_resample(mixed, decoded.rate_hz, dsp::ANALYSIS_RATE_HZ)?;
        lap("resample", &mut timings_ms);
        let analysis = if plan.features || plan.chorus {
            let analysis = dsp::analysis::analyze_with_laps(&signal, &mut |stage| {
                lap(stage, &mut timings_ms)
            })?;
            Some(analysis)
        } else {
            None
        };
        if let Some(analysis) = &analysis {
            if plan.features {
                fill_features(&mut manifest, analysis, request.beats.unwrap_or(true));
            }
            if plan.chorus {
                fill_chorus(&mut manifest, analysis);
            }
        }
        if plan.waveform {
            let waveform = waveform(
                &signal.samples,
                duration_s,
                analysis.as_ref(),
                request,
                out_dir,
            )?;
            if let Some(png) = &waveform.png {
                files.push(PathBuf::from(png));
            }
            manifest.waveform = Some(waveform);
            lap("waveform", &mut timings_ms);
        }
    }

    if let Some(mixed) = mixed.as_ref().filter(|_| plan.fingerprint) {
        let print = fingerprint::fingerprint_with_mix(
            &decoded.samples,
            decoded.channels,
            decoded.rate_hz,
            Some(mixed),
        )?;
        manifest.fingerprint = Some(print.encoded);
        lap("fingerprint", &mut timings_ms);
    }

    if !plan.targets.is_empty() {
        let out_dir = out_dir.ok_or_else(|| {
            AudioError::InvalidInput("transcodes need an output directory".into())
        })?;
        let normalize = match (request.normalize_lufs, &loudness) {
            (Some(target_lufs), Some(source)) => Some(Normalize {
                target_lufs,
                source,
            }),
            _ => None,
        };
        let outputs = transcodes(
            &decoded,
            &plan.targets,
            normalize,
            out_dir,
            &manifest.source,
        )?;
        files.extend(outputs.iter().map(|o| PathBuf::from(&o.file)));
        manifest.outputs = Some(outputs);
        lap("transcode", &mut timings_ms);
    }
    manifest.timings_ms = timings_ms;
    manifest.cpu_ms = cpu_ms;
    Ok((manifest, files))
}

/// CPU time consumed by the calling thread, in milliseconds.
fn thread_cpu_ms() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the clock id is a constant
    // every supported Unix provides. On failure the fields stay zero.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 * 1000.0 + now.tv_nsec as f64 / 1e6
}

fn probe_json(info: &Info, duration_s: Option<f64>) -> ProbeJson {
    let bit_rate_kbps = duration_s
        .filter(|&d| d > 0.0)
        .map(|d| round_to(info.file_len as f64 * 8.0 / d / 1000.0, 1));
    ProbeJson {
        container: info.container.clone(),
        codec: info.codec.clone(),
        duration_s: duration_s.map(|d| round_to(d, 3)),
        sample_rate_hz: info.rate_hz,
        channels: info.channels,
        bits_per_sample: info.bits_per_sample,
        bit_rate_kbps,
        file_bytes: info.file_len,
        tags: info
            .tags
            .iter()
            .map(|t| (t.key.clone(), t.value.clone()))
            .collect(),
    }
}

fn loudness_json(loudness: &Loudness, target_lufs: f64) -> LoudnessJson {
    let db = |v: Option<f64>| v.map(|v| round_to(v, 2));
    LoudnessJson {
        integrated_lufs: db(loudness.integrated_lufs),
        range_lu: round_to(loudness.range_lu, 2),
        true_peak_dbtp: db(loudness.true_peak_dbtp),
        sample_peak_dbfs: db(loudness.sample_peak_dbfs),
        target_lufs,
        gain_db: db(loudness.gain_to_db(target_lufs)),
    }
}

fn fill_features(manifest: &mut Manifest, analysis: &Analysis, with_beats: bool) {
    manifest.tempo = Some(analysis.tempo.as_ref().map(|t| TempoJson {
        bpm: round_to(t.bpm, 2),
        confidence: round_to(t.confidence, 3),
    }));
    if with_beats {
        manifest.beats_s = Some(analysis.beats_s.iter().map(|&b| round_to(b, 3)).collect());
    }
    manifest.key = Some(analysis.key.as_ref().map(|k| KeyJson {
        name: k.name(),
        tonic: dsp::key::PITCH_CLASSES[k.tonic].to_string(),
        mode: k.mode.as_str().to_string(),
        confidence: round_to(k.confidence, 3),
    }));
    let s = &analysis.spectral;
    manifest.spectral = Some(SpectralJson {
        centroid_hz: round_to(s.centroid_hz, 1),
        rolloff_hz: round_to(s.rolloff_hz, 1),
        bandwidth_hz: round_to(s.bandwidth_hz, 1),
        flatness: round_to(s.flatness, 5),
        zcr: round_to(s.zcr, 5),
        rms: round_to(s.rms, 5),
    });
    manifest.mfcc = Some(MfccJson {
        mean: analysis.mfcc_mean.iter().map(|&v| round_to(v, 3)).collect(),
        std: analysis.mfcc_std.iter().map(|&v| round_to(v, 3)).collect(),
    });
    manifest.chroma_mean = Some(
        analysis
            .chroma_mean
            .iter()
            .map(|&v| round_to(v, 4))
            .collect(),
    );
    manifest.onset_rate_per_s = Some(round_to(analysis.onset_rate_per_s, 3));
}

fn fill_chorus(manifest: &mut Manifest, analysis: &Analysis) {
    let structure = &analysis.structure;
    manifest.chorus = Some(structure.chorus.as_ref().map(|c| ChorusJson {
        start_s: round_to(c.start_s, 3),
        end_s: round_to(c.end_s, 3),
        confidence: round_to(c.confidence, 3),
    }));
    manifest.sections = Some(
        structure
            .sections
            .iter()
            .map(|s| SectionJson {
                label: s.label.clone(),
                start_s: round_to(s.start_s, 3),
                end_s: round_to(s.end_s, 3),
                is_chorus: s.is_chorus,
            })
            .collect(),
    );
    manifest.preview_start_s = Some(round_to(structure.preview_start_s, 3));
}

fn waveform(
    mono: &[f32],
    duration_s: f64,
    analysis: Option<&Analysis>,
    request: &Request,
    out_dir: Option<&Path>,
) -> Result<WaveformJson, AudioError> {
    let points = request.points.unwrap_or(WAVEFORM_POINTS_DEFAULT);
    let peaks = dsp::waveform::peaks(mono, points)?;
    let draw = request.png.unwrap_or(true) && out_dir.is_some();
    let png = if draw {
        let shaded: Vec<(f64, f64)> = analysis
            .map(|a| {
                a.structure
                    .sections
                    .iter()
                    .filter(|s| s.is_chorus)
                    .map(|s| (s.start_s, s.end_s))
                    .collect()
            })
            .unwrap_or_default();
        let height = request.png_height.unwrap_or(PNG_HEIGHT_DEFAULT);
        let bytes = picture::render(&peaks, height, duration_s, &shaded)?;
        let dir = out_dir.expect("checked above");
        let path = dir.join(WAVEFORM_PNG);
        std::fs::write(&path, bytes).map_err(|err| AudioError::io(&path, err))?;
        Some(WAVEFORM_PNG.to_string())
    } else {
        None
    };
    Ok(WaveformJson {
        points,
        peaks: peaks
            .iter()
            .map(|p| [round_f32(p.min), round_f32(p.max)])
            .collect(),
        png,
    })
}

fn round_f32(value: f32) -> f32 {
    (value * 10_000.0).round() / 10_000.0
}

fn transcodes(
    decoded: &Decoded,
    targets: &[Target],
    normalize: Option<Normalize<'_>>,
    out_dir: &Path,
    source: &str,
) -> Result<Vec<OutputJson>, AudioError> {
    let stem = Path::new(source)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "audio".to_string());
    let mut outputs: Vec<OutputJson> = Vec::new();
    for target in targets {
        let mut name = match target.bitrate_kbps {
            Some(kbps) => format!("{stem}.{kbps}k.{}", target.format.extension()),
            None => format!("{stem}.{}", target.format.extension()),
        };
        if outputs.iter().any(|o| o.file == name) {
            name = format!("{stem}.{}.{}", outputs.len(), target.format.extension());
        }
        let written = transcode::transcode(decoded, target, normalize, &out_dir.join(&name))?;
        outputs.push(OutputJson {
            format: written.format.name().to_string(),
            file: name,
            bytes: written.bytes,
            sample_rate_hz: written.rate_hz,
            channels: written.channels,
            bitrate_kbps: written.bitrate_kbps,
            gain_db: round_to(written.gain_db, 2),
        });
    }
    Ok(outputs)
}

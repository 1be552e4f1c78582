//! The shared analysis pipeline: one STFT feeds every feature and the chorus.
//!
//! Loudness is not here on purpose: it must see the original channels at the
//! original rate (see [`crate::loudness`]).

use crate::chorus::{self, Structure};
use crate::key::{self, Key};
use crate::mono::Mono;
use crate::spectral::{self, FrameFeatures, Spectral, MFCC_LEN};
use crate::stft;
use crate::tempo::{self, Tempo};
use crate::{onset, DspError, FFT_LEN, HOP_LEN};

/// Everything the analysis pipeline reports about one song.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub duration_s: f64,
    pub tempo: Option<Tempo>,
    pub beats_s: Vec<f64>,
    pub key: Option<Key>,
    pub spectral: Spectral,
    pub mfcc_mean: [f64; MFCC_LEN],
    pub mfcc_std: [f64; MFCC_LEN],
    /// Mean chroma, C first, each frame normalised to a maximum of 1.
    pub chroma_mean: [f64; 12],
    pub onset_rate_per_s: f64,
    pub structure: Structure,
}

/// Runs features and chorus detection on the analysis signal.
pub fn analyze(signal: &Mono) -> Result<Analysis, DspError> {
    analyze_with_laps(signal, &mut |_| {})
}

/// [`analyze`], calling `lap` with each stage's name as it completes
/// ("spectrum", "rhythm", "chorus"), so callers can time the stages
/// without this crate reading a clock.
pub fn analyze_with_laps(
    signal: &Mono,
    lap: &mut dyn FnMut(&'static str),
) -> Result<Analysis, DspError> {
    if signal.rate_hz == 0 {
        return Err(DspError::InvalidParameter("sample rate 0".into()));
    }
    let mut frames = FrameFeatures::new(signal.rate_hz, FFT_LEN);
    let spectrogram = stft::stft(signal, FFT_LEN, HOP_LEN, |magnitudes| {
        frames.push(magnitudes)
    });
    let (spectral, tracks) = frames.finish(&spectrogram, &signal.samples);
    let frame_rate_hz = f64::from(signal.rate_hz) / HOP_LEN as f64;
    let (mfcc_mean, mfcc_std) = spectral::mfcc_stats(&tracks.mel_db);
    lap("spectrum");
    let envelope = onset::strength(&tracks.mel_db, FFT_LEN, HOP_LEN, onset::Aggregate::Mean);
    let duration_s = signal.duration_s();
    let onset_rate_per_s = if duration_s > 0.0 {
        onset::detect(&envelope, frame_rate_hz).len() as f64 / duration_s
    } else {
        0.0
    };
    // Tempo and beats read the median envelope, as librosa's `beat_track` does.
    let beat_envelope = onset::strength(&tracks.mel_db, FFT_LEN, HOP_LEN, onset::Aggregate::Median);
    let tempo = tempo::estimate(&beat_envelope, frame_rate_hz);
    let beats_s = tempo
        .as_ref()
        .map(|t| tempo::beats(&beat_envelope, frame_rate_hz, t.bpm))
        .unwrap_or_default()
        .into_iter()
        .map(|frame| spectrogram.frame_s(frame))
        .collect();
    let mut chroma_mean = [0.0f64; 12];
    for frame in &tracks.chroma {
        for (sum, v) in chroma_mean.iter_mut().zip(frame) {
            *sum += f64::from(*v);
        }
    }
    let frames_len = tracks.chroma.len().max(1) as f64;
    chroma_mean.iter_mut().for_each(|v| *v /= frames_len);
    let key = key::estimate(&chroma_mean);
    lap("rhythm");
    let structure = chorus::detect(&tracks.chroma, &tracks.rms, frame_rate_hz);
    lap("chorus");
    Ok(Analysis {
        duration_s,
        tempo,
        beats_s,
        key,
        spectral,
        mfcc_mean,
        mfcc_std,
        chroma_mean,
        onset_rate_per_s,
        structure,
    })
}

//! Frame-level features from the shared STFT: spectral shape, ZCR, RMS, MFCC, chroma.
//!
//! Each follows librosa's default definition (magnitude spectrum for centroid,
//! bandwidth and roll-off; power for flatness, mel and chroma; 2048-sample
//! centred frames for ZCR and RMS) and is summarised by its mean over frames.

use crate::filterbank::{self, FilterBank};
use crate::stft::Spectrogram;

/// Mel bands (librosa `n_mels`).
pub const MELS_LEN: usize = 128;
/// MFCC coefficients reported.
pub const MFCC_LEN: usize = 13;
/// Fraction of spectral energy below the roll-off frequency (librosa `roll_percent`).
const ROLLOFF_FRACTION: f32 = 0.85;
/// Floor of power values in dB conversions and flatness (librosa `amin`).
const POWER_MIN: f32 = 1e-10;
/// Dynamic range kept by `power_to_db` (librosa `top_db`).
const DB_RANGE: f32 = 80.0;

/// Means over frames of the spectral shape features.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Spectral {
    pub centroid_hz: f64,
    pub rolloff_hz: f64,
    pub bandwidth_hz: f64,
    pub flatness: f64,
    pub zcr: f64,
    pub rms: f64,
}

/// Per-frame series that later stages (onsets, tempo, key, chorus) reuse.
#[derive(Debug, Clone)]
pub struct Tracks {
    /// Log-mel power spectrogram, `mel_db[frame][band]`.
    pub mel_db: Vec<Vec<f32>>,
    /// Chroma per frame, each normalised to a maximum of 1 (0 for silence), C first.
    pub chroma: Vec<[f32; 12]>,
    /// RMS per frame.
    pub rms: Vec<f32>,
}

/// Per-frame features accumulated as the STFT produces frames, so the
/// spectrogram itself (tens of megabytes for a song) is never stored.
#[derive(Debug)]
pub struct FrameFeatures {
    mel_bank: FilterBank,
    chroma_bank: FilterBank,
    freqs: Vec<f32>,
    sums: Spectral,
    mel_power: Vec<Vec<f32>>,
    chroma: Vec<[f32; 12]>,
    power: Vec<f32>,
}

impl FrameFeatures {
    /// Prepares the filter banks for an STFT of `fft_len` points at `rate_hz`.
    pub fn new(rate_hz: u32, fft_len: usize) -> FrameFeatures {
        let bins_len = fft_len / 2 + 1;
        FrameFeatures {
            mel_bank: filterbank::mel(rate_hz, fft_len, MELS_LEN),
            chroma_bank: filterbank::chroma(rate_hz, fft_len),
            freqs: (0..bins_len)
                .map(|b| b as f32 * rate_hz as f32 / fft_len as f32)
                .collect(),
            sums: Spectral::default(),
            mel_power: Vec::new(),
            chroma: Vec::new(),
            power: vec![0.0; bins_len],
        }
    }

    /// Takes the magnitudes of the next frame.
    pub fn push(&mut self, magnitudes: &[f32]) {
        for (p, m) in self.power.iter_mut().zip(magnitudes) {
            *p = m * m;
        }
        let shape = shape_of(magnitudes, &self.power, &self.freqs);
        self.sums.centroid_hz += shape.centroid_hz;
        self.sums.rolloff_hz += shape.rolloff_hz;
        self.sums.bandwidth_hz += shape.bandwidth_hz;
        self.sums.flatness += shape.flatness;
        let mut mel = vec![0.0f32; MELS_LEN];
        self.mel_bank.apply(&self.power, &mut mel);
        self.mel_power.push(mel);
        self.chroma.push(chroma_of(&self.chroma_bank, &self.power));
    }

    /// The spectral summary and the per-frame tracks, once every frame of
    /// `spectrogram` (computed from `samples`) has been pushed.
    pub fn finish(self, spectrogram: &Spectrogram, samples: &[f32]) -> (Spectral, Tracks) {
        describe(self, spectrogram, samples)
    }
}

fn describe(
    features: FrameFeatures,
    spectrogram: &Spectrogram,
    samples: &[f32],
) -> (Spectral, Tracks) {
    let FrameFeatures {
        sums,
        mel_power,
        chroma,
        ..
    } = features;
    let frames_len = spectrogram.frames_len;
    debug_assert_eq!(chroma.len(), frames_len, "every frame pushed");
    let (rms, zcr) = frame_rms_and_zcr(
        samples,
        spectrogram.fft_len,
        spectrogram.hop_len,
        frames_len,
    );
    let count = frames_len.max(1) as f64;
    let summary = Spectral {
        centroid_hz: sums.centroid_hz / count,
        rolloff_hz: sums.rolloff_hz / count,
        bandwidth_hz: sums.bandwidth_hz / count,
        flatness: sums.flatness / count,
        zcr: zcr.iter().map(|&v| f64::from(v)).sum::<f64>() / count,
        rms: rms.iter().map(|&v| f64::from(v)).sum::<f64>() / count,
    };
    let tracks = Tracks {
        mel_db: power_to_db(mel_power),
        chroma,
        rms,
    };
    (summary, tracks)
}

fn shape_of(magnitudes: &[f32], power: &[f32], freqs: &[f32]) -> Spectral {
    let total: f32 = magnitudes.iter().sum();
    let mut shape = Spectral::default();
    if total > 0.0 {
        let centroid: f32 = magnitudes
            .iter()
            .zip(freqs)
            .map(|(m, f)| m * f)
            .sum::<f32>()
            / total;
        let spread: f32 = magnitudes
            .iter()
            .zip(freqs)
            .map(|(m, f)| m * (f - centroid) * (f - centroid))
            .sum::<f32>()
            / total;
        let mut cumulative = 0.0;
        let threshold = ROLLOFF_FRACTION * total;
        let rolloff_bin = magnitudes
            .iter()
            .position(|m| {
                cumulative += m;
                cumulative >= threshold
            })
            .unwrap_or(magnitudes.len() - 1);
        shape.centroid_hz = f64::from(centroid);
        shape.bandwidth_hz = f64::from(spread.sqrt());
        shape.rolloff_hz = f64::from(freqs[rolloff_bin]);
    }
    // The geometric mean through logs of products of 16 values: one `ln` per
    // 16 bins instead of one per bin. Each value lies in [1e-10, 1e10], so a
    // product of 16 stays inside f64's range.
    let (mut log_sum, mut sum) = (0.0f64, 0.0f64);
    for chunk in power.chunks(16) {
        let mut product = 1.0f64;
        for &p in chunk {
            let p = f64::from(p.max(POWER_MIN));
            product *= p;
            sum += p;
        }
        log_sum += product.ln();
    }
    let n = power.len().max(1) as f64;
    shape.flatness = (log_sum / n).exp() / (sum / n);
    shape
}

fn chroma_of(bank: &FilterBank, power: &[f32]) -> [f32; 12] {
    let mut out = [0.0f32; 12];
    bank.apply(power, &mut out);
    let max = out.iter().copied().fold(0.0f32, f32::max);
    if max > POWER_MIN {
        out.iter_mut().for_each(|v| *v /= max);
    } else {
        out = [0.0; 12];
    }
    out
}

/// librosa `power_to_db(S, ref=1.0, amin=1e-10, top_db=80)`.
fn power_to_db(mut mel_power: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
    let mut max_db = f32::NEG_INFINITY;
    for frame in mel_power.iter_mut() {
        for v in frame.iter_mut() {
            *v = 10.0 * v.max(POWER_MIN).log10();
            max_db = max_db.max(*v);
        }
    }
    let floor_db = max_db - DB_RANGE;
    for frame in mel_power.iter_mut() {
        frame.iter_mut().for_each(|v| *v = v.max(floor_db));
    }
    mel_power
}

/// Sums of squares and zero crossings of each hop-long block of the signal.
/// A centred frame of `2 * half_hops` hops is the sum of that many blocks, so
/// each sample is read once however much the frames overlap.
fn hop_blocks(samples: &[f32], hop_len: usize) -> (Vec<f64>, Vec<u32>) {
    let mut squares = Vec::with_capacity(samples.len().div_ceil(hop_len));
    let mut crossings = Vec::with_capacity(squares.capacity());
    for (index, block) in samples.chunks(hop_len).enumerate() {
        let mut lanes = [0.0f32; 8];
        let mut chunks = block.chunks_exact(8);
        for chunk in &mut chunks {
            for (lane, &x) in lanes.iter_mut().zip(chunk) {
                *lane += x * x;
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|x| x * x).sum();
        squares.push(f64::from(lanes.iter().sum::<f32>() + tail));
        // A crossing at sample i (sign differs from sample i - 1) belongs to i's block.
        let first = index * hop_len;
        let before = first.checked_sub(1).map(|i| samples[i]);
        let mut count = 0u32;
        let mut previous = before;
        for &x in block {
            if previous.is_some_and(|p| p.is_sign_negative() != x.is_sign_negative()) {
                count += 1;
            }
            previous = Some(x);
        }
        crossings.push(count);
    }
    (squares, crossings)
}

/// librosa `feature.rms` and `feature.zero_crossing_rate` (frame
/// `frame_len`, centred, zero padding) for `frames_len` frames.
fn frame_rms_and_zcr(
    samples: &[f32],
    frame_len: usize,
    hop_len: usize,
    frames_len: usize,
) -> (Vec<f32>, Vec<f32>) {
    assert!(frame_len % (2 * hop_len) == 0, "frames span whole hops");
    let half_hops = frame_len / (2 * hop_len);
    let (squares, crossings) = hop_blocks(samples, hop_len);
    let mut rms = Vec::with_capacity(frames_len);
    let mut zcr = Vec::with_capacity(frames_len);
    for frame in 0..frames_len {
        let first = frame.saturating_sub(half_hops).min(squares.len());
        let end = (frame + half_hops).min(squares.len());
        let sum: f64 = squares[first..end].iter().sum();
        let count: u32 = crossings[first..end].iter().sum();
        rms.push((sum / frame_len as f64).sqrt() as f32);
        zcr.push(count as f32 / frame_len as f32);
    }
    (rms, zcr)
}

/// 13 MFCCs per frame (DCT-II, orthonormal, of the log-mel spectrogram):
/// returns the mean and standard deviation of each coefficient.
pub fn mfcc_stats(mel_db: &[Vec<f32>]) -> ([f64; MFCC_LEN], [f64; MFCC_LEN]) {
    let n = MELS_LEN as f64;
    let basis: Vec<Vec<f32>> = (0..MFCC_LEN)
        .map(|k| {
            let scale = if k == 0 {
                (1.0 / n).sqrt()
            } else {
                (2.0 / n).sqrt()
            };
            (0..MELS_LEN)
                .map(|m| {
                    let angle =
                        std::f64::consts::PI * k as f64 * (2.0 * m as f64 + 1.0) / (2.0 * n);
                    (scale * angle.cos()) as f32
                })
                .collect()
        })
        .collect();
    let mut sum = [0.0f64; MFCC_LEN];
    let mut sum_sq = [0.0f64; MFCC_LEN];
    for frame in mel_db {
        for (k, row) in basis.iter().enumerate() {
            let c = f64::from(row.iter().zip(frame).map(|(b, v)| b * v).sum::<f32>());
            sum[k] += c;
            sum_sq[k] += c * c;
        }
    }
    let count = mel_db.len().max(1) as f64;
    let mean: [f64; MFCC_LEN] = std::array::from_fn(|k| sum[k] / count);
    let std: [f64; MFCC_LEN] =
        std::array::from_fn(|k| (sum_sq[k] / count - mean[k] * mean[k]).max(0.0).sqrt());
    (mean, std)
}

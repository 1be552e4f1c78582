//! Sparse mel and chroma filter banks over STFT bins (librosa's definitions).
//!
//! Stored sparse because each bin feeds only a couple of mel bands: applying
//! them costs a few operations per bin instead of a dense matrix product.
//! The non-zero weights of a band are kept as runs of consecutive bins, so
//! applying a band is a few contiguous dot products, which vectorise.

/// Consecutive bins feeding one band.
#[derive(Debug, Clone)]
struct Run {
    band: usize,
    first_bin: usize,
    weights: Vec<f32>,
}

/// One filter bank: for each output band, the bins it reads and their weights.
#[derive(Debug, Clone)]
pub struct FilterBank {
    bands_len: usize,
    runs: Vec<Run>,
}

impl FilterBank {
    /// Builds a bank from each band's (bin, weight) pairs in increasing bin order.
    fn from_bands(bands: Vec<Vec<(usize, f32)>>) -> FilterBank {
        let mut runs: Vec<Run> = Vec::new();
        for (band, pairs) in bands.iter().enumerate() {
            for &(bin, weight) in pairs {
                match runs.last_mut() {
                    Some(run) if run.band == band && run.first_bin + run.weights.len() == bin => {
                        run.weights.push(weight)
                    }
                    _ => runs.push(Run {
                        band,
                        first_bin: bin,
                        weights: vec![weight],
                    }),
                }
            }
        }
        FilterBank {
            bands_len: bands.len(),
            runs,
        }
    }

    /// Number of output bands.
    pub fn bands_len(&self) -> usize {
        self.bands_len
    }

    /// Applies the bank to one frame of bin values.
    pub fn apply(&self, frame: &[f32], out: &mut [f32]) {
        out.iter_mut().for_each(|v| *v = 0.0);
        for run in &self.runs {
            let bins = &frame[run.first_bin..run.first_bin + run.weights.len()];
            out[run.band] += dot(&run.weights, bins);
        }
    }
}

/// Dot product in four lanes, so that long runs vectorise.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 4];
    let (a_chunks, b_chunks) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..4 {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

fn hz_to_mel(hz: f64) -> f64 {
    // Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz.
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= min_log_hz {
        min_log_mel + (hz / min_log_hz).ln() / logstep
    } else {
        hz / f_sp
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel {
        min_log_hz * (logstep * (mel - min_log_mel)).exp()
    } else {
        f_sp * mel
    }
}

/// librosa `filters.mel(sr, n_fft, n_mels, fmin=0, fmax=sr/2)` with Slaney norm.
pub fn mel(rate_hz: u32, fft_len: usize, mels_len: usize) -> FilterBank {
    let bins_len = fft_len / 2 + 1;
    let fmax = f64::from(rate_hz) / 2.0;
    let mel_max = hz_to_mel(fmax);
    let points: Vec<f64> = (0..mels_len + 2)
        .map(|i| mel_to_hz(mel_max * i as f64 / (mels_len + 1) as f64))
        .collect();
    let bin_hz = |bin: usize| bin as f64 * f64::from(rate_hz) / fft_len as f64;
    let bands = (0..mels_len)
        .map(|m| {
            let (lo, centre, hi) = (points[m], points[m + 1], points[m + 2]);
            let enorm = 2.0 / (hi - lo);
            (0..bins_len)
                .filter_map(|bin| {
                    let hz = bin_hz(bin);
                    let rising = (hz - lo) / (centre - lo);
                    let falling = (hi - hz) / (hi - centre);
                    let weight = rising.min(falling).max(0.0) * enorm;
                    (weight > 0.0).then_some((bin, weight as f32))
                })
                .collect()
        })
        .collect();
    FilterBank::from_bands(bands)
}

/// librosa `filters.chroma(sr, n_fft)`: Gaussian bumps per pitch class, each
/// bin's weights L2-normalised, weighted towards octave 5 (C0 = index 0).
pub fn chroma(rate_hz: u32, fft_len: usize) -> FilterBank {
    const CHROMA_LEN: usize = 12;
    const CENTRE_OCTAVE: f64 = 5.0;
    const OCTAVE_WIDTH: f64 = 2.0;
    // Weights below 1 % of a bin's strongest are dropped: they change chroma
    // by well under a percent and would triple the work.
    const WEIGHT_MIN: f64 = 1e-2;
    let bins_len = fft_len / 2 + 1;
    let n = CHROMA_LEN as f64;
    let a440_over_16 = 440.0 / 16.0;
    // Pitch of each bin in chroma units; bin 0 gets librosa's "1.5 octaves below bin 1".
    let mut pitch: Vec<f64> = (1..fft_len)
        .map(|k| n * (k as f64 * f64::from(rate_hz) / fft_len as f64 / a440_over_16).log2())
        .collect();
    pitch.insert(0, pitch[0] - 1.5 * n);
    let widths: Vec<f64> = (0..fft_len)
        .map(|k| {
            if k + 1 < fft_len {
                (pitch[k + 1] - pitch[k]).max(1.0)
            } else {
                1.0
            }
        })
        .collect();
    let mut weights = vec![[0.0f64; CHROMA_LEN]; bins_len];
    for (k, bin_weights) in weights.iter_mut().enumerate() {
        for (c, w) in bin_weights.iter_mut().enumerate() {
            let mut d = pitch[k] - c as f64;
            // Wrap the distance into [-6, 6) semitones.
            d = (d + n / 2.0 + 10.0 * n).rem_euclid(n) - n / 2.0;
            *w = (-0.5 * (2.0 * d / widths[k]).powi(2)).exp();
        }
        let norm = bin_weights.iter().map(|w| w * w).sum::<f64>().sqrt();
        let octave_weight = (-0.5 * ((pitch[k] / n - CENTRE_OCTAVE) / OCTAVE_WIDTH).powi(2)).exp();
        for w in bin_weights.iter_mut() {
            *w = if norm > 0.0 { *w / norm } else { 0.0 } * octave_weight;
        }
    }
    // librosa rolls so that index 0 is C rather than A (base_c=True): C is A + 3.
    let bands = (0..CHROMA_LEN)
        .map(|c| {
            let source = (c + 3) % 12;
            (0..bins_len)
                .filter_map(|k| {
                    let w = weights[k][source];
                    (w > WEIGHT_MIN).then_some((k, w as f32))
                })
                .collect()
        })
        .collect();
    FilterBank::from_bands(bands)
}

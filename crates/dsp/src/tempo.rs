//! Global tempo and beat times from the onset envelope.
//!
//! Tempo follows librosa's `feature.tempo` as `beat_track` calls it: the mean
//! autocorrelation tempogram (8 s windows) weighted by a log-normal prior
//! around 120 BPM. Beats follow librosa's `beat_track` (Ellis 2007 dynamic
//! programming, tightness 100). Both expect the median-aggregated onset
//! envelope (`onset::Aggregate::Median`), which `beat_track` uses: on the
//! mean envelope, loud accents in a few bands pull the tempo towards
//! melodic rhythms rather than the beat.

use realfft::RealFftPlanner;

use crate::stft::hann;

/// Autocorrelation window of the tempogram (librosa `feature.tempo`'s
/// `ac_size`: 8 s, i.e. 344 frames at 22050 Hz with hop 512).
const TEMPOGRAM_WINDOW_S: f64 = 8.0;
/// Hop between tempogram windows. librosa uses 1; the mean over windows barely
/// changes with 16 and it costs 16 times less.
const TEMPOGRAM_HOP_LEN: usize = 16;
/// Centre of the tempo prior (librosa `start_bpm`).
const PRIOR_BPM: f64 = 120.0;
/// Width of the tempo prior in octaves (librosa `std_bpm`).
const PRIOR_OCTAVES: f64 = 1.0;
/// Fastest tempo considered (librosa `max_tempo`).
const TEMPO_MAX_BPM: f64 = 320.0;
/// How strictly beats follow the tempo (librosa `tightness`).
const TIGHTNESS: f64 = 100.0;

/// Global tempo estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct Tempo {
    pub bpm: f64,
    /// Normalised autocorrelation at the chosen period, in [0, 1].
    pub confidence: f64,
}

/// Estimates the tempo from an onset envelope sampled at `frame_rate_hz`.
pub fn estimate(envelope: &[f32], frame_rate_hz: f64) -> Option<Tempo> {
    let window_len = (TEMPOGRAM_WINDOW_S * frame_rate_hz).floor().max(8.0) as usize;
    if envelope.len() < window_len / 4 || envelope.iter().all(|&v| v <= 0.0) {
        return None;
    }
    let fft_len = (2 * window_len).next_power_of_two();
    let mut planner = RealFftPlanner::<f64>::new();
    let forward = planner.plan_fft_forward(fft_len);
    let inverse = planner.plan_fft_inverse(fft_len);
    let mut input = forward.make_input_vec();
    let mut spectrum = forward.make_output_vec();
    let mut acf = inverse.make_output_vec();
    let window = hann(window_len);
    let mut mean_acf = vec![0.0f64; window_len];
    let mut windows_len = 0usize;
    let half = (window_len / 2) as isize;
    let mut centre = 0usize;
    while centre < envelope.len() {
        input.iter_mut().for_each(|v| *v = 0.0);
        for n in 0..window_len {
            let index = centre as isize - half + n as isize;
            if index >= 0 && (index as usize) < envelope.len() {
                input[n] = f64::from(envelope[index as usize] * window[n]);
            }
        }
        forward
            .process(&mut input, &mut spectrum)
            .expect("buffers sized by the plan");
        for c in spectrum.iter_mut() {
            *c = realfft::num_complex::Complex::new(c.norm_sqr(), 0.0);
        }
        inverse
            .process(&mut spectrum, &mut acf)
            .expect("buffers sized by the plan");
        let peak = acf[0];
        if peak > 0.0 {
            for (sum, value) in mean_acf.iter_mut().zip(&acf) {
                *sum += value / peak;
            }
        }
        windows_len += 1;
        centre += TEMPOGRAM_HOP_LEN;
    }
    for value in mean_acf.iter_mut() {
        *value /= windows_len as f64;
    }
    let mut best: Option<(usize, f64)> = None;
    for (lag, &strength) in mean_acf.iter().enumerate().skip(1) {
        let bpm = 60.0 * frame_rate_hz / lag as f64;
        if bpm > TEMPO_MAX_BPM {
            continue;
        }
        let log_prior = -0.5 * ((bpm.log2() - PRIOR_BPM.log2()) / PRIOR_OCTAVES).powi(2);
        let score = (1e6 * strength.max(0.0)).ln_1p() + log_prior;
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((lag, score));
        }
    }
    let (lag, _) = best?;
    Some(Tempo {
        bpm: 60.0 * frame_rate_hz / lag as f64,
        confidence: mean_acf[lag].clamp(0.0, 1.0),
    })
}

/// Beat frames for a tempo, by dynamic programming over the onset envelope.
pub fn beats(envelope: &[f32], frame_rate_hz: f64, bpm: f64) -> Vec<usize> {
    let len = envelope.len();
    if len == 0 || bpm.is_nan() || bpm <= 0.0 {
        return Vec::new();
    }
    let period = 60.0 * frame_rate_hz / bpm;
    if period < 1.0 || period > len as f64 {
        return Vec::new();
    }
    // Normalise by the standard deviation so the tightness means the same on every song.
    let mean = envelope.iter().map(|&v| f64::from(v)).sum::<f64>() / len as f64;
    let variance = envelope
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / (len.max(2) - 1) as f64;
    let std = variance.sqrt() + 1e-12;
    let onsets: Vec<f64> = envelope.iter().map(|&v| f64::from(v) / std).collect();
    // Local score: onsets smoothed by a Gaussian about a period wide.
    let radius = period.round() as isize;
    let kernel: Vec<f64> = (-radius..=radius)
        .map(|k| (-0.5 * (k as f64 * 32.0 / period).powi(2)).exp())
        .collect();
    let local: Vec<f64> = (0..len as isize)
        .map(|i| {
            kernel
                .iter()
                .enumerate()
                .map(|(k, w)| {
                    let j = i + k as isize - radius;
                    if j >= 0 && (j as usize) < len {
                        w * onsets[j as usize]
                    } else {
                        0.0
                    }
                })
                .sum()
        })
        .collect();
    let lag_min = (period / 2.0).round().max(1.0) as usize;
    let lag_max = (2.0 * period).round() as usize;
    let mut cumulative = vec![0.0f64; len];
    let mut backlink: Vec<Option<usize>> = vec![None; len];
    let local_max = local.iter().copied().fold(0.0, f64::max);
    if local_max <= 0.0 {
        return Vec::new();
    }
    let mut first_beat = true;
    for i in 0..len {
        let mut best: Option<(usize, f64)> = None;
        for lag in lag_min..=lag_max.min(i) {
            let prev = i - lag;
            let penalty = -TIGHTNESS * (lag as f64 / period).ln().powi(2);
            let score = cumulative[prev] + penalty;
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((prev, score));
            }
        }
        cumulative[i] = local[i] + best.map_or(0.0, |(_, s)| s);
        // librosa starts the chain at the first strong onset, not at frame 0.
        if first_beat && local[i] < 0.01 * local_max {
            backlink[i] = None;
        } else {
            first_beat = false;
            backlink[i] = best.map(|(p, _)| p);
        }
    }
    // The last beat: the last local maximum of the cumulative score that is
    // at least half the median of all local maxima.
    let maxima: Vec<usize> = (1..len.saturating_sub(1))
        .filter(|&i| cumulative[i] > cumulative[i - 1] && cumulative[i] >= cumulative[i + 1])
        .collect();
    if maxima.is_empty() {
        return Vec::new();
    }
    let mut values: Vec<f64> = maxima.iter().map(|&i| cumulative[i]).collect();
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    let Some(&last) = maxima
        .iter()
        .rev()
        .find(|&&i| cumulative[i] >= 0.5 * median)
    else {
        return Vec::new();
    };
    let mut chain = vec![last];
    let mut cursor = last;
    while let Some(prev) = backlink[cursor] {
        chain.push(prev);
        cursor = prev;
        if chain.len() > len {
            break;
        }
    }
    chain.reverse();
    trim_weak(&chain, &local)
}

/// Drops leading and trailing beats on weak onsets (librosa `trim=True`).
fn trim_weak(beats: &[usize], local: &[f64]) -> Vec<usize> {
    if beats.is_empty() {
        return Vec::new();
    }
    let window = [0.25, 0.75, 1.0, 0.75, 0.25];
    let values: Vec<f64> = beats.iter().map(|&b| local[b]).collect();
    let smoothed: Vec<f64> = (0..values.len())
        .map(|i| {
            window
                .iter()
                .enumerate()
                .map(|(k, w)| {
                    let j = i as isize + k as isize - 2;
                    if j >= 0 && (j as usize) < values.len() {
                        w * values[j as usize]
                    } else {
                        0.0
                    }
                })
                .sum()
        })
        .collect();
    let threshold =
        0.5 * (smoothed.iter().map(|v| v * v).sum::<f64>() / smoothed.len() as f64).sqrt();
    let start = smoothed.iter().position(|&v| v > threshold).unwrap_or(0);
    let end = smoothed
        .iter()
        .rposition(|&v| v > threshold)
        .map_or(beats.len(), |e| e + 1);
    beats[start..end.max(start)].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A click track: impulses every `period_frames` frames.
    fn clicks(period_frames: usize, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| if i % period_frames == 0 { 1.0 } else { 0.0 })
            .collect()
    }

    #[test]
    fn click_track_tempo_and_beats() {
        let frame_rate_hz = 22_050.0 / 512.0;
        // 0.5 s between clicks is 120 BPM; 21.5 frames, rounded to 22 frames.
        let envelope = clicks(22, 2000);
        let tempo = estimate(&envelope, frame_rate_hz).unwrap();
        let expected_bpm = 60.0 * frame_rate_hz / 22.0;
        assert!((tempo.bpm - expected_bpm).abs() < 3.0, "{tempo:?}");
        let found = beats(&envelope, frame_rate_hz, tempo.bpm);
        assert!(found.len() > 80, "{} beats", found.len());
        assert!(
            found.iter().all(|b| b % 22 <= 1 || b % 22 >= 21),
            "{found:?}"
        );
    }

    #[test]
    fn silence_has_no_tempo() {
        assert_eq!(estimate(&[0.0; 1000], 43.0), None);
        assert!(beats(&[0.0; 1000], 43.0, 120.0).is_empty());
    }
}

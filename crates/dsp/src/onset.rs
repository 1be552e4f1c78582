//! Onset strength (spectral flux on the log-mel spectrogram) and onset picking.
//!
//! Follows librosa's `onset_strength` and `onset_detect` defaults so that the
//! onset rate and the tempo built on the envelope are comparable with it.

/// How the per-band flux of one frame becomes one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// librosa's `onset_strength` default (used for onset picking).
    Mean,
    /// What librosa's `beat_track` asks `onset_strength` for: one loud band
    /// (a cymbal, a melody note) moves the median little, so the envelope
    /// follows onsets that most of the spectrum shares, i.e. the beat.
    Median,
}

/// Onset strength per STFT frame from a log-mel spectrogram (`mel_db[frame][band]`).
///
/// librosa: positive first difference per band, aggregated across bands,
/// shifted right by `1 + fft_len / (2 * hop_len)` frames to line up with
/// centred frames.
pub fn strength(
    mel_db: &[Vec<f32>],
    fft_len: usize,
    hop_len: usize,
    aggregate: Aggregate,
) -> Vec<f32> {
    let frames_len = mel_db.len();
    let mut envelope = vec![0.0f32; frames_len];
    if frames_len < 2 {
        return envelope;
    }
    let shift_len = 1 + fft_len / (2 * hop_len);
    let mut flux: Vec<f32> = Vec::with_capacity(mel_db[0].len());
    for frame in 1..frames_len {
        let (now, before) = (&mel_db[frame], &mel_db[frame - 1]);
        flux.clear();
        flux.extend(now.iter().zip(before).map(|(a, b)| (a - b).max(0.0)));
        let value = match aggregate {
            Aggregate::Mean => flux.iter().sum::<f32>() / flux.len().max(1) as f32,
            Aggregate::Median => median(&mut flux),
        };
        let target = frame - 1 + shift_len;
        if target < frames_len {
            envelope[target] = value;
        }
    }
    envelope
}

/// The median (the mean of the middle two for an even count), reordering `values`.
fn median(values: &mut [f32]) -> f32 {
    let len = values.len();
    if len == 0 {
        return 0.0;
    }
    let (below, &mut middle, _) = values.select_nth_unstable_by(len / 2, f32::total_cmp);
    if len % 2 == 1 {
        return middle;
    }
    let lower = below.iter().copied().fold(f32::MIN, f32::max);
    0.5 * (lower + middle)
}

/// Frames of detected onsets: librosa's `peak_pick` with `onset_detect`'s
/// defaults (pre_max 30 ms, pre/post average 100 ms, delta 0.07, wait 30 ms)
/// on the envelope normalised to [0, 1].
pub fn detect(envelope: &[f32], frame_rate_hz: f64) -> Vec<usize> {
    let max = envelope.iter().copied().fold(0.0f32, f32::max);
    if envelope.is_empty() || max <= 0.0 {
        return Vec::new();
    }
    let normalised: Vec<f32> = envelope.iter().map(|v| v / max).collect();
    let frames = |seconds: f64| (seconds * frame_rate_hz).round() as usize;
    let (pre_max, post_max) = (frames(0.03), 1);
    let (pre_avg, post_avg) = (frames(0.10), frames(0.10) + 1);
    let wait = frames(0.03);
    const DELTA: f32 = 0.07;
    let len = normalised.len();
    let mut onsets = Vec::new();
    let mut last: Option<usize> = None;
    for n in 0..len {
        let value = normalised[n];
        let max_lo = n.saturating_sub(pre_max);
        let max_hi = (n + post_max).min(len);
        let local_max = normalised[max_lo..max_hi]
            .iter()
            .copied()
            .fold(f32::MIN, f32::max);
        if value < local_max {
            continue;
        }
        let avg_lo = n.saturating_sub(pre_avg);
        let avg_hi = (n + post_avg).min(len);
        let window = &normalised[avg_lo..avg_hi];
        let local_mean = window.iter().sum::<f32>() / window.len() as f32;
        if value < local_mean + DELTA {
            continue;
        }
        if let Some(previous) = last {
            if n <= previous + wait {
                continue;
            }
        }
        onsets.push(n);
        last = Some(n);
    }
    onsets
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rise in one band of eight moves the mean envelope, not the median;
    /// a rise shared by every band moves both.
    #[test]
    fn median_follows_onsets_most_bands_share() {
        let quiet = vec![-60.0f32; 8];
        let mut one_band = quiet.clone();
        one_band[3] = 0.0;
        let all_bands = vec![-20.0f32; 8];
        let mel_db = vec![quiet.clone(), one_band, quiet, all_bands];
        let (fft_len, hop_len) = (4, 4); // no shift: frame n's flux lands on frame n
        let mean = strength(&mel_db, fft_len, hop_len, Aggregate::Mean);
        let median = strength(&mel_db, fft_len, hop_len, Aggregate::Median);
        assert_eq!(mean, vec![0.0, 7.5, 0.0, 40.0]);
        assert_eq!(median, vec![0.0, 0.0, 0.0, 40.0]);
    }

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&mut []), 0.0);
    }
}

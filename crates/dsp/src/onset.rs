//! Onset strength (spectral flux on the log-mel spectrogram) and onset picking.
//!
//! Follows librosa's `onset_strength` and `onset_detect` defaults so that the
//! onset rate and the tempo built on the envelope are comparable with it.

/// Onset strength per STFT frame from a log-mel spectrogram (`mel_db[frame][band]`).
///
/// librosa: positive first difference per band, mean across bands, shifted
/// right by `1 + fft_len / (2 * hop_len)` frames to line up with centred frames.
pub fn strength(mel_db: &[Vec<f32>], fft_len: usize, hop_len: usize) -> Vec<f32> {
    let frames_len = mel_db.len();
    let mut envelope = vec![0.0f32; frames_len];
    if frames_len < 2 {
        return envelope;
    }
    let shift_len = 1 + fft_len / (2 * hop_len);
    for frame in 1..frames_len {
        let (now, before) = (&mel_db[frame], &mel_db[frame - 1]);
        let flux: f32 = now
            .iter()
            .zip(before)
            .map(|(a, b)| (a - b).max(0.0))
            .sum::<f32>()
            / now.len().max(1) as f32;
        let target = frame - 1 + shift_len;
        if target < frames_len {
            envelope[target] = flux;
        }
    }
    envelope
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

//! EBU R128 / ITU-R BS.1770 loudness: integrated, range, true and sample peak.
//!
//! Integrated loudness, range and sample peak come from the `ebur128` crate
//! (a port of libebur128, which ffmpeg's `ebur128` filter also derives from),
//! fed in bounded chunks so that memory stays flat for any duration
//! (histogram mode, as ffmpeg does).
//!
//! True peak is computed here instead: 4x oversampling every sample (what the
//! crate does) costs more than all the other analyses together, yet an
//! inter-sample peak can only rise a few dB above its neighbouring samples.
//! So only the neighbourhoods of samples within [`TRUE_PEAK_MARGIN_DB`] of
//! the sample peak are oversampled, with a 48-tap windowed-sinc interpolator
//! (the length BS.1770-4 Annex 2 suggests).

use ebur128::{EbuR128, Mode};

use crate::DspError;

/// Loudness target used when the caller gives none (streaming services' norm).
pub const TARGET_DEFAULT_LUFS: f64 = -14.0;
/// Frames handed to the meter per call.
const CHUNK_FRAMES_LEN: usize = 16_384;
/// Samples quieter than the sample peak by more than this cannot hold the true peak.
pub const TRUE_PEAK_MARGIN_DB: f64 = 6.0;
/// Oversampling factor of the true-peak interpolator.
const OVERSAMPLING: usize = 4;
/// Input samples each interpolated value reads (48 taps at 4x).
const TAPS_PER_PHASE: usize = 12;

/// Loudness measurements of one programme.
#[derive(Debug, Clone, PartialEq)]
pub struct Loudness {
    /// Integrated loudness; `None` when everything is gated away (silence).
    pub integrated_lufs: Option<f64>,
    pub range_lu: f64,
    /// Maximum true peak over all channels (4x oversampled); `None` for digital silence.
    pub true_peak_dbtp: Option<f64>,
    pub sample_peak_dbfs: Option<f64>,
}

impl Loudness {
    /// Gain that brings the integrated loudness to `target_lufs`.
    pub fn gain_to_db(&self, target_lufs: f64) -> Option<f64> {
        self.integrated_lufs.map(|lufs| target_lufs - lufs)
    }
}

/// Polyphase interpolator: `bank[phase][tap]` for phases 1..OVERSAMPLING
/// (phase 0 is the sample itself). Kaiser-windowed sinc, unity DC gain per phase.
fn interpolator() -> Vec<[f32; TAPS_PER_PHASE]> {
    const KAISER_BETA: f64 = 5.0;
    let half = (TAPS_PER_PHASE / 2) as f64;
    (1..OVERSAMPLING)
        .map(|phase| {
            let fraction = phase as f64 / OVERSAMPLING as f64;
            let mut taps = [0.0f64; TAPS_PER_PHASE];
            for (k, tap) in taps.iter_mut().enumerate() {
                // Distance from the interpolated point to input sample k.
                let t = k as f64 - (half - 1.0) - fraction;
                let x = std::f64::consts::PI * t;
                let sinc = if x.abs() < 1e-12 { 1.0 } else { x.sin() / x };
                let w = t / half;
                *tap = sinc * bessel_i0(KAISER_BETA * (1.0 - w * w).max(0.0).sqrt());
            }
            let sum: f64 = taps.iter().sum();
            std::array::from_fn(|k| (taps[k] / sum) as f32)
        })
        .collect()
}

fn bessel_i0(x: f64) -> f64 {
    let (mut sum, mut term) = (1.0, 1.0);
    for k in 1..50 {
        term *= (x / 2.0) * (x / 2.0) / (k * k) as f64;
        sum += term;
    }
    sum
}

/// Highest 4x-oversampled absolute value, evaluated only around loud samples.
fn true_peak(interleaved: &[f32], channels: usize, sample_peak: f64) -> f64 {
    if sample_peak <= 0.0 {
        return 0.0;
    }
    let bank = interpolator();
    let threshold = (sample_peak * 10f64.powf(-TRUE_PEAK_MARGIN_DB / 20.0)) as f32;
    let frames = interleaved.len() / channels;
    // Taps reach `before` samples back and `TAPS_PER_PHASE - before` ahead.
    let before = TAPS_PER_PHASE / 2 - 1;
    let mut peak = sample_peak as f32;
    let mut plane = vec![0.0f32; frames + TAPS_PER_PHASE];
    for channel in 0..channels {
        // One channel, contiguous and zero-padded, so each interpolation is
        // a 12-element dot product over a slice (vectorised).
        for (slot, frame) in plane[before..]
            .iter_mut()
            .zip(interleaved.chunks_exact(channels))
        {
            *slot = frame[channel];
        }
        for n in 0..frames.saturating_sub(1) {
            // The interval between samples n and n + 1.
            if plane[before + n].abs() < threshold && plane[before + n + 1].abs() < threshold {
                continue;
            }
            let window = &plane[n..n + TAPS_PER_PHASE];
            for taps in &bank {
                let value: f32 = taps.iter().zip(window).map(|(t, x)| t * x).sum();
                peak = peak.max(value.abs());
            }
        }
    }
    f64::from(peak)
}

fn to_db(linear: f64) -> Option<f64> {
    (linear > 0.0).then(|| 20.0 * linear.log10())
}

/// Measures interleaved samples at their native rate and channel layout.
pub fn measure(interleaved: &[f32], channels: usize, rate_hz: u32) -> Result<Loudness, DspError> {
    if channels == 0 || channels > crate::mono::CHANNELS_MAX || rate_hz == 0 {
        return Err(DspError::InvalidParameter(format!(
            "loudness of {channels} channels at {rate_hz} Hz"
        )));
    }
    let mode = Mode::I | Mode::LRA | Mode::SAMPLE_PEAK | Mode::HISTOGRAM;
    let meter_error = |err: ebur128::Error| DspError::InvalidParameter(format!("ebur128: {err}"));
    let mut meter = EbuR128::new(channels as u32, rate_hz, mode).map_err(meter_error)?;
    for chunk in interleaved.chunks(CHUNK_FRAMES_LEN * channels) {
        let whole_len = chunk.len() - chunk.len() % channels;
        meter
            .add_frames_f32(&chunk[..whole_len])
            .map_err(meter_error)?;
    }
    let integrated = meter.loudness_global().map_err(meter_error)?;
    let range_lu = meter.loudness_range().map_err(meter_error)?;
    let mut sample_peak = 0.0f64;
    for channel in 0..channels as u32 {
        sample_peak = sample_peak.max(meter.sample_peak(channel).map_err(meter_error)?);
    }
    let true_peak = true_peak(interleaved, channels, sample_peak);
    Ok(Loudness {
        integrated_lufs: integrated.is_finite().then_some(integrated),
        range_lu: if range_lu.is_finite() { range_lu } else { 0.0 },
        true_peak_dbtp: to_db(true_peak),
        sample_peak_dbfs: to_db(sample_peak),
    })
}

//! EBU R128 / ITU-R BS.1770 loudness: integrated, range, true and sample peak.
//!
//! A thin wrapper over the `ebur128` crate (a port of libebur128, which ffmpeg's
//! `ebur128` filter also derives from), fed in bounded chunks so that memory
//! stays flat for any duration (histogram mode, as ffmpeg does).

use ebur128::{EbuR128, Mode};

use crate::DspError;

/// Loudness target used when the caller gives none (streaming services' norm).
pub const TARGET_DEFAULT_LUFS: f64 = -14.0;
/// Frames handed to the meter per call.
const CHUNK_FRAMES_LEN: usize = 16_384;

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
    let mode = Mode::I | Mode::LRA | Mode::TRUE_PEAK | Mode::SAMPLE_PEAK | Mode::HISTOGRAM;
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
    let mut true_peak = 0.0f64;
    let mut sample_peak = 0.0f64;
    for channel in 0..channels as u32 {
        true_peak = true_peak.max(meter.true_peak(channel).map_err(meter_error)?);
        sample_peak = sample_peak.max(meter.sample_peak(channel).map_err(meter_error)?);
    }
    Ok(Loudness {
        integrated_lufs: integrated.is_finite().then_some(integrated),
        range_lu: if range_lu.is_finite() { range_lu } else { 0.0 },
        true_peak_dbtp: to_db(true_peak),
        sample_peak_dbfs: to_db(sample_peak),
    })
}

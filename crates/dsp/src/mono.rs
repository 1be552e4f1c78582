//! The shared analysis signal: decoded audio downmixed and resampled once.
//!
//! Every feature except loudness and the fingerprint runs on this signal, so
//! the (comparatively expensive) resampling happens exactly once per song.

use crate::polyphase::{Design, Edges, Polyphase};
use crate::resample::{out_frames_len, Resampler};
use crate::DspError;

/// Channel count above which input is refused (more than any real layout).
pub const CHANNELS_MAX: usize = 64;

/// A mono signal at a known sample rate.
#[derive(Debug, Clone)]
pub struct Mono {
    pub samples: Vec<f32>,
    pub rate_hz: u32,
}

impl Mono {
    pub fn duration_s(&self) -> f64 {
        if self.rate_hz == 0 {
            return 0.0;
        }
        self.samples.len() as f64 / f64::from(self.rate_hz)
    }
}

fn check_shape(channels: usize, rate_hz: u32) -> Result<(), DspError> {
    if channels == 0 || channels > CHANNELS_MAX {
        return Err(DspError::InvalidParameter(format!(
            "channel count {channels} outside 1..={CHANNELS_MAX}"
        )));
    }
    if rate_hz == 0 {
        return Err(DspError::InvalidParameter("sample rate 0".into()));
    }
    Ok(())
}

/// Averages the channels of interleaved samples.
pub fn downmix(interleaved: &[f32], channels: usize) -> Result<Vec<f32>, DspError> {
    check_shape(channels, 1)?;
    if channels == 1 {
        return Ok(interleaved.to_vec());
    }
    let scale = 1.0 / channels as f32;
    if channels == 2 {
        // The common case, written so that it vectorises.
        let mut mixed = vec![0.0f32; interleaved.len() / 2];
        for (out, frame) in mixed.iter_mut().zip(interleaved.chunks_exact(2)) {
            *out = (frame[0] + frame[1]) * scale;
        }
        return Ok(mixed);
    }
    Ok(interleaved
        .chunks_exact(channels)
        .map(|frame| frame.iter().sum::<f32>() * scale)
        .collect())
}

/// Downmixes interleaved samples and resamples them to `target_rate_hz`.
pub fn analysis_signal(
    interleaved: &[f32],
    channels: usize,
    rate_hz: u32,
    target_rate_hz: u32,
) -> Result<Mono, DspError> {
    check_shape(channels, rate_hz)?;
    check_shape(1, target_rate_hz)?;
    let mixed = downmix(interleaved, channels)?;
    analysis_resample(&mixed, rate_hz, target_rate_hz)
}

/// Resampling for the analysis signal: a short polyphase filter (16 taps per
/// phase at 1:1, pass band to 90 % of the lower Nyquist frequency) is plenty
/// for features that read spectra up to a few kHz, and several times cheaper
/// than the transcoders' resampler, which odd ratios still fall back to.
pub fn analysis_resample(
    mono: &[f32],
    rate_hz: u32,
    target_rate_hz: u32,
) -> Result<Mono, DspError> {
    const DESIGN: Design = Design {
        filter_size: 16.0,
        cutoff: 0.9,
        kaiser_beta: 9.0,
        edges: Edges::Zero,
    };
    check_shape(1, rate_hz)?;
    check_shape(1, target_rate_hz)?;
    let samples = if rate_hz == target_rate_hz {
        mono.to_vec()
    } else {
        match Polyphase::new(rate_hz, target_rate_hz, DESIGN) {
            Ok(polyphase) => polyphase.process(mono),
            Err(_) => resample(mono, rate_hz, target_rate_hz)?,
        }
    };
    Ok(Mono {
        samples,
        rate_hz: target_rate_hz,
    })
}

/// Band-limited resampling of a mono signal; the output is aligned with the
/// input (the resampler's delay is removed) and has the exact expected length.
pub fn resample(samples: &[f32], rate_hz: u32, target_rate_hz: u32) -> Result<Vec<f32>, DspError> {
    check_shape(1, rate_hz)?;
    check_shape(1, target_rate_hz)?;
    if rate_hz == target_rate_hz || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let expected_len = out_frames_len(samples.len() as u64, rate_hz, target_rate_hz) as usize;
    let mut out = Vec::with_capacity(expected_len);
    let mut resampler = Resampler::new(1, rate_hz, target_rate_hz)?;
    resampler.push(samples, &mut out)?;
    resampler.finish(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resample_halves_length_and_keeps_a_tone() {
        let rate_hz = 44_100;
        let samples: Vec<f32> = (0..rate_hz * 2)
            .map(|n| (2.0 * std::f32::consts::PI * 440.0 * n as f32 / rate_hz as f32).sin())
            .collect();
        let out = resample(&samples, rate_hz, 22_050).unwrap();
        assert_eq!(out.len(), samples.len() / 2);
        // The resampler's delay is compensated: output sample n matches input 2n.
        let max_err = (1000..out.len() - 1000)
            .map(|n| (out[n] - samples[2 * n]).abs())
            .fold(0.0f32, f32::max);
        assert!(max_err < 0.01, "max error {max_err}");
    }

    #[test]
    fn zero_channels_is_refused() {
        assert!(analysis_signal(&[0.0; 4], 0, 44_100, 22_050).is_err());
    }
}

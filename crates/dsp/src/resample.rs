//! Streaming band-limited resampling of interleaved audio, for the transcoders.
//!
//! A transcode converts a whole song, but holding the song at the target rate
//! in memory (and every intermediate copy of it) costs more in page faults and
//! copies than the filter itself. [`Resampler`] takes the input a piece at a
//! time and hands back whole interleaved frames, aligned with the input (the
//! filter's delay is removed) and, once [`Resampler::finish`] is called, exactly
//! `input_frames * target_rate / rate` of them.
//!
//! The filter is rubato's FFT resampler (sinc, band-limited to the lower Nyquist
//! frequency); the analysis signal uses the cheaper [`crate::polyphase`] filter.

use rubato::{FftFixedIn, Resampler as _};

use crate::DspError;

/// Frames per channel in one FFT resampler call: large enough to amortise the
/// FFT set-up, small enough to stay in cache.
const CHUNK_FRAMES_LEN: usize = 8192;
/// Most channels accepted (the same bound as the analysis signal).
const CHANNELS_MAX: usize = crate::mono::CHANNELS_MAX;

/// Streaming resampler over interleaved frames (see the module docs).
pub struct Resampler {
    inner: FftFixedIn<f32>,
    channels: usize,
    rate_hz: u32,
    target_rate_hz: u32,
    /// Input gathered per channel until a full chunk is there.
    planes_in: Vec<Vec<f32>>,
    planes_out: Vec<Vec<f32>>,
    /// Output frames still to drop at the start (the filter's delay).
    delay_left_frames: usize,
    in_frames: u64,
    out_frames: u64,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("channels", &self.channels)
            .field("rate_hz", &self.rate_hz)
            .field("target_rate_hz", &self.target_rate_hz)
            .field("in_frames", &self.in_frames)
            .field("out_frames", &self.out_frames)
            .finish_non_exhaustive()
    }
}

/// Output frames for `in_frames` input frames: the length every resampling
/// of a whole signal has.
pub fn out_frames_len(in_frames: u64, rate_hz: u32, target_rate_hz: u32) -> u64 {
    if rate_hz == 0 {
        return 0;
    }
    in_frames * u64::from(target_rate_hz) / u64::from(rate_hz)
}

impl Resampler {
    pub fn new(channels: usize, rate_hz: u32, target_rate_hz: u32) -> Result<Self, DspError> {
        if channels == 0 || channels > CHANNELS_MAX {
            return Err(DspError::InvalidParameter(format!(
                "channel count {channels} outside 1..={CHANNELS_MAX}"
            )));
        }
        if rate_hz == 0 || target_rate_hz == 0 {
            return Err(DspError::InvalidParameter("sample rate 0".into()));
        }
        let inner = FftFixedIn::<f32>::new(
            rate_hz as usize,
            target_rate_hz as usize,
            CHUNK_FRAMES_LEN,
            2,
            channels,
        )
        .map_err(|err| DspError::InvalidParameter(format!("resampler: {err}")))?;
        let chunk_len = inner.input_frames_max();
        let out_len = inner.output_frames_max();
        Ok(Resampler {
            delay_left_frames: inner.output_delay(),
            inner,
            channels,
            rate_hz,
            target_rate_hz,
            planes_in: vec![Vec::with_capacity(chunk_len); channels],
            planes_out: vec![vec![0.0; out_len]; channels],
            in_frames: 0,
            out_frames: 0,
        })
    }

    /// Takes interleaved input (whole frames) and appends the output frames
    /// that are ready to `out`, interleaved.
    pub fn push(&mut self, interleaved: &[f32], out: &mut Vec<f32>) -> Result<(), DspError> {
        if interleaved.len() % self.channels != 0 {
            return Err(DspError::InvalidParameter(format!(
                "{} samples are not whole frames of {} channels",
                interleaved.len(),
                self.channels
            )));
        }
        self.in_frames += (interleaved.len() / self.channels) as u64;
        let mut rest = interleaved;
        while !rest.is_empty() {
            let filled = self.planes_in[0].len();
            let take = (self.inner.input_frames_next() - filled).min(rest.len() / self.channels);
            let (now, later) = rest.split_at(take * self.channels);
            // Deinterleave by index into pre-sized planes (vectorises; a push
            // per sample does not).
            for (channel, plane) in self.planes_in.iter_mut().enumerate() {
                plane.resize(filled + take, 0.0);
                for (slot, frame) in plane[filled..]
                    .iter_mut()
                    .zip(now.chunks_exact(self.channels))
                {
                    *slot = frame[channel];
                }
            }
            rest = later;
            if self.planes_in[0].len() == self.inner.input_frames_next() {
                self.run_chunk(out, u64::MAX)?;
            }
        }
        Ok(())
    }

    /// Flushes the last input and the filter's delay: after this, `out` has
    /// received exactly [`out_frames_len`] frames in all.
    pub fn finish(mut self, out: &mut Vec<f32>) -> Result<(), DspError> {
        let total = out_frames_len(self.in_frames, self.rate_hz, self.target_rate_hz);
        // Each chunk of zeros yields output; the delay is at most a chunk or two.
        while self.out_frames < total {
            let before = (self.out_frames, self.delay_left_frames);
            let next = self.inner.input_frames_next();
            for plane in self.planes_in.iter_mut() {
                plane.resize(next, 0.0);
            }
            self.run_chunk(out, total)?;
            if (self.out_frames, self.delay_left_frames) == before {
                break;
            }
        }
        // A filter that produced less than expected (it never should): pad.
        let missing = total.saturating_sub(self.out_frames) as usize;
        out.resize(out.len() + missing * self.channels, 0.0);
        Ok(())
    }

    /// Resamples the full chunk in `planes_in` and appends its output, after
    /// the delay, up to `total` frames.
    fn run_chunk(&mut self, out: &mut Vec<f32>, total: u64) -> Result<(), DspError> {
        let (_, written) = self
            .inner
            .process_into_buffer(&self.planes_in, &mut self.planes_out, None)
            .map_err(|err| DspError::InvalidParameter(format!("resampler: {err}")))?;
        for plane in self.planes_in.iter_mut() {
            plane.clear();
        }
        let skip = self.delay_left_frames.min(written);
        self.delay_left_frames -= skip;
        let keep = ((written - skip) as u64).min(total - self.out_frames.min(total)) as usize;
        let start = out.len();
        out.resize(start + keep * self.channels, 0.0);
        for (channel, plane) in self.planes_out.iter().enumerate() {
            for (slot, &sample) in out[start..]
                .iter_mut()
                .skip(channel)
                .step_by(self.channels)
                .zip(&plane[skip..skip + keep])
            {
                *slot = sample;
            }
        }
        self.out_frames += keep as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate_hz: u32, freq_hz: f32, frames: usize) -> Vec<f32> {
        (0..frames)
            .map(|n| (2.0 * std::f32::consts::PI * freq_hz * n as f32 / rate_hz as f32).sin())
            .collect()
    }

    #[test]
    fn pieces_of_any_size_give_the_exact_length_aligned_with_the_input() {
        let (rate_hz, target_hz) = (44_100, 48_000);
        let left = tone(rate_hz, 440.0, 100_003);
        let right = tone(rate_hz, 1000.0, 100_003);
        let interleaved: Vec<f32> = left
            .iter()
            .zip(&right)
            .flat_map(|(&l, &r)| [l, r])
            .collect();
        let mut out = Vec::new();
        let mut resampler = Resampler::new(2, rate_hz, target_hz).unwrap();
        for piece in interleaved.chunks(2 * 1237) {
            resampler.push(piece, &mut out).unwrap();
        }
        resampler.finish(&mut out).unwrap();
        let expected = out_frames_len(100_003, rate_hz, target_hz) as usize;
        assert_eq!(out.len(), 2 * expected);
        let want_left = tone(target_hz, 440.0, expected);
        let want_right = tone(target_hz, 1000.0, expected);
        let max_err = (2000..expected - 2000)
            .map(|n| {
                (out[2 * n] - want_left[n])
                    .abs()
                    .max((out[2 * n + 1] - want_right[n]).abs())
            })
            .fold(0.0f32, f32::max);
        assert!(max_err < 0.01, "max error {max_err}");
    }

    #[test]
    fn partial_frames_are_refused() {
        let mut resampler = Resampler::new(2, 44_100, 48_000).unwrap();
        assert!(resampler.push(&[0.0; 3], &mut Vec::new()).is_err());
    }
}

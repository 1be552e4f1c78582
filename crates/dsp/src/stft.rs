//! The one short-time Fourier transform that every spectral analysis shares.
//!
//! Matches librosa's `stft` defaults (periodic Hann window, `center=True` with
//! zero padding) so that features built on it compare one to one.

use realfft::RealFftPlanner;

use crate::mono::Mono;

/// The shape of a spectrogram: how to read its frames and bins. The
/// magnitudes themselves go to a consumer frame by frame (see [`stft`]).
#[derive(Debug, Clone)]
pub struct Spectrogram {
    pub frames_len: usize,
    pub bins_len: usize,
    pub fft_len: usize,
    pub hop_len: usize,
    pub rate_hz: u32,
}

impl Spectrogram {
    /// Centre frequency of a bin.
    pub fn bin_hz(&self, bin: usize) -> f32 {
        bin as f32 * self.rate_hz as f32 / self.fft_len as f32
    }

    /// Time of a frame's centre.
    pub fn frame_s(&self, frame: usize) -> f64 {
        (frame * self.hop_len) as f64 / f64::from(self.rate_hz)
    }
}

/// Periodic Hann window, as `scipy.signal.get_window("hann", n)`.
pub fn hann(len: usize) -> Vec<f32> {
    (0..len)
        .map(|n| {
            let phase = 2.0 * std::f64::consts::PI * n as f64 / len as f64;
            (0.5 - 0.5 * phase.cos()) as f32
        })
        .collect()
}

/// Number of centred frames librosa produces for a signal.
pub fn frames_len(samples_len: usize, hop_len: usize) -> usize {
    1 + samples_len / hop_len
}

/// Computes the magnitude STFT of a mono signal, handing each frame's
/// magnitudes to `consume` in order; returns the spectrogram's shape.
pub fn stft(
    signal: &Mono,
    fft_len: usize,
    hop_len: usize,
    mut consume: impl FnMut(&[f32]),
) -> Spectrogram {
    assert!(
        fft_len >= 2 && fft_len % 2 == 0 && hop_len > 0,
        "stft shape"
    );
    let bins_len = fft_len / 2 + 1;
    let frames_len = frames_len(signal.samples.len(), hop_len);
    let window = hann(fft_len);
    let mut planner = RealFftPlanner::<f32>::new();
    let fft = planner.plan_fft_forward(fft_len);
    let mut input = fft.make_input_vec();
    let mut output = fft.make_output_vec();
    let mut scratch = fft.make_scratch_vec();
    let mut magnitudes = vec![0.0f32; bins_len];
    let half = (fft_len / 2) as isize;
    let samples = &signal.samples;
    for frame in 0..frames_len {
        let start = (frame * hop_len) as isize - half;
        let inside = start >= 0 && start as usize + fft_len <= samples.len();
        if inside {
            let span = &samples[start as usize..start as usize + fft_len];
            for ((slot, &x), &w) in input.iter_mut().zip(span).zip(&window) {
                *slot = x * w;
            }
        } else {
            for (n, slot) in input.iter_mut().enumerate() {
                let index = start + n as isize;
                let sample = if index >= 0 && (index as usize) < samples.len() {
                    samples[index as usize]
                } else {
                    0.0
                };
                *slot = sample * window[n];
            }
        }
        // The lengths come from the same plan, so processing cannot fail.
        fft.process_with_scratch(&mut input, &mut output, &mut scratch)
            .expect("buffers sized by the plan");
        // Not `norm()`: its overflow-safe `hypot` is several times slower,
        // and FFT outputs of audio in [-1, 1] are far from overflowing.
        for (m, c) in magnitudes.iter_mut().zip(&output) {
            *m = c.norm_sqr().sqrt();
        }
        consume(&magnitudes);
    }
    Spectrogram {
        frames_len,
        bins_len,
        fft_len,
        hop_len,
        rate_hz: signal.rate_hz,
    }
}

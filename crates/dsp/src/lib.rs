//! Pure audio DSP on sample buffers: the analyses chorus runs on every song.
//!
//! Architecture invariant: this crate does no IO and knows nothing of files,
//! async runtimes or serialisation. It takes `f32` samples and returns plain
//! structs; the `audio` crate decodes, calls in here and turns results into JSON.
//!
//! The pipeline is shaped for speed: the caller decodes once, [`loudness`] runs
//! on the native-rate interleaved samples, everything else runs on one mono
//! signal at [`ANALYSIS_RATE_HZ`] ([`mono::Mono`], resampled by
//! [`polyphase`]) whose single STFT ([`stft::stft`], streamed frame by frame,
//! never stored whole) feeds the spectral features, chroma, onsets, tempo,
//! key and chorus detection ([`analysis::analyze`]).

pub mod analysis;
pub mod chorus;
mod error;
pub mod filterbank;
pub mod key;
pub mod loudness;
pub mod mono;
pub mod onset;
pub mod polyphase;
pub mod resample;
pub mod spectral;
pub mod stft;
pub mod tempo;
pub mod waveform;

pub use error::DspError;

/// Sample rate of the shared analysis signal. librosa's default, so features
/// compare one to one with it, and well above the 5 kHz that chroma and onsets need.
pub const ANALYSIS_RATE_HZ: u32 = 22_050;
/// FFT length of the shared STFT (librosa's default `n_fft`).
pub const FFT_LEN: usize = 2048;
/// Hop of the shared STFT (librosa's default `hop_length`): 23.2 ms at 22050 Hz.
pub const HOP_LEN: usize = 512;

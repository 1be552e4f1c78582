//! Chromaprint acoustic fingerprints, byte-for-byte compatible with `fpcalc`.
//!
//! `fpcalc` (Debian's libchromaprint-tools) by default fingerprints the first
//! 120 s with the TEST2 algorithm from 16-bit samples and prints the compressed
//! fingerprint in URL-safe base64 without padding. We do the same from the
//! shared decode, so the strings compare equal.

use dsp::polyphase::{Design, Polyphase};
use rusty_chromaprint::{Configuration, FingerprintCompressor, Fingerprinter};

use crate::AudioError;

/// Audio fingerprinted, from the start (fpcalc's default `-length`).
pub const FINGERPRINT_LEN_S: f64 = 120.0;
/// Frames converted and fed per call.
const CHUNK_FRAMES_LEN: usize = 65_536;

/// A fingerprint in fpcalc's text form plus the duration it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// Compressed, base64url (no padding), as printed by `fpcalc`.
    pub encoded: String,
    /// The raw 32-bit sub-fingerprints (as `fpcalc -raw`).
    pub raw: Vec<u32>,
}

/// Fingerprints the first [`FINGERPRINT_LEN_S`] of interleaved samples.
pub fn fingerprint(
    interleaved: &[f32],
    channels: usize,
    rate_hz: u32,
) -> Result<Fingerprint, AudioError> {
    let frames_len = ((FINGERPRINT_LEN_S * f64::from(rate_hz)) as usize)
        .min(interleaved.len() / channels.max(1));
    let mixed = dsp::mono::downmix(&interleaved[..frames_len * channels], channels)?;
    fingerprint_mono(&mixed, rate_hz)
}

/// Fingerprints the first [`FINGERPRINT_LEN_S`] of a downmixed signal (the
/// average of the channels, as ffmpeg's downmix for fpcalc).
pub fn fingerprint_mono(mono: &[f32], rate_hz: u32) -> Result<Fingerprint, AudioError> {
    let config = Configuration::preset_test2();
    let mut printer = Fingerprinter::new(&config);
    let len = ((FINGERPRINT_LEN_S * f64::from(rate_hz)) as usize).min(mono.len());
    // fpcalc has ffmpeg convert to mono 11025 Hz before chromaprint sees the audio.
    let resampled = to_chromaprint_rate(&mono[..len], rate_hz, config.sample_rate())?;
    printer
        .start(config.sample_rate(), 1)
        .map_err(|err| AudioError::InvalidInput(format!("fingerprint set-up: {err:?}")))?;
    let mut pcm: Vec<i16> = Vec::with_capacity(CHUNK_FRAMES_LEN);
    for chunk in resampled.chunks(CHUNK_FRAMES_LEN) {
        pcm.clear();
        // The same rounding and clipping as a 16-bit conversion in ffmpeg.
        pcm.extend(
            chunk
                .iter()
                .map(|&s| (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16),
        );
        printer.consume(&pcm);
    }
    printer.finish();
    let raw = printer.fingerprint().to_vec();
    let compressed = FingerprintCompressor::from(&config).compress(&raw);
    Ok(Fingerprint {
        encoded: base64url(&compressed),
        raw,
    })
}

/// Resamples with the filter ffmpeg's resampler uses by default (32 taps per
/// phase at 1:1, cutoff 0.97, Kaiser beta 9, exact rational phases), since
/// fpcalc converts to 11025 Hz through it. Ratios that would need a huge
/// filter bank fall back to the general resampler.
fn to_chromaprint_rate(mono: &[f32], rate_hz: u32, target_hz: u32) -> Result<Vec<f32>, AudioError> {
    const FFMPEG_DEFAULT: Design = Design {
        filter_size: 32.0,
        cutoff: 0.97,
        kaiser_beta: 9.0,
    };
    if rate_hz == target_hz {
        return Ok(mono.to_vec());
    }
    Ok(match Polyphase::new(rate_hz, target_hz, FFMPEG_DEFAULT) {
        Ok(polyphase) => polyphase.process(mono),
        Err(_) => dsp::mono::resample(mono, rate_hz, target_hz)?,
    })
}

/// URL-safe base64 without padding (chromaprint's encoding).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = group.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn base64url_matches_rfc4648_vectors() {
        let encoded: Vec<String> = [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            "\u{ff}\u{fe}",
        ]
        .iter()
        .map(|s| base64url(s.as_bytes()))
        .collect();
        expect![[r#"["", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy", "w7_Dvg"]"#]]
            .assert_eq(&format!("{encoded:?}"));
    }
}

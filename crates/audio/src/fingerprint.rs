//! Chromaprint acoustic fingerprints, byte-for-byte compatible with `fpcalc`.
//!
//! `fpcalc` (Debian's libchromaprint-tools) by default fingerprints the first
//! 120 s with the TEST2 algorithm from 16-bit samples and prints the compressed
//! fingerprint in URL-safe base64 without padding. We do the same from the
//! shared decode, so the strings compare equal.

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
    let config = Configuration::preset_test2();
    let mut printer = Fingerprinter::new(&config);
    let frames_len = ((FINGERPRINT_LEN_S * f64::from(rate_hz)) as usize)
        .min(interleaved.len() / channels.max(1));
    // fpcalc has ffmpeg convert to mono 11025 Hz before chromaprint sees the audio.
    let mixed = dsp::mono::downmix(&interleaved[..frames_len * channels], channels)?;
    let mono = decimate(&mixed, rate_hz, config.sample_rate());
    let (interleaved, channels, frames_len) = (&mono[..], 1usize, mono.len());
    printer
        .start(config.sample_rate(), 1)
        .map_err(|err| AudioError::InvalidInput(format!("fingerprint set-up: {err:?}")))?;
    let mut pcm: Vec<i16> = Vec::with_capacity(CHUNK_FRAMES_LEN * channels);
    for chunk in interleaved[..frames_len * channels].chunks(CHUNK_FRAMES_LEN * channels) {
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

/// Kaiser-windowed sinc resampler with the parameters ffmpeg's resampler
/// uses by default (16 zero crossings each side, cutoff 0.97, beta 9, exact
/// rational phases), since fpcalc converts to 11025 Hz through it.
fn decimate(samples: &[f32], rate_hz: u32, target_hz: u32) -> Vec<f32> {
    const FILTER_SIZE: f64 = 32.0;
    const CUTOFF: f64 = 0.97;
    const KAISER_BETA: f64 = 9.0;
    if rate_hz == target_hz {
        return samples.to_vec();
    }
    let gcd = gcd(rate_hz, target_hz);
    let (step_in, phases) = ((rate_hz / gcd) as usize, (target_hz / gcd) as usize);
    let factor = (f64::from(target_hz) * CUTOFF / f64::from(rate_hz)).min(1.0);
    let taps_len = (FILTER_SIZE / factor).ceil() as usize;
    let centre = (taps_len - 1) / 2;
    let bank: Vec<Vec<f32>> = (0..phases)
        .map(|phase| {
            let taps: Vec<f64> = (0..taps_len)
                .map(|i| {
                    let offset = i as f64 - centre as f64 - phase as f64 / phases as f64;
                    let x = std::f64::consts::PI * offset * factor;
                    let sinc = if x == 0.0 { 1.0 } else { x.sin() / x };
                    let w = 2.0 * offset / taps_len as f64;
                    sinc * bessel_i0(KAISER_BETA * (1.0 - w * w).max(0.0).sqrt())
                })
                .collect();
            let norm: f64 = taps.iter().sum();
            taps.iter().map(|t| (t / norm) as f32).collect()
        })
        .collect();
    let out_len = (samples.len() as u64 * u64::from(target_hz) / u64::from(rate_hz)) as usize;
    // Zero padding on both sides keeps the inner loop a plain dot product
    // over contiguous slices, which the compiler vectorises.
    let mut padded = vec![0.0f32; centre];
    padded.extend_from_slice(samples);
    padded.resize(padded.len() + taps_len, 0.0);
    (0..out_len)
        .map(|n| {
            let position = n * step_in;
            let (index, phase) = (position / phases, position % phases);
            let window = &padded[index..index + taps_len];
            bank[phase]
                .iter()
                .zip(window)
                .map(|(tap, sample)| tap * sample)
                .sum::<f32>()
        })
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Modified Bessel function of the first kind, order 0 (power series).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let half_sq = x * x / 4.0;
    for k in 1..64 {
        term *= half_sq / (k * k) as f64;
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
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

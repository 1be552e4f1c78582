//! Chromaprint acoustic fingerprints, byte-for-byte compatible with `fpcalc`.
//!
//! `fpcalc` (Debian's libchromaprint-tools 1.5.1) fingerprints the first
//! 120 s with the TEST2 algorithm. Its reader has ffmpeg's `swresample`
//! convert the decoded audio to 16-bit mono at 11025 Hz, in the "compatible
//! mode" chromaprint sets up (filter size 16, cutoff 0.8, Kaiser beta 9,
//! exact rational phases), and libchromaprint then computes the same values
//! as rusty-chromaprint from the same samples. So the samples are what
//! matters, and this module makes the ones fpcalc makes:
//!
//! - 16-bit sources (FLAC, WAV, ...) with one or two channels at a multiple
//!   of 11025 Hz go the way `swresample` takes 16-bit audio, in integers:
//!   each channel is filtered with the taps rounded to 16 bits (first sample
//!   mirrored at the start, half a filter reflected at the end), rounded back
//!   to 16 bits, then the channels are averaged with ffmpeg's rounding. The
//!   result equals fpcalc's sample for sample, and the fingerprint string
//!   is byte-equal.
//! - Everything else (lossy codecs decode to floats, other rates need more
//!   phases) follows the same design in `f32` after the shared downmix. The
//!   decoders' own differences remain: ffmpeg's Vorbis decoder, for one,
//!   emits 128 more samples at the start than symphonia's, so single bits of
//!   a few sub-fingerprints differ, which matching by bit error rate absorbs.
//!
//! The integer path is written here from the behaviour of `swresample`
//! (checked against the samples fpcalc hands to libchromaprint), not taken
//! from ffmpeg: it is a few lines, and linking ffmpeg for it would pull in
//! a large C library for one filter.

use dsp::polyphase::{self, Design, Edges, Polyphase};
use rusty_chromaprint::{Configuration, FingerprintCompressor, Fingerprinter};

use crate::AudioError;

/// Audio fingerprinted, from the start (fpcalc's default `-length`).
pub const FINGERPRINT_LEN_S: f64 = 120.0;
/// Frames converted and fed per call.
const CHUNK_FRAMES_LEN: usize = 65_536;
/// The resampler settings fpcalc's reader uses.
const FPCALC_DESIGN: Design = Design {
    filter_size: 16.0,
    cutoff: 0.8,
    kaiser_beta: 9.0,
    edges: Edges::Reflect,
};
/// Fixed-point shift of `swresample`'s 16-bit filter taps and channel mix.
const FIXED_SHIFT: u32 = 15;

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
    fingerprint_with_mix(interleaved, channels, rate_hz, None)
}

/// [`fingerprint`], given the channels' average (`mixed`) if the caller
/// already has it: the floating-point path starts from it.
pub fn fingerprint_with_mix(
    interleaved: &[f32],
    channels: usize,
    rate_hz: u32,
    mixed: Option<&[f32]>,
) -> Result<Fingerprint, AudioError> {
    let config = Configuration::preset_test2();
    let target_hz = config.sample_rate();
    if channels == 0 || rate_hz == 0 {
        return Err(AudioError::InvalidInput(format!(
            "fingerprint of {channels} channels at {rate_hz} Hz"
        )));
    }
    let out_len = (FINGERPRINT_LEN_S * f64::from(target_hz)) as usize;
    // The filter reads a little past the last output, so a little more input.
    let frames_len = ((FINGERPRINT_LEN_S * f64::from(rate_hz)) as usize + rate_hz as usize / 10)
        .min(interleaved.len() / channels);
    let span = &interleaved[..frames_len * channels];
    let mut pcm = match integer_pcm(span, channels, rate_hz, target_hz) {
        Some(pcm) => pcm,
        None => {
            let owned;
            let mono = match mixed {
                Some(mixed) => &mixed[..frames_len.min(mixed.len())],
                None => {
                    owned = dsp::mono::downmix(span, channels)?;
                    &owned[..]
                }
            };
            float_pcm(mono, rate_hz, target_hz)?
        }
    };
    pcm.truncate(out_len);
    let mut printer = Fingerprinter::new(&config);
    printer
        .start(target_hz, 1)
        .map_err(|err| AudioError::InvalidInput(format!("fingerprint set-up: {err:?}")))?;
    for chunk in pcm.chunks(CHUNK_FRAMES_LEN) {
        printer.consume(chunk);
    }
    printer.finish();
    let raw = printer.fingerprint().to_vec();
    let compressed = FingerprintCompressor::from(&config).compress(&raw);
    Ok(Fingerprint {
        encoded: base64url(&compressed),
        raw,
    })
}

/// The floating-point path: resampled with fpcalc's design, then converted
/// to 16 bits as ffmpeg does (round half to even, clip).
fn float_pcm(mono: &[f32], rate_hz: u32, target_hz: u32) -> Result<Vec<i16>, AudioError> {
    let resampled = if rate_hz == target_hz {
        mono.to_vec()
    } else {
        match Polyphase::new(rate_hz, target_hz, FPCALC_DESIGN) {
            Ok(polyphase) => polyphase.process(mono),
            // Ratios that would need a huge filter bank.
            Err(_) => dsp::mono::resample(mono, rate_hz, target_hz)?,
        }
    };
    Ok(resampled
        .iter()
        .map(|&s| (s * 32768.0).round_ties_even().clamp(-32768.0, 32767.0) as i16)
        .collect())
}

/// The 16-bit integer path, or `None` when the source is not 16-bit audio
/// with one or two channels.
fn integer_pcm(span: &[f32], channels: usize, rate_hz: u32, target_hz: u32) -> Option<Vec<i16>> {
    if !(1..=2).contains(&channels) || span.is_empty() {
        return None;
    }
    let to_i16 = |s: f32| {
        let scaled = s * 32768.0;
        (scaled.fract() == 0.0 && (-32768.0..=32767.0).contains(&scaled)).then_some(scaled as i16)
    };
    let planes: Vec<Vec<i16>> = (0..channels)
        .map(|c| {
            span.iter()
                .skip(c)
                .step_by(channels)
                .map(|&s| to_i16(s))
                .collect()
        })
        .collect::<Option<_>>()?;
    let resampled: Vec<Vec<i16>> = if rate_hz == target_hz {
        planes
    } else {
        let filter = IntegerFilter::new(rate_hz, target_hz)?;
        planes.iter().map(|plane| filter.resample(plane)).collect()
    };
    Some(match &resampled[..] {
        [left, right] => left
            .iter()
            .zip(right)
            .map(|(&l, &r)| {
                let half = 1 << (FIXED_SHIFT - 1);
                ((half * i32::from(l) + half * i32::from(r) + half) >> FIXED_SHIFT) as i16
            })
            .collect(),
        [mono] => mono.clone(),
        _ => return None,
    })
}

/// fpcalc's filter as `swresample` stores it for 16-bit audio: one set of
/// taps per phase of the exact ratio, all divided by the sum of phase 0's,
/// scaled by 2^15, rounded (through `f32`, as `lrintf`) and clipped.
#[derive(Debug)]
struct IntegerFilter {
    /// `bank[phase * taps_len + tap]`.
    bank: Vec<i32>,
    taps_len: usize,
    centre: usize,
    phases: usize,
    step: usize,
}

impl IntegerFilter {
    fn new(rate_hz: u32, target_hz: u32) -> Option<IntegerFilter> {
        let gcd = polyphase::gcd(rate_hz, target_hz);
        let (step, phases) = ((rate_hz / gcd) as usize, (target_hz / gcd) as usize);
        if phases > polyphase::PHASES_MAX {
            return None;
        }
        let prototype = polyphase::prototype(rate_hz, target_hz, FPCALC_DESIGN);
        let norm: f64 = prototype.taps.iter().sum();
        let scale = f64::from(1u32 << FIXED_SHIFT);
        let taps_len = prototype.taps.len();
        let bank = (0..phases)
            .flat_map(|phase| {
                let taps = polyphase::phase_taps(rate_hz, target_hz, FPCALC_DESIGN, phase, phases);
                taps.into_iter().map(move |t| {
                    (((t * scale / norm) as f32).round_ties_even() as i32).clamp(-32768, 32767)
                })
            })
            .collect();
        Some(IntegerFilter {
            bank,
            taps_len,
            centre: prototype.centre,
            phases,
            step,
        })
    }

    /// One channel: output `n` is phase `n * step % phases` of the filter
    /// over the input from `n * step / phases - centre`, rounded, shifted
    /// and clipped to 16 bits.
    fn resample(&self, plane: &[i16]) -> Vec<i16> {
        let len = plane.len();
        // The signal as `swresample` extends it: mirrored about sample 0 in
        // front, reflected for half a filter (rounded up) after the end.
        let reflection = len.min(self.taps_len).div_ceil(2);
        let mut extended: Vec<i32> = Vec::with_capacity(self.centre + len + reflection);
        extended.extend(
            (1..=self.centre)
                .rev()
                .map(|i| plane.get(i).map_or(0, |&s| i32::from(s))),
        );
        extended.extend(plane.iter().map(|&s| i32::from(s)));
        extended.extend(plane.iter().rev().take(reflection).map(|&s| i32::from(s)));
        let round = 1 << (FIXED_SHIFT - 1);
        let mut out = Vec::with_capacity(len * self.phases / self.step + 1);
        let mut position = 0usize;
        loop {
            let (first, phase) = (position / self.phases, position % self.phases);
            let Some(window) = extended.get(first..first + self.taps_len) else {
                break;
            };
            let taps = &self.bank[phase * self.taps_len..(phase + 1) * self.taps_len];
            // 32-bit wrapping arithmetic, as `swresample`'s accumulator (it
            // cannot overflow for these filters, but must never panic).
            let sum = window
                .iter()
                .zip(taps)
                .fold(0i32, |acc, (x, t)| acc.wrapping_add(x.wrapping_mul(*t)));
            out.push((sum.wrapping_add(round) >> FIXED_SHIFT).clamp(-32768, 32767) as i16);
            position += self.step;
        }
        out
    }
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

//! Encoding decoded audio to WAV, FLAC, MP3 (LAME) and Opus-in-Ogg (libopus).
//!
//! Every output of a job is encoded from the one shared decode. Rate and
//! channel conversion and loudness normalisation happen here, before the
//! encoder, so every encoder sees plain interleaved `f32` at its target layout.

use std::path::Path;

use dsp::loudness::Loudness;

use crate::decode::{Decoded, Tag};
use crate::AudioError;

mod flac;

/// Output containers and codecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Wav,
    Flac,
    #[cfg(feature = "mp3")]
    Mp3,
    Opus,
}

impl Format {
    pub fn parse(name: &str) -> Result<Format, AudioError> {
        match name.to_ascii_lowercase().as_str() {
            "wav" => Ok(Format::Wav),
            "flac" => Ok(Format::Flac),
            #[cfg(feature = "mp3")]
            "mp3" => Ok(Format::Mp3),
            #[cfg(not(feature = "mp3"))]
            "mp3" => Err(AudioError::UnsupportedFormat(
                "MP3 encoding is not built in (cargo feature `mp3`)".into(),
            )),
            "opus" | "ogg" => Ok(Format::Opus),
            other => Err(AudioError::UnsupportedFormat(format!(
                "output format {other:?}"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Wav => "wav",
            Format::Flac => "flac",
            #[cfg(feature = "mp3")]
            Format::Mp3 => "mp3",
            Format::Opus => "opus",
        }
    }

    pub fn extension(self) -> &'static str {
        self.name()
    }
}

/// One requested output.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub format: Format,
    /// Bit rate for lossy formats; MP3 picks the nearest standard CBR rate.
    pub bitrate_kbps: Option<u32>,
    /// MP3 only: LAME VBR quality 0 (best) to 9, used when no bit rate is given.
    pub quality: Option<u8>,
    pub rate_hz: Option<u32>,
    pub channels: Option<usize>,
    /// WAV and FLAC only: 16 or 24.
    pub bits_per_sample: Option<u32>,
}

/// Lossy bit-rate bounds accepted.
const BITRATE_MIN_KBPS: u32 = 6;
const BITRATE_MAX_KBPS: u32 = 510;
/// Default bit rates when the request names none.
const OPUS_DEFAULT_KBPS: u32 = 128;
/// Opus frame: 20 ms at 48 kHz.
const OPUS_FRAME_LEN: usize = 960;
/// Largest Opus packet libopus may produce (its documented recommendation).
const OPUS_PACKET_LEN_MAX: usize = 4000;
/// libopus complexity 0-10: the best, which is also what ffmpeg and
/// `opusenc` use unless told otherwise (libopus itself defaults to 9).
const OPUS_COMPLEXITY: u8 = 10;
/// Frames an encoder takes from the conversion at a time.
const CHUNK_FRAMES_LEN: usize = 4096;
/// Ceiling for normalised peaks, so a loudness gain never clips.
pub const NORMALIZE_PEAK_MAX_DBTP: f64 = -1.0;

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub format: Format,
    pub bytes: u64,
    pub rate_hz: u32,
    pub channels: usize,
    pub bitrate_kbps: Option<u32>,
    pub gain_db: f64,
}

impl Target {
    pub fn validate(&self) -> Result<(), AudioError> {
        if let Some(kbps) = self.bitrate_kbps {
            if !(BITRATE_MIN_KBPS..=BITRATE_MAX_KBPS).contains(&kbps) {
                return Err(AudioError::InvalidInput(format!(
                    "bit rate {kbps} kbps outside {BITRATE_MIN_KBPS}..={BITRATE_MAX_KBPS}"
                )));
            }
        }
        if let Some(q) = self.quality {
            if q > 9 {
                return Err(AudioError::InvalidInput(format!(
                    "quality {q} outside 0..=9"
                )));
            }
        }
        if let Some(channels) = self.channels {
            if !(1..=2).contains(&channels) {
                return Err(AudioError::InvalidInput(format!(
                    "channels {channels}: 1 or 2"
                )));
            }
        }
        if let Some(rate_hz) = self.rate_hz {
            if !(8_000..=192_000).contains(&rate_hz) {
                return Err(AudioError::InvalidInput(format!(
                    "sample rate {rate_hz} Hz"
                )));
            }
            if self.format == Format::Opus
                && ![8_000, 12_000, 16_000, 24_000, 48_000].contains(&rate_hz)
            {
                return Err(AudioError::InvalidInput(format!(
                    "Opus cannot run at {rate_hz} Hz"
                )));
            }
        }
        if let Some(bits) = self.bits_per_sample {
            if bits != 16 && bits != 24 {
                return Err(AudioError::InvalidInput(format!(
                    "{bits} bits per sample: 16 or 24"
                )));
            }
        }
        Ok(())
    }
}

/// Gain that normalises to `target_lufs` without pushing the true peak over
/// [`NORMALIZE_PEAK_MAX_DBTP`].
pub fn normalization_gain_db(loudness: &Loudness, target_lufs: f64) -> f64 {
    let Some(gain_db) = loudness.gain_to_db(target_lufs) else {
        return 0.0;
    };
    match loudness.true_peak_dbtp {
        Some(peak_dbtp) => gain_db.min(NORMALIZE_PEAK_MAX_DBTP - peak_dbtp),
        None => gain_db,
    }
}

/// Loudness normalisation of an output.
#[derive(Debug, Clone, Copy)]
pub struct Normalize<'a> {
    pub target_lufs: f64,
    /// The source's loudness, reused when the output keeps its layout.
    pub source: &'a Loudness,
}

/// Encodes `decoded` to `path` as `target` asks, optionally normalised.
pub fn transcode(
    decoded: &Decoded,
    target: &Target,
    normalize: Option<Normalize<'_>>,
    path: &Path,
) -> Result<Written, AudioError> {
    target.validate()?;
    let rate_hz = match target.format {
        // Opus always runs at 48 kHz unless told otherwise; decoders output 48 kHz.
        Format::Opus => target.rate_hz.unwrap_or(48_000),
        _ => target.rate_hz.unwrap_or(decoded.rate_hz),
    };
    let channels = target.channels.unwrap_or(decoded.channels.min(2));
    let gain_db = match normalize {
        None => 0.0,
        // A new channel layout changes loudness (BS.1770 sums channels):
        // measure the output's layout (at the source rate, which leaves
        // loudness as it is).
        Some(n) if channels != decoded.channels => {
            let mapped = Stream::new(decoded, channels, decoded.rate_hz, 1.0)?.collect()?;
            let measured = dsp::loudness::measure(&mapped, channels, decoded.rate_hz)?;
            normalization_gain_db(&measured, n.target_lufs)
        }
        Some(n) => normalization_gain_db(n.source, n.target_lufs),
    };
    let gain = 10f32.powf(gain_db as f32 / 20.0);
    let mut stream = Stream::new(decoded, channels, rate_hz, gain)?;
    let tags = &decoded.info.tags;
    let bytes = match target.format {
        Format::Wav => wav(&mut stream, bits_of(target, decoded), tags)?,
        Format::Flac => flac::encode(&mut stream, bits_of(target, decoded), tags)?,
        #[cfg(feature = "mp3")]
        Format::Mp3 => mp3(&mut stream, target, tags)?,
        Format::Opus => opus(
            &mut stream,
            target.bitrate_kbps.unwrap_or(OPUS_DEFAULT_KBPS),
            tags,
        )?,
    };
    std::fs::write(path, &bytes).map_err(|err| AudioError::io(path, err))?;
    Ok(Written {
        format: target.format,
        bytes: bytes.len() as u64,
        rate_hz,
        channels,
        bitrate_kbps: match target.format {
            Format::Wav | Format::Flac => None,
            #[cfg(feature = "mp3")]
            Format::Mp3 => {
                target
                    .bitrate_kbps
                    .map(mp3_bitrate_kbps)
                    .or(if target.quality.is_some() {
                        None
                    } else {
                        Some(mp3_bitrate_kbps(MP3_DEFAULT_KBPS))
                    })
            }
            Format::Opus => Some(target.bitrate_kbps.unwrap_or(OPUS_DEFAULT_KBPS)),
        },
        gain_db,
    })
}

fn bits_of(target: &Target, decoded: &Decoded) -> u32 {
    target
        .bits_per_sample
        .unwrap_or(match decoded.info.bits_per_sample {
            Some(bits) if bits > 16 => 24,
            _ => 16,
        })
}

/// The audio an encoder sees, made piece by piece from the shared decode:
/// channel mapping, resampling and gain. No output holds the whole song at
/// its target layout in memory: for a 4-minute song those copies cost more in
/// page faults and memory traffic than the resampling itself.
#[derive(Debug)]
struct Stream<'a> {
    decoded: &'a Decoded,
    channels: usize,
    rate_hz: u32,
    gain: f32,
    resampler: Option<dsp::resample::Resampler>,
    /// Source frames already taken.
    taken_frames: usize,
    /// The converted piece last handed out.
    ready: Vec<f32>,
    /// Channel-mapped source frames on their way to the resampler.
    mapped: Vec<f32>,
}

impl<'a> Stream<'a> {
    fn new(
        decoded: &'a Decoded,
        channels: usize,
        rate_hz: u32,
        gain: f32,
    ) -> Result<Stream<'a>, AudioError> {
        assert!(
            (1..=2).contains(&channels),
            "target channels validated to 1 or 2"
        );
        let resampler = if rate_hz == decoded.rate_hz {
            None
        } else {
            Some(dsp::resample::Resampler::new(
                channels,
                decoded.rate_hz,
                rate_hz,
            )?)
        };
        Ok(Stream {
            decoded,
            channels,
            rate_hz,
            gain,
            resampler,
            taken_frames: 0,
            ready: Vec::with_capacity(2 * CHUNK_FRAMES_LEN * channels),
            mapped: Vec::with_capacity(CHUNK_FRAMES_LEN * channels),
        })
    }

    fn channels(&self) -> usize {
        self.channels
    }

    fn rate_hz(&self) -> u32 {
        self.rate_hz
    }

    /// Frames the stream yields in all.
    fn frames_len(&self) -> usize {
        let source_frames = self.decoded.frames_len();
        match self.resampler {
            None => source_frames,
            Some(_) => dsp::resample::out_frames_len(
                source_frames as u64,
                self.decoded.rate_hz,
                self.rate_hz,
            ) as usize,
        }
    }

    /// True when the encoder can read the decoded samples as they are.
    fn passes_through(&self) -> bool {
        self.channels == self.decoded.channels && self.resampler.is_none() && self.gain == 1.0
    }

    /// The next piece of converted audio (whole interleaved frames, of no
    /// fixed length); `None` at the end.
    fn next_chunk(&mut self) -> Result<Option<&[f32]>, AudioError> {
        let source_channels = self.decoded.channels;
        let total_frames = self.decoded.frames_len();
        if self.passes_through() {
            // No conversion at all: the decoded samples themselves.
            if self.taken_frames == total_frames {
                return Ok(None);
            }
            let start = self.taken_frames;
            self.taken_frames = (start + CHUNK_FRAMES_LEN).min(total_frames);
            let decoded = self.decoded;
            return Ok(Some(
                &decoded.samples[start * source_channels..self.taken_frames * source_channels],
            ));
        }
        self.ready.clear();
        while self.ready.is_empty() {
            if self.taken_frames == total_frames {
                match self.resampler.take() {
                    Some(resampler) => resampler.finish(&mut self.ready)?,
                    None => return Ok(None),
                }
                if self.ready.is_empty() {
                    return Ok(None);
                }
                break;
            }
            let end = (self.taken_frames + CHUNK_FRAMES_LEN).min(total_frames);
            let source =
                &self.decoded.samples[self.taken_frames * source_channels..end * source_channels];
            self.taken_frames = end;
            let mapped = if self.resampler.is_some() {
                &mut self.mapped
            } else {
                &mut self.ready
            };
            mapped.clear();
            map_channels(source, source_channels, self.channels, mapped);
            if let Some(resampler) = self.resampler.as_mut() {
                resampler.push(&self.mapped, &mut self.ready)?;
            }
        }
        if self.gain != 1.0 {
            let gain = self.gain;
            self.ready.iter_mut().for_each(|s| *s *= gain);
        }
        Ok(Some(&self.ready))
    }

    /// Every remaining frame in one buffer.
    fn collect(mut self) -> Result<Vec<f32>, AudioError> {
        let mut all = Vec::with_capacity(self.frames_len() * self.channels);
        while let Some(chunk) = self.next_chunk()? {
            all.extend_from_slice(chunk);
        }
        Ok(all)
    }
}

/// Appends `source` (interleaved, `from` channels) as `to` channels: a mean
/// for mono, front left and right (or the mono channel twice) for stereo.
fn map_channels(source: &[f32], from: usize, to: usize, out: &mut Vec<f32>) {
    match (from, to) {
        (f, t) if f == t => out.extend_from_slice(source),
        (_, 1) => {
            let scale = 1.0 / from as f32;
            out.extend(
                source
                    .chunks_exact(from)
                    .map(|frame| frame.iter().sum::<f32>() * scale),
            );
        }
        (1, 2) => out.extend(source.iter().flat_map(|&s| [s, s])),
        (_, 2) => out.extend(
            source
                .chunks_exact(from)
                .flat_map(|frame| [frame[0], frame[1]]),
        ),
        _ => unreachable!("target channels validated to 1 or 2"),
    }
}

/// A sample as a signed integer of `bits` bits: rounded to nearest (ties to
/// even, like `lrint`) and clamped.
fn quantize(sample: f32, bits: u32) -> i32 {
    let scale = (1i64 << (bits - 1)) as f64;
    (f64::from(sample) * scale)
        .clamp(-scale, scale - 1.0)
        .round_ties_even() as i32
}

/// [`quantize`] over a slice, into `out` (replacing its contents). Written
/// to vectorise: 16-bit values round in `f32` by adding and removing 1.5 * 2^23
/// (exact below 2^22), with no call to a rounding function.
fn quantize_into(samples: &[f32], bits: u32, out: &mut Vec<i32>) {
    out.clear();
    if bits > 16 {
        out.extend(samples.iter().map(|&s| quantize(s, bits)));
        return;
    }
    const ROUNDER: f32 = 12_582_912.0;
    let scale = (1i32 << (bits - 1)) as f32;
    out.resize(samples.len(), 0);
    for (int, &sample) in out.iter_mut().zip(samples) {
        let scaled = (sample * scale).clamp(-scale, scale - 1.0);
        *int = ((scaled + ROUNDER) - ROUNDER) as i32;
    }
}

/// RIFF/WAVE PCM with a LIST/INFO chunk for the tags.
fn wav(stream: &mut Stream<'_>, bits: u32, tags: &[Tag]) -> Result<Vec<u8>, AudioError> {
    let channels = stream.channels();
    let bytes_per_sample = (bits / 8) as usize;
    let data_len = stream.frames_len() * channels * bytes_per_sample;
    let info = riff_info(tags);
    let mut out = Vec::with_capacity(data_len + 44 + info.len());
    let riff_len = 4 + (8 + 16) + (8 + data_len + data_len % 2) + info.len();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(riff_len as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&(channels as u16).to_le_bytes());
    out.extend_from_slice(&stream.rate_hz().to_le_bytes());
    let block_align = channels * bytes_per_sample;
    out.extend_from_slice(&((stream.rate_hz() as usize * block_align) as u32).to_le_bytes());
    out.extend_from_slice(&(block_align as u16).to_le_bytes());
    out.extend_from_slice(&(bits as u16).to_le_bytes());
    out.extend_from_slice(&info);
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data_len as u32).to_le_bytes());
    let mut ints = Vec::with_capacity(CHUNK_FRAMES_LEN * channels);
    while let Some(chunk) = stream.next_chunk()? {
        quantize_into(chunk, bits, &mut ints);
        for value in &ints {
            out.extend_from_slice(&value.to_le_bytes()[..bytes_per_sample]);
        }
    }
    if data_len % 2 == 1 {
        out.push(0);
    }
    Ok(out)
}

fn riff_info(tags: &[Tag]) -> Vec<u8> {
    const MAP: [(&str, &[u8; 4]); 6] = [
        ("TITLE", b"INAM"),
        ("ARTIST", b"IART"),
        ("ALBUM", b"IPRD"),
        ("GENRE", b"IGNR"),
        ("DATE", b"ICRD"),
        ("COMMENT", b"ICMT"),
    ];
    let mut body = Vec::new();
    for (key, id) in MAP {
        if let Some(tag) = tags.iter().find(|t| t.key == key) {
            let mut value = tag.value.clone().into_bytes();
            value.push(0);
            body.extend_from_slice(id);
            body.extend_from_slice(&(value.len() as u32).to_le_bytes());
            body.extend_from_slice(&value);
            if value.len() % 2 == 1 {
                body.push(0);
            }
        }
    }
    if body.is_empty() {
        return body;
    }
    let mut chunk = b"LIST".to_vec();
    chunk.extend_from_slice(&((body.len() + 4) as u32).to_le_bytes());
    chunk.extend_from_slice(b"INFO");
    chunk.extend_from_slice(&body);
    chunk
}

/// Vorbis comment block (used by FLAC and OpusTags).
fn vorbis_comments(vendor: &str, tags: &[Tag]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    out.extend_from_slice(vendor.as_bytes());
    out.extend_from_slice(&(tags.len() as u32).to_le_bytes());
    for tag in tags {
        let entry = format!("{}={}", tag.key, tag.value);
        out.extend_from_slice(&(entry.len() as u32).to_le_bytes());
        out.extend_from_slice(entry.as_bytes());
    }
    out
}

/// Vorbis comment keys must be printable ASCII without '='.
fn comment_tags(tags: &[Tag]) -> Vec<Tag> {
    tags.iter()
        .filter(|t| {
            t.key
                .bytes()
                .all(|b| (0x20..=0x7d).contains(&b) && b != b'=')
        })
        .cloned()
        .collect()
}

const VENDOR: &str = "chorus";

#[cfg(feature = "mp3")]
const MP3_DEFAULT_KBPS: u32 = 192;

#[cfg(feature = "mp3")]
fn mp3_bitrate_kbps(kbps: u32) -> u32 {
    const RATES: [u32; 16] = [
        8, 16, 24, 32, 40, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ];
    *RATES
        .iter()
        .min_by_key(|&&r| r.abs_diff(kbps))
        .unwrap_or(&MP3_DEFAULT_KBPS)
}

#[cfg(feature = "mp3")]
fn mp3(stream: &mut Stream<'_>, target: &Target, tags: &[Tag]) -> Result<Vec<u8>, AudioError> {
    use mp3lame_encoder::{
        Bitrate, Builder, FlushGap, Id3Tag, InterleavedPcm, MonoPcm, Quality, VbrMode,
    };
    let encode_error = |what: &str| AudioError::Encode(format!("lame: {what}"));
    let mut builder = Builder::new().ok_or_else(|| encode_error("cannot allocate"))?;
    builder
        .set_num_channels(stream.channels() as u8)
        .map_err(|e| encode_error(&format!("{e:?}")))?;
    builder
        .set_sample_rate(stream.rate_hz())
        .map_err(|e| encode_error(&format!("{e:?}")))?;
    builder
        .set_quality(Quality::Good)
        .map_err(|e| encode_error(&format!("{e:?}")))?;
    match (target.bitrate_kbps, target.quality) {
        (None, Some(q)) => {
            builder
                .set_vbr_mode(VbrMode::Mtrh)
                .map_err(|e| encode_error(&format!("{e:?}")))?;
            let quality = [
                Quality::Best,
                Quality::SecondBest,
                Quality::NearBest,
                Quality::VeryNice,
                Quality::Nice,
                Quality::Good,
                Quality::Decent,
                Quality::Ok,
                Quality::SecondWorst,
                Quality::Worst,
            ][usize::from(q.min(9))];
            builder
                .set_vbr_quality(quality)
                .map_err(|e| encode_error(&format!("{e:?}")))?;
        }
        (kbps, _) => {
            let rate = match mp3_bitrate_kbps(kbps.unwrap_or(MP3_DEFAULT_KBPS)) {
                8 => Bitrate::Kbps8,
                16 => Bitrate::Kbps16,
                24 => Bitrate::Kbps24,
                32 => Bitrate::Kbps32,
                40 => Bitrate::Kbps40,
                48 => Bitrate::Kbps48,
                64 => Bitrate::Kbps64,
                80 => Bitrate::Kbps80,
                96 => Bitrate::Kbps96,
                112 => Bitrate::Kbps112,
                128 => Bitrate::Kbps128,
                160 => Bitrate::Kbps160,
                192 => Bitrate::Kbps192,
                224 => Bitrate::Kbps224,
                256 => Bitrate::Kbps256,
                _ => Bitrate::Kbps320,
            };
            builder
                .set_brate(rate)
                .map_err(|e| encode_error(&format!("{e:?}")))?;
        }
    }
    // The LAME tag records encoder delay and padding, so decoders (and
    // ffprobe) trim them and the duration matches the source.
    builder
        .set_to_write_vbr_tag(true)
        .map_err(|e| encode_error(&format!("{e:?}")))?;
    let find = |key: &str| {
        tags.iter()
            .find(|t| t.key == key)
            .map_or(&[][..], |t| t.value.as_bytes())
    };
    let id3 = Id3Tag {
        title: find("TITLE"),
        artist: find("ARTIST"),
        album: find("ALBUM"),
        album_art: &[],
        year: find("DATE"),
        comment: find("COMMENT"),
    };
    if id3.is_any_set() {
        builder
            .set_id3_tag(id3)
            .map_err(|e| encode_error(&format!("{e:?}")))?;
    }
    let mut encoder = builder
        .build()
        .map_err(|e| encode_error(&format!("{e:?}")))?;
    let channels = stream.channels();
    let mut out = Vec::with_capacity(mp3lame_encoder::max_required_buffer_size(
        stream.frames_len(),
    ));
    while let Some(chunk) = stream.next_chunk()? {
        out.reserve(mp3lame_encoder::max_required_buffer_size(
            chunk.len() / channels,
        ));
        let result = if channels == 1 {
            encoder.encode_to_vec(MonoPcm(chunk), &mut out)
        } else {
            encoder.encode_to_vec(InterleavedPcm(chunk), &mut out)
        };
        result.map_err(|e| encode_error(&format!("{e:?}")))?;
    }
    out.reserve(8192);
    encoder
        .flush_to_vec::<FlushGap>(&mut out)
        .map_err(|e| encode_error(&format!("{e:?}")))?;
    // The LAME tag goes between the ID3v2 tag and the audio (the encoder
    // leaves no placeholder for it in this binding).
    let mut lame_tag = Vec::with_capacity(encoder.lame_tag_size());
    if encoder.lame_tag_encode_to_vec(&mut lame_tag).is_some() {
        let at = encoder.id3v2_tag_size().min(out.len());
        out.splice(at..at, lame_tag);
    }
    Ok(out)
}

fn opus(stream: &mut Stream<'_>, kbps: u32, tags: &[Tag]) -> Result<Vec<u8>, AudioError> {
    use ogg::writing::{PacketWriteEndInfo, PacketWriter};
    use opusic_c::{Application, Bitrate, Channels, Encoder, SampleRate};
    let encode_error = |what: String| AudioError::Encode(format!("libopus: {what}"));
    let channels = stream.channels();
    let rate_hz = stream.rate_hz();
    let rate = match rate_hz {
        8_000 => SampleRate::Hz8000,
        12_000 => SampleRate::Hz12000,
        16_000 => SampleRate::Hz16000,
        24_000 => SampleRate::Hz24000,
        _ => SampleRate::Hz48000,
    };
    let layout = if channels == 1 {
        Channels::Mono
    } else {
        Channels::Stereo
    };
    let mut encoder = Encoder::new(layout, rate, Application::Audio)
        .map_err(|e| encode_error(format!("{e:?}")))?;
    encoder
        .set_bitrate(Bitrate::Value(kbps * 1000))
        .map_err(|e| encode_error(format!("{e:?}")))?;
    encoder
        .set_complexity(OPUS_COMPLEXITY)
        .map_err(|e| encode_error(format!("{e:?}")))?;
    let lookahead = encoder
        .get_look_ahead()
        .map_err(|e| encode_error(format!("{e:?}")))? as usize;
    // Granule positions count 48 kHz samples whatever the encoder rate.
    let to_48k = 48_000 / rate_hz as usize;
    let frame_len = OPUS_FRAME_LEN / to_48k;
    let pre_skip = lookahead * to_48k;
    let frames = stream.frames_len();
    let serial = 0x6368_6f72; // "chor": one logical stream per file.
    let mut out = Vec::new();
    let mut writer = PacketWriter::new(&mut out);
    let mut head = b"OpusHead".to_vec();
    head.push(1);
    head.push(channels as u8);
    head.extend_from_slice(&(pre_skip as u16).to_le_bytes());
    head.extend_from_slice(&rate_hz.to_le_bytes());
    head.extend_from_slice(&0i16.to_le_bytes());
    head.push(0);
    let io_error = |err: std::io::Error| AudioError::Encode(format!("ogg: {err}"));
    writer
        .write_packet(head, serial, PacketWriteEndInfo::EndPage, 0)
        .map_err(io_error)?;
    let mut comments = b"OpusTags".to_vec();
    comments.extend_from_slice(&vorbis_comments(VENDOR, &comment_tags(tags)));
    writer
        .write_packet(comments, serial, PacketWriteEndInfo::EndPage, 0)
        .map_err(io_error)?;
    // Encode the signal plus the encoder's look-ahead in zeros, so that the
    // last real samples come out; the final granule trims the excess.
    let total_frames = frames + lookahead;
    let packets_len = total_frames.div_ceil(frame_len);
    let mut packet = Vec::with_capacity(OPUS_PACKET_LEN_MAX);
    let mut encode_frame = |frame: &[f32], index: usize| -> Result<(), AudioError> {
        packet.clear();
        encoder
            .encode_float_to_vec(frame, &mut packet)
            .map_err(|e| encode_error(format!("{e:?}")))?;
        let last = index + 1 == packets_len;
        let granule = if last {
            (pre_skip + frames * to_48k) as u64
        } else {
            (pre_skip + (index + 1) * OPUS_FRAME_LEN) as u64
        };
        let end_info = if last {
            PacketWriteEndInfo::EndStream
        } else if (index + 1) % 50 == 0 {
            // About one page per second keeps seeking granular.
            PacketWriteEndInfo::EndPage
        } else {
            PacketWriteEndInfo::NormalPacket
        };
        writer
            .write_packet(packet.clone(), serial, end_info, granule)
            .map_err(io_error)
    };
    let mut frame = vec![0.0f32; frame_len * channels];
    let mut filled = 0;
    let mut index = 0;
    while let Some(chunk) = stream.next_chunk()? {
        let mut rest = chunk;
        while !rest.is_empty() {
            let n = (frame.len() - filled).min(rest.len());
            frame[filled..filled + n].copy_from_slice(&rest[..n]);
            filled += n;
            rest = &rest[n..];
            if filled == frame.len() {
                encode_frame(&frame, index)?;
                index += 1;
                filled = 0;
            }
        }
    }
    // The signal's last partial frame, then the look-ahead, in zeros.
    while index < packets_len {
        frame[filled..].fill(0.0);
        filled = 0;
        encode_frame(&frame, index)?;
        index += 1;
    }
    drop(writer);
    Ok(out)
}

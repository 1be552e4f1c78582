//! Decoding a file into interleaved `f32` samples: the single decode every
//! analysis and transcode of a job shares.
//!
//! symphonia handles every container and codec it knows (MP3, AAC/M4A, FLAC,
//! Vorbis, WAV, AIFF, ALAC, CAF, MKV/WebM); Opus packets, which symphonia can
//! demux but not decode, go to libopus. Bad files must fail with a code, never
//! panic or hang, so every loop has a bound and the decode runs under
//! `catch_unwind` as a last line of defence against bugs in third-party decoders.

use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use symphonia::core::audio::GenericAudioBufferRef;
use symphonia::core::codecs::audio::well_known::CODEC_ID_OPUS;
use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia::core::codecs::CodecParameters;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::{MetadataOptions, MetadataRevision, StandardTag};

use crate::AudioError;

/// Longest programme accepted: two hours (about 2.8 GB of stereo 48 kHz `f32`).
pub const DURATION_MAX_S: f64 = 2.0 * 3600.0;
/// Largest input file accepted.
pub const FILE_LEN_MAX: u64 = 4 << 30;
/// Most channels accepted (7.1 plus headroom).
pub const CHANNELS_MAX: usize = 16;
/// Highest sample rate accepted.
pub const RATE_MAX_HZ: u32 = 384_000;
/// Consecutive undecodable packets tolerated before the file is declared corrupt.
const DECODE_ERRORS_MAX: usize = 100;
/// Packets read without any audio coming out before giving up (guards
/// against demuxers looping on garbage).
const PACKETS_WITHOUT_AUDIO_MAX: usize = 100_000;
/// Most tags kept, and longest tag value, so a hostile header cannot balloon the manifest.
const TAGS_MAX: usize = 64;
const TAG_VALUE_LEN_MAX: usize = 1024;
/// Largest Opus frame: 120 ms at 48 kHz.
const OPUS_FRAME_LEN_MAX: usize = 5760;

/// One metadata tag, with a normalised (Vorbis comment style) key when the
/// tag is one of the well-known ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// What the container says about the audio before decoding it.
#[derive(Debug, Clone)]
pub struct Info {
    pub container: String,
    pub codec: String,
    pub rate_hz: u32,
    pub channels: usize,
    pub bits_per_sample: Option<u32>,
    /// Frames declared by the container, if any.
    pub frames_declared: Option<u64>,
    pub tags: Vec<Tag>,
    pub file_len: u64,
}

/// Decoded audio: interleaved samples at the source rate and channel count.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub info: Info,
    pub samples: Vec<f32>,
    pub channels: usize,
    pub rate_hz: u32,
}

impl Decoded {
    pub fn frames_len(&self) -> usize {
        self.samples.len() / self.channels.max(1)
    }

    pub fn duration_s(&self) -> f64 {
        self.frames_len() as f64 / f64::from(self.rate_hz.max(1))
    }
}

fn map_error(err: SymphoniaError) -> AudioError {
    match err {
        SymphoniaError::Unsupported(what) => AudioError::UnsupportedFormat(what.to_string()),
        SymphoniaError::LimitError(what) => AudioError::TooLarge(what.to_string()),
        SymphoniaError::IoError(io) => AudioError::InvalidInput(format!("unreadable stream: {io}")),
        SymphoniaError::DecodeError(what) => {
            AudioError::InvalidInput(format!("corrupt stream: {what}"))
        }
        other => AudioError::InvalidInput(other.to_string()),
    }
}

struct Opened {
    reader: Box<dyn FormatReader>,
    track_id: u32,
    params: AudioCodecParameters,
    info: Info,
}

fn open(path: &Path) -> Result<Opened, AudioError> {
    let file = File::open(path).map_err(|err| AudioError::io(path, err))?;
    let file_len = file
        .metadata()
        .map_err(|err| AudioError::io(path, err))?
        .len();
    if file_len == 0 {
        return Err(AudioError::InvalidInput("empty file".into()));
    }
    if file_len > FILE_LEN_MAX {
        return Err(AudioError::TooLarge(format!(
            "file of {file_len} bytes exceeds {FILE_LEN_MAX}"
        )));
    }
    let stream = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(extension) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(extension);
    }
    let mut reader = symphonia::default::get_probe()
        .probe(
            &hint,
            stream,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|err| match err {
            SymphoniaError::Unsupported(_) => {
                AudioError::UnsupportedFormat("not a recognised audio container".into())
            }
            other => map_error(other),
        })?;
    let track = reader
        .default_track(TrackType::Audio)
        .ok_or_else(|| AudioError::InvalidInput("no audio track".into()))?;
    let track_id = track.id;
    let Some(CodecParameters::Audio(params)) = track.codec_params.clone() else {
        return Err(AudioError::InvalidInput(
            "audio track without codec parameters".into(),
        ));
    };
    let frames_declared = track.num_frames;
    let codec = if params.codec == CODEC_ID_OPUS {
        "opus".to_string()
    } else {
        symphonia::default::get_codecs()
            .get_audio_decoder(params.codec)
            .map_or_else(
                || "unknown".to_string(),
                |d| d.codec.info.short_name.to_string(),
            )
    };
    let container = reader.format_info().short_name.to_string();
    let tags = reader
        .metadata()
        .skip_to_latest()
        .map(tags_of)
        .unwrap_or_default();
    let info = Info {
        container,
        codec,
        rate_hz: params.sample_rate.unwrap_or(0),
        channels: params.channels.as_ref().map_or(0, |c| c.count()),
        bits_per_sample: params.bits_per_sample,
        frames_declared,
        tags,
        file_len,
    };
    Ok(Opened {
        reader,
        track_id,
        params,
        info,
    })
}

/// Normalised key for the tags that transcodes carry over.
fn standard_key(tag: &StandardTag) -> Option<&'static str> {
    Some(match tag {
        StandardTag::TrackTitle(_) => "TITLE",
        StandardTag::Artist(_) => "ARTIST",
        StandardTag::Album(_) => "ALBUM",
        StandardTag::AlbumArtist(_) => "ALBUMARTIST",
        StandardTag::Genre(_) => "GENRE",
        StandardTag::RecordingDate(_) | StandardTag::ReleaseDate(_) => "DATE",
        StandardTag::TrackNumber(_) => "TRACKNUMBER",
        StandardTag::Comment(_) => "COMMENT",
        StandardTag::Composer(_) => "COMPOSER",
        _ => return None,
    })
}

fn tags_of(revision: &MetadataRevision) -> Vec<Tag> {
    let mut tags: Vec<Tag> = Vec::new();
    let all = revision.media.tags.iter().chain(
        revision
            .per_track
            .iter()
            .flat_map(|t| t.metadata.tags.iter()),
    );
    for tag in all {
        let key = tag
            .std
            .as_ref()
            .and_then(standard_key)
            .map_or_else(|| tag.raw.key.to_ascii_uppercase(), str::to_string);
        let mut value = tag.raw.value.to_string();
        if value.len() > TAG_VALUE_LEN_MAX || key.is_empty() {
            continue;
        }
        value.retain(|c| !c.is_control());
        if tags.len() < TAGS_MAX && !tags.iter().any(|t| t.key == key) {
            tags.push(Tag { key, value });
        }
    }
    tags
}

/// Reads the container headers only (no decode).
pub fn probe(path: &Path) -> Result<Info, AudioError> {
    guarded(|| open(path).map(|opened| opened.info))
}

/// Decodes the whole file, or its first `limit_s` seconds.
pub fn decode(path: &Path, limit_s: Option<f64>) -> Result<Decoded, AudioError> {
    guarded(|| decode_unguarded(path, limit_s))
}

fn guarded<T>(work: impl FnOnce() -> Result<T, AudioError>) -> Result<T, AudioError> {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|_| {
        Err(AudioError::InvalidInput(
            "the decoder failed on malformed data".into(),
        ))
    })
}

/// Where decoded samples go: checks the layout and the duration limit.
struct Sink {
    samples: Vec<f32>,
    /// The container's frame count, if it gives one: a hint for the first
    /// allocation, never trusted beyond the duration limit.
    frames_declared: Option<u64>,
    channels: usize,
    rate_hz: u32,
    frames_max: Option<usize>,
}

impl Sink {
    fn push(
        &mut self,
        interleaved: &[f32],
        channels: usize,
        rate_hz: u32,
    ) -> Result<bool, AudioError> {
        if channels == 0 || channels > CHANNELS_MAX || rate_hz == 0 || rate_hz > RATE_MAX_HZ {
            return Err(AudioError::UnsupportedFormat(format!(
                "{channels} channels at {rate_hz} Hz"
            )));
        }
        if self.channels == 0 {
            self.channels = channels;
            self.rate_hz = rate_hz;
            self.frames_max = Some(match self.frames_max {
                Some(limit_frames) => limit_frames,
                None => (DURATION_MAX_S * f64::from(rate_hz)) as usize,
            });
            // One allocation of the right size instead of a doubling series
            // (each step a copy of everything so far and fresh page faults).
            // A header that lies costs at most address space: `try_` so an
            // impossible reservation is skipped rather than fatal.
            if let (Some(declared), Some(limit)) = (self.frames_declared, self.frames_max) {
                // A second of slack: decoders may emit a little more than declared.
                let frames = (declared as usize)
                    .saturating_add(rate_hz as usize)
                    .min(limit);
                if self.samples.try_reserve_exact(frames * channels).is_ok() {
                    advise_huge_pages(&mut self.samples);
                }
            }
        } else if (channels, rate_hz) != (self.channels, self.rate_hz) {
            return Err(AudioError::UnsupportedFormat(
                "channel count or sample rate changes mid-stream".into(),
            ));
        }
        self.samples.extend_from_slice(interleaved);
        let frames = self.samples.len() / self.channels;
        let limit = self.frames_max.unwrap_or(usize::MAX);
        Ok(frames >= limit)
    }
}

/// Asks the kernel to back a large sample buffer with transparent huge pages
/// where it allows that on request (`madvise` mode): a 4-minute stereo song
/// is about 21,000 page faults on 4 KiB pages, a few dozen on 2 MiB ones.
/// Only advice: if the kernel says no, nothing changes.
#[cfg(target_os = "linux")]
fn advise_huge_pages(samples: &mut Vec<f32>) {
    const PAGE_LEN: usize = 4096;
    let start = samples.as_mut_ptr() as usize;
    let end = start + samples.capacity() * std::mem::size_of::<f32>();
    let aligned_start = start.next_multiple_of(PAGE_LEN);
    if end > aligned_start {
        let len = (end - aligned_start) / PAGE_LEN * PAGE_LEN;
        // SAFETY: the range lies inside the vector's own allocation and
        // MADV_HUGEPAGE changes no contents, only how pages are backed.
        unsafe { libc::madvise(aligned_start as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_samples: &mut Vec<f32>) {}

fn decode_unguarded(path: &Path, limit_s: Option<f64>) -> Result<Decoded, AudioError> {
    let Opened {
        mut reader,
        track_id,
        params,
        mut info,
    } = open(path)?;
    let mut decoder = Decoder::new(&params)?;
    let mut sink = Sink {
        samples: Vec::new(),
        frames_declared: info.frames_declared,
        channels: 0,
        rate_hz: 0,
        frames_max: None,
    };
    let mut truncate_to_limit = false;
    let mut errors_in_row = 0usize;
    let mut packets_without_audio = 0usize;
    let mut scratch: Vec<f32> = Vec::new();
    loop {
        let packet = match reader.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            // A truncated file ends early: keep what decoded, if anything.
            Err(SymphoniaError::IoError(err))
                if err.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                break
            }
            Err(SymphoniaError::ResetRequired) => {
                return Err(AudioError::UnsupportedFormat("chained streams".into()))
            }
            Err(err) => {
                if sink.samples.is_empty() {
                    return Err(map_error(err));
                }
                break;
            }
        };
        if packet.track_id != track_id {
            continue;
        }
        let produced = decoder.decode(&packet, &mut scratch);
        match produced {
            Ok(Some((channels, rate_hz))) => {
                errors_in_row = 0;
                if scratch.is_empty() {
                    packets_without_audio += 1;
                } else {
                    packets_without_audio = 0;
                }
                if sink.frames_max.is_none() {
                    if let Some(limit_s) = limit_s {
                        sink.frames_max = Some((limit_s * f64::from(rate_hz)) as usize);
                        truncate_to_limit = true;
                    }
                }
                if sink.push(&scratch, channels, rate_hz)? {
                    if truncate_to_limit {
                        break;
                    }
                    return Err(AudioError::TooLarge(format!(
                        "longer than {DURATION_MAX_S} s"
                    )));
                }
            }
            Ok(None) => packets_without_audio += 1,
            Err(err @ AudioError::InvalidInput(_)) => {
                errors_in_row += 1;
                if errors_in_row > DECODE_ERRORS_MAX {
                    return Err(err);
                }
            }
            Err(err) => return Err(err),
        }
        if packets_without_audio > PACKETS_WITHOUT_AUDIO_MAX {
            return Err(AudioError::InvalidInput("no audio in the stream".into()));
        }
    }
    if sink.samples.is_empty() || sink.channels == 0 {
        return Err(AudioError::InvalidInput("no audio could be decoded".into()));
    }
    if truncate_to_limit {
        let frames_max = sink.frames_max.unwrap_or(usize::MAX);
        sink.samples.truncate(frames_max * sink.channels);
    }
    // Containers may omit these; the decoded stream is the truth.
    info.rate_hz = sink.rate_hz;
    info.channels = sink.channels;
    Ok(Decoded {
        info,
        samples: sink.samples,
        channels: sink.channels,
        rate_hz: sink.rate_hz,
    })
}

/// symphonia's decoder, or libopus for Opus.
enum Decoder {
    Symphonia(Box<dyn AudioDecoder>),
    Opus {
        decoder: OpusDecoder,
        channels: usize,
        /// Linear factor of the OpusHead output gain (1 when there is none).
        gain: f32,
        buffer: Vec<f32>,
    },
}

/// libopus: one stream (mono or stereo, channel mapping family 0) or
/// several (family 1, up to 8 channels in Vorbis order).
enum OpusDecoder {
    Single(opusic_c::Decoder),
    Multi(opusic_c::multistream::Decoder),
}

/// Most channels of channel mapping family 1 (RFC 7845, 5.1.1.2).
const OPUS_CHANNELS_MAX: usize = 8;

/// libopus puts family 1 channels in Vorbis order (front left, centre,
/// front right, ...); the rest of the engine, like WAV and symphonia's other
/// decoders, expects front left, front right, centre, LFE, back, side.
/// `VORBIS_TO_WAV[n - 1][k]` is the Vorbis channel that goes to position `k`.
const VORBIS_TO_WAV: [&[usize]; OPUS_CHANNELS_MAX] = [
    &[0],
    &[0, 1],
    &[0, 2, 1],
    &[0, 1, 2, 3],
    &[0, 2, 1, 3, 4],
    &[0, 2, 1, 5, 3, 4],
    &[0, 2, 1, 6, 5, 3, 4],
    &[0, 2, 1, 7, 5, 6, 3, 4],
];

/// The fields of an OpusHead (RFC 7845, 5.1) that decoding needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OpusHead {
    channels: usize,
    /// Gain to apply to the output, in dB as Q7.8 fixed point.
    output_gain_q8: i16,
    family: u8,
    /// Family 1 only: streams, coupled (stereo) streams, channel mapping.
    streams: u8,
    coupled: u8,
    mapping: Vec<u8>,
}

impl OpusHead {
    fn parse(header: &[u8]) -> Result<OpusHead, AudioError> {
        let bad = |what: &str| AudioError::InvalidInput(format!("OpusHead: {what}"));
        if header.len() < 19 || &header[..8] != b"OpusHead" {
            return Err(bad("missing or truncated"));
        }
        let channels = usize::from(header[9]);
        let head = OpusHead {
            channels,
            output_gain_q8: i16::from_le_bytes([header[16], header[17]]),
            family: header[18],
            streams: 1,
            coupled: u8::from(channels == 2),
            mapping: Vec::new(),
        };
        if channels == 0 {
            return Err(bad("no channels"));
        }
        if head.family == 0 {
            return Ok(head);
        }
        let table = header
            .get(21..21 + channels)
            .ok_or_else(|| bad("truncated channel mapping"))?;
        Ok(OpusHead {
            streams: header[19],
            coupled: header[20],
            mapping: table.to_vec(),
            ..head
        })
    }

    /// The linear factor of the output gain: 10^(dB / 20).
    fn gain(&self) -> f32 {
        10f32.powf(f32::from(self.output_gain_q8) / 256.0 / 20.0)
    }

    fn decoder(&self) -> Result<OpusDecoder, AudioError> {
        let libopus =
            |err: opusic_c::ErrorCode| AudioError::UnsupportedFormat(format!("libopus: {err:?}"));
        let rate = opusic_c::SampleRate::Hz48000;
        match (self.family, self.channels) {
            (0, 1) => opusic_c::Decoder::new(opusic_c::Channels::Mono, rate),
            (0, 2) => opusic_c::Decoder::new(opusic_c::Channels::Stereo, rate),
            (0, n) => {
                return Err(AudioError::InvalidInput(format!(
                    "Opus channel mapping family 0 with {n} channels"
                )))
            }
            (1, n) if n <= OPUS_CHANNELS_MAX => return self.multistream().map(OpusDecoder::Multi),
            (family, n) => {
                return Err(AudioError::UnsupportedFormat(format!(
                    "Opus channel mapping family {family} ({n} channels)"
                )))
            }
        }
        .map(OpusDecoder::Single)
        .map_err(libopus)
    }

    /// A multistream decoder; libopus wants the channel count as a constant.
    fn multistream(&self) -> Result<opusic_c::multistream::Decoder, AudioError> {
        use opusic_c::multistream::{Config, Decoder};
        let invalid = || AudioError::InvalidInput("Opus channel mapping out of range".into());
        let rate = opusic_c::SampleRate::Hz48000;
        macro_rules! with_channels {
            ($($n:literal)*) => {
                match self.mapping.len() {
                    $($n => {
                        let mapping: [u8; $n] = self.mapping[..].try_into().map_err(|_| invalid())?;
                        let config = Config::try_new(self.streams, self.coupled, mapping)
                            .ok_or_else(invalid)?;
                        Decoder::new(config, rate)
                    })*
                    _ => return Err(invalid()),
                }
            };
        }
        with_channels!(1 2 3 4 5 6 7 8)
            .map_err(|err| AudioError::InvalidInput(format!("Opus channel mapping: {err:?}")))
    }
}

impl Decoder {
    fn new(params: &AudioCodecParameters) -> Result<Decoder, AudioError> {
        if params.codec == CODEC_ID_OPUS {
            let head = match params.extra_data.as_deref() {
                Some(header) => OpusHead::parse(header)?,
                // No header kept by the demuxer: plain stereo or mono.
                None => {
                    let channels = params.channels.as_ref().map_or(2, |c| c.count());
                    OpusHead {
                        channels,
                        output_gain_q8: 0,
                        family: 0,
                        streams: 1,
                        coupled: u8::from(channels == 2),
                        mapping: Vec::new(),
                    }
                }
            };
            return Ok(Decoder::Opus {
                decoder: head.decoder()?,
                channels: head.channels,
                gain: head.gain(),
                buffer: Vec::with_capacity(OPUS_FRAME_LEN_MAX * head.channels),
            });
        }
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(params, &AudioDecoderOptions::default())
            .map_err(|err| match err {
                SymphoniaError::Unsupported(_) => {
                    AudioError::UnsupportedFormat(format!("no decoder for codec {}", params.codec))
                }
                other => map_error(other),
            })?;
        Ok(Decoder::Symphonia(decoder))
    }

    /// Decodes one packet into `out` (interleaved); returns its layout, or
    /// `None` when the packet carried no audio.
    fn decode(
        &mut self,
        packet: &symphonia::core::packet::Packet,
        out: &mut Vec<f32>,
    ) -> Result<Option<(usize, u32)>, AudioError> {
        out.clear();
        match self {
            Decoder::Symphonia(decoder) => match decoder.decode(packet) {
                Ok(buffer) => Ok(copy_out(&buffer, out)),
                Err(SymphoniaError::DecodeError(what)) => {
                    Err(AudioError::InvalidInput(format!("corrupt packet: {what}")))
                }
                Err(SymphoniaError::IoError(err)) => {
                    Err(AudioError::InvalidInput(format!("corrupt packet: {err}")))
                }
                Err(err) => Err(map_error(err)),
            },
            Decoder::Opus {
                decoder,
                channels,
                gain,
                buffer,
            } => {
                // A sized slice, not `decode_float_to_vec`: that one sets the
                // length to the frame count rather than frames times channels.
                buffer.resize(OPUS_FRAME_LEN_MAX * *channels, 0.0);
                let decoded = match decoder {
                    OpusDecoder::Single(d) => d.decode_float_to_slice(&packet.data, buffer, false),
                    OpusDecoder::Multi(d) => d.decode_float_to_slice(&packet.data, buffer, false),
                };
                let frames = decoded
                    .map_err(|err| {
                        AudioError::InvalidInput(format!("corrupt Opus packet: {err:?}"))
                    })?
                    .min(OPUS_FRAME_LEN_MAX);
                if *gain != 1.0 {
                    buffer[..frames * *channels]
                        .iter_mut()
                        .for_each(|s| *s *= *gain);
                }
                // Apply the container's pre-skip and end trimming, as symphonia's own decoders do.
                let trim_start = (packet.trim_start.get() as usize).min(frames);
                let trim_end = (packet.trim_end.get() as usize).min(frames - trim_start);
                let end = frames - trim_end;
                let kept = &buffer[trim_start * *channels..end * *channels];
                match decoder {
                    OpusDecoder::Multi(_) if *channels > 2 => {
                        let order = VORBIS_TO_WAV[*channels - 1];
                        for frame in kept.chunks_exact(*channels) {
                            out.extend(order.iter().map(|&c| frame[c]));
                        }
                    }
                    _ => out.extend_from_slice(kept),
                }
                Ok(Some((*channels, 48_000)))
            }
        }
    }
}

fn copy_out(buffer: &GenericAudioBufferRef<'_>, out: &mut Vec<f32>) -> Option<(usize, u32)> {
    let spec = buffer.spec();
    let channels = spec.channels().count();
    let rate_hz = spec.rate();
    out.resize(buffer.samples_interleaved(), 0.0);
    buffer.copy_to_slice_interleaved(&mut out[..]);
    Some((channels, rate_hz))
}

//! FLAC through libFLAC, the reference encoder (Xiph, BSD-3-Clause), built
//! from the sources `libflac-sys` bundles and linked statically.
//!
//! Why libFLAC through `libflac-sys` (feature `build-flac`, without Ogg):
//! - libFLAC is the reference: as fast as ffmpeg's own FLAC encoder at the
//!   same level (SIMD autocorrelation and residual coding), several times
//!   faster than the pure-Rust `flacenc` it replaces, and what `flac -5` writes.
//! - `libflac-sys` is the maintained binding (regular releases, raw bindings
//!   only, BSD-3-Clause like libFLAC). Its `build-flac` feature builds the
//!   bundled libFLAC with cmake, which `scripts/cmake` provides on a machine
//!   without one, so no system package is needed. The other bindings
//!   (`flac-sys`, `flac-bound`) are older, unmaintained or build through
//!   `libflac-sys` anyway.
//! - Only the stable stream-encoder API (libFLAC 1.3 and later) is used.
//!
//! The encoder writes into memory through callbacks: it seeks back at the end
//! to complete STREAMINFO (MD5 signature, minimum frame size), so the sink is
//! a cursor over a `Vec`, not an append-only buffer.

use std::ffi::{c_void, CStr};

use libflac_sys as sys;

use super::{comment_tags, quantize_into, Stream, CHUNK_FRAMES_LEN};
use crate::decode::Tag;
use crate::AudioError;

/// `flac -5`, and ffmpeg's default: the usual balance of speed and size.
/// One change from it (`flac -5 -M`): stereo decorrelation is chosen by a
/// full search of left/right/mid/side only every few frames, not on every
/// frame. That full search encodes each stereo frame four ways and is a fifth
/// of libFLAC's time; loose search loses under 0.1 % of size (ffmpeg's
/// encoder, which guesses the mode from a cheap estimate, writes files larger
/// still at its level 5).
const COMPRESSION_LEVEL: u32 = 5;

/// Where libFLAC writes: a byte vector with a position, for its seek back.
#[derive(Debug, Default)]
struct Sink {
    bytes: Vec<u8>,
    pos: usize,
}

unsafe extern "C" fn write_bytes(
    _encoder: *const sys::FLAC__StreamEncoder,
    buffer: *const sys::FLAC__byte,
    len: usize,
    _samples: u32,
    _frame: u32,
    sink: *mut c_void,
) -> sys::FLAC__StreamEncoderWriteStatus {
    // SAFETY: `sink` is the `Sink` passed to `init_stream`, alive and not
    // otherwise borrowed while libFLAC runs; `buffer` holds `len` bytes.
    let sink = unsafe { &mut *sink.cast::<Sink>() };
    let data = unsafe { std::slice::from_raw_parts(buffer, len) };
    let end = sink.pos + len;
    if end > sink.bytes.len() {
        sink.bytes.resize(end, 0);
    }
    sink.bytes[sink.pos..end].copy_from_slice(data);
    sink.pos = end;
    sys::FLAC__STREAM_ENCODER_WRITE_STATUS_OK
}

unsafe extern "C" fn seek(
    _encoder: *const sys::FLAC__StreamEncoder,
    offset: sys::FLAC__uint64,
    sink: *mut c_void,
) -> sys::FLAC__StreamEncoderSeekStatus {
    // SAFETY: as in `write_bytes`.
    let sink = unsafe { &mut *sink.cast::<Sink>() };
    match usize::try_from(offset) {
        Ok(pos) if pos <= sink.bytes.len() => {
            sink.pos = pos;
            sys::FLAC__STREAM_ENCODER_SEEK_STATUS_OK
        }
        _ => sys::FLAC__STREAM_ENCODER_SEEK_STATUS_ERROR,
    }
}

unsafe extern "C" fn tell(
    _encoder: *const sys::FLAC__StreamEncoder,
    offset: *mut sys::FLAC__uint64,
    sink: *mut c_void,
) -> sys::FLAC__StreamEncoderTellStatus {
    // SAFETY: as in `write_bytes`; `offset` points to libFLAC's result.
    let sink = unsafe { &*sink.cast::<Sink>() };
    unsafe { *offset = sink.pos as u64 };
    sys::FLAC__STREAM_ENCODER_TELL_STATUS_OK
}

/// Owns a libFLAC encoder and the metadata it points to; frees both on drop.
struct Encoder {
    encoder: *mut sys::FLAC__StreamEncoder,
    comments: *mut sys::FLAC__StreamMetadata,
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: both came from libFLAC's constructors (null is allowed) and
        // are freed once; the encoder goes first, it refers to the metadata.
        unsafe {
            if !self.encoder.is_null() {
                sys::FLAC__stream_encoder_delete(self.encoder);
            }
            if !self.comments.is_null() {
                sys::FLAC__metadata_object_delete(self.comments);
            }
        }
    }
}

impl Encoder {
    fn error(&self, what: &str) -> AudioError {
        // SAFETY: the encoder is valid; libFLAC returns a static string.
        let state = unsafe {
            CStr::from_ptr(sys::FLAC__stream_encoder_get_resolved_state_string(
                self.encoder,
            ))
        };
        AudioError::Encode(format!("libFLAC: {what}: {}", state.to_string_lossy()))
    }
}

pub(super) fn encode(
    stream: &mut Stream<'_>,
    bits: u32,
    tags: &[Tag],
) -> Result<Vec<u8>, AudioError> {
    let channels = stream.channels();
    // SAFETY: plain constructors; null results are checked below.
    let owner = Encoder {
        encoder: unsafe { sys::FLAC__stream_encoder_new() },
        comments: unsafe {
            sys::FLAC__metadata_object_new(sys::FLAC__METADATA_TYPE_VORBIS_COMMENT)
        },
    };
    if owner.encoder.is_null() || owner.comments.is_null() {
        return Err(AudioError::Encode("libFLAC: out of memory".into()));
    }
    for tag in comment_tags(tags) {
        let mut entry = format!("{}={}", tag.key, tag.value).into_bytes();
        let entry = sys::FLAC__StreamMetadata_VorbisComment_Entry {
            length: entry.len() as u32,
            entry: entry.as_mut_ptr(),
        };
        // SAFETY: `copy = true`, so libFLAC copies the bytes before `entry` drops.
        // A comment libFLAC refuses (not UTF-8) is left out, as other containers do.
        unsafe {
            sys::FLAC__metadata_object_vorbiscomment_append_comment(owner.comments, entry, 1)
        };
    }
    let mut metadata = [owner.comments];
    // Room for the whole file at a typical ratio (about 60 % of PCM), so the
    // buffer rarely grows (each growth is a copy of everything so far).
    let pcm_len = stream.frames_len() * channels * bits as usize / 8;
    let mut sink = Sink {
        bytes: Vec::with_capacity(pcm_len * 3 / 5),
        pos: 0,
    };
    // SAFETY: the encoder is fresh; the setters only fail after init. The
    // metadata array and the sink outlive the encoder's use of them (it is
    // finished below, before either goes out of scope).
    let status = unsafe {
        let e = owner.encoder;
        sys::FLAC__stream_encoder_set_channels(e, channels as u32);
        sys::FLAC__stream_encoder_set_bits_per_sample(e, bits);
        sys::FLAC__stream_encoder_set_sample_rate(e, stream.rate_hz());
        sys::FLAC__stream_encoder_set_compression_level(e, COMPRESSION_LEVEL);
        sys::FLAC__stream_encoder_set_loose_mid_side_stereo(e, 1);
        sys::FLAC__stream_encoder_set_total_samples_estimate(e, stream.frames_len() as u64);
        sys::FLAC__stream_encoder_set_metadata(e, metadata.as_mut_ptr(), 1);
        sys::FLAC__stream_encoder_init_stream(
            e,
            Some(write_bytes),
            Some(seek),
            Some(tell),
            None,
            (&mut sink as *mut Sink).cast(),
        )
    };
    if status != sys::FLAC__STREAM_ENCODER_INIT_STATUS_OK {
        return Err(owner.error("init"));
    }
    let mut ints: Vec<i32> = Vec::with_capacity(CHUNK_FRAMES_LEN * channels);
    while let Some(chunk) = stream.next_chunk()? {
        quantize_into(chunk, bits, &mut ints);
        // SAFETY: `ints` holds whole interleaved frames.
        let ok = unsafe {
            sys::FLAC__stream_encoder_process_interleaved(
                owner.encoder,
                ints.as_ptr(),
                (ints.len() / channels) as u32,
            )
        };
        if ok == 0 {
            return Err(owner.error("encode"));
        }
    }
    // SAFETY: the encoder is initialised; finishing writes through `sink`, still alive.
    if unsafe { sys::FLAC__stream_encoder_finish(owner.encoder) } == 0 {
        return Err(owner.error("finish"));
    }
    drop(owner);
    Ok(sink.bytes)
}

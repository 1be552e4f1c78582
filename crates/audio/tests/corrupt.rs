//! Bad input never panics or hangs: seeded corruptions (truncation, byte
//! flips, overwritten and inserted garbage) of real files in every format we
//! read, plus hand-made pathological files, must each decode or fail with a
//! stable code within a deadline.

mod support;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use audio::transcode::{Format, Target};
use support::arrangement::Rng;

/// Corrupted variants per source file.
const MUTATIONS_PER_SOURCE: usize = 40;
/// A decode of a few seconds of audio that takes longer than this is a hang.
const DEADLINE: Duration = Duration::from_secs(30);
const SEED: u64 = 7;
const ALLOWED_CODES: [&str; 3] = ["invalid_input", "unsupported_format", "too_large"];

/// Decodes, probes (and, for some, runs the whole ingest) with a deadline;
/// returns the error code, or "ok".
fn outcome(path: &Path, full_ingest: bool) -> String {
    let (sender, receiver) = mpsc::channel();
    let owned = path.to_path_buf();
    let worker = std::thread::spawn(move || {
        let code =
            |r: Result<(), audio::AudioError>| r.err().map_or("ok", |e| e.code()).to_string();
        let probe = code(audio::decode::probe(&owned).map(|_| ()));
        let decode = code(audio::decode::decode(&owned, None).map(|_| ()));
        let ingest = if full_ingest {
            let out_dir = tempfile::tempdir().unwrap();
            let input = serde_json::Value::Null;
            let files = [owned.clone()];
            code(
                audio::execute(audio::Task {
                    function: "audio.ingest",
                    input: &input,
                    files: &files,
                    out_dir: out_dir.path(),
                })
                .map(|_| ()),
            )
        } else {
            "ok".to_string()
        };
        let _ = sender.send((probe, decode, ingest));
    });
    let (probe, decode, ingest) = receiver
        .recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("{} hung or panicked", path.display()));
    worker.join().expect("no panic escapes");
    for code in [&probe, &decode, &ingest] {
        assert!(
            code == "ok" || ALLOWED_CODES.contains(&code.as_str()),
            "{}: code {code}",
            path.display()
        );
    }
    decode
}

/// Short clips of a real track in every format we write, plus a real Ogg file.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let real_ogg = support::tracks("ogg", 20)
        .into_iter()
        .find(|p| p.ends_with("battle-epic.ogg"))
        .expect("wesnoth's battle-epic.ogg");
    let clip = audio::decode::decode(&real_ogg, Some(6.0)).unwrap();
    let mut out = vec![real_ogg];
    for (format, bitrate_kbps) in [
        (Format::Wav, None),
        (Format::Flac, None),
        (Format::Mp3, Some(128)),
        (Format::Opus, Some(64)),
    ] {
        let path = dir.join(format!("clip.{}", format.extension()));
        let target = Target {
            format,
            bitrate_kbps,
            quality: None,
            rate_hz: None,
            channels: None,
            bits_per_sample: None,
        };
        audio::transcode::transcode(&clip, &target, None, &path).unwrap();
        out.push(path);
    }
    out
}

fn mutate(bytes: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = bytes.to_vec();
    match rng.below(5) {
        0 => out.truncate(rng.below(bytes.len())),
        1 => {
            for _ in 0..1 + rng.below(20) {
                let at = rng.below(out.len());
                out[at] ^= 1 << rng.below(8);
            }
        }
        2 => {
            // Garbage over a window, often inside the headers.
            let at = if rng.below(2) == 0 {
                rng.below(out.len().min(512))
            } else {
                rng.below(out.len())
            };
            for byte in out.iter_mut().skip(at).take(64) {
                *byte = rng.next_u64() as u8;
            }
        }
        3 => {
            let at = rng.below(out.len());
            let garbage: Vec<u8> = (0..1 + rng.below(4096))
                .map(|_| rng.next_u64() as u8)
                .collect();
            out.splice(at..at, garbage);
        }
        _ => {
            // Keep only the headers and a little data.
            out.truncate(64 + rng.below(4096).min(out.len()));
        }
    }
    out
}

#[test]
fn corrupted_real_files_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(SEED);
    let mut decoded_len = 0;
    let mut failed_len = 0;
    for (index, source) in sources(dir.path()).iter().enumerate() {
        assert_eq!(outcome(source, false), "ok", "the intact source decodes");
        let bytes = std::fs::read(source).unwrap();
        let extension = source.extension().unwrap().to_string_lossy().into_owned();
        for mutation in 0..MUTATIONS_PER_SOURCE {
            let path = dir
                .path()
                .join(format!("mutant-{index}-{mutation}.{extension}"));
            std::fs::write(&path, mutate(&bytes, &mut rng)).unwrap();
            // The whole pipeline on a few of them; decode and probe on all.
            let full_ingest = mutation % 10 == 0;
            if outcome(&path, full_ingest) == "ok" {
                decoded_len += 1;
            } else {
                failed_len += 1;
            }
        }
    }
    eprintln!("{decoded_len} corrupted files still decoded, {failed_len} failed with a code");
    assert!(
        failed_len > 0 && decoded_len > 0,
        "the corruptions exercise both outcomes"
    );
}

fn wav_header(format_tag: u16, channels: u16, rate_hz: u32, bits: u16, data_len: u32) -> Vec<u8> {
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&data_len.saturating_add(36).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&format_tag.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate_hz.to_le_bytes());
    out.extend_from_slice(
        &rate_hz
            .wrapping_mul(u32::from(channels) * u32::from(bits / 8))
            .to_le_bytes(),
    );
    out.extend_from_slice(&channels.wrapping_mul(bits / 8).to_le_bytes());
    out.extend_from_slice(&bits.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out
}

#[test]
fn pathological_files_fail_with_the_right_code() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let mut samples = wav_header(1, 2, 44_100, 16, 4000);
    samples.extend(std::iter::repeat_n(0u8, 4000));
    let cases: Vec<(PathBuf, &[&str])> = vec![
        (write("empty.wav", b""), &["invalid_input"]),
        (
            write("text.mp3", b"this is not audio at all, just some words\n"),
            &["unsupported_format", "invalid_input"],
        ),
        (
            write(
                "picture.ogg",
                b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0",
            ),
            &["unsupported_format", "invalid_input"],
        ),
        // A header promising 4 GB of audio that is not there.
        (
            write(
                "huge-header.wav",
                &wav_header(1, 2, 44_100, 16, u32::MAX - 64),
            ),
            &["invalid_input"],
        ),
        // 65535 channels at 4 GHz.
        (
            write(
                "absurd-layout.wav",
                &wav_header(1, u16::MAX, u32::MAX / 4, 16, 1024),
            ),
            &["unsupported_format", "invalid_input", "too_large"],
        ),
        // A codec nobody decodes.
        (
            write(
                "unknown-codec.wav",
                &wav_header(0x1234, 2, 44_100, 16, 4000),
            ),
            &["unsupported_format"],
        ),
        // An ID3v2 tag claiming 256 MB, then nothing.
        (
            write("huge-id3.mp3", b"ID3\x04\x00\x00\x7f\x7f\x7f\x7fgarbage"),
            &["unsupported_format", "invalid_input"],
        ),
        // Only the header of a valid file.
        (write("header-only.wav", &samples[..44]), &["invalid_input"]),
    ];
    for (path, expected) in cases {
        let code = outcome(&path, false);
        assert!(
            expected.contains(&code.as_str()),
            "{}: got {code}, expected one of {expected:?}",
            path.display()
        );
    }
    // The well-formed silent file decodes (silence is valid audio).
    assert_eq!(outcome(&write("silence.wav", &samples), true), "ok");
}

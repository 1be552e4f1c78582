//! Integration tests of the audio functions on real music: fingerprints
//! against fpcalc, transcodes checked with ffprobe, the worker interface and
//! its error codes.

mod support;

use std::path::{Path, PathBuf};

use audio::{execute, Task};
use serde_json::{json, Value};

/// A real track of about a minute: long enough for every analysis, short enough to be quick.
fn short_track() -> PathBuf {
    support::tracks("ogg", 20)
        .into_iter()
        .find(|p| p.ends_with("battle-epic.ogg"))
        .expect("wesnoth's battle-epic.ogg")
}

fn must_execute(function: &str, input: Value, file: &Path, out_dir: &Path) -> audio::Output {
    execute(Task {
        function,
        input: &input,
        files: &[file.to_path_buf()],
        out_dir,
    })
    .unwrap_or_else(|err| panic!("{function} on {}: {err}", file.display()))
}

fn error_code(function: &str, input: Value, files: &[PathBuf], out_dir: &Path) -> &'static str {
    match execute(Task {
        function,
        input: &input,
        files,
        out_dir,
    }) {
        Ok(output) => panic!("{function} unexpectedly succeeded: {}", output.json),
        Err(err) => err.code(),
    }
}

/// `fpcalc -raw` sub-fingerprints of a file.
fn fpcalc_raw(path: &Path) -> Vec<u32> {
    let out = support::must_run_lenient("fpcalc", &["-raw", path.to_str().unwrap()]);
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("FINGERPRINT="))
        .expect("fpcalc fingerprint");
    line.split(',')
        .map(|v| v.trim().parse::<i64>().unwrap() as u32)
        .collect()
}

fn fpcalc_encoded(path: &Path) -> String {
    let out = support::must_run_lenient("fpcalc", &[path.to_str().unwrap()]);
    out.lines()
        .find_map(|l| l.strip_prefix("FINGERPRINT="))
        .expect("fpcalc fingerprint")
        .to_string()
}

/// (share of identical sub-fingerprints, bit error rate).
fn agreement(ours: &[u32], theirs: &[u32]) -> (f64, f64) {
    let pairs = ours.len().min(theirs.len()).max(1);
    let same = ours.iter().zip(theirs).filter(|(a, b)| a == b).count();
    let bits: u32 = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a ^ b).count_ones())
        .sum();
    (
        same as f64 / pairs as f64,
        f64::from(bits) / (32.0 * pairs as f64),
    )
}

#[test]
fn fingerprints_agree_with_fpcalc() {
    let out_dir = tempfile::tempdir().unwrap();
    let mut sources: Vec<PathBuf> = support::tracks("ogg", 20)
        .into_iter()
        .step_by(9)
        .take(4)
        .collect();
    sources.push(support::tracks("mp3", 3)[0].clone());
    for source in &sources {
        let decoded = audio::decode::decode(source, None).unwrap();
        let ours =
            audio::fingerprint::fingerprint(&decoded.samples, decoded.channels, decoded.rate_hz)
                .unwrap();
        let theirs = fpcalc_raw(source);
        let (same, ber) = agreement(&ours.raw, &theirs);
        eprintln!(
            "{}: {} vs {} values, {:.1} % identical, BER {:.4}",
            source.display(),
            ours.raw.len(),
            theirs.len(),
            same * 100.0,
            ber
        );
        // Lossy sources: the decoders differ by a few samples of priming
        // (e.g. 128 for Vorbis), so single bits differ; the match is unambiguous.
        assert!(
            ours.raw.len().abs_diff(theirs.len()) <= 1,
            "{}",
            source.display()
        );
        assert!(ber < 0.02, "{}: bit error rate {ber}", source.display());

        // Lossless renditions: both tools decode the very same 16-bit PCM, and
        // we convert it to 11025 Hz as fpcalc's resampler does, so the
        // fingerprints are byte-equal (at 44.1 kHz stereo, the integer
        // decimation; at 48 kHz mono, the rational-ratio path).
        let renditions = [
            ("track.flac", audio::transcode::Format::Flac, None, None),
            (
                "track.wav",
                audio::transcode::Format::Wav,
                Some(48_000),
                Some(1),
            ),
        ];
        for (name, format, rate_hz, channels) in renditions {
            let lossless = out_dir.path().join(name);
            let target = audio::transcode::Target {
                format,
                bitrate_kbps: None,
                quality: None,
                rate_hz,
                channels,
                bits_per_sample: Some(16),
            };
            audio::transcode::transcode(&decoded, &target, None, &lossless).unwrap();
            let again = audio::decode::decode(&lossless, None).unwrap();
            let ours =
                audio::fingerprint::fingerprint(&again.samples, again.channels, again.rate_hz)
                    .unwrap();
            assert_eq!(
                ours.raw,
                fpcalc_raw(&lossless),
                "{} as {name}",
                source.display()
            );
            assert_eq!(
                ours.encoded,
                fpcalc_encoded(&lossless),
                "{} as {name}",
                source.display()
            );
        }
    }
}

struct Case {
    spec: Value,
    extension: &'static str,
    /// Codec frame length in seconds: the duration tolerance.
    frame_s: f64,
    /// Extra tolerance for ffprobe only: ffmpeg trims LAME's encoder delay
    /// but not its end padding (up to 529 samples plus the last frame's
    /// remainder), so it reports up to one more frame than the audio holds.
    ffprobe_slack_s: f64,
}

#[test]
fn transcodes_decode_again_with_the_source_duration_and_tags() {
    let source = short_track();
    let decoded = audio::decode::decode(&source, None).unwrap();
    let source_duration_s = decoded.duration_s();

    let cases = [
        Case {
            spec: json!({"format": "wav"}),
            extension: "wav",
            frame_s: 1.0 / 44_100.0,
            ffprobe_slack_s: 0.0,
        },
        Case {
            spec: json!({"format": "flac", "bits_per_sample": 24}),
            extension: "flac",
            frame_s: 4096.0 / 44_100.0,
            ffprobe_slack_s: 0.0,
        },
        Case {
            spec: json!({"format": "mp3", "bitrate_kbps": 320}),
            extension: "mp3",
            frame_s: 1152.0 / 44_100.0,
            ffprobe_slack_s: 1152.0 / 44_100.0,
        },
        Case {
            spec: json!({"format": "mp3", "quality": 2, "sample_rate_hz": 22050, "channels": 1}),
            extension: "mp3",
            frame_s: 576.0 / 22_050.0,
            ffprobe_slack_s: 1152.0 / 22_050.0,
        },
        Case {
            spec: json!({"format": "opus", "bitrate_kbps": 96}),
            extension: "opus",
            frame_s: 0.02,
            ffprobe_slack_s: 0.0,
        },
        Case {
            spec: json!({"format": "opus", "bitrate_kbps": 32, "channels": 1}),
            extension: "opus",
            frame_s: 0.02,
            ffprobe_slack_s: 0.0,
        },
    ];
    let out_dir = tempfile::tempdir().unwrap();
    let outputs: Vec<Value> = cases.iter().map(|c| c.spec.clone()).collect();
    let output = must_execute(
        "audio.transcode",
        json!({"outputs": outputs, "normalize_lufs": -14}),
        &source,
        out_dir.path(),
    );
    assert_eq!(output.files.len(), cases.len());
    let listed = output.json["outputs"].as_array().unwrap();
    for ((case, file), entry) in cases.iter().zip(&output.files).zip(listed) {
        let path = out_dir.path().join(file);
        assert_eq!(path.extension().unwrap(), case.extension);
        let ffprobe_s = support::ffprobe_duration_s(&path);
        assert!(
            (ffprobe_s - source_duration_s).abs() <= case.frame_s + case.ffprobe_slack_s + 1e-3,
            "{}: ffprobe says {ffprobe_s} s, source {source_duration_s} s",
            file.display()
        );
        // Our own decoder reads it back too, at the same length.
        let again = audio::decode::decode(&path, None).unwrap();
        assert!(
            (again.duration_s() - source_duration_s).abs() <= case.frame_s + 1e-3,
            "{}: we decode {} s, source {source_duration_s} s",
            file.display(),
            again.duration_s()
        );
        assert_eq!(
            support::ffprobe_tag(&path, "title").as_deref(),
            Some("Battle Epic"),
            "{}",
            file.display()
        );
        // Normalised to -14 LUFS, unless the -1 dBTP ceiling holds it back
        // (lossy codecs may overshoot the ceiling by a fraction of a dB).
        let loudness =
            dsp::loudness::measure(&again.samples, again.channels, again.rate_hz).unwrap();
        let lufs = loudness.integrated_lufs.unwrap();
        let peak_dbtp = loudness.true_peak_dbtp.unwrap();
        let at_target = (lufs + 14.0).abs() < 0.5;
        let peak_limited = lufs < -14.0 && (-1.6..=-0.4).contains(&peak_dbtp);
        assert!(
            at_target || peak_limited,
            "{}: {lufs} LUFS, {peak_dbtp} dBTP, gain {}",
            file.display(),
            entry["gain_db"]
        );
    }
}

#[test]
fn every_function_answers_on_a_real_track() {
    let source = short_track();
    let out_dir = tempfile::tempdir().unwrap();
    let probe = must_execute("audio.probe", Value::Null, &source, out_dir.path()).json;
    assert_eq!(probe["probe"]["codec"], "vorbis");
    assert_eq!(probe["probe"]["sample_rate_hz"], 44_100);
    let loudness = must_execute(
        "audio.loudness",
        json!({"target_lufs": -16}),
        &source,
        out_dir.path(),
    )
    .json;
    let lufs = loudness["loudness"]["integrated_lufs"].as_f64().unwrap();
    let ffmpeg_lufs = ffmpeg_integrated_lufs(&source);
    assert!(
        (lufs - ffmpeg_lufs).abs() <= 0.1,
        "ours {lufs}, ffmpeg {ffmpeg_lufs}"
    );
    let features = must_execute(
        "audio.features",
        json!({"beats": false}),
        &source,
        out_dir.path(),
    )
    .json;
    assert!(features["tempo"]["bpm"].as_f64().unwrap() > 40.0);
    assert!(features["key"]["name"].as_str().unwrap().ends_with("or"));
    assert_eq!(features["mfcc"]["mean"].as_array().unwrap().len(), 13);
    assert!(features.get("beats_s").is_none());
    let chorus = must_execute("audio.chorus", Value::Null, &source, out_dir.path()).json;
    assert!(chorus["sections"].is_array());
    let waveform = must_execute(
        "audio.waveform",
        json!({"points": 300}),
        &source,
        out_dir.path(),
    );
    assert_eq!(
        waveform.json["waveform"]["peaks"].as_array().unwrap().len(),
        300
    );
    let png = std::fs::read(out_dir.path().join(&waveform.files[0])).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let print = must_execute("audio.fingerprint", Value::Null, &source, out_dir.path()).json;
    assert!(print["fingerprint"].as_str().unwrap().starts_with("AQA"));
    let ingest = must_execute(
        "audio.ingest",
        json!({"outputs": [{"format": "opus", "bitrate_kbps": 64}]}),
        &source,
        out_dir.path(),
    );
    let names: Vec<String> = ingest
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    assert_eq!(
        names,
        ["waveform.png", "battle-epic.64k.opus", "manifest.json"]
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("manifest.json")).unwrap())
            .unwrap();
    for pointer in [
        "/duration_s",
        "/loudness/integrated_lufs",
        "/loudness/range_lu",
        "/loudness/true_peak_dbtp",
        "/tempo/bpm",
        "/key/name",
        "/chorus/start_s",
        "/chorus/end_s",
        "/chorus/confidence",
        "/sections",
        "/fingerprint",
    ] {
        assert!(
            manifest.pointer(pointer).is_some(),
            "manifest lacks {pointer}"
        );
    }
}

fn ffmpeg_integrated_lufs(path: &Path) -> f64 {
    let output = std::process::Command::new("ffmpeg")
        .args([
            "-nostats",
            "-hide_banner",
            "-i",
            path.to_str().unwrap(),
            "-af",
            "ebur128",
            "-f",
            "null",
            "-",
        ])
        .output()
        .expect("ffmpeg is required (see .ci/apt-packages)");
    let log = String::from_utf8_lossy(&output.stderr);
    let summary = log.rsplit("Summary:").next().unwrap();
    summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("I:"))
        .and_then(|v| v.trim().trim_end_matches("LUFS").trim().parse().ok())
        .expect("ffmpeg ebur128 summary")
}

#[test]
fn requests_and_inputs_fail_with_stable_codes() {
    let source = short_track();
    let out_dir = tempfile::tempdir().unwrap();
    let files = [source.clone()];
    let missing = [out_dir.path().join("missing.ogg")];
    let cases: [(&str, Value, &[PathBuf], &str); 7] = [
        ("audio.nope", Value::Null, &files, "unknown_function"),
        ("audio.probe", Value::Null, &[], "invalid_input"),
        (
            "audio.loudness",
            json!({"target_lufs": 3}),
            &files,
            "invalid_input",
        ),
        (
            "audio.transcode",
            json!({"outputs": []}),
            &files,
            "invalid_input",
        ),
        (
            "audio.transcode",
            json!({"outputs": [{"format": "aiff"}]}),
            &files,
            "unsupported_format",
        ),
        (
            "audio.transcode",
            json!({"outputs": [{"format": "opus", "sample_rate_hz": 44100}]}),
            &files,
            "invalid_input",
        ),
        ("audio.probe", Value::Null, &missing, "io"),
    ];
    for (function, input, files, expected) in cases {
        let what = format!("{function} {input}");
        assert_eq!(
            error_code(function, input, files, out_dir.path()),
            expected,
            "{what}"
        );
    }
}

/// Runs ffmpeg with `args`, overwriting outputs and printing errors only.
fn ffmpeg_quietly(args: &[&str]) {
    let mut all = vec!["-v", "error", "-y"];
    all.extend_from_slice(args);
    support::must_run("ffmpeg", &all);
}

/// Ogg's page checksum (CRC-32, polynomial 0x04c11db7, no reflection).
fn ogg_crc(page: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &byte in page {
        crc ^= u32::from(byte) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Sets the output gain of an Ogg Opus file's OpusHead (first page) and
/// repairs that page's checksum.
fn with_opus_gain(bytes: &[u8], gain_q8: i16) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let segments = usize::from(out[26]);
    let body = 27 + segments;
    let page_len = body + out[27..body].iter().map(|&s| usize::from(s)).sum::<usize>();
    assert_eq!(&out[body..body + 8], b"OpusHead");
    out[body + 16..body + 18].copy_from_slice(&gain_q8.to_le_bytes());
    out[22..26].copy_from_slice(&[0; 4]);
    let crc = ogg_crc(&out[..page_len]);
    out[22..26].copy_from_slice(&crc.to_le_bytes());
    out
}

fn rms(samples: &[f32]) -> f64 {
    (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
}

/// Frequency of a pure tone from its zero crossings.
fn tone_hz(samples: &[f32], rate_hz: u32) -> f64 {
    let crossings = samples
        .windows(2)
        .filter(|w| w[0].is_sign_negative() != w[1].is_sign_negative())
        .count();
    crossings as f64 / 2.0 / (samples.len() as f64 / f64::from(rate_hz))
}

#[test]
fn opus_multistream_and_output_gain() {
    let dir = tempfile::tempdir().unwrap();
    // 5.1 (channel mapping family 1): one tone per channel. Decoded, each
    // channel must carry the tone that ffmpeg's decoder puts there (front
    // left, front right, centre, LFE, back left, back right).
    let surround = dir.path().join("surround.opus");
    let mut args: Vec<String> = Vec::new();
    for hz in [440, 660, 880, 110, 330, 550] {
        args.extend(["-f", "lavfi", "-i"].map(String::from));
        args.push(format!("sine=frequency={hz}:duration=6"));
    }
    args.extend(
        [
            "-filter_complex",
            "[0][1][2][3][4][5]join=inputs=6:channel_layout=5.1[a]",
            "-map",
            "[a]",
            "-c:a",
            "libopus",
            "-b:a",
            "256k",
        ]
        .map(String::from),
    );
    args.push(surround.to_str().unwrap().into());
    ffmpeg_quietly(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let reference = dir.path().join("surround.f32");
    ffmpeg_quietly(&[
        "-i",
        surround.to_str().unwrap(),
        "-f",
        "f32le",
        reference.to_str().unwrap(),
    ]);
    let theirs: Vec<f32> = std::fs::read(&reference)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let decoded = audio::decode::decode(&surround, None).unwrap();
    assert_eq!((decoded.channels, decoded.rate_hz), (6, 48_000));
    let seconds = |samples: &[f32]| samples[6 * 48_000..6 * 4 * 48_000].to_vec();
    let (ours, theirs) = (seconds(&decoded.samples), seconds(&theirs));
    for channel in 0..6 {
        let plane =
            |s: &[f32]| -> Vec<f32> { s.iter().skip(channel).step_by(6).copied().collect() };
        let (ours_hz, theirs_hz) = (
            tone_hz(&plane(&ours), 48_000),
            tone_hz(&plane(&theirs), 48_000),
        );
        assert!(
            (ours_hz - theirs_hz).abs() < theirs_hz * 0.02,
            "channel {channel}: {ours_hz} Hz, ffmpeg {theirs_hz} Hz"
        );
    }
    let loudness = dsp::loudness::measure(&decoded.samples, 6, 48_000).unwrap();
    let ours = loudness.integrated_lufs.unwrap();
    let theirs = ffmpeg_integrated_lufs(&surround);
    assert!((ours - theirs).abs() <= 0.1, "{ours} LUFS, ffmpeg {theirs}");

    // The OpusHead output gain (Q7.8 dB) is applied: +6 dB doubles the level.
    let stereo = dir.path().join("stereo.opus");
    ffmpeg_quietly(&[
        "-i",
        short_track().to_str().unwrap(),
        "-t",
        "20",
        "-c:a",
        "libopus",
        stereo.to_str().unwrap(),
    ]);
    let louder = dir.path().join("louder.opus");
    std::fs::write(
        &louder,
        with_opus_gain(&std::fs::read(&stereo).unwrap(), 6 * 256),
    )
    .unwrap();
    let plain = audio::decode::decode(&stereo, None).unwrap();
    let gained = audio::decode::decode(&louder, None).unwrap();
    assert_eq!(plain.samples.len(), gained.samples.len());
    let ratio_db = 20.0 * (rms(&gained.samples) / rms(&plain.samples)).log10();
    assert!((ratio_db - 6.0).abs() < 0.01, "gain {ratio_db} dB");
    let ours = dsp::loudness::measure(&gained.samples, 2, 48_000)
        .unwrap()
        .integrated_lufs
        .unwrap();
    let theirs = ffmpeg_integrated_lufs(&louder);
    assert!((ours - theirs).abs() <= 0.1, "{ours} LUFS, ffmpeg {theirs}");
}

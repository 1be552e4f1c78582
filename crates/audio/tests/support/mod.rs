//! Shared helpers of the audio integration tests: where the real music is,
//! external tools, and the seeded generator of test arrangements.

#![allow(dead_code, unreachable_pub)]

pub mod arrangement;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The real music fetched by `scripts/fetch-music.sh`. Fails loudly when it is
/// missing: a test that needs real music must never pass without it.
pub fn music_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/music/root");
    assert!(
        root.join("usr/share").is_dir(),
        "real music is missing at {}: run scripts/fetch-music.sh first \
         (it extracts Debian's wesnoth-1.16-music, drascula-music, asc-music, hyperrogue-music)",
        root.display()
    );
    root
}

/// Music tracks with the given extension, sorted, at least `min_len` of them.
pub fn tracks(extension: &str, min_len: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![music_root()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)
            .expect("readable music dir")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                // Sound effects are not music.
                if !path.ends_with("sounds") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == extension) {
                found.push(path);
            }
        }
    }
    found.sort();
    assert!(
        found.len() >= min_len,
        "expected at least {min_len} .{extension} tracks, found {}",
        found.len()
    );
    found
}

/// Runs an external tool that CI installs (see .ci/apt-packages).
pub fn must_run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| {
            panic!("{program} is required (apt-get install it; see .ci/apt-packages): {err}")
        });
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Like [`must_run`] but tolerates a failing exit status (fpcalc exits 1
/// on a harmless end-of-file warning while still printing its result).
pub fn must_run_lenient(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| {
            panic!("{program} is required (apt-get install it; see .ci/apt-packages): {err}")
        });
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Duration of a file according to ffprobe.
pub fn ffprobe_duration_s(path: &Path) -> f64 {
    let out = must_run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
            path.to_str().unwrap(),
        ],
    );
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("ffprobe duration of {}: {out:?}", path.display()))
}

/// A tag of a file according to ffprobe (format or stream level).
pub fn ffprobe_tag(path: &Path, key: &str) -> Option<String> {
    let out = must_run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            &format!("format_tags={key}:stream_tags={key}"),
            "-of",
            "default=nw=1:nk=1",
            path.to_str().unwrap(),
        ],
    );
    out.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

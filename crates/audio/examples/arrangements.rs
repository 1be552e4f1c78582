//! Writes the chorus test arrangements (real music spliced with known chorus
//! positions, the same ones `tests/chorus.rs` checks) as WAV files plus a
//! `truth.json`, so the benchmark can run pychorus on exactly the same audio.
//!
//! Usage: arrangements MUSIC_DIR OUT_DIR [COUNT] [SEED]

#[allow(dead_code, unreachable_pub)]
#[path = "../tests/support/arrangement.rs"]
mod arrangement;

use std::path::{Path, PathBuf};

fn ogg_tracks(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() && !path.ends_with("sounds") {
            ogg_tracks(&path, found);
        } else if path.extension().is_some_and(|e| e == "ogg") {
            found.push(path);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 3,
        "usage: arrangements MUSIC_DIR OUT_DIR [COUNT] [SEED]"
    );
    let count: usize = args.get(3).map_or(Ok(12), |c| c.parse())?;
    let seed: u64 = args.get(4).map_or(Ok(3), |s| s.parse())?;
    let mut tracks = Vec::new();
    ogg_tracks(Path::new(&args[1]), &mut tracks);
    tracks.sort();
    // The same selection as tests/chorus.rs: long wesnoth tracks.
    let rate_hz = arrangement::RATE_HZ;
    let sources: Vec<(PathBuf, Vec<f32>)> = tracks
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("wesnoth"))
        .take(16)
        .filter_map(|path| {
            let decoded = audio::decode::decode(&path, None).ok()?;
            let mono = dsp::mono::analysis_signal(
                &decoded.samples,
                decoded.channels,
                decoded.rate_hz,
                rate_hz,
            )
            .ok()?;
            Some((path, mono.samples))
        })
        .filter(|(_, samples)| samples.len() > 70 * rate_hz as usize)
        .collect();
    let out_dir = PathBuf::from(&args[2]);
    std::fs::create_dir_all(&out_dir)?;
    let mut truth = Vec::new();
    for a in arrangement::build(&sources, count, seed) {
        let file = format!("{}.wav", a.name);
        arrangement::write_wav(&out_dir.join(&file), &a.samples);
        truth.push(serde_json::json!({"file": file, "chorus_starts_s": a.chorus_starts_s, "chorus_len_s": a.chorus_len_s}));
    }
    std::fs::write(
        out_dir.join("truth.json"),
        serde_json::to_string_pretty(&truth)?,
    )?;
    println!(
        "wrote {} arrangements to {}",
        truth.len(),
        out_dir.display()
    );
    Ok(())
}

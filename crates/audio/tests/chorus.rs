//! Chorus detection on arrangements built from real music with known chorus
//! positions (see `support/arrangement.rs`).

mod support;

use support::arrangement::{self, Arrangement, RATE_HZ};

/// Arrangements checked; sources picked with this seed.
const ARRANGEMENTS_LEN: usize = 12;
const SEED: u64 = 3;
/// A detection counts when its start is this close to a chorus start.
const HIT_TOLERANCE_S: f64 = 3.0;

fn source_tracks() -> Vec<(std::path::PathBuf, Vec<f32>)> {
    support::tracks("ogg", 20)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("wesnoth"))
        .take(16)
        .map(|path| {
            let decoded = audio::decode::decode(&path, None).expect("real track decodes");
            let mono = dsp::mono::analysis_signal(
                &decoded.samples,
                decoded.channels,
                decoded.rate_hz,
                RATE_HZ,
            )
            .expect("valid layout");
            (path, mono.samples)
        })
        .filter(|(_, samples)| samples.len() > 70 * RATE_HZ as usize)
        .collect()
}

/// The detected chorus, if it starts near a real one: (start error, end error).
fn hit(arrangement: &Arrangement) -> (Option<(f64, f64)>, String) {
    let signal =
        dsp::mono::analysis_signal(&arrangement.samples, 1, RATE_HZ, dsp::ANALYSIS_RATE_HZ)
            .unwrap();
    let analysis = dsp::analysis::analyze(&signal).unwrap();
    let Some(chorus) = analysis.structure.chorus else {
        return (
            None,
            format!(
                "{}: no chorus, truth {:?}",
                arrangement.name, arrangement.chorus_starts_s
            ),
        );
    };
    let nearest = arrangement
        .chorus_starts_s
        .iter()
        .copied()
        .min_by(|a, b| {
            (a - chorus.start_s)
                .abs()
                .total_cmp(&(b - chorus.start_s).abs())
        })
        .unwrap();
    let start_error = (chorus.start_s - nearest).abs();
    let end_error = (chorus.end_s - (nearest + arrangement.chorus_len_s)).abs();
    let line = format!(
        "{}: found {:.1}-{:.1} s (confidence {:.2}), truth {:?} + {:.1} s",
        arrangement.name,
        chorus.start_s,
        chorus.end_s,
        chorus.confidence,
        arrangement.chorus_starts_s,
        arrangement.chorus_len_s
    );
    (
        (start_error <= HIT_TOLERANCE_S).then_some((start_error, end_error)),
        line,
    )
}

#[test]
fn chorus_is_found_on_real_music_arrangements() {
    let sources = source_tracks();
    assert!(
        sources.len() >= 6,
        "need six long source tracks, have {}",
        sources.len()
    );
    let arrangements = arrangement::build(&sources, ARRANGEMENTS_LEN, SEED);
    let results: Vec<_> = arrangements.iter().map(hit).collect();
    for (_, line) in &results {
        eprintln!("{line}");
    }
    let hits: Vec<(f64, f64)> = results.iter().filter_map(|(h, _)| *h).collect();
    // bench/audio/run.sh compares this hit rate with pychorus's on the same
    // arrangements; pychorus finds all twelve, and so must we.
    assert!(
        hits.len() >= 12,
        "chorus found in {} of {}",
        hits.len(),
        arrangements.len()
    );
    // And the reported end matches too, for most hits.
    let good_ends = hits
        .iter()
        .filter(|(_, end_error)| *end_error <= HIT_TOLERANCE_S)
        .count();
    assert!(
        good_ends * 4 >= hits.len() * 3,
        "end within {HIT_TOLERANCE_S} s for {good_ends} of {}",
        hits.len()
    );
}

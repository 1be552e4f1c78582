//! Songs with a known arrangement, synthesised for `chorus demo` so that it needs no files
//! and its chorus detection can be checked against the truth.
//!
//! Each song is intro, verse, chorus, verse, chorus, bridge, chorus, outro. Verses play a
//! soft pad over one progression; choruses a louder, brighter progression with a lead hook,
//! hi-hats and a fuller bass, so a listener (and a detector) can hear them repeat. Repeats of a
//! section are not bit-identical: gain and a little noise change each time.

use std::f32::consts::TAU;

pub(crate) const SAMPLE_RATE_HZ: u32 = 44_100;

/// One demo song and where its choruses are.
#[derive(Debug)]
pub(crate) struct Song {
    pub(crate) name: &'static str,
    pub(crate) bpm: f32,
    /// Key of the song, e.g. "A minor".
    pub(crate) key: &'static str,
    pub(crate) samples: Vec<f32>,
    /// (start_s, end_s) of every chorus.
    pub(crate) choruses_s: Vec<(f32, f32)>,
}

/// A tiny deterministic noise source (xorshift32): the demo must not depend on a seed file.
struct Noise(u32);

impl Noise {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        (self.0 as f32 / u32::MAX as f32) * 2.0 - 1.0
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Part {
    Intro,
    Verse,
    Chorus,
    Bridge,
    Outro,
}

const ARRANGEMENT: [(Part, u32); 8] = [
    (Part::Intro, 4),
    (Part::Verse, 8),
    (Part::Chorus, 8),
    (Part::Verse, 8),
    (Part::Chorus, 8),
    (Part::Bridge, 4),
    (Part::Chorus, 8),
    (Part::Outro, 4),
];

fn midi_hz(note: f32) -> f32 {
    440.0 * 2f32.powf((note - 69.0) / 12.0)
}

/// Chords as semitone offsets from the tonic (minor-key progressions).
fn chord(part: Part, bar: u32) -> [f32; 3] {
    let verse = [
        [0.0, 3.0, 7.0],
        [8.0, 12.0, 15.0],
        [3.0, 7.0, 10.0],
        [10.0, 14.0, 17.0],
    ]; // i VI III VII
    let chorus = [
        [5.0, 8.0, 12.0],
        [7.0, 10.0, 14.0],
        [0.0, 3.0, 7.0],
        [0.0, 3.0, 7.0],
    ]; // iv v i i
    let bridge = [[8.0, 12.0, 15.0], [10.0, 14.0, 17.0]];
    match part {
        Part::Chorus => chorus[(bar % 4) as usize],
        Part::Bridge => bridge[(bar % 2) as usize],
        _ => verse[(bar % 4) as usize],
    }
}

pub(crate) fn song(
    name: &'static str,
    bpm: f32,
    tonic_midi: f32,
    key: &'static str,
    seed: u32,
) -> Song {
    let beat_s = 60.0 / bpm;
    let bar_s = 4.0 * beat_s;
    let total_bars: u32 = ARRANGEMENT.iter().map(|(_, bars)| bars).sum();
    let len = (total_bars as f32 * bar_s * SAMPLE_RATE_HZ as f32) as usize;
    let mut samples = vec![0.0f32; len];
    let mut noise = Noise(seed | 1);
    let mut choruses_s = Vec::new();
    let mut bar_start = 0u32;
    let mut chorus_count = 0;
    for (part, bars) in ARRANGEMENT {
        let start_s = bar_start as f32 * bar_s;
        let end_s = (bar_start + bars) as f32 * bar_s;
        if part == Part::Chorus {
            choruses_s.push((start_s, end_s));
            chorus_count += 1;
        }
        // Each repeat is a little different: gain within ±1.5 dB.
        let gain = 10f32.powf((noise.next() * 1.5) / 20.0);
        let from = (start_s * SAMPLE_RATE_HZ as f32) as usize;
        let to = ((end_s * SAMPLE_RATE_HZ as f32) as usize).min(len);
        for (i, out) in samples[from..to].iter_mut().enumerate() {
            let t = i as f32 / SAMPLE_RATE_HZ as f32;
            let bar = (t / bar_s) as u32;
            let in_beat = (t % beat_s) / beat_s;
            let [a, b, c] = chord(part, bar);
            let mut x = 0.0;
            // Pad: three sines, louder and brighter in the chorus.
            let (pad, bright) = match part {
                Part::Chorus => (0.16, 0.35),
                Part::Intro | Part::Outro => (0.07, 0.0),
                _ => (0.10, 0.08),
            };
            for n in [a, b, c] {
                let f = midi_hz(tonic_midi + n);
                x += pad * ((TAU * f * t).sin() + bright * (TAU * 2.0 * f * t).sin());
            }
            // Bass on the root, an octave down, pulsing on beats.
            let bass_env = (-in_beat * 4.0).exp();
            x += 0.22 * bass_env * (TAU * midi_hz(tonic_midi + a - 24.0) * t).sin();
            // Kick on every beat (a falling sine).
            let kick_t = in_beat * beat_s;
            x += 0.5
                * (-kick_t * 30.0).exp()
                * (TAU * (50.0 + 80.0 * (-kick_t * 40.0).exp()) * kick_t).sin();
            if part == Part::Chorus {
                // Hi-hats on eighths, and a lead hook that repeats every bar.
                let eighth = (t % (beat_s / 2.0)) / (beat_s / 2.0);
                x += 0.05 * (-eighth * 40.0).exp() * noise.next();
                let hook = [12.0, 15.0, 19.0, 15.0][((t / beat_s) as u32 % 4) as usize];
                let f = midi_hz(tonic_midi + hook);
                x += 0.09
                    * ((TAU * f * t).sin() + 0.5 * (TAU * 3.0 * f * t).sin())
                    * (1.0 - in_beat * 0.5);
            }
            x += 0.003 * noise.next();
            *out = (x * gain * 0.6).clamp(-1.0, 1.0);
        }
        bar_start += bars;
    }
    debug_assert_eq!(chorus_count, 3);
    Song {
        name,
        bpm,
        key,
        samples,
        choruses_s,
    }
}

/// The demo's songs.
pub(crate) fn demo_songs() -> Vec<Song> {
    vec![
        song("demo-a-minor-100bpm", 100.0, 57.0, "A minor", 7),
        song("demo-e-minor-124bpm", 124.0, 52.0, "E minor", 11),
        song("demo-d-minor-92bpm", 92.0, 62.0, "D minor", 13),
    ]
}

/// Writes a song as 16-bit mono WAV.
pub(crate) fn write_wav(song: &Song, path: &std::path::Path) -> Result<(), hound::Error> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE_HZ,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec)?;
    for s in &song.samples {
        writer.write_sample((s * i16::MAX as f32) as i16)?;
    }
    writer.finalize()
}

//! Test arrangements built from real music with known chorus positions.
//!
//! Each arrangement splices excerpts of different real tracks into
//! intro, verse, chorus, verse, chorus, bridge, chorus, outro. The verses are
//! two different excerpts of the same track (same style, different notes,
//! like verses with different lyrics); the chorus repeats are the same excerpt
//! but never bit-identical: each has its own gain (-3..+2 dB) and a little
//! of another track mixed in (about -20 dB), as a real mix would differ.
//! Sources are picked by a seeded generator so the set is reproducible.

use std::path::PathBuf;

/// Sample rate of the assembled arrangements.
pub const RATE_HZ: u32 = 44_100;
/// Section lengths are drawn from these ranges, per arrangement.
const INTRO_S: (f64, f64) = (4.0, 12.0);
const VERSE_S: (f64, f64) = (16.0, 26.0);
const CHORUS_S: (f64, f64) = (12.0, 22.0);
const BRIDGE_S: (f64, f64) = (8.0, 16.0);
const OUTRO_S: f64 = 8.0;

/// An assembled arrangement, mono, with the truth.
#[derive(Debug, Clone)]
pub struct Arrangement {
    pub name: String,
    pub samples: Vec<f32>,
    /// Start of every chorus occurrence, in seconds.
    pub chorus_starts_s: Vec<f64>,
    pub chorus_len_s: f64,
}

/// A small deterministic generator (xorshift), so arrangements are reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn excerpt(track: &[f32], start_s: f64, len_s: f64) -> Vec<f32> {
    let start = (start_s * f64::from(RATE_HZ)) as usize;
    let len = (len_s * f64::from(RATE_HZ)) as usize;
    let end = (start + len).min(track.len());
    let mut out = track[start.min(end)..end].to_vec();
    out.resize(len, 0.0);
    out
}

fn gain(samples: &mut [f32], db: f64) {
    let g = 10f32.powf(db as f32 / 20.0);
    samples.iter_mut().for_each(|s| *s *= g);
}

/// Builds `count` arrangements from decoded mono tracks at [`RATE_HZ`]
/// (each at least 60 s long).
pub fn build(tracks: &[(PathBuf, Vec<f32>)], count: usize, seed: u64) -> Vec<Arrangement> {
    assert!(tracks.len() >= 4, "need at least four source tracks");
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for index in 0..count {
        // Four distinct tracks: intro/outro, verse, chorus, bridge.
        let mut picks: Vec<usize> = Vec::new();
        while picks.len() < 5 {
            let pick = rng.below(tracks.len());
            if !picks.contains(&pick) {
                picks.push(pick);
            }
        }
        let [intro_t, verse_t, chorus_t, bridge_t, mix_t] =
            [picks[0], picks[1], picks[2], picks[3], picks[4]];
        let track = |i: usize| &tracks[i].1;
        let offset = |rng: &mut Rng, i: usize, len_s: f64| {
            let duration_s = track(i).len() as f64 / f64::from(RATE_HZ);
            rng.uniform(5.0, (duration_s - len_s - 5.0).max(5.5))
        };
        let intro_s = rng.uniform(INTRO_S.0, INTRO_S.1);
        let verse_s = rng.uniform(VERSE_S.0, VERSE_S.1);
        let chorus_s = rng.uniform(CHORUS_S.0, CHORUS_S.1);
        let bridge_s = rng.uniform(BRIDGE_S.0, BRIDGE_S.1);
        let intro = excerpt(track(intro_t), offset(&mut rng, intro_t, intro_s), intro_s);
        let verse_1 = excerpt(track(verse_t), offset(&mut rng, verse_t, verse_s), verse_s);
        let verse_2 = excerpt(track(verse_t), offset(&mut rng, verse_t, verse_s), verse_s);
        let chorus_at = offset(&mut rng, chorus_t, chorus_s);
        let bridge = excerpt(
            track(bridge_t),
            offset(&mut rng, bridge_t, bridge_s),
            bridge_s,
        );
        let outro = excerpt(track(intro_t), offset(&mut rng, intro_t, OUTRO_S), OUTRO_S);
        let chorus = |rng: &mut Rng| {
            let mut c = excerpt(track(chorus_t), chorus_at, chorus_s);
            gain(&mut c, rng.uniform(-3.0, 2.0));
            let mut other = excerpt(track(mix_t), offset(rng, mix_t, chorus_s), chorus_s);
            gain(&mut other, -20.0);
            for (a, b) in c.iter_mut().zip(&other) {
                *a += b;
            }
            c
        };
        let mut samples = Vec::new();
        let mut chorus_starts_s = Vec::new();
        let parts: Vec<(bool, Vec<f32>)> = vec![
            (false, intro),
            (false, verse_1),
            (true, chorus(&mut rng)),
            (false, verse_2),
            (true, chorus(&mut rng)),
            (false, bridge),
            (true, chorus(&mut rng)),
            (false, outro),
        ];
        for (is_chorus, part) in parts {
            if is_chorus {
                chorus_starts_s.push(samples.len() as f64 / f64::from(RATE_HZ));
            }
            samples.extend_from_slice(&part);
        }
        out.push(Arrangement {
            name: format!("arrangement-{index:02}"),
            samples,
            chorus_starts_s,
            chorus_len_s: chorus_s,
        });
    }
    out
}

/// Writes mono 16-bit WAV.
pub fn write_wav(path: &std::path::Path, samples: &[f32]) {
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    let data_len = (samples.len() * 2) as u32;
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&RATE_HZ.to_le_bytes());
    out.extend_from_slice(&(RATE_HZ * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for &s in samples {
        out.extend_from_slice(&((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes());
    }
    std::fs::write(path, out).expect("write arrangement");
}

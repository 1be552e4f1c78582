//! Key and mode from the mean chroma vector (Krumhansl-Kessler key profiles).

/// Pitch-class names, C first (the chroma layout used throughout the crate).
pub const PITCH_CLASSES: [&str; 12] = [
    "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B",
];

/// Krumhansl-Kessler probe-tone profile of a major key, tonic first.
const MAJOR_PROFILE: [f64; 12] = [
    6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88,
];
/// Krumhansl-Kessler probe-tone profile of a minor key, tonic first.
const MINOR_PROFILE: [f64; 12] = [
    6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17,
];

/// Major or minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Major,
    Minor,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Major => "major",
            Mode::Minor => "minor",
        }
    }
}

/// An estimated key.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// Pitch class of the tonic, 0 = C.
    pub tonic: usize,
    pub mode: Mode,
    /// Pearson correlation of the chroma with the best profile, in [-1, 1].
    pub confidence: f64,
}

impl Key {
    /// Human name, e.g. "A minor".
    pub fn name(&self) -> String {
        format!("{} {}", PITCH_CLASSES[self.tonic], self.mode.as_str())
    }
}

fn pearson(a: &[f64; 12], b: &[f64; 12]) -> f64 {
    let mean_a = a.iter().sum::<f64>() / 12.0;
    let mean_b = b.iter().sum::<f64>() / 12.0;
    let (mut cov, mut var_a, mut var_b) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        cov += (x - mean_a) * (y - mean_b);
        var_a += (x - mean_a).powi(2);
        var_b += (y - mean_b).powi(2);
    }
    if var_a <= 0.0 || var_b <= 0.0 {
        return 0.0;
    }
    cov / (var_a * var_b).sqrt()
}

/// Picks the key whose rotated profile correlates best with the chroma.
/// Returns `None` for a flat chroma (silence, white noise).
pub fn estimate(chroma_mean: &[f64; 12]) -> Option<Key> {
    let mut best: Option<Key> = None;
    for (mode, profile) in [(Mode::Major, MAJOR_PROFILE), (Mode::Minor, MINOR_PROFILE)] {
        for tonic in 0..12 {
            let rotated: [f64; 12] = std::array::from_fn(|pc| profile[(pc + 12 - tonic) % 12]);
            let confidence = pearson(chroma_mean, &rotated);
            if best.as_ref().is_none_or(|b| confidence > b.confidence) {
                best = Some(Key {
                    tonic,
                    mode,
                    confidence,
                });
            }
        }
    }
    best.filter(|key| key.confidence > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn check(notes: &[usize], expected: expect_test::Expect) {
        let mut chroma = [0.0; 12];
        for &n in notes {
            chroma[n % 12] += 1.0;
        }
        let key = estimate(&chroma).map(|k| k.name());
        expected.assert_eq(&format!("{key:?}"));
    }

    #[test]
    fn triads_and_scales() {
        // A natural minor scale with a stressed tonic triad.
        check(
            &[9, 9, 0, 4, 9, 11, 0, 2, 4, 5, 7],
            expect![[r#"Some("A minor")"#]],
        );
        // C major scale with a stressed tonic triad.
        check(
            &[0, 0, 4, 7, 0, 2, 4, 5, 7, 9, 11],
            expect![[r#"Some("C major")"#]],
        );
        // Flat chroma: no key.
        check(&[], expect![[r#"None"#]]);
    }
}

//! Min/max waveform peaks at a requested resolution, for players and pictures.

use crate::DspError;

/// Most points a caller may ask for (a 16k-wide display at 2x density).
pub const POINTS_MAX: usize = 32_768;

/// One column of the waveform: the lowest and highest sample it covers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    pub min: f32,
    pub max: f32,
}

/// Splits a mono signal into `points` equal spans and returns each span's extremes.
pub fn peaks(samples: &[f32], points: usize) -> Result<Vec<Peak>, DspError> {
    if points == 0 || points > POINTS_MAX {
        return Err(DspError::InvalidParameter(format!(
            "waveform points {points} outside 1..={POINTS_MAX}"
        )));
    }
    if samples.is_empty() {
        return Ok(vec![Peak { min: 0.0, max: 0.0 }; points]);
    }
    Ok((0..points)
        .map(|p| {
            let start = p * samples.len() / points;
            let end = ((p + 1) * samples.len() / points)
                .max(start + 1)
                .min(samples.len());
            let span = &samples[start.min(end - 1)..end];
            Peak {
                min: span.iter().copied().fold(f32::INFINITY, f32::min).min(0.0),
                max: span
                    .iter()
                    .copied()
                    .fold(f32::NEG_INFINITY, f32::max)
                    .max(0.0),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn peaks_of_a_ramp() {
        let samples: Vec<f32> = (-4..4).map(|v| v as f32 / 4.0).collect();
        let found = peaks(&samples, 4).unwrap();
        expect![[r#"[Peak { min: -1.0, max: 0.0 }, Peak { min: -0.5, max: 0.0 }, Peak { min: 0.0, max: 0.25 }, Peak { min: 0.0, max: 0.75 }]"#]]
            .assert_eq(&format!("{found:?}"));
        assert!(peaks(&samples, 0).is_err());
        assert_eq!(peaks(&[], 3).unwrap().len(), 3);
        // More points than samples still gives the requested count.
        assert_eq!(peaks(&samples, 20).unwrap().len(), 20);
    }
}

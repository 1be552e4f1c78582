//! EBU Tech 3341 (loudness, true peak) and Tech 3342 (loudness range)
//! compliance cases, synthesised from the specs' descriptions and checked
//! against the specs' tolerances.

use dsp::loudness::{measure, Loudness};

const RATE_HZ: u32 = 48_000;

/// Stereo sine at `dbfs` (peak level per channel) for `seconds`.
fn sine(freq_hz: f64, dbfs: f64, seconds: f64, phase_rad: f64) -> Vec<f32> {
    let amplitude = 10f64.powf(dbfs / 20.0);
    let frames = (seconds * f64::from(RATE_HZ)).round() as usize;
    let mut out = Vec::with_capacity(frames * 2);
    for n in 0..frames {
        let t = n as f64 / f64::from(RATE_HZ);
        let v = (amplitude * (2.0 * std::f64::consts::PI * freq_hz * t + phase_rad).sin()) as f32;
        out.push(v);
        out.push(v);
    }
    out
}

/// Concatenated 1 kHz stereo segments of (dBFS, seconds).
fn sequence(parts: &[(f64, f64)]) -> Vec<f32> {
    parts
        .iter()
        .flat_map(|&(dbfs, s)| sine(1000.0, dbfs, s, 0.0))
        .collect()
}

fn must_measure(samples: &[f32]) -> Loudness {
    measure(samples, 2, RATE_HZ).expect("valid shape")
}

/// Tech 3341 table 1: integrated loudness within +/-0.1 LU.
fn check_integrated(parts: &[(f64, f64)], expected_lufs: f64) {
    let loudness = must_measure(&sequence(parts));
    let lufs = loudness.integrated_lufs.expect("not silent");
    assert!(
        (lufs - expected_lufs).abs() <= 0.1,
        "{parts:?}: {lufs} LUFS, expected {expected_lufs}"
    );
}

#[test]
fn tech_3341_case_1() {
    check_integrated(&[(-23.0, 20.0)], -23.0);
}

#[test]
fn tech_3341_case_2() {
    check_integrated(&[(-33.0, 20.0)], -33.0);
}

#[test]
fn tech_3341_case_3() {
    check_integrated(&[(-36.0, 10.0), (-23.0, 60.0), (-36.0, 10.0)], -23.0);
}

#[test]
fn tech_3341_case_4() {
    check_integrated(
        &[
            (-72.0, 10.0),
            (-36.0, 10.0),
            (-23.0, 60.0),
            (-36.0, 10.0),
            (-72.0, 10.0),
        ],
        -23.0,
    );
}

#[test]
fn tech_3341_case_5() {
    check_integrated(&[(-26.0, 20.0), (-20.0, 20.1), (-26.0, 20.0)], -23.0);
}

/// Tech 3341 true-peak cases: the meter must read within +0.2 / -0.4 dB.
fn check_true_peak(freq_hz: f64, phase_deg: f64, true_peak_dbtp: f64) {
    // The sine's amplitude is its true peak; its samples may never reach it.
    let mut samples = sine(freq_hz, true_peak_dbtp, 5.0, phase_deg.to_radians());
    // 20 ms fades: jumping between digital silence and a sine is a step
    // whose interpolation rings above the sine's own peak, and measuring
    // those edges is not what these steady-state cases are about.
    let fade_len = (0.02 * f64::from(RATE_HZ)) as usize;
    let frames = samples.len() / 2;
    for n in 0..fade_len {
        let gain = (0.5 - 0.5 * (std::f64::consts::PI * n as f64 / fade_len as f64).cos()) as f32;
        for frame in [n, frames - 1 - n] {
            samples[2 * frame] *= gain;
            samples[2 * frame + 1] *= gain;
        }
    }
    let measured = must_measure(&samples).true_peak_dbtp.expect("not silent");
    let error = measured - true_peak_dbtp;
    assert!(
        (-0.4..=0.2).contains(&error),
        "{freq_hz} Hz at {phase_deg} deg: {measured} dBTP, expected {true_peak_dbtp}"
    );
}

#[test]
fn tech_3341_case_15_quarter_rate_in_phase() {
    check_true_peak(12_000.0, 0.0, -6.0);
}

#[test]
fn tech_3341_case_16_quarter_rate_45_degrees() {
    check_true_peak(12_000.0, 45.0, -6.0);
}

#[test]
fn tech_3341_case_17_sixth_rate_60_degrees() {
    check_true_peak(8_000.0, 60.0, -6.0);
}

#[test]
fn tech_3341_case_18_eighth_rate_67_5_degrees() {
    check_true_peak(6_000.0, 67.5, -6.0);
}

#[test]
fn tech_3341_case_19_quarter_rate_45_degrees_over_full_scale() {
    // Samples at 0 dBFS, true peak +3 dBTP.
    check_true_peak(12_000.0, 45.0, 3.0);
}

#[test]
fn sample_peak_of_case_16_is_below_true_peak() {
    // The 45 degree phase puts samples at 0.707 of the peak: 3 dB under.
    let loudness = must_measure(&sine(12_000.0, -6.0, 5.0, 45f64.to_radians()));
    let sample_peak = loudness.sample_peak_dbfs.expect("not silent");
    assert!((sample_peak - -9.01).abs() < 0.05, "{sample_peak}");
}

/// Tech 3342: loudness range within +/-1 LU.
fn check_range(parts: &[(f64, f64)], expected_lu: f64) {
    let loudness = must_measure(&sequence(parts));
    assert!(
        (loudness.range_lu - expected_lu).abs() <= 1.0,
        "{parts:?}: LRA {} LU, expected {expected_lu}",
        loudness.range_lu
    );
}

#[test]
fn tech_3342_case_1() {
    check_range(&[(-20.0, 20.0), (-30.0, 20.0)], 10.0);
}

#[test]
fn tech_3342_case_2() {
    check_range(&[(-20.0, 20.0), (-15.0, 20.0)], 5.0);
}

#[test]
fn tech_3342_case_3() {
    check_range(&[(-40.0, 20.0), (-20.0, 20.0)], 20.0);
}

#[test]
fn tech_3342_case_4() {
    check_range(
        &[
            (-50.0, 20.0),
            (-35.0, 20.0),
            (-20.0, 20.0),
            (-35.0, 20.0),
            (-50.0, 20.0),
        ],
        15.0,
    );
}

#[test]
fn silence_has_no_integrated_loudness() {
    let loudness = must_measure(&vec![0.0; RATE_HZ as usize * 2 * 5]);
    assert_eq!(loudness.integrated_lufs, None);
    assert_eq!(loudness.true_peak_dbtp, None);
    assert_eq!(loudness.gain_to_db(-14.0), None);
}

#[test]
fn bad_shapes_are_refused() {
    assert!(measure(&[0.0; 10], 0, RATE_HZ).is_err());
    assert!(measure(&[0.0; 10], 2, 0).is_err());
}

//! The input JSON every audio function accepts (one flat shape: `audio.ingest`
//! takes the union of the others' fields). Unknown fields are refused so a
//! typo never silently changes a job.

use serde::{Deserialize, Serialize};

use crate::transcode::{Format, Target};
use crate::AudioError;

/// Default number of waveform points.
pub const WAVEFORM_POINTS_DEFAULT: usize = 1000;
/// Default waveform picture height in pixels.
pub const PNG_HEIGHT_DEFAULT: u32 = 200;
/// Most outputs one job may request.
pub const OUTPUTS_MAX: usize = 16;
/// Loudness targets accepted.
const TARGET_RANGE_LUFS: std::ops::RangeInclusive<f64> = -70.0..=0.0;

/// Parameters of an audio function call. See the crate README for each field.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Loudness target for the reported gain (default -14 LUFS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_lufs: Option<f64>,
    /// Waveform resolution (default 1000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points: Option<usize>,
    /// Also draw `waveform.png` (default: true for audio.waveform and audio.ingest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub png: Option<bool>,
    /// Height of the picture (its width is `points`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub png_height: Option<u32>,
    /// Include beat times in the features (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beats: Option<bool>,
    /// Transcode outputs.
    #[serde(default)]
    pub outputs: Vec<OutputRequest>,
    /// Normalise transcodes to this loudness (peak-limited to -1 dBTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalize_lufs: Option<f64>,
}

/// One transcode output, e.g. `{"format": "opus", "bitrate_kbps": 96}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputRequest {
    pub format: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitrate_kbps: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_rate_hz: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits_per_sample: Option<u32>,
}

impl Request {
    /// Parses a request; `null` means all defaults.
    pub fn parse(input: &serde_json::Value) -> Result<Request, AudioError> {
        if input.is_null() {
            return Ok(Request::default());
        }
        let request: Request = serde_json::from_value(input.clone())
            .map_err(|err| AudioError::InvalidInput(format!("request: {err}")))?;
        request.validate()?;
        Ok(request)
    }

    fn validate(&self) -> Result<(), AudioError> {
        for target in [self.target_lufs, self.normalize_lufs]
            .into_iter()
            .flatten()
        {
            if !TARGET_RANGE_LUFS.contains(&target) {
                return Err(AudioError::InvalidInput(format!(
                    "loudness target {target} LUFS"
                )));
            }
        }
        if let Some(points) = self.points {
            if points == 0 || points > dsp::waveform::POINTS_MAX {
                return Err(AudioError::InvalidInput(format!("points {points}")));
            }
        }
        if self.outputs.len() > OUTPUTS_MAX {
            return Err(AudioError::InvalidInput(format!(
                "more than {OUTPUTS_MAX} outputs"
            )));
        }
        for target in self.targets()? {
            target.validate()?;
        }
        Ok(())
    }

    /// The transcode targets, parsed.
    pub fn targets(&self) -> Result<Vec<Target>, AudioError> {
        self.outputs
            .iter()
            .map(|o| {
                Ok(Target {
                    format: Format::parse(&o.format)?,
                    bitrate_kbps: o.bitrate_kbps,
                    quality: o.quality,
                    rate_hz: o.sample_rate_hz,
                    channels: o.channels,
                    bits_per_sample: o.bits_per_sample,
                })
            })
            .collect()
    }
}

/// Parses the CLI's compact output list: `opus:96k,mp3:320k,flac,wav:24bit`.
pub fn parse_outputs(spec: &str) -> Result<Vec<OutputRequest>, AudioError> {
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|item| {
            let mut parts = item.trim().split(':');
            let format = parts.next().unwrap_or_default().to_string();
            let mut output = OutputRequest {
                format,
                bitrate_kbps: None,
                quality: None,
                sample_rate_hz: None,
                channels: None,
                bits_per_sample: None,
            };
            for option in parts {
                let bad =
                    || AudioError::InvalidInput(format!("output option {option:?} in {item:?}"));
                if let Some(kbps) = option.strip_suffix('k') {
                    output.bitrate_kbps = Some(kbps.parse().map_err(|_| bad())?);
                } else if let Some(bits) = option.strip_suffix("bit") {
                    output.bits_per_sample = Some(bits.parse().map_err(|_| bad())?);
                } else if let Some(hz) = option.strip_suffix("hz") {
                    output.sample_rate_hz = Some(hz.parse().map_err(|_| bad())?);
                } else if let Some(q) = option.strip_prefix('q') {
                    output.quality = Some(q.parse().map_err(|_| bad())?);
                } else if option == "mono" {
                    output.channels = Some(1);
                } else if option == "stereo" {
                    output.channels = Some(2);
                } else {
                    return Err(bad());
                }
            }
            Format::parse(&output.format)?;
            Ok(output)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn compact_output_list() {
        let outputs = parse_outputs("opus:96k,mp3:320k,flac:24bit,wav:mono:22050hz").unwrap();
        let summary: Vec<String> = outputs
            .iter()
            .map(|o| {
                format!(
                    "{} {:?} {:?} {:?} {:?}",
                    o.format, o.bitrate_kbps, o.bits_per_sample, o.channels, o.sample_rate_hz
                )
            })
            .collect();
        expect![[r#"["opus Some(96) None None None", "mp3 Some(320) None None None", "flac None Some(24) None None", "wav None None Some(1) Some(22050)"]"#]]
            .assert_eq(&format!("{summary:?}"));
        assert!(parse_outputs("aiff").is_err());
        assert!(parse_outputs("opus:fast").is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = Request::parse(&serde_json::json!({"target_lufz": -14})).unwrap_err();
        assert_eq!(err.code(), "invalid_input");
        let err = Request::parse(
            &serde_json::json!({"outputs": [{"format": "opus", "bitrate_kbps": 5000}]}),
        )
        .unwrap_err();
        assert_eq!(err.code(), "invalid_input");
    }
}

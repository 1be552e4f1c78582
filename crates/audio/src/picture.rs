//! A PNG picture of the waveform with the chorus shaded, for players and the dashboard.

use dsp::waveform::Peak;

use crate::AudioError;

/// Picture size bounds.
pub const WIDTH_MAX: u32 = 8192;
pub const HEIGHT_MAX: u32 = 2048;

const BACKGROUND: [u8; 3] = [0xff, 0xff, 0xff];
const CHORUS_BACKGROUND: [u8; 3] = [0xff, 0xe8, 0xb0];
const WAVE: [u8; 3] = [0x2b, 0x4c, 0x7e];
const CHORUS_WAVE: [u8; 3] = [0xc0, 0x5a, 0x00];

/// Draws one column per peak; `shaded_s` spans (seconds) get the chorus colours.
pub fn render(
    peaks: &[Peak],
    height: u32,
    duration_s: f64,
    shaded_s: &[(f64, f64)],
) -> Result<Vec<u8>, AudioError> {
    let width = peaks.len() as u32;
    if width == 0 || width > WIDTH_MAX || !(8..=HEIGHT_MAX).contains(&height) {
        return Err(AudioError::InvalidInput(format!(
            "picture {width}x{height} outside 1..={WIDTH_MAX} x 8..={HEIGHT_MAX}"
        )));
    }
    let (w, h) = (width as usize, height as usize);
    let mut pixels = vec![0u8; w * h * 3];
    let mid = (h as f32 - 1.0) / 2.0;
    for (x, peak) in peaks.iter().enumerate() {
        let t_s = (x as f64 + 0.5) / w as f64 * duration_s;
        let in_chorus = shaded_s.iter().any(|&(a, b)| t_s >= a && t_s < b);
        let (background, wave) = if in_chorus {
            (CHORUS_BACKGROUND, CHORUS_WAVE)
        } else {
            (BACKGROUND, WAVE)
        };
        // Sample values map to rows: +1 at the top, -1 at the bottom.
        let top = (mid - peak.max.clamp(-1.0, 1.0) * mid).round() as usize;
        let bottom = (mid - peak.min.clamp(-1.0, 1.0) * mid).round() as usize;
        for y in 0..h {
            let colour = if y >= top.min(bottom) && y <= bottom.max(top) {
                wave
            } else {
                background
            };
            let at = (y * w + x) * 3;
            pixels[at..at + 3].copy_from_slice(&colour);
        }
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let png_error = |err: png::EncodingError| AudioError::Encode(format!("png: {err}"));
        let mut writer = encoder.write_header().map_err(png_error)?;
        writer.write_image_data(&pixels).map_err(png_error)?;
    }
    Ok(out)
}

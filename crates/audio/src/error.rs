//! The audio crate's one error type, with the stable codes the API reports.

use std::path::PathBuf;

/// Why an audio function failed. [`AudioError::code`] is stable wire data;
/// the message is for humans and may change.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The request or the file is malformed: bad JSON parameters, corrupted,
    /// truncated, empty or non-audio data.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Well-formed data in a container or codec we cannot decode or encode.
    #[error("unsupported format: {0}")]
    UnsupportedFormat(String),
    /// The input exceeds a named limit (duration, channels, file size).
    #[error("input too large: {0}")]
    TooLarge(String),
    /// Reading or writing a local file failed.
    #[error("i/o error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An encoder refused the audio (rare: parameters are validated first).
    #[error("encoder failed: {0}")]
    Encode(String),
    /// The worker asked for a function this crate does not provide.
    #[error("unknown function {0:?}")]
    UnknownFunction(String),
}

impl AudioError {
    /// Stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            AudioError::InvalidInput(_) => "invalid_input",
            AudioError::UnsupportedFormat(_) => "unsupported_format",
            AudioError::TooLarge(_) => "too_large",
            AudioError::Io { .. } => "io",
            AudioError::Encode(_) => "encode_failed",
            AudioError::UnknownFunction(_) => "unknown_function",
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        AudioError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<dsp::DspError> for AudioError {
    fn from(err: dsp::DspError) -> Self {
        AudioError::InvalidInput(err.to_string())
    }
}

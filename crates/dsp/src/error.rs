//! The one error type of the DSP crate: bad parameters from the caller.
//!
//! Sample content never causes an error (silence and noise are valid music);
//! only shapes that make no sense do (zero channels, zero sample rate).

use std::fmt;

/// Why a DSP function refused its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DspError {
    /// The caller passed a parameter outside its valid range.
    InvalidParameter(String),
}

impl fmt::Display for DspError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DspError::InvalidParameter(message) => write!(f, "invalid parameter: {message}"),
        }
    }
}

impl std::error::Error for DspError {}

//! The errors this crate answers with: a stable code and a sentence for people.
//!
//! The codes are spelled as `model::ErrorCode`'s (a test in `model` holds them to it).

use std::fmt;

/// The stable codes a trigger or event error carries; each is spelled as the
/// `model::ErrorCode` of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    /// A malformed trigger spec or filter.
    InvalidInput,
    /// A CloudEvent that is malformed, lacks a required attribute or is not version 1.0.
    InvalidEvent,
    /// Over a named limit.
    TooLarge,
    /// A record that does not match its source's JSON Schema.
    SchemaMismatch,
}

impl Code {
    /// The wire spelling, the same as `model::ErrorCode::as_str`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidInput => "invalid_input",
            Code::InvalidEvent => "invalid_event",
            Code::TooLarge => "too_large",
            Code::SchemaMismatch => "schema_mismatch",
        }
    }

    pub const ALL: [Code; 4] = [
        Code::InvalidInput,
        Code::InvalidEvent,
        Code::TooLarge,
        Code::SchemaMismatch,
    ];
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing wrong with a trigger spec or an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub code: Code,
    pub message: String,
}

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn input(message: impl Into<String>) -> Error {
        Error::new(Code::InvalidInput, message)
    }

    pub(crate) fn event(message: impl Into<String>) -> Error {
        Error::new(Code::InvalidEvent, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

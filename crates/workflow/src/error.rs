//! The errors this crate answers with: a stable code, the path of the offending field, and a
//! sentence for people.
//!
//! The codes are spelled as `model::ErrorCode`'s (a test holds them to it). The crate does
//! not depend on `model` so that `model`'s replicated state can hold workflow specs and runs.

use std::fmt;

/// The stable codes a workflow error carries; each is spelled as the `model::ErrorCode` of
/// the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    /// A malformed spec, template, condition or control.
    InvalidInput,
    /// Over a named limit.
    TooLarge,
    /// A step, function or run that does not exist.
    NotFound,
    /// A control that the run's state does not allow (e.g. abort a finished run).
    Conflict,
    /// A run's input does not match the workflow's `input_schema`.
    SchemaMismatch,
}

impl Code {
    /// The wire spelling, the same as `model::ErrorCode::as_str`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidInput => "invalid_input",
            Code::TooLarge => "too_large",
            Code::NotFound => "not_found",
            Code::Conflict => "conflict",
            Code::SchemaMismatch => "schema_mismatch",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing wrong with a spec or a control.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub code: Code,
    /// Where, as a path into the spec (`steps[2].needs[0]`); empty for the whole spec.
    pub path: String,
    pub message: String,
}

impl Error {
    pub fn new(code: Code, path: impl Into<String>, message: impl Into<String>) -> Error {
        Error {
            code,
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.code, self.message)
        } else {
            write!(f, "{}: {}: {}", self.code, self.path, self.message)
        }
    }
}

impl std::error::Error for Error {}

/// Everything wrong with a spec, in the order of the spec (at most
/// [`crate::SPEC_ERRORS_MAX`]). The code of the whole is the first error's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<Error>);

impl SpecErrors {
    pub fn code(&self) -> Code {
        self.0.first().map_or(Code::InvalidInput, |e| e.code)
    }
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

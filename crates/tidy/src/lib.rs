//! Nothing to build: this crate exists for its test, `tests/tidy.rs`.

//! A workflow's input schema: compiled at deploy (a schema that does not compile is a spec
//! error) and checked against each run's input before the run exists. Pure: the validator
//! is built without its remote-reference resolvers, so a schema can only refer within itself.

use crate::error::{Code, Error};
use crate::spec::{WorkflowSpec, INPUT_SCHEMA_BYTES_MAX, SCHEMA_ERRORS_MAX};
use serde_json::Value;

/// Why `schema` cannot be a workflow's input schema, if it cannot.
pub(crate) fn schema_error(schema: &Value) -> Option<Error> {
    let len = serde_json::to_vec(schema).map_or(usize::MAX, |v| v.len());
    if len > INPUT_SCHEMA_BYTES_MAX {
        return Some(Error::new(
            Code::TooLarge,
            "input_schema",
            format!("is {len} bytes as JSON; the limit is {INPUT_SCHEMA_BYTES_MAX}"),
        ));
    }
    jsonschema::validator_for(schema).err().map(|e| {
        Error::new(
            Code::InvalidInput,
            "input_schema",
            format!("not a usable JSON Schema: {e}"),
        )
    })
}

/// Whether `input` matches `spec`'s input schema (any input does if it has none). The error
/// names up to [`SCHEMA_ERRORS_MAX`] mismatches, each with where in the input it is.
pub fn check_input(spec: &WorkflowSpec, input: &Value) -> Result<(), Error> {
    let Some(schema) = &spec.input_schema else {
        return Ok(());
    };
    let validator = jsonschema::validator_for(schema).map_err(|e| {
        // Deploy compiled it: only a schema from an older version of this code gets here.
        Error::new(
            Code::InvalidInput,
            "input_schema",
            format!("not a usable JSON Schema: {e}"),
        )
    })?;
    let Some(found) = schema_mismatches(&validator, input) else {
        return Ok(());
    };
    let message = format!(
        "the input does not match workflow {}'s input schema: {found}",
        spec.name
    );
    Err(Error::new(Code::SchemaMismatch, "input", message))
}

/// Where and how `value` does not match the schema, if it does not: up to
/// [`SCHEMA_ERRORS_MAX`] mismatches (`at /path: why`, joined by `; `), then how many more.
/// Also what a Kafka trigger says of a record that does not match its schema.
pub fn schema_mismatches(validator: &jsonschema::Validator, value: &Value) -> Option<String> {
    let mut found = Vec::new();
    let mut more = 0usize;
    for e in validator.iter_errors(value) {
        if found.len() < SCHEMA_ERRORS_MAX {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "/".to_string() } else { at };
            found.push(format!("at {at}: {e}"));
        } else {
            more += 1;
        }
    }
    if found.is_empty() {
        return None;
    }
    let mut message = found.join("; ");
    if more > 0 {
        message.push_str(&format!("; and {more} more"));
    }
    Some(message)
}

//! CloudEvents 1.0 over HTTP: the three modes of the HTTP protocol binding, parsed into one
//! [`Event`].
//!
//! - binary: the attributes in `ce-*` headers (values percent-encoded), the data is the body,
//!   its `Content-Type` is `datacontenttype`;
//! - structured: one event as a JSON object (`application/cloudevents+json`);
//! - batch: a JSON array of such objects (`application/cloudevents-batch+json`).
//!
//! Parsed by hand rather than with the `cloudevents-sdk` crate: every way an event can be
//! malformed must answer a stable code and a message that names the attribute (the SDK's
//! errors would have to be mapped back from its own enum), the SDK also takes specversion
//! 0.3, which we must refuse, and its HTTP binding ties this pure crate to one version of
//! the `http` crate. What is needed is small: required attributes, the naming rule for
//! attribute names, percent-decoding of header values and the JSON format.

use crate::Error;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Largest event (attributes and data, as its JSON form): it becomes part of a job's input.
pub const EVENT_BYTES_MAX: usize = 128 * 1024;
/// Events in one request (batch mode) at most.
pub const EVENTS_PER_REQUEST_MAX: usize = 1_000;
/// Extension attributes per event at most.
pub const ATTRIBUTES_MAX: usize = 64;
/// Longest attribute value.
pub const ATTRIBUTE_VALUE_LEN_MAX: usize = 4_096;
/// Longest attribute name, as the specification advises.
const ATTRIBUTE_NAME_LEN_MAX: usize = 20;

/// The only version taken.
const SPECVERSION: &str = "1.0";
/// Attributes every event has.
const REQUIRED: [&str; 4] = ["id", "source", "specversion", "type"];

/// One CloudEvent: its context attributes (every value as a string: the JSON format's
/// booleans and integers are written as they read) and its data.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Every attribute but the data, by name (`id`, `source`, `type`, `subject`, extensions).
    pub(crate) attributes: BTreeMap<String, String>,
    pub(crate) data: Data,
}

/// An event's payload, as the JSON format carries it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Data {
    None,
    /// `data`: JSON, or a string for text.
    Json(Value),
    /// `data_base64`: bytes that are neither JSON nor UTF-8 text.
    Base64(String),
}

impl Event {
    pub fn id(&self) -> &str {
        &self.attributes["id"]
    }

    pub fn source(&self) -> &str {
        &self.attributes["source"]
    }

    /// The value of an attribute, extensions included (`None` if the event has none).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }

    /// Its data as JSON: `None` for an event without data or with bytes (`data_base64`).
    pub fn data_json(&self) -> Option<&Value> {
        match &self.data {
            Data::Json(v) => Some(v),
            Data::None | Data::Base64(_) => None,
        }
    }

    /// The event in the JSON format (structured mode): what a job's input carries.
    pub fn to_json(&self) -> Value {
        let mut map: Map<String, Value> = self
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        match &self.data {
            Data::None => {}
            Data::Json(v) => {
                map.insert("data".into(), v.clone());
            }
            Data::Base64(b) => {
                map.insert("data_base64".into(), Value::String(b.clone()));
            }
        }
        Value::Object(map)
    }

    fn checked(attributes: BTreeMap<String, String>, data: Data) -> Result<Event, Error> {
        for name in REQUIRED {
            match attributes.get(name) {
                Some(v) if !v.is_empty() => {}
                _ => {
                    return Err(Error::event(format!(
                        "the event has no {name}: id, source, specversion and type are required"
                    )))
                }
            }
        }
        let version = &attributes["specversion"];
        if version != SPECVERSION {
            return Err(Error::event(format!(
                "specversion {version:?} is not supported: only {SPECVERSION:?}"
            )));
        }
        if attributes.len() > REQUIRED.len() + ATTRIBUTES_MAX {
            return Err(Error::event(format!(
                "an event has at most {ATTRIBUTES_MAX} attributes besides the required ones"
            )));
        }
        for (name, value) in &attributes {
            let name_ok = !name.is_empty()
                && name.len() <= ATTRIBUTE_NAME_LEN_MAX
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !name_ok {
                return Err(Error::event(format!(
                    "attribute name {name:?} must be 1 to {ATTRIBUTE_NAME_LEN_MAX} characters of a-z and 0-9"
                )));
            }
            if value.len() > ATTRIBUTE_VALUE_LEN_MAX {
                return Err(Error::event(format!(
                    "attribute {name} is over {ATTRIBUTE_VALUE_LEN_MAX} bytes"
                )));
            }
        }
        let event = Event { attributes, data };
        let size = serde_json::to_vec(&event.to_json()).map_or(usize::MAX, |v| v.len());
        if size > EVENT_BYTES_MAX {
            return Err(Error::new(
                crate::Code::TooLarge,
                format!(
                    "event {:?} is {size} bytes; the limit is {EVENT_BYTES_MAX}",
                    event.id()
                ),
            ));
        }
        Ok(event)
    }

    /// One event in the JSON format.
    fn from_json(value: Value) -> Result<Event, Error> {
        let Value::Object(map) = value else {
            return Err(Error::event("an event in the JSON format is a JSON object"));
        };
        let mut attributes = BTreeMap::new();
        let mut data = Data::None;
        for (name, value) in map {
            match (name.as_str(), value) {
                ("data", v) => {
                    if !matches!(data, Data::None) {
                        return Err(Error::event("an event has data or data_base64, not both"));
                    }
                    data = Data::Json(v);
                }
                ("data_base64", Value::String(b)) => {
                    if !matches!(data, Data::None) {
                        return Err(Error::event("an event has data or data_base64, not both"));
                    }
                    data = Data::Base64(b);
                }
                ("data_base64", _) => return Err(Error::event("data_base64 is a string")),
                // The JSON format allows null for an absent attribute.
                (_, Value::Null) => {}
                (_, Value::String(s)) => {
                    attributes.insert(name, s);
                }
                (required, _) if REQUIRED.contains(&required) => {
                    return Err(Error::event(format!("{required} must be a string")))
                }
                (_, v @ (Value::Bool(_) | Value::Number(_))) => {
                    attributes.insert(name, v.to_string());
                }
                (_, _) => {
                    return Err(Error::event(format!(
                        "attribute {name} must be a string, a number or a boolean"
                    )))
                }
            }
        }
        Event::checked(attributes, data)
    }
}

fn parse_json(body: &[u8]) -> Result<Value, Error> {
    serde_json::from_slice(body).map_err(|e| Error::event(format!("malformed JSON: {e}")))
}

/// Structured mode: the body is one event in the JSON format.
pub fn parse_structured(body: &[u8]) -> Result<Event, Error> {
    Event::from_json(parse_json(body)?)
}

/// Batch mode: the body is a JSON array of events (at most [`EVENTS_PER_REQUEST_MAX`]). One
/// malformed event refuses the whole batch, naming its index.
pub fn parse_batch(body: &[u8]) -> Result<Vec<Event>, Error> {
    let Value::Array(items) = parse_json(body)? else {
        return Err(Error::event("a batch is a JSON array of events"));
    };
    if items.len() > EVENTS_PER_REQUEST_MAX {
        return Err(Error::new(
            crate::Code::TooLarge,
            format!("a batch has at most {EVENTS_PER_REQUEST_MAX} events"),
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            Event::from_json(item)
                .map_err(|e| Error::new(e.code, format!("event [{i}]: {}", e.message)))
        })
        .collect()
}

/// Binary mode: attributes from the `ce-*` headers (`headers` are every header of the
/// request, names in any case), the body is the data, `content_type` its type.
pub fn parse_binary<'h>(
    headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Event, Error> {
    let mut attributes = BTreeMap::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        let Some(attribute) = lower.strip_prefix("ce-") else {
            continue;
        };
        let value = percent_decode(value)
            .ok_or_else(|| Error::event(format!("header {name} is not percent-encoded UTF-8")))?;
        if attributes.insert(attribute.to_string(), value).is_some() {
            return Err(Error::event(format!("header {name} is given twice")));
        }
    }
    if attributes.is_empty() {
        return Err(Error::event(
            "no event: send ce-* headers (binary mode) or a body of type application/cloudevents+json or application/cloudevents-batch+json",
        ));
    }
    if attributes.contains_key("datacontenttype") {
        return Err(Error::event(
            "in binary mode the data's type is the Content-Type header, not ce-datacontenttype",
        ));
    }
    let data = if body.is_empty() {
        Data::None
    } else if content_type.is_some_and(is_json) {
        Data::Json(parse_json(body).map_err(|e| {
            Error::event(format!(
                "the data is not JSON as its content type says: {}",
                e.message
            ))
        })?)
    } else {
        match std::str::from_utf8(body) {
            Ok(text) if content_type.is_none_or(|t| t.starts_with("text/")) => {
                Data::Json(Value::String(text.to_string()))
            }
            _ => Data::Base64(base64(body)),
        }
    };
    if let Some(t) = content_type {
        attributes.insert("datacontenttype".into(), t.to_string());
    }
    Event::checked(attributes, data)
}

/// `application/json`, `text/json` or any `+json` type, with or without parameters.
pub(crate) fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// Decodes `%XX` escapes (the HTTP binding encodes space, `"`, `%` and what is not printable
/// ASCII); `None` if an escape is broken or the result is not UTF-8.
fn percent_decode(value: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%' {
            let hex = value.get(i + 1..i + 3)?;
            let byte = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(byte);
            i += 3;
        } else {
            out.push(value[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Standard base64 with padding, for `data_base64`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if k <= chunk.len() {
                out.push(ALPHABET[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    fn show(result: Result<Event, Error>) -> String {
        match result {
            Ok(e) => e.to_json().to_string(),
            Err(e) => e.to_string(),
        }
    }

    fn check_structured(body: &str, expected: Expect) {
        expected.assert_eq(&show(parse_structured(body.as_bytes())));
    }

    fn check_binary(
        headers: &[(&str, &str)],
        content_type: Option<&str>,
        body: &[u8],
        expected: Expect,
    ) {
        let headers = headers.iter().map(|(k, v)| (*k, v.as_bytes()));
        expected.assert_eq(&show(parse_binary(headers, content_type, body)));
    }

    const HEADERS: [(&str, &str); 4] = [
        ("ce-specversion", "1.0"),
        ("ce-id", "e1"),
        ("ce-source", "/uploads"),
        ("ce-type", "song.uploaded"),
    ];

    #[test]
    fn binary_mode_takes_ce_headers_and_the_body() {
        check_binary(
            &[
                HEADERS[0],
                HEADERS[1],
                HEADERS[2],
                HEADERS[3],
                ("CE-Subject", "a%20song%C3%A9"),
                ("accept", "*/*"),
            ],
            Some("application/json"),
            br#"{"song": 42}"#,
            expect![[
                r#"{"data":{"song":42},"datacontenttype":"application/json","id":"e1","source":"/uploads","specversion":"1.0","subject":"a songé","type":"song.uploaded"}"#
            ]],
        );
        check_binary(
            &HEADERS,
            Some("text/plain"),
            b"hello",
            expect![[
                r#"{"data":"hello","datacontenttype":"text/plain","id":"e1","source":"/uploads","specversion":"1.0","type":"song.uploaded"}"#
            ]],
        );
        check_binary(
            &HEADERS,
            Some("application/octet-stream"),
            &[0, 1, 2, 255],
            expect![[
                r#"{"data_base64":"AAEC/w==","datacontenttype":"application/octet-stream","id":"e1","source":"/uploads","specversion":"1.0","type":"song.uploaded"}"#
            ]],
        );
        check_binary(
            &HEADERS,
            None,
            b"",
            expect![[
                r#"{"id":"e1","source":"/uploads","specversion":"1.0","type":"song.uploaded"}"#
            ]],
        );
    }

    #[test]
    fn malformed_binary_events_say_what_is_wrong() {
        check_binary(&[], None, b"{}", expect!["invalid_event: no event: send ce-* headers (binary mode) or a body of type application/cloudevents+json or application/cloudevents-batch+json"]);
        check_binary(&HEADERS[..3], None, b"", expect!["invalid_event: the event has no type: id, source, specversion and type are required"]);
        check_binary(
            &[
                ("ce-specversion", "0.3"),
                HEADERS[1],
                HEADERS[2],
                HEADERS[3],
            ],
            None,
            b"",
            expect![[r#"invalid_event: specversion "0.3" is not supported: only "1.0""#]],
        );
        check_binary(&HEADERS, Some("application/json"), b"{no", expect!["invalid_event: the data is not JSON as its content type says: malformed JSON: key must be a string at line 1 column 2"]);
        check_binary(
            &[
                HEADERS[0],
                HEADERS[1],
                HEADERS[2],
                HEADERS[3],
                ("ce-bad", "%zz"),
            ],
            None,
            b"",
            expect!["invalid_event: header ce-bad is not percent-encoded UTF-8"],
        );
        check_binary(
            &[
                HEADERS[0],
                HEADERS[1],
                HEADERS[2],
                HEADERS[3],
                ("ce-Not_Valid", "x"),
            ],
            None,
            b"",
            expect![[
                r#"invalid_event: attribute name "not_valid" must be 1 to 20 characters of a-z and 0-9"#
            ]],
        );
    }

    #[test]
    fn structured_mode_reads_the_json_format() {
        check_structured(
            r#"{"specversion":"1.0","id":"e2","source":"s","type":"t","count":3,"flag":true,"nothing":null,"data":{"x":1}}"#,
            expect![[
                r#"{"count":"3","data":{"x":1},"flag":"true","id":"e2","source":"s","specversion":"1.0","type":"t"}"#
            ]],
        );
        check_structured(r#"{"specversion":"1.0","id":"e2","source":"s"}"#, expect!["invalid_event: the event has no type: id, source, specversion and type are required"]);
        check_structured(
            r#"{"specversion":"1.0","id":"","source":"s","type":"t"}"#,
            expect![
                "invalid_event: the event has no id: id, source, specversion and type are required"
            ],
        );
        check_structured(
            r#"{"specversion":1.0,"id":"e","source":"s","type":"t"}"#,
            expect!["invalid_event: specversion must be a string"],
        );
        check_structured(
            r#"[1]"#,
            expect!["invalid_event: an event in the JSON format is a JSON object"],
        );
        check_structured(
            r#"{"specversion":"1.0","id":"e","source":"s","type":"t","data":1,"data_base64":"AA=="}"#,
            expect!["invalid_event: an event has data or data_base64, not both"],
        );
        check_structured(
            r#"{"specversion":"1.0","id":"e","source":"s","type":"t","x":{"a":1}}"#,
            expect!["invalid_event: attribute x must be a string, a number or a boolean"],
        );
        let big = format!(
            r#"{{"specversion":"1.0","id":"e","source":"s","type":"t","data":"{}"}}"#,
            "x".repeat(EVENT_BYTES_MAX)
        );
        check_structured(
            &big,
            expect![[r#"too_large: event "e" is 131136 bytes; the limit is 131072"#]],
        );
    }

    #[test]
    fn a_batch_is_refused_whole_naming_the_bad_event() {
        let ok = r#"{"specversion":"1.0","id":"e1","source":"s","type":"t"}"#;
        let events = parse_batch(format!("[{ok},{ok}]").as_bytes()).unwrap();
        assert_eq!(events.len(), 2);
        let bad = parse_batch(format!(r#"[{ok},{{"id":"x"}}]"#).as_bytes()).unwrap_err();
        expect!["invalid_event: event [1]: the event has no source: id, source, specversion and type are required"].assert_eq(&bad.to_string());
        assert_eq!(
            parse_batch(b"{}").unwrap_err().code,
            crate::Code::InvalidEvent
        );
        let many = format!("[{}]", vec![ok; EVENTS_PER_REQUEST_MAX + 1].join(","));
        assert_eq!(
            parse_batch(many.as_bytes()).unwrap_err().code,
            crate::Code::TooLarge
        );
    }
}

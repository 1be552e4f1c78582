//! Where a completion goes, and how a CloudEvent travels there in binary mode.
//!
//! A trigger's `reply` (as a Knative trigger's reply) and the cluster's `events.sink` and
//! `alerts.sink` name a [`Sink`], spelled as one string:
//!
//! - `ingest`: back into the cluster's own `POST /v1/events/ingest`, so the event starts the
//!   jobs of the event triggers it matches (functions chained by their results);
//! - `https://host/path` (or `http://`): posted in the HTTP binding's binary mode;
//! - `kafka://host:port[,host:port...]/topic`: produced in the Kafka binding's binary mode.
//!
//! In binary mode ([`Binary`]) the attributes travel as headers and the data as the body or
//! the record's value: the HTTP binding names them `ce-{attribute}` with percent-encoded
//! values, the Kafka binding `ce_{attribute}` with the value's UTF-8 bytes as they are; both
//! carry `datacontenttype` as `content-type`.
//!
//! An event that comes back to the ingest may start a job whose completion comes back again;
//! the extension attribute [`HOPS_ATTRIBUTE`] counts the trips, so a trigger that matches its
//! own replies stops after [`REPLY_HOPS_MAX`] instead of running for ever.

use crate::event::{Data, Event};
use crate::spec::{check_brokers, check_topic};
use crate::Error;
use base64::Engine as _;
use percent_encoding::{AsciiSet, CONTROLS};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Longest sink, as spelled.
pub const SINK_LEN_MAX: usize = 1_024;
/// Trips through the ingest a chain of replies takes at most.
pub const REPLY_HOPS_MAX: u32 = 16;
/// The extension attribute that counts a reply's trips through the ingest.
pub const HOPS_ATTRIBUTE: &str = "chorushops";

/// Where completion events go.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Sink {
    /// The cluster's own ingest: the event starts the event triggers it matches.
    Ingest,
    /// An http(s) URL, posted to in binary mode.
    Url(String),
    /// A Kafka topic on these bootstrap servers.
    Kafka { brokers: String, topic: String },
}

impl Sink {
    /// Parses a sink as spelled (see the module documentation).
    pub fn parse(text: &str) -> Result<Sink, Error> {
        if text.len() > SINK_LEN_MAX {
            return Err(Error::input(format!(
                "a sink is at most {SINK_LEN_MAX} bytes"
            )));
        }
        if text == "ingest" {
            return Ok(Sink::Ingest);
        }
        if let Some(rest) = text.strip_prefix("kafka://") {
            let Some((brokers, topic)) = rest.split_once('/') else {
                return Err(Error::input(format!(
                    "sink {text:?} names no topic: kafka://host:port/topic"
                )));
            };
            check_brokers(brokers)?;
            check_topic(topic)?;
            return Ok(Sink::Kafka {
                brokers: brokers.to_string(),
                topic: topic.to_string(),
            });
        }
        let url_ok = ["http://", "https://"].iter().any(|scheme| {
            text.strip_prefix(scheme).is_some_and(|rest| {
                let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
                !host.is_empty()
            })
        }) && !text
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control());
        if url_ok {
            return Ok(Sink::Url(text.to_string()));
        }
        Err(Error::input(format!(
            "sink {:?} must be \"ingest\", an http(s) URL or kafka://host:port/topic",
            text.chars().take(128).collect::<String>()
        )))
    }

    /// `ingest`, `url` or `kafka`: a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Sink::Ingest => "ingest",
            Sink::Url(_) => "url",
            Sink::Kafka { .. } => "kafka",
        }
    }

    /// The sink for messages and logs: a URL shows its host only (URLs often carry a token).
    pub fn redacted(&self) -> String {
        match self {
            Sink::Url(url) => {
                let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
                let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
                let host = authority.rsplit('@').next().unwrap_or_default();
                format!("the URL at {host}")
            }
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sink::Ingest => f.write_str("ingest"),
            Sink::Url(url) => f.write_str(url),
            Sink::Kafka { brokers, topic } => write!(f, "kafka://{brokers}/{topic}"),
        }
    }
}

impl Serialize for Sink {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sink {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Sink, D::Error> {
        let text = String::deserialize(deserializer)?;
        Sink::parse(&text).map_err(|e| serde::de::Error::custom(e.message))
    }
}

/// An event in binary mode: the attributes as headers, the data as the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binary {
    /// Header names and values, `content-type` among them when the event has a
    /// `datacontenttype`.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What the HTTP binding percent-encodes in a header value: controls, space, `"`, `%` and
/// every byte that is not ASCII (so a UTF-8 character is each of its bytes encoded).
const HEADER_ESCAPED: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

impl Event {
    /// The event in the HTTP binding's binary mode (`ce-` headers, percent-encoded values).
    pub fn to_http_binary(&self) -> Binary {
        self.binary(|name, value| {
            let value = percent_encoding::utf8_percent_encode(value, HEADER_ESCAPED).to_string();
            (format!("ce-{name}"), value)
        })
    }

    /// The event in the Kafka binding's binary mode (`ce_` headers, values as they are).
    pub fn to_kafka_binary(&self) -> Binary {
        self.binary(|name, value| (format!("ce_{name}"), value.to_string()))
    }

    fn binary(&self, header: impl Fn(&str, &str) -> (String, String)) -> Binary {
        let mut headers = Vec::with_capacity(self.attributes.len());
        for (name, value) in &self.attributes {
            if name == "datacontenttype" {
                headers.push(("content-type".to_string(), value.clone()));
            } else {
                headers.push(header(name, value));
            }
        }
        let body = match &self.data {
            Data::None => Vec::new(),
            // Text that is not JSON travels as itself; everything else as its JSON.
            Data::Json(serde_json::Value::String(text))
                if !self
                    .attribute("datacontenttype")
                    .is_some_and(crate::event::is_json) =>
            {
                text.as_bytes().to_vec()
            }
            Data::Json(value) => serde_json::to_vec(value).unwrap_or_default(),
            Data::Base64(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_default(),
        };
        Binary { headers, body }
    }

    /// Trips through the ingest this event has made (its [`HOPS_ATTRIBUTE`]; 0 without one).
    pub fn hops(&self) -> u32 {
        self.attribute(HOPS_ATTRIBUTE)
            .and_then(|h| h.parse().ok())
            .unwrap_or(0)
    }
}

/// A CloudEvent `time` (RFC 3339, UTC, milliseconds) from milliseconds since the epoch.
pub fn rfc3339(ms: u64) -> String {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn sinks_parse_and_spell_back() {
        let check = |text: &str| match Sink::parse(text) {
            Ok(sink) => {
                assert_eq!(sink.to_string(), text);
                format!("{} {}", sink.kind(), sink.redacted())
            }
            Err(e) => format!("{}: {}", e.code, e.message),
        };
        let answers: Vec<String> = [
            "ingest",
            "https://user:pw@hooks.example.com/t/SECRET",
            "kafka://a:9092,b:9092/results",
            "kafka://a:9092",
            "kafka://a/results",
            "kafka://a:9092/bad topic",
            "ftp://example.com",
            "https:///nohost",
            "https://example.com/a b",
        ]
        .iter()
        .map(|t| check(t))
        .collect();
        expect![[r#"
            [
                "ingest ingest",
                "url the URL at hooks.example.com",
                "kafka kafka://a:9092,b:9092/results",
                "invalid_input: sink \"kafka://a:9092\" names no topic: kafka://host:port/topic",
                "invalid_input: brokers \"a\" must be host:port, separated by commas (at most 1024 bytes)",
                "invalid_input: topic \"bad topic\" must be 1 to 128 characters of a-z, A-Z, 0-9, '.', '_' and '-'",
                "invalid_input: sink \"ftp://example.com\" must be \"ingest\", an http(s) URL or kafka://host:port/topic",
                "invalid_input: sink \"https:///nohost\" must be \"ingest\", an http(s) URL or kafka://host:port/topic",
                "invalid_input: sink \"https://example.com/a b\" must be \"ingest\", an http(s) URL or kafka://host:port/topic",
            ]
        "#]]
        .assert_debug_eq(&answers);
    }

    /// Binary mode in both bindings, and back through the HTTP binding's parser: the same
    /// event.
    #[test]
    fn an_event_in_binary_mode_round_trips() {
        let event = crate::parse_structured(
            br#"{"specversion":"1.0","id":"job-7-9","source":"/chorus/functions/f",
                 "type":"io.chorus.job.succeeded","subject":"caf\u00e9 \"7\"",
                 "chorushops":"2","datacontenttype":"application/json","data":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(event.hops(), 2);
        let kafka = event.to_kafka_binary();
        expect![[r#"
            Binary {
                headers: [
                    (
                        "ce_chorushops",
                        "2",
                    ),
                    (
                        "content-type",
                        "application/json",
                    ),
                    (
                        "ce_id",
                        "job-7-9",
                    ),
                    (
                        "ce_source",
                        "/chorus/functions/f",
                    ),
                    (
                        "ce_specversion",
                        "1.0",
                    ),
                    (
                        "ce_subject",
                        "café \"7\"",
                    ),
                    (
                        "ce_type",
                        "io.chorus.job.succeeded",
                    ),
                ],
                body: [
                    123,
                    34,
                    120,
                    34,
                    58,
                    49,
                    125,
                ],
            }
        "#]]
        .assert_debug_eq(&kafka);
        let http = event.to_http_binary();
        let subject = http.headers.iter().find(|(k, _)| k == "ce-subject");
        assert_eq!(subject.unwrap().1, "caf%C3%A9%20%227%22");
        let content_type = http
            .headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.as_str());
        let back = crate::parse_binary(
            http.headers
                .iter()
                .filter(|(k, _)| k != "content-type")
                .map(|(k, v)| (k.as_str(), v.as_bytes())),
            content_type,
            &http.body,
        )
        .unwrap();
        assert_eq!(back, event);
    }
}

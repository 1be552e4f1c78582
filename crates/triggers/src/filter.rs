//! Subscription filters on event attributes, in the dialects of the CloudEvents
//! Subscriptions API: `exact`, `prefix` and `suffix` (one attribute and a value, compared
//! case-sensitively; an event without the attribute does not match), and `all`, `any` and
//! `not` over other filters. (`sql` is not supported.)

use crate::event::Event;
use crate::Error;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Filters nested in one another at most.
pub const FILTER_DEPTH_MAX: usize = 8;
/// Filters in one tree at most (every `all`, `any`, `not` and leaf counts).
pub const FILTER_NODES_MAX: usize = 64;

/// One filter, as JSON: `{"exact": {"type": "song.uploaded"}}`, `{"not": {...}}`,
/// `{"all": [...]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    Exact(BTreeMap<String, String>),
    Prefix(BTreeMap<String, String>),
    Suffix(BTreeMap<String, String>),
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
}

impl Filter {
    /// Checks the shape: one attribute per leaf, lower-case names, `all`/`any` not empty,
    /// within [`FILTER_DEPTH_MAX`] and [`FILTER_NODES_MAX`].
    pub fn validate(&self) -> Result<(), Error> {
        let mut nodes = 0;
        self.validate_at(1, &mut nodes)
    }

    fn validate_at(&self, depth: usize, nodes: &mut usize) -> Result<(), Error> {
        *nodes += 1;
        if depth > FILTER_DEPTH_MAX {
            return Err(Error::input(format!(
                "filters nest at most {FILTER_DEPTH_MAX} deep"
            )));
        }
        if *nodes > FILTER_NODES_MAX {
            return Err(Error::input(format!(
                "a filter has at most {FILTER_NODES_MAX} parts"
            )));
        }
        match self {
            Filter::Exact(m) | Filter::Prefix(m) | Filter::Suffix(m) => {
                let Some((name, _)) = m.iter().next().filter(|_| m.len() == 1) else {
                    return Err(Error::input(format!(
                        "{} takes exactly one attribute and its value",
                        self.dialect()
                    )));
                };
                let name_ok = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
                if !name_ok {
                    return Err(Error::input(format!(
                        "attribute name {name:?} must be of a-z and 0-9"
                    )));
                }
                Ok(())
            }
            Filter::All(filters) | Filter::Any(filters) => {
                if filters.is_empty() {
                    return Err(Error::input(format!(
                        "{} takes at least one filter",
                        self.dialect()
                    )));
                }
                filters
                    .iter()
                    .try_for_each(|f| f.validate_at(depth + 1, nodes))
            }
            Filter::Not(f) => f.validate_at(depth + 1, nodes),
        }
    }

    fn dialect(&self) -> &'static str {
        match self {
            Filter::Exact(_) => "exact",
            Filter::Prefix(_) => "prefix",
            Filter::Suffix(_) => "suffix",
            Filter::All(_) => "all",
            Filter::Any(_) => "any",
            Filter::Not(_) => "not",
        }
    }

    /// Whether the event passes the filter.
    pub fn matches(&self, event: &Event) -> bool {
        let leaf = |m: &BTreeMap<String, String>, test: fn(&str, &str) -> bool| {
            m.iter()
                .all(|(name, want)| event.attribute(name).is_some_and(|have| test(have, want)))
        };
        match self {
            Filter::Exact(m) => leaf(m, |have, want| have == want),
            Filter::Prefix(m) => leaf(m, |have, want| have.starts_with(want)),
            Filter::Suffix(m) => leaf(m, |have, want| have.ends_with(want)),
            Filter::All(filters) => filters.iter().all(|f| f.matches(event)),
            Filter::Any(filters) => filters.iter().any(|f| f.matches(event)),
            Filter::Not(f) => !f.matches(event),
        }
    }

    /// Whether the event passes every filter of a subscription (no filter: every event).
    pub fn all_match(filters: &[Filter], event: &Event) -> bool {
        filters.iter().all(|f| f.matches(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    fn events() -> Vec<Event> {
        [
            r#"{"specversion":"1.0","id":"1","source":"/studio/a","type":"song.uploaded","subject":"x.flac"}"#,
            r#"{"specversion":"1.0","id":"2","source":"/studio/b","type":"song.uploaded","subject":"y.mp3"}"#,
            r#"{"specversion":"1.0","id":"3","source":"/shop","type":"order.paid"}"#,
            r#"{"specversion":"1.0","id":"4","source":"/studio/a","type":"song.deleted","subject":"x.flac"}"#,
        ]
        .iter()
        .map(|e| crate::parse_structured(e.as_bytes()).unwrap())
        .collect()
    }

    /// The ids of the sample events the filter lets through.
    fn check(filter: serde_json::Value, expected: Expect) {
        let filter: Filter = serde_json::from_value(filter).unwrap();
        filter.validate().unwrap();
        let events = events();
        let ids: Vec<&str> = events
            .iter()
            .filter(|e| filter.matches(e))
            .map(|e| e.id())
            .collect();
        expected.assert_eq(&ids.join(","));
    }

    #[test]
    fn each_dialect_lets_through_what_it_should() {
        use serde_json::json;
        check(
            json!({ "exact": { "type": "song.uploaded" } }),
            expect!["1,2"],
        );
        check(json!({ "exact": { "type": "Song.Uploaded" } }), expect![""]);
        check(
            json!({ "prefix": { "source": "/studio/" } }),
            expect!["1,2,4"],
        );
        check(json!({ "suffix": { "subject": ".flac" } }), expect!["1,4"]);
        // An event without the attribute does not match; `not` turns that around.
        check(json!({ "suffix": { "subject": "" } }), expect!["1,2,4"]);
        check(
            json!({ "not": { "exact": { "type": "song.uploaded" } } }),
            expect!["3,4"],
        );
        check(
            json!({ "all": [{ "prefix": { "type": "song." } }, { "suffix": { "subject": ".flac" } }] }),
            expect!["1,4"],
        );
        check(
            json!({ "any": [{ "exact": { "type": "order.paid" } }, { "exact": { "id": "2" } }] }),
            expect!["2,3"],
        );
        check(json!({ "exact": { "nosuch": "x" } }), expect![""]);
    }

    #[test]
    fn bad_shapes_are_refused() {
        use serde_json::json;
        let refused = |f: serde_json::Value| {
            serde_json::from_value::<Filter>(f)
                .unwrap()
                .validate()
                .unwrap_err()
                .message
        };
        expect!["exact takes exactly one attribute and its value"]
            .assert_eq(&refused(json!({ "exact": { "type": "a", "source": "b" } })));
        expect!["all takes at least one filter"].assert_eq(&refused(json!({ "all": [] })));
        expect![[r#"attribute name "Type" must be of a-z and 0-9"#]]
            .assert_eq(&refused(json!({ "prefix": { "Type": "a" } })));
        let mut deep = json!({ "exact": { "type": "a" } });
        for _ in 0..FILTER_DEPTH_MAX {
            deep = json!({ "not": deep });
        }
        expect!["filters nest at most 8 deep"].assert_eq(&refused(deep));
        let wide: Vec<_> = (0..FILTER_NODES_MAX)
            .map(|_| json!({ "exact": { "type": "a" } }))
            .collect();
        expect!["a filter has at most 64 parts"].assert_eq(&refused(json!({ "any": wide })));
    }
}

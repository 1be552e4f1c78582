//! Cluster config: the keys an operator may set (`chorus config set KEY VALUE`), the type of
//! each one's value, and the one place both are parsed and checked.
//!
//! The replicated state keeps the raw strings that `Command::SetConfig` carried, so that old
//! logs and snapshots stay readable and every replica stores the same bytes; a value is
//! checked ([`Setting::parse`]) before it is proposed, and read back typed through
//! [`ClusterConfig::settings`]. A key this version does not know (from an old log) is kept as
//! it was and read as unset.

use crate::code::{ApiError, ErrorCode};
use crate::ids::NodeId;
use crate::strategy::Strategy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Longest config value.
pub const CONFIG_VALUE_LEN_MAX: usize = 4096;
/// Shortest retention: anything shorter would purge jobs while their clients still read them.
const RETENTION_MIN: Duration = Duration::from_secs(1);

/// A config key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConfigKey {
    /// `retention`: how long finished jobs, outputs and logs are kept (a duration: `7d`).
    Retention,
    /// `scheduler.strategy`: the cluster's default placement strategy.
    SchedulerStrategy,
    /// `scheduler.cpu_threshold`: the CPU percentage (0 to 100) that opens a node's breaker.
    SchedulerCpuThreshold,
    /// `alerts.webhook`: an http(s) URL that gets every cluster event; empty: off.
    AlertsWebhook,
    /// `events.sink`: where every job's and run's completion goes as a CloudEvent (see
    /// `triggers::Sink`); empty: nowhere.
    EventsSink,
    /// `alerts.sink`: where every cluster event goes as a CloudEvent; empty: nowhere.
    AlertsSink,
    /// `node.{id}.weight`: a node's share under weighted round-robin (0: none).
    NodeWeight(NodeId),
}

impl ConfigKey {
    /// Every key's spelling, for messages and help.
    pub const NAMES: [&'static str; 7] = [
        "retention",
        "scheduler.strategy",
        "scheduler.cpu_threshold",
        "alerts.webhook",
        "events.sink",
        "alerts.sink",
        "node.{id}.weight",
    ];

    /// Parses a key, refusing unknown ones with the list of known ones.
    pub fn parse(text: &str) -> Result<ConfigKey, ApiError> {
        let key = match text {
            "retention" => Some(ConfigKey::Retention),
            "scheduler.strategy" => Some(ConfigKey::SchedulerStrategy),
            "scheduler.cpu_threshold" => Some(ConfigKey::SchedulerCpuThreshold),
            "alerts.webhook" => Some(ConfigKey::AlertsWebhook),
            "events.sink" => Some(ConfigKey::EventsSink),
            "alerts.sink" => Some(ConfigKey::AlertsSink),
            other => other
                .strip_prefix("node.")
                .and_then(|rest| rest.strip_suffix(".weight"))
                // Only the canonical spelling of the id, so one node has one key.
                .filter(|id| !id.starts_with('+') && (id.len() == 1 || !id.starts_with('0')))
                .and_then(|id| id.parse().ok())
                .map(ConfigKey::NodeWeight),
        };
        key.ok_or_else(|| {
            let shown: String = text.chars().take(128).collect();
            ApiError::new(
                ErrorCode::InvalidInput,
                format!(
                    "unknown config key {shown:?}; the keys are {}",
                    ConfigKey::NAMES.join(", ")
                ),
            )
        })
    }
}

impl fmt::Display for ConfigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigKey::Retention => f.write_str("retention"),
            ConfigKey::SchedulerStrategy => f.write_str("scheduler.strategy"),
            ConfigKey::SchedulerCpuThreshold => f.write_str("scheduler.cpu_threshold"),
            ConfigKey::AlertsWebhook => f.write_str("alerts.webhook"),
            ConfigKey::EventsSink => f.write_str("events.sink"),
            ConfigKey::AlertsSink => f.write_str("alerts.sink"),
            ConfigKey::NodeWeight(id) => write!(f, "node.{id}.weight"),
        }
    }
}

/// A checked config value with its key.
#[derive(Clone, Debug, PartialEq)]
pub enum Setting {
    Retention(Duration),
    SchedulerStrategy(Strategy),
    SchedulerCpuThreshold(f64),
    /// `None` switches the webhook off.
    AlertsWebhook(Option<url::Url>),
    /// `None` switches the sink off.
    EventsSink(Option<triggers::Sink>),
    AlertsSink(Option<triggers::Sink>),
    NodeWeight(NodeId, u32),
}

impl Setting {
    /// Parses and checks `value` for `key`: the one place config is validated.
    pub fn parse(key: &str, value: &str) -> Result<Setting, ApiError> {
        let key = ConfigKey::parse(key)?;
        let invalid = |message: String| ApiError::new(ErrorCode::InvalidInput, message);
        if value.len() > CONFIG_VALUE_LEN_MAX {
            return Err(invalid(format!(
                "config values are at most {CONFIG_VALUE_LEN_MAX} bytes"
            )));
        }
        match key {
            ConfigKey::Retention => {
                let retention = humantime::parse_duration(value).map_err(|e| {
                    invalid(format!(
                        "retention {value:?} is not a duration such as 7d, 12h or 90s: {e}"
                    ))
                })?;
                if retention < RETENTION_MIN {
                    return Err(invalid(format!("retention {value:?} is under a second")));
                }
                Ok(Setting::Retention(retention))
            }
            ConfigKey::SchedulerStrategy => value
                .parse()
                .map(Setting::SchedulerStrategy)
                .map_err(|e: crate::UnknownStrategy| invalid(e.to_string())),
            ConfigKey::SchedulerCpuThreshold => value
                .parse::<f64>()
                .ok()
                .filter(|p| (0.0..=100.0).contains(p))
                .map(Setting::SchedulerCpuThreshold)
                .ok_or_else(|| {
                    invalid(format!(
                        "scheduler.cpu_threshold is a percentage from 0 to 100, not {value:?}"
                    ))
                }),
            ConfigKey::AlertsWebhook if value.is_empty() => Ok(Setting::AlertsWebhook(None)),
            ConfigKey::AlertsWebhook => {
                let url = url::Url::parse(value)
                    .map_err(|e| invalid(format!("alerts.webhook {value:?} is not a URL: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return Err(invalid(format!(
                        "alerts.webhook {value:?} must be an http:// or https:// URL with a host"
                    )));
                }
                Ok(Setting::AlertsWebhook(Some(url)))
            }
            ConfigKey::EventsSink | ConfigKey::AlertsSink => {
                let sink = if value.is_empty() {
                    None
                } else {
                    let sink = triggers::Sink::parse(value)
                        .map_err(|e| invalid(format!("{key}: {}", e.message)))?;
                    Some(sink)
                };
                Ok(if key == ConfigKey::EventsSink {
                    Setting::EventsSink(sink)
                } else {
                    Setting::AlertsSink(sink)
                })
            }
            ConfigKey::NodeWeight(node) => value
                .parse()
                .map(|weight| Setting::NodeWeight(node, weight))
                .map_err(|_| {
                    invalid(format!(
                        "a node weight is a whole number (0 takes the node out of rotation), \
                         not {value:?}"
                    ))
                }),
        }
    }

    pub fn key(&self) -> ConfigKey {
        match self {
            Setting::Retention(_) => ConfigKey::Retention,
            Setting::SchedulerStrategy(_) => ConfigKey::SchedulerStrategy,
            Setting::SchedulerCpuThreshold(_) => ConfigKey::SchedulerCpuThreshold,
            Setting::AlertsWebhook(_) => ConfigKey::AlertsWebhook,
            Setting::EventsSink(_) => ConfigKey::EventsSink,
            Setting::AlertsSink(_) => ConfigKey::AlertsSink,
            Setting::NodeWeight(node, _) => ConfigKey::NodeWeight(*node),
        }
    }
}

/// The config, typed: what every reader goes through. Unset keys are `None` (the reader's
/// default applies).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    pub retention: Option<Duration>,
    pub strategy: Option<Strategy>,
    pub cpu_threshold_percent: Option<f64>,
    pub webhook: Option<url::Url>,
    pub events_sink: Option<triggers::Sink>,
    pub alerts_sink: Option<triggers::Sink>,
    weights: BTreeMap<NodeId, u32>,
}

impl Settings {
    /// The weight set for `node`, if any.
    pub fn weight(&self, node: NodeId) -> Option<u32> {
        self.weights.get(&node).copied()
    }

    fn set(&mut self, setting: Setting) {
        match setting {
            Setting::Retention(d) => self.retention = Some(d),
            Setting::SchedulerStrategy(s) => self.strategy = Some(s),
            Setting::SchedulerCpuThreshold(p) => self.cpu_threshold_percent = Some(p),
            Setting::AlertsWebhook(url) => self.webhook = url,
            Setting::EventsSink(sink) => self.events_sink = sink,
            Setting::AlertsSink(sink) => self.alerts_sink = sink,
            Setting::NodeWeight(node, weight) => {
                self.weights.insert(node, weight);
            }
        }
    }

    fn unset(&mut self, key: ConfigKey) {
        match key {
            ConfigKey::Retention => self.retention = None,
            ConfigKey::SchedulerStrategy => self.strategy = None,
            ConfigKey::SchedulerCpuThreshold => self.cpu_threshold_percent = None,
            ConfigKey::AlertsWebhook => self.webhook = None,
            ConfigKey::EventsSink => self.events_sink = None,
            ConfigKey::AlertsSink => self.alerts_sink = None,
            ConfigKey::NodeWeight(node) => {
                self.weights.remove(&node);
            }
        }
    }
}

/// The cluster config in the replicated state: the raw strings as the log carried them (that
/// is also the snapshot format, a JSON object), and their typed reading, kept in step.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "BTreeMap<String, String>", into = "BTreeMap<String, String>")]
pub struct ClusterConfig {
    raw: BTreeMap<String, String>,
    settings: Settings,
}

impl ClusterConfig {
    /// The typed config.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Every key and value as set, for display.
    pub fn raw(&self) -> &BTreeMap<String, String> {
        &self.raw
    }

    /// Records a value as `SetConfig` carried it. Never fails: a key or value this version
    /// cannot read (an old log) is kept as it is and reads as unset.
    pub(crate) fn set(&mut self, key: String, value: String) {
        match Setting::parse(&key, &value) {
            Ok(setting) => self.settings.set(setting),
            Err(_) => {
                if let Ok(known) = ConfigKey::parse(&key) {
                    self.settings.unset(known);
                }
            }
        }
        self.raw.insert(key, value);
    }
}

impl From<BTreeMap<String, String>> for ClusterConfig {
    fn from(raw: BTreeMap<String, String>) -> ClusterConfig {
        let mut config = ClusterConfig::default();
        for (key, value) in raw {
            config.set(key, value);
        }
        config
    }
}

impl From<ClusterConfig> for BTreeMap<String, String> {
    fn from(config: ClusterConfig) -> BTreeMap<String, String> {
        config.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_unknown_ones_name_the_known() {
        for text in [
            "retention",
            "scheduler.strategy",
            "scheduler.cpu_threshold",
            "alerts.webhook",
            "node.7.weight",
        ] {
            assert_eq!(ConfigKey::parse(text).unwrap().to_string(), text);
        }
        for bad in [
            "",
            "retention.x",
            "node.x.weight",
            "node.07.weight",
            "node..weight",
        ] {
            let e = ConfigKey::parse(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidInput);
            assert!(e.message.contains("scheduler.cpu_threshold"), "{e}");
        }
    }

    #[test]
    fn values_are_checked_by_key() {
        assert_eq!(
            Setting::parse("retention", "12h").unwrap(),
            Setting::Retention(Duration::from_secs(12 * 3600))
        );
        assert_eq!(
            Setting::parse("node.3.weight", "0").unwrap(),
            Setting::NodeWeight(3, 0)
        );
        assert_eq!(
            Setting::parse("alerts.webhook", "").unwrap(),
            Setting::AlertsWebhook(None)
        );
        for (key, bad) in [
            ("retention", "soon"),
            ("retention", "10ms"),
            ("scheduler.strategy", "fastest"),
            ("scheduler.cpu_threshold", "101"),
            ("scheduler.cpu_threshold", "NaN"),
            ("alerts.webhook", "ftp://example.com"),
            ("node.3.weight", "-1"),
        ] {
            let e = Setting::parse(key, bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidInput, "{key}={bad}");
        }
    }

    #[test]
    fn raw_config_reads_typed_and_survives_unknown_keys() {
        let raw: BTreeMap<String, String> = [
            ("scheduler.strategy", "random"),
            ("node.2.weight", "5"),
            ("long.gone", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut config = ClusterConfig::from(raw.clone());
        assert_eq!(config.settings().strategy, Some(Strategy::Random));
        assert_eq!(config.settings().weight(2), Some(5));
        assert_eq!(BTreeMap::from(config.clone()), raw);
        // A value this version cannot read unsets the key rather than keeping a stale one.
        config.set("node.2.weight".into(), "heavy".into());
        assert_eq!(config.settings().weight(2), None);
    }
}

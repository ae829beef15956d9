//! Routing: which log topic, key and partition an MQTT publish goes to.
//!
//! The key decides the partition (CRC32C of the key modulo the partition
//! count, stable across restarts), so all readings with one key (typically
//! one device) land in one partition, in the order they were acknowledged.

use std::str::FromStr;

use bytes::Bytes;
use rumqttd::protocol::matches;

use super::config::MqttConfig;
use crate::log::{Log, Partition};

/// Where the record key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpec {
    /// The whole MQTT topic.
    Topic,
    ClientId,
    /// No key: everything in partition 0.
    None,
    /// One level of the MQTT topic, counted from 0 (`devices/ID/x`: 1).
    Segment(usize),
}

impl FromStr for KeySpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "topic" => Ok(KeySpec::Topic),
            "client_id" => Ok(KeySpec::ClientId),
            "none" => Ok(KeySpec::None),
            _ => s
                .strip_prefix("segment:")
                .and_then(|n| n.parse().ok())
                .map(KeySpec::Segment)
                .ok_or_else(|| {
                    format!("{s:?}: use topic, client_id, none or segment:N (N from 0)")
                }),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    filter: String,
    topic: String,
    key: KeySpec,
    partitions: u32,
}

/// Where one publish goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination<'a> {
    pub topic: &'a str,
    pub partition: Partition,
    pub key: Option<Bytes>,
}

#[derive(Debug, Clone)]
pub struct Router {
    rules: Vec<Rule>,
    fallback: Rule,
}

#[derive(Debug, thiserror::Error)]
#[error("mqtt route to {topic:?}: no such log topic (configure [topics.{topic}])")]
pub struct UnknownTopic {
    pub topic: String,
}

impl Router {
    /// Builds the routes against the open log, which knows each topic's
    /// partition count.
    pub fn new(config: &MqttConfig, log: &Log) -> Result<Router, UnknownTopic> {
        let rule = |filter: &str, topic: &str, key: KeySpec| {
            let partitions = log
                .topic(topic)
                .map(|t| t.config.partitions)
                .ok_or_else(|| UnknownTopic {
                    topic: topic.to_string(),
                })?;
            Ok(Rule {
                filter: filter.to_string(),
                topic: topic.to_string(),
                key,
                partitions,
            })
        };
        let mut rules = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            // Validated with the configuration; `Topic` is only a fallback.
            let key = r.key.parse().unwrap_or(KeySpec::Topic);
            rules.push(rule(&r.filter, &r.topic, key)?);
        }
        let fallback = rule("#", &config.default_topic, KeySpec::Topic)?;
        Ok(Router { rules, fallback })
    }

    pub fn route<'a>(&'a self, mqtt_topic: &str, client_id: &str) -> Destination<'a> {
        let rule = self
            .rules
            .iter()
            .find(|r| matches(mqtt_topic, &r.filter))
            .unwrap_or(&self.fallback);
        let key = match rule.key {
            KeySpec::Topic => Some(mqtt_topic),
            KeySpec::ClientId => Some(client_id),
            KeySpec::None => None,
            KeySpec::Segment(n) => Some(mqtt_topic.split('/').nth(n).unwrap_or(mqtt_topic)),
        };
        let partition = key.map_or(0, |k| crc32c::crc32c(k.as_bytes()) % rule.partitions);
        Destination {
            topic: &rule.topic,
            partition: Partition(partition),
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_specs_parse() {
        assert_eq!("segment:1".parse(), Ok(KeySpec::Segment(1)));
        assert_eq!("client_id".parse(), Ok(KeySpec::ClientId));
        assert!("segment:x".parse::<KeySpec>().is_err());
        assert!("device".parse::<KeySpec>().is_err());
    }

    fn router(partitions: u32) -> Router {
        let rule = |filter: &str, topic: &str, key| Rule {
            filter: filter.into(),
            topic: topic.into(),
            key,
            partitions,
        };
        Router {
            rules: vec![rule(
                "devices/+/telemetry",
                "telemetry",
                KeySpec::Segment(1),
            )],
            fallback: rule("#", "ingest", KeySpec::Topic),
        }
    }

    #[test]
    fn first_matching_route_picks_topic_and_key() {
        let r = router(4);
        let d = r.route("devices/d7/telemetry", "c");
        assert_eq!(d.topic, "telemetry");
        assert_eq!(d.key.as_deref(), Some(&b"d7"[..]));
        assert_eq!(d.partition, Partition(crc32c::crc32c(b"d7") % 4));
        let other = r.route("devices/d7/status", "c");
        assert_eq!(other.topic, "ingest");
        assert_eq!(other.key.as_deref(), Some(&b"devices/d7/status"[..]));
    }

    #[test]
    fn one_device_always_maps_to_one_partition() {
        let r = router(8);
        let a = r.route("devices/d1/telemetry", "x").partition;
        let b = r.route("devices/d1/telemetry", "y").partition;
        assert_eq!(a, b);
    }
}

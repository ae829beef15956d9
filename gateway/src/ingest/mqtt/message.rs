//! One MQTT application message as the broker keeps it: what a publish
//! carried (topic, payload, QoS, retain, the MQTT 5 message properties),
//! and how it is written into a log record's headers and read back from one.
//!
//! Record headers (all values UTF-8 text except `mqtt.correlation_data`):
//!
//! | header | value |
//! | --- | --- |
//! | `mqtt.topic` | the MQTT topic |
//! | `mqtt.client_id` | the publisher |
//! | `mqtt.qos` | `0`, `1` or `2` |
//! | `mqtt.retain` | `1` for a retained publish (absent otherwise) |
//! | `mqtt.packet_id` | QoS 1/2 packet id (recognises retransmissions after a crash) |
//! | `mqtt.payload_format` | MQTT 5 payload format indicator (`0` bytes, `1` UTF-8) |
//! | `mqtt.content_type` | MQTT 5 content type |
//! | `mqtt.response_topic` | MQTT 5 response topic |
//! | `mqtt.correlation_data` | MQTT 5 correlation data, raw bytes |
//! | `mqtt.message_expiry_s` | MQTT 5 message expiry interval, counted from the record's timestamp |
//! | `mqtt.user.NAME` | one per MQTT 5 user property |

use std::sync::Arc;

use bytes::Bytes;
use rumqttd::protocol::PublishProperties;

use crate::log::Record;

/// The MQTT 5 properties that travel with a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props {
    pub payload_format: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// Seconds after `received_ms` at which the message expires.
    pub expiry_s: Option<u32>,
    pub user: Vec<(String, String)>,
}

impl Props {
    pub fn from_publish(p: &PublishProperties) -> Props {
        Props {
            payload_format: p.payload_format_indicator,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            expiry_s: p.message_expiry_interval,
            user: p.user_properties.clone(),
        }
    }
}

/// A durably appended message, on its way to subscribers (live, retained,
/// or replayed for a returning session).
#[derive(Debug, Clone)]
pub struct Live {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub props: Props,
    /// When the gateway received it (the record's timestamp).
    pub received_ms: i64,
    /// The publishing connection (for MQTT 5 "no local"); 0 when read back
    /// from the log.
    pub origin: u64,
    /// Shared subscriptions it matched, and the member connection each
    /// picked (`shares.rs`); set as it goes to the live subscribers.
    pub shared_to: Vec<(Arc<str>, u64)>,
}

impl Live {
    /// Whether its message expiry interval has passed at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.remaining_expiry_s(now_ms) == Some(0)
    }

    /// What is left of the expiry interval, in whole seconds (0: expired).
    fn remaining_expiry_s(&self, now_ms: i64) -> Option<u32> {
        let expiry_s = self.props.expiry_s?;
        let elapsed_s = (now_ms - self.received_ms).max(0) / 1000;
        Some(u32::try_from((i64::from(expiry_s) - elapsed_s).max(0)).unwrap_or(0))
    }

    /// The properties to send with it at `now_ms` (expiry counted down), or
    /// `None` when there are none.
    pub fn publish_properties(&self, now_ms: i64, sub_ids: &[usize]) -> Option<PublishProperties> {
        let p = &self.props;
        let props = PublishProperties {
            payload_format_indicator: p.payload_format,
            message_expiry_interval: self.remaining_expiry_s(now_ms),
            topic_alias: None,
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user.clone(),
            subscription_identifiers: sub_ids.to_vec(),
            content_type: p.content_type.clone(),
        };
        (props != PublishProperties::default()).then_some(props)
    }

    /// The log record of the message, published by `client_id` with
    /// `packet_id` (0 for QoS 0), keyed by `key`.
    pub fn record(&self, client_id: &str, packet_id: u16, key: Option<Bytes>) -> Record {
        let text = |name: &str, value: String| (name.to_string(), Bytes::from(value));
        let mut headers = vec![
            ("mqtt.topic".to_string(), self.topic.clone()),
            text("mqtt.client_id", client_id.to_string()),
            text("mqtt.qos", self.qos.to_string()),
        ];
        if self.retain {
            headers.push(text("mqtt.retain", "1".into()));
        }
        if packet_id != 0 {
            headers.push(text("mqtt.packet_id", packet_id.to_string()));
        }
        let p = &self.props;
        if let Some(f) = p.payload_format {
            headers.push(text("mqtt.payload_format", f.to_string()));
        }
        if let Some(c) = &p.content_type {
            headers.push(text("mqtt.content_type", c.clone()));
        }
        if let Some(r) = &p.response_topic {
            headers.push(text("mqtt.response_topic", r.clone()));
        }
        if let Some(c) = &p.correlation_data {
            headers.push(("mqtt.correlation_data".to_string(), c.clone()));
        }
        if let Some(e) = p.expiry_s {
            headers.push(text("mqtt.message_expiry_s", e.to_string()));
        }
        for (name, value) in &p.user {
            headers.push(text(&format!("mqtt.user.{name}"), value.clone()));
        }
        Record {
            timestamp_ms: self.received_ms,
            key,
            value: self.payload.clone(),
            headers,
        }
    }

    /// The message a record written by [`Live::record`] holds; `None` for
    /// records that did not come from MQTT.
    pub fn from_record(record: &Record) -> Option<Live> {
        let mut live = Live {
            topic: Bytes::new(),
            payload: record.value.clone(),
            qos: 0,
            retain: false,
            props: Props::default(),
            received_ms: record.timestamp_ms,
            origin: 0,
            shared_to: Vec::new(),
        };
        let mut has_topic = false;
        for (name, value) in &record.headers {
            let text = || String::from_utf8_lossy(value).into_owned();
            let p = &mut live.props;
            match name.as_str() {
                "mqtt.topic" => {
                    live.topic = value.clone();
                    has_topic = true;
                }
                "mqtt.qos" => live.qos = text().parse().unwrap_or(0).min(2),
                "mqtt.retain" => live.retain = value.as_ref() == b"1",
                "mqtt.payload_format" => p.payload_format = text().parse().ok(),
                "mqtt.content_type" => p.content_type = Some(text()),
                "mqtt.response_topic" => p.response_topic = Some(text()),
                "mqtt.correlation_data" => p.correlation_data = Some(value.clone()),
                "mqtt.message_expiry_s" => p.expiry_s = text().parse().ok(),
                other => {
                    if let Some(user) = other.strip_prefix("mqtt.user.") {
                        p.user.push((user.to_string(), text()));
                    }
                }
            }
        }
        has_topic.then_some(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_the_round_trip_through_a_record() {
        let live = Live {
            topic: Bytes::from_static(b"a/b"),
            payload: Bytes::from_static(b"x"),
            qos: 2,
            retain: true,
            props: Props {
                payload_format: Some(1),
                content_type: Some("text/plain".into()),
                response_topic: Some("r/t".into()),
                correlation_data: Some(Bytes::from_static(&[0, 255])),
                expiry_s: Some(60),
                user: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            },
            received_ms: 1_000,
            origin: 0,
            shared_to: Vec::new(),
        };
        let record = live.record("c1", 7, None);
        assert!(record
            .headers
            .contains(&("mqtt.packet_id".into(), Bytes::from("7"))));
        let back = Live::from_record(&record).unwrap();
        assert_eq!(back.props, live.props);
        assert_eq!((back.topic, back.qos, back.retain), (live.topic, 2, true));
    }

    #[test]
    fn expiry_counts_down_and_ends() {
        let live = Live {
            topic: Bytes::from_static(b"t"),
            payload: Bytes::new(),
            qos: 0,
            retain: false,
            props: Props {
                expiry_s: Some(10),
                ..Props::default()
            },
            received_ms: 0,
            origin: 0,
            shared_to: Vec::new(),
        };
        let sent = live.publish_properties(4_500, &[]).unwrap();
        assert_eq!(sent.message_expiry_interval, Some(6));
        assert!(!live.expired(9_999));
        assert!(live.expired(10_000));
        assert!(Live::from_record(&Record::default()).is_none());
    }
}

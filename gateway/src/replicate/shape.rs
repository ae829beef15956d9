//! What an upstream record carries besides the log's key, value and
//! timestamp: its provenance (which gateway, local topic, partition and
//! offset it is), the ingest headers chosen to go upstream, and optionally a
//! JSON envelope around the value for sinks that drop headers.
//!
//! # Provenance, per mirror rule (`provenance`)
//!
//! - `full` (the default): four text headers, `tidewell.gateway_id`,
//!   `tidewell.topic`, `tidewell.partition`, `tidewell.offset` (decimal).
//! - `compact`: one header `tw` with a binary value, little more than the
//!   offset:
//!
//!   ```text
//!   flags: u8            bit 0: gateway id follows, bit 1: local topic follows
//!   partition: varint    local partition (LEB128, as Kafka's varints)
//!   offset: varint       local offset
//!   [gateway id: varint length, UTF-8 bytes]   when bit 0
//!   [local topic: varint length, UTF-8 bytes]  when bit 1
//!   ```
//!
//!   The gateway id is left out when the rule's remote topic template
//!   names `{gateway_id}`, and the local topic when it names `{topic}`:
//!   the remote topic then says them. With the default template
//!   (`{gateway_id}.{topic}`) the header is 2 + 1 + 1..4 + 1..10 bytes.
//!
//!   After compression nearly all of its cost is the offset: the one value
//!   that is new in every record (a literal byte, and the match it splits:
//!   about 2 B/record with zstd, 4 with lz4, in `tidewell bench wire`).
//!   Fixed-width or minimal big-endian offsets, decimal or hex text, the
//!   offset first, no flags or partition, and shorter header keys all
//!   measured the same or worse on the bench's records, so this layout
//!   stays. Every record carries its whole offset: a consumer must never
//!   have to infer one from its neighbours (a duplicate upstream would shift
//!   the inference and drop genuine records).
//! - `off`: no provenance at all. Nothing then tells this gateway's records
//!   apart upstream, so the tail read after a restart or a failed session
//!   finds nothing: records acknowledged after the last checkpoint (up to
//!   `checkpoint_interval_ms` of them) and records in flight when a session
//!   failed are sent again. Duplicates, never loss.
//!
//! A consumer deduplicates on (gateway id, local topic, local partition,
//! local offset): keep the highest offset processed per (gateway id, local
//! topic, local partition) and drop records at or below it. With `compact`
//! the implied parts come from the remote topic's name.
//!
//! # The envelope (`value_format = "json_envelope"`)
//!
//! The value becomes one JSON object: `gateway_id`, `topic`, `partition`,
//! `offset`, `timestamp_ms`, `key` (UTF-8 text, or `key_base64`), `headers`
//! (the chosen ingest headers, each value text or under `<name>_base64`),
//! and the payload as `value` (when it is JSON) or `value_text` (UTF-8) or
//! `value_base64`. It carries the provenance itself, so it survives sinks
//! that keep neither headers nor keys, and the tail read understands it.

use std::borrow::Cow;

use base64::Engine;
use rdkafka::message::{Header, OwnedHeaders};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::tail::{H_GATEWAY, H_OFFSET, H_PARTITION, H_TOPIC};
use crate::log::varint;
use crate::log::StoredRecord;

/// The compact provenance header's name.
pub const H_COMPACT: &str = "tw";
const HAS_GATEWAY: u8 = 1;
const HAS_TOPIC: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provenance {
    #[default]
    Full,
    Compact,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueFormat {
    #[default]
    Raw,
    JsonEnvelope,
}

/// Which ingest headers go upstream: `"all"`, `"none"`, or a list of
/// names, where a name ending in `*` matches by prefix (`"mqtt.user.*"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum HeaderChoice {
    Keyword(String),
    List(Vec<String>),
}

impl Default for HeaderChoice {
    fn default() -> Self {
        HeaderChoice::Keyword("all".into())
    }
}

impl HeaderChoice {
    pub fn validate(&self) -> Result<(), String> {
        match self {
            HeaderChoice::Keyword(k) if k == "all" || k == "none" => Ok(()),
            HeaderChoice::Keyword(k) => Err(format!(
                "{k:?}: use \"all\", \"none\" or a list of header names"
            )),
            HeaderChoice::List(names) if names.iter().any(|n| n.is_empty() || n == "*") => {
                Err("empty or bare \"*\" names (use \"all\")".into())
            }
            HeaderChoice::List(_) => Ok(()),
        }
    }

    fn keeps(&self, name: &str) -> bool {
        match self {
            HeaderChoice::Keyword(k) => k == "all",
            HeaderChoice::List(names) => names.iter().any(|n| match n.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => n == name,
            }),
        }
    }
}

/// One mirror rule's record shape, with what its remote topic implies.
#[derive(Debug, Clone)]
pub struct Shape {
    pub provenance: Provenance,
    pub value_format: ValueFormat,
    pub headers: HeaderChoice,
    /// The remote topic's name says the gateway id (`{gateway_id}`).
    pub implies_gateway: bool,
    /// The remote topic's name says the local topic (`{topic}`).
    pub implies_topic: bool,
    /// How long new live records wait to go out together (`linger_ms`).
    pub linger: Option<std::time::Duration>,
}

/// Where a record comes from: what provenance identifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin<'a> {
    pub gateway_id: &'a str,
    pub topic: &'a str,
    pub partition: u32,
    pub offset: u64,
}

impl Shape {
    /// The upstream headers: provenance, then the chosen ingest headers.
    pub fn headers(&self, origin: &Origin<'_>, stored: &StoredRecord) -> OwnedHeaders {
        let ingest: Vec<&(String, bytes::Bytes)> = self.ingest_headers(stored).collect();
        let mut out = OwnedHeaders::new_with_capacity(4 + ingest.len());
        match self.provenance {
            Provenance::Full => {
                let (partition, offset) = (origin.partition.to_string(), origin.offset.to_string());
                for (key, value) in [
                    (H_GATEWAY, origin.gateway_id),
                    (H_TOPIC, origin.topic),
                    (H_PARTITION, partition.as_str()),
                    (H_OFFSET, offset.as_str()),
                ] {
                    out = out.insert(Header {
                        key,
                        value: Some(value),
                    });
                }
            }
            Provenance::Compact => {
                let value = self.compact(origin);
                out = out.insert(Header {
                    key: H_COMPACT,
                    value: Some(&value),
                });
            }
            Provenance::Off => {}
        }
        for (name, value) in ingest {
            out = out.insert(Header {
                key: name,
                value: Some(value.as_ref()),
            });
        }
        out
    }

    fn ingest_headers<'r>(
        &'r self,
        stored: &'r StoredRecord,
    ) -> impl Iterator<Item = &'r (String, bytes::Bytes)> + 'r {
        stored
            .record
            .headers
            .iter()
            .filter(|(name, _)| self.headers.keeps(name))
    }

    /// The compact provenance value (layout in the module comment).
    pub fn compact(&self, origin: &Origin<'_>) -> Vec<u8> {
        let mut flags = 0;
        let mut out = vec![0u8];
        varint::put_u64(&mut out, u64::from(origin.partition));
        varint::put_u64(&mut out, origin.offset);
        for (implied, flag, text) in [
            (self.implies_gateway, HAS_GATEWAY, origin.gateway_id),
            (self.implies_topic, HAS_TOPIC, origin.topic),
        ] {
            if !implied {
                flags |= flag;
                varint::put_u64(&mut out, text.len() as u64);
                out.extend_from_slice(text.as_bytes());
            }
        }
        out[0] = flags;
        out
    }

    /// The upstream value: the payload, or its envelope.
    pub fn value<'r>(&self, origin: &Origin<'_>, stored: &'r StoredRecord) -> Cow<'r, [u8]> {
        match self.value_format {
            ValueFormat::Raw => Cow::Borrowed(stored.record.value.as_ref()),
            ValueFormat::JsonEnvelope => Cow::Owned(self.envelope(origin, stored)),
        }
    }

    fn envelope(&self, origin: &Origin<'_>, stored: &StoredRecord) -> Vec<u8> {
        let r = &stored.record;
        let mut e = json!({
            "gateway_id": origin.gateway_id,
            "topic": origin.topic,
            "partition": origin.partition,
            "offset": origin.offset,
            "timestamp_ms": r.timestamp_ms,
        });
        if let Some(key) = &r.key {
            put_bytes(&mut e, "key", key);
        }
        let mut headers = Value::Object(Map::new());
        for (name, value) in self.ingest_headers(stored) {
            put_bytes(&mut headers, name, value);
        }
        e["headers"] = headers;
        match serde_json::from_slice::<Value>(&r.value) {
            Ok(v) => e["value"] = v,
            Err(_) => match std::str::from_utf8(&r.value) {
                Ok(text) => e["value_text"] = json!(text),
                Err(_) => e["value_base64"] = json!(b64(&r.value)),
            },
        }
        serde_json::to_vec(&e).unwrap_or_default()
    }

    /// Bytes of provenance and ingest headers as they go upstream (names
    /// and values), for the in-flight window and the bandwidth estimate.
    pub fn header_bytes(&self, origin: &Origin<'_>, stored: &StoredRecord) -> usize {
        let ingest: usize = self
            .ingest_headers(stored)
            .map(|(n, v)| n.len() + v.len())
            .sum();
        let provenance = match self.provenance {
            Provenance::Full => {
                H_GATEWAY.len()
                    + origin.gateway_id.len()
                    + H_TOPIC.len()
                    + origin.topic.len()
                    + H_PARTITION.len()
                    + decimal_len(u64::from(origin.partition))
                    + H_OFFSET.len()
                    + decimal_len(origin.offset)
            }
            Provenance::Compact => H_COMPACT.len() + self.compact(origin).len(),
            Provenance::Off => 0,
        };
        ingest + provenance
    }
}

/// UTF-8 text under `name`, anything else base64 under `name_base64`.
fn put_bytes(target: &mut Value, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => target[name] = json!(text),
        Err(_) => target[format!("{name}_base64")] = json!(b64(bytes)),
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// A compact provenance value, decoded; the implied parts are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compact {
    pub partition: u32,
    pub offset: u64,
    pub gateway_id: Option<String>,
    pub topic: Option<String>,
}

/// Decodes a compact provenance value; `None` when it is not one.
pub fn decode_compact(bytes: &[u8]) -> Option<Compact> {
    let (&flags, _) = bytes.split_first()?;
    if flags & !(HAS_GATEWAY | HAS_TOPIC) != 0 {
        return None;
    }
    let mut pos = 1;
    let partition = u32::try_from(varint::get_u64(bytes, &mut pos)?).ok()?;
    let offset = varint::get_u64(bytes, &mut pos)?;
    let mut text = |present: bool| -> Option<Option<String>> {
        if !present {
            return Some(None);
        }
        let len = usize::try_from(varint::get_u64(bytes, &mut pos)?).ok()?;
        let end = pos.checked_add(len)?;
        let s = std::str::from_utf8(bytes.get(pos..end)?).ok()?.to_string();
        pos = end;
        Some(Some(s))
    };
    let gateway_id = text(flags & HAS_GATEWAY != 0)?;
    let topic = text(flags & HAS_TOPIC != 0)?;
    (pos == bytes.len()).then_some(Compact {
        partition,
        offset,
        gateway_id,
        topic,
    })
}

/// The provenance an envelope carries, when `value` is one.
pub fn envelope_origin(value: &[u8]) -> Option<(String, String, u32, u64)> {
    #[derive(Deserialize)]
    struct Envelope {
        gateway_id: String,
        topic: String,
        partition: u32,
        offset: u64,
    }
    let e: Envelope = serde_json::from_slice(value).ok()?;
    Some((e.gateway_id, e.topic, e.partition, e.offset))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::log::{Offset, Record};

    fn shape(provenance: Provenance, implies: bool) -> Shape {
        Shape {
            provenance,
            value_format: ValueFormat::Raw,
            headers: HeaderChoice::default(),
            implies_gateway: implies,
            implies_topic: implies,
            linger: None,
        }
    }

    fn stored(value: &[u8], headers: &[(&str, &[u8])]) -> StoredRecord {
        StoredRecord {
            offset: Offset(7),
            record: Record {
                timestamp_ms: 1_700_000_000_000,
                key: Some(Bytes::from_static(b"dev-1")),
                value: Bytes::copy_from_slice(value),
                headers: headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), Bytes::copy_from_slice(v)))
                    .collect(),
            },
        }
    }

    proptest! {
        #[test]
        fn compact_provenance_round_trips(
            partition in any::<u32>(),
            offset in any::<u64>(),
            gateway in "[a-z0-9.-]{1,40}",
            topic in "[a-z0-9._-]{1,40}",
            implies_gateway in any::<bool>(),
            implies_topic in any::<bool>(),
        ) {
            let mut s = shape(Provenance::Compact, false);
            s.implies_gateway = implies_gateway;
            s.implies_topic = implies_topic;
            let origin = Origin { gateway_id: &gateway, topic: &topic, partition, offset };
            let decoded = decode_compact(&s.compact(&origin)).unwrap();
            prop_assert_eq!(decoded.partition, partition);
            prop_assert_eq!(decoded.offset, offset);
            prop_assert_eq!(decoded.gateway_id, (!implies_gateway).then(|| gateway.clone()));
            prop_assert_eq!(decoded.topic, (!implies_topic).then(|| topic.clone()));
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_compact(&bytes);
        }
    }

    #[test]
    fn decimal_len_counts_the_digits_of_the_offset_header() {
        for n in [0u64, 9, 10, 99, 100, 12_345, u64::MAX] {
            assert_eq!(decimal_len(n), n.to_string().len(), "{n}");
        }
    }

    #[test]
    fn compact_provenance_with_the_default_template_is_a_few_bytes() {
        let origin = Origin {
            gateway_id: "f3a9c0d2e4b6a8c0d2e4f6a8b0c2d4e6",
            topic: "ingest",
            partition: 0,
            offset: 123_456,
        };
        let value = shape(Provenance::Compact, true).compact(&origin);
        assert_eq!(value.len(), 5, "flags, partition, a 3-byte offset");
        let full = shape(Provenance::Full, true).header_bytes(&origin, &stored(b"", &[]));
        assert!(full > 80, "{full}");
    }

    #[test]
    fn headers_follow_the_choice_and_prefixes_match() {
        let rec = stored(
            b"21.5",
            &[
                ("mqtt.topic", b"a/b"),
                ("mqtt.user.site", b"x"),
                ("mqtt.qos", b"1"),
            ],
        );
        let mut s = shape(Provenance::Off, true);
        s.headers = HeaderChoice::List(vec!["mqtt.user.*".into(), "mqtt.qos".into()]);
        let names: Vec<&str> = s.ingest_headers(&rec).map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["mqtt.user.site", "mqtt.qos"]);
        s.headers = HeaderChoice::Keyword("none".into());
        assert_eq!(s.ingest_headers(&rec).count(), 0);
        assert!(HeaderChoice::Keyword("some".into()).validate().is_err());
    }

    #[test]
    fn the_envelope_carries_provenance_key_headers_and_the_payload() {
        let mut s = shape(Provenance::Off, true);
        s.value_format = ValueFormat::JsonEnvelope;
        let origin = Origin {
            gateway_id: "gw",
            topic: "ingest",
            partition: 1,
            offset: 7,
        };
        let json_value = stored(br#"{"t":21.5}"#, &[("mqtt.topic", b"a/b")]);
        let e: Value = serde_json::from_slice(&s.value(&origin, &json_value)).unwrap();
        assert_eq!(e["value"]["t"], 21.5);
        assert_eq!(e["key"], "dev-1");
        assert_eq!(e["headers"]["mqtt.topic"], "a/b");
        assert_eq!(
            envelope_origin(&s.value(&origin, &json_value)),
            Some(("gw".into(), "ingest".into(), 1, 7))
        );
        let binary = stored(&[0xff, 0x00], &[]);
        let e: Value = serde_json::from_slice(&s.value(&origin, &binary)).unwrap();
        assert_eq!(e["value_base64"], "/wA=");
        let text = stored(b"not json", &[]);
        let e: Value = serde_json::from_slice(&s.value(&origin, &text)).unwrap();
        assert_eq!(e["value_text"], "not json");
    }
}

//! What arrived upstream, read by two independent clients (rdkafka from
//! Rust, and the confluent-kafka Python package), and the replicator's own
//! account of it (`replicate.status.json`). Only the replication and fault
//! tests include it (`#[path = "harness/kafka.rs"] mod kafka;`): it is the
//! harness's only use of rdkafka.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::Gateway;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// One record as read back from the broker.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Upstream {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Upstream {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// (local topic, local partition, local offset) from the provenance:
    /// the `tidewell.*` headers, or the compact `tw` header (decoded here
    /// independently; a topic its remote topic implies is `"(implied)"`).
    pub fn origin(&self) -> (String, u32, u64) {
        if let Some(topic) = self.header("tidewell.topic") {
            return (
                topic.to_string(),
                self.header("tidewell.partition").unwrap().parse().unwrap(),
                self.header("tidewell.offset").unwrap().parse().unwrap(),
            );
        }
        let (_, tw) = self
            .headers
            .iter()
            .find(|(n, _)| n == "tw")
            .expect("a provenance header");
        decode_tw(tw)
    }
}

/// The compact provenance value: flags, varint partition, varint offset,
/// then the length-prefixed gateway id (flag 1) and local topic (flag 2).
fn decode_tw(v: &[u8]) -> (String, u32, u64) {
    fn varint(v: &[u8], pos: &mut usize) -> u64 {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = v[*pos];
            *pos += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
        }
        value
    }
    let mut pos = 1;
    let partition = varint(v, &mut pos) as u32;
    let offset = varint(v, &mut pos);
    let mut texts = Vec::new();
    for flag in [1u8, 2] {
        if v[0] & flag != 0 {
            let len = varint(v, &mut pos) as usize;
            texts.push(String::from_utf8(v[pos..pos + len].to_vec()).unwrap());
            pos += len;
        } else {
            texts.push("(implied)".to_string());
        }
    }
    assert_eq!(pos, v.len(), "the whole tw header is used");
    (texts.pop().unwrap(), partition, offset)
}

/// How many records `topic`'s partition holds (high minus low watermark).
pub fn record_count(bootstrap: &str, topic: &str, partition: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let (low, high) = (0..6)
        .find_map(|_| {
            consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .ok()
        })
        .unwrap_or_else(|| panic!("no watermarks for {topic}/{partition} within 60 s"));
    high - low
}

/// Every record of `topic` (all `partitions`), with rdkafka.
pub fn consume_all(bootstrap: &str, topic: &str, partitions: i32) -> Vec<Upstream> {
    consume_all_with(bootstrap, topic, partitions, &[])
}

/// As [`consume_all`], with extra client settings (security).
pub fn consume_all_with(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    settings: &[(&str, &str)],
) -> Vec<Upstream> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "replicate-test")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let consumer: BaseConsumer = config.create().unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut open = std::collections::BTreeSet::new();
    for p in 0..partitions {
        // A busy broker can miss one metadata deadline: retry a few.
        let (low, high) = (0..6)
            .find_map(|_| {
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .ok()
            })
            .unwrap_or_else(|| panic!("no watermarks for {topic}/{p} within 60 s"));
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
            open.insert(p);
        }
    }
    let mut out = Vec::new();
    if open.is_empty() {
        return out;
    }
    consumer.assign(&tpl).unwrap();
    // An idle deadline: a long read that keeps moving is not cut short.
    const IDLE: Duration = Duration::from_secs(120);
    let mut deadline = Instant::now() + IDLE;
    while !open.is_empty() {
        assert!(
            Instant::now() < deadline,
            "consuming {topic}: nothing for {IDLE:?} ({} records read)",
            out.len()
        );
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            // librdkafka reconnects by itself: a dropped connection is news,
            // not the end of the read.
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure,
            ))) => {}
            Some(Err(e)) => panic!("consume {topic}: {e}"),
            Some(Ok(m)) => {
                deadline = Instant::now() + IDLE;
                out.push(Upstream {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
        }
    }
    out
}

const PY_CONSUMER: &str = r#"
import json, sys, time
from confluent_kafka import Consumer, TopicPartition, KafkaError
bootstrap, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Consumer({'bootstrap.servers': bootstrap, 'group.id': 'replicate-test-py',
              'enable.auto.commit': False, 'enable.partition.eof': True})
parts = []
def watermarks(p):
    for attempt in range(6):
        try:
            return c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        except Exception as e:  # a busy broker can miss one deadline
            err = e
    sys.exit('no watermarks for %s/%d: %s' % (topic, p, err))
for p in range(partitions):
    lo, hi = watermarks(p)
    if hi > lo:
        parts.append(TopicPartition(topic, p, lo))
c.assign(parts)
open_parts = {tp.partition for tp in parts}
count = 0
deadline = time.time() + 120
while open_parts:
    m = c.poll(1)
    if m is None:
        if time.time() > deadline:
            sys.exit('nothing for 120 s after %d records, open partitions %s' % (count, open_parts))
        continue
    count += 1
    deadline = time.time() + 120
    if m.error():
        if m.error().code() == KafkaError._PARTITION_EOF:
            open_parts.discard(m.partition())
            continue
        sys.exit(str(m.error()))
    h = {k: (v or b'').decode('utf-8', 'replace') for k, v in (m.headers() or [])}
    print(json.dumps({'partition': m.partition(), 'offset': m.offset(),
                      'key': (m.key() or b'').decode('utf-8', 'replace'),
                      'value': m.value().decode('utf-8', 'replace'), 'headers': h}))
"#;

/// Every record of `topic` as JSON values, read by confluent-kafka (Python),
/// sorted by (partition, offset): the consumer interleaves partitions in
/// whatever order its fetches return.
pub fn consume_all_python(
    dir: &Path,
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Vec<serde_json::Value> {
    let script = dir.join("consume.py");
    std::fs::write(&script, PY_CONSUMER).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .args([bootstrap, topic, &partitions.to_string()])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "confluent-kafka consumer failed (pip install confluent-kafka): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut records: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    records.sort_by_key(|r| (r["partition"].as_i64(), r["offset"].as_i64()));
    records
}

/// The running gateway's replication status (the `upstream` section of
/// `/status`), once the replicator published one.
pub fn status(gateway: &Gateway) -> Option<serde_json::Value> {
    let body = gateway.get("/status").ok()?;
    let all: serde_json::Value = serde_json::from_str(&body).ok()?;
    let upstream = all.get("upstream")?;
    upstream.get("partitions")?;
    Some(upstream.clone())
}

/// Whether every partition in the status is replicated up to its log end
/// and the log holds at least `min_records` in total.
pub fn drained(gateway: &Gateway, min_records: u64) -> bool {
    let Some(s) = status(gateway) else {
        return false;
    };
    let parts = s["partitions"].as_array().cloned().unwrap_or_default();
    let end: u64 = parts
        .iter()
        .map(|p| p["log_end"].as_u64().unwrap_or(0))
        .sum();
    end >= min_records
        && parts
            .iter()
            .all(|p| p["replicated"].as_u64() == p["log_end"].as_u64())
}

/// Per key, the sequence numbers in upstream order; and the number of
/// records whose (local topic, partition, offset) was seen before.
pub fn by_key(records: &[Upstream]) -> (BTreeMap<String, Vec<usize>>, usize) {
    let mut keys: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut duplicates = 0;
    let mut sorted = records.to_vec();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    for r in &sorted {
        if !seen.insert(r.origin()) {
            duplicates += 1;
            continue; // keys list first occurrences; duplicates are counted
        }
        let value = String::from_utf8_lossy(&r.value).to_string();
        let (device, seq) = value.split_once(':').unwrap();
        keys.entry(device.to_string())
            .or_default()
            .push(seq.parse().unwrap());
    }
    (keys, duplicates)
}

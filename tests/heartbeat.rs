//! The heartbeat reaches Kafka: a gateway with `[heartbeat]` every second
//! and no mirror rules (every local topic mirrored) replicates its
//! heartbeat records to a real broker (tansu), where they are read back
//! with rdkafka: in sequence, one per interval, each describing the
//! gateway (version, clock, disk, per-partition backlog, errors).

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;
#[path = "harness/kafka.rs"]
mod kafka;

use std::time::Duration;

use harness::mqtt::publish;
use harness::tansu::Broker;
use harness::{wait_for, Gateway, Launch};
use kafka::consume_all;

fn config(dir: &std::path::Path, broker: &Broker) -> String {
    format!(
        r#"{}
gateway_id = "gw-hb"

[topics.ingest]
fsync = "never"
[topics.heartbeat]
retention_bytes = 1048576

[mqtt]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"

[heartbeat]
enabled = true
interval_s = 1

[upstream]
bootstrap_servers = "{}"
checkpoint_interval_ms = 200
"#,
        harness::data_dir_line(dir),
        broker.bootstrap()
    )
}

#[test]
fn heartbeats_reach_the_upstream_topic_in_sequence_and_describe_the_gateway() {
    let dir = harness::temp_dir();
    let broker_dir = dir.path().join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let broker = Broker::start(&broker_dir);
    broker.create_topic("gw-hb.ingest", 1);
    broker.create_topic("gw-hb.heartbeat", 1);
    let gw = Launch::config(dir.path(), &config(dir.path(), &broker)).start();
    publish(gw.port(), "d0", 0..50);
    let bootstrap = broker.bootstrap();
    let mut beats = Vec::new();
    // Published (and acknowledged) before: a heartbeat made after sees them.
    let sees_all = |v: &serde_json::Value| {
        v["partitions"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["topic"] == "ingest" && p["end_offset"] == 50)
        })
    };
    wait_for(
        "three heartbeats upstream, the last after the publishes",
        Duration::from_secs(60),
        || {
            beats = consume_all(&bootstrap, "gw-hb.heartbeat", 1);
            beats.len() >= 3
                && beats
                    .last()
                    .and_then(|r| serde_json::from_slice(&r.value).ok())
                    .is_some_and(|v| sees_all(&v))
        },
    );
    let values: Vec<serde_json::Value> = beats
        .iter()
        .map(|r| serde_json::from_slice(&r.value).unwrap())
        .collect();
    for (i, (record, beat)) in beats.iter().zip(&values).enumerate() {
        assert_eq!(record.key.as_deref(), Some(&b"gw-hb"[..]));
        assert_eq!(beat["seq"], i as u64, "{beat}");
        assert_eq!(beat["gateway_id"], "gw-hb");
        assert_eq!(beat["version"], env!("CARGO_PKG_VERSION"));
        assert!(
            beat["clock"] == "synced" || beat["clock"] == "unsynced",
            "{beat}"
        );
        assert!(beat["disk_free_bytes"].as_u64().unwrap() > 0, "{beat}");
        assert!(beat["last_errors"].is_object(), "{beat}");
    }
    // One per interval: the third came at least ~2 s after the first.
    let at = |i: usize| values[i]["time_ms"].as_i64().unwrap();
    assert!(at(2) - at(0) >= 1_900, "{} ms apart", at(2) - at(0));
    let last = values.last().unwrap();
    let ingest = last["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["topic"] == "ingest")
        .unwrap_or_else(|| panic!("no ingest partition in {last}"));
    assert_eq!(ingest["end_offset"], 50, "{last}");
    assert_eq!(ingest["dropped_since"], 0, "{last}");
    assert!(last["upstream"].is_object(), "{last}");
    let status = gw.status();
    assert!(
        status["heartbeat"]["sent"].as_u64().unwrap() >= 3,
        "{status}"
    );
    gw.stop();
}

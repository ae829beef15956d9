//! The replicator's part of `/metrics` and `/status` (and so of
//! `tidewell status`): per partition how far replication is, and the uplink.

use std::sync::{Arc, Mutex, PoisonError};

use serde_json::json;

use super::status::{Status, UpstreamState};
use crate::observe::MetricsWriter as Writer;

/// Reads the replicator's latest status (refreshed at most once a second, after a change).
pub struct Observer {
    pub(super) status: Arc<Mutex<Option<Status>>>,
}

impl Observer {
    fn latest(&self) -> Option<Status> {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl crate::observe::Section for Observer {
    fn name(&self) -> &'static str {
        "upstream"
    }

    fn metrics(&self, w: &mut Writer) {
        let Some(s) = self.latest() else {
            return;
        };
        let u = &s.upstream;
        let connected = matches!(u.state, UpstreamState::Connected);
        w.gauge(
            "tidewell_upstream_connected",
            "1 while the upstream session is up and the brokers answer.",
            f64::from(u8::from(connected)),
        );
        let since = (crate::log::now_ms() - u.since_ms).max(0) as f64 / 1000.0;
        w.gauge(
            "tidewell_upstream_state_seconds",
            "Seconds in the current upstream state (connected, disconnected, backing_off, ...).",
            since,
        );
        w.counter(
            "tidewell_upstream_sessions_total",
            "Upstream producer sessions started.",
            u.sessions,
        );
        w.counter(
            "tidewell_upstream_session_failures_total",
            "Upstream sessions that failed or could not start (each followed by a backoff).",
            u.session_failures,
        );
        w.counter(
            "tidewell_upstream_authorization_errors_total",
            "Authorization or authentication failures upstream.",
            u.authorization_errors,
        );
        w.counter(
            "tidewell_upstream_missing_topic_errors_total",
            "Remote topics missing or with too few partitions.",
            u.missing_topic_errors,
        );
        w.counter(
            "tidewell_upstream_wire_bytes_total",
            "Bytes sent to the brokers as the kernel counted them: compressed, framed, TLS and every request included (what a metered link bills, without TCP/IP headers).",
            u.wire_bytes_sent,
        );
        w.counter(
            "tidewell_upstream_disconnects_total",
            "Times the brokers became unreachable during a session.",
            u.disconnects,
        );
        let labels: Vec<[(&str, String); 2]> = s
            .partitions
            .iter()
            .map(|p| {
                [
                    ("topic", p.topic.clone()),
                    ("partition", p.partition.to_string()),
                ]
            })
            .collect();
        let owned: Vec<Vec<(&str, &str)>> = labels
            .iter()
            .map(|l| l.iter().map(|(k, v)| (*k, v.as_str())).collect())
            .collect();
        for (name, kind, help, value) in PARTITION_FAMILIES {
            let samples: Vec<(&[(&str, &str)], f64)> = owned
                .iter()
                .zip(&s.partitions)
                .map(|(l, p)| (l.as_slice(), value(p) as f64))
                .collect();
            w.family(name, kind, help, &samples);
        }
    }

    fn status(&self) -> serde_json::Value {
        let Some(s) = self.latest() else {
            return json!({ "state": "starting" });
        };
        let mut value = serde_json::to_value(&s.upstream).unwrap_or_default();
        value["gateway_id"] = json!(s.gateway_id);
        value["bootstrap_servers"] = json!(s.bootstrap_servers);
        value["partitions"] = serde_json::to_value(&s.partitions).unwrap_or_default();
        value
    }
}

/// The per-partition families: name, kind, help, and the value of one
/// partition's status.
type PartitionValue = fn(&super::status::PartitionStatus) -> u64;
const PARTITION_FAMILIES: [(&str, &str, &str, PartitionValue); 9] = [
    (
        "tidewell_upstream_backlog_records",
        "gauge",
        "Records not yet acknowledged upstream.",
        |p| p.backlog_records,
    ),
    (
        "tidewell_upstream_backlog_bytes",
        "gauge",
        "Bytes on disk not yet acknowledged upstream (estimate).",
        |p| p.backlog_bytes,
    ),
    (
        "tidewell_upstream_in_flight_records",
        "gauge",
        "Records sent and awaiting acknowledgement.",
        |p| p.in_flight_records,
    ),
    (
        "tidewell_upstream_sent_records_total",
        "counter",
        "Records handed to the producer (this process).",
        |p| p.counters.sent_records,
    ),
    (
        "tidewell_upstream_acked_records_total",
        "counter",
        "Records acknowledged upstream (this process).",
        |p| p.counters.acked_records,
    ),
    (
        "tidewell_upstream_skipped_records_total",
        "counter",
        "Records not sent because they were found upstream already (restart dedupe).",
        |p| p.counters.skipped_upstream,
    ),
    (
        "tidewell_upstream_gap_records_total",
        "counter",
        "Records dropped locally (quota) before replication, met by the replicator.",
        |p| p.counters.gap_records,
    ),
    (
        "tidewell_upstream_corrupt_records_total",
        "counter",
        "Records skipped because the local log is damaged.",
        |p| p.counters.corrupt_records,
    ),
    (
        "tidewell_upstream_delivery_errors_total",
        "counter",
        "Records whose delivery failed (the session is rebuilt, nothing is skipped).",
        |p| p.counters.delivery_errors,
    ),
];

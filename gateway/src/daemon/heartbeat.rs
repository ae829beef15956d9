//! The heartbeat: every `interval_s`, one JSON record describing this
//! gateway appended to a local topic of its own, which replication mirrors
//! upstream like any other (`{gateway_id}.{topic}` by default), so a fleet
//! can be watched from Kafka without reaching any gateway.
//!
//! The record (key: the gateway id; value: JSON):
//!
//! ```json
//! {"gateway_id": "gw17", "version": "0.1.0", "seq": 42, "time_ms": 1764...,
//!  "uptime_s": 2520, "clock": "synced" | "unsynced", "disk_free_bytes": 812345344,
//!  "log_poisoned": null,
//!  "partitions": [{"topic": "ingest", "partition": 0, "end_offset": 1500,
//!                  "backlog_records": 20, "backlog_bytes": 2600,
//!                  "dropped_since": 0, "gaps_since": [[from, to], ...]}],
//!  "upstream": {"state": "up", ...},
//!  "last_errors": {"bridge.site": "connection refused", ...}}
//! ```
//!
//! `seq` counts heartbeats since the start (a restart begins again at 0,
//! `uptime_s` tells one from the other); `dropped_since` and `gaps_since`
//! are the records dropped by `drop_oldest` and the offset ranges they
//! left, since the previous heartbeat of this process; `last_errors` has every
//! `last_error` that `/status` shows, by its section path. A heartbeat is
//! appended like any record: if the log refuses it (full under
//! `reject_new`, poisoned) it is skipped and counted, never retried.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::ingest::Shutdown;
use crate::log::clock::{Clock, ClockTrust, SystemClock};
use crate::log::{Log, Partition, Record, Storage};
use crate::observe::{MetricsWriter, Registry, Section};

/// `[heartbeat]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    pub enabled: bool,
    /// Seconds between heartbeats.
    pub interval_s: u64,
    /// The local topic they go to (a configured `[topics.NAME]`, partition 0).
    pub topic: String,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            enabled: false,
            interval_s: 60,
            topic: "heartbeat".into(),
        }
    }
}

impl HeartbeatConfig {
    pub fn validate(&self, topics: &[&str]) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !self.enabled {
            return problems;
        }
        if self.interval_s == 0 || self.interval_s > 86_400 {
            problems.push((
                "heartbeat.interval_s".into(),
                "must be between 1 and 86400".into(),
            ));
        }
        if !topics.contains(&self.topic.as_str()) {
            problems.push((
                "heartbeat.topic".into(),
                format!(
                    "no such topic {:?} (configure [topics.{}], e.g. with a small retention_bytes)",
                    self.topic, self.topic
                ),
            ));
        }
        problems
    }
}

/// What the heartbeat task needs.
pub struct Heartbeat {
    pub config: HeartbeatConfig,
    pub gateway_id: String,
    pub clock: ClockTrust,
    pub data_dir: PathBuf,
    pub storage: Arc<dyn Storage>,
    pub log: Arc<Log>,
}

/// Counts for `/metrics` and `/status`.
#[derive(Default)]
pub struct HeartbeatStats {
    sent: AtomicU64,
    refused: AtomicU64,
}

impl Section for HeartbeatStats {
    fn name(&self) -> &'static str {
        "heartbeat"
    }

    fn metrics(&self, w: &mut MetricsWriter) {
        w.counter(
            "tidewell_heartbeats_total",
            "Heartbeat records durably appended.",
            self.sent.load(Ordering::Relaxed),
        );
        w.counter(
            "tidewell_heartbeats_refused_total",
            "Heartbeat records the log refused (skipped).",
            self.refused.load(Ordering::Relaxed),
        );
    }

    fn status(&self) -> Value {
        json!({
            "sent": self.sent.load(Ordering::Relaxed),
            "refused": self.refused.load(Ordering::Relaxed),
        })
    }
}

/// Per partition, at the previous heartbeat: records dropped, and the end
/// of the newest gap.
type Seen = BTreeMap<(String, u64), (u64, u64)>;

/// Appends a heartbeat every `interval_s` (the first one at once) until
/// the gateway stops.
pub async fn run(
    hb: Heartbeat,
    registry: Arc<Registry>,
    stats: Arc<HeartbeatStats>,
    mut shutdown: Shutdown,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(hb.config.interval_s));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = Seen::new();
    for seq in 0u64.. {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.requested() => return,
        }
        let status = registry.render_status();
        let record = hb.record(seq, &status, &mut seen);
        let appended = match hb.log.append(&hb.config.topic, Partition(0), vec![record]) {
            Ok(ticket) => ticket.await.map(|_| ()),
            Err(e) => Err(e),
        };
        match appended {
            Ok(()) => stats.sent.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(topic = hb.config.topic, "heartbeat not appended: {e}");
                stats.refused.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

impl Heartbeat {
    fn record(&self, seq: u64, status: &Value, seen: &mut Seen) -> Record {
        let now = crate::log::now_ms();
        let trusted = SystemClock(self.clock).trusted();
        let value = json!({
            "gateway_id": self.gateway_id,
            "version": status["version"],
            "seq": seq,
            "time_ms": now,
            "uptime_s": status["uptime_s"],
            "clock": if trusted { "synced" } else { "unsynced" },
            "disk_free_bytes": self.storage.available_bytes(&self.data_dir).ok(),
            "log_poisoned": status["log"]["poisoned"],
            "partitions": partitions(status, seen),
            "upstream": status.get("upstream").cloned().unwrap_or(Value::Null),
            "last_errors": last_errors(status),
        });
        Record {
            timestamp_ms: now,
            key: Some(Bytes::from(self.gateway_id.clone())),
            value: Bytes::from(value.to_string()),
            headers: Vec::new(),
        }
    }
}

/// Each partition of `/status`'s log section, with drops and gaps since
/// the previous heartbeat.
fn partitions(status: &Value, seen: &mut Seen) -> Vec<Value> {
    let mut out = Vec::new();
    for topic in status["log"]["topics"].as_array().into_iter().flatten() {
        let name = topic["name"].as_str().unwrap_or_default();
        for p in topic["partitions"].as_array().into_iter().flatten() {
            let n = p["partition"].as_u64().unwrap_or(0);
            let dropped = p["dropped_records"].as_u64().unwrap_or(0);
            let (d0, end0) = seen.get(&(name.to_string(), n)).copied().unwrap_or((0, 0));
            let new_gaps: Vec<Value> = gaps(&p["gaps"])
                .filter(|&(_, to)| to > end0)
                .map(|(from, to)| json!([from, to]))
                .collect();
            let end = gaps(&p["gaps"]).map(|(_, to)| to).max().unwrap_or(end0);
            seen.insert((name.to_string(), n), (dropped, end.max(end0)));
            out.push(json!({
                "topic": name,
                "partition": n,
                "end_offset": p["end_offset"],
                "backlog_records": p["backlog_records"],
                "backlog_bytes": p["backlog_bytes"],
                "dropped_since": dropped.saturating_sub(d0),
                "gaps_since": new_gaps,
            }));
        }
    }
    out
}

/// The `[from, to]` ranges of a partition's `gaps`.
fn gaps(gaps: &Value) -> impl Iterator<Item = (u64, u64)> + '_ {
    gaps.as_array().into_iter().flatten().filter_map(|g| {
        let range = g.as_array()?;
        Some((range.first()?.as_u64()?, range.get(1)?.as_u64()?))
    })
}

/// Every non-null `last_error` in `/status`, by the path of its object.
fn last_errors(status: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    collect_errors(status, String::new(), &mut out);
    out
}

fn collect_errors(value: &Value, path: String, out: &mut Map<String, Value>) {
    let Value::Object(map) = value else {
        return;
    };
    for (key, v) in map {
        if key == "last_error" {
            if !v.is_null() {
                out.insert(path.clone(), v.clone());
            }
            continue;
        }
        let child = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        collect_errors(v, child, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_and_gaps_count_since_the_previous_heartbeat() {
        let status = |dropped: u64, gaps: Value| {
            json!({"log": {"topics": [{"name": "ingest", "partitions": [
                {"partition": 0, "end_offset": 10, "backlog_records": 3, "backlog_bytes": 30,
                 "dropped_records": dropped, "gaps": gaps}]}]}})
        };
        let mut seen = Seen::new();
        let first = partitions(&status(5, json!([[0, 5]])), &mut seen);
        assert_eq!(first[0]["dropped_since"], 5);
        assert_eq!(first[0]["gaps_since"], json!([[0, 5]]));
        let second = partitions(&status(7, json!([[0, 5], [8, 10]])), &mut seen);
        assert_eq!(second[0]["dropped_since"], 2);
        assert_eq!(second[0]["gaps_since"], json!([[8, 10]]));
        assert_eq!(second[0]["backlog_records"], 3);
        let third = partitions(&status(7, json!([[0, 5], [8, 10]])), &mut seen);
        assert_eq!(third[0]["gaps_since"], json!([]));
    }

    #[test]
    fn last_errors_are_gathered_by_path() {
        let status = json!({
            "bridge": {"site": {"state": "down", "last_error": "connection refused"},
                       "other": {"last_error": null}},
            "upstream": {"last_error": "broker down"},
        });
        let errors = last_errors(&status);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors["bridge.site"], "connection refused");
        assert_eq!(errors["upstream"], "broker down");
    }

    #[test]
    fn a_missing_topic_or_a_zero_interval_is_refused() {
        let config = HeartbeatConfig {
            enabled: true,
            interval_s: 0,
            topic: "hb".into(),
        };
        let problems = config.validate(&["ingest"]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(HeartbeatConfig::default().validate(&[]).is_empty());
    }
}

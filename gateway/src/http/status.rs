//! `/status`: the gateway's state as JSON, for operators and `tidewell status`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use super::Observed;
use crate::log::{PartitionSummary, TopicSummary};

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

pub fn render(observed: &Observed) -> Value {
    let log = &observed.log;
    let topics: Vec<Value> = log.summaries().iter().map(topic).collect();
    let mut out = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": observed.started.elapsed().as_secs(),
        "ready": observed.is_ready(),
        "log": {
            "data_dir": log.dir().display().to_string(),
            "poisoned": log.poisoned(),
            "topics": topics,
        },
    });
    if let Some(m) = &observed.mqtt {
        out["mqtt"] = json!({
            "connections_open": get(&m.connections_open),
            "publishes_appended": get(&m.publishes_appended),
            "refused_not_authorized": get(&m.refused_not_authorized),
            "refused_quota": get(&m.refused_quota),
        });
    }
    if let Some(s) = &observed.serial {
        out["serial"] = json!({
            "ports_open": get(&s.ports_open),
            "readings_appended": get(&s.readings_appended),
            "bad_frames": get(&s.bad_frames),
            "reconnects": get(&s.reconnects),
        });
    }
    for source in &observed.sources {
        out[source.name()] = source.status();
    }
    out
}

fn topic(topic: &TopicSummary) -> Value {
    let partitions: Vec<Value> = topic.partitions.iter().map(partition).collect();
    json!({
        "name": topic.name,
        "quota_bytes": topic.retention_bytes,
        "size_bytes": topic.size_bytes(),
        "partitions": partitions,
    })
}

/// Backlog is what is not yet acknowledged upstream; without a cursor
/// (buffer-only mode, or nothing replicated yet) it is everything kept.
fn partition(part: &PartitionSummary) -> Value {
    json!({
        "partition": part.partition.0,
        "start_offset": part.start.0,
        "end_offset": part.end.0,
        "replicated_offset": part.replicated.map(|o| o.0),
        "backlog_records": part.backlog.records,
        "backlog_bytes": part.backlog.bytes,
        "dropped_records": part.dropped_records,
        "gaps": part.gaps,
    })
}

/// The table `tidewell status` prints from two `/status` samples taken
/// `seconds` apart (the drain rate and ETA come from their difference).
pub fn table(first: &Value, second: &Value, seconds: f64) -> String {
    let mut out = format!(
        "tidewell {} up {}s, {}{}\n",
        second["version"].as_str().unwrap_or("?"),
        second["uptime_s"],
        if second["ready"] == true {
            "ready"
        } else {
            "NOT READY"
        },
        second["log"]["poisoned"]
            .as_str()
            .map(|p| format!(", log refuses writes: {p}"))
            .unwrap_or_default(),
    );
    out.push_str(&format!(
        "{:<24} {:>12} {:>12} {:>12} {:>10} {:>12} {:>10} {:>10}\n",
        "topic/partition", "start", "end", "replicated", "backlog", "backlog B", "drain/s", "eta"
    ));
    for (topic, before) in topics(second).zip(topics(first).chain(std::iter::repeat(&Value::Null)))
    {
        let name = topic["name"].as_str().unwrap_or("?");
        let parts = topic["partitions"].as_array().cloned().unwrap_or_default();
        for (i, p) in parts.iter().enumerate() {
            let earlier = &before["partitions"][i];
            out.push_str(&partition_row(name, p, earlier, seconds));
        }
    }
    for section in ["mqtt", "serial", "upstream", "replication"] {
        if let Some(map) = second[section].as_object() {
            let fields: Vec<String> = map
                .iter()
                .filter(|(_, v)| !v.is_object() && !v.is_array())
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.push_str(&format!("{section}: {}\n", fields.join(" ")));
        }
    }
    out
}

fn topics(status: &Value) -> impl Iterator<Item = &Value> {
    status["log"]["topics"].as_array().into_iter().flatten()
}

fn partition_row(topic: &str, p: &Value, earlier: &Value, seconds: f64) -> String {
    let replicated = p["replicated_offset"].as_u64();
    let rate = match (replicated, earlier["replicated_offset"].as_u64()) {
        (Some(now), Some(then)) if seconds > 0.0 => Some(now.saturating_sub(then) as f64 / seconds),
        _ => None,
    };
    let backlog = p["backlog_records"].as_u64().unwrap_or(0);
    let eta = match rate {
        _ if backlog == 0 => "-".to_string(),
        Some(r) if r > 0.0 => format!("{:.0}s", backlog as f64 / r),
        _ => "stalled".to_string(),
    };
    format!(
        "{:<24} {:>12} {:>12} {:>12} {:>10} {:>12} {:>10} {:>10}\n",
        format!("{topic}/{}", p["partition"]),
        p["start_offset"],
        p["end_offset"],
        replicated.map_or("-".to_string(), |r| r.to_string()),
        backlog,
        p["backlog_bytes"],
        rate.map_or("-".to_string(), |r| format!("{r:.0}")),
        eta
    )
}

//! `tidewell status`: the table printed from two `/status` samples.

use serde_json::Value;

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
    let sections = second.as_object().into_iter().flatten();
    for (section, value) in sections.filter(|(k, _)| *k != "log") {
        if let Some(map) = value.as_object() {
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

//! `tidewell status`: the table printed from two `/status` samples.
//!
//! Columns are padded to their widest cell (a long topic name shifts the
//! table instead of breaking it). Without an `upstream` section the gateway
//! is in buffer-only mode: nothing drains, so no partition is "stalled".

use serde_json::Value;

const HEADER: [&str; 8] = [
    "topic/partition",
    "start",
    "end",
    "replicated",
    "backlog",
    "backlog B",
    "drain/s",
    "eta",
];

/// The table `tidewell status` prints from two `/status` samples taken
/// `seconds` apart (the drain rate and ETA come from their difference).
pub fn table(first: &Value, second: &Value, seconds: f64) -> String {
    let replicating = second.get("upstream").is_some();
    let mut out = headline(second, replicating);
    let mut rows = vec![HEADER.map(String::from)];
    for (topic, before) in topics(second).zip(topics(first).chain(std::iter::repeat(&Value::Null)))
    {
        let name = topic["name"].as_str().unwrap_or("?");
        let parts = topic["partitions"].as_array().cloned().unwrap_or_default();
        for (i, p) in parts.iter().enumerate() {
            let earlier = &before["partitions"][i];
            rows.push(partition_row(name, p, earlier, seconds, replicating));
        }
    }
    out.push_str(&aligned(&rows));
    let sections = second.as_object().into_iter().flatten();
    for (section, value) in sections.filter(|(k, _)| *k != "log") {
        if let Some(map) = value.as_object() {
            let fields: Vec<String> = map
                .iter()
                .filter(|(_, v)| !v.is_object() && !v.is_array())
                .map(|(k, v)| format!("{k}={}", cell(v)))
                .collect();
            out.push_str(&format!("{section}: {}\n", fields.join(" ")));
        }
    }
    out
}

fn headline(status: &Value, replicating: bool) -> String {
    format!(
        "tidewell {} up {}s, {}{}{}\n",
        status["version"].as_str().unwrap_or("?"),
        status["uptime_s"],
        if status["ready"] == true {
            "ready"
        } else {
            "NOT READY"
        },
        if replicating {
            ""
        } else {
            ", buffer-only (no upstream)"
        },
        status["log"]["poisoned"]
            .as_str()
            .map(|p| format!(", log refuses writes: {p}"))
            .unwrap_or_default(),
    )
}

/// Left-aligns the first column and right-aligns the others, each padded
/// to its widest cell (counted in characters, not bytes).
fn aligned(rows: &[[String; 8]]) -> String {
    let mut widths = [0usize; 8];
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                let pad = " ".repeat(w - c.chars().count());
                if i == 0 {
                    format!("{c}{pad}")
                } else {
                    format!("{pad}{c}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A JSON scalar as text: strings without quotes, null as "-".
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn topics(status: &Value) -> impl Iterator<Item = &Value> {
    status["log"]["topics"].as_array().into_iter().flatten()
}

fn partition_row(
    topic: &str,
    p: &Value,
    earlier: &Value,
    seconds: f64,
    replicating: bool,
) -> [String; 8] {
    let replicated = p["replicated_offset"].as_u64();
    let rate = match (replicated, earlier["replicated_offset"].as_u64()) {
        (Some(now), Some(then)) if seconds > 0.0 => Some(now.saturating_sub(then) as f64 / seconds),
        _ => None,
    };
    let backlog = p["backlog_records"].as_u64().unwrap_or(0);
    let eta = match rate {
        _ if backlog == 0 || !replicating => "-".to_string(),
        Some(r) if r > 0.0 => format!("{:.0}s", backlog as f64 / r),
        _ => "stalled".to_string(),
    };
    [
        format!("{topic}/{}", cell(&p["partition"])),
        cell(&p["start_offset"]),
        cell(&p["end_offset"]),
        replicated.map_or("-".to_string(), |r| r.to_string()),
        backlog.to_string(),
        cell(&p["backlog_bytes"]),
        rate.map_or("-".to_string(), |r| format!("{r:.0}")),
        eta,
    ]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample(replicated: Option<u64>, upstream: bool) -> Value {
        let mut s = json!({
            "version": "0.1.0", "uptime_s": 5, "ready": true,
            "log": {"poisoned": null, "topics": [
                {"name": "ingest", "partitions": [
                    {"partition": 0, "start_offset": 0, "end_offset": 1500,
                     "replicated_offset": replicated, "backlog_records": 1500 - replicated.unwrap_or(0),
                     "backlog_bytes": 123456}]},
                {"name": "a-rather-long-topic-name-for-the-journal", "partitions": [
                    {"partition": 11, "start_offset": 7, "end_offset": 9,
                     "replicated_offset": null, "backlog_records": 2, "backlog_bytes": 80}]}
            ]}
        });
        if upstream {
            s["upstream"] = json!({"state": "connected"});
        }
        s
    }

    /// Every row of the table is as long as the header, and each column's
    /// right edge is where the header's is.
    fn assert_aligned(table: &str) {
        let lines: Vec<&str> = table.lines().skip(1).take(3).collect();
        let width = lines[0].chars().count();
        for l in &lines[1..] {
            assert_eq!(l.chars().count(), width, "misaligned:\n{table}");
        }
        let end_of = |l: &str, word: &str| l.find(word).map(|i| i + word.len());
        let (head, row) = (lines[0], lines[1]);
        assert_eq!(end_of(head, " end"), end_of(row, " 1500"), "{table}");
    }

    #[test]
    fn columns_line_up_with_long_names_and_wide_numbers() {
        let t = table(&sample(Some(100), true), &sample(Some(600), true), 1.0);
        assert_aligned(&t);
        assert!(
            t.contains("a-rather-long-topic-name-for-the-journal/11"),
            "{t}"
        );
        assert!(t.contains("2s"), "ETA of 1000 records at 500/s: {t}");
        assert!(
            t.contains("stalled"),
            "a partition with a backlog and no drain: {t}"
        );
        assert!(!t.contains('"'), "no JSON quoting in cells: {t}");
    }

    #[test]
    fn buffer_only_mode_never_says_stalled() {
        let t = table(&sample(None, false), &sample(None, false), 1.0);
        assert_aligned(&t);
        assert!(!t.contains("stalled"), "{t}");
        assert!(t.lines().next().unwrap().contains("buffer-only"), "{t}");
    }
}

//! `tidewell log dump`: records as JSON lines, one object a record:
//! `topic`, `partition`, `offset`, `timestamp_ms`, `key`, `payload` (UTF-8
//! text, or `payload_base64`), `headers` (`name`, `value` or `value_base64`).
//!
//! `log dump --follow` is not here: only the writing process knows which
//! records are durable (a second process reading the files would also see
//! written but not yet fsynced ones), so it reads through the running
//! gateway's read-back API (`ingest/http/client.rs`), and `log/` stays free
//! of the async runtime.

use std::io::Write;

use base64::Engine;
use serde_json::{json, Value};

use super::error::ReadError;
use super::types::{Offset, Partition, StoredRecord};
use super::Log;

/// Which records to dump.
#[derive(Debug, Default)]
pub struct DumpFilter {
    /// Only this topic (default: all).
    pub topic: Option<String>,
    /// Only this partition (default: all).
    pub partition: Option<u32>,
    /// Start at this offset (default: the start of each partition).
    pub from: Option<u64>,
}

/// Writes the selected records to `out`; a damaged stretch is handed to
/// `damaged` and skipped. Returns whether any was.
pub fn dump(
    log: &Log,
    filter: &DumpFilter,
    out: &mut impl Write,
    damaged: &mut dyn FnMut(&str, Partition, &ReadError),
) -> std::io::Result<bool> {
    let mut any = false;
    for topic in log.topics() {
        if filter.topic.as_ref().is_some_and(|t| t != &topic.name) {
            continue;
        }
        for part in &topic.partitions {
            if filter.partition.is_some_and(|p| p != part.id.0) {
                continue;
            }
            any |= dump_partition(log, &topic.name, part.id, filter.from, out, damaged)?;
        }
    }
    Ok(any)
}

fn dump_partition(
    log: &Log,
    topic: &str,
    partition: Partition,
    from: Option<u64>,
    out: &mut impl Write,
    damaged: &mut dyn FnMut(&str, Partition, &ReadError),
) -> std::io::Result<bool> {
    let Some((start, end)) = log.offsets(topic, partition) else {
        return Ok(false);
    };
    let mut next = from.map_or(start, Offset).max(start);
    let mut any = false;
    while next < end {
        match log.read(topic, partition, next, 1 << 20) {
            Ok(records) if records.is_empty() => break,
            Ok(records) => {
                for record in &records {
                    writeln!(out, "{}", record_json(topic, partition, record))?;
                }
                next = Offset(records[records.len() - 1].offset.0 + 1);
            }
            Err(e) => {
                any = true;
                damaged(topic, partition, &e);
                match resume_point(&e) {
                    Some(resume) if resume > next => next = resume,
                    _ => break,
                }
            }
        }
    }
    Ok(any)
}

/// Where reading can go on after a damaged stretch.
fn resume_point(e: &ReadError) -> Option<Offset> {
    match e {
        ReadError::Corrupt { resume_at, .. } => *resume_at,
        ReadError::Missing { to, .. } => Some(*to),
        _ => None,
    }
}

/// One record in the dump's JSON shape.
pub fn record_json(topic: &str, partition: Partition, stored: &StoredRecord) -> Value {
    let r = &stored.record;
    let mut value = json!({
        "topic": topic,
        "partition": partition.0,
        "offset": stored.offset.0,
        "timestamp_ms": r.timestamp_ms,
    });
    put_bytes(&mut value, "key", r.key.as_deref());
    put_bytes(&mut value, "payload", Some(&r.value));
    let headers: Vec<Value> = r
        .headers
        .iter()
        .map(|(name, v)| {
            let mut h = json!({ "name": name });
            put_bytes(&mut h, "value", Some(v));
            h
        })
        .collect();
    value["headers"] = json!(headers);
    value
}

/// UTF-8 text under `name`, anything else base64 under `name_base64`.
fn put_bytes(target: &mut Value, name: &str, bytes: Option<&[u8]>) {
    match bytes {
        None => target[name] = Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(text) => target[name] = json!(text),
            Err(_) => {
                target[format!("{name}_base64")] =
                    json!(base64::engine::general_purpose::STANDARD.encode(b));
            }
        },
    }
}

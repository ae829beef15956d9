//! Readings to log records, and the index of what is already in the log.
//!
//! Each reading becomes one record, keyed by the device id, with headers that
//! identify the batch it came in: `device.id`, `device.boot_epoch`,
//! `device.seq` (and `device.index` within the batch). The value is a small
//! JSON object: `{"channel":3,"float":21.5}` (or `"int"`, or `"bytes_base64"`),
//! plus `"device_monotonic_ms"` when the device had no clock.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use base64::Engine;
use bytes::Bytes;
use firmware_proto::{DeviceTime, Readings, Value};
use serde_json::json;

use crate::log::{Log, Offset, Partition, Record};

pub const H_DEVICE: &str = "device.id";
pub const H_EPOCH: &str = "device.boot_epoch";
pub const H_SEQ: &str = "device.seq";
pub const H_INDEX: &str = "device.index";
pub const H_PORT: &str = "serial.port";

/// How the gateway places a device's monotonic clock on the wall clock:
/// `wall = monotonic + offset`, learnt when a message reveals the device's
/// uptime at arrival (a heartbeat), else estimated from each batch's newest
/// reading (taken just before sending).
#[derive(Debug, Default, Clone, Copy)]
pub struct DeviceClock {
    pub offset_ms: Option<i64>,
}

impl DeviceClock {
    pub fn heard_uptime(&mut self, uptime_ms: u64, arrival_ms: i64) {
        self.offset_ms = Some(arrival_ms - uptime_ms as i64);
    }

    fn wall_ms(&self, monotonic_ms: u64, newest_ms: u64, arrival_ms: i64) -> i64 {
        match self.offset_ms {
            Some(offset) => offset + monotonic_ms as i64,
            None => arrival_ms - (newest_ms.saturating_sub(monotonic_ms)) as i64,
        }
    }
}

/// One record per reading of `batch`.
pub fn to_records(
    device: &str,
    port: &str,
    batch: &Readings,
    clock: DeviceClock,
    arrival_ms: i64,
) -> Vec<Record> {
    let newest = batch
        .readings
        .iter()
        .filter_map(|r| match r.time {
            DeviceTime::MonotonicMs(m) => Some(m),
            DeviceTime::WallMs(_) => None,
        })
        .max()
        .unwrap_or(0);
    let key = Bytes::from(device.to_string());
    batch
        .readings
        .iter()
        .enumerate()
        .map(|(index, reading)| {
            let mut value = json!({ "channel": reading.channel });
            match &reading.value {
                Value::Int(v) => value["int"] = json!(v),
                Value::Float(v) => value["float"] = json!(v),
                Value::Bytes(b) => {
                    value["bytes_base64"] =
                        json!(base64::engine::general_purpose::STANDARD.encode(b));
                }
            }
            let timestamp_ms = match reading.time {
                DeviceTime::WallMs(ms) => ms,
                DeviceTime::MonotonicMs(m) => {
                    value["device_monotonic_ms"] = json!(m);
                    clock.wall_ms(m, newest, arrival_ms)
                }
            };
            Record {
                timestamp_ms,
                key: Some(key.clone()),
                value: Bytes::from(value.to_string()),
                headers: vec![
                    (H_DEVICE.into(), key.clone()),
                    (H_EPOCH.into(), Bytes::from(batch.boot_epoch.to_string())),
                    (H_SEQ.into(), Bytes::from(batch.seq.to_string())),
                    (H_INDEX.into(), Bytes::from(index.to_string())),
                    (H_PORT.into(), Bytes::from(port.to_string())),
                ],
            }
        })
        .collect()
}

/// Per device, the newest batch known to be durably in the log:
/// (boot epoch, highest sequence number). A retransmitted batch at or below
/// it is acknowledged again, not appended again, also across gateway restarts.
#[derive(Debug, Default)]
pub struct Delivered {
    map: Mutex<HashMap<String, (u32, u32)>>,
}

impl Delivered {
    pub fn contains(&self, device: &str, epoch: u32, seq: u32) -> bool {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(device)
            .is_some_and(|&(e, s)| e == epoch && seq <= s)
    }

    pub fn note(&self, device: &str, epoch: u32, seq: u32) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = map.entry(device.to_string()).or_insert((epoch, seq));
        if entry.0 != epoch || entry.1 < seq {
            *entry = (epoch, seq);
        }
    }

    /// Rebuilds the index from the newest `tail_records` records of every
    /// partition of `topics`: a device retransmits at most its queue of
    /// unacknowledged batches, which the tail covers.
    pub fn from_log(log: &Log, topics: &[String], tail_records: u64) -> Delivered {
        let delivered = Delivered::default();
        for topic in topics {
            let partitions = log.topic(topic).map_or(0, |t| t.partitions.len() as u32);
            for p in 0..partitions {
                delivered.scan_partition(log, topic, Partition(p), tail_records);
            }
        }
        delivered
    }

    fn scan_partition(&self, log: &Log, topic: &str, partition: Partition, tail_records: u64) {
        let Some((start, end)) = log.offsets(topic, partition) else {
            return;
        };
        let mut next = Offset(end.0.saturating_sub(tail_records).max(start.0));
        while next < end {
            let Ok(records) = log.read(topic, partition, next, 1 << 20) else {
                tracing::warn!(topic, %partition, offset = %next, "serial: could not read the log tail to rebuild duplicate detection");
                return;
            };
            let Some(last) = records.last() else { return };
            next = Offset(last.offset.0 + 1);
            for stored in &records {
                if let Some((device, epoch, seq)) = batch_identity(&stored.record) {
                    self.note(&device, epoch, seq);
                }
            }
        }
    }
}

fn batch_identity(record: &Record) -> Option<(String, u32, u32)> {
    let header = |name: &str| {
        record
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let device = String::from_utf8(header(H_DEVICE)?.to_vec()).ok()?;
    let epoch = std::str::from_utf8(&header(H_EPOCH)?).ok()?.parse().ok()?;
    let seq = std::str::from_utf8(&header(H_SEQ)?).ok()?.parse().ok()?;
    Some((device, epoch, seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware_proto::Reading;

    fn batch(epoch: u32, seq: u32) -> Readings {
        let mut readings = firmware_proto::heapless::Vec::new();
        let _ = readings.push(Reading {
            channel: 1,
            value: Value::Float(21.5),
            time: DeviceTime::MonotonicMs(900),
        });
        let _ = readings.push(Reading {
            channel: 2,
            value: Value::Int(-3),
            time: DeviceTime::MonotonicMs(1000),
        });
        Readings {
            boot_epoch: epoch,
            seq,
            readings,
        }
    }

    #[test]
    fn readings_become_keyed_records_with_their_batch_identity() {
        let records = to_records(
            "dev-1",
            "ttyS0",
            &batch(4, 9),
            DeviceClock::default(),
            50_000,
        );
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].key.as_deref(), Some(&b"dev-1"[..]));
        assert_eq!(batch_identity(&records[1]), Some(("dev-1".into(), 4, 9)));
        assert_eq!(
            records[1].timestamp_ms, 50_000,
            "the newest reading is placed at arrival"
        );
        assert_eq!(records[0].timestamp_ms, 49_900);
        let value: serde_json::Value = serde_json::from_slice(&records[0].value).unwrap();
        assert_eq!(
            value,
            json!({"channel": 1, "float": 21.5, "device_monotonic_ms": 900})
        );
    }

    #[test]
    fn a_known_clock_offset_places_monotonic_time() {
        let mut clock = DeviceClock::default();
        clock.heard_uptime(2_000, 10_000);
        let records = to_records("d", "p", &batch(1, 0), clock, 99_999);
        assert_eq!(records[0].timestamp_ms, 8_900);
    }

    #[test]
    fn delivered_tracks_the_newest_batch_per_device_and_epoch() {
        let delivered = Delivered::default();
        delivered.note("a", 1, 5);
        assert!(delivered.contains("a", 1, 5) && delivered.contains("a", 1, 0));
        assert!(
            !delivered.contains("a", 1, 6)
                && !delivered.contains("a", 2, 0)
                && !delivered.contains("b", 1, 0)
        );
        delivered.note("a", 2, 0);
        assert!(
            !delivered.contains("a", 1, 5),
            "a new epoch replaces the old one"
        );
    }
}

//! A group's poll as a log record, and report by exception (deadbands).
//!
//! The record's value is one JSON object: each point's name and its scaled
//! value, `null` when the point has no good value, and then a `"quality"`
//! object naming why for just those points (`"timeout"`, `"crc_error"`,
//! `"bad_frame"`, `"exception:2"`, `"no_connection"`, `"not_finite"`). A
//! good poll has no `"quality"` key, so a consumer checks one key.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value};

use super::config::PointConfig;
use crate::log::Record;

pub const H_BUS: &str = "modbus.bus";
pub const H_UNIT: &str = "modbus.unit";
pub const H_GROUP: &str = "modbus.group";
/// The gateway's CLOCK_BOOTTIME in ms at the poll: orders readings across a
/// wall-clock step (a Pi without RTC sets its clock from NTP after boot).
pub const H_MONOTONIC: &str = "modbus.monotonic_ms";

/// The one key of a record's value that is not a point name.
pub const QUALITY_KEY: &str = "quality";

/// A point's outcome in one poll.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Good(Value),
    Bad(Quality),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    Timeout,
    Crc,
    BadFrame,
    Exception(u8),
    NoConnection,
    NotFinite,
}

impl Quality {
    fn label(self) -> String {
        match self {
            Quality::Timeout => "timeout".into(),
            Quality::Crc => "crc_error".into(),
            Quality::BadFrame => "bad_frame".into(),
            Quality::Exception(code) => format!("exception:{code}"),
            Quality::NoConnection => "no_connection".into(),
            Quality::NotFinite => "not_finite".into(),
        }
    }
}

/// Where and when a poll happened, for the record's headers.
pub struct PollMeta<'a> {
    pub bus: &'a str,
    pub device: &'a str,
    pub unit: u8,
    pub group: &'a str,
    pub wall_ms: i64,
    pub monotonic_ms: u64,
}

pub fn to_record(points: &[PointConfig], outcomes: &[Outcome], meta: &PollMeta) -> Record {
    let mut values = Map::new();
    let mut quality = Map::new();
    for (point, outcome) in points.iter().zip(outcomes) {
        match outcome {
            Outcome::Good(v) => values.insert(point.name.clone(), v.clone()),
            Outcome::Bad(q) => {
                quality.insert(point.name.clone(), Value::String(q.label()));
                values.insert(point.name.clone(), Value::Null)
            }
        };
    }
    if !quality.is_empty() {
        values.insert(QUALITY_KEY.into(), Value::Object(quality));
    }
    let key = Bytes::from(meta.device.to_string());
    Record {
        timestamp_ms: meta.wall_ms,
        key: Some(key),
        value: Bytes::from(Value::Object(values).to_string()),
        headers: vec![
            (H_BUS.into(), Bytes::from(meta.bus.to_string())),
            (H_UNIT.into(), Bytes::from(meta.unit.to_string())),
            (H_GROUP.into(), Bytes::from(meta.group.to_string())),
            (
                H_MONOTONIC.into(),
                Bytes::from(meta.monotonic_ms.to_string()),
            ),
        ],
    }
}

/// What was last sent of each point of a group with deadbands.
#[derive(Debug, Default)]
pub struct Deadband {
    sent: Vec<Option<Sent>>,
}

#[derive(Debug, Clone)]
struct Sent {
    /// `None`: it was sent with a bad quality.
    value: Option<f64>,
    /// `None`: it was sent good.
    quality: Option<Quality>,
    at: Instant,
}

impl Deadband {
    /// Whether this poll is worth a record: a point without a deadband
    /// always is; one with a deadband when it is new, changed quality, moved
    /// past its band, or was last sent `max_interval_ms` ago.
    pub fn should_report(
        &self,
        points: &[PointConfig],
        outcomes: &[Outcome],
        now: Instant,
    ) -> bool {
        points
            .iter()
            .zip(outcomes)
            .enumerate()
            .any(|(i, (point, outcome))| {
                if !point.has_deadband() {
                    return true;
                }
                let Some(Some(sent)) = self.sent.get(i) else {
                    return true;
                };
                let expired = point
                    .max_interval_ms
                    .is_some_and(|ms| now.duration_since(sent.at) >= Duration::from_millis(ms));
                expired
                    || sent.quality != bad_quality(outcome)
                    || moved(point, sent.value, numeric(outcome))
            })
    }

    /// Remembers what a record carried.
    pub fn sent(&mut self, outcomes: &[Outcome], now: Instant) {
        self.sent = outcomes
            .iter()
            .map(|o| {
                Some(Sent {
                    value: numeric(o),
                    quality: bad_quality(o),
                    at: now,
                })
            })
            .collect();
    }

    /// Forgets everything (the record was not stored): the next poll reports.
    pub fn reset(&mut self) {
        self.sent.clear();
    }
}

fn numeric(outcome: &Outcome) -> Option<f64> {
    match outcome {
        Outcome::Good(v) => v.as_f64(),
        Outcome::Bad(_) => None,
    }
}

fn bad_quality(outcome: &Outcome) -> Option<Quality> {
    match outcome {
        Outcome::Good(_) => None,
        Outcome::Bad(q) => Some(*q),
    }
}

fn moved(point: &PointConfig, last: Option<f64>, now: Option<f64>) -> bool {
    match (last, now) {
        (Some(last), Some(now)) => {
            let band = point
                .deadband
                .unwrap_or_else(|| last.abs() * point.deadband_percent.unwrap_or(0.0) / 100.0);
            (now - last).abs() > band
        }
        (None, None) => false,
        _ => true,
    }
}

/// CLOCK_BOOTTIME in milliseconds (0 if it cannot be read).
#[allow(unsafe_code)] // audited: see the SAFETY comment inside
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, owned `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::modbus::config::{DataType, Kind, Order};

    fn point(name: &str, deadband: Option<f64>, max_interval_ms: Option<u64>) -> PointConfig {
        PointConfig {
            name: name.into(),
            kind: Kind::HoldingRegister,
            address: 0,
            data_type: Some(DataType::Int16),
            order: Order::ABCD,
            scale: None,
            offset: None,
            unit: None,
            bit: None,
            length: None,
            deadband,
            deadband_percent: None,
            max_interval_ms,
        }
    }

    #[test]
    fn bad_points_are_null_with_a_quality_and_headers_name_the_poll() {
        let points = [point("t", None, None), point("p", None, None)];
        let outcomes = [
            Outcome::Good(21.5.into()),
            Outcome::Bad(Quality::Exception(2)),
        ];
        let meta = PollMeta {
            bus: "b",
            device: "d",
            unit: 3,
            group: "g",
            wall_ms: 7,
            monotonic_ms: 9,
        };
        let record = to_record(&points, &outcomes, &meta);
        let value: Value = serde_json::from_slice(&record.value).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"t": 21.5, "p": null, "quality": {"p": "exception:2"}})
        );
        assert_eq!(record.timestamp_ms, 7);
        assert_eq!(record.headers[1], (H_UNIT.to_string(), Bytes::from("3")));
    }

    #[test]
    fn a_deadband_holds_small_moves_until_the_max_interval() {
        let points = [point("t", Some(1.0), Some(1000))];
        let mut db = Deadband::default();
        let t0 = Instant::now();
        let good = |v: f64| [Outcome::Good(v.into())];
        assert!(
            db.should_report(&points, &good(10.0), t0),
            "the first reading reports"
        );
        db.sent(&good(10.0), t0);
        assert!(!db.should_report(&points, &good(10.9), t0 + Duration::from_millis(500)));
        assert!(db.should_report(&points, &good(11.5), t0 + Duration::from_millis(500)));
        assert!(db.should_report(&points, &good(10.2), t0 + Duration::from_millis(1000)));
        assert!(db.should_report(&points, &[Outcome::Bad(Quality::Timeout)], t0));
        db.reset();
        assert!(db.should_report(&points, &good(10.0), t0));
    }

    #[test]
    fn a_change_between_two_bad_qualities_reports_at_once() {
        let points = [point("t", Some(1.0), None)];
        let mut db = Deadband::default();
        let t0 = Instant::now();
        let timeout = [Outcome::Bad(Quality::Timeout)];
        db.sent(&timeout, t0);
        assert!(
            !db.should_report(&points, &timeout, t0 + Duration::from_secs(60)),
            "the same bad quality again is held"
        );
        assert!(
            db.should_report(&points, &[Outcome::Bad(Quality::Exception(4))], t0),
            "timeout -> exception:4 is a change of quality"
        );
        db.sent(&[Outcome::Bad(Quality::Exception(4))], t0);
        assert!(!db.should_report(&points, &[Outcome::Bad(Quality::Exception(4))], t0));
        assert!(db.should_report(&points, &[Outcome::Bad(Quality::Exception(2))], t0));
    }
}

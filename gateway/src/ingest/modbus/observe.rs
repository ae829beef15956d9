//! Modbus ingest's counters, and its part of `/metrics` and `/status`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde_json::{json, Value};

use super::config::ModbusConfig;
use crate::observe::{MetricsWriter, Section};

#[derive(Debug, Default)]
pub struct ModbusStats {
    pub records_appended: AtomicU64,
    /// Bytes of the records counted in `records_appended`.
    pub bytes_appended: AtomicU64,
    pub append_failures: AtomicU64,
    /// Times polling paused because the log refused a record (full topic
    /// under `reject_new`, or a failed log).
    pub log_full_pauses: AtomicU64,
    pub buses: Vec<BusStats>,
}

#[derive(Debug, Default)]
pub struct BusStats {
    pub name: String,
    pub connected: AtomicBool,
    pub reconnects: AtomicU64,
    /// Bytes that were no response to the request they followed (noise,
    /// late answers), dropped to resynchronise.
    pub discarded_bytes: AtomicU64,
    /// Why polling is paused, while it is.
    pub paused: Mutex<Option<String>>,
    pub devices: Vec<DeviceStats>,
}

#[derive(Debug, Default)]
pub struct DeviceStats {
    pub name: String,
    pub unit: u8,
    pub polls: AtomicU64,
    pub records: AtomicU64,
    /// Polls that produced no record because every deadband held.
    pub suppressed: AtomicU64,
    pub timeouts: AtomicU64,
    pub crc_errors: AtomicU64,
    pub bad_frames: AtomicU64,
    pub connection_errors: AtomicU64,
    pub exceptions: Mutex<BTreeMap<u8, u64>>,
    pub backing_off: AtomicBool,
    pub last_error: Mutex<Option<String>>,
}

impl ModbusStats {
    pub fn new(config: &ModbusConfig) -> ModbusStats {
        let buses = config
            .buses
            .iter()
            .map(|bus| BusStats {
                name: bus.name.clone(),
                devices: bus
                    .devices
                    .iter()
                    .map(|d| DeviceStats {
                        name: d.name.clone(),
                        unit: d.unit,
                        ..DeviceStats::default()
                    })
                    .collect(),
                ..BusStats::default()
            })
            .collect();
        ModbusStats {
            buses,
            ..ModbusStats::default()
        }
    }
}

impl DeviceStats {
    pub fn exception(&self, code: u8) {
        *lock(&self.exceptions).entry(code).or_insert(0) += 1;
    }

    pub fn set_error(&self, error: Option<String>) {
        *lock(&self.last_error) = error;
    }
}

impl BusStats {
    pub fn set_paused(&self, why: Option<String>) {
        *lock(&self.paused) = why;
    }

    pub fn paused(&self) -> Option<String> {
        lock(&self.paused).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Section for ModbusStats {
    fn name(&self) -> &'static str {
        "modbus"
    }

    fn metrics(&self, w: &mut MetricsWriter) {
        crate::ingest::ingest_samples(w, "modbus", &self.records_appended, &self.bytes_appended);
        w.counter(
            "tidewell_modbus_append_failures_total",
            "Poll records the log refused or failed.",
            load(&self.append_failures),
        );
        w.counter(
            "tidewell_modbus_log_full_pauses_total",
            "Times polling paused because the log refused a record (reject_new).",
            load(&self.log_full_pauses),
        );
        bus_metrics(w, &self.buses);
        device_metrics(w, &self.buses);
    }

    fn status(&self) -> Value {
        let buses: Vec<Value> = self.buses.iter().map(bus_status).collect();
        json!({
            "records_appended": load(&self.records_appended),
            "append_failures": load(&self.append_failures),
            "buses": buses,
        })
    }
}

fn bus_status(bus: &BusStats) -> Value {
    let devices: Vec<Value> = bus
        .devices
        .iter()
        .map(|d| {
            let exceptions: BTreeMap<String, u64> = lock(&d.exceptions)
                .iter()
                .map(|(code, n)| (code.to_string(), *n))
                .collect();
            json!({
                "name": d.name,
                "unit": d.unit,
                "polls": load(&d.polls),
                "records": load(&d.records),
                "timeouts": load(&d.timeouts),
                "crc_errors": load(&d.crc_errors),
                "bad_frames": load(&d.bad_frames),
                "exceptions": exceptions,
                "backing_off": d.backing_off.load(Ordering::Relaxed),
                "last_error": *lock(&d.last_error),
            })
        })
        .collect();
    json!({
        "name": bus.name,
        "connected": bus.connected.load(Ordering::Relaxed),
        "paused": bus.paused(),
        "discarded_bytes": load(&bus.discarded_bytes),
        "devices": devices,
    })
}

fn bus_metrics(w: &mut MetricsWriter, buses: &[BusStats]) {
    type Get = fn(&BusStats) -> f64;
    let families: [(&str, &str, &str, Get); 4] = [
        (
            "tidewell_modbus_bus_connected",
            "gauge",
            "1 while the bus's port or connection is open.",
            |b| f64::from(u8::from(b.connected.load(Ordering::Relaxed))),
        ),
        (
            "tidewell_modbus_bus_paused",
            "gauge",
            "1 while polling is paused because the log refuses records.",
            |b| f64::from(u8::from(b.paused().is_some())),
        ),
        (
            "tidewell_modbus_bus_reconnects_total",
            "counter",
            "Times the bus's port or connection was lost.",
            |b| load(&b.reconnects) as f64,
        ),
        (
            "tidewell_modbus_bus_discarded_bytes_total",
            "counter",
            "Bytes dropped to resynchronise (noise, late answers).",
            |b| load(&b.discarded_bytes) as f64,
        ),
    ];
    for (name, kind, help, get) in families {
        let samples = buses
            .iter()
            .map(|b| (vec![("bus", b.name.as_str())], get(b)))
            .collect();
        w.family_owned(name, kind, help, samples);
    }
}

fn device_metrics(w: &mut MetricsWriter, buses: &[BusStats]) {
    let devices: Vec<&DeviceStats> = buses.iter().flat_map(|b| &b.devices).collect();
    type Get = fn(&DeviceStats) -> f64;
    let families: [(&str, &str, Get); 4] = [
        ("polls_total", "Polls of a group, answered or not.", |d| {
            load(&d.polls) as f64
        }),
        ("records_total", "Poll records durably appended.", |d| {
            load(&d.records) as f64
        }),
        (
            "suppressed_total",
            "Polls without a record because every deadband held.",
            |d| load(&d.suppressed) as f64,
        ),
        (
            "backoff",
            "1 while the device is backed off after failing.",
            |d| f64::from(u8::from(d.backing_off.load(Ordering::Relaxed))),
        ),
    ];
    for (name, help, get) in families {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let samples = devices
            .iter()
            .map(|d| (vec![("device", d.name.as_str())], get(d)))
            .collect();
        w.family_owned(&format!("tidewell_modbus_{name}"), kind, help, samples);
    }
    let mut errors = Vec::new();
    for d in &devices {
        for (kind, n) in [
            ("timeout", &d.timeouts),
            ("crc", &d.crc_errors),
            ("frame", &d.bad_frames),
            ("connection", &d.connection_errors),
        ] {
            errors.push((
                vec![("device", d.name.as_str()), ("error", kind)],
                load(n) as f64,
            ));
        }
    }
    w.family_owned(
        "tidewell_modbus_errors_total",
        "counter",
        "Failed request attempts, by device and kind.",
        errors,
    );
    let codes: Vec<(String, String, u64)> = devices
        .iter()
        .flat_map(|d| {
            lock(&d.exceptions)
                .iter()
                .map(|(c, n)| (d.name.clone(), c.to_string(), *n))
                .collect::<Vec<_>>()
        })
        .collect();
    let samples = codes
        .iter()
        .map(|(d, c, n)| {
            (
                vec![("device", d.as_str()), ("code", c.as_str())],
                *n as f64,
            )
        })
        .collect();
    w.family_owned(
        "tidewell_modbus_exceptions_total",
        "counter",
        "Exception responses, by device and exception code.",
        samples,
    );
}

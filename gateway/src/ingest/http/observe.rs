//! HTTP ingest's counters and its part of `/metrics` and `/status`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::observe::{MetricsWriter, Section};

/// Refusal reasons, in the order `/metrics` lists them.
pub const REASONS: [&str; 12] = [
    "unauthorized",
    "forbidden",
    "throttled",
    "auth_busy",
    "not_found",
    "too_large",
    "malformed",
    "in_progress",
    "full",
    "log_error",
    "bad_offset",
    "method",
];

#[derive(Debug, Default)]
pub struct HttpIngestStats {
    pub connections_open: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub requests: AtomicU64,
    /// POSTs answered 200 after their append was durable.
    pub appends: AtomicU64,
    pub records_appended: AtomicU64,
    /// Payload bytes of the records counted in `records_appended`.
    pub bytes_appended: AtomicU64,
    /// Retries answered from the idempotency window, not appended again.
    pub idempotent_replays: AtomicU64,
    pub records_served: AtomicU64,
    pub streams_open: AtomicU64,
    refusals: [AtomicU64; REASONS.len()],
    /// Bound addresses, for `/status`.
    pub listening: Mutex<Vec<String>>,
}

impl HttpIngestStats {
    pub fn refused(&self, reason: &str) {
        if let Some(i) = REASONS.iter().position(|r| *r == reason) {
            self.refusals[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Section for HttpIngestStats {
    fn name(&self) -> &'static str {
        "http_ingest"
    }

    fn metrics(&self, w: &mut MetricsWriter) {
        crate::ingest::ingest_samples(
            w,
            "http_ingest",
            &self.records_appended,
            &self.bytes_appended,
        );
        w.gauge(
            "tidewell_http_ingest_connections_open",
            "Connections open now.",
            load(&self.connections_open) as f64,
        );
        w.gauge(
            "tidewell_http_ingest_streams_open",
            "Read-back streams (follow) open now.",
            load(&self.streams_open) as f64,
        );
        for (name, help, counter) in [
            (
                "connections_accepted",
                "Connections accepted.",
                &self.connections_accepted,
            ),
            ("requests", "Requests received.", &self.requests),
            (
                "appends",
                "POSTs answered after their durable append.",
                &self.appends,
            ),
            (
                "idempotent_replays",
                "Retries answered again from the idempotency window, not appended.",
                &self.idempotent_replays,
            ),
            (
                "records_served",
                "Records sent to readers.",
                &self.records_served,
            ),
        ] {
            w.counter(
                &format!("tidewell_http_ingest_{name}_total"),
                help,
                load(counter),
            );
        }
        let labels: Vec<[(&str, &str); 1]> = REASONS.iter().map(|r| [("reason", *r)]).collect();
        let samples: Vec<(&[(&str, &str)], f64)> = labels
            .iter()
            .zip(&self.refusals)
            .map(|(l, c)| (&l[..], load(c) as f64))
            .collect();
        w.family(
            "tidewell_http_ingest_refusals_total",
            "counter",
            "Requests refused, by reason.",
            &samples,
        );
    }

    fn status(&self) -> Value {
        let listening = self
            .listening
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let refusals: serde_json::Map<String, Value> = REASONS
            .iter()
            .zip(&self.refusals)
            .map(|(r, c)| (r.to_string(), json!(load(c))))
            .collect();
        json!({
            "listening": listening,
            "connections_open": load(&self.connections_open),
            "requests": load(&self.requests),
            "records_appended": load(&self.records_appended),
            "idempotent_replays": load(&self.idempotent_replays),
            "records_served": load(&self.records_served),
            "refusals": refusals,
        })
    }
}

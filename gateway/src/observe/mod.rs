//! Observability: a registry the stages write into, rendered as `/metrics`
//! (Prometheus), `/healthz`, `/readyz` and `/status` (JSON, read by
//! `tidewell status`).
//!
//! At start-up each stage (the log, every source, the replicator) registers
//! a [`Section`]: how to write its metrics, its `/status` section and, if it
//! can make the gateway unable to accept data, why it cannot now. The
//! server renders whatever is registered and names no stage.

pub mod config;
pub mod metrics;
pub mod server;
pub mod status;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

pub use config::HttpConfig;
pub use metrics::MetricsWriter;
pub use server::{get, start, HttpServer};

/// One stage's part of `/metrics` and `/status`.
pub trait Section: Send + Sync {
    /// Its key in `/status` ("log", "mqtt", "serial", "upstream", ...).
    fn name(&self) -> &'static str;
    fn metrics(&self, out: &mut MetricsWriter);
    fn status(&self) -> Value;
    /// Why the gateway cannot make data durable now because of this stage
    /// (a poisoned log): `/readyz` answers 503 and the watchdog stops.
    fn unhealthy(&self) -> Option<String> {
        None
    }
}

/// What the stages registered.
pub struct Registry {
    sections: Vec<Arc<dyn Section>>,
    /// Set once the log is open and every source is up.
    ready: AtomicBool,
    started: Instant,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            sections: Vec::new(),
            ready: AtomicBool::new(false),
            started: Instant::now(),
        }
    }
}

impl Registry {
    pub fn register(&mut self, section: Arc<dyn Section>) {
        self.sections.push(section);
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// The first registered reason the gateway cannot accept data, if any.
    pub fn unhealthy(&self) -> Option<String> {
        self.sections.iter().find_map(|s| s.unhealthy())
    }

    /// Ready means: able to accept data and make it durable.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.unhealthy().is_none()
    }

    pub fn render_metrics(&self) -> String {
        let mut w = MetricsWriter::default();
        w.gauge("tidewell_up", "1 while the gateway runs.", 1.0);
        w.gauge(
            "tidewell_ready",
            "1 when the log is open, writable and every listener is up.",
            f64::from(u8::from(self.is_ready())),
        );
        w.gauge(
            "tidewell_uptime_seconds",
            "Seconds since the gateway started.",
            self.started.elapsed().as_secs_f64(),
        );
        for section in &self.sections {
            section.metrics(&mut w);
        }
        w.finish()
    }

    pub fn render_status(&self) -> Value {
        let mut out = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "ready": self.is_ready(),
        });
        for section in &self.sections {
            out[section.name()] = section.status();
        }
        out
    }
}

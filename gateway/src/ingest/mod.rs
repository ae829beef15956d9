//! Sources: each turns something outside the gateway (MQTT clients, serial
//! lines, ...) into records in the log. One folder per source.
//!
//! # What a source gets ([`Context`])
//!
//! - `log`, the append handle ([`Log`]). [`Log::append`] queues records and
//!   returns an [`AppendTicket`](crate::log::AppendTicket) at once; the
//!   ticket resolves once the records are durable under the topic's fsync
//!   policy. When the writer is behind, [`Log::try_append`] hands the
//!   records back with `Overloaded`, and [`Log::capacity`] resolves once
//!   there is room again. [`Log::read`] and [`Log::offsets`] let a source
//!   rebuild its duplicate detection from the log's tail at start (serial
//!   ingest does).
//! - `shutdown`, which resolves when the gateway stops.
//! - `registry`, where it registers its [`Section`](crate::observe::Section):
//!   its metrics (`tidewell_<name>_*`, and its samples of the shared
//!   `tidewell_ingest_*` families through [`ingest_samples`]) and its
//!   `/status` section.
//!
//! It runs on the gateway's tokio runtime, started after the log is open
//! and before the gateway announces readiness.
//!
//! # What a source promises
//!
//! - Acknowledge (a PUBACK, a device Ack) only after its ticket resolved
//!   `Ok`; on an error refuse with a reason and count it, never drop silently.
//! - Bounded memory: in-flight appends per peer are capped, and every cost a
//!   peer can multiply (connections, password checks, buffers) has a bound.
//! - Never block the runtime on the disk: await tickets, do not `wait()`.
//! - Stop intake when `shutdown` resolves or its [`Running`] handle is
//!   dropped; appends already queued are written and synced by the log as
//!   it closes, so an acknowledged record is never lost at a stop.
//! - Name its bound addresses for the `ready` line ([`Running::addresses`]).
//!
//! # Adding a source
//!
//! Its folder `ingest/<name>/` (the [`Source`] impl, its config section with
//! its checks, its `Section`, a README), `pub mod <name>;` below, its
//! section in [`crate::config::Config`], and one entry in the list of
//! sources the gateway starts (`daemon::sources`).

pub mod bridge;
pub mod http;
pub mod journal;
pub mod modbus;
pub mod mqtt;
pub mod serial;
pub mod syslog;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use crate::log::Log;
use crate::observe::Registry;

/// What every source is started with.
pub struct Context<'a> {
    pub log: Arc<Log>,
    pub shutdown: Shutdown,
    pub registry: &'a mut Registry,
}

/// A configured source, ready to start.
pub trait Source: Send {
    /// Its config section, `/status` key and `source` label, e.g. "mqtt".
    fn name(&self) -> &'static str;
    fn start<'a>(self: Box<Self>, ctx: Context<'a>) -> Starting<'a>;
}

/// The source's own error on failure; the gateway names the source in it.
pub type Starting<'a> = Pin<
    Box<
        dyn Future<Output = Result<Box<dyn Running>, Box<dyn std::error::Error + Send + Sync>>>
            + Send
            + 'a,
    >,
>;

/// A started source. Dropping it stops intake.
pub trait Running: Send {
    /// Its bound addresses for the `ready` line, e.g. `("mqtt", addr)`.
    fn addresses(&self) -> Vec<(&'static str, SocketAddr)> {
        Vec::new()
    }

    /// Applies what a reload (SIGHUP) may change of its section in `config`
    /// (already checked), without dropping connections; returns what
    /// changed, for the log. `Err`: nothing changed. Sources that apply
    /// nothing keep this default (their changes need a restart).
    fn reload(&self, config: &crate::config::Config) -> Result<Vec<String>, String> {
        let _ = config;
        Ok(Vec::new())
    }
}

/// A source that could not start (the gateway does not start either).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct SourceError {
    pub source_name: &'static str,
    pub error: Box<dyn std::error::Error + Send + Sync>,
}

/// Resolves once the gateway stops.
#[derive(Clone)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// A signal and the switch that fires it.
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Shutdown) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Shutdown(rx))
    }

    pub async fn requested(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// This source's samples of the families every source writes.
pub fn ingest_samples(
    w: &mut crate::observe::MetricsWriter,
    source: &str,
    records: &std::sync::atomic::AtomicU64,
    bytes: &std::sync::atomic::AtomicU64,
) {
    let labels: &[(&str, &str)] = &[("source", source)];
    w.family(
        "tidewell_ingest_records_total",
        "counter",
        "Records durably appended, by source.",
        &[(
            labels,
            records.load(std::sync::atomic::Ordering::Relaxed) as f64,
        )],
    );
    w.family(
        "tidewell_ingest_bytes_total",
        "counter",
        "Payload bytes durably appended, by source.",
        &[(
            labels,
            bytes.load(std::sync::atomic::Ordering::Relaxed) as f64,
        )],
    );
}

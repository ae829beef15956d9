//! Serial ingest: sensors on UART or USB serial lines.
//!
//! Each configured port runs its own task: open the port (retrying with
//! backoff while it is missing, so an unplugged USB adapter comes back by
//! itself), then speak `firmware-proto` frames (or read text lines) until the
//! port fails, and start over. A device's batch is acknowledged only after
//! its records are durable in the log; a retransmitted batch (same device,
//! boot epoch and sequence number) is acknowledged again but not appended
//! again, also after a gateway restart, because the index of delivered
//! batches is rebuilt from the tail of the log at start-up.

pub mod config;
mod frames;
mod lines;
mod observe;
mod port;
pub mod records;

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

pub use config::{Format, PortConfig, SerialConfig};

use crate::ingest::{Context, Running, Source, Starting};
use crate::log::Log;
use records::Delivered;

/// Records read back at start-up per partition to rebuild duplicate detection.
const DELIVERED_TAIL_RECORDS: u64 = 50_000;

/// Counters for metrics and status.
#[derive(Debug, Default)]
pub struct SerialStats {
    pub ports_open: AtomicU64,
    pub reconnects: AtomicU64,
    pub frames: AtomicU64,
    pub bad_frames: AtomicU64,
    pub batches_appended: AtomicU64,
    pub readings_appended: AtomicU64,
    /// Bytes of the records counted in `readings_appended` (values, keys, headers).
    pub bytes_appended: AtomicU64,
    pub duplicate_batches: AtomicU64,
    pub append_failures: AtomicU64,
    pub long_lines: AtomicU64,
}

/// What a port task needs.
pub struct PortCtx {
    pub config: PortConfig,
    /// The port's file name, used as its label and as the key of line records.
    pub name: String,
    pub log: Arc<Log>,
    pub partitions: u32,
    pub delivered: Arc<Delivered>,
    pub stats: Arc<SerialStats>,
}

/// The running port tasks; dropping it stops them.
pub struct SerialHandle {
    pub stats: Arc<SerialStats>,
    _tasks: AbortOnDrop,
}

/// Serial ingest as a source of the gateway. Started even without ports, so
/// `/metrics` and `/status` always carry its section.
struct SerialSource(SerialConfig);

impl SerialConfig {
    pub fn source(&self) -> Option<Box<dyn Source>> {
        Some(Box::new(SerialSource(self.clone())))
    }
}

impl Source for SerialSource {
    fn name(&self) -> &'static str {
        "serial"
    }

    fn start<'a>(self: Box<Self>, ctx: Context<'a>) -> Starting<'a> {
        Box::pin(async move {
            let handle = start(&self.0, ctx.log);
            ctx.registry.register(handle.stats.clone());
            Ok(Box::new(handle) as Box<dyn Running>)
        })
    }
}

impl Running for SerialHandle {}

/// Starts one task per configured port. Must run inside a tokio runtime.
pub fn start(config: &SerialConfig, log: Arc<Log>) -> SerialHandle {
    let stats = Arc::new(SerialStats::default());
    let topics: Vec<String> = config
        .ports
        .iter()
        .filter(|p| p.format == Format::Frames)
        .map(|p| p.topic.clone())
        .collect();
    let delivered = Arc::new(if topics.is_empty() {
        Delivered::default()
    } else {
        Delivered::from_log(&log, &topics, DELIVERED_TAIL_RECORDS)
    });
    let mut tasks = Vec::new();
    for port in &config.ports {
        let ctx = PortCtx {
            config: port.clone(),
            name: port_name(&port.path),
            partitions: log
                .topic(&port.topic)
                .map_or(1, |t| t.partitions.len() as u32)
                .max(1),
            log: log.clone(),
            delivered: delivered.clone(),
            stats: stats.clone(),
        };
        tasks.push(tokio::spawn(port::run(Arc::new(ctx))).abort_handle());
    }
    SerialHandle {
        stats,
        _tasks: AbortOnDrop(tasks),
    }
}

fn port_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Aborts tasks when dropped, so a port's helpers end with its connection.
pub(crate) struct AbortOnDrop(pub Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

//! Syslog ingest: RFC 5424 and RFC 3164 messages over UDP, TCP (RFC 6587
//! octet counting or newline framing) and a unix datagram socket.
//!
//! # What "accepted" means
//!
//! Syslog has no acknowledgement. A message counts as accepted once it is
//! read from the socket; it is durable after the next group commit of the
//! log (its append's fsync). A message still queued when the gateway is
//! killed or loses power is lost, and so is a UDP or unix datagram that
//! arrives while the queue is full or the topic is full under `reject_new`
//! (both counted): there is no way to push back on a datagram sender. TCP
//! senders are pushed back instead: a full queue stops reading their
//! connection.
//!
//! Every message is kept: parsed ones with their fields as headers,
//! malformed ones raw with a `syslog.parse_error` header; oversize ones are
//! cut at `max_message_bytes`, flagged `syslog.truncated` and counted.

pub mod config;
mod listen;
mod observe;
pub mod parse;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

pub use config::SyslogConfig;

use crate::ingest::serial::AbortOnDrop;
use crate::ingest::{Context, Running, Source, Starting};
use crate::log::{now_ms, AppendError, AppendTicket, Log, Partition, Record};

/// Most records, and payload bytes, in one append.
const BATCH_RECORDS: usize = 1024;
const BATCH_BYTES: usize = 512 << 10;
const TICKETS_IN_FLIGHT: usize = 16;

/// Counters for metrics and status.
#[derive(Debug, Default)]
pub struct SyslogStats {
    pub received_udp: AtomicU64,
    pub received_tcp: AtomicU64,
    pub received_unix: AtomicU64,
    pub parse_errors: AtomicU64,
    pub oversize: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_log_full: AtomicU64,
    pub refused_peers: AtomicU64,
    pub refused_connections: AtomicU64,
    pub connections_open: AtomicU64,
    pub records_appended: AtomicU64,
    /// Bytes of the records counted in `records_appended`.
    pub bytes_appended: AtomicU64,
    pub append_failures: AtomicU64,
    /// Bound addresses, for `/status`.
    pub listening: std::sync::Mutex<Vec<String>>,
    full_reported: AtomicBool,
}

/// How a message arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Unix,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Unix => "unix",
        }
    }
}

/// What the listeners share.
pub struct Shared {
    pub config: SyslogConfig,
    pub stats: Arc<SyslogStats>,
    pub peers: Vec<config::Cidr>,
    pub tx: mpsc::Sender<Record>,
}

impl Shared {
    /// Whether `peer` may send: any when no list is configured (the
    /// listener is then loopback only, see `validate`).
    pub fn allowed(&self, peer: SocketAddr) -> bool {
        self.peers.is_empty() || self.peers.iter().any(|c| c.contains(peer.ip()))
    }

    /// Counts one message read from `transport` and builds its record.
    pub fn record(&self, bytes: &[u8], cut: bool, transport: Transport, peer: &str) -> Record {
        let received = match transport {
            Transport::Udp => &self.stats.received_udp,
            Transport::Tcp => &self.stats.received_tcp,
            Transport::Unix => &self.stats.received_unix,
        };
        received.fetch_add(1, Ordering::Relaxed);
        if cut {
            self.stats.oversize.fetch_add(1, Ordering::Relaxed);
        }
        let record = to_record(bytes, cut, transport, peer);
        if record.headers.iter().any(|(n, _)| n == H_PARSE_ERROR) {
            self.stats.parse_errors.fetch_add(1, Ordering::Relaxed);
        }
        record
    }
}

pub const H_PARSE_ERROR: &str = "syslog.parse_error";

/// One record: key = host name (else the peer), value = the message text
/// (the whole input when malformed), the parsed fields as headers.
pub fn to_record(bytes: &[u8], cut: bool, transport: Transport, peer: &str) -> Record {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let mut headers: Vec<(String, Bytes)> = vec![
        (
            "syslog.transport".into(),
            Bytes::from_static(transport.name().as_bytes()),
        ),
        ("syslog.peer".into(), Bytes::from(peer.to_string())),
    ];
    let text = |s: &str| Bytes::from(s.to_string());
    let (key, value) = match parse::parse(bytes) {
        Ok(m) => {
            headers.push(("syslog.facility".into(), text(&m.facility.to_string())));
            headers.push(("syslog.severity".into(), text(&m.severity.to_string())));
            headers.push(("syslog.version".into(), text(&m.version.to_string())));
            let fields = [
                ("syslog.timestamp", m.timestamp),
                ("syslog.hostname", m.hostname),
                ("syslog.app_name", m.app_name),
                ("syslog.procid", m.procid),
                ("syslog.msgid", m.msgid),
                ("syslog.structured_data", m.structured_data),
            ];
            for (name, value) in fields {
                if let Some(v) = value {
                    headers.push((name.into(), text(v)));
                }
            }
            (
                m.hostname.unwrap_or(peer).to_string(),
                Bytes::copy_from_slice(m.msg),
            )
        }
        Err(reason) => {
            headers.push((H_PARSE_ERROR.into(), Bytes::from(reason)));
            (peer.to_string(), Bytes::copy_from_slice(bytes))
        }
    };
    if cut {
        headers.push(("syslog.truncated".into(), Bytes::from_static(b"true")));
    }
    Record {
        timestamp_ms: now_ms(),
        key: Some(Bytes::from(key)),
        value,
        headers,
    }
}

struct SyslogSource(SyslogConfig);

impl SyslogConfig {
    pub fn source(&self) -> Option<Box<dyn Source>> {
        self.enabled
            .then(|| Box::new(SyslogSource(self.clone())) as Box<dyn Source>)
    }
}

/// The running listeners; dropping it stops them (and removes the unix socket).
struct SyslogHandle {
    addresses: Vec<(&'static str, SocketAddr)>,
    unix: Option<std::path::PathBuf>,
    _tasks: AbortOnDrop,
}

impl Running for SyslogHandle {
    fn addresses(&self) -> Vec<(&'static str, SocketAddr)> {
        self.addresses.clone()
    }
}

impl Drop for SyslogHandle {
    fn drop(&mut self) {
        if let Some(path) = &self.unix {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Source for SyslogSource {
    fn name(&self) -> &'static str {
        "syslog"
    }

    fn start<'a>(self: Box<Self>, ctx: Context<'a>) -> Starting<'a> {
        Box::pin(async move {
            let stats = Arc::new(SyslogStats::default());
            ctx.registry.register(stats.clone());
            let (tx, rx) = mpsc::channel(self.0.queue_messages);
            let shared = Arc::new(Shared {
                peers: self.0.peers(),
                config: self.0.clone(),
                stats: stats.clone(),
                tx,
            });
            let (addresses, mut tasks) = listen::start(&shared).await?;
            let partitions = ctx
                .log
                .topic(&self.0.topic)
                .map_or(1, |t| t.partitions.len() as u32);
            let batcher = tokio::spawn(write_batches(
                rx,
                ctx.log,
                self.0.topic.clone(),
                partitions.max(1),
                stats,
            ));
            tasks.push(batcher.abort_handle());
            Ok(Box::new(SyslogHandle {
                addresses,
                unix: self.0.unix.clone(),
                _tasks: AbortOnDrop(tasks),
            }) as Box<dyn Running>)
        })
    }
}

/// Group commit: whatever queued while the previous append was written
/// goes into the next one.
async fn write_batches(
    mut rx: mpsc::Receiver<Record>,
    log: Arc<Log>,
    topic: String,
    partitions: u32,
    stats: Arc<SyslogStats>,
) {
    let (tickets, waiting) = mpsc::channel(TICKETS_IN_FLIGHT);
    tokio::spawn(await_tickets(waiting, stats.clone()));
    while let Some(first) = rx.recv().await {
        let mut bytes = first.payload_len();
        let mut batch = vec![first];
        while batch.len() < BATCH_RECORDS && bytes < BATCH_BYTES {
            let Ok(next) = rx.try_recv() else { break };
            bytes += next.payload_len();
            batch.push(next);
        }
        let mut by_partition: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
        for record in batch {
            let key = record.key.as_deref().unwrap_or_default();
            let p = if partitions == 1 {
                0
            } else {
                crc32c::crc32c(key) % partitions
            };
            by_partition.entry(p).or_default().push(record);
        }
        for (p, records) in by_partition {
            if let Some(ticket) = append(&log, &topic, Partition(p), records, &stats).await {
                let _ = tickets.send(ticket).await;
            }
        }
    }
}

async fn append(
    log: &Log,
    topic: &str,
    partition: Partition,
    mut records: Vec<Record>,
    stats: &SyslogStats,
) -> Option<(AppendTicket, u64, u64)> {
    let count = records.len() as u64;
    let bytes: u64 = records.iter().map(|r| r.payload_len() as u64).sum();
    loop {
        match log.try_append(topic, partition, records) {
            Ok(ticket) => return Some((ticket, count, bytes)),
            Err((AppendError::Overloaded, back)) => {
                records = back;
                log.capacity().await;
            }
            Err((AppendError::QuotaExceeded { .. }, _)) => {
                stats.dropped_log_full.fetch_add(count, Ordering::Relaxed);
                if !stats.full_reported.swap(true, Ordering::Relaxed) {
                    tracing::warn!(topic, "syslog: topic full under reject_new: dropping messages (counted in tidewell_syslog_dropped_log_full_total)");
                }
                return None;
            }
            Err((e, _)) => {
                stats.append_failures.fetch_add(count, Ordering::Relaxed);
                tracing::warn!(topic, "syslog: {count} messages lost, append refused: {e}");
                return None;
            }
        }
    }
}

async fn await_tickets(mut rx: mpsc::Receiver<(AppendTicket, u64, u64)>, stats: Arc<SyslogStats>) {
    while let Some((ticket, count, bytes)) = rx.recv().await {
        match ticket.await {
            Ok(_) => {
                stats.full_reported.store(false, Ordering::Relaxed);
                stats.records_appended.fetch_add(count, Ordering::Relaxed);
                stats.bytes_appended.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(AppendError::QuotaExceeded { topic, .. }) => {
                stats.dropped_log_full.fetch_add(count, Ordering::Relaxed);
                if !stats.full_reported.swap(true, Ordering::Relaxed) {
                    tracing::warn!(topic, "syslog: topic full under reject_new: dropping messages (counted in tidewell_syslog_dropped_log_full_total)");
                }
            }
            Err(e) => {
                stats.append_failures.fetch_add(count, Ordering::Relaxed);
                tracing::warn!("syslog: {count} messages not durable: {e}");
            }
        }
    }
}

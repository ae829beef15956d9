//! Replication upstream: each local partition is mirrored, in order, to a
//! topic on a central Kafka cluster whenever the uplink is there.
//!
//! # Shape
//!
//! One thread (`replicate`) owns every stream (one per mirrored local
//! partition) and one librdkafka idempotent producer (`acks=all`,
//! `enable.idempotence=true`). librdkafka's own thread reports each
//! delivery through a channel, and so does the log when new records become
//! readable ([`Log::appended_after`]); the replicator thread sleeps on that
//! channel, so it neither polls the log nor wakes on a timer when there is
//! nothing to do (only for what is due: a session retry, a checkpoint of
//! moved cursors, a status refresh after a change, a capped backlog). It
//! needs nothing from the log but [`Log::read`], [`Log::offsets`],
//! [`Log::appended_after`] and [`Log::set_replicated`]. The status lives in
//! memory and is served on `/status` (and so by `tidewell status`); nothing
//! is written to the SD card on a timer.
//!
//! ```text
//!  log ──read──► stream (per local partition) ──send──► librdkafka ──► cluster
//!   ▲                 │  slots: sent / acked, in offset order      │
//!   └─set_replicated──┘◄──────────── delivery reports ─────────────┘
//! ```
//!
//! # The cursor
//!
//! A stream sends from its cursor and remembers every sent offset. The
//! cursor moves only over a contiguous prefix of acknowledged records, and
//! is persisted (the partition's checkpoint file, atomically) every
//! `checkpoint_interval_ms` and at a clean stop. Retention deletes a segment
//! only once it lies wholly below the persisted cursor, unless the quota
//! forces `drop_oldest`: the log then records the dropped range as a gap,
//! and the stream, finding the log starting after its cursor, counts the
//! records (`gap_records`) and logs a warning. Damaged local data (the log
//! says where readable data resumes) is counted as `corrupt_records` and
//! logged as an error; nothing else is ever skipped.
//!
//! The in-flight window is bounded (`max_in_flight_records` per partition,
//! `max_in_flight_bytes` overall) and librdkafka's queue is capped just
//! above it: the log is the buffer, so memory does not grow with an outage.
//!
//! # Ordering
//!
//! Records of one local partition go to the remote partition of the same
//! number (`partitioning = "same"`) or to `murmur2(key) % partitions`, Kafka's
//! default partitioner (`partitioning = "key"`, keyless records use the local
//! partition number). Either way one remote partition receives one local
//! partition's records in local offset order: the idempotent producer keeps
//! the order across its own retries. `priority = "live_first"` changes which
//! *partitions* are served first (the smallest backlog first, so partitions
//! that are caught up carry live data with no delay while others drain); it
//! never reorders records inside a partition, because a remote partition must
//! see one local partition's records in order. Keep live and backlog
//! separable by giving devices their own local partitions (MQTT routing
//! keys); a shared remote topic with `partitioning = "key"` still keeps each
//! device's records in order.
//!
//! # Headers, and deduplication downstream
//!
//! Every upstream record carries the headers `tidewell.gateway_id`,
//! `tidewell.topic` (local topic), `tidewell.partition` and
//! `tidewell.offset` (decimal text), followed by the ingest headers as they
//! are in the log (`mqtt.topic`, `mqtt.client_id`, `mqtt.qos`,
//! `mqtt.user.*`, `device.id`, `device.boot_epoch`, `device.seq`, ...). The
//! record key, value and timestamp (arrival time, `CreateTime`) are the
//! log's. `(gateway_id, topic, partition, offset)` identifies a record
//! uniquely and for ever: a consumer that must never see a duplicate keeps,
//! per `(gateway_id, topic, partition)`, the highest offset it has processed
//! and drops any record at or below it.
//!
//! # Duplicates, and the window that remains
//!
//! - Retries inside a session: none (idempotent producer).
//! - A failed session (fatal idempotence error such as an unknown producer
//!   id or fencing, authorization, a missing topic, a record timing out after
//!   `message_timeout_ms`): the producer is dropped and its queue purged;
//!   after a backoff a new producer is made and every stream resumes from
//!   its cursor. Records acknowledged past the cursor are remembered and not
//!   sent again, and before the first send the new session reads the tail
//!   of every remote partition it writes to, backwards from its end in
//!   growing chunks until it reaches this gateway's records below the cursor
//!   (at most `dedupe_tail_records` records), and skips records whose
//!   `tidewell.*` headers are already there. The read is as short as what
//!   was acknowledged since the last checkpoint, however long the remote
//!   partition is.
//!   Nothing is ever skipped without proof that it is upstream. One cost:
//!   when librdkafka fails record N (message timeout) after it delivered
//!   N+1, N is sent again in the next session and lands after N+1 in its
//!   remote partition; consumers that need strict order sort by
//!   `tidewell.offset`. With `message_timeout_ms = 0` librdkafka never
//!   gives up on a record and this cannot happen.
//! - A crash or power cut: at start-up the cursor is the persisted one (up
//!   to `checkpoint_interval_ms` old); the same tail read finds the records
//!   that were acknowledged after it, or were written but not yet
//!   acknowledged, so they are not sent again.
//!
//! - A cut link: a request of a failed session must not reach the broker
//!   after the next session read the remote tail. A TCP socket closed the
//!   ordinary way leaves its unsent bytes with the kernel, which delivers
//!   them when the link returns (one partition run delivered 2,000
//!   duplicates that way). So every broker connection is made to reset on
//!   close (`SO_LINGER` 0: unsent bytes are dropped; see `reset`), once a
//!   second while records are in flight and again at teardown, and the
//!   next session reads the tails only after the failed session's client
//!   is destroyed, that is after all its connections are closed. The same
//!   holds when the process dies: the kernel closes its sockets, and they
//!   reset too.
//!
//! The window that remains, exactly: (1) a produce request sent on a
//! connection younger than a second (not yet made to reset) when its
//! session failed or the gateway died, which then reaches the broker after
//! the next session's tail read; (2) a request the broker had fully
//! received before the reset but appends only after that tail read (it has
//! at least the retry backoff, or a restart, to do so); and (3) records of
//! this gateway that lie more than `dedupe_tail_records` records deep in
//! their remote partition when the tail is read (possible only when other
//! producers share the remote partition, or when more than that many
//! records were acknowledged within one checkpoint interval). All produce
//! duplicates, never loss; consumers that need exactly once deduplicate
//! with the headers above. Measured: 20 cuts of the link mid-drain in a row
//! (`TIDEWELL_NETNS_CUTS=20 cargo test -p tidewell --test replicate_netns
//! cut_link`), each record once, in order.
//!
//! # Connectivity
//!
//! librdkafka detects dead connections: no answer within
//! `request_timeout_ms` closes the connection (half-open TCP included;
//! keep-alive is on) and it reconnects with exponential backoff and jitter
//! between `backoff_initial_ms` and `backoff_max_ms`. Records wait in the
//! log meanwhile; status shows `disconnected` since when, with the error.
//! Records that stay unacknowledged for `message_timeout_ms` fail the
//! session, which is rebuilt after our own backoff (same bounds, "equal
//! jitter"); errors that waiting will not fix (authorization, missing topic,
//! too few partitions) are logged as errors, counted, shown in status, and
//! retried no faster than `slow_retry_ms`. When the link returns the backlog
//! drains at full speed (or at `bandwidth_bytes_per_s`) while new records
//! are appended behind it.
//!
//! The cap is in bytes on the wire, as a metered link bills them: the
//! kernel's count of what the broker connections sent (`wire`: TCP_INFO's
//! `bytes_sent`, compressed, framed, every request and TLS included). A
//! record is charged an estimate when it is handed to librdkafka (its size
//! times the wire bytes per record byte seen so far), and every count of
//! the wire (four a second under a cap) replaces the estimates with what was
//! sent (`send::Bucket`), so over a few counts the cap holds exactly; what
//! the count misses is what a socket sent in its last quarter second before
//! it closed. Measured against a counting proxy in front of the broker
//! (`tidewell bench wire`): within 0.1%.

pub mod client;
pub mod config;
pub mod error;
pub mod observe;
mod reset;
mod runner;
mod send;
pub mod shape;
pub mod status;
pub mod stream;
pub mod tail;
mod wire;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

pub use config::{remote_topic, MirrorRule, Partitioning, Priority, UpstreamConfig};
pub use error::UpstreamError;
pub use status::{Status, UpstreamState};

use crate::log::{now_ms, Log};
use client::Event;
use runner::Runner;
use stream::Stream;

/// The running replicator. [`Replicator::stop`] stops it cleanly (cursors
/// persisted); dropping it does the same.
pub struct Replicator {
    stop: Arc<AtomicBool>,
    tx: Sender<Event>,
    thread: Option<JoinHandle<()>>,
    status: Arc<Mutex<Option<Status>>>,
}

impl Replicator {
    /// Starts replicating every partition of the mirrored topics.
    pub fn start(
        log: Arc<Log>,
        config: UpstreamConfig,
        gateway_id: &str,
    ) -> Result<Replicator, UpstreamError> {
        let streams = streams(&log, &config, gateway_id)?;
        status::remove_old_file(log.dir());
        if streams.is_empty() {
            return Err(UpstreamError::Config("no local topic to mirror".into()));
        }
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(None));
        let runner = Runner {
            window: send::Window {
                max_records: config.max_in_flight_records,
                max_bytes: config.max_in_flight_bytes,
                bytes: 0,
            },
            bucket: config.bandwidth_bytes_per_s.map(send::Bucket::new),
            log,
            gateway_id: gateway_id.to_string(),
            streams,
            tx: tx.clone(),
            rx,
            stop: stop.clone(),
            shared_status: status.clone(),
            producer: None,
            session: 0,
            failures: 0,
            retry_at: Instant::now(),
            upstream: status::UpstreamStatus::new(now_ms()),
            last_checkpoint: Instant::now(),
            last_status: Instant::now(),
            next_first: 0,
            #[cfg(feature = "test-hooks")]
            fatal_after_acks: fault_fatal_after_acks(),
            session_acks: 0,
            brokers: reset::bootstrap_addrs(&config.bootstrap_servers),
            reaping: Vec::new(),
            next_reset_scan: Instant::now(),
            meter: wire::WireMeter::default(),
            next_wire_sample: Instant::now(),
            wire_pending: false,
            status_dirty: true,
            appended: std::task::Waker::from(Arc::new(runner::AppendedWaker(tx.clone()))),
            config,
        };
        let thread = std::thread::Builder::new()
            .name("replicate".into())
            .spawn(move || runner.run())
            .map_err(|e| UpstreamError::Client(format!("starting the replicator thread: {e}")))?;
        Ok(Replicator {
            stop,
            tx,
            thread: Some(thread),
            status,
        })
    }

    /// The latest status (refreshed at most once a second, after a change).
    pub fn status(&self) -> Option<Status> {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The replicator's source of metrics and status for the HTTP endpoint.
    pub fn observer(&self) -> observe::Observer {
        observe::Observer {
            status: self.status.clone(),
        }
    }

    /// Rebuilds the session with new credentials or certificates (a reload).
    pub fn reload_security(&self, security: config::Security) {
        let _ = self.tx.send(Event::Reload(Box::new(security)));
    }

    /// Stops after a short drain of in-flight records; persists the cursors.
    pub fn stop(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.tx.send(Event::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// `TIDEWELL_FAULT_FATAL_AFTER_ACKS=N`: every upstream session raises a
/// fatal producer error after its Nth acknowledgement. For the tests and the
/// fault campaign; only in builds with the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
fn fault_fatal_after_acks() -> Option<u64> {
    let n = std::env::var("TIDEWELL_FAULT_FATAL_AFTER_ACKS").ok()?;
    match n.parse::<u64>() {
        Ok(n) if n > 0 => {
            tracing::warn!("fault injection on: a fatal producer error after {n} acks a session");
            Some(n)
        }
        _ => None,
    }
}

/// One stream per partition of every mirrored topic (every topic when no
/// rule is given), starting at the persisted cursor.
fn streams(
    log: &Log,
    config: &UpstreamConfig,
    gateway_id: &str,
) -> Result<Vec<Stream>, UpstreamError> {
    let rules: Vec<MirrorRule> = if config.mirror.is_empty() {
        log.topics()
            .map(|t| MirrorRule::default_for(&t.name))
            .collect()
    } else {
        config.mirror.clone()
    };
    let mut out = Vec::new();
    for rule in &rules {
        let topic = log.topic(&rule.local).ok_or_else(|| {
            UpstreamError::Config(format!("mirror of unknown local topic {:?}", rule.local))
        })?;
        let remote = remote_topic(&rule.remote, gateway_id, &rule.local);
        if !crate::log::config::valid_topic_name(&remote) {
            return Err(UpstreamError::Config(format!(
                "remote topic {remote:?} is not a valid Kafka topic name"
            )));
        }
        let shape = Arc::new(rule.shape());
        for part in &topic.partitions {
            let cursor = log
                .summary(&rule.local, part.id)
                .and_then(|s| s.replicated)
                .map_or(0, |o| o.0);
            let mut s = Stream::new(out.len() as u32, &rule.local, part.id, cursor);
            s.remote_topic = remote.clone();
            s.partitioning = rule.partitioning;
            s.shape = shape.clone();
            out.push(s);
        }
    }
    Ok(out)
}

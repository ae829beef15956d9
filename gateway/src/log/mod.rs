//! The segment log: Tidewell's power-loss-safe buffer.
//!
//! Everything the gateway ingests is appended here; the replicator reads it
//! back. The log knows nothing of MQTT, serial lines, Kafka or async runtimes:
//! ingest paths call [`Log::append`] and await (or block on) the returned
//! [`AppendTicket`], which resolves once the records are durable.
//!
//! # Layout on disk
//!
//! ```text
//! DATA_DIR/.lock                          exclusive lock of the one writer process
//! DATA_DIR/TOPIC/topic.ckpt               checkpoint: {"partitions": N}
//! DATA_DIR/TOPIC/P/00000000000000000000.log     segment: record batches
//! DATA_DIR/TOPIC/P/00000000000000000000.index   sparse offset index of that segment
//! DATA_DIR/TOPIC/P/partition.ckpt         checkpoint: start offset, replication cursor, gaps
//! ```
//!
//! Segment files are named by their base offset (the first offset they hold),
//! zero-padded to 20 digits, as Kafka does. Offsets are dense per partition.
//!
//! # Record batch (all integers little-endian)
//!
//! ```text
//! 0   u64  base_offset        offset of the first record
//! 8   u32  length             bytes that follow this field (batch size - 12)
//! 12  u32  crc                CRC32C of every batch byte except these four
//! 16  u8   magic              1
//! 17  u8   attributes         compression of the record section: 0 none, 1 lz4 (block), 2 zstd
//! 18  u32  record_count       >= 1
//! 22  i64  base_timestamp_ms  smallest record timestamp
//! 30  i64  max_timestamp_ms   largest record timestamp (age-based retention)
//! 38  u32  records_len        size of the record section once decompressed
//! 42  ...  record section, possibly compressed
//! ```
//!
//! Each record in the (decompressed) section, as in Kafka's batch v2:
//! `varint length` (of the rest), `varint offset_delta` (= its index in the
//! batch), `zigzag varint timestamp_delta` (from base_timestamp),
//! `varint key_len + 1` (0 = no key) and the key, `varint value_len` and the
//! value, `varint header_count`, then per header `varint name_len`, the
//! UTF-8 name, `varint value_len`, the value. A 100-byte value without key or
//! headers costs 6 bytes of record framing plus its share of the 42-byte
//! header: under 7 bytes per record in a batch of 100.
//!
//! Lengths are range-checked before anything is allocated: a batch is at most
//! 16 MiB on disk and decompressed, and a record count must fit its section.
//!
//! # Index
//!
//! `.index` is an array of 8-byte entries `u32 relative_offset, u32 position`:
//! the batch at byte `position` starts with offset `base + relative_offset`.
//! One entry per `index_interval_bytes` (8 KiB) of log, strictly increasing.
//! The index is a cache of the log: it is written without fsync while the
//! segment is active, fsynced when the segment is rolled and at a clean stop,
//! and at open it is trusted only up to its last entry that points at a good
//! batch with the offset it claims. A missing or damaged index is rebuilt.
//!
//! # What "acknowledged" means, and the fsyncs behind it
//!
//! One writer thread does all writes (group commit). It takes every queued
//! append, writes one batch per partition at the end of its active segment,
//! then, for topics with `fsync = "always"` (the default), calls `fdatasync`
//! once per written segment, and only then resolves the tickets and moves the
//! partition's visible end, so readers never see a record before it is
//! durable. An acknowledged record is therefore on the disk.
//!
//! - `interval_ms = N`: tickets resolve after the write; the fsync follows
//!   within N ms, and only then do readers see the records. A power cut loses
//!   at most the last N ms of acknowledged records (a process crash loses none:
//!   the page cache survives it).
//! - `never`: no fsync at all; for tests and benchmarks.
//!
//! Other fsyncs: a segment's log and index are fsynced before a new segment is
//! created; every create, rename and delete is followed by an fsync of the
//! directory; checkpoints are written as temp file, fsync, rename, fsync of the
//! directory (see `checkpoint.rs`). A failed write or fsync poisons the log:
//! the failing group and every later append get an error; the fsync is never
//! retried (after a failed fsync the page cache may already have dropped the
//! data, so a retry could "succeed" without it).
//!
//! # Recovery at open
//!
//! For every segment, the index is trusted up to its last good entry and the
//! segment is scanned (CRC-checking every batch) from there to its end, so
//! opening only reads the tail of each segment and a 1 GB log opens in
//! milliseconds. What the scan can find:
//!
//! - A torn tail: bytes after the last good batch with no good batch after
//!   them. In the newest segment this is the unsynced end of the last write
//!   before a crash: it is truncated, fsynced and logged with its position and
//!   size. No acknowledged record can be in it.
//! - Anything else (a bad batch with good batches after it, a damaged tail in
//!   an older segment, a segment that ends before the next one starts) is
//!   corruption: it is never truncated or skipped silently. It is reported
//!   with file and byte position; reads of the damaged offsets fail with
//!   [`ReadError::Corrupt`], which names the first readable offset after it,
//!   and the data around it stays readable. `tidewell log verify` scans every
//!   batch of every segment.
//!
//! # Retention
//!
//! Whole segments are deleted, never the active one: by age (`retention_ms`,
//! only once replicated when replication is on) and by quota
//! (`retention_bytes` per topic, and `min_free_bytes` for the filesystem).
//! Replicated segments go first; unreplicated data is dropped only under
//! `when_full = "drop_oldest"`, which records the dropped range as a gap;
//! under `reject_new` appends are refused with [`AppendError::QuotaExceeded`].

pub mod batch;
mod capacity;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod faulty;
pub mod partition;
pub mod recovery;
mod retention;
pub mod segment;
pub mod sim;
pub mod stats;
pub mod storage;
mod summary;
mod syncer;
pub mod ticket;
pub mod types;
mod varint;
pub mod verify;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

pub use capacity::Capacity;
pub use config::{FsyncPolicy, LogConfig, TopicConfig, WhenFull, DEFAULT_TOPIC};
pub use error::{AppendError, CheckpointError, OpenError, ReadError, StorageError};
pub use partition::{Finding, Mode, PartitionLog, PartitionMeta};
pub use stats::Stats;
pub use summary::{Backlog, PartitionSummary, TopicSummary};
pub use storage::{OsStorage, Storage};
pub use ticket::{AppendTicket, Appended};
pub use types::{Compression, Offset, Partition, Record, SegmentBase, StoredRecord};

use error::StorageContext;
use writer::{Msg, Request, Writer};

const TOPIC_FILE: &str = "topic.ckpt";
const LOCK_FILE: &str = ".lock";
/// Largest payload of one append: it must fit one on-disk batch.
pub const MAX_APPEND_BYTES: usize = batch::MAX_BATCH_BYTES / 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TopicMeta {
    partitions: u32,
}

/// A topic and its partitions.
pub struct TopicLog {
    pub name: String,
    pub config: TopicConfig,
    pub partitions: Vec<Arc<PartitionLog>>,
    /// Records and payload bytes appended since start (for metrics).
    pub appended_records: AtomicU64,
    pub appended_bytes: AtomicU64,
}

/// What the writer thread and the handles share.
pub(crate) struct Shared {
    pub config: LogConfig,
    pub storage: Arc<dyn Storage>,
    pub topics: BTreeMap<String, Arc<TopicLog>>,
    pub stats: Stats,
    /// Bytes queued for the writer and not yet taken.
    pub pending_bytes: AtomicU64,
    /// Sources waiting for `pending_bytes` to fall below the limit.
    pub capacity: capacity::Waiters,
    /// Set when the writer has stopped (appends fail with `Closed`).
    pub writer_stopped: std::sync::atomic::AtomicBool,
    poisoned: Mutex<Option<String>>,
}

impl Shared {
    fn new(
        config: LogConfig,
        storage: Arc<dyn Storage>,
        topics: BTreeMap<String, Arc<TopicLog>>,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            config,
            storage,
            topics,
            stats: Stats::default(),
            pending_bytes: AtomicU64::new(0),
            capacity: capacity::Waiters::default(),
            writer_stopped: std::sync::atomic::AtomicBool::new(false),
            poisoned: Mutex::new(None),
        })
    }

    /// Whether an append would not be refused as `Overloaded` now (or would
    /// fail for a reason waiting cannot cure).
    fn has_room(&self) -> bool {
        self.pending_bytes.load(Ordering::Acquire) < self.config.max_pending_bytes
            || self.writer_stopped.load(Ordering::Acquire)
            || self.poison_reason().is_some()
    }

    fn poison(&self, reason: String) {
        let mut p = self.poisoned.lock().unwrap_or_else(PoisonError::into_inner);
        p.get_or_insert(reason);
        drop(p);
        self.capacity.wake_all();
    }

    fn poison_reason(&self) -> Option<String> {
        self.poisoned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

pub struct Log {
    shared: Arc<Shared>,
    tx: Option<Sender<Msg>>,
    writer: Option<JoinHandle<()>>,
    findings: Vec<Finding>,
    /// Held for the life of a read-write log.
    _lock: Option<storage::DirLock>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Log {
    /// Opens (creating, recovering) the log in `config.dir` for writing, with
    /// the configured topics plus any topic found on disk.
    pub fn open(storage: Arc<dyn Storage>, config: LogConfig) -> Result<Log, OpenError> {
        storage.create_dir_all(&config.dir).context(&config.dir)?;
        let lock = storage.lock_dir(&config.dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => OpenError::Locked {
                path: config.dir.join(LOCK_FILE),
            },
            _ => OpenError::Storage(StorageError {
                path: config.dir.join(LOCK_FILE),
                source: e,
            }),
        })?;
        let mut findings = Vec::new();
        let topics = open_topics(&storage, &config, Mode::ReadWrite, &mut findings)?;
        report(&findings);
        let (tx, rx) = mpsc::channel();
        let shared = Shared::new(config, storage, topics);
        let writer = Writer::new(rx, shared.clone());
        let handle = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer.run())
            .map_err(OpenError::Thread)?;
        Ok(Log {
            shared,
            tx: Some(tx),
            writer: Some(handle),
            findings,
            _lock: Some(lock),
        })
    }

    /// Opens the log in `dir` without changing anything on disk (no lock, no
    /// truncation, no index rebuild), for inspection while a gateway may run.
    pub fn open_read_only(storage: Arc<dyn Storage>, dir: &Path) -> Result<Log, OpenError> {
        let config = LogConfig::new(dir);
        let mut findings = Vec::new();
        let topics = open_topics(&storage, &config, Mode::ReadOnly, &mut findings)?;
        let shared = Shared::new(config, storage, topics);
        Ok(Log {
            shared,
            tx: None,
            writer: None,
            findings,
            _lock: None,
        })
    }

    /// What recovery found and did at open.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    pub fn dir(&self) -> &Path {
        &self.shared.config.dir
    }

    pub fn topics(&self) -> impl Iterator<Item = &Arc<TopicLog>> {
        self.shared.topics.values()
    }

    pub fn topic(&self, name: &str) -> Option<&Arc<TopicLog>> {
        self.shared.topics.get(name)
    }

    pub fn partition(&self, topic: &str, partition: Partition) -> Option<&Arc<PartitionLog>> {
        self.topic(topic)?.partitions.get(partition.0 as usize)
    }

    /// Queues `records` for `topic`/`partition`; the ticket resolves with their
    /// offsets once they are durable (per the topic's fsync policy).
    pub fn append(
        &self,
        topic: &str,
        partition: Partition,
        records: Vec<Record>,
    ) -> Result<AppendTicket, AppendError> {
        self.try_append(topic, partition, records)
            .map_err(|refused| refused.0)
    }

    /// [`Log::append`], handing the records back when it refuses them, so a
    /// caller can await [`Log::capacity`] after `Overloaded` and retry
    /// without having copied them.
    pub fn try_append(
        &self,
        topic: &str,
        partition: Partition,
        records: Vec<Record>,
    ) -> Result<AppendTicket, (AppendError, Vec<Record>)> {
        let (topic_log, part, bytes) = match self.check_append(topic, partition, &records) {
            Ok(checked) => checked,
            Err(e) => return Err((e, records)),
        };
        let pending = self
            .shared
            .pending_bytes
            .fetch_add(bytes as u64, Ordering::AcqRel);
        if pending > self.shared.config.max_pending_bytes {
            self.shared
                .pending_bytes
                .fetch_sub(bytes as u64, Ordering::AcqRel);
            return Err((AppendError::Overloaded, records));
        }
        let (ticket, done) = ticket::pair();
        let request = Request {
            topic: topic_log.clone(),
            part: part.clone(),
            records,
            bytes,
            done,
        };
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| (AppendError::Closed, Vec::new()))?;
        tx.send(Msg::Append(request))
            .map_err(|unsent| match unsent.0 {
                Msg::Append(request) => (AppendError::Closed, request.records),
                _ => (AppendError::Closed, Vec::new()),
            })?;
        Ok(ticket)
    }

    /// Why `records` cannot be appended to `topic`/`partition`, or where
    /// they go and their accounted size.
    fn check_append(
        &self,
        topic: &str,
        partition: Partition,
        records: &[Record],
    ) -> Result<(&Arc<TopicLog>, &Arc<PartitionLog>, usize), AppendError> {
        if self.tx.is_none() {
            return Err(AppendError::Closed);
        }
        if let Some(reason) = self.shared.poison_reason() {
            return Err(AppendError::Poisoned(reason));
        }
        let topic_log = self
            .topic(topic)
            .ok_or_else(|| AppendError::UnknownTopic(topic.to_string()))?;
        let part = topic_log
            .partitions
            .get(partition.0 as usize)
            .ok_or_else(|| AppendError::UnknownPartition {
                topic: topic.to_string(),
                partition,
            })?;
        if records.is_empty() {
            return Err(AppendError::Empty);
        }
        let bytes: usize = records.iter().map(|r| r.payload_len() + 16).sum();
        if bytes > MAX_APPEND_BYTES {
            return Err(AppendError::TooLarge(format!(
                "{bytes} bytes in one append, at most {MAX_APPEND_BYTES}"
            )));
        }
        Ok((topic_log, part, bytes))
    }

    /// Resolves once an append would find room in the writer's queue; await
    /// it after [`AppendError::Overloaded`] instead of retrying on a timer.
    pub fn capacity(&self) -> Capacity {
        Capacity {
            shared: self.shared.clone(),
        }
    }

    /// Reads durable records of a partition from `from` on (about `max_bytes`).
    pub fn read(
        &self,
        topic: &str,
        partition: Partition,
        from: Offset,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, ReadError> {
        let part = self
            .partition(topic, partition)
            .ok_or_else(|| match self.topic(topic) {
                None => ReadError::UnknownTopic(topic.to_string()),
                Some(_) => ReadError::UnknownPartition {
                    topic: topic.to_string(),
                    partition,
                },
            })?;
        part.read(from, max_bytes)
    }

    /// First kept offset and end (exclusive) of the durable records.
    pub fn offsets(&self, topic: &str, partition: Partition) -> Option<(Offset, Offset)> {
        let state = self.partition(topic, partition)?.state();
        Some((state.start_offset(), state.visible_end))
    }

    /// Records that every offset below `offset` is acknowledged upstream, and
    /// persists it. Retention then may delete those segments.
    pub fn set_replicated(
        &self,
        topic: &str,
        partition: Partition,
        offset: Offset,
    ) -> Result<(), CheckpointError> {
        let Some(part) = self.partition(topic, partition) else {
            return Ok(());
        };
        part.update_meta(|meta| {
            let advances = meta.replicated.is_none_or(|r| r < offset.0);
            if advances {
                meta.replicated = Some(offset.0);
            }
            advances
        })
    }

    /// Runs age and quota retention now rather than at the writer's next tick.
    pub fn enforce_retention(&self) -> Result<(), AppendError> {
        let tx = self.tx.as_ref().ok_or(AppendError::Closed)?;
        let (ticket, done) = ticket::pair();
        tx.send(Msg::Retention(done))
            .map_err(|_| AppendError::Closed)?;
        ticket.wait().map(|_| ())
    }

    /// Why the log refuses writes, if it does.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.poison_reason()
    }

    /// Stops the writer after it has written and synced everything queued.
    pub fn close(mut self) {
        self.stop_writer();
    }

    fn stop_writer(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::Shutdown);
        }
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.stop_writer();
    }
}

fn report(findings: &[Finding]) {
    for finding in findings {
        if finding.is_damage() {
            tracing::error!("log recovery: {finding:?}");
        } else {
            tracing::warn!("log recovery: {finding:?}");
        }
    }
}

fn open_topics(
    storage: &Arc<dyn Storage>,
    config: &LogConfig,
    mode: Mode,
    findings: &mut Vec<Finding>,
) -> Result<BTreeMap<String, Arc<TopicLog>>, OpenError> {
    let mut wanted = config.topics.clone();
    for (name, partitions) in topics_on_disk(&**storage, &config.dir)? {
        let topic = wanted.entry(name.clone()).or_insert_with(|| TopicConfig {
            partitions,
            ..TopicConfig::default()
        });
        if topic.partitions != partitions {
            return Err(OpenError::PartitionCountChanged {
                topic: name,
                on_disk: partitions,
                configured: topic.partitions,
            });
        }
    }
    let mut topics = BTreeMap::new();
    for (name, topic_config) in wanted {
        let topic = open_topic(storage, config, &name, topic_config, mode, findings)?;
        topics.insert(name, Arc::new(topic));
    }
    Ok(topics)
}

/// Topics already in a log directory, with their partition counts (empty
/// when there is no log there, or it cannot be read).
pub fn topic_partitions_on_disk(dir: &Path) -> Vec<(String, u32)> {
    topics_on_disk(&OsStorage, dir).unwrap_or_default()
}

/// Topics already in `dir`, with their partition counts.
fn topics_on_disk(storage: &dyn Storage, dir: &Path) -> Result<Vec<(String, u32)>, OpenError> {
    if !storage.is_dir(dir) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for name in storage.list_dir(dir).context(dir)? {
        let meta_path = dir.join(&name).join(TOPIC_FILE);
        if config::valid_topic_name(&name) && storage.exists(&meta_path) {
            let meta: Option<TopicMeta> = checkpoint::read(storage, &meta_path)?;
            if let Some(meta) = meta {
                out.push((name, meta.partitions));
            }
        }
    }
    Ok(out)
}

fn open_topic(
    storage: &Arc<dyn Storage>,
    config: &LogConfig,
    name: &str,
    topic_config: TopicConfig,
    mode: Mode,
    findings: &mut Vec<Finding>,
) -> Result<TopicLog, OpenError> {
    if !config::valid_topic_name(name) {
        return Err(OpenError::BadTopicName(name.to_string()));
    }
    if topic_config.partitions == 0 {
        return Err(OpenError::NoPartitions(name.to_string()));
    }
    let dir: PathBuf = config.dir.join(name);
    if mode == Mode::ReadWrite && !storage.exists(&dir.join(TOPIC_FILE)) {
        storage.create_dir_all(&dir).context(&dir)?;
        storage.sync_dir(&config.dir).context(&config.dir)?;
        checkpoint::write(
            &**storage,
            &dir,
            TOPIC_FILE,
            &TopicMeta {
                partitions: topic_config.partitions,
            },
        )?;
    }
    let mut partitions = Vec::with_capacity(topic_config.partitions as usize);
    for p in 0..topic_config.partitions {
        let pdir = dir.join(p.to_string());
        let part = PartitionLog::open(
            storage.clone(),
            pdir,
            name,
            Partition(p),
            partition::Sizes {
                index_interval_bytes: config.index_interval_bytes,
                preallocate_bytes: topic_config.segment_bytes(),
            },
            mode,
            findings,
        )?;
        partitions.push(Arc::new(part));
    }
    if mode == Mode::ReadWrite {
        storage.sync_dir(&dir).context(&dir)?;
    }
    Ok(TopicLog {
        name: name.to_string(),
        config: topic_config,
        partitions,
        appended_records: AtomicU64::new(0),
        appended_bytes: AtomicU64::new(0),
    })
}

#[cfg(test)]
mod tests;

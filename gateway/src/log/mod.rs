//! The segment log: Tidewell's power-loss-safe buffer.
//!
//! Everything the gateway ingests is appended here; the replicator reads it
//! back. The log knows nothing of MQTT, serial lines, Kafka or async runtimes:
//! ingest paths call [`Log::append`] and await (or block on) the returned
//! [`AppendTicket`], which resolves once the records are durable under the
//! topic's fsync policy.
//!
//! Every integer on disk is little-endian. CRC32C is the Castagnoli CRC (the
//! `crc32c` crate). "fdatasync" is `StorageFile::sync_data`.
//!
//! # Layout on disk
//!
//! ```text
//! DATA_DIR/.lock                  flock held by the one writing process
//! DATA_DIR/TOPIC/topic.ckpt       checkpoint: partition count
//! DATA_DIR/TOPIC/P/partition.ckpt checkpoint: start, cursor, gaps, R
//! DATA_DIR/TOPIC/P/BASE.log       segment: record batches
//! DATA_DIR/TOPIC/P/BASE.index     sparse offset index of that segment
//! ```
//!
//! `P` is the partition number in decimal. `BASE` is the segment's base
//! offset (its first offset), zero-padded to exactly 20 digits as Kafka does
//! (`00000000000000000000.log`). Open removes leftover `*.tmp` files of an
//! interrupted checkpoint write in partition directories and reports any
//! other unknown file (`Finding::StrayFile`), leaving it alone. The partition
//! count in `topic.ckpt` is fixed: a different configured count is refused
//! (`OpenError::PartitionCountChanged`).
//!
//! # Record batch
//!
//! ```text
//! 0   u64  base_offset        offset of the first record
//! 8   u32  length             bytes after this field (batch size - 12)
//! 12  u32  crc                CRC32C of bytes 0..12, then 16..end
//! 16  u8   magic              1
//! 17  u8   attributes         codec of the record section: 0 none,
//!                             1 LZ4 block, 2 zstd; any other value rejected
//! 18  u32  record_count       >= 1
//! 22  i64  base_timestamp_ms  smallest record timestamp
//! 30  i64  max_timestamp_ms   largest record timestamp (age retention)
//! 38  u32  records_len        record section size once decompressed
//! 42  ...  record section: length - 30 bytes, possibly compressed
//! ```
//!
//! LZ4 is the raw block format (`lz4_flex::block`: no frame, no size
//! prefix); zstd is one frame (level 3). Decompression must yield exactly
//! `records_len` bytes. `BatchHeader::parse` range-checks the header before
//! the body is read or anything is allocated: 42 <= batch size <= 16 MiB
//! (`MAX_BATCH_BYTES`, 16 << 20), `records_len` <= 16 MiB,
//! 1 <= `record_count` <= `records_len` / 6 (the smallest record), and
//! `base_offset + record_count` must not overflow. The writer stays well
//! below: an append carries at most 4 MiB and a batch gathers at most 4 MiB,
//! both counted as payload plus 16 bytes per record.
//!
//! Each record in the decompressed section: `uvarint length` (of the rest of
//! the record), `uvarint offset_delta` (must equal the record's index in the
//! batch), `zigzag varint timestamp_delta` (from `base_timestamp_ms`,
//! wrapping), `uvarint key_len + 1` (0 = no key) and the key, `uvarint
//! value_len` and the value, `uvarint header_count`, then per header `uvarint
//! name_len`, the UTF-8 name, `uvarint value_len`, the value. Varints are
//! LEB128 (low 7 bits first, at most 10 bytes, must fit a u64); unlike
//! Kafka's batch v2, only the timestamp delta is zigzag and a record has no
//! attributes byte. Records must fill the section exactly, and each record
//! its length. A 100-byte value without key or headers costs 6 bytes of
//! framing (7 once its timestamp is 64 ms past the batch's smallest, up to
//! 8 s) plus its share of the 42-byte header: under 7.5 bytes per record in
//! a batch of 100.
//!
//! # Segments and preallocation
//!
//! Segment `B` holds offsets from `B` up to the next segment's base. Only the
//! newest (active) segment is appended to. The writer rolls before a batch
//! that would take a non-empty segment past the topic's segment size
//! (`max_segment_bytes`, 16 MiB, at most a quarter of `retention_bytes`,
//! clamped to 4 KiB..4 GiB - 1) or whose offsets would reach `base +
//! u32::MAX`. Rolling seals the old segment (`Segment::seal`: cut the file
//! to its data, fdatasync it, trim and fdatasync its index), then creates
//! the new `.log` and `.index` and fsyncs the directory.
//!
//! A new segment is preallocated to the segment size with `posix_fallocate`
//! (best effort), so the active segment's file length is not its data: past
//! the last batch it reads as zeros. Nothing on disk marks the end of data.
//! At open it is where the scan stops: a zeroed header has magic 0, so the
//! zeros are a tail like any other, cut (and logged as a torn tail) and
//! preallocated again; `Tail::zeros` only lets `log verify` stay quiet about
//! them. A sealed segment's file length is its data (seal cuts it, on roll
//! and at a clean stop). Appends, reads and `retention_bytes` use
//! `Segment::size`, the bytes of whole valid batches, so preallocated space
//! is not counted against the quota. After a clean stop the active segment
//! is not preallocated again until the next roll.
//!
//! # Index
//!
//! `.index` is an array of 8-byte entries, entry `i` at byte `8 * i`, no
//! header:
//!
//! ```text
//! 0  u32  relative_offset  first offset of the batch - segment base
//! 4  u32  position         byte position of that batch in the .log
//! ```
//!
//! A batch gets an entry when it starts at a position > 0 that is at least
//! `index_interval_bytes` (8 KiB) past the previous entry's position (or
//! byte 0); both fields strictly increase. Entries are written without fsync
//! as batches are appended; the file is trimmed to the entries and
//! fdatasynced when the segment is sealed. It is a cache of the log: open
//! trusts it only as far as recovery checks it (below) and rewrites it
//! (truncate, write, fdatasync; `Finding::IndexRebuilt`) when it was
//! malformed, lost entries to those checks, or, in a sealed segment, lacked
//! entries the scan found.
//!
//! # Checkpoints
//!
//! ```text
//! 0        [u8; 4]  magic    b"TWCK"
//! 4        u8       version  1
//! 5        u32      len      payload length, at most 1 MiB
//! 9        [u8]     payload  JSON
//! 9 + len  u32      crc      CRC32C of bytes 0..9 + len
//! ```
//!
//! The file must be exactly `13 + len` bytes. A checkpoint is replaced
//! atomically (`checkpoint::write_bytes`): write `NAME.tmp`, fdatasync it,
//! rename it over `NAME`, fsync the directory.
//!
//! - `topic.ckpt`: `{"partitions":N}`, written once, when the topic is
//!   created. Damaged: open fails.
//! - `partition.ckpt`: `{"start":S,"replicated":C|null,"gaps":[[from,to]],
//!   "dropped_records":D,"synced":R}`. `start`: first kept offset.
//!   `replicated`: the replication cursor, every offset below it
//!   acknowledged upstream. `gaps`: ranges `drop_oldest` deleted before they
//!   were replicated (newest last, at most 1000). `dropped_records`: records
//!   deleted unreplicated. `synced`: the recovery point R (below); 0 when
//!   absent. Rewritten only when a field changes (`PartitionLog::update_meta`,
//!   serialised by a mutex). Missing: defaults. Damaged:
//!   `Finding::BadCheckpoint` and defaults (start 0, no cursor, R = 0).
//!
//! # What "acknowledged" means, and the fsyncs behind it
//!
//! One writer thread does all segment writes (group commit). It takes the
//! queued appends (up to 8 MiB; when the last fsync released more producers
//! than have come back, it waits for them up to half an fsync, at most
//! 2 ms), applies quotas (see Retention), writes each partition's share as
//! one batch (more past 4 MiB) at the end of its active segment, then:
//!
//! - `fsync = "always"` (default): one fdatasync per written segment, then
//!   the partition's visible end moves and the tickets resolve. An
//!   acknowledged record is on the disk.
//! - `interval_ms = N`: tickets resolve after the write; the segment is
//!   fdatasynced about N ms after its first unsynced write, and only then do
//!   readers see the records. A power cut loses at most the last ~N ms of
//!   acknowledged records (a process crash none: the page cache survives).
//! - `never`: tickets resolve and readers see the records after the write;
//!   segments are fsynced only when sealed. For tests and benchmarks.
//!
//! Bytes queued for the writer are bounded by `max_pending_bytes` (64 MiB,
//! counted as above); past it `append` refuses with `Overloaded`, and
//! [`Log::capacity`] (`capacity.rs`) resolves when the writer next takes
//! requests off the queue, stops or is poisoned, so a source waits for room
//! without polling.
//!
//! Every segment create and delete and every checkpoint rename is followed
//! by an fsync of the directory. A clean stop ([`Log::close`], or drop)
//! writes what is queued, fdatasyncs `interval_ms` segments, seals every
//! active segment and checkpoints every R. A failed write or fsync poisons
//! the log: the failing group and every later append get
//! [`AppendError::Poisoned`]; the fsync is never retried (after a failed
//! fsync the page cache may already have dropped the data, so a retry could
//! "succeed" without it). A failed R checkpoint or background retention pass
//! is only logged; a failed retention checkpoint before a write poisons.
//!
//! # The recovery point
//!
//! R, the `synced` field of `partition.ckpt`, promises that every offset
//! below it had been fdatasynced when it was written. Every
//! `recovery_point_interval_ms` (5 s; checked after each group and at least
//! once a second) the writer checkpoints each partition's visible end as R
//! when it has advanced, never lowering it; for `never` topics only at a
//! clean stop, after the final sync (`Writer::checkpoint_recovery_points`).
//! At a crash, R trails the durable end by about one interval (more while R
//! checkpoints fail; since the last clean stop for `never` topics). R only
//! matters for the newest segment: past it, writes may not have reached the
//! disk, or reached it out of order.
//!
//! # Recovery at open
//!
//! Per partition: read `partition.ckpt`; delete segments wholly below
//! `start` (a deletion retention checkpointed but did not finish) and fsync
//! the directory; with no segment left, create one at max(start, cursor).
//! Then, for every segment:
//!
//! 1. Index: discarded if longer than the `.log`, else cut at its first
//!    entry at position 0 or past the file's end, or not increasing
//!    (`recovery::decode_index`). Newest segment only: entries for offsets
//!    at or past R are dropped, then the longest prefix whose entries point
//!    at a header that parses and holds the claimed offset is kept
//!    (`recovery::validate_entries`). Every segment: entries are dropped
//!    from the end until the last points at a batch that passes its CRC and
//!    holds its offset (`recovery::trim_index`).
//! 2. Scan (`recovery::scan`) from the last kept entry (else byte 0) to the
//!    file's length: each batch must parse, fit, pass its CRC and start at
//!    the expected offset E (where the previous batch ended). Open reads
//!    only this stretch (with an intact index, under 8 KiB plus one batch;
//!    in the newest segment also everything past R), so damage before it
//!    is found by reads and by `tidewell log verify`, which scans every
//!    batch.
//! 3. At a bad batch in the newest segment with E >= R: a torn tail. All
//!    from there to the end of the file is cut (truncate, fdatasync,
//!    preallocate again) and logged with position, size and reason
//!    (`Finding::TornTail`, a warning); no later good batch is looked for.
//! 4. Otherwise (E < R, or a sealed segment) the rest of the file is
//!    searched, byte by byte, for a batch that passes its CRC with a first
//!    offset in `E..E + u32::MAX`. Found: the bytes before it are corruption,
//!    kept on disk (`Finding::Corrupt`, an error naming the file, byte
//!    position and the unreadable offsets) and the scan goes on there. Not
//!    found: in a sealed segment the rest is corruption (offsets E up to the
//!    next base); in the newest segment it is cut as a torn tail, as in 3,
//!    although it lies below R.
//! 5. A sealed segment that ends cleanly before the next segment's base:
//!    `Finding::Missing`; reads there fail with [`ReadError::Missing`].
//! 6. The partition's next offset and visible end are the newest segment's
//!    recovered end. The newest segment is fdatasynced only if a tail was
//!    cut.
//!
//! [`Log::open_read_only`] (`log dump`, `log verify`) takes no lock and
//! changes nothing; its findings say what a writing open would do.
//!
//! What bit rot costs. Batches past R up to the durable end were fsynced
//! and, under `always`, acknowledged and perhaps replicated, but recovery
//! cannot tell them from unsynced ones: a bad batch there (bit rot, a lost
//! or misdirected write) cuts it and every batch after it in the segment,
//! logged as a torn tail and not reported as corruption (`log verify` too
//! lists it as a torn tail, not damage). That is at most about one interval
//! of appends; with R = 0 (no `synced` yet, a missing or damaged checkpoint)
//! it is the whole newest segment. Below R, a bad batch followed by a good
//! one costs only its own offsets, reported as corruption; a bad batch with
//! no good batch after it in the newest segment is cut (4). Nothing in a
//! sealed segment is ever cut.
//!
//! # Reads
//!
//! Readers see offsets below the visible end only. A read of damaged offsets
//! hands out the records before them, then fails with
//! [`ReadError::Corrupt`], which names the file, byte position and
//! `resume_at`, the first readable offset after the damage; a damaged batch
//! wholly before the wanted offset is skipped, and an index entry that
//! points at no batch makes the read rescan the segment from byte 0.
//!
//! # Retention
//!
//! Whole segments are deleted, never a partition's newest one. Candidates
//! are each partition's oldest segment; the one whose newest record is
//! oldest goes first. A segment is replicated when replication is on and
//! its end <= the cursor. By age (`retention_ms` against its largest record
//! timestamp; only replicated segments while replication is on): every
//! second and on [`Log::enforce_retention`]. By quota (`retention_bytes` per
//! topic, the data of all its partitions; `min_free_bytes` free on the
//! filesystem, one segment per check): before each write and every second.
//! Replicated segments go first; unreplicated ones only under `when_full =
//! "drop_oldest"` (the default); under `reject_new` appends that do not fit
//! are refused with [`AppendError::QuotaExceeded`]. Deleting unreplicated
//! records (with replication off: any) adds them to `dropped_records` and,
//! with replication on, records their range as a gap. A deletion
//! checkpoints the new `start` (and gap) first, then deletes `.log` and
//! `.index` and fsyncs the directory (`retention::delete`); open finishes
//! an interrupted one.
//!
//! # Invariants
//!
//! 1. Offsets are dense per partition: the writer numbers records on from
//!    the next offset (`Writer::write_bucket`); a batch is accepted only
//!    where the previous one ended (`recovery::scan`) and a record only at
//!    its index (`batch::decode_record`). Damage makes offsets unreadable,
//!    never renumbers them.
//! 2. A segment's base is its first batch's offset and it ends where the
//!    next segment begins (`Writer::segment_for`; `Opener::check_end`).
//! 3. Under `always` and `interval_ms` the visible end moves only after the
//!    fdatasync covering it (`syncer::sync_and_ack`, `Writer::sync_due`):
//!    while the writer runs, no reader sees a record that is not on disk.
//! 4. Under `always` a ticket resolves `Ok` only after the fdatasync of the
//!    segment holding its records (`syncer::sync_and_ack`; an earlier
//!    segment of the same write was synced by `Segment::seal` at the roll).
//!    A ticket never hangs: a dropped `Completer` resolves it `Closed`.
//! 5. R never decreases and is at most the visible end when written
//!    (`Writer::checkpoint_recovery_points`).
//! 6. Data is cut only from the newest segment at open, from a bad batch to
//!    the end of the file (`Opener::settle_tail`), and every cut or damage
//!    found is a `Finding`, logged by a writing open (`report`).
//! 7. A checkpoint is replaced atomically and a damaged one is detected,
//!    never half-read (`checkpoint::write_bytes`, `checkpoint::unframe`).
//! 8. The replication cursor never moves back (`Log::set_replicated`) and
//!    is not ahead of the visible end, because reads return only offsets
//!    below it (`Reader::take`) and the replicator moves the cursor only
//!    over records it read; the log itself does not check this.
//! 9. Retention never deletes the active segment (`retention::oldest` skips
//!    a partition with one segment) and persists the new start before
//!    deleting files (`retention::delete`).
//! 10. After a failed write or fsync no append succeeds (`Shared::poison`,
//!     `Log::check_append`, `Writer::process`).
//! 11. One process writes a log directory (`Storage::lock_dir`), through
//!     one writer thread; queued bytes stay under `max_pending_bytes` plus
//!     one append (`Log::try_append`).

pub mod batch;
pub mod capacity;
pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod dump;
pub mod error;
#[cfg(any(test, feature = "test-hooks"))]
pub mod faulty;
pub mod partition;
pub mod recovery;
mod retention;
pub mod segment;
#[cfg(any(test, feature = "test-hooks"))]
pub mod sim;
pub mod stats;
pub mod storage;
mod summary;
mod syncer;
pub mod ticket;
pub mod types;
pub mod varint;
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
pub use storage::{OsStorage, Storage};
pub use summary::{Backlog, PartitionSummary, TopicSummary};
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
    /// As opened. Its quota, age limit and `when_full` are read from
    /// [`TopicLog::limits`], which a reload may change.
    pub config: TopicConfig,
    limits: std::sync::RwLock<config::Limits>,
    pub partitions: Vec<Arc<PartitionLog>>,
    /// Records and payload bytes appended since start (for metrics).
    pub appended_records: AtomicU64,
    pub appended_bytes: AtomicU64,
}

impl TopicLog {
    /// The quota, age limit and `when_full` in force.
    pub fn limits(&self) -> config::Limits {
        *self
            .limits
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What the writer thread and the handles share.
pub(crate) struct Shared {
    pub config: LogConfig,
    /// The wall clock and whether it is trusted (see [`clock`]).
    pub clock: Arc<dyn clock::Clock>,
    pub storage: Arc<dyn Storage>,
    pub topics: BTreeMap<String, Arc<TopicLog>>,
    pub stats: Stats,
    /// Bytes queued for the writer and not yet taken.
    pub pending_bytes: AtomicU64,
    /// Sources waiting for `pending_bytes` to fall below the limit.
    pub capacity: capacity::Waiters,
    /// Moves each time records become readable ([`Log::published`]).
    pub published: AtomicU64,
    /// Readers waiting for `published` to move.
    pub appended: capacity::Waiters,
    /// Set when the writer has stopped (appends fail with `Closed`).
    pub writer_stopped: std::sync::atomic::AtomicBool,
    poisoned: Mutex<Option<String>>,
}

impl Shared {
    fn new(
        config: LogConfig,
        storage: Arc<dyn Storage>,
        topics: BTreeMap<String, Arc<TopicLog>>,
        clock: Arc<dyn clock::Clock>,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            config,
            clock,
            storage,
            topics,
            stats: Stats::default(),
            pending_bytes: AtomicU64::new(0),
            capacity: capacity::Waiters::default(),
            published: AtomicU64::new(0),
            appended: capacity::Waiters::default(),
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
        let clock = Arc::new(clock::SystemClock(config.clock));
        Log::open_with_clock(storage, config, clock)
    }

    /// [`Log::open`] with the wall clock `clock` (tests set theirs).
    pub fn open_with_clock(
        storage: Arc<dyn Storage>,
        config: LogConfig,
        clock: Arc<dyn clock::Clock>,
    ) -> Result<Log, OpenError> {
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
        let shared = Shared::new(config, storage, topics, clock);
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
        let shared = Shared::new(
            config,
            storage,
            topics,
            Arc::new(clock::SystemClock(clock::ClockTrust::System)),
        );
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
        let Some(tx) = self.tx.as_ref() else {
            return Err((AppendError::Closed, records));
        };
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

    /// A count that moves each time records become readable in any
    /// partition; pass it to [`Log::appended_after`].
    pub fn published(&self) -> u64 {
        self.shared.published.load(Ordering::Acquire)
    }

    /// Resolves once records became readable after [`Log::published`]
    /// returned `seen`: a reader that found nothing new waits on it instead
    /// of polling (read `published` first, then the log, then wait).
    pub fn appended_after(&self, seen: u64) -> capacity::Appended {
        capacity::Appended {
            shared: self.shared.clone(),
            seen,
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

    /// Replaces a topic's quota, age limit and `when_full` (a reload), then
    /// lets the writer apply them at once. The segment size stays as
    /// opened until a restart. `Ok(false)`: no such topic, or unchanged.
    pub fn set_limits(&self, topic: &str, limits: config::Limits) -> Result<bool, AppendError> {
        let Some(t) = self.topic(topic) else {
            return Ok(false);
        };
        if t.limits() == limits {
            return Ok(false);
        }
        *t.limits
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = limits;
        self.enforce_retention()?;
        Ok(true)
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
        limits: std::sync::RwLock::new(topic_config.limits()),
        config: topic_config,
        partitions,
        appended_records: AtomicU64::new(0),
        appended_bytes: AtomicU64::new(0),
    })
}

#[cfg(test)]
mod tests;

//! Settings of the log and of each topic.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::types::Compression;

/// The topic of the embedded defaults, where MQTT and serial records go
/// unless configured otherwise.
pub const DEFAULT_TOPIC: &str = "ingest";

/// When an append counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Acknowledge after the fsync that covers the record (the default).
    #[default]
    Always,
    /// Acknowledge after the write; fsync at most this many milliseconds
    /// later. A power cut loses up to that window of acknowledged records.
    IntervalMs(u64),
    /// Never fsync (the OS writes back when it likes): tests and benchmarks only.
    Never,
}

/// What a topic does when its quota (or the disk's reserve) is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Delete the oldest segments, even unreplicated ones; the dropped range is
    /// recorded as a gap and counted.
    #[default]
    DropOldest,
    /// Refuse new appends until replication frees space.
    RejectNew,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicConfig {
    pub partitions: u32,
    pub fsync: FsyncPolicy,
    pub compression: Compression,
    /// Quota for the whole topic (all partitions), in bytes on disk.
    pub retention_bytes: Option<u64>,
    /// Segments whose newest record is older than this are deleted (once replicated).
    pub retention_ms: Option<u64>,
    pub when_full: WhenFull,
    pub max_segment_bytes: u64,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            partitions: 1,
            fsync: FsyncPolicy::Always,
            compression: Compression::None,
            retention_bytes: None,
            retention_ms: None,
            when_full: WhenFull::DropOldest,
            max_segment_bytes: 16 << 20,
        }
    }
}

/// The keys of a topic that a reload may change while it is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub retention_bytes: Option<u64>,
    pub retention_ms: Option<u64>,
    pub when_full: WhenFull,
}

impl TopicConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            retention_bytes: self.retention_bytes,
            retention_ms: self.retention_ms,
            when_full: self.when_full,
        }
    }

    /// The segment size actually used: small enough that a quota is enforced
    /// in steps of at most a quarter of it.
    pub fn segment_bytes(&self) -> u64 {
        let cap = self.retention_bytes.map_or(u64::MAX, |q| (q / 4).max(4096));
        self.max_segment_bytes
            .min(cap)
            .clamp(4096, u64::from(u32::MAX))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub topics: BTreeMap<String, TopicConfig>,
    /// One sparse index entry per this many bytes of log.
    pub index_interval_bytes: u64,
    /// Keep at least this much of the filesystem free: below it, every topic
    /// behaves as full.
    pub min_free_bytes: u64,
    /// Segments not yet acknowledged upstream are protected from age-based
    /// retention and are deleted by quota only under `drop_oldest`.
    pub replication_enabled: bool,
    /// Appends queued for the writer beyond this are refused (back-pressure).
    pub max_pending_bytes: u64,
    /// How often each partition's recovery point is checkpointed. After a
    /// power cut, damage in the newest segment newer than the recovery point
    /// is cut as a torn tail; older damage is reported as corruption.
    pub recovery_point_interval_ms: u64,
    /// When the wall clock is trusted for age retention (see `log::clock`).
    pub clock: super::clock::ClockTrust,
}

impl LogConfig {
    pub fn new(dir: impl Into<PathBuf>) -> LogConfig {
        LogConfig {
            dir: dir.into(),
            topics: BTreeMap::new(),
            index_interval_bytes: 8192,
            min_free_bytes: 64 << 20,
            replication_enabled: false,
            max_pending_bytes: 64 << 20,
            recovery_point_interval_ms: 5000,
            clock: super::clock::ClockTrust::System,
        }
    }

    pub fn with_topic(mut self, name: &str, topic: TopicConfig) -> LogConfig {
        self.topics.insert(name.to_string(), topic);
        self
    }
}

/// Kafka's rule for topic names, which also keeps them safe as directory names.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

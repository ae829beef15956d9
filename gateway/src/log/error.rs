//! Typed errors of the log, one enum per operation family.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::types::{Offset, Partition};

/// An I/O failure on a named file.
#[derive(Debug, Error)]
#[error("{path}: {source}")]
pub struct StorageError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Attaches the path to an `io::Result`.
pub trait StorageContext<T> {
    fn context(self, path: &Path) -> Result<T, StorageError>;
}

impl<T> StorageContext<T> for io::Result<T> {
    fn context(self, path: &Path) -> Result<T, StorageError> {
        self.map_err(|source| StorageError {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{path}: checkpoint is damaged ({what})")]
    Corrupt { path: PathBuf, what: String },
}

#[derive(Debug, Error)]
pub enum OpenError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{path}: another process holds the log open (lock is taken)")]
    Locked { path: PathBuf },
    #[error("invalid topic name {0:?}: use 1-200 characters of [A-Za-z0-9._-], not '.' or '..'")]
    BadTopicName(String),
    #[error("topic {topic:?} has {on_disk} partitions on disk but the configuration says {configured}; changing the partition count would move keys between partitions and break per-key order, so it is refused (create a new topic instead)")]
    PartitionCountChanged {
        topic: String,
        on_disk: u32,
        configured: u32,
    },
    #[error("topic {0:?} needs at least one partition")]
    NoPartitions(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("could not start the log writer thread: {0}")]
    Thread(io::Error),
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AppendError {
    #[error("the log refuses writes after an earlier storage failure: {0}")]
    Poisoned(String),
    #[error("topic {topic:?} is full (quota {quota_bytes} bytes, policy reject_new)")]
    QuotaExceeded { topic: String, quota_bytes: u64 },
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition { topic: String, partition: Partition },
    #[error("batch is empty")]
    Empty,
    #[error("batch too large: {0}")]
    TooLarge(String),
    #[error("the log writer stopped before this append was durable (a clean stop, or a storage failure reported in the log)")]
    Closed,
    #[error("the log writer is behind; try again shortly")]
    Overloaded,
}

#[derive(Debug, Error)]
pub enum ReadError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition { topic: String, partition: Partition },
    #[error("offset {requested} is before the log start {start}")]
    BeforeStart { requested: Offset, start: Offset },
    #[error("{path} at byte {position}: damaged batch where offset {offset} should be: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        offset: Offset,
        /// The first readable offset after the damage, when one is known.
        resume_at: Option<Offset>,
        reason: String,
    },
    #[error("{path}: offsets {from}..{to} are missing (segment ends early)")]
    Missing {
        path: PathBuf,
        from: Offset,
        to: Offset,
    },
}

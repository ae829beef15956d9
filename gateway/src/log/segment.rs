//! One segment: a `.log` file of record batches and its sparse `.index`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use super::batch::{self, BatchError, BatchHeader, HEADER_LEN};
use super::error::{StorageContext, StorageError};
use super::storage::{FileHandle, Storage, StorageFile};
use super::types::{Offset, SegmentBase};

/// One sparse index entry: the batch starting at byte `position` of the
/// segment holds offset `base + relative_offset` as its first record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub relative_offset: u32,
    pub position: u32,
}

pub const INDEX_ENTRY_LEN: usize = 8;

impl IndexEntry {
    pub fn encode(&self) -> [u8; INDEX_ENTRY_LEN] {
        let mut out = [0u8; INDEX_ENTRY_LEN];
        out[..4].copy_from_slice(&self.relative_offset.to_le_bytes());
        out[4..].copy_from_slice(&self.position.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> IndexEntry {
        let mut rel = [0u8; 4];
        let mut pos = [0u8; 4];
        rel.copy_from_slice(&bytes[..4]);
        pos.copy_from_slice(&bytes[4..8]);
        IndexEntry {
            relative_offset: u32::from_le_bytes(rel),
            position: u32::from_le_bytes(pos),
        }
    }
}

pub fn log_file_name(base: SegmentBase) -> String {
    format!("{base}.log")
}

pub fn index_file_name(base: SegmentBase) -> String {
    format!("{base}.index")
}

/// A batch read from a segment: its header, its bytes and where it starts.
pub struct RawBatch {
    pub header: BatchHeader,
    pub bytes: Vec<u8>,
    pub position: u64,
}

pub struct Segment {
    pub base: SegmentBase,
    pub log_path: PathBuf,
    pub index_path: PathBuf,
    log: FileHandle,
    /// `None` when opened read-only without an index file.
    index_file: Option<FileHandle>,
    /// Bytes of whole, valid batches. Appends go at this position; only the
    /// writer moves it.
    size: AtomicU64,
    /// The offset after the last record in this segment.
    end_offset: AtomicU64,
    /// In memory copy of the index file (which is only a cache of it).
    index: RwLock<Vec<IndexEntry>>,
    /// Position of the last batch that got an index entry (or 0).
    last_indexed_position: AtomicU64,
    /// Largest record timestamp, for age-based retention.
    max_timestamp_ms: AtomicI64,
}

impl Segment {
    /// Creates empty `.log` and `.index` files. The caller fsyncs the directory.
    pub fn create(
        storage: &dyn Storage,
        dir: &Path,
        base: SegmentBase,
        preallocate_bytes: u64,
    ) -> Result<Segment, std::io::Error> {
        let log_path = dir.join(log_file_name(base));
        let index_path = dir.join(index_file_name(base));
        let log = storage.open(&log_path, true)?;
        if preallocate_bytes > 0 {
            if let Err(e) = log.preallocate(preallocate_bytes) {
                tracing::debug!("{}: no preallocation ({e})", log_path.display());
            }
        }
        let index_file = storage.open(&index_path, true)?;
        Ok(Segment::from_parts(
            base,
            log_path,
            index_path,
            log,
            Some(index_file),
            Vec::new(),
            0,
            base.0,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        base: SegmentBase,
        log_path: PathBuf,
        index_path: PathBuf,
        log: FileHandle,
        index_file: Option<FileHandle>,
        index: Vec<IndexEntry>,
        size: u64,
        end_offset: u64,
    ) -> Segment {
        let last_indexed = index.last().map_or(0, |e| u64::from(e.position));
        Segment {
            base,
            log_path,
            index_path,
            log,
            index_file,
            size: AtomicU64::new(size),
            end_offset: AtomicU64::new(end_offset),
            index: RwLock::new(index),
            last_indexed_position: AtomicU64::new(last_indexed),
            max_timestamp_ms: AtomicI64::new(i64::MIN),
        }
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    pub fn end_offset(&self) -> Offset {
        Offset(self.end_offset.load(Ordering::Acquire))
    }

    pub fn set_end_offset(&self, end: Offset) {
        self.end_offset.store(end.0, Ordering::Release);
    }

    pub fn max_timestamp_ms(&self) -> i64 {
        self.max_timestamp_ms.load(Ordering::Acquire)
    }

    pub fn note_timestamp(&self, ts: i64) {
        self.max_timestamp_ms.fetch_max(ts, Ordering::AcqRel);
    }

    pub fn log_file(&self) -> &FileHandle {
        &self.log
    }

    pub fn index_entries(&self) -> Vec<IndexEntry> {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Appends one encoded batch at the end of the segment, and an index
    /// entry when `index_interval_bytes` have passed since the last one. The
    /// index write is not synced here: the index is rebuilt from the log when
    /// it does not match.
    pub fn append(
        &self,
        bytes: &[u8],
        header: &BatchHeader,
        index_interval_bytes: u64,
    ) -> Result<(), StorageError> {
        let position = self.size();
        self.log
            .write_all_at(bytes, position)
            .context(&self.log_path)?;
        if position > 0
            && position - self.last_indexed_position.load(Ordering::Relaxed) >= index_interval_bytes
        {
            self.push_index_entry(header, position)?;
        }
        self.size
            .store(position + bytes.len() as u64, Ordering::Release);
        self.end_offset
            .store(header.next_offset().0, Ordering::Release);
        self.note_timestamp(header.max_timestamp_ms);
        Ok(())
    }

    fn push_index_entry(&self, header: &BatchHeader, position: u64) -> Result<(), StorageError> {
        let entry = IndexEntry {
            relative_offset: (header.base_offset - self.base.0) as u32,
            position: position as u32,
        };
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        let at = (index.len() * INDEX_ENTRY_LEN) as u64;
        if let Some(file) = &self.index_file {
            file.write_all_at(&entry.encode(), at)
                .context(&self.index_path)?;
        }
        index.push(entry);
        self.last_indexed_position
            .store(position, Ordering::Relaxed);
        Ok(())
    }

    pub fn sync_log(&self) -> Result<(), StorageError> {
        self.log.sync_data().context(&self.log_path)
    }

    /// Cuts preallocated space after the data and syncs the log and its
    /// index: done when the segment stops being the active one and at a
    /// clean shutdown, so a sealed segment's length is its data.
    pub fn seal(&self) -> Result<(), StorageError> {
        let size = self.size();
        if self.log.len().context(&self.log_path)? != size {
            self.log.set_len(size).context(&self.log_path)?;
        }
        self.sync_log()?;
        self.sync_index()
    }

    /// Trims the index file to the in-memory entries and syncs it.
    pub fn sync_index(&self) -> Result<(), StorageError> {
        let len = self
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
            * INDEX_ENTRY_LEN;
        let Some(file) = &self.index_file else {
            return Ok(());
        };
        file.set_len(len as u64).context(&self.index_path)?;
        file.sync_data().context(&self.index_path)
    }

    /// The position to start scanning from to find `offset`.
    pub fn lookup(&self, offset: Offset) -> u64 {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        let rel = offset.0.saturating_sub(self.base.0);
        let at = index.partition_point(|e| u64::from(e.relative_offset) <= rel);
        if at == 0 {
            0
        } else {
            u64::from(index[at - 1].position)
        }
    }

    /// The first indexed position past `position`, to resume reading after a
    /// damaged batch.
    pub fn next_indexed_after(&self, position: u64) -> Option<(Offset, u64)> {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        let entry = index.iter().find(|e| u64::from(e.position) > position)?;
        Some((
            Offset(self.base.0 + u64::from(entry.relative_offset)),
            u64::from(entry.position),
        ))
    }

    /// Reads the whole batch starting at `position`, checking its CRC.
    pub fn read_batch(&self, position: u64, limit: u64) -> Result<RawBatch, BatchReadError> {
        read_batch_from(&*self.log, position, limit)
    }
}

/// Why a batch could not be read at a position.
#[derive(Debug)]
pub enum BatchReadError {
    /// Fewer bytes than the batch needs before `limit`: a torn tail when it is
    /// the newest segment.
    Short,
    Invalid(BatchError),
    Io(std::io::Error),
}

/// Reads and CRC-checks the batch at `position` of `file`, not reading past `limit`.
pub fn read_batch_from(
    file: &dyn StorageFile,
    position: u64,
    limit: u64,
) -> Result<RawBatch, BatchReadError> {
    if position + HEADER_LEN as u64 > limit {
        return Err(BatchReadError::Short);
    }
    let mut head = [0u8; HEADER_LEN];
    read_exact(file, &mut head, position)?;
    let header = BatchHeader::parse(&head).map_err(BatchReadError::Invalid)?;
    let total = header.total_len();
    if position + total > limit {
        return Err(BatchReadError::Short);
    }
    let mut bytes = vec![0u8; total as usize];
    bytes[..HEADER_LEN].copy_from_slice(&head);
    read_exact(file, &mut bytes[HEADER_LEN..], position + HEADER_LEN as u64)?;
    header.verify_crc(&bytes).map_err(BatchReadError::Invalid)?;
    Ok(RawBatch {
        header,
        bytes,
        position,
    })
}

fn read_exact(file: &dyn StorageFile, buf: &mut [u8], position: u64) -> Result<(), BatchReadError> {
    file.read_exact_at(buf, position)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => BatchReadError::Short,
            _ => BatchReadError::Io(e),
        })
}

/// Decodes a batch already checked by [`read_batch_from`] (no second CRC pass).
pub fn decode_raw(raw: &RawBatch) -> Result<Vec<super::types::StoredRecord>, BatchError> {
    batch::decode_verified(&raw.header, &raw.bytes)
}

pub type SegmentRef = Arc<Segment>;

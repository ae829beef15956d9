//! Scanning segments: at open (from the last trustworthy index entry to the
//! end of each segment), when an index is rebuilt, and by `log verify`.

use std::io;

use super::batch::{BatchHeader, HEADER_LEN, MAGIC};
use super::segment::{read_batch_from, BatchReadError, IndexEntry, RawBatch};
use super::storage::StorageFile;
use super::types::Offset;

/// A batch found by a scan.
#[derive(Debug, Clone, Copy)]
pub struct ScannedBatch {
    pub position: u64,
    pub header: BatchHeader,
}

/// A damaged stretch followed by good data: never truncated, always reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptSpan {
    pub position: u64,
    pub end_position: u64,
    pub from: Offset,
    /// The offset of the next good batch: offsets `from..to` are unreadable.
    pub to: Offset,
    pub reason: String,
}

/// Bytes after the last good batch with no good batch after them: a torn
/// tail when found in the newest segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    pub position: u64,
    pub bytes: u64,
    /// The tail starts with a zeroed header: preallocated space after the
    /// last batch (or a write whose first sector never reached the disk).
    pub zeros: bool,
    pub reason: String,
}

fn starts_with_zeros(file: &dyn StorageFile, position: u64, len: u64) -> io::Result<bool> {
    let mut head = [0u8; HEADER_LEN];
    let n = ((len - position) as usize).min(HEADER_LEN);
    file.read_exact_at(&mut head[..n], position)?;
    Ok(head[..n].iter().all(|&b| b == 0))
}

#[derive(Debug, Default)]
pub struct Scan {
    pub batches: Vec<ScannedBatch>,
    pub corrupt: Vec<CorruptSpan>,
    pub tail: Option<Tail>,
    /// End of the last good batch.
    pub valid_end: u64,
    pub next_offset: Offset,
}

impl Scan {
    pub fn max_timestamp_ms(&self) -> Option<i64> {
        self.batches.iter().map(|b| b.header.max_timestamp_ms).max()
    }
}

/// Scans `file` from `position`, where a batch with base offset `expected`
/// must start, to `len`.
///
/// Damage where offsets at or past `unsynced_from` belong (the recovery
/// point of the newest segment) ends the scan: those bytes were not yet
/// synced at the crash, writes may have reached the disk out of order, so
/// everything from there on is a torn tail. Damage before it is corruption,
/// and the scan looks for the next good batch to go on.
pub fn scan(
    file: &dyn StorageFile,
    mut position: u64,
    mut expected: Offset,
    len: u64,
    unsynced_from: Offset,
) -> io::Result<Scan> {
    let mut out = Scan::default();
    while position < len {
        let reason = match read_batch_from(file, position, len) {
            Ok(raw) if raw.header.base_offset == expected.0 => {
                out.batches.push(ScannedBatch {
                    position,
                    header: raw.header,
                });
                position += raw.header.total_len();
                expected = raw.header.next_offset();
                continue;
            }
            Ok(raw) => format!(
                "batch holds offset {}, expected {expected}",
                raw.header.base_offset
            ),
            Err(BatchReadError::Short) => "incomplete batch".to_string(),
            Err(BatchReadError::Invalid(e)) => e.to_string(),
            Err(BatchReadError::Io(e)) => return Err(e),
        };
        let next = if expected >= unsynced_from {
            None
        } else {
            find_next_valid(file, position + 1, expected, len)?
        };
        match next {
            Some(next) => {
                out.corrupt.push(CorruptSpan {
                    position,
                    end_position: next.position,
                    from: expected,
                    to: Offset(next.header.base_offset),
                    reason,
                });
                position = next.position;
                expected = Offset(next.header.base_offset);
            }
            None => {
                out.tail = Some(Tail {
                    position,
                    bytes: len - position,
                    zeros: starts_with_zeros(file, position, len)?,
                    reason,
                });
                break;
            }
        }
    }
    out.valid_end = out.tail.as_ref().map_or(len, |t| t.position);
    out.next_offset = expected;
    Ok(out)
}

/// Looks for the first good batch at or after `from` whose base offset is at
/// least `expected` (and plausibly close to it). Reads in windows, so memory
/// stays small even on a large segment.
pub fn find_next_valid(
    file: &dyn StorageFile,
    from: u64,
    expected: Offset,
    len: u64,
) -> io::Result<Option<RawBatch>> {
    const WINDOW: usize = 64 * 1024;
    let mut window = vec![0u8; WINDOW + HEADER_LEN];
    let mut start = from;
    while start + HEADER_LEN as u64 <= len {
        let want = ((len - start) as usize).min(window.len());
        file.read_exact_at(&mut window[..want], start)?;
        let candidates = want.saturating_sub(HEADER_LEN - 1).min(WINDOW);
        for i in 0..candidates {
            if !plausible_header(&window[i..i + HEADER_LEN], expected) {
                continue;
            }
            if let Ok(raw) = read_batch_from(file, start + i as u64, len) {
                return Ok(Some(raw));
            }
        }
        start += candidates as u64;
        if candidates == 0 {
            break;
        }
    }
    Ok(None)
}

fn plausible_header(bytes: &[u8], expected: Offset) -> bool {
    if bytes[16] != MAGIC {
        return false;
    }
    match BatchHeader::parse(bytes) {
        Ok(h) => h.base_offset >= expected.0 && h.base_offset - expected.0 < u64::from(u32::MAX),
        Err(_) => false,
    }
}

/// Decodes an index file's bytes, keeping the longest prefix of entries that
/// are well formed: strictly increasing, inside the segment, not zero.
pub fn decode_index(bytes: &[u8], log_len: u64) -> (Vec<IndexEntry>, bool) {
    let mut entries = Vec::with_capacity(bytes.len() / 8);
    let whole = bytes.len().is_multiple_of(8);
    for chunk in bytes.chunks_exact(8) {
        let entry = IndexEntry::decode(chunk);
        let increasing = entries.last().is_none_or(|last: &IndexEntry| {
            entry.relative_offset > last.relative_offset && entry.position > last.position
        });
        if entry.position == 0 || u64::from(entry.position) >= log_len || !increasing {
            return (entries, false);
        }
        entries.push(entry);
    }
    (entries, whole)
}

/// Keeps the longest prefix of entries each pointing at a batch header that
/// holds the offset it claims (headers only, no CRC). Used for the newest
/// segment, whose index is written without fsync and may hold anything.
pub fn validate_entries(
    file: &dyn StorageFile,
    base: u64,
    entries: &mut Vec<IndexEntry>,
) -> io::Result<bool> {
    let mut head = [0u8; HEADER_LEN];
    for (i, entry) in entries.iter().enumerate() {
        let ok = match file.read_exact_at(&mut head, u64::from(entry.position)) {
            Ok(()) => BatchHeader::parse(&head)
                .is_ok_and(|h| h.base_offset == base + u64::from(entry.relative_offset)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => false,
            Err(e) => return Err(e),
        };
        if !ok {
            entries.truncate(i);
            return Ok(true);
        }
    }
    Ok(false)
}

/// Drops index entries from the end until the last one points at a good batch
/// holding the offset it claims. Returns whether any entry was dropped.
pub fn trim_index(
    file: &dyn StorageFile,
    base: u64,
    entries: &mut Vec<IndexEntry>,
    len: u64,
) -> io::Result<bool> {
    let mut dropped = false;
    while let Some(last) = entries.last() {
        match read_batch_from(file, u64::from(last.position), len) {
            Ok(raw) if raw.header.base_offset == base + u64::from(last.relative_offset) => break,
            Ok(_) | Err(BatchReadError::Short | BatchReadError::Invalid(_)) => {
                entries.pop();
                dropped = true;
            }
            Err(BatchReadError::Io(e)) => return Err(e),
        }
    }
    Ok(dropped)
}

/// Index entries for scanned batches, one per `interval` bytes, continuing
/// after `last_position`.
pub fn index_entries_for(
    batches: &[ScannedBatch],
    base: u64,
    mut last_position: u64,
    interval: u64,
) -> Vec<IndexEntry> {
    let mut out = Vec::new();
    for batch in batches {
        if batch.position > 0 && batch.position - last_position >= interval {
            out.push(IndexEntry {
                relative_offset: (batch.header.base_offset - base) as u32,
                position: batch.position as u32,
            });
            last_position = batch.position;
        }
    }
    out
}

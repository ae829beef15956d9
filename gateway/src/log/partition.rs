//! One partition: its segments, its recovery at open, and reads by offset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use super::checkpoint;
use super::error::{OpenError, ReadError, StorageContext, StorageError};
use super::recovery::{self, CorruptSpan, Scan};
use super::segment::{self, decode_raw, BatchReadError, Segment, SegmentRef, INDEX_ENTRY_LEN};
use super::storage::{FileHandle, Storage, StorageFile};
use super::types::{Offset, Partition, SegmentBase, StoredRecord};

pub const META_FILE: &str = "partition.ckpt";

/// Small per-partition state kept in a checkpoint file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMeta {
    /// First offset still kept; segments below it are deleted (or about to be).
    pub start: u64,
    /// Every offset below this one is acknowledged upstream.
    pub replicated: Option<u64>,
    /// Ranges dropped by `drop_oldest` before they were replicated (newest last, bounded).
    pub gaps: Vec<(u64, u64)>,
    pub dropped_records: u64,
    /// Recovery point: every offset below it was fsynced when this was
    /// written. At open, damage in the newest segment at or past it is the
    /// unsynced end of a crash (cut away); damage below it is corruption.
    #[serde(default)]
    pub synced: u64,
    /// First offset appended, in this run, while the clock was untrusted
    /// (`log::clock`); settled into `age_floors` once it is trusted.
    #[serde(default)]
    pub untrusted_from: Option<u64>,
    /// `(from, to, ms)`: offsets stamped before the clock was trusted at
    /// `ms`; they age from `ms`.
    #[serde(default)]
    pub age_floors: Vec<(u64, u64, i64)>,
}

/// Something recovery found and did, for the log line and for `log verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The newest segment ended in an incomplete or damaged write, cut away (or,
    /// read-only, would be cut).
    TornTail {
        path: PathBuf,
        position: u64,
        bytes: u64,
        reason: String,
        truncated: bool,
    },
    /// Damaged data that is not a torn tail: kept on disk, unreadable, reported.
    Corrupt { path: PathBuf, span: CorruptSpan },
    /// A segment holds fewer offsets than the next one's name implies.
    Missing {
        path: PathBuf,
        from: Offset,
        to: Offset,
    },
    /// An index did not match its segment and was rebuilt from it.
    IndexRebuilt { path: PathBuf },
    /// A file the log does not know (left alone).
    StrayFile { path: PathBuf },
    /// A damaged checkpoint; defaults were used (replication restarts from the log start).
    BadCheckpoint { path: PathBuf, what: String },
}

impl Finding {
    /// Findings that mean data is damaged, as opposed to recovery doing its job.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            Finding::Corrupt { .. } | Finding::Missing { .. } | Finding::BadCheckpoint { .. }
        )
    }
}

pub struct PartState {
    pub segments: BTreeMap<u64, SegmentRef>,
    /// The offset the next appended record gets.
    pub next_offset: Offset,
    /// Readers see offsets below this: durable under the topic's fsync policy.
    pub visible_end: Offset,
    pub meta: PartitionMeta,
    pub corrupt: Vec<(PathBuf, CorruptSpan)>,
}

impl PartState {
    pub fn active(&self) -> Option<&SegmentRef> {
        self.segments.values().next_back()
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size()).sum()
    }

    pub fn start_offset(&self) -> Offset {
        self.segments
            .keys()
            .next()
            .map_or(Offset(self.meta.start), |&b| Offset(b.max(self.meta.start)))
    }
}

pub struct PartitionLog {
    pub topic: String,
    pub id: Partition,
    pub dir: PathBuf,
    pub storage: Arc<dyn Storage>,
    state: RwLock<PartState>,
    /// Serialises read-modify-write of the checkpoint (writer, syncer, replicator).
    meta_lock: Mutex<()>,
}

/// Sizes a partition is opened with.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub index_interval_bytes: u64,
    /// Preallocation of the active segment (0: none).
    pub preallocate_bytes: u64,
}

/// How a partition is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Recover: truncate torn tails, rebuild indexes, create what is missing.
    ReadWrite,
    /// Change nothing on disk (for `log dump` and `log verify`).
    ReadOnly,
}

impl PartitionLog {
    pub(super) fn state(&self) -> RwLockReadGuard<'_, PartState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn state_mut(&self) -> RwLockWriteGuard<'_, PartState> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn open(
        storage: Arc<dyn Storage>,
        dir: PathBuf,
        topic: &str,
        id: Partition,
        sizes: Sizes,
        mode: Mode,
        findings: &mut Vec<Finding>,
    ) -> Result<PartitionLog, OpenError> {
        if mode == Mode::ReadWrite {
            storage.create_dir_all(&dir).context(&dir)?;
        }
        let meta = read_meta(&*storage, &dir, findings);
        let bases = list_segments(&*storage, &dir, mode, findings)?;
        let bases = drop_below_start(&*storage, &dir, bases, meta.start, mode)?;
        let mut opener = Opener {
            storage: &*storage,
            recovery_point: meta.synced,
            dir: &dir,
            interval: sizes.index_interval_bytes,
            preallocate: if mode == Mode::ReadWrite {
                sizes.preallocate_bytes
            } else {
                0
            },
            mode,
            findings,
        };
        let (segments, corrupt) = opener.open_all(&bases, &meta)?;
        let next = segments
            .values()
            .next_back()
            .map_or(Offset(meta.start), |s| s.end_offset());
        let state = PartState {
            segments,
            next_offset: next,
            visible_end: next,
            meta,
            corrupt,
        };
        Ok(PartitionLog {
            topic: topic.to_string(),
            id,
            dir,
            storage,
            state: RwLock::new(state),
            meta_lock: Mutex::new(()),
        })
    }

    /// Changes the checkpointed state with `change`, persists it atomically and
    /// installs it. `change` returns false when there is nothing to write.
    pub fn update_meta(
        &self,
        change: impl FnOnce(&mut PartitionMeta) -> bool,
    ) -> Result<(), super::error::CheckpointError> {
        let _serial = self
            .meta_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut meta = self.state().meta.clone();
        if !change(&mut meta) {
            return Ok(());
        }
        checkpoint::write(&*self.storage, &self.dir, META_FILE, &meta)?;
        self.state_mut().meta = meta;
        Ok(())
    }

    /// Reads records from `from` on, about `max_bytes` of them (at least one
    /// record when any is visible). Returns an empty vector at the end.
    pub fn read(&self, from: Offset, max_bytes: usize) -> Result<Vec<StoredRecord>, ReadError> {
        let (segments, visible_end, start) = {
            let state = self.state();
            let first = state
                .segments
                .range(..=from.0)
                .next_back()
                .map_or(0, |(&b, _)| b);
            let segs: Vec<SegmentRef> = state
                .segments
                .range(first..)
                .map(|(_, s)| s.clone())
                .collect();
            (segs, state.visible_end, state.start_offset())
        };
        if from < start {
            return Err(ReadError::BeforeStart {
                requested: from,
                start,
            });
        }
        let mut reader = Reader {
            from,
            visible_end,
            max_bytes,
            out: Vec::new(),
            bytes: 0,
        };
        for (i, seg) in segments.iter().enumerate() {
            let next_base = segments.get(i + 1).map(|s| Offset(s.base.0));
            if reader.read_segment(seg, next_base)? {
                break;
            }
        }
        Ok(reader.out)
    }
}

struct Reader {
    from: Offset,
    visible_end: Offset,
    max_bytes: usize,
    out: Vec<StoredRecord>,
    bytes: usize,
}

impl Reader {
    /// Reads from one segment; returns true when the read is complete.
    fn read_segment(
        &mut self,
        seg: &Segment,
        next_base: Option<Offset>,
    ) -> Result<bool, ReadError> {
        let limit = seg.size();
        let mut position = seg.lookup(self.from);
        // The offset the batch at `position` must start with; unknown after
        // an index lookup or a skip, where it must merely not pass `from`.
        let mut expected = (position == 0).then_some(seg.base.0);
        let mut rescanned = false;
        loop {
            if self.from >= self.visible_end
                || (self.bytes >= self.max_bytes && !self.out.is_empty())
            {
                return Ok(true);
            }
            if position >= limit {
                return self.segment_ended(seg, next_base);
            }
            let raw = match seg.read_batch(position, limit) {
                Ok(raw) => raw,
                Err(BatchReadError::Io(e)) => {
                    return Err(StorageError {
                        path: seg.log_path.clone(),
                        source: e,
                    }
                    .into())
                }
                Err(BatchReadError::Short) => {
                    return self.damaged(seg, position, "incomplete batch".into())
                }
                Err(BatchReadError::Invalid(_))
                    if expected.is_none() && !rescanned && position > 0 =>
                {
                    // The index pointed at no batch: scan from the segment's start.
                    (position, expected, rescanned) = (0, Some(seg.base.0), true);
                    continue;
                }
                Err(BatchReadError::Invalid(e)) => match self.skip_damage(seg, position, limit)? {
                    Some(p) => {
                        position = p;
                        expected = None;
                        continue;
                    }
                    None => return self.damaged(seg, position, e.to_string()),
                },
            };
            let base = raw.header.base_offset;
            if !expected.map_or(base <= self.from.0, |e| e == base) {
                if expected.is_none() && !rescanned {
                    // The index pointed past the wanted offset: distrust it
                    // and scan this segment from its start.
                    (position, expected, rescanned) = (0, Some(seg.base.0), true);
                    continue;
                }
                let why = format!(
                    "batch holds offset {base}, expected {}",
                    expected.unwrap_or(self.from.0)
                );
                return self.damaged(seg, position, why);
            }
            expected = Some(raw.header.next_offset().0);
            position += raw.header.total_len();
            if raw.header.next_offset() <= self.from {
                continue;
            }
            self.take(&raw, seg)?;
        }
    }

    fn take(&mut self, raw: &segment::RawBatch, seg: &Segment) -> Result<(), ReadError> {
        let records = decode_raw(raw).map_err(|e| ReadError::Corrupt {
            path: seg.log_path.clone(),
            position: raw.position,
            offset: Offset(raw.header.base_offset),
            resume_at: Some(raw.header.next_offset()),
            reason: e.to_string(),
        })?;
        for record in records {
            if record.offset < self.from || record.offset >= self.visible_end {
                continue;
            }
            self.bytes += record.record.payload_len() + 16;
            self.from = Offset(record.offset.0 + 1);
            self.out.push(record);
        }
        Ok(())
    }

    /// A damaged batch that lies wholly before the wanted offset is skipped:
    /// returns where to continue.
    fn skip_damage(
        &self,
        seg: &Segment,
        position: u64,
        limit: u64,
    ) -> Result<Option<u64>, ReadError> {
        let next =
            recovery::find_next_valid(&**seg.log_file(), position + 1, Offset(seg.base.0), limit)
                .context(&seg.log_path)?;
        Ok(next
            .filter(|raw| raw.header.base_offset <= self.from.0)
            .map(|raw| raw.position))
    }

    fn damaged(&self, seg: &Segment, position: u64, reason: String) -> Result<bool, ReadError> {
        if !self.out.is_empty() {
            return Ok(true); // hand out what came before; the next read reports it
        }
        let limit = seg.size();
        let resume = recovery::find_next_valid(&**seg.log_file(), position + 1, self.from, limit)
            .context(&seg.log_path)?
            .map(|raw| Offset(raw.header.base_offset))
            .or_else(|| (seg.end_offset() > self.from).then_some(seg.end_offset()));
        Err(ReadError::Corrupt {
            path: seg.log_path.clone(),
            position,
            offset: self.from,
            resume_at: resume,
            reason,
        })
    }

    fn segment_ended(&self, seg: &Segment, next_base: Option<Offset>) -> Result<bool, ReadError> {
        match next_base {
            None => Ok(true),
            Some(next)
                if self.from < next && self.from < self.visible_end && self.out.is_empty() =>
            {
                Err(ReadError::Missing {
                    path: seg.log_path.clone(),
                    from: self.from,
                    to: next,
                })
            }
            Some(next) if self.from < next => Ok(true),
            Some(_) => Ok(false),
        }
    }
}

fn read_meta(storage: &dyn Storage, dir: &Path, findings: &mut Vec<Finding>) -> PartitionMeta {
    let path = dir.join(META_FILE);
    match checkpoint::read::<PartitionMeta>(storage, &path) {
        Ok(meta) => meta.unwrap_or_default(),
        Err(e) => {
            findings.push(Finding::BadCheckpoint {
                path,
                what: e.to_string(),
            });
            PartitionMeta::default()
        }
    }
}

/// Segment bases found in `dir`, sorted. Leftover temporary files are removed
/// (read-write); unknown files are reported and left alone.
fn list_segments(
    storage: &dyn Storage,
    dir: &Path,
    mode: Mode,
    findings: &mut Vec<Finding>,
) -> Result<Vec<u64>, OpenError> {
    let mut bases = Vec::new();
    if mode == Mode::ReadOnly && !storage.is_dir(dir) {
        return Ok(bases);
    }
    for name in storage.list_dir(dir).context(dir)? {
        if let Some(base) = parse_segment_name(&name, ".log") {
            bases.push(base);
        } else if name.ends_with(".tmp") && mode == Mode::ReadWrite {
            storage
                .remove_file(&dir.join(&name))
                .context(&dir.join(&name))?;
        } else if parse_segment_name(&name, ".index").is_none()
            && name != META_FILE
            && !name.ends_with(".tmp")
        {
            findings.push(Finding::StrayFile {
                path: dir.join(name),
            });
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

pub fn parse_segment_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Finishes a deletion that retention checkpointed but did not complete: a
/// segment wholly below the persisted start offset is removed.
fn drop_below_start(
    storage: &dyn Storage,
    dir: &Path,
    bases: Vec<u64>,
    start: u64,
    mode: Mode,
) -> Result<Vec<u64>, OpenError> {
    let wholly_below = |i: usize| bases.get(i + 1).is_some_and(|&next| next <= start);
    let keep_from = (0..bases.len())
        .find(|&i| !wholly_below(i))
        .unwrap_or(bases.len());
    if mode == Mode::ReadWrite && keep_from > 0 {
        for &base in &bases[..keep_from] {
            delete_segment_files(storage, dir, SegmentBase(base))?;
        }
        storage.sync_dir(dir).context(dir)?;
    }
    Ok(bases[keep_from..].to_vec())
}

pub fn delete_segment_files(
    storage: &dyn Storage,
    dir: &Path,
    base: SegmentBase,
) -> Result<(), StorageError> {
    for name in [segment::log_file_name(base), segment::index_file_name(base)] {
        let path = dir.join(name);
        if storage.exists(&path) {
            storage.remove_file(&path).context(&path)?;
        }
    }
    Ok(())
}

type Opened = (BTreeMap<u64, SegmentRef>, Vec<(PathBuf, CorruptSpan)>);

struct Opener<'a> {
    storage: &'a dyn Storage,
    /// Bytes to preallocate for a segment created or recovered as the active one.
    preallocate: u64,
    /// The partition's checkpointed recovery point (`PartitionMeta::synced`).
    recovery_point: u64,
    dir: &'a Path,
    interval: u64,
    mode: Mode,
    findings: &'a mut Vec<Finding>,
}

impl Opener<'_> {
    fn open_all(&mut self, bases: &[u64], meta: &PartitionMeta) -> Result<Opened, OpenError> {
        let mut segments = BTreeMap::new();
        let mut corrupt = Vec::new();
        if bases.is_empty() && self.mode == Mode::ReadWrite {
            let base = SegmentBase(meta.start.max(meta.replicated.unwrap_or(0)));
            let seg = Segment::create(self.storage, self.dir, base, self.preallocate)
                .context(self.dir)?;
            self.storage.sync_dir(self.dir).context(self.dir)?;
            segments.insert(base.0, Arc::new(seg));
        }
        for (i, &base) in bases.iter().enumerate() {
            let next_base = bases.get(i + 1).map(|&b| Offset(b));
            let (seg, spans) = self.open_segment(SegmentBase(base), next_base)?;
            corrupt.extend(spans.into_iter().map(|s| (seg.log_path.clone(), s)));
            segments.insert(base, Arc::new(seg));
        }
        Ok((segments, corrupt))
    }

    /// Opens one segment: trusts its index up to the last entry that points
    /// at a good batch, scans from there to the end of the file, and handles
    /// what the scan found. `next_base` is `None` for the newest segment.
    fn open_segment(
        &mut self,
        base: SegmentBase,
        next_base: Option<Offset>,
    ) -> Result<(Segment, Vec<CorruptSpan>), OpenError> {
        let log_path = self.dir.join(segment::log_file_name(base));
        let index_path = self.dir.join(segment::index_file_name(base));
        let log = self.storage.open(&log_path, false).context(&log_path)?;
        let index_file = self.open_index(&index_path)?;
        let len = log.len().context(&log_path)?;
        let (mut entries, well_formed) = match &index_file {
            Some(file) => load_index(&**file, &index_path, len)?,
            None => (Vec::new(), false),
        };
        let mut trimmed = false;
        if next_base.is_none() {
            // Past the recovery point the index may point at batches whose
            // predecessors never reached the disk: scan that stretch instead.
            let synced = entries
                .iter()
                .take_while(|e| base.0 + u64::from(e.relative_offset) < self.recovery_point)
                .count();
            trimmed = synced < entries.len();
            entries.truncate(synced);
            trimmed |=
                recovery::validate_entries(&*log, base.0, &mut entries).context(&log_path)?;
        }
        trimmed |= recovery::trim_index(&*log, base.0, &mut entries, len).context(&log_path)?;
        let (scan_from, expected) = entries.last().map_or((0, Offset(base.0)), |e| {
            (
                u64::from(e.position),
                Offset(base.0 + u64::from(e.relative_offset)),
            )
        });
        let unsynced_from = match next_base {
            None => Offset(self.recovery_point),
            Some(_) => Offset(u64::MAX), // sealed: synced when it was rolled
        };
        let scan =
            recovery::scan(&*log, scan_from, expected, len, unsynced_from).context(&log_path)?;
        let mut spans = scan.corrupt.clone();
        let size = self.settle_tail(&log_path, &*log, &scan, next_base, &mut spans)?;
        let last_pos = entries.last().map_or(0, |e| u64::from(e.position));
        let loaded = entries.len();
        entries.extend(recovery::index_entries_for(
            &scan.batches,
            base.0,
            last_pos,
            self.interval,
        ));
        if !well_formed || trimmed || (next_base.is_some() && entries.len() != loaded) {
            self.rewrite_index(&index_path, index_file.as_deref(), &entries)?;
        }
        let end = match next_base {
            Some(next) => {
                self.check_end(&log_path, &scan, next);
                next
            }
            None => scan.next_offset,
        };
        let seg = Segment::from_parts(
            base, log_path, index_path, log, index_file, entries, size, end.0,
        );
        if let Some(ts) = scan.max_timestamp_ms() {
            seg.note_timestamp(ts);
        }
        for span in &spans {
            self.findings.push(Finding::Corrupt {
                path: seg.log_path.clone(),
                span: span.clone(),
            });
        }
        Ok((seg, spans))
    }

    fn open_index(&mut self, path: &Path) -> Result<Option<FileHandle>, OpenError> {
        if self.storage.exists(path) {
            return Ok(Some(self.storage.open(path, false).context(path)?));
        }
        if self.mode == Mode::ReadWrite {
            let file = self.storage.open(path, true).context(path)?;
            self.storage.sync_dir(self.dir).context(self.dir)?;
            return Ok(Some(file));
        }
        Ok(None)
    }

    /// Truncates a torn tail of the newest segment; in an older segment the
    /// same bytes are corruption. Returns the segment's valid size.
    fn settle_tail(
        &mut self,
        path: &Path,
        log: &dyn StorageFile,
        scan: &Scan,
        next_base: Option<Offset>,
        spans: &mut Vec<CorruptSpan>,
    ) -> Result<u64, OpenError> {
        let Some(tail) = &scan.tail else {
            return Ok(scan.valid_end);
        };
        if let Some(next) = next_base {
            spans.push(CorruptSpan {
                position: tail.position,
                end_position: tail.position + tail.bytes,
                from: scan.next_offset,
                to: next,
                reason: tail.reason.clone(),
            });
            return Ok(tail.position + tail.bytes);
        }
        let truncated = self.mode == Mode::ReadWrite;
        if truncated {
            log.set_len(tail.position).context(path)?;
            log.sync_data().context(path)?;
            if let Err(e) = log.preallocate(self.preallocate) {
                tracing::debug!("{}: no preallocation ({e})", path.display());
            }
        }
        self.findings.push(Finding::TornTail {
            path: path.to_path_buf(),
            position: tail.position,
            bytes: tail.bytes,
            reason: tail.reason.clone(),
            truncated,
        });
        Ok(tail.position)
    }

    /// An older segment must hold every offset up to the next one's base.
    fn check_end(&mut self, path: &Path, scan: &Scan, next: Offset) {
        if scan.tail.is_none() && scan.next_offset < next {
            self.findings.push(Finding::Missing {
                path: path.to_path_buf(),
                from: scan.next_offset,
                to: next,
            });
        }
    }

    fn rewrite_index(
        &mut self,
        path: &Path,
        file: Option<&dyn StorageFile>,
        entries: &[segment::IndexEntry],
    ) -> Result<(), OpenError> {
        self.findings.push(Finding::IndexRebuilt {
            path: path.to_path_buf(),
        });
        let Some(file) = file.filter(|_| self.mode == Mode::ReadWrite) else {
            return Ok(());
        };
        let mut bytes = Vec::with_capacity(entries.len() * INDEX_ENTRY_LEN);
        for e in entries {
            bytes.extend_from_slice(&e.encode());
        }
        file.set_len(0).context(path)?;
        file.write_all_at(&bytes, 0).context(path)?;
        file.sync_data().context(path)?;
        Ok(())
    }
}

fn load_index(
    file: &dyn StorageFile,
    path: &Path,
    log_len: u64,
) -> Result<(Vec<segment::IndexEntry>, bool), OpenError> {
    let len = file.len().context(path)?;
    // An index has one entry per index interval; anything larger than the
    // segment itself is damage, and is not read into memory.
    if len > log_len {
        return Ok((Vec::new(), false));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0).context(path)?;
    Ok(recovery::decode_index(&bytes, log_len))
}

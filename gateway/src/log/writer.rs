//! The single writer thread: group commit.
//!
//! Producers queue requests; the writer takes everything queued, writes one
//! batch per partition, issues one fsync per written segment, and only then
//! resolves the waiters and lets readers see the records. While it syncs, new
//! requests queue up and form the next group.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::batch;
use super::config::FsyncPolicy;
use super::error::{AppendError, StorageContext, StorageError};
use super::partition::PartitionLog;
use super::retention;
use super::segment::{Segment, SegmentRef};
use super::syncer::{self, publish, Written};
use super::ticket::{Appended, Completer};
use super::types::{Offset, Record, SegmentBase};
use super::{Shared, TopicLog};

/// Records per on-disk batch are capped so a batch stays well under
/// `batch::MAX_BATCH_BYTES` once encoded.
const MAX_BATCH_PAYLOAD: usize = batch::MAX_BATCH_BYTES / 4;
/// Stop gathering a group at this size: bounded latency for the first waiter.
const MAX_GROUP_BYTES: usize = 8 << 20;
const RETENTION_EVERY: Duration = Duration::from_secs(1);
/// Upper bound of the wait for producers to come back before a group is written.
const MAX_GATHER_WAIT: Duration = Duration::from_millis(2);
const DISK_CHECK_EVERY: Duration = Duration::from_millis(200);

pub struct Request {
    pub topic: Arc<TopicLog>,
    pub part: Arc<PartitionLog>,
    pub records: Vec<Record>,
    pub bytes: usize,
    pub done: Completer,
}

pub enum Msg {
    Append(Request),
    /// Run retention now (instead of at the next tick), then resolve.
    Retention(Completer),
    Shutdown,
}

pub struct Writer {
    pub rx: Receiver<Msg>,
    pub shared: Arc<Shared>,
    /// Requests acknowledged by the last fsync: that many producers are
    /// likely to come straight back, and are worth a moment's wait.
    last_acked: usize,
    /// Moving average of the group fsync time, which bounds that wait.
    fsync_avg: Duration,
    /// Partitions under `interval_ms` written since their last fsync.
    /// Keyed by the partition's address (identity only).
    dirty: HashMap<usize, (Arc<PartitionLog>, SegmentRef, Offset, Instant)>,
    last_retention: Instant,
    last_recovery_point: Instant,
    disk: DiskWatch,
    buf: Vec<u8>,
}

impl Writer {
    pub fn new(rx: Receiver<Msg>, shared: Arc<Shared>) -> Writer {
        Writer {
            rx,
            shared,
            last_acked: 0,
            fsync_avg: Duration::ZERO,
            dirty: HashMap::new(),
            last_retention: Instant::now(),
            last_recovery_point: Instant::now(),
            disk: DiskWatch::default(),
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    pub fn run(mut self) {
        loop {
            let msg = match self.rx.recv_timeout(self.next_deadline()) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => {
                    self.housekeeping();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let (group, shutdown) = self.gather(msg);
            self.process(group);
            self.housekeeping();
            if shutdown {
                break;
            }
        }
        self.shutdown();
        self.shared.writer_stopped.store(true, Ordering::Release);
        self.shared.capacity.wake_all();
    }

    /// Takes `first` and everything queued behind it. When the last fsync
    /// released more producers than have come back yet, waits for them a
    /// little (at most half an fsync): a record that just misses a group
    /// waits a whole fsync for the next one.
    fn gather(&mut self, first: Msg) -> (Vec<Request>, bool) {
        let mut group = Vec::new();
        let mut bytes = 0;
        let deadline = Instant::now() + (self.fsync_avg / 2).min(MAX_GATHER_WAIT);
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Shutdown => return (group, true),
                Msg::Retention(done) => {
                    self.last_retention = Instant::now() - RETENTION_EVERY;
                    let count = group.len() as u32;
                    self.process(std::mem::take(&mut group));
                    self.housekeeping();
                    done.complete(Ok(Appended {
                        first: Offset(0),
                        count,
                    }));
                }
                Msg::Append(req) => {
                    bytes += req.bytes;
                    self.shared
                        .pending_bytes
                        .fetch_sub(req.bytes as u64, Ordering::AcqRel);
                    self.shared.capacity.wake_all();
                    group.push(req);
                }
            }
            if bytes >= MAX_GROUP_BYTES {
                break;
            }
            next = self.rx.try_recv().ok();
            if next.is_none() && group.len() < self.last_acked {
                let left = deadline.saturating_duration_since(Instant::now());
                next = self.rx.recv_timeout(left).ok();
            }
        }
        (group, false)
    }

    fn next_deadline(&self) -> Duration {
        let now = Instant::now();
        let retention = (self.last_retention + RETENTION_EVERY).saturating_duration_since(now);
        let sync = self
            .dirty
            .values()
            .map(|(_, _, _, due)| due.saturating_duration_since(now))
            .min();
        sync.map_or(retention, |s| s.min(retention))
    }

    fn process(&mut self, group: Vec<Request>) {
        if let Some(reason) = self.shared.poison_reason() {
            for req in group {
                req.done
                    .complete(Err(AppendError::Poisoned(reason.clone())));
            }
            return;
        }
        let mut to_sync = Vec::new();
        let mut written = Vec::new();
        for bucket in by_partition(group) {
            match self.write_bucket(bucket) {
                Ok(Some((FsyncPolicy::Always, w))) => to_sync.push(w),
                Ok(Some((policy, w))) => written.push((policy, w)),
                Ok(None) => {}
                Err(e) => {
                    to_sync.extend(written.into_iter().map(|(_, w)| w));
                    return self.fail(e.to_string(), to_sync);
                }
            }
        }
        for (policy, w) in written {
            self.finish(policy, w);
        }
        self.last_acked = to_sync.iter().map(|w| w.acks.len()).sum();
        if !to_sync.is_empty() {
            if let Ok(took) = syncer::sync_and_ack(&self.shared, to_sync) {
                self.fsync_avg = (self.fsync_avg * 7 + took) / 8;
            }
        }
    }

    /// A storage failure: poison the log and fail every waiter of the group.
    fn fail(&mut self, reason: String, written: Vec<Written>) {
        tracing::error!("log write failed, refusing further writes: {reason}");
        self.shared.poison(reason.clone());
        syncer::fail_all(written, &reason);
    }

    /// Makes a written partition visible per its policy and resolves its waiters.
    fn finish(&mut self, policy: FsyncPolicy, w: Written) {
        match policy {
            FsyncPolicy::Always | FsyncPolicy::Never => publish(&self.shared, &w.part, w.end),
            FsyncPolicy::IntervalMs(ms) => {
                let key = Arc::as_ptr(&w.part) as usize;
                let due = Instant::now() + Duration::from_millis(ms);
                let entry =
                    self.dirty
                        .entry(key)
                        .or_insert((w.part.clone(), w.seg.clone(), w.end, due));
                entry.1 = w.seg.clone();
                entry.2 = w.end;
            }
        }
        for (done, appended) in w.acks {
            done.complete(Ok(appended));
        }
    }

    fn write_bucket(
        &mut self,
        reqs: Vec<Request>,
    ) -> Result<Option<(FsyncPolicy, Written)>, StorageError> {
        let topic = reqs[0].topic.clone();
        let part = reqs[0].part.clone();
        let reqs = self.admit(&topic, reqs)?;
        if reqs.is_empty() {
            return Ok(None);
        }
        let mut next = part.state().next_offset;
        let mut reqs = reqs;
        if !self.shared.clock.trusted() {
            mark_untrusted(&part, next, &mut reqs).map_err(checkpoint_to_storage)?;
        }
        let mut acks = Vec::with_capacity(reqs.len());
        let mut seg = None;
        for chunk in chunk_requests(reqs) {
            let count: usize = chunk.iter().map(|r| r.records.len()).sum();
            let mut records = Vec::with_capacity(count);
            for req in chunk {
                acks.push((
                    req.done,
                    Appended {
                        first: Offset(next.0 + records.len() as u64),
                        count: req.records.len() as u32,
                    },
                ));
                records.extend(req.records);
            }
            seg = Some(self.write_batch(&topic, &part, next, &records)?);
            next = Offset(next.0 + count as u64);
        }
        part.state_mut().next_offset = next;
        // A roll in between synced the earlier segment; the last one written
        // is the one still to sync.
        let Some(seg) = seg else { return Ok(None) };
        Ok(Some((
            topic.config.fsync,
            Written {
                part,
                seg,
                end: next,
                acks,
            },
        )))
    }

    fn write_batch(
        &mut self,
        topic: &TopicLog,
        part: &PartitionLog,
        base: Offset,
        records: &[Record],
    ) -> Result<SegmentRef, StorageError> {
        self.buf.clear();
        let header = batch::encode(base, records, topic.config.compression, &mut self.buf)
            .map_err(|e| StorageError {
                path: part.dir.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
            })?;
        let seg = self.segment_for(
            topic,
            part,
            base,
            records.len() as u64,
            self.buf.len() as u64,
        )?;
        seg.append(&self.buf, &header, self.shared.config.index_interval_bytes)?;
        self.shared
            .stats
            .record_write(self.buf.len() as u64, records.len() as u64);
        let payload: usize = records.iter().map(Record::payload_len).sum();
        topic
            .appended_records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        topic
            .appended_bytes
            .fetch_add(payload as u64, Ordering::Relaxed);
        self.disk.written(self.buf.len() as u64);
        Ok(seg)
    }

    /// The active segment, after rolling to a new one when this batch would
    /// overflow it.
    fn segment_for(
        &mut self,
        topic: &TopicLog,
        part: &PartitionLog,
        base: Offset,
        count: u64,
        len: u64,
    ) -> Result<SegmentRef, StorageError> {
        let active = part.state().active().cloned().ok_or_else(|| StorageError {
            path: part.dir.clone(),
            source: std::io::Error::other("partition has no segment"),
        })?;
        let too_big = active.size() > 0 && active.size() + len > topic.config.segment_bytes();
        let too_many = base.0 + count - active.base.0 >= u64::from(u32::MAX);
        if !too_big && !too_many {
            return Ok(active);
        }
        active.seal()?;
        let seg = Arc::new(
            Segment::create(
                &*part.storage,
                &part.dir,
                SegmentBase(base.0),
                topic.config.segment_bytes(),
            )
            .context(&part.dir)?,
        );
        part.storage.sync_dir(&part.dir).context(&part.dir)?;
        part.state_mut().segments.insert(base.0, seg.clone());
        Ok(seg)
    }

    /// Applies the topic's quota and the disk reserve; refused requests are
    /// resolved with `QuotaExceeded`.
    fn admit(
        &mut self,
        topic: &TopicLog,
        reqs: Vec<Request>,
    ) -> Result<Vec<Request>, StorageError> {
        let disk_low = self.disk.low(&self.shared, &topic.partitions[0].dir);
        if topic.limits().retention_bytes.is_none() && !disk_low {
            return Ok(reqs);
        }
        let incoming: u64 = reqs.iter().map(|r| r.bytes as u64).sum();
        let fits = retention::make_room(
            topic,
            incoming,
            disk_low,
            self.shared.config.replication_enabled,
        )
        .map_err(checkpoint_to_storage)?;
        if fits {
            return Ok(reqs);
        }
        let quota_bytes = topic.limits().retention_bytes.unwrap_or(0);
        for req in reqs {
            self.shared
                .stats
                .rejected_full
                .fetch_add(req.records.len() as u64, Ordering::Relaxed);
            req.done.complete(Err(AppendError::QuotaExceeded {
                topic: topic.name.clone(),
                quota_bytes,
            }));
        }
        Ok(Vec::new())
    }

    fn housekeeping(&mut self) {
        if self.shared.poison_reason().is_some() {
            return;
        }
        if let Err(e) = self.sync_due(false) {
            self.fail(e.to_string(), Vec::new());
            return;
        }
        let every = Duration::from_millis(self.shared.config.recovery_point_interval_ms);
        if self.last_recovery_point.elapsed() >= every {
            self.last_recovery_point = Instant::now();
            if let Err(e) = self.checkpoint_recovery_points(false) {
                tracing::error!("checkpointing recovery points failed: {e}");
            }
        }
        if self.last_retention.elapsed() >= RETENTION_EVERY {
            self.last_retention = Instant::now();
            let now_ms = self.shared.clock.now_ms();
            let trusted = self.shared.clock.trusted();
            let replication = self.shared.config.replication_enabled;
            for topic in self.shared.topics.values().cloned().collect::<Vec<_>>() {
                let disk_low = self.disk.low(&self.shared, &topic.partitions[0].dir);
                let aged = if trusted {
                    retention::settle_floors(&topic, now_ms)
                        .and_then(|()| retention::expire(&topic, now_ms, replication))
                } else {
                    Ok(()) // stamps may be wrong: age retention waits for a trusted clock
                };
                let result = aged.and_then(|()| {
                    let limited = topic.limits().retention_bytes.is_some() || disk_low;
                    if limited {
                        retention::make_room(&topic, 0, disk_low, replication)?;
                    }
                    Ok(())
                });
                if let Err(e) = result {
                    tracing::error!(topic = %topic.name, "retention failed: {e}");
                }
            }
        }
    }

    /// Records each partition's synced end as its recovery point. Only what
    /// readers can see is synced (`never` topics only after a final sync).
    fn checkpoint_recovery_points(
        &self,
        all_synced: bool,
    ) -> Result<(), super::error::CheckpointError> {
        for topic in self.shared.topics.values() {
            if topic.config.fsync == FsyncPolicy::Never && !all_synced {
                continue;
            }
            for part in &topic.partitions {
                let synced = part.state().visible_end.0;
                part.update_meta(|meta| {
                    let advances = synced > meta.synced;
                    meta.synced = meta.synced.max(synced);
                    advances
                })?;
            }
        }
        Ok(())
    }

    /// Fsyncs `interval_ms` partitions whose window has passed (all, with `force`).
    fn sync_due(&mut self, force: bool) -> Result<(), StorageError> {
        let now = Instant::now();
        let due: Vec<_> = self
            .dirty
            .iter()
            .filter(|(_, v)| force || v.3 <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            if let Some((part, seg, end, _)) = self.dirty.remove(&key) {
                seg.sync_log()?;
                publish(&self.shared, &part, end);
            }
        }
        Ok(())
    }

    /// A clean stop: everything written is synced, indexes included.
    fn shutdown(&mut self) {
        while let Ok(msg) = self.rx.try_recv() {
            if let Msg::Append(req) = msg {
                self.process(vec![req]);
            }
        }
        if self.shared.poison_reason().is_some() {
            return;
        }
        let result = self.sync_due(true).and_then(|()| {
            for topic in self.shared.topics.values() {
                for part in &topic.partitions {
                    let active = part.state().active().cloned();
                    if let Some(seg) = active {
                        seg.seal()?;
                    }
                    let end = part.state().next_offset;
                    publish(&self.shared, part, end);
                }
            }
            self.checkpoint_recovery_points(true)
                .map_err(checkpoint_to_storage)
        });
        if let Err(e) = result {
            tracing::error!("final sync failed: {e}");
            self.shared.poison(e.to_string());
        }
    }
}

/// Marks records appended while the clock is untrusted with the
/// `tidewell.clock: unsynced` header, and persists (once per run and
/// partition) where such records start, before they are acknowledged.
fn mark_untrusted(
    part: &PartitionLog,
    next: Offset,
    reqs: &mut [Request],
) -> Result<(), super::error::CheckpointError> {
    use super::clock::{UNSYNCED_HEADER, UNSYNCED_VALUE};
    for req in reqs.iter_mut() {
        for record in &mut req.records {
            let value = bytes::Bytes::from_static(UNSYNCED_VALUE);
            record.headers.push((UNSYNCED_HEADER.to_string(), value));
        }
    }
    part.update_meta(|meta| {
        let first = meta.untrusted_from.is_none();
        meta.untrusted_from.get_or_insert(next.0);
        first
    })
}

fn checkpoint_to_storage(e: super::error::CheckpointError) -> StorageError {
    match e {
        super::error::CheckpointError::Storage(s) => s,
        other => StorageError {
            path: Default::default(),
            source: std::io::Error::other(other.to_string()),
        },
    }
}

/// Groups requests by partition, keeping arrival order inside each.
fn by_partition(group: Vec<Request>) -> Vec<Vec<Request>> {
    let mut buckets: Vec<Vec<Request>> = Vec::new();
    for req in group {
        match buckets
            .iter_mut()
            .find(|b| Arc::ptr_eq(&b[0].part, &req.part))
        {
            Some(bucket) => bucket.push(req),
            None => buckets.push(vec![req]),
        }
    }
    buckets
}

/// Splits a partition's requests into batches of bounded size.
fn chunk_requests(reqs: Vec<Request>) -> Vec<Vec<Request>> {
    let mut chunks: Vec<Vec<Request>> = Vec::new();
    let mut size = 0;
    for req in reqs {
        if chunks.is_empty() || size + req.bytes > MAX_BATCH_PAYLOAD {
            chunks.push(Vec::new());
            size = 0;
        }
        size += req.bytes;
        if let Some(last) = chunks.last_mut() {
            last.push(req);
        }
    }
    chunks
}

/// Free space on the log's filesystem, measured now and then and estimated in
/// between from what was written.
#[derive(Default)]
struct DiskWatch {
    checked: Option<Instant>,
    available: u64,
    written_since: u64,
}

impl DiskWatch {
    fn written(&mut self, bytes: u64) {
        self.written_since += bytes;
    }

    fn low(&mut self, shared: &Shared, dir: &std::path::Path) -> bool {
        let stale = self.checked.is_none_or(|t| t.elapsed() >= DISK_CHECK_EVERY)
            || self.written_since > (1 << 20);
        if stale {
            if let Ok(available) = shared.storage.available_bytes(dir) {
                self.available = available;
            }
            self.checked = Some(Instant::now());
            self.written_since = 0;
        }
        self.available.saturating_sub(self.written_since) < shared.config.min_free_bytes
    }
}

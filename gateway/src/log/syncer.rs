//! The second stage of group commit: fsync, then acknowledge.
//!
//! The writer hands over what it wrote for `fsync = "always"` topics and goes
//! on writing the next group while this thread syncs. One `fdatasync` per
//! segment covers every batch written to it before the call, so each fsync
//! serves all producers that queued while the previous one ran: the disk is
//! kept busy with syncs, and producers share them.

use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use super::error::{AppendError, StorageError};
use super::partition::PartitionLog;
use super::segment::SegmentRef;
use super::ticket::{Appended, Completer};
use super::types::Offset;
use super::Shared;

/// A partition's share of one written group, waiting for its fsync.
pub struct Written {
    pub part: Arc<PartitionLog>,
    pub seg: SegmentRef,
    pub end: Offset,
    pub acks: Vec<(Completer, Appended)>,
}

pub struct Syncer {
    pub rx: Receiver<Vec<Written>>,
    pub shared: Arc<Shared>,
}

impl Syncer {
    pub fn run(self) {
        while let Ok(first) = self.rx.recv() {
            let mut jobs = first;
            while let Ok(more) = self.rx.try_recv() {
                jobs.extend(more);
            }
            self.sync_and_ack(jobs);
        }
    }

    fn sync_and_ack(&self, jobs: Vec<Written>) {
        if let Some(reason) = self.shared.poison_reason() {
            return fail_all(jobs, &reason);
        }
        if let Err(e) = self.sync_segments(&jobs) {
            let reason = e.to_string();
            tracing::error!("log fsync failed, refusing further writes: {reason}");
            self.shared.poison(reason.clone());
            return fail_all(jobs, &reason);
        }
        for job in jobs {
            publish(&job.part, job.end);
            for (done, appended) in job.acks {
                done.complete(Ok(appended));
            }
        }
    }

    fn sync_segments(&self, jobs: &[Written]) -> Result<(), StorageError> {
        let mut synced: Vec<usize> = Vec::with_capacity(jobs.len());
        for job in jobs {
            let key = Arc::as_ptr(&job.seg) as usize;
            if !synced.contains(&key) {
                let started = Instant::now();
                job.seg.sync_log()?;
                self.shared.stats.record_fsync(started.elapsed());
                synced.push(key);
            }
        }
        Ok(())
    }
}

pub fn fail_all(jobs: Vec<Written>, reason: &str) {
    for job in jobs {
        for (done, _) in job.acks {
            done.complete(Err(AppendError::Poisoned(reason.to_string())));
        }
    }
}

/// Lets readers see a partition up to `end`.
pub fn publish(part: &PartitionLog, end: Offset) {
    let mut state = part.state_mut();
    if end > state.visible_end {
        state.visible_end = end;
    }
}

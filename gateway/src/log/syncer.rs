//! The second half of group commit: one fsync per written segment, then the
//! waiters are released and readers may see the records.
//!
//! One `fdatasync` covers every batch written to the segment before the call,
//! so all producers whose records went into the group share it.

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

/// Syncs the segments behind `jobs`, then resolves their waiters. Returns
/// how long the fsyncs took, or the failure (the log is then poisoned).
pub fn sync_and_ack(shared: &Shared, jobs: Vec<Written>) -> Result<std::time::Duration, String> {
    if let Some(reason) = shared.poison_reason() {
        fail_all(jobs, &reason);
        return Err(reason);
    }
    let started = Instant::now();
    if let Err(e) = sync_segments(shared, &jobs) {
        let reason = e.to_string();
        tracing::error!("log fsync failed, refusing further writes: {reason}");
        shared.poison(reason.clone());
        fail_all(jobs, &reason);
        return Err(reason);
    }
    let took = started.elapsed();
    for job in jobs {
        publish(shared, &job.part, job.end);
        for (done, appended) in job.acks {
            done.complete(Ok(appended));
        }
    }
    Ok(took)
}

fn sync_segments(shared: &Shared, jobs: &[Written]) -> Result<(), StorageError> {
    let mut synced: Vec<usize> = Vec::with_capacity(jobs.len());
    for job in jobs {
        let key = Arc::as_ptr(&job.seg) as usize;
        if !synced.contains(&key) {
            let started = Instant::now();
            job.seg.sync_log()?;
            shared.stats.record_fsync(started.elapsed());
            synced.push(key);
        }
    }
    Ok(())
}

pub fn fail_all(jobs: Vec<Written>, reason: &str) {
    for job in jobs {
        for (done, _) in job.acks {
            done.complete(Err(AppendError::Poisoned(reason.to_string())));
        }
    }
}

/// Lets readers see a partition up to `end`, and wakes whoever waits for
/// new records ([`Log::appended_after`](super::Log::appended_after)).
pub fn publish(shared: &Shared, part: &PartitionLog, end: Offset) {
    {
        let mut state = part.state_mut();
        if end <= state.visible_end {
            return;
        }
        state.visible_end = end;
    }
    shared
        .published
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    shared.appended.wake_all();
}

//! Retention: deleting whole segments by age and by quota, run by the writer.
//!
//! Order of a deletion: persist the partition's new start offset (and any gap)
//! in its checkpoint, then delete the files, then fsync the directory. A crash
//! in between leaves files below the start offset, which open deletes.

use std::sync::Arc;

use super::config::WhenFull;
use super::error::{CheckpointError, StorageContext};
use super::partition::{delete_segment_files, PartitionLog};
use super::segment::SegmentRef;
use super::TopicLog;

/// Most gaps remembered per partition; older ones are merged into the count.
const MAX_GAPS: usize = 1000;

/// A segment that may be deleted, and whether doing so loses unreplicated data.
struct Candidate {
    part: Arc<PartitionLog>,
    seg: SegmentRef,
    replicated: bool,
}

/// Oldest non-active segment of the topic (by newest record), optionally only
/// among replicated ones.
fn oldest(topic: &TopicLog, replication_enabled: bool, only_replicated: bool) -> Option<Candidate> {
    let mut best: Option<Candidate> = None;
    for part in &topic.partitions {
        let state = part.state();
        let Some((_, seg)) = state.segments.iter().next() else {
            continue;
        };
        if state.segments.len() < 2 {
            continue; // never delete the active segment
        }
        let replicated = replication_enabled
            && state
                .meta
                .replicated
                .is_some_and(|r| seg.end_offset().0 <= r);
        if only_replicated && !replicated {
            continue;
        }
        let older = best
            .as_ref()
            .is_none_or(|b| seg.max_timestamp_ms() < b.seg.max_timestamp_ms());
        if older {
            best = Some(Candidate {
                part: part.clone(),
                seg: seg.clone(),
                replicated,
            });
        }
    }
    best
}

/// Deletes one segment, recording a gap when it held unreplicated data.
fn delete(candidate: Candidate, replication_enabled: bool) -> Result<u64, CheckpointError> {
    let Candidate {
        part,
        seg,
        replicated,
    } = candidate;
    let freed = seg.size();
    let end = seg.end_offset().0;
    part.update_meta(|meta| {
        meta.start = meta.start.max(end);
        if !replicated {
            meta.dropped_records += end - seg.base.0;
            if replication_enabled {
                push_gap(&mut meta.gaps, seg.base.0, end);
            }
        }
        true
    })?;
    if !replicated {
        tracing::warn!(
            topic = %part.topic, partition = %part.id, from = seg.base.0, to = end,
            "quota reached: dropped {} records that were not replicated", end - seg.base.0
        );
    }
    part.state_mut().segments.remove(&seg.base.0);
    delete_segment_files(&*part.storage, &part.dir, seg.base)?;
    part.storage.sync_dir(&part.dir).context(&part.dir)?;
    Ok(freed)
}

fn push_gap(gaps: &mut Vec<(u64, u64)>, from: u64, to: u64) {
    match gaps.last_mut() {
        Some(last) if last.1 == from => last.1 = to,
        _ => gaps.push((from, to)),
    }
    if gaps.len() > MAX_GAPS {
        gaps.remove(0);
    }
}

pub fn topic_bytes(topic: &TopicLog) -> u64 {
    topic
        .partitions
        .iter()
        .map(|p| p.state().size_bytes())
        .sum()
}

/// Frees space until `incoming` more bytes fit in the topic's quota (and the
/// disk is above its reserve, when `disk_low`). Replicated segments go first;
/// unreplicated ones only under `drop_oldest`. Returns whether it fits now.
pub fn make_room(
    topic: &TopicLog,
    incoming: u64,
    disk_low: bool,
    replication_enabled: bool,
) -> Result<bool, CheckpointError> {
    let limits = topic.limits();
    let quota = limits.retention_bytes.unwrap_or(u64::MAX);
    let mut used = topic_bytes(topic);
    let mut low = disk_low;
    while low || used.saturating_add(incoming) > quota {
        let victim = oldest(topic, replication_enabled, true).or_else(|| match limits.when_full {
            WhenFull::DropOldest => oldest(topic, replication_enabled, false),
            WhenFull::RejectNew => None,
        });
        let Some(victim) = victim else {
            return Ok(!low && limits.when_full == WhenFull::DropOldest);
        };
        used -= delete(victim, replication_enabled)?.min(used);
        low = false; // one segment per check: the caller measures the disk again
    }
    Ok(true)
}

/// Once the clock is trusted: gives each partition's range appended while
/// it was not an age floor of `now_ms` (see `log::clock`), and forgets
/// floors wholly below the partition's start.
pub fn settle_floors(topic: &TopicLog, now_ms: i64) -> Result<(), CheckpointError> {
    for part in &topic.partitions {
        let end = part.state().next_offset.0;
        part.update_meta(|meta| {
            let mut changed = false;
            if let Some(from) = meta.untrusted_from.take() {
                super::clock::push_floor(&mut meta.age_floors, from, end, now_ms);
                tracing::info!(
                    topic = %part.topic, partition = %part.id, from, to = end,
                    "clock trusted: records stamped before it age from now"
                );
                changed = true;
            }
            let start = meta.start;
            let before = meta.age_floors.len();
            meta.age_floors.retain(|&(_, to, _)| to > start);
            changed || meta.age_floors.len() != before
        })?;
    }
    Ok(())
}

/// Deletes segments older than the topic's age limit (only replicated ones
/// while replication is on), oldest first in each partition. A segment's
/// age runs from its newest record's stamp, or from the age floor of the
/// records stamped before the clock was trusted.
pub fn expire(
    topic: &TopicLog,
    now_ms: i64,
    replication_enabled: bool,
) -> Result<(), CheckpointError> {
    let Some(limit) = topic.limits().retention_ms else {
        return Ok(());
    };
    let cutoff = now_ms.saturating_sub(limit as i64);
    for part in &topic.partitions {
        while let Some(candidate) = expired(part, cutoff, replication_enabled) {
            delete(candidate, replication_enabled)?;
        }
    }
    Ok(())
}

/// The partition's oldest segment, when it is not the active one, may go
/// (replicated, if replication is on) and has aged past `cutoff`.
fn expired(part: &Arc<PartitionLog>, cutoff: i64, replication_enabled: bool) -> Option<Candidate> {
    let state = part.state();
    if state.segments.len() < 2 {
        return None; // never delete the active segment
    }
    let (_, seg) = state.segments.iter().next()?;
    let replicated = replication_enabled
        && state
            .meta
            .replicated
            .is_some_and(|r| seg.end_offset().0 <= r);
    if replication_enabled && !replicated {
        return None;
    }
    let floors = &state.meta.age_floors;
    let aged_from = super::clock::age_from(
        floors,
        seg.base.0,
        seg.end_offset().0,
        seg.max_timestamp_ms(),
    );
    (aged_from < cutoff).then(|| Candidate {
        part: part.clone(),
        seg: seg.clone(),
        replicated,
    })
}

//! One read-only view of the log for everyone above it: `/status`,
//! `/metrics`, the replicator and the benches read a [`PartitionSummary`]
//! instead of the partition's locked state, and the backlog is computed
//! in one place.

use serde::Serialize;

use super::partition::PartState;
use super::types::{Offset, Partition};
use super::{Log, PartitionLog};

/// What is not yet acknowledged upstream: the kept records from the cursor
/// (or the start) to the visible end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Backlog {
    pub records: u64,
    /// An estimate: each segment's bytes, shared by its records evenly.
    pub bytes: u64,
}

/// A snapshot of one partition, taken under its read lock and released at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSummary {
    pub partition: Partition,
    /// First offset still kept.
    pub start: Offset,
    /// Offset after the newest durable (visible) record.
    pub end: Offset,
    /// The checkpointed replication cursor: every offset below it is
    /// acknowledged upstream. `None` in buffer-only mode or before the first.
    pub replicated: Option<Offset>,
    pub size_bytes: u64,
    pub backlog: Backlog,
    /// Records `drop_oldest` deleted before they were replicated.
    pub dropped_records: u64,
    /// The ranges they were in (newest last, bounded).
    pub gaps: Vec<(u64, u64)>,
}

/// A snapshot of one topic and its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSummary {
    pub name: String,
    pub retention_bytes: Option<u64>,
    /// Records and payload bytes appended since start.
    pub appended_records: u64,
    pub appended_bytes: u64,
    pub partitions: Vec<PartitionSummary>,
}

impl TopicSummary {
    pub fn size_bytes(&self) -> u64 {
        self.partitions.iter().map(|p| p.size_bytes).sum()
    }

    pub fn dropped_records(&self) -> u64 {
        self.partitions.iter().map(|p| p.dropped_records).sum()
    }
}

impl PartState {
    /// The one backlog arithmetic: kept records from `max(from, start)` to
    /// the visible end, and their share of each segment's bytes.
    pub(super) fn backlog(&self, from: Offset) -> Backlog {
        let from = from.0.max(self.start_offset().0);
        let bytes = self
            .segments
            .values()
            .filter(|s| s.end_offset().0 > from)
            .map(|s| {
                let (base, end) = (s.base.0, s.end_offset().0);
                s.size().saturating_mul(end - base.max(from)) / end.saturating_sub(base).max(1)
            })
            .sum();
        Backlog {
            records: self.visible_end.0.saturating_sub(from),
            bytes,
        }
    }
}

fn summarize(part: &PartitionLog, cursor: Option<Offset>) -> PartitionSummary {
    let state = part.state();
    let start = state.start_offset();
    let replicated = state.meta.replicated.map(Offset);
    PartitionSummary {
        partition: part.id,
        start,
        end: state.visible_end,
        replicated,
        size_bytes: state.size_bytes(),
        backlog: state.backlog(cursor.or(replicated).unwrap_or(start)),
        dropped_records: state.meta.dropped_records,
        gaps: state.meta.gaps.clone(),
    }
}

impl Log {
    /// One partition, its backlog counted from the checkpointed cursor.
    pub fn summary(&self, topic: &str, partition: Partition) -> Option<PartitionSummary> {
        self.summary_from(topic, partition, None)
    }

    /// As [`Log::summary`], the backlog counted from `cursor` when given
    /// (the replicator's cursor runs ahead of its checkpoint).
    pub fn summary_from(
        &self,
        topic: &str,
        partition: Partition,
        cursor: Option<Offset>,
    ) -> Option<PartitionSummary> {
        Some(summarize(self.partition(topic, partition)?, cursor))
    }

    /// Every topic, in name order.
    pub fn summaries(&self) -> Vec<TopicSummary> {
        self.topics()
            .map(|t| TopicSummary {
                name: t.name.clone(),
                retention_bytes: t.limits().retention_bytes,
                appended_records: t
                    .appended_records
                    .load(std::sync::atomic::Ordering::Relaxed),
                appended_bytes: t.appended_bytes.load(std::sync::atomic::Ordering::Relaxed),
                partitions: t.partitions.iter().map(|p| summarize(p, None)).collect(),
            })
            .collect()
    }
}

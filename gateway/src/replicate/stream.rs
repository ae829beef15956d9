//! One local partition's ordered stream upstream: what was sent, what was
//! acknowledged, and the cursor that only moves over a contiguous prefix of
//! acknowledged records.

use std::collections::{BTreeSet, VecDeque};

use super::config::Partitioning;
use crate::log::Partition;

/// A sent record, or a skipped range (already upstream, or lost locally).
#[derive(Debug, Clone, Copy)]
struct Slot {
    offset: u64,
    /// Exclusive; `offset + 1` for a sent record.
    end: u64,
    bytes: u64,
    acked: bool,
}

/// Counters of one stream, for status and metrics.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct StreamCounters {
    pub sent_records: u64,
    pub sent_bytes: u64,
    pub acked_records: u64,
    /// Records not sent because they were found upstream already.
    pub skipped_upstream: u64,
    /// Records dropped locally (quota, `drop_oldest`) before they were replicated.
    pub gap_records: u64,
    /// Records lost to damaged log data.
    pub corrupt_records: u64,
    pub delivery_errors: u64,
}

pub struct Stream {
    pub index: u32,
    pub topic: String,
    pub partition: Partition,
    pub remote_topic: String,
    pub partitioning: Partitioning,
    /// What its upstream records carry (provenance, headers, envelope).
    pub shape: std::sync::Arc<super::shape::Shape>,
    /// Partition count of the remote topic, learnt per session.
    pub remote_partitions: usize,
    /// Every offset below it is acknowledged upstream (or skipped).
    pub cursor: u64,
    /// The cursor last written to the partition's checkpoint.
    pub persisted: u64,
    /// The next offset to read from the log.
    pub next_read: u64,
    slots: VecDeque<Slot>,
    /// Offsets at or past the cursor known to be upstream already: acked in
    /// an earlier session past a failed record, or found in the remote tail.
    upstream: BTreeSet<u64>,
    pub in_flight_bytes: u64,
    pub counters: StreamCounters,
    /// When the stream last had nothing to read (for `live_first`).
    pub caught_up: bool,
    /// While its new records linger (the rule's `linger_ms`): until when.
    pub linger_until: Option<std::time::Instant>,
}

impl Stream {
    pub fn new(index: u32, topic: &str, partition: Partition, cursor: u64) -> Stream {
        Stream {
            index,
            topic: topic.to_string(),
            partition,
            remote_topic: String::new(),
            partitioning: Partitioning::Same,
            shape: std::sync::Arc::new(super::config::MirrorRule::default_for(topic).shape()),
            remote_partitions: 0,
            cursor,
            persisted: cursor,
            next_read: cursor,
            slots: VecDeque::new(),
            upstream: BTreeSet::new(),
            in_flight_bytes: 0,
            counters: StreamCounters::default(),
            caught_up: false,
            linger_until: None,
        }
    }

    pub fn in_flight_records(&self) -> usize {
        self.slots.len()
    }

    /// Whether `offset` is known to be upstream already (then it is skipped).
    pub fn is_upstream(&self, offset: u64) -> bool {
        self.upstream.contains(&offset)
    }

    pub fn note_upstream(&mut self, offsets: impl IntoIterator<Item = u64>) {
        let cursor = self.cursor;
        self.upstream
            .extend(offsets.into_iter().filter(|&o| o >= cursor));
    }

    pub fn sent(&mut self, offset: u64, bytes: u64) {
        self.slots.push_back(Slot {
            offset,
            end: offset + 1,
            bytes,
            acked: false,
        });
        self.in_flight_bytes += bytes;
        self.next_read = offset + 1;
        self.counters.sent_records += 1;
        self.counters.sent_bytes += bytes;
    }

    /// Marks `from..to` as needing no delivery.
    pub fn skip(&mut self, from: u64, to: u64) {
        if to <= from {
            return;
        }
        self.slots.push_back(Slot {
            offset: from,
            end: to,
            bytes: 0,
            acked: true,
        });
        self.next_read = to;
        self.advance();
    }

    /// Records the acknowledgement of `offset`; returns the bytes it frees.
    pub fn acked(&mut self, offset: u64) -> u64 {
        let Ok(i) = self.slots.binary_search_by(|s| {
            if s.end <= offset {
                std::cmp::Ordering::Less
            } else if s.offset > offset {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        }) else {
            return 0;
        };
        let slot = &mut self.slots[i];
        if slot.acked {
            return 0;
        }
        slot.acked = true;
        let freed = slot.bytes;
        self.in_flight_bytes -= freed;
        self.counters.acked_records += 1;
        self.advance();
        freed
    }

    /// Moves the cursor over the acknowledged prefix.
    fn advance(&mut self) {
        while let Some(front) = self.slots.front() {
            if !front.acked {
                break;
            }
            self.cursor = front.end;
            self.slots.pop_front();
        }
        while let Some(&first) = self.upstream.first() {
            if first >= self.cursor {
                break;
            }
            self.upstream.pop_first();
        }
    }

    /// Forgets what the ended session had in flight: acknowledged records
    /// past the cursor are remembered as upstream, the rest is read again.
    /// Returns the bytes that were in flight.
    pub fn reset(&mut self) -> u64 {
        let acked: Vec<u64> = self
            .slots
            .iter()
            .filter(|s| s.acked && s.bytes > 0)
            .map(|s| s.offset)
            .collect();
        self.upstream.extend(acked);
        self.slots.clear();
        self.next_read = self.cursor;
        std::mem::take(&mut self.in_flight_bytes)
    }

    /// The remote partition of a record.
    pub fn remote_partition(&self, key: Option<&[u8]>) -> i32 {
        let n = self.remote_partitions.max(1) as u32;
        let p = match (self.partitioning, key) {
            (Partitioning::Key, Some(key)) => (murmur2(key) & 0x7fff_ffff) % n,
            _ => self.partition.0 % n,
        };
        p as i32
    }
}

/// Kafka's murmur2 (as in its Java client's default partitioner), so keyed
/// records land where any Kafka producer would put them.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> Stream {
        Stream::new(0, "t", Partition(0), 10)
    }

    #[test]
    fn cursor_moves_only_over_a_contiguous_acked_prefix() {
        let mut s = stream();
        for o in 10..15 {
            s.sent(o, 100);
        }
        assert_eq!(s.acked(12), 100);
        assert_eq!(s.cursor, 10);
        s.acked(10);
        assert_eq!(s.cursor, 11);
        s.acked(11);
        assert_eq!(s.cursor, 13);
        assert_eq!(s.in_flight_bytes, 200);
        assert_eq!(s.acked(11), 0, "a repeated ack frees nothing");
    }

    #[test]
    fn reset_resends_the_unacked_and_remembers_the_acked() {
        let mut s = stream();
        for o in 10..14 {
            s.sent(o, 1);
        }
        s.acked(12);
        assert_eq!(s.reset(), 3);
        assert_eq!((s.cursor, s.next_read, s.in_flight_records()), (10, 10, 0));
        assert!(s.is_upstream(12) && !s.is_upstream(11));
        s.sent(10, 1);
        s.sent(11, 1);
        s.skip(12, 13);
        s.acked(10);
        s.acked(11);
        assert_eq!(s.cursor, 13);
        assert!(!s.is_upstream(12), "pruned once below the cursor");
    }

    #[test]
    fn skipped_ranges_advance_the_cursor_in_order() {
        let mut s = stream();
        s.sent(10, 1);
        s.skip(11, 20);
        assert_eq!(s.cursor, 10);
        s.acked(10);
        assert_eq!(s.cursor, 20);
    }

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
        assert_eq!(
            murmur2(b"a-little-bit-longer-string") as i32,
            -1_486_304_829
        );
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58_897_971
        );
        assert_eq!(murmur2(b"abc") as i32, 479_470_107);
    }
}

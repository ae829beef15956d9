//! Delivery from the log, for persistent sessions: the records after the
//! session's cursors, partition by partition, in offset order (one MQTT
//! topic is routed to one partition, so its messages come in publish order).
//!
//! Live subscribers of clean sessions get messages from the in-memory hub;
//! a persistent session reads the log instead, so a session that was away,
//! or is slower than the hub's buffer, still gets every message the log
//! holds. Records that did not come from an MQTT publish of this listener
//! (other sources, the bridge) are passed over, as the hub never carries
//! them.
//!
//! Reads are synchronous and small (`READ_BYTES`): one `pread` of what the
//! page cache usually holds, done inside the writer's turn, so a read is
//! never abandoned half-way by the writer's `select!`.
//!
//! Subscribers near the end of a partition read the same records: the last
//! `RING_RECORDS` records read from each partition are kept decoded
//! ([`Recent`]), so fifty subscribers cost one read and one decode, not
//! fifty. A subscriber further behind reads the log itself.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use super::message::Live;
use super::session::{self, State};
use crate::log::{Log, Offset, Partition, ReadError};

/// Bytes read from a partition at a time.
const READ_BYTES: usize = 64 << 10;
/// Decoded records kept per partition for the subscribers near its end.
const RING_RECORDS: usize = 1024;
/// Records taken from the ring at a time.
const RING_TAKE: usize = 256;

/// A record as every subscriber sees it, decoded once.
struct Decoded {
    offset: u64,
    message: Option<Arc<Live>>,
    /// The publisher's client id (`mqtt.client_id`), for no-local.
    publisher: Option<Bytes>,
}

/// The records read last from each partition, decoded, shared by every
/// subscriber's feed.
#[derive(Default)]
pub struct Recent(Mutex<HashMap<(Arc<str>, u32), Ring>>);

#[derive(Default)]
struct Ring {
    /// Offset of `records[0]`.
    start: u64,
    records: VecDeque<Arc<Decoded>>,
}

impl Recent {
    /// Up to `RING_TAKE` records from `at` on, if the ring holds `at`.
    fn take(&self, topic: &Arc<str>, p: Partition, at: u64) -> Option<Vec<Arc<Decoded>>> {
        let rings = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let ring = rings.get(&(topic.clone(), p.0))?;
        let from = usize::try_from(at.checked_sub(ring.start)?).ok()?;
        (ring.records.get(from)?.offset == at).then(|| {
            ring.records
                .range(from..)
                .take(RING_TAKE)
                .cloned()
                .collect()
        })
    }

    /// Keeps what a feed read, if it continues the ring (or the ring is
    /// behind it: the newest records are what subscribers want).
    /// The ring holds consecutive offsets only: a gap (damage skipped by
    /// the reader) starts it afresh.
    fn keep(&self, topic: &Arc<str>, p: Partition, read: &[Arc<Decoded>]) {
        let Some(first) = read.first().map(|r| r.offset) else {
            return;
        };
        let mut rings = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let ring = rings.entry((topic.clone(), p.0)).or_default();
        let end = ring.start + ring.records.len() as u64;
        if first > end || ring.records.is_empty() {
            ring.records.clear();
            ring.start = first;
        } else if first != end {
            return;
        }
        for r in read {
            if r.offset != ring.start + ring.records.len() as u64 {
                ring.records.clear();
                ring.start = r.offset;
            }
            ring.records.push_back(r.clone());
        }
        while ring.records.len() > RING_RECORDS {
            ring.records.pop_front();
            ring.start += 1;
        }
    }
}

/// One record after a cursor.
pub struct Item {
    pub topic: Arc<str>,
    pub partition: Partition,
    pub offset: u64,
    /// `None` for a record that is not an MQTT message.
    pub message: Option<Arc<Live>>,
    /// Whether this session's client published it (MQTT 5 no-local).
    pub own: bool,
}

pub struct Feed {
    log: Arc<Log>,
    sessions: Arc<session::Sessions>,
    recent: Arc<Recent>,
    client_id: Bytes,
    queue: VecDeque<Item>,
    /// Partitions in turn, so one busy partition cannot starve the others.
    next: usize,
}

impl Feed {
    pub fn new(
        log: Arc<Log>,
        sessions: Arc<session::Sessions>,
        recent: Arc<Recent>,
        client_id: &str,
    ) -> Feed {
        Feed {
            log,
            sessions,
            recent,
            client_id: Bytes::copy_from_slice(client_id.as_bytes()),
            queue: VecDeque::new(),
            next: 0,
        }
    }

    /// The next record after the cursors, waiting for one if there is none.
    /// Cancel-safe: nothing is taken from the queue before the last await.
    pub async fn next(&mut self, state: &session::Shared) -> Result<Item, ReadError> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Ok(item);
            }
            let seen = self.log.published();
            if self.fill(state)? {
                continue;
            }
            self.log.appended_after(seen).await;
        }
    }

    /// The next record if one is at hand, without waiting.
    pub fn try_next(&mut self, state: &session::Shared) -> Result<Option<Item>, ReadError> {
        if self.queue.is_empty() {
            self.fill(state)?;
        }
        Ok(self.queue.pop_front())
    }

    /// Reads the next chunk of one partition that has records past its
    /// cursor; whether anything was queued.
    fn fill(&mut self, state: &session::Shared) -> Result<bool, ReadError> {
        let partitions: Vec<(Arc<str>, Partition)> = self
            .log
            .topics()
            .flat_map(|t| {
                let name: Arc<str> = Arc::from(t.name.as_str());
                (0..t.config.partitions).map(move |p| (name.clone(), Partition(p)))
            })
            .collect();
        for i in 0..partitions.len() {
            let (topic, partition) = &partitions[(self.next + i) % partitions.len()];
            let Some((start, end)) = self.log.offsets(topic, *partition) else {
                continue;
            };
            let at = self.cursor(state, topic, *partition, start.0, end.0);
            if at >= end.0 {
                continue;
            }
            let records = match self.read(topic, *partition, at) {
                // Retention ran since `offsets`: the next turn moves the cursor.
                Err(ReadError::BeforeStart { .. }) => return Ok(true),
                read => read?,
            };
            if records.is_empty() {
                continue;
            }
            self.next = (self.next + i + 1) % partitions.len();
            for r in records {
                self.queue.push_back(Item {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: r.offset,
                    message: r.message.clone(),
                    own: r.publisher.as_ref() == Some(&self.client_id),
                });
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Records from `at` on: from the ring if it holds them, else read from
    /// the log, decoded, and kept in the ring.
    fn read(
        &self,
        topic: &Arc<str>,
        p: Partition,
        at: u64,
    ) -> Result<Vec<Arc<Decoded>>, ReadError> {
        if let Some(records) = self.recent.take(topic, p, at) {
            return Ok(records);
        }
        let records: Vec<Arc<Decoded>> = self
            .log
            .read(topic, p, Offset(at), READ_BYTES)?
            .into_iter()
            .map(|r| {
                let message = (header(&r.record, "mqtt.bridge").is_none())
                    .then(|| Live::from_record(&r.record))
                    .flatten()
                    .map(Arc::new);
                Arc::new(Decoded {
                    offset: r.offset.0,
                    message,
                    publisher: header(&r.record, "mqtt.client_id").cloned(),
                })
            })
            .collect();
        self.recent.keep(topic, p, &records);
        Ok(records)
    }

    /// The session's cursor in this partition: the log's end for a
    /// partition it never saw, moved up (and the gap counted) where
    /// retention removed records it had not been given.
    fn cursor(
        &self,
        state: &session::Shared,
        topic: &str,
        p: Partition,
        start: u64,
        end: u64,
    ) -> u64 {
        let mut s = session::lock(state);
        let Some(at) = s.cursor(topic, p) else {
            s.set_cursor(topic, p, end);
            return end;
        };
        if at < start {
            let missed = start - at;
            super::stats::MqttStats::add(&self.sessions.stats.session_records_missed, missed);
            tracing::warn!(
                topic,
                partition = p.0,
                missed,
                "mqtt: a persistent session missed records that retention removed before it returned"
            );
            s.set_cursor(topic, p, start);
            return start;
        }
        at
    }
}

/// Reads the message at `offset` (a delivery to re-send after a reconnect);
/// `None` if retention removed it.
pub fn message_at(log: &Log, topic: &str, p: Partition, offset: u64) -> Option<Arc<Live>> {
    let records = log.read(topic, p, Offset(offset), 1).ok()?;
    let r = records
        .into_iter()
        .next()
        .filter(|r| r.offset.0 == offset)?;
    Live::from_record(&r.record).map(Arc::new)
}

fn header<'r>(record: &'r crate::log::Record, name: &str) -> Option<&'r Bytes> {
    record
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

/// Moves the cursor past `item` (delivered, or not for this session).
pub fn passed(state: &mut State, item: &Item) {
    state.set_cursor(&item.topic, item.partition, item.offset + 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(offsets: std::ops::Range<u64>) -> Vec<Arc<Decoded>> {
        offsets
            .map(|offset| {
                Arc::new(Decoded {
                    offset,
                    message: None,
                    publisher: None,
                })
            })
            .collect()
    }

    fn offsets(records: Option<Vec<Arc<Decoded>>>) -> Option<Vec<u64>> {
        records.map(|r| r.iter().map(|d| d.offset).collect())
    }

    #[test]
    fn the_ring_serves_consecutive_records_and_keeps_the_newest() {
        let recent = Recent::default();
        let t: Arc<str> = Arc::from("ingest");
        let p = Partition(0);
        assert!(recent.take(&t, p, 0).is_none());
        recent.keep(&t, p, &decoded(10..20));
        assert_eq!(offsets(recent.take(&t, p, 15)), Some((15..20).collect()));
        assert!(recent.take(&t, p, 9).is_none(), "before the ring");
        assert!(recent.take(&t, p, 20).is_none(), "past its end");
        // A read that does not continue it is not kept; one past it restarts it.
        recent.keep(&t, p, &decoded(12..14));
        assert_eq!(offsets(recent.take(&t, p, 10)).unwrap().len(), 10);
        recent.keep(&t, p, &decoded(30..31));
        assert!(recent.take(&t, p, 10).is_none());
        assert_eq!(offsets(recent.take(&t, p, 30)), Some(vec![30]));
        // Bounded: only the newest RING_RECORDS stay.
        recent.keep(&t, p, &decoded(31..31 + RING_RECORDS as u64 + 5));
        assert!(recent.take(&t, p, 30).is_none());
        assert!(recent.take(&t, p, 36).is_some());
    }
}

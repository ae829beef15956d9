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

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::message::Live;
use super::session::{self, State};
use crate::log::{Log, Offset, Partition, ReadError};

/// Bytes read from a partition at a time.
const READ_BYTES: usize = 64 << 10;

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
    client_id: Bytes,
    queue: VecDeque<Item>,
    /// Partitions in turn, so one busy partition cannot starve the others.
    next: usize,
}

impl Feed {
    pub fn new(log: Arc<Log>, sessions: Arc<session::Sessions>, client_id: &str) -> Feed {
        Feed {
            log,
            sessions,
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
            let records = match self.log.read(topic, *partition, Offset(at), READ_BYTES) {
                // Retention ran since `offsets`: the next turn moves the cursor.
                Err(ReadError::BeforeStart { .. }) => return Ok(true),
                read => read?,
            };
            if records.is_empty() {
                continue;
            }
            self.next = (self.next + i + 1) % partitions.len();
            for r in records {
                let own = header(&r.record, "mqtt.client_id") == Some(&self.client_id);
                let message = (header(&r.record, "mqtt.bridge").is_none())
                    .then(|| Live::from_record(&r.record))
                    .flatten()
                    .map(Arc::new);
                self.queue.push_back(Item {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: r.offset.0,
                    message,
                    own,
                });
            }
            return Ok(true);
        }
        Ok(false)
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

//! Retained messages: the last retained publish per MQTT topic, sent to
//! every new matching subscription with the retain flag.
//!
//! # Durable without a second store
//!
//! A retained publish is an ordinary log record with the header
//! `mqtt.retain = 1` (so it reaches Kafka like any other); an empty payload
//! clears the topic. The set in memory is derived from the log: at start it
//! is rebuilt from a checkpoint (`<data_dir>/@mqtt/retained`, written the
//! house way: temp file, fsync, rename, fsync of the directory, CRC) plus a
//! replay of every partition from the checkpoint's offset to its end. A
//! publisher's PUBACK follows the durable append, so an acknowledged
//! retained message survives SIGKILL and power cuts: it is in the log past
//! the checkpoint, or in the checkpoint.
//!
//! The checkpoint is written after the start-up replay, at a clean stop,
//! and after every `CHECKPOINT_EVERY` changes, never on a timer. A
//! checkpoint at log offsets `E` must hold every retained record below `E`:
//! it is taken only when no other retained publish is between its append
//! and its application here (`pending`, counted by [`Guard`]s), reading the
//! ends first, so a record below them is either applied or still counted.
//!
//! Retention can delete segments that hold retained records newer than the
//! checkpoint (between two checkpoints); the replay counts the offsets it
//! finds missing and warns: those retained messages may be lost.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rumqttd::protocol::matches;

use super::message::Live;
use crate::log::{checkpoint, Log, Offset, OsStorage, Partition, ReadError, Record, Storage};

/// The broker's own files under the data directory (`@` cannot start a
/// log topic's name, so this never collides with one).
pub const STATE_DIR: &str = "@mqtt";
const FILE: &str = "retained";
/// Retained changes between two checkpoints.
const CHECKPOINT_EVERY: usize = 1000;
/// Read size of the start-up replay.
const REPLAY_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RetainError {
    #[error("mqtt retained messages: {0}")]
    Checkpoint(#[from] crate::log::CheckpointError),
    #[error("mqtt retained messages: replaying the log: {0}")]
    Read(#[from] ReadError),
    #[error("mqtt retained messages: cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Default)]
struct State {
    topics: BTreeMap<Bytes, Arc<Live>>,
    changes: usize,
}

pub struct Retained {
    dir: PathBuf,
    state: Mutex<State>,
    /// Retained publishes appended and not yet applied (see the module doc).
    pending: AtomicUsize,
    /// A checkpoint is being written.
    writing: AtomicBool,
}

/// Held from before a retained publish is appended until it was applied
/// (or dropped with its connection).
pub struct Guard(Arc<Retained>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Retained {
    /// The checkpoint plus a replay of the log after it.
    pub fn open(log: &Log) -> Result<Retained, RetainError> {
        let dir = log.dir().join(STATE_DIR);
        let retained = Retained {
            dir: dir.clone(),
            state: Mutex::default(),
            pending: AtomicUsize::new(0),
            writing: AtomicBool::new(false),
        };
        let created = OsStorage
            .create_dir_all(&dir)
            .and_then(|()| OsStorage.sync_dir(log.dir()));
        created.map_err(|source| RetainError::Dir {
            path: dir.clone(),
            source,
        })?;
        let offsets = retained.load()?;
        let (replayed, missing) = retained.replay(log, &offsets)?;
        if missing > 0 {
            tracing::warn!(
                missing,
                "mqtt: retention removed {missing} records newer than the retained-message checkpoint; retained messages among them are lost"
            );
        }
        let count = retained.lock().topics.len();
        tracing::info!(count, replayed, "mqtt: retained messages restored");
        if replayed > 0 || offsets.is_empty() {
            retained.write(log)?;
        }
        Ok(retained)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Taken before appending a retained publish.
    pub fn guard(self: &Arc<Self>) -> Guard {
        self.pending.fetch_add(1, Ordering::AcqRel);
        Guard(self.clone())
    }

    /// A durable retained publish: sets its topic, or clears it when empty.
    /// Returns whether a checkpoint is due.
    pub fn apply(&self, message: &Live) -> bool {
        let mut state = self.lock();
        set(&mut state.topics, message);
        state.changes += 1;
        state.changes >= CHECKPOINT_EVERY
    }

    /// The retained messages whose topics match `filter`.
    pub fn matching(&self, filter: &str) -> Vec<Arc<Live>> {
        let state = self.lock();
        state
            .topics
            .iter()
            .filter(|(topic, _)| std::str::from_utf8(topic).is_ok_and(|t| matches(t, filter)))
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Writes a checkpoint if one is due (or `force`) and nothing is in
    /// flight; blocking I/O, so run it off the async threads.
    pub fn checkpoint(&self, log: &Log, force: bool) {
        let changes = self.lock().changes;
        let due = changes >= CHECKPOINT_EVERY || force && changes > 0;
        if !due || self.writing.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Err(e) = self.write(log) {
            tracing::warn!("mqtt: retained-message checkpoint not written: {e}");
        }
        self.writing.store(false, Ordering::Release);
    }

    /// Snapshot (ends first, then the set, only with nothing pending) and write.
    fn write(&self, log: &Log) -> Result<(), RetainError> {
        let ends: Vec<(String, u32, u64)> = partitions(log)
            .filter_map(|(t, p)| Some((t.clone(), p.0, log.offsets(&t, p)?.1 .0)))
            .collect();
        let messages: Vec<Arc<Live>> = {
            let mut state = self.lock();
            if self.pending.load(Ordering::Acquire) > 0 {
                return Ok(());
            }
            state.changes = 0;
            state.topics.values().cloned().collect()
        };
        let payload = encode(&ends, &messages);
        checkpoint::write_bytes(&OsStorage, &self.dir, FILE, &payload)?;
        Ok(())
    }

    /// Reads the checkpoint into the set; returns its offsets. A damaged
    /// checkpoint is reported and ignored (the log is replayed from its start).
    fn load(&self) -> Result<BTreeMap<(String, u32), u64>, RetainError> {
        let path = self.dir.join(FILE);
        let bytes = match checkpoint::read_bytes(&OsStorage, &path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(BTreeMap::new()),
            Err(e) => {
                tracing::error!("mqtt: {e}: replaying the whole log instead");
                return Ok(BTreeMap::new());
            }
        };
        match decode(&bytes) {
            Some((offsets, messages)) => {
                let mut state = self.lock();
                for m in messages {
                    set(&mut state.topics, &m);
                }
                Ok(offsets)
            }
            None => {
                tracing::error!(path = %path.display(), "mqtt: retained checkpoint undecodable: replaying the whole log instead");
                Ok(BTreeMap::new())
            }
        }
    }

    /// Applies the retained records after `offsets`; returns (records read,
    /// offsets missing because retention removed them first).
    fn replay(
        &self,
        log: &Log,
        offsets: &BTreeMap<(String, u32), u64>,
    ) -> Result<(u64, u64), RetainError> {
        let (mut read, mut missing) = (0, 0);
        for (topic, partition) in partitions(log).collect::<Vec<_>>() {
            let Some((start, end)) = log.offsets(&topic, partition) else {
                continue;
            };
            let mut at = offsets
                .get(&(topic.clone(), partition.0))
                .copied()
                .unwrap_or(0);
            missing += start.0.saturating_sub(at);
            at = at.max(start.0);
            while at < end.0 {
                let records = log.read(&topic, partition, Offset(at), REPLAY_BYTES)?;
                let Some(last) = records.last() else { break };
                at = last.offset.0 + 1;
                read += records.len() as u64;
                let mut state = self.lock();
                for stored in records.iter().filter(|r| is_retained(&r.record)) {
                    if let Some(m) = Live::from_record(&stored.record) {
                        set(&mut state.topics, &m);
                    }
                }
            }
        }
        Ok((read, missing))
    }
}

fn is_retained(record: &Record) -> bool {
    record
        .headers
        .iter()
        .any(|(n, v)| n == "mqtt.retain" && v.as_ref() == b"1")
}

/// Sets or clears `message.topic`, unless a newer message is there already
/// (partitions are replayed one after the other).
fn set(topics: &mut BTreeMap<Bytes, Arc<Live>>, message: &Live) {
    if topics
        .get(&message.topic)
        .is_some_and(|old| old.received_ms > message.received_ms)
    {
        return;
    }
    if message.payload.is_empty() {
        topics.remove(&message.topic);
    } else {
        let mut m = message.clone();
        m.origin = 0;
        m.shared_to.clear();
        topics.insert(m.topic.clone(), Arc::new(m));
    }
}

fn partitions(log: &Log) -> impl Iterator<Item = (String, Partition)> + '_ {
    log.topics()
        .flat_map(|t| (0..t.config.partitions).map(move |p| (t.name.clone(), Partition(p))))
}

/// Checkpoint payload (little-endian): partition count u32, then per
/// partition topic (u16 length, bytes), partition u32, offset u64; message
/// count u32, then per message timestamp i64, value (u32 length, bytes),
/// header count u16, per header name (u16 length), value (u32 length).
fn encode(ends: &[(String, u32, u64)], messages: &[Arc<Live>]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u32_le(ends.len() as u32);
    for (topic, partition, offset) in ends {
        out.put_u16_le(topic.len() as u16);
        out.put_slice(topic.as_bytes());
        out.put_u32_le(*partition);
        out.put_u64_le(*offset);
    }
    out.put_u32_le(messages.len() as u32);
    for m in messages {
        let record = m.record("", 0, None);
        out.put_i64_le(record.timestamp_ms);
        out.put_u32_le(record.value.len() as u32);
        out.put_slice(&record.value);
        out.put_u16_le(record.headers.len() as u16);
        for (name, value) in &record.headers {
            out.put_u16_le(name.len() as u16);
            out.put_slice(name.as_bytes());
            out.put_u32_le(value.len() as u32);
            out.put_slice(value);
        }
    }
    out.to_vec()
}

type Decoded = (BTreeMap<(String, u32), u64>, Vec<Live>);

/// The inverse of [`encode`]; `None` when the bytes do not parse (the CRC
/// matched, so only a bug could cause it).
fn decode(bytes: &[u8]) -> Option<Decoded> {
    let mut b = Bytes::copy_from_slice(bytes);
    let take = |b: &mut Bytes, n: usize| (b.remaining() >= n).then(|| b.split_to(n));
    let mut offsets = BTreeMap::new();
    for _ in 0..take(&mut b, 4)?.get_u32_le() {
        let len = usize::from(take(&mut b, 2)?.get_u16_le());
        let topic = String::from_utf8(take(&mut b, len)?.to_vec()).ok()?;
        let partition = take(&mut b, 4)?.get_u32_le();
        offsets.insert((topic, partition), take(&mut b, 8)?.get_u64_le());
    }
    let mut messages = Vec::new();
    for _ in 0..take(&mut b, 4)?.get_u32_le() {
        let timestamp_ms = take(&mut b, 8)?.get_i64_le();
        let len = take(&mut b, 4)?.get_u32_le() as usize;
        let value = take(&mut b, len)?;
        let mut headers = Vec::new();
        for _ in 0..take(&mut b, 2)?.get_u16_le() {
            let len = usize::from(take(&mut b, 2)?.get_u16_le());
            let name = String::from_utf8(take(&mut b, len)?.to_vec()).ok()?;
            let len = take(&mut b, 4)?.get_u32_le() as usize;
            headers.push((name, take(&mut b, len)?));
        }
        let record = Record {
            timestamp_ms,
            key: None,
            value,
            headers,
        };
        messages.push(Live::from_record(&record)?);
    }
    Some((offsets, messages))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::mqtt::message::Props;

    #[test]
    fn the_checkpoint_payload_round_trips() {
        let m = Live {
            topic: Bytes::from_static(b"tele/plug/LWT"),
            payload: Bytes::from_static(b"Online"),
            qos: 1,
            retain: true,
            props: Props {
                content_type: Some("text/plain".into()),
                ..Props::default()
            },
            received_ms: 42,
            origin: 7,
            shared_to: Vec::new(),
        };
        let ends = vec![("ingest".to_string(), 0, 17)];
        let (offsets, messages) = decode(&encode(&ends, &[Arc::new(m.clone())])).unwrap();
        assert_eq!(offsets.get(&("ingest".to_string(), 0)), Some(&17));
        assert_eq!(messages[0].payload, m.payload);
        assert_eq!(messages[0].props, m.props);
        assert!(messages[0].retain);
        assert!(decode(&[1, 0, 0]).is_none());
    }

    #[test]
    fn an_empty_payload_clears_and_an_older_message_does_not_win() {
        let mut topics = BTreeMap::new();
        let at = |ms: i64, payload: &'static [u8]| Live {
            topic: Bytes::from_static(b"t"),
            payload: Bytes::from_static(payload),
            qos: 0,
            retain: true,
            props: Props::default(),
            received_ms: ms,
            origin: 0,
            shared_to: Vec::new(),
        };
        set(&mut topics, &at(2, b"new"));
        set(&mut topics, &at(1, b"old"));
        assert_eq!(topics[&Bytes::from_static(b"t")].payload, "new");
        set(&mut topics, &at(3, b""));
        assert!(topics.is_empty());
    }
}

//! Persistent sessions (MQTT 3.1.1 `clean_session = 0`, MQTT 5 session
//! expiry): what outlives a connection, kept as positions in the log, not
//! as copies of messages.
//!
//! A session is its subscriptions, a cursor per log partition (the next
//! offset to look at for it), its QoS 1/2 deliveries not yet finished by the
//! client (packet id, where the message is in the log, and whether PUBREL
//! went out), and the QoS 2 packet ids it published that await PUBREL. What
//! the client missed while away is read from the log from its cursors when
//! it returns (`feed.rs`), so the offline queue is bounded by the log's
//! retention, not by memory; what retention removed first is counted
//! (`session_records_missed`) and logged, never skipped silently.
//!
//! # On disk
//!
//! `<data_dir>/@mqtt/sessions`: one JSON document of every session with a
//! non-zero expiry, in the house checkpoint frame (`log::checkpoint`:
//! magic, length, CRC32C; temp file, fsync, rename, fsync of the directory),
//! so a power cut leaves the previous or the next version, never a mix. A
//! damaged file is reported and the sessions start empty (clients see
//! `session_present = 0` and subscribe again).
//!
//! # When it is written
//!
//! - Before a SUBACK or UNSUBACK of a persistent session, before a QoS 2
//!   delivery's PUBLISH and before its PUBREL ([`Sessions::persist`]), so
//!   what the client was told survives a crash, and QoS 2 stays exactly
//!   once: after a crash the same packet id is re-sent with DUP = 1, or the
//!   PUBREL again, never a new PUBLISH of a released message.
//! - When a connection of a persistent session ends, and at a clean stop.
//! - Every `session_checkpoint_ms` while cursors moved (nothing when idle),
//!   and whenever cursors passed `SAVE_EVERY` records since the last write.
//!   So after a crash, QoS 0/1 messages delivered since the last write are
//!   delivered again (QoS 1 is at least once): at most that interval's
//!   worth, and at most about `SAVE_EVERY` records.
//!
//! A session that was connected when the gateway died counts as
//! disconnected from the restart on. Sessions whose client has been away
//! longer than their expiry are removed at start and every minute.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rumqttd::protocol::RetainForwardRule;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use super::stats::MqttStats;
use super::writer::Sub;
use crate::log::{self, checkpoint, Log, OsStorage, Partition};

const FILE: &str = "sessions";
/// How long a returning client waits for its previous connection to let go
/// of the session (its writer finishing), before CONNACK "server busy".
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);
const EXPIRY_SWEEP: Duration = Duration::from_secs(60);
/// Records passed by session cursors that make a write due at once, so a
/// gateway that keeps dying sooner than `session_checkpoint_ms` after its
/// start still saves progress.
const SAVE_EVERY: u64 = 1000;

/// A subscription as saved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedSub {
    pub filter: String,
    pub qos: u8,
    #[serde(default)]
    pub no_local: bool,
    #[serde(default)]
    pub retain_as_published: bool,
    /// Retain handling 0, 1, 2.
    #[serde(default)]
    pub retain_handling: u8,
    #[serde(default)]
    pub id: Option<usize>,
}

impl SavedSub {
    pub fn from_sub(s: &Sub) -> SavedSub {
        SavedSub {
            filter: s.filter.clone(),
            qos: s.qos,
            no_local: s.no_local,
            retain_as_published: s.retain_as_published,
            retain_handling: match s.retained {
                RetainForwardRule::OnEverySubscribe => 0,
                RetainForwardRule::OnNewSubscribe => 1,
                RetainForwardRule::Never => 2,
            },
            id: s.id,
        }
    }

    pub fn to_sub(&self) -> Sub {
        Sub {
            filter: self.filter.clone(),
            qos: self.qos.min(2),
            no_local: self.no_local,
            retain_as_published: self.retain_as_published,
            retained: match self.retain_handling {
                0 => RetainForwardRule::OnEverySubscribe,
                1 => RetainForwardRule::OnNewSubscribe,
                _ => RetainForwardRule::Never,
            },
            id: self.id,
        }
    }
}

/// A delivery the client has not finished: where its message is in the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Outbound {
    pub pkid: u16,
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub qos: u8,
    /// Whether the subscription identifiers and retain flag went with it.
    #[serde(default)]
    pub sub_ids: Vec<usize>,
    #[serde(default)]
    pub retain: bool,
    /// QoS 2: the client sent PUBREC and we PUBREL (re-send PUBREL, never
    /// the message).
    #[serde(default)]
    pub released: bool,
}

/// One session's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub expiry_s: u32,
    pub subs: Vec<SavedSub>,
    /// Next offset to look at, per log topic, by partition.
    pub cursors: BTreeMap<String, Vec<u64>>,
    /// By packet id.
    pub inflight: BTreeMap<u16, Outbound>,
    /// QoS 2 publishes of this client appended and awaiting its PUBREL.
    #[serde(default)]
    pub inbound_qos2: Vec<u16>,
    /// When its last connection ended (`None` while connected).
    pub disconnected_ms: Option<i64>,
}

impl State {
    pub fn cursor(&self, topic: &str, partition: Partition) -> Option<u64> {
        self.cursors.get(topic)?.get(partition.0 as usize).copied()
    }

    pub fn set_cursor(&mut self, topic: &str, partition: Partition, next: u64) {
        let cursors = self.cursors.entry(topic.to_string()).or_default();
        let i = partition.0 as usize;
        if cursors.len() <= i {
            cursors.resize(i + 1, 0);
        }
        cursors[i] = next;
    }

    /// Cursors at the log's end: a session starts with what comes next.
    pub fn start_at_end(&mut self, log: &Log) {
        for t in log.topics() {
            for p in (0..t.config.partitions).map(Partition) {
                let end = log.offsets(&t.name, p).map_or(0, |(_, e)| e.0);
                self.set_cursor(&t.name, p, end);
            }
        }
    }

    fn expired(&self, now_ms: i64) -> bool {
        self.disconnected_ms
            .is_some_and(|at| now_ms.saturating_sub(at) >= i64::from(self.expiry_s) * 1000)
    }
}

pub type Shared = Arc<Mutex<State>>;

pub fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Slot {
    state: Shared,
    /// A connection is using it.
    held: bool,
    /// It may be in the file (so removing it needs a write).
    stored: bool,
}

/// Every session, and the writer of their file.
pub struct Sessions {
    dir: PathBuf,
    max_expiry_s: u32,
    max_sessions: usize,
    slots: Mutex<HashMap<String, Slot>>,
    /// A slot was let go (a taking-over connection may proceed).
    released: Notify,
    /// Cursors moved since the last write.
    dirty: AtomicBool,
    /// Records passed by cursors since the last write.
    moved: AtomicU64,
    /// Writes asked for, and the number of the last one done.
    asked: AtomicU64,
    done: watch::Sender<u64>,
    wake: Notify,
    /// `sessions_persistent`, `sessions_expired`, `session_records_missed`.
    pub stats: Arc<MqttStats>,
}

/// Why a session could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0} persistent sessions exist (max_persistent_sessions)")]
    Full(usize),
    #[error("the previous connection of this client id did not let go of its session")]
    Busy,
}

/// A connection's hold on its session; let go when dropped.
pub struct Lease {
    sessions: Arc<Sessions>,
    client_id: String,
    pub state: Shared,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.sessions.release(&self.client_id);
    }
}

impl Sessions {
    /// Loads `<data_dir>/@mqtt/sessions` and removes expired sessions.
    pub fn open(
        log: &Log,
        max_expiry_s: u32,
        max_sessions: usize,
        stats: Arc<MqttStats>,
    ) -> Arc<Sessions> {
        let dir = log.dir().join("@mqtt");
        let now = log::now_ms();
        let loaded = load(&dir);
        let total = loaded.len();
        let slots: HashMap<String, Slot> = loaded
            .into_iter()
            .map(|(id, mut state)| {
                state.disconnected_ms.get_or_insert(now);
                state.expiry_s = state.expiry_s.min(max_expiry_s);
                (id, state)
            })
            .filter(|(_, s)| !s.expired(now))
            .map(|(id, state)| {
                let slot = Slot {
                    state: Arc::new(Mutex::new(state)),
                    held: false,
                    stored: true,
                };
                (id, slot)
            })
            .collect();
        let expired = (total - slots.len()) as u64;
        if total > 0 {
            tracing::info!(
                sessions = slots.len(),
                expired,
                "mqtt: persistent sessions loaded"
            );
        }
        let sessions = Arc::new(Sessions {
            dir,
            max_expiry_s,
            max_sessions,
            slots: Mutex::new(slots),
            released: Notify::new(),
            dirty: AtomicBool::new(false),
            moved: AtomicU64::new(0),
            asked: AtomicU64::new(0),
            done: watch::channel(0).0,
            wake: Notify::new(),
            stats,
        });
        MqttStats::add(&sessions.stats.sessions_expired, expired);
        sessions.count();
        sessions
    }

    /// Updates the `sessions_persistent` gauge.
    fn count(&self) {
        let n = self
            .lock()
            .values()
            .filter(|s| lock(&s.state).expiry_s > 0)
            .count();
        self.stats
            .sessions_persistent
            .store(n as u64, Ordering::Relaxed);
    }

    pub fn max_expiry_s(&self) -> u32 {
        self.max_expiry_s
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `client_id`'s session for a new connection, once its previous
    /// connection let go: the existing one unless `clean`, else a new one.
    /// Returns the lease and whether a session was present.
    pub async fn acquire(
        self: &Arc<Self>,
        client_id: &str,
        clean: bool,
        expiry_s: u32,
    ) -> Result<(Lease, bool), SessionError> {
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        loop {
            let released = self.released.notified();
            if let Some(taken) = self.try_acquire(client_id, clean, expiry_s)? {
                return Ok(taken);
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(SessionError::Busy);
            }
        }
    }

    fn try_acquire(
        self: &Arc<Self>,
        client_id: &str,
        clean: bool,
        expiry_s: u32,
    ) -> Result<Option<(Lease, bool)>, SessionError> {
        let now = log::now_ms();
        let mut slots = self.lock();
        if slots.get(client_id).is_some_and(|s| s.held) {
            return Ok(None);
        }
        let existing = slots.remove(client_id);
        let was_stored = existing.as_ref().is_some_and(|s| s.stored);
        if existing
            .as_ref()
            .is_some_and(|s| lock(&s.state).expired(now))
        {
            MqttStats::inc(&self.stats.sessions_expired);
        }
        let old = existing.filter(|s| !clean && !lock(&s.state).expired(now));
        let present = old.is_some();
        let persistent = slots
            .values()
            .filter(|s| lock(&s.state).expiry_s > 0)
            .count();
        if expiry_s > 0 && !present && persistent >= self.max_sessions {
            return Err(SessionError::Full(persistent));
        }
        let state = old.map_or_else(|| Arc::new(Mutex::new(State::default())), |s| s.state);
        {
            let mut s = lock(&state);
            s.expiry_s = expiry_s;
            s.disconnected_ms = None;
        }
        slots.insert(
            client_id.to_string(),
            Slot {
                state: state.clone(),
                held: true,
                stored: was_stored || expiry_s > 0,
            },
        );
        drop(slots);
        if was_stored || expiry_s > 0 {
            self.touch();
            self.count();
        }
        let lease = Lease {
            sessions: self.clone(),
            client_id: client_id.to_string(),
            state,
        };
        Ok(Some((lease, present)))
    }

    fn release(&self, client_id: &str) {
        let mut slots = self.lock();
        let (persistent, stored) = match slots.get_mut(client_id) {
            Some(slot) => {
                slot.held = false;
                let mut state = lock(&slot.state);
                state.disconnected_ms = Some(log::now_ms());
                (state.expiry_s > 0, slot.stored)
            }
            None => (false, false),
        };
        if !persistent {
            slots.remove(client_id);
        }
        drop(slots);
        self.released.notify_waiters();
        if stored {
            self.count();
        }
        if persistent {
            self.urgent();
        } else if stored {
            self.touch();
        }
    }

    /// Cursors moved: written at the next checkpoint, or now (without
    /// waiting) once `SAVE_EVERY` records were passed since the last one.
    pub fn touch(&self) {
        self.dirty.store(true, Ordering::Release);
        if self.moved.fetch_add(1, Ordering::AcqRel) + 1 == SAVE_EVERY {
            self.urgent();
        }
    }

    /// Asks for a write now without waiting for it.
    fn urgent(&self) -> u64 {
        self.dirty.store(true, Ordering::Release);
        let n = self.asked.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake.notify_one();
        n
    }

    /// Returns once a write that began after this call is on disk (one
    /// write serves every caller waiting meanwhile). A failed write is
    /// logged; the caller goes on (the session then holds what the last
    /// good write held).
    pub async fn persist(&self) {
        let n = self.urgent();
        let mut done = self.done.subscribe();
        let _ = done.wait_for(|d| *d >= n).await;
    }

    /// The writer of the file: runs until the runtime ends.
    pub async fn run(self: Arc<Self>, every: Duration) {
        let mut sweep = tokio::time::interval(EXPIRY_SWEEP);
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(every) => {}
                _ = sweep.tick() => self.remove_expired(),
            }
            if self.dirty.load(Ordering::Acquire) {
                self.write_now().await;
            }
        }
    }

    /// Writes the file (off the async threads) and tells the waiters.
    pub async fn write_now(self: &Arc<Self>) {
        let asked = self.asked.load(Ordering::Acquire);
        self.dirty.store(false, Ordering::Release);
        self.moved.store(0, Ordering::Release);
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.write()).await;
        self.done.send_modify(|d| *d = (*d).max(asked));
    }

    fn write(&self) {
        let snapshot: BTreeMap<String, State> = self
            .lock()
            .iter()
            .filter_map(|(id, slot)| {
                let state = lock(&slot.state);
                (state.expiry_s > 0).then(|| (id.clone(), state.clone()))
            })
            .collect();
        let result = std::fs::create_dir_all(&self.dir)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                checkpoint::write(&OsStorage, &self.dir, FILE, &snapshot).map_err(|e| e.to_string())
            });
        if let Err(e) = result {
            tracing::warn!("mqtt: sessions not saved: {e}");
            self.dirty.store(true, Ordering::Release);
        }
    }

    fn remove_expired(&self) {
        let now = log::now_ms();
        let mut slots = self.lock();
        let before = slots.len();
        slots.retain(|_, s| s.held || !lock(&s.state).expired(now));
        let removed = before - slots.len();
        drop(slots);
        if removed > 0 {
            MqttStats::add(&self.stats.sessions_expired, removed as u64);
            self.count();
            tracing::info!(removed, "mqtt: expired persistent sessions removed");
            self.touch();
        }
    }
}

fn load(dir: &std::path::Path) -> BTreeMap<String, State> {
    let path = dir.join(FILE);
    match checkpoint::read(&OsStorage, &path) {
        Ok(Some(sessions)) => sessions,
        Ok(None) => BTreeMap::new(),
        Err(e) => {
            tracing::error!("mqtt: {e}: persistent sessions start empty");
            BTreeMap::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_round_trips_through_json() {
        let mut s = State {
            expiry_s: 60,
            subs: vec![SavedSub {
                filter: "a/#".into(),
                qos: 1,
                no_local: true,
                retain_as_published: false,
                retain_handling: 2,
                id: Some(7),
            }],
            ..State::default()
        };
        s.set_cursor("ingest", Partition(2), 41);
        s.inflight.insert(
            3,
            Outbound {
                pkid: 3,
                topic: "ingest".into(),
                partition: 2,
                offset: 40,
                qos: 2,
                sub_ids: vec![7],
                retain: false,
                released: true,
            },
        );
        let json = serde_json::to_vec(&s).unwrap();
        let back: State = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.cursor("ingest", Partition(2)), Some(41));
        assert_eq!(back.cursor("ingest", Partition(0)), Some(0));
        assert_eq!(back.cursor("other", Partition(0)), None);
        assert_eq!(back.subs[0].to_sub().filter, "a/#");
    }

    #[test]
    fn expiry_counts_from_the_disconnect() {
        let s = State {
            expiry_s: 10,
            disconnected_ms: Some(1_000),
            ..State::default()
        };
        assert!(!s.expired(10_999));
        assert!(s.expired(11_000));
        let connected = State {
            expiry_s: 0,
            ..State::default()
        };
        assert!(!connected.expired(i64::MAX));
    }
}

//! `Idempotency-Key`: a retried request is appended once and gets the first
//! answer again, also after a restart.
//!
//! The key travels in the durable record: the first record of a keyed
//! request carries the headers `http.idempotency_key`, `http.records` (how
//! many records the request appended) and, when authenticated, `http.user`.
//! A key is scoped to (user, topic): two users may use the same key.
//!
//! # The window
//!
//! In memory: the newest `idempotency_keys` (16,384) answered keys, oldest
//! dropped first. At start they are rebuilt from the newest
//! `idempotency_scan_records` (262,144) records of every partition (as
//! serial ingest rebuilds its delivered index). A retry is recognised while
//! its key is in both: within the last 16,384 keyed requests and, across a
//! restart, within the last 262,144 records of its partition. A retry after
//! that appends again. The body of a retry is not compared with the first.
//!
//! A request whose append failed is not remembered (the retry appends); a
//! retry that arrives while the first is still waiting for its fsync gets
//! 409 with `Retry-After: 1`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use serde::Serialize;

use crate::log::{Log, Offset, Partition, Record};

pub const H_KEY: &str = "http.idempotency_key";
pub const H_RECORDS: &str = "http.records";
pub const H_USER: &str = "http.user";
/// Longest key accepted (bytes of visible ASCII).
pub const MAX_KEY_BYTES: usize = 200;

/// The answer to a successful POST, the same for its retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    pub topic: String,
    pub partition: u32,
    /// Offset of the first record appended.
    pub offset: u64,
    pub count: u32,
}

/// (user, topic, key); the user is empty for anonymous requests.
type Scope = (String, String, String);

enum Slot {
    /// The first request is waiting for its append.
    Pending,
    Done(Answer),
}

#[derive(Default)]
struct Inner {
    slots: HashMap<Scope, Slot>,
    order: VecDeque<Scope>,
}

/// The remembered keys.
pub struct Keys {
    inner: Mutex<Inner>,
    capacity: usize,
}

/// What a keyed request finds.
pub enum Claim {
    /// First time: append, then [`Ticket::done`].
    New(Ticket),
    /// Answered before: send this again.
    Done(Answer),
    /// The first request with this key is still in flight.
    Pending,
}

/// A claimed key; dropped without `done`, the key is forgotten again.
pub struct Ticket {
    keys: Arc<Keys>,
    scope: Option<Scope>,
}

impl Ticket {
    pub fn done(mut self, answer: Answer) {
        if let Some(scope) = self.scope.take() {
            self.keys.insert(scope, answer);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(scope) = self.scope.take() {
            let mut inner = self.keys.lock();
            if matches!(inner.slots.get(&scope), Some(Slot::Pending)) {
                inner.slots.remove(&scope);
            }
        }
    }
}

/// Whether `key` is usable: 1..=200 bytes of visible ASCII.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_BYTES && key.bytes().all(|b| b.is_ascii_graphic())
}

impl Keys {
    pub fn new(capacity: usize) -> Keys {
        Keys {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn claim(self: &Arc<Self>, user: &str, topic: &str, key: &str) -> Claim {
        let scope = (user.to_string(), topic.to_string(), key.to_string());
        let mut inner = self.lock();
        match inner.slots.get(&scope) {
            Some(Slot::Done(answer)) => return Claim::Done(answer.clone()),
            Some(Slot::Pending) => return Claim::Pending,
            None => {}
        }
        inner.slots.insert(scope.clone(), Slot::Pending);
        drop(inner);
        Claim::New(Ticket {
            keys: self.clone(),
            scope: Some(scope),
        })
    }

    fn insert(&self, scope: Scope, answer: Answer) {
        let mut inner = self.lock();
        // A pending slot is not in `order` yet; a done one is already.
        let before = inner.slots.insert(scope.clone(), Slot::Done(answer));
        if !matches!(before, Some(Slot::Done(_))) {
            inner.order.push_back(scope);
        }
        while inner.order.len() > self.capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.slots.remove(&old);
            }
        }
    }

    /// Rebuilt from the newest `scan_records` records of every partition.
    pub fn from_log(log: &Log, capacity: usize, scan_records: u64) -> Keys {
        let keys = Keys::new(capacity);
        for topic in log.topics() {
            for part in &topic.partitions {
                keys.scan(log, &topic.name, part.id, scan_records);
            }
        }
        keys
    }

    fn scan(&self, log: &Log, topic: &str, partition: Partition, scan_records: u64) {
        let Some((start, end)) = log.offsets(topic, partition) else {
            return;
        };
        let mut next = Offset(end.0.saturating_sub(scan_records).max(start.0));
        while next < end {
            let Ok(records) = log.read(topic, partition, next, 1 << 20) else {
                tracing::warn!(topic, %partition, offset = %next, "http ingest: could not read the log tail to rebuild idempotency keys");
                return;
            };
            let Some(last) = records.last() else { return };
            next = Offset(last.offset.0 + 1);
            for stored in &records {
                if let Some((user, key, count)) = identity(&stored.record) {
                    let answer = Answer {
                        topic: topic.to_string(),
                        partition: partition.0,
                        offset: stored.offset.0,
                        count,
                    };
                    self.insert((user, topic.to_string(), key), answer);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The headers a keyed request's first record carries.
pub fn mark(record: &mut Record, user: Option<&str>, key: &str, count: usize) {
    record
        .headers
        .push((H_KEY.into(), Bytes::from(key.to_string())));
    record
        .headers
        .push((H_RECORDS.into(), Bytes::from(count.to_string())));
    if let Some(user) = user {
        record
            .headers
            .push((H_USER.into(), Bytes::from(user.to_string())));
    }
}

fn identity(record: &Record) -> Option<(String, String, u32)> {
    let header = |name: &str| {
        record
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    };
    let key = header(H_KEY)?.to_string();
    let count = header(H_RECORDS)?.parse().ok()?;
    let user = header(H_USER).unwrap_or_default().to_string();
    Some((user, key, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(offset: u64) -> Answer {
        Answer {
            topic: "t".into(),
            partition: 0,
            offset,
            count: 1,
        }
    }

    #[test]
    fn a_claimed_key_answers_again_and_a_dropped_claim_is_forgotten() {
        let keys = Arc::new(Keys::new(8));
        let Claim::New(ticket) = keys.claim("", "t", "k1") else {
            panic!("first claim is new");
        };
        assert!(matches!(keys.claim("", "t", "k1"), Claim::Pending));
        ticket.done(answer(7));
        assert!(matches!(keys.claim("", "t", "k1"), Claim::Done(a) if a == answer(7)));
        assert!(
            matches!(keys.claim("ann", "t", "k1"), Claim::New(_)),
            "keys are scoped per user"
        );
        let Claim::New(failed) = keys.claim("", "t", "k2") else {
            panic!("new");
        };
        drop(failed);
        assert!(matches!(keys.claim("", "t", "k2"), Claim::New(_)));
    }

    #[test]
    fn the_window_keeps_the_newest_keys() {
        let keys = Arc::new(Keys::new(2));
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            let Claim::New(t) = keys.claim("", "t", k) else {
                panic!("new");
            };
            t.done(answer(i as u64));
        }
        assert_eq!(keys.len(), 2);
        assert!(matches!(keys.claim("", "t", "a"), Claim::New(_)));
        assert!(matches!(keys.claim("", "t", "c"), Claim::Done(_)));
    }

    #[test]
    fn keys_are_visible_ascii() {
        assert!(valid_key("order-42/retry"));
        assert!(!valid_key(""));
        assert!(!valid_key("has space"));
        assert!(!valid_key(&"x".repeat(201)));
    }
}

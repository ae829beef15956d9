//! Which QoS 1/2 deliveries of the broker are appended and not yet finished,
//! by packet id: a redelivery of one of them is acknowledged, not appended
//! again.
//!
//! The broker cannot reuse a packet id before our PUBACK (QoS 1) or its
//! PUBCOMP (QoS 2) for it, so while we hold an id a PUBLISH with it and the
//! same content is the same message sent again (after a reconnect, with
//! DUP set). Once a QoS 1 PUBACK has gone out the id is forgotten: the
//! broker may reuse it at once, and a message with the same topic and
//! payload under it may well be new (a switch reporting "ON" twice), so we
//! would rather append twice than drop one. This state lives in memory: a
//! restart forgets it (see the README for what that can duplicate).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Hash of what identifies a message's content: QoS, topic and payload.
pub fn fingerprint(qos: u8, topic: &[u8], payload: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (qos, topic, payload).hash(&mut h);
    h.finish()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Appended; its ticket has not resolved.
    Appending,
    /// Durable, not acknowledged (its link went down first).
    Unacked,
    /// QoS 2: PUBREC sent, PUBREL not yet received.
    AwaitingRelease,
}

#[derive(Debug)]
struct Entry {
    qos: u8,
    fingerprint: u64,
    state: State,
    /// Tells this delivery from a later one under the same packet id.
    serial: u64,
}

/// What to do with an arriving QoS 1/2 publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Append it; `serial` names it in the later calls.
    New { serial: u64 },
    /// Already appended: acknowledge once that append is durable.
    Again { serial: u64 },
}

#[derive(Debug, Default)]
pub struct Inflight {
    entries: HashMap<u16, Entry>,
    next_serial: u64,
}

impl Inflight {
    pub fn arrive(&mut self, pkid: u16, qos: u8, fingerprint: u64) -> Arrival {
        if let Some(e) = self.entries.get(&pkid) {
            if e.qos == qos && e.fingerprint == fingerprint {
                return Arrival::Again { serial: e.serial };
            }
        }
        self.next_serial += 1;
        let serial = self.next_serial;
        let entry = Entry {
            qos,
            fingerprint,
            state: State::Appending,
            serial,
        };
        self.entries.insert(pkid, entry);
        Arrival::New { serial }
    }

    /// The append of `(pkid, serial)` resolved: durable, or failed (then the
    /// broker's redelivery must be appended again).
    pub fn resolved(&mut self, pkid: u16, serial: u64, durable: bool) {
        let Some(e) = self.entry(pkid, serial) else {
            return;
        };
        if durable {
            e.state = State::Unacked;
        } else {
            self.entries.remove(&pkid);
        }
    }

    /// Whether a delivery may be acknowledged now: it is durable and (QoS 1)
    /// not acknowledged already under this id.
    pub fn may_ack(&mut self, pkid: u16, serial: u64) -> bool {
        self.entry(pkid, serial)
            .is_some_and(|e| e.state == State::Unacked || e.state == State::AwaitingRelease)
    }

    /// The PUBACK or PUBREC of `(pkid, serial)` was handed to the link.
    pub fn acked(&mut self, pkid: u16, serial: u64) {
        let Some(e) = self.entry(pkid, serial) else {
            return;
        };
        if e.qos == 2 {
            e.state = State::AwaitingRelease;
        } else {
            self.entries.remove(&pkid);
        }
    }

    /// PUBREL: the broker has our PUBREC; the id is free again.
    pub fn released(&mut self, pkid: u16) {
        if self
            .entries
            .get(&pkid)
            .is_some_and(|e| e.state == State::AwaitingRelease)
        {
            self.entries.remove(&pkid);
        }
    }

    /// The broker had no session for us: nothing it sends is a redelivery.
    pub fn session_lost(&mut self) {
        self.entries.clear();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn entry(&mut self, pkid: u16, serial: u64) -> Option<&mut Entry> {
        self.entries.get_mut(&pkid).filter(|e| e.serial == serial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(arrival: Arrival) -> u64 {
        match arrival {
            Arrival::New { serial } => serial,
            Arrival::Again { .. } => panic!("expected a new delivery"),
        }
    }

    #[test]
    fn a_redelivery_before_the_ack_is_not_appended_again() {
        let mut t = Inflight::default();
        let s = new(t.arrive(7, 1, 42));
        assert_eq!(t.arrive(7, 1, 42), Arrival::Again { serial: s });
        assert!(!t.may_ack(7, s), "not durable yet");
        t.resolved(7, s, true);
        assert!(t.may_ack(7, s));
        t.acked(7, s);
        assert!(!t.may_ack(7, s), "QoS 1 is acknowledged once");
        // The id is free: the same content under it is a new message.
        assert!(matches!(t.arrive(7, 1, 42), Arrival::New { .. }));
    }

    #[test]
    fn qos2_is_held_until_pubrel() {
        let mut t = Inflight::default();
        let s = new(t.arrive(3, 2, 9));
        t.resolved(3, s, true);
        t.acked(3, s);
        assert_eq!(t.arrive(3, 2, 9), Arrival::Again { serial: s });
        assert!(t.may_ack(3, s), "a re-sent QoS 2 publish gets PUBREC again");
        t.released(3);
        assert!(matches!(t.arrive(3, 2, 9), Arrival::New { .. }));
    }

    #[test]
    fn a_failed_append_is_appended_again_when_redelivered() {
        let mut t = Inflight::default();
        let s = new(t.arrive(1, 1, 5));
        t.resolved(1, s, false);
        assert!(!t.may_ack(1, s));
        assert!(matches!(t.arrive(1, 1, 5), Arrival::New { .. }));
    }

    #[test]
    fn other_content_under_a_held_id_is_new() {
        let mut t = Inflight::default();
        let first = new(t.arrive(1, 1, 5));
        let second = new(t.arrive(1, 1, 6));
        assert_ne!(first, second);
        t.resolved(1, first, true);
        assert!(!t.may_ack(1, first), "superseded");
        t.session_lost();
        assert_eq!(t.len(), 0);
    }
}

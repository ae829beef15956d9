//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5 and, as
//! Mosquitto offers them, 3.1.1): the connections subscribed with the same
//! group and filter split the matching messages, each message going to one
//! of them.
//!
//! The choice is made once per message, when it is durable and goes to the
//! live subscribers ([`Shares::pick`], round robin over the members in the
//! order they joined), and travels with it (`Live::shared_to`); each member
//! delivers only what was picked for it. Shared deliveries are live: a
//! message picked for a member that leaves before sending it is not given
//! to another member, and a persistent session's shared subscription
//! (saved with the session) gets only what arrives while it is connected.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rumqttd::protocol::matches;

/// `$share/{group}/{filter}` split: the group and the topic filter, or
/// `None` when `filter` does not name a shared subscription.
pub fn parse(filter: &str) -> Option<Result<(&str, &str), &'static str>> {
    let rest = filter.strip_prefix("$share/")?;
    Some(match rest.split_once('/') {
        Some((group, topic_filter))
            if !group.is_empty() && !group.contains(['+', '#']) && !topic_filter.is_empty() =>
        {
            Ok((group, topic_filter))
        }
        _ => Err("a shared subscription is $share/{group}/{filter}"),
    })
}

struct Group {
    topic_filter: String,
    members: Vec<u64>,
    next: usize,
}

/// Every shared subscription, by its full `$share/...` string.
#[derive(Default)]
pub struct Shares {
    groups: Mutex<HashMap<Arc<str>, Group>>,
    /// Whether any group exists (the common case, none, takes no lock).
    any: AtomicBool,
}

impl Shares {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Group>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `conn` subscribed with `full` (a valid `$share/...` filter).
    pub fn join(&self, full: &str, conn: u64) {
        let Some(Ok((_, topic_filter))) = parse(full) else {
            return;
        };
        let mut groups = self.lock();
        let group = groups.entry(Arc::from(full)).or_insert_with(|| Group {
            topic_filter: topic_filter.to_string(),
            members: Vec::new(),
            next: 0,
        });
        if !group.members.contains(&conn) {
            group.members.push(conn);
        }
        self.any.store(true, Ordering::Release);
    }

    /// `conn` unsubscribed from `full`, or left (`full` = `None`: all).
    pub fn leave(&self, full: Option<&str>, conn: u64) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut groups = self.lock();
        groups.retain(|name, group| {
            if full.is_none_or(|f| f == &**name) {
                group.members.retain(|m| *m != conn);
            }
            !group.members.is_empty()
        });
        self.any.store(!groups.is_empty(), Ordering::Release);
    }

    /// For a message on `topic`: each matching group and the member it goes to.
    pub fn pick(&self, topic: &[u8]) -> Vec<(Arc<str>, u64)> {
        if !self.any.load(Ordering::Acquire) {
            return Vec::new();
        }
        let Ok(topic) = std::str::from_utf8(topic) else {
            return Vec::new();
        };
        let mut groups = self.lock();
        groups
            .iter_mut()
            .filter(|(_, g)| matches(topic, &g.topic_filter))
            .map(|(name, g)| {
                let member = g.members[g.next % g.members.len()];
                g.next = g.next.wrapping_add(1);
                (name.clone(), member)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_syntax_is_checked() {
        assert_eq!(parse("a/b"), None);
        assert_eq!(parse("$share/g/a/#"), Some(Ok(("g", "a/#"))));
        assert!(parse("$share/g").unwrap().is_err());
        assert!(parse("$share//a").unwrap().is_err());
        assert!(parse("$share/g+/a").unwrap().is_err());
    }

    #[test]
    fn members_take_turns_and_leaving_removes_them() {
        let shares = Shares::default();
        shares.join("$share/g/t/#", 1);
        shares.join("$share/g/t/#", 2);
        shares.join("$share/h/other", 3);
        let picks: Vec<u64> = (0..4).map(|_| shares.pick(b"t/x")[0].1).collect();
        assert_eq!(picks, [1, 2, 1, 2]);
        assert!(shares.pick(b"nothing").is_empty());
        shares.leave(None, 1);
        assert_eq!(shares.pick(b"t/x")[0].1, 2);
        shares.leave(Some("$share/g/t/#"), 2);
        assert!(shares.pick(b"t/x").is_empty());
        assert_eq!(shares.pick(b"other").len(), 1);
    }
}

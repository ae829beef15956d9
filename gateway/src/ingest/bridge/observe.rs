//! The bridge's counters and its part of `/metrics` and `/status`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{json, Value};

use crate::observe::{MetricsWriter, Section};

/// Where a link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    /// Connected; the SUBACK is not in yet. On a new session the broker
    /// routes nothing to us before it has our subscriptions.
    Subscribing,
    /// Subscribed: what is published from now on is ours.
    Up,
    /// Lost; reconnecting after `retry_delay_ms`.
    Down,
    /// The broker refused our credentials; retried slowly.
    AuthFailed,
}

impl LinkState {
    fn name(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Subscribing => "subscribing",
            LinkState::Up => "up",
            LinkState::Down => "down",
            LinkState::AuthFailed => "auth_failed",
        }
    }
}

#[derive(Debug)]
struct Condition {
    state: LinkState,
    last_error: Option<String>,
    last_error_ms: Option<i64>,
    /// The delay before the next connection attempt (0 while up).
    retry_delay_ms: u64,
}

/// One link's counters.
#[derive(Debug)]
pub struct LinkStats {
    pub name: String,
    pub address: String,
    condition: Mutex<Condition>,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub auth_failures: AtomicU64,
    /// Sessions the broker no longer had (CONNACK without session present).
    pub sessions_new: AtomicU64,
    pub received: AtomicU64,
    /// Publishes durably appended.
    pub appended: AtomicU64,
    pub bytes_appended: AtomicU64,
    /// Redeliveries recognised and acknowledged without a second append.
    pub redeliveries: AtomicU64,
    pub acks: AtomicU64,
    pub append_failures: AtomicU64,
    pub subscriptions_refused: AtomicU64,
    /// Appended and not yet acknowledged, now.
    pub inflight: AtomicU64,
}

impl LinkStats {
    pub fn new(name: &str, address: &str) -> LinkStats {
        LinkStats {
            name: name.to_string(),
            address: address.to_string(),
            condition: Mutex::new(Condition {
                state: LinkState::Connecting,
                last_error: None,
                last_error_ms: None,
                retry_delay_ms: 0,
            }),
            connects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            sessions_new: AtomicU64::new(0),
            received: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            bytes_appended: AtomicU64::new(0),
            redeliveries: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            append_failures: AtomicU64::new(0),
            subscriptions_refused: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
        }
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_state(&self, state: LinkState, retry_delay_ms: u64) {
        let mut c = self.lock();
        c.state = state;
        c.retry_delay_ms = retry_delay_ms;
    }

    pub fn error(&self, message: String) {
        let mut c = self.lock();
        c.last_error = Some(message);
        c.last_error_ms = Some(crate::log::now_ms());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Condition> {
        self.condition
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn status(&self) -> Value {
        let c = self.lock();
        json!({
            "address": self.address,
            "state": c.state.name(),
            "last_error": c.last_error,
            "last_error_ms": c.last_error_ms,
            "retry_delay_ms": c.retry_delay_ms,
            "connects": load(&self.connects),
            "connect_failures": load(&self.connect_failures),
            "auth_failures": load(&self.auth_failures),
            "received": load(&self.received),
            "appended": load(&self.appended),
            "redeliveries": load(&self.redeliveries),
            "acks": load(&self.acks),
            "append_failures": load(&self.append_failures),
            "inflight": load(&self.inflight),
        })
    }
}

/// Every link's counters: the `bridge` section.
#[derive(Debug, Default)]
pub struct BridgeStats {
    pub links: Vec<Arc<LinkStats>>,
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Section for BridgeStats {
    fn name(&self) -> &'static str {
        "bridge"
    }

    fn metrics(&self, w: &mut MetricsWriter) {
        let sum = |f: fn(&LinkStats) -> &AtomicU64| {
            AtomicU64::new(self.links.iter().map(|l| load(f(l))).sum())
        };
        crate::ingest::ingest_samples(
            w,
            "bridge",
            &sum(|l| &l.appended),
            &sum(|l| &l.bytes_appended),
        );
        let per_link = |f: &dyn Fn(&LinkStats) -> f64| -> Vec<(Vec<(&str, &str)>, f64)> {
            self.links
                .iter()
                .map(|l| (vec![("broker", l.name.as_str())], f(l)))
                .collect()
        };
        let up = |l: &LinkStats| f64::from(u8::from(l.lock().state == LinkState::Up));
        w.family_owned(
            "tidewell_bridge_link_up",
            "gauge",
            "1 while the link to the broker is up.",
            per_link(&up),
        );
        let delay = |l: &LinkStats| l.lock().retry_delay_ms as f64 / 1000.0;
        w.family_owned(
            "tidewell_bridge_retry_delay_seconds",
            "gauge",
            "Delay before the next connection attempt (0 while up).",
            per_link(&delay),
        );
        w.family_owned(
            "tidewell_bridge_inflight",
            "gauge",
            "Publishes appended and not yet acknowledged to the broker.",
            per_link(&|l| load(&l.inflight) as f64),
        );
        for (name, help, counter) in COUNTERS {
            w.family_owned(
                &format!("tidewell_bridge_{name}_total"),
                "counter",
                help,
                per_link(&|l| load(counter(l)) as f64),
            );
        }
    }

    fn status(&self) -> Value {
        let links: serde_json::Map<String, Value> = self
            .links
            .iter()
            .map(|l| (l.name.clone(), l.status()))
            .collect();
        Value::Object(links)
    }
}

type Counter = fn(&LinkStats) -> &AtomicU64;

const COUNTERS: [(&str, &str, Counter); 10] = [
    (
        "connects",
        "Connections established (CONNACK accepted).",
        |l| &l.connects,
    ),
    (
        "connect_failures",
        "Connection attempts and links that failed.",
        |l| &l.connect_failures,
    ),
    (
        "auth_failures",
        "Connections the broker refused for our credentials.",
        |l| &l.auth_failures,
    ),
    (
        "sessions_new",
        "Connections on which the broker had no session for us.",
        |l| &l.sessions_new,
    ),
    (
        "received",
        "PUBLISH packets received from the broker.",
        |l| &l.received,
    ),
    ("appended", "Publishes durably appended.", |l| &l.appended),
    (
        "redeliveries",
        "Redeliveries recognised and acknowledged without a second append.",
        |l| &l.redeliveries,
    ),
    (
        "acks",
        "PUBACK and PUBREC sent, each after the durable append.",
        |l| &l.acks,
    ),
    (
        "append_failures",
        "Publishes whose append failed (not acknowledged; the broker redelivers).",
        |l| &l.append_failures,
    ),
    (
        "subscriptions_refused",
        "Subscription filters the broker refused.",
        |l| &l.subscriptions_refused,
    ),
];

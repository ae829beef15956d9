//! Counters of the MQTT listener, for the future `/metrics` endpoint.
//!
//! Every refusal is counted by cause: nothing is dropped without a trace.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[derive(Debug, Default)]
pub struct MqttStats {
    pub connections_accepted: AtomicU64,
    /// Closed at accept because `max_connections` was reached.
    pub connections_rejected: AtomicU64,
    pub connections_open: AtomicU64,
    /// CONNECT refused: bad password, unknown user, anonymous not allowed.
    pub auth_failures: AtomicU64,
    /// CONNECT refused for other reasons (client id, protocol, sessions).
    pub connect_refused: AtomicU64,
    pub publishes_received: AtomicU64,
    /// Publishes acknowledged after their durable append (QoS 1 and 2), or
    /// appended (QoS 0).
    pub publishes_appended: AtomicU64,
    /// Payload bytes of the publishes counted in `publishes_appended`.
    pub bytes_appended: AtomicU64,
    /// QoS 2 re-sends of a packet id still awaiting PUBREL: not appended again.
    pub qos2_duplicates: AtomicU64,
    /// QoS 1 re-sends (DUP = 1) of a record durable before a crash: acked,
    /// not appended again.
    pub qos1_resends: AtomicU64,
    pub refused_not_authorized: AtomicU64,
    pub refused_too_large: AtomicU64,
    pub refused_quota: AtomicU64,
    /// Append failures other than quota (poisoned or closed log).
    pub refused_log_error: AtomicU64,
    pub refused_retain: AtomicU64,
    pub malformed_packets: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub keep_alive_timeouts: AtomicU64,
    pub connect_timeouts: AtomicU64,
    pub deliveries: AtomicU64,
    /// Live records a slow subscriber missed (its queue overflowed).
    pub deliveries_lagged: AtomicU64,
    /// Messages not delivered because their MQTT 5 expiry had passed.
    pub deliveries_expired: AtomicU64,
    /// Messages not delivered because they exceed the subscriber's Maximum
    /// Packet Size (MQTT 5 says to drop them).
    pub deliveries_too_large: AtomicU64,
    /// Persistent sessions kept now (connected or not).
    pub sessions_persistent: AtomicU64,
    /// Persistent sessions removed because their client stayed away longer
    /// than their expiry.
    pub sessions_expired: AtomicU64,
    /// Records a returning persistent session did not get: retention
    /// removed them first.
    pub session_records_missed: AtomicU64,
    /// Password checks: run, cached, throttled, refused as busy.
    pub gate: GateStats,
}

impl MqttStats {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What the gate counts (read by the metrics endpoint).
#[derive(Debug, Default)]
pub struct GateStats {
    /// argon2 checks run.
    pub checks: AtomicU64,
    /// CONNECTs let in by a cached credential, without a check.
    pub cache_hits: AtomicU64,
    /// Refused without a check: the client id or address is being slowed down.
    pub throttled: AtomicU64,
    /// Refused without a check: the queue was full or too slow for the deadline.
    pub busy: AtomicU64,
    /// Connections waiting for a check now.
    pub waiting: AtomicUsize,
}

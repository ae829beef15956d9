//! What operators see: per partition how far replication is, and the state
//! of the uplink. It lives in memory and is served on `/status` (which
//! `tidewell status` reads).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::stream::StreamCounters;

/// Where releases before 0.2 rewrote the status every second.
const OLD_STATUS_FILE: &str = "replicate.status.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamState {
    /// Building a session: metadata, remote tails.
    Connecting,
    /// The session is up and the last thing heard was good.
    Connected,
    /// The session is up but librdkafka reports the brokers unreachable;
    /// it reconnects by itself, records wait in the log.
    Disconnected,
    /// The session failed; the next attempt is at `retry_at_ms`.
    BackingOff,
    Stopped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpstreamStatus {
    pub state: UpstreamState,
    /// When the current state began (ms since the epoch).
    pub since_ms: i64,
    pub retry_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
    pub sessions: u64,
    pub session_failures: u64,
    pub authorization_errors: u64,
    pub missing_topic_errors: u64,
    pub disconnects: u64,
    /// Bytes sent to the brokers, as the kernel counted them (see `wire`):
    /// compressed, framed, every request and TLS included.
    #[serde(default)]
    pub wire_bytes_sent: u64,
}

impl UpstreamStatus {
    pub fn new(now_ms: i64) -> UpstreamStatus {
        UpstreamStatus {
            state: UpstreamState::Connecting,
            since_ms: now_ms,
            retry_at_ms: None,
            last_error: None,
            last_error_ms: None,
            sessions: 0,
            session_failures: 0,
            authorization_errors: 0,
            missing_topic_errors: 0,
            disconnects: 0,
            wire_bytes_sent: 0,
        }
    }

    /// Changes the state; `since_ms` moves only when the state changes.
    pub fn set(&mut self, state: UpstreamState, now_ms: i64) {
        if self.state != state {
            self.state = state;
            self.since_ms = now_ms;
        }
        if state != UpstreamState::BackingOff {
            self.retry_at_ms = None;
        }
    }

    pub fn error(&mut self, message: String, now_ms: i64) {
        self.last_error = Some(message);
        self.last_error_ms = Some(now_ms);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: u32,
    pub remote_topic: String,
    pub log_start: u64,
    pub log_end: u64,
    /// Every offset below it is acknowledged upstream (in memory; the
    /// checkpoint lags by at most `checkpoint_interval_ms`).
    pub replicated: u64,
    pub backlog_records: u64,
    /// Estimated from the segment sizes on disk.
    pub backlog_bytes: u64,
    pub in_flight_records: u64,
    /// Records the log dropped under `drop_oldest` before replication.
    pub dropped_records: u64,
    pub gaps: Vec<(u64, u64)>,
    pub counters: StreamCounters,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub gateway_id: String,
    pub bootstrap_servers: String,
    pub updated_ms: i64,
    pub upstream: UpstreamStatus,
    pub partitions: Vec<PartitionStatus>,
}

/// Removes the status file older releases left in the data directory, so
/// nobody reads a stale one.
pub fn remove_old_file(data_dir: &Path) {
    let _ = std::fs::remove_file(data_dir.join(OLD_STATUS_FILE));
}

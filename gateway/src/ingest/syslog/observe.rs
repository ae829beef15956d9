//! Syslog ingest's part of `/metrics` and `/status`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use super::SyslogStats;
use crate::observe::{MetricsWriter, Section};

impl Section for SyslogStats {
    fn name(&self) -> &'static str {
        "syslog"
    }

    fn metrics(&self, w: &mut MetricsWriter) {
        crate::ingest::ingest_samples(w, "syslog", &self.records_appended, &self.bytes_appended);
        let received: Vec<(&[(&str, &str)], f64)> = vec![
            (&[("transport", "udp")], load(&self.received_udp) as f64),
            (&[("transport", "tcp")], load(&self.received_tcp) as f64),
            (&[("transport", "unix")], load(&self.received_unix) as f64),
        ];
        w.family(
            "tidewell_syslog_received_total",
            "counter",
            "Messages read from the sockets (accepted), by transport.",
            &received,
        );
        w.gauge(
            "tidewell_syslog_connections_open",
            "TCP connections open now.",
            load(&self.connections_open) as f64,
        );
        for (name, help, counter) in counters(self) {
            w.counter(
                &format!("tidewell_syslog_{name}_total"),
                help,
                load(counter),
            );
        }
    }

    fn status(&self) -> Value {
        let listening = self
            .listening
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        json!({
            "listening": listening,
            "received": load(&self.received_udp) + load(&self.received_tcp) + load(&self.received_unix),
            "records_appended": load(&self.records_appended),
            "parse_errors": load(&self.parse_errors),
            "oversize": load(&self.oversize),
            "dropped": load(&self.dropped_queue_full) + load(&self.dropped_log_full),
        })
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn counters(s: &SyslogStats) -> [(&'static str, &'static str, &AtomicU64); 8] {
    [
        (
            "records_appended",
            "Messages durably appended.",
            &s.records_appended,
        ),
        (
            "parse_errors",
            "Malformed messages, stored raw with syslog.parse_error.",
            &s.parse_errors,
        ),
        (
            "oversize",
            "Messages cut at max_message_bytes.",
            &s.oversize,
        ),
        (
            "dropped_queue_full",
            "Datagrams dropped because the queue to the log was full.",
            &s.dropped_queue_full,
        ),
        (
            "dropped_log_full",
            "Messages dropped because the topic was full under reject_new.",
            &s.dropped_log_full,
        ),
        (
            "refused_peers",
            "Datagrams and connections from peers outside allowed_peers.",
            &s.refused_peers,
        ),
        (
            "refused_connections",
            "TCP connections refused over max_connections.",
            &s.refused_connections,
        ),
        (
            "append_failures",
            "Messages lost to a failed append.",
            &s.append_failures,
        ),
    ]
}

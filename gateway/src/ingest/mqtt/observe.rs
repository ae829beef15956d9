//! The MQTT listener's part of `/metrics` and `/status`.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::stats::GateStats;
use super::stats::MqttStats;
use crate::observe::{MetricsWriter, Section};

impl Section for MqttStats {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn metrics(&self, w: &mut MetricsWriter) {
        crate::ingest::ingest_samples(w, "mqtt", &self.publishes_appended, &self.bytes_appended);
        mqtt_metrics(w, self);
    }

    fn status(&self) -> Value {
        json!({
            "connections_open": MqttStats::get(&self.connections_open),
            "publishes_appended": MqttStats::get(&self.publishes_appended),
            "refused_not_authorized": MqttStats::get(&self.refused_not_authorized),
            "refused_quota": MqttStats::get(&self.refused_quota),
            "sessions_persistent": MqttStats::get(&self.sessions_persistent),
            "session_records_missed": MqttStats::get(&self.session_records_missed),
        })
    }
}

fn mqtt_metrics(w: &mut MetricsWriter, m: &MqttStats) {
    w.gauge(
        "tidewell_mqtt_connections_open",
        "MQTT connections open now.",
        MqttStats::get(&m.connections_open) as f64,
    );
    w.counter(
        "tidewell_mqtt_connections_accepted_total",
        "MQTT connections accepted.",
        MqttStats::get(&m.connections_accepted),
    );
    w.counter(
        "tidewell_mqtt_publishes_received_total",
        "PUBLISH packets received.",
        MqttStats::get(&m.publishes_received),
    );
    w.counter(
        "tidewell_mqtt_publishes_appended_total",
        "Publishes durably appended (and acknowledged, QoS 1/2).",
        MqttStats::get(&m.publishes_appended),
    );
    w.counter(
        "tidewell_mqtt_qos2_duplicates_total",
        "QoS 2 re-sends recognised and not appended again.",
        MqttStats::get(&m.qos2_duplicates),
    );
    w.counter(
        "tidewell_mqtt_qos1_resends_total",
        "QoS 1 re-sends of records durable before a crash, acked without a second append.",
        MqttStats::get(&m.qos1_resends),
    );
    let refusals = [
        ("connection_limit", &m.connections_rejected),
        ("auth", &m.auth_failures),
        ("connect", &m.connect_refused),
        ("not_authorized", &m.refused_not_authorized),
        ("too_large", &m.refused_too_large),
        ("quota", &m.refused_quota),
        ("log_error", &m.refused_log_error),
        ("retain", &m.refused_retain),
        ("malformed", &m.malformed_packets),
        ("protocol", &m.protocol_errors),
        ("keep_alive", &m.keep_alive_timeouts),
        ("connect_timeout", &m.connect_timeouts),
    ];
    let samples: Vec<(Vec<(&str, &str)>, f64)> = refusals
        .iter()
        .map(|(r, c)| (vec![("reason", *r)], MqttStats::get(c) as f64))
        .collect();
    w.family_owned(
        "tidewell_mqtt_refusals_total",
        "counter",
        "Connections and publishes refused or closed, by reason.",
        samples,
    );
    gate_metrics(w, &m.gate);
    w.counter(
        "tidewell_mqtt_deliveries_total",
        "Records delivered to local subscribers.",
        MqttStats::get(&m.deliveries),
    );
    w.counter(
        "tidewell_mqtt_deliveries_lagged_total",
        "Records a slow local subscriber missed.",
        MqttStats::get(&m.deliveries_lagged),
    );
    w.counter(
        "tidewell_mqtt_deliveries_expired_total",
        "Messages not delivered: their MQTT 5 message expiry had passed.",
        MqttStats::get(&m.deliveries_expired),
    );
    w.counter(
        "tidewell_mqtt_deliveries_too_large_total",
        "Messages not delivered: larger than the subscriber's Maximum Packet Size.",
        MqttStats::get(&m.deliveries_too_large),
    );
    w.gauge(
        "tidewell_mqtt_sessions_persistent",
        "Persistent MQTT sessions kept now, connected or not.",
        MqttStats::get(&m.sessions_persistent) as f64,
    );
    w.counter(
        "tidewell_mqtt_sessions_expired_total",
        "Persistent sessions removed: their client stayed away past the session expiry.",
        MqttStats::get(&m.sessions_expired),
    );
    w.counter(
        "tidewell_mqtt_session_records_missed_total",
        "Records a returning persistent session did not get: retention removed them first.",
        MqttStats::get(&m.session_records_missed),
    );
}

fn gate_metrics(w: &mut MetricsWriter, g: &GateStats) {
    w.counter(
        "tidewell_mqtt_auth_checks_total",
        "Password checks (argon2) run.",
        MqttStats::get(&g.checks),
    );
    w.counter(
        "tidewell_mqtt_auth_cache_hits_total",
        "CONNECTs let in by a recently verified credential, without a check.",
        MqttStats::get(&g.cache_hits),
    );
    w.gauge(
        "tidewell_mqtt_auth_waiting",
        "Connections waiting for a password check now.",
        g.waiting.load(Ordering::Relaxed) as f64,
    );
    let refusals = [("throttled", &g.throttled), ("busy", &g.busy)];
    let samples: Vec<(Vec<(&str, &str)>, f64)> = refusals
        .iter()
        .map(|(r, c)| (vec![("reason", *r)], MqttStats::get(c) as f64))
        .collect();
    w.family_owned(
        "tidewell_mqtt_auth_refusals_total",
        "counter",
        "CONNECTs refused without a password check: recent failures from the client id or address (throttled), or too many waiting (busy).",
        samples,
    );
}

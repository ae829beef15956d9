//! `/metrics` in the Prometheus text exposition format (version 0.0.4).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Observed;
use crate::log::stats::{Stats, FSYNC_BUCKETS_US};
use crate::log::TopicSummary;

/// Builds the exposition text; each metric family gets its HELP and TYPE once.
#[derive(Default)]
pub struct Writer {
    out: String,
}

/// Label pairs of one sample.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Writer {
    pub fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(Labels, f64)]) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(self.out, "{name}{} {value}", label_text(labels));
        }
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help, &[(&[], value as f64)]);
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help, &[(&[], value)]);
    }

    /// A histogram from per-bucket counts (not cumulative) with upper bounds in
    /// seconds; the last count is the overflow bucket.
    pub fn histogram(&mut self, name: &str, help: &str, bounds: &[f64], counts: &[u64], sum: f64) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in bounds.iter().zip(counts) {
            cumulative += count;
            let _ = writeln!(self.out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += counts.get(bounds.len()).copied().unwrap_or(0);
        let _ = writeln!(self.out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(self.out, "{name}_sum {sum}");
        let _ = writeln!(self.out, "{name}_count {cumulative}");
    }
}

fn label_text(labels: Labels) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", pairs.join(","))
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

pub fn render(observed: &Observed) -> String {
    let mut w = Writer::default();
    w.gauge("tidewell_up", "1 while the gateway runs.", 1.0);
    w.gauge(
        "tidewell_ready",
        "1 when the log is open, writable and every listener is up.",
        f64::from(u8::from(observed.is_ready())),
    );
    w.gauge(
        "tidewell_uptime_seconds",
        "Seconds since the gateway started.",
        observed.started.elapsed().as_secs_f64(),
    );
    log_metrics(&mut w, observed);
    ingest_metrics(&mut w, observed);
    if let Some(mqtt) = &observed.mqtt {
        mqtt_metrics(&mut w, mqtt);
    }
    if let Some(serial) = &observed.serial {
        serial_metrics(&mut w, serial);
    }
    for source in &observed.sources {
        source.metrics(&mut w);
    }
    w.out
}

fn log_metrics(w: &mut Writer, observed: &Observed) {
    let stats = observed.log.stats();
    w.gauge(
        "tidewell_log_poisoned",
        "1 after a storage failure: the log refuses writes.",
        f64::from(u8::from(observed.log.poisoned().is_some())),
    );
    w.counter(
        "tidewell_log_fsyncs_total",
        "fdatasync calls that covered appended records.",
        Stats::get(&stats.fsyncs),
    );
    let bounds: Vec<f64> = FSYNC_BUCKETS_US.iter().map(|&us| us as f64 / 1e6).collect();
    let counts: Vec<u64> = stats.fsync_buckets.iter().map(get).collect();
    let sum = Stats::get(&stats.fsync_micros_total) as f64 / 1e6;
    w.histogram(
        "tidewell_log_fsync_duration_seconds",
        "Time one group fsync took.",
        &bounds,
        &counts,
        sum,
    );
    w.counter(
        "tidewell_log_bytes_written_total",
        "Bytes of record batches written to segments.",
        Stats::get(&stats.bytes_written),
    );
    w.counter(
        "tidewell_log_batches_written_total",
        "Record batches written.",
        Stats::get(&stats.batches_written),
    );
    w.counter(
        "tidewell_log_rejected_records_total",
        "Records refused because a reject_new topic or the disk was full.",
        Stats::get(&stats.rejected_full),
    );
    topic_metrics(w, &observed.log.summaries());
}

fn topic_metrics(w: &mut Writer, topics: &[TopicSummary]) {
    let mut size = Vec::new();
    let mut quota = Vec::new();
    let mut records = Vec::new();
    let mut bytes = Vec::new();
    let mut dropped = Vec::new();
    for topic in topics {
        let name = topic.name.as_str();
        size.push((name, topic.size_bytes() as f64));
        if let Some(q) = topic.retention_bytes {
            quota.push((name, q as f64));
        }
        dropped.push((name, topic.dropped_records() as f64));
        records.push((name, topic.appended_records as f64));
        bytes.push((name, topic.appended_bytes as f64));
    }
    emit(
        w,
        "tidewell_topic_size_bytes",
        "gauge",
        "Bytes of segments on disk.",
        by_topic(&size),
    );
    emit(
        w,
        "tidewell_topic_quota_bytes",
        "gauge",
        "The topic's retention_bytes quota.",
        by_topic(&quota),
    );
    emit(
        w,
        "tidewell_topic_records_appended_total",
        "counter",
        "Records appended since start.",
        by_topic(&records),
    );
    emit(
        w,
        "tidewell_topic_bytes_appended_total",
        "counter",
        "Payload bytes (key, value, headers) appended since start.",
        by_topic(&bytes),
    );
    emit(
        w,
        "tidewell_topic_dropped_records_total",
        "counter",
        "Records deleted by the quota before they were replicated (drop_oldest).",
        by_topic(&dropped),
    );
    partition_metrics(w, topics);
}

fn partition_metrics(w: &mut Writer, topics: &[TopicSummary]) {
    let mut end = Vec::new();
    let mut start = Vec::new();
    let mut replicated = Vec::new();
    let mut labels = Vec::new();
    for topic in topics {
        for part in &topic.partitions {
            labels.push((topic.name.clone(), part.partition.0.to_string()));
            end.push(part.end.0 as f64);
            start.push(part.start.0 as f64);
            replicated.push(part.replicated.map(|r| r.0 as f64));
        }
    }
    let samples = |values: &[f64]| -> Vec<(Vec<(&str, &str)>, f64)> {
        labels
            .iter()
            .zip(values)
            .map(|((t, p), v)| (vec![("topic", t.as_str()), ("partition", p.as_str())], *v))
            .collect()
    };
    emit(
        w,
        "tidewell_partition_end_offset",
        "gauge",
        "Offset after the newest durable record.",
        samples(&end),
    );
    emit(
        w,
        "tidewell_partition_start_offset",
        "gauge",
        "Oldest offset still kept.",
        samples(&start),
    );
    let repl: Vec<(Vec<(&str, &str)>, f64)> = labels
        .iter()
        .zip(&replicated)
        .filter_map(|((t, p), r)| {
            r.map(|r| (vec![("topic", t.as_str()), ("partition", p.as_str())], r))
        })
        .collect();
    emit(
        w,
        "tidewell_partition_replicated_offset",
        "gauge",
        "Every offset below this is acknowledged upstream.",
        repl,
    );
}

fn by_topic<'a>(values: &[(&'a str, f64)]) -> Vec<(Vec<(&'static str, &'a str)>, f64)> {
    values
        .iter()
        .map(|(t, x)| (vec![("topic", *t)], *x))
        .collect()
}

fn emit(
    w: &mut Writer,
    name: &str,
    kind: &str,
    help: &str,
    samples: Vec<(Vec<(&str, &str)>, f64)>,
) {
    let borrowed: Vec<(Labels, f64)> = samples.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
    w.family(name, kind, help, &borrowed);
}

/// Records and bytes durably ingested, by source (per topic: `tidewell_topic_*`).
fn ingest_metrics(w: &mut Writer, observed: &Observed) {
    let mut records = Vec::new();
    let mut bytes = Vec::new();
    if let Some(m) = &observed.mqtt {
        records.push((vec![("source", "mqtt")], get(&m.publishes_appended) as f64));
        bytes.push((vec![("source", "mqtt")], get(&m.bytes_appended) as f64));
    }
    if let Some(s) = &observed.serial {
        records.push((vec![("source", "serial")], get(&s.readings_appended) as f64));
        bytes.push((vec![("source", "serial")], get(&s.bytes_appended) as f64));
    }
    emit(
        w,
        "tidewell_ingest_records_total",
        "counter",
        "Records durably appended, by source.",
        records,
    );
    emit(
        w,
        "tidewell_ingest_bytes_total",
        "counter",
        "Payload bytes durably appended, by source.",
        bytes,
    );
}

fn mqtt_metrics(w: &mut Writer, m: &crate::ingest::mqtt::stats::MqttStats) {
    w.gauge(
        "tidewell_mqtt_connections_open",
        "MQTT connections open now.",
        get(&m.connections_open) as f64,
    );
    w.counter(
        "tidewell_mqtt_connections_accepted_total",
        "MQTT connections accepted.",
        get(&m.connections_accepted),
    );
    w.counter(
        "tidewell_mqtt_publishes_received_total",
        "PUBLISH packets received.",
        get(&m.publishes_received),
    );
    w.counter(
        "tidewell_mqtt_publishes_appended_total",
        "Publishes durably appended (and acknowledged, QoS 1/2).",
        get(&m.publishes_appended),
    );
    w.counter(
        "tidewell_mqtt_qos2_duplicates_total",
        "QoS 2 re-sends recognised and not appended again.",
        get(&m.qos2_duplicates),
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
        .map(|(r, c)| (vec![("reason", *r)], get(c) as f64))
        .collect();
    emit(
        w,
        "tidewell_mqtt_refusals_total",
        "counter",
        "Connections and publishes refused or closed, by reason.",
        samples,
    );
    gate_metrics(w, &m.gate);
    w.counter(
        "tidewell_mqtt_deliveries_total",
        "Records delivered to local subscribers.",
        get(&m.deliveries),
    );
    w.counter(
        "tidewell_mqtt_deliveries_lagged_total",
        "Records a slow local subscriber missed.",
        get(&m.deliveries_lagged),
    );
}

fn gate_metrics(w: &mut Writer, g: &crate::ingest::mqtt::gate::GateStats) {
    w.counter(
        "tidewell_mqtt_auth_checks_total",
        "Password checks (argon2) run.",
        get(&g.checks),
    );
    w.counter(
        "tidewell_mqtt_auth_cache_hits_total",
        "CONNECTs let in by a recently verified credential, without a check.",
        get(&g.cache_hits),
    );
    w.gauge(
        "tidewell_mqtt_auth_waiting",
        "Connections waiting for a password check now.",
        g.waiting.load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    let refusals = [("throttled", &g.throttled), ("busy", &g.busy)];
    let samples: Vec<(Vec<(&str, &str)>, f64)> = refusals
        .iter()
        .map(|(r, c)| (vec![("reason", *r)], get(c) as f64))
        .collect();
    emit(
        w,
        "tidewell_mqtt_auth_refusals_total",
        "counter",
        "CONNECTs refused without a password check: recent failures from the client id or address (throttled), or too many waiting (busy).",
        samples,
    );
}

fn serial_metrics(w: &mut Writer, s: &crate::ingest::serial::SerialStats) {
    w.gauge(
        "tidewell_serial_ports_open",
        "Serial ports open now.",
        get(&s.ports_open) as f64,
    );
    w.counter(
        "tidewell_serial_reconnects_total",
        "Times a serial port was lost.",
        get(&s.reconnects),
    );
    w.counter(
        "tidewell_serial_frames_total",
        "Frames decoded.",
        get(&s.frames),
    );
    w.counter(
        "tidewell_serial_bad_frames_total",
        "Damaged frames dropped (CRC, framing).",
        get(&s.bad_frames),
    );
    w.counter(
        "tidewell_serial_batches_appended_total",
        "Device batches durably appended and acknowledged.",
        get(&s.batches_appended),
    );
    w.counter(
        "tidewell_serial_readings_appended_total",
        "Readings (or text lines) durably appended.",
        get(&s.readings_appended),
    );
    w.counter(
        "tidewell_serial_duplicate_batches_total",
        "Retransmitted batches recognised and not appended again.",
        get(&s.duplicate_batches),
    );
    w.counter(
        "tidewell_serial_append_failures_total",
        "Appends refused or failed (the device was sent a Nack).",
        get(&s.append_failures),
    );
    w.counter(
        "tidewell_serial_long_lines_total",
        "Text lines dropped for exceeding max_line_bytes.",
        get(&s.long_lines),
    );
}

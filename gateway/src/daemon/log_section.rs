//! The log's part of `/metrics` and `/status`. The log knows nothing of
//! the registry above it, so its section is written here, in the
//! lifecycle that opened it, from the log's read-only summaries.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::log::stats::{Stats, FSYNC_BUCKETS_US};
use crate::log::{Log, PartitionSummary, TopicSummary};
use crate::observe::{MetricsWriter, Section};

pub struct LogSection(pub Arc<Log>);

impl Section for LogSection {
    fn name(&self) -> &'static str {
        "log"
    }

    fn metrics(&self, w: &mut MetricsWriter) {
        log_metrics(w, &self.0);
    }

    fn status(&self) -> Value {
        let topics: Vec<Value> = self.0.summaries().iter().map(topic_status).collect();
        json!({
            "data_dir": self.0.dir().display().to_string(),
            "poisoned": self.0.poisoned(),
            "topics": topics,
        })
    }

    fn unhealthy(&self) -> Option<String> {
        self.0
            .poisoned()
            .map(|why| format!("the log refuses writes: {why}"))
    }
}

fn topic_status(topic: &TopicSummary) -> Value {
    let partitions: Vec<Value> = topic.partitions.iter().map(partition_status).collect();
    json!({
        "name": topic.name,
        "quota_bytes": topic.retention_bytes,
        "size_bytes": topic.size_bytes(),
        "partitions": partitions,
    })
}

/// Backlog is what is not yet acknowledged upstream; without a cursor
/// (buffer-only mode, or nothing replicated yet) it is everything kept.
fn partition_status(part: &PartitionSummary) -> Value {
    json!({
        "partition": part.partition.0,
        "start_offset": part.start.0,
        "end_offset": part.end.0,
        "replicated_offset": part.replicated.map(|o| o.0),
        "backlog_records": part.backlog.records,
        "backlog_bytes": part.backlog.bytes,
        "dropped_records": part.dropped_records,
        "gaps": part.gaps,
    })
}

fn log_metrics(w: &mut MetricsWriter, log: &Log) {
    let stats = log.stats();
    w.gauge(
        "tidewell_log_poisoned",
        "1 after a storage failure: the log refuses writes.",
        f64::from(u8::from(log.poisoned().is_some())),
    );
    w.counter(
        "tidewell_log_fsyncs_total",
        "fdatasync calls that covered appended records.",
        Stats::get(&stats.fsyncs),
    );
    let bounds: Vec<f64> = FSYNC_BUCKETS_US.iter().map(|&us| us as f64 / 1e6).collect();
    let counts: Vec<u64> = stats
        .fsync_buckets
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
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
    topic_metrics(w, &log.summaries());
}

fn topic_metrics(w: &mut MetricsWriter, topics: &[TopicSummary]) {
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
    w.family_owned(
        "tidewell_topic_size_bytes",
        "gauge",
        "Bytes of segments on disk.",
        by_topic(&size),
    );
    w.family_owned(
        "tidewell_topic_quota_bytes",
        "gauge",
        "The topic's retention_bytes quota.",
        by_topic(&quota),
    );
    w.family_owned(
        "tidewell_topic_records_appended_total",
        "counter",
        "Records appended since start.",
        by_topic(&records),
    );
    w.family_owned(
        "tidewell_topic_bytes_appended_total",
        "counter",
        "Payload bytes (key, value, headers) appended since start.",
        by_topic(&bytes),
    );
    w.family_owned(
        "tidewell_topic_dropped_records_total",
        "counter",
        "Records deleted by the quota before they were replicated (drop_oldest).",
        by_topic(&dropped),
    );
    partition_metrics(w, topics);
}

fn partition_metrics(w: &mut MetricsWriter, topics: &[TopicSummary]) {
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
    w.family_owned(
        "tidewell_partition_end_offset",
        "gauge",
        "Offset after the newest durable record.",
        samples(&end),
    );
    w.family_owned(
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
    w.family_owned(
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

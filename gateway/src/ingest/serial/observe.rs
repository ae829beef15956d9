//! Serial ingest's part of `/metrics` and `/status`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use super::SerialStats;
use crate::observe::{MetricsWriter, Section};

impl Section for SerialStats {
    fn name(&self) -> &'static str {
        "serial"
    }

    fn metrics(&self, w: &mut MetricsWriter) {
        crate::ingest::ingest_samples(w, "serial", &self.readings_appended, &self.bytes_appended);
        serial_metrics(w, self);
    }

    fn status(&self) -> Value {
        json!({
            "ports_open": load(&self.ports_open),
            "readings_appended": load(&self.readings_appended),
            "bad_frames": load(&self.bad_frames),
            "reconnects": load(&self.reconnects),
        })
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn serial_metrics(w: &mut MetricsWriter, s: &SerialStats) {
    w.gauge(
        "tidewell_serial_ports_open",
        "Serial ports open now.",
        load(&s.ports_open) as f64,
    );
    let counters = [
        ("reconnects", "Times a serial port was lost.", &s.reconnects),
        ("frames", "Frames decoded.", &s.frames),
        (
            "bad_frames",
            "Damaged frames dropped (CRC, framing).",
            &s.bad_frames,
        ),
        (
            "batches_appended",
            "Device batches durably appended and acknowledged.",
            &s.batches_appended,
        ),
        (
            "readings_appended",
            "Readings (or text lines) durably appended.",
            &s.readings_appended,
        ),
        (
            "duplicate_batches",
            "Retransmitted batches recognised and not appended again.",
            &s.duplicate_batches,
        ),
        (
            "append_failures",
            "Appends refused or failed (the device was sent a Nack).",
            &s.append_failures,
        ),
        (
            "long_lines",
            "Text lines dropped for exceeding max_line_bytes.",
            &s.long_lines,
        ),
    ];
    for (name, help, counter) in counters {
        w.counter(
            &format!("tidewell_serial_{name}_total"),
            help,
            load(counter),
        );
    }
}

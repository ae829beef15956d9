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
    w.counter(
        "tidewell_serial_reconnects_total",
        "Times a serial port was lost.",
        load(&s.reconnects),
    );
    w.counter(
        "tidewell_serial_frames_total",
        "Frames decoded.",
        load(&s.frames),
    );
    w.counter(
        "tidewell_serial_bad_frames_total",
        "Damaged frames dropped (CRC, framing).",
        load(&s.bad_frames),
    );
    w.counter(
        "tidewell_serial_batches_appended_total",
        "Device batches durably appended and acknowledged.",
        load(&s.batches_appended),
    );
    w.counter(
        "tidewell_serial_readings_appended_total",
        "Readings (or text lines) durably appended.",
        load(&s.readings_appended),
    );
    w.counter(
        "tidewell_serial_duplicate_batches_total",
        "Retransmitted batches recognised and not appended again.",
        load(&s.duplicate_batches),
    );
    w.counter(
        "tidewell_serial_append_failures_total",
        "Appends refused or failed (the device was sent a Nack).",
        load(&s.append_failures),
    );
    w.counter(
        "tidewell_serial_long_lines_total",
        "Text lines dropped for exceeding max_line_bytes.",
        load(&s.long_lines),
    );
}

//! Journal ingest's part of `/metrics` and `/status`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use super::JournalStats;
use crate::observe::{MetricsWriter, Section};

impl Section for JournalStats {
    fn name(&self) -> &'static str {
        "journal"
    }

    fn metrics(&self, w: &mut MetricsWriter) {
        crate::ingest::ingest_samples(w, "journal", &self.entries_appended, &self.bytes_appended);
        w.gauge(
            "tidewell_journal_following",
            "1 while journalctl runs and is read.",
            if self.snapshot().phase == "following" {
                1.0
            } else {
                0.0
            },
        );
        for (name, help, counter) in counters(self) {
            w.counter(
                &format!("tidewell_journal_{name}_total"),
                help,
                load(counter),
            );
        }
    }

    fn status(&self) -> Value {
        let state = self.snapshot();
        json!({
            "state": state.phase,
            "last_error": state.last_error,
            "durable_cursor": state.durable_cursor,
            "entries_appended": load(&self.entries_appended),
            "journalctl_restarts": load(&self.journalctl_restarts),
            "gaps": load(&self.gaps),
            "gap_entries": load(&self.gap_entries),
            "rate_limited": load(&self.rate_limited),
        })
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn counters(s: &JournalStats) -> [(&'static str, &'static str, &AtomicU64); 12] {
    [
        (
            "entries_read",
            "Entries read from journalctl.",
            &s.entries_read,
        ),
        (
            "entries_appended",
            "Entries durably appended.",
            &s.entries_appended,
        ),
        (
            "duplicates_skipped",
            "Entries read again that the log already holds (the resume entry).",
            &s.duplicates_skipped,
        ),
        ("excluded", "Entries of excluded units.", &s.excluded),
        (
            "rate_limited",
            "Entries dropped by the rate limit.",
            &s.rate_limited,
        ),
        (
            "truncated_fields",
            "Field values cut at max_field_bytes.",
            &s.truncated_fields,
        ),
        (
            "gaps",
            "Resumes that found the stored cursor's entry gone (vacuumed or rotated).",
            &s.gaps,
        ),
        (
            "gap_entries",
            "Entries known lost in those gaps.",
            &s.gap_entries,
        ),
        (
            "journalctl_restarts",
            "Times journalctl exited or could not be started.",
            &s.journalctl_restarts,
        ),
        (
            "append_waits",
            "Appends that waited for room (writer behind, or topic full under reject_new).",
            &s.append_waits,
        ),
        (
            "append_failures",
            "Appends the log refused or failed.",
            &s.append_failures,
        ),
        (
            "bytes_appended",
            "Payload bytes durably appended.",
            &s.bytes_appended,
        ),
    ]
}

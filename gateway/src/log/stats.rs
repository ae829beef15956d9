//! Counters the log keeps for metrics and benchmarks (lock-free).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (microseconds) of the fsync latency histogram buckets.
pub const FSYNC_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

#[derive(Default)]
pub struct Stats {
    pub fsyncs: AtomicU64,
    pub fsync_micros_total: AtomicU64,
    /// Cumulative counts per bucket of `FSYNC_BUCKETS_US`, plus one for +Inf.
    pub fsync_buckets: [AtomicU64; FSYNC_BUCKETS_US.len() + 1],
    pub bytes_written: AtomicU64,
    pub records_written: AtomicU64,
    pub batches_written: AtomicU64,
    /// Records refused because a `reject_new` topic (or the disk) was full.
    pub rejected_full: AtomicU64,
}

impl Stats {
    pub fn record_fsync(&self, took: Duration) {
        let micros = took.as_micros() as u64;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_micros_total.fetch_add(micros, Ordering::Relaxed);
        let bucket = FSYNC_BUCKETS_US
            .iter()
            .position(|&b| micros <= b)
            .unwrap_or(FSYNC_BUCKETS_US.len());
        self.fsync_buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_write(&self, bytes: u64, records: u64) {
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        self.records_written.fetch_add(records, Ordering::Relaxed);
        self.batches_written.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

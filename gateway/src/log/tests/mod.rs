//! Tests of the log as a whole: crash consistency on the simulated disk, a
//! model-based property test, and damaged files.

mod clock;
mod corrupt;
mod crash;
mod golden;
mod model;
mod retention;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::*;

pub fn dir() -> &'static Path {
    Path::new("/data")
}

/// A small xorshift generator: tests stay deterministic per seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub fn record(rng: &mut Rng, tag: u64) -> Record {
    let len = rng.below(300) as usize;
    let mut value = format!("r{tag}:").into_bytes();
    value.extend((0..len).map(|i| (tag as usize + i) as u8));
    Record {
        timestamp_ms: 1_764_000_000_000 + tag as i64,
        key: (tag.is_multiple_of(3)).then(|| Bytes::from(format!("k{tag}"))),
        value: Bytes::from(value),
        headers: if tag.is_multiple_of(5) {
            vec![("h".into(), Bytes::from_static(b"v"))]
        } else {
            Vec::new()
        },
    }
}

pub fn small_config(partitions: u32, fsync: FsyncPolicy) -> LogConfig {
    let topic = TopicConfig {
        partitions,
        fsync,
        max_segment_bytes: 4096,
        ..TopicConfig::default()
    };
    let mut config = LogConfig::new(dir()).with_topic("t", topic);
    config.index_interval_bytes = 256;
    config.min_free_bytes = 0;
    config
}

pub fn sim_disk(seed: u64) -> sim::SimDisk {
    let disk = sim::SimDisk::new(seed);
    disk.create_dir_all(dir()).expect("fresh disk");
    disk
}

/// Every readable record of a partition, from its start, in order.
pub fn read_all(log: &Log, topic: &str, p: u32) -> Vec<StoredRecord> {
    let (start, _) = log.offsets(topic, Partition(p)).expect("partition exists");
    let mut out: Vec<StoredRecord> = Vec::new();
    let mut next = start;
    loop {
        let batch = log.read(topic, Partition(p), next, 4096).expect("readable");
        let Some(last) = batch.last() else { return out };
        next = Offset(last.offset.0 + 1);
        out.extend(batch);
    }
}

pub fn open(disk: &sim::SimDisk, config: &LogConfig) -> Log {
    Log::open(Arc::new(disk.clone()), config.clone()).expect("log opens")
}

//! Entry points of the fuzz targets (`gateway/fuzz/`), also run over their
//! corpora by `cargo test` (`tests/fuzz_corpus.rs`), so every input that
//! once crashed a target stays a regression test on stable Rust.
//!
//! Each entry takes arbitrary bytes and must return without panicking; the
//! log entries also check what they can: a record that is served equals the
//! record written at that offset, whatever the damage.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::log::sim::SimDisk;
use crate::log::{
    batch, FsyncPolicy, Log, LogConfig, Offset, Partition, ReadError, Record, Storage, TopicConfig,
};

pub use crate::ingest::mqtt::fuzz_stream as mqtt_stream;
pub use crate::ingest::mqtt::fuzz_ws_stream as mqtt_ws_stream;

/// The record batch decoder: parse, verify and decode; a batch that decodes
/// re-encodes to a batch that decodes to the same records.
pub fn record_batch(data: &[u8]) {
    let _ = batch::BatchHeader::parse(data);
    let Ok((header, records)) = batch::decode(data) else {
        return;
    };
    let verified = batch::decode_verified(&header, data).expect("a decoded batch decodes");
    assert_eq!(verified, records, "the two decoders disagree");
    let plain: Vec<Record> = records.iter().map(|s| s.record.clone()).collect();
    let mut out = Vec::new();
    let base = Offset(header.base_offset);
    let none = crate::log::Compression::None;
    let Ok(_) = batch::encode(base, &plain, none, &mut out) else {
        return;
    };
    let (_, again) = batch::decode(&out).expect("a re-encoded batch decodes");
    let again: Vec<Record> = again.into_iter().map(|s| s.record).collect();
    assert_eq!(again, plain, "re-encoded records differ");
}

const TOPIC: &str = "t";
const RECORDS: u64 = 60;

fn dir() -> &'static Path {
    Path::new("/data")
}

fn config() -> LogConfig {
    let topic = TopicConfig {
        partitions: 1,
        fsync: FsyncPolicy::Always,
        max_segment_bytes: 1024,
        ..TopicConfig::default()
    };
    let mut config = LogConfig::new(dir()).with_topic(TOPIC, topic);
    config.index_interval_bytes = 128;
    config.min_free_bytes = 0;
    config
}

fn record(tag: u64) -> Record {
    Record {
        timestamp_ms: 1_764_000_000_000 + tag as i64,
        key: tag
            .is_multiple_of(3)
            .then(|| Bytes::from(format!("k{tag}"))),
        value: Bytes::from(format!("record {tag} {}", "x".repeat((tag % 40) as usize))),
        headers: Vec::new(),
    }
}

/// A closed log of `RECORDS` records over several segments, made once.
fn pristine() -> &'static SimDisk {
    static DISK: OnceLock<SimDisk> = OnceLock::new();
    DISK.get_or_init(|| {
        let disk = SimDisk::new(7);
        disk.create_dir_all(dir()).expect("fresh disk");
        let log = Log::open(Arc::new(disk.clone()), config()).expect("open a fresh log");
        for tag in 0..RECORDS {
            log.append(TOPIC, Partition(0), vec![record(tag)])
                .expect("append")
                .wait()
                .expect("durable");
        }
        log.close();
        disk
    })
}

/// Segment recovery: damages one file of a good log as the bytes say
/// (patches, a cut, or new contents), opens it, reads everything it
/// serves, and appends. Served records must be the ones written.
pub fn segment_recovery(data: &[u8]) {
    let [which, how, rest @ ..] = data else {
        return;
    };
    let disk = pristine().crash();
    let Some(path) = pick_file(&disk, *which) else {
        return;
    };
    let mut bytes = disk.read_file(&path).unwrap_or_default();
    damage(&mut bytes, *how, rest);
    disk.write_file(&path, &bytes);
    let Ok(log) = Log::open(Arc::new(disk), config()) else {
        return;
    };
    check_served(&log);
    let appended = log
        .append(TOPIC, Partition(0), vec![record(RECORDS)])
        .and_then(crate::log::AppendTicket::wait);
    if let Ok(done) = appended {
        let got = log.read(TOPIC, Partition(0), done.first, 1 << 16);
        let got = got.expect("a record just appended is readable");
        assert_eq!(got.first().map(|s| &s.record), Some(&record(RECORDS)));
    }
    log.close();
}

/// The files of partition 0, sorted, and the topic's other files.
fn pick_file(disk: &SimDisk, which: u8) -> Option<PathBuf> {
    let pdir = dir().join(TOPIC).join("0");
    let mut names = disk.list_dir(&pdir).ok()?;
    names.sort();
    let name = names.get(usize::from(which) % names.len().max(1))?;
    Some(pdir.join(name))
}

/// `how` 0: byte patches (position, value) from `rest`; 1: cut at the
/// position in `rest[0..2]`, then append the remainder; 2: replace.
fn damage(bytes: &mut Vec<u8>, how: u8, rest: &[u8]) {
    match how % 3 {
        0 => {
            for patch in rest.chunks_exact(3) {
                let pos = usize::from(u16::from_le_bytes([patch[0], patch[1]]));
                let len = bytes.len().max(1);
                if let Some(b) = bytes.get_mut(pos % len) {
                    *b ^= patch[2] | 1;
                }
            }
        }
        1 => {
            let (cut, tail) = rest.split_at(rest.len().min(2));
            let mut pos = [0u8; 2];
            pos[..cut.len()].copy_from_slice(cut);
            bytes.truncate(usize::from(u16::from_le_bytes(pos)));
            bytes.extend_from_slice(tail);
        }
        _ => *bytes = rest.to_vec(),
    }
}

/// Reads the whole partition the way `log dump` does (skipping reported
/// damage); every served record is the one written at its offset.
fn check_served(log: &Log) {
    let Some((start, end)) = log.offsets(TOPIC, Partition(0)) else {
        return;
    };
    let mut next = start;
    while next < end {
        let resume = match log.read(TOPIC, Partition(0), next, 1 << 16) {
            Ok(batch) if batch.is_empty() => return,
            Ok(batch) => {
                for stored in &batch {
                    let tag = stored.offset.0;
                    assert!(tag < RECORDS, "offset {tag} was never written");
                    assert_eq!(stored.record, record(tag), "offset {tag} served damaged");
                }
                batch.last().map(|s| Offset(s.offset.0 + 1))
            }
            Err(ReadError::Corrupt { resume_at, .. }) => resume_at,
            Err(ReadError::Missing { to, .. }) => Some(to),
            Err(_) => None,
        };
        match resume {
            Some(r) if r > next => next = r,
            _ => return,
        }
    }
}

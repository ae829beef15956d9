//! Age retention across a clock that boots wrong and jumps at NTP sync
//! (a Raspberry Pi without RTC), through the clock seam.

use super::*;
use crate::log::clock::{TestClock, UNSYNCED_HEADER};

const HOUR_MS: i64 = 3_600_000;
/// Where the wall clock really is once NTP answers.
const REAL_MS: i64 = 1_764_000_000_000;
/// Where an RTC-less board boots: its last saved time, a year back.
const BOOT_MS: i64 = REAL_MS - 365 * 24 * HOUR_MS;

fn config() -> LogConfig {
    let mut config = small_config(1, FsyncPolicy::Always);
    config.topics.get_mut("t").unwrap().retention_ms = Some(HOUR_MS as u64);
    config
}

fn open_at(disk: &sim::SimDisk, clock: &Arc<TestClock>) -> Log {
    Log::open_with_clock(Arc::new(disk.clone()), config(), clock.clone()).expect("log opens")
}

/// 200 records of ~100 bytes stamped `ts`: several 4 KiB segments.
fn append(log: &Log, ts: i64) {
    for i in 0..200u32 {
        let record = Record {
            timestamp_ms: ts,
            key: None,
            value: Bytes::from(vec![b'x'; 100 + (i % 7) as usize]),
            headers: Vec::new(),
        };
        log.append("t", Partition(0), vec![record])
            .and_then(AppendTicket::wait)
            .expect("appended");
    }
}

fn start(log: &Log) -> u64 {
    log.offsets("t", Partition(0)).unwrap().0 .0
}

fn unsynced(record: &StoredRecord) -> bool {
    record
        .record
        .headers
        .iter()
        .any(|(k, v)| k == UNSYNCED_HEADER && v.as_ref() == b"unsynced")
}

#[test]
fn records_stamped_before_sync_are_marked_and_outlive_the_jump_but_not_for_ever() {
    let disk = sim_disk(41);
    let clock = TestClock::new(BOOT_MS, false);
    let log = open_at(&disk, &clock);
    append(&log, BOOT_MS);
    // Untrusted: a year-old stamp is not a reason to delete anything.
    clock.set(BOOT_MS + 2 * HOUR_MS, false);
    log.enforce_retention().unwrap();
    assert_eq!(start(&log), 0, "age retention waits for a trusted clock");

    clock.set(REAL_MS, true); // NTP sync: the clock jumps a year forward
    log.enforce_retention().unwrap();
    assert_eq!(start(&log), 0, "the jump deleted records stamped before it");
    append(&log, REAL_MS);
    let records = read_all(&log, "t", 0);
    assert_eq!(records.len(), 400);
    assert!(
        records[..200].iter().all(unsynced),
        "stamped before sync: marked"
    );
    assert!(
        !records[200..].iter().any(unsynced),
        "stamped after sync: not marked"
    );

    clock.set(REAL_MS + HOUR_MS / 2, true);
    log.enforce_retention().unwrap();
    assert_eq!(start(&log), 0, "younger than retention_ms since the sync");
    clock.set(REAL_MS + 2 * HOUR_MS, true);
    log.enforce_retention().unwrap();
    assert!(
        start(&log) > 0,
        "an hour after the sync they expire, as ever"
    );
    log.close();
}

#[test]
fn what_was_stamped_before_sync_is_remembered_across_restarts() {
    let disk = sim_disk(42);
    let clock = TestClock::new(BOOT_MS, false);
    let log = open_at(&disk, &clock);
    append(&log, BOOT_MS);
    log.close();
    // Rebooted, still before sync, then the jump in the new run.
    let log = open_at(&disk, &clock);
    clock.set(REAL_MS, true);
    log.enforce_retention().unwrap();
    assert_eq!(
        start(&log),
        0,
        "the previous run's unsynced records were forgotten"
    );
    log.close();
    // And the floor set at the sync survives a restart too.
    clock.set(REAL_MS + HOUR_MS / 2, true);
    let log = open_at(&disk, &clock);
    log.enforce_retention().unwrap();
    assert_eq!(start(&log), 0);
    clock.set(REAL_MS + 2 * HOUR_MS, true);
    log.enforce_retention().unwrap();
    assert!(start(&log) > 0);
    let meta = log
        .partition("t", Partition(0))
        .unwrap()
        .state()
        .meta
        .clone();
    assert_eq!(meta.untrusted_from, None);
    log.close();
}

#[test]
fn a_trusted_clock_expires_by_the_stamps_as_before() {
    let disk = sim_disk(43);
    let clock = TestClock::new(REAL_MS, true);
    let log = open_at(&disk, &clock);
    append(&log, REAL_MS);
    assert!(!read_all(&log, "t", 0).iter().any(unsynced));
    clock.set(REAL_MS + 2 * HOUR_MS, true);
    log.enforce_retention().unwrap();
    assert!(start(&log) > 0);
    log.close();
}

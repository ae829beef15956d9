//! Crash consistency: power is cut at every operation of a workload (and
//! single operations fail), then the log is reopened and checked.

use std::collections::VecDeque;

use super::*;
use crate::log::sim::Faults;
use crate::log::ticket::AppendResult;

const PARTITIONS: u32 = 2;

/// What the producer did before the power went.
struct Workload {
    /// Per partition: every record handed to `append`, in order.
    attempted: Vec<Vec<Record>>,
    /// Per partition: how many records were acknowledged (a prefix).
    acked: Vec<u64>,
}

/// Appends random batches with several tickets in flight (so groups form)
/// until the disk fails or `appends` are done.
fn produce(log: &Log, rng: &mut Rng, appends: u64) -> Workload {
    let mut w = Workload {
        attempted: vec![Vec::new(); PARTITIONS as usize],
        acked: vec![0; PARTITIONS as usize],
    };
    let mut in_flight: VecDeque<(usize, u64, AppendTicket)> = VecDeque::new();
    let mut tag = 0;
    for _ in 0..appends {
        let p = rng.below(u64::from(PARTITIONS)) as usize;
        let batch: Vec<Record> = (0..1 + rng.below(6))
            .map(|_| {
                tag += 1;
                record(rng, tag)
            })
            .collect();
        let end = (w.attempted[p].len() + batch.len()) as u64;
        w.attempted[p].extend(batch.iter().cloned());
        match log.append("t", Partition(p as u32), batch) {
            Ok(ticket) => in_flight.push_back((p, end, ticket)),
            Err(_) => break,
        }
        if in_flight.len() >= 4 && !settle(&mut w, in_flight.pop_front()) {
            break;
        }
    }
    while let Some(next) = in_flight.pop_front() {
        settle(&mut w, Some(next));
    }
    w
}

fn settle(w: &mut Workload, item: Option<(usize, u64, AppendTicket)>) -> bool {
    let Some((p, end, ticket)) = item else {
        return true;
    };
    let result: AppendResult = ticket.wait();
    match result {
        Ok(appended) => {
            assert_eq!(
                appended.first.0 + u64::from(appended.count),
                end,
                "offsets are assigned in append order"
            );
            w.acked[p] = w.acked[p].max(end);
            true
        }
        Err(_) => false,
    }
}

/// After recovery: every acknowledged record is there with the right bytes,
/// what is there is a prefix of what was attempted (nothing half-written,
/// nothing invented), offsets are dense, and the log accepts new appends.
fn check_recovered(disk: &sim::SimDisk, config: &LogConfig, w: &Workload, context: &str) {
    let log = open(disk, config);
    let damage: Vec<_> = log.findings().iter().filter(|f| f.is_damage()).collect();
    assert!(
        damage.is_empty(),
        "{context}: a crash must only leave torn tails, found {damage:?}"
    );
    for p in 0..PARTITIONS {
        let got = read_all(&log, "t", p);
        let attempted = &w.attempted[p as usize];
        assert!(
            got.len() as u64 >= w.acked[p as usize],
            "{context}: partition {p} lost acknowledged records: {} < {}",
            got.len(),
            w.acked[p as usize]
        );
        assert!(
            got.len() <= attempted.len(),
            "{context}: partition {p} has records nobody appended"
        );
        for (i, stored) in got.iter().enumerate() {
            assert_eq!(
                stored.offset,
                Offset(i as u64),
                "{context}: offsets must be dense from 0"
            );
            assert_eq!(
                &stored.record, &attempted[i],
                "{context}: partition {p} offset {i} differs"
            );
        }
    }
    let end = log
        .offsets("t", Partition(0))
        .map(|(_, e)| e)
        .unwrap_or_default();
    let appended = log
        .append("t", Partition(0), vec![Record::default()])
        .and_then(AppendTicket::wait);
    assert_eq!(
        appended.map(|a| a.first),
        Ok(end),
        "{context}: the recovered log appends at its end"
    );
}

fn crash_run(seed: u64, crash_at: Option<u64>, fail_at: Option<u64>, appends: u64) -> u64 {
    let disk = sim_disk(seed);
    let config = small_config(PARTITIONS, FsyncPolicy::Always);
    disk.set_faults(Faults {
        crash_at,
        fail_at,
        short_writes: seed.is_multiple_of(2),
        ..Faults::default()
    });
    let mut rng = Rng(seed * 7919 + 1);
    let w = match Log::open(Arc::new(disk.clone()), config.clone()) {
        Ok(log) => {
            let w = produce(&log, &mut rng, appends);
            if fail_at.is_some() && log.poisoned().is_some() {
                let again = log
                    .append("t", Partition(0), vec![Record::default()])
                    .and_then(AppendTicket::wait);
                assert!(
                    matches!(again, Err(AppendError::Poisoned(_))),
                    "a failed write or fsync poisons the log, got {again:?}"
                );
            }
            drop(log);
            w
        }
        Err(_) => Workload {
            attempted: vec![Vec::new(); 2],
            acked: vec![0; 2],
        },
    };
    let ops = disk.ops();
    let recovered = disk.crash();
    check_recovered(
        &recovered,
        &config,
        &w,
        &format!("seed {seed} crash_at {crash_at:?} fail_at {fail_at:?}"),
    );
    ops
}

#[test]
fn acknowledged_records_survive_a_power_cut_at_every_operation() {
    let mut points = 0;
    for seed in 1..=12 {
        let total = crash_run(seed, None, None, 40);
        for crash_at in 1..=total + 1 {
            crash_run(seed, Some(crash_at), None, 40);
            points += 1;
        }
    }
    eprintln!("crash points exercised: {points}");
    // About 3,200 here; how many depends on how the writer groups appends.
    assert!(points > 1000, "only {points} crash points were exercised");
}

#[test]
fn a_single_failed_operation_poisons_the_writer_and_loses_nothing_acknowledged() {
    for seed in 1..=4 {
        let total = crash_run(seed, None, None, 30);
        for fail_at in 1..=total {
            crash_run(seed, None, Some(fail_at), 30);
        }
    }
}

#[test]
fn a_clean_close_needs_no_recovery() {
    let disk = sim_disk(3);
    let config = small_config(PARTITIONS, FsyncPolicy::Always);
    let log = open(&disk, &config);
    let w = produce(&log, &mut Rng(5), 50);
    log.close();
    let log = open(&disk, &config);
    assert!(
        log.findings()
            .iter()
            .all(|f| !matches!(f, Finding::TornTail { .. } | Finding::IndexRebuilt { .. })),
        "{:?}",
        log.findings()
    );
    for p in 0..PARTITIONS {
        assert_eq!(read_all(&log, "t", p).len(), w.attempted[p as usize].len());
    }
}

#[test]
fn interval_policy_loses_at_most_the_unsynced_window_on_power_cut_and_nothing_on_clean_close() {
    let disk = sim_disk(9);
    let config = small_config(1, FsyncPolicy::IntervalMs(3_600_000));
    let log = open(&disk, &config);
    let first = log
        .append("t", Partition(0), vec![Record::default()])
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(first.first, Offset(0));
    assert_eq!(
        log.offsets("t", Partition(0)).unwrap().1,
        Offset(0),
        "readers do not see records before their fsync"
    );
    log.close();
    let log = open(&disk, &config);
    assert_eq!(
        read_all(&log, "t", 0).len(),
        1,
        "a clean close syncs the interval window"
    );
    log.append("t", Partition(0), vec![Record::default()])
        .unwrap()
        .wait()
        .unwrap();
    let crashed = disk.crash(); // power lost before the interval's fsync
    drop(log); // its shutdown sync fails on the dead disk
    let log = open(&crashed, &config);
    let survived = read_all(&log, "t", 0).len();
    assert!(
        (1..=2).contains(&survived),
        "the synced record survives; the unsynced one may or may not"
    );
}

//! Retention by quota and age, with and without replication.

use super::*;
use crate::log::sim::Faults;

fn quota_config(when_full: WhenFull, replication: bool) -> LogConfig {
    let mut config = small_config(1, FsyncPolicy::Always);
    let topic = config.topics.get_mut("t").unwrap();
    topic.retention_bytes = Some(16 * 1024);
    topic.when_full = when_full;
    config.replication_enabled = replication;
    config
}

fn fill(log: &Log, count: u64) -> Vec<Result<Appended, AppendError>> {
    let mut rng = Rng(21);
    (0..count)
        .map(|tag| {
            log.append("t", Partition(0), vec![record(&mut rng, tag)])
                .and_then(AppendTicket::wait)
        })
        .collect()
}

fn topic_bytes(log: &Log) -> u64 {
    log.partition("t", Partition(0))
        .unwrap()
        .state()
        .size_bytes()
}

#[test]
fn drop_oldest_keeps_the_topic_within_its_quota_and_records_the_gap() {
    let disk = sim_disk(1);
    let config = quota_config(WhenFull::DropOldest, true);
    let log = open(&disk, &config);
    let results = fill(&log, 400);
    assert!(
        results.iter().all(Result::is_ok),
        "drop_oldest never refuses"
    );
    // Settle retention now: the writer's timed pass then has nothing left
    // to drop between the reads below.
    log.enforce_retention().unwrap();
    let quota = 16 * 1024;
    assert!(
        topic_bytes(&log) <= quota + config.topics["t"].segment_bytes(),
        "{} bytes",
        topic_bytes(&log)
    );
    let (start, end) = log.offsets("t", Partition(0)).unwrap();
    assert!(start > Offset(0) && end == Offset(400));
    let meta = log
        .partition("t", Partition(0))
        .unwrap()
        .state()
        .meta
        .clone();
    assert_eq!(
        meta.dropped_records, start.0,
        "every dropped record is counted"
    );
    assert_eq!(
        meta.gaps,
        vec![(0, start.0)],
        "the dropped range is one gap"
    );
    assert_eq!(read_all(&log, "t", 0).len() as u64, end.0 - start.0);
    log.close();
    let log = open(&disk, &config);
    assert_eq!(
        log.offsets("t", Partition(0)).unwrap().0,
        start,
        "the start offset survives a restart"
    );
}

#[test]
fn reject_new_refuses_when_full_and_accepts_again_once_replication_frees_space() {
    let disk = sim_disk(2);
    let config = quota_config(WhenFull::RejectNew, true);
    let log = open(&disk, &config);
    let results = fill(&log, 400);
    let first_refusal = results
        .iter()
        .position(Result::is_err)
        .expect("the quota is reached");
    assert!(matches!(
        results[first_refusal],
        Err(AppendError::QuotaExceeded { .. })
    ));
    assert!(results[..first_refusal].iter().all(Result::is_ok));
    assert_eq!(
        log.offsets("t", Partition(0)).unwrap().0,
        Offset(0),
        "nothing unreplicated was dropped"
    );
    let end = log.offsets("t", Partition(0)).unwrap().1;
    log.set_replicated("t", Partition(0), end).unwrap();
    let again = log
        .append("t", Partition(0), vec![Record::default()])
        .unwrap()
        .wait();
    assert_eq!(again.map(|a| a.first), Ok(end));
    assert!(
        log.offsets("t", Partition(0)).unwrap().0 > Offset(0),
        "replicated segments were deleted"
    );
    assert_eq!(
        log.partition("t", Partition(0))
            .unwrap()
            .state()
            .meta
            .dropped_records,
        0
    );
}

#[test]
fn reject_new_without_replication_never_deletes_data() {
    let disk = sim_disk(3);
    let config = quota_config(WhenFull::RejectNew, false);
    let log = open(&disk, &config);
    let results = fill(&log, 400);
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert!(accepted < 400);
    assert_eq!(
        read_all(&log, "t", 0).len(),
        accepted,
        "everything accepted is kept"
    );
}

#[test]
fn age_retention_deletes_only_replicated_segments_when_replication_is_on() {
    let disk = sim_disk(4);
    let mut config = small_config(1, FsyncPolicy::Always);
    config.topics.get_mut("t").unwrap().retention_ms = Some(1000);
    config.replication_enabled = true;
    let log = open(&disk, &config);
    fill(&log, 100); // timestamps from 2025: all older than a second
    log.enforce_retention().unwrap();
    assert_eq!(
        log.offsets("t", Partition(0)).unwrap().0,
        Offset(0),
        "unreplicated data is kept"
    );
    log.set_replicated("t", Partition(0), Offset(50)).unwrap();
    log.enforce_retention().unwrap();
    let start = log.offsets("t", Partition(0)).unwrap().0;
    assert!(
        start > Offset(0) && start <= Offset(50),
        "segments wholly below the cursor go: start {start}"
    );
    assert_eq!(
        log.partition("t", Partition(0))
            .unwrap()
            .state()
            .meta
            .dropped_records,
        0
    );
}

#[test]
fn a_nearly_full_disk_makes_reject_new_topics_refuse() {
    let disk = sim_disk(5);
    let mut config = small_config(1, FsyncPolicy::Always);
    config.topics.get_mut("t").unwrap().when_full = WhenFull::RejectNew;
    config.min_free_bytes = 1 << 20;
    disk.set_faults(Faults {
        available_bytes: Some(1000),
        ..Faults::default()
    });
    let log = open(&disk, &config);
    let refused = log
        .append("t", Partition(0), vec![Record::default()])
        .unwrap()
        .wait();
    assert!(
        matches!(refused, Err(AppendError::QuotaExceeded { .. })),
        "{refused:?}"
    );
    assert_eq!(
        log.stats()
            .rejected_full
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn power_cuts_during_retention_lose_nothing_acknowledged_above_the_start() {
    for seed in 1..=3u64 {
        let config = quota_config(WhenFull::DropOldest, true);
        let baseline = sim_disk(seed);
        let total = {
            let log = open(&baseline, &config);
            fill(&log, 120);
            drop(log);
            baseline.ops()
        };
        for crash_at in (1..=total).step_by(3) {
            let disk = sim_disk(seed);
            disk.set_faults(Faults {
                crash_at: Some(crash_at),
                ..Faults::default()
            });
            let Ok(log) = Log::open(Arc::new(disk.clone()), config.clone()) else {
                continue;
            };
            let acked: Vec<u64> = fill(&log, 120)
                .iter()
                .filter_map(|r| r.as_ref().ok().map(|a| a.first.0))
                .collect();
            drop(log);
            let recovered = disk.crash();
            let log = open(&recovered, &config);
            assert!(
                log.findings().iter().all(|f| !f.is_damage()),
                "crash_at {crash_at}: {:?}",
                log.findings()
            );
            let (start, _) = log.offsets("t", Partition(0)).unwrap();
            let got = read_all(&log, "t", 0);
            for (i, stored) in got.iter().enumerate() {
                assert_eq!(
                    stored.offset,
                    Offset(start.0 + i as u64),
                    "dense from the start offset"
                );
            }
            let present: std::collections::BTreeSet<u64> = got.iter().map(|s| s.offset.0).collect();
            for offset in acked.into_iter().filter(|&o| o >= start.0) {
                assert!(
                    present.contains(&offset),
                    "crash_at {crash_at}: acknowledged offset {offset} lost"
                );
            }
        }
    }
}

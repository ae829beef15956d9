//! Damaged files: each gives the documented result, and never a panic.

use std::path::PathBuf;

use super::*;
use crate::log::verify;

/// A closed log with several segments in partition 0; returns the records.
fn populated(disk: &sim::SimDisk, config: &LogConfig, count: u64) -> Vec<Record> {
    let log = open(disk, config);
    let mut rng = Rng(11);
    let records: Vec<Record> = (0..count).map(|tag| record(&mut rng, tag)).collect();
    for r in &records {
        log.append("t", Partition(0), vec![r.clone()])
            .unwrap()
            .wait()
            .unwrap();
    }
    log.close();
    records
}

fn segment_paths(disk: &sim::SimDisk, ext: &str) -> Vec<PathBuf> {
    let pdir = dir().join("t").join("0");
    let mut names: Vec<_> = disk
        .list_dir(&pdir)
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(ext))
        .collect();
    names.sort();
    names.into_iter().map(|n| pdir.join(n)).collect()
}

/// Reads everything, skipping damaged stretches the way `log dump` does.
fn read_skipping(log: &Log) -> (Vec<StoredRecord>, Vec<ReadError>) {
    let (start, end) = log.offsets("t", Partition(0)).unwrap();
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    let mut next = start;
    while next < end {
        match log.read("t", Partition(0), next, 4096) {
            Ok(batch) if batch.is_empty() => break,
            Ok(batch) => {
                next = Offset(batch.last().unwrap().offset.0 + 1);
                out.extend(batch);
            }
            Err(e) => {
                let resume = match &e {
                    ReadError::Corrupt { resume_at, .. } => {
                        resume_at.expect("damage inside the log has a resume point")
                    }
                    ReadError::Missing { to, .. } => *to,
                    other => panic!("unexpected error {other}"),
                };
                assert!(resume > next, "resume point moves forward");
                next = resume;
                errors.push(e);
            }
        }
    }
    (out, errors)
}

fn assert_records_match(got: &[StoredRecord], records: &[Record]) {
    for stored in got {
        assert_eq!(
            &stored.record, &records[stored.offset.0 as usize],
            "offset {}",
            stored.offset
        );
    }
}

#[test]
fn flipped_bytes_in_an_older_segment_are_reported_and_the_data_around_them_stays_readable() {
    let disk = sim_disk(1);
    let config = small_config(1, FsyncPolicy::Always);
    let records = populated(&disk, &config, 120);
    let segments = segment_paths(&disk, ".log");
    assert!(segments.len() >= 3, "the test needs older segments");
    let mut bytes = disk.read_file(&segments[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    disk.write_file(&segments[0], &bytes);

    let log = open(&disk, &config);
    let (got, errors) = read_skipping(&log);
    assert_eq!(errors.len(), 1, "exactly one damaged batch: {errors:?}");
    assert!(
        matches!(&errors[0], ReadError::Corrupt { path, .. } if path == &segments[0]),
        "{errors:?}"
    );
    assert_eq!(
        got.len(),
        records.len() - 1,
        "only the damaged batch's record is unreadable"
    );
    assert_records_match(&got, &records);
    let report = verify::verify(&log).unwrap();
    assert!(report.damaged());
}

#[test]
fn torn_tail_is_truncated_on_open() {
    let disk = sim_disk(2);
    let config = small_config(1, FsyncPolicy::Always);
    let records = populated(&disk, &config, 30);
    let newest = segment_paths(&disk, ".log").pop().unwrap();
    let mut bytes = disk.read_file(&newest).unwrap();
    let good_len = bytes.len();
    let mut half = Vec::new();
    batch::encode(
        Offset(30),
        &[record(&mut Rng(3), 999)],
        Compression::None,
        &mut half,
    )
    .unwrap();
    bytes.extend_from_slice(&half[..half.len() / 2]);
    disk.write_file(&newest, &bytes);

    let log = open(&disk, &config);
    let torn: Vec<_> = log
        .findings()
        .iter()
        .filter(|f| {
            matches!(
                f,
                Finding::TornTail {
                    truncated: true,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(torn.len(), 1, "{:?}", log.findings());
    let after = disk.read_file(&newest).unwrap();
    assert_eq!(&after[..good_len], &bytes[..good_len]);
    assert!(
        after[good_len..].iter().all(|&b| b == 0),
        "cut back to the last whole batch (then preallocated again)"
    );
    let got = read_all(&log, "t", 0);
    assert_eq!(got.len(), records.len());
    assert_records_match(&got, &records);
    let next = log
        .append("t", Partition(0), vec![Record::default()])
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(next.first, Offset(30));
}

#[test]
fn a_damaged_batch_followed_by_good_ones_in_the_newest_segment_is_not_truncated() {
    let disk = sim_disk(4);
    let mut config = small_config(1, FsyncPolicy::Always);
    config.topics.get_mut("t").unwrap().max_segment_bytes = 1 << 20;
    config.index_interval_bytes = 1 << 20; // no index entries: the whole segment is the tail
    let records = populated(&disk, &config, 20);
    let newest = segment_paths(&disk, ".log").pop().unwrap();
    let mut bytes = disk.read_file(&newest).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0xff;
    disk.write_file(&newest, &bytes);

    let log = open(&disk, &config);
    assert!(
        log.findings()
            .iter()
            .any(|f| matches!(f, Finding::Corrupt { .. })),
        "{:?}",
        log.findings()
    );
    assert!(
        !log.findings()
            .iter()
            .any(|f| matches!(f, Finding::TornTail { .. })),
        "{:?}",
        log.findings()
    );
    let (got, errors) = read_skipping(&log);
    assert_eq!(errors.len(), 1);
    assert_eq!(got.len(), records.len() - 1);
    assert_records_match(&got, &records);
    assert_eq!(
        got.last().unwrap().offset,
        Offset(19),
        "the records after the damage are kept"
    );
}

#[test]
fn a_truncated_index_is_rebuilt() {
    let disk = sim_disk(5);
    let config = small_config(1, FsyncPolicy::Always);
    let records = populated(&disk, &config, 80);
    let index = segment_paths(&disk, ".index").remove(0);
    let bytes = disk.read_file(&index).unwrap();
    assert!(bytes.len() >= 16, "the test needs index entries");
    disk.write_file(&index, &bytes[..bytes.len() - 5]);

    let log = open(&disk, &config);
    assert!(log
        .findings()
        .iter()
        .any(|f| matches!(f, Finding::IndexRebuilt { path } if path == &index)));
    assert_eq!(
        disk.read_file(&index).unwrap(),
        bytes,
        "the rebuilt index equals the original"
    );
    assert_records_match(&read_all(&log, "t", 0), &records);
    assert!(!verify::verify(&log).unwrap().damaged());
}

#[test]
fn a_deleted_index_is_rebuilt() {
    let disk = sim_disk(6);
    let config = small_config(1, FsyncPolicy::Always);
    let records = populated(&disk, &config, 80);
    let index = segment_paths(&disk, ".index").remove(0);
    let original = disk.read_file(&index).unwrap();
    disk.delete_file(&index);

    let log = open(&disk, &config);
    assert_eq!(disk.read_file(&index).unwrap(), original);
    let got = read_all(&log, "t", 0);
    assert_eq!(got.len(), records.len());
    assert_records_match(&got, &records);
}

#[test]
fn index_entries_pointing_past_the_segment_are_dropped() {
    let disk = sim_disk(7);
    let config = small_config(1, FsyncPolicy::Always);
    let records = populated(&disk, &config, 40);
    let index = segment_paths(&disk, ".index").pop().unwrap();
    let mut bytes = disk.read_file(&index).unwrap();
    bytes.extend_from_slice(
        &segment::IndexEntry {
            relative_offset: 5000,
            position: 1 << 30,
        }
        .encode(),
    );
    disk.write_file(&index, &bytes);

    let log = open(&disk, &config);
    assert_records_match(&read_all(&log, "t", 0), &records);
    assert_eq!(read_all(&log, "t", 0).len(), 40);
}

#[test]
fn a_zero_length_older_segment_is_reported_as_missing_offsets() {
    let disk = sim_disk(8);
    let config = small_config(1, FsyncPolicy::Always);
    let records = populated(&disk, &config, 120);
    let segments = segment_paths(&disk, ".log");
    disk.write_file(&segments[1], &[]);

    let log = open(&disk, &config);
    assert!(
        log.findings()
            .iter()
            .any(|f| matches!(f, Finding::Missing { .. })),
        "{:?}",
        log.findings()
    );
    let (got, errors) = read_skipping(&log);
    assert!(
        matches!(&errors[..], [ReadError::Missing { .. }]),
        "{errors:?}"
    );
    assert_records_match(&got, &records);
    assert!(got.len() < records.len() && got.first().unwrap().offset == Offset(0));
    assert_eq!(got.last().unwrap().offset, Offset(119));
    assert!(verify::verify(&log).unwrap().damaged());
}

#[test]
fn a_zero_length_newest_segment_is_a_normal_state() {
    let disk = sim_disk(9);
    let config = small_config(1, FsyncPolicy::Always);
    let records = populated(&disk, &config, 30);
    let next_base = records.len() as u64;
    let name = dir()
        .join("t/0")
        .join(segment::log_file_name(SegmentBase(next_base)));
    disk.open(&name, true).unwrap();
    disk.sync_dir(&dir().join("t/0")).unwrap();

    let log = open(&disk, &config);
    assert!(
        log.findings().iter().all(|f| !f.is_damage()),
        "{:?}",
        log.findings()
    );
    assert_eq!(read_all(&log, "t", 0).len(), 30);
    let next = log
        .append("t", Partition(0), vec![Record::default()])
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(next.first, Offset(next_base));
}

#[test]
fn a_damaged_checkpoint_is_reported_and_defaults_are_used() {
    let disk = sim_disk(10);
    let config = small_config(1, FsyncPolicy::Always);
    let log = open(&disk, &config);
    log.set_replicated("t", Partition(0), Offset(0)).unwrap();
    log.close();
    let path = dir().join("t/0").join(partition::META_FILE);
    let mut bytes = disk.read_file(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    disk.write_file(&path, &bytes);

    let log = open(&disk, &config);
    assert!(log
        .findings()
        .iter()
        .any(|f| matches!(f, Finding::BadCheckpoint { .. })));
    assert_eq!(
        log.partition("t", Partition(0))
            .unwrap()
            .state()
            .meta
            .replicated,
        None
    );
}

#[test]
fn random_damage_anywhere_never_panics_and_never_serves_wrong_data() {
    for seed in 1..40u64 {
        let disk = sim_disk(seed);
        let config = small_config(1, FsyncPolicy::Always);
        let records = populated(&disk, &config, 60);
        let mut rng = Rng(seed);
        let files: Vec<PathBuf> = segment_paths(&disk, ".log")
            .into_iter()
            .chain(segment_paths(&disk, ".index"))
            .collect();
        for _ in 0..3 {
            let file = &files[rng.below(files.len() as u64) as usize];
            let mut bytes = disk.read_file(file).unwrap();
            if bytes.is_empty() {
                continue;
            }
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] ^= 1 + rng.below(255) as u8;
            disk.write_file(file, &bytes);
        }
        let log = open(&disk, &config);
        let (got, _) = read_skipping(&log);
        assert_records_match(&got, &records);
        let _ = verify::verify(&log).unwrap();
    }
}

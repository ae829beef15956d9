//! The log against a plain in-memory model, with random operations including
//! clean reopens and power cuts.

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Append {
        partition: u32,
        values: Vec<Vec<u8>>,
    },
    Read {
        partition: u32,
        from: u64,
        max_bytes: usize,
    },
    Reopen,
    PowerCut,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..2u32, proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..8))
            .prop_map(|(partition, values)| Op::Append { partition, values }),
        4 => (0..2u32, 0..400u64, 1..5000usize).prop_map(|(partition, from, max_bytes)| Op::Read { partition, from, max_bytes }),
        1 => Just(Op::Reopen),
        1 => Just(Op::PowerCut),
    ]
}

fn to_record(value: &[u8], ts: i64) -> Record {
    Record {
        timestamp_ms: ts,
        key: None,
        value: Bytes::copy_from_slice(value),
        headers: Vec::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_a_simple_model(ops in proptest::collection::vec(op(), 1..60), compression in prop_oneof![Just(Compression::None), Just(Compression::Lz4), Just(Compression::Zstd)]) {
        let mut disk = sim_disk(1);
        let mut config = small_config(2, FsyncPolicy::Always);
        config.topics.get_mut("t").unwrap().compression = compression;
        let mut log = open(&disk, &config);
        let mut model: Vec<Vec<Record>> = vec![Vec::new(), Vec::new()];
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Append { partition, values } => {
                    let records: Vec<Record> = values.iter().map(|v| to_record(v, i as i64)).collect();
                    let got = log.append("t", Partition(partition), records.clone()).unwrap().wait().unwrap();
                    let m = &mut model[partition as usize];
                    prop_assert_eq!(got.first, Offset(m.len() as u64));
                    m.extend(records);
                }
                Op::Read { partition, from, max_bytes } => {
                    let m = &model[partition as usize];
                    let got = log.read("t", Partition(partition), Offset(from), max_bytes).unwrap();
                    if (from as usize) < m.len() {
                        prop_assert!(!got.is_empty(), "a read below the end returns at least one record");
                    }
                    for (j, stored) in got.iter().enumerate() {
                        let at = from as usize + j;
                        prop_assert_eq!(stored.offset, Offset(at as u64));
                        prop_assert_eq!(&stored.record, &m[at]);
                    }
                }
                Op::Reopen => {
                    log.close();
                    log = open(&disk, &config);
                }
                Op::PowerCut => {
                    let crashed = disk.crash();
                    drop(log);
                    disk = crashed;
                    log = open(&disk, &config);
                }
            }
        }
        for p in 0..2u32 {
            let all = read_all(&log, "t", p);
            prop_assert_eq!(all.len(), model[p as usize].len());
        }
    }
}

//! The on-disk format pinned: a batch of known records encodes to exactly
//! the bytes in `golden/batch-v1.txt` (annotated field by field as the
//! design comment in `log/mod.rs` documents them), and those bytes decode
//! back to the records. A format change fails here; it must bump the magic
//! and keep old logs readable.

use bytes::Bytes;

use super::super::batch;
use super::super::types::{Compression, Offset, Record};

const GOLDEN: &str = include_str!("golden/batch-v1.txt");

/// The hex before each line's `#`.
fn golden_bytes() -> Vec<u8> {
    let hex: String = GOLDEN
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.chars().filter(char::is_ascii_hexdigit))
        .collect();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn records() -> Vec<Record> {
    vec![
        Record {
            timestamp_ms: 1_700_000_000_000,
            key: Some(Bytes::from_static(b"k1")),
            value: Bytes::from_static(b"hello"),
            headers: vec![("h".to_string(), Bytes::from_static(b"v"))],
        },
        Record {
            timestamp_ms: 1_700_000_000_005,
            key: None,
            value: Bytes::from_static(b"world!"),
            headers: vec![],
        },
    ]
}

#[test]
fn a_known_batch_encodes_to_the_documented_bytes() {
    let mut out = Vec::new();
    batch::encode(Offset(42), &records(), Compression::None, &mut out).unwrap();
    let golden = golden_bytes();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(hex(&out), hex(&golden), "the encoding changed");
}

#[test]
fn the_documented_bytes_decode_to_the_known_records() {
    let (header, stored) = batch::decode(&golden_bytes()).unwrap();
    assert_eq!(header.base_offset, 42);
    let records: Vec<Record> = stored.iter().map(|s| s.record.clone()).collect();
    assert_eq!(records, self::records());
    let offsets: Vec<u64> = stored.iter().map(|s| s.offset.0).collect();
    assert_eq!(offsets, [42, 43]);
}

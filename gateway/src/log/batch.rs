//! The record batch codec. The byte layout is described in `log/mod.rs`.

use std::borrow::Cow;

use bytes::Bytes;
use thiserror::Error;

use super::types::{Compression, Offset, Record, StoredRecord};
use super::varint;

/// Fixed-size part of a batch, up to and including `records_len`.
pub const HEADER_LEN: usize = 42;
/// Where the CRC field starts: after `base_offset` (8) and `length` (4). The
/// CRC covers every byte of the batch except its own four.
const LENGTH_FIELD_END: usize = 12;
const CRC_END: usize = 16;
pub const MAGIC: u8 = 1;
/// Largest batch accepted on disk and after decompression. Checked before any
/// allocation, so a corrupt length cannot make a reader allocate gigabytes.
pub const MAX_BATCH_BYTES: usize = 16 << 20;
/// Smallest possible encoded record: six one-byte varints.
const MIN_RECORD_BYTES: usize = 6;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("batch too short: need {needed} bytes, have {have}")]
    Truncated { needed: usize, have: usize },
    #[error("unknown batch magic {0}")]
    BadMagic(u8),
    #[error("unknown batch attributes {0:#04x}")]
    BadAttributes(u8),
    #[error("batch length {0} out of range")]
    BadLength(u64),
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error("batch claims {0} records")]
    BadCount(u32),
    #[error("malformed record {index}: {what}")]
    BadRecord { index: u32, what: &'static str },
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("batch of {0} bytes exceeds the maximum")]
    TooLarge(usize),
}

/// The parsed fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    /// Bytes after the length field, so the whole batch is `12 + length`.
    pub length: u32,
    pub crc: u32,
    pub compression: Compression,
    pub record_count: u32,
    pub base_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    /// Length of the record section once decompressed.
    pub records_len: u32,
}

impl BatchHeader {
    pub fn total_len(&self) -> u64 {
        LENGTH_FIELD_END as u64 + u64::from(self.length)
    }

    pub fn next_offset(&self) -> Offset {
        Offset(self.base_offset + u64::from(self.record_count))
    }

    pub fn last_offset(&self) -> Offset {
        Offset(self.base_offset + u64::from(self.record_count) - 1)
    }

    /// Parses and range-checks the fixed header. The CRC is checked separately,
    /// once the whole batch has been read.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < HEADER_LEN {
            return Err(BatchError::Truncated {
                needed: HEADER_LEN,
                have: bytes.len(),
            });
        }
        let u32_at = |at: usize| u32::from_le_bytes(fixed(&bytes[at..at + 4]));
        let u64_at = |at: usize| u64::from_le_bytes(fixed(&bytes[at..at + 8]));
        if bytes[16] != MAGIC {
            return Err(BatchError::BadMagic(bytes[16]));
        }
        let compression =
            Compression::from_code(bytes[17]).ok_or(BatchError::BadAttributes(bytes[17]))?;
        let header = BatchHeader {
            base_offset: u64_at(0),
            length: u32_at(8),
            crc: u32_at(12),
            compression,
            record_count: u32_at(18),
            base_timestamp_ms: u64_at(22) as i64,
            max_timestamp_ms: u64_at(30) as i64,
            records_len: u32_at(38),
        };
        header.check_ranges()?;
        Ok(header)
    }

    fn check_ranges(&self) -> Result<(), BatchError> {
        let total = self.total_len();
        if total < HEADER_LEN as u64 || total > MAX_BATCH_BYTES as u64 {
            return Err(BatchError::BadLength(total));
        }
        if self.records_len as usize > MAX_BATCH_BYTES {
            return Err(BatchError::BadLength(u64::from(self.records_len)));
        }
        let max_count = (self.records_len as usize / MIN_RECORD_BYTES) as u32;
        if self.record_count == 0 || self.record_count > max_count {
            return Err(BatchError::BadCount(self.record_count));
        }
        if self
            .base_offset
            .checked_add(u64::from(self.record_count))
            .is_none()
        {
            return Err(BatchError::BadCount(self.record_count));
        }
        Ok(())
    }

    /// Checks the CRC of a whole batch (`bytes` starts at the batch start).
    pub fn verify_crc(&self, bytes: &[u8]) -> Result<(), BatchError> {
        let total = self.total_len() as usize;
        if bytes.len() < total {
            return Err(BatchError::Truncated {
                needed: total,
                have: bytes.len(),
            });
        }
        let computed = batch_crc(&bytes[..total]);
        if computed != self.crc {
            return Err(BatchError::Crc {
                stored: self.crc,
                computed,
            });
        }
        Ok(())
    }
}

fn batch_crc(batch: &[u8]) -> u32 {
    let head = crc32c::crc32c(&batch[..LENGTH_FIELD_END]);
    crc32c::crc32c_append(head, &batch[CRC_END..])
}

fn fixed<const N: usize>(slice: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(slice);
    out
}

/// Encodes `records` as one batch starting at `base_offset`, appending to `out`.
pub fn encode(
    base_offset: Offset,
    records: &[Record],
    compression: Compression,
    out: &mut Vec<u8>,
) -> Result<BatchHeader, BatchError> {
    if records.is_empty() {
        return Err(BatchError::BadCount(0));
    }
    let base_ts = records.iter().map(|r| r.timestamp_ms).min().unwrap_or(0);
    let max_ts = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(0);
    let mut plain = Vec::with_capacity(records.iter().map(|r| r.payload_len() + 16).sum());
    let mut scratch = Vec::with_capacity(64);
    for (index, record) in records.iter().enumerate() {
        encode_record(index as u64, base_ts, record, &mut scratch);
        varint::put_u64(&mut plain, scratch.len() as u64);
        plain.extend_from_slice(&scratch);
    }
    if plain.len() > MAX_BATCH_BYTES {
        return Err(BatchError::TooLarge(plain.len()));
    }
    let body = compress(compression, &plain)?;
    let total = HEADER_LEN + body.len();
    if total > MAX_BATCH_BYTES {
        return Err(BatchError::TooLarge(total));
    }
    let start = out.len();
    out.reserve(total);
    out.extend_from_slice(&base_offset.0.to_le_bytes());
    out.extend_from_slice(&((total - LENGTH_FIELD_END) as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, filled in below
    out.push(MAGIC);
    out.push(compression.code());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    out.extend_from_slice(&base_ts.to_le_bytes());
    out.extend_from_slice(&max_ts.to_le_bytes());
    out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    let crc = batch_crc(&out[start..]);
    out[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
    Ok(BatchHeader {
        base_offset: base_offset.0,
        length: (total - LENGTH_FIELD_END) as u32,
        crc,
        compression,
        record_count: records.len() as u32,
        base_timestamp_ms: base_ts,
        max_timestamp_ms: max_ts,
        records_len: plain.len() as u32,
    })
}

fn encode_record(offset_delta: u64, base_ts: i64, record: &Record, out: &mut Vec<u8>) {
    out.clear();
    varint::put_u64(out, offset_delta);
    varint::put_i64(out, record.timestamp_ms.wrapping_sub(base_ts));
    match &record.key {
        None => varint::put_u64(out, 0),
        Some(key) => {
            varint::put_u64(out, key.len() as u64 + 1);
            out.extend_from_slice(key);
        }
    }
    varint::put_u64(out, record.value.len() as u64);
    out.extend_from_slice(&record.value);
    varint::put_u64(out, record.headers.len() as u64);
    for (name, value) in &record.headers {
        varint::put_u64(out, name.len() as u64);
        out.extend_from_slice(name.as_bytes());
        varint::put_u64(out, value.len() as u64);
        out.extend_from_slice(value);
    }
}

/// The record section as stored: borrowed when uncompressed (no copy).
fn compress(compression: Compression, plain: &[u8]) -> Result<Cow<'_, [u8]>, BatchError> {
    match compression {
        Compression::None => Ok(Cow::Borrowed(plain)),
        Compression::Lz4 => Ok(Cow::Owned(lz4_flex::block::compress(plain))),
        Compression::Zstd => zstd::bulk::compress(plain, 3)
            .map(Cow::Owned)
            .map_err(|e| BatchError::Decompress(e.to_string())),
    }
}

fn decompress(header: &BatchHeader, body: &[u8]) -> Result<Vec<u8>, BatchError> {
    let expected = header.records_len as usize;
    let plain = match header.compression {
        Compression::None => body.to_vec(),
        Compression::Lz4 => lz4_flex::block::decompress(body, expected)
            .map_err(|e| BatchError::Decompress(e.to_string()))?,
        Compression::Zstd => zstd::bulk::decompress(body, expected)
            .map_err(|e| BatchError::Decompress(e.to_string()))?,
    };
    if plain.len() != expected {
        return Err(BatchError::Decompress(format!(
            "expected {expected} bytes, got {}",
            plain.len()
        )));
    }
    Ok(plain)
}

/// Decodes every record of a whole batch (`bytes` starts at the batch start),
/// after checking its CRC.
pub fn decode(bytes: &[u8]) -> Result<(BatchHeader, Vec<StoredRecord>), BatchError> {
    let header = BatchHeader::parse(bytes)?;
    header.verify_crc(bytes)?;
    let records = decode_verified(&header, bytes)?;
    Ok((header, records))
}

/// Decodes the records of a whole batch whose header was parsed and whose
/// CRC was checked already (as `segment::read_batch_from` does).
pub fn decode_verified(
    header: &BatchHeader,
    bytes: &[u8],
) -> Result<Vec<StoredRecord>, BatchError> {
    let plain = decompress(header, &bytes[HEADER_LEN..header.total_len() as usize])?;
    decode_records(header, &Bytes::from(plain))
}

fn decode_records(header: &BatchHeader, plain: &Bytes) -> Result<Vec<StoredRecord>, BatchError> {
    let mut records = Vec::with_capacity(header.record_count as usize);
    let mut pos = 0usize;
    for index in 0..header.record_count {
        let bad = |what| BatchError::BadRecord { index, what };
        let len = varint::get_u64(plain, &mut pos).ok_or(bad("length"))? as usize;
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= plain.len())
            .ok_or(bad("length"))?;
        let body = plain.slice(pos..end);
        let record = decode_record(&body, header, index).map_err(bad)?;
        records.push(record);
        pos = end;
    }
    if pos != plain.len() {
        return Err(BatchError::BadRecord {
            index: header.record_count,
            what: "trailing bytes",
        });
    }
    Ok(records)
}

fn decode_record(
    body: &Bytes,
    header: &BatchHeader,
    index: u32,
) -> Result<StoredRecord, &'static str> {
    let mut pos = 0usize;
    let delta = varint::get_u64(body, &mut pos).ok_or("offset delta")?;
    if delta != u64::from(index) {
        return Err("offset delta out of sequence");
    }
    let ts_delta = varint::get_i64(body, &mut pos).ok_or("timestamp")?;
    let key = match varint::get_u64(body, &mut pos).ok_or("key length")? {
        0 => None,
        n => Some(take(body, &mut pos, n - 1).ok_or("key")?),
    };
    let value_len = varint::get_u64(body, &mut pos).ok_or("value length")?;
    let value = take(body, &mut pos, value_len).ok_or("value")?;
    let header_count = varint::get_u64(body, &mut pos).ok_or("header count")?;
    let mut headers = Vec::with_capacity((header_count as usize).min(body.len() / 2));
    for _ in 0..header_count {
        let name_len = varint::get_u64(body, &mut pos).ok_or("header name length")?;
        let name = take(body, &mut pos, name_len).ok_or("header name")?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| "header name is not UTF-8")?;
        let value_len = varint::get_u64(body, &mut pos).ok_or("header value length")?;
        headers.push((name, take(body, &mut pos, value_len).ok_or("header value")?));
    }
    if pos != body.len() {
        return Err("trailing bytes in record");
    }
    Ok(StoredRecord {
        offset: Offset(header.base_offset + u64::from(index)),
        record: Record {
            timestamp_ms: header.base_timestamp_ms.wrapping_add(ts_delta),
            key,
            value,
            headers,
        },
    })
}

fn take(body: &Bytes, pos: &mut usize, len: u64) -> Option<Bytes> {
    let end = pos
        .checked_add(usize::try_from(len).ok()?)
        .filter(|&e| e <= body.len())?;
    let out = body.slice(*pos..end);
    *pos = end;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn arb_record() -> impl Strategy<Value = Record> {
        (
            any::<i64>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::collection::vec(
                (
                    "[a-z_]{0,12}",
                    proptest::collection::vec(any::<u8>(), 0..20),
                ),
                0..4,
            ),
        )
            .prop_map(|(timestamp_ms, key, value, headers)| Record {
                timestamp_ms,
                key: key.map(Bytes::from),
                value: Bytes::from(value),
                headers: headers
                    .into_iter()
                    .map(|(k, v)| (k, Bytes::from(v)))
                    .collect(),
            })
    }

    fn arb_compression() -> impl Strategy<Value = Compression> {
        prop_oneof![
            Just(Compression::None),
            Just(Compression::Lz4),
            Just(Compression::Zstd)
        ]
    }

    proptest! {
        #[test]
        fn batch_round_trips(base in 0u64..u64::MAX / 2, records in proptest::collection::vec(arb_record(), 1..50), compression in arb_compression()) {
            let mut out = Vec::new();
            encode(Offset(base), &records, compression, &mut out).unwrap();
            let (header, decoded) = decode(&out).unwrap();
            prop_assert_eq!(header.total_len() as usize, out.len());
            prop_assert_eq!(header.next_offset(), Offset(base + records.len() as u64));
            for (i, (stored, original)) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(stored.offset, Offset(base + i as u64));
                prop_assert_eq!(&stored.record, original);
            }
            prop_assert_eq!(decoded.len(), records.len());
        }

        #[test]
        fn any_single_byte_flip_is_detected(records in proptest::collection::vec(arb_record(), 1..5), at in any::<proptest::sample::Index>(), xor in 1u8..=255) {
            let mut out = Vec::new();
            encode(Offset(7), &records, Compression::None, &mut out).unwrap();
            let i = at.index(out.len());
            out[i] ^= xor;
            prop_assert!(decode(&out).is_err(), "flip at {} went unnoticed", i);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn overhead_for_100_byte_records_in_batches_of_100_is_at_most_12_bytes() {
        let records: Vec<Record> = (0..100)
            .map(|i| Record {
                timestamp_ms: 1_764_000_000_000 + i,
                value: Bytes::from(vec![b'x'; 100]),
                ..Record::default()
            })
            .collect();
        let mut out = Vec::new();
        encode(Offset(1_000_000), &records, Compression::None, &mut out).unwrap();
        let overhead = (out.len() - 100 * 100) as f64 / 100.0;
        assert!(overhead <= 12.0, "overhead {overhead} bytes per record");
    }

    #[test]
    fn oversize_length_is_rejected_before_reading_the_body() {
        let mut out = Vec::new();
        encode(Offset(0), &[Record::default()], Compression::None, &mut out).unwrap();
        out[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            BatchHeader::parse(&out),
            Err(BatchError::BadLength(_))
        ));
    }
}

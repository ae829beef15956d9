//! Reading a stream's next records from the log and handing them to the
//! producer, inside the in-flight window and the bandwidth cap.

use std::time::Instant;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::BaseRecord;

use super::client::{Producer, Token};
use super::error::UpstreamError;
use super::shape::Origin;
use super::stream::Stream;
use crate::log::{Log, Offset, ReadError, StoredRecord};

/// Bytes asked of the log per read.
const READ_BYTES: usize = 256 << 10;

/// The in-flight budget shared by all streams.
pub struct Window {
    pub max_records: usize,
    pub max_bytes: u64,
    /// Bytes sent and not yet acknowledged, all streams.
    pub bytes: u64,
}

/// Token bucket for `bandwidth_bytes_per_s`, in bytes on the wire; at
/// most one second of burst.
///
/// What a record costs on the wire is known only after librdkafka has
/// compressed and sent it, so a record is charged an estimate when it is
/// handed over (its weight times the wire bytes per record byte learned so
/// far), and each count of the wire ([`Bucket::measured`], four times a
/// second) replaces the estimates since the previous count with what was
/// really sent. Over any stretch longer than a few counts the bucket is
/// charged exactly the bytes the kernel sent, so the cap holds on the
/// wire; the estimate only shapes the next quarter second.
pub struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
    /// Wire bytes per record byte (compression, batching, framing).
    ratio: f64,
    /// Charged as estimates since the last count.
    estimated: f64,
    /// Record bytes handed to librdkafka since the last count.
    handed: u64,
}

/// The first estimate: no compression, a little framing. Learning makes it
/// smaller within a second of sending.
const FIRST_RATIO: f64 = 1.0;
/// The ratio is learned only from counts over at least this many record bytes.
const LEARN_MIN_BYTES: u64 = 4096;

impl Bucket {
    pub fn new(bytes_per_s: u64) -> Bucket {
        Bucket {
            rate: bytes_per_s as f64,
            tokens: 0.0,
            last: Instant::now(),
            ratio: FIRST_RATIO,
            estimated: 0.0,
            handed: 0,
        }
    }

    /// Record bytes that may be handed over now (0: wait). A read may
    /// overshoot: it returns whole records. The debt is paid before the
    /// next read, so the rate holds on average.
    fn allowance(&mut self) -> u64 {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        (self.tokens.max(0.0) / self.ratio) as u64
    }

    fn take(&mut self, bytes: u64) {
        let estimate = bytes as f64 * self.ratio;
        self.tokens -= estimate;
        self.estimated += estimate;
        self.handed += bytes;
    }

    /// `wire` bytes were sent since the last count: they replace the
    /// estimates charged since then, and teach the ratio.
    pub fn measured(&mut self, wire: u64) {
        self.tokens += self.estimated - wire as f64;
        self.tokens = self.tokens.min(self.rate);
        if self.handed >= LEARN_MIN_BYTES {
            let seen = wire as f64 / self.handed as f64;
            self.ratio = (0.5 * self.ratio + 0.5 * seen).clamp(0.01, 4.0);
        }
        self.estimated = 0.0;
        self.handed = 0;
    }
}

/// Sends from `stream` until its window or the shared one is full, the cap
/// says wait, or the log has nothing more. Returns whether anything moved.
pub fn fill_stream(
    log: &Log,
    producer: &Producer,
    session: u64,
    gateway_id: &str,
    stream: &mut Stream,
    window: &mut Window,
    mut bucket: Option<&mut Bucket>,
) -> Result<bool, UpstreamError> {
    if lingering(log, stream) {
        return Ok(false);
    }
    let mut moved = false;
    loop {
        if stream.in_flight_records() >= window.max_records || window.bytes >= window.max_bytes {
            return Ok(moved);
        }
        let mut want = (window.max_bytes - window.bytes).min(READ_BYTES as u64);
        if let Some(b) = bucket.as_deref_mut() {
            match b.allowance() {
                0 => return Ok(moved),
                allowed => want = want.min(allowed),
            }
        }
        let want = want as usize;
        let records = match log.read(
            &stream.topic,
            stream.partition,
            Offset(stream.next_read),
            want.max(1),
        ) {
            Ok(records) => records,
            Err(e) => return Ok(skip_unreadable(stream, e) || moved),
        };
        if records.is_empty() {
            stream.caught_up = true;
            return Ok(moved);
        }
        stream.caught_up = false;
        for record in &records {
            if stream.is_upstream(record.offset.0) {
                stream.counters.skipped_upstream += 1;
                stream.skip(record.offset.0, record.offset.0 + 1);
                moved = true;
                continue;
            }
            let Some(bytes) = send(producer, session, gateway_id, stream, record)? else {
                return Ok(moved); // librdkafka's queue is full: wait for acks
            };
            stream.sent(record.offset.0, bytes);
            window.bytes += bytes;
            if let Some(b) = bucket.as_deref_mut() {
                b.take(bytes);
            }
            moved = true;
        }
    }
}

/// A linger ends early once this many records wait: past it they are a
/// backlog, which drains at once.
pub const LINGER_FULL_RECORDS: u64 = 5_000;

/// Whether the stream holds its few new records back a little longer, so
/// live data goes out in fewer, larger, better-compressed requests (the
/// rule's `linger_ms`). The first unsent record seen starts the wait; when
/// it is over, or a backlog builds, everything there is goes out.
fn lingering(log: &Log, stream: &mut Stream) -> bool {
    let Some(linger) = stream.shape.linger else {
        return false;
    };
    let end = log
        .offsets(&stream.topic, stream.partition)
        .map_or(0, |(_, end)| end.0);
    let waiting = end.saturating_sub(stream.next_read);
    if waiting == 0 {
        stream.linger_until = None;
        return false;
    }
    if waiting >= LINGER_FULL_RECORDS {
        stream.linger_until = None;
        return false;
    }
    let now = Instant::now();
    let until = *stream.linger_until.get_or_insert(now + linger);
    if now < until {
        return true;
    }
    stream.linger_until = None;
    false
}

/// Framing a record costs upstream besides its bytes (length, attributes,
/// timestamp and offset deltas, header counts), roughly.
const RECORD_OVERHEAD: u64 = 16;

/// Hands one record to the producer, shaped by its mirror rule. Returns
/// what it weighs upstream before compression (key, value, headers and
/// framing: what the in-flight window counts, and what the bandwidth cap
/// scales by its learned ratio until the wire is counted), or
/// `None` when librdkafka's queue is full.
fn send(
    producer: &Producer,
    session: u64,
    gateway_id: &str,
    stream: &Stream,
    stored: &StoredRecord,
) -> Result<Option<u64>, UpstreamError> {
    let r = &stored.record;
    let origin = Origin {
        gateway_id,
        topic: &stream.topic,
        partition: stream.partition.0,
        offset: stored.offset.0,
    };
    let shape = &stream.shape;
    let value = shape.value(&origin, stored);
    let bytes = (r.key.as_ref().map_or(0, bytes::Bytes::len)
        + value.len()
        + shape.header_bytes(&origin, stored)) as u64
        + RECORD_OVERHEAD;
    let token = Box::new(Token {
        stream: stream.index,
        offset: stored.offset.0,
        session,
    });
    let mut record =
        BaseRecord::<[u8], [u8], Box<Token>>::with_opaque_to(&stream.remote_topic, token)
            .partition(stream.remote_partition(r.key.as_deref()))
            .payload(value.as_ref())
            .timestamp(r.timestamp_ms)
            .headers(shape.headers(&origin, stored));
    if let Some(key) = &r.key {
        record = record.key(key.as_ref());
    }
    match producer.send(record) {
        Ok(()) => Ok(Some(bytes)),
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Ok(None),
        Err((e, _)) => Err(UpstreamError::Delivery {
            topic: stream.topic.clone(),
            partition: stream.partition.0,
            offset: stored.offset.0,
            code: e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail),
        }),
    }
}

/// Local data that cannot be read: skip it (counted, logged loudly) when
/// the log says where readable data resumes. Returns whether it skipped.
fn skip_unreadable(stream: &mut Stream, e: ReadError) -> bool {
    let from = stream.next_read;
    let (to, lost_to_quota) = match &e {
        ReadError::BeforeStart { start, .. } => (start.0, true),
        ReadError::Corrupt {
            resume_at: Some(r), ..
        } => (r.0, false),
        ReadError::Missing { to, .. } => (to.0, false),
        _ => {
            tracing::error!(topic = %stream.topic, partition = %stream.partition, "replication cannot read the log: {e}");
            return false;
        }
    };
    if to <= from {
        return false;
    }
    if lost_to_quota {
        stream.counters.gap_records += to - from;
        tracing::warn!(topic = %stream.topic, partition = %stream.partition, from, to,
            "gap: {} records were dropped locally (quota, drop_oldest) before they were replicated", to - from);
    } else {
        stream.counters.corrupt_records += to - from;
        tracing::error!(topic = %stream.topic, partition = %stream.partition, from, to,
            "DAMAGED LOG: {} records cannot be read and are not replicated: {e}", to - from);
    }
    stream.skip(from, to);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A count of the wire replaces the estimates: whatever the ratio
    /// guessed, the bucket ends up charged the bytes really sent, and the
    /// learned ratio lets more record bytes through when they compress.
    #[test]
    fn the_cap_is_charged_what_the_wire_counted() {
        let mut b = Bucket::new(10_000);
        b.tokens = 10_000.0;
        b.take(8_000); // estimated at 1:1
        assert_eq!(b.tokens, 2_000.0);
        b.measured(1_000); // it compressed 8:1
        assert_eq!(b.tokens, 9_000.0, "charged the 1,000 wire bytes only");
        assert!((b.ratio - 0.5625).abs() < 1e-9, "ratio {}", b.ratio);
        b.last = Instant::now();
        let allowed = b.allowance();
        assert!(
            (15_900..=16_100).contains(&allowed),
            "9,000 wire bytes left at 0.5625 wire bytes per record byte: {allowed}"
        );
    }

    /// Traffic the estimate did not foresee (metadata, retransmissions, a
    /// ratio that was too low) is a debt that holds the next records back.
    #[test]
    fn unforeseen_wire_bytes_are_a_debt() {
        let mut b = Bucket::new(1_000);
        b.tokens = 1_000.0;
        b.measured(3_000);
        assert_eq!(b.tokens, -2_000.0);
        b.last = Instant::now();
        assert_eq!(b.allowance(), 0);
    }
}

//! Reading a stream's next records from the log and handing them to the
//! producer, inside the in-flight window and the bandwidth cap.

use std::time::Instant;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;

use super::client::{Producer, Token};
use super::error::UpstreamError;
use super::stream::Stream;
use super::tail::{H_GATEWAY, H_OFFSET, H_PARTITION, H_TOPIC};
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

/// Token bucket for `bandwidth_bytes_per_s`; at most one second of burst.
pub struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(bytes_per_s: u64) -> Bucket {
        Bucket {
            rate: bytes_per_s as f64,
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    /// Bytes that may be sent now (0: wait). A read may overshoot: it
    /// returns whole records, and the log's byte budget does not count the
    /// `tidewell.*` headers that `upstream_bytes` does. The debt is paid
    /// before the next read, so the rate holds on average.
    fn allowance(&mut self) -> u64 {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.tokens.max(0.0) as u64
    }

    fn take(&mut self, bytes: u64) {
        self.tokens -= bytes as f64;
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
            let bytes = upstream_bytes(gateway_id, stream, record);
            if !send(producer, session, gateway_id, stream, record)? {
                return Ok(moved); // librdkafka's queue is full: wait for acks
            }
            stream.sent(record.offset.0, bytes);
            window.bytes += bytes;
            if let Some(b) = bucket.as_deref_mut() {
                b.take(bytes);
            }
            moved = true;
        }
    }
}

/// Framing a record costs upstream besides its bytes (length, attributes,
/// timestamp and offset deltas, header counts), roughly.
const RECORD_OVERHEAD: u64 = 16;

/// What one record weighs upstream, before compression: key, value, the
/// ingest headers and the four `tidewell.*` headers `send` adds, plus
/// framing. The bandwidth cap and the in-flight byte window count this.
fn upstream_bytes(gateway_id: &str, stream: &Stream, stored: &StoredRecord) -> u64 {
    let ours = H_GATEWAY.len()
        + gateway_id.len()
        + H_TOPIC.len()
        + stream.topic.len()
        + H_PARTITION.len()
        + decimal_len(u64::from(stream.partition.0))
        + H_OFFSET.len()
        + decimal_len(stored.offset.0);
    (stored.record.payload_len() + ours) as u64 + RECORD_OVERHEAD
}

fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Hands one record to the producer; false when its queue is full.
fn send(
    producer: &Producer,
    session: u64,
    gateway_id: &str,
    stream: &Stream,
    stored: &StoredRecord,
) -> Result<bool, UpstreamError> {
    let r = &stored.record;
    let partition = stream.partition.0.to_string();
    let offset = stored.offset.0.to_string();
    let mut headers = OwnedHeaders::new_with_capacity(4 + r.headers.len())
        .insert(Header {
            key: H_GATEWAY,
            value: Some(gateway_id),
        })
        .insert(Header {
            key: H_TOPIC,
            value: Some(stream.topic.as_str()),
        })
        .insert(Header {
            key: H_PARTITION,
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: H_OFFSET,
            value: Some(offset.as_str()),
        });
    for (name, value) in &r.headers {
        headers = headers.insert(Header {
            key: name,
            value: Some(value.as_ref()),
        });
    }
    let token = Box::new(Token {
        stream: stream.index,
        offset: stored.offset.0,
        session,
    });
    let mut record =
        BaseRecord::<[u8], [u8], Box<Token>>::with_opaque_to(&stream.remote_topic, token)
            .partition(stream.remote_partition(r.key.as_deref()))
            .payload(r.value.as_ref())
            .timestamp(r.timestamp_ms)
            .headers(headers);
    if let Some(key) = &r.key {
        record = record.key(key.as_ref());
    }
    match producer.send(record) {
        Ok(()) => Ok(true),
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Ok(false),
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
    use super::decimal_len;

    #[test]
    fn decimal_len_counts_the_digits_of_the_offset_header() {
        for n in [0u64, 9, 10, 99, 100, 12_345, u64::MAX] {
            assert_eq!(decimal_len(n), n.to_string().len(), "{n}");
        }
    }
}

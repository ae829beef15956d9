//! Start-up dedupe: read the end of each remote partition this gateway
//! writes to, back to the replication cursor, and collect the local offsets
//! already there (by their provenance: `tidewell.*` headers, the compact
//! `tw` header, or the JSON envelope; see `shape`), so a restart does not
//! send them again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};

use super::error::UpstreamError;
use super::shape::{decode_compact, envelope_origin, Compact, H_COMPACT};

/// Headers Tidewell puts on every upstream record (values are decimal text).
pub const H_GATEWAY: &str = "tidewell.gateway_id";
pub const H_TOPIC: &str = "tidewell.topic";
pub const H_PARTITION: &str = "tidewell.partition";
pub const H_OFFSET: &str = "tidewell.offset";

/// Local offsets found upstream, per (local topic, local partition).
pub type Found = HashMap<(String, u32), Vec<u64>>;

/// One record of this gateway found upstream: its (local topic, local
/// partition) and local offset.
type Origin = ((String, u32), u64);

/// What a remote topic's name says about its records (compact provenance
/// leaves these out of each record).
#[derive(Debug, Clone, Default)]
pub struct Implied {
    /// The remote topic is this gateway's own (`{gateway_id}` in its name).
    pub gateway: bool,
    /// The one local topic mirrored there (`{topic}` in its name).
    pub topic: Option<String>,
}

/// One remote partition to read, and the local streams that write to it
/// with their cursors: once a stream's record *below* its cursor turns up,
/// everything older is known to be upstream already.
#[derive(Debug, Clone)]
pub struct TailRequest {
    pub partition: i32,
    pub cursors: HashMap<(String, u32), u64>,
}

/// The first chunk read back from the end; each next one is twice as long.
const FIRST_CHUNK: i64 = 256;

/// Reads each requested remote partition backwards from its end, in growing
/// chunks, until every stream writing there has shown a record below its
/// cursor (or `depth` records were read, or the partition's start was
/// reached), and returns the local offsets this gateway wrote there. After
/// a restart that is only what was acknowledged since the last checkpoint,
/// so the read stays short however long the remote partition is.
pub fn read_tails(
    consumer: &BaseConsumer,
    topic: &str,
    requests: &[TailRequest],
    gateway_id: &str,
    implied: &Implied,
    depth: u64,
    timeout: Duration,
) -> Result<Found, UpstreamError> {
    let mut found = Found::new();
    for request in requests {
        let tail_err = |e: KafkaError| UpstreamError::Tail {
            topic: topic.to_string(),
            partition: request.partition,
            message: e.to_string(),
        };
        let tail = Tail {
            consumer,
            topic,
            partition: request.partition,
            gateway_id,
            implied,
            timeout,
        };
        tail.read(&request.cursors, depth, &mut found)
            .map_err(tail_err)?;
    }
    Ok(found)
}

struct Tail<'a> {
    consumer: &'a BaseConsumer,
    topic: &'a str,
    partition: i32,
    gateway_id: &'a str,
    implied: &'a Implied,
    timeout: Duration,
}

impl Tail<'_> {
    fn read(
        &self,
        cursors: &HashMap<(String, u32), u64>,
        depth: u64,
        found: &mut Found,
    ) -> Result<(), KafkaError> {
        let (low, high) =
            self.consumer
                .fetch_watermarks(self.topic, self.partition, self.timeout)?;
        let floor = low.max(high.saturating_sub(depth as i64));
        let mut pending: Vec<&(String, u32)> = cursors.keys().collect();
        let (mut end, mut chunk) = (high, FIRST_CHUNK);
        while end > floor && !pending.is_empty() {
            let from = floor.max(end - chunk);
            for (key, offset) in self.range(from, end)? {
                if cursors.get(&key).is_some_and(|&c| offset < c) {
                    pending.retain(|k| **k != key);
                }
                found.entry(key).or_default().push(offset);
            }
            end = from;
            chunk = chunk.saturating_mul(2);
        }
        Ok(())
    }

    /// This gateway's records among remote offsets `from..end`.
    fn range(&self, from: i64, end: i64) -> Result<Vec<Origin>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(self.topic, self.partition, KafkaOffset::Offset(from))?;
        self.consumer.assign(&tpl)?;
        let deadline = Instant::now() + (self.timeout * 2).max(Duration::from_secs(60));
        let result = self.poll_until(end, deadline);
        let _ = self.consumer.unassign();
        result
    }

    fn poll_until(&self, end: i64, deadline: Instant) -> Result<Vec<Origin>, KafkaError> {
        let mut out = Vec::new();
        loop {
            if Instant::now() > deadline {
                return Err(KafkaError::Global(
                    rdkafka::error::RDKafkaErrorCode::OperationTimedOut,
                ));
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(out),
                Some(Err(e)) => return Err(e),
                Some(Ok(message)) if message.offset() >= end => return Ok(out),
                Some(Ok(message)) => {
                    let last = message.offset() + 1 >= end;
                    out.extend(ours(&message, self.gateway_id, self.implied));
                    if last {
                        return Ok(out);
                    }
                }
            }
        }
    }
}

/// The (local topic, partition) and offset of a record this gateway wrote,
/// from whichever provenance it carries: the full headers, the compact
/// header, or the JSON envelope.
fn ours(message: &impl Message, gateway_id: &str, implied: &Implied) -> Option<Origin> {
    if let Some(headers) = message.headers() {
        if let Some(found) = from_full(headers, gateway_id) {
            return found;
        }
        let compact = headers
            .iter()
            .find(|h| h.key == H_COMPACT)
            .and_then(|h| decode_compact(h.value?));
        if let Some(c) = compact {
            return from_compact(c, gateway_id, implied);
        }
    }
    let (gw, topic, partition, offset) = envelope_origin(message.payload()?)?;
    (gw == gateway_id).then_some(((topic, partition), offset))
}

/// `Some(origin or None)` when the full headers are there.
fn from_full(headers: &impl Headers, gateway_id: &str) -> Option<Option<Origin>> {
    let (mut gw, mut topic, mut partition, mut offset) = (None, None, None, None);
    for h in headers.iter() {
        let value = h.value.and_then(|v| std::str::from_utf8(v).ok());
        match h.key {
            H_GATEWAY => gw = value,
            H_TOPIC => topic = value,
            H_PARTITION => partition = value.and_then(|v| v.parse::<u32>().ok()),
            H_OFFSET => offset = value.and_then(|v| v.parse::<u64>().ok()),
            _ => {}
        }
    }
    let gw = gw?;
    if gw != gateway_id {
        return Some(None);
    }
    Some(
        topic
            .zip(partition)
            .zip(offset)
            .map(|((t, p), o)| ((t.to_string(), p), o)),
    )
}

fn from_compact(c: Compact, gateway_id: &str, implied: &Implied) -> Option<Origin> {
    match &c.gateway_id {
        Some(gw) if gw != gateway_id => return None,
        None if !implied.gateway => return None,
        _ => {}
    }
    let topic = c.topic.or_else(|| implied.topic.clone())?;
    Some(((topic, c.partition), c.offset))
}

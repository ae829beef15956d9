//! Start-up dedupe: read the end of each remote partition this gateway
//! writes to, and collect the local offsets already there (by their
//! `tidewell.*` headers), so a restart does not send them again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};

use super::error::UpstreamError;

/// Headers Tidewell puts on every upstream record (values are decimal text).
pub const H_GATEWAY: &str = "tidewell.gateway_id";
pub const H_TOPIC: &str = "tidewell.topic";
pub const H_PARTITION: &str = "tidewell.partition";
pub const H_OFFSET: &str = "tidewell.offset";

/// Local offsets found upstream, per (local topic, local partition).
pub type Found = HashMap<(String, u32), Vec<u64>>;

/// Reads the last `depth` records of `partitions` of `topic` and returns
/// the local offsets this gateway wrote there.
pub fn read_tails(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    gateway_id: &str,
    depth: u64,
    timeout: Duration,
) -> Result<Found, UpstreamError> {
    let tail_err = |partition: i32, e: KafkaError| UpstreamError::Tail {
        topic: topic.to_string(),
        partition,
        message: e.to_string(),
    };
    let mut tpl = TopicPartitionList::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for &p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| tail_err(p, e))?;
        if high > low {
            let from = low.max(high - depth as i64);
            tpl.add_partition_offset(topic, p, KafkaOffset::Offset(from))
                .map_err(|e| tail_err(p, e))?;
            ends.insert(p, high);
        }
    }
    let mut found = Found::new();
    if ends.is_empty() {
        return Ok(found);
    }
    consumer.assign(&tpl).map_err(|e| tail_err(-1, e))?;
    let deadline = Instant::now() + (timeout * 2).max(Duration::from_secs(60));
    let result = poll_until_ends(consumer, &mut ends, gateway_id, &mut found, deadline);
    let _ = consumer.unassign();
    result.map_err(|e| tail_err(ends.keys().next().copied().unwrap_or(-1), e))?;
    Ok(found)
}

fn poll_until_ends(
    consumer: &BaseConsumer,
    ends: &mut HashMap<i32, i64>,
    gateway_id: &str,
    found: &mut Found,
    deadline: Instant,
) -> Result<(), KafkaError> {
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(KafkaError::Global(
                rdkafka::error::RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ends.remove(&p);
            }
            Some(Err(e)) => return Err(e),
            Some(Ok(message)) => {
                let p = message.partition();
                if ends.get(&p).is_some_and(|&end| message.offset() + 1 >= end) {
                    ends.remove(&p);
                }
                if let Some((key, offset)) = ours(&message, gateway_id) {
                    found.entry(key).or_default().push(offset);
                }
            }
        }
    }
    Ok(())
}

/// The (local topic, partition) and offset of a record this gateway wrote.
fn ours(message: &impl Message, gateway_id: &str) -> Option<((String, u32), u64)> {
    let headers = message.headers()?;
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
    if gw? != gateway_id {
        return None;
    }
    Some(((topic?.to_string(), partition?), offset?))
}

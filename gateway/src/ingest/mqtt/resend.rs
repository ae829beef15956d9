//! QoS 1 retransmissions across a gateway crash: a publish appended and
//! durable whose PUBACK died with the process comes back with DUP = 1.
//! MQTT lets the receiver treat it as the same message, so it is acked
//! without a second append.
//!
//! At start the last `TAIL_RECORDS` records of every partition are read;
//! each MQTT record with a packet id is remembered by (client id, packet
//! id) with its topic and payload CRC. A DUP = 1 QoS 1 publish that matches
//! one (same client, packet id, topic and payload) is acknowledged at once
//! and the entry forgotten; a publish without DUP reusing the packet id
//! forgets it too (the client had the ack).
//!
//! A duplicate can still reach the log when: the record is older than the
//! tail read at start; the client re-sends without DUP, with another packet
//! id, or after publishing something else with that id; or the gateway
//! crashes again before the re-send arrives and more than `TAIL_RECORDS`
//! records were appended to that partition since. A new message wrongly
//! flagged DUP = 1 with the packet id, topic and payload of the previous
//! one would be taken for it (the protocol forbids that flag on it).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;

use super::message::Live;
use crate::log::{Log, Offset, Partition, ReadError};

/// Records per partition read at start.
const TAIL_RECORDS: u64 = 1000;

#[derive(Default)]
pub struct Recent(Mutex<HashMap<(String, u16), (Bytes, u32)>>);

impl Recent {
    /// Reads the tail of every partition.
    pub fn from_log(log: &Log) -> Result<Recent, ReadError> {
        let mut map = HashMap::new();
        for t in log.topics() {
            for p in (0..t.config.partitions).map(Partition) {
                let Some((start, end)) = log.offsets(&t.name, p) else {
                    continue;
                };
                let mut at = end.0.saturating_sub(TAIL_RECORDS).max(start.0);
                while at < end.0 {
                    let records = log.read(&t.name, p, Offset(at), 1 << 20)?;
                    let Some(last) = records.last() else { break };
                    at = last.offset.0 + 1;
                    for r in &records {
                        remember(&mut map, &r.record);
                    }
                }
            }
        }
        Ok(Recent(Mutex::new(map)))
    }

    /// Whether this DUP = 1 publish is a re-send of a durable record; a
    /// match is forgotten (it is answered once).
    pub fn is_resend(&self, client_id: &str, pkid: u16, topic: &[u8], payload: &[u8]) -> bool {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (client_id.to_string(), pkid);
        let hit = map
            .get(&key)
            .is_some_and(|(t, crc)| t.as_ref() == topic && *crc == crc32c::crc32c(payload));
        if hit {
            map.remove(&key);
        }
        hit
    }

    /// The client used `pkid` for a new message: an older record with it
    /// was acknowledged.
    pub fn forget(&self, client_id: &str, pkid: u16) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !map.is_empty() {
            map.remove(&(client_id.to_string(), pkid));
        }
    }
}

fn remember(map: &mut HashMap<(String, u16), (Bytes, u32)>, record: &crate::log::Record) {
    let text = |name: &str| {
        record
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok().map(str::to_string))
    };
    let (Some(client), Some(pkid), Some(live)) = (
        text("mqtt.client_id"),
        text("mqtt.packet_id").and_then(|p| p.parse::<u16>().ok()),
        Live::from_record(record),
    ) else {
        return;
    };
    if live.qos == 1 {
        map.insert((client, pkid), (live.topic, crc32c::crc32c(&live.payload)));
    }
}

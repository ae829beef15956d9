//! The ledger of a fault campaign: what the load generators sent and which
//! of it was acknowledged, reconciled against what survived (the local log
//! read back with `tidewell log dump`, and optionally what a consumer found
//! upstream).
//!
//! Every message carries its own identity and a checksum, so a record read
//! back names the message it claims to be and damage is detectable without
//! the ledger:
//!
//! ```text
//! tw1 <device> <seq> <filler> <crc32c of everything before it, 8 hex digits>
//! ```
//!
//! Sequence numbers count up per device across the whole campaign (a device
//! reconnecting after a crash continues where it stopped), so per-device
//! order can be checked across restarts.
//!
//! What [`Ledger::reconcile`] counts (see [`Report`]): an acknowledged message
//! must be found (locally, or upstream when a list from upstream is given);
//! a message sent but never acknowledged may or may not be found. A record
//! whose payload does not check out, differs from what was sent, or was never
//! sent is corrupt, and so is every damaged span `tidewell log verify`
//! reports. Within one stream (a local `topic/partition`, or an upstream
//! topic partition) a device's records must come in sequence order; a second
//! copy of a message is a duplicate, not an order violation.
//!
//! A persistent subscriber has a ledger of its own, an [`Inbox`]: every
//! delivery in arrival order (across all its connections), the
//! `session_present` of every CONNACK, and from which message of each device
//! on its subscription holds (the devices' next sequence numbers at its
//! first SUBACK). [`Ledger::reconcile_subscriber`] then checks that every
//! acknowledged message from there on reached it, intact, and that per
//! device the first copies came in sequence order (a second copy is a QoS 1
//! redelivery: counted, allowed).
//!
//! Shared by the campaigns under `tests/` (`#[path = "faults/ledger.rs"]`).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;

/// First word of every ledger payload (format version 1).
pub const MAGIC: &str = "tw1";

/// Shortest payload [`encode`] makes for a short device id.
pub const MIN_PAYLOAD_BYTES: usize = 32;

/// How many problems a report lists by name.
const EXAMPLES: usize = 12;

/// One message, as made by [`Ledger::send`].
#[derive(Debug, Clone)]
pub struct Message {
    pub device: String,
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// The payload of message `seq` of `device`, about `len` bytes long (longer
/// if the identity does not fit). The filler is derived from device and
/// sequence number, so two messages never share a payload.
pub fn encode(device: &str, seq: u64, len: usize) -> Vec<u8> {
    assert!(
        !device.is_empty() && !device.contains(char::is_whitespace),
        "device ids are single words: {device:?}"
    );
    let head = format!("{MAGIC} {device} {seq} ");
    let filler_len = len.saturating_sub(head.len() + 9).max(1);
    let mut state = u64::from(crc32c::crc32c(head.as_bytes())) | 1;
    let mut text = head.into_bytes();
    for _ in 0..filler_len {
        // xorshift64: cheap, deterministic, printable.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        text.push(b'a' + (state % 26) as u8);
    }
    let crc = crc32c::crc32c(&text);
    text.extend_from_slice(format!(" {crc:08x}").as_bytes());
    text
}

/// Why a payload read back is not a good ledger payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    /// Not `tw1 <device> <seq> <filler> <crc>`.
    Malformed(String),
    /// The checksum does not match the content.
    Checksum { expected: u32, found: u32 },
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::Malformed(why) => write!(f, "malformed payload: {why}"),
            PayloadError::Checksum { expected, found } => {
                write!(f, "checksum {found:08x}, content gives {expected:08x}")
            }
        }
    }
}

/// The device and sequence number a payload claims, once its checksum holds.
pub fn decode(payload: &[u8]) -> Result<(String, u64), PayloadError> {
    let malformed = |why: &str| PayloadError::Malformed(why.to_string());
    let split = payload
        .iter()
        .rposition(|&b| b == b' ')
        .ok_or_else(|| malformed("no checksum"))?;
    let (body, crc_text) = (&payload[..split], &payload[split + 1..]);
    let found = std::str::from_utf8(crc_text)
        .ok()
        .filter(|t| t.len() == 8)
        .and_then(|t| u32::from_str_radix(t, 16).ok())
        .ok_or_else(|| malformed("checksum is not 8 hex digits"))?;
    let expected = crc32c::crc32c(body);
    if found != expected {
        return Err(PayloadError::Checksum { expected, found });
    }
    let body = std::str::from_utf8(body).map_err(|_| malformed("not UTF-8"))?;
    let mut words = body.split(' ');
    if words.next() != Some(MAGIC) {
        return Err(malformed("no tw1 magic"));
    }
    let device = words.next().ok_or_else(|| malformed("no device"))?;
    let seq = words
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed("no sequence number"))?;
    Ok((device.to_string(), seq))
}

/// A record found after the fault: where, and its payload.
#[derive(Debug, Clone)]
pub struct Found {
    /// Records of one stream are in `offset` order: a local `topic/partition`,
    /// or an upstream topic partition.
    pub stream: String,
    pub offset: u64,
    pub payload: Vec<u8>,
}

/// Parses `tidewell log dump` output (one JSON object per line), keeping the
/// records of `topic` (all topics when `None`).
pub fn found_in_dump(jsonl: &str, topic: Option<&str>) -> Result<Vec<Found>, String> {
    let mut found = Vec::new();
    for (n, line) in jsonl.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("dump line {}: {e}", n + 1))?;
        let record_topic = v["topic"].as_str().unwrap_or_default();
        if topic.is_some_and(|t| t != record_topic) {
            continue;
        }
        let payload = match (v["payload"].as_str(), v["payload_base64"].as_str()) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("dump line {}: base64: {e}", n + 1))?,
            (None, None) => Vec::new(),
        };
        found.push(Found {
            stream: format!("{record_topic}/{}", v["partition"]),
            offset: v["offset"]
                .as_u64()
                .ok_or_else(|| format!("dump line {}: no offset", n + 1))?,
            payload,
        });
    }
    Ok(found)
}

/// What `tidewell log verify --json` reported.
#[derive(Debug, Clone, Default)]
pub struct Verified {
    /// Problems that are damage (corruption, missing offsets): must be none.
    pub damage: Vec<String>,
    /// Torn tails, which recovery cuts at the next start (expected after a
    /// crash, and never holding an acknowledged record).
    pub torn_tails: Vec<String>,
}

/// Parses `tidewell log verify --json` output.
pub fn parse_verify(json: &str) -> Result<Verified, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("verify output: {e}"))?;
    let partitions = v["report"]["partitions"]
        .as_array()
        .ok_or("verify output: no report.partitions")?;
    let mut verified = Verified::default();
    for p in partitions {
        for problem in p["problems"].as_array().into_iter().flatten() {
            let text = format!(
                "{}/{}: {} at {} ({})",
                p["topic"].as_str().unwrap_or("?"),
                p["partition"],
                problem["path"].as_str().unwrap_or("?"),
                problem["position"],
                problem["what"].as_str().unwrap_or("?"),
            );
            if problem["damage"].as_bool() == Some(false) {
                verified.torn_tails.push(text);
            } else {
                verified.damage.push(text);
            }
        }
    }
    Ok(verified)
}

/// What survived, for [`Ledger::reconcile`].
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub local: Vec<Found>,
    /// What a consumer read upstream, when the campaign has an upstream.
    pub upstream: Option<Vec<Found>>,
    /// Damage reported by `log verify` or by recovery: each counts as corrupt.
    pub damage: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    digest: u32,
    len: usize,
    acked: bool,
}

#[derive(Debug, Default)]
struct Device {
    next_seq: u64,
    sent: BTreeMap<u64, Sent>,
}

/// Every message sent and acknowledged in a campaign. Shared by the load
/// generators (`Arc<Ledger>`); all methods take `&self`.
#[derive(Debug, Default)]
pub struct Ledger {
    devices: Mutex<BTreeMap<String, Device>>,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    fn devices(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Device>> {
        // A generator that panicked leaves the map consistent (one insert per call).
        self.devices.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next message of `device`, recorded as sent: call it just before
    /// handing the payload to the client.
    pub fn send(&self, device: &str, len: usize) -> Message {
        let mut devices = self.devices();
        let entry = devices.entry(device.to_string()).or_default();
        let seq = entry.next_seq;
        let payload = encode(device, seq, len);
        entry.next_seq = seq + 1;
        entry.sent.insert(
            seq,
            Sent {
                digest: crc32c::crc32c(&payload),
                len: payload.len(),
                acked: false,
            },
        );
        Message {
            device: device.to_string(),
            seq,
            payload,
        }
    }

    /// Records an acknowledgement (PUBACK, PUBREC, a serial Ack, ...).
    /// Panics on a message that was never sent: that is a generator bug.
    pub fn ack(&self, device: &str, seq: u64) {
        let mut devices = self.devices();
        let sent = devices
            .get_mut(device)
            .and_then(|d| d.sent.get_mut(&seq))
            .unwrap_or_else(|| panic!("ack of {device}/{seq}, which was never sent"));
        sent.acked = true;
    }

    pub fn sent(&self) -> u64 {
        self.devices().values().map(|d| d.sent.len() as u64).sum()
    }

    pub fn acked(&self) -> u64 {
        self.devices()
            .values()
            .map(|d| d.sent.values().filter(|s| s.acked).count() as u64)
            .sum()
    }

    /// Each device's next sequence number: a subscription made now covers
    /// every message from there on.
    pub fn next_seqs(&self) -> BTreeMap<String, u64> {
        self.devices()
            .iter()
            .map(|(name, d)| (name.clone(), d.next_seq))
            .collect()
    }

    /// The acknowledged messages a subscription covers that holds from
    /// `from` on (a device missing from `from`: all of its messages).
    pub fn acked_since(&self, from: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
        let devices = self.devices();
        let mut acked = Vec::new();
        for (name, device) in devices.iter() {
            let first = from.get(name).copied().unwrap_or(0);
            acked.extend(
                device
                    .sent
                    .range(first..)
                    .filter(|(_, s)| s.acked)
                    .map(|(&seq, _)| (name.clone(), seq)),
            );
        }
        acked
    }

    /// Compares what the subscriber of `inbox` received with what was
    /// acknowledged, into `report.subscriber` (replacing an earlier
    /// reconcile of it). `finished`: the subscriber has had its chance to
    /// receive everything, so a missing message is a failure; before that it
    /// may still be on its way.
    pub fn reconcile_subscriber(&self, inbox: &Inbox, finished: bool, report: &mut Report) {
        let state = inbox.lock();
        let expected = state
            .subscribed_from
            .as_ref()
            .map(|from| self.acked_since(from))
            .unwrap_or_default();
        let devices = self.devices();
        let mut sub = Subscribed {
            connections: state.connects.len() as u64,
            deliveries: state.deliveries.len() as u64,
            expected: expected.len() as u64,
            finished,
            ..Subscribed::default()
        };
        sub.check_sessions(&state.connects);
        if state.subscribed_from.is_none() && finished {
            sub.session_failures += 1;
            sub.example("subscriber: never subscribed (no SUBACK)".into());
        }
        let first = sub.scan(&devices, &state.deliveries);
        for (device, seq) in &expected {
            if !first.contains(&(device.as_str(), *seq)) {
                sub.missing += 1;
                if finished {
                    sub.example(format!(
                        "subscriber missed: {device}/{seq} was acknowledged"
                    ));
                }
            }
        }
        report.subscriber = Some(sub);
    }

    /// Compares everything sent so far with `evidence`.
    pub fn reconcile(&self, evidence: &Evidence) -> Report {
        let devices = self.devices();
        let mut report = Report {
            sent: devices.values().map(|d| d.sent.len() as u64).sum(),
            ..Report::default()
        };
        report.acked = devices
            .values()
            .map(|d| d.sent.values().filter(|s| s.acked).count() as u64)
            .sum();
        for damage in &evidence.damage {
            report.corrupt += 1;
            report.example(format!("damage: {damage}"));
        }
        let local = scan(&devices, &evidence.local, "local", &mut report);
        report.present_local = local.present.len() as u64;
        report.duplicated_local = local.duplicates;
        report.out_of_order_local = local.out_of_order;
        let upstream = evidence.upstream.as_ref().map(|records| {
            let up = scan(&devices, records, "upstream", &mut report);
            report.present_upstream = Some(up.present.len() as u64);
            report.duplicated_upstream = Some(up.duplicates);
            report.out_of_order_upstream = Some(up.out_of_order);
            up.present
        });
        let mut missing_upstream = 0;
        for (name, device) in devices.iter() {
            for (&seq, sent) in &device.sent {
                let key = (name.clone(), seq);
                let here = local.present.contains(&key);
                let there = upstream.as_ref().map(|u| u.contains(&key));
                if sent.acked && !here {
                    report.missing_local += 1;
                }
                if sent.acked && there == Some(false) {
                    missing_upstream += 1;
                }
                if sent.acked && !here && there != Some(true) {
                    report.lost += 1;
                    report.example(format!("lost: {name}/{seq} was acknowledged"));
                }
                if !sent.acked && (here || there == Some(true)) {
                    report.unacked_present += 1;
                }
            }
        }
        if upstream.is_some() {
            report.missing_upstream = Some(missing_upstream);
        }
        report
    }
}

/// One delivery to a subscriber, as received.
#[derive(Debug, Clone)]
enum Delivery {
    Message {
        device: String,
        seq: u64,
        digest: u32,
        len: usize,
    },
    /// Not a good ledger payload.
    Malformed(String),
}

#[derive(Debug, Default)]
struct InboxState {
    deliveries: Vec<Delivery>,
    /// (device, seq) received at least once.
    seen: HashSet<(String, u64)>,
    /// What [`Inbox::wait_for`] still waits for.
    outstanding: HashSet<(String, u64)>,
    /// Per device, the first sequence number the subscription covers; set
    /// at the first SUBACK.
    subscribed_from: Option<BTreeMap<String, u64>>,
    /// Per CONNACK: whether a session should have been there (the
    /// subscription was acknowledged before), and `session_present`.
    connects: Vec<(bool, bool)>,
}

/// What one persistent subscriber received, over all its connections (see
/// the module comment). Shared with its client task (`Arc<Inbox>`).
#[derive(Debug, Default)]
pub struct Inbox {
    state: Mutex<InboxState>,
    /// Notified when the last message [`Inbox::wait_for`] waits for arrives.
    complete: Condvar,
}

impl Inbox {
    pub fn new() -> Inbox {
        Inbox::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        // Every update is one push or insert: consistent after a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A CONNACK: `session_present` must be 1 once a SUBACK was received
    /// (the session is on disk before the SUBACK goes out), 0 before.
    pub fn connected(&self, session_present: bool) {
        let mut state = self.lock();
        let expected = state.subscribed_from.is_some();
        state.connects.push((expected, session_present));
    }

    /// The SUBACK of the subscription: it covers each device's messages
    /// from `from` (its next sequence number now) on. Only the first counts.
    pub fn subscribed(&self, from: BTreeMap<String, u64>) {
        self.lock().subscribed_from.get_or_insert(from);
    }

    pub fn subscribed_from(&self) -> Option<BTreeMap<String, u64>> {
        self.lock().subscribed_from.clone()
    }

    /// Whether every CONNACK so far had the `session_present` expected.
    pub fn sessions_kept(&self) -> bool {
        self.lock().connects.iter().all(|(e, f)| e == f)
    }

    /// Records one PUBLISH received.
    pub fn deliver(&self, payload: &[u8]) {
        let delivery = match decode(payload) {
            Ok((device, seq)) => Delivery::Message {
                device,
                seq,
                digest: crc32c::crc32c(payload),
                len: payload.len(),
            },
            Err(e) => Delivery::Malformed(e.to_string()),
        };
        let mut state = self.lock();
        if let Delivery::Message { device, seq, .. } = &delivery {
            let id = (device.clone(), *seq);
            if state.outstanding.remove(&id) && state.outstanding.is_empty() {
                self.complete.notify_all();
            }
            state.seen.insert(id);
        }
        state.deliveries.push(delivery);
    }

    /// Waits until every message of `wanted` was received, for at most
    /// `limit`; returns how many are still missing.
    pub fn wait_for(
        &self,
        wanted: impl IntoIterator<Item = (String, u64)>,
        limit: Duration,
    ) -> usize {
        let deadline = Instant::now() + limit;
        let mut state = self.lock();
        let outstanding: HashSet<(String, u64)> = wanted
            .into_iter()
            .filter(|id| !state.seen.contains(id))
            .collect();
        state.outstanding = outstanding;
        while !state.outstanding.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .complete
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let missing = state.outstanding.len();
        state.outstanding.clear();
        missing
    }

    /// Distinct messages received so far.
    pub fn distinct(&self) -> usize {
        self.lock().seen.len()
    }
}

/// What a persistent subscriber got, as [`Ledger::reconcile_subscriber`]
/// counts it. Must be 0: `session_failures`, `corrupt`, `out_of_order`, and
/// `missing` once `finished`.
#[derive(Debug, Clone, Default)]
pub struct Subscribed {
    pub connections: u64,
    /// CONNACKs with the wrong `session_present` (a session lost after its
    /// SUBACK, or one that should not exist), and no SUBACK at all.
    pub session_failures: u64,
    /// PUBLISHes received, copies included.
    pub deliveries: u64,
    /// Acknowledged messages the subscription covers.
    pub expected: u64,
    /// Distinct acknowledged messages received.
    pub received: u64,
    /// Sent, never acknowledged to the publisher, yet delivered: allowed
    /// (durable, but the PUBACK died with the power).
    pub unacked_received: u64,
    /// Acknowledged, covered, and not received.
    pub missing: u64,
    /// Second and later copies (QoS 1 redeliveries after a cut).
    pub duplicates: u64,
    /// First copies that came after a later message of the same device.
    pub out_of_order: u64,
    /// Bad payloads, and payloads that differ from what was sent.
    pub corrupt: u64,
    /// The subscriber had its chance to receive everything.
    pub finished: bool,
    /// The first problems, by name.
    pub examples: Vec<String>,
}

impl Subscribed {
    fn example(&mut self, what: String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(what);
        }
    }

    /// Counts the CONNACKs whose `session_present` was not the expected one.
    fn check_sessions(&mut self, connects: &[(bool, bool)]) {
        for (n, &(expected, found)) in connects.iter().enumerate() {
            if expected != found {
                self.session_failures += 1;
                self.example(format!(
                    "subscriber: connection {} got session_present = {}, expected {}",
                    n + 1,
                    u8::from(found),
                    u8::from(expected)
                ));
            }
        }
    }

    /// Counts copies, order and damage over the deliveries in arrival
    /// order; returns the messages received intact at least once.
    fn scan<'a>(
        &mut self,
        devices: &BTreeMap<String, Device>,
        deliveries: &'a [Delivery],
    ) -> BTreeSet<(&'a str, u64)> {
        let mut first = BTreeSet::new();
        let mut highest: BTreeMap<&str, u64> = BTreeMap::new();
        for (n, delivery) in deliveries.iter().enumerate() {
            let (device, seq, acked) = match identify(devices, delivery) {
                Ok(id) => id,
                Err(why) => {
                    self.corrupt += 1;
                    self.example(format!("corrupt: subscriber delivery {}: {why}", n + 1));
                    continue;
                }
            };
            if !first.insert((device, seq)) {
                self.duplicates += 1;
                continue;
            }
            let top = highest.entry(device).or_insert(seq);
            if seq < *top {
                let top = *top;
                self.out_of_order += 1;
                self.example(format!(
                    "subscriber out of order: delivery {}: {device}/{seq} first arrived after {device}/{top}",
                    n + 1
                ));
            } else {
                *top = seq;
            }
            match acked {
                true => self.received += 1,
                false => self.unacked_received += 1,
            }
        }
        first
    }

    pub fn clean(&self) -> bool {
        self.session_failures == 0
            && self.corrupt == 0
            && self.out_of_order == 0
            && (!self.finished || self.missing == 0)
    }
}

/// The message a delivery is, and whether it was acknowledged; or why it is
/// not a message that was sent.
fn identify<'a>(
    devices: &BTreeMap<String, Device>,
    delivery: &'a Delivery,
) -> Result<(&'a str, u64, bool), String> {
    let (device, seq, digest, len) = match delivery {
        Delivery::Malformed(why) => return Err(why.clone()),
        Delivery::Message {
            device,
            seq,
            digest,
            len,
        } => (device, *seq, *digest, *len),
    };
    match devices.get(device).and_then(|d| d.sent.get(&seq)) {
        Some(s) if s.digest == digest && s.len == len => Ok((device, seq, s.acked)),
        Some(_) => Err(format!("{device}/{seq} differs from what was sent")),
        None => Err(format!("{device}/{seq} was never sent")),
    }
}

/// What one place (local or upstream) holds.
struct Scan {
    /// Ledger messages found intact, by (device, seq).
    present: BTreeSet<(String, u64)>,
    duplicates: u64,
    out_of_order: u64,
}

fn scan(
    devices: &BTreeMap<String, Device>,
    records: &[Found],
    place: &str,
    report: &mut Report,
) -> Scan {
    let mut result = Scan {
        present: BTreeSet::new(),
        duplicates: 0,
        out_of_order: 0,
    };
    let mut sorted: Vec<&Found> = records.iter().collect();
    sorted.sort_by(|a, b| (&a.stream, a.offset).cmp(&(&b.stream, b.offset)));
    // Per (stream, device): highest seq so far.
    let mut highest: BTreeMap<(&str, String), u64> = BTreeMap::new();
    let mut copies: BTreeSet<(String, u64)> = BTreeSet::new();
    for r in sorted {
        let at = format!("{place} {}@{}", r.stream, r.offset);
        let (device, seq) = match decode(&r.payload) {
            Ok(id) => id,
            Err(e) => {
                report.corrupt += 1;
                report.example(format!("corrupt: {at}: {e}"));
                continue;
            }
        };
        let sent = devices.get(&device).and_then(|d| d.sent.get(&seq));
        match sent {
            None => {
                report.corrupt += 1;
                report.example(format!("corrupt: {at}: {device}/{seq} was never sent"));
                continue;
            }
            Some(s) if s.digest != crc32c::crc32c(&r.payload) || s.len != r.payload.len() => {
                report.corrupt += 1;
                report.example(format!(
                    "corrupt: {at}: {device}/{seq} differs from what was sent"
                ));
                continue;
            }
            Some(_) => {}
        }
        if !copies.insert((device.clone(), seq)) {
            result.duplicates += 1;
            continue;
        }
        let top = highest
            .entry((r.stream.as_str(), device.clone()))
            .or_insert(seq);
        if seq < *top {
            result.out_of_order += 1;
            report.example(format!(
                "out of order: {at}: {device}/{seq} after {device}/{top}"
            ));
        }
        *top = (*top).max(seq);
        result.present.insert((device, seq));
    }
    result
}

/// The outcome of a campaign (or of one reconcile), printable as one table.
/// `lost`, `corrupt` and the out-of-order counts must be 0 ([`Report::clean`]).
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Campaign figures printed above the ledger's (cycles, time, seed...).
    pub rows: Vec<(String, String)>,
    pub sent: u64,
    pub acked: u64,
    /// Distinct messages found intact in the local log.
    pub present_local: u64,
    pub present_upstream: Option<u64>,
    /// Sent but never acknowledged, yet found: allowed (the ack was in flight).
    pub unacked_present: u64,
    /// Acknowledged and found nowhere (neither locally nor upstream).
    pub lost: u64,
    /// Acknowledged and not in the local log (retention may explain it when
    /// an upstream holds it).
    pub missing_local: u64,
    /// Acknowledged and not upstream (expected while replication lags).
    pub missing_upstream: Option<u64>,
    /// Bad payloads, payloads that differ from what was sent or were never
    /// sent, and damage reported by `log verify` or recovery.
    pub corrupt: u64,
    pub duplicated_local: u64,
    pub duplicated_upstream: Option<u64>,
    pub out_of_order_local: u64,
    pub out_of_order_upstream: Option<u64>,
    /// The persistent subscriber's ledger, when the campaign has one.
    pub subscriber: Option<Subscribed>,
    /// The first problems, by name.
    pub examples: Vec<String>,
    /// Free text printed under the table.
    pub notes: Vec<String>,
}

impl Report {
    /// No acknowledged message lost, nothing corrupt, nothing out of order.
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.corrupt == 0
            && self.out_of_order_local == 0
            && self.out_of_order_upstream.unwrap_or(0) == 0
            && self.subscriber.as_ref().is_none_or(Subscribed::clean)
    }

    /// Adds a campaign figure to the top of the table.
    pub fn row(&mut self, name: &str, value: impl fmt::Display) {
        self.rows.push((name.to_string(), value.to_string()));
    }

    fn example(&mut self, what: String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(what);
        }
    }

    /// `$TIDEWELL_FAULTS_REPORT`, or `faults/report-<campaign>.txt` in the
    /// cargo target directory.
    pub fn default_path(campaign: &str) -> PathBuf {
        if let Some(path) = std::env::var_os("TIDEWELL_FAULTS_REPORT") {
            return path.into();
        }
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .unwrap_or(Path::new("."))
            .join("faults")
            .join(format!("report-{campaign}.txt"))
    }

    /// Writes the table to `path`, creating its directory.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, self.to_string())
    }
}

/// "ok (must be 0)" or "FAIL (must be 0)".
fn must(v: u64) -> &'static str {
    if v == 0 {
        "ok (must be 0)"
    } else {
        "FAIL (must be 0)"
    }
}

/// The subscriber's part of the report table.
fn subscriber_rows(sub: &Subscribed) -> Vec<(String, String, &'static str)> {
    let missing = if sub.finished {
        must(sub.missing)
    } else {
        "not finished"
    };
    [
        ("subscriber connections", sub.connections, ""),
        (
            "subscriber session_present wrong",
            sub.session_failures,
            must(sub.session_failures),
        ),
        ("subscriber deliveries", sub.deliveries, ""),
        ("subscriber: acknowledged, covered", sub.expected, ""),
        ("subscriber: received", sub.received, ""),
        (
            "subscriber: unacknowledged, received",
            sub.unacked_received,
            "allowed",
        ),
        ("subscriber: missing", sub.missing, missing),
        ("subscriber: duplicates", sub.duplicates, "allowed (QoS 1)"),
        (
            "subscriber: out of order",
            sub.out_of_order,
            must(sub.out_of_order),
        ),
        ("subscriber: corrupt", sub.corrupt, must(sub.corrupt)),
    ]
    .into_iter()
    .map(|(name, v, verdict)| (name.to_string(), v.to_string(), verdict))
    .collect()
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let mut rows: Vec<(String, String, &str)> = self
            .rows
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), ""))
            .collect();
        let ooo = self.out_of_order_local + self.out_of_order_upstream.unwrap_or(0);
        rows.extend([
            ("messages sent".into(), self.sent.to_string(), ""),
            ("acknowledged".into(), self.acked.to_string(), ""),
            ("present locally".into(), self.present_local.to_string(), ""),
            ("present upstream".into(), opt(self.present_upstream), ""),
            (
                "unacknowledged but present".into(),
                self.unacked_present.to_string(),
                "allowed",
            ),
            (
                "acknowledged, not local".into(),
                self.missing_local.to_string(),
                "",
            ),
            (
                "acknowledged, not upstream".into(),
                opt(self.missing_upstream),
                "",
            ),
            (
                "lost (acknowledged, nowhere)".into(),
                self.lost.to_string(),
                must(self.lost),
            ),
            (
                "corrupt".into(),
                self.corrupt.to_string(),
                must(self.corrupt),
            ),
            (
                "duplicated locally".into(),
                self.duplicated_local.to_string(),
                "",
            ),
            (
                "duplicated upstream".into(),
                opt(self.duplicated_upstream),
                "",
            ),
            ("out of order per device".into(), ooo.to_string(), must(ooo)),
        ]);
        if let Some(sub) = &self.subscriber {
            rows.extend(subscriber_rows(sub));
        }
        let width = rows.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
        let value_width = rows.iter().map(|(_, v, _)| v.len()).max().unwrap_or(0);
        let rule = "-".repeat(width + value_width + 22);
        writeln!(f, "{rule}")?;
        for (name, value, verdict) in &rows {
            writeln!(f, "{name:<width$}  {value:>value_width$}  {verdict}")?;
        }
        writeln!(f, "{rule}")?;
        let sub_examples = self.subscriber.iter().flat_map(|s| &s.examples);
        for example in self.examples.iter().chain(sub_examples) {
            writeln!(f, "  {example}")?;
        }
        for note in &self.notes {
            writeln!(f, "{note}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn found(stream: &str, offset: u64, payload: &[u8]) -> Found {
        Found {
            stream: stream.into(),
            offset,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn payloads_round_trip_and_damage_is_detected() {
        let p = encode("dev-1", 42, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(decode(&p), Ok(("dev-1".to_string(), 42)));
        let mut bad = p.clone();
        bad[30] ^= 1;
        assert!(matches!(decode(&bad), Err(PayloadError::Checksum { .. })));
        assert!(decode(b"").is_err());
        assert!(decode(&p[..50]).is_err());
    }

    #[test]
    fn reconcile_counts_lost_corrupt_duplicates_and_order() {
        let ledger = Ledger::new();
        let m: Vec<Message> = (0..4).map(|_| ledger.send("a", 40)).collect();
        for seq in 0..3 {
            ledger.ack("a", seq);
        }
        let clean = Evidence {
            local: vec![
                found("t/0", 0, &m[0].payload),
                found("t/0", 1, &m[1].payload),
                found("t/0", 2, &m[2].payload),
            ],
            ..Evidence::default()
        };
        let r = ledger.reconcile(&clean);
        assert!(r.clean(), "{r}");
        assert_eq!((r.sent, r.acked, r.present_local), (4, 3, 3));

        let mut corrupt = m[1].payload.clone();
        corrupt[10] ^= 4;
        let messy = Evidence {
            local: vec![
                found("t/0", 0, &m[2].payload),
                found("t/0", 1, &m[0].payload),
                found("t/0", 2, &m[0].payload),
                found("t/0", 3, &corrupt),
                found("t/0", 4, &m[3].payload),
            ],
            ..Evidence::default()
        };
        let r = ledger.reconcile(&messy);
        assert_eq!(r.lost, 1, "{r}");
        assert_eq!(r.corrupt, 1, "{r}");
        assert_eq!(r.duplicated_local, 1, "{r}");
        assert_eq!(r.out_of_order_local, 1, "{r}");
        assert_eq!(r.unacked_present, 1, "{r}");
        assert!(!r.clean());
    }

    #[test]
    fn subscriber_reconcile_counts_missing_copies_order_and_lost_sessions() {
        let ledger = Ledger::new();
        let inbox = Inbox::new();
        // Before the subscription: neither expected nor missing.
        let before = ledger.send("a", 40);
        ledger.ack("a", before.seq);
        inbox.connected(false);
        inbox.subscribed(ledger.next_seqs());
        let m: Vec<Message> = (0..4).map(|_| ledger.send("a", 40)).collect();
        for msg in &m[..3] {
            ledger.ack("a", msg.seq);
        }
        // A copy of m[0]; m[3] was never acknowledged; m[2] not yet here.
        for i in [0, 1, 0, 3] {
            inbox.deliver(&m[i].payload);
        }
        let mut r = Report::default();
        ledger.reconcile_subscriber(&inbox, false, &mut r);
        let sub = r.subscriber.clone().unwrap();
        assert_eq!(
            (
                sub.expected,
                sub.received,
                sub.unacked_received,
                sub.missing
            ),
            (3, 2, 1, 1)
        );
        assert_eq!((sub.duplicates, sub.out_of_order), (1, 0));
        assert!(r.clean(), "missing is not a failure before the end: {r}");
        ledger.reconcile_subscriber(&inbox, true, &mut r);
        assert!(!r.clean(), "{r}");

        inbox.connected(false);
        let mut bad = m[2].payload.clone();
        bad[8] ^= 2;
        inbox.deliver(&bad);
        inbox.deliver(&m[2].payload);
        ledger.reconcile_subscriber(&inbox, true, &mut r);
        let sub = r.subscriber.clone().unwrap();
        assert_eq!(
            (
                sub.session_failures,
                sub.corrupt,
                sub.out_of_order,
                sub.missing
            ),
            (1, 1, 1, 0),
            "{r}"
        );
        assert!(!r.clean());
        assert!(!inbox.sessions_kept());
    }

    #[test]
    fn waiting_for_the_subscriber_ends_when_the_last_message_arrives() {
        let ledger = Ledger::new();
        let inbox = Arc::new(Inbox::new());
        let m: Vec<Message> = (0..3).map(|_| ledger.send("a", 40)).collect();
        inbox.deliver(&m[0].payload);
        let sender = std::thread::spawn({
            let inbox = inbox.clone();
            move || {
                inbox.deliver(&m[1].payload);
                inbox.deliver(&m[2].payload);
            }
        });
        let wanted = (0..3).map(|seq| ("a".to_string(), seq));
        assert_eq!(inbox.wait_for(wanted, Duration::from_secs(30)), 0);
        sender.join().unwrap();
        let never = [("a".to_string(), 7)];
        assert_eq!(inbox.wait_for(never, Duration::from_millis(10)), 1);
    }

    #[test]
    fn upstream_copies_count_as_kept() {
        let ledger = Ledger::new();
        let m = ledger.send("a", 40);
        ledger.ack("a", 0);
        let evidence = Evidence {
            upstream: Some(vec![
                found("up/3", 7, &m.payload),
                found("up/3", 8, &m.payload),
            ]),
            ..Evidence::default()
        };
        let r = ledger.reconcile(&evidence);
        assert_eq!(
            (r.lost, r.missing_local, r.missing_upstream),
            (0, 1, Some(0))
        );
        assert_eq!(r.duplicated_upstream, Some(1));
    }
}

//! Device and gateway sessions driven together over a simulated serial line
//! that drops, duplicates, corrupts and truncates frames, with device reboots
//! and gateway restarts. The checks are the protocol's promises:
//!
//! - every batch the device let go of (acknowledged) is in the durable log;
//! - within a gateway run, each epoch's log is its batches in order, without
//!   gaps or duplicates; across gateway restarts, the same after removing
//!   duplicates by (epoch, seq), as the gateway's log does;
//! - each logged batch holds exactly the readings that were pushed;
//! - once the line is quiet, the device's queue empties.

mod common;

use std::collections::{BTreeMap, VecDeque};

use common::frame;
use firmware_proto::{
    Action, Capabilities, DeviceConfig, DeviceSession, FirmwareVersion, FrameDecoder,
    GatewaySession, Message, Reading, TimeSync, Value, MAX_READINGS,
};
use proptest::prelude::*;

const STEP_MS: u64 = 10;
const FAULTY_STEPS: u64 = 3_000;
const MAX_DRAIN_STEPS: u64 = 20_000;
const QUEUE: usize = 8;
/// Frames the line carries per direction and step: a slow line.
const FRAMES_PER_STEP: usize = 2;

/// SplitMix64: deterministic randomness from the proptest-chosen seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `per_mille` / 1000.
    fn chance(&mut self, per_mille: u32) -> bool {
        self.next() % 1000 < u64::from(per_mille)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Fault rates, per mille per frame (line) or per step (reboots, flushes).
#[derive(Debug, Clone, Copy)]
struct Faults {
    drop: u32,
    duplicate: u32,
    corrupt: u32,
    lose_byte: u32,
    device_reboot: u32,
    gateway_restart: u32,
    /// How often the gateway's log completes a group commit.
    flush: u32,
    /// How often the firmware has a new batch.
    push: u32,
}

/// No faults: the line after the storm, used to drain the queue.
const QUIET: Faults = Faults {
    drop: 0,
    duplicate: 0,
    corrupt: 0,
    lose_byte: 0,
    device_reboot: 0,
    gateway_restart: 0,
    flush: 500,
    push: 0,
};

/// One direction of the serial line: bytes in flight, delivered next step.
#[derive(Default)]
struct Line {
    in_flight: VecDeque<u8>,
}

impl Line {
    fn send(&mut self, message: &Message, faults: &Faults, rng: &mut Rng) {
        if rng.chance(faults.drop) {
            return;
        }
        let mut bytes = frame(message);
        if rng.chance(faults.corrupt) {
            let at = rng.below(bytes.len());
            bytes[at] ^= 1 + (rng.next() % 255) as u8;
        }
        if rng.chance(faults.lose_byte) {
            bytes.remove(rng.below(bytes.len()));
        }
        let copies = if rng.chance(faults.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            self.in_flight.extend(&bytes);
        }
    }

    /// Delivers everything in flight, in random chunks.
    fn deliver(&mut self, decoder: &mut FrameDecoder, rng: &mut Rng) -> Vec<Message> {
        let bytes: Vec<u8> = self.in_flight.drain(..).collect();
        let mut messages = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at((1 + rng.below(64)).min(rest.len()));
            decoder.push(chunk, |event| messages.extend(event.ok()));
            rest = tail;
        }
        messages
    }
}

/// The gateway's durable log and the writes not yet covered by an fsync.
#[derive(Default)]
struct Log {
    durable: Vec<(u32, u32, Vec<i64>)>,
    pending: Vec<(u32, u32, Vec<i64>)>,
}

struct Sim {
    rng: Rng,
    faults: Faults,
    now_ms: u64,
    device: DeviceSession<QUEUE>,
    device_decoder: FrameDecoder,
    gateway: GatewaySession,
    gateway_decoder: FrameDecoder,
    uplink: Line,
    downlink: Line,
    log: Log,
    /// Every pushed batch, by (epoch, seq): its reading values.
    pushed: BTreeMap<(u32, u32), Vec<i64>>,
    /// (epoch, number of batches pushed in it), for the current epoch.
    epoch: u32,
    pushed_in_epoch: u32,
    next_value: i64,
    gateway_restarts: u32,
}

fn new_device(boot_epoch: u32) -> DeviceSession<QUEUE> {
    let config = DeviceConfig::new(
        "sim-device".try_into().expect("short id"),
        FirmwareVersion {
            major: 0,
            minor: 1,
            patch: 0,
        },
        boot_epoch,
        Capabilities::NONE,
    );
    DeviceSession::new(config)
}

impl Sim {
    fn new(seed: u64, faults: Faults) -> Self {
        Self {
            rng: Rng(seed),
            faults,
            now_ms: 0,
            device: new_device(1),
            device_decoder: FrameDecoder::new(),
            gateway: GatewaySession::new(),
            gateway_decoder: FrameDecoder::new(),
            uplink: Line::default(),
            downlink: Line::default(),
            log: Log::default(),
            pushed: BTreeMap::new(),
            epoch: 1,
            pushed_in_epoch: 0,
            next_value: 0,
            gateway_restarts: 0,
        }
    }

    fn step(&mut self) {
        self.now_ms += STEP_MS;
        if self.rng.chance(self.faults.push) {
            self.push_batch();
        }
        for _ in 0..FRAMES_PER_STEP {
            let Some(message) = self.device.poll(self.now_ms) else {
                break;
            };
            self.uplink.send(&message, &self.faults, &mut self.rng);
        }
        for message in self
            .uplink
            .deliver(&mut self.gateway_decoder, &mut self.rng)
        {
            self.gateway_receives(&message);
        }
        if self.rng.chance(self.faults.flush) {
            self.flush_log();
        }
        for message in self
            .downlink
            .deliver(&mut self.device_decoder, &mut self.rng)
        {
            self.device.on_message(&message, self.now_ms);
        }
        if self.rng.chance(self.faults.device_reboot) {
            self.reboot_device();
        }
        if self.rng.chance(self.faults.gateway_restart) {
            self.restart_gateway();
        }
    }

    fn push_batch(&mut self) {
        let count = 1 + self.rng.below(MAX_READINGS);
        let values: Vec<i64> = (0..count as i64).map(|i| self.next_value + i).collect();
        let time = self.device.device_time(self.now_ms);
        let readings = values
            .iter()
            .map(|&value| Reading {
                channel: 1,
                value: Value::Int(value),
                time,
            })
            .collect();
        // A full queue is the firmware's call: here it simply waits.
        if let Ok(seq) = self.device.push_readings(readings) {
            assert_eq!(seq, self.pushed_in_epoch, "sequence numbers have no gaps");
            self.pushed.insert((self.epoch, seq), values);
            self.pushed_in_epoch += 1;
            self.next_value += count as i64;
        }
    }

    fn gateway_receives(&mut self, message: &Message) {
        let action = self.gateway.on_message(message);
        match (&action, message) {
            (Action::Append { boot_epoch, seq }, Message::Readings(batch)) => {
                let values = batch.readings.iter().map(value_of).collect();
                self.log.pending.push((*boot_epoch, *seq, values));
            }
            (Action::Welcome { .. }, _) => {
                let unix_ms = 1_700_000_000_000 + self.now_ms as i64;
                let sync = Message::TimeSync(TimeSync { unix_ms });
                self.downlink.send(&sync, &self.faults, &mut self.rng);
            }
            _ => {}
        }
        if let Some(reply) = action.reply() {
            self.downlink.send(&reply, &self.faults, &mut self.rng);
        }
    }

    /// A group commit: everything pending becomes durable, then is acked.
    fn flush_log(&mut self) {
        let Some(&(epoch, seq, _)) = self.log.pending.last() else {
            return;
        };
        self.log.durable.append(&mut self.log.pending);
        let ack = self.gateway.appended(epoch, seq);
        self.downlink
            .send(&Message::Ack(ack), &self.faults, &mut self.rng);
    }

    fn reboot_device(&mut self) {
        self.check_acked_batches_are_durable();
        self.epoch += 1;
        self.pushed_in_epoch = 0;
        self.device = new_device(self.epoch);
        self.device_decoder = FrameDecoder::new();
    }

    fn restart_gateway(&mut self) {
        self.log.pending.clear();
        self.gateway = GatewaySession::new();
        self.gateway_decoder = FrameDecoder::new();
        self.gateway_restarts += 1;
    }

    /// The device holds its newest `unacked_len` batches; it let go of the
    /// older ones only because they were acknowledged.
    fn check_acked_batches_are_durable(&self) {
        let acked = self.pushed_in_epoch - self.device.unacked_len() as u32;
        for seq in 0..acked {
            assert!(
                self.log
                    .durable
                    .iter()
                    .any(|&(e, s, _)| (e, s) == (self.epoch, seq)),
                "epoch {} seq {seq} was acked but is not durable",
                self.epoch
            );
        }
    }

    fn drain(&mut self) {
        self.faults = QUIET;
        for _ in 0..MAX_DRAIN_STEPS {
            if self.device.unacked_len() == 0 && self.log.pending.is_empty() {
                return;
            }
            self.step();
        }
        panic!(
            "queue did not drain: {} batches unacked",
            self.device.unacked_len()
        );
    }

    /// Per epoch, the log after removing repeats is 0, 1, 2, ... with the
    /// pushed contents; repeats only exist if the gateway restarted.
    fn check_log(&self) {
        let mut next: BTreeMap<u32, u32> = BTreeMap::new();
        for (epoch, seq, values) in &self.log.durable {
            let expected = next.entry(*epoch).or_insert(0);
            if *seq < *expected {
                assert!(
                    self.gateway_restarts > 0,
                    "epoch {epoch} seq {seq} appended twice without a gateway restart"
                );
            } else {
                assert_eq!(*seq, *expected, "epoch {epoch}: gap or reordering");
                *expected += 1;
            }
            assert_eq!(Some(values), self.pushed.get(&(*epoch, *seq)), "content");
        }
        assert_eq!(
            next.get(&self.epoch).copied().unwrap_or(0),
            self.pushed_in_epoch,
            "the final epoch is complete"
        );
    }
}

fn value_of(reading: &Reading) -> i64 {
    match reading.value {
        Value::Int(value) => value,
        ref other => panic!("simulation only sends Int values, got {other:?}"),
    }
}

fn run(seed: u64, faults: Faults) -> Sim {
    let mut sim = Sim::new(seed, faults);
    for _ in 0..FAULTY_STEPS {
        sim.step();
    }
    sim.drain();
    sim.check_acked_batches_are_durable();
    sim.check_log();
    assert_eq!(sim.device.unacked_len(), 0);
    sim
}

fn line_faults() -> impl Strategy<Value = Faults> {
    (
        0u32..150,
        0u32..100,
        0u32..100,
        0u32..50,
        50u32..400,
        20u32..200,
    )
        .prop_map(
            |(drop, duplicate, corrupt, lose_byte, flush, push)| Faults {
                drop,
                duplicate,
                corrupt,
                lose_byte,
                device_reboot: 0,
                gateway_restart: 0,
                flush,
                push,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn lossy_line_with_device_reboots_loses_and_repeats_nothing(
        seed: u64,
        faults in line_faults(),
        device_reboot in 0u32..3,
    ) {
        let sim = run(seed, Faults { device_reboot, ..faults });
        prop_assert_eq!(sim.gateway_restarts, 0);
    }

    #[test]
    fn gateway_restarts_only_add_duplicates_that_the_log_removes(
        seed: u64,
        faults in line_faults(),
        device_reboot in 0u32..3,
        gateway_restart in 1u32..4,
    ) {
        run(seed, Faults { device_reboot, gateway_restart, ..faults });
    }
}

#[test]
fn clean_line_delivers_everything_exactly_once() {
    let faults = Faults {
        push: 100,
        flush: 300,
        ..QUIET
    };
    let sim = run(7, faults);
    assert_eq!(sim.log.durable.len(), sim.pushed.len());
    assert!(sim.pushed.len() > 100);
}

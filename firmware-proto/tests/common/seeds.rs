//! The fuzz seed corpus: a few valid frames and one stream mixing frames with
//! garbage. `examples/write_fuzz_seeds.rs` writes them to
//! `fuzz/corpus/frame_decoder/`; `tests/fuzz_harness.rs` checks the files
//! there still match, so a protocol change cannot leave stale seeds behind.

use firmware_proto::{
    encode_frame, Ack, Capabilities, DeviceTime, FirmwareVersion, Hello, Message, Reading,
    Readings, TimeSync, Value, MAX_FRAME_LEN,
};

/// Directory of the seed corpus, relative to the crate root.
pub const CORPUS_DIR: &str = "fuzz/corpus/frame_decoder";

/// `(file name, contents)` of every seed, and the messages each one holds.
pub fn seed_files() -> Vec<(&'static str, Vec<u8>, Vec<Message>)> {
    let hello = hello();
    let readings = readings();
    let ack = Message::Ack(Ack {
        boot_epoch: 7,
        seq: 1,
    });
    let sync = Message::TimeSync(TimeSync {
        unix_ms: 1_700_000_000_000,
    });
    let mut stream = vec![0x13, 0x37, 0x00];
    stream.extend(wire(&hello));
    stream.extend([0x05, 0xAA, 0x00]); // a truncated frame
    stream.extend(wire(&readings));
    stream.extend(wire(&ack));
    vec![
        ("seed-hello", wire(&hello), vec![hello.clone()]),
        ("seed-readings", wire(&readings), vec![readings.clone()]),
        ("seed-ack", wire(&ack), vec![ack.clone()]),
        ("seed-timesync", wire(&sync), vec![sync]),
        ("seed-stream", stream, vec![hello, readings, ack]),
    ]
}

fn wire(message: &Message) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let len = encode_frame(message, &mut buf).expect("seed messages fit in MAX_FRAME_LEN");
    buf[..len].to_vec()
}

fn hello() -> Message {
    Message::Hello(Hello {
        device_id: "tank-level-03".try_into().expect("short id"),
        firmware_version: FirmwareVersion {
            major: 1,
            minor: 4,
            patch: 2,
        },
        boot_epoch: 7,
        capabilities: Capabilities::HAS_CLOCK,
        resume_seq: 0,
    })
}

fn readings() -> Message {
    let reading = |channel, value, time| Reading {
        channel,
        value,
        time,
    };
    let readings = [
        reading(1, Value::Int(-42), DeviceTime::MonotonicMs(1_500)),
        reading(2, Value::Float(21.5), DeviceTime::WallMs(1_700_000_000_123)),
        reading(
            3,
            Value::Bytes(heapless::Vec::from_slice(&[0, 1, 0, 0xFF]).expect("short")),
            DeviceTime::WallMs(1_700_000_000_456),
        ),
    ];
    Message::Readings(Readings {
        boot_epoch: 7,
        seq: 0,
        readings: heapless::Vec::from_slice(&readings).expect("three readings fit"),
    })
}

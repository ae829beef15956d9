//! Helpers shared by the integration tests: proptest strategies for every
//! message type and frame helpers.
#![allow(dead_code)] // Each test binary uses a different subset.

pub mod seeds;

use firmware_proto::{
    encode_frame, Ack, Capabilities, DecodeError, DeviceTime, FirmwareVersion, FrameDecoder,
    Heartbeat, Hello, Message, Nack, Reading, Readings, Resend, TimeSync, Value,
    MAX_BYTES_VALUE_LEN, MAX_DEVICE_ID_LEN, MAX_FRAME_LEN, MAX_READINGS,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// Encodes `message` as a wire frame, delimiter included.
pub fn frame(message: &Message) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let len = encode_frame(message, &mut buf).expect("every message fits in MAX_FRAME_LEN");
    buf[..len].to_vec()
}

/// Feeds `bytes` to a fresh decoder in one chunk and collects the events.
pub fn decode_all(bytes: &[u8]) -> Vec<Result<Message, DecodeError>> {
    decode_chunked(bytes, &[])
}

/// Feeds `bytes` to a fresh decoder in chunks of the given sizes (cycled; an
/// empty list means one chunk) and collects the events.
pub fn decode_chunked(bytes: &[u8], chunk_sizes: &[usize]) -> Vec<Result<Message, DecodeError>> {
    let mut decoder: FrameDecoder = FrameDecoder::new();
    let mut events = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunk_sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        decoder.push(chunk, |event| events.push(event));
        rest = tail;
    }
    events
}

/// Messages are compared by their encoding, so that a NaN float (which is not
/// equal to itself) still counts as round-tripped when its bits survive.
pub fn same_message(a: &Message, b: &Message) -> bool {
    frame(a) == frame(b)
}

pub fn device_id() -> impl Strategy<Value = heapless::String<MAX_DEVICE_ID_LEN>> {
    // Up to 32 bytes of UTF-8, multi-byte characters included.
    "[a-z0-9\\-é漢]{0,10}".prop_filter_map("device id too long", |s| {
        heapless::String::try_from(s.as_str()).ok()
    })
}

pub fn hello() -> impl Strategy<Value = Hello> {
    (
        device_id(),
        any::<(u8, u8, u16)>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(device_id, (major, minor, patch), boot_epoch, capabilities, resume_seq)| Hello {
                device_id,
                firmware_version: FirmwareVersion {
                    major,
                    minor,
                    patch,
                },
                boot_epoch,
                capabilities: Capabilities(capabilities),
                resume_seq,
            },
        )
}

pub fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Int),
        // From raw bits, so NaNs with payloads and subnormals are covered.
        any::<u64>().prop_map(|bits| Value::Float(f64::from_bits(bits))),
        vec(any::<u8>(), 0..=MAX_BYTES_VALUE_LEN).prop_map(|bytes| {
            Value::Bytes(heapless::Vec::from_slice(&bytes).expect("within capacity"))
        }),
    ]
}

pub fn device_time() -> impl Strategy<Value = DeviceTime> {
    prop_oneof![
        any::<i64>().prop_map(DeviceTime::WallMs),
        any::<u64>().prop_map(DeviceTime::MonotonicMs),
    ]
}

pub fn reading() -> impl Strategy<Value = Reading> {
    (any::<u16>(), value(), device_time()).prop_map(|(channel, value, time)| Reading {
        channel,
        value,
        time,
    })
}

pub fn readings() -> impl Strategy<Value = Readings> {
    (any::<u32>(), any::<u32>(), vec(reading(), 0..=MAX_READINGS)).prop_map(
        |(boot_epoch, seq, readings)| Readings {
            boot_epoch,
            seq,
            readings: heapless::Vec::from_slice(&readings).expect("within capacity"),
        },
    )
}

/// Any message, each variant equally likely.
pub fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        hello().prop_map(Message::Hello),
        readings().prop_map(Message::Readings),
        any::<(u32, u32)>().prop_map(|(boot_epoch, seq)| Message::Ack(Ack { boot_epoch, seq })),
        any::<(u32, u32)>().prop_map(|(boot_epoch, seq)| Message::Nack(Nack { boot_epoch, seq })),
        any::<(u32, u32)>().prop_map(|(boot_epoch, from_seq)| Message::Resend(Resend {
            boot_epoch,
            from_seq
        })),
        any::<i64>().prop_map(|unix_ms| Message::TimeSync(TimeSync { unix_ms })),
        any::<u64>().prop_map(|uptime_ms| Message::Heartbeat(Heartbeat { uptime_ms })),
        Just(Message::HelloRequest),
    ]
}

/// The largest message there is: a full batch of the longest readings.
pub fn maximal_readings() -> Message {
    let bytes = heapless::Vec::from_slice(&[0xFF; MAX_BYTES_VALUE_LEN]).expect("exact capacity");
    let reading = Reading {
        channel: u16::MAX,
        value: Value::Bytes(bytes),
        // i64::MIN zigzags to u64::MAX, the longest varint.
        time: DeviceTime::WallMs(i64::MIN),
    };
    let readings = core::iter::repeat_n(reading, MAX_READINGS).collect();
    Message::Readings(Readings {
        boot_epoch: u32::MAX,
        seq: u32::MAX,
        readings,
    })
}

//! Tidewell's serial protocol, shared by sensor firmware and the gateway.
//!
//! The crate is `no_std`, needs no allocator and contains no `unsafe`, so a
//! microcontroller links it unchanged (`nostd-check/check.sh` proves it).
//! It does no I/O: both sides hand it bytes and time and act on what it returns.
//!
//! Components, bottom up:
//!
//! * [`limits`]: capacities and the worst-case frame sizes they imply.
//! * `crc`, `cobs`: CRC-32C and COBS byte stuffing, written here to stay small.
//! * [`message`]: the [`Message`] enum and its parts, serialized with postcard.
//! * [`frame`]: [`encode_frame`] and the streaming [`FrameDecoder`].
//! * [`device`]: [`DeviceSession`], the firmware's queue and retransmit logic.
//! * [`gateway`]: [`GatewaySession`], the gateway's dedup and gap detection.
//!
//! Outside the library: `nostd-check/check.sh` links the crate into a
//! freestanding binary and fails if it ever needs std or alloc; `fuzz/` is a
//! cargo-fuzz project whose `frame_decoder` target feeds arbitrary bytes in
//! arbitrary chunks to the decoder (`cargo +nightly fuzz run frame_decoder`,
//! from this directory), seeded from `fuzz/corpus/frame_decoder/seed-*`.
//!
//! The protocol itself is described below.
//!
#![doc = include_str!("../PROTOCOL.md")]
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

/// The `heapless` this crate is built with, for `Vec` and `String` in messages.
pub use heapless;

mod cobs;
mod crc;
pub mod device;
pub mod frame;
pub mod gateway;
pub mod limits;
pub mod message;

pub use device::{DeviceConfig, DeviceSession, PushError};
pub use frame::{encode_frame, DecodeError, EncodeError, FrameDecoder, DELIMITER};
pub use gateway::{Action, GatewaySession};
pub use limits::{
    MAX_BODY_LEN, MAX_BYTES_VALUE_LEN, MAX_CONTROL_RAW_FRAME_LEN, MAX_DEVICE_ID_LEN, MAX_FRAME_LEN,
    MAX_RAW_FRAME_LEN, MAX_READINGS, PROTOCOL_VERSION,
};
pub use message::{
    Ack, Capabilities, DeviceTime, FirmwareVersion, Heartbeat, Hello, Message, Nack, Reading,
    Readings, Resend, TimeSync, Value,
};

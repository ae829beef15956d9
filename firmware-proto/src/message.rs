//! The messages both ends exchange, and the types they are built from.
//!
//! The wire form is postcard's: the variant index of [`Message`] as a varint,
//! then the fields in declaration order. So the order of variants and fields is
//! part of the protocol: append new variants at the end, never reorder, and
//! bump [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) for anything else.

use core::fmt;
use core::ops::BitOr;

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_BYTES_VALUE_LEN, MAX_DEVICE_ID_LEN, MAX_READINGS};

/// One protocol message. The comment on each variant gives its wire tag and
/// direction.
///
/// `Readings` makes the enum about 1.2 KiB. There is no allocator to box it
/// into, and a device holds at most one `Message` at a time (its queue holds
/// batches, not messages), so the size is accepted.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Tag 0, device → gateway: who is talking, and which boot.
    Hello(Hello),
    /// Tag 1, device → gateway: a batch of readings.
    Readings(Readings),
    /// Tag 2, gateway → device: batches up to `seq` are on disk.
    Ack(Ack),
    /// Tag 3, gateway → device: batch `seq` could not be stored; retry later.
    Nack(Nack),
    /// Tag 4, gateway → device: a gap; send again from `from_seq`.
    Resend(Resend),
    /// Tag 5, gateway → device: the current wall-clock time.
    TimeSync(TimeSync),
    /// Tag 6, both ways: the line is alive.
    Heartbeat(Heartbeat),
    /// Tag 7, gateway → device: the gateway does not know this device (it
    /// restarted, or missed the `Hello`); send `Hello` again.
    HelloRequest,
}

/// Sent by a device after boot and whenever the gateway asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Stable identity of the device; the gateway keys its log by it.
    pub device_id: heapless::String<MAX_DEVICE_ID_LEN>,
    /// Firmware build, for the gateway's inventory and compatibility decisions.
    pub firmware_version: FirmwareVersion,
    /// Boot counter persisted by the firmware; see
    /// [`DeviceConfig::boot_epoch`](crate::DeviceConfig::boot_epoch).
    pub boot_epoch: u32,
    /// What the device can do.
    pub capabilities: Capabilities,
    /// Oldest sequence number the device still holds (or the next one it will
    /// assign, if it holds none). Everything below was acknowledged, so a
    /// gateway that lost its state knows where the stream resumes and can
    /// detect a lost first batch as a gap.
    pub resume_seq: u32,
}

/// Firmware version as `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FirmwareVersion {
    /// Incompatible changes.
    pub major: u8,
    /// Compatible additions.
    pub minor: u8,
    /// Fixes.
    pub patch: u16,
}

impl fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Capability bit flags announced in [`Hello`]. Unknown bits are carried
/// through unchanged so that older gateways do not lose newer devices' flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Capabilities(pub u32);

impl Capabilities {
    /// No capabilities.
    pub const NONE: Self = Self(0);
    /// The device has a real-time clock and stamps readings with wall time
    /// itself; the gateway need not send `TimeSync`.
    pub const HAS_CLOCK: Self = Self(1 << 0);
    /// The device runs on battery and may sleep between batches; the gateway
    /// should not treat missing heartbeats as a fault.
    pub const BATTERY_POWERED: Self = Self(1 << 1);

    /// True if every flag in `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Capabilities {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// A batch of readings: the unit of sequencing, acknowledgement and
/// retransmission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readings {
    /// Boot epoch of the device when it assigned `seq`. Carried in every batch
    /// so a gateway that missed a `Hello` after a reboot notices at once.
    pub boot_epoch: u32,
    /// Position of this batch in the boot epoch, counting from 0 without gaps.
    pub seq: u32,
    /// The readings, in the order the firmware pushed them.
    pub readings: heapless::Vec<Reading, MAX_READINGS>,
}

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Sensor channel, defined by the device's firmware.
    pub channel: u16,
    /// The measured value.
    pub value: Value,
    /// When it was measured.
    pub time: DeviceTime,
}

/// A measured value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// Tag 0: counters, raw ADC values, fixed-point numbers.
    Int(i64),
    /// Tag 1: 8 bytes, little-endian IEEE 754.
    Float(f64),
    /// Tag 2: opaque payload, e.g. a packed multi-sensor record.
    Bytes(heapless::Vec<u8, MAX_BYTES_VALUE_LEN>),
}

/// When a reading was taken, in the best clock the device had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceTime {
    /// Tag 0: milliseconds since the Unix epoch, from the device's own clock or
    /// from a `TimeSync` offset.
    WallMs(i64),
    /// Tag 1: milliseconds since the device booted (within the batch's boot
    /// epoch), used before the first `TimeSync`. The gateway can place these
    /// on its own clock from the `uptime_ms` of the device's heartbeats.
    MonotonicMs(u64),
}

/// Cumulative acknowledgement: every batch of `boot_epoch` with a sequence
/// number up to and including `seq` is durably on the gateway's disk, and the
/// device may forget it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The epoch the acknowledgement is for; other epochs ignore it.
    pub boot_epoch: u32,
    /// Highest acknowledged sequence number.
    pub seq: u32,
}

/// The gateway received batch `seq` intact but could not store it (its log is
/// failing or full). The device keeps it and retries after its retransmit
/// timeout instead of at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    /// The epoch the batch belongs to.
    pub boot_epoch: u32,
    /// The batch that was not stored; later batches were not stored either.
    pub seq: u32,
}

/// The gateway saw a gap: it has nothing from `from_seq` on that it could
/// append. The device rewinds and sends again from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resend {
    /// The epoch the request is for; other epochs ignore it.
    pub boot_epoch: u32,
    /// First sequence number to send again.
    pub from_seq: u32,
}

/// Wall-clock time at the gateway when it sent this message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeSync {
    /// Milliseconds since the Unix epoch.
    pub unix_ms: i64,
}

/// Keeps an idle line observably alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Milliseconds since the sender booted (or, for the gateway, started).
    pub uptime_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    /// The RAM figures in the docs (about 1.2 KiB per message and per queued
    /// batch) hold; they grow with the capacities in `limits.rs`.
    #[test]
    fn in_memory_sizes_match_the_docs() {
        assert!(size_of::<Message>() <= 1200, "{}", size_of::<Message>());
        assert!(size_of::<Readings>() <= 1200, "{}", size_of::<Readings>());
    }
}

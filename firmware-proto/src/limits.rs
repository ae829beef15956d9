//! Capacities of the message types and the worst-case sizes they imply.
//!
//! Every buffer in this crate is sized from these constants at compile time. The
//! worst-case body length is derived from postcard's encoding rules (varints for
//! integers and lengths, raw little-endian floats) rather than measured, and the
//! test suite checks that a maximal message encodes to exactly [`MAX_BODY_LEN`].

use crate::cobs;

/// Protocol version carried in the first byte of every frame.
pub const PROTOCOL_VERSION: u8 = 1;

/// Longest device id, in UTF-8 bytes.
pub const MAX_DEVICE_ID_LEN: usize = 32;

/// Readings per [`Readings`](crate::Readings) batch. One batch is the unit of
/// acknowledgement and retransmission, so this also bounds the retransmit cost.
pub const MAX_READINGS: usize = 16;

/// Longest [`Value::Bytes`](crate::Value::Bytes) payload. Kept small because
/// every queued reading reserves this much RAM on the device, used or not.
pub const MAX_BYTES_VALUE_LEN: usize = 32;

/// Bytes of CRC-32C at the end of a raw frame.
pub const CRC_LEN: usize = 4;

// postcard encodes unsigned integers as LEB128 varints and signed ones zigzag
// first, so the worst case is ceil(bits / 7) bytes.
const VARINT_U16_MAX: usize = 3;
const VARINT_U32_MAX: usize = 5;
const VARINT_U64_MAX: usize = 10;
/// An enum discriminant is a varint; all of ours are below 128.
const TAG_LEN: usize = 1;

/// Bytes postcard needs for a sequence or string length prefix of `len`.
const fn varint_len(mut len: usize) -> usize {
    let mut bytes = 1;
    while len >= 0x80 {
        len >>= 7;
        bytes += 1;
    }
    bytes
}

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

const MAX_VALUE_LEN: usize = TAG_LEN
    + max(
        max(VARINT_U64_MAX, 8),
        varint_len(MAX_BYTES_VALUE_LEN) + MAX_BYTES_VALUE_LEN,
    );
const MAX_DEVICE_TIME_LEN: usize = TAG_LEN + VARINT_U64_MAX;
const MAX_READING_LEN: usize = VARINT_U16_MAX + MAX_VALUE_LEN + MAX_DEVICE_TIME_LEN;
const MAX_READINGS_LEN: usize =
    2 * VARINT_U32_MAX + varint_len(MAX_READINGS) + MAX_READINGS * MAX_READING_LEN;
const MAX_HELLO_LEN: usize = varint_len(MAX_DEVICE_ID_LEN)
    + MAX_DEVICE_ID_LEN
    + (1 + 1 + VARINT_U16_MAX)
    + 3 * VARINT_U32_MAX;
/// The largest message a gateway sends: `Ack`/`Nack`/`Resend` carry two u32,
/// `TimeSync` and `Heartbeat` one 64-bit integer.
const MAX_CONTROL_LEN: usize = max(2 * VARINT_U32_MAX, VARINT_U64_MAX);

/// Largest postcard body of any [`Message`](crate::Message).
pub const MAX_BODY_LEN: usize =
    TAG_LEN + max(max(MAX_READINGS_LEN, MAX_HELLO_LEN), MAX_CONTROL_LEN);

/// Largest frame before COBS: version byte, body, CRC. This is the buffer a
/// [`FrameDecoder`](crate::FrameDecoder) needs to accept every message.
pub const MAX_RAW_FRAME_LEN: usize = 1 + MAX_BODY_LEN + CRC_LEN;

/// Largest frame on the wire, including the trailing `0x00` delimiter. A buffer
/// of this size always suffices for [`encode_frame`](crate::encode_frame).
pub const MAX_FRAME_LEN: usize = cobs::max_encoded_len(MAX_RAW_FRAME_LEN) + 1;

/// Largest raw frame of a message the gateway sends to a device (everything but
/// `Hello`, `Readings` and `Heartbeat` from the device). Firmware that only
/// decodes gateway traffic can use `FrameDecoder<MAX_CONTROL_RAW_FRAME_LEN>`
/// and save most of the decoder's RAM.
pub const MAX_CONTROL_RAW_FRAME_LEN: usize = 1 + TAG_LEN + MAX_CONTROL_LEN + CRC_LEN;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_len_matches_leb128() {
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(16_383), 2);
        assert_eq!(varint_len(16_384), 3);
    }

    #[test]
    fn documented_sizes_hold() {
        // PROTOCOL.md quotes these numbers; update it if this test changes.
        assert_eq!(MAX_BODY_LEN, 780);
        assert_eq!(MAX_RAW_FRAME_LEN, 785);
        assert_eq!(MAX_FRAME_LEN, 790);
        assert_eq!(MAX_CONTROL_RAW_FRAME_LEN, 16);
    }
}

//! Frames: how one [`Message`] travels over a byte stream.
//!
//! ```text
//! raw frame:   [version: u8][postcard body: 1..=MAX_BODY_LEN][crc32c(version ++ body): u32 LE]
//! on the wire: COBS(raw frame) 0x00
//! ```
//!
//! The decoder checks the CRC before the version, so a damaged frame is
//! reported as damaged rather than as coming from an unknown version. Every
//! future version keeps this envelope (version first, CRC-32C last) so that
//! peers can always tell the two apart.

use crate::cobs;
use crate::crc::crc32c;
use crate::limits::{CRC_LEN, MAX_RAW_FRAME_LEN, PROTOCOL_VERSION};
use crate::message::Message;

/// Byte that ends every frame, and that COBS removes from inside frames.
pub const DELIMITER: u8 = 0x00;

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The output buffer cannot hold the frame. A buffer of
    /// [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN) bytes always can.
    #[error("frame does not fit in a {capacity}-byte buffer")]
    BufferTooSmall {
        /// Length of the buffer that was passed in.
        capacity: usize,
    },
    /// postcard refused the message; not expected for any valid [`Message`].
    #[error("message body does not serialize: {0}")]
    Body(postcard::Error),
}

/// Why the bytes between two delimiters did not yield a message. The decoder
/// has already resynchronised when it reports one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame grew past the decoder's buffer; its remaining bytes up to the
    /// next delimiter are dropped unread. Reported once per frame.
    #[error("frame exceeds {max_len} bytes; dropped up to the next delimiter")]
    Oversize {
        /// The decoder's buffer size.
        max_len: usize,
    },
    /// A delimiter arrived inside a COBS block: bytes were lost, or this was
    /// the tail of a frame whose start was lost.
    #[error("frame ended {missing} bytes short of its last COBS block")]
    Cobs {
        /// Bytes the last code byte promised that never came.
        missing: u8,
    },
    /// Too short to hold a version byte and a CRC.
    #[error("frame of {len} bytes is too short for version byte and CRC")]
    TooShort {
        /// Decoded length of the frame.
        len: usize,
    },
    /// The frame was damaged on the line.
    #[error("CRC mismatch: frame carries {expected:#010x}, content hashes to {found:#010x}")]
    Crc {
        /// CRC stored at the end of the frame.
        expected: u32,
        /// CRC computed over the version byte and body.
        found: u32,
    },
    /// An intact frame from a peer speaking another protocol version.
    #[error("unsupported protocol version {found}; this build speaks {supported}")]
    UnsupportedVersion {
        /// Version byte of the frame.
        found: u8,
        /// [`PROTOCOL_VERSION`].
        supported: u8,
    },
    /// An intact frame of our version whose body is not a valid message: a
    /// peer bug, or a capacity mismatch between builds.
    #[error("message body does not decode: {0}")]
    Body(postcard::Error),
    /// The body decoded but did not use the whole frame.
    #[error("{count} unexpected bytes after the message body")]
    TrailingBytes {
        /// Bytes left over.
        count: usize,
    },
}

/// Encodes `message` as a complete frame, delimiter included, into `out` and
/// returns the frame's length.
///
/// Works in place: the raw frame is serialized near the front of `out` and
/// COBS-encoded over itself, so no second buffer is needed.
pub fn encode_frame(message: &Message, out: &mut [u8]) -> Result<usize, EncodeError> {
    let too_small = EncodeError::BufferTooSmall {
        capacity: out.len(),
    };
    // Reserve the delimiter, then the room COBS needs in front of the raw frame.
    let Some(room) = out.len().checked_sub(1) else {
        return Err(too_small);
    };
    let start = cobs::headroom(room);
    let Some(raw) = out.get_mut(start..room) else {
        return Err(too_small);
    };
    let raw_len = write_raw_frame(message, raw).map_err(|error| match error {
        postcard::Error::SerializeBufferFull => too_small,
        other => EncodeError::Body(other),
    })?;
    let encoded_len = cobs::encode_in_place(out, start, raw_len);
    out[encoded_len] = DELIMITER;
    Ok(encoded_len + 1)
}

/// Writes version, body and CRC to the front of `raw`; returns their length.
fn write_raw_frame(message: &Message, raw: &mut [u8]) -> Result<usize, postcard::Error> {
    let (version, rest) = raw
        .split_first_mut()
        .ok_or(postcard::Error::SerializeBufferFull)?;
    *version = PROTOCOL_VERSION;
    let body_len = postcard::to_slice(message, rest)?.len();
    let crc_at = 1 + body_len;
    let crc = crc32c(&raw[..crc_at]);
    raw.get_mut(crc_at..crc_at + CRC_LEN)
        .ok_or(postcard::Error::SerializeBufferFull)?
        .copy_from_slice(&crc.to_le_bytes());
    Ok(crc_at + CRC_LEN)
}

/// Checks and parses one raw (COBS-decoded) frame.
fn parse_raw_frame(raw: &[u8]) -> Result<Message, DecodeError> {
    if raw.len() < 1 + CRC_LEN {
        return Err(DecodeError::TooShort { len: raw.len() });
    }
    let (content, crc_bytes) = raw.split_at(raw.len() - CRC_LEN);
    let mut expected = [0u8; CRC_LEN];
    expected.copy_from_slice(crc_bytes);
    let expected = u32::from_le_bytes(expected);
    let found = crc32c(content);
    if expected != found {
        return Err(DecodeError::Crc { expected, found });
    }
    // `content` is at least one byte long: checked above.
    let (&version, body) = content
        .split_first()
        .ok_or(DecodeError::TooShort { len: raw.len() })?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: PROTOCOL_VERSION,
        });
    }
    let (message, rest) = postcard::take_from_bytes(body).map_err(DecodeError::Body)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { count: rest.len() });
    }
    Ok(message)
}

/// Streaming frame decoder with a fixed buffer of `N` decoded bytes.
///
/// Feed it whatever the line delivers, in chunks of any size. It stores only
/// decoded bytes, never more than `N`, and resynchronises at every `0x00`:
/// garbage, a lost byte or a frame too big for `N` costs at most the frame it
/// falls in (a lost delimiter merges, and so costs, two frames). Empty frames,
/// i.e. repeated delimiters, are ignored, so a sender may emit `0x00` before a
/// frame to cut off any noise that preceded it.
///
/// `N` defaults to [`MAX_RAW_FRAME_LEN`], enough for every message. Firmware
/// that only decodes gateway traffic can use
/// [`MAX_CONTROL_RAW_FRAME_LEN`](crate::MAX_CONTROL_RAW_FRAME_LEN).
#[derive(Debug, Clone)]
pub struct FrameDecoder<const N: usize = MAX_RAW_FRAME_LEN> {
    buf: [u8; N],
    len: usize,
    cobs: cobs::Decoder,
    /// Set once the current frame outgrew `buf`; cleared at the delimiter.
    discarding: bool,
}

impl<const N: usize> Default for FrameDecoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameDecoder<N> {
    /// A decoder that expects the start of a frame.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
            cobs: cobs::Decoder::new(),
            discarding: false,
        }
    }

    /// Consumes one byte; returns a message or an error when it completes (or,
    /// for [`DecodeError::Oversize`], overflows) a frame.
    pub fn feed(&mut self, byte: u8) -> Option<Result<Message, DecodeError>> {
        if byte == DELIMITER {
            return self.end_frame();
        }
        if self.discarding {
            return None;
        }
        let decoded = self.cobs.step(byte)?;
        if self.len == N {
            self.discarding = true;
            return Some(Err(DecodeError::Oversize { max_len: N }));
        }
        self.buf[self.len] = decoded;
        self.len += 1;
        None
    }

    /// Consumes a chunk, calling `on_event` for every message or error in it,
    /// in order.
    pub fn push(&mut self, bytes: &[u8], mut on_event: impl FnMut(Result<Message, DecodeError>)) {
        for &byte in bytes {
            if let Some(event) = self.feed(byte) {
                on_event(event);
            }
        }
    }

    /// Forgets any partial frame, e.g. after the serial port was reopened.
    pub fn reset(&mut self) {
        self.len = 0;
        self.cobs.finish();
        self.discarding = false;
    }

    fn end_frame(&mut self) -> Option<Result<Message, DecodeError>> {
        let idle = self.cobs.is_idle();
        let missing = self.cobs.finish();
        let len = core::mem::take(&mut self.len);
        if core::mem::take(&mut self.discarding) || idle {
            return None;
        }
        if missing > 0 {
            return Some(Err(DecodeError::Cobs { missing }));
        }
        Some(parse_raw_frame(&self.buf[..len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Ack, Heartbeat};
    use crate::MAX_FRAME_LEN;
    use std::vec::Vec;

    fn frame(message: &Message) -> Vec<u8> {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let len = encode_frame(message, &mut buf).expect("fits in MAX_FRAME_LEN");
        buf[..len].to_vec()
    }

    fn decode_all(bytes: &[u8]) -> Vec<Result<Message, DecodeError>> {
        let mut decoder: FrameDecoder = FrameDecoder::new();
        let mut events = Vec::new();
        decoder.push(bytes, |event| events.push(event));
        events
    }

    /// COBS-encodes an arbitrary raw frame, e.g. one with a bad version.
    fn wrap_raw(raw: &[u8]) -> Vec<u8> {
        let start = cobs::headroom(raw.len());
        let mut buf = std::vec![0u8; start + raw.len()];
        buf[start..].copy_from_slice(raw);
        let len = cobs::encode_in_place(&mut buf, start, raw.len());
        buf.truncate(len);
        buf.push(DELIMITER);
        buf
    }

    fn raw_with_crc(content: &[u8]) -> Vec<u8> {
        let mut raw = content.to_vec();
        raw.extend_from_slice(&crc32c(content).to_le_bytes());
        raw
    }

    #[test]
    fn ack_frame_has_the_documented_layout() {
        let bytes = frame(&Message::Ack(Ack {
            boot_epoch: 3,
            seq: 300,
        }));
        // version 1, tag 2, epoch 3, seq 300 = varint AC 02, then the CRC.
        let raw = raw_with_crc(&[0x01, 0x02, 0x03, 0xAC, 0x02]);
        assert_eq!(bytes, wrap_raw(&raw));
    }

    #[test]
    fn repeated_delimiters_are_ignored() {
        let message = Message::Heartbeat(Heartbeat { uptime_ms: 5 });
        let mut bytes = std::vec![0, 0, 0];
        bytes.extend(frame(&message));
        bytes.extend([0, 0]);
        assert_eq!(decode_all(&bytes), [Ok(message)]);
    }

    #[test]
    fn small_buffer_is_an_error_not_a_panic() {
        let message = Message::Ack(Ack {
            boot_epoch: 1,
            seq: 1,
        });
        let needed = frame(&message).len();
        for capacity in 0..needed {
            let mut buf = std::vec![0u8; capacity];
            assert_eq!(
                encode_frame(&message, &mut buf),
                Err(EncodeError::BufferTooSmall { capacity })
            );
        }
    }

    #[test]
    fn unknown_version_is_reported_after_the_crc_check() {
        let raw = raw_with_crc(&[0x02, 0x07]);
        assert_eq!(
            decode_all(&wrap_raw(&raw)),
            [Err(DecodeError::UnsupportedVersion {
                found: 2,
                supported: 1
            })]
        );
    }

    #[test]
    fn damaged_frame_is_a_crc_error() {
        let mut bytes = frame(&Message::HelloRequest);
        bytes[1] ^= 0x10;
        assert!(matches!(
            decode_all(&bytes)[..],
            [Err(DecodeError::Crc { .. })]
        ));
    }

    #[test]
    fn short_frame_is_too_short() {
        assert_eq!(
            decode_all(&wrap_raw(&[1, 2, 3])),
            [Err(DecodeError::TooShort { len: 3 })]
        );
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let raw = raw_with_crc(&[0x01, 0x07, 0x99]);
        assert_eq!(
            decode_all(&wrap_raw(&raw)),
            [Err(DecodeError::TrailingBytes { count: 1 })]
        );
    }

    #[test]
    fn unknown_message_tag_is_a_body_error() {
        let raw = raw_with_crc(&[0x01, 0x7F]);
        assert!(matches!(
            decode_all(&wrap_raw(&raw))[..],
            [Err(DecodeError::Body(_))]
        ));
    }

    #[test]
    fn errors_are_std_errors_with_messages() {
        fn assert_error<E: std::error::Error>(_: &E) {}
        let error = DecodeError::UnsupportedVersion {
            found: 9,
            supported: 1,
        };
        assert_error(&error);
        assert_eq!(
            std::format!("{error}"),
            "unsupported protocol version 9; this build speaks 1"
        );
        assert_error(&EncodeError::BufferTooSmall { capacity: 3 });
    }

    #[test]
    fn truncated_cobs_block_is_reported() {
        assert_eq!(
            decode_all(&[0x05, 0x11, 0x00]),
            [Err(DecodeError::Cobs { missing: 3 })]
        );
    }
}

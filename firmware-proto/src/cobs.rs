//! Consistent Overhead Byte Stuffing: removes every `0x00` from a frame so that
//! `0x00` can delimit frames on the wire.
//!
//! The encoder works in place so that [`encode_frame`](crate::encode_frame)
//! needs no second frame-sized buffer on a device's stack. The decoder is a
//! byte-at-a-time state machine so the frame decoder never stores encoded bytes.

/// Worst-case encoded length of `len` raw bytes, without the delimiter: one code
/// byte to start, plus one per full run of 254 non-zero bytes.
pub(crate) const fn max_encoded_len(len: usize) -> usize {
    len + headroom(len)
}

/// How far in front of `len` raw bytes the in-place encoder must be able to
/// write (see [`encode_in_place`]).
pub(crate) const fn headroom(len: usize) -> usize {
    1 + len / 254
}

/// Encodes `buf[start..start + len]` into `buf[..]`, returning the encoded length.
///
/// The output is never longer than [`max_encoded_len`]`(len)`, and it runs at
/// most `headroom(len)` bytes ahead of the input: the output index before a
/// data byte is written is `1 + consumed + runs`, where `runs` counts finished
/// 254-byte runs. So with `start >= headroom(len)` every write lands on a byte
/// that has already been read.
pub(crate) fn encode_in_place(buf: &mut [u8], start: usize, len: usize) -> usize {
    debug_assert!(start >= headroom(len));
    let mut code_at = 0;
    let mut out = 1;
    let mut code: u8 = 1;
    for read in start..start + len {
        let byte = buf[read];
        if byte != 0 {
            buf[out] = byte;
            out += 1;
            code += 1;
        }
        if byte == 0 || code == 0xFF {
            buf[code_at] = code;
            code_at = out;
            out += 1;
            code = 1;
        }
    }
    buf[code_at] = code;
    out
}

/// Streaming decoder for the bytes between two delimiters.
#[derive(Debug, Clone)]
pub(crate) struct Decoder {
    /// Data bytes left in the current block.
    remaining: u8,
    /// Whether the current block, once complete, stands for a `0x00`. Blocks
    /// with code `0xFF` do not; neither does the last block of a frame.
    zero_follows: bool,
    /// Whether any byte of the current frame has arrived.
    started: bool,
}

impl Decoder {
    /// A decoder at the start of a frame.
    pub(crate) const fn new() -> Self {
        Self {
            remaining: 0,
            zero_follows: false,
            started: false,
        }
    }

    /// Consumes one non-delimiter byte and returns the decoded byte it
    /// produces, if any.
    pub(crate) fn step(&mut self, byte: u8) -> Option<u8> {
        debug_assert_ne!(byte, 0, "the caller handles delimiters");
        self.started = true;
        if self.remaining > 0 {
            self.remaining -= 1;
            return Some(byte);
        }
        // A code byte: it ends the previous block and says how long this one is.
        let implied_zero = self.zero_follows.then_some(0);
        self.zero_follows = byte != 0xFF;
        self.remaining = byte - 1;
        implied_zero
    }

    /// True if no byte has arrived since the last delimiter.
    pub(crate) fn is_idle(&self) -> bool {
        !self.started
    }

    /// Ends the frame at a delimiter. Returns the number of data bytes the last
    /// code byte promised but that never arrived (0 for a well-formed frame),
    /// and resets for the next frame.
    pub(crate) fn finish(&mut self) -> u8 {
        let missing = self.remaining;
        *self = Self::new();
        missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    /// Out-of-place textbook encoder, to check the in-place one against.
    fn reference_encode(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut block = Vec::new();
        for &byte in data {
            if byte == 0 {
                out.push(block.len() as u8 + 1);
                out.append(&mut block);
            } else {
                block.push(byte);
                if block.len() == 254 {
                    out.push(0xFF);
                    out.append(&mut block);
                }
            }
        }
        out.push(block.len() as u8 + 1);
        out.append(&mut block);
        out
    }

    fn encode(data: &[u8]) -> Vec<u8> {
        let start = headroom(data.len());
        let mut buf = std::vec![0xAA; start + data.len()];
        buf[start..].copy_from_slice(data);
        let len = encode_in_place(&mut buf, start, data.len());
        buf.truncate(len);
        buf
    }

    fn decode(encoded: &[u8]) -> (Vec<u8>, u8) {
        let mut decoder = Decoder::new();
        let data = encoded.iter().filter_map(|&b| decoder.step(b)).collect();
        (data, decoder.finish())
    }

    #[test]
    fn known_vectors() {
        assert_eq!(encode(&[]), [0x01]);
        assert_eq!(encode(&[0x00]), [0x01, 0x01]);
        assert_eq!(
            encode(&[0x11, 0x22, 0x00, 0x33]),
            [0x03, 0x11, 0x22, 0x02, 0x33]
        );
        assert_eq!(encode(&[0x11, 0x00, 0x00]), [0x02, 0x11, 0x01, 0x01]);
    }

    #[test]
    fn a_full_run_gets_one_extra_code_byte() {
        let data = [0x42u8; 254];
        let encoded = encode(&data);
        assert_eq!(encoded.len(), max_encoded_len(254));
        assert_eq!(decode(&encoded), (data.to_vec(), 0));
    }

    #[test]
    fn truncated_block_is_reported() {
        let (_, missing) = decode(&[0x05, 0x11, 0x22]);
        assert_eq!(missing, 2);
    }

    proptest! {
        #[test]
        fn in_place_matches_reference(data in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let encoded = encode(&data);
            prop_assert_eq!(&encoded, &reference_encode(&data));
            prop_assert!(encoded.len() <= max_encoded_len(data.len()));
            prop_assert!(!encoded.contains(&0));
        }

        #[test]
        fn round_trips(data in proptest::collection::vec(any::<u8>(), 0..1200)) {
            prop_assert_eq!(decode(&encode(&data)), (data, 0));
        }

        #[test]
        fn zero_heavy_data_round_trips(data in proptest::collection::vec(0u8..3, 0..600)) {
            prop_assert_eq!(decode(&encode(&data)), (data, 0));
        }
    }
}

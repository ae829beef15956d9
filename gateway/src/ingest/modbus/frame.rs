//! Read requests and their responses on the wire: RTU (unit, PDU, CRC-16)
//! and Modbus TCP (MBAP header, PDU). Only the four read functions.
//!
//! Decoding takes the bytes received so far and says whether a whole
//! response is there, checking lengths before trusting them: a response's
//! byte count must match what was asked for, so a damaged length byte cannot
//! make the reader wait for (or allocate) more than one frame.

/// What a device answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The data bytes (registers big-endian, or packed bits).
    Data(Vec<u8>),
    /// An exception response and its code (2: illegal data address, ...).
    Exception(u8),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("CRC mismatch: computed {computed:#06x}, frame carries {found:#06x}")]
    Crc { computed: u16, found: u16 },
    #[error("response has {found} data bytes, {expected} were asked for")]
    ByteCount { expected: usize, found: usize },
    #[error("MBAP length {0} is not a read response")]
    Length(u16),
    #[error("MBAP header carries protocol {protocol} and unit {unit}, not protocol 0 and the unit asked")]
    Header { protocol: u16, unit: u8 },
    #[error("response has function code {found:#04x}, {expected:#04x} was asked for")]
    Function { expected: u8, found: u8 },
}

/// Progress of decoding a response.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Not yet a whole response.
    Partial,
    /// `skip` leading bytes were not a response to this request (line noise,
    /// or a stale answer to an earlier one); drop them and decode again.
    Skip(usize),
    /// A response, and the bytes it took.
    Done(Answer, usize),
}

/// The request PDU: function, start, count (big-endian).
fn pdu(function: u8, start: u16, count: u16) -> [u8; 5] {
    let [s0, s1] = start.to_be_bytes();
    let [c0, c1] = count.to_be_bytes();
    [function, s0, s1, c0, c1]
}

pub fn rtu_request(unit: u8, function: u8, start: u16, count: u16) -> Vec<u8> {
    let mut frame = vec![unit];
    frame.extend_from_slice(&pdu(function, start, count));
    let crc = crc16(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame
}

pub fn tcp_request(transaction: u16, unit: u8, function: u8, start: u16, count: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(12);
    frame.extend_from_slice(&transaction.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 6, unit]);
    frame.extend_from_slice(&pdu(function, start, count));
    frame
}

/// Data bytes of a read response for `count` items of `function`.
pub fn data_len(function: u8, count: u16) -> usize {
    if function <= 2 {
        usize::from(count).div_ceil(8)
    } else {
        2 * usize::from(count)
    }
}

/// Decodes an RTU response to (`unit`, `function`, `expected` data bytes).
/// Leading bytes that cannot start that response are skipped (resync).
pub fn rtu_decode(
    buf: &[u8],
    unit: u8,
    function: u8,
    expected: usize,
) -> Result<Decoded, FrameError> {
    if buf.is_empty() {
        return Ok(Decoded::Partial);
    }
    if buf[0] != unit {
        return Ok(Decoded::Skip(1));
    }
    let Some(&code) = buf.get(1) else {
        return Ok(Decoded::Partial);
    };
    let len = if code == function | 0x80 {
        5
    } else if code == function {
        5 + expected
    } else {
        return Ok(Decoded::Skip(1));
    };
    if code == function && buf.len() >= 3 && usize::from(buf[2]) != expected {
        return Ok(Decoded::Skip(1));
    }
    if buf.len() < len {
        return Ok(Decoded::Partial);
    }
    let computed = crc16(&buf[..len - 2]);
    let found = u16::from_le_bytes([buf[len - 2], buf[len - 1]]);
    if computed != found {
        return Err(FrameError::Crc { computed, found });
    }
    let answer = if code == function {
        Answer::Data(buf[3..len - 2].to_vec())
    } else {
        Answer::Exception(buf[2])
    };
    Ok(Decoded::Done(answer, len))
}

/// Decodes a Modbus TCP response to `transaction` (for `unit`); responses
/// to other (earlier, timed-out) transactions are skipped whole. A response
/// to this transaction with another protocol id or unit, or another function
/// code, is a bad frame.
pub fn tcp_decode(
    buf: &[u8],
    transaction: u16,
    unit: u8,
    function: u8,
    expected: usize,
) -> Result<Decoded, FrameError> {
    if buf.len() < 8 {
        return Ok(Decoded::Partial);
    }
    let length = u16::from_be_bytes([buf[4], buf[5]]);
    if !(3..=254).contains(&length) {
        return Err(FrameError::Length(length));
    }
    let total = 6 + usize::from(length);
    if buf.len() < total {
        return Ok(Decoded::Partial);
    }
    if u16::from_be_bytes([buf[0], buf[1]]) != transaction {
        return Ok(Decoded::Skip(total));
    }
    let protocol = u16::from_be_bytes([buf[2], buf[3]]);
    if protocol != 0 || buf[6] != unit {
        return Err(FrameError::Header {
            protocol,
            unit: buf[6],
        });
    }
    let code = buf[7];
    if code == function | 0x80 {
        return Ok(Decoded::Done(Answer::Exception(buf[8]), total));
    }
    if code != function {
        return Err(FrameError::Function {
            expected: function,
            found: code,
        });
    }
    let data = &buf[9.min(total)..total];
    if usize::from(buf[8]) != data.len() || data.len() != expected {
        return Err(FrameError::ByteCount {
            expected,
            found: data.len(),
        });
    }
    Ok(Decoded::Done(Answer::Data(data.to_vec()), total))
}

/// CRC-16/MODBUS (reflected 0xA001, initial 0xFFFF), sent low byte first.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// A response frame as a device sends it (tests and the bench's simulator).
pub fn rtu_response(unit: u8, function: u8, answer: &Answer) -> Vec<u8> {
    let mut frame = vec![unit];
    match answer {
        Answer::Data(data) => {
            frame.push(function);
            // Callers keep data within one frame (at most 250 bytes).
            frame.push(data.len() as u8);
            frame.extend_from_slice(data);
        }
        Answer::Exception(code) => frame.extend_from_slice(&[function | 0x80, *code]),
    }
    let crc = crc16(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crc_matches_the_specification_example() {
        // Read holding registers, unit 1, start 0, count 10: CRC C5CD (sent CD C5).
        assert_eq!(
            rtu_request(1, 3, 0, 10),
            vec![1, 3, 0, 0, 0, 10, 0xC5, 0xCD]
        );
    }

    #[test]
    fn exceptions_decode_with_their_code_and_damage_is_a_crc_error() {
        let frame = rtu_response(7, 3, &Answer::Exception(2));
        assert_eq!(
            rtu_decode(&frame, 7, 3, 4),
            Ok(Decoded::Done(Answer::Exception(2), 5))
        );
        let mut bad = rtu_response(7, 3, &Answer::Data(vec![1, 2, 3, 4]));
        bad[4] ^= 0x40;
        assert!(matches!(
            rtu_decode(&bad, 7, 3, 4),
            Err(FrameError::Crc { .. })
        ));
    }

    #[test]
    fn stale_tcp_answers_are_skipped_and_bad_lengths_refused() {
        let mut buf = vec![0, 9, 0, 0, 0, 5, 1, 3, 2, 0, 1];
        buf.extend_from_slice(&[0, 10, 0, 0, 0, 5, 1, 3, 2, 0, 7]);
        assert_eq!(tcp_decode(&buf, 10, 1, 3, 2), Ok(Decoded::Skip(11)));
        assert_eq!(
            tcp_decode(&buf[11..], 10, 1, 3, 2),
            Ok(Decoded::Done(Answer::Data(vec![0, 7]), 11))
        );
        let huge = [0, 10, 0, 0, 0xFF, 0xFF, 1, 3];
        assert_eq!(
            tcp_decode(&huge, 10, 1, 3, 2),
            Err(FrameError::Length(0xFFFF))
        );
    }

    #[test]
    fn tcp_answers_for_another_unit_protocol_or_function_are_bad_frames() {
        let good = [0, 10, 0, 0, 0, 5, 1, 3, 2, 0, 7];
        assert_eq!(
            tcp_decode(&good, 10, 1, 3, 2),
            Ok(Decoded::Done(Answer::Data(vec![0, 7]), 11))
        );
        let mut unit = good;
        unit[6] = 2;
        assert_eq!(
            tcp_decode(&unit, 10, 1, 3, 2),
            Err(FrameError::Header {
                protocol: 0,
                unit: 2
            })
        );
        let mut protocol = good;
        protocol[3] = 1;
        assert_eq!(
            tcp_decode(&protocol, 10, 1, 3, 2),
            Err(FrameError::Header {
                protocol: 1,
                unit: 1
            })
        );
        let mut function = good;
        function[7] = 4;
        assert_eq!(
            tcp_decode(&function, 10, 1, 3, 2),
            Err(FrameError::Function {
                expected: 3,
                found: 4
            })
        );
        // A wrong byte count is still a byte-count error.
        let short = [0, 10, 0, 0, 0, 5, 1, 3, 2, 0, 7];
        assert_eq!(
            tcp_decode(&short, 10, 1, 3, 4),
            Err(FrameError::ByteCount {
                expected: 4,
                found: 2
            })
        );
    }

    /// Decodes the way the client does: skip, or finish.
    fn decode_all(buf: &[u8], unit: u8, expected: usize) -> Option<Result<Answer, FrameError>> {
        let mut at = 0;
        loop {
            match rtu_decode(&buf[at..], unit, 3, expected) {
                Ok(Decoded::Skip(n)) => at += n,
                Ok(Decoded::Partial) => return None,
                Ok(Decoded::Done(answer, _)) => return Some(Ok(answer)),
                Err(e) => return Some(Err(e)),
            }
        }
    }

    proptest! {
        #[test]
        fn responses_round_trip_after_noise_without_the_unit_id(
            unit in 1u8..=247,
            data in proptest::collection::vec(any::<u8>(), 0..60).prop_map(|mut d| { d.truncate(d.len() / 2 * 2); d }),
            noise in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let noise: Vec<u8> = noise.into_iter().filter(|&b| b != unit).collect();
            let mut buf = noise;
            buf.extend(rtu_response(unit, 3, &Answer::Data(data.clone())));
            prop_assert_eq!(decode_all(&buf, unit, data.len()), Some(Ok(Answer::Data(data))));
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_never_claim_more_than_a_frame(
            buf in proptest::collection::vec(any::<u8>(), 0..300), expected in 0usize..250,
        ) {
            if let Ok(Decoded::Done(_, n) | Decoded::Skip(n)) = rtu_decode(&buf, 1, 3, expected) {
                prop_assert!(n <= buf.len() && n <= 255);
            }
            if let Ok(Decoded::Done(_, n) | Decoded::Skip(n)) = tcp_decode(&buf, 1, 1, 3, expected) {
                prop_assert!(n <= buf.len() && n <= 260);
            }
        }
    }
}

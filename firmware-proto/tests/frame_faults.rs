//! A noisy line: garbage, lost bytes, flipped bytes and oversize frames cost at
//! most the frames they touch, and never produce a message nobody sent.

mod common;

use common::{decode_all, frame, maximal_readings, message, same_message};
use firmware_proto::{DecodeError, FrameDecoder, Heartbeat, Message, MAX_RAW_FRAME_LEN};
use proptest::collection::vec;
use proptest::prelude::*;

/// Indices into `sent` of the decoded messages, asserting that each decoded
/// message is one that was sent, in order, none twice.
fn match_in_order(sent: &[Message], events: &[Result<Message, DecodeError>]) -> Vec<usize> {
    let mut next = 0;
    let mut matched = Vec::new();
    for received in events.iter().flatten() {
        let offset = sent[next..]
            .iter()
            .position(|candidate| same_message(candidate, received))
            .unwrap_or_else(|| panic!("decoded a message that was not sent: {received:?}"));
        matched.push(next + offset);
        next += offset + 1;
    }
    matched
}

/// Concatenated frames and, for each, the range of its bytes.
fn stream(messages: &[Message]) -> (Vec<u8>, Vec<std::ops::Range<usize>>) {
    let mut bytes = Vec::new();
    let mut ranges = Vec::new();
    for message in messages {
        let start = bytes.len();
        bytes.extend(frame(message));
        ranges.push(start..bytes.len());
    }
    (bytes, ranges)
}

/// Distinct messages, so that a decoded message says which frame it came from.
fn distinct_messages(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Message>> {
    vec(message(), len).prop_filter("messages must be distinct", |messages| {
        let frames: std::collections::HashSet<Vec<u8>> = messages.iter().map(frame).collect();
        frames.len() == messages.len()
    })
}

fn heartbeat(uptime_ms: u64) -> Message {
    Message::Heartbeat(Heartbeat { uptime_ms })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Garbage (zeros included) before and between frames. Frames not
    /// directly preceded by garbage are always decoded; a frame right after
    /// garbage may be lost with it, unless the sender put a delimiter first.
    #[test]
    fn garbage_never_yields_a_wrong_message(
        sent in distinct_messages(1..8),
        noise in vec((vec(any::<u8>(), 0..40), any::<bool>()), 8),
    ) {
        let mut bytes = Vec::new();
        let mut must_decode = Vec::new();
        for (index, (message, (garbage, leading_delimiter))) in sent.iter().zip(&noise).enumerate() {
            bytes.extend(garbage);
            if *leading_delimiter {
                bytes.push(0);
            }
            bytes.extend(frame(message));
            if garbage.is_empty() || *leading_delimiter {
                must_decode.push(index);
            }
        }
        let matched = match_in_order(&sent, &decode_all(&bytes));
        for index in must_decode {
            prop_assert!(matched.contains(&index), "frame {} was lost", index);
        }
    }

    /// One byte lost: only the frame it belonged to is lost, or, if it was
    /// that frame's delimiter, that frame and the next.
    #[test]
    fn a_lost_byte_costs_at_most_its_frame(
        messages in distinct_messages(1..6),
        position in any::<prop::sample::Index>(),
    ) {
        let (mut bytes, ranges) = stream(&messages);
        let lost = position.index(bytes.len());
        bytes.remove(lost);
        let hit = ranges.iter().position(|r| r.contains(&lost)).expect("in some frame");
        let delimiter_lost = lost == ranges[hit].end - 1;
        let matched = match_in_order(&messages, &decode_all(&bytes));
        for index in 0..messages.len() {
            let may_lose = index == hit || (delimiter_lost && index == hit + 1);
            prop_assert!(may_lose || matched.contains(&index), "frame {} was lost", index);
        }
    }

    /// One byte replaced: never a wrong message; the same frames at risk as
    /// for a lost byte.
    #[test]
    fn a_corrupted_byte_costs_at_most_its_frame(
        messages in distinct_messages(1..6),
        position in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let (mut bytes, ranges) = stream(&messages);
        let at = position.index(bytes.len());
        bytes[at] ^= flip;
        let hit = ranges.iter().position(|r| r.contains(&at)).expect("in some frame");
        let delimiter_hit = at == ranges[hit].end - 1;
        let matched = match_in_order(&messages, &decode_all(&bytes));
        prop_assert!(!matched.contains(&hit), "a corrupted frame was accepted");
        for index in 0..messages.len() {
            let may_lose = index == hit || (delimiter_hit && index == hit + 1);
            prop_assert!(may_lose || matched.contains(&index), "frame {} was lost", index);
        }
    }

    /// Random noise alone decodes to errors only (a CRC-32 collision aside),
    /// and the decoder is in sync again right after it.
    #[test]
    fn noise_then_a_frame(noise in vec(any::<u8>(), 0..2000)) {
        let mut bytes = noise;
        bytes.push(0);
        bytes.extend(frame(&heartbeat(9)));
        let events = decode_all(&bytes);
        let (last, errors) = events.split_last().expect("at least the heartbeat");
        prop_assert!(errors.iter().all(Result::is_err));
        prop_assert_eq!(last, &Ok(heartbeat(9)));
    }
}

#[test]
fn oversize_frame_is_reported_once_and_the_next_frame_decodes() {
    let mut bytes = frame(&maximal_readings());
    bytes.extend(frame(&heartbeat(1)));
    let mut decoder: FrameDecoder<64> = FrameDecoder::new();
    let mut events = Vec::new();
    decoder.push(&bytes, |event| events.push(event));
    assert_eq!(
        events,
        [Err(DecodeError::Oversize { max_len: 64 }), Ok(heartbeat(1))]
    );
}

#[test]
fn endless_garbage_without_delimiter_is_one_oversize_error() {
    let mut bytes = vec![0x55; 10 * MAX_RAW_FRAME_LEN];
    bytes.push(0);
    bytes.extend(frame(&heartbeat(2)));
    assert_eq!(
        decode_all(&bytes),
        [
            Err(DecodeError::Oversize {
                max_len: MAX_RAW_FRAME_LEN
            }),
            Ok(heartbeat(2))
        ]
    );
}

#[test]
fn joining_mid_frame_loses_only_that_frame() {
    let first = frame(&maximal_readings());
    let mut bytes = first[first.len() / 2..].to_vec();
    bytes.extend(frame(&heartbeat(3)));
    let events = decode_all(&bytes);
    assert_eq!(events.len(), 2);
    assert!(events[0].is_err());
    assert_eq!(events[1], Ok(heartbeat(3)));
}

#[test]
fn reset_drops_a_partial_frame() {
    let bytes = frame(&heartbeat(4));
    let mut decoder: FrameDecoder = FrameDecoder::new();
    decoder.push(&bytes[..3], |event| panic!("unexpected {event:?}"));
    decoder.reset();
    let mut events = Vec::new();
    decoder.push(&bytes, |event| events.push(event));
    assert_eq!(events, [Ok(heartbeat(4))]);
}

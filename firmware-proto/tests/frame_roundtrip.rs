//! Every message survives encode_frame -> FrameDecoder, however the bytes are
//! chunked on the way.

mod common;

use common::{decode_all, decode_chunked, frame, maximal_readings, message, same_message};
use firmware_proto::{
    encode_frame, EncodeError, FrameDecoder, Message, MAX_BODY_LEN, MAX_FRAME_LEN,
    MAX_RAW_FRAME_LEN,
};
use proptest::collection::vec;
use proptest::prelude::*;

fn assert_round_trip(sent: &[Message], events: Vec<Result<Message, firmware_proto::DecodeError>>) {
    assert_eq!(events.len(), sent.len(), "one event per frame: {events:?}");
    for (sent, event) in sent.iter().zip(events) {
        let received = event.expect("an intact frame decodes");
        assert!(
            same_message(sent, &received),
            "{sent:?} came back as {received:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_round_trips_in_random_chunks(
        message in message(),
        chunk_sizes in vec(1usize..40, 1..8),
    ) {
        let bytes = frame(&message);
        prop_assert!(bytes.len() <= MAX_FRAME_LEN);
        prop_assert_eq!(bytes.iter().filter(|&&b| b == 0).count(), 1, "only the delimiter is 0x00");
        assert_round_trip(&[message], decode_chunked(&bytes, &chunk_sizes));
    }

    #[test]
    fn message_streams_round_trip_in_random_chunks(
        messages in vec(message(), 0..12),
        chunk_sizes in vec(1usize..200, 1..8),
    ) {
        let bytes: Vec<u8> = messages.iter().flat_map(frame).collect();
        assert_round_trip(&messages, decode_chunked(&bytes, &chunk_sizes));
    }

    #[test]
    fn feeding_one_byte_at_a_time_round_trips(messages in vec(message(), 1..6)) {
        let bytes: Vec<u8> = messages.iter().flat_map(frame).collect();
        let mut decoder: FrameDecoder = FrameDecoder::new();
        let events: Vec<_> = bytes.iter().filter_map(|&b| decoder.feed(b)).collect();
        assert_round_trip(&messages, events);
    }
}

#[test]
fn maximal_message_hits_the_computed_bounds_exactly() {
    let message = maximal_readings();
    let mut scratch = [0u8; 2 * MAX_BODY_LEN];
    let body = postcard::to_slice(&message, &mut scratch)
        .expect("fits")
        .len();
    assert_eq!(body, MAX_BODY_LEN, "limits.rs disagrees with postcard");
    let bytes = frame(&message);
    assert!(
        bytes.len() <= MAX_FRAME_LEN,
        "{} > {MAX_FRAME_LEN}",
        bytes.len()
    );
    assert_round_trip(&[message], decode_all(&bytes));
}

#[test]
fn maximal_message_fits_a_decoder_of_max_raw_frame_len_but_not_one_less() {
    let bytes = frame(&maximal_readings());
    let mut exact: FrameDecoder<MAX_RAW_FRAME_LEN> = FrameDecoder::new();
    let mut events = Vec::new();
    exact.push(&bytes, |event| events.push(event));
    assert!(matches!(events[..], [Ok(_)]));

    let mut short: FrameDecoder<{ MAX_RAW_FRAME_LEN - 1 }> = FrameDecoder::new();
    let mut events = Vec::new();
    short.push(&bytes, |event| events.push(event));
    assert_eq!(
        events,
        [Err(firmware_proto::DecodeError::Oversize {
            max_len: MAX_RAW_FRAME_LEN - 1
        })]
    );
}

#[test]
fn encoder_reports_a_short_buffer() {
    let message = maximal_readings();
    let mut buf = [0u8; 200];
    assert_eq!(
        encode_frame(&message, &mut buf),
        Err(EncodeError::BufferTooSmall { capacity: 200 })
    );
}

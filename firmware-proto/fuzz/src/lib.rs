//! Checks behind the fuzz targets. Kept apart from the `fuzz_target!` wrappers
//! so that firmware-proto's own test suite (`tests/fuzz_harness.rs`) runs them
//! on the seed corpus and on random input, without libFuzzer.

use firmware_proto::{encode_frame, DecodeError, FrameDecoder, Message, MAX_FRAME_LEN};

/// Feeds `data` to the decoder byte by byte and in chunks whose sizes are
/// derived from `data` itself, and checks that:
/// - neither panics, and both report the same events: chunking is invisible;
/// - every accepted message re-encodes to a frame that decodes to itself;
/// - a decoder with a tiny buffer survives the same input.
pub fn check_frame_decoder(data: &[u8]) {
    let bytewise = decode_bytewise(data);
    let chunked = decode_in_chunks(data);
    assert_eq!(bytewise, chunked, "chunking changed the decoded events");
    for frame in bytewise.iter().flatten() {
        assert_eq!(
            decode_bytewise(frame),
            [Ok(frame.clone())],
            "an accepted message does not survive re-encoding"
        );
    }
    let mut tiny: FrameDecoder<8> = FrameDecoder::new();
    tiny.push(data, |_| {});
}

/// Decoded events, with each message replaced by its re-encoded frame so that
/// events compare bit-exactly (a NaN float is not equal to itself).
type Events = Vec<Result<Vec<u8>, DecodeError>>;

fn decode_bytewise(data: &[u8]) -> Events {
    let mut decoder: FrameDecoder = FrameDecoder::new();
    data.iter()
        .filter_map(|&byte| decoder.feed(byte))
        .map(to_frame)
        .collect()
}

fn decode_in_chunks(data: &[u8]) -> Events {
    let mut decoder: FrameDecoder = FrameDecoder::new();
    let mut events = Vec::new();
    let mut state = u32::from(data.first().copied().unwrap_or(0)) | 1;
    let mut rest = data;
    while !rest.is_empty() {
        // xorshift32: cheap, deterministic chunk sizes of 1..=64 bytes.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = (state % 64) as usize + 1;
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        decoder.push(chunk, |event| events.push(to_frame(event)));
        rest = tail;
    }
    events
}

fn to_frame(event: Result<Message, DecodeError>) -> Result<Vec<u8>, DecodeError> {
    event.map(|message| {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let len = encode_frame(&message, &mut buf).expect("a decoded message re-encodes");
        buf[..len].to_vec()
    })
}

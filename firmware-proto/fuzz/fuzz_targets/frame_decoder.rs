//! Arbitrary bytes, in arbitrary chunks, into the frame decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    firmware_proto_fuzz::check_frame_decoder(data);
});

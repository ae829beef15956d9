#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tidewell::fuzzing::segment_recovery(data));

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tidewell::fuzzing::mqtt_ws_stream(data));

//! See `tower::fuzzing::request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tower::fuzzing::request(data));

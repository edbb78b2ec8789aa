//! See `tower::fuzzing::mp3`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tower::fuzzing::mp3(data));

//! See `tower::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tower::fuzzing::config(data));

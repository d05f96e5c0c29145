//! Fuzz target: see `pvrfs::fuzzing::serve_tokens`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvrfs::fuzzing::serve_tokens(data));

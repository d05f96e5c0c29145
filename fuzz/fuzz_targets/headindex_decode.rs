//! Fuzz target: see `pvrfs::fuzzing::headindex_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvrfs::fuzzing::headindex_decode(data));

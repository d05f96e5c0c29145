//! Fuzz target: see `pvrfs::fuzzing::journal_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvrfs::fuzzing::journal_decode(data));

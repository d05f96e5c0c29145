//! Fuzz target: see `pvrfs::fuzzing::state_round_trip`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvrfs::fuzzing::state_round_trip(data));

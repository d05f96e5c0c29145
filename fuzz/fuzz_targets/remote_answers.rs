//! Fuzz target: see `pvrfs::fuzzing::remote_answers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvrfs::fuzzing::remote_answers(data));

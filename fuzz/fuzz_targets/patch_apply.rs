//! Fuzz target: see `pvrfs::fuzzing::patch_apply`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvrfs::fuzzing::patch_apply(data));

//! Fuzz target: see `pvrfs::fuzzing::tar_import`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvrfs::fuzzing::tar_import(data));

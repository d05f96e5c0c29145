//! Fuzz target: see `pvrfs::fuzzing::s3_listing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvrfs::fuzzing::s3_listing(data));

//! Fuzz target: see `pvrfs::fuzzing::statcache_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvrfs::fuzzing::statcache_decode(data));

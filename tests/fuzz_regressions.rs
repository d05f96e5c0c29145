//! The fuzz targets' seeds and every input that once made a target fail, replayed through the
//! same functions (`pvrfs::fuzzing`) on every test run: a bug a fuzzer found stays fixed, and
//! the targets keep working without nightly or cargo-fuzz (`scripts/fuzz` runs the fuzzer).
//!
//! Layout: `fuzz/seeds/<target>/*` (starting corpus) and `fuzz/regressions/<target>/*` (crashes
//! found, each named after what it found).

use std::path::Path;

#[test]
fn fuzz_seeds_and_regressions_pass_every_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut ran = 0;
    for (target, run) in pvrfs::fuzzing::TARGETS {
        for kind in ["seeds", "regressions"] {
            let dir = root.join(kind).join(target);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            files.sort();
            for file in files.iter().filter(|f| !f.ends_with(".keep")) {
                let data = std::fs::read(file).unwrap();
                let outcome = std::panic::catch_unwind(|| run(&data));
                assert!(outcome.is_ok(), "{target} fails on {}", file.display());
                ran += 1;
            }
        }
        // The empty input, and a few bytes of every kind.
        run(b"");
        run(&(0u8..=255).collect::<Vec<_>>());
    }
    assert!(
        ran >= 15,
        "only {ran} inputs found under {}",
        root.display()
    );
}

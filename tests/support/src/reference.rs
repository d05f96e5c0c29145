//! The reference `pvr` (Pantacor's command, a static build kept beside the checkout in
//! `../shared/tools/pvr/`), for interoperability tests. Tests that need it skip with a message
//! where it is absent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `run-pvr` wrapper of the reference pvr (scratch home, no network, a timeout):
/// `$PVRFS_REFERENCE_PVR`, else `../shared/tools/pvr/run-pvr` beside the checkout. `None`, with
/// a message naming the test, when neither exists.
pub fn reference_pvr(test: &str) -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("PVRFS_REFERENCE_PVR").map(PathBuf::from),
        Some(crate::checkout_dir().join("../shared/tools/pvr/run-pvr")),
    ];
    let found = candidates.into_iter().flatten().find(|p| p.exists());
    if found.is_none() {
        eprintln!(
            "SKIPPED {test}: the reference pvr is absent (set PVRFS_REFERENCE_PVR to its run-pvr)"
        );
    }
    found
}

/// Run the reference pvr with `args` in `dir`, with its own scratch home under `home`.
pub fn run_pvr(pvr: &Path, dir: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new(pvr)
        .args(args)
        .current_dir(dir)
        .env("PVR_HOME", home)
        .output()
        .expect("run the reference pvr")
}

//! The readahead window of a read-only mount whose blob data comes through the daemon.
//!
//! The kernel reads a FUSE file into its page cache in READ requests no larger than the mount's
//! readahead window (nor `max_pages`, 1 MiB), and keeps about one window of them in flight. A
//! FUSE mount's window starts at the kernel default of 128 KiB, and INIT can only lower it
//! (`max_readahead`); it can be raised only from outside, through
//! `/sys/class/bdi/MAJ:MIN/read_ahead_kb` of the mount's device, which root may write. At
//! 128 KiB a 1 GiB blob costs 8192 round trips with one request in flight at a time; with a
//! window of several MiB it is read in 1 MiB requests, several in flight, so the daemon's
//! threads and the disk under the object store are kept busy together (figures: the "Reads"
//! section of docs/SEMANTICS.md, `scripts/bench mount`).
//!
//! Without the right to write the knob (a mount by an ordinary user through fusermount3) the
//! window stays at 128 KiB: everything works, cold blob reads are slower. The window belongs
//! to the mount's own device and goes away with it. `PVRFS_READAHEAD_KB` overrides the size
//! (measurement; 0 leaves the kernel's default).

use super::mounts::mount_points;
use std::path::Path;

/// The window asked for, in KiB.
pub const READAHEAD_KB: u32 = 4096;

/// Raise the readahead window of the FUSE mount at `mnt` (a canonical path, freshly mounted)
/// to `READAHEAD_KB`, when allowed; logs what it did.
pub fn widen(mnt: &Path) {
    let kb = std::env::var("PVRFS_READAHEAD_KB")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(READAHEAD_KB);
    if kb == 0 {
        return;
    }
    let device = match mount_points() {
        Ok(table) => table
            .into_iter()
            .rev()
            .find(|m| m.mountpoint == mnt)
            .map(|m| m.device),
        Err(e) => {
            log::info!("readahead of the mount left at the kernel's default: {e}");
            return;
        }
    };
    let Some(device) = device else {
        log::info!(
            "readahead of the mount left at the kernel's default: '{}' not in the mount table",
            mnt.display()
        );
        return;
    };
    let knob = format!("/sys/class/bdi/{device}/read_ahead_kb");
    match std::fs::write(&knob, format!("{kb}\n")) {
        Ok(()) => log::info!("readahead of the mount: {kb} KiB ({knob})"),
        Err(e) => log::info!("readahead of the mount left at the kernel's default (128 KiB): cannot write {knob}: {e}"),
    }
}

//! How a read-only mount answers the kernel's OPEN requests: the policy behind
//! `--passthrough auto|always|never`, as plain logic (the FUSE adapter only carries it out).
//!
//! Why there is a policy at all (measured on Linux 6.18; figures in docs/SEMANTICS.md):
//! - **passthrough** hands a blob's object file to the kernel at OPEN: reads then run at native
//!   speed from the object's own page cache (large folios), but every open costs a round trip
//!   to the daemon (3-6x a native open);
//! - **no-open mode** (the daemon answers OPEN with ENOSYS) makes every later open free of
//!   round trips, but blob data must then come through the daemon into the mount's page cache,
//!   which holds 4 KiB pages: big sequential reads cost the reader 1.2-2x the CPU of native.
//!
//! The kernel lets a connection switch to no-open mode once and for good (ENOSYS sets it for
//! the whole mount), never per file; an OPEN reply may differ per file (passthrough for one,
//! cached for another). So `auto` starts by answering OPEN — passthrough for objects of
//! `PASSTHROUGH_MIN` bytes or more, cached (page cache kept across opens) for smaller files —
//! and switches the mount to no-open mode once small files are being opened at the rate of a
//! build tool or an archiver (`SWITCH_OPENS` within `SWITCH_WINDOW`), where the round trips
//! would dominate. Mounts that mostly read blobs (a device's revision of images and a few JSON
//! files) keep passthrough for their whole life; trees of many small files switch after their
//! first few hundred opens.
//!
//! The switch waits while any file opened with passthrough is still open (or being opened):
//! the kernel refuses cached reads of an inode whose passthrough open is still alive (EIO, or
//! an empty read), and after the switch every open is a cached one. A mount whose blob stays
//! open (a VM image, a loop-mounted squashfs) keeps answering OPEN until it is closed.
//!
//! Invariants: once `StopAsking` has been answered, every later decision is `StopAsking` (the
//! kernel no longer asks; an OPEN still in flight gets the same answer); `Passthrough` is only
//! answered when the kernel granted it at INIT; `StopAsking` is first answered only when the
//! caller says no passthrough open is alive (the caller decides under the lock that counts
//! them, so none can start meanwhile).

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Objects of at least this many bytes are handed to the kernel (auto mode, before the switch).
pub const PASSTHROUGH_MIN: u64 = 1 << 20;
/// Opens of smaller files within `SWITCH_WINDOW` that switch an auto mount to no-open mode.
pub const SWITCH_OPENS: u32 = 256;
pub const SWITCH_WINDOW: Duration = Duration::from_secs(1);

/// What the `--passthrough` option asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Passthrough for big objects, until small-file opens come fast; then no-open mode.
    Auto,
    /// Passthrough for every object (cached opens for inline files).
    Always,
    /// No-open mode from the first open.
    Never,
}

/// The answer to one OPEN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenReply {
    /// Hand the object file to the kernel.
    Passthrough,
    /// Open through the page cache (kept across opens: the revision is immutable).
    Cached,
    /// ENOSYS: the kernel opens every file without asking from now on.
    StopAsking,
}

/// The OPEN policy of one mount (shared by the daemon's threads).
#[derive(Debug)]
pub struct OpenPolicy {
    mode: OpenMode,
    /// The kernel granted passthrough at INIT.
    passthrough: bool,
    /// The kernel supports zero-message opens (`FUSE_NO_OPEN_SUPPORT`).
    can_stop: bool,
    stopped: AtomicBool,
    /// Start of the current window and the small-file opens counted in it.
    window: Mutex<(Instant, u32)>,
}

impl OpenPolicy {
    /// The policy for `mode`, given what the kernel granted at INIT.
    pub fn new(mode: OpenMode, passthrough: bool, can_stop: bool) -> OpenPolicy {
        OpenPolicy {
            mode,
            passthrough,
            can_stop,
            stopped: AtomicBool::new(mode == OpenMode::Never && can_stop),
            window: Mutex::new((Instant::now(), 0)),
        }
    }

    /// The mount answers OPEN with ENOSYS (no-open mode): reads come without a handle.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Reads of blobs go through the daemon on this mount, now or after the switch.
    pub fn reads_through_daemon(&self) -> bool {
        !(self.mode == OpenMode::Always && self.passthrough)
    }

    /// Answer an OPEN, at `now`, of a file stored as an object of `object_size` bytes (`None`:
    /// inline JSON, rendered by the daemon); `passthrough_open`: some file opened with
    /// passthrough is still open, or being opened.
    pub fn decide(
        &self,
        object_size: Option<u64>,
        now: Instant,
        passthrough_open: bool,
    ) -> OpenReply {
        if self.stopped() {
            return OpenReply::StopAsking;
        }
        let big = object_size.is_some_and(|s| s >= PASSTHROUGH_MIN);
        match self.mode {
            OpenMode::Never => OpenReply::Cached, // the kernel cannot open without asking
            OpenMode::Always if self.passthrough && object_size.is_some() => OpenReply::Passthrough,
            OpenMode::Always => OpenReply::Cached,
            OpenMode::Auto if big && self.passthrough => OpenReply::Passthrough,
            OpenMode::Auto if big => OpenReply::Cached,
            OpenMode::Auto => {
                if self.can_stop && self.count_small_open(now) && !passthrough_open {
                    self.stopped.store(true, Ordering::Relaxed);
                    log::info!(
                        "{SWITCH_OPENS} small files opened within {SWITCH_WINDOW:?}: no-open mode from now on"
                    );
                    OpenReply::StopAsking
                } else {
                    OpenReply::Cached
                }
            }
        }
    }

    /// Count one small-file open; true when the window's count reaches `SWITCH_OPENS`.
    fn count_small_open(&self, now: Instant) -> bool {
        let mut w = self.window.lock();
        if now.saturating_duration_since(w.0) > SWITCH_WINDOW {
            *w = (now, 0);
        }
        w.1 += 1;
        w.1 >= SWITCH_OPENS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Option<u64> = Some(4096);
    const BIG: Option<u64> = Some(PASSTHROUGH_MIN);

    #[test]
    fn auto_passes_big_objects_through_and_caches_the_rest() {
        let p = OpenPolicy::new(OpenMode::Auto, true, true);
        let t = Instant::now();
        assert_eq!(p.decide(BIG, t, false), OpenReply::Passthrough);
        assert_eq!(p.decide(SMALL, t, false), OpenReply::Cached);
        assert_eq!(p.decide(None, t, false), OpenReply::Cached);
        assert_eq!(
            p.decide(Some(PASSTHROUGH_MIN - 1), t, false),
            OpenReply::Cached
        );
        assert!(!p.stopped());
        assert!(p.reads_through_daemon());
    }

    #[test]
    fn auto_stops_asking_once_small_opens_come_fast_and_for_good() {
        let p = OpenPolicy::new(OpenMode::Auto, true, true);
        let t = Instant::now();
        for i in 1..SWITCH_OPENS {
            assert_eq!(p.decide(SMALL, t, false), OpenReply::Cached, "open {i}");
            // big opens do not count
            assert_eq!(p.decide(BIG, t, false), OpenReply::Passthrough);
        }
        assert_eq!(p.decide(SMALL, t, false), OpenReply::StopAsking);
        assert!(p.stopped());
        let later = t + Duration::from_secs(3600);
        assert_eq!(p.decide(BIG, later, false), OpenReply::StopAsking);
        assert_eq!(p.decide(None, later, false), OpenReply::StopAsking);
    }

    #[test]
    fn no_switch_while_a_passthrough_file_is_open() {
        let p = OpenPolicy::new(OpenMode::Auto, true, true);
        let t = Instant::now();
        for _ in 0..2 * SWITCH_OPENS {
            assert_eq!(p.decide(SMALL, t, true), OpenReply::Cached);
        }
        assert!(!p.stopped());
        // closed: the next small open (still within a busy window) switches
        assert_eq!(p.decide(SMALL, t, false), OpenReply::StopAsking);
    }

    #[test]
    fn a_slow_trickle_of_small_opens_never_switches() {
        let p = OpenPolicy::new(OpenMode::Auto, true, true);
        let mut t = Instant::now();
        for _ in 0..10 * SWITCH_OPENS {
            assert_eq!(p.decide(SMALL, t, false), OpenReply::Cached);
            t += SWITCH_WINDOW / (SWITCH_OPENS / 2);
        }
        assert!(!p.stopped());
    }

    #[test]
    fn without_no_open_support_auto_keeps_answering() {
        let p = OpenPolicy::new(OpenMode::Auto, true, false);
        let t = Instant::now();
        for _ in 0..2 * SWITCH_OPENS {
            assert_eq!(p.decide(SMALL, t, false), OpenReply::Cached);
        }
        assert_eq!(p.decide(BIG, t, false), OpenReply::Passthrough);
    }

    #[test]
    fn without_passthrough_big_objects_are_cached() {
        let p = OpenPolicy::new(OpenMode::Auto, false, true);
        assert_eq!(p.decide(BIG, Instant::now(), false), OpenReply::Cached);
        let p = OpenPolicy::new(OpenMode::Always, false, true);
        assert_eq!(p.decide(BIG, Instant::now(), false), OpenReply::Cached);
    }

    #[test]
    fn always_and_never_force_one_mode() {
        let t = Instant::now();
        let p = OpenPolicy::new(OpenMode::Always, true, true);
        for _ in 0..2 * SWITCH_OPENS {
            assert_eq!(p.decide(SMALL, t, false), OpenReply::Passthrough);
        }
        assert_eq!(p.decide(None, t, false), OpenReply::Cached);
        assert!(!p.reads_through_daemon());
        let p = OpenPolicy::new(OpenMode::Never, false, true);
        assert!(p.stopped());
        assert_eq!(p.decide(BIG, t, false), OpenReply::StopAsking);
        assert!(p.reads_through_daemon());
        let p = OpenPolicy::new(OpenMode::Never, false, false);
        assert_eq!(p.decide(BIG, t, false), OpenReply::Cached);
    }
}

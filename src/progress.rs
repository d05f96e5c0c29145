//! Progress of long work-tree operations (hashing a big tree for a first commit, storing its
//! objects, writing a checkout): a bar on stderr that appears only on a terminal and only once
//! the operation has run for a while, so everyday commands stay silent and scripts never see it.
//!
//! Counting is lock-free (`ProgressBar::inc` from any rayon thread); the bar switches from a
//! hidden to a stderr draw target the first time a count lands after `delay`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long an operation runs before its bar appears (`PVRFS_PROGRESS_DELAY_MS` overrides; the
/// tests set 0).
fn delay() -> Duration {
    std::env::var("PVRFS_PROGRESS_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_millis(700), Duration::from_millis)
}

/// A counter of `total` steps of one kind of work (`what`: "hashing", "checkout", ...).
pub struct Progress {
    bar: ProgressBar,
    enabled: bool,
    shown: AtomicBool,
    start: Instant,
    delay: Duration,
}

impl Progress {
    /// `enabled`: the caller's choice (a terminal, not `--quiet`).
    pub fn new(enabled: bool, total: usize, what: &str) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template("{msg:>9} [{bar:30}] {pos}/{len} files ({eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        Progress {
            bar,
            enabled: enabled && total > 0,
            shown: AtomicBool::new(false),
            start: Instant::now(),
            delay: delay(),
        }
    }

    /// One step done. Free when the bar can never show: a status of 100k files counted each
    /// one on a shared atomic and read the clock for it.
    pub fn inc(&self) {
        if !self.enabled {
            return;
        }
        self.bar.inc(1);
        if !self.shown.load(Ordering::Relaxed)
            && self.start.elapsed() >= self.delay
            && !self.shown.swap(true, Ordering::Relaxed)
        {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.bar.tick();
        }
    }

    /// True once the bar is on screen.
    pub fn is_shown(&self) -> bool {
        self.shown.load(Ordering::Relaxed)
    }

    /// Remove the bar (the command prints its own summary).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    /// An error path must not leave a bar behind on the terminal.
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appears_only_when_enabled_and_after_the_delay() {
        let p = Progress::new(true, 10, "hashing");
        p.inc();
        // The default delay has not passed in a freshly started test.
        assert!(!p.is_shown() || delay().is_zero());
        let mut late = Progress::new(true, 10, "hashing");
        late.start -= Duration::from_secs(5);
        late.inc();
        assert!(late.is_shown());
        let mut off = Progress::new(false, 10, "hashing");
        off.start -= Duration::from_secs(5);
        off.inc();
        assert!(!off.is_shown());
    }
}

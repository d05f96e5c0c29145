//! Progress of a transfer: a bar on stderr (only when asked for: a terminal, not `--quiet`)
//! and the counts a [`Transfer`] reports. A get counts objects (a state carries no sizes); a
//! push knows every size and counts bytes, moved part by part by multipart uploads.

use super::Transfer;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A counter shown as a progress bar when asked for, invisible otherwise.
pub(crate) struct Progress {
    bar: ProgressBar,
    moved: AtomicUsize,
    bytes: AtomicU64,
    /// `Some(total objects)`: the bar counts bytes ([`Progress::by_bytes`]), else objects.
    objects: Option<usize>,
    finished: AtomicUsize,
    what: String,
}

impl Progress {
    pub(crate) fn new(show: bool, total: usize, what: &str) -> Progress {
        let bar = if show && total > 0 {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {pos}/{len} objects, {binary_bytes_per_sec} ({eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_message(what.to_string());
            bar
        } else {
            ProgressBar::hidden()
        };
        Progress {
            bar,
            moved: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            objects: None,
            finished: AtomicUsize::new(0),
            what: what.to_string(),
        }
    }

    /// A bar over the `total_bytes` bytes of `objects` objects (a push, where the sizes are
    /// known), moved by [`Progress::sent`] as bytes leave, so one big object shows progress too.
    pub(crate) fn by_bytes(show: bool, objects: usize, total_bytes: u64, what: &str) -> Progress {
        let p = Progress::new(false, 0, what);
        if show && objects > 0 {
            p.bar
                .set_draw_target(indicatif::ProgressDrawTarget::stderr());
            p.bar.set_length(total_bytes);
            p.bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes}, {binary_bytes_per_sec} ({eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            p.bar.set_message(format!("{what} 0/{objects} objects"));
        }
        Progress {
            objects: Some(objects),
            ..p
        }
    }

    /// `n` more bytes handled (a bar made with [`Progress::by_bytes`]).
    pub(crate) fn sent(&self, n: u64) {
        if self.objects.is_some() {
            self.bar.inc(n);
        }
    }

    pub(crate) fn done(&self, moved: bool, bytes: u64) {
        if moved {
            self.moved.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        match self.objects {
            Some(total) => {
                let n = self.finished.fetch_add(1, Ordering::Relaxed) + 1;
                if !self.bar.is_hidden() {
                    self.bar
                        .set_message(format!("{} {n}/{total} objects", self.what));
                }
            }
            None => self.bar.inc(1),
        }
    }

    pub(crate) fn finish(self, objects: usize) -> Transfer {
        self.bar.finish_and_clear();
        Transfer {
            objects,
            moved: self.moved.into_inner(),
            bytes: self.bytes.into_inner(),
            remote_revision: None,
        }
    }
}

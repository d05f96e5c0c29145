//! Empty upper files made ahead of need, so that `create` does not wait for the local file
//! system to allocate an inode.
//!
//! # Why
//!
//! Creating a file on the disk under the overlay costs 30–400 µs here (ext4 inode allocation,
//! worse right after mass deletes), and a FUSE `CREATE` used to pay it while the caller — `tar`,
//! a compiler — waited. A background thread now makes the files in batches while the caller is
//! busy elsewhere; `create` takes a ready one (or makes its own, as before, when none is ready).
//!
//! # Model and invariants
//!
//! - The overlay (single-threaded) allocates the ids from its own counter, puts them in
//!   `reserved`, and sends them to the filler thread, which creates `upper/u<id>` (empty, 0600,
//!   `O_EXCL`) and queues `(id, File)` in `ready`. Nothing is journaled until `create` takes one.
//! - An id stays in `reserved` from allocation until taken, so compaction's orphan sweep
//!   leaves pool files alone while the overlay is open.
//! - A pool file is empty and named by nobody: losing one (crash) loses nothing. The next load's
//!   compaction deletes such orphans before anything can be created, and the id counter never
//!   goes back below a journaled id, so a pool file never stands in for a live one.
//! - Dropping the pool stops the thread and deletes the files it made that nobody took.

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

/// Ask for more when fewer than this many ids are reserved.
const LOW_WATER: usize = 64;
/// How many ids one request to the filler carries.
const BATCH: usize = 128;

pub(super) struct UpperPool {
    upper_dir: PathBuf,
    pub(super) ready: Arc<Mutex<VecDeque<(u64, File)>>>,
    pub(super) reserved: HashSet<u64>,
    tx: Option<Sender<Vec<u64>>>,
    thread: Option<JoinHandle<()>>,
}

impl UpperPool {
    /// Start the filler thread for upper files in `upper_dir` (the overlay's `upper/`).
    pub(super) fn start(upper_dir: PathBuf) -> std::io::Result<UpperPool> {
        let ready: Arc<Mutex<VecDeque<(u64, File)>>> = Arc::default();
        let (tx, rx) = mpsc::channel::<Vec<u64>>();
        let (dir, queue) = (upper_dir.clone(), ready.clone());
        let thread = std::thread::Builder::new()
            .name("pvrfs-upper-pool".into())
            .spawn(move || {
                for batch in rx {
                    for id in batch {
                        let path = dir.join(format!("u{id}"));
                        match OpenOptions::new()
                            .read(true)
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .open(&path)
                        {
                            Ok(file) => queue.lock().push_back((id, file)),
                            // Not fatal: `create` makes its own file when the pool is dry.
                            Err(e) => log::warn!("upper pool: create {}: {e}", path.display()),
                        }
                    }
                }
            })?;
        Ok(UpperPool {
            upper_dir,
            ready,
            reserved: HashSet::new(),
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// A ready empty upper file, if the filler has one.
    pub(super) fn take(&mut self) -> Option<(u64, File)> {
        let (id, file) = self.ready.lock().pop_front()?;
        self.reserved.remove(&id);
        Some((id, file))
    }

    /// Ask for another batch when running low; `alloc` hands out fresh ids.
    pub(super) fn refill(&mut self, mut alloc: impl FnMut() -> u64) {
        if self.reserved.len() >= LOW_WATER {
            return;
        }
        let Some(tx) = &self.tx else { return };
        let batch: Vec<u64> = (0..BATCH).map(|_| alloc()).collect();
        self.reserved.extend(batch.iter().copied());
        if tx.send(batch).is_err() {
            // The thread is gone (it cannot panic short of a bug); stop asking.
            self.tx = None;
        }
    }

    /// Ids that name pool files (made or still to be made): not orphans.
    pub(super) fn is_reserved(&self, id: u64) -> bool {
        self.reserved.contains(&id)
    }
}

impl Drop for UpperPool {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for (id, file) in self.ready.lock().drain(..) {
            drop(file);
            let _ = fs::remove_file(self.upper_dir.join(format!("u{id}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_makes_files_and_drop_removes_the_untaken() {
        let dir = tempfile::tempdir().unwrap();
        let mut pool = UpperPool::start(dir.path().to_path_buf()).unwrap();
        let mut next = 100;
        pool.refill(|| {
            next += 1;
            next
        });
        assert_eq!(pool.reserved.len(), BATCH);
        // The filler works in the background: wait for the first file.
        let (id, _file) = loop {
            if let Some(got) = pool.take() {
                break got;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!(id, 101, "ids come out in the order they were reserved");
        assert!(!pool.is_reserved(101) && pool.is_reserved(102));
        assert!(dir.path().join("u101").exists());
        drop(pool);
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "only the taken file stays: {left:?}");
    }

    #[test]
    fn an_existing_name_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("u1"), "live data").unwrap();
        let mut pool = UpperPool::start(dir.path().to_path_buf()).unwrap();
        let mut ids = vec![2, 1].into_iter();
        pool.refill(|| ids.next().unwrap_or(0));
        drop(pool);
        assert_eq!(fs::read(dir.path().join("u1")).unwrap(), b"live data");
    }
}

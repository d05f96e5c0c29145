//! Entries of upper-layer files already read, so that a build does not read them again.
//!
//! The upper layer keeps every file changed since the mount, committed or not (overlayfs cannot
//! swap the lower layer under a live upper), so without this every commit and every status
//! would hash again each file an earlier commit already stored: a commit would cost everything
//! changed since the mount instead of since the last commit.
//!
//! Invariants:
//! - An entry is reused only for the same view path, the same file (device, inode) and the same
//!   size, mtime and ctime as the version that was read. Any write moves ctime.
//! - An entry is remembered only when the file's ctime was at least [`SETTLE`] before the read
//!   began. A write landing in the same timestamp tick as the last one before the read would
//!   leave the attributes unchanged (git's "racily clean" files); such a file is read again by the
//!   next build, after which it is old enough.
//! - In memory only, per daemon: a new mount reads everything once. `clear` at a reset (a new
//!   upper layer may reuse inode numbers).

use crate::state::Entry;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime};

/// How much older than the start of its read a file's last change must be for its entry to be
/// remembered: far more than any file system's timestamp granularity.
pub const SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Attrs {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Attrs {
    fn of(m: &std::fs::Metadata) -> Attrs {
        Attrs {
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

#[derive(Debug)]
struct Cached {
    /// The file that was read: (device, inode).
    file: (u64, u64),
    attrs: Attrs,
    entry: Entry,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct EntryCache {
    /// By view path.
    map: HashMap<String, Cached>,
}

impl EntryCache {
    /// The entry read earlier for the file at view path `path`, if `meta` (its attributes
    /// now) shows it unchanged since.
    pub fn get(&self, path: &str, meta: &std::fs::Metadata) -> Option<&Entry> {
        let c = self.map.get(path)?;
        (c.file == (meta.dev(), meta.ino()) && c.attrs == Attrs::of(meta)).then_some(&c.entry)
    }

    /// Remember `entry`, read from the version of `path` whose attributes are `meta`, in a read
    /// that began at `read_began` (see the module docs for when it is not remembered).
    pub fn remember(
        &mut self,
        path: &str,
        meta: &std::fs::Metadata,
        read_began: SystemTime,
        entry: &Entry,
    ) {
        let changed = SystemTime::UNIX_EPOCH
            + Duration::new(
                u64::try_from(meta.ctime()).unwrap_or(0),
                u32::try_from(meta.ctime_nsec()).unwrap_or(0),
            );
        if changed + SETTLE > read_began {
            self.map.remove(path);
            return;
        }
        let cached = Cached {
            file: (meta.dev(), meta.ino()),
            attrs: Attrs::of(meta),
            entry: entry.clone(),
        };
        self.map.insert(path.to_string(), cached);
    }

    /// Forget everything (a new upper layer).
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// How many entries are remembered.
    pub fn known(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oid::ObjectId;
    use std::fs;

    fn entry(b: &[u8]) -> Entry {
        Entry::Object(ObjectId::hash_bytes(b))
    }

    #[test]
    fn a_settled_file_is_remembered_until_it_changes() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, "one").unwrap();
        let meta = fs::metadata(&f).unwrap();
        let later = SystemTime::now() + SETTLE + Duration::from_millis(10);
        let mut c = EntryCache::default();
        c.remember("a/f", &meta, later, &entry(b"one"));
        assert_eq!(c.get("a/f", &meta), Some(&entry(b"one")));
        // Another view path (a rename) is not the same entry.
        assert_eq!(c.get("a/g", &meta), None);
        // Any write moves ctime (and here the size).
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&f, "two!").unwrap();
        assert_eq!(c.get("a/f", &fs::metadata(&f).unwrap()), None);
    }

    #[test]
    fn a_file_changed_just_before_the_read_is_not_remembered() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, "one").unwrap();
        let meta = fs::metadata(&f).unwrap();
        let mut c = EntryCache::default();
        c.remember("f", &meta, SystemTime::now(), &entry(b"one"));
        assert_eq!(c.get("f", &meta), None);
        assert_eq!(c.known(), 0);
    }

    #[test]
    fn clear_forgets_everything() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, "one").unwrap();
        let meta = fs::metadata(&f).unwrap();
        let mut c = EntryCache::default();
        c.remember("f", &meta, SystemTime::now() + SETTLE * 2, &entry(b"one"));
        assert_eq!(c.known(), 1);
        c.clear();
        assert_eq!(c.get("f", &meta), None);
    }
}

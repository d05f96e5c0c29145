//! The object store: one flat directory of files named by the sha256 of their bytes.
//!
//! Layout (pvr's, unchanged): `<dir>/<64 lowercase hex>`, no prefix, no fan-out. A put writes
//! into an anonymous `O_TMPFILE` file and links it under its name once verified, so an
//! interrupted put (error, signal, SIGKILL) leaves nothing; only on file systems without
//! `O_TMPFILE` do named temp files (`.tmp-*`) sit beside the objects while a put is under way
//! or after a SIGKILL (see `TempObject`); they never have a 64-hex name, so they are never
//! mistaken for objects.
//!
//! Invariants:
//! - An object file, once renamed into place, holds exactly the bytes its name hashes to
//!   (hash-while-writing; puts never write to the final name directly).
//! - Puts do not fsync each object: callers that publish a state referencing new objects first
//!   call `Store::sync`, which fsyncs the objects this `Store` touched since the last sync when
//!   they are few (a small commit: in parallel, so the device sees them together instead of one
//!   flush wait after another) and otherwise issues one `syncfs`, so many small puts cost
//!   one flush, not one each. (Always `syncfs` would make a 10-file commit wait for every dirty
//!   page of the file system, other processes' included.) A put that finds its object already
//!   present counts as touching it: it may come from a crashed process that never synced.
//! - A missing object is `Ok(None)`, not an error; errors mean I/O failure.

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::oid::{Hasher, ObjectId};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    /// Objects put (or found present by a put) since the last `sync`; shared by clones.
    touched: std::sync::Arc<parking_lot::Mutex<Vec<ObjectId>>>,
}

/// Up to this many touched objects, `sync` fsyncs them one by one instead of `syncfs`.
const FSYNC_EACH_MAX: usize = 64;

/// Outcome of checking one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    Ok,
    Missing,
    Corrupt { actual: ObjectId },
}

impl Store {
    /// A store rooted at `dir` (created on the first put if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store {
            dir: dir.into(),
            touched: Default::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_of(&self, id: &ObjectId) -> PathBuf {
        self.dir.join(id.to_hex())
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.path_of(id).is_file()
    }

    fn ensure_dir(&self) -> Result<()> {
        fs::create_dir_all(&self.dir).ctx("create object store", &self.dir)
    }

    /// Store everything `reader` yields; returns its id and length. Existing objects are not
    /// rewritten (dedup); the temp copy is dropped instead.
    pub fn put_reader(&self, reader: impl Read) -> Result<(ObjectId, u64)> {
        self.put_streamed(reader, None)
    }

    /// Store what `reader` yields only if it hashes to `expected` (fetched objects are untrusted).
    /// A mismatch is `CorruptObject` and leaves nothing behind; a failing reader is an `Io` error
    /// with op `"read input for"`, so callers can tell a bad source from a bad local disk.
    pub fn put_reader_expecting(&self, reader: impl Read, expected: &ObjectId) -> Result<u64> {
        self.put_streamed(reader, Some(expected))
            .map(|(_, len)| len)
    }

    /// Store a byte slice.
    pub fn put_bytes(&self, data: &[u8]) -> Result<ObjectId> {
        let id = ObjectId::hash_bytes(data);
        if self.contains(&id) {
            // Present objects may come from a crashed process that never synced them.
            self.touch(id);
        } else {
            // The bytes were just hashed in memory: write them without hashing them again (a
            // commit's multi-megabyte state would otherwise be hashed twice).
            self.ensure_dir()?;
            let mut temp = TempObject::create(&self.dir)?;
            let tmp = temp.describe();
            temp.file.write_all(data).ctx("write temp object", &tmp)?;
            self.touch(id);
            fsutil::crash_point("store:before-rename");
            temp.publish(&self.path_of(&id))?;
        }
        Ok(id)
    }

    /// The one way objects enter the store: stream into a temp file in the store directory while
    /// hashing, check against `expected` if given, give it its name (see [`TempObject`]).
    fn put_streamed(
        &self,
        mut reader: impl Read,
        expected: Option<&ObjectId>,
    ) -> Result<(ObjectId, u64)> {
        self.ensure_dir()?;
        let mut temp = TempObject::create(&self.dir)?;
        let tmp = temp.describe();
        let result = (|| {
            let file = &mut temp.file;
            let mut hasher = Hasher::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let what = expected.map_or_else(|| self.dir.clone(), |id| self.path_of(id));
                        return Err(Error::io("read input for", what, e));
                    }
                };
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n]).ctx("write temp object", &tmp)?;
            }
            let (actual, len) = hasher.finish();
            if let Some(expected) = expected {
                if actual != *expected {
                    return Err(Error::CorruptObject {
                        id: *expected,
                        actual,
                        path: None,
                    });
                }
            }
            Ok((actual, len))
        })();
        let (id, len) = result?; // `temp` is dropped: an anonymous file vanishes, a named one is removed
        self.touch(id);
        let dest = self.path_of(&id);
        if !dest.exists() {
            fsutil::crash_point("store:before-rename");
            temp.publish(&dest)?;
        }
        Ok((id, len))
    }

    /// Store the file at `path`, hashing while copying.
    pub fn put_file(&self, path: &Path) -> Result<(ObjectId, u64)> {
        self.put_opened(path, File::open(path).ctx("open", path)?)
    }

    /// Store the open file `f` (found at `path`, for messages), hashing while copying.
    pub fn put_opened(&self, path: &Path, f: File) -> Result<(ObjectId, u64)> {
        self.put_reader(f).map_err(|e| match e {
            Error::Io {
                op: "read input for",
                source,
                ..
            } => Error::io("read", path, source),
            other => other,
        })
    }

    /// Store a file whose id the caller already knows (e.g. from a verified stat cache), skipping
    /// the copy when the object is present. The copy is still hashed; a mismatch (the file changed
    /// since it was hashed) is an error rather than a mislabelled object.
    pub fn put_file_expecting(&self, path: &Path, expected: &ObjectId) -> Result<u64> {
        self.put_opened_expecting(path, expected, || File::open(path).ctx("open", path))
    }

    /// `put_file_expecting` for a file the caller opens (only when the object is missing).
    pub fn put_opened_expecting(
        &self,
        path: &Path,
        expected: &ObjectId,
        open: impl FnOnce() -> Result<File>,
    ) -> Result<u64> {
        if let Ok(meta) = fs::metadata(self.path_of(expected)) {
            self.touch(*expected);
            return Ok(meta.len());
        }
        let (id, len) = self.put_opened(path, open()?)?;
        if id != *expected {
            return Err(Error::Other(format!(
                "'{}' changed while it was being stored (expected {expected}, got {id}); run the command again",
                path.display()
            )));
        }
        Ok(len)
    }

    /// Whether object `id` is present; if so it counts as touched, so the next `sync` makes it
    /// durable (a caller reusing an id it computed earlier, instead of putting the bytes again).
    pub fn keep_present(&self, id: &ObjectId) -> bool {
        let present = self.contains(id);
        if present {
            self.touch(*id);
        }
        present
    }

    /// Remember `id` for the next `sync`; past the per-object limit only "many" matters, so the
    /// list stops growing (a long-lived process may put millions of objects).
    fn touch(&self, id: ObjectId) {
        let mut touched = self.touched.lock();
        if touched.len() <= FSYNC_EACH_MAX {
            touched.push(id);
        }
    }

    /// Make every put so far durable (see the module docs), then fsync the store directory.
    pub fn sync(&self) -> Result<()> {
        let mut touched = std::mem::take(&mut *self.touched.lock());
        if !self.dir.exists() {
            return Ok(());
        }
        touched.sort_unstable();
        touched.dedup();
        if touched.len() <= FSYNC_EACH_MAX {
            let paths: Vec<PathBuf> = touched.iter().map(|id| self.path_of(id)).collect();
            fsutil::fsync_all_parallel(&paths, "fsync object")?;
        } else {
            fsutil::sync_filesystem(&self.dir)?;
        }
        fsutil::sync_dir(&self.dir)
    }

    /// Open an object for reading; `Ok(None)` when it is not in the store. An object must be a
    /// regular file, not reached through a symbolic link (`fsutil::open_regular`): a store
    /// somebody else wrote (a repository handed over, a shared `ObjectsDir`) could hold a FIFO
    /// (a read would hang the daemon or the command) or a link to a file of whoever reads it
    /// (which a mount with `--allow-other` would show to other users).
    pub fn open(&self, id: &ObjectId) -> Result<Option<File>> {
        let p = self.path_of(id);
        match fsutil::open_regular(&p, false) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("open object", p, e)),
        }
    }

    /// Open an object or fail with `MissingObject` naming the path that needs it.
    pub fn open_required(&self, id: &ObjectId, needed_for: Option<&str>) -> Result<File> {
        self.open(id)?.ok_or_else(|| self.missing(id, needed_for))
    }

    pub fn missing(&self, id: &ObjectId, needed_for: Option<&str>) -> Error {
        let p = self.path_of(id);
        if let Some(e) = fsutil::not_a_regular_file(&p) {
            // Something is there, but it is no object (`open`).
            return Error::io("open object", p, e);
        }
        Error::MissingObject {
            id: *id,
            store: self.dir.clone(),
            path: needed_for.map(str::to_string),
        }
    }

    /// Read a whole object, verifying its hash.
    pub fn read_verified(&self, id: &ObjectId, needed_for: Option<&str>) -> Result<Vec<u8>> {
        let mut f = self.open_required(id, needed_for)?;
        let mut data = Vec::new();
        f.read_to_end(&mut data)
            .ctx("read object", self.path_of(id))?;
        let actual = ObjectId::hash_bytes(&data);
        if actual != *id {
            return Err(Error::CorruptObject {
                id: *id,
                actual,
                path: needed_for.map(str::to_string),
            });
        }
        Ok(data)
    }

    /// Hash an object's file and compare with its name.
    pub fn verify(&self, id: &ObjectId) -> Result<Verified> {
        let Some(f) = self.open(id)? else {
            return Ok(Verified::Missing);
        };
        let (actual, _) = ObjectId::hash_reader(f).ctx("read object", self.path_of(id))?;
        Ok(if actual == *id {
            Verified::Ok
        } else {
            Verified::Corrupt { actual }
        })
    }

    /// Every object id present (names that are not 64 lowercase hex are skipped).
    pub fn list(&self) -> Result<Vec<ObjectId>> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list object store", &self.dir, e)),
        };
        let mut ids = Vec::new();
        for entry in rd {
            let entry = entry.ctx("list object store", &self.dir)?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| ObjectId::from_hex(n).ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Remove one object (gc only).
    pub fn remove(&self, id: &ObjectId) -> Result<()> {
        let p = self.path_of(id);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove object", p, e)),
        }
    }
}

/// Where an object's bytes go while they are received and hashed, before they get their name.
///
/// Preferably an **anonymous** file (`O_TMPFILE` in the store directory), linked under its
/// name only once it verified: it has no name until then, so nothing is left behind by any
/// exit — an error, a panic, SIGINT/SIGTERM, SIGKILL or a power cut (an endless download
/// interrupted by a signal used to leave its `.tmp-*` file behind). File systems without
/// `O_TMPFILE` (or a system without `/proc/self/fd`, needed to link it) get a named `.tmp-*`
/// file instead, registered with [`fsutil::TempFiles`]: removed on drop, and on
/// SIGINT/SIGTERM/SIGHUP by commands that call `fsutil::remove_temp_files_on_signals`; a
/// leftover of a SIGKILL is cleaned by `gc` (`fsutil::clean_temp_files`).
struct TempObject {
    file: File,
    /// `None` for an anonymous file.
    named: Option<fsutil::RegisteredTemp>,
    dir: PathBuf,
}

impl TempObject {
    fn create(dir: &Path) -> Result<TempObject> {
        if fsutil::can_link_anonymous_files() {
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_TMPFILE)
                .mode(0o644)
                .open(dir)
            {
                Ok(file) => {
                    return Ok(TempObject {
                        file,
                        named: None,
                        dir: dir.to_path_buf(),
                    })
                }
                // No O_TMPFILE on this file system (or kernel): fall back to a named file.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL | libc::ENOENT)
                    ) => {}
                Err(e) => return Err(Error::io("create temp object in", dir, e)),
            }
        }
        let named = fsutil::TempFiles::register(fsutil::temp_path_in(dir));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(named.path())
            .ctx("create temp object", named.path())?;
        Ok(TempObject {
            file,
            named: Some(named),
            dir: dir.to_path_buf(),
        })
    }

    /// For error messages.
    fn describe(&self) -> PathBuf {
        match &self.named {
            Some(n) => n.path().to_path_buf(),
            None => self.dir.join("(anonymous temp object)"),
        }
    }

    /// Give the verified bytes their final name (never replacing an existing object).
    fn publish(self, dest: &Path) -> Result<()> {
        match &self.named {
            Some(named) => fs::rename(named.path(), dest).ctx("rename object into place", dest),
            None => {
                use std::os::fd::AsRawFd;
                let proc_path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
                match rustix::fs::linkat(
                    rustix::fs::CWD,
                    proc_path.as_str(),
                    rustix::fs::CWD,
                    dest,
                    rustix::fs::AtFlags::SYMLINK_FOLLOW,
                ) {
                    // Another process stored the same object meanwhile: same bytes, done.
                    Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
                    Err(e) => Err(Error::io("link object into place", dest, e.into())),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_fsyncs_few_objects_and_flushes_for_many() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("objects"));
        for n in [3usize, FSYNC_EACH_MAX + 10] {
            for i in 0..n {
                store.put_bytes(format!("{n}-{i}").as_bytes()).unwrap();
            }
            // a clone shares the list (a Repo hands its Store around)
            assert_eq!(
                store.clone().touched.lock().len(),
                n.min(FSYNC_EACH_MAX + 1)
            );
            store.sync().unwrap();
            assert!(store.touched.lock().is_empty());
        }
        // a put that finds its object present still counts
        store.put_bytes(b"3-0").unwrap();
        assert_eq!(store.touched.lock().len(), 1);
    }

    #[test]
    fn put_open_verify_dedup() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("objects"));
        let id = store.put_bytes(b"hello").unwrap();
        assert_eq!(id, ObjectId::hash_bytes(b"hello"));
        let (id2, len) = store.put_reader(&b"hello"[..]).unwrap();
        assert_eq!((id2, len), (id, 5));
        assert_eq!(store.read_verified(&id, None).unwrap(), b"hello");
        assert_eq!(store.verify(&id).unwrap(), Verified::Ok);
        assert_eq!(store.list().unwrap(), vec![id]);
        store.sync().unwrap();
        // only the object: temp files were renamed or removed
        assert_eq!(fs::read_dir(store.dir()).unwrap().count(), 1);
    }

    #[test]
    fn missing_and_corrupt_objects_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let id = ObjectId::hash_bytes(b"x");
        assert!(store.open(&id).unwrap().is_none());
        assert_eq!(store.verify(&id).unwrap(), Verified::Missing);
        let err = store
            .read_verified(&id, Some("a.txt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&id.to_hex()) && err.contains("a.txt"), "{err}");
        fs::write(store.path_of(&id), b"y").unwrap();
        assert!(matches!(
            store.verify(&id).unwrap(),
            Verified::Corrupt { .. }
        ));
        assert!(store.read_verified(&id, None).is_err());
    }

    #[test]
    fn put_reader_expecting_refuses_wrong_bytes_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("o"));
        let id = ObjectId::hash_bytes(b"good");
        let err = store.put_reader_expecting(&b"evil"[..], &id).unwrap_err();
        assert!(matches!(err, Error::CorruptObject { .. }), "{err}");
        assert_eq!(fs::read_dir(store.dir()).unwrap().count(), 0);
        assert_eq!(store.put_reader_expecting(&b"good"[..], &id).unwrap(), 4);
        assert_eq!(store.list().unwrap(), vec![id]);
    }

    #[test]
    fn put_file_expecting_detects_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("o"));
        let f = dir.path().join("f");
        fs::write(&f, b"abc").unwrap();
        let wrong = ObjectId::hash_bytes(b"abd");
        assert!(store.put_file_expecting(&f, &wrong).is_err());
        let right = ObjectId::hash_bytes(b"abc");
        assert_eq!(store.put_file_expecting(&f, &right).unwrap(), 3);
    }
}

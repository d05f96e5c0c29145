//! Plain directories in pvr's layout: `DIR/json` and `DIR/objects/<64 hex>`.
//!
//! As a source, objects are copied into the local store with their hash checked on the way.
//! As a destination (push), each object is copied to a temp file in `DIR/objects/`, checked
//! and renamed into place; one `syncfs` makes them durable before `DIR/json` is replaced
//! atomically, so a reader of `DIR` never sees a `json` whose objects are missing.

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::oid::ObjectId;
use crate::store::Store;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A plain directory read as a source.
pub struct DirSource {
    root: PathBuf,
}

impl DirSource {
    pub fn new(root: &Path) -> Self {
        DirSource {
            root: root.to_path_buf(),
        }
    }

    pub fn json_origin(&self) -> String {
        self.root.join("json").display().to_string()
    }

    pub fn json(&self) -> Result<Vec<u8>> {
        let p = self.root.join("json");
        fs::read(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::Usage(format!(
                    "'{}' has no json: not a plain pvr repository (expected json and objects/)",
                    self.root.display()
                ))
            } else {
                Error::io("read", &p, e)
            }
        })
    }

    /// Copy one object into `store`, verified. Returns its size.
    pub fn fetch(&self, id: &ObjectId, store: &Store) -> Result<u64> {
        let p = self.root.join("objects").join(id.to_hex());
        let f = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::Other(format!(
                    "object {id} is missing from {}",
                    self.root.join("objects").display()
                )))
            }
            Err(e) => return Err(Error::io("open", &p, e)),
        };
        store.put_reader_expecting(f, id).map_err(|e| match e {
            Error::CorruptObject { id, actual, .. } => Error::Other(format!(
                "object {id} in {} is corrupt: its content hashes to {actual}",
                self.root.join("objects").display()
            )),
            Error::Io {
                op: "read input for",
                source,
                ..
            } => Error::io("read", &p, source),
            other => other,
        })
    }
}

/// A plain directory written by push.
pub struct DirDest {
    root: PathBuf,
    objects: PathBuf,
}

impl DirDest {
    /// Create `DIR/objects` (and `DIR`) if missing.
    pub fn create(root: &Path) -> Result<Self> {
        let objects = root.join("objects");
        fs::create_dir_all(&objects).ctx("create", &objects)?;
        Ok(DirDest {
            root: root.to_path_buf(),
            objects,
        })
    }

    /// The object is there with the right size. (Names are hashes, and every writer renames a
    /// checked file into place, so a present name of the right size is trusted.)
    pub fn has(&self, id: &ObjectId, len: u64) -> bool {
        fs::metadata(self.objects.join(id.to_hex())).is_ok_and(|m| m.is_file() && m.len() == len)
    }

    /// Copy the local object at `src` in, checking that it hashes to `id`.
    pub fn put(&self, id: &ObjectId, src: &Path) -> Result<()> {
        let dest = self.objects.join(id.to_hex());
        let tmp = fsutil::temp_path_in(&self.objects);
        let result = (|| {
            let input = File::open(src).ctx("open object", src)?;
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)
                .ctx("create", &tmp)?;
            let mut hashing = super::HashingReader::new(input);
            io::copy(&mut hashing, &mut out).ctx("copy object to", &tmp)?;
            let actual = hashing.finish();
            if actual != *id {
                return Err(Error::CorruptObject {
                    id: *id,
                    actual,
                    path: None,
                });
            }
            fs::rename(&tmp, &dest).ctx("rename into place", &dest)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Make every copied object durable (before `json` is published).
    pub fn sync(&self) -> Result<()> {
        fsutil::sync_filesystem(&self.objects)?;
        fsutil::sync_dir(&self.objects)
    }

    pub fn put_json(&self, bytes: &[u8]) -> Result<()> {
        fsutil::atomic_write(&self.root.join("json"), bytes, 0o644)
    }
}

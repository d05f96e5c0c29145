//! Plain directories in pvr's layout: `DIR/json` and `DIR/objects/<64 hex>`.
//!
//! As a source, objects are copied into the local store with their hash checked on the way.
//! The directory is untrusted like any source: `json` and each object must be a regular file
//! (a FIFO or a device would block or never end; objects are opened without following a
//! symbolic link, `json` may be one to a regular file), an object at most `--max-object-size`
//! bytes and `json` at most `http::MAX_STATE_BYTES`, checked before reading and while reading.
//! As a destination (push), each object is copied to a temp file in `DIR/objects/`, checked
//! and renamed into place; one `syncfs` makes them durable before `DIR/json` is replaced
//! atomically, so a reader of `DIR` never sees a `json` whose objects are missing.

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::oid::ObjectId;
use crate::store::Store;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A plain directory read as a source.
pub struct DirSource {
    root: PathBuf,
    max_object: u64,
}

impl DirSource {
    /// Objects may be at most `max_object` bytes (`--max-object-size`).
    pub fn new(root: &Path, max_object: u64) -> Self {
        DirSource {
            root: root.to_path_buf(),
            max_object,
        }
    }

    pub fn json_origin(&self) -> String {
        self.root.join("json").display().to_string()
    }

    pub fn json(&self) -> Result<Vec<u8>> {
        let p = self.root.join("json");
        let f = fsutil::open_regular(&p, true).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::Usage(format!(
                    "'{}' has no json: not a plain pvr repository (expected json and objects/)",
                    self.root.display()
                ))
            } else {
                Error::io("open", &p, e)
            }
        })?;
        read_capped(f, &p, super::http::MAX_STATE_BYTES, "")
    }

    /// Copy one object into `store`, verified. Returns its size.
    pub fn fetch(&self, id: &ObjectId, store: &Store) -> Result<u64> {
        let p = self.root.join("objects").join(id.to_hex());
        let f = match fsutil::open_regular(&p, false) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::Other(format!(
                    "object {id} is missing from {}",
                    self.root.join("objects").display()
                )))
            }
            Err(e) => return Err(Error::io("open object", &p, e)),
        };
        copy_object(f, &p, id, store, self.max_object).map_err(|e| match e {
            Error::CorruptObject { id, actual, .. } => Error::Other(format!(
                "object {id} in {} is corrupt: its content hashes to {actual}",
                self.root.join("objects").display()
            )),
            other => other,
        })
    }
}

/// Store the object `id` from the open regular file `f` (at `p`), refusing more than `limit`
/// bytes: by its size before reading, and at the first byte past it while reading (it may
/// grow). Shared by every local source (plain directories, other repositories' stores).
pub(crate) fn copy_object(
    f: File,
    p: &Path,
    id: &ObjectId,
    store: &Store,
    limit: u64,
) -> Result<u64> {
    let too_big = |size: u64| {
        Error::Other(format!(
            "object {id} at {} is {size} bytes, more than the limit of {limit} bytes (--max-object-size); nothing was stored",
            p.display()
        ))
    };
    let size = f.metadata().ctx("inspect", p)?.len();
    if size > limit {
        return Err(too_big(size));
    }
    let mut capped = f.take(limit.saturating_add(1));
    let len = store
        .put_reader_expecting(&mut capped, id)
        .map_err(|e| match e {
            Error::Io {
                op: "read input for",
                source,
                ..
            } => Error::io("read", p, source),
            // More than the limit hashes wrong; say why.
            Error::CorruptObject { .. } if capped.limit() == 0 => too_big(limit + 1),
            other => other,
        })?;
    Ok(len)
}

/// All of the regular file `f` (at `p`), at most `limit` bytes.
fn read_capped(f: File, p: &Path, limit: u64, flag: &str) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    f.take(limit.saturating_add(1))
        .read_to_end(&mut data)
        .ctx("read", p)?;
    if data.len() as u64 > limit {
        return Err(Error::Other(format!(
            "'{}' is larger than the limit of {limit} bytes{flag}",
            p.display()
        )));
    }
    Ok(data)
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

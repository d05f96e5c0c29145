//! The copy-on-write filesystem of a `--rw` mount, as plain methods (no FUSE types in here).
//!
//! Model: one [`Overlay`] (base revision + journaled changes, `src/fs/overlay/`) behind a
//! read-write lock, plus the per-open state the kernel refers to by file handle: open files
//! (`overlay::Handle`) and directory listings snapshotted at `opendir`. `fuse/cow.rs` is the thin
//! FUSE adapter: one call here, one reply.
//!
//! Invariants:
//! - namespace and attribute changes take the write lock (the overlay is `&mut self`); reads and
//!   writes of open files take the read lock only, so data I/O of different files runs in
//!   parallel with each other;
//! - a read handle opened on base content before another handle copied the file up is reopened
//!   on the upper file at its next read, so every reader sees the writes (as on a local fs);
//! - a directory listing is a snapshot taken at `opendir` (offset = index in it), so a
//!   `readdir` loop that unlinks as it goes (`rm -r`) neither skips nor repeats entries;
//! - `commit`, `status`, `diff` and `reset` come from the control socket (`fuse::control`), never
//!   from FUSE requests; commit keeps every inode and the view, so the kernel caches stay valid;
//!   reset changes the view, so it returns what the adapter must invalidate.

use super::overlay::{self, Handle, Options, Overlay, RenameFlags, SetAttr};
use super::{Attr, FsError, Kind, ROOT_INO};
use crate::error::{Error, Result as RepoResult};
use crate::fs::change::Changes;
use crate::repo::Repo;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub type Result<T, E = FsError> = std::result::Result<T, E>;

/// What the kernel may have cached that a reset made wrong.
#[derive(Debug, Default)]
pub struct Invalidate {
    /// Directory entries `(parent inode, name)` that vanished or changed.
    pub entries: Vec<(u64, String)>,
    /// Inodes whose attributes or data changed.
    pub inodes: Vec<u64>,
}

/// A directory listing snapshotted at `opendir`: `(name, inode, kind)`, `.` and `..` first.
type Listing = Vec<(String, u64, Kind)>;

/// An open file: the overlay handle and the inode it is open on.
struct Open {
    ino: u64,
    handle: Handle,
    /// The overlay it belongs to (bumped by `reset`): a handle of a discarded overlay must not
    /// touch the new overlay's open counts, which protect its own open files.
    epoch: u64,
}

/// The writable filesystem of one mount.
pub struct CowFs {
    ov: RwLock<Option<Overlay>>,
    repo: Repo,
    id: String,
    opts: Options,
    files: Mutex<HashMap<u64, Open>>,
    dirs: Mutex<HashMap<u64, Listing>>,
    next_fh: AtomicU64,
    epoch: AtomicU64,
}

fn gone() -> FsError {
    FsError::Errno {
        op: "access",
        path: "<overlay being reset>".into(),
        errno: libc::EIO,
    }
}

fn bad_fh(fh: u64) -> FsError {
    FsError::Errno {
        op: "use file handle",
        path: fh.to_string(),
        errno: libc::EBADF,
    }
}

impl CowFs {
    pub fn new(repo: Repo, id: &str, overlay: Overlay, opts: Options) -> CowFs {
        CowFs {
            ov: RwLock::new(Some(overlay)),
            repo,
            id: id.to_string(),
            opts,
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            epoch: AtomicU64::new(0),
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Overlay) -> Result<T>) -> Result<T> {
        let g = self.ov.read();
        f(g.as_ref().ok_or_else(gone)?)
    }

    fn write<T>(&self, f: impl FnOnce(&mut Overlay) -> Result<T>) -> Result<T> {
        let mut g = self.ov.write();
        f(g.as_mut().ok_or_else(gone)?)
    }

    fn add_file(&self, ino: u64, handle: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let epoch = self.epoch.load(Ordering::Relaxed);
        self.files.lock().insert(fh, Open { ino, handle, epoch });
        fh
    }

    /// The upper file's directory (for `statfs`: new data goes there).
    pub fn data_dir(&self) -> std::path::PathBuf {
        overlay::overlay_dir(&self.repo, &self.id)
    }

    pub fn base_rev(&self) -> u64 {
        self.ov.read().as_ref().map_or(0, |o| o.base_rev())
    }

    // ----- queries -----------------------------------------------------------------------------

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr> {
        self.read(|o| o.lookup(parent, name))
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        self.read(|o| o.getattr(ino))
    }

    pub fn readlink(&self, ino: u64) -> Result<String> {
        self.read(|o| o.readlink(ino))
    }

    /// Snapshot a directory's entries for a `readdir` loop; returns its handle.
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let entries = self.read(|o| {
            let parent = match o.path_of(ino) {
                Some(p) if !p.is_empty() => {
                    let up = p.rsplit_once('/').map_or("", |(a, _)| a);
                    o.resolve(up).unwrap_or(ROOT_INO)
                }
                _ => ROOT_INO,
            };
            let mut v = vec![
                (".".to_string(), ino, Kind::Dir),
                ("..".into(), parent, Kind::Dir),
            ];
            v.extend(o.readdir(ino)?);
            Ok(v)
        })?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().insert(fh, entries);
        Ok(fh)
    }

    /// Entries of an open directory from index `offset`; `add(ino, next offset, kind, name)`
    /// returns true when the reply buffer is full.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, Kind, &str) -> bool,
    ) -> Result<()> {
        let dirs = self.dirs.lock();
        let entries = dirs.get(&fh).ok_or_else(|| bad_fh(fh))?;
        for (i, (name, ino, kind)) in entries.iter().enumerate().skip(offset as usize) {
            if add(*ino, i as u64 + 1, *kind, name) {
                break;
            }
        }
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }

    // ----- namespace ---------------------------------------------------------------------------

    /// Exclusive create, open for writing; returns the attributes and a file handle.
    pub fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(Attr, u64)> {
        let (attr, handle) = self.write(|o| o.create(parent, name, mode, uid, gid))?;
        Ok((attr, self.add_file(attr.ino, handle)))
    }

    pub fn mkdir(&self, parent: u64, name: &str, mode: u32, uid: u32, gid: u32) -> Result<Attr> {
        self.write(|o| o.mkdir(parent, name, mode, uid, gid))
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &str,
        target: &str,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        self.write(|o| o.symlink(parent, name, target, uid, gid))
    }

    /// A FIFO, socket or device node (`Overlay::mknod`).
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        parent: u64,
        name: &str,
        kind: Kind,
        mode: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        self.write(|o| o.mknod(parent, name, kind, mode, rdev, uid, gid))
    }

    pub fn link(&self, ino: u64, parent: u64, name: &str) -> Result<Attr> {
        self.write(|o| o.link(ino, parent, name))
    }

    pub fn unlink(&self, parent: u64, name: &str) -> Result<()> {
        self.write(|o| o.unlink(parent, name))
    }

    pub fn rmdir(&self, parent: u64, name: &str) -> Result<()> {
        self.write(|o| o.rmdir(parent, name))
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &str,
        newparent: u64,
        newname: &str,
        flags: RenameFlags,
    ) -> Result<()> {
        self.write(|o| o.rename(parent, name, newparent, newname, flags))
    }

    pub fn setattr(&self, ino: u64, set: &SetAttr) -> Result<Attr> {
        self.write(|o| o.setattr(ino, set))
    }

    pub fn forget(&self, ino: u64) {
        if let Some(o) = self.ov.write().as_mut() {
            o.forget(ino);
        }
    }

    // ----- data --------------------------------------------------------------------------------

    /// Open a file; writing copies base content up first (`truncate`: without copying).
    pub fn open(&self, ino: u64, write: bool, truncate: bool) -> Result<u64> {
        let handle = self.write(|o| o.open(ino, write, truncate))?;
        Ok(self.add_file(ino, handle))
    }

    fn handle(&self, fh: u64) -> Result<(u64, Handle)> {
        let files = self.files.lock();
        let f = files.get(&fh).ok_or_else(|| bad_fh(fh))?;
        Ok((f.ino, f.handle.clone()))
    }

    /// The upper file behind an open handle and whether the handle may write (for kernel
    /// passthrough); `None` for base content.
    pub fn upper_file(&self, fh: u64) -> Option<(Arc<std::fs::File>, bool)> {
        match &self.files.lock().get(&fh)?.handle {
            Handle::Upper { file, write, .. } => Some((file.clone(), *write)),
            _ => None,
        }
    }

    pub fn read_data(&self, fh: u64, offset: u64, size: usize) -> Result<Vec<u8>> {
        let (ino, mut handle) = self.handle(fh)?;
        if !matches!(handle, Handle::Upper { .. }) && self.read(|o| Ok(o.has_upper(ino)))? {
            // Copied up since this handle was opened: read the upper file from now on.
            let fresh = self.write(|o| o.open(ino, false, false))?;
            if let Some(f) = self.files.lock().get_mut(&fh) {
                f.handle = fresh.clone();
                f.epoch = self.epoch.load(Ordering::Relaxed);
            }
            handle = fresh;
        }
        self.read(|o| o.read(&handle, offset, size))
    }

    pub fn write_data(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let (_, handle) = self.handle(fh)?;
        self.read(|o| o.write(&handle, offset, data))
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        let (_, handle) = self.handle(fh)?;
        self.read(|o| o.fallocate(&handle, offset, length, mode))
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let (_, handle) = self.handle(fh)?;
        self.write(|o| o.fsync(&handle, datasync))
    }

    /// fsyncdir / syncfs: every acknowledged operation made durable.
    pub fn sync(&self) -> Result<()> {
        self.write(|o| Ok(o.sync()?))
    }

    pub fn release(&self, fh: u64) {
        let open = self.files.lock().remove(&fh);
        let mut g = self.ov.write();
        if let (Some(open), Some(o)) = (open, g.as_mut()) {
            if open.epoch == self.epoch.load(Ordering::Relaxed) {
                o.release(open.handle);
            }
        }
    }

    // ----- control (commit, status, diff, reset) ----------------------------------------------

    fn control<T>(&self, f: impl FnOnce(&mut Overlay) -> RepoResult<T>) -> RepoResult<T> {
        let mut g = self.ov.write();
        f(g.as_mut()
            .ok_or_else(|| Error::Other("overlay is being reset".into()))?)
    }

    /// Commit base + overlay as the next revision, unless nothing a revision can hold changed;
    /// the mount continues on it.
    pub fn commit_changes(&self, message: &str) -> RepoResult<overlay::Committed> {
        self.control(|o| o.commit_changes(message))
    }

    pub fn status_text(&self) -> RepoResult<String> {
        self.inspect(|o| o.status_text())
    }

    pub fn diff_text(&self) -> RepoResult<String> {
        self.inspect(|o| o.diff_text())
    }

    /// The state a commit would make now (see `Overlay::view_state`).
    pub fn view_state(&self) -> RepoResult<crate::state::State> {
        self.inspect(|o| o.view_state())
    }

    /// What a commit now could not store (empty directories, modes, symlinks...).
    pub fn warnings(&self) -> RepoResult<Vec<String>> {
        self.inspect(|o| o.warnings())
    }

    /// A read-only look at the overlay (status, diff): file I/O goes on meanwhile.
    fn inspect<T>(&self, f: impl FnOnce(&Overlay) -> RepoResult<T>) -> RepoResult<T> {
        let g = self.ov.read();
        f(g.as_ref()
            .ok_or_else(|| Error::Other("overlay is being reset".into()))?)
    }

    /// Discard every change: the view becomes the base revision again. Open handles of upper
    /// files keep their (now orphaned) data; returns what the kernel must forget.
    pub fn reset(&self) -> RepoResult<Invalidate> {
        let mut g = self.ov.write();
        let old = g
            .take()
            .ok_or_else(|| Error::Other("overlay is being reset".into()))?;
        let base = old.base_rev().to_string();
        // After a commit the live inodes are no longer the base's numbering, so any cached
        // entry may be wrong: invalidating the root's entries drops every cached dentry below
        // them (the kernel's d_invalidate prunes subtrees), the root inode its listing.
        let mut inval = Invalidate {
            entries: Vec::new(),
            inodes: vec![ROOT_INO],
        };
        for (name, _, _) in old.readdir(ROOT_INO).unwrap_or_default() {
            inval.entries.push((ROOT_INO, name));
        }
        // The old overlay must let go of its lock before the directory can be removed. Its
        // open handles keep their files but no longer count in any overlay.
        drop(old);
        self.epoch.fetch_add(1, Ordering::Relaxed);
        let result = Overlay::discard(&self.repo, &self.id)
            .and_then(|()| Overlay::load_or_create(&self.repo, &self.id, &base, self.opts.clone()));
        match result {
            Ok(ov) => {
                for (name, _, _) in ov.readdir(ROOT_INO).unwrap_or_default() {
                    inval.entries.push((ROOT_INO, name));
                }
                *g = Some(ov);
                Ok(inval)
            }
            Err(e) => {
                // Put back whatever is left so the mount keeps answering.
                *g = Overlay::load(&self.repo, &self.id, self.opts.clone()).ok();
                Err(e)
            }
        }
    }

    /// The repository this mount serves.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }
}

/// A writable (`--rw`) mount ready to be served: the overlay is loaded (and locked).
pub struct Prepared {
    pub repo: Repo,
    pub fs: Arc<CowFs>,
}

/// Open (or create) overlay `name` of the repository for a `--rw` mount of `spec`. An existing
/// overlay resumes exactly; it must be on the revision `spec` names (its changes were made
/// against that revision), else the mount is refused with the way out.
pub fn prepare(
    repo_dir: &std::path::Path,
    spec: &str,
    name: &str,
    canonical_json: bool,
) -> RepoResult<Prepared> {
    let repo = Repo::open(repo_dir)?;
    let rev = repo.resolve(spec)?;
    let ov_opts = Options {
        canonical_json,
        upper_pool: true,
    };
    let ov = Overlay::load_or_create(&repo, name, &rev.rev.to_string(), ov_opts.clone())
        .map_err(|e| match e {
            Error::Locked { .. } => Error::Remote {
                code: e.exit_code(),
                message: format!(
                    "overlay '{name}' of {} is locked: another pvrfs daemon has it mounted (see 'pvrfs mounts'); use --overlay OTHER for a second writable mount",
                    repo.workdir().display()
                ),
            },
            e => e,
        })?;
    if ov.base_rev() != rev.rev {
        return Err(Error::Conflict(format!(
            "overlay '{name}' of {} holds changes made on revision {}, not {}: mount revision {} \
             (and commit or 'pvrfs reset --mount MNT' there), or use another --overlay NAME",
            repo.workdir().display(),
            ov.base_rev(),
            rev.rev,
            ov.base_rev()
        )));
    }
    crate::sys::trim_heap();
    let fs = CowFs::new(repo.clone(), name, ov, ov_opts);
    Ok(Prepared {
        repo,
        fs: Arc::new(fs),
    })
}

//! Namespace operations: create, mkdir, symlink, mknod, link, unlink, rmdir, rename. Each
//! validates everything, then journals its record, then applies it (`commit_record`).

use super::*;

impl Overlay {
    /// Create a new empty regular file (always exclusive: `EEXIST` if the name is taken) and
    /// open it for writing.
    pub fn create(
        &mut self,
        parent: u64,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(Attr, Handle)> {
        let path = self.new_entry_path("create", parent, name)?;
        let ino = self.alloc();
        let (upper, file) = match self.take_pooled_upper() {
            Some(ready) => ready,
            None => {
                let upper = self.alloc();
                let up = self.upper_path(upper);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&up)
                    .ctx("create upper file", &up)?;
                (upper, file)
            }
        };
        let up = self.upper_path(upper);
        let rec = Record::Create {
            path,
            ino,
            upper,
            mode: mode & 0o7777,
            uid,
            gid,
        };
        if let Err(e) = self.commit_record(rec) {
            let _ = fs::remove_file(&up);
            return Err(e);
        }
        self.unsynced_uppers.push(upper);
        *self.writers.entry(ino).or_default() += 1;
        *self.handles.entry(ino).or_default() += 1;
        let handle = Handle::Upper {
            ino,
            file: Arc::new(file),
            write: true,
        };
        Ok((self.getattr(ino)?, handle))
    }

    /// An empty upper file from the pool (starting the pool on first use), and a refill order
    /// when it runs low. `None`: make one now.
    pub(super) fn take_pooled_upper(&mut self) -> Option<(u64, File)> {
        if !self.opts.upper_pool {
            return None;
        }
        if self.pool.is_none() {
            match pool::UpperPool::start(self.dir.join("upper")) {
                Ok(p) => self.pool = Some(p),
                Err(e) => {
                    log::warn!("overlay {}: no upper file pool: {e}", self.dir.display());
                    self.opts.upper_pool = false;
                    return None;
                }
            }
        }
        let mut pool = self.pool.take()?;
        let taken = pool.take();
        pool.refill(|| self.alloc());
        self.pool = Some(pool);
        let (upper, file) = taken?;
        // A pool file may have waited for minutes: its times must be the create's.
        let now = rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        };
        let times = rustix::fs::Timestamps {
            last_access: now,
            last_modification: now,
        };
        match rustix::fs::futimens(&file, &times) {
            Ok(()) => Some((upper, file)),
            Err(e) => {
                // Not fatal: the caller makes a fresh file; this one is an orphan for the sweep.
                log::warn!("overlay {}: pooled upper u{upper}: {e}", self.dir.display());
                None
            }
        }
    }

    pub fn mkdir(
        &mut self,
        parent: u64,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        let path = self.new_entry_path("mkdir", parent, name)?;
        let ino = self.alloc();
        self.commit_record(Record::Mkdir {
            path,
            ino,
            mode: mode & 0o7777,
            uid,
            gid,
        })?;
        self.getattr(ino)
    }

    pub fn symlink(
        &mut self,
        parent: u64,
        name: &str,
        target: &str,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        let path = self.new_entry_path("symlink", parent, name)?;
        if target.is_empty() || target.contains('\0') {
            return Err(errno("symlink", path, libc::ENOENT));
        }
        if target.len() >= libc::PATH_MAX as usize {
            return Err(errno("symlink", path, libc::ENAMETOOLONG));
        }
        let ino = self.alloc();
        self.commit_record(Record::Symlink {
            path,
            ino,
            target: target.to_string(),
            uid,
            gid,
        })?;
        self.getattr(ino)
    }

    /// Create a FIFO, socket or device node (`kind.is_special()`, else `EINVAL`: regular files
    /// are `create`d). The overlay only names it and keeps its attributes: a FIFO or a bound
    /// socket works in the kernel, a device is opened by the kernel's driver (which `nodev`
    /// mounts refuse). `rdev` is kept for devices only (0 otherwise, as ext4 does).
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &mut self,
        parent: u64,
        name: &str,
        kind: Kind,
        mode: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        let path = self.new_entry_path("mknod", parent, name)?;
        if !kind.is_special() {
            return Err(errno("mknod", path, libc::EINVAL));
        }
        let ino = self.alloc();
        self.commit_record(Record::Mknod {
            path,
            ino,
            kind,
            rdev: if kind.has_rdev() { rdev } else { 0 },
            mode: mode & 0o7777,
            uid,
            gid,
        })?;
        self.getattr(ino)
    }

    /// Hard link: a new name for an existing non-directory.
    pub fn link(&mut self, ino: u64, parent: u64, name: &str) -> Result<Attr> {
        // As Linux: an existing target name is reported before a directory source.
        let dst = self.new_entry_path("link", parent, name)?;
        if matches!(self.node(ino)?.body, Body::Dir(_)) {
            return Err(errno("link", self.display_path(ino), libc::EPERM));
        }
        let src = self
            .path_of(ino)
            .ok_or_else(|| errno("link", self.display_path(ino), libc::ENOENT))?;
        self.commit_record(Record::Link { src, dst })?;
        self.getattr(ino)
    }

    pub fn unlink(&mut self, parent: u64, name: &str) -> Result<()> {
        let path = join(&self.display_path(parent), name);
        let ino = self
            .child("unlink", parent, name)?
            .ok_or_else(|| errno("unlink", &path, libc::ENOENT))?;
        if matches!(self.nodes[&ino].body, Body::Dir(_)) {
            return Err(errno("unlink", path, libc::EISDIR));
        }
        let path = join(&self.path_of(parent).expect("linked parent"), name);
        self.commit_record(Record::Remove { path })
    }

    pub fn rmdir(&mut self, parent: u64, name: &str) -> Result<()> {
        let shown = join(&self.display_path(parent), name);
        let ino = self
            .child("rmdir", parent, name)?
            .ok_or_else(|| errno("rmdir", &shown, libc::ENOENT))?;
        match &self.nodes[&ino].body {
            Body::Dir(c) if !c.is_empty() => return Err(errno("rmdir", shown, libc::ENOTEMPTY)),
            Body::Dir(_) => {}
            _ => return Err(errno("rmdir", shown, libc::ENOTDIR)),
        }
        let path = join(&self.path_of(parent).expect("linked parent"), name);
        self.commit_record(Record::Remove { path })
    }

    pub(super) fn is_ancestor(&self, anc: u64, mut ino: u64) -> bool {
        loop {
            if ino == anc {
                return true;
            }
            match self.nodes.get(&ino).and_then(|n| n.links.first()) {
                Some((p, _)) => ino = *p,
                None => return false,
            }
        }
    }

    /// rename(2)/renameat2(2) of files and directories, with the POSIX checks.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &str,
        newparent: u64,
        newname: &str,
        flags: RenameFlags,
    ) -> Result<()> {
        let shown = join(&self.display_path(parent), name);
        if flags.noreplace && flags.exchange {
            return Err(errno("rename", shown, libc::EINVAL));
        }
        check_name("rename", newname)?;
        let src = self
            .child("rename", parent, name)?
            .ok_or_else(|| errno("rename", &shown, libc::ENOENT))?;
        let dst = self.child("rename", newparent, newname)?;
        let shown_dst = join(&self.display_path(newparent), newname);
        let src_dir = matches!(self.nodes[&src].body, Body::Dir(_));
        // The checks in the order Linux's renameat2 makes them, so callers see the same errno.
        match dst {
            Some(_) if flags.noreplace => return Err(errno("rename", shown_dst, libc::EEXIST)),
            None if flags.exchange => return Err(errno("rename", shown_dst, libc::ENOENT)),
            _ => {}
        }
        // The source may not be an ancestor of the target...
        if src_dir && self.is_ancestor(src, newparent) {
            return Err(errno("rename", shown_dst, libc::EINVAL));
        }
        if let Some(d) = dst {
            // ...nor the target an ancestor of the source (it is then not empty).
            if d != src && self.is_ancestor(d, parent) {
                let e = if flags.exchange {
                    libc::EINVAL
                } else {
                    libc::ENOTEMPTY
                };
                return Err(errno("rename", shown_dst, e));
            }
            if d == src {
                return Ok(()); // the same file under both names: nothing to do
            }
            let dst_dir = matches!(self.nodes[&d].body, Body::Dir(_));
            if !flags.exchange {
                if src_dir && !dst_dir {
                    return Err(errno("rename", shown_dst, libc::ENOTDIR));
                } else if !src_dir && dst_dir {
                    return Err(errno("rename", shown_dst, libc::EISDIR));
                } else if let Body::Dir(c) = &self.nodes[&d].body {
                    if !c.is_empty() {
                        return Err(errno("rename", shown_dst, libc::ENOTEMPTY));
                    }
                }
            }
        }
        let src_path = join(&self.path_of(parent).expect("linked"), name);
        let dst_path = join(&self.path_of(newparent).expect("linked"), newname);
        if dst_path == crate::repo::PVR_DIR {
            return Err(errno("rename", dst_path, libc::EPERM));
        }
        self.commit_record(Record::Rename {
            src: src_path,
            dst: dst_path,
            exchange: flags.exchange,
        })
    }
}

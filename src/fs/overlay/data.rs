//! File data and attributes: open (copy-up), read, write, fsync, sync, release, forget, setattr.

use super::*;

impl Overlay {
    /// Open a node's content. `write` copies a base file up first (`truncate` skips the copy:
    /// O_TRUNC makes the old bytes irrelevant).
    pub fn open(&mut self, ino: u64, write: bool, truncate: bool) -> Result<Handle> {
        let node = self.node(ino)?;
        let content = match &node.body {
            Body::File(c) => c.clone(),
            Body::Dir(_) => return Err(errno("open", self.display_path(ino), libc::EISDIR)),
            Body::Symlink(_) => return Err(errno("open", self.display_path(ino), libc::ELOOP)),
            // The kernel opens these itself (pipes, sockets, drivers) and never asks a FUSE
            // server; for anyone else they have no content here.
            Body::Special(..) => return Err(errno("open", self.display_path(ino), libc::ENXIO)),
        };
        let upper = match content {
            Content::Upper(u) => u,
            Content::Base(e) if !write => return self.open_base(ino, &e),
            Content::Base(e) => self.copy_up(ino, &e, truncate)?,
        };
        let path = self.upper_path(upper);
        let file = self.open_upper(upper, write)?;
        if write {
            if truncate {
                file.set_len(0).ctx("truncate", &path)?;
            }
            *self.writers.entry(ino).or_default() += 1;
        }
        *self.handles.entry(ino).or_default() += 1;
        Ok(Handle::Upper {
            ino,
            file: Arc::new(file),
            write,
        })
    }

    pub(super) fn open_base(&self, ino: u64, e: &Entry) -> Result<Handle> {
        match e {
            Entry::Object(id) => {
                let path = self.path_of(ino);
                let file = self.repo.store().open_required(id, path.as_deref())?;
                Ok(Handle::Blob {
                    file: Arc::new(file),
                })
            }
            Entry::Inline(v) => Ok(Handle::Inline {
                bytes: Arc::new(self.render(v)),
            }),
        }
    }

    /// Copy a base file into a new upper file (in-kernel `copy_file_range` for blobs), make it
    /// durable, then journal the switch.
    pub(super) fn copy_up(&mut self, ino: u64, e: &Entry, empty: bool) -> Result<u64> {
        let path = self
            .path_of(ino)
            .ok_or_else(|| errno("copy up", self.display_path(ino), libc::ENOENT))?;
        let upper = self.alloc();
        let up = self.upper_path(upper);
        let result = (|| -> Result<()> {
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&up)
                .ctx("create upper file", &up)?;
            if !empty {
                match e {
                    Entry::Object(id) => {
                        let src = self.repo.store().open_required(id, Some(&path))?;
                        copy_file(&src, &out).ctx("copy into", &up)?;
                    }
                    Entry::Inline(v) => {
                        use std::io::Write;
                        out.write_all(&self.render(v)).ctx("write", &up)?;
                    }
                }
            }
            self.commit_record(Record::CopyUp { path, upper })
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&up);
            return Err(e);
        }
        self.unsynced_uppers.push(upper);
        Ok(upper)
    }

    /// What a handle is open on, for error messages.
    pub(super) fn handle_name(&self, handle: &Handle) -> String {
        match handle {
            Handle::Upper { ino, .. } => self.display_path(*ino),
            Handle::Blob { .. } => "<base file>".into(),
            Handle::Inline { .. } => "<inline JSON file>".into(),
        }
    }

    /// Read up to `size` bytes at `offset`.
    pub fn read(&self, handle: &Handle, offset: u64, size: usize) -> Result<Vec<u8>> {
        match handle {
            Handle::Upper { file, .. } | Handle::Blob { file } => {
                let mut buf = vec![0; size];
                let mut done = 0;
                while done < size {
                    let n = file
                        .read_at(&mut buf[done..], offset + done as u64)
                        .map_err(|e| {
                            errno(
                                "read",
                                self.handle_name(handle),
                                e.raw_os_error().unwrap_or(libc::EIO),
                            )
                        })?;
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
                buf.truncate(done);
                Ok(buf)
            }
            Handle::Inline { bytes } => {
                let start = (offset as usize).min(bytes.len());
                let end = start.saturating_add(size).min(bytes.len());
                Ok(bytes[start..end].to_vec())
            }
        }
    }

    /// Write at `offset` through a handle opened for writing.
    pub fn write(&self, handle: &Handle, offset: u64, data: &[u8]) -> Result<usize> {
        match handle {
            Handle::Upper {
                file, write: true, ..
            } => {
                file.write_all_at(data, offset).map_err(|e| {
                    errno(
                        "write",
                        self.handle_name(handle),
                        e.raw_os_error().unwrap_or(libc::EIO),
                    )
                })?;
                Ok(data.len())
            }
            _ => Err(errno("write", self.handle_name(handle), libc::EBADF)),
        }
    }

    /// `fallocate(2)` through a handle opened for writing: the upper file is a real file on the
    /// overlay's file system, so the call (mode 0, `KEEP_SIZE`, `PUNCH_HOLE`, `ZERO_RANGE`,
    /// whatever that file system supports) is passed through, and its answer is ours.
    pub fn fallocate(&self, handle: &Handle, offset: u64, length: u64, mode: i32) -> Result<()> {
        match handle {
            Handle::Upper {
                file, write: true, ..
            } => {
                let flags = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
                rustix::fs::fallocate(&**file, flags, offset, length)
                    .map_err(|e| errno("fallocate", self.handle_name(handle), e.raw_os_error()))
            }
            _ => Err(errno("fallocate", self.handle_name(handle), libc::EBADF)),
        }
    }

    /// fsync/fdatasync of a handle: the file's data, then the metadata journal (so that the
    /// file's name and everything before it are durable too, as on a local file system).
    pub fn fsync(&mut self, handle: &Handle, datasync: bool) -> Result<()> {
        if let Handle::Upper { file, .. } = handle {
            let r = if datasync {
                file.sync_data()
            } else {
                file.sync_all()
            };
            r.map_err(|e| {
                errno(
                    "fsync",
                    self.handle_name(handle),
                    e.raw_os_error().unwrap_or(libc::EIO),
                )
            })?;
        }
        Ok(self.sync()?)
    }

    /// Make every acknowledged operation durable (fsyncdir, syncfs, unmount): new and copied-up
    /// upper files and their names first, then the journal that names them.
    pub fn sync(&mut self) -> RepoResult<()> {
        if self.unsynced_uppers.len() > FSYNC_EACH_MAX {
            // After a create-heavy burst (an untar): one file-system flush, not one journal
            // commit per file (as `Store::sync` does for many objects).
            self.unsynced_uppers.clear();
            fsutil::sync_filesystem(&self.dir.join("upper"))?;
        } else if !self.unsynced_uppers.is_empty() {
            for u in std::mem::take(&mut self.unsynced_uppers) {
                let path = self.upper_path(u);
                // Gone since (unlinked and compacted away): nothing to make durable.
                if let Ok(f) = self.open_upper(u, false) {
                    f.sync_all().ctx("fsync", &path)?;
                }
            }
            fsutil::sync_dir(&self.dir.join("upper"))?;
        }
        match self.journal.as_mut() {
            Some(j) => j.sync(),
            None => Ok(()),
        }
    }

    /// Close a handle.
    pub fn release(&mut self, handle: Handle) {
        let Handle::Upper { ino, write, .. } = handle else {
            return;
        };
        if write {
            decrement(&mut self.writers, ino);
        }
        if decrement(&mut self.handles, ino) == 0 {
            self.forget(ino);
        }
    }

    /// The kernel forgot an inode: drop it if nothing names or holds it any more (its upper
    /// file goes at the next compaction).
    pub fn forget(&mut self, ino: u64) {
        let unlinked = self
            .nodes
            .get(&ino)
            .is_some_and(|n| n.links.is_empty() && ino != ROOT_INO);
        if unlinked && !self.handles.contains_key(&ino) {
            let node = self.nodes.remove(&ino);
            self.uppers.remove(&ino);
            if let Some(Body::File(Content::Upper(u))) = node.map(|n| n.body) {
                self.free_big_upper(u);
            }
        }
    }

    /// Give a removed file's data back to the file system now rather than at the next
    /// compaction, when it is big (deleting a large file in the mount must free its space).
    /// The journal is synced first, so the record removing the file's last name is durable
    /// before its data goes: a crash cannot bring back a name without its data. Small files
    /// wait for compaction (one journal sync each would slow `rm -r` down).
    pub(super) fn free_big_upper(&mut self, upper: u64) {
        let path = self.upper_path(upper);
        if fs::metadata(&path).map_or(true, |m| m.len() < FREE_EARLY_MIN) {
            return;
        }
        let synced = self.journal.as_mut().map_or(Ok(()), |j| j.sync());
        if synced.is_ok() {
            let _ = fs::remove_file(&path);
        }
    }

    /// chmod/chown/utimens/truncate.
    pub fn setattr(&mut self, ino: u64, set: &SetAttr) -> Result<Attr> {
        let is_upper = matches!(self.node(ino)?.body, Body::File(Content::Upper(_)));
        if let Some(size) = set.size {
            match &self.node(ino)?.body {
                Body::Dir(_) => {
                    return Err(errno("truncate", self.display_path(ino), libc::EISDIR))
                }
                Body::Symlink(_) | Body::Special(..) => {
                    return Err(errno("truncate", self.display_path(ino), libc::EINVAL))
                }
                Body::File(_) => {}
            }
            let handle = self.open(ino, true, size == 0)?;
            let r = match &handle {
                Handle::Upper { file, .. } => file.set_len(size).map_err(|e| {
                    errno(
                        "truncate",
                        self.display_path(ino),
                        e.raw_os_error().unwrap_or(libc::EIO),
                    )
                }),
                _ => unreachable!("opened for writing"),
            };
            self.release(handle);
            r?;
        }
        let mut times_in_record = (set.atime, set.mtime);
        if is_upper || set.size.is_some() {
            // An upper file carries its own mtime; set it there (durable with the file).
            if let Body::File(Content::Upper(u)) = self.node(ino)?.body {
                if let Some(m) = set.mtime {
                    let Time(sec, nsec) = m.into();
                    // By name in `upper/`: one syscall, not open + futimens + close.
                    let times = rustix::fs::Timestamps {
                        last_access: rustix::fs::Timespec {
                            tv_sec: 0,
                            tv_nsec: rustix::fs::UTIME_OMIT,
                        },
                        last_modification: rustix::fs::Timespec {
                            tv_sec: sec,
                            tv_nsec: nsec.into(),
                        },
                    };
                    rustix::fs::utimensat(
                        &self.upper_fd,
                        format!("u{u}"),
                        &times,
                        rustix::fs::AtFlags::empty(),
                    )
                    .map_err(std::io::Error::from)
                    .ctx("set times of", self.upper_path(u))?;
                    times_in_record.1 = None;
                }
            }
        }
        let any = set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || times_in_record.0.is_some()
            || times_in_record.1.is_some();
        if any {
            let path = self
                .path_of(ino)
                .ok_or_else(|| errno("setattr", self.display_path(ino), libc::ENOENT))?;
            self.commit_record(Record::SetAttr {
                path,
                mode: set.mode.map(|m| m & 0o7777),
                uid: set.uid,
                gid: set.gid,
                atime: times_in_record.0.map(Into::into),
                mtime: times_in_record.1.map(Into::into),
            })?;
        }
        if let (Some(a), false) = (set.atime, times_in_record.0.is_some()) {
            self.nodes.get_mut(&ino).expect("exists").atime = a;
        }
        self.getattr(ino)
    }
}

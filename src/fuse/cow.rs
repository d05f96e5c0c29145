//! The `fuser::Filesystem` adapter of a `--rw` mount: one call into `fs::cow::CowFs`, one reply.
//!
//! Kernel-side choices (docs/SEMANTICS.md, "Copy-on-write mounts"):
//! - `default_permissions`: the kernel checks modes and owners as on a local file system, from
//!   the attributes given here (so `--allow-other` is safe);
//! - entries (negative ones too) and attributes are cached for an hour: the view changes only
//!   through this mount, whose operations the kernel applies to its own caches, or through
//!   `reset`, which invalidates explicitly through the notifier (a commit leaves the view as it
//!   is). Long negative entries keep `make`/compiler probes of missing files in the kernel;
//! - names longer than 255 bytes are refused with `ENAMETOOLONG`, as a local file system does;
//! - no direct I/O and no KEEP_CACHE: files use the page cache, so shared writable `mmap`
//!   works; the cache is dropped at each open, which is always correct;
//! - kernel passthrough (where granted) for upper files opened for writing: reads, writes and
//!   mmap go straight to the upper file in the kernel; the kernel wants one backing file per
//!   inode and no mixing with cached opens, so the mode is chosen per inode (`Io`): the first
//!   open decides, later opens join (a writer only if it opens the same upper file);
//! - otherwise I/O goes through the daemon (`pread`/`pwrite` on the upper file or the object),
//!   no writeback cache; nothing is buffered here, so files are opened with FOPEN_NOFLUSH (no
//!   FLUSH round trip on every close);
//! - POSIX record locks and `flock` are left to the kernel (`getlk`/`setlk` unimplemented, no
//!   `FUSE_POSIX_LOCKS`/`FUSE_FLOCK_LOCKS` requested): they work among all users of this mount;
//! - `mknod` makes regular files (as `create`) and FIFOs, sockets and device nodes (overlay
//!   nodes with a type and `rdev`, no content). The kernel serves those itself: a FIFO's pipe
//!   and a bound socket live in the kernel's inode, so OPEN is never sent for them; device
//!   nodes cannot be opened at all because FUSE mounts are `nodev`.

use super::{errno, file_attr, negotiate_passthrough, Passthrough};
use crate::fs::cow::CowFs;
use crate::fs::overlay::{RenameFlags, SetAttr};
use crate::fs::{Attr, FsError, Kind, ToErrno, NAME_MAX};
use fuser::{
    BackingId, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, IoctlFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long the kernel may trust entries and attributes: every change goes through this mount
/// (the kernel updates or invalidates its own caches), and `reset` invalidates explicitly.
const TTL: Duration = Duration::from_secs(3600);

/// Largest WRITE the kernel sends (1 MiB: its limit with the default `max_pages_limit`).
const MAX_WRITE: u32 = 1 << 20;

/// A name the overlay can hold: UTF-8 (state keys are) and at most `NAME_MAX` bytes, as on a
/// local file system (the kernel leaves that check to FUSE servers).
fn utf8(name: &OsStr) -> Result<&str, Errno> {
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    name.to_str().ok_or(Errno::EINVAL)
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

/// How the kernel does I/O on an inode's open files. The kernel refuses to mix cached and
/// passthrough opens of one inode, and wants one backing file per inode, so this is per inode.
enum Io {
    /// Through the daemon (and the page cache); `n` open files.
    Cached(u32),
    /// In the kernel on the backing file (an upper file opened read-write), identified by
    /// (device, inode) so that only opens of that same upper file join it.
    Pass(Arc<BackingId>, (u64, u64), u32),
}

/// The FUSE face of a `CowFs`.
pub struct CowFuse {
    fs: Arc<CowFs>,
    mode: Passthrough,
    /// Set at INIT when the kernel granted passthrough.
    passthrough: AtomicBool,
    io: Mutex<HashMap<u64, Io>>,
    /// Asks for FUSE over io_uring at INIT (`fuse::uring`), when the rings could be made.
    uring: Option<super::uring::Offer>,
}

fn identity(f: &std::fs::File) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    f.metadata().ok().map(|m| (m.dev(), m.ino()))
}

impl CowFuse {
    pub fn new(fs: Arc<CowFs>, mode: Passthrough) -> CowFuse {
        CowFuse {
            fs,
            mode,
            passthrough: AtomicBool::new(false),
            io: Mutex::new(HashMap::new()),
            uring: None,
        }
    }

    /// Ask the kernel for FUSE over io_uring at INIT (the rings of `offer` serve it).
    pub fn with_uring(mut self, offer: Option<super::uring::Offer>) -> CowFuse {
        self.uring = offer;
        self
    }

    /// Decide how a new open file `fh` of `ino` does I/O: `Ok(Some(id))` passthrough on `id`,
    /// `Ok(None)` through the daemon. A write open of an upper file starts passthrough when no
    /// cached open exists; readers and writers of the same upper file join it; other opens
    /// are cached. `Err` only for a writer whose upper file is not the inode's backing file
    /// (a reader held it across a commit that turned the old upper file into base content).
    fn io_for(
        &self,
        ino: u64,
        fh: u64,
        open_backing: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
    ) -> Result<Option<Arc<BackingId>>, Errno> {
        let upper = self.fs.upper_file(fh);
        let mut io = self.io.lock();
        match io.get_mut(&ino) {
            Some(Io::Cached(n)) => {
                *n += 1;
                Ok(None)
            }
            Some(Io::Pass(id, backing, n)) => {
                let same = upper.as_ref().and_then(|(f, _)| identity(f)) == Some(*backing);
                let writer = upper.as_ref().is_some_and(|(_, w)| *w);
                if writer && !same {
                    return Err(Errno::ETXTBSY);
                }
                *n += 1;
                Ok(Some(id.clone()))
            }
            None => {
                let pass = match &upper {
                    Some((file, true)) if self.passthrough.load(Ordering::Relaxed) => {
                        match (open_backing(file), identity(file)) {
                            (Ok(id), Some(ident)) => Some((Arc::new(id), ident)),
                            (Err(e), _) => {
                                log::warn!(
                                    "passthrough refused for inode {ino} ({e}); serving I/O"
                                );
                                None
                            }
                            _ => None,
                        }
                    }
                    _ => None,
                };
                match pass {
                    Some((id, ident)) => {
                        io.insert(ino, Io::Pass(id.clone(), ident, 1));
                        Ok(Some(id))
                    }
                    None => {
                        io.insert(ino, Io::Cached(1));
                        Ok(None)
                    }
                }
            }
        }
    }

    fn io_closed(&self, ino: u64) {
        let mut io = self.io.lock();
        let last = match io.get_mut(&ino) {
            Some(Io::Cached(n)) | Some(Io::Pass(_, _, n)) => {
                *n -= 1;
                *n == 0
            }
            None => false,
        };
        if last {
            io.remove(&ino);
        }
    }

    fn entry(&self, reply: ReplyEntry, r: Result<Attr, FsError>) {
        match r {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), FsError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

macro_rules! name_or_reply {
    ($name:expr, $reply:expr) => {
        match utf8($name) {
            Ok(n) => n,
            Err(e) => return $reply.error(e),
        }
    };
}

impl Filesystem for CowFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Upper files live in the repository's `.pvr/`: depth 2 only when that is itself on a
        // stacked file system.
        let depth = if super::is_stacked_fs(&self.fs.data_dir()) {
            2
        } else {
            1
        };
        let granted = negotiate_passthrough(config, self.mode, depth)?;
        self.passthrough.store(granted, Ordering::Relaxed);
        // Larger writes: fewer round trips for sequential writes (the kernel's limit is 1 MiB).
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(1 << 20);
        if let Some(offer) = &self.uring {
            offer.request(config, MAX_WRITE);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_or_reply!(name, reply);
        match self.fs.lookup(parent.0, name) {
            // A negative entry (node id 0) the kernel may cache like a positive one: a name can
            // only appear through this mount (which updates the kernel's dentries) or a reset
            // (which invalidates them), so `make`-style probes of missing files stay in the kernel.
            Err(e) if e.errno() == libc::ENOENT => {
                let none = Attr {
                    ino: 0,
                    kind: Kind::File,
                    size: 0,
                    mode: 0,
                    nlink: 0,
                    uid: 0,
                    gid: 0,
                    atime: SystemTime::UNIX_EPOCH,
                    mtime: SystemTime::UNIX_EPOCH,
                    ctime: SystemTime::UNIX_EPOCH,
                    rdev: 0,
                };
                reply.entry(&TTL, &file_attr(&none), Generation(0))
            }
            r => self.entry(reply, r),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        self.fs.forget(ino.0);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
        };
        match self.fs.setattr(ino.0, &set) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let name = name_or_reply!(name, reply);
        let perm = mode & !umask & 0o7777;
        let r = if mode & libc::S_IFMT == libc::S_IFREG {
            self.fs
                .create(parent.0, name, perm, req.uid(), req.gid())
                .map(|(a, fh)| {
                    self.fs.release(fh);
                    a
                })
        } else if let Some(kind) = Kind::special_from_mode(mode) {
            // The kernel checked CAP_MKNOD for devices already.
            self.fs
                .mknod(parent.0, name, kind, perm, rdev, req.uid(), req.gid())
        } else {
            return reply.error(Errno::EINVAL);
        };
        self.entry(reply, r)
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = name_or_reply!(name, reply);
        let r = self
            .fs
            .mkdir(parent.0, name, mode & !umask & 0o7777, req.uid(), req.gid());
        self.entry(reply, r)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        empty(reply, self.fs.unlink(parent.0, name))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        empty(reply, self.fs.rmdir(parent.0, name))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let name = name_or_reply!(link_name, reply);
        // A target is a path, not a name: up to PATH_MAX - 1 bytes (the overlay checks), not
        // NAME_MAX.
        let Some(target) = target.to_str() else {
            return reply.error(Errno::EINVAL);
        };
        let r = self
            .fs
            .symlink(parent.0, name, target, req.uid(), req.gid());
        self.entry(reply, r)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let name = name_or_reply!(name, reply);
        let newname = name_or_reply!(newname, reply);
        let known = fuser::RenameFlags::RENAME_NOREPLACE | fuser::RenameFlags::RENAME_EXCHANGE;
        if !(flags - known).is_empty() {
            // RENAME_WHITEOUT is for overlayfs's own upper layers.
            return reply.error(Errno::EINVAL);
        }
        let f = RenameFlags {
            noreplace: flags.contains(fuser::RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(fuser::RenameFlags::RENAME_EXCHANGE),
        };
        empty(
            reply,
            self.fs.rename(parent.0, name, newparent.0, newname, f),
        )
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let name = name_or_reply!(newname, reply);
        self.entry(reply, self.fs.link(ino.0, newparent.0, name))
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let acc = flags.0 & libc::O_ACCMODE;
        let write = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        let truncate = write && flags.0 & libc::O_TRUNC != 0;
        let fh = match self.fs.open(ino.0, write, truncate) {
            Ok(fh) => fh,
            Err(e) => return reply.error(errno(&e)),
        };
        match self.io_for(ino.0, fh, |f| reply.open_backing(f)) {
            Ok(Some(id)) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &id)
            }
            Ok(None) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH),
            Err(e) => {
                self.fs.release(fh);
                reply.error(e)
            }
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name_or_reply!(name, reply);
        // The kernel sends CREATE only for a name its lookup did not find, so the overlay's
        // exclusive create is right for O_CREAT with and without O_EXCL.
        match self
            .fs
            .create(parent.0, name, mode & !umask & 0o7777, req.uid(), req.gid())
        {
            Ok((a, fh)) => match self.io_for(a.ino, fh, |f| reply.open_backing(f)) {
                Ok(Some(id)) => reply.created_passthrough(
                    &TTL,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::FOPEN_NOFLUSH,
                    &id,
                ),
                Ok(None) => reply.created(
                    &TTL,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::FOPEN_NOFLUSH,
                ),
                Err(e) => {
                    self.fs.release(fh);
                    reply.error(e)
                }
            },
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read_data(fh.0, offset, size as usize) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.fs.write_data(fh.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// No ioctl means anything here (pvr trees have no inode flags): ENOTTY, "not supported"
    /// to `lsattr` and the like. fuser's default answers ENOSYS and logs a warning per call.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.fs.fallocate(fh.0, offset, length, mode))
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Not sent (FOPEN_NOFLUSH): writes are not buffered here, each went to the upper file
        // already, and locks are the kernel's.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.io_closed(ino.0);
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.fs.fsync(fh.0, datasync))
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.fs.readdir(fh.0, offset, |ino, next, k, name| {
            reply.add(INodeNo(ino), next, super::file_type(k), name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.fs.sync())
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // New data lands next to the overlay: its file system's free space is what is left.
        match rustix::fs::statvfs(self.fs.data_dir()) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                NAME_MAX as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e.raw_os_error())),
        }
    }
}

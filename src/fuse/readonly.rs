//! The `fuser::Filesystem` adapter of a read-only mount: one call into
//! `fs::readonly::ReadOnlyFs` and one reply per operation.
//!
//! What lives here is only what needs FUSE types: the capabilities asked for at INIT
//! (passthrough, readdirplus, parallel dirops, no-open and no-opendir, FUSE over io_uring when
//! `uring` made its rings: then requests come by per-CPU rings), the reply flags
//! (passthrough or KEEP_CACHE, NOFLUSH), and the backing ids of passthrough opens: one per inode,
//! shared by its concurrent opens and dropped with the last of them.
//!
//! The tree is immutable, so entries and attributes are given an effectively infinite TTL.

use super::{errno, file_attr, file_type, negotiate_passthrough, Passthrough};
use crate::fs::readonly::{DirectoryReplier, FileSource, ReadOnlyFs, RECENT_OBJECT_FILES};
use crate::fs::{Attr, FsError, Kind, ToErrno};
use fuser::{
    BackingId, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// "Forever" for the kernel's caches: the revision cannot change under the mount.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Attributes sent with a negative entry (only its node id 0 and TTL matter to the kernel).
fn negative_attr() -> Attr {
    Attr {
        ino: 0,
        kind: Kind::File,
        size: 0,
        mode: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        atime: std::time::UNIX_EPOCH,
        mtime: std::time::UNIX_EPOCH,
        ctime: std::time::UNIX_EPOCH,
        rdev: 0,
    }
}

/// Passthrough backing ids. The kernel wants one backing file per inode while it is open, so
/// ids are shared through `by_ino`; `by_fh` keeps them alive per open handle, and `recent`
/// keeps the hot ones registered after the last close (reopening costs no ioctl).
struct Backing {
    by_ino: HashMap<u64, Weak<BackingId>>,
    by_fh: HashMap<u64, Arc<BackingId>>,
    recent: lru::LruCache<u64, Arc<BackingId>>,
}

impl Default for Backing {
    fn default() -> Self {
        Backing {
            by_ino: HashMap::new(),
            by_fh: HashMap::new(),
            recent: lru::LruCache::new(
                std::num::NonZeroUsize::new(RECENT_OBJECT_FILES).expect("non-zero"),
            ),
        }
    }
}

/// What INIT settled about file reads, shared by the adapter and its `DirectReader`.
#[derive(Debug, Default)]
struct ReadMode {
    /// The kernel granted passthrough (and `--passthrough` asked for it): blob opens hand the
    /// object file to the kernel.
    passthrough: AtomicBool,
    /// Files are opened without asking the daemon (FUSE no-open mode): the kernel keeps their
    /// page cache across opens, and reads name the inode only.
    no_open: AtomicBool,
}

/// The FUSE face of a `ReadOnlyFs`.
pub struct ReadOnlyFuse {
    fs: Arc<ReadOnlyFs>,
    mode: Passthrough,
    read_mode: Arc<ReadMode>,
    /// Set at INIT when the kernel can open directories without asking us (then it also caches
    /// their entries across opens: no round trip at all for a warm `readdir`).
    no_opendir: AtomicBool,
    backing: Mutex<Backing>,
    /// Stacking depth to ask for (1, or 2 when the store itself is on a stacked fs).
    stack_depth: u32,
    /// Asks for FUSE over io_uring at INIT (`fuse::uring`), when the rings could be made.
    uring: Option<super::uring::Offer>,
}

impl ReadOnlyFuse {
    pub fn new(fs: Arc<ReadOnlyFs>, mode: Passthrough) -> ReadOnlyFuse {
        let stack_depth = if super::is_stacked_fs(fs.store().dir()) {
            2
        } else {
            1
        };
        ReadOnlyFuse {
            fs,
            mode,
            read_mode: Arc::default(),
            no_opendir: AtomicBool::new(false),
            backing: Mutex::new(Backing::default()),
            stack_depth,
            uring: None,
        }
    }

    /// Ask the kernel for FUSE over io_uring at INIT (the rings of `offer` serve it).
    pub fn with_uring(mut self, offer: Option<super::uring::Offer>) -> ReadOnlyFuse {
        self.uring = offer;
        self
    }

    /// The reader that answers READ requests coming by the io_uring rings (see `DirectReader`).
    pub fn direct_reader(&self) -> DirectReader {
        DirectReader {
            fs: self.fs.clone(),
            read_mode: self.read_mode.clone(),
        }
    }

    fn no_open(&self) -> bool {
        self.read_mode.no_open.load(Ordering::Relaxed)
    }

    fn backing_for(
        &self,
        ino: u64,
        reply: &ReplyOpen,
        file: &std::fs::File,
    ) -> std::io::Result<Arc<BackingId>> {
        let mut b = self.backing.lock();
        if let Some(id) = b.recent.get(&ino) {
            return Ok(id.clone());
        }
        if let Some(id) = b.by_ino.get(&ino).and_then(Weak::upgrade) {
            return Ok(id);
        }
        let id = Arc::new(reply.open_backing(file)?);
        b.by_ino.insert(ino, Arc::downgrade(&id));
        if b.by_ino.len() > 4 * RECENT_OBJECT_FILES {
            b.by_ino.retain(|_, w| w.strong_count() > 0);
        }
        b.recent.put(ino, id.clone());
        Ok(id)
    }
}

struct DirReply<'a>(&'a mut ReplyDirectory);

impl DirectoryReplier for DirReply<'_> {
    fn wants_attrs(&self) -> bool {
        false
    }

    fn add(&mut self, ino: u64, next: u64, kind: Kind, name: &OsStr, _: Option<&Attr>) -> bool {
        self.0.add(INodeNo(ino), next, file_type(kind), name)
    }
}

struct DirPlusReply<'a>(&'a mut ReplyDirectoryPlus);

impl DirectoryReplier for DirPlusReply<'_> {
    fn add(&mut self, ino: u64, next: u64, _: Kind, name: &OsStr, attr: Option<&Attr>) -> bool {
        let Some(attr) = attr else { return true };
        self.0.add(
            INodeNo(ino),
            next,
            name,
            &TTL,
            &file_attr(attr),
            Generation(0),
        )
    }
}

impl Filesystem for ReadOnlyFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(
            InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_READDIRPLUS_AUTO
                | InitFlags::FUSE_PARALLEL_DIROPS,
        );
        let no_opendir = config
            .add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
            .is_ok();
        self.no_opendir.store(no_opendir, Ordering::Relaxed);
        // The default serves both small files and blobs from the kernel's page cache: files
        // are opened without a round trip (no-open mode; the kernel allows it per connection
        // only, never per inode), blob data comes once through the daemon in large requests
        // (`readahead::widen`). Passthrough needs an OPEN per file, so it is used only when
        // forced, or when the kernel cannot open without asking anyway.
        let no_open = self.mode != Passthrough::Always
            && config
                .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT)
                .is_ok();
        self.read_mode.no_open.store(no_open, Ordering::Relaxed);
        let mode = if no_open {
            Passthrough::Never
        } else {
            self.mode
        };
        let granted = negotiate_passthrough(config, mode, self.stack_depth)?;
        self.read_mode.passthrough.store(granted, Ordering::Relaxed);
        // Large reads: fewer round trips when passthrough is not in use (the kernel caps this
        // at the mount's readahead, 128 KiB unless `readahead::widen` raises it).
        let _ = config.set_max_readahead(1 << 20);
        if let Some(offer) = &self.uring {
            // A read-only mount gets no WRITE; a small max_write keeps the ring's payload
            // buffers (which must hold max_write) at 1 MiB. max_pages stays 256 (readahead).
            let _ = config.set_max_write(1 << 20);
            offer.request(config, 1 << 20);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(parent.0, name) {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            // A name the revision lacks will never appear: answer with node id 0, which the
            // kernel keeps as a negative entry for the TTL. Under the kernel backend's overlayfs
            // every new name in a base directory is first looked up here; without this each
            // create would wait for one round trip.
            Err(FsError::NotFound) => {
                let mut attr = file_attr(&negative_attr());
                attr.ino = INodeNo(0);
                reply.entry(&TTL, &attr, Generation(0))
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.no_open() {
            // Zero-message opens from now on; the `ro` mount makes the kernel refuse write
            // opens itself, and reads check the object (EIO) instead of this open.
            return reply.error(Errno::ENOSYS);
        }
        let opened = match self.fs.open(ino.0, flags.0) {
            Ok(o) => o,
            Err(e) => return reply.error(errno(&e)),
        };
        let fh = FileHandle(opened.fh);
        // Immutable content: keep the page cache across opens; nothing to flush on close.
        let flags = FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH;
        match &opened.source {
            FileSource::Object(of) if self.read_mode.passthrough.load(Ordering::Relaxed) => {
                match self.backing_for(ino.0, &reply, of.file()) {
                    Ok(id) => {
                        reply.opened_passthrough(fh, FopenFlags::FOPEN_NOFLUSH, &id);
                        self.backing.lock().by_fh.insert(opened.fh, id);
                    }
                    Err(e) if self.mode == Passthrough::Always => {
                        log::error!("passthrough refused for inode {}: {e}", ino.0);
                        let _ = self.fs.release(opened.fh);
                        reply.error(Errno::EIO);
                    }
                    Err(e) => {
                        log::warn!(
                            "passthrough refused for inode {} ({e}); serving reads",
                            ino.0
                        );
                        reply.opened(fh, flags);
                    }
                }
            }
            _ => reply.opened(fh, flags),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut reply = Some(reply);
        let send = |data: &[u8]| {
            if let Some(r) = reply.take() {
                r.data(data)
            }
        };
        let result = if self.no_open() {
            self.fs.read_inode(ino.0, offset, size, send)
        } else {
            self.fs.read(fh.0, offset, size, send)
        };
        if let (Err(e), Some(r)) = (result, reply) {
            r.error(errno(&e));
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.backing.lock().by_fh.remove(&fh.0);
        if self.no_open() {
            return reply.ok();
        }
        match self.fs.release(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0, flags.0) {
            // Directories have no per-open state: ENOSYS tells the kernel to stop sending
            // OPENDIR/RELEASEDIR and to keep their pages cached (its no-open defaults).
            Ok(()) if self.no_opendir.load(Ordering::Relaxed) => reply.error(Errno::ENOSYS),
            Ok(()) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.fs.readdir(ino.0, offset, &mut DirReply(&mut reply)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        match self
            .fs
            .readdir(ino.0, offset, &mut DirPlusReply(&mut reply))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(ino.0, name) {
            Ok(v) => xattr_reply(reply, &v, size),
            // ENOSYS is FUSE's "unsupported, stop asking": the kernel answers EOPNOTSUPP itself
            // from then on, sparing a round trip per `ls -l` entry (security.selinux, ACLs).
            Err(FsError::NoXattr) => reply.error(Errno::ENOSYS),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(errno(&e)),
        }
    }

    // Every write-type operation: EROFS (the kernel already refuses most on an `ro` mount).

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(self.erofs("setattr"));
    }

    fn mknod(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _d: u32,
        reply: ReplyEntry,
    ) {
        reply.error(self.erofs("mknod"));
    }

    fn mkdir(&self, _r: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(self.erofs("mkdir"));
    }

    fn unlink(&self, _r: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(self.erofs("unlink"));
    }

    fn rmdir(&self, _r: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(self.erofs("rmdir"));
    }

    fn symlink(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _t: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(self.erofs("symlink"));
    }

    fn rename(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _f: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(self.erofs("rename"));
    }

    fn link(&self, _r: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(self.erofs("link"));
    }

    fn write(
        &self,
        _r: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _o: u64,
        _d: &[u8],
        _wf: fuser::WriteFlags,
        _f: OpenFlags,
        _l: Option<LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        reply.error(self.erofs("write"));
    }

    fn create(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _f: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(self.erofs("create"));
    }

    fn setxattr(
        &self,
        _r: &Request,
        _i: INodeNo,
        _n: &OsStr,
        _v: &[u8],
        _f: i32,
        _p: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(self.erofs("setxattr"));
    }

    fn removexattr(&self, _r: &Request, _i: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(self.erofs("removexattr"));
    }

    fn fallocate(
        &self,
        _r: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _o: u64,
        _l: u64,
        _m: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(self.erofs("fallocate"));
    }

    fn copy_file_range(
        &self,
        _r: &Request,
        _ii: INodeNo,
        _fi: FileHandle,
        _oi: u64,
        _io: INodeNo,
        _fo: FileHandle,
        _oo: u64,
        _l: u64,
        _f: fuser::CopyFileRangeFlags,
        reply: fuser::ReplyWrite,
    ) {
        reply.error(self.erofs("copy_file_range"));
    }

    fn fsync(&self, _r: &Request, _i: INodeNo, _fh: FileHandle, _d: bool, reply: ReplyEmpty) {
        // Nothing is ever dirty.
        reply.ok();
    }

    fn flush(&self, _r: &Request, _i: INodeNo, _fh: FileHandle, _l: LockOwner, reply: ReplyEmpty) {
        // Nothing is ever dirty, and no locks are kept here: ENOSYS makes the kernel stop
        // sending FLUSH on close (no-open files cannot carry FOPEN_NOFLUSH).
        reply.error(Errno::ENOSYS);
    }
}

impl ReadOnlyFuse {
    fn erofs(&self, what: &'static str) -> Errno {
        match self.fs.write_op(what) {
            Ok(()) => Errno::EIO, // unreachable for the read-only fs
            Err(e) => errno(&e),
        }
    }
}

fn xattr_reply(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

/// Answers READ requests that come by the io_uring rings: the bytes are copied once, from the
/// object's mapping straight into the ring's payload buffer (`uring::DirectRead`), instead of
/// into a reply that fuser captures and the ring code copies again.
pub struct DirectReader {
    fs: Arc<ReadOnlyFs>,
    read_mode: Arc<ReadMode>,
}

impl DirectReader {
    /// Blob data goes through the daemon (passthrough was not granted): the mount's readahead
    /// decides how large the READ requests are.
    pub fn reads_through_daemon(&self) -> bool {
        !self.read_mode.passthrough.load(Ordering::Relaxed)
    }
}

impl super::uring::DirectRead for DirectReader {
    fn read_into(&self, ino: u64, fh: u64, offset: u64, buf: &mut [u8]) -> Result<usize, i32> {
        let size = buf.len() as u32;
        let copy = |data: &[u8]| {
            buf[..data.len()].copy_from_slice(data);
            data.len()
        };
        let result = if self.read_mode.no_open.load(Ordering::Relaxed) {
            self.fs.read_inode(ino, offset, size, copy)
        } else {
            self.fs.read(fh, offset, size, copy)
        };
        result.map_err(|e| e.errno())
    }
}

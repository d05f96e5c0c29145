//! The `fuser::Filesystem` adapter of a read-only mount: one call into
//! `fs::readonly::ReadOnlyFs` and one reply per operation.
//!
//! What lives here is only what needs FUSE types: the capabilities asked for at INIT
//! (passthrough, readdirplus, parallel dirops, no-open and no-opendir, FUSE over io_uring when
//! `uring` made its rings: then requests come by per-CPU rings), the reply to OPEN that
//! `fs::opens::OpenPolicy` chooses (passthrough, KEEP_CACHE, or ENOSYS for no-open mode; always
//! NOFLUSH), the backing ids of passthrough opens (one per inode, shared by its concurrent opens
//! and dropped with the last of them), and the `DirectReader` the io_uring rings read through.
//!
//! Reads carry the handle of a daemon-answered open, or none (fh 0) for files the kernel opened
//! without asking: those are read by inode.
//!
//! The tree is immutable, so entries and attributes are given an effectively infinite TTL.

use super::{errno, file_attr, file_type, negotiate_passthrough, Passthrough};
use crate::fs::opens::{OpenMode, OpenPolicy, OpenReply};
use crate::fs::readonly::{DirectoryReplier, FileSource, ReadOnlyFs, RECENT_OBJECT_FILES};
use crate::fs::{Attr, FsError, Kind, ToErrno};
use fuser::{
    BackingId, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

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

/// Reply flags of an open through the page cache: the content is immutable, so its pages are
/// kept across opens, and nothing is ever dirty, so there is nothing to flush on close.
const CACHED: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE.union(FopenFlags::FOPEN_NOFLUSH);

/// Passthrough backing ids. The kernel wants one backing file per inode while it is open, so
/// ids are shared through `by_ino`; `by_fh` keeps them alive per open handle, and `recent`
/// keeps the hot ones registered after the last close (reopening costs no ioctl). `by_fh` and
/// `opening` together count the passthrough files alive, which the OPEN policy must know
/// before it switches the mount to no-open mode (`fs::opens`).
struct Backing {
    by_ino: HashMap<u64, Weak<BackingId>>,
    by_fh: HashMap<u64, Arc<BackingId>>,
    recent: lru::LruCache<u64, Arc<BackingId>>,
    /// Opens answered `Passthrough` whose reply is not sent yet.
    opening: usize,
}

impl Default for Backing {
    fn default() -> Self {
        Backing {
            by_ino: HashMap::new(),
            by_fh: HashMap::new(),
            recent: lru::LruCache::new(
                std::num::NonZeroUsize::new(RECENT_OBJECT_FILES).expect("non-zero"),
            ),
            opening: 0,
        }
    }
}

/// The FUSE face of a `ReadOnlyFs`.
pub struct ReadOnlyFuse {
    fs: Arc<ReadOnlyFs>,
    mode: Passthrough,
    /// How OPEN is answered; made at INIT from what the kernel granted.
    policy: Arc<OnceLock<OpenPolicy>>,
    /// Set at INIT when the kernel can open directories without asking us (then it also caches
    /// their entries across opens: no round trip at all for a warm `readdir`).
    no_opendir: AtomicBool,
    backing: Mutex<Backing>,
    /// Stacking depth to ask for (1, or 2 when the store itself is on a stacked fs).
    stack_depth: u32,
    /// Asks for FUSE over io_uring at INIT (`fuse::uring`), when the rings could be made.
    uring: Option<super::uring::Offer>,
    /// Answer `listxattr` with ENOSYS, FUSE's "unsupported, stop asking" (the kernel backend's
    /// lower layer: `with_unsupported_xattr_lists`).
    no_listxattr: bool,
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
            policy: Arc::default(),
            no_opendir: AtomicBool::new(false),
            backing: Mutex::new(Backing::default()),
            stack_depth,
            uring: None,
            no_listxattr: false,
        }
    }

    /// Answer `listxattr` with ENOSYS. For the kernel backend's lower layer: overlayfs lists
    /// the xattrs of every directory and file it copies up, one round trip each, and a
    /// revision has none; after one ENOSYS the kernel answers EOPNOTSUPP itself, which
    /// copy-up takes as "nothing to copy" (and `getfattr` on a base file in the `--rw` mount
    /// then says "Operation not supported", as `getxattr` already did).
    pub fn with_unsupported_xattr_lists(mut self) -> ReadOnlyFuse {
        self.no_listxattr = true;
        self
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
            policy: self.policy.clone(),
        }
    }

    /// Open `ino` and hand its object file to the kernel; inline files (and, unless forced,
    /// objects the kernel refuses) are opened cached instead.
    fn open_passthrough(&self, ino: u64, flags: i32, reply: ReplyOpen) {
        let opened = match self.fs.open(ino, flags) {
            Ok(o) => o,
            Err(e) => return reply.error(errno(&e)),
        };
        let fh = FileHandle(opened.fh);
        let FileSource::Object(of) = &opened.source else {
            return reply.opened(fh, CACHED);
        };
        match self.backing_for(ino, &reply, of.file()) {
            Ok(id) => {
                // Counted alive before the reply: a switch to no-open mode must not race it.
                self.backing.lock().by_fh.insert(opened.fh, id.clone());
                reply.opened_passthrough(fh, FopenFlags::FOPEN_NOFLUSH, &id);
            }
            Err(e) if self.mode == Passthrough::Always => {
                log::error!("passthrough refused for inode {ino}: {e}");
                let _ = self.fs.release(opened.fh);
                reply.error(Errno::EIO);
            }
            Err(e) => {
                log::warn!("passthrough refused for inode {ino} ({e}); serving reads");
                reply.opened(fh, CACHED);
            }
        }
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
        // Passthrough and no-open mode are both asked for (unless forced off): the OPEN
        // policy picks per file, and may switch the mount to no-open mode later
        // (`fs::opens`). A kernel without no-open support asks at every open regardless.
        let can_stop = self.mode != Passthrough::Always
            && config
                .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT)
                .is_ok();
        let granted = negotiate_passthrough(config, self.mode, self.stack_depth)?;
        let mode = match self.mode {
            Passthrough::Auto => OpenMode::Auto,
            Passthrough::Always => OpenMode::Always,
            Passthrough::Never => OpenMode::Never,
        };
        let _ = self.policy.set(OpenPolicy::new(mode, granted, can_stop));
        // Large reads: fewer round trips for data served by the daemon (the kernel caps this
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

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(policy) = self.policy.get() else {
            return reply.error(Errno::EIO); // no OPEN comes before INIT
        };
        let size = match self.fs.object_size(ino.0) {
            Ok(s) => s,
            Err(e) => return reply.error(errno(&e)),
        };
        let answer = {
            // Decided under the lock that counts live passthrough files, so that none starts
            // while the policy switches to no-open mode.
            let mut b = self.backing.lock();
            let alive = b.opening + b.by_fh.len() > 0;
            let answer = policy.decide(size, Instant::now(), alive);
            if answer == OpenReply::Passthrough {
                b.opening += 1;
            }
            answer
        };
        if answer == OpenReply::Passthrough {
            self.open_passthrough(ino.0, flags.0, reply);
            self.backing.lock().opening -= 1;
            return;
        }
        if answer == OpenReply::StopAsking {
            // Zero-message opens from now on; the `ro` mount makes the kernel refuse write
            // opens itself, and reads check the object (EIO) instead of this open.
            return reply.error(Errno::ENOSYS);
        }
        match self.fs.open(ino.0, flags.0) {
            Ok(o) => reply.opened(FileHandle(o.fh), CACHED),
            Err(e) => reply.error(errno(&e)),
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
        let result = if fh.0 == 0 {
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
        if fh.0 == 0 {
            // Opened by the kernel without asking: nothing to forget.
            return reply.ok();
        }
        self.backing.lock().by_fh.remove(&fh.0);
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
        if self.no_listxattr {
            return reply.error(Errno::ENOSYS);
        }
        match self.fs.listxattr(ino.0) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// No ioctl means anything here (a revision has no inode flags): ENOTTY, which tools
    /// (`lsattr`) and overlayfs's copy-up (it asks the lower for FS_IOC_GETFLAGS of every
    /// directory and file it copies up) take as "not supported". fuser's default answers ENOSYS
    /// and logs a three-line warning per call: one per directory copied up under the kernel
    /// backend, thousands for a `tar x` into base directories.
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
    policy: Arc<OnceLock<OpenPolicy>>,
}

impl DirectReader {
    /// Blob data may come through the daemon on this mount (unless every blob is passed
    /// through): the mount's readahead decides how large the READ requests are. Known once
    /// INIT was answered.
    pub fn reads_through_daemon(&self) -> bool {
        self.policy
            .get()
            .is_none_or(OpenPolicy::reads_through_daemon)
    }
}

impl super::uring::DirectRead for DirectReader {
    fn read_into(&self, ino: u64, fh: u64, offset: u64, buf: &mut [u8]) -> Result<usize, i32> {
        self.fs
            .read_into(ino, fh, offset, buf)
            .map_err(|e| e.errno())
    }

    fn read_or_plan(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<super::uring::RingRead, i32> {
        use super::uring::{DiskRead, RingRead};
        use crate::fs::readonly::ReadInto;
        use std::os::fd::AsRawFd;
        match self.fs.read_or_plan(ino, fh, offset, buf) {
            Ok(ReadInto::Copied(n)) => Ok(RingRead::Copied(n)),
            Ok(ReadInto::Planned(plan)) => match plan.object.direct_fd() {
                Some(fd) => Ok(RingRead::Disk(DiskRead {
                    fd: fd.as_raw_fd(),
                    offset: plan.offset,
                    read_len: plan.read_len,
                    reply_len: plan.reply_len,
                    keep: Box::new(plan.object),
                })),
                None => self.read_into(ino, fh, offset, buf).map(RingRead::Copied),
            },
            Err(e) => Err(e.errno()),
        }
    }
}

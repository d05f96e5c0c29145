//! The read-only filesystem of one revision, as plain methods: no FUSE types in here.
//!
//! Model: a `Tree` (the directory index, inode numbers = tree indices + 1) plus the object store.
//! Every operation takes inode numbers and returns `Result<_, FsError>` (the errno table is in
//! `fs::error`). `fuse/readonly.rs` is a thin adapter that calls one method and sends one reply,
//! so tests drive this type operation by operation without a kernel (`tests/fs.rs`).
//! [`prepare`] makes one from a repository and a revision spec.
//!
//! Invariants and guarantees (docs/SEMANTICS.md):
//! - the tree never changes while mounted, so attributes and entries may be cached forever;
//! - an object file is opened once per inode and shared by all concurrent opens of it
//!   (`ObjectFile`, held weakly per file so the last close drops it); reads come from an mmap
//!   made on the first read, unless the adapter hands the fd to the kernel (passthrough); a
//!   big read of pages not cached yet goes straight to the disk instead (`fs::direct`; on
//!   io_uring the ring does the read, from a `DirectPlan`);
//! - a missing object, or with `verify` one whose bytes do not hash to its name, makes open
//!   (or, in no-open mode, read) fail with EIO and is logged once, naming the object and the
//!   path; everything else keeps being served. Such a file lists with a 1-byte placeholder size
//!   so that readers always reach the daemon and get the error. Without `verify` a corrupt object is served as stored (`pvrfs fsck` finds it);
//! - every write-type operation fails with EROFS (`FsError::ReadOnly`); copy-on-write mounts
//!   are a different filesystem (`fs::cow` over `fs::overlay`).

use super::direct::{self, DirectFile};
use super::tree::{FileData, NodeKind, Tree};
use super::{Attr, FsError, Kind, Statfs, BLOCK_SIZE, NAME_MAX, ROOT_INO};
use crate::error::Result as RepoResult;
use crate::oid::ObjectId;
use crate::repo::{Repo, Revision};
use crate::store::{Store, Verified};
use memmap2::Mmap;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How many closed object files stay open for quick reopening.
pub const RECENT_OBJECT_FILES: usize = 1024;

/// Mount-wide settings.
#[derive(Debug, Clone)]
pub struct FsConfig {
    pub uid: u32,
    pub gid: u32,
    /// The revision's commit time (seconds since the epoch).
    pub time: i64,
    /// Hash each object once before serving it.
    pub verify: bool,
}

/// Receives directory entries; `add` returns true when its buffer is full (the entry was not
/// taken). Keeps FUSE's reply types out of `fs` (as mountpoint-s3's `DirectoryReplier`).
pub trait DirectoryReplier {
    /// Whether entries need attributes (readdirplus). Without, `add` gets `None` and no object
    /// is `stat`ed for its size.
    fn wants_attrs(&self) -> bool {
        true
    }

    fn add(
        &mut self,
        ino: u64,
        next_offset: u64,
        kind: Kind,
        name: &OsStr,
        attr: Option<&Attr>,
    ) -> bool;
}

/// An object file open for reading, shared by every open of one inode.
#[derive(Debug)]
pub struct ObjectFile {
    pub id: ObjectId,
    /// File-table index of the first path that opened it (for messages).
    index: u32,
    file: File,
    len: u64,
    map: OnceLock<std::io::Result<Option<Mmap>>>,
    /// How far the kernel has been asked to read ahead (`prefetch_after`).
    prefetched: std::sync::atomic::AtomicU64,
    /// The object opened for direct I/O, on its first cold read (`None`: refused; reads stay
    /// buffered). See `fs::direct`.
    direct: OnceLock<Option<DirectFile>>,
}

/// How far past a read of a big object the daemon asks the kernel to have read it already.
/// Reads through the daemon copy from the object's mapping, whose page faults read ahead one
/// window at a time, synchronously in the thread that serves the READ: a cold 1 GiB blob took
/// 2.4-2.6 s over io_uring without the hint and 1.35-1.5 s with it (a 64 MiB window was slower).
const PREFETCH: u64 = 16 << 20;

/// The largest range one `POSIX_FADV_WILLNEED` is asked for. The kernel reads at most
/// max(the device's read_ahead_kb, max_sectors_kb) of one call (`force_page_cache_ra`) and drops
/// the rest silently: asked for 9 MiB at a time on a disk with an 8 MiB window, 1 MiB of every
/// 9 was left to a synchronous page fault in the serving thread (about 100 faults of 2-17 ms
/// per cold GiB, traced with `readahead:page_cache_sync_ra`). 1 MiB is below both on common
/// devices (defaults 128 KiB and 1280 KiB).
const PREFETCH_CHUNK: u64 = 1 << 20;

/// `[from, to)` cut into consecutive pieces of at most PREFETCH_CHUNK bytes.
fn prefetch_chunks(from: u64, to: u64) -> impl Iterator<Item = (u64, u64)> {
    (from..to)
        .step_by(PREFETCH_CHUNK as usize)
        .map(move |at| (at, (at + PREFETCH_CHUNK).min(to)))
}

/// The range to ask the kernel for after a read ending at `end` of an object of `len` bytes
/// (`None`: objects up to PREFETCH, which the kernel's own readahead covers, or when what was
/// asked for before, up to `prefetched`, still reaches at least PREFETCH/2 past `end`).
fn prefetch_range(len: u64, end: u64, prefetched: u64) -> Option<(u64, u64)> {
    if len <= PREFETCH || end >= len || prefetched >= len.min(end + PREFETCH / 2) {
        return None;
    }
    let from = prefetched.max(end);
    let to = (end + PREFETCH).min(len);
    (from < to).then_some((from, to))
}

impl ObjectFile {
    /// Ask the kernel to start reading the next PREFETCH bytes after `end` (POSIX_FADV_WILLNEED
    /// queues the reads and returns), once per PREFETCH/2 of progress.
    fn prefetch_after(&self, end: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let done = self.prefetched.load(Relaxed);
        let Some((from, to)) = prefetch_range(self.len, end, done) else {
            return;
        };
        // One reader advises; concurrent READs of the same stretch do not ask again.
        if self
            .prefetched
            .compare_exchange(done, to, Relaxed, Relaxed)
            .is_ok()
        {
            for (at, until) in prefetch_chunks(from, to) {
                let _ = rustix::fs::fadvise(
                    &self.file,
                    at,
                    std::num::NonZeroU64::new(until - at),
                    rustix::fs::Advice::WillNeed,
                );
            }
        }
    }

    /// The object opened for direct I/O, when reading `range` of it (`bytes`, its mapping)
    /// that way is worth it (`fs::direct`: big enough, not all cached, allowed); `None` when
    /// the caller should copy from the mapping.
    fn direct_for(&self, bytes: &[u8], range: &std::ops::Range<usize>) -> Option<&DirectFile> {
        if range.len() < direct::DIRECT_MIN
            || !direct::enabled()
            || direct::resident(bytes, range.clone())
        {
            return None;
        }
        self.direct
            .get_or_init(|| match DirectFile::reopen(&self.file) {
                Ok(d) => Some(d),
                Err(e) => {
                    direct::report(
                        direct::Trouble::Refused,
                        format_args!(
                            "object {} is read through the page cache: no direct I/O ({e})",
                            self.id
                        ),
                    );
                    None
                }
            })
            .as_ref()
    }

    /// The object's descriptor opened for direct I/O, once a read went direct (`DirectPlan`).
    pub fn direct_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.direct.get()?.as_ref().map(DirectFile::fd)
    }

    /// The open object file (for kernel passthrough).
    pub fn file(&self) -> &File {
        &self.file
    }

    fn bytes(&self) -> std::io::Result<&[u8]> {
        let map = self.map.get_or_init(|| {
            if self.len == 0 {
                return Ok(None);
            }
            // SAFETY: objects are immutable once renamed into place (store invariant); a store
            // edited behind our back could change the mapped bytes, never memory safety of ours
            // beyond SIGBUS on truncation, which is the usual mmap contract.
            let map = unsafe { Mmap::map(&self.file)? };
            let _ = map.advise(memmap2::Advice::Sequential);
            Ok(Some(map))
        });
        match map {
            Ok(Some(m)) => Ok(&m[..]),
            Ok(None) => Ok(&[]),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

/// The part `[offset, offset + size)` of `data` that exists.
fn clip(data: &[u8], offset: u64, size: u32) -> std::ops::Range<usize> {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let end = start.saturating_add(size as usize).min(data.len());
    start..end
}

/// A buffer's length as a READ size.
fn len_u32(buf: &[u8]) -> u32 {
    u32::try_from(buf.len()).unwrap_or(u32::MAX)
}

/// What an open file reads from: a shared object file, or rendered inline JSON.
#[derive(Debug, Clone)]
pub enum FileSource {
    Object(Arc<ObjectFile>),
    Inline(Arc<[u8]>),
}

/// Result of `open`.
#[derive(Debug, Clone)]
pub struct Opened {
    pub fh: u64,
    pub source: FileSource,
}

/// What `ReadOnlyFs::read_or_plan` did with a READ.
#[derive(Debug)]
pub enum ReadInto {
    /// This many bytes were copied into the buffer.
    Copied(usize),
    /// The caller reads the bytes from the disk itself.
    Planned(DirectPlan),
}

/// A READ whose bytes the caller reads straight from the disk itself (FUSE over io_uring
/// submits it to its ring, so that several are in flight on one queue): `ObjectFile::direct_fd`
/// at `offset`, `read_len` bytes (aligned) into an aligned buffer, of which the reply has
/// `reply_len`. A read that returns fewer than `reply_len` bytes is served with `read_into`
/// instead. Holds the object file open until the read is done.
#[derive(Debug)]
pub struct DirectPlan {
    pub object: Arc<ObjectFile>,
    pub offset: u64,
    pub read_len: usize,
    pub reply_len: usize,
}

/// The filesystem of one revision.
pub struct ReadOnlyFs {
    tree: Tree,
    store: Store,
    config: FsConfig,
    handles: Mutex<HashMap<u64, FileSource>>,
    next_fh: AtomicU64,
    objects: Mutex<HashMap<u32, Weak<ObjectFile>>>,
    /// Keeps the most recently opened object files open after their last close, so reopening
    /// a hot file costs no open(2)/fstat(2). Bounded: each holds a file descriptor.
    recent: Mutex<lru::LruCache<u32, Arc<ObjectFile>>>,
    verified: Mutex<HashMap<ObjectId, bool>>,
    reported: Mutex<HashSet<ObjectId>>,
    total_bytes: OnceLock<u64>,
}

impl std::fmt::Debug for ReadOnlyFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnlyFs")
            .field("tree", &self.tree)
            .finish()
    }
}

impl ReadOnlyFs {
    pub fn new(tree: Tree, store: Store, config: FsConfig) -> ReadOnlyFs {
        ReadOnlyFs {
            tree,
            store,
            config,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            objects: Mutex::new(HashMap::new()),
            recent: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(RECENT_OBJECT_FILES).expect("non-zero"),
            )),
            verified: Mutex::new(HashMap::new()),
            reported: Mutex::new(HashSet::new()),
            total_bytes: OnceLock::new(),
        }
    }

    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn time(&self) -> SystemTime {
        if self.config.time >= 0 {
            UNIX_EPOCH + Duration::from_secs(self.config.time as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(self.config.time.unsigned_abs())
        }
    }

    /// The child `name` of directory `parent`, with its attributes.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, FsError> {
        match self.tree.kind(parent) {
            None => return Err(FsError::NotFound),
            Some(NodeKind::File { .. } | NodeKind::Symlink { .. }) => return Err(FsError::NotDir),
            Some(NodeKind::Dir { .. }) => {}
        }
        let ino = self
            .tree
            .lookup(parent, name.as_bytes())
            .ok_or(FsError::NotFound)?;
        self.getattr(ino)
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        let kind = self.tree.kind(ino).ok_or(FsError::NotFound)?;
        let mode = self.tree.mode(ino).ok_or(FsError::NotFound)?;
        let (kind, size, nlink) = match kind {
            // `.`, the entry in the parent, and each subdirectory's `..`
            NodeKind::Dir { subdirs, .. } => (Kind::Dir, 0, 2 + subdirs),
            NodeKind::File { file } => {
                // A missing object still lists, with a 1-byte placeholder size: a reader must
                // reach us (open or read) and get EIO, never see a plausible empty file.
                let size = self.tree.file_size(file, &self.store).unwrap_or(1);
                (Kind::File, size, 1)
            }
            NodeKind::Symlink { .. } => {
                let len = self.tree.link_target(ino).map_or(0, <[u8]>::len);
                (Kind::Symlink, len as u64, 1)
            }
        };
        Ok(Attr {
            ino,
            kind,
            size,
            mode,
            nlink,
            uid: self.config.uid,
            gid: self.config.gid,
            atime: self.time(),
            mtime: self.time(),
            ctime: self.time(),
            rdev: 0,
        })
    }

    /// List directory `ino` from `offset` (0 = start; `.` and `..` come first).
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        replier: &mut dyn DirectoryReplier,
    ) -> Result<(), FsError> {
        match self.tree.kind(ino) {
            None => return Err(FsError::NotFound),
            Some(NodeKind::File { .. } | NodeKind::Symlink { .. }) => return Err(FsError::NotDir),
            Some(NodeKind::Dir { .. }) => {}
        }
        let children = self.tree.children(ino);
        let total = 2 + (children.end - children.start);
        for off in offset..total {
            let (child, name): (u64, &[u8]) = match off {
                0 => (ino, b"."),
                1 => (self.tree.parent(ino).unwrap_or(ROOT_INO), b".."),
                n => {
                    let c = children.start + n - 2;
                    (c, self.tree.name(c).unwrap_or_default())
                }
            };
            let full = if replier.wants_attrs() {
                let attr = self.getattr(child)?;
                replier.add(
                    child,
                    off + 1,
                    attr.kind,
                    OsStr::from_bytes(name),
                    Some(&attr),
                )
            } else {
                let kind = match self.tree.kind(child) {
                    Some(NodeKind::File { .. }) => Kind::File,
                    Some(NodeKind::Symlink { .. }) => Kind::Symlink,
                    _ => Kind::Dir,
                };
                replier.add(child, off + 1, kind, OsStr::from_bytes(name), None)
            };
            if full {
                break;
            }
        }
        Ok(())
    }

    /// What an open of `ino` would read: `Some(size)` of its object for a blob (0 when the
    /// object is missing: the open reports that), `None` for inline JSON.
    pub fn object_size(&self, ino: u64) -> Result<Option<u64>, FsError> {
        let file = self.file_of(ino)?;
        Ok(match self.tree.file_data(file) {
            FileData::Inline(_) => None,
            FileData::Object(_) => Some(self.tree.file_size(file, &self.store).unwrap_or(0)),
        })
    }

    /// Open a file for reading. Write access fails with EROFS.
    pub fn open(&self, ino: u64, flags: i32) -> Result<Opened, FsError> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(FsError::ReadOnly);
        }
        let file = self.file_of(ino)?;
        let handle = match self.tree.file_data(file) {
            FileData::Inline(_) => FileSource::Inline(self.tree.rendered(file)),
            FileData::Object(id) => FileSource::Object(self.open_object(file, *id)?),
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, handle.clone());
        Ok(Opened { fh, source: handle })
    }

    /// The file-table index of a file inode; a directory or symlink cannot be opened as one
    /// (the kernel resolves symlinks itself; one opened with `O_NOFOLLOW` is `ELOOP`).
    fn file_of(&self, ino: u64) -> Result<u32, FsError> {
        match self.tree.kind(ino).ok_or(FsError::NotFound)? {
            NodeKind::Dir { .. } => Err(FsError::IsDir),
            NodeKind::File { file } => Ok(file),
            NodeKind::Symlink { .. } => Err(FsError::Errno {
                op: "open",
                path: self.tree.path(ino),
                errno: libc::ELOOP,
            }),
        }
    }

    /// The target of a symlink (`EINVAL` for anything else, as readlink(2)).
    pub fn readlink(&self, ino: u64) -> Result<&[u8], FsError> {
        match self.tree.kind(ino).ok_or(FsError::NotFound)? {
            NodeKind::Symlink { .. } => Ok(self.tree.link_target(ino).unwrap_or_default()),
            _ => Err(FsError::Errno {
                op: "readlink",
                path: self.tree.path(ino),
                errno: libc::EINVAL,
            }),
        }
    }

    fn open_object(&self, file: u32, id: ObjectId) -> Result<Arc<ObjectFile>, FsError> {
        if let Some(of) = self.recent.lock().get(&file) {
            return Ok(of.clone());
        }
        if let Some(of) = self.objects.lock().get(&file).and_then(Weak::upgrade) {
            return Ok(of);
        }
        if self.config.verify {
            self.check_verified(file, id)?;
        }
        let f = match self.store.open(&id) {
            Ok(Some(f)) => f,
            Ok(None) => return Err(self.unavailable(file, id, "is missing from the store")),
            Err(e) => return Err(self.unavailable(file, id, &format!("cannot be opened: {e}"))),
        };
        let len = f
            .metadata()
            .map_err(|e| self.unavailable(file, id, &format!("cannot be read: {e}")))?
            .len();
        let of = Arc::new(ObjectFile {
            id,
            index: file,
            file: f,
            len,
            map: OnceLock::new(),
            prefetched: Default::default(),
            direct: OnceLock::new(),
        });
        let mut objects = self.objects.lock();
        // Another thread may have opened it meanwhile: share theirs.
        if let Some(existing) = objects.get(&file).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        objects.insert(file, Arc::downgrade(&of));
        // The weak map would grow with every file ever opened: drop dead entries now and then.
        if objects.len() > 4 * RECENT_OBJECT_FILES {
            objects.retain(|_, w| w.strong_count() > 0);
        }
        drop(objects);
        self.recent.lock().put(file, of.clone());
        Ok(of)
    }

    fn check_verified(&self, file: u32, id: ObjectId) -> Result<(), FsError> {
        let known = self.verified.lock().get(&id).copied();
        let ok = match known {
            Some(ok) => ok,
            None => {
                // Hashed outside the lock; two first opens may both hash, both agree.
                let ok = match self.store.verify(&id) {
                    Ok(Verified::Ok) => true,
                    Ok(Verified::Missing) => {
                        return Err(self.unavailable(file, id, "is missing from the store"))
                    }
                    Ok(Verified::Corrupt { actual }) => {
                        log::error!(
                            "object {id} needed for '{}' is corrupt: its content hashes to {actual}",
                            self.tree.file_path(file)
                        );
                        false
                    }
                    Err(e) => {
                        return Err(self.unavailable(file, id, &format!("cannot be read: {e}")))
                    }
                };
                self.verified.lock().insert(id, ok);
                ok
            }
        };
        if ok {
            Ok(())
        } else {
            Err(FsError::Unavailable {
                path: self.tree.file_path(file),
                id,
                why: "is corrupt".into(),
            })
        }
    }

    /// Build the error for an object that cannot be served, logging it once per object.
    fn unavailable(&self, file: u32, id: ObjectId, why: &str) -> FsError {
        let path = self.tree.file_path(file);
        if self.reported.lock().insert(id) {
            log::error!("object {id} needed for '{path}' {why}");
        }
        FsError::Unavailable {
            path,
            id,
            why: why.to_string(),
        }
    }

    /// Read up to `size` bytes at `offset` of an open file and hand them to `f` (no copy).
    pub fn read<R>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, FsError> {
        self.read_handle(&self.handle(fh)?, offset, size, f)
    }

    fn handle(&self, fh: u64) -> Result<FileSource, FsError> {
        self.handles
            .lock()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle(fh))
    }

    fn read_handle<R>(
        &self,
        handle: &FileSource,
        offset: u64,
        size: u32,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, FsError> {
        let mut f = Some(f);
        if let FileSource::Object(of) = handle {
            let bytes = self.mapped(of)?;
            let range = clip(bytes, offset, size);
            if let Some(dio) = of.direct_for(bytes, &range) {
                // Cold: read into this thread's aligned buffer and hand that over.
                let served = direct::with_buffer(|buf| match dio.read_range(range, buf) {
                    Ok(Some(n)) => Ok(f.take().map(|f| f(&buf[..n]))),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                });
                match served {
                    Ok(Some(r)) => return Ok(r),
                    Ok(None) => {}
                    Err(e) => direct::report(
                        direct::Trouble::Failed,
                        format_args!(
                            "direct read of object {} failed, read through the page cache: {e}",
                            of.id
                        ),
                    ),
                }
            }
        }
        let f = f.take().expect("the reply is sent once");
        Ok(f(self.cached_bytes(handle, offset, size)?))
    }

    /// The bytes `[offset, offset + size)` of a file as far as they exist, from the rendered
    /// inline value or the object's mapping (asking the kernel to read ahead of big reads).
    fn cached_bytes<'a>(
        &self,
        handle: &'a FileSource,
        offset: u64,
        size: u32,
    ) -> Result<&'a [u8], FsError> {
        Ok(match handle {
            FileSource::Inline(bytes) => &bytes[clip(bytes, offset, size)],
            FileSource::Object(of) => {
                let bytes = self.mapped(of)?;
                let range = clip(bytes, offset, size);
                of.prefetch_after(range.end as u64);
                &bytes[range]
            }
        })
    }

    /// Read up to `buf.len()` bytes at `offset` of a file into `buf` (by open handle, or by
    /// inode when `fh` is 0: no-open mode), copied from the rendered value or the object's
    /// mapping; the count read. For transports that give the daemon the reply's buffer (FUSE
    /// over io_uring), after a disk read `read_or_plan` planned came back short or failed.
    pub fn read_into(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, FsError> {
        self.copy_into(&self.source(ino, fh)?, offset, buf)
    }

    /// As `read_into`, except that a big read of an object whose pages are not all cached
    /// (`fs::direct`), into a `buf` aligned for direct I/O, is left to the caller to read from
    /// the disk: `ReadInto::Planned`.
    pub fn read_or_plan(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<ReadInto, FsError> {
        let handle = self.source(ino, fh)?;
        if let FileSource::Object(of) = &handle {
            let bytes = self.mapped(of)?;
            let range = clip(bytes, offset, len_u32(buf));
            let planned = of
                .direct_for(bytes, &range)
                .and_then(|dio| dio.plan(&range, buf));
            if let Some((offset, read_len)) = planned {
                return Ok(ReadInto::Planned(DirectPlan {
                    object: of.clone(),
                    offset,
                    read_len,
                    reply_len: range.len(),
                }));
            }
        }
        Ok(ReadInto::Copied(self.copy_into(&handle, offset, buf)?))
    }

    fn copy_into(
        &self,
        handle: &FileSource,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, FsError> {
        let data = self.cached_bytes(handle, offset, len_u32(buf))?;
        buf[..data.len()].copy_from_slice(data);
        Ok(data.len())
    }

    /// What a read reads from: the open handle `fh`, or inode `ino` when `fh` is 0.
    fn source(&self, ino: u64, fh: u64) -> Result<FileSource, FsError> {
        if fh == 0 {
            self.source_of_inode(ino)
        } else {
            self.handle(fh)
        }
    }

    /// The mapped bytes of an object file.
    fn mapped<'a>(&self, of: &'a ObjectFile) -> Result<&'a [u8], FsError> {
        of.bytes()
            .map_err(|e| self.unavailable(of.index, of.id, &format!("cannot be mapped: {e}")))
    }

    /// Read a file by inode, without an open handle: for kernels that open files without
    /// asking (FUSE no-open mode). Missing/corrupt objects fail here with EIO instead of at open.
    pub fn read_inode<R>(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, FsError> {
        let handle = self.source_of_inode(ino)?;
        self.read_handle(&handle, offset, size, f)
    }

    /// What a file reads from, without an open handle.
    fn source_of_inode(&self, ino: u64) -> Result<FileSource, FsError> {
        let file = self.file_of(ino)?;
        Ok(match self.tree.file_data(file) {
            FileData::Inline(_) => FileSource::Inline(self.tree.rendered(file)),
            FileData::Object(id) => FileSource::Object(self.open_object(file, *id)?),
        })
    }

    /// Forget an open handle.
    pub fn release(&self, fh: u64) -> Result<(), FsError> {
        self.handles
            .lock()
            .remove(&fh)
            .map(drop)
            .ok_or(FsError::BadHandle(fh))
    }

    /// Open directory check (directories have no per-open state).
    pub fn opendir(&self, ino: u64, flags: i32) -> Result<(), FsError> {
        match self.tree.kind(ino) {
            None => Err(FsError::NotFound),
            Some(NodeKind::File { .. } | NodeKind::Symlink { .. }) => Err(FsError::NotDir),
            Some(NodeKind::Dir { .. }) if flags & libc::O_ACCMODE != libc::O_RDONLY => {
                Err(FsError::ReadOnly)
            }
            Some(NodeKind::Dir { .. }) => Ok(()),
        }
    }

    /// Filesystem figures: the tree's size in blocks (objects are stat'ed once, on first call),
    /// its inode count, and nothing free (it is read-only).
    pub fn statfs(&self) -> Statfs {
        let bytes = *self.total_bytes.get_or_init(|| {
            (0..self.tree.file_count() as u32)
                .map(|f| self.tree.file_size(f, &self.store).unwrap_or(0))
                .sum()
        });
        Statfs {
            blocks: bytes.div_ceil(BLOCK_SIZE as u64),
            bfree: 0,
            bavail: 0,
            files: self.tree.len() as u64,
            ffree: 0,
            bsize: BLOCK_SIZE,
            namelen: NAME_MAX as u32,
            frsize: BLOCK_SIZE,
        }
    }

    /// No inode has extended attributes.
    pub fn getxattr(&self, ino: u64, _name: &OsStr) -> Result<Vec<u8>, FsError> {
        self.getattr(ino)?;
        Err(FsError::NoXattr)
    }

    /// The (empty) list of extended attribute names.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        self.getattr(ino)?;
        Ok(Vec::new())
    }

    /// Every write-type operation (setattr, mknod, mkdir, unlink, rmdir, symlink, rename, link,
    /// write, create, setxattr, removexattr, fallocate, copy_file_range) ends here.
    pub fn write_op(&self, _what: &'static str) -> Result<(), FsError> {
        Err(FsError::ReadOnly)
    }
}

/// How a revision is presented (`pvrfs mount` options that concern the filesystem itself).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Inline JSON as `checkout --canonical` writes it, instead of pvr's default rendering.
    pub canonical: bool,
    /// Owner shown for every node (default: the mounting user).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Hash each object once before serving it.
    pub verify: bool,
}

/// A revision ready to be served.
pub struct Prepared {
    pub repo: Repo,
    pub rev: Revision,
    pub fs: Arc<ReadOnlyFs>,
}

/// Open the repository at `repo_dir`, resolve `spec` and build the filesystem of that revision:
/// O(paths), no object is read.
pub fn prepare(repo_dir: &std::path::Path, spec: &str, opts: &Options) -> RepoResult<Prepared> {
    // A fixed mmap threshold: glibc otherwise raises it after the big state buffers are freed,
    // and later large zeroed buffers (FUSE request buffers) come from the heap and are memset.
    crate::sys::fix_mmap_threshold(1 << 20);
    let repo = Repo::open(repo_dir)?;
    let rev = repo.resolve(spec)?;
    let state = repo.load_state(&rev)?;
    let fs = from_state(&repo, &rev, state, opts);
    // The parsed state is gone; hand its heap back so the daemon's RSS is the index only.
    crate::sys::trim_heap();
    Ok(Prepared { repo, rev, fs })
}

/// The read-only filesystem of revision `rev` of `repo`, whose state is `state` (already
/// loaded: the kernel-overlay backend keeps a copy for its commits).
pub fn from_state(
    repo: &Repo,
    rev: &Revision,
    state: crate::state::State,
    opts: &Options,
) -> Arc<ReadOnlyFs> {
    let rendering = if opts.canonical {
        super::tree::Rendering::Canonical
    } else {
        super::tree::Rendering::Checkout
    };
    let tree = Tree::build(state, rendering);
    Arc::new(ReadOnlyFs::new(
        tree,
        repo.store().clone(),
        FsConfig {
            uid: opts
                .uid
                .unwrap_or_else(|| rustix::process::getuid().as_raw()),
            gid: opts
                .gid
                .unwrap_or_else(|| rustix::process::getgid().as_raw()),
            time: rev.time,
            verify: opts.verify,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::{prefetch_chunks, prefetch_range, ObjectFile, PREFETCH, PREFETCH_CHUNK};
    use std::sync::OnceLock;

    #[test]
    fn big_objects_are_read_ahead_once_per_half_window() {
        let len = 1 << 30;
        // the first read asks for the window after it
        assert_eq!(
            prefetch_range(len, 1 << 20, 0),
            Some((1 << 20, (1 << 20) + PREFETCH))
        );
        // still more than half a window ahead: nothing to ask
        let asked = (1 << 20) + PREFETCH;
        assert_eq!(prefetch_range(len, 2 << 20, asked), None);
        // less than half a window left: ask for the rest of the next window, not again for
        // what was asked before
        let end = asked - PREFETCH / 2 + 1;
        assert_eq!(
            prefetch_range(len, end, asked),
            Some((asked, end + PREFETCH))
        );
        // a reader that overtook what was asked starts from where it reads; the window stops
        // at the end of the object, and nothing is asked past it
        assert_eq!(
            prefetch_range(len, len - (1 << 20), len - (4 << 20)),
            Some((len - (1 << 20), len))
        );
        assert_eq!(prefetch_range(len, len, len), None);
        assert_eq!(prefetch_range(len, len - 1, len), None);
    }

    #[test]
    fn prefetch_chunks_cover_the_range_in_small_pieces() {
        let chunks: Vec<_> = prefetch_chunks(3, 3 + 2 * PREFETCH_CHUNK + 5).collect();
        assert_eq!(
            chunks,
            vec![
                (3, 3 + PREFETCH_CHUNK),
                (3 + PREFETCH_CHUNK, 3 + 2 * PREFETCH_CHUNK),
                (3 + 2 * PREFETCH_CHUNK, 3 + 2 * PREFETCH_CHUNK + 5)
            ]
        );
        assert_eq!(prefetch_chunks(7, 7).count(), 0);
    }

    /// Pages of `map` in `range` that are in the page cache.
    fn resident_pages(map: &memmap2::Mmap, range: std::ops::Range<usize>) -> usize {
        let page = rustix::param::page_size();
        let mut vec = vec![0u8; map.len().div_ceil(page)];
        // SAFETY: `map` is a live mapping of `map.len()` bytes and `vec` holds one byte per
        // page of it, as mincore(2) requires.
        let rc = unsafe { libc::mincore(map.as_ptr() as *mut _, map.len(), vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        vec[range.start / page..range.end / page]
            .iter()
            .filter(|&&b| b & 1 == 1)
            .count()
    }

    /// The whole window asked for is read ahead, not only the first max(read_ahead_kb,
    /// max_sectors_kb) of it (the kernel drops the rest of a bigger WILLNEED). A real file on
    /// the disk the tests are built on; skipped where its pages cannot be dropped (tmpfs).
    #[test]
    fn the_whole_prefetch_window_reaches_the_page_cache() {
        let dir = std::env::current_exe().unwrap();
        let dir = tempfile::tempdir_in(dir.parent().unwrap()).unwrap();
        let path = dir.path().join("object");
        let len: u64 = 3 * PREFETCH;
        let file = std::fs::File::create(&path).unwrap();
        // Sparse: the kernel reads holes into the page cache as zero pages, without I/O.
        file.set_len(len).unwrap();
        file.sync_all().unwrap();
        drop(file);
        let file = std::fs::File::open(&path).unwrap();
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
        // SAFETY: a private test file nobody else changes.
        let map = unsafe { memmap2::Mmap::map(&file).unwrap() };
        let (from, to) = (1 << 20, (1 << 20) + PREFETCH as usize);
        if resident_pages(&map, from..to) > 0 {
            println!(
                "SKIPPED: the page cache of {} cannot be dropped",
                path.display()
            );
            return;
        }
        let of = ObjectFile {
            id: crate::oid::ObjectId::from_bytes([7; 32]),
            index: 0,
            file,
            len,
            map: OnceLock::new(),
            prefetched: Default::default(),
            direct: OnceLock::new(),
        };
        of.prefetch_after(from as u64);
        let want = (to - from) / rustix::param::page_size();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut got = resident_pages(&map, from..to);
        while got < want && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            got = resident_pages(&map, from..to);
        }
        assert_eq!(got, want, "pages of the prefetch window in the page cache");
    }

    #[test]
    fn small_objects_are_left_to_the_kernels_readahead() {
        assert_eq!(prefetch_range(PREFETCH, 4096, 0), None);
        assert_eq!(prefetch_range(4 << 20, 0, 0), None);
    }
}

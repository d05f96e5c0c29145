//! The copy-on-write overlay of one writable mount, as plain Rust (no FUSE in here).
//!
//! # Layout
//!
//! ```text
//! W/.pvr/pvrfs/overlay/<id>/
//! ├── lock        flock(2): one process at a time owns an overlay
//! ├── snapshot    JSON {generation, header {base_rev, base_state, next_id}, records}
//! ├── journal     magic + generation, then checksummed records appended since the snapshot
//! └── upper/
//!     └── u<N>    real files holding the data of new or copied-up regular files
//! ```
//!
//! # Model
//!
//! The merged view is an in-memory tree of `Node`s keyed by inode number, built from the base
//! revision's state and then changed by [`Record`]s — the snapshot's, then the journal's. Every
//! mutating operation validates everything first, then appends its record to the journal, then
//! applies it to memory, so the journal is the truth and memory is a cache of "base + records".
//! Records name paths, not inodes, so replay does not depend on how the base was numbered. File
//! *data* never goes through the journal: it lives in upper files. Durability is a local file
//! system's: everything acknowledged survives a killed process (page cache), and [`Overlay::sync`]
//! (run by `fsync` of any handle, compaction, commit, drop) makes it survive a power cut, upper
//! files before the journal records that name them. See docs/OVERLAY.md.
//!
//! # Inode model
//!
//! - Inode 1 is the root. Base directories and files get 2, 3, … in the order they first appear
//!   while walking the base state's keys in their sorted (code point) order — each directory just
//!   before its first descendant — so a revision always numbers the same.
//! - New nodes (and upper files) take ids from one counter, `next_id`, which starts above the base
//!   numbering and is persisted in the header; the id a record allocated is in the record, so a
//!   new node keeps its inode across remounts.
//! - After a commit the tree keeps its inodes (the kernel may hold them); the new base is numbered
//!   afresh only at the next mount. Because every node of the new base existed before the commit
//!   (numbered below `next_id`), a fresh numbering of the new base stays below `next_id` too and
//!   never collides with inodes of records written later.
//! - Hard links: one node, several `(parent, name)` links; `nlink` is their count. A node whose
//!   last link goes away stays in memory (readable through open handles) until [`Overlay::forget`].
//!
//! # Node kinds
//!
//! Directories, regular files (base content or an upper file), symlinks, and *special* nodes:
//! FIFOs, sockets, character and block devices ([`Overlay::mknod`], journaled as `mknod`
//! records with their device number). Special nodes have no content in the overlay — the
//! kernel runs pipes and sockets in its own inode and FUSE mounts are `nodev` — and the pvr
//! format cannot hold them, so a commit reports each and keeps it in the overlay. Every kind
//! can be renamed, hard-linked (but directories), unlinked and have its attributes set.
//!
//! Times: every name change (`attach`/`detach`: create, link, unlink, rename) sets the node's
//! ctime and its directory's mtime and ctime to now, as a local file system does; `setattr`
//! sets ctime. Only explicitly set atime/mtime are journaled; at load, a node a record touched
//! gets the load time as its ctime.
//!
//! # Change tracking (what makes commit O(change))
//!
//! `affected` holds every path an operation touched (both ends of a rename, the new name of a
//! link and its source, chmod'ed paths...). Its minimal prefixes ("roots") cover every difference
//! between base and view: commit removes the base keys under each root and re-adds the files
//! found under it in the view, hashing only upper files. Every path of a hard-linked node is
//! affected, so a snapshot can rebuild links. Compaction writes, per root, "remove what the base
//! has there" followed by the records that recreate the current subtree.

mod commit;
mod journal;
mod pool;

pub use commit::{CommitReport, StatusLine};

use crate::error::{Error, IoContext, Result as RepoResult};
use crate::fsutil;
use crate::json::{self, Value};
use crate::oid::ObjectId;
use crate::repo::{Repo, Revision};
use crate::state::{Entry, State};
use journal::{Header, Journal, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Inode of the root directory.
pub const ROOT: u64 = 1;
const DIR_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;
const NAME_MAX: usize = 255;
/// Compact the journal into a new snapshot once it grows past this many bytes (and twice the
/// snapshot: `Journal::wants_compaction`).
const COMPACT_AT: u64 = 4 << 20;
/// A removed upper file at least this big is deleted as soon as nothing uses it
/// (`free_big_upper`); smaller ones at the next compaction.
const FREE_EARLY_MIN: u64 = 1 << 20;
/// Up to this many new upper files, `sync` fsyncs them one by one; beyond, one `syncfs`.
const FSYNC_EACH_MAX: usize = 64;

/// An overlay operation's error: an errno for the caller plus what failed, or a repository error.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{op} '{path}': {}", std::io::Error::from_raw_os_error(*.errno))]
    Errno {
        op: &'static str,
        path: String,
        errno: i32,
    },
    #[error(transparent)]
    Repo(#[from] Error),
}

impl FsError {
    /// The errno a filesystem caller should see.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Errno { errno, .. } => *errno,
            FsError::Repo(e) => e.errno(),
        }
    }
}

pub type Result<T, E = FsError> = std::result::Result<T, E>;

fn errno(op: &'static str, path: impl Into<String>, errno: i32) -> FsError {
    FsError::Errno {
        op,
        path: path.into(),
        errno,
    }
}

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// A named pipe (`mkfifo`): the kernel runs it, the overlay only names it.
    Fifo,
    /// A unix socket's name (`bind` on a path).
    Socket,
    CharDevice,
    BlockDevice,
}

impl Kind {
    /// The special kind of a `mknod` mode's type bits (`S_IFIFO`, `S_IFSOCK`, `S_IFCHR`,
    /// `S_IFBLK`); `None` for any other type.
    pub fn special_from_mode(mode: u32) -> Option<Kind> {
        match mode & libc::S_IFMT {
            libc::S_IFIFO => Some(Kind::Fifo),
            libc::S_IFSOCK => Some(Kind::Socket),
            libc::S_IFCHR => Some(Kind::CharDevice),
            libc::S_IFBLK => Some(Kind::BlockDevice),
            _ => None,
        }
    }

    /// FIFOs, sockets and devices: nodes with no content of their own (see `Overlay::mknod`).
    pub fn is_special(self) -> bool {
        matches!(
            self,
            Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice
        )
    }

    /// Whether `rdev` means something for this kind (device nodes only).
    fn has_rdev(self) -> bool {
        matches!(self, Kind::CharDevice | Kind::BlockDevice)
    }

    /// How messages name this kind ("fifo 'p' is not stored").
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File => "file",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::CharDevice => "character device",
            Kind::BlockDevice => "block device",
        }
    }
}

/// Attributes of a node, as `getattr` reports them.
#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    /// Permission bits only (no file type bits).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Device number of a character or block device (as the kernel encodes it), else 0.
    pub rdev: u32,
}

/// Changes requested by `setattr`; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

/// Flags of `rename`, as renameat2(2) has them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenameFlags {
    pub noreplace: bool,
    pub exchange: bool,
}

/// Mount-wide settings.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Render inline JSON as `checkout --canonical` does instead of pvr's default checkout.
    pub canonical_json: bool,
    /// Make empty upper files ahead of need in a background thread (see `pool`): a mount's
    /// daemon wants it, a short-lived command does not.
    pub upper_pool: bool,
}

/// An open file. Holding the descriptor (not a path) keeps an unlinked file readable.
#[derive(Debug, Clone)]
pub enum Handle {
    /// An upper file; `write` says whether the caller may write through it.
    Upper {
        ino: u64,
        file: Arc<File>,
        write: bool,
    },
    /// A base blob, read straight from the object store.
    Blob { file: Arc<File> },
    /// A base inline JSON file, rendered.
    Inline { bytes: Arc<Vec<u8>> },
}

/// Where a regular file's bytes are.
#[derive(Debug, Clone, PartialEq)]
enum Content {
    Base(Entry),
    Upper(u64),
}

#[derive(Debug, Clone)]
enum Body {
    Dir(BTreeMap<String, u64>),
    File(Content),
    Symlink(String),
    /// A FIFO, socket or device node (`Kind::is_special`) and its device number.
    Special(Kind, u32),
}

impl Body {
    fn kind(&self) -> Kind {
        match self {
            Body::Dir(_) => Kind::Dir,
            Body::File(_) => Kind::File,
            Body::Symlink(_) => Kind::Symlink,
            Body::Special(kind, _) => *kind,
        }
    }
}

#[derive(Debug, Clone)]
struct Node {
    body: Body,
    mode: u32,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Every `(parent, name)` naming this node; directories have exactly one (root: none).
    links: Vec<(u64, String)>,
}

/// Seconds and nanoseconds since the epoch, as records store times.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Time(i64, u32);

impl From<SystemTime> for Time {
    fn from(t: SystemTime) -> Time {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Time(d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => Time(-(e.duration().as_secs() as i64), 0),
        }
    }
}

impl From<Time> for SystemTime {
    fn from(t: Time) -> SystemTime {
        if t.0 >= 0 {
            UNIX_EPOCH + Duration::new(t.0 as u64, t.1)
        } else {
            UNIX_EPOCH - Duration::from_secs(t.0.unsigned_abs())
        }
    }
}

/// One journal record: a metadata change, by path (see module docs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    Mkdir {
        path: String,
        ino: u64,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// A regular file backed by upper file `u<upper>` (created empty if missing on replay).
    Create {
        path: String,
        ino: u64,
        upper: u64,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Symlink {
        path: String,
        ino: u64,
        target: String,
        uid: u32,
        gid: u32,
    },
    /// A FIFO, socket or device node (`kind` is one of those; `rdev` 0 but for devices).
    Mknod {
        path: String,
        ino: u64,
        kind: Kind,
        rdev: u32,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// A regular file holding base content (snapshots only: a moved or re-linked base file).
    PutBase {
        path: String,
        ino: u64,
        object: Option<String>,
        /// Canonical JSON text (not a JSON value: numbers must keep their canonical form).
        inline: Option<String>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// The file at `path` now lives in upper file `u<upper>` (written and synced before).
    CopyUp {
        path: String,
        upper: u64,
    },
    Link {
        src: String,
        dst: String,
    },
    /// Unlink a file or symlink, remove a directory (with its subtree in snapshots).
    Remove {
        path: String,
    },
    Rename {
        src: String,
        dst: String,
        exchange: bool,
    },
    SetAttr {
        path: String,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        atime: Option<Time>,
        mtime: Option<Time>,
    },
}

/// The overlay of one mount: base revision + changes, with its journal open for appends.
pub struct Overlay {
    repo: Repo,
    dir: PathBuf,
    opts: Options,
    base_rev: u64,
    base: State,
    /// The base revision's state id (kept, not recomputed: hashing a large state is O(tree)).
    base_state_id: ObjectId,
    base_time: SystemTime,
    nodes: HashMap<u64, Node>,
    /// Subdirectories per directory (its `nlink` - 2), kept by `attach`/`detach` so `getattr`
    /// of a directory is O(1), not O(entries): the kernel asks it after every create in it.
    subdirs: HashMap<u64, u32>,
    next_id: u64,
    affected: BTreeSet<String>,
    /// Inodes whose content is an upper file.
    uppers: HashSet<u64>,
    /// Open write handles per inode (such files stay in the overlay across a commit).
    writers: HashMap<u64, u32>,
    /// Open handles of upper files per inode, readers included: an unlinked node and its upper
    /// file live while one is open, so `getattr` through an open descriptor keeps working.
    handles: HashMap<u64, u32>,
    /// Upper files created since the last `sync`: their data and names must be durable before
    /// the journal records naming them are.
    unsynced_uppers: Vec<u64>,
    /// Upper files of nodes dropped by the record being applied (see `free_big_upper`).
    dropped_uppers: Vec<u64>,
    generation: u64,
    /// `None` only while an overlay is being opened (before its first snapshot or replay).
    journal: Option<Journal>,
    /// Started at the first `create` when `Options::upper_pool` is set.
    pool: Option<pool::UpperPool>,
    /// `upper/`, for the `*at` calls of hot paths (a stat per `getattr`): one path component
    /// to resolve instead of the overlay's whole path.
    upper_fd: std::os::fd::OwnedFd,
    /// Declared last: dropped after the pool has removed its untaken files.
    _lock: File,
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

fn check_name(op: &'static str, name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(errno(op, name, libc::EINVAL));
    }
    if name.len() > NAME_MAX {
        return Err(errno(op, name, libc::ENAMETOOLONG));
    }
    Ok(())
}

/// Directory of the overlay `id` of a repository.
pub fn overlay_dir(repo: &Repo, id: &str) -> PathBuf {
    repo.ext_dir().join("overlay").join(id)
}

fn check_id(id: &str) -> RepoResult<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "invalid overlay name '{id}': use letters, digits, '-' and '_'"
        )))
    }
}

impl Overlay {
    /// Create overlay `id` on revision `rev_spec` (refused if it exists), or open it.
    pub fn load_or_create(
        repo: &Repo,
        id: &str,
        rev_spec: &str,
        opts: Options,
    ) -> RepoResult<Overlay> {
        check_id(id)?;
        let dir = overlay_dir(repo, id);
        if journal::read_snapshot(&dir)?.is_some() {
            return Self::load(repo, id, opts);
        }
        let rev = repo.resolve(rev_spec)?;
        let state = repo.load_state(&rev)?;
        fs::create_dir_all(dir.join("upper")).ctx("create", &dir)?;
        let lock = lock_dir(&dir)?;
        let mut ov = Overlay::from_base(repo, dir, opts, &rev, state, lock)?;
        ov.compact()?;
        Ok(ov)
    }

    /// Open an existing overlay and replay its snapshot and journal.
    pub fn load(repo: &Repo, id: &str, opts: Options) -> RepoResult<Overlay> {
        check_id(id)?;
        let dir = overlay_dir(repo, id);
        let lock = lock_dir(&dir)?;
        let snap = journal::read_snapshot(&dir)?.ok_or_else(|| {
            Error::Usage(format!(
                "no overlay named '{id}' in {}",
                repo.workdir().display()
            ))
        })?;
        let rev = repo.resolve(&snap.header.base_rev.to_string())?;
        if rev.state.0.to_hex() != snap.header.base_state {
            return Err(Error::Conflict(format!(
                "overlay '{id}' was made on revision {} with state {}, but that revision now has state {}",
                rev.rev, snap.header.base_state, rev.state.0
            )));
        }
        let state = repo.load_state(&rev)?;
        let mut ov = Overlay::from_base(repo, dir.clone(), opts, &rev, state, lock)?;
        ov.next_id = ov.next_id.max(snap.header.next_id);
        ov.generation = snap.generation;
        let (records, journal) = journal::replay(&dir, snap.generation)?;
        for rec in snap.records.iter().chain(&records) {
            ov.apply(rec).map_err(|e| {
                Error::Other(format!(
                    "overlay {}: cannot replay {rec:?}: {e}",
                    dir.display()
                ))
            })?;
        }
        ov.journal = Some(journal);
        ov.finish_interrupted_commit()?;
        // A fresh snapshot per load keeps replay short and lets unreferenced upper files go.
        ov.compact()?;
        Ok(ov)
    }

    /// Delete overlay `id` and everything in it (`reset --mount`).
    pub fn discard(repo: &Repo, id: &str) -> RepoResult<()> {
        check_id(id)?;
        let dir = overlay_dir(repo, id);
        if !dir.exists() {
            return Ok(());
        }
        let _lock = lock_dir(&dir)?;
        // The snapshot goes first: without it the directory is no overlay at all.
        let snap = journal::snapshot_path(&dir);
        if snap.exists() {
            fs::remove_file(&snap).ctx("remove", &snap)?;
        }
        fs::remove_dir_all(&dir).ctx("remove", &dir)
    }

    fn from_base(
        repo: &Repo,
        dir: PathBuf,
        opts: Options,
        rev: &Revision,
        base: State,
        lock: File,
    ) -> RepoResult<Overlay> {
        let base_time = SystemTime::from(Time(rev.time, 0));
        let (base_rev, base_state_id) = (rev.rev, rev.state.0);
        let mut nodes = HashMap::new();
        let dir_node = |links| Node {
            body: Body::Dir(BTreeMap::new()),
            mode: DIR_MODE,
            uid: 0,
            gid: 0,
            atime: base_time,
            mtime: base_time,
            ctime: base_time,
            links,
        };
        nodes.insert(ROOT, dir_node(Vec::new()));
        let mut dirs: HashMap<String, u64> = HashMap::new();
        dirs.insert(String::new(), ROOT);
        let mut next = ROOT + 1;
        for (key, entry) in base.iter() {
            let mut parent = ROOT;
            let mut at = 0;
            // Create missing ancestors first, in order: they take the lower numbers.
            while let Some(i) = key[at..].find('/') {
                let prefix = &key[..at + i];
                parent = match dirs.get(prefix) {
                    Some(&ino) => ino,
                    None => {
                        let ino = next;
                        next += 1;
                        let name = split(prefix).1.to_string();
                        nodes.insert(ino, dir_node(vec![(parent, name.clone())]));
                        dir_children(&mut nodes, parent).insert(name, ino);
                        dirs.insert(prefix.to_string(), ino);
                        ino
                    }
                };
                at += i + 1;
            }
            let ino = next;
            next += 1;
            let name = key[at..].to_string();
            nodes.insert(
                ino,
                Node {
                    body: Body::File(Content::Base(entry.clone())),
                    mode: FILE_MODE,
                    uid: 0,
                    gid: 0,
                    atime: base_time,
                    mtime: base_time,
                    ctime: base_time,
                    links: vec![(parent, name.clone())],
                },
            );
            dir_children(&mut nodes, parent).insert(name, ino);
        }
        let upper_dir = dir.join("upper");
        fs::create_dir_all(&upper_dir).ctx("create", &upper_dir)?;
        let upper_fd = rustix::fs::open(
            &upper_dir,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(std::io::Error::from)
        .ctx("open", &upper_dir)?;
        let uid = unsafe { libc::geteuid() };
        let gid = unsafe { libc::getegid() };
        let mut subdirs: HashMap<u64, u32> = HashMap::new();
        for node in nodes.values_mut() {
            node.uid = uid;
            node.gid = gid;
            if matches!(node.body, Body::Dir(_)) {
                for (parent, _) in &node.links {
                    *subdirs.entry(*parent).or_default() += 1;
                }
            }
        }
        Ok(Overlay {
            repo: repo.clone(),
            dir,
            opts,
            base_rev,
            base_state_id,
            base,
            base_time,
            nodes,
            subdirs,
            next_id: next,
            affected: BTreeSet::new(),
            uppers: HashSet::new(),
            writers: HashMap::new(),
            handles: HashMap::new(),
            unsynced_uppers: Vec::new(),
            dropped_uppers: Vec::new(),
            generation: 0,
            journal: None,
            pool: None,
            upper_fd,
            _lock: lock,
        })
    }

    /// The revision the overlay is based on.
    pub fn base_rev(&self) -> u64 {
        self.base_rev
    }

    pub fn base_state(&self) -> &State {
        &self.base
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn upper_path(&self, upper: u64) -> PathBuf {
        self.dir.join("upper").join(format!("u{upper}"))
    }

    /// `stat` of an upper file, relative to `upper_fd`.
    fn upper_stat(&self, upper: u64) -> Result<rustix::fs::Stat> {
        rustix::fs::statat(
            &self.upper_fd,
            format!("u{upper}"),
            rustix::fs::AtFlags::empty(),
        )
        .map_err(std::io::Error::from)
        .ctx("stat upper file", self.upper_path(upper))
        .map_err(Into::into)
    }

    fn node(&self, ino: u64) -> Result<&Node> {
        self.nodes
            .get(&ino)
            .ok_or_else(|| errno("find inode", ino.to_string(), libc::ENOENT))
    }

    /// The path of a linked node ("" for the root; `None` when unlinked).
    pub fn path_of(&self, ino: u64) -> Option<String> {
        if ino == ROOT {
            return Some(String::new());
        }
        let (parent, name) = self.nodes.get(&ino)?.links.first()?;
        Some(join(&self.path_of(*parent)?, name))
    }

    fn display_path(&self, ino: u64) -> String {
        self.path_of(ino)
            .map(|p| format!("/{p}"))
            .unwrap_or_else(|| format!("<inode {ino}>"))
    }

    /// Resolve a `/`-separated path from the root (no symlinks followed).
    pub fn resolve(&self, path: &str) -> Option<u64> {
        let mut ino = ROOT;
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            match &self.nodes.get(&ino)?.body {
                Body::Dir(children) => ino = *children.get(seg)?,
                _ => return None,
            }
        }
        Some(ino)
    }

    fn children(&self, op: &'static str, ino: u64) -> Result<&BTreeMap<String, u64>> {
        match &self.node(ino)?.body {
            Body::Dir(c) => Ok(c),
            _ => Err(errno(op, self.display_path(ino), libc::ENOTDIR)),
        }
    }

    fn child(&self, op: &'static str, parent: u64, name: &str) -> Result<Option<u64>> {
        Ok(self.children(op, parent)?.get(name).copied())
    }

    // ----- queries ---------------------------------------------------------------------------

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr> {
        match self.child("lookup", parent, name)? {
            Some(ino) => self.getattr(ino),
            None => Err(errno(
                "lookup",
                join(&self.display_path(parent), name),
                libc::ENOENT,
            )),
        }
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let node = self.node(ino)?;
        let (kind, size, mtime, ctime) = match &node.body {
            Body::Dir(c) => (Kind::Dir, c.len() as u64, node.mtime, node.ctime),
            Body::Symlink(t) => (Kind::Symlink, t.len() as u64, node.mtime, node.ctime),
            Body::File(Content::Upper(u)) => {
                let st = self.upper_stat(*u)?;
                let nsec = Duration::from_nanos(st.st_mtime_nsec);
                let mtime = if st.st_mtime >= 0 {
                    UNIX_EPOCH + Duration::from_secs(st.st_mtime as u64) + nsec
                } else {
                    UNIX_EPOCH - Duration::from_secs(st.st_mtime.unsigned_abs()) + nsec
                };
                (Kind::File, st.st_size as u64, mtime, node.ctime.max(mtime))
            }
            Body::File(Content::Base(e)) => {
                (Kind::File, self.base_size(ino, e)?, node.mtime, node.ctime)
            }
            Body::Special(kind, _) => (*kind, 0, node.mtime, node.ctime),
        };
        let rdev = match node.body {
            Body::Special(_, rdev) => rdev,
            _ => 0,
        };
        let nlink = match &node.body {
            Body::Dir(_) => 2 + self.subdirs.get(&ino).copied().unwrap_or(0),
            _ => node.links.len() as u32,
        };
        Ok(Attr {
            ino,
            kind,
            size,
            mode: node.mode,
            nlink,
            uid: node.uid,
            gid: node.gid,
            atime: node.atime,
            mtime,
            ctime,
            rdev,
        })
    }

    fn base_size(&self, ino: u64, e: &Entry) -> Result<u64> {
        match e {
            Entry::Object(id) => {
                let path = self.repo.store().path_of(id);
                match fs::metadata(&path) {
                    Ok(md) => Ok(md.len()),
                    Err(_) => Err(self
                        .repo
                        .store()
                        .missing(id, self.path_of(ino).as_deref())
                        .into()),
                }
            }
            Entry::Inline(v) => Ok(self.render(v).len() as u64),
        }
    }

    fn render(&self, v: &Value) -> Vec<u8> {
        if self.opts.canonical_json {
            json::render_checkout_canonical(v)
        } else {
            json::render_checkout(v)
        }
    }

    /// The children of a directory, in name order (without `.` and `..`).
    pub fn readdir(&self, ino: u64) -> Result<Vec<(String, u64, Kind)>> {
        Ok(self
            .children("readdir", ino)?
            .iter()
            .map(|(name, &child)| (name.clone(), child, self.nodes[&child].body.kind()))
            .collect())
    }

    pub fn readlink(&self, ino: u64) -> Result<String> {
        match &self.node(ino)?.body {
            Body::Symlink(t) => Ok(t.clone()),
            _ => Err(errno("readlink", self.display_path(ino), libc::EINVAL)),
        }
    }

    // ----- the journal -------------------------------------------------------------------------

    /// Journal a record, then apply it. Callers have validated it, so applying cannot fail
    /// except through a bug, which is reported rather than hidden.
    fn commit_record(&mut self, rec: Record) -> Result<()> {
        let journal = self
            .journal
            .as_mut()
            .expect("an open overlay has a journal");
        journal.append(&rec)?;
        let compact = journal.wants_compaction(COMPACT_AT);
        self.dropped_uppers.clear(); // left over from replay: compaction handles those
        self.apply(&rec)?;
        for u in std::mem::take(&mut self.dropped_uppers) {
            self.free_big_upper(u);
        }
        if compact {
            self.compact()?;
        }
        Ok(())
    }

    fn alloc(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn mark(&mut self, path: &str) {
        if !path.is_empty() {
            self.affected.insert(path.to_string());
        }
    }

    /// Insert a node under the inode its record names, or a fresh one if that inode is taken:
    /// after a commit, a node kept in the overlay may carry an inode that the new base's own
    /// numbering gives to another node at the next load. Returns the inode used.
    fn new_node(&mut self, ino: u64, body: Body, mode: u32, uid: u32, gid: u32) -> u64 {
        let now = SystemTime::now();
        self.next_id = self.next_id.max(ino + 1);
        let ino = if self.nodes.contains_key(&ino) {
            self.alloc()
        } else {
            ino
        };
        if let Body::File(Content::Upper(u)) = body {
            self.next_id = self.next_id.max(u + 1);
            self.uppers.insert(ino);
        }
        self.nodes.insert(
            ino,
            Node {
                body,
                mode,
                uid,
                gid,
                atime: now,
                mtime: now,
                ctime: now,
                links: Vec::new(),
            },
        );
        ino
    }

    /// Resolve the parent directory of `path` and the final name, for replay.
    fn parent_of(&self, op: &'static str, path: &str) -> Result<(u64, String)> {
        let (dir, name) = split(path);
        let parent = self
            .resolve(dir)
            .ok_or_else(|| errno(op, dir, libc::ENOENT))?;
        self.children(op, parent)?;
        Ok((parent, name.to_string()))
    }

    fn touch_dir(&mut self, ino: u64) {
        let now = SystemTime::now();
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.mtime = now;
            n.ctime = now;
        }
    }

    /// Give `ino` the name `name` in `parent`. Like `detach`, this changes the node's ctime
    /// (`link` and `rename` do on a local file system) and the parent's mtime and ctime.
    fn attach(&mut self, parent: u64, name: &str, ino: u64) {
        dir_children(&mut self.nodes, parent).insert(name.to_string(), ino);
        let node = self.nodes.get_mut(&ino).expect("attached node exists");
        node.links.push((parent, name.to_string()));
        node.ctime = SystemTime::now();
        if matches!(node.body, Body::Dir(_)) {
            *self.subdirs.entry(parent).or_default() += 1;
        }
        self.touch_dir(parent);
    }

    fn detach(&mut self, parent: u64, name: &str) -> Option<u64> {
        let ino = dir_children(&mut self.nodes, parent).remove(name)?;
        let node = self.nodes.get_mut(&ino).expect("child exists");
        if matches!(node.body, Body::Dir(_)) {
            if let Some(n) = self.subdirs.get_mut(&parent) {
                *n = n.saturating_sub(1);
            }
        }
        if let Some(i) = node
            .links
            .iter()
            .position(|(p, n)| *p == parent && n == name)
        {
            node.links.remove(i);
        }
        node.ctime = SystemTime::now();
        self.touch_dir(parent);
        Some(ino)
    }

    /// Drop a subtree that is no longer linked (upper files of its files go too, unless open).
    fn drop_unlinked(&mut self, ino: u64) {
        let Some(node) = self.nodes.get(&ino) else {
            return;
        };
        if !node.links.is_empty() {
            return;
        }
        match node.body.clone() {
            Body::Dir(children) => {
                for (name, child) in children {
                    self.detach(ino, &name);
                    self.drop_unlinked(child);
                }
                self.nodes.remove(&ino);
            }
            // While open, the node and its upper file stay (see `handles`). Otherwise the upper
            // file goes at the next compaction (records before this one may still name it), or
            // at once if big (`free_big_upper`, on the live path only).
            Body::File(Content::Upper(_)) if self.handles.contains_key(&ino) => {}
            Body::File(Content::Upper(u)) => {
                self.dropped_uppers.push(u);
                self.uppers.remove(&ino);
                self.nodes.remove(&ino);
            }
            _ => {
                self.uppers.remove(&ino);
                self.nodes.remove(&ino);
            }
        }
    }

    /// Apply one record to memory (replay and live path).
    fn apply(&mut self, rec: &Record) -> Result<()> {
        match rec {
            Record::Mkdir {
                path,
                ino,
                mode,
                uid,
                gid,
            } => {
                let (parent, name) = self.parent_of("mkdir", path)?;
                let ino = self.new_node(*ino, Body::Dir(BTreeMap::new()), *mode, *uid, *gid);
                self.attach(parent, &name, ino);
                self.mark(path);
            }
            Record::Create {
                path,
                ino,
                upper,
                mode,
                uid,
                gid,
            } => {
                let (parent, name) = self.parent_of("create", path)?;
                let up = self.upper_path(*upper);
                if !up.exists() {
                    // The record is durable but the new empty file's name was not: recreate it.
                    File::create(&up).ctx("create", &up)?;
                }
                let ino =
                    self.new_node(*ino, Body::File(Content::Upper(*upper)), *mode, *uid, *gid);
                self.attach(parent, &name, ino);
                self.mark(path);
            }
            Record::Symlink {
                path,
                ino,
                target,
                uid,
                gid,
            } => {
                let (parent, name) = self.parent_of("symlink", path)?;
                let ino = self.new_node(*ino, Body::Symlink(target.clone()), 0o777, *uid, *gid);
                self.attach(parent, &name, ino);
                self.mark(path);
            }
            Record::Mknod {
                path,
                ino,
                kind,
                rdev,
                mode,
                uid,
                gid,
            } => {
                if !kind.is_special() {
                    return Err(errno("mknod", path.as_str(), libc::EINVAL));
                }
                let (parent, name) = self.parent_of("mknod", path)?;
                let ino = self.new_node(*ino, Body::Special(*kind, *rdev), *mode, *uid, *gid);
                self.attach(parent, &name, ino);
                self.mark(path);
            }
            Record::PutBase {
                path,
                ino,
                object,
                inline,
                mode,
                uid,
                gid,
            } => {
                let (parent, name) = self.parent_of("restore", path)?;
                let entry = match (object, inline) {
                    (Some(hex), _) => Entry::Object(ObjectId::from_hex(hex).map_err(|e| {
                        FsError::Repo(Error::Other(format!("bad object id in overlay: {e}")))
                    })?),
                    (None, Some(text)) => {
                        Entry::Inline(json::parse(text.as_bytes()).map_err(|e| {
                            FsError::Repo(Error::Other(format!("bad inline value in overlay: {e}")))
                        })?)
                    }
                    (None, None) => return Err(errno("restore", path.as_str(), libc::EINVAL)),
                };
                let ino = self.new_node(*ino, Body::File(Content::Base(entry)), *mode, *uid, *gid);
                self.attach(parent, &name, ino);
                self.mark(path);
            }
            Record::CopyUp { path, upper } => {
                let ino = self
                    .resolve(path)
                    .ok_or_else(|| errno("copy up", path.as_str(), libc::ENOENT))?;
                let up = self.upper_path(*upper);
                if !up.exists() {
                    return Err(errno(
                        "copy up: missing upper file",
                        up.display().to_string(),
                        libc::EIO,
                    ));
                }
                let node = self.nodes.get_mut(&ino).expect("resolved");
                node.body = Body::File(Content::Upper(*upper));
                self.uppers.insert(ino);
                self.next_id = self.next_id.max(upper + 1);
                for p in self.link_paths(ino) {
                    self.mark(&p);
                }
            }
            Record::Link { src, dst } => {
                let ino = self
                    .resolve(src)
                    .ok_or_else(|| errno("link", src.as_str(), libc::ENOENT))?;
                let (parent, name) = self.parent_of("link", dst)?;
                self.attach(parent, &name, ino);
                self.mark(src);
                self.mark(dst);
            }
            Record::Remove { path } => {
                let (parent, name) = self.parent_of("remove", path)?;
                let ino = self
                    .detach(parent, &name)
                    .ok_or_else(|| errno("remove", path.as_str(), libc::ENOENT))?;
                self.drop_unlinked(ino);
                self.mark(path);
            }
            Record::Rename { src, dst, exchange } => {
                let (sp, sn) = self.parent_of("rename", src)?;
                let (dp, dn) = self.parent_of("rename", dst)?;
                let s = self
                    .detach(sp, &sn)
                    .ok_or_else(|| errno("rename", src.as_str(), libc::ENOENT))?;
                let d = self.detach(dp, &dn);
                self.attach(dp, &dn, s);
                match (d, exchange) {
                    (Some(d), true) => self.attach(sp, &sn, d),
                    (Some(d), false) => self.drop_unlinked(d),
                    (None, _) => {}
                }
                self.mark(src);
                self.mark(dst);
            }
            Record::SetAttr {
                path,
                mode,
                uid,
                gid,
                atime,
                mtime,
            } => {
                let ino = self
                    .resolve(path)
                    .ok_or_else(|| errno("setattr", path.as_str(), libc::ENOENT))?;
                let node = self.nodes.get_mut(&ino).expect("resolved");
                node.mode = mode.unwrap_or(node.mode);
                node.uid = uid.unwrap_or(node.uid);
                node.gid = gid.unwrap_or(node.gid);
                node.atime = atime.map(Into::into).unwrap_or(node.atime);
                node.mtime = mtime.map(Into::into).unwrap_or(node.mtime);
                node.ctime = SystemTime::now();
                // Attributes of untouched base files are re-emitted by compaction only if marked.
                for p in self.link_paths(ino) {
                    self.mark(&p);
                }
            }
        }
        Ok(())
    }

    /// Every path naming a node (hard links give several).
    fn link_paths(&self, ino: u64) -> Vec<String> {
        let Some(node) = self.nodes.get(&ino) else {
            return Vec::new();
        };
        node.links
            .iter()
            .filter_map(|(p, n)| Some(join(&self.path_of(*p)?, n)))
            .collect()
    }

    fn new_entry_path(&self, op: &'static str, parent: u64, name: &str) -> Result<String> {
        check_name(op, name)?;
        if self.child(op, parent, name)?.is_some() {
            return Err(errno(
                op,
                join(&self.display_path(parent), name),
                libc::EEXIST,
            ));
        }
        let path = join(
            &self
                .path_of(parent)
                .ok_or_else(|| errno(op, self.display_path(parent), libc::ENOENT))?,
            name,
        );
        // `.pvr` at the top is the repository's own metadata; the format cannot hold it.
        if path == crate::repo::PVR_DIR {
            return Err(errno(op, path, libc::EPERM));
        }
        Ok(path)
    }

    // ----- namespace operations ----------------------------------------------------------------

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
    fn take_pooled_upper(&mut self) -> Option<(u64, File)> {
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

    fn is_ancestor(&self, anc: u64, mut ino: u64) -> bool {
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

    // ----- data --------------------------------------------------------------------------------

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
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .open(&path)
            .ctx("open upper file", &path)?;
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

    fn open_base(&self, ino: u64, e: &Entry) -> Result<Handle> {
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
    fn copy_up(&mut self, ino: u64, e: &Entry, empty: bool) -> Result<u64> {
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
    fn handle_name(&self, handle: &Handle) -> String {
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
                if let Ok(f) = File::open(&path) {
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
            .is_some_and(|n| n.links.is_empty() && ino != ROOT);
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
    fn free_big_upper(&mut self, upper: u64) {
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

    // ----- persistence -------------------------------------------------------------------------

    /// Minimal prefixes of the affected paths (see module docs).
    fn roots(&self) -> Vec<String> {
        let mut roots: Vec<String> = Vec::new();
        for p in &self.affected {
            let covered = p
                .match_indices('/')
                .any(|(i, _)| self.affected.contains(&p[..i]));
            if !covered {
                roots.push(p.clone());
            }
        }
        roots
    }

    /// True when the base has `path` or anything under it.
    fn base_has(&self, path: &str) -> bool {
        if self.base.contains(path) {
            return true;
        }
        let prefix = format!("{path}/");
        self.base
            .entries_map()
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix))
    }

    /// Rewrite the snapshot from memory and start an empty journal (see module docs).
    pub fn compact(&mut self) -> RepoResult<()> {
        // The snapshot names upper files: they must be durable first.
        self.sync()?;
        let mut records = Vec::new();
        let mut seen: HashMap<u64, String> = HashMap::new();
        // The root has no path to be affected by: its attributes are always written.
        let root = &self.nodes[&ROOT];
        let root_times = (root.mtime != self.base_time).then_some(root.mtime.into());
        records.push(Record::SetAttr {
            path: String::new(),
            mode: Some(root.mode),
            uid: Some(root.uid),
            gid: Some(root.gid),
            atime: root_times,
            mtime: root_times,
        });
        for r in self.roots() {
            if self.base_has(&r) {
                records.push(Record::Remove { path: r.clone() });
            }
            if let Some(ino) = self.resolve(&r) {
                self.emit(ino, &r, &mut seen, &mut records);
            }
        }
        let snap = Snapshot {
            generation: self.generation + 1,
            header: Header {
                base_rev: self.base_rev,
                base_state: self.base_state_id.to_hex(),
                next_id: self.next_id,
            },
            records,
        };
        self.journal = Some(journal::write_snapshot(&self.dir, &snap)?);
        self.generation = snap.generation;
        // Only now does no record name the upper files of removed or rebased nodes.
        self.clean_orphan_uppers();
        Ok(())
    }

    fn emit(&self, ino: u64, path: &str, seen: &mut HashMap<u64, String>, out: &mut Vec<Record>) {
        if let Some(first) = seen.get(&ino) {
            out.push(Record::Link {
                src: first.clone(),
                dst: path.to_string(),
            });
            return;
        }
        seen.insert(ino, path.to_string());
        let n = &self.nodes[&ino];
        let (mode, uid, gid) = (n.mode, n.uid, n.gid);
        match &n.body {
            Body::Dir(children) => {
                out.push(Record::Mkdir {
                    path: path.to_string(),
                    ino,
                    mode,
                    uid,
                    gid,
                });
                for (name, child) in children {
                    self.emit(*child, &join(path, name), seen, out);
                }
            }
            Body::File(Content::Upper(upper)) => out.push(Record::Create {
                path: path.to_string(),
                ino,
                upper: *upper,
                mode,
                uid,
                gid,
            }),
            Body::File(Content::Base(e)) => out.push(Record::PutBase {
                path: path.to_string(),
                ino,
                object: e.object_id().map(|id| id.to_hex()),
                inline: match e {
                    Entry::Inline(v) => {
                        Some(String::from_utf8_lossy(&json::to_canonical(v)).into_owned())
                    }
                    Entry::Object(_) => None,
                },
                mode,
                uid,
                gid,
            }),
            Body::Symlink(target) => out.push(Record::Symlink {
                path: path.to_string(),
                ino,
                target: target.clone(),
                uid,
                gid,
            }),
            Body::Special(kind, rdev) => out.push(Record::Mknod {
                path: path.to_string(),
                ino,
                kind: *kind,
                rdev: *rdev,
                mode,
                uid,
                gid,
            }),
        }
        if n.mtime != self.base_time && !matches!(n.body, Body::File(Content::Upper(_))) {
            out.push(Record::SetAttr {
                path: path.to_string(),
                mode: None,
                uid: None,
                gid: None,
                atime: Some(n.atime.into()),
                mtime: Some(n.mtime.into()),
            });
        }
    }

    /// Remove upper files no node refers to (left by a crash between creating and journaling).
    fn clean_orphan_uppers(&self) {
        let live: HashSet<String> = self
            .uppers
            .iter()
            .filter_map(|ino| match self.nodes.get(ino)?.body {
                Body::File(Content::Upper(u)) => Some(format!("u{u}")),
                _ => None,
            })
            .collect();
        let pooled = |name: &str| {
            let id = name.strip_prefix('u').and_then(|n| n.parse::<u64>().ok());
            matches!((&self.pool, id), (Some(p), Some(id)) if p.is_reserved(id))
        };
        let Ok(rd) = fs::read_dir(self.dir.join("upper")) else {
            return;
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) && !pooled(&name) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// True when the view differs from the base in nothing the journal tracks.
    /// True when the node's content is an upper file (a read handle opened on its base content
    /// before the copy-up should be reopened).
    pub fn has_upper(&self, ino: u64) -> bool {
        self.uppers.contains(&ino)
    }

    pub fn is_clean(&self) -> bool {
        self.affected.is_empty()
    }
}

impl Drop for Overlay {
    /// Unmount or drop: make the last operations durable (best effort; a failure here loses
    /// at most what a power cut would).
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            log::warn!("overlay {}: final sync failed: {e}", self.dir.display());
        }
    }
}

/// Decrement a count, removing it at zero; returns what is left.
fn decrement(counts: &mut HashMap<u64, u32>, key: u64) -> u32 {
    let Some(n) = counts.get_mut(&key) else {
        return 0;
    };
    *n -= 1;
    let left = *n;
    if left == 0 {
        counts.remove(&key);
    }
    left
}

fn dir_children(nodes: &mut HashMap<u64, Node>, ino: u64) -> &mut BTreeMap<String, u64> {
    match &mut nodes.get_mut(&ino).expect("directory exists").body {
        Body::Dir(c) => c,
        _ => panic!("inode {ino} is not a directory"),
    }
}

fn lock_dir(dir: &Path) -> RepoResult<File> {
    fs::create_dir_all(dir).ctx("create", dir)?;
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ctx("open lock file", &path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::Locked { path }),
        Err(e) => Err(Error::io("lock", &path, e.into())),
    }
}

/// Copy a whole file in the kernel (`copy_file_range`), falling back to read/write where the
/// file systems do not support it.
fn copy_file(src: &File, dst: &File) -> std::io::Result<()> {
    let len = src.metadata()?.len();
    let mut done = 0u64;
    while done < len {
        let chunk = (len - done).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, None, dst, None, chunk) {
            Ok(0) => break,
            Ok(n) => done += n as u64,
            Err(rustix::io::Errno::XDEV | rustix::io::Errno::NOSYS | rustix::io::Errno::INVAL)
                if done == 0 =>
            {
                let mut s = src;
                let mut d = dst;
                std::io::copy(&mut s, &mut d)?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

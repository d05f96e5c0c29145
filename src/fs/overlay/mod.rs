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
//! - Inode 1 is the root. Base directories, files and symlinks get 2, 3, … in the order they
//!   first appear while walking the base's files, symlinks and empty directories in their
//!   sorted (code point) order — each directory just before its first descendant — so a
//!   revision always numbers the same. Base nodes carry the base's modes (`state::meta`).
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
//!
//! # Files
//!
//! The `Overlay` type and its queries live here; its `impl` is spread by concern over
//! `apply.rs` (records → memory, node bookkeeping), `namespace.rs` (create … rename),
//! `data.rs` (open/copy-up, read, write, sync, setattr), `compact.rs` (snapshots),
//! `commit.rs` (status, diff, commit from a mount), with `journal.rs` (the on-disk journal
//! and snapshot formats) and `pool.rs` (pre-created upper files) below them.

mod apply;
mod commit;
mod compact;
mod data;
pub(crate) mod journal;
mod namespace;
mod pool;

pub use crate::fs::change::Changes;
pub use commit::{CommitReport, Committed, StatusLine};

use super::{Attr, FsError, Kind, NAME_MAX, ROOT_INO};
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

const DIR_MODE: u32 = crate::state::meta::DEFAULT_DIR_MODE;
/// What a symlink's mode shows (Linux never checks it).
const SYMLINK_MODE: u32 = 0o777;
/// Compact the journal into a new snapshot once it grows past this many bytes (and twice the
/// snapshot: `Journal::wants_compaction`).
const COMPACT_AT: u64 = 4 << 20;
/// A removed upper file at least this big is deleted as soon as nothing uses it
/// (`free_big_upper`); smaller ones at the next compaction.
const FREE_EARLY_MIN: u64 = 1 << 20;
/// Up to this many new upper files, `sync` fsyncs them one by one; beyond, one `syncfs`.
const FSYNC_EACH_MAX: usize = 64;

pub type Result<T, E = FsError> = std::result::Result<T, E>;

/// Inode and upper-file numbers read from disk must stay below this (one per operation, so never
/// reached by use): the counter can then never overflow.
const MAX_ID: u64 = 1 << 62;

fn errno(op: &'static str, path: impl Into<String>, errno: i32) -> FsError {
    FsError::Errno {
        op,
        path: path.into(),
        errno,
    }
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

pub(crate) fn check_id(id: &str) -> RepoResult<()> {
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
        if snap.header.next_id >= MAX_ID {
            return Err(Error::CorruptState {
                origin: journal::snapshot_path(&dir).display().to_string(),
                detail: format!("implausible next id {}", snap.header.next_id),
            });
        }
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
        nodes.insert(ROOT_INO, dir_node(Vec::new()));
        let mut dirs: HashMap<String, u64> = HashMap::new();
        dirs.insert(String::new(), ROOT_INO);
        let mut next = ROOT_INO + 1;
        // Files, symlinks and empty directories in one sorted walk (the metadata of `base`).
        let meta = base.meta();
        let mut leaves: Vec<(&String, Body)> = base
            .iter()
            .map(|(k, e)| (k, Body::File(Content::Base(e.clone()))))
            .collect();
        if !meta.links.is_empty() || !meta.dirs.is_empty() {
            leaves.extend(
                meta.links
                    .iter()
                    .map(|(k, t)| (k, Body::Symlink(t.clone()))),
            );
            leaves.extend(meta.dirs.iter().map(|k| (k, Body::Dir(BTreeMap::new()))));
            leaves.sort_unstable_by(|a, b| a.0.cmp(b.0));
        }
        for (key, body) in leaves {
            let mut parent = ROOT_INO;
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
                        let mut node = dir_node(vec![(parent, name.clone())]);
                        node.mode = meta.dir_mode(prefix);
                        nodes.insert(ino, node);
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
            let mode = match &body {
                Body::Dir(_) => {
                    dirs.insert(key.clone(), ino);
                    meta.dir_mode(key)
                }
                Body::Symlink(_) => SYMLINK_MODE,
                _ => meta.file_mode(key),
            };
            nodes.insert(
                ino,
                Node {
                    body,
                    mode,
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
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
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

    /// Open an existing upper file through `upper_fd`, never following a symbolic link, and only
    /// if it is a regular file (else EIO). `upper/` may be someone else's work (a repository
    /// handed over with its overlay): an upper file that is a link to a file of whoever mounts
    /// would otherwise be shown (to other users too, with `--allow-other`), written through,
    /// and committed (then pushed); a FIFO would hang the daemon.
    pub(super) fn open_upper(&self, upper: u64, write: bool) -> RepoResult<File> {
        fsutil::open_regular_at(&self.upper_fd, format!("u{upper}"), write, false)
            .ctx("open upper file", self.upper_path(upper))
    }

    /// `stat` of an upper file, relative to `upper_fd` (not following a link: `open_upper`
    /// refuses one).
    fn upper_stat(&self, upper: u64) -> Result<rustix::fs::Stat> {
        rustix::fs::statat(
            &self.upper_fd,
            format!("u{upper}"),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
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
        if ino == ROOT_INO {
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
        let mut ino = ROOT_INO;
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

pub(crate) fn lock_dir(dir: &Path) -> RepoResult<File> {
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
mod commit_tests;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;

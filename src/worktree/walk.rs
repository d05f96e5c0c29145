//! A parallel walk of the work tree that stats only the files the caller tracks, and can skip
//! reading directories that did not change since the last walk (git's "untracked cache").
//!
//! `status` must look at every directory (to list untracked files) and `lstat` every tracked
//! file. Both happen in one pass, with `fstatat` relative to an open directory (one path component
//! to resolve instead of the whole path).
//!
//! Rules: regular files and symlinks are reported (a symlink is never followed: directories are
//! entered by `openat(O_NOFOLLOW)`), every directory visited is reported with its mode and
//! whether it has anything in it, and what a state cannot hold (sockets, FIFOs, devices) is
//! reported as such, never skipped silently. `W/.pvr` is never entered; an entry named
//! `.pvrfs-meta.json` is reported apart (the name is reserved for metadata documents).
//! `.pvrignore` files (gitignore syntax) apply to the directory holding them and everything
//! below, inner files first, `!pattern` re-includes; an ignored entry is not reported and does
//! not count as content of its directory. Tracked names (files or symlinks) are reported with
//! their stat key even when ignored. Untracked entries come in walk order (names sorted within
//! each directory, bytewise), the order of pvr's `?` lines. Non-UTF-8 names are reported apart,
//! since a state key is a JSON string and cannot hold them.
//!
//! # The directory cache
//!
//! With a `DirCache`, every directory read produces a `DirRecord`: the directory's stat key, the
//! stat key of its `.pvrignore` (if it has an entry of that name), and its *listing* — the names
//! and kinds of its non-ignored entries (tracked or not). The
//! next walk reuses a record instead of reading the directory when all of these hold:
//! - the directory's stat key (mtime, ctime, inode, device, size) is unchanged: adding, removing
//!   or renaming an entry changes the directory's mtime;
//! - its `.pvrignore` is unchanged (an edit in place does not touch the directory, so the file
//!   is stat'ed), and no `.pvrignore` above it changed (a changed rule file makes the whole
//!   subtree below it be read again, as git does);
//! - both were *old* when the record was made: mtimes earlier than `DirCache::stable_before_ns`
//!   (one to two seconds before the walk started, on the kernel clock the file system stamps
//!   with). A directory changed after the walk read it, within the same timestamp tick, keeps its
//!   mtime; such a racy record is kept only to compare ignore files and is never reused.
//!
//! A reused directory still has every tracked file in it stat'ed (a file's content changes do not
//! touch its directory). The cache is only used on file systems known to update directory
//! mtimes (the caller decides, see `dircache_supported`), and only for directories on the
//! device of the work tree's root.

use super::stat::{
    kind_of, unstorable, DirRecord, HashMap, StatKey, KIND_DIR, KIND_FILE, KIND_LINK,
    KIND_NOT_UTF8, NO_FILE,
};
use crate::error::{Error, Result};
use crate::state::META_NAME;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use rayon::prelude::*;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::ffi::OsStr;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

pub const IGNORE_FILE: &str = ".pvrignore";

/// One entry found by the walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Walked {
    /// A regular file the caller does not track: its repo-relative, `/`-separated path.
    Other(String),
    /// A symlink the caller does not track.
    OtherLink(String),
    /// A directory (not the root), reported before what is in it: its permission bits, and
    /// whether nothing (but ignored entries) is in it.
    Dir {
        path: String,
        mode: u32,
        empty: bool,
    },
    /// Something a state cannot hold (tracked or not): its path and what it is.
    Unstorable(String, &'static str),
    /// A tracked file or symlink (by the caller's index) and its `lstat` key. Such entries are
    /// reported even when `.pvrignore` matches them: tracked files stay tracked.
    Known(usize, StatKey),
    /// A file or directory whose name is not UTF-8 (a state key is a JSON string, so it cannot
    /// be tracked); directories of that kind are not entered.
    NotUtf8(PathBuf),
}

/// The tracked files, grouped by directory (repo-relative, `""` for the root): names sorted
/// bytewise with the caller's index. Grouping once per walk replaces a hash lookup of every
/// path the walk meets with one per directory.
#[derive(Debug, Default)]
pub struct Tracked<'a> {
    by_dir: HashMap<&'a str, Vec<(&'a str, usize)>>,
}

impl<'a> Tracked<'a> {
    /// `paths[i]` gets index `i`.
    pub fn new(paths: impl IntoIterator<Item = &'a str>) -> Self {
        let mut by_dir: HashMap<&'a str, Vec<(&'a str, usize)>> = HashMap::default();
        // Sorted input keeps a directory's files mostly together: skip the lookup then.
        let mut last: Option<(&'a str, Vec<(&'a str, usize)>)> = None;
        for (i, p) in paths.into_iter().enumerate() {
            let (dir, name) = p.rsplit_once('/').unwrap_or(("", p));
            match &mut last {
                Some((d, v)) if *d == dir => v.push((name, i)),
                _ => {
                    if let Some((d, v)) = last.take() {
                        add_run(&mut by_dir, d, v);
                    }
                    last = Some((dir, vec![(name, i)]));
                }
            }
        }
        if let Some((d, v)) = last {
            add_run(&mut by_dir, d, v);
        }
        for v in by_dir.values_mut() {
            v.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        }
        Tracked { by_dir }
    }

    fn in_dir(&self, rel: &str) -> &[(&'a str, usize)] {
        self.by_dir.get(rel).map_or(&[], Vec::as_slice)
    }
}

/// A run of one directory's names: kept as is when it is the directory's first (the usual case
/// for sorted input), else appended.
fn add_run<'a>(
    by_dir: &mut HashMap<&'a str, Vec<(&'a str, usize)>>,
    dir: &'a str,
    run: Vec<(&'a str, usize)>,
) {
    match by_dir.entry(dir) {
        std::collections::hash_map::Entry::Vacant(e) => {
            e.insert(run);
        }
        std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().extend(run),
    }
}

/// Directory records to reuse, and the time before which a stat key counts as stable.
pub struct DirCache<'a> {
    pub old: &'a HashMap<String, DirRecord>,
    /// Nanoseconds since the epoch; see the module docs.
    pub stable_before_ns: i64,
}

impl DirCache<'_> {
    /// The cutoff for a walk starting now: the start of the previous second, so that any change
    /// from now on carries an mtime at or after it, even on a file system that stamps whole
    /// seconds or with a clock tick that lags the wall clock.
    pub fn cutoff_now() -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        (now - 1) * 1_000_000_000
    }
}

/// How the walk treated one directory.
#[derive(Debug)]
pub enum DirOutcome {
    /// Its old record was valid and used.
    Reused,
    /// It was read; this is its new record.
    Read(DirRecord),
}

/// The result of a walk.
#[derive(Debug, Default)]
pub struct Walk {
    pub found: Vec<Walked>,
    /// One outcome per directory visited (only with a `DirCache`).
    pub dirs: Vec<(String, DirOutcome)>,
}

/// Is the directory cache safe on the file system holding `dir`? Only local file systems known
/// to update a directory's mtime whenever an entry is added, removed or renamed qualify; FUSE,
/// network and overlay file systems do not (their directory times may lag or come from
/// elsewhere), so the walk reads every directory there.
#[allow(clippy::unnecessary_cast)] // f_type's width varies by architecture
pub fn dircache_supported(dir: &Path) -> bool {
    const KNOWN: [i64; 6] = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0xF2F5_2010, // f2fs
        0x2FC1_2FC1, // zfs
    ];
    rustix::fs::statfs(dir).is_ok_and(|s| KNOWN.contains(&(s.f_type as i64)))
}

/// Walk `start` (a directory inside the work dir `root`, or `root` itself). `tracked` names the
/// files to `lstat` (by repo-relative path); the others are returned as paths. With `cache`
/// (only used when `start` is `root`), unchanged directories are not read (see the module docs).
pub fn walk(
    root: &Path,
    start: &Path,
    tracked: &Tracked<'_>,
    cache: Option<&DirCache<'_>>,
) -> Result<Walk> {
    let rel = start
        .strip_prefix(root)
        .ok()
        .and_then(Path::to_str)
        .ok_or_else(|| {
            Error::Other(format!(
                "'{}' is not inside {}",
                start.display(),
                root.display()
            ))
        })?
        .to_string();
    let cache = cache.filter(|_| rel.is_empty());
    // .pvrignore files of the directories above start apply too.
    let mut ignores = None;
    if !rel.is_empty() {
        let mut dir = root.to_path_buf();
        let segs: Vec<&str> = rel.split('/').collect();
        for seg in std::iter::once("").chain(segs[..segs.len() - 1].iter().copied()) {
            dir.push(seg);
            if dir.join(IGNORE_FILE).is_file() {
                ignores = Some(IgnNode::new(ignores, dir.clone()));
            }
        }
    }
    let fd = open_dir(rustix::fs::CWD, start)?;
    let root_dev = rustix::fs::fstat(&fd)
        .map_err(|e| Error::io("stat", start, e.into()))?
        .st_dev as u64;
    let w = Walker {
        root,
        tracked,
        cache,
        root_dev,
        dirs: Mutex::new(Vec::with_capacity(cache.map_or(0, |c| c.old.len() + 16))),
        stale: AtomicBool::new(false),
    };
    let found = w.visit(fd, rel.clone(), ignores.clone(), false)?;
    if w.stale.load(Ordering::Relaxed) {
        // A reused record named a directory that is not there: the cache lied (a file system
        // that does not update directory times after all?). Start over without it.
        let fd = open_dir(rustix::fs::CWD, start)?;
        let w = Walker { cache: None, ..w };
        let found = w.visit(fd, rel, ignores, false)?;
        return Ok(Walk {
            found,
            dirs: Vec::new(),
        });
    }
    Ok(Walk {
        found,
        dirs: w.dirs.into_inner().unwrap_or_else(|e| e.into_inner()),
    })
}

struct Walker<'a> {
    root: &'a Path,
    tracked: &'a Tracked<'a>,
    cache: Option<&'a DirCache<'a>>,
    root_dev: u64,
    dirs: Mutex<Vec<(String, DirOutcome)>>,
    /// Set when a reused record proved wrong; the walk is then redone without the cache.
    stale: AtomicBool,
}

fn open_dir<Fd: AsFd>(at: Fd, path: &Path) -> Result<OwnedFd> {
    rustix::fs::openat(at, path, DIR_FLAGS, Mode::empty())
        .map_err(|e| Error::io("open directory", path, e.into()))
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// A directory's `.pvrignore`, parsed on first use: a walk that reuses every directory never
/// parses one. Linked to the nearest enclosing directory with one.
struct IgnNode {
    parent: Option<Arc<IgnNode>>,
    dir: PathBuf,
    rules: OnceLock<std::result::Result<Gitignore, String>>,
}

impl IgnNode {
    fn new(parent: Option<Arc<IgnNode>>, dir: PathBuf) -> Arc<IgnNode> {
        Arc::new(IgnNode {
            parent,
            dir,
            rules: OnceLock::new(),
        })
    }

    fn rules(&self) -> Result<&Gitignore> {
        self.rules
            .get_or_init(|| {
                let file = self.dir.join(IGNORE_FILE);
                let mut b = GitignoreBuilder::new(&self.dir);
                if let Some(e) = b.add(&file) {
                    return Err(format!("bad ignore file {}: {e}", file.display()));
                }
                b.build()
                    .map_err(|e| format!("bad ignore file {}: {e}", file.display()))
            })
            .as_ref()
            .map_err(|e| Error::Other(e.clone()))
    }
}

fn is_ignored(chain: &Option<Arc<IgnNode>>, abs: &Path, is_dir: bool) -> Result<bool> {
    let mut node = chain.as_deref();
    while let Some(n) = node {
        let m = n.rules()?.matched(abs, is_dir);
        if m.is_ignore() {
            return Ok(true);
        }
        if m.is_whitelist() {
            return Ok(false);
        }
        node = n.parent.as_deref();
    }
    Ok(false)
}

fn stat_name(
    fd: BorrowedFd<'_>,
    name: &[u8],
    follow: bool,
) -> rustix::io::Result<rustix::fs::Stat> {
    let flags = if follow {
        AtFlags::empty()
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    rustix::fs::statat(fd, OsStr::from_bytes(name), flags)
}

/// The key recorded for a directory's `.pvrignore` entry (see `DirRecord::ignore`).
fn ignore_key(fd: BorrowedFd<'_>) -> Option<StatKey> {
    let name = IGNORE_FILE.as_bytes();
    let st = match stat_name(fd, name, false) {
        Err(rustix::io::Errno::NOENT) => return None,
        Ok(st) if FileType::from_raw_mode(st.st_mode as _) == FileType::Symlink => {
            stat_name(fd, name, true) // its target decides
        }
        st => st,
    };
    match st {
        Ok(st) if FileType::from_raw_mode(st.st_mode as _) == FileType::RegularFile => {
            Some(StatKey::from_stat(&st))
        }
        _ => Some(NO_FILE), // a directory, a dangling symlink, ...
    }
}

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        let mut s = String::with_capacity(rel.len() + 1 + name.len());
        s.push_str(rel);
        s.push('/');
        s.push_str(name);
        s
    }
}

/// A directory entry to report or enter, in walk order.
enum Item {
    File(Walked),
    Dir(String, Vec<u8>),
}

/// What the cache check found for one directory.
struct Check<'r> {
    key: StatKey,
    ignore: Option<StatKey>,
    /// The directory's old record, when it may be reused as is.
    reuse: Option<&'r DirRecord>,
    /// The ignore rules at and above this directory are the ones its old record was made with.
    same_rules: bool,
}

impl Walker<'_> {
    fn check(
        &self,
        fd: BorrowedFd<'_>,
        rel: &str,
        key: StatKey,
        rules_changed: bool,
    ) -> Option<Check<'_>> {
        let cache = self.cache?;
        if key.dev != self.root_dev {
            return None;
        }
        let old = cache.old.get(rel);
        // An unchanged directory that had no `.pvrignore` entry still has none.
        let ignore = match old {
            Some(r) if r.key == key && r.ignore.is_none() => None,
            _ => ignore_key(fd),
        };
        let same_rules = !rules_changed && old.is_some_and(|r| r.stable && r.ignore == ignore);
        let reuse = old.filter(|r| same_rules && r.key == key);
        Some(Check {
            key,
            ignore,
            reuse,
            same_rules,
        })
    }

    fn record(&self, rel: &str, outcome: DirOutcome) {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((rel.to_string(), outcome));
    }

    fn visit(
        &self,
        fd: OwnedFd,
        rel: String,
        ignores: Option<Arc<IgnNode>>,
        rules_changed: bool,
    ) -> Result<Vec<Walked>> {
        let tracked = self.tracked.in_dir(&rel);
        // (the directory's own entry, its tracked files; `enter` adds the rest)
        let mut out = Vec::with_capacity(1 + tracked.len());
        // Tracked names are stat'ed by name, whether the directory is read or not.
        for &(name, i) in tracked {
            match stat_name(fd.as_fd(), name.as_bytes(), false) {
                Ok(st)
                    if matches!(
                        FileType::from_raw_mode(st.st_mode as _),
                        FileType::RegularFile | FileType::Symlink
                    ) =>
                {
                    out.push(Walked::Known(i, StatKey::from_stat(&st)))
                }
                Ok(_) | Err(rustix::io::Errno::NOENT) => {} // not a file or symlink (any more)
                Err(e) => return Err(Error::io("stat", self.root.join(&rel).join(name), e.into())),
            }
        }
        let st = rustix::fs::fstat(&fd)
            .map_err(|e| Error::io("stat", self.root.join(&rel), e.into()))?;
        let key = StatKey::from_stat(&st);
        let check = self.check(fd.as_fd(), &rel, key, rules_changed);
        if let Some(record) = check.as_ref().and_then(|c| c.reuse) {
            self.record(&rel, DirOutcome::Reused);
            let ignores = match record.ignore {
                Some(k) if k != NO_FILE => Some(IgnNode::new(ignores, self.root.join(&rel))),
                _ => ignores,
            };
            let items = listed_items(&rel, tracked, record);
            if !rel.is_empty() {
                out.push(Walked::Dir {
                    path: rel.clone(),
                    mode: key.permissions(),
                    empty: record.listing.is_empty(),
                });
            }
            return self.enter(fd, items, ignores, false, true, out);
        }
        let (items, ignores, listing, empty) = self.read(fd.as_fd(), &rel, tracked, ignores)?;
        if !rel.is_empty() {
            out.push(Walked::Dir {
                path: rel.clone(),
                mode: key.permissions(),
                empty,
            });
        }
        let children_rules_changed = rules_changed || check.as_ref().is_some_and(|c| !c.same_rules);
        if let (Some(c), Some(cache)) = (check, self.cache) {
            let old = |k: &StatKey| {
                k.mtime_ns < cache.stable_before_ns && k.ctime_ns < cache.stable_before_ns
            };
            let stable = old(&c.key) && c.ignore.is_none_or(|k| k == NO_FILE || old(&k));
            let record = DirRecord {
                key: c.key,
                ignore: c.ignore,
                stable,
                listing,
            };
            self.record(&rel, DirOutcome::Read(record));
        }
        self.enter(fd, items, ignores, children_rules_changed, false, out)
    }

    /// Read the directory: its items in name order (tracked files left out), the ignore chain
    /// for below it, its listing for a `DirRecord` (empty without a cache), and whether nothing
    /// but ignored entries is in it.
    #[allow(clippy::type_complexity)]
    fn read(
        &self,
        fd: BorrowedFd<'_>,
        rel: &str,
        tracked: &[(&str, usize)],
        ignores: Option<Arc<IgnNode>>,
    ) -> Result<(Vec<Item>, Option<Arc<IgnNode>>, Vec<u8>, bool)> {
        let abs_dir = self.root.join(rel);
        let mut names: Vec<(Vec<u8>, FileType)> = Vec::new();
        let mut buf = [MaybeUninit::<u8>::uninit(); 16384];
        // getdents on the directory's own fd (its offset is ours: the fd is not shared).
        let mut dir = rustix::fs::RawDir::new(fd, &mut buf);
        while let Some(entry) = dir.next() {
            let entry = entry.map_err(|e| Error::io("read directory", &abs_dir, e.into()))?;
            let name = entry.file_name().to_bytes();
            if name == b"."
                || name == b".."
                || (rel.is_empty() && name == crate::repo::PVR_DIR.as_bytes())
            {
                continue;
            }
            names.push((name.to_vec(), entry.file_type()));
        }
        names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let has_rules = names.iter().any(|(n, _)| n == IGNORE_FILE.as_bytes())
            && ignore_key(fd).is_some_and(|k| k != NO_FILE);
        let ignores = if has_rules {
            let node = IgnNode::new(ignores, abs_dir.clone());
            node.rules()?; // a broken rule file is an error even when nothing needs it yet
            Some(node)
        } else {
            ignores
        };
        let keep_listing = self.cache.is_some();
        let mut empty = true;
        let mut t = 0;
        let mut items = Vec::with_capacity(names.len());
        let mut listing = Vec::new();
        for (name, mut ftype) in names {
            while t < tracked.len() && tracked[t].0.as_bytes() < name.as_slice() {
                t += 1;
            }
            let is_tracked = t < tracked.len() && tracked[t].0.as_bytes() == name.as_slice();
            if ftype == FileType::Unknown {
                ftype = match stat_name(fd, &name, false) {
                    Ok(st) => FileType::from_raw_mode(st.st_mode as _),
                    Err(rustix::io::Errno::NOENT) => continue, // vanished meanwhile
                    Err(e) => {
                        return Err(Error::io(
                            "stat",
                            abs_dir.join(OsStr::from_bytes(&name)),
                            e.into(),
                        ))
                    }
                };
            }
            let Some(kind) = kind_of(ftype) else {
                continue;
            };
            let is_dir = kind == KIND_DIR;
            // A tracked file or symlink was stat'ed by name already; without a listing to keep,
            // only its existence matters here.
            if is_tracked && (kind == KIND_FILE || kind == KIND_LINK) && !keep_listing {
                empty = false;
                continue;
            }
            if ignores.is_some()
                && is_ignored(&ignores, &abs_dir.join(OsStr::from_bytes(&name)), is_dir)?
            {
                continue;
            }
            empty = false;
            let kind = match std::str::from_utf8(&name) {
                Err(_) => KIND_NOT_UTF8,
                Ok(_) => kind,
            };
            if keep_listing {
                listing.push(kind);
                listing.extend_from_slice(&name);
                listing.push(0);
            }
            if let Some(item) = item(rel, kind, &name, is_tracked) {
                items.push(item);
            }
        }
        Ok((items, ignores, listing, empty))
    }

    /// Walk the subdirectories (in parallel) and emit everything in walk order.
    fn enter(
        &self,
        fd: OwnedFd,
        items: Vec<Item>,
        ignores: Option<Arc<IgnNode>>,
        rules_changed: bool,
        from_record: bool,
        mut out: Vec<Walked>,
    ) -> Result<Vec<Walked>> {
        let subdirs: Vec<Result<Vec<Walked>>> = items
            .par_iter()
            .filter_map(|item| match item {
                Item::Dir(path, name) => {
                    let name = OsStr::from_bytes(name);
                    Some(
                        match rustix::fs::openat(&fd, name, DIR_FLAGS, Mode::empty()) {
                            Ok(sub) => {
                                self.visit(sub, path.clone(), ignores.clone(), rules_changed)
                            }
                            Err(
                                rustix::io::Errno::NOENT
                                | rustix::io::Errno::NOTDIR
                                | rustix::io::Errno::LOOP,
                            ) if from_record => {
                                self.stale.store(true, Ordering::Relaxed);
                                Ok(Vec::new())
                            }
                            Err(e) => {
                                Err(Error::io("open directory", self.root.join(path), e.into()))
                            }
                        },
                    )
                }
                Item::File(_) => None,
            })
            .collect();
        // One exact reservation: growing by doubling while the subtrees' entries are appended
        // copied every entry of a big tree several times per level.
        let below: usize = subdirs.iter().map(|r| r.as_ref().map_or(0, Vec::len)).sum();
        out.reserve_exact(items.len() + below);
        let mut subdirs = subdirs.into_iter();
        for item in items {
            match item {
                Item::File(w) => out.push(w),
                Item::Dir(..) => out.extend(subdirs.next().expect("one result per directory")?),
            }
        }
        Ok(out)
    }
}

/// The item an entry of kind `kind` becomes (`None` for a tracked file or symlink: reported
/// apart).
fn item(rel: &str, kind: u8, name: &[u8], is_tracked: bool) -> Option<Item> {
    if kind == KIND_NOT_UTF8 {
        return Some(Item::File(Walked::NotUtf8(
            Path::new(rel).join(OsStr::from_bytes(name)),
        )));
    }
    // A tracked file or symlink is reported by the caller: nothing to build for it.
    if is_tracked && (kind == KIND_FILE || kind == KIND_LINK) && name != META_NAME.as_bytes() {
        return None;
    }
    let path = join(rel, std::str::from_utf8(name).ok()?);
    if name == META_NAME.as_bytes() {
        return Some(Item::File(Walked::Unstorable(path, RESERVED)));
    }
    if let Some(what) = unstorable(kind) {
        return Some(Item::File(Walked::Unstorable(path, what)));
    }
    match kind {
        KIND_DIR => Some(Item::Dir(path, name.to_vec())),
        _ if is_tracked => None,
        KIND_LINK => Some(Item::File(Walked::OtherLink(path))),
        _ => Some(Item::File(Walked::Other(path))),
    }
}

/// What an entry named `.pvrfs-meta.json` is, for messages.
pub const RESERVED: &str =
    "named .pvrfs-meta.json, a name reserved for pvrfs's metadata documents (docs/FORMAT.md)";

/// The items of a reused directory record (tracked files left out).
fn listed_items(rel: &str, tracked: &[(&str, usize)], record: &DirRecord) -> Vec<Item> {
    let mut t = 0;
    let mut items = Vec::new();
    for (kind, name) in record.entries() {
        while t < tracked.len() && tracked[t].0.as_bytes() < name {
            t += 1;
        }
        let is_tracked = t < tracked.len() && tracked[t].0.as_bytes() == name;
        items.extend(item(rel, kind, name, is_tracked));
    }
    items
}

/// What lies under a directory, as `add` stages it: every list in walk order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Listing {
    pub files: Vec<String>,
    pub links: Vec<String>,
    /// Directories with nothing (but ignored entries) in them.
    pub empty_dirs: Vec<String>,
    /// What a state cannot hold, and what it is.
    pub unstorable: Vec<(String, &'static str)>,
}

/// Everything under `start` (no stats). A name that is not UTF-8 is an error naming it.
pub fn entries(root: &Path, start: &Path) -> Result<Listing> {
    let mut out = Listing::default();
    for w in walk(root, start, &Tracked::default(), None)?.found {
        match w {
            Walked::Other(p) => out.files.push(p),
            Walked::OtherLink(p) => out.links.push(p),
            Walked::Dir { path, empty, .. } if empty => out.empty_dirs.push(path),
            Walked::Unstorable(p, what) => out.unstorable.push((p, what)),
            Walked::Dir { .. } | Walked::Known(..) => {}
            Walked::NotUtf8(p) => return Err(not_utf8(root, &p)),
        }
    }
    Ok(out)
}

/// The error for a name a state key cannot hold.
pub fn not_utf8(root: &Path, rel: &Path) -> Error {
    Error::Other(format!(
        "'{}' has a name that is not UTF-8; pvr states can only hold UTF-8 paths (rename it or list it in .pvrignore)",
        root.join(rel).display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn walks_in_order_honours_ignores_and_skips_pvr_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        for f in [
            "a.txt",
            "a/b",
            "a b/c",
            "ab",
            ".pvr/json",
            "sub/.pvrignore",
            "sub/x.o",
            "sub/keep.o",
            "sub/y.c",
            "top.log",
            "deep/n/z.log",
        ] {
            let p = root.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, "x").unwrap();
        }
        fs::write(root.join(".pvrignore"), "*.log\n").unwrap();
        fs::write(root.join("sub/.pvrignore"), "*.o\n!keep.o\n").unwrap();
        std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
        // "ab" and the ignored "top.log" are tracked: reported with their stat key
        let tracked = Tracked::new(["ab", "top.log", "gone"]);
        let all = walk(&root, &root, &tracked, None).unwrap().found;
        let mut known: Vec<usize> = all
            .iter()
            .filter_map(|w| match w {
                Walked::Known(i, k) => {
                    assert_eq!(k.size, 1);
                    Some(*i)
                }
                _ => None,
            })
            .collect();
        known.sort();
        assert_eq!(known, vec![0, 1]);
        let paths: Vec<&str> = all
            .iter()
            .filter_map(|w| match w {
                Walked::Other(p) => Some(p.as_str()),
                Walked::NotUtf8(_) => unreachable!(),
                _ => None,
            })
            .collect();
        assert!(all.contains(&Walked::OtherLink("link".into())), "{all:?}");
        assert_eq!(
            paths,
            vec![
                ".pvrignore",
                "a/b",
                "a b/c",
                "a.txt",
                "sub/.pvrignore",
                "sub/keep.o",
                "sub/y.c",
            ]
        );
        assert_eq!(
            entries(&root, &root.join("sub")).unwrap().files,
            vec!["sub/.pvrignore", "sub/keep.o", "sub/y.c"]
        );
    }
}

#[cfg(test)]
mod dircache_tests {
    use super::*;
    use std::fs;

    type Records = HashMap<String, DirRecord>;

    /// (tracked indices with sizes, untracked paths in walk order, directories reused)
    fn run(
        root: &Path,
        tracked: &Tracked<'_>,
        cache: Option<(&mut Records, i64)>,
    ) -> (Vec<(usize, u64)>, Vec<String>, usize) {
        let (w, reused) = match cache {
            Some((records, stable_before_ns)) => {
                let dc = DirCache {
                    old: records,
                    stable_before_ns,
                };
                let w = walk(root, root, tracked, Some(&dc)).unwrap();
                let mut reused = 0;
                let new: Records = w
                    .dirs
                    .iter()
                    .filter_map(|(p, o)| match o {
                        DirOutcome::Reused => {
                            reused += 1;
                            records.get(p).cloned().map(|r| (p.clone(), r))
                        }
                        DirOutcome::Read(r) => Some((p.clone(), r.clone())),
                    })
                    .collect();
                *records = new;
                (w, reused)
            }
            None => (walk(root, root, tracked, None).unwrap(), 0),
        };
        let mut known = Vec::new();
        let mut other = Vec::new();
        for f in w.found {
            match f {
                Walked::Known(i, k) => known.push((i, k.size)),
                Walked::Other(p) | Walked::OtherLink(p) => other.push(p),
                Walked::Unstorable(p, _) => other.push(format!("{p}!")),
                Walked::Dir { path, empty, .. } if empty => other.push(format!("{path}/")),
                Walked::Dir { .. } => {}
                Walked::NotUtf8(p) => other.push(p.to_string_lossy().into_owned()),
            }
        }
        known.sort();
        (known, other, reused)
    }

    fn put(root: &Path, rel: &str, data: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    /// Walk with the records and without, check both agree, return how many dirs were reused.
    fn same(root: &Path, tracked: &Tracked<'_>, records: &mut Records) -> usize {
        let (k1, o1, reused) = run(root, tracked, Some((records, i64::MAX)));
        let (k2, o2, _) = run(root, tracked, None);
        assert_eq!(
            (&k1, &o1),
            (&k2, &o2),
            "cached walk differs from a full one"
        );
        reused
    }

    #[test]
    fn unchanged_directories_are_reused_and_every_change_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        for f in ["a/x", "a/y", "a/sub/z", "a/sub/deep/q", "b/w", "keep.txt"] {
            put(&root, f, "1");
        }
        let tracked = Tracked::new(["a/x", "b/w"]);
        let mut records = Records::default();
        assert_eq!(same(&root, &tracked, &mut records), 0);
        assert_eq!(records.len(), 5); // "", a, a/sub, a/sub/deep, b
        assert_eq!(same(&root, &tracked, &mut records), 5);

        // A record that is reused is believed: a name planted in it shows up.
        let mut lie = records.clone();
        lie.get_mut("a")
            .unwrap()
            .listing
            .extend_from_slice(b"fphantom\0");
        let (_, other, _) = run(&root, &tracked, Some((&mut lie, i64::MAX)));
        assert!(other.contains(&"a/phantom".to_string()), "{other:?}");

        // new file in a directory; a file removed; a tracked file deleted
        put(&root, "a/sub/new", "1");
        fs::remove_file(root.join("a/y")).unwrap();
        fs::remove_file(root.join("b/w")).unwrap();
        assert_eq!(same(&root, &tracked, &mut records), 2); // "" and a/sub/deep
                                                            // a tracked file's content changes: its directory is reused, its new size reported
        put(&root, "a/x", "longer");
        assert_eq!(same(&root, &tracked, &mut records), 5);
        // a directory renamed, at the top and below
        fs::rename(root.join("a/sub"), root.join("a/sub2")).unwrap();
        fs::rename(root.join("b"), root.join("c")).unwrap();
        same(&root, &tracked, &mut records);
        // .pvrignore created, then edited in place (the directory's mtime does not move): the
        // directory and everything below it follow the new rules
        put(&root, "a/.pvrignore", "nothing\n");
        same(&root, &tracked, &mut records);
        let before = fs::metadata(root.join("a")).unwrap().modified().unwrap();
        put(&root, "a/.pvrignore", "q\nnew\n");
        assert_eq!(
            fs::metadata(root.join("a")).unwrap().modified().unwrap(),
            before
        );
        same(&root, &tracked, &mut records);
        let (_, other, _) = run(&root, &tracked, Some((&mut records, i64::MAX)));
        // (an empty directory is listed: a/sub2/deep holds only ignored names, c lost its file)
        assert_eq!(
            other,
            vec!["a/.pvrignore", "a/sub2/deep/", "a/sub2/z", "c/", "keep.txt"]
        );
        // ... and removed again
        fs::remove_file(root.join("a/.pvrignore")).unwrap();
        same(&root, &tracked, &mut records);
        // a directory replaced by a file, a file by a directory
        fs::remove_dir_all(root.join("a/sub2")).unwrap();
        put(&root, "a/sub2", "now a file");
        fs::remove_file(root.join("keep.txt")).unwrap();
        put(&root, "keep.txt/inside", "1");
        same(&root, &tracked, &mut records);
        // the tracked set changes (a commit dropped a/x): it is untracked now, from the record
        let untracked_now = Tracked::new(["c/w"]);
        assert_eq!(same(&root, &untracked_now, &mut records), records.len());
        let (_, other, _) = run(&root, &untracked_now, Some((&mut records, i64::MAX)));
        assert!(other.contains(&"a/x".to_string()), "{other:?}");
    }

    #[test]
    fn racy_records_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        put(&root, "a/x", "1");
        let tracked = Tracked::default();
        // Everything was modified after the cutoff: records are kept but marked unstable...
        let mut records = Records::default();
        run(&root, &tracked, Some((&mut records, 0)));
        assert!(records.values().all(|r| !r.stable));
        // ... and never believed, even with a matching stat key.
        records
            .get_mut("a")
            .unwrap()
            .listing
            .extend_from_slice(b"fphantom\0");
        let (_, other, reused) = run(&root, &tracked, Some((&mut records, i64::MAX)));
        assert_eq!((other, reused), (vec!["a/x".to_string()], 0));
        // The real cutoff: a directory written just now is not stable yet.
        let mut records = Records::default();
        run(
            &root,
            &tracked,
            Some((&mut records, DirCache::cutoff_now())),
        );
        put(&root, "a/y", "1");
        run(
            &root,
            &tracked,
            Some((&mut records, DirCache::cutoff_now())),
        );
        assert!(!records["a"].stable);
    }

    #[test]
    fn a_record_naming_a_missing_directory_falls_back_to_a_full_walk() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        put(&root, "a/x", "1");
        let tracked = Tracked::default();
        let mut records = Records::default();
        run(&root, &tracked, Some((&mut records, i64::MAX)));
        // plant a subdirectory that does not exist in a record that will be reused
        records.get_mut("a").unwrap().listing = b"dghost\0fx\0".to_vec();
        let (_, other, _) = run(&root, &tracked, Some((&mut records, i64::MAX)));
        assert_eq!(other, vec!["a/x"]);
        assert!(
            records.is_empty(),
            "the records are dropped after a fallback"
        );
    }
}

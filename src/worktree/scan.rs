//! The working view: one walk of the tree, probes of tracked and staged paths (stat cache
//! first), and the resulting `Scan` (see the `worktree` module docs, "Speed" and "Whole trees").

use super::beneath::Beneath;
use super::headindex::{HeadFile, HeadIndex, LoadedHead};
use super::*;
use crate::state::meta::{check_link_target, DEFAULT_FILE_MODE};
use crate::state::TreeMeta;

/// Path order of a directory walk that sorts names within each directory (Go's
/// `filepath.Walk`, hence pvr's `?` order): compare segment by segment.
pub fn walk_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('/').cmp(b.split('/'))
}

/// Every regular file, symlink, empty directory and unstorable entry under `start` (inside the
/// work dir `root`), as repo-relative paths in walk order (see `walk`).
pub fn walk_entries(root: &Path, start: &Path) -> Result<walk::Listing> {
    walk::entries(root, start)
}

/// What is on disk at one regular file.
#[derive(Debug, Clone)]
pub struct Probe {
    pub key: Option<StatKey>,
    /// sha256 of the bytes.
    pub sha: ObjectId,
    /// The parsed value, when the file was probed as inline JSON (and not `same_as_head`).
    pub value: Option<std::result::Result<Value, SyntaxError>>,
    /// A trusted stat-cache entry vouches that this inline file holds the head's value (which
    /// is then not copied into `value`: `entry_of` takes it from the head when asked).
    pub same_as_head: bool,
    /// sha256 of the canonical value bytes, when known.
    pub value_sha: Option<ObjectId>,
    /// Answered by a trusted stat-cache entry (nothing was read).
    pub cached: bool,
    /// The permission bits.
    pub mode: u32,
}

impl Probe {
    pub(super) fn cache_entry(&self) -> Option<CacheEntry> {
        Some(CacheEntry {
            key: self.key?,
            sha: self.sha,
            value_sha: self.value_sha,
        })
    }
}

/// What is on disk at one path (parents resolved without following symlinks, see `beneath`).
#[derive(Debug, Clone)]
pub enum Found {
    Absent,
    File(Probe),
    /// A symlink; `cache` is its stat-cache entry (sha256 of the target), `cached` when the
    /// target came from a trusted entry instead of `readlink`.
    Link {
        target: String,
        cache: CacheEntry,
        cached: bool,
    },
    Dir {
        mode: u32,
    },
    /// Something a state cannot hold, and what it is.
    Unstorable(&'static str),
}

impl Found {
    pub(super) fn cache_entry(&self) -> Option<CacheEntry> {
        match self {
            Found::File(p) => p.cache_entry(),
            Found::Link { cache, .. } => Some(*cache),
            _ => None,
        }
    }

    fn cached(&self) -> bool {
        match self {
            Found::File(p) => p.cached,
            Found::Link { cached, .. } => *cached,
            _ => true,
        }
    }
}

/// What the head (or the last checked-out state) has at a path, as the probes use it.
#[derive(Debug, Clone, Copy)]
pub enum Was<'a> {
    File(&'a Entry),
    /// A file of the head known from the head index (`status`): no value at hand, its id.
    Indexed(HeadFile),
    Link(&'a str),
    New,
}

impl Was<'_> {
    /// Is this a file of the head (parsed or indexed)?
    fn is_head_file(&self) -> bool {
        matches!(self, Was::File(_) | Was::Indexed(_))
    }

    /// Does the head hold this path as an object?
    fn is_object(&self) -> bool {
        matches!(
            self,
            Was::File(Entry::Object(_)) | Was::Indexed(HeadFile::Object(_))
        )
    }

    /// Is `value_sha` the hash of the canonical bytes of the head's inline value here?
    fn has_value_sha(&self, value_sha: ObjectId) -> bool {
        match self {
            Was::File(Entry::Inline(v)) => {
                value_sha == ObjectId::hash_bytes(&json::to_canonical(v))
            }
            Was::Indexed(HeadFile::Inline(id)) => value_sha == *id,
            _ => false,
        }
    }
}

/// Look at one path. `inline` asks for the parsed value of a regular file; `was` (what the head
/// has there) lets a cache hit skip reading an inline file or a symlink. `pre` is the entry's
/// stat key when the caller already has it (from `walk`); `cached` answers with the trusted
/// stat-cache entry for a key, if any.
pub(super) fn probe(
    tree: &Beneath,
    rel: &str,
    inline: bool,
    cached: &dyn Fn(&StatKey) -> Option<CacheEntry>,
    was: Was<'_>,
    pre: Option<StatKey>,
) -> Result<Found> {
    // The path is resolved only when the entry has to be touched: on 100k clean files with a
    // walk-provided key and a cache hit, it never is.
    let key = match pre {
        Some(k) => k,
        None => match tree.lstat(rel)? {
            Some(st) => StatKey::from_stat(&st),
            None => return Ok(Found::Absent),
        },
    };
    use rustix::fs::FileType as T;
    match key.file_type() {
        T::RegularFile => {}
        T::Symlink => return probe_link(tree, rel, key, cached, was),
        T::Directory => {
            return Ok(Found::Dir {
                mode: key.permissions(),
            })
        }
        t => {
            let what = stat::kind_of(t).and_then(stat::unstorable);
            return Ok(Found::Unstorable(what.unwrap_or("of an unknown file type")));
        }
    }
    let mode = key.permissions();
    if let Some(hit) = cached(&key) {
        if !inline {
            return Ok(Found::File(Probe {
                key: Some(key),
                sha: hit.sha,
                value: None,
                value_sha: hit.value_sha,
                same_as_head: false,
                cached: true,
                mode,
            }));
        }
        if let Some(vs) = hit.value_sha {
            if was.has_value_sha(vs) {
                return Ok(Found::File(Probe {
                    key: Some(key),
                    sha: hit.sha,
                    value: None,
                    value_sha: Some(vs),
                    same_as_head: true,
                    cached: true,
                    mode,
                }));
            }
        }
    }
    let Some(mut file) = tree.open_file(rel)? else {
        return Ok(Found::Absent);
    };
    let abs = || tree.root_path().join(rel);
    let (sha, value) = if inline {
        let mut bytes = Vec::with_capacity(key.size as usize);
        file.read_to_end(&mut bytes).ctx("read", abs())?;
        (ObjectId::hash_bytes(&bytes), Some(json::parse(&bytes)))
    } else {
        let (sha, _) = ObjectId::hash_reader(&mut file).ctx("read", abs())?;
        (sha, None)
    };
    let value_sha = match &value {
        Some(Ok(v)) => Some(ObjectId::hash_bytes(&json::to_canonical(v))),
        _ => None,
    };
    // A file that changed while it was read is not cached (its key may not match its bytes).
    let stable = file.metadata().is_ok_and(|m| StatKey::of(&m) == key);
    Ok(Found::File(Probe {
        key: stable.then_some(key),
        sha,
        value,
        value_sha,
        same_as_head: false,
        cached: false,
        mode,
    }))
}

fn probe_link(
    tree: &Beneath,
    rel: &str,
    key: StatKey,
    cached: &dyn Fn(&StatKey) -> Option<CacheEntry>,
    was: Was<'_>,
) -> Result<Found> {
    // A symlink is never changed in place (only replaced, which changes its key), so a trusted
    // entry whose target hash is the head's vouches for the head's target.
    if let (Some(hit), Was::Link(t)) = (cached(&key), was) {
        if hit.sha == ObjectId::hash_bytes(t.as_bytes()) {
            return Ok(Found::Link {
                target: t.to_string(),
                cache: hit,
                cached: true,
            });
        }
    }
    let Some(bytes) = tree.readlink(rel)? else {
        return Ok(Found::Absent); // replaced meanwhile
    };
    let Ok(target) = String::from_utf8(bytes) else {
        return Ok(Found::Unstorable(
            "a symlink whose target is not UTF-8 (a state holds targets as JSON strings)",
        ));
    };
    if check_link_target(&target).is_err() {
        return Ok(Found::Unstorable("a symlink with an empty target"));
    }
    let cache = CacheEntry {
        key,
        sha: ObjectId::hash_bytes(target.as_bytes()),
        value_sha: None,
    };
    Ok(Found::Link {
        target,
        cache,
        cached: false,
    })
}

/// Does `path` go in as an object (true) or inline (false)? See the module docs.
/// `head_is_object`: the head holds `path` as an object.
pub(super) fn stored_as_object(path: &str, head_is_object: bool, staged: Option<&Staged>) -> bool {
    if !is_inline_path(path) {
        return true;
    }
    match staged {
        Some(s) => s.force_object,
        None => head_is_object,
    }
}

/// The entry a probed file becomes; `head` is the head's entry at `path` (what `Was::File`
/// held when it was probed).
pub(super) fn entry_of(
    path: &str,
    as_object: bool,
    p: &Probe,
    head: Option<&Entry>,
) -> Result<Entry> {
    if as_object {
        return Ok(Entry::Object(p.sha));
    }
    if p.same_as_head {
        if let Some(e @ Entry::Inline(_)) = head {
            return Ok(e.clone());
        }
    }
    match &p.value {
        Some(Ok(v)) if json::is_object_id_string(v) => Ok(Entry::Object(p.sha)),
        Some(Ok(v)) => Ok(Entry::Inline(v.clone())),
        Some(Err(e)) => Err(Error::InvalidJson {
            path: path.to_string(),
            source: e.clone(),
        }),
        None => Ok(Entry::Object(p.sha)),
    }
}

/// The head as a scan reads it: the parsed state (`scan`, which must be able to build the
/// working state), or what `status` loads (`headindex::load_head`: usually the head index).
pub trait HeadView: Send + Sync {
    /// Every file of the head, in path order, as the probes compare against it.
    fn files_to_probe(&self) -> Vec<(&str, Was<'_>)>;
    /// Is `path` a file of the head?
    fn has_file(&self, path: &str) -> bool;
    /// The head's modes, symlinks and empty directories.
    fn head_meta(&self) -> &TreeMeta;
}

impl HeadView for State {
    fn files_to_probe(&self) -> Vec<(&str, Was<'_>)> {
        self.iter()
            .map(|(k, e)| (k.as_str(), Was::File(e)))
            .collect()
    }
    fn has_file(&self, path: &str) -> bool {
        self.contains(path)
    }
    fn head_meta(&self) -> &TreeMeta {
        self.meta()
    }
}

impl HeadView for HeadIndex {
    fn files_to_probe(&self) -> Vec<(&str, Was<'_>)> {
        self.files().map(|(k, h)| (k, Was::Indexed(h))).collect()
    }
    fn has_file(&self, path: &str) -> bool {
        self.contains(path)
    }
    fn head_meta(&self) -> &TreeMeta {
        self.meta()
    }
}

impl HeadView for LoadedHead {
    fn files_to_probe(&self) -> Vec<(&str, Was<'_>)> {
        match self {
            LoadedHead::ByKey(ix) | LoadedHead::ByContent(ix) => ix.files_to_probe(),
            LoadedHead::Parsed(state) => state.files_to_probe(),
        }
    }
    fn has_file(&self, path: &str) -> bool {
        match self {
            LoadedHead::ByKey(ix) | LoadedHead::ByContent(ix) => ix.has_file(path),
            LoadedHead::Parsed(state) => state.has_file(path),
        }
    }
    fn head_meta(&self) -> &TreeMeta {
        match self {
            LoadedHead::ByKey(ix) | LoadedHead::ByContent(ix) => ix.head_meta(),
            LoadedHead::Parsed(state) => state.head_meta(),
        }
    }
}

/// What `status` reports: the lists of a `Scan`, with the head as `status` loaded it.
pub type Status = Scan<LoadedHead>;

/// The working view and how it differs from the head.
#[derive(Debug)]
pub struct Scan<H = State> {
    pub head: H,
    pub staged: StagedMap,
    /// Symlinks and empty directories staged by `add` (`.pvr/pvrfs/new-meta`).
    pub staged_meta: BTreeSet<String>,
    /// New entries of added and changed files.
    pub updates: BTreeMap<String, Entry>,
    /// Files of the head that are no longer regular files (gone, or now a symlink or a
    /// directory).
    pub removed: Vec<String>,
    /// The working view's modes, symlinks and empty directories.
    pub meta: TreeMeta,
    /// Status lines, each sorted: added (`A`), deleted (`D`), changed (`C`: content, symlink
    /// target, type or mode). Directories end in `/`.
    pub added: Vec<String>,
    pub deleted: Vec<String>,
    pub changed: Vec<String>,
    /// Files, symlinks and empty directories (ending in `/`) neither tracked nor staged, in
    /// walk order (only from `scan_all`); a name that is not UTF-8 appears lossily converted
    /// (it cannot be added).
    pub untracked: Vec<String>,
    /// What a state cannot hold (sockets, FIFOs, devices, the reserved name), with what it is
    /// (only from `scan_all`, plus tracked paths that became such things).
    pub unstorable: Vec<(String, &'static str)>,
    /// How many tracked files were read (the stat cache did not vouch for them).
    pub files_read: usize,
}

impl<H: HeadView> Scan<H> {
    /// True when the work tree holds no change to commit.
    pub fn is_clean(&self) -> bool {
        self.updates.is_empty() && self.removed.is_empty() && self.meta == *self.head.head_meta()
    }
}

impl Scan {
    /// What a commit would record now: the head with the updates, removals and the working
    /// metadata applied. (Built on demand: `status` never needs it, and cloning a big head is
    /// not free.)
    pub fn state(&self) -> Result<State> {
        let mut state = self.head.clone();
        for p in &self.removed {
            state.remove(p);
        }
        for (p, e) in &self.updates {
            state.insert(p, e.clone())?;
        }
        state.set_meta(self.meta.clone())?;
        Ok(state)
    }
}

/// Turn a walk made with the stat cache's paths as the tracked set into one made with the real
/// set, `paths` (`positions[i]` = the cache index of `paths[i]`; the cache holds `cached`
/// paths): indices are mapped, and entries the walk saw as untracked but that are tracked are
/// dropped from the untracked list (they are stat'ed apart, as entries the walk did not
/// report). `None` when an entry the cache knew is present but no longer tracked: it must
/// appear among the untracked entries in walk order, which only a new walk gives.
pub(super) fn reconcile(
    mut w: walk::Walk,
    paths: &[(&str, Was<'_>)],
    positions: &[Option<usize>],
    cached: usize,
) -> Option<walk::Walk> {
    let mut index = vec![None; cached];
    for (i, pos) in positions.iter().enumerate() {
        if let Some(c) = pos {
            index[*c] = Some(i);
        }
    }
    for f in &mut w.found {
        if let walk::Walked::Known(c, _) = f {
            *c = index[*c]?;
        }
    }
    let unknown: stat::HashSet<&str> = paths
        .iter()
        .zip(positions)
        .filter(|(_, pos)| pos.is_none())
        .map(|((p, _), _)| *p)
        .collect();
    if !unknown.is_empty() {
        w.found.retain(|f| {
            !matches!(f, walk::Walked::Other(p) | walk::Walked::OtherLink(p) if unknown.contains(p.as_str()))
        });
    }
    Some(w)
}

/// `items` mapped by `f` in parallel, in order, into one vector of the exact size; when a call
/// fails, the first error seen (in time: which one is not defined) is returned.
///
/// Made for 100k probes: a parallel collect into a `Result<Vec<_>>` cannot write into one
/// vector (its length is unknown until the end), so it grows and joins chunks, several times
/// the final vector's bytes, page-faulted in fresh.
pub(super) fn par_map_exact<I, T, F>(items: I, f: F) -> Result<Vec<T>>
where
    I: IndexedParallelIterator,
    T: Send,
    F: Fn(I::Item) -> Result<T> + Sync + Send,
{
    let failure: std::sync::Mutex<Option<Error>> = std::sync::Mutex::new(None);
    let done: Vec<Option<T>> = items
        .map(|item| {
            f(item)
                .map_err(|e| {
                    let mut first = failure.lock().unwrap_or_else(|p| p.into_inner());
                    first.get_or_insert(e);
                })
                .ok()
        })
        .collect();
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    // Every slot is filled when nothing failed (and the vector is reused in place).
    Ok(done.into_iter().flatten().collect())
}

/// Every directory holding one of `paths` (sorted runs), without repeating work for siblings.
pub(super) fn parents_of<'p>(
    paths: impl Iterator<Item = &'p str>,
    into: &mut stat::HashSet<String>,
) {
    let mut last_parent: Option<&str> = None;
    for p in paths {
        let Some((parent, _)) = p.rsplit_once('/') else {
            continue;
        };
        if last_parent == Some(parent) {
            continue;
        }
        last_parent = Some(parent);
        let mut dir = parent;
        loop {
            if !into.insert(dir.to_string()) {
                break; // it and its parents are known already
            }
            match dir.rsplit_once('/') {
                Some((up, _)) => dir = up,
                None => break,
            }
        }
    }
}

impl WorkTree<'_> {
    /// Compute the working view (tracked and staged paths only). Fails with `InvalidJson` when
    /// an inline file does not parse.
    pub fn scan(&mut self) -> Result<Scan> {
        // The walk is also the cheapest way to stat every tracked file (fstatat per directory
        // beats one full path lookup per file), so it is used even when `?` is not wanted.
        let mut scan = self.scan_inner(|| self.repo.head_state())?;
        scan.untracked = Vec::new();
        Ok(scan)
    }

    /// `scan` plus the untracked and unstorable entries, in one walk of the tree.
    pub fn scan_all(&mut self) -> Result<Scan> {
        self.scan_inner(|| self.repo.head_state())
    }

    /// What `status` lists: `scan_all`'s lists, with the head taken from the head index when
    /// it is believed (`headindex`: then `.pvr/json` is not parsed; the working state cannot
    /// be built from such a scan, and `status` does not need it).
    pub fn status(&mut self) -> Result<Status> {
        let repo = self.repo;
        self.scan_inner(|| headindex::load_head(repo))
    }

    /// `status` with another stability cutoff for `.pvr/json`'s stat key (tests).
    #[cfg(test)]
    pub(super) fn status_with_cutoff(&mut self, cutoff: i64) -> Result<Status> {
        let repo = self.repo;
        self.scan_inner(|| headindex::load_head_with_cutoff(repo, cutoff))
    }

    fn scan_inner<H: HeadView>(
        &mut self,
        load_head: impl FnOnce() -> Result<H> + Send,
    ) -> Result<Scan<H>> {
        let repo = self.repo;
        let root = repo.workdir();
        let tree = Beneath::open(root)?;
        let cache: &StatCache = self.load_cache();
        let use_dirs = walk::dircache_supported(root);
        let dircache = walk::DirCache {
            old: cache.dirs(),
            stable_before_ns: walk::DirCache::cutoff_now(),
        };
        let dircache = use_dirs.then_some(&dircache);
        // The walk needs the tracked paths, and parsing the head that holds them is the longest
        // step before it. The stat cache's paths are almost always the same set (a scan leaves
        // exactly the tracked and staged files and symlinks in it), so the walk starts from
        // them while the head parses, and is checked against the real set afterwards (see
        // `reconcile`).
        let load = || -> Result<(H, StagedMap, BTreeSet<String>)> {
            Ok((load_head()?, load_staged(repo)?, load_staged_meta(repo)?))
        };
        let (loaded, early) = if cache.is_empty() {
            (load()?, None)
        } else {
            let predicted = walk::Tracked::new(cache.paths());
            let (loaded, walked) =
                rayon::join(load, || walk::walk(root, root, &predicted, dircache));
            (loaded?, Some(walked?))
        };
        let (head, staged, staged_meta) = loaded;
        let hm = head.head_meta();
        // Tracked and staged paths, in sorted runs: head files, head symlinks, staged-only
        // files, staged-only symlinks or directories. The lists below come out sorted anyway.
        let mut paths: Vec<(&str, Was<'_>)> = head.files_to_probe();
        paths.extend(
            hm.links
                .iter()
                .map(|(k, t)| (k.as_str(), Was::Link(t.as_str()))),
        );
        let known = |k: &str| head.has_file(k) || hm.links.contains_key(k);
        paths.extend(
            staged
                .keys()
                .filter(|k| !known(k))
                .map(|k| (k.as_str(), Was::New)),
        );
        paths.extend(
            staged_meta
                .iter()
                .filter(|k| !known(k) && !staged.contains_key(*k))
                .map(|k| (k.as_str(), Was::New)),
        );
        let positions = cache.positions(paths.iter().map(|(p, _)| *p));
        // With a walk, tracked entries get their stat key from it (fstatat, cheap); the others
        // (ignored by .pvrignore, or gone) are looked up one by one below. Directories that did
        // not change since the last walk are not read again (`walk`'s directory cache).
        let walked = match early.and_then(|w| reconcile(w, &paths, &positions, cache.len())) {
            Some(w) => w,
            None => {
                let tracked = walk::Tracked::new(paths.iter().map(|(p, _)| *p));
                walk::walk(root, root, &tracked, dircache)?
            }
        };
        // Untracked entries in walk order; `true` marks an empty directory (listed only if the
        // view does not hold it).
        let mut untracked: Vec<(String, bool)> = Vec::new();
        let mut unstorable: Vec<(String, &'static str)> = Vec::new();
        let mut dir_modes: HashMap<String, u32> = HashMap::default();
        let mut keys: Vec<Option<StatKey>> = vec![None; paths.len()];
        for w in walked.found {
            match w {
                walk::Walked::Known(i, k) => keys[i] = Some(k),
                walk::Walked::Other(p) | walk::Walked::OtherLink(p) => untracked.push((p, false)),
                walk::Walked::Dir { path, mode, empty } => {
                    if empty {
                        untracked.push((path.clone(), true));
                    }
                    dir_modes.insert(path, mode);
                }
                walk::Walked::Unstorable(p, what) => unstorable.push((p, what)),
                walk::Walked::NotUtf8(p) => {
                    untracked.push((p.to_string_lossy().into_owned(), false))
                }
            }
        }
        let cache = self.cache.as_mut().expect("loaded above");
        let dirs_changed = walked.dirs.len() != cache.dirs().len()
            || walked
                .dirs
                .iter()
                .any(|(_, o)| matches!(o, walk::DirOutcome::Read(_)));
        if dirs_changed {
            let old = cache.dirs();
            let dirs: HashMap<String, stat::DirRecord> = walked
                .dirs
                .into_iter()
                .filter_map(|(path, o)| match o {
                    walk::DirOutcome::Read(r) => Some((path, r)),
                    walk::DirOutcome::Reused => old.get(&path).cloned().map(|r| (path, r)),
                })
                .collect();
            cache.set_dirs(dirs);
        }
        let cache_ref: &StatCache = cache;
        let bar = Progress::new(self.progress, paths.len(), "checking");
        let probes: Vec<(&str, Was<'_>, bool, Found)> = par_map_exact(
            paths.into_par_iter().zip(keys).zip(positions),
            |(((path, was), pre), pos)| {
                let s = if staged.is_empty() {
                    None
                } else {
                    staged.get(path)
                };
                let as_object = stored_as_object(path, was.is_object(), s);
                let cached = |k: &StatKey| pos.and_then(|i| cache_ref.trusted(i, k));
                let found = probe(&tree, path, !as_object, &cached, was, pre)?;
                bar.inc();
                Ok((path, was, as_object, found))
            },
        )?;
        bar.finish();
        let mut updates = BTreeMap::new();
        let mut removed = Vec::new();
        let mut meta = TreeMeta::default();
        let (mut added, mut deleted, mut changed) = (Vec::new(), Vec::new(), Vec::new());
        let mut staged_dirs: Vec<&str> = Vec::new();
        // Files and symlinks of the view, in the probes' order (sorted runs).
        let mut present: Vec<&str> = Vec::new();
        let mut cache_dirty = false;
        let mut cached_entries = 0;
        let mut files_read = 0;
        // The head's file modes, looked up once per file: hashed, not a tree search.
        let head_modes: HashMap<&str, u32> =
            hm.modes.iter().map(|(k, m)| (k.as_str(), *m)).collect();
        let head_file_mode = |path: &str| match head_modes.is_empty() {
            true => DEFAULT_FILE_MODE,
            false => head_modes.get(path).copied().unwrap_or(DEFAULT_FILE_MODE),
        };
        for &(path, was, as_object, ref found) in &probes {
            if found.cache_entry().is_some() {
                cached_entries += 1;
                cache_dirty |= !found.cached();
            }
            if matches!(found, Found::File(_) | Found::Link { .. }) {
                present.push(path);
            }
            match found {
                Found::File(p) => {
                    files_read += usize::from(!p.cached);
                    // Each path comes once: only a mode to record needs `set_mode`.
                    if p.mode != DEFAULT_FILE_MODE {
                        meta.set_mode(path, p.mode, false);
                    }
                    if was.is_head_file() && p.same_as_head {
                        // the head's own value: no entry to build or compare
                        if head_file_mode(path) != p.mode {
                            changed.push(path.to_string());
                        }
                        continue;
                    }
                    let head_entry = match was {
                        Was::File(h) => Some(h),
                        _ => None,
                    };
                    let entry = entry_of(path, as_object, p, head_entry)?;
                    let differs = match was {
                        Was::New => {
                            added.push(path.to_string());
                            true
                        }
                        Was::Link(_) => {
                            changed.push(path.to_string());
                            true
                        }
                        Was::File(h) => *h != entry,
                        Was::Indexed(h) => !h.is(&entry, p.value_sha),
                    };
                    if was.is_head_file() && (differs || head_file_mode(path) != p.mode) {
                        changed.push(path.to_string());
                    }
                    if differs {
                        updates.insert(path.to_string(), entry);
                    }
                }
                Found::Link { target, .. } => {
                    match was {
                        Was::New => added.push(path.to_string()),
                        Was::File(_) | Was::Indexed(_) => {
                            removed.push(path.to_string());
                            changed.push(path.to_string());
                        }
                        Was::Link(t) if t != target => changed.push(path.to_string()),
                        Was::Link(_) => {}
                    }
                    meta.links.insert(path.to_string(), target.clone());
                }
                other => {
                    match was {
                        Was::File(_) | Was::Indexed(_) => {
                            removed.push(path.to_string());
                            deleted.push(path.to_string());
                        }
                        Was::Link(_) => deleted.push(path.to_string()),
                        Was::New => {}
                    }
                    match other {
                        Found::Dir { .. } if staged_meta.contains(path) => staged_dirs.push(path),
                        Found::Unstorable(what) => unstorable.push((path.to_string(), what)),
                        _ => {}
                    }
                }
            }
        }
        // Directories. The view holds every directory of a present file or symlink; an empty
        // one is recorded when it was an empty directory of the head, was staged as one, or
        // held tracked content that is gone while the directory itself is still there.
        let mut view_dirs: stat::HashSet<String> = stat::HashSet::default();
        parents_of(present.iter().copied(), &mut view_dirs);
        let mut head_dirs: stat::HashSet<String> = stat::HashSet::default();
        parents_of(
            probes
                .iter()
                .filter(|(_, was, _, _)| !matches!(was, Was::New))
                .map(|(path, _, _, _)| *path)
                .chain(hm.dirs.iter().map(String::as_str)),
            &mut head_dirs,
        );
        head_dirs.extend(hm.dirs.iter().cloned());
        // Only directories with nothing of the view under them can be empty ones (usually none).
        let mut candidates: Vec<&str> = head_dirs
            .iter()
            .map(String::as_str)
            .chain(staged_dirs)
            .filter(|d| !view_dirs.contains(*d))
            .collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a)); // children before their parents
        candidates.dedup();
        let is_dir_on_disk = |d: &str| -> Result<bool> {
            if dir_modes.contains_key(d) {
                return Ok(true);
            }
            Ok(tree.lstat(d)?.is_some_and(|st| {
                rustix::fs::FileType::from_raw_mode(st.st_mode as _)
                    == rustix::fs::FileType::Directory
            }))
        };
        for d in candidates {
            if view_dirs.contains(d) || !is_dir_on_disk(d)? {
                continue;
            }
            meta.dirs.insert(d.to_string());
            parents_of(std::iter::once(d), &mut view_dirs);
        }
        let all_dirs: Vec<String> = view_dirs.iter().chain(meta.dirs.iter()).cloned().collect();
        for d in &all_dirs {
            let mode = match dir_modes.get(d) {
                Some(m) => *m,
                None => match tree.lstat(d)? {
                    Some(st) => StatKey::from_stat(&st).permissions(),
                    None => continue,
                },
            };
            meta.set_mode(d, mode, true);
        }
        for d in &meta.dirs {
            if !hm.dirs.contains(d) {
                added.push(format!("{d}/"));
            }
        }
        for d in &hm.dirs {
            if !meta.dirs.contains(d) && !view_dirs.contains(d) {
                deleted.push(format!("{d}/"));
            }
        }
        let mode_paths: BTreeSet<&String> = hm.modes.keys().chain(meta.modes.keys()).collect();
        for d in mode_paths {
            let in_view = view_dirs.contains(d.as_str()) || meta.dirs.contains(d);
            if in_view && head_dirs.contains(d.as_str()) && hm.dir_mode(d) != meta.dir_mode(d) {
                changed.push(format!("{d}/"));
            }
        }
        for list in [&mut added, &mut deleted, &mut changed] {
            list.sort_unstable();
            list.dedup();
        }
        let untracked: Vec<String> = untracked
            .into_iter()
            .filter(|(p, is_dir)| {
                !*is_dir || !(meta.dirs.contains(p) || view_dirs.contains(p.as_str()))
            })
            .map(|(p, is_dir)| if is_dir { format!("{p}/") } else { p })
            .collect();
        unstorable.sort_unstable();
        unstorable.dedup();
        // Rewrite the cache only when it learned something (or lost entries).
        let mut save = dirs_changed;
        if cache_dirty || cached_entries != cache.len() {
            cache.replace(
                probes
                    .iter()
                    .filter_map(|(path, _, _, f)| f.cache_entry().map(|c| (*path, c))),
            );
            save = true;
        }
        if save {
            cache.save_now();
        }
        drop(probes);
        Ok(Scan {
            head,
            staged,
            staged_meta,
            updates,
            removed,
            meta,
            added,
            deleted,
            changed,
            untracked,
            unstorable,
            files_read,
        })
    }
}

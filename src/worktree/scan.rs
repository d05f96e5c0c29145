//! The working view: one walk of the tree, probes of tracked and staged files (stat cache first),
//! and the resulting `Scan` (see the `worktree` module docs, "Speed").

use super::*;

/// Path order of a directory walk that sorts names within each directory (Go's
/// `filepath.Walk`, hence pvr's `?` order): compare segment by segment.
pub fn walk_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('/').cmp(b.split('/'))
}

/// Every regular file under `start` (inside the work dir `root`), as repo-relative paths in walk
/// order (see `walk`).
pub fn walk_files(root: &Path, start: &Path) -> Result<Vec<String>> {
    walk::files(root, start)
}

/// What is on disk at one path.
#[derive(Debug, Clone)]
pub struct Probe {
    pub key: Option<StatKey>,
    /// sha256 of the bytes.
    pub sha: ObjectId,
    /// The parsed value, when the file was probed as inline JSON.
    pub value: Option<std::result::Result<Value, SyntaxError>>,
    /// sha256 of the canonical value bytes, when known.
    pub value_sha: Option<ObjectId>,
    /// Answered by a trusted stat-cache entry (nothing was read).
    pub cached: bool,
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

/// Look at one file: `None` when it is absent or not a regular file. `inline` asks for the parsed
/// value; `head_value` (the committed value of the path) lets a cache hit skip reading it.
/// `pre` is the file's stat key when the caller already has it (from `walk`); `cached` answers
/// with the trusted stat-cache entry for the file's key, if any.
pub(super) fn probe(
    root: &Path,
    rel: &str,
    inline: bool,
    cached: &dyn Fn(&StatKey) -> Option<CacheEntry>,
    head_value: Option<&Value>,
    pre: Option<StatKey>,
) -> Result<Option<Probe>> {
    // The absolute path is joined only when the file has to be touched: on 100k clean files
    // with a walk-provided key and a cache hit, it never is.
    let key = match pre {
        Some(k) => k,
        None => match fs::symlink_metadata(root.join(rel)) {
            Ok(m) if m.is_file() => StatKey::of(&m),
            Ok(_) => return Ok(None),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(Error::io("stat", root.join(rel), e)),
        },
    };
    if let Some(hit) = cached(&key) {
        if !inline {
            return Ok(Some(Probe {
                key: Some(key),
                sha: hit.sha,
                value: None,
                value_sha: hit.value_sha,
                cached: true,
            }));
        }
        if let (Some(vs), Some(hv)) = (hit.value_sha, head_value) {
            if vs == ObjectId::hash_bytes(&json::to_canonical(hv)) {
                return Ok(Some(Probe {
                    key: Some(key),
                    sha: hit.sha,
                    value: Some(Ok(hv.clone())),
                    value_sha: Some(vs),
                    cached: true,
                }));
            }
        }
    }
    let abs = &root.join(rel);
    let mut file = match File::open(abs) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", abs, e)),
    };
    let (sha, value) = if inline {
        let mut bytes = Vec::with_capacity(key.size as usize);
        file.read_to_end(&mut bytes).ctx("read", abs)?;
        (ObjectId::hash_bytes(&bytes), Some(json::parse(&bytes)))
    } else {
        let (sha, _) = ObjectId::hash_reader(&mut file).ctx("read", abs)?;
        (sha, None)
    };
    let value_sha = match &value {
        Some(Ok(v)) => Some(ObjectId::hash_bytes(&json::to_canonical(v))),
        _ => None,
    };
    // A file that changed while it was read is not cached (its key may not match its bytes).
    let stable = fs::symlink_metadata(abs).is_ok_and(|m| StatKey::of(&m) == key);
    Ok(Some(Probe {
        key: stable.then_some(key),
        sha,
        value,
        value_sha,
        cached: false,
    }))
}

/// Does `path` go in as an object (true) or inline (false)? See the module docs.
pub(super) fn stored_as_object(path: &str, head: Option<&Entry>, staged: Option<&Staged>) -> bool {
    if !is_inline_path(path) {
        return true;
    }
    match (staged, head) {
        (Some(s), _) => s.force_object,
        (None, Some(Entry::Object(_))) => true,
        _ => false,
    }
}

/// The entry a probed file becomes.
pub(super) fn entry_of(path: &str, as_object: bool, p: &Probe) -> Result<Entry> {
    if as_object {
        return Ok(Entry::Object(p.sha));
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

/// The working view and how it differs from the head.
#[derive(Debug)]
pub struct Scan {
    pub head: State,
    pub staged: StagedMap,
    /// New entries of added and changed paths.
    pub updates: BTreeMap<String, Entry>,
    /// Staged, present, not in the head (`A`).
    pub added: Vec<String>,
    /// In the head, gone from disk (`D`).
    pub deleted: Vec<String>,
    /// In the head, present, different (`C`).
    pub changed: Vec<String>,
    /// Files neither tracked nor staged, in walk order (only from `scan_all`); a name that is
    /// not UTF-8 appears lossily converted (it cannot be added).
    pub untracked: Vec<String>,
}

impl Scan {
    /// What a commit would record now: the head with the updates and deletions applied.
    /// (Built on demand: `status` never needs it, and cloning a big head is not free.)
    pub fn state(&self) -> Result<State> {
        let mut state = self.head.clone();
        for p in &self.deleted {
            state.remove(p);
        }
        for (p, e) in &self.updates {
            state.insert(p, e.clone())?;
        }
        Ok(state)
    }

    /// True when the work tree holds no change to commit.
    pub fn is_clean(&self) -> bool {
        self.updates.is_empty() && self.deleted.is_empty()
    }
}

/// Turn a walk made with the stat cache's paths as the tracked set into one made with the real
/// set, `paths` (`positions[i]` = the cache index of `paths[i]`; the cache holds `cached`
/// paths): indices are mapped, and files the walk saw as untracked but that are tracked are
/// dropped from the untracked list (they are stat'ed apart, as files the walk did not report).
/// `None` when a file the cache knew is present but no longer tracked: it must appear among
/// the untracked files in walk order, which only a new walk gives.
pub(super) fn reconcile(
    mut w: walk::Walk,
    paths: &[(&String, Option<&Entry>)],
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
        .map(|((p, _), _)| p.as_str())
        .collect();
    if !unknown.is_empty() {
        w.found
            .retain(|f| !matches!(f, walk::Walked::Other(p) if unknown.contains(p.as_str())));
    }
    Some(w)
}

impl WorkTree<'_> {
    /// Compute the working view (tracked and staged files only). Fails with `InvalidJson` when
    /// an inline file does not parse.
    pub fn scan(&mut self) -> Result<Scan> {
        // The walk is also the cheapest way to stat every tracked file (fstatat per directory
        // beats one full path lookup per file), so it is used even when `?` is not wanted.
        let mut scan = self.scan_inner()?;
        scan.untracked = Vec::new();
        Ok(scan)
    }

    /// `scan` plus the untracked files, in one walk of the tree (what `status` needs).
    pub fn scan_all(&mut self) -> Result<Scan> {
        self.scan_inner()
    }

    fn scan_inner(&mut self) -> Result<Scan> {
        let repo = self.repo;
        let root = repo.workdir();
        let cache: &StatCache = self.load_cache();
        let use_dirs = walk::dircache_supported(root);
        let dircache = walk::DirCache {
            old: cache.dirs(),
            stable_before_ns: walk::DirCache::cutoff_now(),
        };
        let dircache = use_dirs.then_some(&dircache);
        // The walk needs the tracked paths, and parsing the head that holds them is the longest
        // step before it. The stat cache's paths are almost always the same set (a scan leaves
        // exactly the tracked and staged files in it), so the walk starts from them while the
        // head parses, and is checked against the real set afterwards (see `reconcile`).
        let (head, staged, early) = if cache.is_empty() {
            (repo.head_state()?, load_staged(repo)?, None)
        } else {
            let predicted = walk::Tracked::new(cache.paths());
            let ((head, staged), walked) = rayon::join(
                || (repo.head_state(), load_staged(repo)),
                || walk::walk(root, root, &predicted, dircache),
            );
            (head?, staged?, Some(walked?))
        };
        // Head entries (sorted) then staged-only paths (sorted): the lists below come out sorted.
        let paths: Vec<(&String, Option<&Entry>)> = head
            .iter()
            .map(|(k, e)| (k, Some(e)))
            .chain(
                staged
                    .keys()
                    .filter(|k| !head.contains(k))
                    .map(|k| (k, None)),
            )
            .collect();
        let positions = cache.positions(paths.iter().map(|(p, _)| p.as_str()));
        // With a walk, tracked files get their stat key from it (fstatat, cheap); the others
        // (ignored by .pvrignore, or gone) are looked up one by one below. Directories that did
        // not change since the last walk are not read again (`walk`'s directory cache).
        let walked = match early.and_then(|w| reconcile(w, &paths, &positions, cache.len())) {
            Some(w) => w,
            None => {
                let tracked = walk::Tracked::new(paths.iter().map(|(p, _)| p.as_str()));
                walk::walk(root, root, &tracked, dircache)?
            }
        };
        let mut untracked = Vec::new();
        let mut keys: Vec<Option<StatKey>> = vec![None; paths.len()];
        for w in walked.found {
            match w {
                walk::Walked::Known(i, k) => keys[i] = Some(k),
                walk::Walked::Other(p) => untracked.push(p),
                walk::Walked::NotUtf8(p) => untracked.push(p.to_string_lossy().into_owned()),
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
        let probes: Vec<(&String, Option<&Entry>, bool, Option<Probe>)> = paths
            .into_par_iter()
            .zip(keys)
            .zip(positions)
            .map(|(((path, h), pre), pos)| {
                let s = if staged.is_empty() {
                    None
                } else {
                    staged.get(path)
                };
                let as_object = stored_as_object(path, h, s);
                let head_value = match h {
                    Some(Entry::Inline(v)) => Some(v),
                    _ => None,
                };
                let cached = |k: &StatKey| pos.and_then(|i| cache_ref.trusted(i, k));
                let p = probe(repo.workdir(), path, !as_object, &cached, head_value, pre)?;
                bar.inc();
                Ok((path, h, as_object, p))
            })
            .collect::<Result<_>>()?;
        bar.finish();
        let mut updates = BTreeMap::new();
        let (mut added, mut deleted, mut changed) = (Vec::new(), Vec::new(), Vec::new());
        let mut cache_dirty = false;
        let mut present = 0;
        for (path, in_head, as_object, p) in &probes {
            let Some(p) = p else {
                if in_head.is_some() {
                    deleted.push((*path).clone());
                }
                continue;
            };
            present += 1;
            cache_dirty |= !p.cached;
            let entry = entry_of(path, *as_object, p)?;
            match in_head {
                None => added.push((*path).clone()),
                Some(h) if **h != entry => changed.push((*path).clone()),
                Some(_) => continue,
            }
            updates.insert((*path).clone(), entry);
        }
        // Rewrite the cache only when it learned something (or lost entries).
        let mut save = dirs_changed;
        if cache_dirty || present != cache.len() {
            cache.replace(probes.iter().filter_map(|(path, _, _, p)| {
                p.as_ref()
                    .and_then(Probe::cache_entry)
                    .map(|c| (path.as_str(), c))
            }));
            save = true;
        }
        if save {
            cache.save_now();
        }

        Ok(Scan {
            head,
            staged,
            updates,
            added,
            deleted,
            changed,
            untracked,
        })
    }
}

//! The work tree against the repository: add, status, diff, commit and checkout as plain
//! library functions (the CLI in `cmd::repo` only formats their results).
//!
//! # Model
//!
//! Three inputs make the *working view*, the state a commit would record right now:
//! - the head state (`.pvr/json`);
//! - the staged files (`.pvr/new`, written by `add`: `{"path":{"ForceObject":b,"Sha":id}}`);
//! - the files on disk, for every path that is tracked (in the head) or staged.
//!
//! Untracked files never enter the working view (pvr semantics); `status` lists them as `?`.
//! How a file becomes an entry (pvr's inline rule, DESIGN §1):
//! - a path not ending in `.json` → `Object(sha256 of the bytes)`;
//! - a `.json` path is stored *as an object* when staged with `ForceObject` (`add --raw`), or when
//!   it is not staged and the head already holds it as an object (a raw json stays raw);
//!   otherwise it is *inline*: the parsed value (`json::parse`, Go's decoder). A parse error is
//!   `Error::InvalidJson` naming the path. So whitespace or key-order edits of an inline file
//!   are not changes, while any byte change of a raw one is.
//! - Deliberate difference from pvr (quirk 5): an inline file whose value is a 64-hex string
//!   would read back as an object id, so pvrfs stores such a file as an object instead.
//!
//! # Speed
//!
//! One parallel walk (`walk`) lists untracked files and `fstatat`s the tracked ones; files are
//! then probed in parallel (rayon). The stat cache (`statcache`) remembers each tracked file's
//! `lstat` key and hashes, so an unchanged file costs one `fstatat` and no read; an unchanged
//! inline `.json` is not even parsed (its cached value hash matches the head's value). It also
//! keeps the walk's directory records, so a directory whose stat key and ignore rules did not
//! change is not read again (git's untracked cache; rules and racy cases in `walk`). The walk
//! runs while the head parses, from the stat cache's paths, and is reconciled with the real
//! tracked set afterwards (`reconcile`: redone in the rare case they disagree in a way that
//! matters). The working state is only built when a command needs it (`Scan::state`).
//!
//! # Writes
//!
//! `commit` stores the objects of changed entries, then `Repo::commit_state` publishes the
//! revision (crash-safe, see `repo`), then `.pvr/new` is removed. `checkout` writes each file to a
//! temp file under `.pvr/pvrfs/tmp/` (verifying object hashes while copying) and renames it into
//! place, so a file is either old or new; the head is not moved by a checkout.

pub mod statcache;
pub mod walk;

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::json::{self, SyntaxError, Value};
use crate::oid::ObjectId;
use crate::progress::Progress;
use crate::repo::{Repo, RepoLock};
use crate::state::{is_inline_path, Entry, State};
use rayon::prelude::*;
use statcache::HashMap;
use statcache::{CacheEntry, StatCache, StatKey};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// One line of `.pvr/new`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staged {
    pub force_object: bool,
    pub sha: ObjectId,
}

pub type StagedMap = BTreeMap<String, Staged>;

/// Read `.pvr/new` (absent = nothing staged).
pub fn load_staged(repo: &Repo) -> Result<StagedMap> {
    let path = repo.new_path();
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StagedMap::new()),
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    let origin = path.display().to_string();
    let corrupt = |detail: String| Error::CorruptState {
        origin: origin.clone(),
        detail,
    };
    let Value::Object(map) = json::parse(&bytes).map_err(|e| corrupt(e.to_string()))? else {
        return Err(corrupt("not a JSON object".into()));
    };
    let mut staged = StagedMap::new();
    for (key, v) in map {
        let force_object = v
            .get("ForceObject")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let sha = v
            .get("Sha")
            .and_then(Value::as_str)
            .and_then(|s| ObjectId::from_hex(s).ok())
            .ok_or_else(|| corrupt(format!("entry '{key}' has no valid Sha")))?;
        crate::state::validate_path(&key).map_err(|reason| Error::BadEntry {
            origin: origin.clone(),
            key: key.clone(),
            reason: reason.into(),
        })?;
        staged.insert(key, Staged { force_object, sha });
    }
    Ok(staged)
}

/// Write `.pvr/new` canonically, as pvr does; an empty map removes the file.
pub fn save_staged(repo: &Repo, staged: &StagedMap) -> Result<()> {
    let path = repo.new_path();
    if staged.is_empty() {
        return match fs::remove_file(&path) {
            Ok(()) => fsutil::sync_dir(repo.pvr_dir()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &path, e)),
        };
    }
    let mut map = serde_json::Map::new();
    for (k, s) in staged {
        let mut e = serde_json::Map::new();
        e.insert("ForceObject".into(), Value::Bool(s.force_object));
        e.insert("Sha".into(), Value::String(s.sha.to_hex()));
        map.insert(k.clone(), Value::Object(e));
    }
    fsutil::atomic_write(&path, &json::to_canonical(&Value::Object(map)), 0o644)
}

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
    fn cache_entry(&self) -> Option<CacheEntry> {
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
fn probe(
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
fn stored_as_object(path: &str, head: Option<&Entry>, staged: Option<&Staged>) -> bool {
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
fn entry_of(path: &str, as_object: bool, p: &Probe) -> Result<Entry> {
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
fn reconcile(
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
    let unknown: statcache::HashSet<&str> = paths
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

/// A repository's work tree with its stat cache (loaded on first use: `scan` loads it while
/// parsing the head).
pub struct WorkTree<'r> {
    pub repo: &'r Repo,
    cache: Option<StatCache>,
    /// Show a progress bar on stderr for long operations (`crate::progress`).
    progress: bool,
}

impl<'r> WorkTree<'r> {
    pub fn open(repo: &'r Repo) -> WorkTree<'r> {
        WorkTree {
            repo,
            cache: None,
            progress: false,
        }
    }

    /// Show progress of long operations (hashing, storing, checkout) on stderr; the caller
    /// decides (a terminal, not `--quiet`).
    pub fn with_progress(mut self, on: bool) -> WorkTree<'r> {
        self.progress = on;
        self
    }

    fn cache_path(&self) -> PathBuf {
        self.repo.ext_dir().join("statcache")
    }

    fn load_cache(&mut self) -> &mut StatCache {
        let path = self.cache_path();
        self.cache.get_or_insert_with(|| StatCache::load(&path))
    }

    fn abs(&self, rel: &str) -> PathBuf {
        self.repo.workdir().join(rel)
    }

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
            let dirs: HashMap<String, walk::DirRecord> = walked
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

    /// Stage files (`add`). `paths` are as the user typed them, relative to `cwd`; empty means
    /// the whole tree. A directory or the whole tree stages the files not yet tracked; a file
    /// named explicitly (or matched by a glob) is staged even when tracked. Objects are stored
    /// right away. Returns the staged paths.
    pub fn add(
        &mut self,
        _lock: &RepoLock,
        cwd: &Path,
        paths: &[String],
        raw: bool,
    ) -> Result<Vec<String>> {
        let root = self.repo.workdir().to_path_buf();
        let head = self.repo.head_state()?;
        let mut picked: BTreeSet<String> = BTreeSet::new();
        let untracked_under = |start: &Path, picked: &mut BTreeSet<String>| -> Result<()> {
            for f in walk_files(&root, start)? {
                if !head.contains(&f) {
                    picked.insert(f);
                }
            }
            Ok(())
        };
        if paths.is_empty() {
            untracked_under(&root, &mut picked)?;
        }
        let mut all_files: Option<Vec<String>> = None;
        for arg in paths {
            if arg.contains(['*', '?', '[', '{']) {
                let pattern = repo_relative_pattern(&root, cwd, arg)?;
                let glob = globset::Glob::new(&pattern)
                    .map_err(|e| Error::Usage(format!("bad glob '{arg}': {e}")))?
                    .compile_matcher();
                let files = match &all_files {
                    Some(f) => f,
                    None => all_files.insert(walk_files(&root, &root)?),
                };
                let before = picked.len();
                picked.extend(files.iter().filter(|f| glob.is_match(f)).cloned());
                if picked.len() == before && !files.iter().any(|f| glob.is_match(f)) {
                    return Err(Error::Usage(format!("'{arg}' did not match any files")));
                }
                continue;
            }
            let abs = cwd.join(arg);
            let meta = fs::symlink_metadata(&abs)
                .map_err(|_| Error::Usage(format!("'{arg}' did not match any files")))?;
            let canon = fs::canonicalize(&abs).ctx("resolve", &abs)?;
            let rel = canon.strip_prefix(&root).map_err(|_| {
                Error::Usage(format!(
                    "'{arg}' is outside the repository {}",
                    root.display()
                ))
            })?;
            let rel = rel
                .to_str()
                .ok_or_else(|| Error::Usage(format!("'{arg}' has a name that is not UTF-8")))?;
            if rel.split('/').next() == Some(crate::repo::PVR_DIR) {
                return Err(Error::Usage(format!(
                    "'{arg}' is inside .pvr, which is not part of the tree"
                )));
            }
            if meta.is_dir() {
                untracked_under(&canon, &mut picked)?;
            } else if meta.is_file() {
                picked.insert(rel.to_string());
            } else {
                return Err(Error::Usage(format!(
                    "'{arg}' is not a regular file or directory (pvr states hold regular files only)"
                )));
            }
        }
        let mut staged = load_staged(self.repo)?;
        let store = self.repo.store();
        self.load_cache();
        let cache = self.cache.as_ref().expect("loaded");
        let bar = Progress::new(self.progress, picked.len(), "adding");
        let results: Vec<(String, Probe)> = picked
            .into_par_iter()
            .inspect(|_| bar.inc())
            .map(|path| {
                let abs = root.join(&path);
                let vanished = || Error::Other(format!("'{path}' vanished while adding it"));
                if !raw && is_inline_path(&path) {
                    // inline: only its hash is staged; the value is read at commit
                    let p = probe(&root, &path, false, &|k| cache.lookup(&path, k), None, None)?
                        .ok_or_else(vanished)?;
                    return Ok((path, p));
                }
                let meta = fs::symlink_metadata(&abs).map_err(|_| vanished())?;
                let key = StatKey::of(&meta);
                if let Some(hit) = cache.lookup(&path, &key) {
                    if store.contains(&hit.sha) {
                        let p = Probe {
                            key: Some(key),
                            sha: hit.sha,
                            value: None,
                            value_sha: hit.value_sha,
                            cached: true,
                        };
                        return Ok((path, p));
                    }
                }
                // Hash while copying into the store: one read per file.
                let (sha, _) = store.put_file(&abs)?;
                let stable = fs::symlink_metadata(&abs).is_ok_and(|m| StatKey::of(&m) == key);
                let p = Probe {
                    key: stable.then_some(key),
                    sha,
                    value: None,
                    value_sha: None,
                    cached: false,
                };
                Ok((path, p))
            })
            .collect::<Result<_>>()?;
        bar.finish();
        store.sync()?;
        let mut added = Vec::with_capacity(results.len());
        let mut cache_updates = Vec::new();
        for (path, p) in results {
            staged.insert(
                path.clone(),
                Staged {
                    force_object: raw,
                    sha: p.sha,
                },
            );
            if let Some(c) = p.cache_entry() {
                cache_updates.push((path.clone(), c));
            }
            added.push(path);
        }
        save_staged(self.repo, &staged)?;
        self.load_cache().update_and_save(cache_updates);
        Ok(added)
    }

    /// Record the working view as a new revision. `log` receives pvr's per-file lines.
    pub fn commit(
        &mut self,
        lock: &RepoLock,
        message: &str,
        log: &mut dyn Write,
    ) -> Result<crate::repo::Revision> {
        let scan = self.scan()?;
        let store = self.repo.store();
        // Store the objects of new and changed entries (unchanged ones are already stored).
        let to_store: Vec<(&String, ObjectId)> = scan
            .updates
            .iter()
            .filter_map(|(p, e)| e.object_id().map(|id| (p, id)))
            .collect();
        let bar = Progress::new(self.progress, to_store.len(), "storing");
        to_store.par_iter().try_for_each(|(p, id)| {
            bar.inc();
            store.put_file_expecting(&self.abs(p), id).map(|_| ())
        })?;
        bar.finish();
        let state = scan.state()?;
        let rev = self
            .repo
            .commit_state_on(lock, Some(&scan.head), &state, message, None)?;
        fsutil::crash_point("commit:before-clearing-new");
        save_staged(self.repo, &StagedMap::new())?;
        self.set_tree_base(&state)?;
        let _ = write_commit_log(&scan, self.repo.workdir(), log);
        Ok(rev)
    }

    /// The state the work tree was last made equal to (by commit or checkout), if known.
    /// `checkout` treats its files as tracked too, so that after `checkout REV` or `apply`
    /// (which move the tree and the head apart) the next checkout still cleans up after it.
    fn tree_base(&self) -> Option<State> {
        let text = fs::read_to_string(self.repo.ext_dir().join("tree-base")).ok()?;
        let id = ObjectId::from_hex(text.trim()).ok()?;
        let bytes = self.repo.store().read_verified(&id, None).ok()?;
        State::from_json_bytes(&bytes, "the last checked-out state").ok()
    }

    fn set_tree_base(&self, state: &State) -> Result<()> {
        let id = self.repo.store().put_bytes(&state.to_canonical_bytes())?;
        let dir = self.repo.ext_dir();
        fs::create_dir_all(&dir).ctx("create", &dir)?;
        fsutil::atomic_write(&dir.join("tree-base"), id.to_hex().as_bytes(), 0o644)
    }

    /// Make the work tree equal to `target` (see `CheckoutOptions`). The head is not moved.
    pub fn checkout(
        &mut self,
        _lock: &RepoLock,
        target: &State,
        opts: &CheckoutOptions,
    ) -> Result<CheckoutReport> {
        let repo = self.repo;
        let head = repo.head_state()?;
        let base = self.tree_base().unwrap_or_default();
        let staged = load_staged(repo)?;
        // Usually these are (nearly) the same 100k keys: a linear merge, not a set of 400k.
        let mut paths: Vec<&String> = head.entries_map().keys().collect();
        for keys in [
            base.entries_map().keys().collect::<Vec<_>>(),
            target.entries_map().keys().collect(),
            staged.keys().collect(),
        ] {
            paths = merge_sorted(&paths, &keys);
        }
        self.load_cache();
        let cache = self.cache.as_ref().expect("loaded");
        // What is on disk now, and whether it holds work that neither the head nor the last
        // checked-out state has (only such work is protected).
        let current: Vec<(&String, Option<Probe>, bool)> = paths
            .into_par_iter()
            .map(|path| {
                let known = head.get(path).or(base.get(path));
                let as_object = stored_as_object(path, known, None);
                let hv = match known {
                    Some(Entry::Inline(v)) => Some(v),
                    _ => None,
                };
                let p = probe(
                    self.repo.workdir(),
                    path,
                    !as_object,
                    &|k| cache.lookup(path, k),
                    hv,
                    None,
                )?;
                let unsaved = match &p {
                    None => false,
                    Some(p) => entry_of(path, as_object, p).map_or(true, |e| {
                        head.get(path) != Some(&e) && base.get(path) != Some(&e)
                    }),
                };
                Ok((path, p, unsaved))
            })
            .collect::<Result<_>>()?;
        let mut writes: Vec<(String, Planned)> = Vec::new();
        let mut removes: Vec<String> = Vec::new();
        let mut conflicts: Vec<String> = Vec::new();
        let mut skipped: Vec<(String, CacheEntry)> = Vec::new();
        for (path, p, unsaved) in current {
            match target.get(path) {
                Some(entry) => {
                    let plan = Planned::new(entry, opts.canonical);
                    match &p {
                        Some(p) if p.sha == plan.sha => {
                            if let Some(key) = p.key {
                                skipped.push((path.clone(), plan.cache_entry(key)));
                            }
                        }
                        _ if unsaved && !opts.force => conflicts.push(path.clone()),
                        _ => writes.push((path.clone(), plan)),
                    }
                }
                None if (head.contains(path) || base.contains(path)) && p.is_some() => {
                    if unsaved && !opts.force {
                        conflicts.push(path.clone());
                    } else {
                        removes.push(path.clone());
                    }
                }
                None => {}
            }
        }
        if !conflicts.is_empty() {
            let shown: Vec<&str> = conflicts.iter().take(10).map(String::as_str).collect();
            return Err(Error::WouldLoseChanges(format!(
                "checkout would overwrite uncommitted changes in {} file(s): {}{}; commit them, or use --force to discard them",
                conflicts.len(),
                shown.join(", "),
                if conflicts.len() > 10 { ", ..." } else { "" }
            )));
        }
        // Every object must be there before anything is touched.
        for (path, plan) in &writes {
            if let Some(id) = plan.object {
                if !repo.store().contains(&id) {
                    return Err(repo.store().missing(&id, Some(path)));
                }
            }
        }
        let tmp_dir = repo.ext_dir().join("tmp");
        fs::create_dir_all(&tmp_dir).ctx("create", &tmp_dir)?;
        fsutil::clean_temp_files(&tmp_dir, std::time::Duration::ZERO);
        for path in &removes {
            let abs = self.abs(path);
            match fs::remove_file(&abs) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", &abs, e)),
            }
            fsutil::crash_point("checkout:removed");
            remove_empty_parents(repo.workdir(), &abs);
        }
        let dirs: BTreeSet<PathBuf> = writes
            .iter()
            .filter_map(|(p, _)| self.abs(p).parent().map(Path::to_path_buf))
            .collect();
        for d in &dirs {
            fs::create_dir_all(d).ctx("create directory", d)?;
        }
        let bar = Progress::new(self.progress, writes.len(), "checkout");
        let written: Vec<(String, CacheEntry)> = writes
            .par_iter()
            .map(|(path, plan)| {
                let dest = self.abs(path);
                let key = write_file(repo, &tmp_dir, &dest, path, plan, opts.hardlink)?;
                fsutil::crash_point("checkout:file-written");
                bar.inc();
                Ok((path.clone(), plan.cache_entry(key)))
            })
            .collect::<Result<_>>()?;
        bar.finish();
        // Work-tree files are not fsynced (git does not either): after a power cut a file may
        // come back empty, which the next checkout sees as an unsaved change and refuses to
        // overwrite without --force, so nothing is lost silently.
        self.set_tree_base(target)?;
        let report = CheckoutReport {
            written: written.len(),
            removed: removes.len(),
            unchanged: skipped.len(),
        };
        self.load_cache()
            .update_and_save(written.into_iter().chain(skipped));
        Ok(report)
    }
}

fn write_commit_log(scan: &Scan, workdir: &Path, log: &mut dyn Write) -> std::io::Result<()> {
    let repo = workdir.display();
    let kind = |p: &str| match scan.updates.get(p) {
        Some(Entry::Inline(_)) => "inline",
        _ => "raw",
    };
    let mut committing: Vec<String> = scan
        .changed
        .iter()
        .filter(|p| !scan.staged.contains_key(*p))
        .map(|p| format!("Committing ({}): {repo}/{p}", kind(p)))
        .collect();
    let mut adding: Vec<String> = scan
        .added
        .iter()
        .chain(scan.changed.iter().filter(|p| scan.staged.contains_key(*p)))
        .map(|p| match scan.updates.get(p) {
            Some(Entry::Object(id)) => format!("Adding raw {repo}/{p} with {id}"),
            _ => format!("Adding inline {p}"),
        })
        .collect();
    committing.sort();
    adding.sort();
    for line in committing.iter().chain(&adding).chain(
        &scan
            .deleted
            .iter()
            .map(|p| format!("Removing {p}"))
            .collect::<Vec<_>>(),
    ) {
        writeln!(log, "{line}")?;
    }
    Ok(())
}

/// The sorted union of two sorted, duplicate-free lists.
fn merge_sorted<'a>(a: &[&'a String], b: &[&'a String]) -> Vec<&'a String> {
    if b.is_empty() {
        return a.to_vec();
    }
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// `pattern` typed in `cwd`, as a glob over repo-relative paths.
fn repo_relative_pattern(root: &Path, cwd: &Path, pattern: &str) -> Result<String> {
    let cwd = fs::canonicalize(cwd).ctx("resolve", cwd)?;
    let prefix = cwd.strip_prefix(root).map_err(|_| {
        Error::Usage(format!(
            "the current directory is outside the repository {}",
            root.display()
        ))
    })?;
    let prefix = prefix.to_str().unwrap_or_default();
    let pattern = pattern.trim_start_matches("./");
    Ok(if prefix.is_empty() {
        pattern.to_string()
    } else {
        format!("{prefix}/{pattern}")
    })
}

/// Remove now-empty directories from `file`'s parent up to (not including) `root`.
fn remove_empty_parents(root: &Path, file: &Path) {
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

/// How `checkout` writes inline JSON and whether it copies or links objects.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckoutOptions {
    /// Canonical JSON instead of pvr's default 4-space rendering.
    pub canonical: bool,
    /// Hard-link objects instead of copying them.
    pub hardlink: bool,
    /// Overwrite or remove files with uncommitted changes.
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckoutReport {
    pub written: usize,
    pub removed: usize,
    pub unchanged: usize,
}

/// The bytes one file should have after checkout.
struct Planned {
    object: Option<ObjectId>,
    inline: Option<(Vec<u8>, ObjectId)>,
    sha: ObjectId,
}

impl Planned {
    fn new(entry: &Entry, canonical: bool) -> Planned {
        match entry {
            Entry::Object(id) => Planned {
                object: Some(*id),
                inline: None,
                sha: *id,
            },
            Entry::Inline(v) => {
                let bytes = if canonical {
                    json::render_checkout_canonical(v)
                } else {
                    json::render_checkout(v)
                };
                let sha = ObjectId::hash_bytes(&bytes);
                let value_sha = ObjectId::hash_bytes(&json::to_canonical(v));
                Planned {
                    object: None,
                    inline: Some((bytes, value_sha)),
                    sha,
                }
            }
        }
    }

    fn cache_entry(&self, key: StatKey) -> CacheEntry {
        CacheEntry {
            key,
            sha: self.sha,
            value_sha: self.inline.as_ref().map(|(_, v)| *v),
        }
    }
}

/// Write one file via a temp file in `tmp_dir`; objects are hashed while copied and refused
/// when they do not match their id. Returns the new file's stat key.
fn write_file(
    repo: &Repo,
    tmp_dir: &Path,
    dest: &Path,
    path: &str,
    plan: &Planned,
    hardlink: bool,
) -> Result<StatKey> {
    let tmp = fsutil::temp_path_in(tmp_dir);
    let result = (|| {
        if let Some((bytes, _)) = &plan.inline {
            fs::write(&tmp, bytes).ctx("write", &tmp)?;
        } else if let Some(id) = plan.object {
            let store = repo.store();
            let mut src = store.open_required(&id, Some(path))?;
            let actual = if hardlink {
                let (actual, _) =
                    ObjectId::hash_reader(&mut src).ctx("read object", store.path_of(&id))?;
                if actual == id {
                    fs::hard_link(store.path_of(&id), &tmp).ctx("hard-link object to", &tmp)?;
                }
                actual
            } else {
                let mut out = File::create(&tmp).ctx("create", &tmp)?;
                let mut hasher = crate::oid::Hasher::new();
                let mut buf = vec![0u8; 128 * 1024];
                loop {
                    let n = src.read(&mut buf).ctx("read object", store.path_of(&id))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    out.write_all(&buf[..n]).ctx("write", &tmp)?;
                }
                hasher.finish().0
            };
            if actual != id {
                return Err(Error::CorruptObject {
                    id,
                    actual,
                    path: Some(path.to_string()),
                });
            }
        }
        let meta = fs::symlink_metadata(&tmp).ctx("stat", &tmp)?;
        fs::rename(&tmp, dest).ctx("rename into place", dest)?;
        Ok(StatKey::of(&meta))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Repo) {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        let repo = Repo::init(&root, None, None).unwrap();
        (dir, repo)
    }

    fn write(repo: &Repo, rel: &str, data: &str) {
        let p = repo.workdir().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    fn add_all(repo: &Repo, raw: bool, paths: &[&str]) -> Vec<String> {
        let lock = repo.lock().unwrap();
        let paths: Vec<String> = paths.iter().map(|s| s.to_string()).collect();
        WorkTree::open(repo)
            .add(&lock, repo.workdir(), &paths, raw)
            .unwrap()
    }

    fn commit(repo: &Repo) -> String {
        let lock = repo.lock().unwrap();
        let mut log = Vec::new();
        WorkTree::open(repo).commit(&lock, "m", &mut log).unwrap();
        String::from_utf8(log).unwrap()
    }

    #[test]
    fn add_stages_untracked_files_and_commit_records_them() {
        let (_d, repo) = setup();
        write(&repo, "a.txt", "a");
        write(&repo, "d/x.json", "{ \"k\" : 1 }");
        write(&repo, "ign/skip.txt", "s");
        write(&repo, ".pvrignore", "ign/\n");
        let added = add_all(&repo, false, &[]);
        assert_eq!(added, vec![".pvrignore", "a.txt", "d/x.json"]);
        let staged = load_staged(&repo).unwrap();
        assert!(!staged["d/x.json"].force_object);
        assert!(repo.store().contains(&staged["a.txt"].sha));
        let log = commit(&repo);
        assert!(log.contains("Adding inline d/x.json"), "{log}");
        let head = repo.head_state().unwrap();
        assert_eq!(
            head.get("d/x.json"),
            Some(&Entry::Inline(json::parse(b"{\"k\":1}").unwrap()))
        );
        assert!(!repo.new_path().exists());
        // reformatting an inline json is not a change; editing a value is
        write(&repo, "d/x.json", "{\n  \"k\": 1\n}\n");
        let scan = WorkTree::open(&repo).scan().unwrap();
        assert!(scan.changed.is_empty());
        write(&repo, "d/x.json", "{\"k\": 2}");
        let scan = WorkTree::open(&repo).scan().unwrap();
        assert_eq!(scan.changed, vec!["d/x.json"]);
    }

    #[test]
    fn status_is_right_when_the_tracked_set_moved_away_from_the_stat_cache() {
        // The walk starts from the stat cache's paths while the head parses (`reconcile`).
        let (_d, repo) = setup();
        for f in ["a.txt", "d/b.txt", "d/c.txt"] {
            write(&repo, f, f);
        }
        add_all(&repo, false, &[]);
        commit(&repo);
        let scan = WorkTree::open(&repo).scan_all().unwrap();
        assert!(scan.is_clean() && scan.untracked.is_empty(), "{scan:?}");
        // The head drops d/b.txt behind the work tree's back (as `apply` or pvr could): it is
        // still on disk and in the cache, and now untracked, in walk order.
        let lock = repo.lock().unwrap();
        let mut state = repo.head_state().unwrap();
        state.remove("d/b.txt");
        repo.commit_state(&lock, &state, "drop b", None).unwrap();
        drop(lock);
        write(&repo, "d/a-new.txt", "n");
        let scan = WorkTree::open(&repo).scan_all().unwrap();
        assert_eq!(scan.untracked, vec!["d/a-new.txt", "d/b.txt"]);
        assert!(scan.is_clean());
        // A staged path the cache never saw: reported as added, not as untracked.
        let mut staged = load_staged(&repo).unwrap();
        staged.insert(
            "d/a-new.txt".into(),
            Staged {
                force_object: false,
                sha: ObjectId::hash_bytes(b"n"),
            },
        );
        save_staged(&repo, &staged).unwrap();
        let scan = WorkTree::open(&repo).scan_all().unwrap();
        assert_eq!(scan.added, vec!["d/a-new.txt"]);
        assert_eq!(scan.untracked, vec!["d/b.txt"]);
    }

    #[test]
    fn stat_cache_avoids_rereading_and_notices_same_size_edits() {
        let (_d, repo) = setup();
        write(&repo, "f.bin", "aaaa");
        add_all(&repo, false, &[]);
        commit(&repo);
        std::thread::sleep(std::time::Duration::from_millis(20));
        // the first scan may find racy entries; after it the cache is trusted
        WorkTree::open(&repo).scan().unwrap();
        let wt = WorkTree::open(&repo);
        let meta = fs::symlink_metadata(repo.workdir().join("f.bin")).unwrap();
        let mut wt = wt;
        assert!(wt
            .load_cache()
            .lookup("f.bin", &StatKey::of(&meta))
            .is_some());
        // same size, new content: mtime/ctime move, so it is re-hashed
        write(&repo, "f.bin", "bbbb");
        let scan = WorkTree::open(&repo).scan().unwrap();
        assert_eq!(scan.changed, vec!["f.bin"]);
    }

    #[test]
    fn a_trusted_cache_entry_is_believed_without_reading_the_file() {
        let (_d, repo) = setup();
        write(&repo, "f.bin", "aaaa");
        write(&repo, "c.json", "{\"a\": 1}");
        add_all(&repo, false, &[]);
        commit(&repo);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut wt = WorkTree::open(&repo);
        // Lie in the cache: same stat key, other hashes. If scan re-read the files it would
        // see no change; trusting the cache, it reports both as changed.
        let lies: Vec<(String, CacheEntry)> = ["f.bin", "c.json"]
            .iter()
            .map(|p| {
                let meta = fs::symlink_metadata(repo.workdir().join(p)).unwrap();
                let bogus = ObjectId::hash_bytes(b"bogus");
                let value_sha = p.ends_with(".json").then_some(bogus);
                (
                    p.to_string(),
                    CacheEntry {
                        key: StatKey::of(&meta),
                        sha: bogus,
                        value_sha,
                    },
                )
            })
            .collect();
        wt.load_cache().update_and_save(lies);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let scan = WorkTree::open(&repo).scan().unwrap();
        // f.bin: believed; c.json: the value hash does not match the head, so it is parsed
        assert_eq!(scan.changed, vec!["f.bin"]);
    }

    #[test]
    fn invalid_json_is_reported_with_its_path() {
        let (_d, repo) = setup();
        write(&repo, "bad.json", "{bad");
        add_all(&repo, false, &[]);
        let err = WorkTree::open(&repo).scan().unwrap_err();
        assert_eq!(
            err.to_string(),
            "JSON Unmarshal (bad.json): invalid character 'b' looking for beginning of object key string"
        );
        // --raw stores it as an object instead
        add_all(&repo, true, &["bad.json"]);
        commit(&repo);
        assert!(matches!(
            repo.head_state().unwrap().get("bad.json"),
            Some(Entry::Object(_))
        ));
    }

    #[test]
    fn hex_string_json_is_stored_as_an_object() {
        let (_d, repo) = setup();
        let hex = "\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"";
        write(&repo, "sha.json", hex);
        add_all(&repo, false, &[]);
        commit(&repo);
        let id = ObjectId::hash_bytes(hex.as_bytes());
        assert_eq!(
            repo.head_state().unwrap().get("sha.json"),
            Some(&Entry::Object(id))
        );
        assert!(repo.store().contains(&id));
        assert!(WorkTree::open(&repo).scan().unwrap().changed.is_empty());
    }

    #[test]
    fn checkout_writes_removes_and_protects_changes() {
        let (_d, repo) = setup();
        write(&repo, "a/b.txt", "one");
        write(&repo, "c.json", "[1, 2.50]");
        add_all(&repo, false, &[]);
        commit(&repo);
        let first = repo.head_state().unwrap();
        fs::remove_file(repo.workdir().join("a/b.txt")).unwrap();
        write(&repo, "new.txt", "n");
        add_all(&repo, false, &[]);
        commit(&repo);
        let lock = repo.lock().unwrap();
        let mut wt = WorkTree::open(&repo);
        // back to the first state: new.txt goes, a/b.txt comes back
        let r = wt
            .checkout(&lock, &first, &CheckoutOptions::default())
            .unwrap();
        // c.json is rewritten in pvr's rendering (same value, other bytes)
        assert_eq!((r.written, r.removed), (2, 1));
        assert_eq!(
            fs::read_to_string(repo.workdir().join("a/b.txt")).unwrap(),
            "one"
        );
        assert!(!repo.workdir().join("new.txt").exists());
        let head = repo.head_state().unwrap();
        write(&repo, "c.json", "[7]");
        let err = wt
            .checkout(&lock, &head, &CheckoutOptions::default())
            .unwrap_err();
        assert!(matches!(err, Error::WouldLoseChanges(_)), "{err}");
        assert_eq!(
            fs::read_to_string(repo.workdir().join("c.json")).unwrap(),
            "[7]"
        );
        let opts = CheckoutOptions {
            force: true,
            canonical: true,
            ..Default::default()
        };
        wt.checkout(&lock, &head, &opts).unwrap();
        assert_eq!(
            fs::read_to_string(repo.workdir().join("c.json")).unwrap(),
            "[1,2.5E0]"
        );
        assert!(repo.workdir().join("new.txt").exists());
        // a/b.txt came from the last checkout, so it is tracked and goes
        assert!(!repo.workdir().join("a").exists());
    }

    #[test]
    fn checkout_refuses_corrupt_objects() {
        let (_d, repo) = setup();
        write(&repo, "f", "data");
        add_all(&repo, false, &[]);
        commit(&repo);
        let id = ObjectId::hash_bytes(b"data");
        let obj = repo.store().path_of(&id);
        fs::write(&obj, "evil").unwrap();
        fs::remove_file(repo.workdir().join("f")).unwrap();
        let lock = repo.lock().unwrap();
        let head = repo.head_state().unwrap();
        for hardlink in [false, true] {
            let opts = CheckoutOptions {
                hardlink,
                ..Default::default()
            };
            let err = WorkTree::open(&repo)
                .checkout(&lock, &head, &opts)
                .unwrap_err();
            assert!(matches!(err, Error::CorruptObject { .. }), "{err}");
            assert!(!repo.workdir().join("f").exists());
        }
    }

    #[test]
    fn merge_sorted_is_a_sorted_union() {
        let owned: Vec<String> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let r = |idx: &[usize]| idx.iter().map(|&i| &owned[i]).collect::<Vec<_>>();
        assert_eq!(
            merge_sorted(&r(&[0, 2, 4]), &r(&[1, 2, 3])),
            r(&[0, 1, 2, 3, 4])
        );
        assert_eq!(merge_sorted(&r(&[]), &r(&[1])), r(&[1]));
        assert_eq!(merge_sorted(&r(&[3]), &r(&[])), r(&[3]));
    }

    #[test]
    fn walk_order_is_per_directory() {
        let mut v = vec!["a.txt", "a/b", "a b/c", "ab"];
        v.sort_by(|a, b| walk_order(a, b));
        assert_eq!(v, vec!["a/b", "a b/c", "a.txt", "ab"]);
    }
}

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
//! # Whole trees
//!
//! Beyond files, the view holds what the state's metadata documents record (`state::meta`):
//! - the permission bits of every file and directory of the view (a `chmod` is a change);
//! - symlinks: a tracked path (file or symlink) that is a symlink on disk is one, with its
//!   target; new symlinks are staged by `add` (in `.pvr/pvrfs/new-meta`, since pvr's
//!   `.pvr/new` holds file hashes only) and then tracked like files;
//! - empty directories: one the head records, one `add` staged, or a directory that held
//!   tracked content which is gone while the directory is still there (as a snapshot of the
//!   tree would have it). "Empty" means nothing but ignored entries in it.
//!
//! What a state cannot hold (sockets, FIFOs, devices, entries named `.pvrfs-meta.json`) is
//! listed by `status` and `add` (`Scan::unstorable`), never stored and never skipped silently.
//! Every path is resolved without following symlinks (`beneath`): a symlink where a directory
//! was makes what lay under it absent, and checkout never writes or deletes through one.
//!
//! # Speed
//!
//! One parallel walk (`walk`) lists untracked files and `fstatat`s the tracked ones; files are
//! then probed in parallel (rayon). The stat cache (`statcache`) remembers each tracked file's
//! `lstat` key and hashes, so an unchanged file costs one `fstatat` and no read; an unchanged
//! inline `.json` is not even parsed (its cached value hash matches the head's value), nor is
//! the head's value copied (`Probe::same_as_head`). It also keeps the walk's directory
//! records, so a directory whose stat key and ignore rules did not change is not read again
//! (git's untracked cache; rules and racy cases in `walk`). The walk runs while the head
//! parses, from the stat cache's paths, and is reconciled with the real tracked set afterwards
//! (`reconcile`: redone in the rare case they disagree in a way that matters). The working
//! state is only built when a command needs it (`Scan::state`). `status` needs no working
//! state, so it does not parse the head either while `.pvr/json` has not moved: it reads the
//! head index (`headindex`: per head file its object id or inline value hash, and the head's
//! metadata), and compares ids (`Was::Indexed`).
//!
//! # Writes
//!
//! `commit` stores the objects of changed entries, then `Repo::commit_state` publishes the
//! revision (crash-safe, see `repo`), then `.pvr/new` is removed. `checkout` writes each file to a
//! temp file under `.pvr/pvrfs/tmp/` (verifying object hashes while copying) and renames it into
//! place, so a file is either old or new; the head is not moved by a checkout.

mod add;
pub mod beneath;
mod checkout;
pub mod headindex;
mod scan;
pub mod stat;
pub mod statcache;
#[cfg(test)]
mod tests;
pub mod walk;

pub use checkout::{CheckoutOptions, CheckoutReport};
pub use scan::{walk_entries, walk_order, Found, HeadView, Probe, Scan, Status};

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::json::{self, SyntaxError, Value};
use crate::oid::ObjectId;
use crate::progress::Progress;
use crate::repo::{Repo, RepoLock};
use crate::state::{is_inline_path, Entry, State};
use rayon::prelude::*;
use stat::HashMap;
use stat::StatKey;
use statcache::{CacheEntry, StatCache};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
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

/// Where `add` stages symlinks and empty directories (paths; what they are is read at commit).
fn staged_meta_path(repo: &Repo) -> PathBuf {
    repo.ext_dir().join("new-meta")
}

/// The symlinks and empty directories staged by `add` (absent file = none): a canonical JSON
/// array of paths.
pub fn load_staged_meta(repo: &Repo) -> Result<BTreeSet<String>> {
    let path = staged_meta_path(repo);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    let origin = path.display().to_string();
    let corrupt = |detail: String| Error::CorruptState {
        origin: origin.clone(),
        detail,
    };
    let Value::Array(items) = json::parse(&bytes).map_err(|e| corrupt(e.to_string()))? else {
        return Err(corrupt("not a JSON array of paths".into()));
    };
    let mut out = BTreeSet::new();
    for item in items {
        let Value::String(key) = item else {
            return Err(corrupt("not a JSON array of paths".into()));
        };
        crate::state::validate_path(&key).map_err(|reason| Error::BadEntry {
            origin: origin.clone(),
            key: key.clone(),
            reason: reason.into(),
        })?;
        out.insert(key);
    }
    Ok(out)
}

/// Write the staged symlinks and empty directories; an empty set removes the file.
pub fn save_staged_meta(repo: &Repo, staged: &BTreeSet<String>) -> Result<()> {
    let path = staged_meta_path(repo);
    if staged.is_empty() {
        return match fs::remove_file(&path) {
            Ok(()) => fsutil::sync_dir(&repo.ext_dir()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &path, e)),
        };
    }
    fs::create_dir_all(repo.ext_dir()).ctx("create", repo.ext_dir())?;
    let list = Value::Array(staged.iter().map(|p| Value::String(p.clone())).collect());
    fsutil::atomic_write(&path, &json::to_canonical(&list), 0o644)
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
}

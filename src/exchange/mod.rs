//! Exchange: moving a state and its objects between a repository and plain directories,
//! tarballs and dumb HTTP servers (get, merge, clone, push, export, import).
//!
//! # Layouts (pvr's; see docs/EXCHANGE.md)
//!
//! ```text
//! SRC/                       plain directory or http(s)://host/path/
//! ├── json                   the state, canonical JSON
//! └── objects/<64 hex>       one file per object, named by its sha256
//!
//! FILE.tar[.gz|.tgz]         tarball: member `json` first, then `objects/<64 hex>`
//! ```
//!
//! # Invariants
//! - Everything received is untrusted: the `json` is validated as a state (`State`) before any
//!   object moves, and every object is hashed while it is written and only renamed into the store
//!   when its bytes hash to its name (`Store::put_reader_expecting`).
//! - The local repository is never half-updated: all objects are fetched, verified and synced
//!   (`Store::sync`) before the new state is committed with `Repo::commit_state`, the single
//!   commit point. A failure before it leaves the previous revision as the head; objects already
//!   verified stay in the store (they are valid and make a repeated get resumable).
//! - Tarballs are checked completely (member names and types, object hashes, the state) in a
//!   first pass that writes nothing; only then is a second pass allowed to store objects.
//! - Publishing (push) writes objects first and `json` last, each atomically, so a reader of the
//!   destination never sees a `json` whose objects are missing. Only missing objects move.
//! - Network transfers run on a bounded pool of threads and retry a bounded number of times with
//!   exponential backoff; nothing retries forever.
//!
//! # Parts (`SRC#a,-b`)
//! A positive part selects the keys equal to it or under it as a directory (`a` matches `a` and
//! `a/x`, not `ab` — pvr uses plain string prefixes, quirk 10 of the vectors; we do not). A
//! negative part `-b` removes the keys equal to or under `b`. See [`combine`] for how the
//! selection meets the local state.

pub mod bases;
pub mod dir;
pub mod http;
mod limits;
pub(crate) mod net;
mod progress;
pub mod pvr;
pub mod s3;
pub mod tarball;

pub(crate) use limits::RateGuard;
pub(crate) use progress::Progress;

use crate::error::{Error, Result};
use crate::oid::ObjectId;
use crate::repo::Repo;
use crate::state::{Entry, State, TreeMeta};
use crate::store::Store;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Knobs shared by every transfer.
#[derive(Debug, Clone)]
pub struct Options {
    /// Parallel transfers (threads) for directories and HTTP.
    pub jobs: usize,
    /// Attempts per HTTP request (the first included); never unbounded.
    pub attempts: u32,
    /// Delay before the second attempt; doubled for each further one.
    pub backoff: Duration,
    /// Draw progress bars on stderr (only when it is a terminal and not --quiet).
    pub progress: bool,
    /// A network read or write that makes no progress for this long fails (and is retried).
    pub idle_timeout: Duration,
    /// Slowest average rate (bytes/s) a transfer may have after `grace`; slower ones are cut
    /// off (see `RateGuard`), so a slow or endless peer cannot hold a transfer forever.
    pub min_rate: u64,
    pub grace: Duration,
    /// Bearer token for pvr remotes (`--token`, `PVRFS_TOKEN`); never sent to signed URLs.
    pub token: Option<String>,
    /// Commit message of a push to a pvr remote (default: the latest revision's message).
    pub message: Option<String>,
    /// Push even when the remote has changes this repository has not seen (see `bases`).
    pub force: bool,
    /// Largest object a transfer accepts from a server: a state carries no sizes, so a server
    /// could otherwise send an endless body; the first byte past it ends the transfer.
    pub max_object_size: u64,
    /// S3 uploads: objects of at least this many bytes go as multipart uploads
    /// (`PVRFS_S3_MULTIPART_THRESHOLD`; see `s3::multipart`).
    pub s3_multipart_threshold: u64,
    /// S3 multipart uploads: the size of a part (`PVRFS_S3_PART_SIZE`; at least 5 MiB).
    pub s3_part_size: u64,
}

/// `Options::max_object_size` by default: 4 GiB.
pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 4 << 30;

impl Default for Options {
    fn default() -> Self {
        Options {
            jobs: 8,
            attempts: 5,
            backoff: Duration::from_millis(200),
            progress: false,
            idle_timeout: Duration::from_secs(60),
            min_rate: 32 * 1024,
            grace: Duration::from_secs(30),
            token: None,
            message: None,
            force: false,
            max_object_size: DEFAULT_MAX_OBJECT_SIZE,
            s3_multipart_threshold: s3::multipart::DEFAULT_THRESHOLD,
            s3_part_size: s3::multipart::DEFAULT_PART_SIZE,
        }
    }
}

/// Where a state comes from or goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A plain directory with `json` and `objects/`.
    Dir(PathBuf),
    /// A tarball (gzip when the name ends in `.gz`/`.tgz`).
    Tarball(PathBuf),
    /// An `http://` or `https://` base URL (no trailing `/`): a pvr remote when it answers
    /// `.pvrremote`, else a server of the plain layout.
    Http(String),
    /// A local repository's work directory (its latest revision and its object store).
    Repo(PathBuf),
    /// `s3://BUCKET/PREFIX` in the plain layout.
    S3(s3::S3Location),
}

impl Location {
    /// Interpret `text` (no fragment) relative to `cwd`. A path that does not exist is a
    /// directory when `for_push`, an error otherwise.
    pub fn parse(text: &str, cwd: &Path, for_push: bool) -> Result<Location> {
        if text.is_empty() {
            return Err(Error::Usage("empty source/destination".into()));
        }
        let lower = text.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return Ok(Location::Http(text.trim_end_matches('/').to_string()));
        }
        if lower.starts_with("s3://") {
            return Ok(Location::S3(s3::S3Location::parse(text)?));
        }
        if lower.contains("://") {
            return Err(Error::Usage(format!(
                "'{text}': only repositories, plain directories, tarballs, http(s):// and s3:// URLs are supported"
            )));
        }
        let path = cwd.join(text);
        if path.is_dir() {
            if let Some(workdir) = repo_workdir(&path) {
                return Ok(Location::Repo(workdir));
            }
            return Ok(Location::Dir(path));
        }
        if path.is_file() {
            if for_push {
                return Err(Error::Usage(format!(
                    "'{}' is a file; push needs a directory or an http(s) URL (use export for tarballs)",
                    path.display()
                )));
            }
            return Ok(Location::Tarball(path));
        }
        if for_push {
            return Ok(Location::Dir(path));
        }
        Err(Error::Usage(format!(
            "'{}' does not exist (expected a repository, a directory with json and objects/, a tarball, or an http(s):// or s3:// URL)",
            path.display()
        )))
    }

    pub fn describe(&self) -> String {
        match self {
            Location::Dir(p) | Location::Tarball(p) | Location::Repo(p) => p.display().to_string(),
            Location::Http(u) => u.clone(),
            Location::S3(l) => l.describe(),
        }
    }
}

/// The work directory of the repository at `dir`: `dir` itself when it holds `.pvr/json`, or
/// its parent when `dir` is that `.pvr` (pvr's spelling `REPO/.pvr`).
pub fn repo_workdir(dir: &Path) -> Option<PathBuf> {
    if dir.join(crate::repo::PVR_DIR).join("json").is_file() {
        return Some(dir.to_path_buf());
    }
    let parent = dir.parent()?;
    (dir.file_name()? == crate::repo::PVR_DIR
        && parent.join(crate::repo::PVR_DIR).join("json").is_file())
    .then(|| parent.to_path_buf())
}

/// The `#a,-b` part of a source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parts {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl Parts {
    /// Parse a fragment (without the `#`). Trailing `/` are dropped; empty items are ignored.
    pub fn parse(fragment: &str) -> Result<Parts> {
        let mut parts = Parts::default();
        for item in fragment.split(',') {
            let (neg, name) = match item.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, item),
            };
            let name = name.trim_end_matches('/');
            if name.is_empty() {
                if item.is_empty() {
                    continue;
                }
                return Err(Error::Usage(format!(
                    "empty part '{item}' in '#{fragment}'"
                )));
            }
            if neg {
                parts.exclude.push(name.to_string());
            } else {
                parts.include.push(name.to_string());
            }
        }
        Ok(parts)
    }

    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// Is `key` selected: under an included part (any key when none is given) and under no
    /// excluded part.
    pub fn selects(&self, key: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| under(key, p)))
            && !self.exclude.iter().any(|p| under(key, p))
    }
}

/// `key` equals `part` or lies under it as a directory.
pub fn under(key: &str, part: &str) -> bool {
    key.strip_prefix(part)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Split `SRC#parts` at the first `#`.
pub fn split_fragment(spec: &str) -> Result<(&str, Parts)> {
    match spec.split_once('#') {
        Some((src, frag)) => Ok((src, Parts::parse(frag)?)),
        None => Ok((spec, Parts::default())),
    }
}

/// The remote state restricted to the selected keys (`#spec` kept), with the metadata of the
/// selected paths (modes, symlinks, empty directories go with their path, wherever their
/// document is).
pub fn select(remote: &State, parts: &Parts) -> State {
    if parts.is_empty() {
        return remote.clone(); // byte for byte, documents included
    }
    let mut out = State::default();
    out.spec = remote.spec.clone();
    for (k, e) in remote.iter() {
        if parts.selects(k) {
            // keys of a valid state stay valid in any subset
            out.insert(k, e.clone()).expect("subset of a valid state");
        }
    }
    let m = remote.meta();
    let mut meta = TreeMeta {
        links: m.links.clone(),
        dirs: m.dirs.clone(),
        modes: m.modes.clone(),
    };
    meta.links.retain(|k, _| parts.selects(k));
    meta.dirs.retain(|k| parts.selects(k));
    meta.modes.retain(|k, _| parts.selects(k));
    // A directory whose content was all left out is not in the subset: nor is its mode.
    let files = out.entries_map();
    let gone: Vec<String> = meta
        .modes
        .keys()
        .filter(|k| !files.contains_key(*k) && !meta.is_dir(files, k))
        .cloned()
        .collect();
    for k in gone {
        meta.modes.remove(&k);
    }
    out.set_meta(meta)
        .expect("the metadata of a subset of a valid state fits the subset");
    out
}

/// How fetched keys meet the local state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `get`/`import`/`clone`: the selected remote keys replace the local keys they cover.
    Get,
    /// `merge`: the selected remote keys are added to the local state (remote wins per key).
    Merge,
}

/// The new local state (pvr's semantics, vectors case 07):
/// - `get` without parts: the remote state, `#spec` included.
/// - `get SRC#a,-b`: local keys under `a` or `b` are dropped (with no positive part every local
///   key is, so `#-b` is "the remote state minus `b`"), then the selected remote keys are added;
///   the local `#spec` is kept.
/// - `merge`: local keys under a negative part are dropped, the selected remote keys are added
///   over the local ones; the local `#spec` is kept unless there are no parts.
///
/// Fails (naming the key) when the result would have a file that is also a directory.
pub fn combine(local: &State, remote: &State, parts: &Parts, mode: Mode) -> Result<State> {
    let selected = select(remote, parts);
    if mode == Mode::Get && parts.is_empty() {
        return Ok(selected);
    }
    let spec = if parts.is_empty() {
        remote.spec.clone().or_else(|| local.spec.clone())
    } else {
        local.spec.clone()
    };
    let verb = if mode == Mode::Get { "get" } else { "merge" };
    let conflict = |err: Error| match err {
        Error::BadEntry { key, reason, .. }
        | Error::BadMeta {
            path: key, reason, ..
        } => Error::Conflict(format!(
            "cannot {verb} '{key}': {reason} in the local state; nothing was changed"
        )),
        other => other,
    };
    let dropped = |k: &str| match mode {
        Mode::Get => {
            parts.include.is_empty()
                || parts.include.iter().any(|p| under(k, p))
                || parts.exclude.iter().any(|p| under(k, p))
        }
        Mode::Merge => parts.exclude.iter().any(|p| under(k, p)),
    };
    // A path the remote part has (as a file, symlink or empty directory) replaces the local one.
    let sm = selected.meta();
    let in_selected =
        |k: &str| selected.contains(k) || sm.links.contains_key(k) || sm.dirs.contains(k);
    let mut out = State::default();
    out.spec = spec;
    for (k, e) in local.iter() {
        if !dropped(k) && !in_selected(k) {
            out.insert(k, e.clone()).map_err(conflict)?;
        }
    }
    for (k, e) in selected.iter() {
        out.insert(k, e.clone()).map_err(conflict)?;
    }
    // The metadata travels with its paths, as the files do.
    let lm = local.meta();
    let mut meta = TreeMeta::default();
    for (k, t) in &lm.links {
        if !dropped(k) && !in_selected(k) {
            meta.links.insert(k.clone(), t.clone());
        }
    }
    for k in &lm.dirs {
        if !dropped(k) && !in_selected(k) {
            meta.dirs.insert(k.clone());
        }
    }
    for (k, m) in &lm.modes {
        if !dropped(k) && !in_selected(k) && !sm.modes.contains_key(k) {
            meta.modes.insert(k.clone(), *m);
        }
    }
    meta.links
        .extend(sm.links.iter().map(|(k, t)| (k.clone(), t.clone())));
    meta.dirs.extend(sm.dirs.iter().cloned());
    meta.modes
        .extend(sm.modes.iter().map(|(k, m)| (k.clone(), *m)));
    // A local empty directory that received content is no longer empty; a local file replaced
    // by a remote symlink or directory leaves no stale mode.
    let files = out.entries_map();
    let filled: Vec<String> = meta
        .dirs
        .iter()
        .filter(|d| {
            let prefix = format!("{d}/");
            files
                .range(prefix.clone()..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(&prefix))
                || meta
                    .links
                    .range(prefix.clone()..)
                    .next()
                    .is_some_and(|(k, _)| k.starts_with(&prefix))
                || meta
                    .dirs
                    .range(prefix.clone()..)
                    .next()
                    .is_some_and(|k| k.starts_with(&prefix))
        })
        .cloned()
        .collect();
    for d in filled {
        meta.dirs.remove(&d);
    }
    let gone: Vec<String> = meta
        .modes
        .keys()
        .filter(|k| !files.contains_key(*k) && !meta.is_dir(files, k))
        .cloned()
        .collect();
    for k in gone {
        meta.modes.remove(&k);
    }
    out.set_meta(meta).map_err(conflict)?;
    Ok(out)
}

/// Which key needs each object (for error messages).
pub fn object_users(state: &State) -> BTreeMap<ObjectId, String> {
    let mut users = BTreeMap::new();
    for (k, e) in state.iter() {
        if let Entry::Object(id) = e {
            users.entry(*id).or_insert_with(|| k.clone());
        }
    }
    users
}

/// What a transfer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Objects the state needs.
    pub objects: usize,
    /// Objects that actually moved (the rest were already there).
    pub moved: usize,
    /// Bytes that moved.
    pub bytes: u64,
    /// The revision the destination now has, when it numbers revisions (a pvr remote, a local
    /// repository).
    pub remote_revision: Option<u64>,
}

/// Run `f` on every item with at most `jobs` threads; stops early and returns the first error.
pub(crate) fn for_each_parallel<T: Sync>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> Result<()> + Sync,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let threads = jobs.clamp(1, items.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { return };
                if let Err(e) = f(item) {
                    failed.store(true, Ordering::Relaxed);
                    first_error.lock().expect("not poisoned").get_or_insert(e);
                    return;
                }
            });
        }
    });
    match first_error.into_inner().expect("not poisoned") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A source's state and its objects, already verified into the local store.
pub struct Fetched {
    /// The whole remote state (validated).
    pub remote: State,
    pub transfer: Transfer,
    /// Where it came from, for messages.
    pub origin: String,
    /// The revision the remote served, when it numbers them (a pvr remote).
    pub revision: Option<u64>,
    /// Whether the source is a shared remote whose state `bases` tracks (pvr remote, S3).
    pub tracked: bool,
}

/// Fetch the state at `loc` and every object the selected part of it needs into `store`,
/// verified and synced. Nothing but verified objects is written.
pub fn fetch(loc: &Location, parts: &Parts, store: &Store, opts: &Options) -> Result<Fetched> {
    let origin = loc.describe();
    let mut revision = None;
    let tracked = matches!(loc, Location::S3(_));
    let mut pvr_remote = false;
    let (remote, transfer) = match loc {
        Location::Dir(path) => {
            let src = dir::DirSource::new(path, opts.max_object_size);
            let remote = State::from_json_bytes(&src.json()?, &src.json_origin())?;
            let t = fetch_objects(&select(&remote, parts), store, opts, |id, store| {
                src.fetch(id, store)
            })?;
            (remote, t)
        }
        Location::Http(base) => match pvr::PvrRemoteClient::detect(base, opts)? {
            Some(client) => {
                let Some(json) = client.json()? else {
                    return Err(Error::Other(format!(
                        "{}: the remote has no state (404 from {})",
                        client.describe(),
                        client.remote.json_get_url
                    )));
                };
                let remote = State::from_json_bytes(&json.bytes, &client.remote.json_get_url)?;
                let t = fetch_objects(&select(&remote, parts), store, opts, |id, store| {
                    client.fetch(id, store)
                })?;
                revision = json.revision;
                pvr_remote = true;
                (remote, t)
            }
            None => {
                let src = http::HttpSource::new(base, opts);
                let remote = State::from_json_bytes(&src.json()?, &src.json_url())?;
                let t = fetch_objects(&select(&remote, parts), store, opts, |id, store| {
                    src.fetch(id, store)
                })?;
                (remote, t)
            }
        },
        Location::Repo(workdir) => {
            let src = Repo::open(workdir)?;
            let latest = src.latest()?;
            let remote = src.load_state(&latest)?;
            let same_store = src.store().dir() == store.dir();
            let t = fetch_objects(&select(&remote, parts), store, opts, |id, store| {
                if same_store {
                    return Ok(0);
                }
                let f = src.store().open_required(id, None)?;
                let path = src.store().path_of(id);
                dir::copy_object(f, &path, id, store, opts.max_object_size).map_err(|e| match e {
                    Error::CorruptObject { id, actual, .. } => Error::Other(format!(
                        "object {id} in {} is corrupt: its content hashes to {actual}",
                        src.store().dir().display()
                    )),
                    other => other,
                })
            })?;
            (remote, t)
        }
        Location::S3(loc) => {
            let config = s3::S3Config::from_env()?;
            let bucket = s3::S3Bucket::new(&config, &loc.bucket, opts)?;
            let Some(json) = bucket.get_small(&loc.json_key())? else {
                return Err(Error::Other(format!(
                    "{}: no json there (not a pushed repository)",
                    loc.describe()
                )));
            };
            let remote = State::from_json_bytes(&json, &format!("{}/json", loc.describe()))?;
            let t = fetch_objects(&select(&remote, parts), store, opts, |id, store| {
                bucket.fetch(&loc.object_key(id), id, store)
            })?;
            (remote, t)
        }
        Location::Tarball(path) => {
            let scan = tarball::scan(path, opts.max_object_size)?;
            let remote = scan.state.clone();
            let selected = select(&remote, parts);
            let users = object_users(&selected);
            let mut wanted = HashSet::new();
            for (id, key) in &users {
                if store.contains(id) {
                    continue;
                }
                if !scan.objects.contains_key(id) {
                    return Err(Error::Other(format!(
                        "{}: object {id} (needed for '{key}') is neither in the archive nor in the local store",
                        path.display()
                    )));
                }
                wanted.insert(*id);
            }
            let progress = Progress::new(opts.progress, wanted.len(), "import");
            tarball::store_objects(path, &scan, &wanted, store, opts.max_object_size, &progress)?;
            (remote, progress.finish(users.len()))
        }
    };
    store.sync()?;
    Ok(Fetched {
        remote,
        transfer,
        origin,
        revision,
        tracked: tracked || pvr_remote,
    })
}

/// Fetch every object of `state` missing from `store` with `fetch_one` (which must verify).
fn fetch_objects(
    state: &State,
    store: &Store,
    opts: &Options,
    fetch_one: impl Fn(&ObjectId, &Store) -> Result<u64> + Sync,
) -> Result<Transfer> {
    let users = object_users(state);
    let missing: Vec<(ObjectId, String)> = users
        .iter()
        .filter(|(id, _)| !store.contains(id))
        .map(|(id, k)| (*id, k.clone()))
        .collect();
    let progress = Progress::new(opts.progress, missing.len(), "get");
    for_each_parallel(&missing, opts.jobs, |(id, key)| {
        let n = fetch_one(id, store).map_err(|e| needed_for(e, key))?;
        progress.done(true, n);
        Ok(())
    })?;
    Ok(progress.finish(users.len()))
}

/// Name the state key an object error is about.
fn needed_for(e: Error, key: &str) -> Error {
    match e {
        Error::CorruptObject {
            id,
            actual,
            path: None,
        } => Error::CorruptObject {
            id,
            actual,
            path: Some(key.to_string()),
        },
        Error::Other(msg) => Error::Other(format!("{msg} (needed for '{key}')")),
        other => other,
    }
}

/// What `get`/`merge`/`import` did to the repository.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub transfer: Transfer,
    /// The new revision, or `None` when the state was already the head (nothing committed).
    pub revision: Option<crate::repo::Revision>,
    pub state: State,
}

/// `get`/`merge`/`import`: fetch, verify and store, then commit the combined state as a new
/// revision (see [`combine`]). The work tree is not touched (pvr quirk 11, kept).
pub fn get_into(
    repo: &Repo,
    loc: &Location,
    parts: &Parts,
    mode: Mode,
    message: &str,
    opts: &Options,
) -> Result<Outcome> {
    // Downloads run without the lock; objects are content-addressed, so concurrent puts are safe.
    let fetched = fetch(loc, parts, repo.store(), opts)?;
    let lock = repo.lock()?;
    let head = repo.head_state()?;
    let new = combine(&head, &fetched.remote, parts, mode)?;
    // Every fetched object is in the store (`fetch`); local keys kept were already the head's,
    // so damage there is fsck's business, not a reason to refuse the get.
    let revision = if new == head && repo.latest()?.recorded {
        None
    } else {
        Some(repo.commit_state(&lock, &new, message, None)?)
    };
    if fetched.tracked {
        // Whatever the parts, this repository has now seen the remote's state.
        bases::record(
            repo,
            &fetched.origin,
            fetched.remote.state_id(),
            fetched.revision,
        )?;
    }
    Ok(Outcome {
        transfer: fetched.transfer,
        revision,
        state: new,
    })
}

/// The latest revision's state, restricted to `parts` (empty: all).
pub fn latest_state(repo: &Repo, parts: &Parts) -> Result<(State, crate::repo::Revision)> {
    let rev = repo.latest()?;
    let state = repo.load_state(&rev)?;
    Ok((select(&state, parts), rev))
}

/// `push`: publish the latest revision to a directory or an HTTP server, objects first and
/// `json` last. Local objects are verified while they are sent.
pub fn push(repo: &Repo, loc: &Location, opts: &Options) -> Result<Transfer> {
    let (state, rev) = latest_state(repo, &Parts::default())?;
    let store = repo.store();
    let users = object_users(&state);
    // Everything must be here before anything is published.
    let mut objects = Vec::with_capacity(users.len());
    for (id, key) in &users {
        let path = store.path_of(id);
        let len = std::fs::metadata(&path)
            .map_err(|_| store.missing(id, Some(key)))?
            .len();
        objects.push((*id, key.clone(), path, len));
    }
    let json = state.to_canonical_bytes();
    match loc {
        Location::Dir(dir) => {
            let dest = dir::DirDest::create(dir)?;
            let t = push_objects(&objects, opts, |id, _, path, len, _| {
                if dest.has(id, len) {
                    return Ok(false);
                }
                dest.put(id, path)?;
                Ok(true)
            })?;
            dest.sync()?;
            dest.put_json(&json)?;
            Ok(t)
        }
        Location::Http(base) => {
            if let Some(remote) = pvr::PvrRemoteClient::detect(base, opts)? {
                let message = opts.message.clone().unwrap_or(rev.message);
                let seen = bases::get(repo, &loc.describe())?;
                let t = pvr::push(&remote, &state, &objects, &message, seen.as_ref(), opts)?;
                let _lock = repo.lock()?;
                bases::record(repo, &loc.describe(), state.state_id(), t.remote_revision)?;
                return Ok(t);
            }
            let dest = http::HttpSource::new(base, opts);
            let t = push_objects(&objects, opts, |id, _, path, len, _| {
                if dest.has(id, len)? {
                    return Ok(false);
                }
                dest.put_object(id, path, len)?;
                Ok(true)
            })?;
            dest.put_json(&json)?;
            Ok(t)
        }
        Location::Tarball(p) => Err(Error::Usage(format!(
            "cannot push to the file '{}'; use export for tarballs",
            p.display()
        ))),
        Location::S3(s3loc) => {
            let seen = bases::get(repo, &loc.describe())?;
            let t = s3_push(s3loc, &state, &objects, &json, seen.as_ref(), opts)?;
            let _lock = repo.lock()?;
            bases::record(repo, &loc.describe(), state.state_id(), None)?;
            Ok(t)
        }
        Location::Repo(workdir) => {
            let dest = Repo::open(workdir)?;
            if dest.store().dir() == repo.store().dir() {
                // One store shared by both (pvr's global pool): nothing to copy.
                return commit_into(
                    &dest,
                    &state,
                    objects.len(),
                    Transfer::default(),
                    &rev.message,
                );
            }
            let t = push_objects(&objects, opts, |id, _, path, _, _| {
                if dest.store().contains(id) {
                    return Ok(false);
                }
                let f = std::fs::File::open(path).map_err(|e| Error::io("open object", path, e))?;
                dest.store().put_reader_expecting(f, id)?;
                Ok(true)
            })?;
            dest.store().sync()?;
            commit_into(
                &dest,
                &state,
                objects.len(),
                t,
                &opts.message.clone().unwrap_or(rev.message),
            )
        }
    }
}

/// Make `state` (whose objects are all in `dest`'s store) `dest`'s next revision, unless it
/// already is its head.
fn commit_into(
    dest: &Repo,
    state: &State,
    objects: usize,
    mut t: Transfer,
    message: &str,
) -> Result<Transfer> {
    let lock = dest.lock()?;
    let head = dest.head_state()?;
    let latest = dest.latest()?;
    t.objects = objects;
    t.remote_revision = Some(if &head == state && latest.recorded {
        latest.rev
    } else {
        dest.commit_state_on(&lock, Some(&head), state, message, None)?
            .rev
    });
    Ok(t)
}

/// Push to a bucket: the state already there says which objects are present (a no-op push is
/// one `GET`); otherwise one listing of `objects/` finds the rest, the missing objects are
/// uploaded (checksummed), and `json` goes last.
fn s3_push(
    loc: &s3::S3Location,
    state: &State,
    objects: &[PushItem],
    json: &[u8],
    seen: Option<&bases::Base>,
    opts: &Options,
) -> Result<Transfer> {
    let config = s3::S3Config::from_env()?;
    let bucket = s3::S3Bucket::new(&config, &loc.bucket, opts)?;
    let baseline = bucket.get_small(&loc.json_key())?;
    if baseline.as_deref() == Some(json) {
        return Ok(Transfer {
            objects: objects.len(),
            ..Transfer::default()
        });
    }
    let theirs = match &baseline {
        Some(b) => Some(State::from_json_bytes(
            b,
            &format!("{}/json", loc.describe()),
        )?),
        None => None,
    };
    bases::check(
        &loc.describe(),
        seen,
        theirs.as_ref(),
        None,
        state,
        opts.force,
    )?;
    let present = bucket.list_objects(&loc.key("objects/"))?;
    let t = push_objects(objects, opts, |id, _, path, len, sent| {
        if present.get(id) == Some(&len) {
            return Ok(false);
        }
        bucket.put_object(&loc.object_key(id), id, path, len, sent)?;
        Ok(true)
    })?;
    bucket.put_bytes(&loc.json_key(), json, "application/json")?;
    Ok(t)
}

/// `export`: write the latest revision (restricted to `parts`) as a pvr export tar, gzipped
/// when asked. Returns the number of objects written.
pub fn export(
    repo: &Repo,
    parts: &Parts,
    out: &mut dyn std::io::Write,
    gzip: bool,
) -> Result<usize> {
    let (state, rev) = latest_state(repo, parts)?;
    let store = repo.store();
    let mut paths = Vec::new();
    for (id, key) in object_users(&state) {
        let path = store.path_of(&id);
        let len = std::fs::metadata(&path)
            .map_err(|_| store.missing(&id, Some(&key)))?
            .len();
        paths.push((id, path, len));
    }
    let objects: Vec<tarball::ExportObject<'_>> = paths
        .iter()
        .map(|(id, path, len)| tarball::ExportObject {
            id: *id,
            path,
            len: *len,
        })
        .collect();
    let json = state.to_canonical_bytes();
    let mtime = u64::try_from(rev.time).unwrap_or(0);
    if gzip {
        let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        tarball::write(&mut gz, &json, &objects, mtime)?;
        gz.finish()
            .map_err(|e| Error::io("write", "the export", e))?;
    } else {
        tarball::write(out, &json, &objects, mtime)?;
    }
    Ok(objects.len())
}

/// One object to publish: its id, the key needing it, its file in the local store, its size.
pub type PushItem = (ObjectId, String, PathBuf, u64);

/// Run `put_one(id, key, path, len, sent)` (true: the object moved) over `objects` in
/// parallel. `put_one` may report bytes as they leave with `sent(n)` (a multipart upload does,
/// part by part); whatever it did not report counts as sent when it returns.
fn push_objects(
    objects: &[PushItem],
    opts: &Options,
    put_one: impl Fn(&ObjectId, &str, &Path, u64, &s3::multipart::Sent<'_>) -> Result<bool> + Sync,
) -> Result<Transfer> {
    let total: u64 = objects.iter().map(|o| o.3).sum();
    let progress = Progress::by_bytes(opts.progress, objects.len(), total, "push");
    for_each_parallel(objects, opts.jobs, |(id, key, path, len)| {
        let reported = std::sync::atomic::AtomicU64::new(0);
        let sent = |n: u64| {
            reported.fetch_add(n, Ordering::Relaxed);
            progress.sent(n);
        };
        let moved = put_one(id, key, path, *len, &sent).map_err(|e| needed_for(e, key))?;
        progress.sent(len.saturating_sub(reported.into_inner()));
        progress.done(moved, *len);
        Ok(())
    })?;
    Ok(progress.finish(objects.len()))
}

/// The directory `clone` creates when none is given: the source's last path component, without
/// a tarball suffix.
pub fn default_clone_dir(src: &str) -> Option<String> {
    let trimmed = src.trim_end_matches('/');
    // `REPO/.pvr` is named after REPO.
    let trimmed = trimmed.strip_suffix("/.pvr").unwrap_or(trimmed);
    let mut last = trimmed.rsplit('/').next()?;
    // `http://host/NAME@REV` (a revision of a served repository) is named after NAME.
    if src.contains("://") {
        last = last.split('@').next().unwrap_or(last);
    }
    let name = [".tar.gz", ".tgz", ".tar"]
        .iter()
        .find_map(|s| last.strip_suffix(s))
        .unwrap_or(last);
    (!name.is_empty() && name != "." && name != ".." && !name.contains(':'))
        .then(|| name.to_string())
}

/// A reader that hashes what passes through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: crate::oid::Hasher,
}

impl<R: std::io::Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: crate::oid::Hasher::new(),
        }
    }
    pub(crate) fn finish(self) -> ObjectId {
        self.hasher.finish().0
    }
}

impl<R: std::io::Read> std::io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(text: &str) -> State {
        State::from_json_bytes(text.as_bytes(), "test").unwrap()
    }

    const A: &str = "6923dd1bc0460082c5d55a831908c24a282860b7f1cd6c2b79cf1bc8857c639c";

    #[test]
    fn parts_match_whole_path_segments() {
        let p = Parts::parse("bsp,-bsp/old/,").unwrap();
        assert_eq!(p.include, vec!["bsp"]);
        assert_eq!(p.exclude, vec!["bsp/old"]);
        assert!(p.selects("bsp") && p.selects("bsp/k.img"));
        assert!(!p.selects("bsp2/k.img") && !p.selects("bsp.json"));
        assert!(!p.selects("bsp/old/x") && p.selects("bsp/older"));
        assert!(Parts::parse("-").is_err());
        assert!(Parts::parse("").unwrap().is_empty());
    }

    #[test]
    fn get_and_merge_follow_pvr_case_07() {
        let local = state(&format!(
            r##"{{"#spec":"local@1","app1.json":{{"v":1}},"bsp/old.txt":"{A}","local.txt":"{A}"}}"##
        ));
        let remote = state(&format!(
            r##"{{"#spec":"remote@1","app1/r":"{A}","bsp/kernel.img":"{A}","top.txt":"{A}"}}"##
        ));
        let keys = |s: &State| s.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        let got = combine(&local, &remote, &Parts::parse("bsp").unwrap(), Mode::Get).unwrap();
        assert_eq!(keys(&got), ["app1.json", "bsp/kernel.img", "local.txt"]);
        assert_eq!(got.spec.as_deref(), Some("local@1"));
        let merged = combine(&got, &remote, &Parts::parse("app1").unwrap(), Mode::Merge).unwrap();
        assert_eq!(
            keys(&merged),
            ["app1.json", "app1/r", "bsp/kernel.img", "local.txt"]
        );
        let minus = combine(&merged, &remote, &Parts::parse("-bsp").unwrap(), Mode::Get).unwrap();
        assert_eq!(keys(&minus), ["app1/r", "top.txt"]);
        assert_eq!(minus.spec.as_deref(), Some("local@1"));
        let all = combine(&minus, &remote, &Parts::default(), Mode::Get).unwrap();
        assert_eq!(all, remote);
    }

    /// Modes, symlinks and empty directories travel with their paths, wherever their document
    /// sits; a part's metadata replaces the local metadata of that part.
    #[test]
    fn metadata_travels_with_its_paths() {
        let local = state(&format!(
            r#"{{"bsp/old":"{A}","bsp/x":"{A}","run.sh":"{A}","tmp/.keep":"{A}",
               ".pvrfs-meta.json":{{"modes":{{"run.sh":"0755","bsp":"0700"}},"links":{{"sh":"run.sh"}}}},
               "bsp/.pvrfs-meta.json":{{"modes":{{"x":"0700"}},"links":{{"l":"old"}},"dirs":["e"]}}}}"#
        ));
        // the remote's bsp metadata is (oddly) in its root document
        let remote = state(&format!(
            r#"{{"bsp/x":"{A}","bsp/new":"{A}","app/a":"{A}",
               ".pvrfs-meta.json":{{"modes":{{"bsp/x":"4755","app":"0711"}},"links":{{"bsp/l":"new","app/l":"a"}},"dirs":["bsp/empty"]}}}}"#
        ));
        let got = combine(&local, &remote, &Parts::parse("bsp").unwrap(), Mode::Get).unwrap();
        let m = got.meta();
        assert_eq!(m.file_mode("bsp/x"), 0o4755);
        assert_eq!(m.links.get("bsp/l").map(String::as_str), Some("new"));
        assert!(m.dirs.contains("bsp/empty") && !m.dirs.contains("bsp/e"));
        // local metadata outside the part stays; the remote's outside the part does not come
        assert_eq!(m.file_mode("run.sh"), 0o755);
        assert_eq!(m.links.get("sh").map(String::as_str), Some("run.sh"));
        assert!(!m.links.contains_key("app/l") && !got.contains("app/a"));
        // `bsp` itself is in the part: the remote says nothing about it, so it is 0755 now
        assert_eq!(m.dir_mode("bsp"), 0o755);
        // written back in writer placement: bsp's metadata in bsp's document
        let docs: Vec<&String> = got.docs().keys().collect();
        assert_eq!(docs, [".pvrfs-meta.json", "bsp/.pvrfs-meta.json"]);
        // merge keeps local metadata the part does not mention
        let merged = combine(&local, &remote, &Parts::parse("bsp").unwrap(), Mode::Merge).unwrap();
        assert_eq!(merged.meta().dir_mode("bsp"), 0o700);
        assert!(merged.meta().dirs.contains("bsp/e") && merged.meta().dirs.contains("bsp/empty"));
        assert!(merged.contains("bsp/old"));
        // a whole get is the remote, byte for byte
        let all = combine(&local, &remote, &Parts::default(), Mode::Get).unwrap();
        assert_eq!(all.to_canonical_bytes(), remote.to_canonical_bytes());
        // selecting a part (export #bsp) keeps its metadata too
        let part = select(&remote, &Parts::parse("bsp").unwrap());
        assert_eq!(part.meta().file_mode("bsp/x"), 0o4755);
        assert!(!part.meta().modes.contains_key("app"));
        // a remote symlink where the local state has files under that path: refused, named
        let clash = state(&format!(
            r#"{{"z":"{A}",".pvrfs-meta.json":{{"links":{{"tmp":"/tmp"}}}}}}"#
        ));
        let err = combine(&local, &clash, &Parts::default(), Mode::Merge)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'tmp'") && err.contains("nothing was changed"),
            "{err}"
        );
    }

    #[test]
    fn combine_refuses_file_directory_clashes_naming_the_key() {
        let local = state(&format!(r#"{{"app":"{A}"}}"#));
        let remote = state(&format!(r#"{{"app/x":"{A}"}}"#));
        let err = combine(&local, &remote, &Parts::default(), Mode::Merge)
            .unwrap_err()
            .to_string();
        assert!(err.contains("'app/x'"), "{err}");
    }

    #[test]
    fn locations_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path();
        std::fs::write(cwd.join("x.tar"), b"").unwrap();
        assert_eq!(
            Location::parse("HTTPS://h/p/", cwd, false).unwrap(),
            Location::Http("HTTPS://h/p".into())
        );
        assert_eq!(
            Location::parse(".", cwd, false).unwrap(),
            Location::Dir(cwd.join("."))
        );
        assert_eq!(
            Location::parse("x.tar", cwd, false).unwrap(),
            Location::Tarball(cwd.join("x.tar"))
        );
        assert_eq!(
            Location::parse("new", cwd, true).unwrap(),
            Location::Dir(cwd.join("new"))
        );
        assert!(Location::parse("new", cwd, false).is_err());
        assert!(Location::parse("x.tar", cwd, true).is_err());
        assert!(Location::parse("ftp://h/p", cwd, false).is_err());
        let (src, parts) = split_fragment("http://h/p#a,-b").unwrap();
        assert_eq!(
            (src, parts.include, parts.exclude),
            ("http://h/p", vec!["a".to_string()], vec!["b".to_string()])
        );
    }

    #[test]
    fn clone_dir_names() {
        assert_eq!(
            default_clone_dir("/x/export.tar").as_deref(),
            Some("export")
        );
        assert_eq!(default_clone_dir("http://h/a/b/").as_deref(), Some("b"));
        assert_eq!(default_clone_dir("d.tgz").as_deref(), Some("d"));
        assert_eq!(default_clone_dir("/"), None);
    }

    #[test]
    fn parallel_stops_at_the_first_error() {
        let items: Vec<u32> = (0..100).collect();
        let seen = AtomicUsize::new(0);
        let three_failed = AtomicBool::new(false);
        let err = for_each_parallel(&items, 4, |&i| {
            seen.fetch_add(1, Ordering::Relaxed);
            if i == 3 {
                three_failed.store(true, Ordering::Relaxed);
                return Err(Error::Other("three".into()));
            }
            // Items after the failing one take a while, as real transfers do: without this
            // the other workers can finish all 100 trivial items before the failing worker
            // is scheduled to run item 3 (seen on a loaded 2-core machine).
            if i > 3 {
                for _ in 0..1000 {
                    if three_failed.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "three");
        assert!(seen.load(Ordering::Relaxed) < 100);
    }
}

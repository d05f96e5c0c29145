//! A pvr repository on disk: `.pvr/` layout, config, the writer lock and numbered revisions.
//!
//! ```text
//! W/                      work directory (the tree)
//! └── .pvr/
//!     ├── json            head state, byte-identical to what pvr writes        (pvr)
//!     ├── new             staged by `add`: {"path":{"ForceObject":b,"Sha":id}} (pvr)
//!     ├── config          tab-indented JSON, ObjectsDir etc.                    (pvr)
//!     ├── commitmsg       last commit message, no newline                       (pvr)
//!     ├── objects/        in-repo object store (pvrfs default; pvr: ~/.pvr/objects)
//!     └── pvrfs/          pvrfs extensions; pvr never looks here
//!         ├── lock        flock(2) target serialising writers
//!         └── revs/NNNNNNNNNN.json   one record per revision
//! ```
//!
//! Revisions: record N = {rev, state, parent, message, time, diff}. The state itself is stored as
//! an object named by its state id (sha256 of the canonical bytes); `diff` names an object
//! holding the RFC 6902 patch from the parent's state.
//!
//! Commit protocol (crash safety): objects → state/diff objects → `Store::sync` → `commitmsg` →
//! `.pvr/json` (the commit point) → revision record. Each file write is atomic. When
//! `.pvr/json` does not match the newest record — a crash after the commit point, or pvr itself
//! committed — the head is a *pending* revision numbered newest+1 with the state of `.pvr/json`;
//! readers see it as `latest`, and the next writer records it ("adopts" it) before its own work.
//! So every crash leaves the old or the new revision, and pvr's own commits join the history.

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::json::{self, Value};
use crate::oid::ObjectId;
use crate::patch;
use crate::state::{State, DEFAULT_SPEC};
use crate::store::Store;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const PVR_DIR: &str = ".pvr";
pub const DEFAULT_COMMIT_MSG: &str = "** No commit message **";
/// `ObjectsDir` that `pvrfs init` writes: an in-repo store, relative to the work dir.
pub const IN_REPO_OBJECTS: &str = ".pvr/objects";

/// `.pvr/config`, with pvr's field names and order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Config {
    #[serde(default)]
    pub default_get_url: String,
    #[serde(default)]
    pub default_put_url: String,
    #[serde(default)]
    pub default_post_url: String,
    #[serde(default)]
    pub objects_dir: String,
    #[serde(default)]
    pub access_tokens: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub refresh_tokens: Option<serde_json::Map<String, Value>>,
}

impl Config {
    /// Tab-indented, as pvr writes it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        self.serialize(&mut ser).expect("config serialises");
        out
    }
}

/// One numbered revision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Revision {
    pub rev: u64,
    /// sha256 of the canonical state bytes; the state is stored as this object.
    pub state: ObjectIdText,
    pub parent: Option<u64>,
    pub message: String,
    /// Seconds since the Unix epoch.
    pub time: i64,
    /// Object holding the RFC 6902 patch from the parent's state (none for the first).
    pub diff: Option<ObjectIdText>,
    /// False for the pending head (see module docs): not yet recorded under `revs/`.
    #[serde(skip, default = "yes")]
    pub recorded: bool,
}

fn yes() -> bool {
    true
}

/// An object id as it appears in JSON records (validated on read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectIdText(pub ObjectId);

impl Serialize for ObjectIdText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_hex())
    }
}

impl<'de> Deserialize<'de> for ObjectIdText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ObjectId::from_hex(&s)
            .map(ObjectIdText)
            .map_err(serde::de::Error::custom)
    }
}

/// An open repository.
#[derive(Debug, Clone)]
pub struct Repo {
    workdir: PathBuf,
    pvr_dir: PathBuf,
    pub config: Config,
    store: Store,
    /// `.pvr/json` as this process last wrote or verified it: while the file's identity
    /// (`JsonStamp`) is unchanged its state id is known without reading and hashing it, which
    /// keeps each commit of a long-lived daemon from re-hashing a big state.
    known_json: Arc<Mutex<Option<(JsonStamp, ObjectId)>>>,
}

/// Identity of one version of `.pvr/json`: a rename gives a new inode and ctime, an in-place
/// write a new ctime (and mtime). pvrfs and pvr both replace `.pvr/json` by renaming a new file
/// over it (pvr's `json.new`), so another writer's commit is always a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct JsonStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl JsonStamp {
    fn of(path: &Path) -> Option<JsonStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(path).ok()?;
        Some(JsonStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        })
    }
}

/// Held while writing; dropping it releases the lock.
pub struct RepoLock {
    _file: File,
}

impl Repo {
    /// Create a repository in `workdir`. `objects_dir` overrides the in-repo store.
    pub fn init(workdir: &Path, spec: Option<&str>, objects_dir: Option<&str>) -> Result<Repo> {
        let pvr_dir = workdir.join(PVR_DIR);
        if pvr_dir.join("json").exists() {
            return Err(Error::AlreadyARepo {
                path: workdir.to_path_buf(),
            });
        }
        fs::create_dir_all(&pvr_dir).ctx("create", &pvr_dir)?;
        let config = Config {
            objects_dir: objects_dir.unwrap_or(IN_REPO_OBJECTS).to_string(),
            access_tokens: Some(Default::default()),
            refresh_tokens: Some(Default::default()),
            ..Default::default()
        };
        fsutil::atomic_write(&pvr_dir.join("config"), &config.to_bytes(), 0o644)?;
        let repo = Repo::from_parts(workdir.to_path_buf(), config)?;
        fs::create_dir_all(repo.store.dir()).ctx("create object store", repo.store.dir())?;
        fs::create_dir_all(repo.revs_dir()).ctx("create", repo.revs_dir())?;
        let spec = spec.unwrap_or(DEFAULT_SPEC);
        let state = State::empty(spec);
        // Revision 0: the empty state, so that `log` and `diff 0 1` have a starting point.
        let _lock = repo.lock()?;
        let state_id = repo.store.put_bytes(&state.to_canonical_bytes())?;
        repo.store.sync()?;
        repo.write_record(&Revision {
            rev: 0,
            state: ObjectIdText(state_id),
            parent: None,
            message: "init".into(),
            time: now(),
            diff: None,
            recorded: true,
        })?;
        // Exactly what `pvr init` writes (not canonical; the first commit rewrites it).
        let text = format!(
            "{{ \"#spec\": {} }}",
            String::from_utf8_lossy(&json::to_canonical(&Value::String(spec.into())))
        );
        fsutil::atomic_write(&repo.json_path(), text.as_bytes(), 0o644)?;
        Ok(repo)
    }

    /// Open the repository whose work dir is `start` or its nearest ancestor with `.pvr/json`.
    pub fn discover(start: &Path) -> Result<Repo> {
        let start = fs::canonicalize(start).ctx("resolve", start)?;
        let mut dir = Some(start.as_path());
        while let Some(d) = dir {
            if d.join(PVR_DIR).join("json").is_file() {
                return Repo::open(d);
            }
            dir = d.parent();
        }
        Err(Error::NotARepo { path: start })
    }

    /// Open the repository whose work dir is exactly `workdir`.
    pub fn open(workdir: &Path) -> Result<Repo> {
        let pvr_dir = workdir.join(PVR_DIR);
        if !pvr_dir.join("json").is_file() {
            return Err(Error::NotARepo {
                path: workdir.to_path_buf(),
            });
        }
        let config_path = pvr_dir.join("config");
        let config = match fs::read(&config_path) {
            Ok(bytes) => {
                serde_json::from_slice::<Config>(&bytes).map_err(|e| Error::CorruptState {
                    origin: config_path.display().to_string(),
                    detail: e.to_string(),
                })?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Config::default(),
            Err(e) => return Err(Error::io("read", &config_path, e)),
        };
        Repo::from_parts(workdir.to_path_buf(), config)
    }

    fn from_parts(workdir: PathBuf, config: Config) -> Result<Repo> {
        let workdir = if workdir.is_absolute() {
            workdir
        } else {
            std::env::current_dir()
                .ctx("get current directory", ".")?
                .join(workdir)
        };
        let objects = resolve_objects_dir(&workdir, &config.objects_dir);
        Ok(Repo {
            pvr_dir: workdir.join(PVR_DIR),
            workdir,
            config,
            store: Store::new(objects),
            known_json: Arc::default(),
        })
    }

    pub fn workdir(&self) -> &Path {
        &self.workdir
    }
    pub fn pvr_dir(&self) -> &Path {
        &self.pvr_dir
    }
    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn json_path(&self) -> PathBuf {
        self.pvr_dir.join("json")
    }
    pub fn new_path(&self) -> PathBuf {
        self.pvr_dir.join("new")
    }
    pub fn commitmsg_path(&self) -> PathBuf {
        self.pvr_dir.join("commitmsg")
    }
    /// Directory for pvrfs's own files (created on demand).
    pub fn ext_dir(&self) -> PathBuf {
        self.pvr_dir.join("pvrfs")
    }
    fn revs_dir(&self) -> PathBuf {
        self.ext_dir().join("revs")
    }

    /// True when the store lives inside this repository (only then may `gc` delete from it).
    pub fn store_is_private(&self) -> bool {
        self.private_store().is_some()
    }

    /// The object store as a `Store` rooted at its real path, when that path lies strictly
    /// inside the real path of this repository's `.pvr` directory; `None` otherwise (pvr's
    /// global pool, an absolute `ObjectsDir` elsewhere, or a store that does not exist).
    ///
    /// Both sides are resolved (`..` and symlinks) before they are compared: the configured
    /// text may say `.pvr/../../other/.pvr/objects`, or `.pvr/objects` may be a symlink into
    /// another repository, and comparing the text would then let `gc` delete another
    /// repository's objects. The caller should act on the returned store, whose directory is
    /// the one that was checked, not on a path resolved again later.
    pub fn private_store(&self) -> Option<Store> {
        let real_pvr = fs::canonicalize(&self.pvr_dir).ok()?;
        let real_store = fs::canonicalize(self.store.dir()).ok()?;
        (real_store != real_pvr && real_store.starts_with(&real_pvr))
            .then(|| Store::new(real_store))
    }

    /// Take the writer lock, waiting up to 30 s for another writer to finish.
    pub fn lock(&self) -> Result<RepoLock> {
        self.lock_with_timeout(Duration::from_secs(30))
    }

    pub fn lock_with_timeout(&self, timeout: Duration) -> Result<RepoLock> {
        let dir = self.ext_dir();
        fs::create_dir_all(&dir).ctx("create", &dir)?;
        let path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ctx("open lock file", &path)?;
        let deadline = Instant::now() + timeout;
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(RepoLock { _file: file }),
                Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(rustix::io::Errno::WOULDBLOCK) => return Err(Error::Locked { path }),
                Err(e) => return Err(Error::io("lock", &path, e.into())),
            }
        }
    }

    /// The committed head state (`.pvr/json`).
    fn remember_json(&self, stamp: Option<JsonStamp>, id: ObjectId) {
        *self.known_json.lock() = stamp.map(|st| (st, id));
    }

    pub fn head_state(&self) -> Result<State> {
        let path = self.json_path();
        let bytes = fs::read(&path).ctx("read", &path)?;
        State::from_json_bytes(&bytes, &path.display().to_string())
    }

    fn record_path(&self, rev: u64) -> PathBuf {
        self.revs_dir().join(format!("{rev:010}.json"))
    }

    fn write_record(&self, r: &Revision) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(r).expect("revision serialises");
        fs::create_dir_all(self.revs_dir()).ctx("create", self.revs_dir())?;
        fsutil::atomic_write(&self.record_path(r.rev), &bytes, 0o644)
    }

    /// The recorded revisions, oldest first.
    pub fn recorded_revisions(&self) -> Result<Vec<Revision>> {
        let dir = self.revs_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list", &dir, e)),
        };
        let mut revs = Vec::new();
        for entry in rd {
            let entry = entry.ctx("list", &dir)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some(num) = name
                .strip_suffix(".json")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue; // temp files and strangers
            };
            let path = entry.path();
            let bytes = fs::read(&path).ctx("read", &path)?;
            let rec: Revision =
                serde_json::from_slice(&bytes).map_err(|e| Error::CorruptState {
                    origin: path.display().to_string(),
                    detail: format!("bad revision record: {e}"),
                })?;
            if rec.rev != num {
                return Err(Error::CorruptState {
                    origin: path.display().to_string(),
                    detail: format!("record says revision {} but is named {num}", rec.rev),
                });
            }
            revs.push(rec);
        }
        revs.sort_by_key(|r| r.rev);
        Ok(revs)
    }

    /// All revisions, oldest first; the last is `latest`. Includes the pending head when
    /// `.pvr/json` is newer than the records (see module docs).
    pub fn revisions(&self) -> Result<Vec<Revision>> {
        let mut revs = self.recorded_revisions()?;
        if let Some(pending) = self.pending_head(&revs)? {
            revs.push(pending);
        }
        Ok(revs)
    }

    fn pending_head(&self, recorded: &[Revision]) -> Result<Option<Revision>> {
        // Fast path: `.pvr/json` as pvrfs writes it is canonical, so the hash of its bytes is
        // the state id; when it is the newest record's, nothing needs parsing.
        let path = self.json_path();
        let stamp = JsonStamp::of(&path);
        let newest = recorded.last().map(|r| r.state.0);
        if let (Some(stamp), Some(newest)) = (stamp, newest) {
            if *self.known_json.lock() == Some((stamp, newest)) {
                return Ok(None);
            }
        }
        let bytes = fs::read(&path).ctx("read", &path)?;
        let bytes_id = ObjectId::hash_bytes(&bytes);
        if newest == Some(bytes_id) {
            // Stamped before the read: a change in between gives a new stamp, so the next
            // look reads again rather than trusting a stale pairing.
            self.remember_json(stamp, bytes_id);
            return Ok(None);
        }
        let head_id = State::from_json_bytes(&bytes, &path.display().to_string())?.state_id();
        if recorded.last().is_some_and(|r| r.state.0 == head_id) {
            return Ok(None);
        }
        let time = fs::metadata(self.json_path())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or_else(now, |d| d.as_secs() as i64);
        let message = fs::read_to_string(self.commitmsg_path())
            .unwrap_or_else(|_| DEFAULT_COMMIT_MSG.to_string());
        Ok(Some(Revision {
            rev: next_rev(recorded.last())?,
            state: ObjectIdText(head_id),
            parent: recorded.last().map(|r| r.rev),
            message,
            time,
            diff: None,
            recorded: false,
        }))
    }

    /// The newest revision.
    pub fn latest(&self) -> Result<Revision> {
        let revs = self.revisions()?;
        revs.last().cloned().ok_or_else(|| Error::UnknownRevision {
            spec: "latest".into(),
            hint: "the repository has no revisions".into(),
        })
    }

    /// Resolve a revision spec: `N`, `latest`/`HEAD`, `latest~K`/`HEAD~K`, or a state-id prefix
    /// of at least 7 hex digits.
    pub fn resolve(&self, spec: &str) -> Result<Revision> {
        let revs = self.revisions()?;
        resolve_in(&revs, spec)
    }

    /// Load a revision's state (from the store, verified; the pending head from `.pvr/json`).
    pub fn load_state(&self, rev: &Revision) -> Result<State> {
        if !rev.recorded {
            return self.head_state();
        }
        let what = format!("revision {}", rev.rev);
        let bytes = self.store.read_verified(&rev.state.0, Some(&what))?;
        State::from_json_bytes(&bytes, &what)
    }

    /// Record the pending head, if any, so the next revision gets a proper parent. Needs the lock.
    pub fn adopt_pending(&self, _lock: &RepoLock) -> Result<Option<Revision>> {
        let recorded = self.recorded_revisions()?;
        let Some(mut pending) = self.pending_head(&recorded)? else {
            return Ok(None);
        };
        let state = self.head_state()?;
        let state_id = self.store.put_bytes(&state.to_canonical_bytes())?;
        debug_assert_eq!(state_id, pending.state.0);
        if let Some(parent) = recorded.last() {
            let parent_state = self.load_state(parent)?;
            let diff = patch::state_json_patch(&parent_state, &state);
            pending.diff = Some(ObjectIdText(
                self.store.put_bytes(&json::to_canonical(&diff))?,
            ));
        }
        self.store.sync()?;
        pending.recorded = true;
        self.write_record(&pending)?;
        Ok(Some(pending))
    }

    /// Make `new_state` the next revision (see the commit protocol in the module docs).
    /// The caller holds the lock and has already stored every object `new_state` references.
    /// `expected_parent` guards against a head that moved since the caller read it.
    pub fn commit_state(
        &self,
        lock: &RepoLock,
        new_state: &State,
        message: &str,
        expected_parent: Option<u64>,
    ) -> Result<Revision> {
        self.commit_inner(lock, new_state, message, expected_parent, ParentDiff::Load)
    }

    /// `commit_state`, given the state the caller derived `new_state` from (usually the head
    /// it just read): when that is the parent revision's state, it is used for the diff instead
    /// of loading and verifying the parent from the store (a big state costs a read, a hash
    /// and a parse).
    pub fn commit_state_on(
        &self,
        lock: &RepoLock,
        base: Option<&State>,
        new_state: &State,
        message: &str,
        expected_parent: Option<u64>,
    ) -> Result<Revision> {
        let from = base.map_or(ParentDiff::Load, ParentDiff::From);
        self.commit_inner(lock, new_state, message, expected_parent, from)
    }

    /// `commit_state` for a caller that already knows the RFC 6902 diff from the parent (an
    /// overlay tracks its changes): the parent state is then neither loaded nor diffed, which
    /// keeps a small commit to a large state cheap. `diff` must turn the parent into `new_state`.
    pub fn commit_state_with_diff(
        &self,
        lock: &RepoLock,
        new_state: &State,
        message: &str,
        expected_parent: Option<u64>,
        known_diff: Option<Value>,
    ) -> Result<Revision> {
        let how = known_diff.map_or(ParentDiff::Load, ParentDiff::Known);
        self.commit_inner(lock, new_state, message, expected_parent, how)
    }

    fn commit_inner(
        &self,
        lock: &RepoLock,
        new_state: &State,
        message: &str,
        expected_parent: Option<u64>,
        parent_diff: ParentDiff<'_>,
    ) -> Result<Revision> {
        // A just-adopted head was read from `.pvr/json`, which is what callers pass as base.
        self.adopt_pending(lock)?;
        let recorded = self.recorded_revisions()?;
        let parent = recorded.last().cloned();
        if let Some(expected) = expected_parent {
            if parent.as_ref().map(|p| p.rev) != Some(expected) {
                return Err(Error::Conflict(format!(
                    "the repository's head moved to revision {} since revision {expected} was read; nothing was committed",
                    parent.map_or(0, |p| p.rev)
                )));
            }
        }
        // The last check before publishing: metadata that no longer fits the files (a builder
        // removed a file and forgot its mode) must never reach a revision.
        new_state.check_meta("the new state")?;
        let t = std::time::Instant::now();
        let canonical = new_state.to_canonical_bytes();
        log::debug!(
            "commit: canonical state rendered ({} bytes) in {:?}",
            canonical.len(),
            t.elapsed()
        );
        // `.pvr/json` and `commitmsg` are staged (written and fsynced under temporary names) on
        // other threads while the state and diff objects are stored and synced, so that their
        // flushes overlap; they are installed afterwards, in the protocol's order, so nothing
        // becomes visible before every object it needs is durable.
        let (json_path, msg_path) = (self.json_path(), self.commitmsg_path());
        let (stored, staged_msg, staged_json) = std::thread::scope(|s| {
            let json = s.spawn(|| fsutil::StagedFile::write(&json_path, &canonical, 0o644));
            let msg = s.spawn(|| fsutil::StagedFile::write(&msg_path, message.as_bytes(), 0o644));
            let stored = (|| -> Result<_> {
                let state_id = self.store.put_bytes(&canonical)?;
                log::debug!("commit: state stored at {:?}", t.elapsed());
                let diff = match &parent {
                    Some(p) => {
                        let d = match parent_diff {
                            ParentDiff::Known(d) => d,
                            // Only when it really is the parent's state (cheap next to a load).
                            ParentDiff::From(base) if base.state_id() == p.state.0 => {
                                patch::state_json_patch(base, new_state)
                            }
                            _ => patch::state_json_patch(&self.load_state(p)?, new_state),
                        };
                        Some(ObjectIdText(self.store.put_bytes(&json::to_canonical(&d))?))
                    }
                    None => None,
                };
                self.store.sync()?;
                log::debug!("commit: objects synced at {:?}", t.elapsed());
                Ok((state_id, diff))
            })();
            let join = |h: std::thread::ScopedJoinHandle<'_, Result<fsutil::StagedFile>>| {
                h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
            };
            (stored, join(msg), join(json))
        });
        let (state_id, diff) = stored?;
        let (staged_msg, staged_json) = (staged_msg?, staged_json?);
        log::debug!("commit: head staged at {:?}", t.elapsed());
        fsutil::crash_point("commit:objects-synced");
        staged_msg.install()?;
        staged_json.install()?;
        self.remember_json(JsonStamp::of(&self.json_path()), state_id);
        fsutil::crash_point("commit:json-written");
        let rev = Revision {
            rev: next_rev(parent.as_ref())?,
            state: ObjectIdText(state_id),
            parent: parent.map(|p| p.rev),
            message: message.to_string(),
            time: now(),
            diff,
            recorded: true,
        };
        log::debug!("commit: head written at {:?}", t.elapsed());
        self.write_record(&rev)?;
        log::debug!("commit: record written at {:?}", t.elapsed());
        Ok(rev)
    }

    /// The stored RFC 6902 diff of a revision from its parent, if any.
    pub fn load_diff(&self, rev: &Revision) -> Result<Option<Value>> {
        let Some(diff) = rev.diff else {
            return Ok(None);
        };
        let what = format!("diff of revision {}", rev.rev);
        let bytes = self.store.read_verified(&diff.0, Some(&what))?;
        json::parse(&bytes)
            .map(Some)
            .map_err(|e| Error::CorruptState {
                origin: what,
                detail: e.to_string(),
            })
    }
}

/// How `commit_inner` gets the diff of the new revision from its parent.
enum ParentDiff<'a> {
    /// Read the parent's state from the store and diff.
    Load,
    /// Diff against this in-memory state if it is the parent's (else load the parent).
    From(&'a State),
    /// The caller computed the diff.
    Known(Value),
}

/// The number after `newest` (1 after none). A record numbered `u64::MAX` (only a hand-made or
/// hostile one) has no successor: an error, not an overflow (which wrapped to 0 and overwrote
/// revision 0's record).
fn next_rev(newest: Option<&Revision>) -> Result<u64> {
    match newest {
        None => Ok(1),
        Some(r) => r.rev.checked_add(1).ok_or_else(|| Error::CorruptState {
            origin: format!("revision {}", r.rev),
            detail: "no revision can follow it (the numbers are exhausted)".into(),
        }),
    }
}

/// Resolve `spec` among `revs` (oldest first).
pub fn resolve_in(revs: &[Revision], spec: &str) -> Result<Revision> {
    let unknown = |hint: String| Error::UnknownRevision {
        spec: spec.to_string(),
        hint,
    };
    let Some(latest) = revs.last() else {
        return Err(unknown("the repository has no revisions".into()));
    };
    let range = || {
        format!(
            "revisions are {}..{} (latest)",
            revs.first().map_or(0, |r| r.rev),
            latest.rev
        )
    };
    let by_number = |n: u64| revs.iter().find(|r| r.rev == n).cloned();
    let lower = spec.to_ascii_lowercase();
    let (base, back) = match lower.split_once('~') {
        Some((b, k)) => {
            let k: u64 = if k.is_empty() {
                1
            } else {
                k.parse()
                    .map_err(|_| unknown("'~' takes a number".into()))?
            };
            (b.to_string(), k)
        }
        None => (lower.clone(), 0),
    };
    let base_rev = if base == "latest" || base == "head" {
        latest.clone()
    } else if let Ok(n) = base.parse::<u64>() {
        if base.len() >= 7 && base.bytes().all(|b| b.is_ascii_hexdigit()) && by_number(n).is_none()
        {
            by_prefix(revs, &base).map_err(unknown)?
        } else {
            by_number(n).ok_or_else(|| unknown(range()))?
        }
    } else if base.len() >= 7 && base.bytes().all(|b| b.is_ascii_hexdigit()) {
        by_prefix(revs, &base).map_err(unknown)?
    } else {
        return Err(unknown(
            "expected N, latest, HEAD, latest~K or a state-id prefix of at least 7 hex digits"
                .into(),
        ));
    };
    if back == 0 {
        return Ok(base_rev);
    }
    base_rev
        .rev
        .checked_sub(back)
        .and_then(by_number)
        .ok_or_else(|| unknown(range()))
}

fn by_prefix(revs: &[Revision], prefix: &str) -> std::result::Result<Revision, String> {
    let matches: Vec<&Revision> = revs
        .iter()
        .filter(|r| r.state.0.to_hex().starts_with(prefix))
        .collect();
    // Several revisions may share one state (e.g. a revert); the newest is meant.
    match matches.last() {
        Some(r) => Ok((*r).clone()),
        None => Err("no revision has a state id starting with it".into()),
    }
}

/// Where `ObjectsDir` points: absolute, relative to the work dir, or pvr's default pool.
pub fn resolve_objects_dir(workdir: &Path, objects_dir: &str) -> PathBuf {
    if objects_dir.is_empty() {
        return pvr_config_dir().join("objects");
    }
    let p = Path::new(objects_dir);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        workdir.join(p)
    }
}

/// pvr's config dir: `$PVR_CONFIG_DIR`, else `~/.pvr`.
pub fn pvr_config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PVR_CONFIG_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from);
    home.join(".pvr")
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Entry;

    fn commit_file(repo: &Repo, name: &str, data: &[u8], msg: &str) -> Revision {
        let lock = repo.lock().unwrap();
        let mut s = repo.head_state().unwrap();
        let id = repo.store().put_bytes(data).unwrap();
        s.insert(name, Entry::Object(id)).unwrap();
        repo.commit_state(&lock, &s, msg, None).unwrap()
    }

    #[test]
    fn init_writes_pvr_files_and_revision_zero() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path(), None, None).unwrap();
        assert_eq!(
            fs::read_to_string(repo.json_path()).unwrap(),
            r##"{ "#spec": "pantavisor-service-system@1" }"##
        );
        let cfg = fs::read_to_string(repo.pvr_dir().join("config")).unwrap();
        assert!(cfg.starts_with("{\n\t\"DefaultGetUrl\": \"\""), "{cfg}");
        assert!(cfg.contains("\"ObjectsDir\": \".pvr/objects\""), "{cfg}");
        let revs = repo.revisions().unwrap();
        assert_eq!(revs.len(), 1);
        assert_eq!(revs[0].rev, 0);
        assert!(matches!(
            Repo::init(dir.path(), None, None),
            Err(Error::AlreadyARepo { .. })
        ));
        let reopened = Repo::discover(&dir.path().join(".pvr")).unwrap();
        assert_eq!(reopened.store().dir(), repo.store().dir());
    }

    #[test]
    fn commits_number_revisions_and_resolve_specs() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path(), None, None).unwrap();
        let r1 = commit_file(&repo, "a", b"1", "one");
        let r2 = commit_file(&repo, "b", b"2", "two");
        assert_eq!((r1.rev, r2.rev, r2.parent), (1, 2, Some(1)));
        assert_eq!(repo.resolve("latest").unwrap().rev, 2);
        assert_eq!(repo.resolve("HEAD~1").unwrap().rev, 1);
        assert_eq!(repo.resolve("latest~2").unwrap().rev, 0);
        assert_eq!(repo.resolve("1").unwrap().rev, 1);
        let prefix = &r1.state.0.to_hex()[..9];
        assert_eq!(repo.resolve(prefix).unwrap().rev, 1);
        for bad in ["7", "latest~5", "zzz", "abc"] {
            let err = repo.resolve(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
        let s1 = repo.load_state(&r1).unwrap();
        assert!(s1.contains("a") && !s1.contains("b"));
        let diff = repo.load_diff(&r2).unwrap().unwrap();
        assert!(diff.to_string().contains("\"/b\""), "{diff}");
        assert_eq!(fs::read_to_string(repo.commitmsg_path()).unwrap(), "two");
    }

    #[test]
    fn json_changed_behind_our_back_becomes_pending_then_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path(), None, None).unwrap();
        commit_file(&repo, "a", b"1", "one");
        // pvr (or a crash after the commit point) leaves .pvr/json ahead of the records
        let id = repo.store().put_bytes(b"zz").unwrap();
        let mut s = repo.head_state().unwrap();
        s.insert("z", Entry::Object(id)).unwrap();
        fs::write(repo.json_path(), s.to_canonical_bytes()).unwrap();
        let latest = repo.latest().unwrap();
        assert_eq!((latest.rev, latest.recorded), (2, false));
        assert!(repo.load_state(&latest).unwrap().contains("z"));
        let r3 = commit_file(&repo, "c", b"3", "three");
        assert_eq!((r3.rev, r3.parent), (3, Some(2)));
        assert!(repo.recorded_revisions().unwrap()[2].recorded);
    }

    #[test]
    fn a_pvr_commit_right_after_ours_is_seen_despite_the_remembered_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path(), None, None).unwrap();
        commit_file(&repo, "a", b"1", "one");
        assert_eq!(repo.latest().unwrap().rev, 1); // the stamp of our own write is trusted
                                                   // pvr commits as it does (json.new + rename), at once and with a state of the same
                                                   // length: only the file's identity tells.
        let mut s = repo.head_state().unwrap();
        s.insert("a", Entry::Object(repo.store().put_bytes(b"2").unwrap()))
            .unwrap();
        let bytes = s.to_canonical_bytes();
        assert_eq!(
            bytes.len() as u64,
            fs::metadata(repo.json_path()).unwrap().len()
        );
        let new = repo.pvr_dir().join("json.new");
        fs::write(&new, &bytes).unwrap();
        fs::rename(&new, repo.json_path()).unwrap();
        let latest = repo.latest().unwrap();
        assert_eq!((latest.rev, latest.recorded), (2, false));
        assert_eq!(latest.state.0, ObjectId::hash_bytes(&bytes));
    }

    #[test]
    fn pvr_made_repo_without_history_has_one_revision() {
        let dir = tempfile::tempdir().unwrap();
        let pvr = dir.path().join(".pvr");
        fs::create_dir_all(&pvr).unwrap();
        fs::write(pvr.join("json"), r##"{ "#spec": "x@1" }"##).unwrap();
        let repo = Repo::open(dir.path()).unwrap();
        let revs = repo.revisions().unwrap();
        assert_eq!(revs.len(), 1);
        assert_eq!(repo.resolve("latest").unwrap().rev, 1);
        assert!(!repo.store_is_private());
    }

    /// The store is judged by where it really is, not by the text of `ObjectsDir`.
    #[test]
    fn a_store_reached_through_dotdot_or_a_symlink_is_not_private() {
        let dir = tempfile::tempdir().unwrap();
        let (a, other) = (dir.path().join("a"), dir.path().join("other"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&other).unwrap();
        let mine = Repo::init(&a, None, None).unwrap();
        assert!(mine.store_is_private());
        Repo::init(&other, None, None)
            .unwrap()
            .store()
            .put_bytes(b"theirs")
            .unwrap();
        let by_text = Repo::init(
            &dir.path().join("b"),
            None,
            Some(".pvr/../../other/.pvr/objects"),
        );
        assert!(!by_text.unwrap().store_is_private());
        let c = dir.path().join("c");
        let linked = Repo::init(&c, None, None).unwrap();
        fs::remove_dir_all(c.join(".pvr/objects")).unwrap();
        std::os::unix::fs::symlink(other.join(".pvr/objects"), c.join(".pvr/objects")).unwrap();
        assert!(!linked.store_is_private());
        let dot = Repo::init(&dir.path().join("d"), None, Some(".pvr")).unwrap();
        assert!(
            !dot.store_is_private(),
            "the metadata directory itself is no store"
        );
    }

    #[test]
    fn commit_refuses_when_head_moved() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path(), None, None).unwrap();
        commit_file(&repo, "a", b"1", "one");
        let lock = repo.lock().unwrap();
        let s = repo.head_state().unwrap();
        let err = repo.commit_state(&lock, &s, "x", Some(0)).unwrap_err();
        assert!(err.to_string().contains("moved"), "{err}");
    }

    #[test]
    fn a_record_numbered_u64_max_stops_commits_without_overwriting_revision_0() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path(), None, None).unwrap();
        let r1 = commit_file(&repo, "a", b"alpha", "one");
        let zero = fs::read(repo.record_path(0)).unwrap();
        let forged = Revision {
            rev: u64::MAX,
            parent: Some(1),
            ..r1
        };
        repo.write_record(&forged).unwrap();
        let lock = repo.lock().unwrap();
        let err = repo
            .commit_state(
                &lock,
                &State::empty(crate::state::DEFAULT_SPEC),
                "two",
                None,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("no revision can follow it"), "{err}");
        assert_eq!(fs::read(repo.record_path(0)).unwrap(), zero);
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path(), None, None).unwrap();
        let _held = repo.lock().unwrap();
        let other = Repo::open(dir.path()).unwrap();
        assert!(matches!(
            other.lock_with_timeout(Duration::from_millis(100)),
            Err(Error::Locked { .. })
        ));
    }
}

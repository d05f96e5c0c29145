//! Repositories and work directories made for a test.

use crate::bin::{pvrfs, Run};
use crate::trees::files;
use pvrfs::json::{self, Value};
use pvrfs::oid::ObjectId;
use pvrfs::repo::{Repo, Revision};
use pvrfs::state::{Entry, State, DEFAULT_SPEC};
use std::fs;
use std::path::{Path, PathBuf};

/// The pvr conformance vectors exchange tests use (copied from pvr-vectors/repo-cases).
pub fn vectors() -> PathBuf {
    crate::checkout_dir().join("tests/fixtures/exchange")
}

/// A repository whose latest revision holds `files` (`.json` files inline, others as objects).
pub fn repo_with(dir: &Path, files: &[(&str, &[u8])]) -> Repo {
    let repo = Repo::init(dir, None, None).unwrap();
    let mut state = State::empty(DEFAULT_SPEC);
    for (path, content) in files {
        let entry = if path.ends_with(".json") {
            Entry::Inline(json::parse(content).unwrap())
        } else {
            Entry::Object(repo.store().put_bytes(content).unwrap())
        };
        state.insert(path, entry).unwrap();
    }
    let lock = repo.lock().unwrap();
    repo.commit_state(&lock, &state, "base", None).unwrap();
    repo
}

pub fn commit(repo: &Repo, state: &State) {
    let lock = repo.lock().unwrap();
    repo.commit_state(&lock, state, "test", None).unwrap();
}

/// Parse JSON text into the library's value (for building expectations).
pub fn value(text: &str) -> Value {
    json::parse(text.as_bytes()).unwrap()
}

/// A repository in a temp dir, built through the library.
pub struct TestRepo {
    pub dir: tempfile::TempDir,
    pub repo: Repo,
    state: State,
}

/// What a file of a test revision holds.
pub enum Content<'a> {
    Blob(&'a [u8]),
    Json(&'a str),
}

impl TestRepo {
    pub fn new() -> TestRepo {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::init(dir.path(), None, None).expect("init");
        let state = repo.head_state().expect("head");
        TestRepo { dir, repo, state }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Stage one file for the next commit.
    pub fn set(&mut self, path: &str, content: Content<'_>) -> &mut Self {
        let entry = match content {
            Content::Blob(b) => Entry::Object(self.repo.store().put_bytes(b).expect("put")),
            Content::Json(text) => Entry::Inline(json::parse(text.as_bytes()).expect("json")),
        };
        self.state.insert(path, entry).expect("insert");
        self
    }

    pub fn remove(&mut self, path: &str) -> &mut Self {
        self.state.remove(path);
        self
    }

    /// Set the tree's metadata (modes, symlinks, empty directories) for the next commit.
    pub fn set_meta(&mut self, meta: pvrfs::state::TreeMeta) -> &mut Self {
        self.state.set_meta(meta).expect("valid metadata");
        self
    }

    pub fn commit(&mut self, msg: &str) -> Revision {
        let lock = self.repo.lock().expect("lock");
        self.repo
            .commit_state(&lock, &self.state, msg, None)
            .expect("commit")
    }

    /// Write revision `rev` into `dest` as `checkout` does (same renderer, verified objects).
    pub fn render_checkout(&self, rev: &Revision, dest: &Path, canonical: bool) {
        let state = self.repo.load_state(rev).expect("load");
        for (key, entry) in state.iter() {
            let p = dest.join(key);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let bytes = match entry {
                Entry::Object(id) => self.repo.store().read_verified(id, Some(key)).unwrap(),
                Entry::Inline(v) if canonical => json::render_checkout_canonical(v),
                Entry::Inline(v) => json::render_checkout(v),
            };
            std::fs::write(p, bytes).unwrap();
        }
    }
}

impl Default for TestRepo {
    fn default() -> Self {
        Self::new()
    }
}

/// A temporary work directory (canonical path, so it matches what pvrfs prints), with pvr's
/// config dir (`$PVR_CONFIG_DIR`, holding the global object pool) beside it.
pub struct Dir {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub config_dir: PathBuf,
}

impl Default for Dir {
    fn default() -> Self {
        Self::new()
    }
}

impl Dir {
    pub fn new() -> Dir {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = fs::canonicalize(tmp.path()).expect("canonicalize");
        let root = base.join("work");
        fs::create_dir(&root).unwrap();
        Dir {
            _tmp: tmp,
            root,
            config_dir: base.join("pvr-config"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn write(&self, rel: &str, data: impl AsRef<[u8]>) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn read_string(&self, rel: &str) -> String {
        String::from_utf8(self.read(rel)).unwrap()
    }

    /// Run `pvrfs ARGS` in the work dir.
    pub fn pvrfs(&self, args: &[&str]) -> Run {
        self.pvrfs_env(args, &[])
    }

    pub fn pvrfs_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        // pvr's global object pool beside the work dir, never the real ~/.pvr
        let mut p = pvrfs(args)
            .dir(&self.root)
            .env("PVR_CONFIG_DIR", &self.config_dir);
        for (k, v) in env {
            p = p.env(k, v);
        }
        p.run()
    }

    /// Remove everything but `.pvr`.
    pub fn empty_work_dir(&self) {
        for e in fs::read_dir(&self.root).unwrap().flatten() {
            if e.file_name() == ".pvr" {
                continue;
            }
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                fs::remove_dir_all(p).unwrap();
            } else {
                fs::remove_file(p).unwrap();
            }
        }
    }

    /// `sha256  path` lines of every file outside `.pvr`, sorted by path (as `sha256sum`).
    pub fn sha_listing(&self) -> String {
        files(&self.root)
            .iter()
            .map(|(p, data)| format!("{}  {p}\n", ObjectId::hash_bytes(data).to_hex()))
            .collect()
    }
}

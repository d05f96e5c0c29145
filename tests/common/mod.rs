//! Shared test helpers: repositories built through the library, the `pvrfs` binary, and a mount
//! guard that always unmounts (also when the test panics).
#![allow(dead_code)]

use pvrfs::json::{self, Value};
use pvrfs::repo::{Repo, Revision};
use pvrfs::state::{Entry, State};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `pvrfs` binary under test.
pub fn pvrfs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pvrfs"))
}

/// Run `pvrfs ARGS` and return its output (whatever the exit code).
pub fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = pvrfs();
    for a in args {
        cmd.arg(a.as_ref());
    }
    cmd.output().expect("run pvrfs")
}

/// True when real FUSE mounts can be tested; prints why not otherwise.
pub fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() {
        true
    } else {
        eprintln!("SKIPPED: /dev/fuse is absent on this machine; real-mount tests need FUSE");
        false
    }
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

/// A live mount; dropping it unmounts (lazily, if it has to) and removes the mountpoint dir.
pub struct Mount {
    pub dir: tempfile::TempDir,
}

impl Mount {
    /// `pvrfs mount REPO REV MNT EXTRA...`; panics with the command's stderr on failure.
    pub fn new(repo: &Path, rev: &str, extra: &[&str]) -> Mount {
        Self::with_env(repo, rev, extra, &[])
    }

    /// `new`, with environment variables for the daemon (e.g. `RUST_LOG`).
    pub fn with_env(repo: &Path, rev: &str, extra: &[&str], env: &[(&str, &str)]) -> Mount {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = pvrfs()
            .envs(env.iter().copied())
            .arg("mount")
            .arg(repo)
            .arg(rev)
            .arg(dir.path())
            .args(extra)
            .output()
            .expect("run pvrfs mount");
        let m = Mount { dir };
        assert!(
            out.status.success(),
            "pvrfs mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        m
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn is_mounted(&self) -> bool {
        is_mount_point(self.dir.path())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.is_mounted() {
            return;
        }
        let ok = pvrfs()
            .arg("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z", "--"])
                .arg(self.dir.path())
                .status();
        }
    }
}

/// True when `p` is a mount point of this namespace.
pub fn is_mount_point(p: &Path) -> bool {
    let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    pvrfs::mount::mount_points()
        .map(|ms| ms.iter().any(|m| m.mountpoint == p))
        .unwrap_or(false)
}

/// Every regular file under `root` as (relative path, bytes), sorted.
pub fn read_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                if p.file_name() != Some(std::ffi::OsStr::new(".pvr")) {
                    stack.push(p);
                }
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Parse JSON text into the library's value (for building expectations).
pub fn value(text: &str) -> Value {
    json::parse(text.as_bytes()).unwrap()
}

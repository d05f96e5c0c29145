//! Small helpers shared by the integration tests: a temp work dir and a way to run the real
//! `pvrfs` binary in it.
#![allow(dead_code)] // each test binary uses a different subset

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary work directory (canonical path, so it matches what pvrfs prints), with pvr's
/// config dir (`$PVR_CONFIG_DIR`, holding the global object pool) beside it.
pub struct Dir {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub config_dir: PathBuf,
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pvrfs"));
        cmd.args(args).current_dir(&self.root);
        // never touch the real ~/.pvr
        cmd.env("HOME", &self.root)
            .env("PVR_CONFIG_DIR", &self.config_dir);
        cmd.env_remove("PVRFS_CRASH_AT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Run {
            args: args.join(" "),
            out: cmd.output().expect("run pvrfs"),
        }
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
        let mut lines = Vec::new();
        list_files(&self.root, &self.root, &mut lines);
        lines.sort_by(|a: &(String, String), b| a.1.cmp(&b.1));
        lines.iter().map(|(h, p)| format!("{h}  {p}\n")).collect()
    }
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p == root.join(".pvr") {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            list_files(root, &p, out);
        } else {
            let data = fs::read(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            out.push((pvrfs::oid::ObjectId::hash_bytes(&data).to_hex(), rel));
        }
    }
}

/// Copy a directory tree with fresh (writable) files.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            fs::write(&dest, fs::read(e.path()).unwrap()).unwrap();
        }
    }
}

/// The result of one `pvrfs` run.
pub struct Run {
    pub args: String,
    pub out: Output,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    /// Assert the exit code, showing the output when it is wrong.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            code,
            "pvrfs {}\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.stdout(),
            self.stderr()
        );
        self
    }
    pub fn ok(&self) -> &Self {
        self.expect_code(0)
    }
}

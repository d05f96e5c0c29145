//! Small helpers shared by the integration tests.
#![allow(dead_code)]

use pvrfs::json;
use pvrfs::overlay::{Kind, Overlay, ROOT};
use pvrfs::repo::Repo;
use pvrfs::state::{Entry, State, DEFAULT_SPEC};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use tempfile::TempDir;

/// A temp dir on a memory file system when there is one (tests that fsync a lot run faster).
pub fn fast_tempdir() -> TempDir {
    match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(_) => tempfile::tempdir().unwrap(),
    }
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

/// One line per visible node: `path kind mode nlink content-or-target`, sorted.
pub fn dump_overlay(ov: &mut Overlay) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![(ROOT, String::new())];
    while let Some((dir, path)) = todo.pop() {
        for (name, ino, kind) in ov.readdir(dir).unwrap() {
            let p = if path.is_empty() {
                name
            } else {
                format!("{path}/{name}")
            };
            let a = ov.getattr(ino).unwrap();
            let what = match kind {
                Kind::Dir => {
                    todo.push((ino, p.clone()));
                    "dir".to_string()
                }
                Kind::Symlink => format!("-> {}", ov.readlink(ino).unwrap()),
                Kind::File => {
                    let h = ov.open(ino, false, false).unwrap();
                    let bytes = ov.read(&h, 0, a.size as usize + 1).unwrap();
                    ov.release(h);
                    assert_eq!(bytes.len() as u64, a.size, "size of {p}");
                    format!("{:?}", String::from_utf8_lossy(&bytes))
                }
            };
            out.push(format!("{p} {:o} {} {what}", a.mode, a.nlink));
        }
    }
    out.sort();
    out
}

/// `dump_overlay` of a plain directory tree.
pub fn dump_dir(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, path)) = todo.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let p = if path.is_empty() {
                name
            } else {
                format!("{path}/{name}")
            };
            let md = fs::symlink_metadata(entry.path()).unwrap();
            let what = if md.is_dir() {
                todo.push((entry.path(), p.clone()));
                "dir".to_string()
            } else if md.file_type().is_symlink() {
                format!("-> {}", fs::read_link(entry.path()).unwrap().display())
            } else {
                let bytes = fs::read(entry.path()).unwrap();
                format!("{:?}", String::from_utf8_lossy(&bytes))
            };
            let mode = if md.file_type().is_symlink() {
                0o777
            } else {
                md.permissions().mode() & 0o7777
            };
            out.push(format!("{p} {mode:o} {} {what}", md.nlink()));
        }
    }
    out.sort();
    out
}

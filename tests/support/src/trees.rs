//! Reading trees back for comparison.
//!
//! Two views: [`files`], the regular files and their bytes (what checkouts and exchanges are
//! compared by), and the node dump, one line per node — `path mode nlink what`, where `what` is
//! `dir`, `-> target`, the quoted content, or the kind and device number of a special file —
//! read from a directory ([`dump_dir`]) or from an overlay ([`dump_overlay`]) so that the two
//! compare line for line.

use pvrfs::fs::overlay::Overlay;
use pvrfs::fs::{Kind, ROOT_INO};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use tempfile::TempDir;

/// Every regular file under `root` (directories named `.pvr` left out), as sorted
/// `(relative path, bytes)`.
pub fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                if p.file_name() != Some(std::ffi::OsStr::new(".pvr")) {
                    stack.push(p);
                }
            } else if ft.is_file() {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Files (names) in a directory, sorted; empty when it does not exist.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A temp dir on a memory file system when there is one (tests that fsync a lot run faster).
pub fn fast_tempdir() -> TempDir {
    match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(_) => tempfile::tempdir().unwrap(),
    }
}

/// One line per visible node: `path kind mode nlink content-or-target`, sorted.
pub fn dump_overlay(ov: &mut Overlay) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![(ROOT_INO, String::new())];
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
                special if special.is_special() => special_line(special, a.rdev as u64),
                _ => {
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

/// How the dumps show a FIFO, socket or device node (they have no content to compare).
fn special_line(kind: Kind, rdev: u64) -> String {
    format!("{} rdev={rdev}", kind.describe())
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
            let ft = md.file_type();
            let special = if ft.is_fifo() {
                Some(Kind::Fifo)
            } else if ft.is_socket() {
                Some(Kind::Socket)
            } else if ft.is_char_device() {
                Some(Kind::CharDevice)
            } else if ft.is_block_device() {
                Some(Kind::BlockDevice)
            } else {
                None
            };
            let what = if md.is_dir() {
                todo.push((entry.path(), p.clone()));
                "dir".to_string()
            } else if let Some(kind) = special {
                // Never read: opening a FIFO would block.
                special_line(kind, md.rdev())
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

//! The reference-model harness of the copy-on-write tests.
//!
//! A system under test (the overlay driven through the library, or a real `--rw` mount) starts
//! from the same revision as a plain directory (`BASE`, [`base_repo`], [`plain_copy`]). An
//! [`OpGen`] draws seeded random operations ([`Op`]) from the plain tree as it is now; each is
//! applied to both sides — to a directory through std/libc by [`apply_to_dir`], to the overlay
//! by the test — and the results (errno included) and then the trees ([`crate::dump_dir`],
//! [`crate::dump_overlay`]) must agree.

use crate::repos::{Content, TestRepo};
use crate::trees::dump_dir;
use pvrfs::fs::Kind;
use pvrfs::json;
use rand::prelude::*;
use rand_chacha::ChaCha8Rng;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;

/// The base revision: files with their content (`.json` ones inline).
pub const BASE: &[(&str, &str)] = &[
    ("a", "base a"),
    ("x.txt", "hello"),
    ("y.json", r#"{"k": [1, 2.5]}"#),
    ("sub/a", "sub a"),
    ("sub/deep/b", "deep b"),
    ("sub/deep/y.json", "[true]"),
    ("sub2/c", "c"),
];
/// Names new paths are made of (some collide with base names on purpose).
pub const NAMES: &[&str] = &["a", "b", "x.txt", "y.json", "sub", "deep", "z"];
/// Permission bits operations choose from.
pub const MODES: &[u32] = &[0o644, 0o600, 0o755];

/// A repository whose latest revision is `BASE`.
pub fn base_repo() -> TestRepo {
    let mut t = TestRepo::new();
    for (p, c) in BASE {
        if p.ends_with(".json") {
            t.set(p, Content::Json(c));
        } else {
            t.set(p, Content::Blob(c.as_bytes()));
        }
    }
    t.commit("base");
    t
}

/// `BASE` as a checkout writes it into `dir` (which must exist): files 0644, dirs 0755.
pub fn plain_copy(dir: &Path) {
    for (path, content) in BASE {
        let p = dir.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let bytes = if path.ends_with(".json") {
            json::render_checkout(&json::parse(content.as_bytes()).unwrap())
        } else {
            content.as_bytes().to_vec()
        };
        fs::write(&p, bytes).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    }
    for d in ["", "sub", "sub/deep", "sub2"] {
        fs::set_permissions(dir.join(d), fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// One file-system operation, as data (paths relative to the tree's root).
#[derive(Debug, Clone)]
pub enum Op {
    /// Exclusive create, write `data`, then chmod `mode`.
    Create {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Write {
        path: String,
        off: u64,
        data: Vec<u8>,
    },
    Append {
        path: String,
        data: Vec<u8>,
    },
    Truncate {
        path: String,
        size: u64,
    },
    Read {
        path: String,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Unlink {
        path: String,
    },
    /// renameat2 with RENAME_NOREPLACE / RENAME_EXCHANGE.
    Rename {
        from: String,
        to: String,
        noreplace: bool,
        exchange: bool,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    /// chmod of a non-symlink.
    Chmod {
        path: String,
        mode: u32,
    },
    /// A FIFO, socket or (as root) character device, then chmod `mode`.
    Mknod {
        path: String,
        kind: Kind,
        mode: u32,
        rdev: u32,
    },
}

impl Op {
    /// The `S_IF*` type bits of a `Mknod` kind.
    pub fn ifmt(kind: Kind) -> u32 {
        match kind {
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
            Kind::CharDevice => libc::S_IFCHR,
            Kind::BlockDevice => libc::S_IFBLK,
            other => panic!("{other:?} is not made by mknod"),
        }
    }
}

/// The errno of a failed call, for comparing both sides.
pub fn errno_of<T>(r: io::Result<T>) -> Result<(), i32> {
    r.map(|_| ())
        .map_err(|e| e.raw_os_error().expect("an OS error"))
}

/// Apply `op` to the tree at `root` through std/libc (a plain directory, or a mount).
pub fn apply_to_dir(root: &Path, op: &Op) -> Result<(), i32> {
    let p = |rel: &str| root.join(rel);
    match op {
        Op::Create { path, mode, data } => errno_of(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p(path))
                .and_then(|f| {
                    f.write_all_at(data, 0)?;
                    f.set_permissions(fs::Permissions::from_mode(*mode))
                }),
        ),
        Op::Write { path, off, data } => errno_of(
            OpenOptions::new()
                .write(true)
                .open(p(path))
                .and_then(|f| f.write_all_at(data, *off)),
        ),
        Op::Append { path, data } => errno_of(
            OpenOptions::new()
                .append(true)
                .open(p(path))
                .and_then(|mut f| io::Write::write_all(&mut f, data)),
        ),
        Op::Truncate { path, size } => errno_of(
            OpenOptions::new()
                .write(true)
                .open(p(path))
                .and_then(|f| f.set_len(*size)),
        ),
        Op::Read { path } => errno_of(fs::read(p(path))),
        Op::Mkdir { path, mode } => errno_of(
            fs::create_dir(p(path))
                .and_then(|()| fs::set_permissions(p(path), fs::Permissions::from_mode(*mode))),
        ),
        Op::Rmdir { path } => errno_of(fs::remove_dir(p(path))),
        Op::Unlink { path } => errno_of(fs::remove_file(p(path))),
        Op::Rename {
            from,
            to,
            noreplace,
            exchange,
        } => {
            let mut flags = rustix::fs::RenameFlags::empty();
            if *noreplace {
                flags |= rustix::fs::RenameFlags::NOREPLACE;
            }
            if *exchange {
                flags |= rustix::fs::RenameFlags::EXCHANGE;
            }
            errno_of(
                rustix::fs::renameat_with(rustix::fs::CWD, p(from), rustix::fs::CWD, p(to), flags)
                    .map_err(io::Error::from),
            )
        }
        Op::Link { from, to } => errno_of(fs::hard_link(p(from), p(to))),
        Op::Symlink { target, path } => errno_of(std::os::unix::fs::symlink(target, p(path))),
        Op::Chmod { path, mode } => errno_of(fs::set_permissions(
            p(path),
            fs::Permissions::from_mode(*mode),
        )),
        Op::Mknod {
            path,
            kind,
            mode,
            rdev,
        } => {
            let file_type = match kind {
                Kind::Fifo => rustix::fs::FileType::Fifo,
                Kind::Socket => rustix::fs::FileType::Socket,
                Kind::CharDevice => rustix::fs::FileType::CharacterDevice,
                Kind::BlockDevice => rustix::fs::FileType::BlockDevice,
                other => panic!("{other:?} is not made by mknod"),
            };
            let made = rustix::fs::mknodat(
                rustix::fs::CWD,
                p(path),
                file_type,
                rustix::fs::Mode::from_raw_mode(*mode),
                u64::from(*rdev),
            )
            .map_err(io::Error::from);
            errno_of(
                made.and_then(|()| fs::set_permissions(p(path), fs::Permissions::from_mode(*mode))),
            )
        }
    }
}

/// The paths of a tree: (directories, the root `""` included; regular files; every node
/// but the root).
pub fn paths(root: &Path) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut dirs, mut files, mut all) = (vec![String::new()], vec![], vec![]);
    for line in dump_dir(root) {
        let path = line.split(' ').next().unwrap().to_string();
        let md = fs::symlink_metadata(root.join(&path)).unwrap();
        if md.is_dir() {
            dirs.push(path.clone());
        } else if md.is_file() {
            files.push(path.clone());
        }
        all.push(path);
    }
    (dirs, files, all)
}

/// Draws operations from a seeded generator; the mix favours namespace changes.
pub struct OpGen {
    pub rng: ChaCha8Rng,
    /// Device nodes only where they can be made (root).
    root: bool,
}

impl OpGen {
    pub fn new(seed: u64) -> OpGen {
        OpGen {
            rng: ChaCha8Rng::seed_from_u64(seed),
            root: rustix::process::geteuid().is_root(),
        }
    }

    fn pick(&mut self, v: &[String]) -> Option<String> {
        v.choose(&mut self.rng).cloned()
    }

    /// A new path: a name from `NAMES` in one of `dirs`.
    pub fn new_path(&mut self, dirs: &[String]) -> String {
        let dir = self.pick(dirs).unwrap();
        let name = *NAMES.choose(&mut self.rng).unwrap();
        if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        }
    }

    /// Some bytes: often valid JSON (for `.json` names), else random letters.
    pub fn content(&mut self) -> Vec<u8> {
        match self.rng.gen_range(0..4) {
            0 => format!("{{\"n\": {}}}", self.rng.gen_range(0..1000)).into_bytes(),
            1 => b"[1, 2, 3]".to_vec(),
            _ => {
                let n = self.rng.gen_range(0..24);
                (0..n).map(|_| self.rng.gen_range(b'a'..=b'z')).collect()
            }
        }
    }

    /// The next operation, chosen from the tree at `plain` as it is now.
    pub fn next(&mut self, plain: &Path) -> Op {
        let (dirs, files, all) = paths(plain);
        loop {
            let op = match self.rng.gen_range(0..100) {
                0..=13 => {
                    let path = self.new_path(&dirs);
                    let mode = *MODES.choose(&mut self.rng).unwrap();
                    let data = self.content();
                    Op::Create { path, mode, data }
                }
                14..=25 if !files.is_empty() => {
                    let path = self.pick(&files).unwrap();
                    let off = self.rng.gen_range(0..40u64);
                    let data = self.content();
                    Op::Write { path, off, data }
                }
                26..=30 if !files.is_empty() => {
                    let path = self.pick(&files).unwrap();
                    let data = self.content();
                    Op::Append { path, data }
                }
                31..=36 if !files.is_empty() => {
                    let path = self.pick(&files).unwrap();
                    let size = self.rng.gen_range(0..50u64);
                    Op::Truncate { path, size }
                }
                37..=45 => {
                    let path = self.new_path(&dirs);
                    let mode = if self.rng.gen_bool(0.8) { 0o755 } else { 0o700 };
                    Op::Mkdir { path, mode }
                }
                46..=51 if !all.is_empty() => Op::Rmdir {
                    path: self.pick(&all).unwrap(),
                },
                52..=60 if !all.is_empty() => Op::Unlink {
                    path: self.pick(&all).unwrap(),
                },
                61..=76 if !all.is_empty() => {
                    let from = self.pick(&all).unwrap();
                    let to = if self.rng.gen_bool(0.5) {
                        self.pick(&all).unwrap()
                    } else {
                        self.new_path(&dirs)
                    };
                    let (noreplace, exchange) = match self.rng.gen_range(0..6) {
                        0 => (true, false),
                        1 => (false, true),
                        _ => (false, false),
                    };
                    Op::Rename {
                        from,
                        to,
                        noreplace,
                        exchange,
                    }
                }
                77..=81 if !all.is_empty() => Op::Link {
                    from: self.pick(&all).unwrap(),
                    to: self.new_path(&dirs),
                },
                82..=86 => {
                    let path = self.new_path(&dirs);
                    let depth = path.matches('/').count();
                    let target = match self.pick(&all) {
                        Some(t) if self.rng.gen_bool(0.8) => format!("{}{t}", "../".repeat(depth)),
                        _ => "nowhere".to_string(),
                    };
                    Op::Symlink { target, path }
                }
                87..=90 if !all.is_empty() => {
                    let path = self.pick(&all).unwrap();
                    if fs::symlink_metadata(plain.join(&path))
                        .unwrap()
                        .file_type()
                        .is_symlink()
                    {
                        continue; // chmod follows symlinks on a directory, not in the overlay
                    }
                    let mode = *MODES.choose(&mut self.rng).unwrap();
                    Op::Chmod { path, mode }
                }
                91..=93 => {
                    let path = self.new_path(&dirs);
                    let kinds: &[Kind] = if self.root {
                        &[Kind::Fifo, Kind::Socket, Kind::CharDevice]
                    } else {
                        &[Kind::Fifo, Kind::Socket]
                    };
                    let kind = *kinds.choose(&mut self.rng).unwrap();
                    let mode = *MODES.choose(&mut self.rng).unwrap();
                    let rdev = if kind == Kind::CharDevice { 0x103 } else { 0 };
                    Op::Mknod {
                        path,
                        kind,
                        mode,
                        rdev,
                    }
                }
                _ if !files.is_empty() => Op::Read {
                    path: self.pick(&files).unwrap(),
                },
                _ => continue,
            };
            return op;
        }
    }
}

/// The state a commit records for a plain tree — regular files, symlinks as symlinks, empty
/// directories (holding nothing but special files counts as empty), non-default modes — or the
/// `.json` files that do not parse.
pub fn expected_state(plain: &Path) -> Result<pvrfs::state::State, Vec<String>> {
    let mut state = pvrfs::state::State::empty(pvrfs::state::DEFAULT_SPEC);
    let mut meta = pvrfs::state::TreeMeta::default();
    let mut bad = Vec::new();
    let mut dirs = Vec::new();
    let mut stored_under: std::collections::BTreeSet<String> = Default::default();
    let stored = |path: &str, set: &mut std::collections::BTreeSet<String>| {
        let mut p = path;
        while let Some((up, _)) = p.rsplit_once('/') {
            set.insert(up.to_string());
            p = up;
        }
    };
    for line in dump_dir(plain) {
        let path = line.split(' ').next().unwrap().to_string();
        let full = plain.join(&path);
        let md = fs::symlink_metadata(&full).unwrap();
        let mode = md.permissions().mode() & 0o7777;
        if md.file_type().is_symlink() {
            let target = fs::read_link(&full).unwrap();
            meta.links
                .insert(path.clone(), target.to_str().unwrap().to_string());
            stored(&path, &mut stored_under);
            continue;
        }
        if md.is_dir() {
            meta.set_mode(&path, mode, true);
            dirs.push(path.clone());
            stored(&path, &mut stored_under);
            continue;
        }
        if !md.is_file() {
            continue; // special files are not stored
        }
        let bytes = fs::read(&full).unwrap();
        let entry = if path.ends_with(".json") {
            match json::parse(&bytes) {
                Err(_) => {
                    bad.push(path);
                    continue;
                }
                Ok(v) if json::is_object_id_string(&v) => {
                    pvrfs::state::Entry::Object(pvrfs::oid::ObjectId::hash_bytes(&bytes))
                }
                Ok(v) => pvrfs::state::Entry::Inline(v),
            }
        } else {
            pvrfs::state::Entry::Object(pvrfs::oid::ObjectId::hash_bytes(&bytes))
        };
        meta.set_mode(&path, mode, false);
        stored(&path, &mut stored_under);
        state.insert(&path, entry).unwrap();
    }
    for d in dirs {
        if !stored_under.contains(&d) {
            meta.dirs.insert(d);
        }
    }
    if !bad.is_empty() {
        return Err(bad);
    }
    state.set_meta(meta).unwrap();
    Ok(state)
}

/// How many seeds and steps a model test runs: `VAR_SEEDS`, `VAR_STEPS` from the environment.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Lines only in `a` (for readable failure messages of two dumps).
pub fn only_in(a: &[String], b: &[String]) -> Vec<String> {
    a.iter().filter(|l| !b.contains(l)).cloned().collect()
}

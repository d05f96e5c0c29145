//! Reference-model tests of the overlay: the same seeded random operations are applied to the
//! overlay view and to a plain directory through std::fs, and the two trees must stay identical
//! (names, kinds, modes, link counts, contents, symlink targets, device numbers of FIFOs,
//! sockets and devices, and errno of failed calls),
//! across reloads from the journal, compactions and commits.
//!
//! Knobs for a wider search: `MODEL_SEEDS=N` (seeds, default 6), `MODEL_FIRST=S` (first seed),
//! `MODEL_PARANOID=1` (reload after every step), `MODEL_LOG=N` (steps shown on failure).

mod common;

use common::{dump_dir, dump_overlay, fast_tempdir, repo_with};
use pvrfs::fs::overlay::{Handle, Options, Overlay, RenameFlags, SetAttr};
use pvrfs::fs::{FsError, Kind, ToErrno};
use pvrfs::json;
use pvrfs::oid::ObjectId;
use pvrfs::repo::Repo;
use pvrfs::state::{Entry, State};
use rand::prelude::*;
use rand_chacha::ChaCha8Rng;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

const BASE: &[(&str, &[u8])] = &[
    ("a", b"base a"),
    ("x.txt", b"hello"),
    ("y.json", br#"{"k": [1, 2.5]}"#),
    ("sub/a", b"sub a"),
    ("sub/deep/b", b"deep b"),
    ("sub/deep/y.json", b"[true]"),
    ("sub2/c", b"c"),
];
const NAMES: &[&str] = &["a", "b", "x.txt", "y.json", "sub", "deep", "z"];
const MODES: &[u32] = &[0o644, 0o600, 0o755];

struct Model {
    rng: ChaCha8Rng,
    _tmp: tempfile::TempDir,
    plain: PathBuf,
    repo: Repo,
    ov: Option<Overlay>,
    uid: u32,
    log: Vec<String>,
    /// Files held open on both sides (they follow renames and outlive unlinks).
    held: Vec<(fs::File, Handle)>,
}

fn errno_of<T>(r: io::Result<T>) -> Result<(), i32> {
    r.map(|_| ())
        .map_err(|e| e.raw_os_error().expect("an OS error"))
}

fn ov_errno<T>(r: Result<T, FsError>) -> Result<(), i32> {
    r.map(|_| ()).map_err(|e| e.errno())
}

impl Model {
    fn new(seed: u64) -> Model {
        let tmp = fast_tempdir();
        let work = tmp.path().join("repo");
        fs::create_dir(&work).unwrap();
        let repo = repo_with(&work, BASE);
        let plain = tmp.path().join("plain");
        for (path, content) in BASE {
            let p = plain.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            let bytes = if path.ends_with(".json") {
                json::render_checkout(&json::parse(content).unwrap())
            } else {
                content.to_vec()
            };
            fs::write(&p, bytes).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        }
        for d in ["", "sub", "sub/deep", "sub2"] {
            fs::set_permissions(plain.join(d), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let ov = Overlay::load_or_create(&repo, "model", "latest", Options::default()).unwrap();
        Model {
            rng: ChaCha8Rng::seed_from_u64(seed),
            _tmp: tmp,
            plain,
            repo,
            ov: Some(ov),
            uid: unsafe { libc::geteuid() },
            log: Vec::new(),
            held: Vec::new(),
        }
    }

    fn ov(&mut self) -> &mut Overlay {
        self.ov.as_mut().unwrap()
    }

    /// (directories incl. the root "", regular files, everything but the root)
    fn paths(&self) -> (Vec<String>, Vec<String>, Vec<String>) {
        let (mut dirs, mut files, mut all) = (vec![String::new()], vec![], vec![]);
        for line in dump_dir(&self.plain) {
            let path = line.split(' ').next().unwrap().to_string();
            let md = fs::symlink_metadata(self.plain.join(&path)).unwrap();
            if md.is_dir() {
                dirs.push(path.clone());
            } else if md.is_file() {
                files.push(path.clone());
            }
            all.push(path);
        }
        (dirs, files, all)
    }

    fn pick<'a>(&mut self, v: &'a [String]) -> Option<&'a String> {
        v.choose(&mut self.rng)
    }

    fn new_path(&mut self, dirs: &[String]) -> String {
        let dir = self.pick(dirs).unwrap().clone();
        let name = *NAMES.choose(&mut self.rng).unwrap();
        if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        }
    }

    fn content(&mut self) -> Vec<u8> {
        match self.rng.gen_range(0..4) {
            0 => format!("{{\"n\": {}}}", self.rng.gen_range(0..1000)).into_bytes(),
            1 => b"[1, 2, 3]".to_vec(),
            _ => {
                let n = self.rng.gen_range(0..24);
                (0..n).map(|_| self.rng.gen_range(b'a'..=b'z')).collect()
            }
        }
    }

    fn parent_ino(&mut self, path: &str) -> (u64, String) {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        (
            self.ov().resolve(dir).expect("parent exists"),
            name.to_string(),
        )
    }

    fn p(&self, path: &str) -> PathBuf {
        self.plain.join(path)
    }

    /// One random operation on both sides; returns a description for failure messages.
    fn step(&mut self) -> String {
        let (dirs, files, all) = self.paths();
        let uid = self.uid;
        let op = self.rng.gen_range(0..114);
        let (desc, plain, over) = match op {
            0..=14 => {
                let path = self.new_path(&dirs);
                let mode = *MODES.choose(&mut self.rng).unwrap();
                let data = self.content();
                let plain = errno_of(
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(self.p(&path))
                        .and_then(|f| {
                            f.write_all_at(&data, 0)?;
                            f.set_permissions(fs::Permissions::from_mode(mode))
                        }),
                );
                let (parent, name) = self.parent_ino(&path);
                let ov = self.ov();
                let over = ov_errno(ov.create(parent, &name, mode, uid, uid).and_then(|(_, h)| {
                    let r = ov.write(&h, 0, &data);
                    ov.release(h);
                    r
                }));
                (format!("create {path} {mode:o} {data:?}"), plain, over)
            }
            15..=29 if !files.is_empty() => {
                let path = self.pick(&files).unwrap().clone();
                let off = self.rng.gen_range(0..40u64);
                let data = self.content();
                let plain = errno_of(
                    OpenOptions::new()
                        .write(true)
                        .open(self.p(&path))
                        .and_then(|f| f.write_all_at(&data, off)),
                );
                let ino = self.ov().resolve(&path).unwrap();
                let ov = self.ov();
                let over = ov_errno(ov.open(ino, true, false).and_then(|h| {
                    let r = ov.write(&h, off, &data);
                    ov.release(h);
                    r
                }));
                (format!("write {path} @{off} {data:?}"), plain, over)
            }
            30..=36 if !files.is_empty() => {
                let path = self.pick(&files).unwrap().clone();
                let size = self.rng.gen_range(0..50u64);
                let plain = errno_of(
                    OpenOptions::new()
                        .write(true)
                        .open(self.p(&path))
                        .and_then(|f| f.set_len(size)),
                );
                let ino = self.ov().resolve(&path).unwrap();
                let set = SetAttr {
                    size: Some(size),
                    ..Default::default()
                };
                let over = ov_errno(self.ov().setattr(ino, &set));
                (format!("truncate {path} {size}"), plain, over)
            }
            37..=46 if !all.is_empty() => {
                let path = self.pick(&all).unwrap().clone();
                let plain = errno_of(fs::remove_file(self.p(&path)));
                let (parent, name) = self.parent_ino(&path);
                let over = ov_errno(self.ov().unlink(parent, &name));
                (format!("unlink {path}"), plain, over)
            }
            47..=56 => {
                let path = self.new_path(&dirs);
                let mode = if self.rng.gen_bool(0.8) { 0o755 } else { 0o700 };
                let plain = errno_of(fs::create_dir(self.p(&path)).and_then(|()| {
                    fs::set_permissions(self.p(&path), fs::Permissions::from_mode(mode))
                }));
                let (parent, name) = self.parent_ino(&path);
                let over = ov_errno(self.ov().mkdir(parent, &name, mode, uid, uid));
                (format!("mkdir {path}"), plain, over)
            }
            57..=63 if !all.is_empty() => {
                let path = self.pick(&all).unwrap().clone();
                let plain = errno_of(fs::remove_dir(self.p(&path)));
                let (parent, name) = self.parent_ino(&path);
                let over = ov_errno(self.ov().rmdir(parent, &name));
                (format!("rmdir {path}"), plain, over)
            }
            64..=81 if !all.is_empty() => {
                let src = self.pick(&all).unwrap().clone();
                let dst = self.new_path(&dirs);
                let flags = match self.rng.gen_range(0..6) {
                    0 => RenameFlags {
                        noreplace: true,
                        exchange: false,
                    },
                    1 => RenameFlags {
                        noreplace: false,
                        exchange: true,
                    },
                    _ => RenameFlags::default(),
                };
                let mut rf = rustix::fs::RenameFlags::empty();
                if flags.noreplace {
                    rf |= rustix::fs::RenameFlags::NOREPLACE;
                }
                if flags.exchange {
                    rf |= rustix::fs::RenameFlags::EXCHANGE;
                }
                let plain = errno_of(
                    rustix::fs::renameat_with(
                        rustix::fs::CWD,
                        self.p(&src),
                        rustix::fs::CWD,
                        self.p(&dst),
                        rf,
                    )
                    .map_err(io::Error::from),
                );
                let (sp, sn) = self.parent_ino(&src);
                let (dp, dn) = self.parent_ino(&dst);
                let over = ov_errno(self.ov().rename(sp, &sn, dp, &dn, flags));
                (format!("rename {src} {dst} {flags:?}"), plain, over)
            }
            82..=87 => {
                let path = self.new_path(&dirs);
                let depth = path.matches('/').count();
                let target = match self.pick(&all).cloned() {
                    Some(t) if self.rng.gen_bool(0.8) => format!("{}{t}", "../".repeat(depth)),
                    _ => "nowhere".to_string(),
                };
                let plain = errno_of(std::os::unix::fs::symlink(&target, self.p(&path)));
                let (parent, name) = self.parent_ino(&path);
                let over = ov_errno(self.ov().symlink(parent, &name, &target, uid, uid));
                (format!("symlink {path} -> {target}"), plain, over)
            }
            88..=92 if !all.is_empty() => {
                let src = self.pick(&all).unwrap().clone();
                let dst = self.new_path(&dirs);
                let plain = errno_of(fs::hard_link(self.p(&src), self.p(&dst)));
                let ino = self.ov().resolve(&src).unwrap();
                let (parent, name) = self.parent_ino(&dst);
                let over = ov_errno(self.ov().link(ino, parent, &name));
                (format!("link {src} {dst}"), plain, over)
            }
            93..=96 if !all.is_empty() => {
                let path = self.pick(&all).unwrap().clone();
                if fs::symlink_metadata(self.p(&path))
                    .unwrap()
                    .file_type()
                    .is_symlink()
                {
                    return "skip chmod of a symlink".into();
                }
                let mode = *MODES.choose(&mut self.rng).unwrap();
                let plain = errno_of(fs::set_permissions(
                    self.p(&path),
                    fs::Permissions::from_mode(mode),
                ));
                let ino = self.ov().resolve(&path).unwrap();
                let set = SetAttr {
                    mode: Some(mode),
                    ..Default::default()
                };
                let over = ov_errno(self.ov().setattr(ino, &set));
                (format!("chmod {path} {mode:o}"), plain, over)
            }
            97 => {
                self.reload();
                return "reload".into();
            }
            98 => {
                self.ov().compact().unwrap();
                return "compact".into();
            }
            99 => return self.commit(),
            100..=102 if !files.is_empty() && self.held.len() < 4 => {
                let path = self.pick(&files).unwrap().clone();
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(self.p(&path))
                    .unwrap();
                let ino = self.ov().resolve(&path).unwrap();
                let h = self.ov().open(ino, true, false).unwrap();
                self.held.push((f, h));
                return format!("hold {path}");
            }
            103..=107 if !self.held.is_empty() => {
                let i = self.rng.gen_range(0..self.held.len());
                let off = self.rng.gen_range(0..40u64);
                let data = self.content();
                self.held[i].0.write_all_at(&data, off).unwrap();
                let h = self.held[i].1.clone();
                self.ov().write(&h, off, &data).unwrap();
                return format!("write held #{i} @{off} {data:?}");
            }
            108 if !self.held.is_empty() => {
                // Also the held files no name reaches any more: compare through the handles.
                for i in 0..self.held.len() {
                    let mut want = Vec::new();
                    let mut f = &self.held[i].0;
                    f.seek(io::SeekFrom::Start(0)).unwrap();
                    f.read_to_end(&mut want).unwrap();
                    let h = self.held[i].1.clone();
                    let got = self.ov().read(&h, 0, want.len() + 10).unwrap();
                    assert_eq!(got, want, "held #{i}");
                }
                return "compare held".into();
            }
            109 if !self.held.is_empty() => {
                let (_, h) = self.held.pop().unwrap();
                self.ov().release(h);
                return "close held".into();
            }
            110..=113 => {
                // FIFOs, sockets and (as root, who may make them) device nodes.
                let path = self.new_path(&dirs);
                let kinds: &[(Kind, u32)] = if uid == 0 {
                    &[
                        (Kind::Fifo, libc::S_IFIFO),
                        (Kind::Socket, libc::S_IFSOCK),
                        (Kind::CharDevice, libc::S_IFCHR),
                    ]
                } else {
                    &[(Kind::Fifo, libc::S_IFIFO), (Kind::Socket, libc::S_IFSOCK)]
                };
                let (kind, ifmt) = *kinds.choose(&mut self.rng).unwrap();
                let mode = *MODES.choose(&mut self.rng).unwrap();
                let rdev = if kind == Kind::CharDevice { 0x103 } else { 0 };
                let c = CString::new(self.p(&path).into_os_string().into_vec()).unwrap();
                // SAFETY: a valid NUL-terminated path.
                let plain = if unsafe { libc::mknod(c.as_ptr(), ifmt | mode, rdev) } == 0 {
                    errno_of(fs::set_permissions(
                        self.p(&path),
                        fs::Permissions::from_mode(mode),
                    ))
                } else {
                    errno_of::<()>(Err(io::Error::last_os_error()))
                };
                let (parent, name) = self.parent_ino(&path);
                let over =
                    ov_errno(
                        self.ov()
                            .mknod(parent, &name, kind, mode, rdev as u32, uid, uid),
                    );
                (format!("mknod {path} {kind:?} {mode:o}"), plain, over)
            }
            _ => return "skip".into(),
        };
        assert_eq!(over, plain, "{desc}: overlay vs plain result");
        desc
    }

    fn reload(&mut self) {
        // A remount closes every file first.
        for (_, h) in std::mem::take(&mut self.held) {
            self.ov().release(h);
        }
        drop(self.ov.take());
        match Overlay::load(&self.repo, "model", Options::default()) {
            Ok(ov) => self.ov = Some(ov),
            Err(e) => panic!("reload failed: {e}\nafter:\n  {}", self.log_tail()),
        }
    }

    fn log_tail(&self) -> String {
        let n = std::env::var("MODEL_LOG")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(12);
        self.log[self.log.len().saturating_sub(n)..].join("\n  ")
    }

    /// Commit and check the new revision holds exactly the plain tree (pvr's rules).
    fn commit(&mut self) -> String {
        let expected = expected_state(&self.plain);
        let before = self.repo.latest().unwrap().rev;
        match (self.ov().commit("model"), expected) {
            (Ok(report), Ok(state)) => {
                assert_eq!(report.revision.rev, before + 1);
                let head = self.repo.head_state().unwrap();
                let got: Vec<_> = head.iter().collect();
                let want: Vec<_> = state.iter().collect();
                assert_eq!(got, want, "committed state vs plain tree");
                assert_eq!(self.ov().status_text().unwrap(), "");
                format!("commit -> {}", report.revision.rev)
            }
            (Err(e), Err(bad)) => {
                assert!(
                    matches!(&e, pvrfs::Error::InvalidJson { path, .. } if bad.contains(path)),
                    "{e} vs {bad:?}"
                );
                assert_eq!(self.repo.latest().unwrap().rev, before);
                format!("commit refused: {e}")
            }
            (got, want) => panic!(
                "commit: got {:?}, expected {:?}",
                got.map(|r| r.revision),
                want.map(|_| ())
            ),
        }
    }
}

/// The state pvr would record for a plain tree (symlinks to files inside it as content), or the
/// `.json` files that do not parse.
fn expected_state(plain: &Path) -> Result<State, Vec<String>> {
    let root = plain.canonicalize().unwrap();
    let mut state = State::empty(pvrfs::state::DEFAULT_SPEC);
    let mut bad = Vec::new();
    for line in dump_dir(plain) {
        let path = line.split(' ').next().unwrap().to_string();
        let full = plain.join(&path);
        let md = fs::symlink_metadata(&full).unwrap();
        let target = if md.file_type().is_symlink() {
            match full.canonicalize() {
                Ok(t) if t.starts_with(&root) && t.is_file() => t,
                _ => continue,
            }
        } else if md.is_file() {
            full
        } else {
            continue;
        };
        let bytes = fs::read(&target).unwrap();
        let entry = if path.ends_with(".json") {
            match json::parse(&bytes) {
                Err(_) => {
                    bad.push(path);
                    continue;
                }
                Ok(v) if json::is_object_id_string(&v) => {
                    Entry::Object(ObjectId::hash_bytes(&bytes))
                }
                Ok(v) => Entry::Inline(v),
            }
        } else {
            Entry::Object(ObjectId::hash_bytes(&bytes))
        };
        state.insert(&path, entry).unwrap();
    }
    if bad.is_empty() {
        Ok(state)
    } else {
        Err(bad)
    }
}

fn run(seed: u64, steps: usize) {
    let mut m = Model::new(seed);
    for i in 0..steps {
        let desc = m.step();
        m.log.push(desc);
        if std::env::var_os("MODEL_PARANOID").is_some() {
            m.reload(); // every step must survive a reload
        }
        let want = dump_dir(&m.plain);
        let got = dump_overlay(m.ov());
        if got != want {
            let tail = m.log_tail();
            let only = |a: &[String], b: &[String]| -> Vec<String> {
                a.iter().filter(|l| !b.contains(l)).cloned().collect()
            };
            panic!(
                "seed {seed}, step {i}: trees differ after\n  {tail}\nonly in overlay: {:#?}\nonly in plain: {:#?}",
                only(&got, &want),
                only(&want, &got)
            );
        }
    }
    // Whatever happened, a final reload shows the same tree.
    m.reload();
    assert_eq!(
        dump_overlay(m.ov()),
        dump_dir(&m.plain),
        "seed {seed}: after final reload"
    );
}

#[test]
fn random_operations_match_a_plain_directory() {
    // MODEL_SEEDS=N widens the search (the default keeps `cargo test` quick).
    let seeds = std::env::var("MODEL_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let first: u64 = std::env::var("MODEL_FIRST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for seed in first..first + seeds {
        run(seed, 600);
    }
}

/// Random writes, truncates and reads of one file (a copied-up base blob) checked against an
/// in-memory copy, across handle reopenings, reloads and commits.
#[test]
fn one_file_under_random_writes_and_truncates_matches_memory() {
    let tmp = fast_tempdir();
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let mut model: Vec<u8> = (0..300_000).map(|_| rng.gen()).collect();
    let repo = repo_with(tmp.path(), &[("big.bin", &model)]);
    let mut ov = Overlay::load_or_create(&repo, "data", "latest", Options::default()).unwrap();
    let ino = ov.resolve("big.bin").unwrap();
    let mut h = ov.open(ino, true, false).unwrap();
    for i in 0..2000 {
        match rng.gen_range(0..20) {
            0..=9 => {
                let off = rng.gen_range(0..model.len() as u64 + 5000);
                let data: Vec<u8> = (0..rng.gen_range(1..9000)).map(|_| rng.gen()).collect();
                assert_eq!(ov.write(&h, off, &data).unwrap(), data.len());
                let end = off as usize + data.len();
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&data);
            }
            10 | 11 => {
                let size = rng.gen_range(0..model.len() as u64 + 10_000);
                let set = SetAttr {
                    size: Some(size),
                    ..Default::default()
                };
                assert_eq!(ov.setattr(ino, &set).unwrap().size, size);
                model.resize(size as usize, 0);
            }
            12..=17 => {
                let off = rng.gen_range(0..model.len() as u64 + 100);
                let len = rng.gen_range(0..70_000);
                let got = ov.read(&h, off, len).unwrap();
                let start = (off as usize).min(model.len());
                let end = (start + len).min(model.len());
                assert_eq!(got, &model[start..end], "read at {off} len {len}, step {i}");
            }
            18 => {
                ov.release(h);
                drop(ov);
                ov = Overlay::load(&repo, "data", Options::default()).unwrap();
                h = ov.open(ino, true, false).unwrap();
            }
            _ => {
                ov.fsync(&h, false).unwrap();
                ov.commit("data").unwrap();
                let id = ObjectId::hash_bytes(&model);
                assert_eq!(
                    repo.head_state().unwrap().get("big.bin"),
                    Some(&Entry::Object(id))
                );
                assert_eq!(repo.store().read_verified(&id, None).unwrap(), model);
            }
        }
        assert_eq!(ov.getattr(ino).unwrap().size, model.len() as u64);
    }
    ov.release(h);
}

//! Reference-model tests of the overlay: the same seeded random operations are applied to the
//! overlay view and to a plain directory through std::fs, and the two trees must stay identical
//! (names, kinds, modes, link counts, contents, symlink targets, device numbers of FIFOs,
//! sockets and devices, and errno of failed calls),
//! across reloads from the journal, compactions and commits.
//!
//! Knobs for a wider search: `MODEL_SEEDS=N` (seeds, default 6), `MODEL_FIRST=S` (first seed),
//! `MODEL_PARANOID=1` (reload after every step), `MODEL_LOG=N` (steps shown on failure).

use pvrfs::fs::overlay::{Changes, Handle, Options, Overlay, RenameFlags, SetAttr};
use pvrfs::fs::{FsError, ToErrno};
use pvrfs::oid::ObjectId;
use pvrfs::repo::Repo;
use pvrfs::state::Entry;
use pvrfs_testkit::model::{apply_to_dir, expected_state, only_in, plain_copy, Op, OpGen, BASE};
use pvrfs_testkit::{dump_dir, dump_overlay, fast_tempdir, repo_with};
use rand::prelude::*;
use rand_chacha::ChaCha8Rng;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

struct Model {
    gen: OpGen,
    _tmp: tempfile::TempDir,
    plain: PathBuf,
    repo: Repo,
    ov: Option<Overlay>,
    uid: u32,
    log: Vec<String>,
    /// Files held open on both sides (they follow renames and outlive unlinks).
    held: Vec<(fs::File, Handle)>,
}

fn ov_errno<T>(r: Result<T, FsError>) -> Result<(), i32> {
    r.map(|_| ()).map_err(|e| e.errno())
}

impl Model {
    fn new(seed: u64) -> Model {
        let tmp = fast_tempdir();
        let work = tmp.path().join("repo");
        fs::create_dir(&work).unwrap();
        let base: Vec<(&str, &[u8])> = BASE.iter().map(|(p, c)| (*p, c.as_bytes())).collect();
        let repo = repo_with(&work, &base);
        let plain = tmp.path().join("plain");
        fs::create_dir(&plain).unwrap();
        plain_copy(&plain);
        let ov = Overlay::load_or_create(&repo, "model", "latest", Options::default()).unwrap();
        Model {
            gen: OpGen::new(seed),
            _tmp: tmp,
            plain,
            repo,
            ov: Some(ov),
            uid: rustix::process::geteuid().as_raw(),
            log: Vec::new(),
            held: Vec::new(),
        }
    }

    fn ov(&mut self) -> &mut Overlay {
        self.ov.as_mut().unwrap()
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

    /// Apply a model operation to the overlay, as the kernel would through FUSE.
    fn apply(&mut self, op: &Op) -> Result<(), i32> {
        let uid = self.uid;
        match op {
            Op::Create { path, mode, data } => {
                let (parent, name) = self.parent_ino(path);
                let ov = self.ov();
                ov_errno(
                    ov.create(parent, &name, *mode, uid, uid)
                        .and_then(|(_, h)| {
                            let r = ov.write(&h, 0, data);
                            ov.release(h);
                            r
                        }),
                )
            }
            Op::Write { path, off, data } => self.write_at(path, Some(*off), data),
            Op::Append { path, data } => self.write_at(path, None, data),
            Op::Truncate { path, size } => {
                let Some(ino) = self.ov().resolve(path) else {
                    return Err(libc::ENOENT);
                };
                let set = SetAttr {
                    size: Some(*size),
                    ..Default::default()
                };
                ov_errno(self.ov().setattr(ino, &set))
            }
            Op::Read { path } => {
                let Some(ino) = self.ov().resolve(path) else {
                    return Err(libc::ENOENT);
                };
                let ov = self.ov();
                ov_errno(ov.open(ino, false, false).and_then(|h| {
                    let r = ov.read(&h, 0, 1 << 20);
                    ov.release(h);
                    r
                }))
            }
            Op::Mkdir { path, mode } => {
                let (parent, name) = self.parent_ino(path);
                ov_errno(self.ov().mkdir(parent, &name, *mode, uid, uid))
            }
            Op::Rmdir { path } => {
                let (parent, name) = self.parent_ino(path);
                ov_errno(self.ov().rmdir(parent, &name))
            }
            Op::Unlink { path } => {
                let (parent, name) = self.parent_ino(path);
                ov_errno(self.ov().unlink(parent, &name))
            }
            Op::Rename {
                from,
                to,
                noreplace,
                exchange,
            } => {
                let flags = RenameFlags {
                    noreplace: *noreplace,
                    exchange: *exchange,
                };
                let (sp, sn) = self.parent_ino(from);
                let (dp, dn) = self.parent_ino(to);
                ov_errno(self.ov().rename(sp, &sn, dp, &dn, flags))
            }
            Op::Link { from, to } => {
                let ino = self.ov().resolve(from).unwrap();
                let (parent, name) = self.parent_ino(to);
                ov_errno(self.ov().link(ino, parent, &name))
            }
            Op::Symlink { target, path } => {
                let (parent, name) = self.parent_ino(path);
                ov_errno(self.ov().symlink(parent, &name, target, uid, uid))
            }
            Op::Chmod { path, mode } => {
                let ino = self.ov().resolve(path).unwrap();
                let set = SetAttr {
                    mode: Some(*mode),
                    ..Default::default()
                };
                ov_errno(self.ov().setattr(ino, &set))
            }
            Op::Mknod {
                path,
                kind,
                mode,
                rdev,
            } => {
                let (parent, name) = self.parent_ino(path);
                ov_errno(
                    self.ov()
                        .mknod(parent, &name, *kind, *mode, *rdev, uid, uid),
                )
            }
        }
    }

    /// Write `data` at `off` (or at the end: append) through a write handle.
    fn write_at(&mut self, path: &str, off: Option<u64>, data: &[u8]) -> Result<(), i32> {
        let Some(ino) = self.ov().resolve(path) else {
            return Err(libc::ENOENT);
        };
        let ov = self.ov();
        ov_errno(ov.open(ino, true, false).and_then(|h| {
            let off = match off {
                Some(o) => o,
                None => ov.getattr(ino)?.size,
            };
            let r = ov.write(&h, off, data);
            ov.release(h);
            r
        }))
    }

    /// One random operation on both sides, or one of the overlay's own events (reload,
    /// compaction, commit, files held open across them); returns a description.
    fn step(&mut self) -> String {
        let files = pvrfs_testkit::model::paths(&self.plain).1;
        match self.gen.rng.gen_range(0..118) {
            0..=99 => {}
            100 => {
                self.reload();
                return "reload".into();
            }
            101 => {
                self.ov().compact().unwrap();
                return "compact".into();
            }
            102 => return self.commit(),
            103..=105 if !files.is_empty() && self.held.len() < 4 => {
                let path = files.choose(&mut self.gen.rng).unwrap().clone();
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
            106..=110 if !self.held.is_empty() => {
                let i = self.gen.rng.gen_range(0..self.held.len());
                let off = self.gen.rng.gen_range(0..40u64);
                let data = self.gen.content();
                self.held[i].0.write_all_at(&data, off).unwrap();
                let h = self.held[i].1.clone();
                self.ov().write(&h, off, &data).unwrap();
                return format!("write held #{i} @{off} {data:?}");
            }
            111 if !self.held.is_empty() => {
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
            112 if !self.held.is_empty() => {
                let (_, h) = self.held.pop().unwrap();
                self.ov().release(h);
                return "close held".into();
            }
            _ => return "skip".into(),
        }
        let op = self.gen.next(&self.plain);
        let plain = apply_to_dir(&self.plain, &op);
        let over = self.apply(&op);
        let desc = format!("{op:?}");
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
                assert_eq!(
                    head.meta(),
                    state.meta(),
                    "committed metadata vs plain tree"
                );
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
            panic!(
                "seed {seed}, step {i}: trees differ after\n  {tail}\nonly in overlay: {:#?}\nonly in plain: {:#?}",
                only_in(&got, &want),
                only_in(&want, &got)
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

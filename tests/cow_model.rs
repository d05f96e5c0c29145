//! Reference-model tests of a real `--rw` mount: the same seeded random file operations run
//! through std/libc on the mount and on a plain directory holding the same revision; every
//! call must give the same result (errno included) and the trees must stay identical (names,
//! kinds, modes, link counts, contents, symlink targets, FIFOs, sockets and device numbers).
//! Midway the mount is committed, unmounted and remounted. Plus one file under random
//! reads/writes/truncates against memory, and SIGKILL of the daemon during writes and during
//! commits.
//!
//! Knobs: `COW_MODEL_SEEDS=N` (default 2), `COW_MODEL_STEPS=N` (default 1000).

mod common;

use common::{dump_dir, fuse_available, kill_daemon, pvrfs_command, Content, Mount, TestRepo};
use pvrfs::json;
use rand::prelude::*;
use rand_chacha::ChaCha8Rng;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

const BASE: &[(&str, &str)] = &[
    ("a", "base a"),
    ("x.txt", "hello"),
    ("y.json", r#"{"k": [1, 2.5]}"#),
    ("sub/a", "sub a"),
    ("sub/deep/b", "deep b"),
    ("sub/deep/y.json", "[true]"),
    ("sub2/c", "c"),
];
const NAMES: &[&str] = &["a", "b", "x.txt", "y.json", "sub", "deep", "z"];
const MODES: &[u32] = &[0o644, 0o600, 0o755];

fn base_repo() -> TestRepo {
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

fn plain_copy(dir: &Path) {
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
    for d in ["sub", "sub/deep", "sub2"] {
        fs::set_permissions(dir.join(d), fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn res<T>(r: io::Result<T>) -> Result<(), i32> {
    r.map(|_| ()).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn renameat2(a: &Path, b: &Path, flags: u32) -> io::Result<()> {
    let a = CString::new(a.as_os_str().as_bytes()).unwrap();
    let b = CString::new(b.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

struct Model {
    rng: ChaCha8Rng,
}

/// One operation, run once on each root; returns the errno of a failure.
type Op = Box<dyn Fn(&Path) -> Result<(), i32>>;

impl Model {
    fn paths(root: &Path) -> (Vec<String>, Vec<String>, Vec<String>) {
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

    fn new_path(&mut self, dirs: &[String]) -> String {
        let dir = dirs.choose(&mut self.rng).unwrap();
        let name = *NAMES.choose(&mut self.rng).unwrap();
        if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        }
    }

    fn content(&mut self) -> Vec<u8> {
        let n = self.rng.gen_range(0..24);
        (0..n).map(|_| self.rng.gen_range(b'a'..=b'z')).collect()
    }

    /// One random operation, as a closure run on each root.
    fn step(&mut self, plain: &Path) -> (String, Op) {
        let (dirs, files, all) = Self::paths(plain);
        let pick = |rng: &mut ChaCha8Rng, v: &[String]| v.choose(rng).cloned();
        match self.rng.gen_range(0..104) {
            100..=103 => {
                // FIFOs, sockets and (as root, who may make them) device nodes.
                let p = self.new_path(&dirs);
                let root = unsafe { libc::geteuid() } == 0;
                let kinds: &[u32] = if root {
                    &[libc::S_IFIFO, libc::S_IFSOCK, libc::S_IFCHR]
                } else {
                    &[libc::S_IFIFO, libc::S_IFSOCK]
                };
                let ifmt = *kinds.choose(&mut self.rng).unwrap();
                let mode = *MODES.choose(&mut self.rng).unwrap();
                let rdev = if ifmt == libc::S_IFCHR { 0x103 } else { 0 };
                (
                    format!("mknod {p} {ifmt:o} {mode:o}"),
                    Box::new(move |r: &Path| {
                        let c = CString::new(r.join(&p).as_os_str().as_bytes()).unwrap();
                        // SAFETY: a valid NUL-terminated path.
                        if unsafe { libc::mknod(c.as_ptr(), ifmt | mode, rdev) } != 0 {
                            return res::<()>(Err(io::Error::last_os_error()));
                        }
                        res(fs::set_permissions(
                            r.join(&p),
                            fs::Permissions::from_mode(mode),
                        ))
                    }),
                )
            }
            0..=14 => {
                let p = self.new_path(&dirs);
                let mode = *MODES.choose(&mut self.rng).unwrap();
                let data = self.content();
                let d = format!("create {p} {mode:o}");
                (
                    d,
                    Box::new(move |r: &Path| {
                        res(OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(r.join(&p))
                            .and_then(|f| {
                                f.write_all_at(&data, 0)?;
                                f.set_permissions(fs::Permissions::from_mode(mode))
                            }))
                    }),
                )
            }
            15..=29 if !files.is_empty() => {
                let p = pick(&mut self.rng, &files).unwrap();
                let off = self.rng.gen_range(0..40u64);
                let data = self.content();
                (
                    format!("write {p} @{off}"),
                    Box::new(move |r: &Path| {
                        res(OpenOptions::new()
                            .write(true)
                            .open(r.join(&p))
                            .and_then(|f| f.write_all_at(&data, off)))
                    }),
                )
            }
            30..=36 if !files.is_empty() => {
                let p = pick(&mut self.rng, &files).unwrap();
                let data = self.content();
                (
                    format!("append {p}"),
                    Box::new(move |r: &Path| {
                        res(OpenOptions::new()
                            .append(true)
                            .open(r.join(&p))
                            .and_then(|mut f| io::Write::write_all(&mut f, &data)))
                    }),
                )
            }
            37..=42 if !files.is_empty() => {
                let p = pick(&mut self.rng, &files).unwrap();
                let size = self.rng.gen_range(0..50u64);
                (
                    format!("truncate {p} {size}"),
                    Box::new(move |r: &Path| {
                        res(OpenOptions::new()
                            .write(true)
                            .open(r.join(&p))
                            .and_then(|f| f.set_len(size)))
                    }),
                )
            }
            43..=50 => {
                let p = self.new_path(&dirs);
                (
                    format!("mkdir {p}"),
                    Box::new(move |r: &Path| res(fs::create_dir(r.join(&p)))),
                )
            }
            51..=55 if dirs.len() > 1 => {
                // Not the root: the mountpoint is busy, a plain directory's root is not.
                let p = pick(&mut self.rng, &dirs[1..]).unwrap();
                (
                    format!("rmdir {p}"),
                    Box::new(move |r: &Path| res(fs::remove_dir(r.join(&p)))),
                )
            }
            56..=63 if !all.is_empty() => {
                let p = pick(&mut self.rng, &all).unwrap();
                (
                    format!("unlink {p}"),
                    Box::new(move |r: &Path| res(fs::remove_file(r.join(&p)))),
                )
            }
            64..=79 if !all.is_empty() => {
                let a = pick(&mut self.rng, &all).unwrap();
                let b = if self.rng.gen_bool(0.5) {
                    pick(&mut self.rng, &all).unwrap()
                } else {
                    self.new_path(&dirs)
                };
                let flags = *[0, 0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE]
                    .choose(&mut self.rng)
                    .unwrap();
                (
                    format!("rename {a} {b} flags {flags}"),
                    Box::new(move |r: &Path| res(renameat2(&r.join(&a), &r.join(&b), flags))),
                )
            }
            80..=85 if !files.is_empty() => {
                let a = pick(&mut self.rng, &files).unwrap();
                let b = self.new_path(&dirs);
                (
                    format!("link {a} {b}"),
                    Box::new(move |r: &Path| res(fs::hard_link(r.join(&a), r.join(&b)))),
                )
            }
            86..=90 => {
                let target = format!("../{}", NAMES.choose(&mut self.rng).unwrap());
                let b = self.new_path(&dirs);
                (
                    format!("symlink {target} {b}"),
                    Box::new(move |r: &Path| res(std::os::unix::fs::symlink(&target, r.join(&b)))),
                )
            }
            91..=95 if !files.is_empty() => {
                let p = pick(&mut self.rng, &files).unwrap();
                let mode = *MODES.choose(&mut self.rng).unwrap();
                (
                    format!("chmod {p} {mode:o}"),
                    Box::new(move |r: &Path| {
                        res(fs::set_permissions(
                            r.join(&p),
                            fs::Permissions::from_mode(mode),
                        ))
                    }),
                )
            }
            _ if !files.is_empty() => {
                let p = pick(&mut self.rng, &files).unwrap();
                (
                    format!("read {p}"),
                    Box::new(move |r: &Path| res(fs::read(r.join(&p)))),
                )
            }
            _ => ("noop".into(), Box::new(|_: &Path| Ok(()))),
        }
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Even seeds run with kernel passthrough (where the kernel has it), odd ones through the daemon.
fn mode(seed: u64) -> &'static [&'static str] {
    if seed % 2 == 0 {
        &["--rw"]
    } else {
        &["--rw", "--passthrough", "never"]
    }
}

fn run(seed: u64, steps: usize) {
    let t = base_repo();
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = plain_dir.path().to_path_buf();
    plain_copy(&plain);
    let mut m = Some(Mount::new(t.path(), "latest", mode(seed)));
    let mut model = Model {
        rng: ChaCha8Rng::seed_from_u64(seed),
    };
    let mut log: Vec<String> = Vec::new();
    for i in 0..steps {
        let mnt: PathBuf = m.as_ref().unwrap().path().to_path_buf();
        let (desc, op) = model.step(&plain);
        let want = op(&plain);
        let got = op(&mnt);
        log.push(format!("{desc}: {want:?}"));
        let tail = || log[log.len().saturating_sub(20)..].join("\n");
        assert_eq!(
            got,
            want,
            "seed {seed} step {i}: {desc}\nlast steps:\n{}",
            tail()
        );
        if i % 50 == 49 || i + 1 == steps {
            assert_eq!(
                dump_dir(&mnt),
                dump_dir(&plain),
                "seed {seed} step {i}\nlast steps:\n{}",
                tail()
            );
        }
        if i == steps / 2 {
            // Commit, then unmount and remount: the view must not change. Random bytes in a
            // `.json` make the commit fail first (exit 3, nothing committed); then such files
            // get valid JSON on both sides and the commit must go through.
            let commit = || {
                pvrfs_command()
                    .args(["commit", "-m", "midway", "--mount"])
                    .arg(&mnt)
                    .output()
                    .unwrap()
            };
            // (symlinks to files count: they are committed as a copy of their target)
            let invalid: Vec<String> = Model::paths(&plain)
                .2
                .into_iter()
                .filter(|p| p.ends_with(".json"))
                // (never read a FIFO named `.json`: it would block)
                .filter(|p| fs::metadata(plain.join(p)).is_ok_and(|m| m.is_file()))
                .filter(|p| fs::read(plain.join(p)).is_ok_and(|b| json::parse(&b).is_err()))
                .collect();
            let head = t.repo.latest().unwrap().rev;
            if !invalid.is_empty() {
                let out = commit();
                assert_eq!(
                    out.status.code(),
                    Some(3),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(t.repo.latest().unwrap().rev, head);
                for p in &invalid {
                    for root in [&plain, &mnt] {
                        if fs::symlink_metadata(root.join(p)).unwrap().is_symlink() {
                            fs::remove_file(root.join(p)).unwrap();
                        } else {
                            fs::write(root.join(p), b"{}").unwrap();
                        }
                    }
                }
            }
            let out = commit();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(t.repo.latest().unwrap().rev, head + 1);
            assert_eq!(dump_dir(&mnt), dump_dir(&plain));
            drop(m.take());
            m = Some(Mount::new(t.path(), "latest", mode(seed)));
            assert_eq!(dump_dir(m.as_ref().unwrap().path()), dump_dir(&plain));
        }
    }
}

#[test]
fn random_operations_on_a_mount_match_a_plain_directory() {
    if !fuse_available() {
        return;
    }
    for seed in 0..env_or("COW_MODEL_SEEDS", 2) as u64 {
        run(seed, env_or("COW_MODEL_STEPS", 1000));
    }
}

#[test]
fn one_file_under_random_io_matches_memory() {
    if !fuse_available() {
        return;
    }
    for seed in [0, 1] {
        one_file(seed);
    }
}

fn one_file(seed: u64) {
    let mut t = TestRepo::new();
    let init: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    t.set("f", Content::Blob(&init));
    t.commit("base");
    let m = Mount::new(t.path(), "latest", mode(seed));
    let mut mem = init.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ops = Vec::new();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("f"))
        .unwrap();
    for i in 0..2000 {
        match rng.gen_range(0..10) {
            0..=4 => {
                let off = rng.gen_range(0..400_000usize);
                let len = rng.gen_range(0..70_000usize);
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                f.write_all_at(&data, off as u64).unwrap();
                ops.push(format!("write {len} @ {off}"));
                if len > 0 {
                    if mem.len() < off + len {
                        mem.resize(off + len, 0);
                    }
                    mem[off..off + len].copy_from_slice(&data);
                }
            }
            5..=7 => {
                let off = rng.gen_range(0..450_000usize);
                let len = rng.gen_range(0..100_000usize);
                let mut buf = vec![0; len];
                let n = read_full(&f, &mut buf, off as u64);
                let want = &mem[off.min(mem.len())..(off + len).min(mem.len())];
                assert_eq!(&buf[..n], want, "step {i}: read {len} @ {off}");
            }
            _ => {
                let size = rng.gen_range(0..400_000usize);
                f.set_len(size as u64).unwrap();
                ops.push(format!("truncate {size}"));
                mem.resize(size, 0);
            }
        }
        assert_eq!(
            f.metadata().unwrap().len(),
            mem.len() as u64,
            "step {i}: {ops:?}"
        );
    }
    drop(f);
    assert_eq!(fs::read(m.join("f")).unwrap(), mem);
}

fn read_full(f: &fs::File, buf: &mut [u8], off: u64) -> usize {
    let mut done = 0;
    while done < buf.len() {
        let n = f.read_at(&mut buf[done..], off + done as u64).unwrap();
        if n == 0 {
            break;
        }
        done += n;
    }
    done
}

/// `pvrfs fsck`'s checks through the library: every revision's state loads and every object it
/// names is present and hashes to its name.
fn assert_repo_clean(repo: &pvrfs::repo::Repo) {
    use pvrfs::state::Entry;
    use pvrfs::store::Verified;
    for rev in repo.revisions().unwrap() {
        let state = repo.load_state(&rev).unwrap();
        for (key, entry) in state.iter() {
            if let Entry::Object(id) = entry {
                assert!(
                    matches!(repo.store().verify(id).unwrap(), Verified::Ok),
                    "revision {} '{key}': object {id} missing or corrupt",
                    rev.rev
                );
            }
        }
    }
}

fn daemon_alive(mnt: &Path) -> bool {
    rustix::fs::statfs(mnt).is_ok()
}

fn clear(mnt: &Path) {
    let _ = pvrfs_command().arg("umount").arg(mnt).output();
}

/// Crash the daemon at every injection point (journal appends, object writes, the repository's
/// commit point, the overlay's rebase and compaction) while files are written, fsynced and
/// committed; after each crash a remount must show everything acknowledged, the revision must be
/// either fully committed or not at all, and the repository must be fsck-clean.
#[test]
fn crash_at_every_point_of_writes_and_commit_loses_nothing_acknowledged() {
    if !fuse_available() {
        return;
    }
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("d/f{i}"), vec![b'a' + i as u8; 5000 * (i + 1)]))
        .collect();
    let mut crashed_in_commit = 0;
    for n in 1..200u64 {
        let t = base_repo();
        let crash = n.to_string();
        // (a crash may hit the overlay's creation already: then the mount fails)
        let m = Mount {
            dir: tempfile::tempdir().unwrap(),
        };
        let mut alive = pvrfs_command()
            .arg("mount")
            .arg(t.path())
            .arg("latest")
            .arg(m.path())
            .arg("--rw")
            .env("PVRFS_CRASH_AT", &crash)
            .output()
            .unwrap()
            .status
            .success();
        let mounted = alive;
        let mut acked = Vec::new();
        if alive && fs::create_dir(m.join("d")).is_err() {
            alive = false;
        }
        for (p, data) in files.iter().filter(|_| alive) {
            let r = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(m.join(p))
                .and_then(|f| {
                    f.write_all_at(data, 0)?;
                    f.sync_all()
                });
            if r.is_err() {
                alive = false;
                break;
            }
            acked.push((p.clone(), data.clone()));
        }
        let mut committed = false;
        if alive {
            let out = pvrfs_command()
                .args(["commit", "-m", "crashy", "--mount"])
                .arg(m.path())
                .output()
                .unwrap();
            committed = out.status.success();
            if !daemon_alive(m.path()) {
                crashed_in_commit += 1;
            }
        }
        let survived = mounted && daemon_alive(m.path());
        clear(m.path());
        drop(m);
        // Remount without crashes: whatever happened, the view has every acknowledged file.
        let m = Mount::new(t.path(), "latest", &["--rw"]);
        for (p, data) in &acked {
            assert_eq!(&fs::read(m.join(p)).unwrap(), data, "crash point {n}: {p}");
        }
        let head = t.repo.latest().unwrap();
        assert!(head.rev == 1 || head.rev == 2, "crash point {n}");
        if committed {
            assert_eq!(
                head.rev, 2,
                "crash point {n}: commit reported but not there"
            );
        }
        if head.rev == 2 {
            let state = t.repo.head_state().unwrap();
            for (p, _) in &files {
                assert!(
                    state.get(p).is_some(),
                    "crash point {n}: {p} not in revision 2"
                );
            }
        }
        assert_repo_clean(&t.repo);
        drop(m);
        if survived {
            // Past the last injection point: every point was visited.
            assert!(
                crashed_in_commit > 5,
                "only {crashed_in_commit} crashes hit the commit"
            );
            return;
        }
    }
    panic!("the daemon crashed at every one of 200 points");
}

/// A real SIGKILL at random moments of a bigger commit: all or nothing, overlay intact, clean.
#[test]
fn sigkill_during_commit_is_all_or_nothing() {
    if !fuse_available() {
        return;
    }
    for delay_ms in [0u64, 3, 10, 30, 80] {
        let t = base_repo();
        let m = Mount::new(t.path(), "latest", &["--rw"]);
        fs::create_dir(m.join("many")).unwrap();
        let mut want = Vec::new();
        for i in 0..200 {
            let data = vec![(i % 251) as u8; 20_000 + i];
            fs::write(m.join(&format!("many/{i}")), &data).unwrap();
            want.push((format!("many/{i}"), data));
        }
        let mut child = pvrfs_command()
            .args(["commit", "-m", "killed", "--mount"])
            .arg(m.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        kill_daemon(m.path());
        let _ = child.wait();
        clear(m.path());
        drop(m);
        let m = Mount::new(t.path(), "latest", &["--rw"]);
        for (p, data) in &want {
            assert_eq!(&fs::read(m.join(p)).unwrap(), data, "delay {delay_ms}: {p}");
        }
        let head = t.repo.latest().unwrap().rev;
        if head == 2 {
            let state = t.repo.head_state().unwrap();
            assert!(want.iter().all(|(p, _)| state.get(p).is_some()));
        } else {
            assert_eq!(head, 1);
        }
        assert_repo_clean(&t.repo);
    }
}

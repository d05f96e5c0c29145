//! Reference-model tests of a real `--rw` mount: the same seeded random file operations run
//! through std/libc on the mount and on a plain directory holding the same revision; every
//! call must give the same result (errno included) and the trees must stay identical (names,
//! kinds, modes, link counts, contents, symlink targets, FIFOs, sockets and device numbers).
//! Midway the mount is committed, unmounted and remounted. Plus one file under random
//! reads/writes/truncates against memory, and SIGKILL of the daemon during writes and during
//! commits.
//!
//! Knobs: `COW_MODEL_SEEDS=N` (default 2), `COW_MODEL_STEPS=N` (default 1000).

use pvrfs::json;
use pvrfs_testkit::model::{self, apply_to_dir, base_repo, env_or, plain_copy, OpGen};
use pvrfs_testkit::{dump_dir, fuse_available, kill_daemon, pvrfs, Content, Mount, TestRepo};
use rand::prelude::*;
use rand_chacha::ChaCha8Rng;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pvrfs_testkit::cow_tests!(
    random_operations_on_a_mount_match_a_plain_directory,
    one_file_under_random_io_matches_memory,
    crash_at_every_point_of_writes_and_commit_loses_nothing_acknowledged,
    sigkill_during_commit_is_all_or_nothing,
);

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
    let mut gen = OpGen::new(seed);
    let mut log: Vec<String> = Vec::new();
    for i in 0..steps {
        let mnt: PathBuf = m.as_ref().unwrap().path().to_path_buf();
        let op = gen.next(&plain);
        let desc = format!("{op:?}");
        let want = apply_to_dir(&plain, &op);
        let got = apply_to_dir(&mnt, &op);
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
                merged_dirs_as_overlayfs(dump_dir(&mnt), dump_dir(&plain)),
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
                pvrfs(["commit", "-m", "midway", "--mount"])
                    .arg(&mnt)
                    .run()
                    .out
            };
            // (only regular files: a symlink is committed as a symlink; never read a FIFO
            // named `.json`, it would block)
            let invalid: Vec<String> = model::paths(&plain)
                .2
                .into_iter()
                .filter(|p| p.ends_with(".json"))
                .filter(|p| fs::symlink_metadata(plain.join(p)).is_ok_and(|m| m.is_file()))
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
                        fs::write(root.join(p), b"{}").unwrap();
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
            // The revision holds the plain tree: files, modes, symlinks, empty directories.
            let want = model::expected_state(&plain).expect("valid JSON everywhere now");
            let got = t.repo.head_state().unwrap();
            assert_eq!(
                got.iter().collect::<Vec<_>>(),
                want.iter().collect::<Vec<_>>(),
                "seed {seed}: committed files vs plain tree"
            );
            assert_eq!(
                got.meta(),
                want.meta(),
                "seed {seed}: committed metadata vs plain tree"
            );
            assert_eq!(
                merged_dirs_as_overlayfs(dump_dir(&mnt), dump_dir(&plain)),
                dump_dir(&plain)
            );
            drop(m.take());
            m = Some(Mount::new(t.path(), "latest", mode(seed)));
            assert_eq!(
                merged_dirs_as_overlayfs(dump_dir(m.as_ref().unwrap().path()), dump_dir(&plain)),
                dump_dir(&plain)
            );
        }
    }
}

fn random_operations_on_a_mount_match_a_plain_directory() {
    if !fuse_available() {
        return;
    }
    for seed in 0..env_or("COW_MODEL_SEEDS", 2) as u64 {
        run(seed, env_or("COW_MODEL_STEPS", 1000));
    }
}

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
    // (statfs of a kernel-backend mount is answered by its upper file system, daemon or not)
    rustix::fs::statfs(mnt).is_ok() && pvrfs_testkit::daemon_pid(mnt).is_some()
}

/// On the kernel backend a directory merged with a base directory reports one link (overlayfs
/// does not count them; docs/SEMANTICS.md): where the mount says 1 for a directory, take the
/// plain directory's count. Every other line must match as it is.
fn merged_dirs_as_overlayfs(got: Vec<String>, want: Vec<String>) -> Vec<String> {
    if pvrfs_testkit::cow() != "kernel" {
        return got;
    }
    got.into_iter()
        .map(|g| {
            let Some(prefix) = g.strip_suffix(" 1 dir") else {
                return g;
            };
            want.iter()
                .find(|w| {
                    w.strip_prefix(prefix)
                        .is_some_and(|rest| rest.ends_with(" dir") && rest.len() > 4)
                })
                .cloned()
                .unwrap_or(g)
        })
        .collect()
}

fn clear(mnt: &Path) {
    let _ = pvrfs(["umount"]).arg(mnt).run();
}

/// Crash the daemon at every injection point (journal appends, object writes, the repository's
/// commit point, the overlay's rebase and compaction) while files are written, fsynced and
/// committed; after each crash a remount must show everything acknowledged, the revision must be
/// either fully committed or not at all, and the repository must be fsck-clean.
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
        let mut alive = pvrfs(["mount"])
            .arg(t.path())
            .arg("latest")
            .arg(m.path())
            .arg("--rw")
            .arg("--cow")
            .arg(pvrfs_testkit::cow())
            .env("PVRFS_CRASH_AT", &crash)
            .run()
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
            committed = pvrfs(["commit", "-m", "crashy", "--mount"])
                .arg(m.path())
                .run()
                .success();
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
        let mut child = pvrfs(["commit", "-m", "killed", "--mount"])
            .arg(m.path())
            .command()
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

//! Crash tests: a child process runs a fixed workload on an overlay and aborts at the N-th crash
//! point (`PVRFS_CRASH_AT=N`, like a `kill -9` there), for every N until it completes. After each
//! crash the overlay must load, show the tree after the last acknowledged operation or the one
//! after it (never an error or a mix), and the repository must be consistent.

use pvrfs_testkit as common;

use common::{dump_overlay, repo_with};
use pvrfs::fs::overlay::{Changes, Options, Overlay, RenameFlags, SetAttr};
use pvrfs::fs::{Kind, ROOT_INO as ROOT};
use pvrfs::repo::Repo;
use std::io::Write;
use std::path::Path;
use std::process::Command;

const BASE: &[(&str, &[u8])] = &[("a.txt", b"alpha"), ("sub/b.txt", b"beta")];
/// Each step is one overlay operation (writes have no crash point of their own).
const ORDER: [usize; 15] = [1, 2, 13, 3, 4, 5, 6, 15, 7, 8, 9, 10, 14, 11, 12];
const STEPS: usize = ORDER.len();

/// The workload; `ack(i)` is called once step `i` (1-based) has returned.
fn workload(repo: &Repo, mut ack: impl FnMut(usize, &mut Overlay)) {
    let mut ov = Overlay::load_or_create(repo, "crash", "latest", Options::default()).unwrap();
    let uid = unsafe { libc::geteuid() };
    for (done, step) in ORDER.into_iter().enumerate() {
        match step {
            1 => {
                ov.mkdir(ROOT, "d", 0o755, uid, uid).unwrap();
            }
            2 => {
                let d = ov.resolve("d").unwrap();
                let (_, h) = ov.create(d, "f", 0o644, uid, uid).unwrap();
                ov.release(h);
            }
            13 => {
                let h = ov.open(ov.resolve("d/f").unwrap(), true, false).unwrap();
                ov.write(&h, 0, b"hello").unwrap();
                ov.fsync(&h, false).unwrap();
                ov.release(h);
            }
            3 => {
                let h = ov.open(ov.resolve("a.txt").unwrap(), true, false).unwrap();
                ov.write(&h, 0, b"A").unwrap();
                ov.fsync(&h, true).unwrap();
                ov.release(h);
            }
            4 => ov
                .rename(ROOT, "d", ROOT, "e", RenameFlags::default())
                .unwrap(),
            5 => {
                ov.link(ov.resolve("e/f").unwrap(), ROOT, "g").unwrap();
            }
            6 => {
                ov.symlink(ROOT, "s", "g", uid, uid).unwrap();
            }
            15 => {
                // Special files: journaled, kept by the commits (not storable), then compacted.
                let e = ov.resolve("e").unwrap();
                ov.mknod(e, "p", Kind::Fifo, 0o640, 0, uid, uid).unwrap();
            }
            7 => {
                let set = SetAttr {
                    mode: Some(0o600),
                    ..Default::default()
                };
                ov.setattr(ov.resolve("a.txt").unwrap(), &set).unwrap();
            }
            8 => ov.unlink(ROOT, "g").unwrap(),
            9 => {
                ov.commit("crash test").unwrap();
            }
            10 => {
                let (_, h) = ov.create(ROOT, "h.json", 0o644, uid, uid).unwrap();
                ov.release(h);
            }
            14 => {
                let h = ov.open(ov.resolve("h.json").unwrap(), true, false).unwrap();
                ov.write(&h, 0, b"{\"x\": 1}").unwrap();
                ov.fsync(&h, false).unwrap();
                ov.release(h);
            }
            11 => ov.compact().unwrap(),
            12 => {
                ov.commit("second").unwrap();
            }
            _ => unreachable!(),
        }
        ack(done + 1, &mut ov);
    }
}

/// Not a test of its own: the body of the child process.
#[test]
#[ignore]
fn crash_child() {
    let Some(dir) = std::env::var_os("OVERLAY_CRASH_REPO") else {
        return;
    };
    let repo = Repo::open(Path::new(&dir)).unwrap();
    let mut out = std::io::stdout();
    workload(&repo, |i, _| {
        writeln!(out, "ack {i}").unwrap();
        out.flush().unwrap();
    });
}

#[test]
fn a_crash_at_any_point_leaves_a_loadable_overlay_and_repository() {
    // The view after each step, from an uninterrupted run (views[0]: before step 1).
    let reference = tempfile::tempdir().unwrap();
    let repo = repo_with(reference.path(), BASE);
    let mut views = Vec::new();
    {
        let mut ov = Overlay::load_or_create(&repo, "crash", "latest", Options::default()).unwrap();
        views.push(dump_overlay(&mut ov));
        drop(ov);
        Overlay::discard(&repo, "crash").unwrap();
    }
    workload(&repo, |_, ov| views.push(dump_overlay(ov)));
    let exe = std::env::current_exe().unwrap();
    let mut crashes = 0;
    for n in 1.. {
        assert!(n < 500, "the workload never completes");
        let tmp = tempfile::tempdir().unwrap();
        repo_with(tmp.path(), BASE);
        let out = Command::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("OVERLAY_CRASH_REPO", tmp.path())
            .env("PVRFS_CRASH_AT", n.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let acked = stdout
            .lines()
            // libtest prints "test crash_child ... " before the body runs: find, not prefix.
            .filter_map(|l| l.find("ack ").map(|i| &l[i + 4..]))
            .filter_map(|n| n.parse::<usize>().ok())
            .max()
            .unwrap_or(0);
        if out.status.success() {
            assert_eq!(acked, STEPS);
            break;
        }
        crashes += 1;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("injected crash"),
            "child failed otherwise:\n{stderr}"
        );
        // The repository is consistent: its head and every revision's state load.
        let repo = Repo::open(tmp.path()).unwrap();
        for rev in repo.revisions().unwrap() {
            repo.load_state(&rev).unwrap();
        }
        let ov = Overlay::load(&repo, "crash", Options::default());
        let mut ov = match ov {
            Ok(ov) => ov,
            // Only a crash while the overlay was first being created may leave none.
            Err(e) => {
                assert_eq!(acked, 0, "crash {n}: {e}");
                continue;
            }
        };
        let view = dump_overlay(&mut ov);
        let next = (acked + 1).min(STEPS);
        assert!(
            view == views[acked] || view == views[next],
            "crash point {n} after step {acked}: {view:#?}\nexpected {:#?}\nor {:#?}",
            views[acked],
            views[next]
        );
        // Whatever was committed, the overlay is based on the head and says what differs.
        assert_eq!(ov.base_rev(), repo.latest().unwrap().rev, "crash point {n}");
        match ov.status() {
            // An empty h.json between its create and its write is not JSON yet.
            Ok(_) | Err(pvrfs::Error::InvalidJson { .. }) => {}
            Err(e) => panic!("crash point {n}: status: {e}"),
        }
    }
    eprintln!("{crashes} crash points checked");
    assert!(crashes > 20, "only {crashes} crash points were reached");
}

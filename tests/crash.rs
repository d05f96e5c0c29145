//! Crash safety: `commit`, `checkout` and `apply` are killed at every crash point in turn
//! (`PVRFS_CRASH_AT=N` aborts the process at the N-th `fsutil::crash_point`, like `kill -9`),
//! for N = 1, 2, … until the command completes. After each crash the repository must be at the
//! old or the new revision, `fsck` clean, and the next command must work.

use pvrfs_testkit as common;

use common::{Dir, Run};
use std::fs;

const MAX_POINTS: usize = 400;

fn crash_env(n: usize) -> [(&'static str, String); 1] {
    [("PVRFS_CRASH_AT", n.to_string())]
}

fn run_crashing(d: &Dir, args: &[&str], n: usize) -> Run {
    let env = crash_env(n);
    d.pvrfs_env(args, &[(env[0].0, env[0].1.as_str())])
}

fn crashed(r: &Run) -> bool {
    r.out.status.code().is_none() && r.stderr().contains("injected crash")
}

/// A repo with one commit and a work tree holding changes, deletions and a staged file.
fn repo_with_pending_changes() -> Dir {
    let d = Dir::new();
    d.pvrfs(&["init"]).ok();
    for i in 0..8 {
        d.write(&format!("dir{}/f{i}.txt", i % 3), format!("file {i}\n"));
    }
    d.write("cfg.json", r#"{"v": 1}"#);
    d.pvrfs(&["add"]).ok();
    d.pvrfs(&["commit", "-q", "-m", "base"]).ok();
    d.write("dir0/f0.txt", "changed\n");
    d.write("cfg.json", r#"{"v": 2}"#);
    fs::remove_file(d.path("dir1/f1.txt")).unwrap();
    d.write("new/n.txt", "new\n");
    d.pvrfs(&["add", "new"]).ok();
    d
}

fn head(d: &Dir) -> Vec<u8> {
    d.read(".pvr/json")
}

fn fsck_clean(d: &Dir, what: &str) {
    let r = d.pvrfs(&["fsck"]);
    assert_eq!(
        r.code(),
        0,
        "{what}: fsck after the crash:\n{}{}",
        r.stdout(),
        r.stderr()
    );
}

#[test]
fn commit_survives_a_crash_at_every_point() {
    let reference = repo_with_pending_changes();
    let old = head(&reference);
    reference.pvrfs(&["commit", "-m", "x"]).ok();
    let new = head(&reference);
    assert_ne!(old, new);
    for n in 1..=MAX_POINTS {
        let d = repo_with_pending_changes();
        let r = run_crashing(&d, &["commit", "-m", "x"], n);
        if !crashed(&r) {
            r.ok();
            assert_eq!(head(&d), new);
            // every earlier run crashed, so n - 1 crash points were exercised
            let crashes = n - 1;
            eprintln!("{crashes} crash points");
            assert!(crashes > 3, "only {crashes} crash points were reached");
            return;
        }
        let what = format!("commit crashed at point {n}");
        let now = head(&d);
        assert!(
            now == old || now == new,
            "{what}: .pvr/json is neither old nor new"
        );
        fsck_clean(&d, &what);
        d.pvrfs(&["status"]).ok();
        // the next command works and gets to the same state
        d.pvrfs(&["commit", "-m", "x"]).ok();
        assert_eq!(head(&d), new, "{what}");
        assert_eq!(d.pvrfs(&["status"]).ok().stdout(), "", "{what}");
        let log = d.pvrfs(&["log"]).ok().stdout();
        assert!(log.lines().count() >= 3, "{what}: {log}");
    }
    panic!("commit never completed within {MAX_POINTS} crash points");
}

#[test]
fn checkout_survives_a_crash_at_every_point() {
    let setup = || {
        let d = repo_with_pending_changes();
        d.pvrfs(&["commit", "-q", "-m", "second"]).ok();
        d
    };
    let reference = setup();
    reference.pvrfs(&["checkout", "1"]).ok();
    let want = reference.sha_listing();
    for n in 1..=MAX_POINTS {
        let d = setup();
        let json = head(&d);
        let r = run_crashing(&d, &["checkout", "1"], n);
        if !crashed(&r) {
            r.ok();
            assert_eq!(d.sha_listing(), want);
            // every earlier run crashed, so n - 1 crash points were exercised
            let crashes = n - 1;
            eprintln!("{crashes} crash points");
            assert!(crashes > 3, "only {crashes} crash points were reached");
            return;
        }
        let what = format!("checkout crashed at point {n}");
        assert_eq!(head(&d), json, "{what}: checkout moved the head");
        fsck_clean(&d, &what);
        // no --force needed: nothing of the user's was at stake
        d.pvrfs(&["checkout", "1"]).ok();
        assert_eq!(d.sha_listing(), want, "{what}");
    }
    panic!("checkout never completed within {MAX_POINTS} crash points");
}

#[test]
fn apply_survives_a_crash_at_every_point() {
    let setup = repo_with_pending_changes;
    let patch = r#"{"cfg.json":{"v":3,"k":[null]},"dir2/f2.txt":null}"#;
    let reference = setup();
    let old = head(&reference);
    reference.write(".pvr/patch.json", patch);
    reference.pvrfs(&["apply", ".pvr/patch.json"]).ok();
    let new = head(&reference);
    for n in 1..=MAX_POINTS {
        let d = setup();
        d.write(".pvr/patch.json", patch);
        let r = run_crashing(&d, &["apply", ".pvr/patch.json"], n);
        if !crashed(&r) {
            r.ok();
            assert_eq!(head(&d), new);
            // every earlier run crashed, so n - 1 crash points were exercised
            let crashes = n - 1;
            eprintln!("{crashes} crash points");
            assert!(crashes > 3, "only {crashes} crash points were reached");
            return;
        }
        let what = format!("apply crashed at point {n}");
        let now = head(&d);
        assert!(
            now == old || now == new,
            "{what}: .pvr/json is neither old nor new"
        );
        fsck_clean(&d, &what);
        if now == old {
            d.pvrfs(&["apply", ".pvr/patch.json"]).ok();
        }
        assert_eq!(head(&d), new, "{what}");
        d.pvrfs(&["log"]).ok();
        fsck_clean(&d, &what);
    }
    panic!("apply never completed within {MAX_POINTS} crash points");
}

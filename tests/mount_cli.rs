//! The CLI inside mounts: with the cwd in a `--rw` mount, `diff --format rfc6902`, `diff REV`,
//! `diff A B` and `json` compare the mount's view (what a commit would make) with revisions;
//! read-only commands (`log`, `show`, `fsck`, `json REV`) inside any pvrfs mount use the
//! repository the mount serves. Real mounts, through the `Mount` guard.

use pvrfs_testkit as common;

use common::{fuse_available, pvrfs, Content, Mount, TestRepo};
use pvrfs::json;
use std::fs;

pvrfs_testkit::cow_tests!(
    diff_formats_and_revisions_inside_a_rw_mount,
    read_only_commands_inside_mounts_use_the_mounted_repository,
);

/// Two revisions: 1 = {c.json {"a":1}, f.txt "one"}, 2 = f.txt "two".
fn two_revisions() -> TestRepo {
    let mut t = TestRepo::new();
    t.set("c.json", Content::Json(r#"{"a":1}"#))
        .set("f.txt", Content::Blob(b"one"));
    t.commit("one");
    t.set("f.txt", Content::Blob(b"two"));
    t.commit("two");
    t
}

fn oid(bytes: &[u8]) -> String {
    pvrfs::oid::ObjectId::hash_bytes(bytes).to_hex()
}

fn diff_formats_and_revisions_inside_a_rw_mount() {
    if !fuse_available() {
        return;
    }
    let t = two_revisions();
    let m = Mount::new(t.path(), "latest", &["--rw"]);
    fs::write(m.join("c.json"), br#"{"a":2}"#).unwrap();
    fs::write(m.join("n.txt"), b"new").unwrap();
    let inside = m.join(".");
    let n = oid(b"new");

    // The overlay's changes as RFC 6902 (as `diff --format rfc6902` prints outside a mount).
    let patch = json::parse(
        pvrfs(["diff", "--format", "rfc6902"])
            .dir(&inside)
            .ok()
            .as_bytes(),
    )
    .unwrap();
    let expected = json::parse(
        format!(
            r#"[{{"op":"replace","path":"/c.json/a","value":2}},
                {{"op":"add","path":"/n.txt","value":"{n}"}}]"#
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(patch, expected);

    // The view against revision 1: includes what revision 2 changed.
    let merge = json::parse(pvrfs(["diff", "1"]).dir(&inside).ok().as_bytes()).unwrap();
    let two = oid(b"two");
    let expected =
        json::parse(format!(r#"{{"c.json":{{"a":2}},"f.txt":"{two}","n.txt":"{n}"}}"#).as_bytes())
            .unwrap();
    assert_eq!(merge, expected);

    // Two revisions: the mount plays no part.
    let between = pvrfs(["diff", "1", "2", "--format", "rfc6902"])
        .dir(&inside)
        .ok();
    assert!(
        between.contains("\"/f.txt\"") && !between.contains("n.txt"),
        "{between}"
    );

    // `json`: the state a commit would make now; `json 1`: revision 1 from the mount's repo.
    let view = json::parse(pvrfs(["json"]).dir(&inside).ok().as_bytes()).unwrap();
    assert_eq!(view["n.txt"], json::Value::String(n.clone()));
    assert_eq!(view["c.json"]["a"], json::Value::from(2));
    let one = json::parse(pvrfs(["json", "1"]).dir(&inside).ok().as_bytes()).unwrap();
    assert_eq!(one["f.txt"], json::Value::String(oid(b"one")));

    // The merge patch (daemon, O(change)) still works and nothing was committed meanwhile.
    assert!(pvrfs(["diff"]).dir(&inside).ok().contains("\"n.txt\""));
    assert_eq!(t.repo.latest().unwrap().rev, 2);
}

fn read_only_commands_inside_mounts_use_the_mounted_repository() {
    if !fuse_available() {
        return;
    }
    let t = two_revisions();
    for extra in [&[][..], &["--rw"][..]] {
        let m = Mount::new(t.path(), "1", extra);
        let inside = m.join(".");
        let log = pvrfs(["log"]).dir(&inside).ok();
        assert!(
            log.contains("two") && log.contains("one"),
            "{extra:?}: {log}"
        );
        assert!(pvrfs(["show", "2"]).dir(&inside).ok().contains("two"));
        let fsck = pvrfs(["fsck"]).dir(&inside).run().out;
        assert!(fsck.status.success(), "{extra:?}: fsck inside the mount");
        // `json` without a revision: the mounted revision 1 (nothing changed in the view).
        let view = json::parse(pvrfs(["json"]).dir(&inside).ok().as_bytes()).unwrap();
        assert_eq!(view["f.txt"], json::Value::String(oid(b"one")), "{extra:?}");
    }
    // A read-only mount's view is its revision: no status, an empty diff, diffs against it
    // from revisions, and a clear refusal to commit or reset.
    let ro = Mount::new(t.path(), "1", &[]);
    let inside = ro.join(".");
    assert_eq!(pvrfs(["status"]).dir(&inside).ok(), "");
    assert_eq!(pvrfs(["diff"]).dir(&inside).ok(), "{}\n");
    let d = json::parse(pvrfs(["diff", "2"]).dir(&inside).ok().as_bytes()).unwrap();
    assert_eq!(d["f.txt"], json::Value::String(oid(b"one")));
    for args in [&["commit", "-m", "x"][..], &["reset", "--mount", "."][..]] {
        let out = pvrfs(args).dir(&inside).run().out;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("read-only mount (revision 1)"),
            "{args:?}: {err}"
        );
    }
    // Outside any repository and mount, the same commands still say so.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = pvrfs(["log"]).dir(elsewhere.path()).run().out;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a pvr repository"));
}

/// Issue 11: a repository whose path holds a comma (which splits FUSE's option string), a
/// backslash (fusermount3's escape), a percent sign or a space: the mount source keeps the
/// path whole, so commands on its mounts find the repository and the `--rw` daemon.
#[test]
fn commands_work_on_mounts_of_repositories_with_odd_paths() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(r"a,b %2C\c");
    fs::create_dir(&dir).unwrap();
    let repo = common::repo_with(&dir, &[("f.txt", b"one")]);
    let m = Mount::new(&dir, "latest", &["--rw"]);
    let inside = m.join(".");
    fs::write(m.join("n.txt"), b"new").unwrap();
    assert!(pvrfs(["status"]).dir(&inside).ok().contains("n.txt"));
    pvrfs(["commit", "-m", "odd"]).dir(&inside).ok();
    assert_eq!(repo.latest().unwrap().message, "odd");
    assert!(repo.head_state().unwrap().contains("n.txt"));
    let listed = pvrfs(["mounts"]).dir(tmp.path()).ok();
    assert!(listed.contains(&format!("{}\t", dir.display())), "{listed}");
    let ro = Mount::new(&dir, "1", &[]);
    let log = pvrfs(["log"]).dir(&ro.join(".")).ok();
    assert!(log.contains("odd"), "{log}");
}

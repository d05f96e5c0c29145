//! The repository commands end to end through the `pvrfs` binary on temp repos: history
//! (log/show/diff REV/json REV), apply, fsck, gc, reset, checkout safety, add's path forms, and
//! the errors for broken input.

use pvrfs_testkit as common;

use common::Dir;
use std::fs;
use std::os::unix::fs::MetadataExt;

fn sha(data: &[u8]) -> String {
    pvrfs::oid::ObjectId::hash_bytes(data).to_hex()
}

/// A repo with one commit: rev 1 {a.txt, c.json}.
fn one_commit() -> Dir {
    let d = Dir::new();
    d.pvrfs(&["init"]).ok();
    d.write("a.txt", "one\n");
    d.write("c.json", r#"{"n": 1}"#);
    d.pvrfs(&["add"]).ok();
    d.pvrfs(&["commit", "-m", "first"]).ok();
    d
}

/// A repo with two commits: rev 1 {a.txt, c.json}, rev 2 {a.txt changed, b.txt}.
fn two_commits() -> Dir {
    let d = one_commit();
    d.write("a.txt", "two\n");
    d.write("b.txt", "bee\n");
    fs::remove_file(d.path("c.json")).unwrap();
    d.pvrfs(&["add", "b.txt"]).ok();
    d.pvrfs(&["commit", "-m", "second"]).ok();
    d
}

#[test]
fn log_show_and_revision_diffs() {
    let d = two_commits();
    let log = d.pvrfs(&["log"]).ok().stdout();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert!(
        lines[0].trim_start().starts_with("2 ") && lines[0].ends_with("second"),
        "{log}"
    );
    assert!(
        lines[1].ends_with("first") && lines[2].ends_with("init"),
        "{log}"
    );
    assert_eq!(
        d.pvrfs(&["log", "-n", "1"]).ok().stdout().lines().count(),
        1
    );

    let show = d.pvrfs(&["show", "2"]).ok().stdout();
    assert!(
        show.contains("parent   1") && show.contains("    second"),
        "{show}"
    );
    assert!(show.contains("\"c.json\": null"), "{show}");
    assert!(
        show.contains(&format!("\"b.txt\": \"{}\"", sha(b"bee\n"))),
        "{show}"
    );

    let diff = d.pvrfs(&["diff", "1", "2"]).ok().stdout();
    assert_eq!(
        diff,
        format!(
            "{{\n\t\"a.txt\": \"{}\",\n\t\"b.txt\": \"{}\",\n\t\"c.json\": null\n}}\n",
            sha(b"two\n"),
            sha(b"bee\n")
        )
    );
    let rfc = d
        .pvrfs(&["diff", "--format", "rfc6902", "1", "latest"])
        .ok()
        .stdout();
    assert!(
        rfc.contains("\"op\": \"remove\"") && rfc.contains("\"/c.json\""),
        "{rfc}"
    );
    // diff REV compares with the work tree
    d.write("a.txt", "three\n");
    let diff = d.pvrfs(&["diff", "latest~1"]).ok().stdout();
    assert!(diff.contains(&sha(b"three\n")), "{diff}");

    let json1 = d.pvrfs(&["json", "--canonical", "1"]).ok().stdout();
    assert!(json1.contains(r#""c.json":{"n":1}"#), "{json1}");
    let by_prefix = json1.trim_end().as_bytes();
    let state_id = sha(by_prefix);
    assert_eq!(
        d.pvrfs(&["json", "--canonical", &state_id[..10]])
            .ok()
            .stdout(),
        json1
    );
}

#[test]
fn errors_name_what_is_wrong() {
    let d = Dir::new();
    let r = d.pvrfs(&["status"]);
    r.expect_code(1);
    assert!(
        r.stderr().contains("not a pvr repository"),
        "{}",
        r.stderr()
    );

    let d = two_commits();
    let r = d.pvrfs(&["json", "99"]);
    r.expect_code(1);
    assert!(
        r.stderr().contains("unknown revision '99'"),
        "{}",
        r.stderr()
    );

    d.write("c.json", "{oops");
    d.pvrfs(&["add", "c.json"]).ok();
    let r = d.pvrfs(&["diff"]);
    r.expect_code(3);
    assert!(
        r.stderr().contains("JSON Unmarshal (c.json)"),
        "{}",
        r.stderr()
    );
    fs::remove_file(d.path(".pvr/new")).unwrap();
    fs::remove_file(d.path("c.json")).unwrap();

    let good = d.read(".pvr/json");
    d.write(".pvr/json", r##"{"#spec":"x","../evil":"00"}"##);
    let r = d.pvrfs(&["status"]);
    r.expect_code(3);
    assert!(
        r.stderr().contains("../evil") && r.stderr().contains(".pvr/json"),
        "{}",
        r.stderr()
    );
    d.write(".pvr/json", "{not json");
    d.pvrfs(&["status"]).expect_code(3);
    d.write(".pvr/json", good);
    d.pvrfs(&["status"]).ok();
}

#[test]
fn missing_and_corrupt_objects_fail_checkout_and_fsck() {
    let d = two_commits();
    d.pvrfs(&["fsck"]).ok();
    let bee = sha(b"bee\n");
    let obj = d.path(&format!(".pvr/objects/{bee}"));
    fs::write(&obj, "wasp\n").unwrap();
    d.empty_work_dir();
    let r = d.pvrfs(&["checkout"]);
    r.expect_code(4);
    assert!(
        r.stderr().contains(&bee) && r.stderr().contains("b.txt"),
        "{}",
        r.stderr()
    );
    assert!(
        !d.path("b.txt").exists(),
        "a corrupt object reached the work tree"
    );
    let r = d.pvrfs(&["fsck"]);
    assert_ne!(r.code(), 0);
    assert!(
        r.stdout().contains(&format!("object {bee} is corrupt")),
        "{}",
        r.stdout()
    );

    fs::remove_file(&obj).unwrap();
    let r = d.pvrfs(&["checkout"]);
    r.expect_code(4);
    assert!(
        r.stderr().contains("missing") && r.stderr().contains("b.txt"),
        "{}",
        r.stderr()
    );
    let r = d.pvrfs(&["fsck"]);
    assert_ne!(r.code(), 0);
    assert!(
        r.stdout().contains(&format!(
            "object {bee} is missing (needed by 'b.txt' in revision 2)"
        )),
        "{}",
        r.stdout()
    );
}

#[test]
fn apply_is_all_or_nothing() {
    let d = two_commits();
    let before = d.read(".pvr/json");
    // a merge patch naming an object the store lacks: refused, nothing written
    let absent = sha(b"not stored");
    d.write(
        "patches/p-missing.json",
        format!(r#"{{"new.txt":"{absent}"}}"#),
    );
    let r = d.pvrfs(&["apply", "patches/p-missing.json"]);
    assert_ne!(r.code(), 0);
    assert!(
        r.stderr().contains(&absent) && r.stderr().contains("new.txt"),
        "{}",
        r.stderr()
    );
    assert_eq!(d.read(".pvr/json"), before);
    assert_eq!(d.pvrfs(&["log"]).stdout().lines().count(), 3);
    // a JSON Patch that does not apply
    d.write("patches/p-bad.json", r#"[{"op":"remove","path":"/nope"}]"#);
    assert_ne!(d.pvrfs(&["apply", "patches/p-bad.json"]).code(), 0);
    assert_eq!(d.read(".pvr/json"), before);
    // a hostile key
    d.write("patches/p-evil.json", r#"{"../x.json":{}}"#);
    assert_ne!(d.pvrfs(&["apply", "patches/p-evil.json"]).code(), 0);
    assert_eq!(d.read(".pvr/json"), before);

    // a merge patch editing an inline value and deleting a file
    d.write(
        "patches/p1.json",
        r#"{"cfg.json":{"k":[1,null]},"b.txt":null}"#,
    );
    d.pvrfs(&["apply", "patches/p1.json", "-m", "patched"]).ok();
    let json = String::from_utf8(d.read(".pvr/json")).unwrap();
    assert!(
        json.contains(r#""cfg.json":{"k":[1,null]}"#) && !json.contains("b.txt"),
        "{json}"
    );
    assert!(d.pvrfs(&["log", "-n", "1"]).stdout().ends_with("patched\n"));
    // RFC 6902, e.g. from `diff --format rfc6902`
    d.write(
        "patches/p2.json",
        r#"[{"op":"add","path":"/cfg.json/k/-","value":null}]"#,
    );
    d.pvrfs(&["apply", "patches/p2.json"]).ok();
    let json = String::from_utf8(d.read(".pvr/json")).unwrap();
    assert!(json.contains(r#""cfg.json":{"k":[1,null,null]}"#), "{json}");
    // the work tree follows on checkout
    d.pvrfs(&["checkout", "--force"]).ok();
    assert!(!d.path("b.txt").exists());
    assert_eq!(
        d.read_string("cfg.json"),
        "{\n    \"k\": [\n        1,\n        null,\n        null\n    ]\n}"
    );
    d.pvrfs(&["fsck"]).ok();
}

#[test]
fn gc_removes_only_unreferenced_objects_of_a_private_store() {
    let d = two_commits();
    d.write("staged.txt", "staged\n");
    d.pvrfs(&["add", "staged.txt"]).ok();
    let orphan = sha(b"orphan");
    d.write(&format!(".pvr/objects/{orphan}"), "orphan");
    let r = d.pvrfs(&["gc", "--dry-run"]);
    r.ok();
    assert_eq!(r.stdout(), format!("would remove {orphan}\n"));
    assert!(d.path(&format!(".pvr/objects/{orphan}")).exists());
    d.pvrfs(&["gc"]).ok();
    assert!(!d.path(&format!(".pvr/objects/{orphan}")).exists());
    assert!(d
        .path(&format!(".pvr/objects/{}", sha(b"staged\n")))
        .exists());
    // every revision is still complete
    d.pvrfs(&["fsck"]).ok();
    d.empty_work_dir();
    d.pvrfs(&["checkout", "1"]).ok();
    assert_eq!(d.read_string("a.txt"), "one\n");

    // a shared pool is never collected
    let shared = Dir::new();
    let pool = shared.path("pool");
    let repo = shared.path("repo");
    fs::create_dir_all(&repo).unwrap();
    let r = shared.pvrfs(&[
        "-C",
        repo.to_str().unwrap(),
        "init",
        "--objects",
        pool.to_str().unwrap(),
    ]);
    r.ok();
    let r = shared.pvrfs(&["-C", repo.to_str().unwrap(), "gc"]);
    r.expect_code(2);
    assert!(r.stderr().contains("shared"), "{}", r.stderr());
}

#[test]
fn checkout_protects_changes_and_reset_discards_them() {
    let d = two_commits();
    d.write("a.txt", "edited\n");
    let r = d.pvrfs(&["checkout", "1"]);
    r.expect_code(1);
    assert!(
        r.stderr().contains("a.txt") && r.stderr().contains("--force"),
        "{}",
        r.stderr()
    );
    assert_eq!(d.read_string("a.txt"), "edited\n");
    // an untracked file where the revision has one is protected too
    d.write("a.txt", "two\n");
    d.write("c.json", "[]");
    d.pvrfs(&["checkout", "1"]).expect_code(1);
    fs::remove_file(d.path("c.json")).unwrap();
    d.pvrfs(&["checkout", "1"]).ok();
    assert_eq!(d.read_string("a.txt"), "one\n");
    assert!(!d.path("b.txt").exists());
    assert_eq!(d.read_string("c.json"), "{\n    \"n\": 1\n}");
    // the head did not move: status shows how the tree differs from it
    assert_eq!(
        d.pvrfs(&["status"]).ok().stdout(),
        "D b.txt\nC a.txt\n? c.json\n"
    );

    d.pvrfs(&["checkout", "--force"]).ok();
    d.write("a.txt", "dirty\n");
    d.write("n.txt", "new\n");
    d.pvrfs(&["add", "n.txt"]).ok();
    d.pvrfs(&["reset"]).ok();
    assert_eq!(d.read_string("a.txt"), "two\n");
    assert!(!d.path(".pvr/new").exists());
    // c.json came with revision 1's checkout, so going back to latest removed it
    assert_eq!(d.pvrfs(&["status"]).ok().stdout(), "? n.txt\n");
}

#[test]
fn hardlink_checkout_shares_the_object_file() {
    let d = two_commits();
    d.empty_work_dir();
    d.pvrfs(&["checkout", "--hardlink"]).ok();
    let obj = d.path(&format!(".pvr/objects/{}", sha(b"bee\n")));
    let a = fs::metadata(d.path("b.txt")).unwrap();
    assert_eq!(a.ino(), fs::metadata(obj).unwrap().ino());
    assert_eq!(d.pvrfs(&["status"]).ok().stdout(), "");
}

#[test]
fn add_takes_files_directories_globs_and_honours_pvrignore() {
    let d = Dir::new();
    d.pvrfs(&["init"]).ok();
    d.write("src/a.c", "a");
    d.write("src/deep/b.c", "b");
    d.write("src/deep/b.o", "o");
    d.write("docs/x.md", "x");
    d.write("build/out.bin", "bin");
    d.write(".pvrignore", "build/\n*.o\n");
    d.pvrfs(&["-C", d.path("src").to_str().unwrap(), "add", "deep"])
        .ok();
    assert_eq!(
        d.pvrfs(&["status"]).ok().stdout(),
        "A src/deep/b.c\n? .pvrignore\n? docs/x.md\n? src/a.c\n"
    );
    d.pvrfs(&["add", "*.md"]).ok();
    d.pvrfs(&["add", "src/a.c"]).ok();
    let status = d.pvrfs(&["status"]).ok().stdout();
    assert_eq!(
        status,
        "A docs/x.md\nA src/a.c\nA src/deep/b.c\n? .pvrignore\n"
    );
    let r = d.pvrfs(&["add", "nothing-*.zz"]);
    assert_ne!(r.code(), 0);
    assert!(r.stderr().contains("nothing-*.zz"), "{}", r.stderr());
    let r = d.pvrfs(&["add", "missing.txt"]);
    assert_ne!(r.code(), 0);
    assert!(r.stderr().contains("missing.txt"), "{}", r.stderr());
    // a file named explicitly is added even when ignored (as git add -f would need)
    d.pvrfs(&["add", "build/out.bin"]).ok();
    d.pvrfs(&["commit", "-q"]).ok();
    let json = String::from_utf8(d.read(".pvr/json")).unwrap();
    assert!(
        json.contains("build/out.bin") && !json.contains("b.o"),
        "{json}"
    );
}

#[test]
fn names_that_are_not_utf8_are_shown_but_never_added() {
    use std::os::unix::ffi::OsStrExt;
    let d = two_commits();
    let bad = d.root.join(std::ffi::OsStr::from_bytes(b"bad-\xff.bin"));
    fs::write(&bad, "x").unwrap();
    assert_eq!(d.pvrfs(&["status"]).ok().stdout(), "? bad-\u{FFFD}.bin\n");
    let r = d.pvrfs(&["add"]);
    assert_ne!(r.code(), 0);
    assert!(r.stderr().contains("not UTF-8"), "{}", r.stderr());
    assert!(!d.path(".pvr/new").exists());
    // the tracked files are not held hostage by it
    d.write("a.txt", "three\n");
    d.pvrfs(&["commit", "-m", "still works"]).ok();
    assert_eq!(d.pvrfs(&["status"]).ok().stdout(), "? bad-\u{FFFD}.bin\n");
}

/// A repository as the reference pvr leaves it: no `.pvr/pvrfs/`, objects in the global pool
/// (`ObjectsDir` empty → `$PVR_CONFIG_DIR/objects`), `.pvr/json` committed by pvr.
#[test]
fn a_pvr_made_repository_opens_commits_and_keeps_its_pool() {
    let d = Dir::new();
    let pool = d.config_dir.join("objects");
    fs::create_dir_all(&pool).unwrap();
    fs::write(pool.join(sha(b"hello\n")), "hello\n").unwrap();
    d.write("hello.txt", "hello\n");
    d.write("cfg.json", "{\"a\": [1, 2.50]}\n");
    d.write(
        ".pvr/json",
        format!(
            r##"{{"#spec":"pantavisor-service-system@1","cfg.json":{{"a":[1,2.5E0]}},"hello.txt":"{}"}}"##,
            sha(b"hello\n")
        ),
    );
    d.write(
        ".pvr/config",
        "{\n\t\"DefaultGetUrl\": \"\",\n\t\"DefaultPutUrl\": \"\",\n\t\"DefaultPostUrl\": \"\",\n\t\"ObjectsDir\": \"\",\n\t\"AccessTokens\": {},\n\t\"RefreshTokens\": {}\n}",
    );
    assert_eq!(d.pvrfs(&["status"]).ok().stdout(), "");
    let log = d.pvrfs(&["log"]).ok().stdout();
    assert!(log.contains("not yet recorded"), "{log}");
    d.pvrfs(&["fsck"]).ok();
    d.write("new.txt", "new\n");
    d.pvrfs(&["add", "new.txt"]).ok();
    d.pvrfs(&["commit", "-m", "from pvrfs"]).ok();
    // new objects go to the pool pvr uses, and the history starts at pvr's state
    assert!(pool.join(sha(b"new\n")).exists());
    assert_eq!(d.pvrfs(&["log"]).ok().stdout().lines().count(), 2);
    d.pvrfs(&["gc"]).expect_code(2);
    d.empty_work_dir();
    d.pvrfs(&["checkout"]).ok();
    assert_eq!(d.read_string("new.txt"), "new\n");
    assert_eq!(d.pvrfs(&["status"]).ok().stdout(), "");
}

/// `status` reads the head from `.pvr/pvrfs/headindex` while `.pvr/json` has not moved (commit
/// writes it); whatever moves the head shows at once: an edit of `.pvr/json` in place that
/// keeps its size, and a commit by the reference pvr.
#[test]
fn status_follows_the_head_wherever_it_moves() {
    let d = one_commit();
    assert!(d.path(".pvr/pvrfs/headindex").is_file());
    assert_eq!(d.pvrfs(&["status"]).ok().stdout(), "");
    // a second on, the first status records `.pvr/json`'s stat key, the next believes it
    let settle = || std::thread::sleep(std::time::Duration::from_millis(1100));
    settle();
    assert_eq!(d.pvrfs(&["status"]).ok().stdout(), "");
    assert_eq!(d.pvrfs(&["status"]).ok().stdout(), "");
    // the head edited in place, same size: a.txt's new content is now the head's
    let json = d.read_string(".pvr/json");
    let edited = json.replace(&sha(b"one\n"), &sha(b"two\n"));
    assert_eq!((edited.len(), edited != json), (json.len(), true));
    fs::write(d.path(".pvr/json"), &edited).unwrap();
    assert_eq!(d.pvrfs(&["status"]).ok().stdout(), "C a.txt\n");
    d.write("a.txt", "two\n");
    assert_eq!(d.pvrfs(&["status"]).ok().stdout(), "");
    settle();
    assert_eq!(d.pvrfs(&["status"]).ok().stdout(), "");
    fs::write(d.path(".pvr/json"), &json).unwrap();
    assert_eq!(d.pvrfs(&["status"]).ok().stdout(), "C a.txt\n");
    d.write("a.txt", "one\n");
    // pvr commits into the repository
    let Some(pvr) = common::reference::reference_pvr("status_follows_the_head_wherever_it_moves")
    else {
        return;
    };
    settle();
    assert_eq!(d.pvrfs(&["status"]).ok().stdout(), "");
    d.write("b.txt", "bee\n");
    d.write("c.json", r#"{"n": 2}"#);
    assert_eq!(d.pvrfs(&["status"]).ok().stdout(), "C c.json\n? b.txt\n");
    let home = d.config_dir.join("pvr-home");
    for args in [&["add", "b.txt"][..], &["commit", "-m", "by pvr"]] {
        let out = common::reference::run_pvr(&pvr, &d.root, &home, args);
        assert!(out.status.success(), "pvr {args:?}: {out:?}");
    }
    assert_eq!(d.pvrfs(&["status"]).ok().stdout(), "");
}

/// `status` reuses the listing of a directory that has not changed for a second or more (the
/// directory cache); every later change must still show, including a `.pvrignore` edited in
/// place (which does not touch its directory's mtime).
#[test]
fn status_sees_changes_in_directories_it_has_cached() {
    let d = Dir::new();
    d.pvrfs(&["init"]).ok();
    for f in ["a/x.txt", "a/sub/y.txt", "b/z.txt", "top.txt"] {
        d.write(f, "1\n");
    }
    d.pvrfs(&["add"]).ok();
    d.pvrfs(&["commit", "-m", "one"]).ok();
    let settle = || std::thread::sleep(std::time::Duration::from_millis(2100));
    settle();
    // the first status records the directories, the second reuses them
    assert_eq!(d.pvrfs(&["status"]).ok().stdout(), "");
    assert_eq!(d.pvrfs(&["status"]).ok().stdout(), "");
    d.write("a/sub/new.txt", "n");
    d.write("a/sub/old.log", "n");
    // (b/ stays, empty: a change of its own)
    fs::remove_file(d.path("b/z.txt")).unwrap();
    d.write("a/x.txt", "2\n");
    fs::rename(d.path("a/sub"), d.path("a/moved")).unwrap();
    assert_eq!(
        d.pvrfs(&["status"]).ok().stdout(),
        "A b/\nD a/sub/y.txt\nD b/z.txt\nC a/x.txt\n? a/moved/new.txt\n? a/moved/old.log\n? a/moved/y.txt\n"
    );
    fs::rename(d.path("a/moved"), d.path("a/sub")).unwrap();
    d.write("a/.pvrignore", "*.txt\n");
    settle();
    assert_eq!(
        d.pvrfs(&["status"]).ok().stdout(),
        "A b/\nD b/z.txt\nC a/x.txt\n? a/.pvrignore\n? a/sub/old.log\n"
    );
    assert_eq!(
        d.pvrfs(&["status"]).ok().stdout(),
        "A b/\nD b/z.txt\nC a/x.txt\n? a/.pvrignore\n? a/sub/old.log\n"
    );
    // edited in place: a/ keeps its mtime, the new rules apply below it at once
    let mtime = fs::metadata(d.path("a")).unwrap().mtime_nsec();
    d.write("a/.pvrignore", "*.log\n");
    assert_eq!(fs::metadata(d.path("a")).unwrap().mtime_nsec(), mtime);
    assert_eq!(
        d.pvrfs(&["status"]).ok().stdout(),
        "A b/\nD b/z.txt\nC a/x.txt\n? a/.pvrignore\n? a/sub/new.txt\n"
    );
    // a directory replaced by a file
    fs::remove_dir_all(d.path("b")).unwrap();
    d.write("b", "file\n");
    assert_eq!(
        d.pvrfs(&["status"]).ok().stdout(),
        "D b/z.txt\nC a/x.txt\n? a/.pvrignore\n? a/sub/new.txt\n? b\n"
    );
}

/// Long work-tree operations show a progress bar on a terminal (here a pseudo-terminal made by
/// `script`, with the bar's start delay set to 0) and never when stderr is not a terminal.
#[test]
fn add_commit_and_checkout_show_progress_on_a_terminal_only() {
    let d = Dir::new();
    d.pvrfs(&["init"]).ok();
    for i in 0..200 {
        d.write(&format!("f{i}.txt"), format!("{i}\n"));
    }
    let bin = env!("CARGO_BIN_EXE_pvrfs");
    let on_tty = |args: &str| -> String {
        let out = std::process::Command::new("script")
            .args(["-qec", &format!("{bin} {args}"), "/dev/null"])
            .current_dir(d.path("."))
            .env("PVRFS_PROGRESS_DELAY_MS", "0")
            .output()
            .expect("run script(1) from util-linux");
        assert!(out.status.success(), "{args}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        on_tty("add .").contains("adding ["),
        "no progress bar on a terminal"
    );
    for i in 0..200 {
        d.write(&format!("f{i}.txt"), format!("changed {i}\n"));
    }
    assert!(on_tty("commit -m two").contains("storing ["));
    fs::remove_file(d.path("f7.txt")).unwrap();
    assert!(on_tty("checkout --force").contains("checkout ["));
    assert_eq!(fs::read_to_string(d.path("f7.txt")).unwrap(), "changed 7\n");
    // Piped (not a terminal): nothing but the usual lines.
    for i in 0..200 {
        d.write(&format!("f{i}.txt"), format!("third {i}\n"));
    }
    let out = std::process::Command::new(bin)
        .args(["commit", "-m", "three"])
        .current_dir(d.path("."))
        .env("PVRFS_PROGRESS_DELAY_MS", "0")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains('['));
}

//! Hostile publishers (issue 11, items 1, 2 and 4): states whose keys lie under `.pvr/`, object
//! stores that point outside the repository, and patches that nest a value into itself. Each
//! entry point that accepts a state from outside (clone, get, merge, import, apply, checkout of
//! a state pvr or a hand edit left in `.pvr/json`) must refuse with an error naming the key and
//! leave the repository as it was.

use pvrfs_testkit as common;

use common::*;
use std::path::Path;

/// `pvrfs ARGS` in `dir` (HOME there too), whatever its exit code.
fn run_in(dir: &Path, args: &[&str]) -> std::process::Output {
    pvrfs(args).dir(dir).run().out
}

/// `pvrfs ARGS` in `dir`, insisting on success; returns stdout.
fn pvrfs_ok(dir: &Path, args: &[&str]) -> String {
    pvrfs(args).dir(dir).ok()
}

/// `pvrfs ARGS` in `dir`, insisting on failure; returns stderr.
fn pvrfs_err(dir: &Path, args: &[&str]) -> String {
    pvrfs(args).dir(dir).fails()
}
use pvrfs::exchange::tarball;
use pvrfs::oid::ObjectId;
use pvrfs::repo::Repo;
use std::fs;

/// A config that would move the object store out of the repository.
const EVIL_CONFIG: &[u8] = b"{\n\t\"DefaultGetUrl\": \"\",\n\t\"DefaultPutUrl\": \"\",\n\t\"DefaultPostUrl\": \"\",\n\t\"ObjectsDir\": \"/tmp/pvrfs-hostile-elsewhere\",\n\t\"AccessTokens\": null,\n\t\"RefreshTokens\": null\n}";

/// The keys a publisher would use to poison a repository, each with the bytes it would plant.
fn poison_keys() -> Vec<(String, Vec<u8>)> {
    let poison = b"not what the name says".to_vec();
    // An object planted under the name of *other* bytes: later gets would trust it.
    let victim = ObjectId::hash_bytes(b"the real bytes");
    vec![
        (".pvr/config".into(), EVIL_CONFIG.to_vec()),
        (format!(".pvr/objects/{victim}"), poison.clone()),
        (".pvr/new".into(), b"{}".to_vec()),
        (".pvr/pvrfs/revs/0000000009.json".into(), poison),
    ]
}

/// A plain-directory publication (`json` + `objects/`) holding `key` plus an ordinary file.
fn publish_dir(root: &Path, key: &str, bytes: &[u8]) {
    fs::create_dir_all(root.join("objects")).unwrap();
    let id = ObjectId::hash_bytes(bytes);
    let ok = ObjectId::hash_bytes(b"fine");
    fs::write(root.join("objects").join(id.to_hex()), bytes).unwrap();
    fs::write(root.join("objects").join(ok.to_hex()), b"fine").unwrap();
    let json = format!(r##"{{"#spec":"x@1","{key}":"{id}","ok.txt":"{ok}"}}"##);
    fs::write(root.join("json"), json).unwrap();
}

fn assert_names_key(err: &str, key: &str) {
    assert!(
        err.contains(&format!("'{key}'")) && err.contains("metadata directory"),
        "the error should name '{key}' and say why: {err}"
    );
}

/// Everything under `.pvr/` except the lock file, to show a refused command changed nothing.
fn metadata_snapshot(workdir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                walk(root, &p, out);
            } else if !rel.ends_with("pvrfs/lock") {
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(workdir, &workdir.join(".pvr"), &mut out);
    out.sort();
    out
}

#[test]
fn clone_refuses_a_state_with_keys_under_pvr() {
    for (key, bytes) in poison_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        publish_dir(&src, &key, &bytes);
        let out = run_in(tmp.path(), &["clone", "src", "dst"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{key}: {err}");
        assert_names_key(&err, &key);
        assert!(
            !tmp.path().join("dst/.pvr").exists(),
            "{key}: clone left a repository"
        );
        assert!(!Path::new("/tmp/pvrfs-hostile-elsewhere").exists());
    }
}

#[test]
fn get_and_merge_refuse_a_state_with_keys_under_pvr_and_change_nothing() {
    for (key, bytes) in poison_keys() {
        for verb in ["get", "merge"] {
            let tmp = tempfile::tempdir().unwrap();
            let src = tmp.path().join("src");
            publish_dir(&src, &key, &bytes);
            let w = tmp.path().join("w");
            fs::create_dir(&w).unwrap();
            repo_with(&w, &[("mine", b"m")]);
            let before = metadata_snapshot(&w);
            let out = run_in(&w, &[verb, src.to_str().unwrap()]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "{verb} {key}: {err}");
            assert_names_key(&err, &key);
            assert_eq!(metadata_snapshot(&w), before, "{verb} {key}");
            // A part naming `.pvr` selects nothing valid either.
            let err = pvrfs_err(&w, &[verb, &format!("{}#.pvr", src.display())]);
            assert_names_key(&err, &key);
            assert_eq!(metadata_snapshot(&w), before, "{verb} {key} #.pvr");
        }
    }
}

#[test]
fn import_refuses_a_tarball_whose_state_has_keys_under_pvr() {
    for (key, bytes) in poison_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let id = ObjectId::hash_bytes(&bytes);
        let obj = tmp.path().join("obj");
        fs::write(&obj, &bytes).unwrap();
        let json = format!(r##"{{"#spec":"x@1","{key}":"{id}"}}"##);
        let mut tar = Vec::new();
        let objects = [tarball::ExportObject {
            id,
            path: &obj,
            len: bytes.len() as u64,
        }];
        tarball::write(&mut tar, json.as_bytes(), &objects, 0).unwrap();
        fs::write(tmp.path().join("x.tar"), tar).unwrap();
        let w = tmp.path().join("w");
        fs::create_dir(&w).unwrap();
        repo_with(&w, &[("mine", b"m")]);
        let before = metadata_snapshot(&w);
        let out = run_in(&w, &["import", "../x.tar"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{key}: {err}");
        assert_names_key(&err, &key);
        assert_eq!(metadata_snapshot(&w), before, "{key}");
        let out = run_in(tmp.path(), &["clone", "x.tar", "c"]);
        assert_eq!(out.status.code(), Some(3), "clone of the tarball: {key}");
    }
}

#[test]
fn apply_refuses_patches_that_add_keys_under_pvr() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo_with(tmp.path(), &[("mine", b"m")]);
    let id = repo.store().put_bytes(EVIL_CONFIG).unwrap();
    let before = metadata_snapshot(tmp.path());
    for patch in [
        format!(r#"{{".pvr/config":"{id}"}}"#),
        format!(r#"[{{"op":"add","path":"/.pvr~1config","value":"{id}"}}]"#),
        r#"[{"op":"copy","from":"/mine","path":"/.pvr~1new"}]"#.to_string(),
        r#"[{"op":"move","from":"/mine","path":"/.pvr"}]"#.to_string(),
    ] {
        fs::write(tmp.path().join("p.json"), &patch).unwrap();
        let out = run_in(tmp.path(), &["apply", "p.json"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{patch}: {err}");
        assert!(err.contains("'.pvr"), "{patch}: {err}");
        assert!(err.contains("metadata directory"), "{patch}: {err}");
        assert_eq!(metadata_snapshot(tmp.path()), before, "{patch}");
    }
}

/// A `.pvr/json` left by pvr or a hand edit with such a key: every command that loads it
/// refuses, and checkout writes nothing into `.pvr`.
#[test]
fn a_head_with_keys_under_pvr_is_refused_by_checkout_and_status() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo_with(tmp.path(), &[("mine", b"m")]);
    let id = repo.store().put_bytes(EVIL_CONFIG).unwrap();
    let mine = repo.store().put_bytes(b"m").unwrap();
    let json = format!(r##"{{"#spec":"x@1",".pvr/config":"{id}","mine":"{mine}"}}"##);
    fs::write(repo.json_path(), json).unwrap();
    let config_before = fs::read(tmp.path().join(".pvr/config")).unwrap();
    for args in [
        &["checkout", "--force"][..],
        &["status"],
        &["commit", "-m", "x"],
    ] {
        let out = run_in(tmp.path(), args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert_names_key(&err, ".pvr/config");
    }
    assert_eq!(
        fs::read(tmp.path().join(".pvr/config")).unwrap(),
        config_before
    );
    // Only the first component counts: `.pvrx`, `a/.pvr` and `.pvrignore` are ordinary files.
    let ok = format!(
        r##"{{"#spec":"x@1",".pvrignore":"{mine}",".pvrx/y":"{mine}","a/.pvr/z":"{mine}"}}"##
    );
    fs::write(repo.json_path(), ok).unwrap();
    let _ = Repo::open(tmp.path()).unwrap().head_state().unwrap();
}

/// Item 2: `gc` must not delete another repository's objects, however `ObjectsDir` reaches
/// them (`..` in the text, or a symlink inside `.pvr`).
#[test]
fn gc_refuses_a_store_that_resolves_outside_the_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    let theirs = repo_with(&other, &[]);
    let unreferenced = theirs
        .store()
        .put_bytes(b"theirs, not yet committed")
        .unwrap();
    let a = tmp.path().join("a");
    fs::create_dir(&a).unwrap();
    repo_with(&a, &[("mine", b"m")]);
    let config = fs::read_to_string(a.join(".pvr/config")).unwrap();
    let sneaky = config.replace(
        "\"ObjectsDir\": \".pvr/objects\"",
        "\"ObjectsDir\": \".pvr/../../other/.pvr/objects\"",
    );
    assert_ne!(config, sneaky);
    fs::write(a.join(".pvr/config"), sneaky).unwrap();
    let err = pvrfs_err(&a, &["gc"]);
    assert!(err.contains("refusing to gc"), "{err}");
    assert!(
        theirs.store().contains(&unreferenced),
        "gc deleted another repository's object"
    );

    // The same through a symlink planted as the in-repo store.
    fs::write(a.join(".pvr/config"), &config).unwrap();
    fs::remove_dir_all(a.join(".pvr/objects")).unwrap();
    std::os::unix::fs::symlink(other.join(".pvr/objects"), a.join(".pvr/objects")).unwrap();
    let err = pvrfs_err(&a, &["gc"]);
    assert!(err.contains("refusing to gc"), "{err}");
    assert!(theirs.store().contains(&unreferenced));
}

/// Item 4: a patch whose `copy` operations nest `a.json` into itself `n` times.
fn self_nesting_patch(n: usize) -> String {
    let op = r#"{"op":"copy","from":"/a.json","path":"/a.json/x"}"#;
    format!("[{}]", vec![op; n].join(","))
}

/// Apply `patch` to a fresh repository holding `a.json` = `{}`; the repository must refuse it
/// with exit 3 naming `a.json`, stay as it was, and keep working for every later command.
fn assert_apply_refused_cleanly(patch: &str, why: &str) {
    let tmp = tempfile::tempdir().unwrap();
    repo_with(tmp.path(), &[("a.json", b"{}"), ("mine", b"m")]);
    pvrfs_ok(tmp.path(), &["checkout"]);
    let before = metadata_snapshot(tmp.path());
    fs::write(tmp.path().join("p.json"), patch).unwrap();
    let out = run_in(tmp.path(), &["apply", "p.json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{why}: {err}");
    assert!(err.contains("p.json") && err.contains(why), "{why}: {err}");
    assert_eq!(metadata_snapshot(tmp.path()), before, "{why}");
    for args in [&["status"][..], &["fsck"], &["log"], &["checkout"]] {
        pvrfs_ok(tmp.path(), args);
    }
}

/// 600 self-copies nest `a.json` 600 levels deep: before the fix `apply` committed a revision
/// that status, checkout, commit and fsck then refused to load.
#[test]
fn apply_refuses_copies_that_nest_a_value_into_itself() {
    assert_apply_refused_cleanly(&self_nesting_patch(600), "'a.json'");
    // The deepest patch that stays within the limit still applies.
    let tmp = tempfile::tempdir().unwrap();
    repo_with(tmp.path(), &[("a.json", b"{}")]);
    // `{}` is depth 1 under the state object: 510 copies make 511 + 1 = 512 levels.
    fs::write(tmp.path().join("p.json"), self_nesting_patch(510)).unwrap();
    pvrfs_ok(tmp.path(), &["apply", "p.json"]);
    pvrfs_ok(tmp.path(), &["fsck"]);
    pvrfs_ok(tmp.path(), &["checkout"]);
    fs::write(tmp.path().join("p.json"), self_nesting_patch(1)).unwrap();
    let err = pvrfs_err(tmp.path(), &["apply", "p.json"]);
    assert!(err.contains("more than 512 levels"), "{err}");
}

/// ~32,000 levels overflowed the stack (the process died of SIGSEGV) before the fix.
#[test]
fn apply_of_32000_self_copies_is_refused_without_overflowing_the_stack() {
    assert_apply_refused_cleanly(&self_nesting_patch(32_000), "more than 512 levels");
}

/// Copies that each duplicate `a.json` into a new member double it per operation (2^64 values
/// after 64 operations, without ever nesting deep): refused once they would copy more values
/// than the state and the patch hold.
#[test]
fn apply_refuses_copies_that_double_the_state() {
    let ops: Vec<String> = (0..64)
        .map(|i| format!(r#"{{"op":"copy","from":"/a.json","path":"/a.json/k{i}"}}"#))
        .collect();
    assert_apply_refused_cleanly(&format!("[{}]", ops.join(",")), "would copy");
}

/// Item 3: a symlinked directory planted in the work tree must not make checkout write, or
/// `checkout --force` delete, outside the tree (every parent is opened without following
/// symlinks: `worktree::beneath`).
#[test]
fn checkout_never_writes_or_deletes_through_a_symlinked_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&w).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("victim"), b"keep me").unwrap();
    repo_with(&w, &[("dir/file", b"from the state"), ("dir/victim", b"v")]);
    std::os::unix::fs::symlink("../outside", w.join("dir")).unwrap();
    // The link is a change of the work tree: refused without --force, naming it.
    let err = pvrfs_err(&w, &["checkout"]);
    assert!(err.contains("dir"), "{err}");
    assert!(
        !outside.join("file").exists(),
        "checkout wrote through the symlink"
    );
    assert!(fs::symlink_metadata(w.join("dir")).unwrap().is_symlink());
    // --force replaces the link by the state's directory; nothing outside is touched.
    pvrfs_ok(&w, &["checkout", "--force"]);
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"keep me");
    assert!(!outside.join("file").exists());
    assert!(fs::symlink_metadata(w.join("dir")).unwrap().is_dir());
    assert_eq!(fs::read(w.join("dir/file")).unwrap(), b"from the state");
    assert_eq!(fs::read(w.join("dir/victim")).unwrap(), b"v");
}

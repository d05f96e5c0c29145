//! Hostile plain-directory sources and object stores: `json` or an object that is a FIFO (a
//! read would block for ever), a symbolic link to `/dev/zero` (a read would never end), a
//! device, a directory, or bigger than `--max-object-size`. `get`, `clone`, a get from another
//! repository, `checkout` and `fsck` must each end in a clear error naming the path, with the
//! repository as it was, never hang.

use pvrfs_testkit as common;

use common::*;
use pvrfs::oid::ObjectId;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

/// Longest any of these commands may take: every case fails at once.
const LIMIT: Duration = Duration::from_secs(60);

fn mkfifo(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
}

/// A plain directory publishing `{"a": <id of "alpha">, "big": <id of "the real big object">}`
/// with both objects in place; returns (dir, id of big).
fn published(root: &Path) -> (std::path::PathBuf, ObjectId) {
    let src = root.join("src");
    fs::create_dir_all(src.join("objects")).unwrap();
    let a = ObjectId::hash_bytes(b"alpha");
    let big = ObjectId::hash_bytes(b"the real big object");
    fs::write(
        src.join("json"),
        format!(r##"{{"#spec":"x@1","a":"{a}","big":"{big}"}}"##),
    )
    .unwrap();
    fs::write(src.join("objects").join(a.to_hex()), b"alpha").unwrap();
    fs::write(
        src.join("objects").join(big.to_hex()),
        b"the real big object",
    )
    .unwrap();
    (src, big)
}

/// `pvrfs ARGS` in a fresh repository must fail within `LIMIT` with `needle`; the head stays
/// as it was and the store holds nothing but verified objects (those fetched before the
/// failure stay: a repeated get resumes).
fn refused(root: &Path, args: &[&str], needle: &str) {
    let w = root.join("w");
    let _ = fs::remove_dir_all(&w);
    fs::create_dir(&w).unwrap();
    repo_with(&w, &[("local", b"l")]);
    let json = fs::read(w.join(".pvr/json")).unwrap();
    let run = pvrfs(args).dir(&w).run_within(LIMIT);
    assert_eq!(run.code(), 1, "{args:?}: {}", run.stderr());
    assert!(run.stderr().contains(needle), "{args:?}: {}", run.stderr());
    assert_eq!(fs::read(w.join(".pvr/json")).unwrap(), json, "{args:?}");
    let store = w.join(".pvr/objects");
    for name in names(&store) {
        let id = ObjectId::from_hex(&name).unwrap_or_else(|_| panic!("{args:?}: left {name}"));
        assert_eq!(
            ObjectId::hash_bytes(&fs::read(store.join(&name)).unwrap()),
            id,
            "{args:?}"
        );
    }
}

#[test]
fn a_published_directory_is_fetched() {
    // The baseline of the cases below.
    let tmp = tempfile::tempdir().unwrap();
    let (src, _) = published(tmp.path());
    let w = tmp.path().join("w");
    fs::create_dir(&w).unwrap();
    repo_with(&w, &[]);
    pvrfs(["get", src.to_str().unwrap()]).dir(&w).ok();
}

#[test]
fn objects_that_are_not_regular_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, big) = published(tmp.path());
    let obj = src.join("objects").join(big.to_hex());
    let s = src.to_str().unwrap();
    type Plant = fn(&Path);
    let cases: [(&str, Plant, &str); 4] = [
        ("fifo", |p| mkfifo(p), "a FIFO, not a regular file"),
        (
            "link to /dev/zero",
            |p| symlink("/dev/zero", p).unwrap(),
            "a symbolic link, not a regular file",
        ),
        (
            "link to a good copy",
            |p| {
                let copy = p.with_file_name("copy");
                fs::write(&copy, b"the real big object").unwrap();
                symlink(&copy, p).unwrap()
            },
            "a symbolic link, not a regular file",
        ),
        (
            "directory",
            |p| fs::create_dir(p).unwrap(),
            "a directory, not a regular file",
        ),
    ];
    for (what, plant, needle) in cases {
        fs::remove_file(&obj)
            .or_else(|_| fs::remove_dir(&obj))
            .unwrap();
        plant(&obj);
        refused(tmp.path(), &["get", s], needle);
        let run = pvrfs(["clone", s, "c"]).dir(tmp.path()).run_within(LIMIT);
        assert!(run.stderr().contains(needle), "{what}: {}", run.stderr());
        assert!(!tmp.path().join("c").exists(), "{what}");
    }
}

#[test]
fn a_json_that_is_not_a_regular_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, _) = published(tmp.path());
    let json = src.join("json");
    let s = src.to_str().unwrap();
    fs::remove_file(&json).unwrap();
    mkfifo(&json);
    refused(tmp.path(), &["get", s], "a FIFO, not a regular file");
    fs::remove_file(&json).unwrap();
    symlink("/dev/zero", &json).unwrap();
    refused(
        tmp.path(),
        &["get", s],
        "a character device, not a regular file",
    );
}

#[test]
fn a_directory_object_is_capped_at_max_object_size() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, big) = published(tmp.path());
    // A sparse 1 GiB file named after the object: refused by its size, nothing read.
    let obj = src.join("objects").join(big.to_hex());
    fs::OpenOptions::new()
        .write(true)
        .open(&obj)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    refused(
        tmp.path(),
        &["get", src.to_str().unwrap(), "--max-object-size", "1M"],
        "more than the limit of 1048576 bytes (--max-object-size)",
    );
}

#[test]
fn a_repository_store_holding_a_fifo_or_a_link_is_refused_not_read() {
    // Another repository as a source, and the repository's own store (checkout, fsck).
    for plant in ["fifo", "link"] {
        let tmp = tempfile::tempdir().unwrap();
        let other = tmp.path().join("other");
        fs::create_dir(&other).unwrap();
        let repo = repo_with(&other, &[("a", b"alpha"), ("b", b"beta")]);
        let id = ObjectId::hash_bytes(b"beta");
        let obj = repo.store().path_of(&id);
        fs::remove_file(&obj).unwrap();
        let needle = if plant == "fifo" {
            mkfifo(&obj);
            "a FIFO, not a regular file"
        } else {
            symlink("/dev/zero", &obj).unwrap();
            "a symbolic link, not a regular file"
        };
        refused(tmp.path(), &["get", other.to_str().unwrap()], needle);
        for args in [&["checkout", "--force"][..], &["fsck"]] {
            let run = pvrfs(args).dir(&other).run_within(LIMIT);
            assert_ne!(run.code(), 0, "{plant} {args:?}");
            assert!(
                run.stderr().contains(needle) || run.stdout().contains(needle),
                "{plant} {args:?}: {} {}",
                run.stdout(),
                run.stderr()
            );
        }
    }
}

/// A published key with a 256-byte name (or a path past 4095 bytes) could be fetched, and then
/// `status`, `diff` and `checkout` failed on it for good, and a mount could not list its
/// directory; it is refused at the door like any invalid key.
#[test]
fn a_state_no_file_system_can_hold_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, big) = published(tmp.path());
    for key in ["n".repeat(256), format!("{}f", "a/".repeat(2048))] {
        let json = serde_json::json!({ key.clone(): big.to_hex() });
        fs::write(src.join("json"), serde_json::to_vec(&json).unwrap()).unwrap();
        let w = tmp.path().join("w");
        let _ = fs::remove_dir_all(&w);
        fs::create_dir(&w).unwrap();
        repo_with(&w, &[("local", b"l")]);
        let run = pvrfs(["get", src.to_str().unwrap()])
            .dir(&w)
            .run_within(LIMIT);
        assert_eq!(run.code(), 3, "{}", run.stderr());
        assert!(
            run.stderr().contains("no file system can hold it"),
            "{}",
            run.stderr()
        );
        pvrfs(["status"]).dir(&w).ok();
    }
}

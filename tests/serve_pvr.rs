//! The reference pvr as the client of `pvrfs serve`: clone, get (with parts), merge, post,
//! putobjects and past revisions, each compared byte for byte with the same operation between
//! local repositories; bearer tokens; the same against a server whose objects live in Garage.

use pvrfs::oid::ObjectId;
use pvrfs::repo::Repo;
use pvrfs_testkit::remote::{Garage, Pvr, Serve};
use pvrfs_testkit::{files as tree, repo_with};
use std::fs;
use std::path::Path;

fn big(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(seed) >> 3) as u8)
        .collect()
}

/// `root/dev1`: a repository with parts `bsp`, `app`, `app2`, inline JSON and a 300 KB object.
fn served_repo(root: &Path) -> Repo {
    let dir = root.join("dev1");
    fs::create_dir_all(&dir).unwrap();
    let kernel = big(300_000, 7);
    repo_with(
        &dir,
        &[
            ("bsp/kernel.img", &kernel),
            (
                "bsp/run.json",
                br#"{"kernel":"kernel.img","n":[1,2.5,"x"]}"#,
            ),
            ("app/x.bin", b"app x"),
            ("app/sub/y.bin", b"app y"),
            ("app2/z.bin", b"app2 z"),
            ("top.txt", b"top\n"),
        ],
    )
}

/// A pvr repository (made by pvr) with one local file, copied to `a` and `b`.
fn two_pvr_repos(pvr: &Pvr, base: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let seed = base.join("seed");
    fs::create_dir_all(&seed).unwrap();
    pvr.ok(&seed, &["init"]);
    fs::write(seed.join("local.txt"), b"mine").unwrap();
    fs::create_dir_all(seed.join("app")).unwrap();
    fs::write(seed.join("app/old.bin"), b"old").unwrap();
    pvr.ok(&seed, &["add", "."]);
    pvr.ok(&seed, &["commit", "-m", "seed"]);
    let (a, b) = (base.join("a"), base.join("b"));
    pvrfs_testkit::copy_tree(&seed, &a);
    pvrfs_testkit::copy_tree(&seed, &b);
    (a, b)
}

fn pvr_json(dir: &Path) -> Vec<u8> {
    fs::read(dir.join(".pvr/json")).unwrap()
}

/// Everything pvr does against `serve` equals what it does against the local repository.
fn pvr_matches_local(pvr: &Pvr, serve: &Serve, root: &Path, tmp: &Path) {
    let url = serve.repo_url("dev1");
    let local = root.join("dev1/.pvr");
    let local = local.to_str().unwrap();

    // clone
    pvr.ok(tmp, &["clone", &url, "c_remote"]);
    pvr.ok(tmp, &["clone", local, "c_local"]);
    assert_eq!(
        pvr_json(&tmp.join("c_remote")),
        pvr_json(&tmp.join("c_local"))
    );
    assert_eq!(tree(&tmp.join("c_remote")), tree(&tmp.join("c_local")));
    assert!(!tree(&tmp.join("c_remote")).is_empty());

    // get and merge with parts, into repositories that have files of their own
    for (i, (cmd, frag)) in [
        ("get", "#bsp"),
        ("get", "#-app2"),
        ("merge", "#app"),
        ("get", ""),
        ("merge", ""),
    ]
    .into_iter()
    .enumerate()
    {
        let (a, b) = two_pvr_repos(pvr, &tmp.join(format!("parts{i}")));
        pvr.ok(&a, &[cmd, &format!("{url}{frag}")]);
        pvr.ok(&b, &[cmd, &format!("{local}{frag}")]);
        assert_eq!(
            String::from_utf8_lossy(&pvr_json(&a)),
            String::from_utf8_lossy(&pvr_json(&b)),
            "pvr {cmd} {frag}"
        );
        pvr.ok(&a, &["checkout"]);
        pvr.ok(&b, &["checkout"]);
        assert_eq!(tree(&a), tree(&b), "pvr {cmd} {frag}: work trees");
    }
}

/// pvr posts a new revision; the server's head is byte for byte pvr's `.pvr/json`.
fn pvr_posts(pvr: &Pvr, serve: &Serve, root: &Path, tmp: &Path) -> Vec<u8> {
    let url = serve.repo_url("dev1");
    let c = tmp.join("c_remote");
    fs::write(c.join("top.txt"), b"changed by pvr\n").unwrap();
    fs::write(c.join("new.bin"), big(70_000, 13)).unwrap();
    pvr.ok(&c, &["add", "new.bin"]);
    pvr.ok(&c, &["commit", "-m", "from pvr"]);
    let out = pvr.ok(&c, &["post", "-m", "posted by pvr", &url]);
    assert!(out.contains("Successfully posted Revision 2"), "{out}");
    let served = Repo::open(&root.join("dev1")).unwrap();
    let latest = served.latest().unwrap();
    assert_eq!((latest.rev, latest.message.as_str()), (2, "posted by pvr"));
    assert_eq!(pvr_json(&c), fs::read(served.json_path()).unwrap());
    // The revision before is still there by URL, read-only.
    pvr.ok(tmp, &["clone", &format!("{url}@1"), "c_rev1"]);
    assert_eq!(
        pvr_json(&tmp.join("c_rev1")),
        fs::read(tmp.join("c_local/.pvr/json")).unwrap()
    );
    let err = pvrfs_testkit::remote::failed(
        &pvr.run(
            &tmp.join("c_rev1"),
            &["post", "-m", "x", &format!("{url}@1")],
        ),
        "post to a past revision",
    );
    assert!(err.contains("405") && err.contains("read-only"), "{err}");

    // A post that names the revision it means to create: the second one on the same base loses.
    let d = tmp.join("c_local");
    fs::write(d.join("other.txt"), b"other").unwrap();
    pvr.ok(&d, &["add", "other.txt"]);
    pvr.ok(&d, &["commit", "-m", "other"]);
    let err = pvrfs_testkit::remote::failed(
        &pvr.run(&d, &["post", "--rev", "2", "-m", "late", &url]),
        "a stale post",
    );
    assert!(err.contains("409") && err.contains("conflict"), "{err}");
    assert_eq!(served.latest().unwrap().rev, 2);
    pvr.ok(&d, &["post", "--rev", "3", "-m", "rebased", &url]);
    assert_eq!(served.latest().unwrap().rev, 3);
    pvr_json(&d)
}

/// pvr putobjects uploads the objects alone (verified), and skips them the second time.
fn pvr_putobjects(pvr: &Pvr, serve: &Serve, tmp: &Path) -> ObjectId {
    let e = tmp.join("objs");
    fs::create_dir_all(&e).unwrap();
    pvr.ok(&e, &["init"]);
    let data = big(123_456, 31);
    fs::write(e.join("only.bin"), &data).unwrap();
    pvr.ok(&e, &["add", "."]);
    pvr.ok(&e, &["commit", "-m", "objects"]);
    let endpoint = format!("{}/objects", serve.repo_url("dev1"));
    pvr.ok(&e, &["putobjects", &endpoint]);
    let mark = serve.log_text().len();
    pvr.ok(&e, &["putobjects", &endpoint]);
    let again = serve.requests_since(mark);
    assert!(again.iter().all(|l| !l.contains(" PUT ")), "{again:?}");
    ObjectId::hash_bytes(&data)
}

#[test]
fn reference_pvr_against_serve_matches_local_repositories() {
    let Some(pvr) = Pvr::find("reference_pvr_against_serve_matches_local_repositories") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    served_repo(&root);
    let serve = Serve::start(&root, &[], &[]);
    pvr_matches_local(&pvr, &serve, &root, tmp.path());
    let head = pvr_posts(&pvr, &serve, &root, tmp.path());
    assert_eq!(head, fs::read(root.join("dev1/.pvr/json")).unwrap());
    let id = pvr_putobjects(&pvr, &serve, tmp.path());
    assert!(Repo::open(&root.join("dev1"))
        .unwrap()
        .store()
        .contains(&id));
    // Every object of every revision is in the served repository, whole.
    let out = pvrfs_testkit::remote::pvrfs_env(&root.join("dev1"), &["fsck"], &[]);
    pvrfs_testkit::remote::ok(&out, "fsck of the served repository");
}

#[test]
fn reference_pvr_against_serve_with_objects_in_garage() {
    let Some(pvr) = Pvr::find("reference_pvr_against_serve_with_objects_in_garage") else {
        return;
    };
    let Some(garage) = Garage::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    served_repo(&root);
    let store = format!("s3://{}/served", garage.bucket);
    let serve = Serve::start(&root, &["--store", &store], &garage.env());
    pvr_matches_local(&pvr, &serve, &root, tmp.path());
    pvr_posts(&pvr, &serve, &root, tmp.path());
    let id = pvr_putobjects(&pvr, &serve, tmp.path());
    // Uploads went to the bucket (presigned URLs), not to the server's disk.
    let bucket = garage.bucket();
    let key = format!("served/dev1/objects/{id}");
    assert_eq!(bucket.head(&key).unwrap().map(|h| h.len), Some(123_456));
    let served = Repo::open(&root.join("dev1")).unwrap();
    assert!(!served.store().contains(&id));
    let new_bin = ObjectId::hash_bytes(&big(70_000, 13));
    assert!(bucket
        .head(&format!("served/dev1/objects/{new_bin}"))
        .unwrap()
        .is_some());
    // And a fresh pvr clone of revision 2 gets them from the bucket.
    pvr.ok(
        tmp.path(),
        &["clone", &format!("{}@2", serve.repo_url("dev1")), "again"],
    );
    assert_eq!(
        tree(&tmp.path().join("again")),
        tree(&tmp.path().join("c_remote"))
    );
    assert_eq!(
        fs::read(tmp.path().join("again/new.bin")).unwrap(),
        big(70_000, 13)
    );
}

#[test]
fn reference_pvr_and_tokens() {
    let Some(pvr) = Pvr::find("reference_pvr_and_tokens") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    served_repo(&root);
    let tokens = tmp.path().join("tokens");
    fs::write(
        &tokens,
        "reader-token-0123456789 read dev1\nwriter-token-0123456789 write dev1\n",
    )
    .unwrap();
    let serve = Serve::start(&root, &["--tokens", tokens.to_str().unwrap()], &[]);
    let url = serve.repo_url("dev1");
    let t = tmp.path();
    // No token: pvr stops at once (no interactive login against us) and gets nothing.
    let out = pvr.run(t, &["clone", &url, "none"]);
    assert!(
        !out.status.success() && out.status.code() != Some(124),
        "{out:?}"
    );
    assert!(
        !t.join("none/.pvr/json").exists()
            || fs::read(t.join("none/.pvr/json")).unwrap().len() < 30
    );
    let err = pvrfs_testkit::remote::failed(
        &pvr.run(t, &["-a", "wrong-token-0123456789", "clone", &url, "wrong"]),
        "a wrong token",
    );
    assert!(err.contains("401"), "{err}");
    pvr.ok(t, &["-a", "reader-token-0123456789", "clone", &url, "r"]);
    fs::write(t.join("r/top.txt"), b"edit").unwrap();
    pvr.ok(&t.join("r"), &["commit", "-m", "edit"]);
    let err = pvrfs_testkit::remote::failed(
        &pvr.run(
            &t.join("r"),
            &["-a", "reader-token-0123456789", "post", "-m", "x", &url],
        ),
        "a post with a read token",
    );
    // (pvr offers the changed object first, which is refused: "Error posting object 403")
    assert!(err.contains("403"), "{err}");
    assert_eq!(
        Repo::open(&root.join("dev1"))
            .unwrap()
            .latest()
            .unwrap()
            .rev,
        1
    );
    pvr.ok(
        &t.join("r"),
        &["-a", "writer-token-0123456789", "post", "-m", "ok", &url],
    );
    assert_eq!(
        Repo::open(&root.join("dev1"))
            .unwrap()
            .latest()
            .unwrap()
            .rev,
        2
    );
}

//! push / get / clone with an S3 bucket (a real single-node Garage on loopback): the plain
//! layout under a prefix, checksummed uploads, a no-op push, a corrupt local object that is never
//! published, a bad state in the bucket, missing credentials.

use pvrfs::oid::ObjectId;
use pvrfs::repo::Repo;
use pvrfs_testkit::remote::{failed, ok, pvrfs_env, Garage};
use pvrfs_testkit::{files as tree, repo_with};
use std::fs;

#[test]
fn push_clone_and_get_through_garage() {
    let Some(g) = Garage::start() else { return };
    let env = g.env();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let a = t.join("a");
    fs::create_dir_all(&a).unwrap();
    let big: Vec<u8> = (0..2_500_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let repo = repo_with(
        &a,
        &[
            ("bsp/kernel.img", &big),
            ("bsp/run.json", br#"{"k":"v"}"#),
            ("app/x.bin", b"x"),
            ("app/y.bin", b"y"),
        ],
    );
    let dest = format!("s3://{}/devices/dev1", g.bucket);
    let out = ok(&pvrfs_env(&a, &["push", &dest], &env), "push to s3");
    assert!(out.contains("3 of 3 objects uploaded"), "{out}");
    let bucket = g.bucket();
    assert_eq!(
        bucket.get_small("devices/dev1/json").unwrap().unwrap(),
        repo.head_state().unwrap().to_canonical_bytes()
    );
    let kernel = ObjectId::hash_bytes(&big);
    let head = bucket
        .head(&format!("devices/dev1/objects/{kernel}"))
        .unwrap()
        .unwrap();
    assert_eq!(head.len, big.len() as u64);
    // the service kept (and so checked) the sha256 we sent
    assert_eq!(
        head.sha256_b64,
        Some(pvrfs::exchange::s3::checksum_b64(&kernel))
    );
    let out = ok(&pvrfs_env(&a, &["push", &dest], &env), "no-op push");
    assert!(out.contains("0 of 3 objects uploaded"), "{out}");

    ok(&pvrfs_env(t, &["clone", &dest], &env), "clone from s3");
    let cloned = Repo::open(&t.join("dev1")).unwrap();
    assert!(cloned.head_state().unwrap() == repo.head_state().unwrap());
    let files = tree(&t.join("dev1"));
    assert!(
        files
            .iter()
            .any(|(k, v)| k == "bsp/kernel.img" && *v == big),
        "the checkout has the big object"
    );
    let b = t.join("b");
    fs::create_dir_all(&b).unwrap();
    let other = repo_with(&b, &[("mine.txt", b"mine")]);
    ok(
        &pvrfs_env(&b, &["merge", &format!("{dest}#app")], &env),
        "merge from s3",
    );
    let s = other.head_state().unwrap();
    assert!(s.contains("mine.txt") && s.contains("app/y.bin") && !s.contains("bsp/kernel.img"));

    // a second revision: only the changed object moves
    ok(&pvrfs_env(&a, &["checkout"], &[]), "checkout");
    fs::write(a.join("app/x.bin"), b"x2").unwrap();
    ok(&pvrfs_env(&a, &["commit", "-m", "x2"], &[]), "commit");
    let out = ok(&pvrfs_env(&a, &["push", &dest], &env), "push again");
    assert!(out.contains("1 of 3 objects uploaded"), "{out}");
    ok(
        &pvrfs_env(&t.join("dev1"), &["get", &dest], &env),
        "get from s3",
    );
    assert_eq!(
        Repo::open(&t.join("dev1")).unwrap().head_state().unwrap(),
        repo.head_state().unwrap()
    );
}

#[test]
fn a_corrupt_local_object_is_never_published_to_s3() {
    let Some(g) = Garage::start() else { return };
    let env = g.env();
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    fs::create_dir_all(&a).unwrap();
    let repo = repo_with(&a, &[("good.bin", b"good"), ("bad.bin", b"original bytes")]);
    let bad = ObjectId::hash_bytes(b"original bytes");
    fs::write(repo.store().path_of(&bad), b"rotten  bytes!").unwrap();
    let dest = format!("s3://{}/c", g.bucket);
    let err = failed(
        &pvrfs_env(&a, &["push", &dest], &env),
        "push of a corrupt object",
    );
    assert!(err.contains(&bad.to_hex()), "{err}");
    let bucket = g.bucket();
    assert!(bucket.head(&format!("c/objects/{bad}")).unwrap().is_none());
    assert!(
        bucket.get_small("c/json").unwrap().is_none(),
        "no state may be published"
    );
}

#[test]
fn bad_states_and_missing_credentials_are_clear_errors() {
    let Some(g) = Garage::start() else { return };
    let env = g.env();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let bucket = g.bucket();
    bucket
        .put_bytes(
            "hostile/json",
            br#"{"../escape":"abc"}"#,
            "application/json",
        )
        .unwrap();
    let err = failed(
        &pvrfs_env(
            t,
            &["clone", &format!("s3://{}/hostile", g.bucket), "h"],
            &env,
        ),
        "clone of a hostile state",
    );
    assert!(err.contains("../escape"), "{err}");
    assert!(!t.join("h").exists());
    let err = failed(
        &pvrfs_env(
            t,
            &["clone", &format!("s3://{}/nothing", g.bucket), "n"],
            &env,
        ),
        "clone of nothing",
    );
    assert!(err.contains("no json"), "{err}");
    let err = failed(
        &pvrfs_env(t, &["clone", &format!("s3://{}/x", g.bucket), "n"], &[]),
        "clone without credentials",
    );
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
    let wrong: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| {
            let v = if k == "AWS_SECRET_ACCESS_KEY" {
                "0".repeat(64)
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect();
    let err = failed(
        &pvrfs_env(t, &["clone", &format!("s3://{}/x", g.bucket), "n"], &wrong),
        "clone with a wrong secret",
    );
    assert!(
        err.contains("403") && err.contains("AWS_SECRET_ACCESS_KEY"),
        "{err}"
    );
}

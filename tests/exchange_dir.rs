//! get / merge / clone / push over plain directories (`json` + `objects/`), against the pvr
//! vectors of case 07 and round trips.

use pvrfs_testkit as common;

use common::*;
use pvrfs::oid::ObjectId;
use pvrfs::repo::Repo;
use pvrfs::state::State;
use std::fs;
use std::path::Path;

/// The local repository of case 07 after its step 03 (`pvr commit -m local`).
fn case07_repo(dir: &Path) -> Repo {
    let case = vectors().join("07-get-merge-plain");
    let repo = Repo::init(dir, None, None).unwrap();
    for f in ["bsp/old.txt", "local.txt", "app1.json"] {
        let src = case.join("tree").join(f);
        fs::create_dir_all(dir.join(f).parent().unwrap()).unwrap();
        fs::copy(&src, dir.join(f)).unwrap();
        repo.store().put_file(&src).unwrap();
    }
    let state =
        State::from_json_bytes(&fs::read(case.join("expected/03-json")).unwrap(), "03").unwrap();
    commit(&repo, &state);
    repo
}

#[test]
fn get_and_merge_reproduce_pvr_case_07() {
    let case = vectors().join("07-get-merge-plain");
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain");
    fs::create_dir_all(plain.join("objects")).unwrap();
    fs::copy(case.join("plain/json"), plain.join("json")).unwrap();
    for n in names(&case.join("plain/objects")) {
        fs::copy(
            case.join("plain/objects").join(&n),
            plain.join("objects").join(&n),
        )
        .unwrap();
    }
    let w = tmp.path().join("w");
    fs::create_dir(&w).unwrap();
    let repo = case07_repo(&w);
    let tree_before = files(&w);
    let revs_before = repo.revisions().unwrap().len();
    let p = plain.display().to_string();
    for (args, expected) in [
        (vec!["get".to_string(), format!("{p}#bsp")], "04-json"),
        (vec!["merge".to_string(), format!("{p}#app1")], "07-json"),
        (vec!["get".to_string(), format!("{p}#-bsp")], "09-json"),
        (vec!["get".to_string(), p.clone()], "13-json"),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pvrfs(&args).dir(&w).ok();
        assert_eq!(
            fs::read_to_string(w.join(".pvr/json")).unwrap(),
            fs::read_to_string(case.join("expected").join(expected)).unwrap(),
            "after {args:?}"
        );
    }
    // each get/merge is a revision; the work tree is untouched (pvr quirk 11)
    assert_eq!(repo.revisions().unwrap().len(), revs_before + 4);
    assert_eq!(files(&w), tree_before);
    // a repeated get moves nothing and records nothing
    let out = pvrfs(["get", &p]).dir(&w).ok();
    assert!(
        out.contains("Fetched 0 of 3 objects") && out.contains("Already up to date"),
        "{out}"
    );
    assert_eq!(repo.revisions().unwrap().len(), revs_before + 4);
}

#[test]
fn push_to_a_missing_dir_then_clone_and_get_give_the_same_state() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    fs::create_dir(&a).unwrap();
    let repo = repo_with(&a, &[("bin/x", b"xx"), ("etc/y.txt", b"yy"), ("z", b"xx")]);
    let head = repo.head_state().unwrap();
    let out = pvrfs(["push", "../pub/nested"]).dir(&a).ok();
    assert!(out.contains("2 of 2 objects uploaded"), "{out}");
    fs::create_dir(tmp.path().join("empty")).unwrap();
    pvrfs(["push", "../empty"]).dir(&a).ok();
    assert_eq!(names(&tmp.path().join("empty")), ["json", "objects"]);
    let pubdir = tmp.path().join("pub/nested");
    assert_eq!(
        fs::read(pubdir.join("json")).unwrap(),
        head.to_canonical_bytes()
    );
    assert_eq!(names(&pubdir.join("objects")).len(), 2);
    // only missing objects move
    let out = pvrfs(["put", "../pub/nested"]).dir(&a).ok();
    assert!(out.contains("0 of 2 objects uploaded"), "{out}");

    pvrfs(["clone", "pub/nested", "b"]).dir(tmp.path()).ok();
    let b = Repo::open(&tmp.path().join("b")).unwrap();
    assert_eq!(b.head_state().unwrap().state_id(), head.state_id());
    assert_eq!(
        files(&tmp.path().join("b")),
        vec![
            ("bin/x".to_string(), b"xx".to_vec()),
            ("etc/y.txt".to_string(), b"yy".to_vec()),
            ("z".to_string(), b"xx".to_vec())
        ]
    );
    // default clone dir: the source's last component
    fs::create_dir(tmp.path().join("c")).unwrap();
    pvrfs(["clone", "../pub/nested/"])
        .dir(&tmp.path().join("c"))
        .ok();
    assert!(tmp.path().join("c/nested/.pvr/json").is_file());
    // a later push of a new revision is fetched by get
    let mut s = repo.head_state().unwrap();
    s.remove("z");
    commit(&repo, &s);
    pvrfs(["push", "../pub/nested"]).dir(&a).ok();
    pvrfs(["get", "../pub/nested"])
        .dir(&tmp.path().join("b"))
        .ok();
    assert_eq!(b.head_state().unwrap().state_id(), s.state_id());
}

#[test]
fn push_refuses_when_a_local_object_is_missing_or_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo_with(tmp.path(), &[("a", b"aaa"), ("b", b"bbb")]);
    let id_b = ObjectId::hash_bytes(b"bbb");
    fs::write(repo.store().path_of(&id_b), b"evil").unwrap();
    let err = pvrfs(["push", "out"]).dir(tmp.path()).fails();
    assert!(err.contains(&id_b.to_hex()) && err.contains("'b'"), "{err}");
    assert!(
        !tmp.path().join("out/json").exists(),
        "json published despite a bad object"
    );
    assert!(!names(&tmp.path().join("out/objects")).contains(&id_b.to_hex()));
    fs::remove_file(repo.store().path_of(&id_b)).unwrap();
    let err = pvrfs(["push", "out2"]).dir(tmp.path()).fails();
    assert!(err.contains("missing") && err.contains("'b'"), "{err}");
    assert!(!tmp.path().join("out2/json").exists());
}

/// A hostile or broken plain source: nothing changes locally.
#[test]
fn bad_sources_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    fs::create_dir(&w).unwrap();
    let repo = repo_with(&w, &[("keep", b"k")]);
    let json_before = fs::read(repo.json_path()).unwrap();
    let objects_before = repo.store().list().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("objects")).unwrap();
    let good = ObjectId::hash_bytes(b"good");
    let bad = ObjectId::hash_bytes(b"bad");
    fs::write(src.join("objects").join(good.to_hex()), b"good").unwrap();
    fs::write(src.join("objects").join(bad.to_hex()), b"tampered").unwrap();

    let cases = [
        (format!(r#"{{"../etc/passwd":"{good}"}}"#), "../etc/passwd"),
        (format!(r#"{{"a":"{}"}}"#, "A".repeat(64)), "'a'"),
        (r#"{"a": 5}"#.to_string(), "'a'"),
        ("not json".to_string(), "not valid JSON"),
        (format!(r#"{{"g":"{good}","t":"{bad}"}}"#), &bad.to_hex()),
        (
            format!(r#"{{"m":"{}"}}"#, ObjectId::hash_bytes(b"none")),
            "missing",
        ),
    ];
    for (json, needle) in cases {
        fs::write(src.join("json"), &json).unwrap();
        let err = pvrfs(["get", "../src"]).dir(&w).fails();
        assert!(err.contains(needle), "{json}: {err}");
        assert_eq!(fs::read(repo.json_path()).unwrap(), json_before, "{json}");
        assert!(!repo.store().contains(&bad));
    }
    // The verified object of the failed get may stay (it makes a retry resumable); nothing else.
    let mut after = repo.store().list().unwrap();
    after.retain(|id| *id != good);
    assert_eq!(after, objects_before);
    let err = pvrfs(["get", "../nowhere"]).dir(&w).fails();
    assert!(err.contains("does not exist"), "{err}");
    // clone into a non-empty directory is refused; a failed clone leaves no directory
    let err = pvrfs(["clone", "src", "w"]).dir(tmp.path()).fails();
    assert!(err.contains("not empty"), "{err}");
    pvrfs(["clone", "src", "c"]).dir(tmp.path()).fails();
    assert!(!tmp.path().join("c").exists());
}

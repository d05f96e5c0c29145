//! The image read back with composefs's own EROFS reader (no mount): it must show what the
//! read-only FUSE lower shows for the same revision.

use super::*;
use crate::fs::readonly::{from_state, Options};
use crate::json;
use crate::repo::Repo;
use crate::state::meta::TreeMeta;
use crate::state::{Entry, State, DEFAULT_SPEC};
use composefs::erofs::reader::erofs_to_filesystem;
use composefs::tree::{Directory, Inode, LeafContent, RegularFile};

fn image_of(state: &State, repo: &Repo, canonical: bool) -> Vec<u8> {
    let lock = repo.lock().unwrap();
    repo.commit_state(&lock, state, "base", None).unwrap();
    drop(lock);
    let rev = repo.resolve("latest").unwrap();
    let opts = Options {
        canonical,
        uid: Some(1234),
        gid: Some(567),
        ..Default::default()
    };
    let fs = from_state(repo, &rev, repo.load_state(&rev).unwrap(), &opts);
    erofs_image(&fs).unwrap()
}

fn dir<'a>(d: &'a Directory<PvrObject>, name: &str) -> &'a Directory<PvrObject> {
    match d.lookup(OsStr::new(name)) {
        Some(Inode::Directory(d)) => d,
        other => panic!("'{name}' is not a directory: {other:?}"),
    }
}

#[test]
fn the_image_holds_the_revisions_tree_with_objects_as_redirects() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(tmp.path(), None, None).unwrap();
    let mut state = State::empty(DEFAULT_SPEC);
    let big = repo.store().put_bytes(&vec![7u8; 100_000]).unwrap();
    state.insert("bin/tool", Entry::Object(big)).unwrap();
    state
        .insert(
            "bin/conf.json",
            Entry::Inline(json::parse(br#"{"b":1,"a":[1,2]}"#).unwrap()),
        )
        .unwrap();
    let missing = crate::oid::ObjectId::hash_bytes(b"not in the store");
    state.insert("gone.txt", Entry::Object(missing)).unwrap();
    let mut meta = TreeMeta::default();
    meta.modes.insert("bin/tool".into(), 0o755);
    meta.modes.insert("bin".into(), 0o750);
    meta.links.insert("bin/latest".into(), "tool".into());
    meta.dirs.insert("var/empty".into());
    state.set_meta(meta).unwrap();

    let image = image_of(&state, &repo, false);
    let fs = erofs_to_filesystem::<PvrObject>(&image).unwrap();
    let bin = dir(&fs.root, "bin");
    assert_eq!(bin.stat.st_mode & 0o7777, 0o750);
    assert_eq!((bin.stat.st_uid, bin.stat.st_gid), (1234, 567));

    let leaf = |d: &Directory<PvrObject>, name: &str| {
        let id = d.leaf_id(OsStr::new(name)).unwrap();
        fs.leaves[id.0].clone()
    };
    let tool = leaf(bin, "tool");
    assert_eq!(tool.stat.st_mode & 0o7777, 0o755);
    match &tool.content {
        LeafContent::Regular(RegularFile::ExternalNoVerity(id, size)) => {
            assert_eq!((id.0, *size), (*big.as_bytes(), 100_000));
            // what overlayfs follows into the objects directory
            assert_eq!(format!("/{}", id.to_object_pathname()), format!("/{big}"));
        }
        other => panic!("bin/tool is {other:?}"),
    }
    // inline JSON is in the image, rendered as the FUSE lower renders it (pvr's checkout)
    let conf = leaf(bin, "conf.json");
    let expected = json::render_checkout(&json::parse(br#"{"b":1,"a":[1,2]}"#).unwrap());
    match &conf.content {
        LeafContent::Regular(RegularFile::Inline(bytes)) => assert_eq!(&bytes[..], &expected[..]),
        other => panic!("bin/conf.json is {other:?}"),
    }
    assert_eq!(conf.stat.st_mode & 0o7777, 0o644);
    match &leaf(bin, "latest").content {
        LeafContent::Symlink(t) => assert_eq!(t.as_bytes(), b"tool"),
        other => panic!("bin/latest is {other:?}"),
    }
    let var = dir(&fs.root, "var");
    assert_eq!(dir(var, "empty").entries().count(), 0);
    // a missing object is a 1-byte file, never a plausible empty one
    match &leaf(&fs.root, "gone.txt").content {
        LeafContent::Regular(RegularFile::ExternalNoVerity(id, 1)) => {
            assert_eq!(id.0, *missing.as_bytes())
        }
        other => panic!("gone.txt is {other:?}"),
    }
    // the same revision gives the same bytes (the image is cached per layer and rebuilt
    // after a crash: it must not depend on when it was made)
    let again = {
        let rev = repo.resolve("latest").unwrap();
        let opts = Options {
            uid: Some(1234),
            gid: Some(567),
            ..Default::default()
        };
        erofs_image(&from_state(
            &repo,
            &rev,
            repo.load_state(&rev).unwrap(),
            &opts,
        ))
        .unwrap()
    };
    assert_eq!(again, image);
}

#[test]
fn canonical_rendering_reaches_the_image() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(tmp.path(), None, None).unwrap();
    let mut state = State::empty(DEFAULT_SPEC);
    let value = json::parse(br#"{"b":1,"a":[1,2]}"#).unwrap();
    state
        .insert("c.json", Entry::Inline(value.clone()))
        .unwrap();
    let fs = erofs_to_filesystem::<PvrObject>(&image_of(&state, &repo, true)).unwrap();
    let id = fs.root.leaf_id(OsStr::new("c.json")).unwrap();
    match &fs.leaves[id.0].content {
        LeafContent::Regular(RegularFile::Inline(bytes)) => {
            assert_eq!(&bytes[..], &json::render_checkout_canonical(&value)[..])
        }
        other => panic!("c.json is {other:?}"),
    }
}

#[test]
fn a_tree_2047_levels_deep_is_built() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(tmp.path(), None, None).unwrap();
    let mut state = State::empty(DEFAULT_SPEC);
    let deep = vec!["d"; 2047].join("/") + "/f";
    let id = repo.store().put_bytes(b"x").unwrap();
    state.insert(&deep, Entry::Object(id)).unwrap();
    let image = image_of(&state, &repo, false);
    // composefs's reader recurses too (and so does dropping its tree)
    std::thread::Builder::new()
        .stack_size(BUILD_STACK)
        .spawn(move || {
            let fs = erofs_to_filesystem::<PvrObject>(&image).unwrap();
            let mut d = &fs.root;
            for _ in 0..2047 {
                d = dir(d, "d");
            }
            assert!(d.leaf_id(OsStr::new("f")).is_ok());
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn the_probe_image_is_an_empty_tree() {
    let fs = erofs_to_filesystem::<PvrObject>(&empty_image()).unwrap();
    assert_eq!(fs.root.entries().count(), 0);
    assert_eq!(fs.root.stat.st_mode & 0o7777, 0o755);
}

//! export / import / clone of tarballs: pvr's own export (vectors case 08) imports and clones,
//! our export is byte-compatible with pvr's, hostile archives are refused with nothing written.

use pvrfs_testkit as common;

use common::*;
use pvrfs::oid::ObjectId;
use pvrfs::repo::Repo;
use pvrfs::state::State;
use std::fs;
use std::io::Read;
use std::path::Path;

fn case08() -> std::path::PathBuf {
    vectors().join("08-export-import")
}

/// The source repository of case 08 after its step 03.
fn case08_repo(dir: &Path) -> Repo {
    let repo = Repo::init(dir, None, None).unwrap();
    for f in ["a.txt", "bin.dat", "dir with space/f.txt", "sub/data.bin"] {
        repo.store()
            .put_file(&case08().join("tree").join(f))
            .unwrap();
    }
    let json = fs::read(case08().join("expected/03-json")).unwrap();
    commit(&repo, &State::from_json_bytes(&json, "03").unwrap());
    repo
}

/// Split a tar into (header, data) members; the two zero end blocks are checked and dropped.
fn members(tar: &[u8]) -> Vec<([u8; 512], Vec<u8>)> {
    assert_eq!(tar.len() % 512, 0);
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let h: [u8; 512] = tar[pos..pos + 512].try_into().unwrap();
        if h.iter().all(|&b| b == 0) {
            assert_eq!(&tar[pos..], &[0u8; 1024][..], "end of archive");
            return out;
        }
        let size = u64::from_str_radix(std::str::from_utf8(&h[124..135]).unwrap(), 8).unwrap();
        let data = tar[pos + 512..pos + 512 + size as usize].to_vec();
        pos += 512 + (size as usize).div_ceil(512) * 512;
        out.push((h, data));
    }
}

fn name(h: &[u8; 512]) -> String {
    String::from_utf8_lossy(&h[..100])
        .trim_end_matches('\0')
        .to_string()
}

/// mtime and checksum differ by construction; everything else must match.
fn masked(h: &[u8; 512]) -> Vec<u8> {
    let mut v = h.to_vec();
    v[136..156].fill(b'#');
    v
}

#[test]
fn our_export_is_byte_compatible_with_pvrs() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = case08_repo(tmp.path());
    pvrfs(["export", "out.tar"]).dir(tmp.path()).ok();
    let ours = fs::read(tmp.path().join("out.tar")).unwrap();
    let theirs = fs::read(case08().join("expected/04-export.tar")).unwrap();
    assert_eq!(ours.len(), theirs.len());
    let ours = members(&ours);
    let mut theirs = members(&theirs);
    // pvr: json first, objects in random order; ours: json first, objects by id
    theirs[1..].sort_by_key(|(h, _)| name(h));
    assert_eq!(ours.len(), theirs.len());
    for ((oh, od), (th, td)) in ours.iter().zip(&theirs) {
        assert_eq!(name(oh), name(th));
        assert_eq!(masked(oh), masked(th), "header of {}", name(oh));
        assert_eq!(od, td, "data of {}", name(oh));
    }
    // checksums are valid (the tar crate verifies them) and mtimes are the revision's time
    let time = repo.latest().unwrap().time as u64;
    let mut ar = tar::Archive::new(fs::File::open(tmp.path().join("out.tar")).unwrap());
    for e in ar.entries().unwrap() {
        assert_eq!(e.unwrap().header().mtime().unwrap(), time);
    }
    // `-` writes the same bytes to stdout
    let out = pvrfs(["export", "-"]).dir(tmp.path()).run().out;
    assert!(out.status.success());
    assert_eq!(out.stdout, fs::read(tmp.path().join("out.tar")).unwrap());
}

#[test]
fn export_parts_as_tgz_matches_pvr() {
    let tmp = tempfile::tempdir().unwrap();
    case08_repo(tmp.path());
    pvrfs(["export", "--parts", "sub", "sub.tgz"])
        .dir(tmp.path())
        .ok();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(fs::File::open(tmp.path().join("sub.tgz")).unwrap())
        .read_to_end(&mut tar)
        .unwrap();
    let m = members(&tar);
    let listing: Vec<String> = m.iter().map(|(h, _)| name(h)).collect();
    assert_eq!(
        listing,
        [
            "json",
            "objects/f18c30b7398a5991cbf5ec54debfa847a8aae16040593426fcf68475f8946677"
        ]
    );
    assert_eq!(
        m[0].1,
        fs::read(case08().join("expected/05-export-sub-json")).unwrap()
    );
}

#[test]
fn pvrs_export_imports_and_clones() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = case08().join("expected/04-export.tar");
    let r = tmp.path().join("repo");
    fs::create_dir(&r).unwrap();
    let repo = Repo::init(&r, None, None).unwrap();
    pvrfs(["import", tar.to_str().unwrap()]).dir(&r).ok();
    assert_eq!(
        fs::read(repo.json_path()).unwrap(),
        fs::read(case08().join("expected/07-json")).unwrap()
    );
    for id in repo.head_state().unwrap().object_ids() {
        assert!(repo.store().contains(&id), "{id} not imported");
    }

    pvrfs(["clone", tar.to_str().unwrap(), "cloned"])
        .dir(tmp.path())
        .ok();
    let cloned = tmp.path().join("cloned");
    assert_eq!(
        fs::read(cloned.join(".pvr/json")).unwrap(),
        fs::read(case08().join("expected/13-cloned-json")).unwrap()
    );
    let listing: Vec<String> = files(&cloned)
        .iter()
        .map(|(p, data)| format!("{}  {p}", ObjectId::hash_bytes(data)))
        .collect();
    let expected = fs::read_to_string(case08().join("expected/clone-tree.sha256")).unwrap();
    assert_eq!(listing, expected.lines().collect::<Vec<_>>());
}

#[test]
fn export_import_round_trip_into_another_repo() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    fs::create_dir(&a).unwrap();
    let repo = repo_with(&a, &[("x/1", b"one"), ("x/2", &[0u8; 100_000])]);
    pvrfs(["export", "../a.tar.gz"]).dir(&a).ok();
    let b = tmp.path().join("b");
    fs::create_dir(&b).unwrap();
    let other = repo_with(&b, &[("local", b"l")]);
    pvrfs(["import", "../a.tar.gz"]).dir(&b).ok();
    assert_eq!(
        other.head_state().unwrap().state_id(),
        repo.head_state().unwrap().state_id()
    );
    // get and merge take tarballs too
    pvrfs(["get", "../a.tar.gz#x/1"]).dir(&b).ok();
    let s = other.head_state().unwrap();
    assert!(s.contains("x/1") && s.contains("x/2"));
}

/// A raw ustar member, so the tests can write what the tar crate's builder refuses to.
fn raw_member(out: &mut Vec<u8>, name: &str, kind: u8, data: &[u8], link: &str) {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

#[test]
fn hostile_archives_are_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    fs::create_dir(&w).unwrap();
    let repo = repo_with(&w, &[("keep", b"k")]);
    let json_before = fs::read(repo.json_path()).unwrap();
    let objects_before = repo.store().list().unwrap();
    let revs_before = repo.revisions().unwrap().len();

    let good = ObjectId::hash_bytes(b"good");
    let ok_json = format!(r##"{{"#spec":"s@1","f":"{good}"}}"##);
    let obj = format!("objects/{good}");
    type Member<'a> = (String, u8, Vec<u8>, &'a str);
    let cases: Vec<(&str, Vec<Member>, String)> = vec![
        (
            "dotdot",
            vec![
                ("json".into(), b'0', ok_json.clone().into(), ""),
                ("objects/../../evil".into(), b'0', b"x".to_vec(), ""),
            ],
            "objects/../../evil".into(),
        ),
        (
            "absolute",
            vec![
                ("/etc/evil".into(), b'0', b"x".to_vec(), ""),
                ("json".into(), b'0', ok_json.clone().into(), ""),
            ],
            "/etc/evil".into(),
        ),
        (
            "symlink",
            vec![
                ("json".into(), b'0', ok_json.clone().into(), ""),
                (obj.clone(), b'2', vec![], "/etc/passwd"),
            ],
            "symbolic link".into(),
        ),
        (
            "hardlink",
            vec![
                ("json".into(), b'0', ok_json.clone().into(), ""),
                (obj.clone(), b'1', vec![], "json"),
            ],
            "hard link".into(),
        ),
        (
            "device",
            vec![
                ("json".into(), b'0', ok_json.clone().into(), ""),
                (obj.clone(), b'3', vec![], ""),
            ],
            "character device".into(),
        ),
        (
            "corrupt",
            vec![
                ("json".into(), b'0', ok_json.clone().into(), ""),
                (obj.clone(), b'0', b"bad!".to_vec(), ""),
            ],
            format!("'{obj}' is corrupt"),
        ),
        (
            "bad key",
            vec![
                (
                    "json".into(),
                    b'0',
                    format!(r#"{{"a/../b":"{good}"}}"#).into(),
                    "",
                ),
                (obj.clone(), b'0', b"good".to_vec(), ""),
            ],
            "'a/../b'".into(),
        ),
        (
            "bad id",
            vec![("json".into(), b'0', br#"{"f":"123"}"#.to_vec(), "")],
            "'f'".into(),
        ),
        (
            "stranger",
            vec![
                ("json".into(), b'0', ok_json.clone().into(), ""),
                ("README".into(), b'0', b"hi".to_vec(), ""),
            ],
            "'README'".into(),
        ),
        (
            "no json",
            vec![(obj.clone(), b'0', b"good".to_vec(), "")],
            "no 'json'".into(),
        ),
        (
            "object missing",
            vec![("json".into(), b'0', ok_json.clone().into(), "")],
            format!("object {good}"),
        ),
    ];
    for (what, entries, needle) in cases {
        let mut tar = Vec::new();
        for (name, kind, data, link) in &entries {
            raw_member(&mut tar, name, *kind, data, link);
        }
        tar.extend_from_slice(&[0u8; 1024]);
        let path = tmp.path().join("hostile.tar");
        fs::write(&path, &tar).unwrap();
        for cmd in ["import", "get"] {
            let err = pvrfs([cmd, path.to_str().unwrap()]).dir(&w).fails();
            assert!(err.contains(&needle), "{what}/{cmd}: {err}");
        }
        assert_eq!(fs::read(repo.json_path()).unwrap(), json_before, "{what}");
        assert_eq!(repo.store().list().unwrap(), objects_before, "{what}");
        assert_eq!(repo.revisions().unwrap().len(), revs_before, "{what}");
        assert!(!tmp.path().join("evil").exists() && !Path::new("/etc/evil").exists());
        let err = pvrfs(["clone", path.to_str().unwrap(), "c"])
            .dir(tmp.path())
            .fails();
        assert!(err.contains(&needle), "{what}/clone: {err}");
        assert!(
            !tmp.path().join("c").exists(),
            "{what}: failed clone left its directory"
        );
    }
}

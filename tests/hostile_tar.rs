//! Hostile tarballs beyond names and types (those are in exchange_tar.rs): members bigger than
//! `--max-object-size` (a small gzip bomb), extension headers that would be read whole into
//! memory (GNU long names, pax headers), and pax records that make two readers see two
//! archives. Each is refused before any object is written, by `import`, `get` and `clone`.

use pvrfs_testkit as common;

use common::*;
use flate2::write::GzEncoder;
use pvrfs::oid::ObjectId;
use std::fs;
use std::io::Write;
use std::path::Path;

/// A ustar header for `name` of `kind` announcing `size` bytes.
fn header(name: &str, kind: u8, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_mode(0o644);
    h.set_size(size);
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_cksum();
    h
}

/// Write a member: its header, then `size` bytes produced by `fill` (in chunks), padded.
fn member(out: &mut impl Write, name: &str, kind: u8, size: u64, fill: u8) {
    out.write_all(header(name, kind, size).as_bytes()).unwrap();
    let chunk = vec![fill; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        out.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    let pad = (512 - size % 512) % 512;
    out.write_all(&vec![0u8; pad as usize]).unwrap();
}

fn member_bytes(out: &mut impl Write, name: &str, kind: u8, data: &[u8]) {
    out.write_all(header(name, kind, data.len() as u64).as_bytes())
        .unwrap();
    out.write_all(data).unwrap();
    let pad = (512 - data.len() % 512) % 512;
    out.write_all(&vec![0u8; pad]).unwrap();
}

/// A pax record `LEN key=value\n`.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    format!("{len}{body}")
}

/// The repository `w` (with one file) must be as it was: head, revisions, store.
struct Before {
    json: Vec<u8>,
    objects: Vec<String>,
}

fn before(w: &Path) -> Before {
    Before {
        json: fs::read(w.join(".pvr/json")).unwrap(),
        objects: names(&w.join(".pvr/objects")),
    }
}

fn unchanged(w: &Path, b: &Before, what: &str) {
    assert_eq!(fs::read(w.join(".pvr/json")).unwrap(), b.json, "{what}");
    assert_eq!(names(&w.join(".pvr/objects")), b.objects, "{what}");
}

/// `import`, `get` and `clone` of `archive` all fail with `needle`, writing nothing.
fn refused(tmp: &Path, archive: &Path, extra: &[&str], needle: &str) {
    let w = tmp.join("w");
    if !w.exists() {
        fs::create_dir(&w).unwrap();
        repo_with(&w, &[("keep", b"k")]);
    }
    let b = before(&w);
    let a = archive.to_str().unwrap();
    for cmd in ["import", "get"] {
        let mut args = vec![cmd, a];
        args.extend_from_slice(extra);
        let err = pvrfs(&args).dir(&w).fails();
        assert!(err.contains(needle), "{cmd}: {err}");
        unchanged(&w, &b, cmd);
    }
    let mut args = vec!["clone", a, "c"];
    args.extend_from_slice(extra);
    let err = pvrfs(&args).dir(tmp).fails();
    assert!(err.contains(needle), "clone: {err}");
    assert!(!tmp.join("c").exists());
}

#[test]
fn a_gzip_bomb_object_is_refused_at_its_header() {
    // 64 MiB of zeros compress to 64 KiB: a valid object, but over a 1 MiB limit.
    let tmp = tempfile::tempdir().unwrap();
    let size: u64 = 64 << 20;
    let zeros = {
        let mut h = pvrfs::oid::Hasher::new();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..(size >> 20) {
            h.update(&chunk);
        }
        h.finish().0
    };
    let path = tmp.path().join("bomb.tgz");
    let mut gz = GzEncoder::new(fs::File::create(&path).unwrap(), Default::default());
    member_bytes(
        &mut gz,
        "json",
        b'0',
        format!(r##"{{"#spec":"s@1","big":"{zeros}"}}"##).as_bytes(),
    );
    member(&mut gz, &format!("objects/{zeros}"), b'0', size, 0);
    gz.write_all(&[0u8; 1024]).unwrap();
    gz.finish().unwrap();
    assert!(fs::metadata(&path).unwrap().len() < 1 << 20);
    refused(
        tmp.path(),
        &path,
        &["--max-object-size", "1M"],
        "more than the limit of 1048576 bytes (--max-object-size)",
    );
    // Within the limit it imports (the archive itself is good).
    let w = tmp.path().join("w");
    pvrfs(["import", path.to_str().unwrap()]).dir(&w).ok();
    assert_eq!(
        fs::metadata(w.join(".pvr/objects").join(zeros.to_hex()))
            .unwrap()
            .len(),
        size
    );
}

#[test]
fn extension_headers_are_capped_and_checked() {
    let good = ObjectId::hash_bytes(b"good");
    let json = format!(r##"{{"#spec":"s@1","f":"{good}"}}"##);
    /// Writes the extension member(s) under test.
    type Ext = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Ext, &str)> = vec![
        (
            // 64 MiB of long name: the tar crate would read it whole into memory.
            "long name bomb",
            Box::new(|out| member(out, "././@LongLink", b'L', 64 << 20, b'a')),
            "refusing a long name of 67108864 bytes",
        ),
        (
            "pax header bomb",
            Box::new(|out| member(out, "PaxHeaders/x", b'x', 64 << 20, b'a')),
            "refusing a pax header of 67108864 bytes",
        ),
        (
            "pax global header bomb",
            Box::new(|out| member(out, "pax_global_header", b'g', 64 << 20, b'a')),
            "refusing a pax global header of 67108864 bytes",
        ),
        (
            // A pax size other than the header's: readers that honour it see other members.
            "pax size disagrees",
            Box::new(move |out| {
                member_bytes(
                    out,
                    "PaxHeaders/o",
                    b'x',
                    pax_record("size", "0").as_bytes(),
                )
            }),
            "its pax size disagrees with its header",
        ),
        (
            "pax linkpath",
            Box::new(move |out| {
                member_bytes(
                    out,
                    "PaxHeaders/o",
                    b'x',
                    pax_record("linkpath", "/etc/passwd").as_bytes(),
                )
            }),
            "links are not accepted",
        ),
        (
            "pax path escapes",
            Box::new(move |out| {
                member_bytes(
                    out,
                    "PaxHeaders/o",
                    b'x',
                    pax_record("path", "../../evil").as_bytes(),
                )
            }),
            "refusing member '../../evil'",
        ),
        (
            "long link",
            Box::new(|out| member_bytes(out, "././@LongLink", b'K', b"/etc/passwd\0")),
            "links are not accepted",
        ),
    ];
    for (what, ext, needle) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.tgz");
        let mut tar = Vec::new();
        member_bytes(&mut tar, "json", b'0', json.as_bytes());
        ext(&mut tar);
        member_bytes(&mut tar, &format!("objects/{good}"), b'0', b"good");
        tar.extend_from_slice(&[0u8; 1024]);
        let mut gz = GzEncoder::new(fs::File::create(&path).unwrap(), Default::default());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap();
        let w = tmp.path().join("w");
        fs::create_dir(&w).unwrap();
        repo_with(&w, &[("keep", b"k")]);
        let b = before(&w);
        let err = pvrfs(["import", path.to_str().unwrap()]).dir(&w).fails();
        assert!(err.contains(needle), "{what}: {err}");
        assert!(err.len() < 4096, "{what}: a {} byte message", err.len());
        unchanged(&w, &b, what);
    }
}

#[test]
fn a_path_pax_record_names_the_member() {
    // What GNU tar and Go write for long names: honoured, and checked like any name.
    let tmp = tempfile::tempdir().unwrap();
    let good = ObjectId::hash_bytes(b"good");
    let mut tar = Vec::new();
    member_bytes(
        &mut tar,
        "json",
        b'0',
        format!(r##"{{"#spec":"s@1","f":"{good}"}}"##).as_bytes(),
    );
    member_bytes(
        &mut tar,
        "PaxHeaders/o",
        b'x',
        pax_record("path", &format!("objects/{good}")).as_bytes(),
    );
    member_bytes(&mut tar, "somethingelse", b'0', b"good");
    tar.extend_from_slice(&[0u8; 1024]);
    let path = tmp.path().join("pax.tar");
    fs::write(&path, &tar).unwrap();
    let w = tmp.path().join("w");
    fs::create_dir(&w).unwrap();
    repo_with(&w, &[]);
    pvrfs(["import", path.to_str().unwrap()]).dir(&w).ok();
    assert!(w.join(".pvr/objects").join(good.to_hex()).exists());
}

//! The filesystem driven operation by operation, without a kernel (tier 2).

use pvrfs_testkit as common;

use common::pagecache::{cached_pages, evict};
use common::{Content, TestRepo};
use pvrfs::fs::readonly::{DirectoryReplier, FileSource, FsConfig, ReadOnlyFs as Fs};
use pvrfs::fs::tree::{Rendering, Tree};
use pvrfs::fs::{Attr, FsError, Kind, ToErrno, ROOT_INO};
use pvrfs::oid::ObjectId;
use std::ffi::{OsStr, OsString};

fn fs_of(t: &TestRepo, verify: bool) -> Fs {
    let rev = t.repo.latest().unwrap();
    let state = t.repo.load_state(&rev).unwrap();
    Fs::new(
        Tree::build(state, Rendering::Checkout),
        t.repo.store().clone(),
        FsConfig {
            uid: 7,
            gid: 8,
            time: rev.time,
            verify,
        },
    )
}

fn repo() -> TestRepo {
    let mut t = TestRepo::new();
    t.set("a/b/c.txt", Content::Blob(b"abc"))
        .set("a/x.json", Content::Json(r#"{"k":[1,2]}"#))
        .set("z", Content::Blob(b""))
        .set("a/y", Content::Blob(b"yyyy"));
    t.commit("one");
    t
}

/// Collects entries, refusing any beyond `room`.
struct Collect {
    room: usize,
    got: Vec<(u64, u64, Kind, OsString)>,
}

impl DirectoryReplier for Collect {
    fn add(&mut self, ino: u64, next: u64, kind: Kind, name: &OsStr, attr: Option<&Attr>) -> bool {
        let attr = attr.expect("attributes were asked for");
        assert_eq!((attr.ino, attr.kind), (ino, kind));
        if self.got.len() == self.room {
            return true;
        }
        self.got.push((ino, next, kind, name.to_owned()));
        false
    }
}

fn lookup_path(fs: &Fs, path: &str) -> Result<Attr, FsError> {
    let mut a = fs.getattr(ROOT_INO)?;
    for part in path.split('/') {
        a = fs.lookup(a.ino, OsStr::new(part))?;
    }
    Ok(a)
}

#[test]
fn lookup_getattr_and_errnos() {
    let t = repo();
    let fs = fs_of(&t, false);
    let root = fs.getattr(ROOT_INO).unwrap();
    assert_eq!(
        (root.kind, root.mode, root.nlink, root.uid, root.gid),
        (Kind::Dir, 0o755, 3, 7, 8)
    );
    let c = lookup_path(&fs, "a/b/c.txt").unwrap();
    assert_eq!(
        (c.kind, c.size, c.blocks(), c.mode, c.nlink),
        (Kind::File, 3, 1, 0o644, 1)
    );
    let x = lookup_path(&fs, "a/x.json").unwrap();
    assert_eq!(
        x.size as usize,
        pvrfs::json::render_checkout(&common::value(r#"{"k":[1,2]}"#)).len()
    );
    assert_eq!(lookup_path(&fs, "a").unwrap().nlink, 3);
    assert_eq!(lookup_path(&fs, "z").unwrap().size, 0);
    let e = lookup_path(&fs, "a/nope").unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT);
    let e = fs.lookup(c.ino, OsStr::new("x")).unwrap_err();
    assert_eq!(e.errno(), libc::ENOTDIR);
    assert_eq!(fs.getattr(999).unwrap_err().errno(), libc::ENOENT);
    assert_eq!(fs.getattr(0).unwrap_err().errno(), libc::ENOENT);
    assert_eq!(lookup_path(&fs, ".pvr").unwrap_err().errno(), libc::ENOENT);
}

#[test]
fn readdir_resumes_at_offsets() {
    let t = repo();
    let fs = fs_of(&t, false);
    let a = lookup_path(&fs, "a").unwrap().ino;
    let mut all = Collect {
        room: usize::MAX,
        got: vec![],
    };
    fs.readdir(a, 0, &mut all).unwrap();
    let names: Vec<_> = all
        .got
        .iter()
        .map(|e| e.3.to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [".", "..", "b", "x.json", "y"]);
    assert_eq!(all.got[1].0, ROOT_INO);
    // two at a time, continuing from the last offset handed out
    let mut pieces = vec![];
    let mut off = 0;
    loop {
        let mut c = Collect {
            room: 2,
            got: vec![],
        };
        fs.readdir(a, off, &mut c).unwrap();
        if c.got.is_empty() {
            break;
        }
        off = c.got.last().unwrap().1;
        pieces.extend(c.got);
    }
    assert_eq!(pieces, all.got);
    // plain readdir (no attributes) lists the same entries
    struct Names(Vec<(u64, Kind, OsString)>);
    impl DirectoryReplier for Names {
        fn wants_attrs(&self) -> bool {
            false
        }
        fn add(&mut self, ino: u64, _: u64, kind: Kind, name: &OsStr, attr: Option<&Attr>) -> bool {
            assert!(attr.is_none());
            self.0.push((ino, kind, name.to_owned()));
            false
        }
    }
    let mut names = Names(vec![]);
    fs.readdir(a, 0, &mut names).unwrap();
    let plus: Vec<_> = all.got.iter().map(|e| (e.0, e.2, e.3.clone())).collect();
    assert_eq!(names.0, plus);
    let file = lookup_path(&fs, "a/y").unwrap().ino;
    let mut c = Collect {
        room: 9,
        got: vec![],
    };
    assert_eq!(
        fs.readdir(file, 0, &mut c).unwrap_err().errno(),
        libc::ENOTDIR
    );
}

#[test]
fn open_read_release() {
    let t = repo();
    let fs = fs_of(&t, false);
    let y = lookup_path(&fs, "a/y").unwrap().ino;
    let o1 = fs.open(y, libc::O_RDONLY).unwrap();
    let o2 = fs.open(y, libc::O_RDONLY).unwrap();
    // one object file per inode, shared by concurrent opens
    match (&o1.source, &o2.source) {
        (FileSource::Object(a), FileSource::Object(b)) => assert!(std::sync::Arc::ptr_eq(a, b)),
        _ => panic!("blob opens must be object handles"),
    }
    assert_eq!(fs.read(o1.fh, 0, 100, <[u8]>::to_vec).unwrap(), b"yyyy");
    assert_eq!(fs.read(o1.fh, 2, 1, <[u8]>::to_vec).unwrap(), b"y");
    assert_eq!(fs.read(o1.fh, 10, 5, <[u8]>::to_vec).unwrap(), b"");
    fs.release(o1.fh).unwrap();
    assert_eq!(
        fs.read(o1.fh, 0, 1, <[u8]>::to_vec).unwrap_err().errno(),
        libc::EBADF
    );
    assert_eq!(fs.release(o1.fh).unwrap_err().errno(), libc::EBADF);
    fs.release(o2.fh).unwrap();
    let x = lookup_path(&fs, "a/x.json").unwrap();
    let o = fs.open(x.ino, libc::O_RDONLY).unwrap();
    assert!(matches!(o.source, FileSource::Inline(_)));
    let bytes = fs.read(o.fh, 0, 4096, <[u8]>::to_vec).unwrap();
    assert_eq!(bytes, b"{\n    \"k\": [\n        1,\n        2\n    ]\n}");
    assert_eq!(bytes.len() as u64, x.size);
    let z = lookup_path(&fs, "z").unwrap().ino;
    let o = fs.open(z, libc::O_RDONLY).unwrap();
    assert_eq!(fs.read(o.fh, 0, 10, <[u8]>::to_vec).unwrap(), b"");
    assert_eq!(
        fs.open(ROOT_INO, libc::O_RDONLY).unwrap_err().errno(),
        libc::EISDIR
    );
}

#[test]
fn write_access_is_erofs() {
    let t = repo();
    let fs = fs_of(&t, false);
    let y = lookup_path(&fs, "a/y").unwrap().ino;
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        assert_eq!(
            fs.open(y, flags).unwrap_err().errno(),
            libc::EROFS,
            "{flags:#x}"
        );
    }
    assert_eq!(fs.write_op("mkdir").unwrap_err().errno(), libc::EROFS);
    assert_eq!(
        fs.getxattr(y, OsStr::new("user.a")).unwrap_err().errno(),
        libc::EOPNOTSUPP
    );
    assert_eq!(fs.listxattr(y).unwrap(), b"");
}

#[test]
fn missing_and_corrupt_objects_are_eio_naming_object_and_path() {
    let t = repo();
    let abc = ObjectId::hash_bytes(b"abc");
    let yyyy = ObjectId::hash_bytes(b"yyyy");
    std::fs::remove_file(t.repo.store().path_of(&abc)).unwrap();
    std::fs::write(t.repo.store().path_of(&yyyy), b"YYYY").unwrap();
    for verify in [false, true] {
        let fs = fs_of(&t, verify);
        let c = lookup_path(&fs, "a/b/c.txt").unwrap();
        assert_eq!(c.size, 1, "placeholder size, so that readers reach the EIO");
        let e = fs.open(c.ino, libc::O_RDONLY).unwrap_err();
        assert_eq!(e.errno(), libc::EIO);
        let msg = e.to_string();
        assert!(
            msg.contains("a/b/c.txt") && msg.contains(&abc.to_hex()),
            "{msg}"
        );
        let y = lookup_path(&fs, "a/y").unwrap();
        let r = fs.open(y.ino, libc::O_RDONLY);
        if verify {
            let e = r.unwrap_err();
            assert_eq!(e.errno(), libc::EIO);
            assert!(e.to_string().contains("corrupt"), "{e}");
        } else {
            // without --verify the stored bytes are served as they are (fsck reports them)
            let o = r.unwrap();
            assert_eq!(fs.read(o.fh, 0, 9, <[u8]>::to_vec).unwrap(), b"YYYY");
        }
        let e = fs.read_inode(c.ino, 0, 10, <[u8]>::to_vec).unwrap_err();
        assert_eq!(e.errno(), libc::EIO);
        let x = lookup_path(&fs, "a/x.json").unwrap();
        assert!(fs.open(x.ino, libc::O_RDONLY).is_ok());
        assert!(fs.read_inode(x.ino, 0, 10, <[u8]>::to_vec).is_ok());
    }
}

#[test]
fn statfs_counts_the_tree() {
    let t = repo();
    let fs = fs_of(&t, false);
    let s = fs.statfs();
    // root, a, a/b, c.txt, x.json, y, z
    assert_eq!(s.files, 7);
    assert_eq!((s.bfree, s.bavail, s.ffree, s.namelen), (0, 0, 0, 255));
    assert_eq!(s.blocks, 1);
}

/// Symlinks, empty directories and modes of the state: readlink, kinds in listings, the
/// recorded permission bits, and `st_nlink` counting subdirectories (empty ones too).
#[test]
fn symlinks_modes_and_empty_directories() {
    let mut t = TestRepo::new();
    t.set("bin/busybox", Content::Blob(b"bb"))
        .set("run.sh", Content::Blob(b"#!/bin/sh"));
    let mut meta = pvrfs::state::TreeMeta::default();
    meta.links.insert("bin/sh".into(), "busybox".into());
    meta.links.insert("abs".into(), "/no/where".into());
    meta.dirs.insert("tmp".into());
    meta.dirs.insert("bin/empty".into());
    meta.set_mode("tmp", 0o1777, true);
    meta.set_mode("bin", 0o700, true);
    meta.set_mode("bin/busybox", 0o4755, false);
    meta.set_mode("run.sh", 0o755, false);
    t.set_meta(meta);
    t.commit("whole");
    let fs = fs_of(&t, false);
    let root = fs.getattr(ROOT_INO).unwrap();
    // ., .., and the subdirectories bin and tmp
    assert_eq!(root.nlink, 4);
    let bin = lookup_path(&fs, "bin").unwrap();
    assert_eq!((bin.kind, bin.mode, bin.nlink), (Kind::Dir, 0o700, 3));
    let sh = lookup_path(&fs, "bin/sh").unwrap();
    assert_eq!(
        (sh.kind, sh.size, sh.mode, sh.nlink),
        (Kind::Symlink, 7, 0o777, 1)
    );
    assert_eq!(fs.readlink(sh.ino).unwrap(), b"busybox");
    assert_eq!(
        fs.readlink(lookup_path(&fs, "abs").unwrap().ino).unwrap(),
        b"/no/where"
    );
    assert_eq!(fs.readlink(bin.ino).unwrap_err().errno(), libc::EINVAL);
    assert_eq!(
        fs.open(sh.ino, libc::O_RDONLY).unwrap_err().errno(),
        libc::ELOOP
    );
    assert_eq!(
        fs.lookup(sh.ino, OsStr::new("x")).unwrap_err().errno(),
        libc::ENOTDIR
    );
    assert_eq!(lookup_path(&fs, "bin/busybox").unwrap().mode, 0o4755);
    assert_eq!(lookup_path(&fs, "run.sh").unwrap().mode, 0o755);
    let tmp = lookup_path(&fs, "tmp").unwrap();
    assert_eq!((tmp.kind, tmp.mode, tmp.nlink), (Kind::Dir, 0o1777, 2));
    let mut c = Collect {
        room: 100,
        got: Vec::new(),
    };
    fs.readdir(tmp.ino, 0, &mut c).unwrap();
    assert_eq!(c.got.len(), 2, "only . and ..");
    let mut c = Collect {
        room: 100,
        got: Vec::new(),
    };
    fs.readdir(bin.ino, 0, &mut c).unwrap();
    let kinds: Vec<(String, Kind)> = c
        .got
        .iter()
        .map(|(_, _, k, n)| (n.to_string_lossy().into_owned(), *k))
        .collect();
    assert_eq!(
        kinds,
        [
            (".".to_string(), Kind::Dir),
            ("..".to_string(), Kind::Dir),
            ("busybox".to_string(), Kind::File),
            ("empty".to_string(), Kind::Dir),
            ("sh".to_string(), Kind::Symlink),
        ]
    );
    // the reserved documents are not files of the tree
    assert_eq!(
        lookup_path(&fs, ".pvrfs-meta.json").unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(
        lookup_path(&fs, "bin/.pvrfs-meta.json")
            .unwrap_err()
            .errno(),
        libc::ENOENT
    );
}

/// A cold object read in big pieces comes straight from the disk (O_DIRECT, `fs::direct`):
/// the bytes are right up to an unaligned end, and the object's pages stay out of the page
/// cache (the mount's page cache holds them once). A warm object is copied from its cache.
#[test]
fn cold_big_reads_come_from_the_disk_and_leave_the_object_uncached() {
    const LEN: usize = 3 * (1 << 20) + 1234;
    let big: Vec<u8> = (0..LEN as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let mut t = TestRepo::new();
    t.set("big.img", Content::Blob(&big));
    t.commit("big");
    let object = t
        .path()
        .join(".pvr/objects")
        .join(ObjectId::hash_bytes(&big).to_hex());
    if let Err(e) = pvrfs::fs::direct::DirectFile::reopen(&std::fs::File::open(&object).unwrap()) {
        eprintln!("NOTE: skipped: the test directory's file system offers no direct I/O ({e})");
        return;
    }
    let fs = fs_of(&t, false);
    let ino = lookup_path(&fs, "big.img").unwrap().ino;
    let fh = fs.open(ino, libc::O_RDONLY).unwrap().fh;
    let read_all = |fs: &Fs| {
        let mut got = Vec::new();
        for at in (0..LEN as u64).step_by(1 << 20) {
            got.extend(fs.read(fh, at, 1 << 20, <[u8]>::to_vec).unwrap());
        }
        got
    };

    evict(&object);
    if cached_pages(&object) > 0 {
        // E.g. a store on tmpfs, whose pages are the files themselves.
        return eprintln!("NOTE: skipped: the object's pages cannot be dropped here");
    }
    assert!(read_all(&fs) == big, "cold read: wrong bytes");
    // The 1234-byte tail is below DIRECT_MIN and comes through the mapping; the first 3 MiB
    // were read direct.
    let cached = cached_pages(&object);
    assert!(
        cached <= (LEN - (3 << 20)).div_ceil(4096) + 64,
        "{cached} pages of the object were cached by a cold read"
    );

    // Warm: the page cache is used (and the bytes are the same).
    std::fs::read(&object).unwrap();
    assert!(read_all(&fs) == big, "warm read: wrong bytes");
    // A read at an offset the device's alignment refuses falls back to the mapping.
    evict(&object);
    let odd = fs.read(fh, 1 << 20 | 1, 200_000, <[u8]>::to_vec).unwrap();
    assert!(odd[..] == big[(1 << 20) + 1..(1 << 20) + 1 + 200_000]);
    fs.release(fh).unwrap();
}

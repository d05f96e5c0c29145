//! Unit tests, one group per operation, plus replay of torn journals and commits.

use super::*;
use crate::fs::ToErrno;
use crate::state::DEFAULT_SPEC;
use tempfile::TempDir;

/// The owner new files get in tests: the process owner, whom the base files belong to.
pub(super) fn uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

pub(super) fn repo_with(files: &[(&str, &[u8])]) -> (TempDir, Repo) {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::init(dir.path(), None, None).unwrap();
    let mut state = State::empty(DEFAULT_SPEC);
    for (path, content) in files {
        let entry = if path.ends_with(".json") {
            Entry::Inline(json::parse(content).unwrap())
        } else {
            Entry::Object(repo.store().put_bytes(content).unwrap())
        };
        state.insert(path, entry).unwrap();
    }
    let lock = repo.lock().unwrap();
    repo.commit_state(&lock, &state, "base", None).unwrap();
    (dir, repo)
}

pub(super) fn sample() -> (TempDir, Repo, Overlay) {
    let (dir, repo) = repo_with(&[
        ("a.txt", b"alpha"),
        ("d/b.txt", b"beta"),
        ("d/e/c.txt", b"gamma"),
        ("conf.json", br#"{"k":[1,2]}"#),
    ]);
    let ov = Overlay::load_or_create(&repo, "m", "latest", Options::default()).unwrap();
    (dir, repo, ov)
}

pub(super) fn ino(ov: &Overlay, path: &str) -> u64 {
    ov.resolve(path).unwrap_or_else(|| panic!("{path} missing"))
}

pub(super) fn read_all(ov: &mut Overlay, path: &str) -> Vec<u8> {
    let h = ov.open(ino(ov, path), false, false).unwrap();
    let data = ov.read(&h, 0, 1 << 20).unwrap();
    ov.release(h);
    data
}

pub(super) fn write_file(ov: &mut Overlay, path: &str, data: &[u8]) {
    let ino = match ov.resolve(path) {
        Some(i) => i,
        None => {
            let (dir, name) = split(path);
            let parent = ino(ov, dir);
            let (attr, h) = ov.create(parent, name, 0o644, uid(), uid()).unwrap();
            ov.release(h);
            attr.ino
        }
    };
    let h = ov.open(ino, true, true).unwrap();
    ov.write(&h, 0, data).unwrap();
    ov.release(h);
}

/// Everything visible: path, kind, mode, nlink and content or target, in path order.
pub(super) fn dump(ov: &mut Overlay) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![(ROOT_INO, String::new())];
    while let Some((dir, path)) = todo.pop() {
        for (name, child, kind) in ov.readdir(dir).unwrap() {
            let p = join(&path, &name);
            let a = ov.getattr(child).unwrap();
            let what = match kind {
                Kind::Dir => {
                    todo.push((child, p.clone()));
                    "dir".to_string()
                }
                Kind::Symlink => format!("-> {}", ov.readlink(child).unwrap()),
                k if k.is_special() => format!("{} rdev={}", k.describe(), a.rdev),
                _ => {
                    let bytes = read_all(ov, &p);
                    assert_eq!(bytes.len() as u64, a.size, "size of {p}");
                    format!("{:?}", String::from_utf8_lossy(&bytes))
                }
            };
            out.push(format!("{p} {:o} {} {what}", a.mode, a.nlink));
        }
    }
    out.sort();
    out
}

pub(super) fn reload(repo: &Repo, ov: Overlay) -> Overlay {
    drop(ov);
    Overlay::load(repo, "m", Options::default()).unwrap()
}

pub(super) fn err(r: Result<impl std::fmt::Debug>) -> i32 {
    r.unwrap_err().errno()
}

#[test]
fn base_inodes_follow_sorted_paths_and_content_reads_back() {
    let (_d, _repo, mut ov) = sample();
    // Sorted keys: a.txt, conf.json, d/b.txt, d/e/c.txt; dirs just before their first file.
    assert_eq!(ino(&ov, "a.txt"), 2);
    assert_eq!(ino(&ov, "conf.json"), 3);
    assert_eq!(ino(&ov, "d"), 4);
    assert_eq!(ino(&ov, "d/b.txt"), 5);
    assert_eq!(ino(&ov, "d/e"), 6);
    assert_eq!(ino(&ov, "d/e/c.txt"), 7);
    assert_eq!(read_all(&mut ov, "d/e/c.txt"), b"gamma");
    assert_eq!(
        read_all(&mut ov, "conf.json"),
        json::render_checkout(&json::parse(br#"{"k":[1,2]}"#).unwrap())
    );
    let a = ov.lookup(ROOT_INO, "d").unwrap();
    assert_eq!((a.kind, a.mode, a.nlink), (Kind::Dir, 0o755, 3));
    let f = ov.getattr(2).unwrap();
    assert_eq!((f.kind, f.mode, f.size, f.nlink), (Kind::File, 0o644, 5, 1));
    assert_eq!(err(ov.lookup(ROOT_INO, "nope")), libc::ENOENT);
    assert_eq!(err(ov.lookup(2, "x")), libc::ENOTDIR);
    let names: Vec<_> = ov
        .readdir(ROOT_INO)
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(names, ["a.txt", "conf.json", "d"]);
    assert!(ov.is_clean());
    assert_eq!(ov.status_text().unwrap(), "");
    assert_eq!(ov.diff_text().unwrap(), "{}\n");
}

#[test]
fn create_is_exclusive_and_checks_names() {
    let (_d, repo, mut ov) = sample();
    let (attr, h) = ov.create(ROOT_INO, "new", 0o600, uid(), uid()).unwrap();
    assert!(attr.ino > 7, "new inodes are allocated above the base");
    assert_eq!((attr.mode, attr.uid, attr.size), (0o600, uid(), 0));
    ov.write(&h, 0, b"hello").unwrap();
    assert_eq!(ov.read(&h, 1, 3).unwrap(), b"ell");
    ov.release(h);
    assert_eq!(err(ov.create(ROOT_INO, "new", 0o644, 0, 0)), libc::EEXIST);
    assert_eq!(err(ov.create(ROOT_INO, "a.txt", 0o644, 0, 0)), libc::EEXIST);
    assert_eq!(err(ov.create(ROOT_INO, "x/y", 0o644, 0, 0)), libc::EINVAL);
    assert_eq!(err(ov.create(ROOT_INO, "..", 0o644, 0, 0)), libc::EINVAL);
    assert_eq!(
        err(ov.create(ROOT_INO, &"n".repeat(256), 0o644, 0, 0)),
        libc::ENAMETOOLONG
    );
    assert_eq!(err(ov.create(ROOT_INO, ".pvr", 0o644, 0, 0)), libc::EPERM);
    assert_eq!(err(ov.create(2, "x", 0o644, 0, 0)), libc::ENOTDIR);
    // Writing through a read-only handle: EBADF, naming the file.
    let r = ov.open(attr.ino, false, false).unwrap();
    let e = ov.write(&r, 0, b"x").unwrap_err();
    assert_eq!(e.errno(), libc::EBADF);
    assert!(e.to_string().starts_with("write '/new'"), "{e}");
    ov.release(r);
    let ov = reload(&repo, ov);
    assert_eq!(
        ov.getattr(attr.ino).unwrap().size,
        5,
        "inode kept across reload"
    );
}

#[test]
fn open_for_write_copies_up_and_leaves_the_store_alone() {
    let (_d, repo, mut ov) = sample();
    let id = repo.store().put_bytes(b"beta").unwrap();
    let b = ino(&ov, "d/b.txt");
    let r = ov.open(b, false, false).unwrap();
    assert!(matches!(r, Handle::Blob { .. }), "reads need no copy-up");
    assert!(ov.uppers.is_empty());
    let h = ov.open(b, true, false).unwrap();
    ov.write(&h, 4, b"!").unwrap();
    ov.release(h);
    assert_eq!(read_all(&mut ov, "d/b.txt"), b"beta!");
    assert_eq!(repo.store().read_verified(&id, None).unwrap(), b"beta");
    // O_TRUNC skips the copy.
    let h = ov.open(ino(&ov, "a.txt"), true, true).unwrap();
    ov.release(h);
    assert_eq!(read_all(&mut ov, "a.txt"), b"");
    // Inline JSON is copied up as its rendering.
    let h = ov.open(ino(&ov, "conf.json"), true, false).unwrap();
    let before = ov.read(&h, 0, 100).unwrap();
    ov.release(h);
    assert!(before.starts_with(b"{\n    \"k\""));
    let mut ov = reload(&repo, ov);
    assert_eq!(read_all(&mut ov, "d/b.txt"), b"beta!");
    assert_eq!(ov.status_text().unwrap(), "C a.txt\nC d/b.txt\n");
}

#[test]
fn unlink_keeps_open_handles_working() {
    let (_d, repo, mut ov) = sample();
    let a = ino(&ov, "a.txt");
    let h = ov.open(a, true, false).unwrap();
    ov.unlink(ROOT_INO, "a.txt").unwrap();
    assert_eq!(err(ov.lookup(ROOT_INO, "a.txt")), libc::ENOENT);
    ov.write(&h, 5, b"+").unwrap();
    assert_eq!(ov.read(&h, 0, 10).unwrap(), b"alpha+");
    // Through a compaction (which deletes unreferenced upper files) the open file lives on.
    ov.compact().unwrap();
    assert_eq!(ov.getattr(a).unwrap().size, 6);
    assert_eq!(ov.getattr(a).unwrap().nlink, 0);
    ov.release(h);
    assert!(!ov.nodes.contains_key(&a));
    ov.compact().unwrap();
    let uppers = fs::read_dir(ov.dir().join("upper")).unwrap().count();
    assert_eq!(
        uppers, 0,
        "the upper file of the closed, unlinked file is gone"
    );
    assert_eq!(err(ov.unlink(ROOT_INO, "a.txt")), libc::ENOENT);
    assert_eq!(err(ov.unlink(ROOT_INO, "d")), libc::EISDIR);
    // A read handle of a base blob outlives the unlink too.
    let b = ino(&ov, "d/b.txt");
    let r = ov.open(b, false, false).unwrap();
    ov.unlink(ino(&ov, "d"), "b.txt").unwrap();
    assert_eq!(ov.read(&r, 0, 10).unwrap(), b"beta");
    let ov = reload(&repo, ov);
    assert!(ov.resolve("a.txt").is_none() && ov.resolve("d/b.txt").is_none());
    assert_eq!(ov.status_text().unwrap(), "D a.txt\nD d/b.txt\n");
}

#[test]
fn rename_follows_posix() {
    let (_d, repo, mut ov) = sample();
    let d = ino(&ov, "d");
    let e = ino(&ov, "d/e");
    let none = RenameFlags::default();
    // file over file
    write_file(&mut ov, "x", b"x");
    ov.rename(ROOT_INO, "x", ROOT_INO, "a.txt", none).unwrap();
    assert_eq!(read_all(&mut ov, "a.txt"), b"x");
    assert!(ov.resolve("x").is_none());
    // errors
    assert_eq!(
        err(ov.rename(ROOT_INO, "nope", ROOT_INO, "y", none)),
        libc::ENOENT
    );
    assert_eq!(
        err(ov.rename(ROOT_INO, "a.txt", ROOT_INO, "d", none)),
        libc::EISDIR
    );
    assert_eq!(
        err(ov.rename(ROOT_INO, "d", ROOT_INO, "a.txt", none)),
        libc::ENOTDIR
    );
    assert_eq!(err(ov.rename(ROOT_INO, "d", e, "in", none)), libc::EINVAL);
    assert_eq!(err(ov.rename(ROOT_INO, "d", d, "in", none)), libc::EINVAL);
    ov.mkdir(ROOT_INO, "full", 0o755, uid(), uid()).unwrap();
    write_file(&mut ov, "full/f", b"f");
    assert_eq!(
        err(ov.rename(ROOT_INO, "d", ROOT_INO, "full", none)),
        libc::ENOTEMPTY
    );
    let noreplace = RenameFlags {
        noreplace: true,
        exchange: false,
    };
    assert_eq!(
        err(ov.rename(ROOT_INO, "a.txt", d, "b.txt", noreplace)),
        libc::EEXIST
    );
    // dir over empty dir, keeping inodes
    ov.mkdir(ROOT_INO, "empty", 0o755, uid(), uid()).unwrap();
    ov.rename(ROOT_INO, "d", ROOT_INO, "empty", none).unwrap();
    assert_eq!(ino(&ov, "empty"), d);
    assert_eq!(ino(&ov, "empty/e"), e);
    assert_eq!(read_all(&mut ov, "empty/e/c.txt"), b"gamma");
    // exchange a file and a directory
    let ex = RenameFlags {
        noreplace: false,
        exchange: true,
    };
    ov.rename(ROOT_INO, "a.txt", ROOT_INO, "full", ex).unwrap();
    assert_eq!(ov.lookup(ROOT_INO, "a.txt").unwrap().kind, Kind::Dir);
    assert_eq!(read_all(&mut ov, "full"), b"x");
    assert_eq!(
        err(ov.rename(ROOT_INO, "full", ROOT_INO, "missing", ex)),
        libc::ENOENT
    );
    assert_eq!(err(ov.rename(ROOT_INO, "empty", e, "z", ex)), libc::ENOENT);
    assert_eq!(
        err(ov.rename(ROOT_INO, "empty", e, "c.txt", ex)),
        libc::EINVAL
    );
    assert_eq!(
        err(ov.rename(e, "c.txt", ROOT_INO, "empty", ex)),
        libc::EINVAL
    );
    assert_eq!(
        err(ov.rename(e, "c.txt", ROOT_INO, "empty", none)),
        libc::ENOTEMPTY
    );
    // rename onto another name of the same file does nothing
    ov.link(ino(&ov, "full"), ROOT_INO, "hard").unwrap();
    ov.rename(ROOT_INO, "full", ROOT_INO, "hard", none).unwrap();
    assert!(ov.resolve("full").is_some() && ov.resolve("hard").is_some());
    let before = dump(&mut ov);
    let mut ov = reload(&repo, ov);
    assert_eq!(dump(&mut ov), before);
    assert_eq!(
        ov.status_text().unwrap(),
        "A a.txt/f\nA empty/b.txt\nA empty/e/c.txt\nA full\nA hard\nD a.txt\nD d/b.txt\nD d/e/c.txt\n"
    );
}

#[test]
fn mkdir_and_rmdir() {
    let (_d, repo, mut ov) = sample();
    let a = ov.mkdir(ROOT_INO, "n", 0o700, uid(), uid()).unwrap();
    assert_eq!((a.kind, a.mode, a.nlink), (Kind::Dir, 0o700, 2));
    assert_eq!(ov.getattr(ROOT_INO).unwrap().nlink, 4);
    assert_eq!(err(ov.mkdir(ROOT_INO, "n", 0o755, 0, 0)), libc::EEXIST);
    assert_eq!(err(ov.mkdir(ROOT_INO, "a.txt", 0o755, 0, 0)), libc::EEXIST);
    assert_eq!(err(ov.rmdir(ROOT_INO, "d")), libc::ENOTEMPTY);
    assert_eq!(err(ov.rmdir(ROOT_INO, "a.txt")), libc::ENOTDIR);
    assert_eq!(err(ov.rmdir(ROOT_INO, "zz")), libc::ENOENT);
    let d = ino(&ov, "d");
    let e = ino(&ov, "d/e");
    ov.unlink(e, "c.txt").unwrap();
    ov.rmdir(d, "e").unwrap();
    ov.unlink(d, "b.txt").unwrap();
    ov.rmdir(ROOT_INO, "d").unwrap();
    let mut ov = reload(&repo, ov);
    assert!(ov.resolve("d").is_none());
    assert_eq!(ov.lookup(ROOT_INO, "n").unwrap().mode, 0o700);
    assert_eq!(dump(&mut ov).len(), 3);
}

#[test]
fn symlinks() {
    let (_d, repo, mut ov) = sample();
    let a = ov.symlink(ROOT_INO, "l", "d/b.txt", uid(), uid()).unwrap();
    assert_eq!((a.kind, a.size), (Kind::Symlink, 7));
    assert_eq!(ov.readlink(a.ino).unwrap(), "d/b.txt");
    assert_eq!(err(ov.readlink(2)), libc::EINVAL);
    assert_eq!(err(ov.open(a.ino, false, false)), libc::ELOOP);
    assert_eq!(err(ov.symlink(ROOT_INO, "l", "x", 0, 0)), libc::EEXIST);
    assert_eq!(
        err(ov.symlink(ROOT_INO, "m", &"x".repeat(4096), 0, 0)),
        libc::ENAMETOOLONG
    );
    assert_eq!(err(ov.symlink(ROOT_INO, "m", "", 0, 0)), libc::ENOENT);
    let ov = reload(&repo, ov);
    assert_eq!(ov.readlink(a.ino).unwrap(), "d/b.txt");
}

#[test]
fn hard_links_share_data_and_survive_reload() {
    let (_d, repo, mut ov) = sample();
    let a = ino(&ov, "a.txt");
    let d = ino(&ov, "d");
    let attr = ov.link(a, d, "a2").unwrap();
    assert_eq!((attr.ino, attr.nlink), (a, 2));
    assert_eq!(err(ov.link(d, ROOT_INO, "d2")), libc::EPERM);
    assert_eq!(err(ov.link(a, ROOT_INO, "conf.json")), libc::EEXIST);
    let h = ov.open(a, true, false).unwrap();
    ov.write(&h, 0, b"ALPHA").unwrap();
    ov.release(h);
    assert_eq!(read_all(&mut ov, "d/a2"), b"ALPHA");
    let mut ov = reload(&repo, ov);
    assert_eq!(ino(&ov, "d/a2"), ino(&ov, "a.txt"));
    assert_eq!(ov.getattr(ino(&ov, "a.txt")).unwrap().nlink, 2);
    ov.unlink(ROOT_INO, "a.txt").unwrap();
    assert_eq!(ov.getattr(ino(&ov, "d/a2")).unwrap().nlink, 1);
    assert_eq!(read_all(&mut ov, "d/a2"), b"ALPHA");
    // Also across a compaction, and for a base file linked without copy-up.
    ov.link(ino(&ov, "d/b.txt"), ROOT_INO, "b2").unwrap();
    ov.compact().unwrap();
    let ov = reload(&repo, ov);
    assert_eq!(ino(&ov, "b2"), ino(&ov, "d/b.txt"));
}

#[test]
fn special_files_are_typed_nodes_that_survive_replay_and_snapshots() {
    let (_d, repo, mut ov) = sample();
    let d = ino(&ov, "d");
    let fifo = ov
        .mknod(ROOT_INO, "fifo", Kind::Fifo, 0o640, 77, uid(), uid())
        .unwrap();
    // rdev means something for devices only (as on ext4); sizes are 0.
    assert_eq!(
        (fifo.kind, fifo.mode, fifo.rdev, fifo.size, fifo.nlink),
        (Kind::Fifo, 0o640, 0, 0, 1)
    );
    let sock = ov
        .mknod(d, "sock", Kind::Socket, 0o755, 0, uid(), uid())
        .unwrap();
    let chr = ov
        .mknod(d, "null", Kind::CharDevice, 0o666, 0x103, 7, 8)
        .unwrap();
    let blk = ov
        .mknod(
            ROOT_INO,
            "disk",
            Kind::BlockDevice,
            0o660,
            0x801,
            uid(),
            uid(),
        )
        .unwrap();
    assert_eq!(
        (chr.kind, chr.rdev, chr.uid, chr.gid),
        (Kind::CharDevice, 0x103, 7, 8)
    );
    assert_eq!((blk.kind, blk.rdev), (Kind::BlockDevice, 0x801));
    assert_eq!(ov.lookup(d, "sock").unwrap().kind, Kind::Socket);
    let listed: Vec<_> = ov.readdir(d).unwrap();
    assert!(listed.contains(&("sock".into(), sock.ino, Kind::Socket)));
    assert!(listed.contains(&("null".into(), chr.ino, Kind::CharDevice)));
    // Names are checked as for any node; regular files are `create`d, not mknod'ed.
    assert_eq!(
        err(ov.mknod(ROOT_INO, "fifo", Kind::Fifo, 0o644, 0, uid(), uid())),
        libc::EEXIST
    );
    assert_eq!(
        err(ov.mknod(ROOT_INO, "f", Kind::File, 0o644, 0, uid(), uid())),
        libc::EINVAL
    );
    assert_eq!(
        err(ov.mknod(ROOT_INO, ".pvr", Kind::Fifo, 0o644, 0, uid(), uid())),
        libc::EPERM
    );
    // No content: the kernel opens them itself.
    assert_eq!(err(ov.open(fifo.ino, false, false)), libc::ENXIO);
    let trunc = SetAttr {
        size: Some(0),
        ..Default::default()
    };
    assert_eq!(err(ov.setattr(fifo.ino, &trunc)), libc::EINVAL);
    // Link, rename, chmod, chown, utimens, unlink as any other node.
    let t = UNIX_EPOCH + Duration::from_secs(1_234_567);
    ov.link(fifo.ino, d, "fifo2").unwrap();
    ov.rename(ROOT_INO, "disk", d, "disk", RenameFlags::default())
        .unwrap();
    let set = SetAttr {
        mode: Some(0o600),
        uid: Some(9),
        gid: Some(10),
        atime: Some(t),
        mtime: Some(t),
        ..Default::default()
    };
    ov.setattr(fifo.ino, &set).unwrap();
    ov.unlink(d, "sock").unwrap();
    let expect = |ov: &Overlay| {
        let f = ov.lookup(ROOT_INO, "fifo").unwrap();
        assert_eq!(
            (f.kind, f.mode, f.uid, f.gid, f.mtime, f.nlink),
            (Kind::Fifo, 0o600, 9, 10, t, 2)
        );
        assert_eq!(ov.resolve("d/fifo2"), Some(f.ino), "one node, two names");
        let b = ov.lookup(ino(ov, "d"), "disk").unwrap();
        assert_eq!((b.kind, b.rdev, b.mode), (Kind::BlockDevice, 0x801, 0o660));
        assert!(ov.resolve("disk").is_none() && ov.resolve("d/sock").is_none());
        let c = ov.lookup(ino(ov, "d"), "null").unwrap();
        assert_eq!((c.kind, c.rdev, c.uid), (Kind::CharDevice, 0x103, 7));
    };
    expect(&ov);
    let view = dump(&mut ov);
    // Replayed from the journal...
    let mut ov = reload(&repo, ov);
    expect(&ov);
    assert_eq!(dump(&mut ov), view);
    // ...and from a snapshot (every load compacts; this reload replays that snapshot only).
    assert_eq!(
        fs::metadata(journal::journal_path(ov.dir())).unwrap().len(),
        16
    );
    let mut ov = reload(&repo, ov);
    expect(&ov);
    assert_eq!(dump(&mut ov), view);
}

/// `link` changes the file's ctime and its new directory's mtime and ctime (POSIX; pjdfstest
/// checks it), as `unlink` and `rename` do.
#[test]
fn link_unlink_and_rename_update_ctime_and_the_directories_times() {
    let (_d, _repo, mut ov) = sample();
    let a = ino(&ov, "a.txt");
    let d = ino(&ov, "d");
    let before = (ov.getattr(a).unwrap(), ov.getattr(d).unwrap());
    std::thread::sleep(Duration::from_millis(20));
    ov.link(a, d, "a2").unwrap();
    let after = (ov.getattr(a).unwrap(), ov.getattr(d).unwrap());
    assert!(after.0.ctime > before.0.ctime, "link: file ctime");
    assert_eq!(after.0.mtime, before.0.mtime, "link: file mtime unchanged");
    assert!(after.1.mtime > before.1.mtime && after.1.ctime > before.1.ctime);
    for op in ["unlink", "rename"] {
        let before = ov.getattr(a).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        match op {
            "unlink" => ov.unlink(d, "a2").unwrap(),
            _ => ov
                .rename(ROOT_INO, "a.txt", ROOT_INO, "moved", RenameFlags::default())
                .unwrap(),
        }
        assert!(ov.getattr(a).unwrap().ctime > before.ctime, "{op}: ctime");
    }
}

#[test]
fn setattr_chmod_chown_utimens_truncate() {
    let (_d, repo, mut ov) = sample();
    let a = ino(&ov, "a.txt");
    let t = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let attr = ov
        .setattr(
            a,
            &SetAttr {
                mode: Some(0o100755),
                uid: Some(7),
                gid: Some(8),
                mtime: Some(t),
                atime: Some(t),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        (attr.mode, attr.uid, attr.gid, attr.mtime),
        (0o755, 7, 8, t)
    );
    assert!(ov.uppers.is_empty(), "chmod does not copy up");
    let grow = SetAttr {
        size: Some(8),
        ..Default::default()
    };
    assert_eq!(ov.setattr(a, &grow).unwrap().size, 8);
    assert_eq!(read_all(&mut ov, "a.txt"), b"alpha\0\0\0");
    let shrink = SetAttr {
        size: Some(2),
        mtime: Some(t),
        ..Default::default()
    };
    assert_eq!(ov.setattr(a, &shrink).unwrap().mtime, t);
    assert_eq!(err(ov.setattr(ino(&ov, "d"), &grow)), libc::EISDIR);
    let d = ov
        .setattr(
            ino(&ov, "d"),
            &SetAttr {
                mtime: Some(t),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(d.mtime, t);
    let root = SetAttr {
        mode: Some(0o700),
        uid: Some(5),
        mtime: Some(t),
        atime: Some(t),
        ..Default::default()
    };
    ov.setattr(ROOT_INO, &root).unwrap();
    let mut ov = reload(&repo, ov);
    let r = ov.getattr(ROOT_INO).unwrap();
    assert_eq!((r.mode, r.uid, r.mtime), (0o700, 5, t));
    let attr = ov.getattr(ino(&ov, "a.txt")).unwrap();
    assert_eq!(
        (attr.mode, attr.uid, attr.gid, attr.mtime, attr.size),
        (0o755, 7, 8, t, 2)
    );
    assert_eq!(ov.getattr(ino(&ov, "d")).unwrap().mtime, t);
    assert_eq!(read_all(&mut ov, "a.txt"), b"al");
}

#[test]
fn an_overlay_has_one_owner_and_discard_removes_it() {
    let (_d, repo, ov) = sample();
    let e = Overlay::load(&repo, "m", Options::default()).err().unwrap();
    assert!(matches!(e, Error::Locked { .. }), "{e}");
    drop(ov);
    Overlay::discard(&repo, "m").unwrap();
    assert!(!overlay_dir(&repo, "m").exists());
    assert!(Overlay::load(&repo, "m", Options::default()).is_err());
    assert!(Overlay::load_or_create(&repo, "../x", "latest", Options::default()).is_err());
}

/// Apply `op` to a fresh overlay, then cut the journal at every byte of the op's records: the
/// replayed view must equal the view before or after the op, never anything else.
fn torn_tail_check(name: &str, op: impl Fn(&mut Overlay)) {
    let (_d, repo, mut ov) = sample();
    write_file(&mut ov, "d/new", b"n");
    ov.link(ino(&ov, "d/new"), ROOT_INO, "n2").unwrap();
    let before = dump(&mut ov);
    let jpath = journal::journal_path(ov.dir());
    let start = fs::metadata(&jpath).unwrap().len();
    op(&mut ov);
    let after = dump(&mut ov);
    assert_ne!(before, after, "{name} changes nothing");
    let full = fs::read(&jpath).unwrap();
    assert!(full.len() as u64 > start, "{name} wrote no record");
    drop(ov);
    let mut seen_before = false;
    for cut in start..=full.len() as u64 {
        fs::write(&jpath, &full[..cut as usize]).unwrap();
        let mut ov = Overlay::load(&repo, "m", Options::default()).unwrap();
        let view = dump(&mut ov);
        // Data of files is not journaled: compare the namespace and metadata only.
        if view == before {
            seen_before = true;
        } else {
            assert_eq!(view, after, "{name}: cut at {cut} of {}", full.len());
        }
        drop(ov);
    }
    assert!(seen_before, "{name}: a cut never gave the old view");
}

#[test]
fn torn_journal_tails_replay_to_before_or_after() {
    torn_tail_check("mkdir", |ov| {
        ov.mkdir(ROOT_INO, "m", 0o755, uid(), uid()).unwrap();
    });
    torn_tail_check("create", |ov| {
        let (_, h) = ov.create(ROOT_INO, "c", 0o644, uid(), uid()).unwrap();
        ov.release(h);
    });
    torn_tail_check("rename-dir", |ov| {
        ov.rename(ROOT_INO, "d", ROOT_INO, "z", RenameFlags::default())
            .unwrap();
    });
    torn_tail_check("exchange", |ov| {
        let ex = RenameFlags {
            exchange: true,
            ..Default::default()
        };
        ov.rename(ROOT_INO, "a.txt", ROOT_INO, "d", ex).unwrap();
    });
    torn_tail_check("unlink", |ov| ov.unlink(ROOT_INO, "n2").unwrap());
    torn_tail_check("link", |ov| {
        ov.link(2, ROOT_INO, "l").unwrap();
    });
    torn_tail_check("symlink", |ov| {
        ov.symlink(ROOT_INO, "s", "a.txt", uid(), uid()).unwrap();
    });
    torn_tail_check("chmod", |ov| {
        let set = SetAttr {
            mode: Some(0o600),
            ..Default::default()
        };
        ov.setattr(2, &set).unwrap();
    });
    torn_tail_check("mkfifo", |ov| {
        ov.mknod(ROOT_INO, "p", Kind::Fifo, 0o640, 0, uid(), uid())
            .unwrap();
    });
    torn_tail_check("mknod-char", |ov| {
        ov.mknod(
            ino(ov, "d"),
            "null",
            Kind::CharDevice,
            0o666,
            0x103,
            uid(),
            uid(),
        )
        .unwrap();
    });
    torn_tail_check("copy-up", |ov| {
        let h = ov.open(ino(ov, "d/b.txt"), true, false).unwrap();
        ov.release(h);
        ov.unlink(ino(ov, "d"), "b.txt").unwrap();
    });
}

#[test]
fn a_stale_journal_after_compaction_is_ignored_and_garbage_is_cut() {
    let (_d, repo, mut ov) = sample();
    write_file(&mut ov, "f", b"1");
    let jpath = journal::journal_path(ov.dir());
    let old_journal = fs::read(&jpath).unwrap();
    ov.compact().unwrap();
    let expect = dump(&mut ov);
    drop(ov);
    // As if the crash came between writing the snapshot and resetting the journal.
    fs::write(&jpath, &old_journal).unwrap();
    let mut ov = Overlay::load(&repo, "m", Options::default()).unwrap();
    assert_eq!(dump(&mut ov), expect);
    ov.mkdir(ROOT_INO, "later", 0o755, uid(), uid()).unwrap();
    drop(ov);
    // A corrupt tail (bit flip in the last record) drops that record only.
    let mut bytes = fs::read(&jpath).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0x40;
    fs::write(&jpath, &bytes).unwrap();
    let mut ov = Overlay::load(&repo, "m", Options::default()).unwrap();
    assert_eq!(dump(&mut ov), expect);
    // ...and appends continue cleanly after the cut.
    ov.mkdir(ROOT_INO, "again", 0o755, uid(), uid()).unwrap();
    let ov = reload(&repo, ov);
    assert!(ov.resolve("again").is_some());
}

#[test]
fn orphan_upper_files_are_cleaned() {
    let (_d, repo, ov) = sample();
    let orphan = ov.dir().join("upper").join("u999");
    fs::write(&orphan, b"left by a crash").unwrap();
    let ov = reload(&repo, ov);
    assert!(!orphan.exists());
    drop(ov);
}

// ----- commit, status, diff ----------------------------------------------------------------------

#[test]
fn commit_makes_a_revision_and_rebases() {
    let (_d, repo, mut ov) = sample();
    write_file(&mut ov, "d/e/c.txt", b"GAMMA");
    write_file(&mut ov, "new.json", br#"{"b": 2.50, "a": 1}"#);
    ov.unlink(ROOT_INO, "a.txt").unwrap();
    ov.rename(
        ROOT_INO,
        "conf.json",
        ino(&ov, "d"),
        "conf.txt",
        RenameFlags::default(),
    )
    .unwrap();
    assert_eq!(
        ov.status_text().unwrap(),
        "A d/conf.txt\nA new.json\nD a.txt\nD conf.json\nC d/e/c.txt\n"
    );
    let diff = ov.diff_text().unwrap();
    assert!(diff.contains("\"a.txt\": null"), "{diff}");
    assert!(
        diff.contains("\"new.json\": {\n\t\t\"a\": 1,\n\t\t\"b\": 2.5"),
        "{diff}"
    );
    let view = dump(&mut ov);
    let report = ov.commit("change").unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(report.status.len(), 5);
    assert_eq!(report.revision.rev, 2);
    let head = repo.head_state().unwrap();
    assert_eq!(head, *ov.base_state());
    // The stored diff (computed from the change alone) turns the parent into the new state.
    let diff = repo.load_diff(&report.revision).unwrap().unwrap();
    let parent = repo.load_state(&repo.resolve("1").unwrap()).unwrap();
    assert_eq!(
        crate::patch::apply_to_state(&parent, &diff, "test").unwrap(),
        head
    );
    assert_eq!(
        head.get("d/e/c.txt"),
        Some(&Entry::Object(ObjectId::hash_bytes(b"GAMMA")))
    );
    let conf = json::render_checkout(&json::parse(br#"{"k":[1,2]}"#).unwrap());
    assert_eq!(
        head.get("d/conf.txt"),
        Some(&Entry::Object(ObjectId::hash_bytes(&conf)))
    );
    assert!(repo.store().contains(&ObjectId::hash_bytes(&conf)));
    assert!(matches!(head.get("new.json"), Some(Entry::Inline(_))));
    assert!(head.get("a.txt").is_none());
    // The view did not change, the overlay is empty except for the .json kept byte-exact.
    assert_eq!(dump(&mut ov), view);
    assert_eq!(ov.status_text().unwrap(), "");
    assert_eq!(ov.affected.iter().collect::<Vec<_>>(), ["new.json"]);
    let mut ov = reload(&repo, ov);
    assert_eq!(ov.base_rev(), 2);
    assert_eq!(dump(&mut ov), view);
    assert_eq!(ov.status_text().unwrap(), "");
}

#[test]
fn commit_refuses_invalid_json_and_keeps_everything() {
    let (_d, repo, mut ov) = sample();
    write_file(&mut ov, "bad.json", b"{'x'");
    write_file(&mut ov, "ok.txt", b"ok");
    let before_json = fs::read(repo.json_path()).unwrap();
    let e = ov.commit("x").unwrap_err();
    assert!(
        matches!(e, Error::InvalidJson { ref path, .. } if path == "bad.json"),
        "{e}"
    );
    assert!(e.to_string().contains("bad.json"));
    assert_eq!(fs::read(repo.json_path()).unwrap(), before_json);
    assert_eq!(repo.latest().unwrap().rev, 1);
    assert_eq!(ov.status_text().unwrap_err().to_string(), e.to_string());
    write_file(&mut ov, "bad.json", b"[1]");
    assert_eq!(ov.commit("x").unwrap().revision.rev, 2);
}

#[test]
fn commit_refuses_when_the_head_moved() {
    let (_d, repo, mut ov) = sample();
    write_file(&mut ov, "f", b"f");
    write_file(&mut ov, "d/b.txt", b"changed");
    let lock = repo.lock().unwrap();
    let mut other = repo.head_state().unwrap();
    other.remove("a.txt");
    repo.commit_state(&lock, &other, "elsewhere", None).unwrap();
    drop(lock);
    let e = ov.commit("x").unwrap_err().to_string();
    assert!(
        e.contains("head moved to revision 2") && e.contains("revision 1"),
        "{e}"
    );
    assert_eq!(repo.latest().unwrap().rev, 2);
    // The in-memory base was put back: the changes are still changes against revision 1.
    assert_eq!(ov.status_text().unwrap(), "A f\nC d/b.txt\n");
    assert_eq!(ov.base_rev(), 1);
}

#[test]
fn files_open_for_writing_keep_working_across_a_commit() {
    let (_d, repo, mut ov) = sample();
    let (attr, h) = ov.create(ROOT_INO, "log", 0o644, uid(), uid()).unwrap();
    ov.write(&h, 0, b"one\n").unwrap();
    ov.commit("first").unwrap();
    ov.write(&h, 4, b"two\n").unwrap();
    assert_eq!(ov.status_text().unwrap(), "C log\n");
    ov.release(h);
    let report = ov.commit("second").unwrap();
    assert_eq!(report.revision.rev, 3);
    let head = repo.head_state().unwrap();
    assert_eq!(
        head.get("log"),
        Some(&Entry::Object(ObjectId::hash_bytes(b"one\ntwo\n")))
    );
    assert_eq!(ov.getattr(attr.ino).unwrap().size, 8);
    assert!(ov.is_clean());
}

#[test]
fn commit_costs_the_change_not_the_tree() {
    // Remove the object of an untouched base file: a commit that read or hashed the whole tree
    // would fail on it; one that visits only the change does not.
    let (_d, repo, mut ov) = sample();
    let gamma = ObjectId::hash_bytes(b"gamma");
    fs::remove_file(repo.store().path_of(&gamma)).unwrap();
    write_file(&mut ov, "a.txt", b"changed");
    ov.rename(
        ROOT_INO,
        "conf.json",
        ROOT_INO,
        "conf2.json",
        RenameFlags::default(),
    )
    .unwrap();
    ov.commit("small").unwrap();
    assert_eq!(
        repo.head_state().unwrap().get("d/e/c.txt"),
        Some(&Entry::Object(gamma))
    );
}

#[test]
fn moving_content_across_the_inline_rule_converts_it() {
    let (_d, repo, mut ov) = sample();
    write_file(&mut ov, "raw.txt", br#"{"z":0}"#);
    ov.commit("raw").unwrap();
    ov.rename(
        ROOT_INO,
        "raw.txt",
        ROOT_INO,
        "raw.json",
        RenameFlags::default(),
    )
    .unwrap();
    write_file(
        &mut ov,
        "hex.json",
        format!("\"{}\"", "ab".repeat(32)).as_bytes(),
    );
    ov.commit("moved").unwrap();
    let head = repo.head_state().unwrap();
    assert_eq!(
        head.get("raw.json"),
        Some(&Entry::Inline(json::parse(br#"{"z":0}"#).unwrap()))
    );
    // A 64-hex JSON string would read back as an object id: its bytes are stored instead.
    let hex = format!("\"{}\"", "ab".repeat(32));
    assert_eq!(
        head.get("hex.json"),
        Some(&Entry::Object(ObjectId::hash_bytes(hex.as_bytes())))
    );
}

#[test]
fn an_interrupted_commit_is_finished_on_load() {
    let (_d, repo, mut ov) = sample();
    write_file(&mut ov, "f", b"f");
    let view = dump(&mut ov);
    let (rev, _) = ov.commit_only("crash after the commit point").unwrap();
    drop(ov); // as if killed before the rebase
    let mut ov = Overlay::load(&repo, "m", Options::default()).unwrap();
    assert_eq!(ov.base_rev(), rev.rev);
    assert!(ov.is_clean());
    assert_eq!(dump(&mut ov), view);
}

#[test]
fn a_json_file_changed_only_in_layout_is_not_a_change() {
    let (_d, _repo, mut ov) = sample();
    write_file(&mut ov, "conf.json", b"{ \"k\" : [1,\n 2] }");
    assert_eq!(ov.status_text().unwrap(), "");
    assert_eq!(ov.diff_text().unwrap(), "{}\n");
    write_file(&mut ov, "conf.json", br#"{"k":[1,2,3]}"#);
    assert_eq!(ov.status_text().unwrap(), "C conf.json\n");
    assert_eq!(
        ov.diff_text().unwrap(),
        "{\n\t\"conf.json\": {\n\t\t\"k\": [\n\t\t\t1,\n\t\t\t2,\n\t\t\t3\n\t\t]\n\t}\n}\n"
    );
}

// ----- cost of create-heavy work -----------------------------------------------------------------

#[test]
fn the_compaction_threshold_follows_the_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let big = Snapshot {
        generation: 99,
        header: Header {
            base_rev: 1,
            base_state: String::new(),
            next_id: 1,
        },
        records: (0..2000)
            .map(|i| Record::Remove {
                path: format!("some/longish/path/{i}"),
            })
            .collect(),
    };
    let mut j = journal::write_snapshot(dir, &big).unwrap();
    let snap_len = fs::metadata(journal::snapshot_path(dir)).unwrap().len();
    // Past the minimum but not past twice the snapshot: a compaction now would rewrite the
    // whole snapshot for a few records (quadratic over a large untar).
    let rec = Record::Remove { path: "x".into() };
    let frame_len = journal::frame(&rec).len() as u64;
    let mut appended = 16;
    while appended + frame_len <= 2 * snap_len {
        j.append(&rec).unwrap();
        appended += frame_len;
        assert!(!j.wants_compaction(64), "at {appended} of {snap_len}");
    }
    j.append(&rec).unwrap();
    assert!(j.wants_compaction(64));
    // The position kept in memory is the file's length: appends never leave gaps or overlap.
    assert_eq!(
        fs::metadata(journal::journal_path(dir)).unwrap().len(),
        appended + frame_len
    );
}

#[test]
fn sync_after_many_creates_uses_one_flush_and_keeps_everything() {
    let (_d, repo, mut ov) = sample();
    for i in 0..(FSYNC_EACH_MAX + 10) {
        write_file(&mut ov, &format!("n{i}"), format!("data {i}").as_bytes());
    }
    assert!(ov.unsynced_uppers.len() > FSYNC_EACH_MAX);
    ov.sync().unwrap();
    assert!(ov.unsynced_uppers.is_empty());
    let expect = dump(&mut ov);
    let mut ov = reload(&repo, ov);
    assert_eq!(dump(&mut ov), expect);
    assert_eq!(read_all(&mut ov, "n70"), b"data 70");
}

#[test]
fn a_removed_big_file_frees_its_space_at_once_and_stays_removed() {
    let (_d, repo, mut ov) = sample();
    let uppers = |ov: &Overlay| fs::read_dir(ov.dir.join("upper")).unwrap().count();
    write_file(&mut ov, "big.bin", &vec![7u8; 3 << 20]);
    write_file(&mut ov, "small.txt", b"small");
    let before = uppers(&ov);
    let big = ino(&ov, "big.bin");
    ov.unlink(ROOT_INO, "big.bin").unwrap();
    ov.forget(big);
    assert_eq!(
        uppers(&ov),
        before - 1,
        "the big upper file is deleted right away"
    );
    let small = ino(&ov, "small.txt");
    ov.unlink(ROOT_INO, "small.txt").unwrap();
    ov.forget(small);
    assert_eq!(uppers(&ov), before - 1, "a small one waits for compaction");
    // The removal was made durable before the data went: a reload (as after a crash) agrees.
    drop(ov);
    let mut ov = Overlay::load(&repo, "m", Options::default()).unwrap();
    assert!(ov.resolve("big.bin").is_none() && ov.resolve("small.txt").is_none());
    assert_eq!(read_all(&mut ov, "a.txt"), b"alpha");
}

/// Upper files from the background pool behave like ones made on demand: compaction keeps
/// pool files nobody took yet, the files taken hold their data across commit and reload, and
/// pool files left by a crash (never journaled) are swept at the next load.
#[test]
fn pooled_upper_files_survive_compaction_commit_and_crash() {
    let (_dir, repo) = repo_with(&[("a.txt", b"alpha")]);
    let opts = Options {
        upper_pool: true,
        ..Options::default()
    };
    let mut ov = Overlay::load_or_create(&repo, "m", "latest", opts.clone()).unwrap();
    for i in 0..200 {
        write_file(&mut ov, &format!("f{i}"), format!("data {i}").as_bytes());
    }
    // Let the filler finish its batch; compaction must not take its files for orphans.
    let filled = |ov: &Overlay| {
        let p = ov.pool.as_ref().unwrap();
        p.ready.lock().len() == p.reserved.len()
    };
    for _ in 0..5000 {
        if filled(&ov) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(filled(&ov), "the pool filler made its files");
    // A file taken from the pool gets the create's time, not the time the pool made it.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let before = SystemTime::now() - std::time::Duration::from_millis(50);
    let (attr, h) = ov.create(ROOT_INO, "fresh", 0o644, uid(), uid()).unwrap();
    ov.release(h);
    assert!(
        attr.mtime >= before,
        "pooled file has a stale mtime {:?}",
        attr.mtime
    );
    assert!(ov.getattr(attr.ino).unwrap().ctime >= before);
    ov.compact().unwrap();
    let pool = ov.pool.as_ref().unwrap();
    for (id, _) in pool.ready.lock().iter() {
        assert!(
            ov.upper_path(*id).exists(),
            "compaction removed pool file u{id}"
        );
    }
    for i in 200..400 {
        write_file(&mut ov, &format!("f{i}"), format!("data {i}").as_bytes());
    }
    let uppers = |ov: &Overlay| fs::read_dir(ov.dir().join("upper")).unwrap().count();
    assert!(uppers(&ov) >= 400, "pool files exist beside the taken ones");
    drop(ov);
    let mut ov = Overlay::load(&repo, "m", opts.clone()).unwrap();
    assert_eq!(uppers(&ov), 401, "untaken pool files are gone after drop");
    for i in (0..400).step_by(37) {
        assert_eq!(
            read_all(&mut ov, &format!("f{i}")),
            format!("data {i}").as_bytes()
        );
    }
    // A crash leaves pool files behind, some with ids above every journaled one.
    let next = ov.next_id;
    drop(ov);
    for id in next..next + 300 {
        File::create(journal_free_upper(&repo, id)).unwrap();
    }
    let mut ov = Overlay::load(&repo, "m", opts).unwrap();
    assert_eq!(uppers(&ov), 401, "crash leftovers are swept at load");
    write_file(&mut ov, "after-crash", b"fresh");
    let report = ov.commit("pool").unwrap();
    assert_eq!(report.revision.rev, 2);
    assert_eq!(
        report.status.len(),
        402,
        "400 files, fresh and after-crash added"
    );
    assert_eq!(read_all(&mut ov, "f399"), b"data 399");
    assert_eq!(read_all(&mut ov, "after-crash"), b"fresh");
}

fn journal_free_upper(repo: &Repo, id: u64) -> std::path::PathBuf {
    overlay_dir(repo, "m").join("upper").join(format!("u{id}"))
}

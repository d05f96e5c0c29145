//! Unit tests of what a commit stores: the policy for what the format cannot hold, and whole
//! trees (modes, symlinks, empty directories). Helpers are `tests`'s.

use super::tests::*;
use super::*;

#[test]
fn commit_reports_what_the_format_cannot_hold() {
    let (_d, repo, mut ov) = sample();
    ov.mkdir(ROOT_INO, "empty", 0o755, uid(), uid()).unwrap();
    ov.symlink(ROOT_INO, "to-b", "d/b.txt", uid(), uid())
        .unwrap();
    ov.symlink(ino(&ov, "d"), "up", "../a.txt", uid(), uid())
        .unwrap();
    ov.symlink(ROOT_INO, "dangling", "nowhere", uid(), uid())
        .unwrap();
    ov.symlink(ROOT_INO, "abs", "/etc/passwd", uid(), uid())
        .unwrap();
    let set = SetAttr {
        mode: Some(0o755),
        ..Default::default()
    };
    ov.setattr(ino(&ov, "a.txt"), &set).unwrap();
    ov.mknod(ROOT_INO, "pipe", Kind::Fifo, 0o644, 0, uid(), uid())
        .unwrap();
    ov.mknod(
        ino(&ov, "d"),
        "null",
        Kind::CharDevice,
        0o666,
        0x103,
        uid(),
        uid(),
    )
    .unwrap();
    ov.mknod(ino(&ov, "d"), "sock", Kind::Socket, 0o755, 0, uid(), uid())
        .unwrap();
    ov.mknod(
        ROOT_INO,
        "disk",
        Kind::BlockDevice,
        0o660,
        0x801,
        uid(),
        uid(),
    )
    .unwrap();
    ov.symlink(ROOT_INO, "to-pipe", "pipe", uid(), uid())
        .unwrap();
    // Symlinks, the empty directory and the mode are changes; special files are not shown.
    assert_eq!(
        ov.status_text().unwrap(),
        "A abs\nA d/up\nA dangling\nA empty/\nA to-b\nA to-pipe\nC a.txt\n"
    );
    let report = ov.commit("odd").unwrap();
    let w = report.warnings.join("\n");
    for needle in [
        "fifo 'pipe' is not stored (the pvr format has no special files)",
        "character device 'd/null' is not stored (the pvr format has no special files)",
        "socket 'd/sock' is not stored (the pvr format has no special files)",
        "block device 'disk' is not stored (the pvr format has no special files)",
    ] {
        assert!(w.contains(needle), "missing {needle:?} in:\n{w}");
    }
    assert_eq!(report.warnings.len(), 4, "{w}");
    let head = repo.head_state().unwrap();
    let m = head.meta();
    for (link, target) in [
        ("to-b", "d/b.txt"),
        ("d/up", "../a.txt"),
        ("dangling", "nowhere"),
        ("abs", "/etc/passwd"),
        ("to-pipe", "pipe"),
    ] {
        assert_eq!(
            m.links.get(link).map(String::as_str),
            Some(target),
            "{link}"
        );
        assert!(head.get(link).is_none());
    }
    assert!(m.dirs.contains("empty"));
    assert_eq!(m.file_mode("a.txt"), 0o755);
    for p in ["pipe", "d/null", "d/sock", "disk"] {
        assert!(head.get(p).is_none(), "{p} stored");
    }
    assert!(ov.status_text().unwrap().is_empty());
    // They stay in the view and the overlay, across a reload too.
    let mut ov = reload(&repo, ov);
    assert_eq!(ov.lookup(ROOT_INO, "pipe").unwrap().kind, Kind::Fifo);
    let null = ov.lookup(ino(&ov, "d"), "null").unwrap();
    assert_eq!((null.kind, null.rdev), (Kind::CharDevice, 0x103));
    assert_eq!(ov.lookup(ino(&ov, "d"), "sock").unwrap().kind, Kind::Socket);
    assert_eq!(ov.lookup(ROOT_INO, "disk").unwrap().kind, Kind::BlockDevice);
    // One that takes the place of a stored file: the file is deleted from the state.
    ov.unlink(ROOT_INO, "conf.json").unwrap();
    ov.rename(
        ROOT_INO,
        "pipe",
        ROOT_INO,
        "conf.json",
        RenameFlags::default(),
    )
    .unwrap();
    assert_eq!(ov.status_text().unwrap(), "D conf.json\n");
    let report = ov.commit("fifo over a file").unwrap();
    assert!(report
        .warnings
        .iter()
        .any(|w| w.starts_with("fifo 'conf.json'")));
    assert!(repo.head_state().unwrap().get("conf.json").is_none());
    let ov = reload(&repo, ov);
    assert_eq!(ov.lookup(ROOT_INO, "conf.json").unwrap().kind, Kind::Fifo);
    assert_eq!(ov.lookup(ROOT_INO, "to-b").unwrap().kind, Kind::Symlink);
    assert_eq!(ov.lookup(ROOT_INO, "empty").unwrap().kind, Kind::Dir);
    assert_eq!(ov.lookup(ROOT_INO, "a.txt").unwrap().mode, 0o755);
    assert_eq!(ov.status_text().unwrap(), "");
}

/// Modes, symlinks and empty directories of a `--rw` mount go into the revision as such, come
/// back from the base after a reload, and a directory emptied or filled changes with it.
#[test]
fn whole_trees_commit_and_come_back() {
    let (_d, repo, mut ov) = sample();
    let chmod = |ov: &mut Overlay, path: &str, mode: u32| {
        let set = SetAttr {
            mode: Some(mode),
            ..Default::default()
        };
        ov.setattr(ino(ov, path), &set).unwrap();
    };
    write_file(&mut ov, "run.sh", b"#!/bin/sh\n");
    chmod(&mut ov, "run.sh", 0o4755);
    chmod(&mut ov, "d", 0o700);
    ov.mkdir(ROOT_INO, "tmp", 0o1777, uid(), uid()).unwrap();
    ov.symlink(ROOT_INO, "sh", "run.sh", uid(), uid()).unwrap();
    ov.mkdir(ino(&ov, "d"), "sub", 0o755, uid(), uid()).unwrap();
    ov.symlink(ino(&ov, "d/sub"), "x", "../../no", uid(), uid())
        .unwrap();
    // d/e loses its only file: it stays, empty
    ov.unlink(ino(&ov, "d/e"), "c.txt").unwrap();
    assert_eq!(
        ov.status_text().unwrap(),
        "A d/e/\nA d/sub/x\nA run.sh\nA sh\nA tmp/\nD d/e/c.txt\nC d/\n"
    );
    let diff = ov.diff_text().unwrap();
    assert!(
        diff.contains("\"modes\"") && diff.contains("\"4755\""),
        "{diff}"
    );
    ov.commit("whole").unwrap();
    let head = repo.head_state().unwrap();
    let m = head.meta();
    assert_eq!(m.file_mode("run.sh"), 0o4755);
    assert_eq!(m.dir_mode("d"), 0o700);
    assert_eq!(m.dir_mode("tmp"), 0o1777);
    assert_eq!(m.links["sh"], "run.sh");
    assert_eq!(m.links["d/sub/x"], "../../no");
    assert_eq!(m.dirs.iter().collect::<Vec<_>>(), ["d/e", "tmp"]);
    // the documents are where a writer puts them
    let docs: Vec<&String> = head.docs().keys().collect();
    assert_eq!(docs, [".pvrfs-meta.json", "d/.pvrfs-meta.json"]);
    // the stored diff turns the parent into the new state
    let rev = repo.latest().unwrap();
    let parent = repo.load_state(&repo.resolve("latest~1").unwrap()).unwrap();
    let stored = repo.load_diff(&rev).unwrap().unwrap();
    assert_eq!(
        crate::patch::apply_to_state(&parent, &stored, "d").unwrap(),
        head
    );
    assert!(ov.status_text().unwrap().is_empty());
    // A fresh overlay on the new revision shows it all from the base.
    drop(ov);
    Overlay::discard(&repo, "m").unwrap();
    let mut ov = Overlay::load_or_create(&repo, "m", "latest", Options::default()).unwrap();
    assert_eq!(ov.getattr(ino(&ov, "run.sh")).unwrap().mode, 0o4755);
    assert_eq!(ov.getattr(ino(&ov, "d")).unwrap().mode, 0o700);
    assert_eq!(ov.getattr(ino(&ov, "tmp")).unwrap().mode, 0o1777);
    assert_eq!(ov.readlink(ino(&ov, "sh")).unwrap(), "run.sh");
    assert_eq!(ov.readdir(ino(&ov, "d/e")).unwrap().len(), 0);
    assert!(ov.status_text().unwrap().is_empty());
    // A file into an empty directory: it is no longer one. A symlink renamed over a file.
    write_file(&mut ov, "tmp/f", b"f");
    ov.rename(ROOT_INO, "sh", ROOT_INO, "a.txt", RenameFlags::default())
        .unwrap();
    assert_eq!(ov.status_text().unwrap(), "A tmp/f\nD sh\nC a.txt\n");
    ov.commit("more").unwrap();
    let head = repo.head_state().unwrap();
    assert!(!head.meta().dirs.contains("tmp"));
    assert_eq!(head.meta().links["a.txt"], "run.sh");
    assert!(head.get("a.txt").is_none());
    let ov = reload(&repo, ov);
    assert!(ov.status_text().unwrap().is_empty());
}

//! The upper layer read as a change set, without a mount: upper directories are made by hand
//! in overlayfs's on-disk format (whiteouts are character devices 0/0 and the xattrs are
//! `trusted.*`, so these tests need root; they skip with a message otherwise).

use super::*;
use crate::oid::ObjectId;
use crate::state::DEFAULT_SPEC;
use tempfile::TempDir;

fn root() -> bool {
    let ok = rustix::process::geteuid().is_root();
    if !ok {
        eprintln!("SKIPPED: whiteouts and trusted.overlay.* xattrs need root");
    }
    ok
}

fn repo_with(files: &[(&str, &[u8])]) -> (TempDir, Repo) {
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

fn sample() -> (TempDir, Repo, UpperOverlay) {
    let (dir, repo) = repo_with(&[
        ("a.txt", b"alpha"),
        ("d/b.txt", b"beta"),
        ("d/e/c.txt", b"gamma"),
        ("conf.json", br#"{"k":[1,2]}"#),
    ]);
    let ov = UpperOverlay::open_or_create(&repo, "k", "latest", LowerKind::Fuse).unwrap();
    (dir, repo, ov)
}

fn write(ov: &UpperOverlay, path: &str, data: &[u8]) {
    let p = ov.upper_dir().join(path);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn whiteout(ov: &UpperOverlay, path: &str) {
    let p = ov.upper_dir().join(path);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &p,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
}

fn dir_with_xattr(ov: &UpperOverlay, path: &str, name: &str, value: &[u8]) {
    let p = ov.upper_dir().join(path);
    fs::create_dir_all(&p).unwrap();
    rustix::fs::setxattr(&p, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

fn status(ov: &UpperOverlay) -> String {
    ov.status_text().unwrap()
}

#[test]
fn files_whiteouts_and_json_become_status_and_a_commit() {
    if !root() {
        return;
    }
    let (_d, repo, mut ov) = sample();
    assert_eq!(status(&ov), "");
    write(&ov, "new.txt", b"new");
    write(&ov, "a.txt", b"changed");
    write(&ov, "conf.json", br#"{"k": [1, 2]}"#); // same value, other bytes: unchanged
    whiteout(&ov, "d/b.txt");
    assert_eq!(status(&ov), "A new.txt\nD d/b.txt\nC a.txt\n");
    let report = ov.commit("one").unwrap();
    assert_eq!(report.revision.rev, 2);
    let head = repo.head_state().unwrap();
    assert_eq!(
        head.get("new.txt"),
        Some(&Entry::Object(ObjectId::hash_bytes(b"new")))
    );
    assert!(head.get("d/b.txt").is_none() && head.get("d/e/c.txt").is_some());
    assert_eq!(status(&ov), "");
    // A file created in the upper layer and removed again leaves no trace there: the
    // committed roots still show its deletion against the head.
    fs::remove_file(ov.upper_dir().join("new.txt")).unwrap();
    assert_eq!(status(&ov), "D new.txt\n");
    ov.commit("two").unwrap();
    assert!(repo.head_state().unwrap().get("new.txt").is_none());
    // Reopening keeps the head and the committed roots.
    drop(ov);
    let ov = UpperOverlay::open_or_create(&repo, "k", "latest", LowerKind::Fuse).unwrap();
    assert_eq!((ov.head_rev(), ov.lower_revision().rev), (3, 1));
    assert_eq!(status(&ov), "");
}

#[test]
fn renamed_and_opaque_directories_follow_overlayfs_xattrs() {
    if !root() {
        return;
    }
    let (_d, _repo, ov) = sample();
    // `mv d dd`: a redirect to the lower `d` (relative) and a whiteout at `d`.
    dir_with_xattr(&ov, "dd", REDIRECT, b"d");
    whiteout(&ov, "d");
    // inside the moved directory, `mv dd/e x/e2`: an absolute redirect
    whiteout(&ov, "dd/e");
    dir_with_xattr(&ov, "x/e2", REDIRECT, b"/d/e");
    assert_eq!(
        status(&ov),
        "A dd/b.txt\nA x/e2/c.txt\nD d/b.txt\nD d/e/c.txt\n"
    );
    let state = ov.view_state().unwrap();
    assert_eq!(
        state.get("x/e2/c.txt"),
        Some(&Entry::Object(ObjectId::hash_bytes(b"gamma")))
    );
    // An opaque directory hides the lower one of its name.
    dir_with_xattr(&ov, "dd", OPAQUE, b"y");
    write(&ov, "dd/only.txt", b"only");
    let st = status(&ov);
    assert!(
        st.contains("A dd/only.txt\n") && !st.contains("dd/b.txt"),
        "{st}"
    );
}

#[test]
fn what_the_format_cannot_hold_is_a_warning() {
    if !root() {
        return;
    }
    let (_d, _repo, ov) = sample();
    fs::create_dir_all(ov.upper_dir().join(".pvr")).unwrap();
    fs::create_dir_all(ov.upper_dir().join("x/.pvrfs-meta.json")).unwrap();
    fs::create_dir_all(ov.upper_dir().join("fifos")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        ov.upper_dir().join("fifos/p"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    fs::set_permissions(
        ov.upper_dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let warnings = ov.warnings().unwrap().join("\n");
    for w in [
        "'.pvr' at the top is not stored",
        "'x/.pvrfs-meta.json' is not stored ('.pvrfs-meta.json' is a reserved name",
        "fifo 'fifos/p' is not stored",
        "mode 0700 of the top directory is not stored",
    ] {
        assert!(warnings.contains(w), "{w}: {warnings}");
    }
    // A directory holding only a FIFO is stored as an empty directory; 'x' held only a
    // reserved name.
    assert_eq!(status(&ov), "A fifos/\nA x/\n");
}

/// Modes, symlinks and empty directories of the upper layer commit as such, and the lower
/// revision's metadata is read with its files (a lower symlink or empty directory is part of
/// the view, a renamed directory keeps the symlinks under it).
#[test]
fn metadata_of_the_upper_layer_commits_as_such() {
    if !root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let (_d, repo) = repo_with(&[
        ("a.txt", b"alpha"),
        ("d/b.txt", b"beta"),
        ("d/e/c.txt", b"gamma"),
        ("bin/busybox", b"bb"),
        ("keep/k.txt", b"k"),
    ]);
    {
        let mut state = repo.head_state().unwrap();
        let mut meta = crate::state::TreeMeta::default();
        meta.links.insert("bin/sh".into(), "busybox".into());
        meta.links.insert("bin/ls".into(), "busybox".into());
        meta.links.insert("top".into(), "/etc/passwd".into());
        meta.dirs.insert("tmp".into());
        meta.dirs.insert("gone".into());
        meta.modes.insert("tmp".into(), 0o1777);
        meta.modes.insert("bin/busybox".into(), 0o755);
        state.set_meta(meta).unwrap();
        let lock = repo.lock().unwrap();
        repo.commit_state(&lock, &state, "meta", None).unwrap();
    }
    let mut ov = UpperOverlay::open_or_create(&repo, "k", "latest", LowerKind::Fuse).unwrap();
    let up = ov.upper_dir();
    let chmod = |p: &str, mode: u32| {
        fs::set_permissions(up.join(p), fs::Permissions::from_mode(mode)).unwrap()
    };
    // chmod +x and setuid of a lower file (a copy-up), a new executable.
    write(&ov, "a.txt", b"alpha");
    chmod("a.txt", 0o4755);
    write(&ov, "run.sh", b"#!/bin/sh\n");
    chmod("run.sh", 0o755);
    // chmod of a lower directory: copied up (merged), its mode differs.
    fs::create_dir(up.join("keep")).unwrap();
    chmod("keep", 0o700);
    // New symlinks (one dangling, one to a directory), a removed and a replaced lower one.
    fs::create_dir_all(up.join("d")).unwrap();
    std::os::unix::fs::symlink("nowhere", up.join("d/dangling")).unwrap();
    std::os::unix::fs::symlink("d", up.join("to-d")).unwrap();
    whiteout(&ov, "top");
    // A new empty directory, a removed lower one, a directory emptied by a removal.
    fs::create_dir(up.join("new-empty")).unwrap();
    whiteout(&ov, "gone");
    whiteout(&ov, "d/e/c.txt");
    // A renamed lower directory holding symlinks (redirect): its links move with it.
    dir_with_xattr(&ov, "sbin", REDIRECT, b"bin");
    whiteout(&ov, "bin");
    std::os::unix::fs::symlink("/bin/busybox", up.join("sbin/sh")).unwrap();
    assert_eq!(
        status(&ov),
        "A d/dangling\nA d/e/\nA new-empty/\nA run.sh\nA sbin/busybox\nA sbin/ls\nA sbin/sh\nA to-d\n\
         D bin/busybox\nD bin/ls\nD bin/sh\nD d/e/c.txt\nD gone/\nD top\n\
         C a.txt\nC keep/\n"
    );
    let diff = ov.diff_text().unwrap();
    assert!(diff.contains(".pvrfs-meta.json"), "{diff}");
    let report = ov.commit("metadata").unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let head = repo.head_state().unwrap();
    let m = head.meta();
    assert_eq!(m.file_mode("a.txt"), 0o4755);
    assert_eq!(m.file_mode("run.sh"), 0o755);
    assert_eq!(m.file_mode("sbin/busybox"), 0o755);
    assert_eq!(m.dir_mode("keep"), 0o700);
    assert_eq!(m.dir_mode("tmp"), 0o1777);
    let links: Vec<(&str, &str)> = m
        .links
        .iter()
        .map(|(k, t)| (k.as_str(), t.as_str()))
        .collect();
    assert_eq!(
        links,
        [
            ("d/dangling", "nowhere"),
            ("sbin/ls", "busybox"),
            ("sbin/sh", "/bin/busybox"),
            ("to-d", "d")
        ]
    );
    let dirs: Vec<&str> = m.dirs.iter().map(String::as_str).collect();
    assert_eq!(dirs, ["d/e", "new-empty", "tmp"]);
    assert!(head.get("keep/k.txt").is_some() && head.get("bin/busybox").is_none());
    assert_eq!(status(&ov), "");
    // The next change diffs against the new head: a file in the emptied directory fills it.
    write(&ov, "d/e/new.txt", b"n");
    assert_eq!(status(&ov), "A d/e/new.txt\n");
    ov.commit("fill").unwrap();
    assert!(!repo.head_state().unwrap().meta().dirs.contains("d/e"));
}

#[test]
fn commit_costs_the_change_not_the_tree() {
    if !root() {
        return;
    }
    // Remove the object of an untouched base file: a commit that read or hashed the whole tree
    // would fail on it; one that visits only the upper layer does not.
    let (_d, repo, mut ov) = sample();
    let gamma = ObjectId::hash_bytes(b"gamma");
    fs::remove_file(repo.store().path_of(&gamma)).unwrap();
    write(&ov, "a.txt", b"changed");
    ov.commit("small").unwrap();
    assert_eq!(
        repo.head_state().unwrap().get("d/e/c.txt"),
        Some(&Entry::Object(gamma))
    );
}

#[test]
fn a_commit_reads_only_what_changed_since_the_last_commit() {
    if !root() {
        return;
    }
    // The upper layer keeps what earlier commits stored (the lower layer cannot move under a
    // live overlay); those files must not be read again while they stay as they were.
    let (_d, repo, mut ov) = sample();
    write(&ov, "a.txt", b"changed");
    write(&ov, "d/new.txt", b"new");
    write(&ov, "conf.json", br#"{"k":3}"#);
    std::thread::sleep(cache::SETTLE + std::time::Duration::from_millis(50));
    ov.commit("one").unwrap();
    let after_first = ov.files_read();
    assert_eq!(after_first, 3);
    write(&ov, "d/e/c.txt", b"gamma two");
    ov.commit("two").unwrap();
    assert_eq!(ov.files_read() - after_first, 1, "only d/e/c.txt is read");
    assert_eq!(status(&ov), "");
    let head = repo.head_state().unwrap();
    assert_eq!(
        head.get("a.txt"),
        Some(&Entry::Object(ObjectId::hash_bytes(b"changed")))
    );
    assert_eq!(
        head.get("d/e/c.txt"),
        Some(&Entry::Object(ObjectId::hash_bytes(b"gamma two")))
    );
    // A file changed again is read again, and so is one whose object went missing.
    write(&ov, "a.txt", b"changed twice");
    fs::remove_file(repo.store().path_of(&ObjectId::hash_bytes(b"new"))).unwrap();
    let before = ov.files_read();
    ov.commit("three").unwrap();
    assert!(ov.files_read() - before >= 2);
    assert!(repo.store().contains(&ObjectId::hash_bytes(b"new")));
    assert_eq!(
        repo.head_state().unwrap().get("a.txt"),
        Some(&Entry::Object(ObjectId::hash_bytes(b"changed twice")))
    );
}

#[test]
fn commit_changes_skips_an_empty_change_and_reads_each_changed_file_once() {
    if !root() {
        return;
    }
    let (_d, repo, mut ov) = sample();
    // A file rewritten with its base content is no change: no revision, nothing written.
    write(&ov, "a.txt", b"alpha");
    let before = repo.latest().unwrap().rev;
    match ov.commit_changes("nothing").unwrap() {
        Committed::Unchanged { warnings } => assert!(warnings.is_empty(), "{warnings:?}"),
        Committed::Revision(r) => panic!("an empty change made revision {}", r.revision.rev),
    }
    assert_eq!(repo.latest().unwrap().rev, before);
    write(&ov, "d/b.txt", b"beta two");
    let read = ov.files_read();
    let Committed::Revision(report) = ov.commit_changes("one").unwrap() else {
        panic!("a change was not committed");
    };
    assert_eq!(report.revision.rev, before + 1);
    // The two fresh upper files (a.txt, d/b.txt), each read once: the decision to commit
    // comes from the commit's own build.
    assert_eq!(ov.files_read() - read, 2);
}

#[test]
fn an_interrupted_commit_is_recorded_at_the_next_open_and_reset_starts_on_the_head() {
    if !root() {
        return;
    }
    let (_d, repo, mut ov) = sample();
    write(&ov, "a.txt", b"changed");
    let header_before = fs::read(ov.dir.join(HEADER)).unwrap();
    ov.commit("one").unwrap();
    // As if the daemon died between the repository's commit point and the header.
    fs::write(ov.dir.join(HEADER), &header_before).unwrap();
    drop(ov);
    let mut ov = UpperOverlay::open_or_create(&repo, "k", "latest", LowerKind::Fuse).unwrap();
    assert_eq!(ov.head_rev(), 2);
    assert_eq!(status(&ov), "");
    // A head that is not the view's (pvr committed meanwhile) is not adopted: commit refuses.
    write(&ov, "b.txt", b"b");
    let lock = repo.lock().unwrap();
    let mut other = repo.head_state().unwrap();
    other
        .insert(
            "pvr.txt",
            Entry::Object(repo.store().put_bytes(b"p").unwrap()),
        )
        .unwrap();
    repo.commit_state(&lock, &other, "by pvr", None).unwrap();
    drop(lock);
    let err = ov.commit("mine").unwrap_err().to_string();
    assert!(err.contains("reset --mount"), "{err}");
    // Reset: a fresh layer on our head (the lower moves to it).
    ov.reset(LowerKind::Fuse).unwrap();
    assert_eq!(ov.lower_revision().rev, 2);
    assert!(fs::read_dir(ov.upper_dir()).unwrap().next().is_none());
    assert_eq!(status(&ov), "");
}

/// A metadata-only copy-up (what overlayfs makes over the EROFS lower for a chmod, touch or
/// rename of a base file): a sparse file of the lower's size with `trusted.overlay.metacopy`,
/// and `trusted.overlay.redirect` when renamed. The commit keeps the lower file's data (never
/// the holes) and takes the mode from the upper file.
#[test]
fn metacopy_files_take_their_data_from_the_lower_file_they_name() {
    if !root() {
        return;
    }
    let (_d, repo, mut ov) = sample();
    assert_eq!(ov.lower_kind(), LowerKind::Fuse);
    let upper = ov.upper_dir();
    let meta_copy = |path: &str, size: u64, mode: u32, redirect: Option<&str>| {
        let p = upper.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let f = File::create(&p).unwrap();
        f.set_len(size).unwrap();
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        rustix::fs::setxattr(&p, METACOPY, b"", rustix::fs::XattrFlags::empty()).unwrap();
        if let Some(r) = redirect {
            rustix::fs::setxattr(&p, REDIRECT, r.as_bytes(), rustix::fs::XattrFlags::empty())
                .unwrap();
        }
    };
    meta_copy("a.txt", 5, 0o600, None); // chmod
    whiteout(&ov, "d/b.txt");
    meta_copy("moved.txt", 4, 0o644, Some("/d/b.txt")); // mv d/b.txt moved.txt
    meta_copy("d/e/c2.txt", 5, 0o644, Some("c.txt")); // relative: renamed in its directory
    whiteout(&ov, "d/e/c.txt");
    meta_copy("conf.json", 11, 0o640, None); // inline JSON stays inline
    assert_eq!(
        status(&ov),
        "A d/e/c2.txt\nA moved.txt\nD d/b.txt\nD d/e/c.txt\nC a.txt\nC conf.json\n"
    );
    ov.commit("metadata only").unwrap();
    let head = repo.head_state().unwrap();
    let id = |c: &[u8]| Some(Entry::Object(ObjectId::hash_bytes(c)));
    assert_eq!(head.get("a.txt").cloned(), id(b"alpha"));
    assert_eq!(head.meta().file_mode("a.txt"), 0o600);
    assert_eq!(head.get("moved.txt").cloned(), id(b"beta"));
    assert_eq!(head.get("d/e/c2.txt").cloned(), id(b"gamma"));
    assert!(matches!(head.get("conf.json"), Some(Entry::Inline(_))));
    assert_eq!(head.meta().file_mode("conf.json"), 0o640);
    assert_eq!(ov.files_read.load(std::sync::atomic::Ordering::Relaxed), 0);

    // A metacopy naming a file the lower revision does not have is refused, naming both.
    meta_copy("ghost.txt", 3, 0o644, Some("/no/such.txt"));
    let err = ov.commit("ghost").unwrap_err().to_string();
    assert!(
        err.contains("ghost.txt") && err.contains("'no/such.txt'") && err.contains("revision 1"),
        "{err}"
    );
}

/// The lower kind is the upper layer's: an overlay keeps the kind it was made with across
/// reopenings (whatever the caller would prefer for a new one), an overlay made before the
/// EROFS lower existed (no `lower` in its header) is a FUSE-lower one, and a reset picks anew.
#[test]
fn an_upper_layer_keeps_the_lower_kind_it_was_made_with() {
    let (_d, repo) = repo_with(&[("a.txt", b"alpha")]);
    let ov = UpperOverlay::open_or_create(&repo, "k", "latest", LowerKind::Erofs).unwrap();
    assert_eq!(ov.lower_kind(), LowerKind::Erofs);
    let image = ov.lower_image("checkout-0-0");
    assert!(image.starts_with(ov.upper_dir().parent().unwrap()));
    drop(ov);
    let ov = UpperOverlay::open_or_create(&repo, "k", "latest", LowerKind::Fuse).unwrap();
    assert_eq!(ov.lower_kind(), LowerKind::Erofs);
    // an image of this layer survives a reopening; a reset deletes it with its layer
    fs::write(&image, b"image").unwrap();
    drop(ov);
    let mut ov = UpperOverlay::open_or_create(&repo, "k", "latest", LowerKind::Fuse).unwrap();
    assert!(image.exists());
    ov.reset(LowerKind::Fuse).unwrap();
    assert_eq!(ov.lower_kind(), LowerKind::Fuse);
    assert!(!image.exists());
    drop(ov);
    // a header written before the field existed
    let header = super::super::overlay::overlay_dir(&repo, "k").join(HEADER);
    let mut h: serde_json::Value = serde_json::from_slice(&fs::read(&header).unwrap()).unwrap();
    assert_eq!(h["lower"], "fuse");
    h["lower"] = "erofs".into();
    fs::write(&header, serde_json::to_vec(&h).unwrap()).unwrap();
    let ov = UpperOverlay::open_or_create(&repo, "k", "latest", LowerKind::Fuse).unwrap();
    assert_eq!(ov.lower_kind(), LowerKind::Erofs);
    drop(ov);
    h.as_object_mut().unwrap().remove("lower");
    fs::write(&header, serde_json::to_vec(&h).unwrap()).unwrap();
    let ov = UpperOverlay::open_or_create(&repo, "k", "latest", LowerKind::Erofs).unwrap();
    assert_eq!(ov.lower_kind(), LowerKind::Fuse);
}

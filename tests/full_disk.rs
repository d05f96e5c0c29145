//! A full disk (issue 2, reliability): writes that run out of space fail with an error naming
//! the file and "No space left on device", exit non-zero, leave no temp file behind and leave
//! the repository at its old revision (`fsck` clean); once space is freed the same command works.
//!
//! The disk is a small tmpfs mounted for the test (needs root; CI runs as root). The guard
//! unmounts it on drop, also when an assertion fails.

use pvrfs_testkit as common;

use common::pvrfs;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of `size` bytes mounted on a fresh temp dir; unmounted (lazily) on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` when this process may not mount (not root): the caller skips, except in CI.
    fn new(size: u64) -> Option<SmallDisk> {
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var_os("CI").is_none(),
                "full-disk tests need root to mount a tmpfs"
            );
            eprintln!("SKIPPED: full-disk tests need root to mount a tmpfs");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size}"))
            .arg("tmpfs")
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs on {}", dir.path().display());
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes still free for an unprivileged-ish writer.
    fn free(&self) -> u64 {
        let c = std::ffi::CString::new(self.path().as_os_str().as_encoded_bytes()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// Every `.tmp-*` file under `dir` (a failed write must remove its temp file).
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(temp_files(&p));
        } else if e.file_name().to_string_lossy().starts_with(".tmp-") {
            out.push(p);
        }
    }
    out
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn head_rev(dir: &Path) -> String {
    pvrfs(["log"])
        .dir(dir)
        .ok()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn assert_untouched(dir: &Path, head_before: &str) {
    assert_eq!(head_rev(dir), head_before, "the head moved");
    assert_eq!(temp_files(&dir.join(".pvr")), Vec::<PathBuf>::new());
    pvrfs(["fsck"]).dir(dir).ok();
}

#[test]
fn objects_that_do_not_fit_fail_cleanly_and_fit_after_freeing_space() {
    let Some(disk) = SmallDisk::new(4 << 20) else {
        return;
    };
    let dir = disk.path();
    pvrfs(["init"]).dir(dir).ok();
    fs::write(dir.join("small.txt"), b"small").unwrap();
    pvrfs(["add", "."]).dir(dir).ok();
    pvrfs(["commit", "-m", "one"]).dir(dir).ok();
    let head = head_rev(dir);
    // 2 x 1.5 MiB in the work tree leave ~1 MiB: the first object fits, the second does not.
    fs::write(dir.join("a.bin"), random_bytes(1_500_000, 1)).unwrap();
    fs::write(dir.join("b.bin"), random_bytes(1_500_000, 2)).unwrap();
    let out = pvrfs(["add", "."]).dir(dir).run().out;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "add on a full disk succeeded");
    assert!(
        err.contains("No space left on device") && err.contains(".pvr/objects"),
        "the error should name the object file and the cause: {err}"
    );
    // Staging is all or nothing from the user's view: status still lists both as untracked.
    assert_untouched(dir, &head);
    let status = pvrfs(["status"]).dir(dir).ok();
    assert!(
        status.contains("? a.bin") && status.contains("? b.bin"),
        "{status}"
    );
    // Free space: the same add + commit now works.
    fs::remove_file(dir.join("b.bin")).unwrap();
    pvrfs(["add", "."]).dir(dir).ok();
    pvrfs(["commit", "-m", "two"]).dir(dir).ok();
    assert_ne!(head_rev(dir), head);
    pvrfs(["fsck"]).dir(dir).ok();
}

#[test]
fn a_state_that_does_not_fit_leaves_the_old_revision() {
    let Some(disk) = SmallDisk::new(4 << 20) else {
        return;
    };
    let dir = disk.path();
    pvrfs(["init"]).dir(dir).ok();
    // Inline JSON files make a state of ~250 KiB (each file takes one 4 KiB page here).
    fs::create_dir(dir.join("conf")).unwrap();
    let padding = "x".repeat(700);
    for i in 0..300 {
        let body = format!("{{\"id\":{i},\"padding\":\"{padding}\"}}");
        fs::write(dir.join(format!("conf/c{i:04}.json")), body).unwrap();
    }
    pvrfs(["add", "."]).dir(dir).ok();
    pvrfs(["commit", "-m", "configs"]).dir(dir).ok();
    let head = head_rev(dir);
    let state_len = fs::metadata(dir.join(".pvr/json")).unwrap().len();
    // Change one file, then fill the disk so that its small object fits but not a new state.
    fs::write(dir.join("conf/c0000.json"), br#"{"id":0,"changed":true}"#).unwrap();
    let filler = disk.free().saturating_sub(state_len / 2);
    fs::write(dir.join("filler"), vec![0u8; filler as usize]).unwrap();
    let out = pvrfs(["commit", "-m", "does not fit"]).dir(dir).run().out;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "commit on a full disk succeeded");
    assert!(err.contains("No space left on device"), "{err}");
    assert_untouched(dir, &head);
    // The work tree still has the change, and committing it works once there is room.
    fs::remove_file(dir.join("filler")).unwrap();
    let status = pvrfs(["status"]).dir(dir).ok();
    assert!(status.contains("C conf/c0000.json"), "{status}");
    pvrfs(["commit", "-m", "fits now"]).dir(dir).ok();
    assert_ne!(head_rev(dir), head);
    pvrfs(["fsck"]).dir(dir).ok();
}

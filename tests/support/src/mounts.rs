//! Real mounts in temp dirs and their daemons. A [`Mount`] unmounts when dropped, also when the
//! test panics, so nothing a test mounts outlives it.

use crate::bin::pvrfs;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// True when real FUSE mounts can be tested; prints why not otherwise.
pub fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() {
        true
    } else {
        eprintln!("SKIPPED: /dev/fuse is absent on this machine; real-mount tests need FUSE");
        false
    }
}

thread_local! {
    /// The copy-on-write backend (`--cow`) that `Mount` gives `--rw` mounts made on this
    /// thread (set by `with_cow`; `fuse` elsewhere: the tests of FUSE itself, io_uring...).
    static COW: std::cell::Cell<&'static str> = const { std::cell::Cell::new("fuse") };
    /// The kernel backend's lower layer (`PVRFS_KERNEL_LOWER` of the daemons `Mount` starts on
    /// this thread): `erofs` (the default where the kernel has it) or `fuse`.
    static LOWER: std::cell::Cell<&'static str> = const { std::cell::Cell::new("erofs") };
}

/// The lower layer kernel-backend mounts of this test get (`erofs` or `fuse`).
pub fn kernel_lower() -> &'static str {
    LOWER.with(|c| c.get())
}

/// The backend `--rw` mounts of this test use (`fuse` or `kernel`).
pub fn cow() -> &'static str {
    COW.with(|c| c.get())
}

/// Whether this machine can run the kernel backend (root, overlayfs); says why not otherwise.
pub fn kernel_cow_available() -> bool {
    match pvrfs::fuse::kernel::can_mount_overlayfs() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("SKIPPED: the kernel copy-on-write backend cannot run here: {why}");
            false
        }
    }
}

/// Run `test` with `--rw` mounts on `backend` (`fuse` or `kernel`; skipped with a message
/// where FUSE is absent, or for `kernel` where overlayfs cannot be mounted).
pub fn with_cow(backend: &'static str, test: impl FnOnce()) {
    if !fuse_available() || (backend == "kernel" && !kernel_cow_available()) {
        return;
    }
    if backend == "kernel" && kernel_lower() == "erofs" {
        let dir = tempfile::tempdir().expect("tempdir");
        if let Err(why) = pvrfs::fuse::kernel::erofs_from_files(dir.path()) {
            eprintln!("NOTE: {why}: this kernel test runs over the FUSE lower");
            LOWER.with(|c| c.set("fuse"));
        }
    }
    COW.with(|c| c.set(backend));
    test();
}

/// Run `test` with `--rw` mounts on the kernel backend over a FUSE lower layer (the fallback
/// where EROFS cannot be used) instead of the EROFS one.
pub fn with_kernel_fuse_lower(test: impl FnOnce()) {
    LOWER.with(|c| c.set("fuse"));
    with_cow("kernel", test);
}

/// `cow_tests!(f, g)`: for each function, a module with the tests `fuse` and `kernel` that run
/// it with `--rw` mounts on that backend (`f::fuse`, `f::kernel` in the test list).
#[macro_export]
macro_rules! cow_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn fuse() {
                    $crate::with_cow("fuse", super::$name)
                }
                #[test]
                fn kernel() {
                    $crate::with_cow("kernel", super::$name)
                }
                #[test]
                fn kernel_fuse_lower() {
                    $crate::with_kernel_fuse_lower(super::$name)
                }
            }
        )*
    };
}

/// A live mount; dropping it unmounts (lazily, if it has to) and removes the mountpoint dir.
pub struct Mount {
    pub dir: tempfile::TempDir,
}

impl Mount {
    /// `pvrfs mount REPO REV MNT EXTRA...`; panics with the command's stderr on failure.
    pub fn new(repo: &Path, rev: &str, extra: &[&str]) -> Mount {
        Self::with_env(repo, rev, extra, &[])
    }

    /// `new`, with environment variables for the daemon (e.g. `RUST_LOG`).
    pub fn with_env(repo: &Path, rev: &str, extra: &[&str], env: &[(&str, &str)]) -> Mount {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = pvrfs([
            OsStr::new("mount"),
            repo.as_os_str(),
            OsStr::new(rev),
            dir.path().as_os_str(),
        ]);
        for a in extra {
            cmd = cmd.arg(a);
        }
        if extra.contains(&"--rw") && !extra.contains(&"--cow") {
            cmd = cmd.arg("--cow").arg(cow());
        }
        cmd = cmd.env("PVRFS_KERNEL_LOWER", kernel_lower());
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        let run = cmd.run();
        let m = Mount { dir };
        assert!(run.success(), "pvrfs mount failed: {}", run.stderr());
        m
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn is_mounted(&self) -> bool {
        is_mount_point(self.dir.path())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.is_mounted() {
            return;
        }
        let daemon = daemon_pid(self.dir.path());
        let ok = pvrfs([OsStr::new("umount"), self.dir.path().as_os_str()])
            .run()
            .success();
        if !ok {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z", "--"])
                .arg(self.dir.path())
                .status();
        }
        // The daemon holds its overlay's lock until it has exited: a test that mounts the same
        // overlay right after a drop must not race it (seen under load). No panic in a drop.
        if let Some(pid) = daemon {
            let t0 = Instant::now();
            while Path::new(&format!("/proc/{pid}")).exists()
                && !fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z "))
                && t0.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The pid of the daemon serving `mnt`: the re-executed `pvrfs mount … --foreground`, whose
/// command line names the mountpoint (resolved through its parent, so a dead mount is found).
pub fn daemon_pid(mnt: &Path) -> Option<i32> {
    let parent = fs::canonicalize(mnt.parent()?).ok()?;
    let mnt = parent.join(mnt.file_name()?);
    let want = mnt.as_os_str().as_encoded_bytes();
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.contains(&b"--foreground".as_slice()) && args.contains(&want) {
            return Some(pid);
        }
    }
    None
}

/// Wait until process `pid` has exited (a zombie nobody reaped yet counts); panics after 10 s.
pub fn wait_exited(pid: i32) {
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        if fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "process {pid} still running after 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGKILL the daemon serving `mnt` and wait until it has exited.
pub fn kill_daemon(mnt: &Path) {
    let pid = daemon_pid(mnt).unwrap_or_else(|| panic!("no daemon for {}", mnt.display()));
    let pid = rustix::process::Pid::from_raw(pid).expect("a positive pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill the daemon");
    wait_exited(pid.as_raw_nonzero().get());
}

/// True when `p` is a mount point of this namespace.
pub fn is_mount_point(p: &Path) -> bool {
    let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    pvrfs::fuse::mounts::mount_points()
        .map(|ms| ms.iter().any(|m| m.mountpoint == p))
        .unwrap_or(false)
}

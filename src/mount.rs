//! Mounting a revision: from a repository and a revision spec to a served FUSE session, plus the
//! bookkeeping around it (listing and unmounting pvrfs mounts).
//!
//! Life of a mount: `check_mountpoint` (exists, is a directory, not already a mount point,
//! /dev/fuse present) → `prepare` (open repo, resolve the revision, load its state, build the
//! tree: O(paths)) → `serve` (mount, answer INIT, report readiness, run one `/dev/fuse` worker
//! per core — plus, when INIT granted FUSE over io_uring, one pinned ring thread per CPU
//! (`fuse_uring`), which then carries all requests but FORGET/INTERRUPT — until unmounted or
//! signalled). `pvrfs mount` without `--foreground` runs the same steps in a child
//! process (re-executed with `--foreground`) and returns once the child reports readiness or
//! an error through a pipe, so errors print where the user typed the command.
//!
//! A mount is identified in the mount table by its source `pvrfs:<repo>@<rev>` and type
//! `fuse.pvrfs` (or `fuse`): `list_mounts` reads `/proc/self/mountinfo`, nothing else is registered, so a
//! killed daemon leaves nothing stale but the (dead) mount itself, which `unmount` clears.

use crate::cli::PassthroughMode;
use crate::error::{Error, IoContext, Result};
use crate::fs::{Fs, FsConfig};
use crate::fuse::FuseFs;
use crate::repo::{Repo, Revision};
use crate::tree::{Rendering, Tree};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The mount table type of a pvrfs mount made through fusermount3 (`fuse.` + subtype); a
/// direct mount(2) by root shows plain `fuse`. Either way the source starts with `pvrfs:`.
pub const FSTYPE: &str = "fuse.pvrfs";

/// Options of one read-only mount.
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    pub allow_other: bool,
    pub canonical: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub verify: bool,
    pub passthrough: PassthroughMode,
}

/// A revision ready to be served.
pub struct Prepared {
    pub repo: Repo,
    pub rev: Revision,
    pub fs: Arc<Fs>,
}

/// Refuse a mountpoint that cannot take a mount; returns its canonical path.
pub fn check_mountpoint(mnt: &Path) -> Result<PathBuf> {
    if is_dead(mnt) {
        return Err(Error::Usage(format!(
            "'{}' is a dead FUSE mount; clear it with 'pvrfs umount {}'",
            mnt.display(),
            mnt.display()
        )));
    }
    let meta = match std::fs::metadata(mnt) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Usage(format!(
                "mountpoint '{}' does not exist (create an empty directory first)",
                mnt.display()
            )))
        }
        Err(e) => return Err(Error::io("inspect mountpoint", mnt, e)),
    };
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "mountpoint '{}' is not a directory",
            mnt.display()
        )));
    }
    let canon = std::fs::canonicalize(mnt).ctx("resolve mountpoint", mnt)?;
    if mount_points()?.iter().any(|m| m.mountpoint == canon) {
        return Err(Error::Usage(format!(
            "mountpoint '{}' is busy: something is already mounted there",
            canon.display()
        )));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(Error::Other(
            "/dev/fuse is missing: load the fuse module (modprobe fuse) or run where FUSE is available".into(),
        ));
    }
    Ok(canon)
}

/// Open the repository at `repo_dir`, resolve `spec` and build the filesystem of that revision.
/// Return free heap pages to the system (glibc keeps them otherwise).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn prepare(repo_dir: &Path, spec: &str, opts: &MountOptions) -> Result<Prepared> {
    // A fixed mmap threshold: glibc otherwise raises it after the big state buffers are freed,
    // and later large zeroed buffers (FUSE request buffers) come from the heap and are memset.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    let repo = Repo::open(repo_dir)?;
    let rev = repo.resolve(spec)?;
    let state = repo.load_state(&rev)?;
    let rendering = if opts.canonical {
        Rendering::Canonical
    } else {
        Rendering::Checkout
    };
    let tree = Tree::build(state, rendering);
    // The parsed state is gone; hand its heap back so the daemon's RSS is the index only.
    trim_heap();
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let fs = Fs::new(
        tree,
        repo.store().clone(),
        FsConfig {
            uid: opts.uid.unwrap_or(uid),
            gid: opts.gid.unwrap_or(gid),
            time: rev.time,
            verify: opts.verify,
        },
    );
    Ok(Prepared {
        repo,
        rev,
        fs: Arc::new(fs),
    })
}

/// The mount source shown in the mount table. Commas would split FUSE's option string.
pub fn fsname(repo: &Repo, rev: &Revision) -> String {
    format!("pvrfs:{}@{}", repo.workdir().display(), rev.rev).replace(',', "_")
}

/// A mounted session and the io_uring queues that will serve it (`None`: `/dev/fuse` only).
pub struct Mounted<FS: fuser::Filesystem> {
    session: fuser::Session<FS>,
    rings: Option<crate::fuse_uring::Rings>,
}

impl<FS: fuser::Filesystem> Mounted<FS> {
    /// Sends cache invalidations to the kernel (through `/dev/fuse`, whatever the transport).
    pub fn notifier(&self) -> fuser::Notifier {
        self.session.notifier()
    }
}

/// Mount `prepared` at `mnt` and answer INIT; the returned session is ready to be served.
pub fn mount(prepared: &Prepared, mnt: &Path, opts: &MountOptions) -> Result<Mounted<FuseFs>> {
    use fuser::{MountOption, SessionACL};
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(fsname(&prepared.repo, &prepared.rev)),
        MountOption::Subtype("pvrfs".into()),
        MountOption::RO,
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::Exec,
        MountOption::NoAtime,
    ];
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(fuse_threads());
    config.clone_fd = true;
    let rings = crate::fuse_uring::Rings::prepare();
    let fuse = FuseFs::new(prepared.fs.clone(), opts.passthrough)
        .with_uring(rings.as_ref().map(|r| r.offer()));
    let session = fuser::Session::new(fuse, mnt, &config);
    // The INIT exchange used a 16 MiB zeroed buffer carved (and so memset) from the free heap
    // the state parse left behind; give those pages back now that it is freed.
    trim_heap();
    let session = session.map_err(|e| mount_error(mnt, e))?;
    Ok(Mounted { session, rings })
}

fn mount_error(mnt: &Path, e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => Error::Other(format!(
            "no permission to mount on '{}': {e} (FUSE mounts need root or fusermount3)",
            mnt.display()
        )),
        _ => Error::io("mount FUSE filesystem on", mnt, e),
    }
}

/// A writable (`--rw`) mount ready to be served: the overlay is loaded (and locked).
pub struct PreparedRw {
    pub repo: Repo,
    pub fs: Arc<crate::cowfs::CowFs>,
}

/// Open (or create) overlay `name` of the repository for a `--rw` mount of `spec`. An existing
/// overlay resumes exactly; it must be on the revision `spec` names (its changes were made
/// against that revision), else the mount is refused with the way out.
pub fn prepare_rw(
    repo_dir: &Path,
    spec: &str,
    name: &str,
    opts: &MountOptions,
) -> Result<PreparedRw> {
    use crate::overlay::{Options, Overlay};
    let repo = Repo::open(repo_dir)?;
    let rev = repo.resolve(spec)?;
    let ov_opts = Options {
        canonical_json: opts.canonical,
        upper_pool: true,
    };
    let ov = Overlay::load_or_create(&repo, name, &rev.rev.to_string(), ov_opts.clone())
        .map_err(|e| match e {
            Error::Locked { .. } => Error::Remote {
                code: e.exit_code(),
                message: format!(
                    "overlay '{name}' of {} is locked: another pvrfs daemon has it mounted (see 'pvrfs mounts'); use --overlay OTHER for a second writable mount",
                    repo.workdir().display()
                ),
            },
            e => e,
        })?;
    if ov.base_rev() != rev.rev {
        return Err(Error::Conflict(format!(
            "overlay '{name}' of {} holds changes made on revision {}, not {}: mount revision {} \
             (and commit or 'pvrfs reset --mount MNT' there), or use another --overlay NAME",
            repo.workdir().display(),
            ov.base_rev(),
            rev.rev,
            ov.base_rev()
        )));
    }
    trim_heap();
    let fs = crate::cowfs::CowFs::new(repo.clone(), name, ov, ov_opts);
    Ok(PreparedRw {
        repo,
        fs: Arc::new(fs),
    })
}

/// The mount source of a `--rw` mount: `pvrfs:<repo>@rw:<overlay>` (its revision moves with
/// every commit, so the source names the overlay instead).
pub fn fsname_rw(repo: &Repo, overlay: &str) -> String {
    format!("pvrfs:{}@rw:{overlay}", repo.workdir().display()).replace(',', "_")
}

/// Mount a prepared `--rw` filesystem at `mnt` (read-write, kernel permission checks).
pub fn mount_rw(
    prepared: &PreparedRw,
    overlay: &str,
    mnt: &Path,
    opts: &MountOptions,
) -> Result<Mounted<crate::cowfuse::CowFuse>> {
    use fuser::{MountOption, SessionACL};
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(fsname_rw(&prepared.repo, overlay)),
        MountOption::Subtype("pvrfs".into()),
        MountOption::RW,
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::Exec,
    ];
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(fuse_threads());
    config.clone_fd = true;
    let rings = crate::fuse_uring::Rings::prepare();
    let fuse = crate::cowfuse::CowFuse::new(prepared.fs.clone(), opts.passthrough)
        .with_uring(rings.as_ref().map(|r| r.offer()));
    let session = fuser::Session::new(fuse, mnt, &config).map_err(|e| mount_error(mnt, e))?;
    Ok(Mounted { session, rings })
}

/// The signals that unmount a serving daemon.
fn stop_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on a local, initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Hold SIGINT/SIGTERM/SIGHUP until `serve` waits for them. Call it first thing in a daemon,
/// before it reports readiness: a signal arriving in between would otherwise kill the process
/// and leave a dead mount instead of unmounting it. Threads started later inherit the mask.
pub fn block_stop_signals() {
    let set = stop_signals();
    // SAFETY: `set` is initialised.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Serve a mounted session until it is unmounted (or SIGINT/SIGTERM/SIGHUP, which unmount it):
/// fuser's `/dev/fuse` workers, plus one io_uring queue thread per CPU when INIT granted it.
pub fn serve<FS: fuser::Filesystem>(mounted: Mounted<FS>) -> Result<()> {
    use std::os::fd::{AsFd, AsRawFd};
    let Mounted { mut session, rings } = mounted;
    let mut unmounter = session.unmount_callable();
    // Only the waiter below receives the stop signals (a no-op if already blocked).
    block_stop_signals();
    let set = stop_signals();
    std::thread::Builder::new()
        .name("pvrfs-signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: `set` is initialised; sigwait writes the signal number.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                log::info!("signal {sig}: unmounting");
                if let Err(e) = unmounter.unmount() {
                    log::error!("unmount failed: {e}");
                }
            }
        })
        .map_err(|e| Error::io("start signal thread for", "the mount", e))?;
    let fuse_fd = session.as_fd().as_raw_fd();
    session
        .run_with(move |dispatcher| match rings {
            Some(r) => r.start(fuse_fd, dispatcher),
            None => Ok(crate::fuse_uring::RingTransport::none()),
        })
        .map_err(|e| Error::io("serve FUSE requests for", "the mount", e))
}

/// One pvrfs mount of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mountpoint: PathBuf,
    /// `pvrfs:<repo>@<rev>` (or another source, for non-pvrfs entries of `mount_points`).
    pub source: String,
    pub fstype: String,
}

impl MountInfo {
    /// True for a mount made by pvrfs.
    pub fn is_pvrfs(&self) -> bool {
        (self.fstype == FSTYPE || self.fstype == "fuse") && self.source.starts_with("pvrfs:")
    }

    /// The repository and revision parsed back from the source.
    pub fn repo_and_rev(&self) -> Option<(&str, &str)> {
        self.source.strip_prefix("pvrfs:")?.rsplit_once('@')
    }
}

/// Every mount of this mount namespace.
pub fn mount_points() -> Result<Vec<MountInfo>> {
    let path = "/proc/self/mountinfo";
    let text = std::fs::read_to_string(path).ctx("read", path)?;
    Ok(text.lines().filter_map(parse_mountinfo_line).collect())
}

/// The pvrfs mounts.
pub fn list_mounts() -> Result<Vec<MountInfo>> {
    Ok(mount_points()?
        .into_iter()
        .filter(MountInfo::is_pvrfs)
        .collect())
}

fn parse_mountinfo_line(line: &str) -> Option<MountInfo> {
    // id parent maj:min root mountpoint opts [optional...] - fstype source superopts
    let (left, right) = line.split_once(" - ")?;
    let mountpoint = unescape(left.split(' ').nth(4)?);
    let mut r = right.split(' ');
    let fstype = unescape(r.next()?);
    let source = unescape(r.next()?);
    Some(MountInfo {
        mountpoint: PathBuf::from(
            <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(mountpoint),
        ),
        source: String::from_utf8_lossy(&source).into_owned(),
        fstype: String::from_utf8_lossy(&fstype).into_owned(),
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// A FUSE mount whose daemon is gone answers ENOTCONN (or, while the kernel tears the
/// connection down, ECONNABORTED — or ECANCELED for requests queued on a FUSE-over-io_uring
/// ring being cancelled). `statfs` always reaches the daemon (attributes may be answered from
/// the kernel's cache), so it is the probe.
fn is_dead(path: &Path) -> bool {
    matches!(rustix::fs::statfs(path), Err(e) if is_dead_errno(e.raw_os_error()))
}

/// The errors a FUSE mount answers once its daemon is gone (see `is_dead`); also what an
/// io_uring entry completes with when the connection goes away (`fuse_uring`).
pub fn is_dead_errno(errno: i32) -> bool {
    matches!(errno, libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED)
}

/// Unmount the pvrfs mount at `mnt`, also when its daemon is gone (a dead mount).
pub fn unmount(mnt: &Path) -> Result<()> {
    // A dead FUSE mount cannot be canonicalised (stat fails with ENOTCONN): resolve the parent.
    let abs = match std::fs::canonicalize(mnt) {
        Ok(p) => p,
        Err(_) => {
            let parent = mnt
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let name = mnt
                .file_name()
                .ok_or_else(|| Error::Usage(format!("'{}' is not a mount point", mnt.display())))?;
            std::fs::canonicalize(parent)
                .ctx("resolve", parent)?
                .join(name)
        }
    };
    let table = mount_points()?;
    let Some(entry) = table.iter().rev().find(|m| m.mountpoint == abs) else {
        return Err(Error::Usage(format!(
            "'{}' is not a mount point",
            abs.display()
        )));
    };
    if !entry.is_pvrfs() {
        return Err(Error::Usage(format!(
            "'{}' is not a pvrfs mount (it is {}); not unmounting it",
            abs.display(),
            entry.fstype
        )));
    }
    let dead = is_dead(&abs);
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-u");
    if dead {
        // Nobody can be using a mount whose daemon is gone; detach it.
        cmd.arg("-z");
    }
    let out = cmd.arg("--").arg(&abs).output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => {
            let msg = String::from_utf8_lossy(&o.stderr).trim().to_string();
            // fusermount3 refuses a busy mount: say so plainly.
            Err(Error::Other(format!(
                "could not unmount '{}': {msg}",
                abs.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // No fusermount3: root can unmount directly.
            let flags = if dead { libc::MNT_DETACH } else { 0 };
            let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(abs.as_os_str()))
                .map_err(|_| Error::Usage("mountpoint contains a NUL byte".into()))?;
            // SAFETY: `c` is a valid NUL-terminated path.
            if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
                Ok(())
            } else {
                Err(Error::io("unmount", &abs, std::io::Error::last_os_error()))
            }
        }
        Err(e) => Err(Error::io("run fusermount3 for", &abs, e)),
    }
}

/// Worker threads serving FUSE requests (`PVRFS_FUSE_THREADS` overrides, for measurement).
fn fuse_threads() -> usize {
    std::env::var("PVRFS_FUSE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_escapes() {
        let line = r"36 35 0:42 / /tmp/a\040b rw,nosuid - fuse.pvrfs pvrfs:/r\040x@3 ro,user_id=0";
        let m = parse_mountinfo_line(line).unwrap();
        assert_eq!(m.mountpoint, PathBuf::from("/tmp/a b"));
        assert_eq!(m.fstype, FSTYPE);
        assert_eq!(m.repo_and_rev(), Some(("/r x", "3")));
        let line = "22 1 8:1 / / rw shared:1 - ext4 /dev/sda1 rw";
        assert_eq!(parse_mountinfo_line(line).unwrap().fstype, "ext4");
    }
}

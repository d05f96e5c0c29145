//! The mount table as pvrfs sees it: finding, checking and unmounting pvrfs mounts.
//!
//! A mount is identified in the mount table by its source `pvrfs:<repo>@<rev>` (or
//! `pvrfs:<repo>@rw:<overlay>`) and type `fuse.pvrfs` (or `fuse`) — or, for a `--rw` mount on
//! the kernel backend, type `overlay` with a `pvrfs:<repo>@rw:<overlay>` source (its lower FUSE
//! layer is detached and never in the table): `list_mounts` reads
//! `/proc/self/mountinfo`, nothing else is registered, so a killed daemon leaves nothing stale
//! but the (dead) mount itself, which `unmount` clears.
//!
//! The repository path in a source is escaped ([`mount_source`]): `,` would split FUSE's
//! option string and fusermount3 treats `\` as an escape, so those, `%`, control characters
//! and bytes that are not UTF-8 are written `%XX` and decoded again by
//! [`MountInfo::repo_and_rev`]: any repository path round-trips (one with a comma used to be
//! written with `_`, and commands on its mounts could not find the repository or the daemon).

use crate::error::{Error, IoContext, Result};
use std::path::{Path, PathBuf};

/// The mount table type of a pvrfs mount made through fusermount3 (`fuse.` + subtype); a
/// direct mount(2) by root shows plain `fuse`. Either way the source starts with `pvrfs:`.
pub const FSTYPE: &str = "fuse.pvrfs";
/// The mount table type of a kernel-backend `--rw` mount.
pub const OVERLAY_FSTYPE: &str = "overlay";

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

/// One pvrfs mount of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mountpoint: PathBuf,
    /// `pvrfs:<repo>@<rev>` (or another source, for non-pvrfs entries of `mount_points`).
    pub source: String,
    pub fstype: String,
    /// The uid of the process that mounted it (FUSE's `user_id=` super option): the daemon's.
    pub user_id: Option<u32>,
    /// The device number `major:minor` (a FUSE mount's names its connection and its bdi).
    pub device: String,
}

impl MountInfo {
    /// True for a mount made by pvrfs.
    pub fn is_pvrfs(&self) -> bool {
        (self.fstype == FSTYPE || self.fstype == "fuse" || self.is_kernel_overlay())
            && self.source.starts_with("pvrfs:")
    }

    /// A `--rw` mount on the kernel backend (overlayfs).
    pub fn is_kernel_overlay(&self) -> bool {
        self.fstype == OVERLAY_FSTYPE && self.source.contains("@rw:")
    }

    /// How the mount is served: `ro` (read-only FUSE), `fuse` (`--rw` on the FUSE overlay) or
    /// `kernel` (`--rw` on kernel overlayfs).
    pub fn backend(&self) -> &'static str {
        if self.is_kernel_overlay() {
            "kernel"
        } else if self.source.contains("@rw:") {
            "fuse"
        } else {
            "ro"
        }
    }

    /// The repository and revision parsed back from the source (see [`mount_source`]).
    pub fn repo_and_rev(&self) -> Option<(PathBuf, &str)> {
        let (repo, rev) = self.source.strip_prefix("pvrfs:")?.rsplit_once('@')?;
        Some((unescape_repo(repo), rev))
    }
}

/// The mount source of a mount of the repository at `workdir`: `pvrfs:<repo>@<tail>`, the path
/// escaped so that FUSE's option string and the mount table keep it whole (module docs).
pub fn mount_source(workdir: &Path, tail: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::from("pvrfs:");
    for chunk in workdir.as_os_str().as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if matches!(c, ',' | '%' | '\\') || c.is_control() {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push('@');
    out.push_str(tail);
    out
}

/// The repository path of a source written by [`mount_source`].
fn unescape_repo(text: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(text).collect();
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
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
    let device = left.split(' ').nth(2)?.to_string();
    let mountpoint = unescape(left.split(' ').nth(4)?);
    let mut r = right.split(' ');
    let fstype = unescape(r.next()?);
    let source = unescape(r.next()?);
    let superopts = r.next();
    let mut user_id = superopts.and_then(|opts| {
        opts.split(',')
            .find_map(|o| o.strip_prefix("user_id=")?.parse().ok())
    });
    // A kernel-backend mount (overlayfs) has no user_id: its daemon's user is the owner of the
    // upper directory it made (`upperdir=`, under the repository's `.pvr/pvrfs/overlay/`).
    if user_id.is_none() && fstype == OVERLAY_FSTYPE.as_bytes() && source.starts_with(b"pvrfs:") {
        user_id = superopts.and_then(|opts| {
            let upper = opts.split(',').find_map(|o| o.strip_prefix("upperdir="))?;
            let path =
                <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(unescape(upper));
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(path).ok()?).into()
        });
    }
    Some(MountInfo {
        user_id,
        mountpoint: PathBuf::from(
            <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(mountpoint),
        ),
        source: String::from_utf8_lossy(&source).into_owned(),
        fstype: String::from_utf8_lossy(&fstype).into_owned(),
        device,
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
/// io_uring entry completes with when the connection goes away (`fuse::uring`).
pub fn is_dead_errno(errno: i32) -> bool {
    matches!(errno, libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED)
}

/// How long `unmount` waits for the daemon of a mount it unmounted to exit.
const DAEMON_EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Unmount the pvrfs mount at `mnt`, also when its daemon is gone (a dead mount), and wait
/// (up to 10 s) for its daemon to exit: a daemon writes out and releases its
/// overlay as it ends, so a `pvrfs mount` right after `pvrfs umount` finds the overlay free
/// instead of "locked by another daemon".
pub fn unmount(mnt: &Path) -> Result<()> {
    let daemons = daemon_pids(mnt);
    unmount_now(mnt)?;
    let t0 = std::time::Instant::now();
    while daemons.iter().any(|&pid| process_alive(pid)) {
        if t0.elapsed() > DAEMON_EXIT_WAIT {
            log::warn!(
                "the daemon of '{}' is still running {}s after the unmount",
                mnt.display(),
                DAEMON_EXIT_WAIT.as_secs()
            );
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(())
}

/// Whether process `pid` exists and has not exited (a zombie has).
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses and may contain any byte.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

fn unmount_now(mnt: &Path) -> Result<()> {
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
    if entry.is_kernel_overlay() {
        return unmount_overlay(&abs);
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
            let flags = if dead {
                rustix::mount::UnmountFlags::DETACH
            } else {
                rustix::mount::UnmountFlags::empty()
            };
            rustix::mount::unmount(&abs, flags).map_err(|e| Error::io("unmount", &abs, e.into()))
        }
        Err(e) => Err(Error::io("run fusermount3 for", &abs, e)),
    }
}

/// Unmount a kernel-backend mount. Unmounting overlayfs releases its private lower layer too
/// (and so ends the daemon). A busy mount is refused as `umount` refuses it, unless its daemon
/// is gone (nobody can be served by it any more): then it is detached.
fn unmount_overlay(abs: &Path) -> Result<()> {
    use rustix::mount::{unmount, UnmountFlags};
    match unmount(abs, UnmountFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::BUSY) if !daemon_running(abs) => {
            unmount(abs, UnmountFlags::DETACH).map_err(|e| Error::io("detach", abs, e.into()))
        }
        Err(rustix::io::Errno::BUSY) => Err(Error::Other(format!(
            "could not unmount '{}': it is busy (a process has its cwd or a file open in it)",
            abs.display()
        ))),
        Err(e) => Err(Error::io("unmount", abs, e.into())),
    }
}

/// Whether a pvrfs daemon serving `mnt` still runs (see `daemon_pids`).
fn daemon_running(mnt: &Path) -> bool {
    if !Path::new("/proc/self").exists() {
        return true; // cannot tell: treat as alive (never detach a served mount)
    }
    !daemon_pids(mnt).is_empty()
}

/// The pvrfs daemons serving `mnt`: processes whose command line is
/// `pvrfs mount ... MNT --foreground ...` (how `cmd::daemon` starts every daemon; the mountpoint
/// is absolute there). Empty when `/proc` cannot be read.
fn daemon_pids(mnt: &Path) -> Vec<u32> {
    let abs = std::fs::canonicalize(mnt).unwrap_or_else(|_| mnt.to_path_buf());
    let want = abs.as_os_str().as_encoded_bytes();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
            (args.contains(&b"--foreground".as_slice()) && args.contains(&want)).then_some(pid)
        })
        .collect()
}

/// The pvrfs mount to talk to: `explicit` (`--mount MNT`) or the innermost pvrfs mount that
/// contains `cwd`. `None` when neither applies (the caller falls back to the work tree).
pub fn find_mount(cwd: &Path, explicit: Option<&Path>) -> Result<Option<PathBuf>> {
    let mounts = list_mounts()?;
    if let Some(m) = explicit {
        let abs = std::fs::canonicalize(cwd.join(m)).ctx("resolve mountpoint", m)?;
        return match mounts.iter().find(|x| x.mountpoint == abs) {
            Some(x) => Ok(Some(x.mountpoint.clone())),
            None => Err(Error::Usage(format!(
                "'{}' is not a pvrfs mount (see 'pvrfs mounts')",
                abs.display()
            ))),
        };
    }
    let Ok(cwd) = std::fs::canonicalize(cwd) else {
        return Ok(None);
    };
    Ok(mounts
        .iter()
        .filter(|x| cwd.starts_with(&x.mountpoint))
        .max_by_key(|x| x.mountpoint.as_os_str().len())
        .map(|x| x.mountpoint.clone()))
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
        assert_eq!(m.repo_and_rev(), Some((PathBuf::from("/r x"), "3")));
        assert_eq!(m.user_id, Some(0));
        assert_eq!(m.device, "0:42");
        let line = "22 1 8:1 / / rw shared:1 - ext4 /dev/sda1 rw";
        assert_eq!(parse_mountinfo_line(line).unwrap().fstype, "ext4");
    }

    #[test]
    fn mount_sources_keep_any_repository_path() {
        use std::os::unix::ffi::OsStrExt;
        let odd = std::ffi::OsStr::from_bytes(b"/t/a,b%2C\\c\nd\xffe \xc3\xa9@f");
        let source = mount_source(Path::new(odd), "rw:default");
        assert!(
            !source.contains([',', '\\', '\n']),
            "the source must not split FUSE's options: {source}"
        );
        assert!(source.contains("é"), "{source}");
        let m = MountInfo {
            mountpoint: PathBuf::from("/m"),
            source,
            fstype: FSTYPE.into(),
            user_id: None,
            device: "0:42".into(),
        };
        assert_eq!(m.repo_and_rev(), Some((PathBuf::from(odd), "rw:default")));
    }
}

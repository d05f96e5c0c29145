//! Paths of the work tree, resolved without ever following a symlink.
//!
//! The work tree is not trusted: whoever can write in it may plant a symlink where a directory
//! was (`dir -> ../outside`). A checkout writing `dir/file` through it would create a file
//! outside the tree, a `--force` checkout would delete through it, and a status following it
//! would hash files that are not in the tree. So every operation on a path below the root starts
//! from an open descriptor of the root and resolves the parent directories with
//! `openat2(RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH)` (Linux 5.6+) or, where the kernel lacks it,
//! one `openat(O_NOFOLLOW | O_DIRECTORY)` per component. The last component is then handled
//! relative to its parent's descriptor by calls that do not follow it either (`fstatat` with
//! `AT_SYMLINK_NOFOLLOW`, `openat` with `O_NOFOLLOW`, `readlinkat`, `renameat`, `unlinkat`,
//! `symlinkat`, `mkdirat`).
//!
//! A path whose parent chain holds a symlink or a file is *not there*: probes see nothing,
//! removals remove nothing, and writes fail with an error naming the component.

use crate::error::{Error, Result};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once `openat2` proved unavailable (old kernel, seccomp filter): use the per-component
/// walk from then on.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

const DIR_PATH: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOFOLLOW);

/// The work tree's root, open, and the operations below it.
#[derive(Debug)]
pub struct Beneath {
    root: OwnedFd,
    path: PathBuf,
}

/// A failure that means "not there": a component missing, a symlink, or not a directory.
fn absent(e: Errno) -> bool {
    matches!(e, Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV)
}

/// `(parent, name)` of a repo-relative path.
fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

impl Beneath {
    pub fn open(root: &Path) -> Result<Beneath> {
        let fd = rustix::fs::open(root, DIR_PATH, Mode::empty())
            .map_err(|e| Error::io("open directory", root, e.into()))?;
        Ok(Beneath {
            root: fd,
            path: root.to_path_buf(),
        })
    }

    pub fn root_path(&self) -> &Path {
        &self.path
    }

    fn abs(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// The directory `rel` (`""` is the root) as an `O_PATH` descriptor (good for `*at` calls
    /// and `fstat`), resolved without following any symlink. `Ok(None)` when a component is
    /// missing, a symlink or not a directory.
    pub fn dir(&self, rel: &str) -> Result<Option<OwnedFd>> {
        self.dir_with(rel, DIR_PATH)
    }

    fn dir_with(&self, rel: &str, flags: OFlags) -> Result<Option<OwnedFd>> {
        let rel = if rel.is_empty() { "." } else { rel };
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let how =
                ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&self.root, rel, flags, Mode::empty(), how) {
                Ok(fd) => return Ok(Some(fd)),
                Err(e) if absent(e) => return Ok(None),
                // ENOSYS: no openat2; EPERM: a seccomp filter refused it; EAGAIN is only for
                // RESOLVE_CACHED, E2BIG/EINVAL for flags an old kernel does not know.
                Err(Errno::NOSYS | Errno::PERM | Errno::INVAL | Errno::TOOBIG) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed)
                }
                Err(e) => return Err(Error::io("open directory", self.abs(rel), e.into())),
            }
        }
        let mut cur: Option<OwnedFd> = None;
        let comps: Vec<&str> = rel.split('/').filter(|c| *c != ".").collect();
        if comps.is_empty() {
            return rustix::fs::openat(&self.root, ".", flags, Mode::empty())
                .map(Some)
                .map_err(|e| Error::io("open directory", &self.path, e.into()));
        }
        for (i, comp) in comps.iter().enumerate() {
            let at = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
            let f = if i + 1 == comps.len() {
                flags
            } else {
                DIR_PATH
            };
            match rustix::fs::openat(at, *comp, f | OFlags::NOFOLLOW, Mode::empty()) {
                Ok(fd) => cur = Some(fd),
                Err(e) if absent(e) => return Ok(None),
                Err(e) => return Err(Error::io("open directory", self.abs(rel), e.into())),
            }
        }
        Ok(cur)
    }

    /// The open parent directory of `rel` and its last component.
    pub fn parent<'p>(&self, rel: &'p str) -> Result<Option<(OwnedFd, &'p str)>> {
        let (dir, name) = split(rel);
        Ok(self.dir(dir)?.map(|fd| (fd, name)))
    }

    /// `lstat` of `rel`; `None` when it is not there (see the module docs).
    pub fn lstat(&self, rel: &str) -> Result<Option<rustix::fs::Stat>> {
        let Some((dir, name)) = self.parent(rel)? else {
            return Ok(None);
        };
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(e) if absent(e) => Ok(None),
            Err(e) => Err(Error::io("stat", self.abs(rel), e.into())),
        }
    }

    /// Open the regular file `rel` for reading; `None` when it is not there or not a regular
    /// file (a symlink is never followed; a FIFO is never waited on).
    pub fn open_file(&self, rel: &str) -> Result<Option<File>> {
        let Some((dir, name)) = self.parent(rel)? else {
            return Ok(None);
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) if absent(e) => return Ok(None),
            Err(e) => return Err(Error::io("open", self.abs(rel), e.into())),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| Error::io("stat", self.abs(rel), e.into()))?;
        if FileType::from_raw_mode(st.st_mode as _) != FileType::RegularFile {
            return Ok(None);
        }
        // Reads of a regular file never block; clear the flag anyway for the readers after us.
        let _ = rustix::fs::fcntl_setfl(&fd, OFlags::empty());
        Ok(Some(File::from(fd)))
    }

    /// The target of the symlink `rel`; `None` when it is not there or not a symlink.
    pub fn readlink(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let Some((dir, name)) = self.parent(rel)? else {
            return Ok(None);
        };
        read_link_at(&dir, name).map_err(|e| Error::io("read symlink", self.abs(rel), e.into()))
    }

    /// Create the directory `rel` and every missing parent (mode `mode`, before the umask),
    /// never through a symlink or a file: such a component is an error naming it. Returns the
    /// directory, open as `O_PATH`.
    pub fn create_dirs(&self, rel: &str, mode: u32) -> Result<OwnedFd> {
        if let Some(fd) = self.dir(rel)? {
            return Ok(fd);
        }
        let mut cur: Option<OwnedFd> = None;
        let mut done = String::new();
        for comp in rel.split('/') {
            if !done.is_empty() {
                done.push('/');
            }
            done.push_str(comp);
            let at = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
            match rustix::fs::mkdirat(at, comp, Mode::from_raw_mode(mode as _)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(Error::io("create directory", self.abs(&done), e.into())),
            }
            match rustix::fs::openat(at, comp, DIR_PATH, Mode::empty()) {
                Ok(fd) => cur = Some(fd),
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    return Err(Error::Other(format!(
                        "'{}' is not a directory (a symlink or a file is in the way); checkout never writes through it",
                        self.abs(&done).display()
                    )))
                }
                Err(e) => return Err(Error::io("open directory", self.abs(&done), e.into())),
            }
        }
        Ok(cur.expect("a path has at least one component"))
    }
}

/// `readlinkat` of `name` in `dir`: `Ok(None)` when absent or not a symlink.
pub fn read_link_at(dir: impl AsFd, name: &str) -> rustix::io::Result<Option<Vec<u8>>> {
    match rustix::fs::readlinkat(dir, OsStr::from_bytes(name.as_bytes()), Vec::new()) {
        Ok(target) => Ok(Some(target.into_bytes())),
        Err(Errno::INVAL) => Ok(None), // not a symlink
        Err(e) if absent(e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Change the permission bits of the file or directory `fd` (opened `O_PATH` or not), without
/// following anything: `fchmod` refuses `O_PATH` descriptors, so those go through their
/// `/proc/self/fd` link (which names the open file itself, not a path to resolve again).
pub fn chmod_fd(fd: impl AsFd, mode: u32, what: &Path) -> Result<()> {
    let mode = Mode::from_raw_mode(mode as _);
    match rustix::fs::fchmod(&fd, mode) {
        Ok(()) => Ok(()),
        Err(Errno::BADF) => {
            let proc = format!("/proc/self/fd/{}", {
                use std::os::fd::AsRawFd;
                fd.as_fd().as_raw_fd()
            });
            rustix::fs::chmod(proc.as_str(), mode).map_err(|e| Error::io("chmod", what, e.into()))
        }
        Err(e) => Err(Error::io("chmod", what, e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        let outside = dir.path().join("outside");
        fs::create_dir_all(root.join("real")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), "s").unwrap();
        fs::write(root.join("real/f"), "f").unwrap();
        std::os::unix::fs::symlink("../outside", root.join("link")).unwrap();
        std::os::unix::fs::symlink("real", root.join("inner")).unwrap();
        (dir, root, outside)
    }

    fn both_ways(f: impl Fn()) {
        NO_OPENAT2.store(false, Ordering::Relaxed);
        f();
        NO_OPENAT2.store(true, Ordering::Relaxed);
        f();
        NO_OPENAT2.store(false, Ordering::Relaxed);
    }

    #[test]
    fn symlinked_parents_are_not_there() {
        let (_t, root, outside) = setup();
        both_ways(|| {
            let b = Beneath::open(&root).unwrap();
            assert!(b.lstat("real/f").unwrap().is_some());
            assert!(b.lstat("link/secret").unwrap().is_none());
            assert!(
                b.lstat("inner/f").unwrap().is_none(),
                "even a link inside the tree"
            );
            assert!(b.open_file("link/secret").unwrap().is_none());
            assert!(b.open_file("link").unwrap().is_none());
            assert!(b.open_file("real/f").unwrap().is_some());
            assert_eq!(b.readlink("link").unwrap().unwrap(), b"../outside");
            assert!(b.readlink("real/f").unwrap().is_none());
            assert!(b.dir("link").unwrap().is_none());
            assert!(b.dir("real/f").unwrap().is_none());
            assert!(b.dir("").unwrap().is_some());
            let err = b.create_dirs("link/new", 0o755).unwrap_err().to_string();
            assert!(
                err.contains("link") && err.contains("not a directory"),
                "{err}"
            );
            assert!(!outside.join("new").exists());
            b.create_dirs("real/a/b", 0o755).unwrap();
            assert!(root.join("real/a/b").is_dir());
        });
    }

    #[test]
    fn chmod_through_a_path_descriptor() {
        let (_t, root, _) = setup();
        let b = Beneath::open(&root).unwrap();
        let fd = b.dir("real").unwrap().unwrap();
        chmod_fd(&fd, 0o1750, &root.join("real")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(root.join("real"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o1750);
    }
}

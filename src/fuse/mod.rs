//! The FUSE face of pvrfs: everything that needs fuser's types, and nothing that decides what
//! a file holds (that is `crate::fs`).
//!
//! - `readonly`, `cow`: the `fuser::Filesystem` adapters of a read-only and a `--rw` mount —
//!   one call into `fs`, one reply per operation;
//! - `session`: mount options, mounting, the serving loop and its signals (set up once for
//!   both kinds of mount);
//! - `uring`: FUSE over io_uring, the per-CPU transport offered at INIT when the kernel has it;
//! - `readahead`: the readahead window of a mount whose blob data comes through the daemon;
//! - `mounts`: the mount table (finding, checking and unmounting pvrfs mounts);
//! - `control`: the control socket through which `pvrfs commit/status/diff/reset` reach a
//!   `--rw` mount's daemon.
//!
//! Shared here: the conversions from `fs` types to fuser's (`file_attr`, `errno`) and the
//! negotiation of kernel passthrough at INIT ([`Passthrough`], `negotiate_passthrough`).

use crate::fs::{Attr, Kind, ToErrno, BLOCK_SIZE};
use fuser::{Errno, FileAttr, FileType, INodeNo, InitFlags, KernelConfig};

pub mod control;
pub mod cow;
pub mod kernel;
pub mod mounts;
pub mod readahead;
pub mod readonly;
pub mod session;
pub mod uring;

/// Whether reads (and, on `--rw` mounts, writes) of file content go straight to the backing
/// file in the kernel (FUSE passthrough, Linux 6.9+) instead of through the daemon.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Passthrough {
    /// Read-only mounts: no passthrough but no-open mode (files open without a round trip; the
    /// page cache is filled by the daemon), unless the kernel cannot open without asking, then
    /// passthrough. `--rw` mounts: passthrough where the kernel offers it.
    #[default]
    Auto,
    /// Passthrough for every blob open; fail to mount (or open) where it is not available.
    Always,
    /// Never; on read-only mounts files are then opened without a round trip (no-open mode).
    Never,
}

/// The errno reply of an error.
pub(crate) fn errno(e: &impl ToErrno) -> Errno {
    Errno::from_i32(e.errno())
}

pub(crate) fn file_type(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

pub(crate) fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks(),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// Ask for kernel passthrough at INIT unless `mode` is `Never`; `stack_depth` is 1 for backing
/// files on a plain file system, 2 when they sit on a stacked one (overlayfs, FUSE). Returns
/// whether it was granted; fails INIT (so the mount fails) when `Always` cannot be honoured.
pub(crate) fn negotiate_passthrough(
    config: &mut KernelConfig,
    mode: Passthrough,
    stack_depth: u32,
) -> std::io::Result<bool> {
    if mode == Passthrough::Never {
        return Ok(false);
    }
    let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
        && config.set_max_stack_depth(stack_depth).is_ok();
    if !granted {
        if mode == Passthrough::Always {
            return Err(std::io::Error::other(
                "FUSE passthrough is not available and --passthrough always was given",
            ));
        }
        log::warn!("the kernel does not offer FUSE passthrough; file I/O goes through the daemon");
    }
    Ok(granted)
}

/// Overlayfs and FUSE file systems raise the stacking depth passthrough needs.
pub(crate) fn is_stacked_fs(dir: &std::path::Path) -> bool {
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    rustix::fs::statfs(dir)
        .map(|s| {
            #[allow(clippy::unnecessary_cast)] // f_type is not i64 on every target
            let t = s.f_type as i64;
            t == OVERLAYFS_SUPER_MAGIC || t == FUSE_SUPER_MAGIC
        })
        .unwrap_or(false)
}

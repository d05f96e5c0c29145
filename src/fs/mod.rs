//! What a mount serves, as plain Rust: no fuser type below this line.
//!
//! Two filesystems answer the kernel's questions through the same vocabulary:
//! - [`readonly::ReadOnlyFs`]: one revision, immutable (`tree` is its directory index);
//! - [`cow::CowFs`]: a revision plus the copy-on-write [`overlay`] of a `--rw` mount;
//! - [`opens::OpenPolicy`]: how a read-only mount answers OPEN (passthrough, cached, or no-open
//!   mode from then on).
//!
//! The vocabulary both speak lives here: node kinds ([`Kind`]), attributes ([`Attr`]), the root
//! inode ([`ROOT_INO`]), name and block sizes, and the one error type with the one errno table
//! ([`FsError`], [`ToErrno`] in `error.rs`). The FUSE adapters (`crate::fuse`) translate these
//! into fuser's types and nothing else; tests drive the filesystems without a kernel.
//!
//! Layering: `tree` and `overlay` know nothing of each other; `readonly` uses `tree`, `cow` uses
//! `overlay`; everything here may use the repository layers (`repo`, `store`, `state`, `json`)
//! and nothing above (`fuse`, `cmd`, `cli`).

use serde::{Deserialize, Serialize};
use std::time::SystemTime;

pub mod change;
pub mod cow;
pub mod direct;
mod error;
pub mod image;
pub mod opens;
pub mod overlay;
pub mod readonly;
pub mod tree;
pub mod upper;

pub use error::{FsError, ToErrno};

/// Inode number of the root directory, in every filesystem pvrfs serves.
pub const ROOT_INO: u64 = 1;
/// Longest name, in bytes, a directory entry may have (what `statfs` reports; longer names are
/// refused with `ENAMETOOLONG`, as on a local file system).
pub const NAME_MAX: usize = 255;
/// Block size reported by `stat` and `statfs`.
pub const BLOCK_SIZE: u32 = 4096;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// A named pipe (`mkfifo`): the kernel runs it, the overlay only names it.
    Fifo,
    /// A unix socket's name (`bind` on a path).
    Socket,
    CharDevice,
    BlockDevice,
}

impl Kind {
    /// The special kind of a `mknod` mode's type bits (`S_IFIFO`, `S_IFSOCK`, `S_IFCHR`,
    /// `S_IFBLK`); `None` for any other type.
    pub fn special_from_mode(mode: u32) -> Option<Kind> {
        match mode & libc::S_IFMT {
            libc::S_IFIFO => Some(Kind::Fifo),
            libc::S_IFSOCK => Some(Kind::Socket),
            libc::S_IFCHR => Some(Kind::CharDevice),
            libc::S_IFBLK => Some(Kind::BlockDevice),
            _ => None,
        }
    }

    /// FIFOs, sockets and devices: nodes with no content of their own (see `Overlay::mknod`).
    pub fn is_special(self) -> bool {
        matches!(
            self,
            Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice
        )
    }

    /// Whether `rdev` means something for this kind (device nodes only).
    pub fn has_rdev(self) -> bool {
        matches!(self, Kind::CharDevice | Kind::BlockDevice)
    }

    /// How messages name this kind ("fifo 'p' is not stored").
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File => "file",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::CharDevice => "character device",
            Kind::BlockDevice => "block device",
        }
    }
}

/// Attributes of a node, as `stat` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    /// Permission bits only (no file type bits).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Device number of a character or block device (as the kernel encodes it), else 0.
    pub rdev: u32,
}

impl Attr {
    /// 512-byte blocks of data (what `du` adds up).
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(512)
    }
}

/// `statfs` figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statfs {
    /// Blocks of `bsize` holding the tree's bytes.
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    /// Inodes in the tree.
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

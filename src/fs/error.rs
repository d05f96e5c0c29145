//! The one error type of filesystem operations and the one errno table.
//!
//! Every operation of `readonly` and `cow` (and of the `overlay` below `cow`) fails with an
//! [`FsError`]; the FUSE adapters answer the kernel with [`ToErrno::errno`] of it. Repository
//! errors met while serving (a missing object, an I/O error of the store) map here too, so
//! there is exactly one place that decides which errno a caller sees.

use crate::error::Error;
use crate::oid::ObjectId;

/// Why a filesystem operation failed; each maps to exactly one errno.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("read-only file system")]
    ReadOnly,
    #[error("unknown file handle {0}")]
    BadHandle(u64),
    /// No inode has extended attributes and none can be set.
    #[error("extended attributes are not supported")]
    NoXattr,
    #[error("buffer too small")]
    Range,
    /// The object behind a file cannot be served (missing, unreadable or corrupt).
    #[error("cannot serve '{path}': object {id} {why}")]
    Unavailable {
        path: String,
        id: ObjectId,
        why: String,
    },
    /// An operation on a path failed with this errno (the copy-on-write layer's checks and
    /// system calls on its upper files).
    #[error("{op} '{path}': {}", std::io::Error::from_raw_os_error(*.errno))]
    Errno {
        op: &'static str,
        path: String,
        errno: i32,
    },
    /// A repository error met while serving (journal write, object store, commit).
    #[error(transparent)]
    Repo(#[from] Error),
}

/// The errno a filesystem caller sees for an error.
pub trait ToErrno {
    fn errno(&self) -> i32;
}

impl ToErrno for FsError {
    /// The errno table (one place, as mountpoint-s3's `ToErrno`).
    fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::BadHandle(_) => libc::EBADF,
            // What a filesystem without xattr support answers (vfat, for one).
            FsError::NoXattr => libc::EOPNOTSUPP,
            FsError::Range => libc::ERANGE,
            // The file exists but its bytes cannot be produced: an I/O error, not ENOENT, so
            // tools report a damaged file instead of a vanished one.
            FsError::Unavailable { .. } => libc::EIO,
            FsError::Errno { errno, .. } => *errno,
            FsError::Repo(e) => e.errno(),
        }
    }
}

impl ToErrno for Error {
    /// A repository error seen through a mount: the system call's own errno where there is one
    /// (ENOSPC on a full disk, EACCES...), else EIO (a missing or corrupt object, a bad state).
    fn errno(&self) -> i32 {
        match self {
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        }
    }
}

//! What the work-tree scanners share about the file system: the `lstat` key that tells whether
//! a file or directory may have changed (`StatKey`), the per-directory record of the last walk
//! (`DirRecord`, made by `walk` and persisted by `statcache`), and the fast hasher of their maps.
//!
//! Sits below both `walk` and `statcache`, so neither needs the other.

use std::fs;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::unix::fs::MetadataExt;

/// FxHash (rustc's hasher): paths are not attacker-chosen keys here, and SipHash was a visible
/// share of `status` on 100k files.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub type FxBuild = BuildHasherDefault<FxHasher>;
pub type HashMap<K, V> = std::collections::HashMap<K, V, FxBuild>;
pub type HashSet<K> = std::collections::HashSet<K, FxBuild>;

/// The part of `lstat` that tells whether a file may have changed, and what it is (`mode`:
/// the file type and permission bits of `st_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatKey {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
    pub mode: u32,
}

impl StatKey {
    pub fn of(meta: &fs::Metadata) -> Self {
        StatKey {
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            ino: meta.ino(),
            dev: meta.dev(),
            mode: meta.mode(),
        }
    }

    /// From a raw `stat` (field types vary by architecture, hence the casts).
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    pub fn from_stat(st: &rustix::fs::Stat) -> Self {
        StatKey {
            size: st.st_size as u64,
            mtime_ns: st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64,
            ctime_ns: st.st_ctime as i64 * 1_000_000_000 + st.st_ctime_nsec as i64,
            ino: st.st_ino as u64,
            dev: st.st_dev as u64,
            mode: st.st_mode as u32,
        }
    }

    pub fn file_type(&self) -> rustix::fs::FileType {
        rustix::fs::FileType::from_raw_mode(self.mode as _)
    }

    pub fn is_symlink(&self) -> bool {
        self.file_type() == rustix::fs::FileType::Symlink
    }

    /// The 12 permission bits.
    pub fn permissions(&self) -> u32 {
        self.mode & crate::state::meta::PERMISSION_BITS
    }
}

/// What the last walk learned about one directory (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirRecord {
    pub key: StatKey,
    /// The stat key of the directory's `.pvrignore` entry (following a symlink; `NO_FILE` when
    /// it is not a regular file), `None` when there is no entry of that name.
    pub ignore: Option<StatKey>,
    /// Directory and ignore file were both older than the walk: the record may be reused.
    pub stable: bool,
    /// The listing: per entry, a kind byte (`KIND_*`), the name bytes, a NUL; sorted by name.
    pub listing: Vec<u8>,
}

pub const KIND_FILE: u8 = b'f';
pub const KIND_DIR: u8 = b'd';
pub const KIND_LINK: u8 = b'l';
pub const KIND_NOT_UTF8: u8 = b'n';
/// Kinds of entries a state cannot hold (reported, never stored).
pub const KIND_SOCKET: u8 = b's';
pub const KIND_FIFO: u8 = b'p';
pub const KIND_CHAR_DEVICE: u8 = b'c';
pub const KIND_BLOCK_DEVICE: u8 = b'b';

/// The listing kind of an entry of type `t` (`None` for types that cannot occur).
pub fn kind_of(t: rustix::fs::FileType) -> Option<u8> {
    use rustix::fs::FileType as T;
    Some(match t {
        T::RegularFile => KIND_FILE,
        T::Directory => KIND_DIR,
        T::Symlink => KIND_LINK,
        T::Socket => KIND_SOCKET,
        T::Fifo => KIND_FIFO,
        T::CharacterDevice => KIND_CHAR_DEVICE,
        T::BlockDevice => KIND_BLOCK_DEVICE,
        T::Unknown => return None,
    })
}

/// What an entry of a kind a state cannot hold is, for messages (`None` for storable kinds).
pub fn unstorable(kind: u8) -> Option<&'static str> {
    Some(match kind {
        KIND_SOCKET => "a socket",
        KIND_FIFO => "a FIFO",
        KIND_CHAR_DEVICE => "a character device",
        KIND_BLOCK_DEVICE => "a block device",
        _ => return None,
    })
}

/// The stat key recorded for a `.pvrignore` entry that is not a regular file.
pub const NO_FILE: StatKey = StatKey {
    size: u64::MAX,
    mtime_ns: 0,
    ctime_ns: 0,
    ino: 0,
    dev: 0,
    mode: 0,
};

impl DirRecord {
    pub(super) fn entries(&self) -> impl Iterator<Item = (u8, &[u8])> {
        self.listing
            .split(|&b| b == 0)
            .filter(|e| !e.is_empty())
            .map(|e| (e[0], &e[1..]))
    }
}

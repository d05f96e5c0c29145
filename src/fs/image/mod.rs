//! The EROFS metadata image of one revision: the lower layer of a kernel-backend `--rw` mount.
//!
//! Model (composefs's, see docs/OVERLAY.md "The EROFS lower layer"): the image holds the
//! revision's whole tree (directories, names, modes, owner, time, symlinks, empty directories)
//! and the bytes of its inline JSON files, but no object data. An object file is a
//! *metacopy* inode of the object's size whose `trusted.overlay.redirect` is `/<object id>`:
//! overlayfs, mounted with the store's `objects` directory as a data-only lower layer
//! (`datadir+`, `metacopy=on`), reads the file's bytes from `.pvr/objects/<object id>`. So the
//! lower layer is the kernel's own from end to end: no lookup, open or read of the base tree
//! waits for a daemon.
//!
//! Invariants:
//! - the image shows exactly what the read-only FUSE lower shows for the same revision and
//!   options (same tree, modes, owner, time, sizes, inline rendering): it is built from the
//!   same [`ReadOnlyFs`];
//! - the image is a pure function of (revision, rendering, owner); its bytes do not depend on
//!   when or where it was built (the build time is the revision's time);
//! - an object missing from the store is a file of 1 byte whose data cannot be opened (EIO
//!   from overlayfs), as the FUSE lower's placeholder: never a plausible empty file.
//!
//! The writer is the `composefs` crate's (composefs-rs, the format composefs and bootc
//! mount): [`PvrObject`] adapts pvr's flat object store (`objects/<hex>`, where composefs
//! uses `objects/<2 hex>/<62 hex>`).

use super::readonly::ReadOnlyFs;
use super::tree::{FileData, NodeKind};
use super::ROOT_INO;
use crate::error::{Error, Result};
use composefs::erofs::writer::{mkfs_erofs, ValidatedFileSystem};
use composefs::fsverity::{Algorithm, FsVerityHashValue};
use composefs::tree::{Directory, FileSystem, Inode, LeafContent, RegularFile, Stat};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// A pvr object id as composefs's writer needs it: the redirect it writes is
/// `/<to_object_pathname()>`, here the flat `<64 hex>` of pvr's store. Only ever used
/// without fs-verity (`RegularFile::ExternalNoVerity`): pvr ids are sha256 of the content,
/// not fs-verity digests.
#[derive(
    Clone, Debug, Eq, FromBytes, Hash, Immutable, IntoBytes, KnownLayout, PartialEq, Unaligned,
)]
#[repr(C)]
pub struct PvrObject([u8; 32]);

impl From<[u8; 32]> for PvrObject {
    fn from(bytes: [u8; 32]) -> Self {
        PvrObject(bytes)
    }
}

impl FsVerityHashValue for PvrObject {
    type Digest = composefs::digest::Sha256;
    const ALGORITHM: Algorithm = Algorithm::SHA256;
    const EMPTY: Self = PvrObject([0; 32]);

    fn to_object_pathname(&self) -> String {
        hex::encode(self.0)
    }

    fn from_object_pathname(
        pathname: impl AsRef<[u8]>,
    ) -> std::result::Result<Self, hex::FromHexError> {
        let bytes = pathname.as_ref();
        let hex_part = &bytes[bytes.len().saturating_sub(64)..];
        Self::from_hex(hex_part)
    }
}

/// Stack for building the image: composefs's writer (and dropping its tree) recurses once
/// per directory level, and a state path of 4095 bytes can nest 2047 levels. Only the pages
/// touched are ever allocated.
const BUILD_STACK: usize = 256 << 20;

/// The EROFS image of the revision `fs` serves (see the module header). O(paths): every
/// object file's size is read from the store (`stat`), nothing else of an object.
pub fn erofs_image(fs: &ReadOnlyFs) -> Result<Vec<u8>> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("pvrfs-image".into())
            .stack_size(BUILD_STACK)
            .spawn_scoped(scope, || build(fs))
            .map_err(|e| Error::Other(format!("cannot start the image builder: {e}")))?
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The image of an empty tree (a root directory only): what `fuse::kernel` mounts to learn
/// whether the kernel takes EROFS images from files.
pub fn empty_image() -> Vec<u8> {
    let root = Stat {
        st_mode: 0o755,
        st_uid: 0,
        st_gid: 0,
        st_mtim_sec: 0,
        st_mtim_nsec: 0,
        xattrs: Default::default(),
    };
    let valid = ValidatedFileSystem::new(FileSystem::<PvrObject>::new(root))
        .expect("an empty tree is a valid file system");
    mkfs_erofs(&valid).into_vec()
}

fn build(fs: &ReadOnlyFs) -> Result<Vec<u8>> {
    let began = std::time::Instant::now();
    let root = fs
        .getattr(ROOT_INO)
        .map_err(|e| Error::Other(format!("the revision's root: {e:?}")))?;
    let mtime = match root.mtime.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let stat = |mode: u32| Stat {
        st_mode: mode & 0o7777,
        st_uid: root.uid,
        st_gid: root.gid,
        st_mtim_sec: mtime,
        st_mtim_nsec: 0,
        xattrs: Default::default(),
    };
    let tree = fs.tree();
    // The objects' sizes first, in parallel: one `stat` each, the bulk of the walk below.
    {
        use rayon::prelude::*;
        (0..tree.file_count() as u32)
            .into_par_iter()
            .for_each(|file| {
                if matches!(tree.file_data(file), FileData::Object(_)) {
                    let _ = tree.file_size(file, fs.store());
                }
            });
    }
    let mut image = FileSystem::<PvrObject>::new(stat(tree.mode(ROOT_INO).unwrap_or(0o755)));
    // Depth-first with an explicit stack: a hostile state may nest thousands of levels.
    // Each frame: a directory's inode, and its children still to visit (in name order).
    let mut stack: Vec<(u64, std::ops::Range<u64>, Directory<PvrObject>)> = vec![(
        ROOT_INO,
        tree.children(ROOT_INO),
        Directory::new(stat(tree.mode(ROOT_INO).unwrap_or(0o755))),
    )];
    loop {
        let frame = stack.last_mut().expect("the root's frame is popped last");
        let Some(ino) = frame.1.next() else {
            let (dir_ino, _, dir) = stack.pop().expect("a frame");
            match stack.last_mut() {
                Some(parent) => {
                    let name = tree.name(dir_ino).unwrap_or_default();
                    parent
                        .2
                        .insert(OsStr::from_bytes(name), Inode::Directory(Box::new(dir)));
                }
                None => {
                    image.root = dir;
                    break;
                }
            }
            continue;
        };
        let name = tree.name(ino).unwrap_or_default();
        let mode = tree.mode(ino).unwrap_or(0o644);
        let content = match tree.kind(ino) {
            Some(NodeKind::Dir { .. }) => {
                let children = tree.children(ino);
                stack.push((ino, children, Directory::new(stat(mode))));
                continue;
            }
            Some(NodeKind::Symlink { .. }) => {
                let target = tree.link_target(ino).unwrap_or_default();
                LeafContent::Symlink(OsStr::from_bytes(target).into())
            }
            Some(NodeKind::File { file }) => LeafContent::Regular(match tree.file_data(file) {
                FileData::Object(id) => {
                    let size = tree.file_size(file, fs.store()).unwrap_or(1);
                    RegularFile::ExternalNoVerity(PvrObject(*id.as_bytes()), size)
                }
                FileData::Inline(_) => RegularFile::Inline(tree.rendered(file).to_vec().into()),
            }),
            None => continue,
        };
        let leaf = image.push_leaf(stat(mode), content);
        let frame = stack.last_mut().expect("a frame");
        frame.2.insert(OsStr::from_bytes(name), Inode::leaf(leaf));
    }
    let walked = began.elapsed();
    let valid = ValidatedFileSystem::new(image)
        .map_err(|e| Error::Other(format!("cannot make the EROFS image of the revision: {e}")))?;
    let bytes = mkfs_erofs(&valid).into_vec();
    log::debug!(
        "EROFS image: tree and object sizes {:.3} s, image {:.3} s",
        walked.as_secs_f64(),
        (began.elapsed() - walked).as_secs_f64()
    );
    Ok(bytes)
}

#[cfg(test)]
mod tests;

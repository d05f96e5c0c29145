//! pvrfs: pvr-compatible repositories with numbered revisions, mountable over FUSE.
//!
//! Module map (see docs/ARCHITECTURE.md): `oid` object ids, `json` pvr's JSON dialect and
//! renderings, `state` a revision's content, `store` the object store, `repo` the `.pvr/`
//! layout and revisions, `patch` diffs, `fsutil` durable writes, `overlay` the copy-on-write
//! layer of writable mounts (docs/OVERLAY.md).

pub mod control;
pub mod cowfs;
pub mod cowfuse;
pub mod error;
pub mod exchange;
pub mod fs;
pub mod fsutil;
pub mod fuse;
pub mod fuse_uring;
pub mod json;
pub mod mount;
pub mod oid;
pub mod overlay;
pub mod patch;
pub mod progress;
pub mod repo;
pub mod state;
pub mod store;
pub mod tree;
pub mod worktree;

pub use error::{Error, Result};
pub mod cli;
pub mod cmd;

//! pvrfs: pvr-compatible repositories with numbered revisions, mountable over FUSE.
//!
//! Layers, each using only those below it (docs/ARCHITECTURE.md has the map):
//! - `cli` (clap definitions) and `cmd` (one function per command): the binary's face;
//! - `fuse`: fuser adapters, sessions, the io_uring transport, the mount table, the control
//!   socket of `--rw` mounts;
//! - `fs`: what a mount serves, as plain Rust (read-only revision, copy-on-write overlay);
//! - `serve`: `pvrfs serve`, pvr's remote protocol over HTTP (docs/EXCHANGE.md);
//! - `worktree`, `exchange`: a work directory, and other repositories (directories, tarballs,
//!   HTTP, S3, pvr remotes), against the repository; `remote`: pvr's remote protocol types;
//! - `repo` (`.pvr/` layout, revisions), `patch` (diffs), `store` (objects), `state` (a
//!   revision's content), `json` (pvr's JSON dialect), `oid` (object ids);
//! - `error`, `fsutil` (durable writes), `progress`, `sys` (the few raw C calls);
//! - `fuzzing`: the fuzz targets' entry points (above everything; not an API).

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod error;
pub mod exchange;
pub mod fs;
pub mod fsutil;
pub mod fuse;
pub mod json;
pub mod oid;
pub mod patch;
pub mod progress;
pub mod remote;
pub mod repo;
pub mod serve;
pub mod state;
pub mod store;
pub mod sys;
pub mod worktree;

#[doc(hidden)]
pub mod fuzzing;

pub use error::{Error, Result};
pub mod cli;
pub mod cmd;

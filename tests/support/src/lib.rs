//! Helpers shared by pvrfs's integration tests, one concern per module:
//!
//! - [`bin`]: running the `pvrfs` binary (the one way tests do it: [`pvrfs`] → [`Pvrfs`] → [`Run`]);
//! - [`repos`]: repositories and work directories made for a test ([`TestRepo`], [`Dir`]);
//! - [`trees`]: reading trees back for comparison ([`files`], the node dump [`dump_dir`] /
//!   [`dump_overlay`]);
//! - [`mounts`]: real mounts and their daemons ([`Mount`], whose Drop unmounts);
//! - [`nginx`]: a real nginx on a loopback port;
//! - [`hostile`]: a misbehaving HTTP server (redirects, endless bodies, trickles) for the
//!   tests of hostile servers;
//! - [`model`]: the reference-model harness of the copy-on-write tests (random operations on a
//!   plain directory and on the system under test, compared step by step);
//! - [`reference`]: the reference `pvr`, when the machine has it;
//! - [`remote`]: `pvrfs serve`, a single-node Garage (S3) and the reference pvr as a client, for
//!   the remote-protocol and S3 tests;
//! - [`throttle`]: a rate-limiting TCP proxy, to act on a transfer while it runs.
//!
//! A library crate of its own (a dev-dependency of pvrfs), so it is built once for all test
//! binaries and unused helpers are visible as such.

pub mod bin;
pub mod hostile;
pub mod model;
pub mod mounts;
pub mod nginx;
pub mod pagecache;
pub mod reference;
pub mod remote;
pub mod repos;
pub mod throttle;
pub mod trees;

pub use bin::{pvrfs, Pvrfs, Run};
pub use mounts::{
    cow, daemon_pid, fuse_available, is_mount_point, kernel_cow_available, kernel_lower,
    kill_daemon, wait_exited, with_cow, with_kernel_fuse_lower, Mount,
};
pub use nginx::{free_port, Nginx};
pub use repos::{commit, repo_with, value, vectors, Content, Dir, TestRepo};
pub use trees::{copy_tree, dump_dir, dump_overlay, fast_tempdir, files, names};

/// The pvrfs checkout these tests belong to.
pub fn checkout_dir() -> &'static std::path::Path {
    std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

//! Mounting a prepared filesystem and serving it until it is unmounted.
//!
//! Life of a mount: `fuse::mounts::check_mountpoint` (exists, is a directory, not already a
//! mount point, /dev/fuse present) → `fs::readonly::prepare` or `fs::cow::prepare` (open the
//! repository, resolve the revision, build the tree or load the overlay) → [`mount_readonly`]
//! or [`mount_cow`] (mount, answer INIT) → [`serve`] (one `/dev/fuse` worker per core — plus,
//! when INIT granted FUSE over io_uring, one pinned ring thread per CPU (`uring`), which then
//! carries all requests but FORGET/INTERRUPT — until unmounted or signalled).
//!
//! A mount is identified in the mount table by its source `pvrfs:<repo>@<rev>` (read-only) or
//! `pvrfs:<repo>@rw:<overlay>` and type `fuse.pvrfs` (or `fuse`); see `mounts`.

use super::cow::CowFuse;
use super::readonly::ReadOnlyFuse;
use super::uring::{DirectRead, RingTransport, Rings};
use super::Passthrough;
use crate::error::{Error, Result};
use crate::repo::{Repo, Revision};
use std::path::Path;
use std::sync::Arc;

/// Options of the FUSE session (how the kernel may use the mount), as opposed to what the
/// filesystem shows (`fs::readonly::Options`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionOptions {
    /// Let other users (root included) use the mount; the kernel checks permissions.
    pub allow_other: bool,
    pub passthrough: Passthrough,
}

/// The mount source shown in the mount table (`mounts::mount_source`: the path escaped).
pub fn fsname(repo: &Repo, rev: &Revision) -> String {
    super::mounts::mount_source(repo.workdir(), &rev.rev.to_string())
}

/// The mount source of a `--rw` mount: `pvrfs:<repo>@rw:<overlay>` (its revision moves with
/// every commit, so the source names the overlay instead).
pub fn fsname_rw(repo: &Repo, overlay: &str) -> String {
    super::mounts::mount_source(repo.workdir(), &format!("rw:{overlay}"))
}

/// A mounted session and the io_uring queues that will serve it (`None`: `/dev/fuse` only).
pub struct Mounted<FS: fuser::Filesystem> {
    session: fuser::Session<FS>,
    rings: Option<Rings>,
    /// Answers READ requests that come by the rings without fuser's dispatch.
    direct_read: Option<Arc<dyn DirectRead>>,
}

impl<FS: fuser::Filesystem> Mounted<FS> {
    /// A session made by hand (the kernel backend's detached lower layer), offering FUSE over
    /// io_uring when `rings` is given (INIT has been answered: the rings start if it granted).
    pub fn from_session(
        session: fuser::Session<FS>,
        rings: Option<Rings>,
        direct_read: Option<Arc<dyn DirectRead>>,
    ) -> Mounted<FS> {
        Mounted {
            session,
            rings,
            direct_read,
        }
    }

    /// Sends cache invalidations to the kernel (through `/dev/fuse`, whatever the transport).
    pub fn notifier(&self) -> fuser::Notifier {
        self.session.notifier()
    }

    /// Serve requests until the file system goes away: fuser's `/dev/fuse` workers, plus one
    /// io_uring queue thread per CPU when INIT granted it.
    pub fn run(self) -> std::io::Result<()> {
        use std::os::fd::{AsFd, AsRawFd};
        let Mounted {
            session,
            rings,
            direct_read,
        } = self;
        let fuse_fd = session.as_fd().as_raw_fd();
        session.run_with(move |dispatcher| match rings {
            Some(r) => r.start(fuse_fd, dispatcher, direct_read),
            None => Ok(RingTransport::none()),
        })
    }
}

/// The session configuration both kinds of mount share; `rw` adds write access and keeps
/// atime updates to the kernel's default.
fn config(fsname: String, rw: bool, opts: &SessionOptions) -> fuser::Config {
    use fuser::{MountOption, SessionACL};
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(fsname),
        MountOption::Subtype("pvrfs".into()),
        if rw { MountOption::RW } else { MountOption::RO },
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::Exec,
    ];
    if !rw {
        config.mount_options.push(MountOption::NoAtime);
    }
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(fuse_threads());
    config.clone_fd = true;
    config
}

/// Mount `fs` at `mnt` with `config`, offering FUSE over io_uring when the rings can be made,
/// and answer INIT: the returned session is ready to be served.
fn mount_with<FS: fuser::Filesystem>(
    mnt: &Path,
    config: &fuser::Config,
    make: impl FnOnce(Option<super::uring::Offer>) -> FS,
) -> Result<Mounted<FS>> {
    let rings = Rings::prepare();
    let fs = make(rings.as_ref().map(|r| r.offer()));
    let session = fuser::Session::new(fs, mnt, config);
    // The INIT exchange used a 16 MiB zeroed buffer carved (and so memset) from the free heap
    // the state parse left behind; give those pages back now that it is freed.
    crate::sys::trim_heap();
    let session = session.map_err(|e| mount_error(mnt, e))?;
    Ok(Mounted {
        session,
        rings,
        direct_read: None,
    })
}

/// Mount a prepared read-only revision at `mnt`.
pub fn mount_readonly(
    prepared: &crate::fs::readonly::Prepared,
    mnt: &Path,
    opts: &SessionOptions,
) -> Result<Mounted<ReadOnlyFuse>> {
    let config = config(fsname(&prepared.repo, &prepared.rev), false, opts);
    let mut reader = None;
    let mut mounted = mount_with(mnt, &config, |offer| {
        let fs = ReadOnlyFuse::new(prepared.fs.clone(), opts.passthrough).with_uring(offer);
        reader = Some(fs.direct_reader());
        fs
    })?;
    // INIT has been answered: the read mode is settled.
    if let Some(reader) = reader {
        if reader.reads_through_daemon() {
            super::readahead::widen(mnt);
        }
        mounted.direct_read = Some(Arc::new(reader));
    }
    Ok(mounted)
}

/// Mount a prepared `--rw` filesystem (overlay `overlay`) at `mnt`.
pub fn mount_cow(
    prepared: &crate::fs::cow::Prepared,
    overlay: &str,
    mnt: &Path,
    opts: &SessionOptions,
) -> Result<Mounted<CowFuse>> {
    let config = config(fsname_rw(&prepared.repo, overlay), true, opts);
    mount_with(mnt, &config, |offer| {
        CowFuse::new(prepared.fs.clone(), opts.passthrough).with_uring(offer)
    })
}

fn mount_error(mnt: &Path, e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => Error::Other(format!(
            "no permission to mount on '{}': {e} (FUSE mounts need root or fusermount3)",
            mnt.display()
        )),
        _ => Error::io("mount FUSE filesystem on", mnt, e),
    }
}

/// The signals that unmount a serving daemon.
const STOP_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Hold SIGINT/SIGTERM/SIGHUP until `serve` waits for them. Call it first thing in a daemon,
/// before it reports readiness: a signal arriving in between would otherwise kill the process
/// and leave a dead mount instead of unmounting it. Threads started later inherit the mask.
pub fn block_stop_signals() {
    crate::sys::block_signals(&STOP_SIGNALS);
}

/// Serve a mounted session until it is unmounted (or SIGINT/SIGTERM/SIGHUP, which unmount it):
/// fuser's `/dev/fuse` workers, plus one io_uring queue thread per CPU when INIT granted it.
pub fn serve<FS: fuser::Filesystem>(mut mounted: Mounted<FS>) -> Result<()> {
    let mut unmounter = mounted.session.unmount_callable();
    // Only the waiter below receives the stop signals (a no-op if already blocked).
    block_stop_signals();
    std::thread::Builder::new()
        .name("pvrfs-signals".into())
        .spawn(move || {
            if let Some(sig) = crate::sys::wait_for_signal(&STOP_SIGNALS) {
                log::info!("signal {sig}: unmounting");
                if let Err(e) = unmounter.unmount() {
                    log::error!("unmount failed: {e}");
                }
            }
        })
        .map_err(|e| Error::io("start signal thread for", "the mount", e))?;
    mounted
        .run()
        .map_err(|e| Error::io("serve FUSE requests for", "the mount", e))
}

/// Worker threads serving FUSE requests (`PVRFS_FUSE_THREADS` overrides, for measurement).
fn fuse_threads() -> usize {
    std::env::var("PVRFS_FUSE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

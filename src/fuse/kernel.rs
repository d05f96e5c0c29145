//! The kernel-overlayfs backend of a `--rw` mount: overlayfs at the mountpoint, over a private
//! lower layer of the base revision, of one of two kinds ([`LowerKind`], kept per upper layer):
//!
//! - **EROFS** (the default where the kernel has it): the revision's metadata image
//!   (`fs::image`, cached next to the upper layer) mounted from its file, plus the store's
//!   `objects` directory as a data-only layer (`datadir+`, `metacopy=on`). The kernel serves
//!   the whole lower layer: no lookup, open or read of a base file waits for this daemon.
//! - **FUSE**: a read-only FUSE mount of the revision that this daemon serves
//!   (`metacopy=off`): where EROFS is missing, or the store is itself on overlayfs or FUSE,
//!   or `PVRFS_KERNEL_LOWER=fuse` asks for it.
//!
//! Made with the new mount API, so the lower mount is never attached anywhere (no second
//! mountpoint to see, manage or leak):
//!
//! 1. EROFS: `fsopen("erofs")` + `source` = the image file + `FSCONFIG_CMD_CREATE` + `fsmount`
//!    gives a *detached* mount (an fd). FUSE: `fsopen("fuse")` + `fsconfig(fd=/dev/fuse,
//!    rootmode, user_id, group_id, default_permissions)` + `FSCONFIG_CMD_CREATE`: the kernel
//!    queues INIT, which `fuser::Session::from_fd` answers; `fsmount`; the session's workers
//!    start serving (overlayfs looks at its lower layer while mounting);
//! 2. `fsopen("overlay")` with `lowerdir+` = that mount's fd (and `datadir+` = the objects
//!    directory for EROFS), `upperdir`/`workdir` = fds of the overlay's directories, the
//!    options of [`overlay_options`], `source` = the mount's `pvrfs:<repo>@rw:<overlay>` name;
//!    `fsmount`; `move_mount` onto the mountpoint. Our fd of the lower mount is then closed:
//!    overlayfs holds its own private clone.
//!
//! Lifetime: when the overlay is unmounted (and no open file pins it) overlayfs drops the lower
//! mount. The daemon learns it from the FUSE lower's session ending, or, for EROFS, from the
//! mount table (`/proc/self/mountinfo` polled for changes). If the daemon dies first, an EROFS
//! overlay keeps working (only commits, status and reset need the daemon) and a FUSE one's
//! lower layer answers `ENOTCONN`; `pvrfs umount` unmounts the overlay (lazily) and so
//! releases both (`mounts::unmount`).

use super::readonly::ReadOnlyFuse;
use super::Passthrough;
use crate::error::{Error, Result};
use crate::fs::readonly::ReadOnlyFs;
use crate::fs::upper::LowerKind;
use rustix::fd::{AsFd, OwnedFd};
use rustix::mount::{
    fsconfig_create, fsconfig_set_fd, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen,
    move_mount, FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags,
};
use std::path::Path;
use std::sync::Arc;

/// The overlayfs options a kernel-backend mount uses over a lower layer of kind `lower`
/// (docs/OVERLAY.md, "Kernel backend", says why each is chosen). Never `volatile`: it gives up
/// the durability of the upper layer.
pub fn overlay_options(lower: LowerKind) -> [(&'static str, &'static str); 4] {
    [
        // A rename of a base directory is a rename (a redirect xattr), not EXDEV: `mv dir new`
        // works as on a local file system, and the commit follows the redirect (O(1) per
        // rename).
        ("redirect_dir", "on"),
        // No inode index: it needs file handles the lower layer can decode after a remount
        // (FUSE node ids are per-session), and it would only keep hard links of base files
        // whole.
        ("index", "off"),
        // Inode numbers of the overlay are the real ones, tagged by layer in the high bits:
        // unique and persistent, at the price of st_ino values above 2^32 for base files.
        ("xino", "on"),
        match lower {
            // Needed for the data-only layer. A chmod, chown, touch or rename of a base file
            // copies up its metadata only (the commit takes the data from the lower revision);
            // a write copies the data first.
            LowerKind::Erofs => ("metacopy", "on"),
            // A copy-up copies the data: a chmod of a 1 GiB base blob copies it (the upper
            // layer is then self-contained).
            LowerKind::Fuse => ("metacopy", "off"),
        },
    ]
}

/// The kind of lower layer a new upper layer of `repo` gets: EROFS when the kernel can mount it and the store is a plain local file system
/// (overlayfs cannot stack a data-only layer on overlayfs or FUSE more than one level);
/// `PVRFS_KERNEL_LOWER=fuse|erofs` forces one (measurement, tests).
pub fn preferred_lower(repo: &crate::repo::Repo) -> LowerKind {
    let objects = repo.store().dir();
    match std::env::var("PVRFS_KERNEL_LOWER").as_deref() {
        Ok("fuse") => return LowerKind::Fuse,
        Ok("erofs") => return LowerKind::Erofs,
        _ => {}
    }
    if super::is_stacked_fs(objects) {
        log::info!(
            "object store '{}' is on overlayfs or FUSE: the lower layer is a FUSE mount",
            objects.display()
        );
        return LowerKind::Fuse;
    }
    match erofs_from_files(&repo.ext_dir()) {
        Ok(()) => LowerKind::Erofs,
        Err(why) => {
            log::info!("{why}: the lower layer is a FUSE mount");
            LowerKind::Fuse
        }
    }
}

/// Whether the kernel mounts an EROFS image from a regular file kept in `dir` (a repository's
/// `.pvr/pvrfs`, where the images go) (`CONFIG_EROFS_FS_BACKED_BY_FILE`, Linux 6.12+; asking `fsopen("erofs")` is
/// not enough: without it a file is refused with ENOTBLK). Tried once per process, with an image
/// of an empty tree written next to where the real ones go, mounted detached and dropped.
pub fn erofs_from_files(dir: &Path) -> std::result::Result<(), String> {
    static ANSWER: std::sync::OnceLock<std::result::Result<(), String>> =
        std::sync::OnceLock::new();
    ANSWER
        .get_or_init(|| {
            let probe = dir.join(format!("erofs-probe.{}", std::process::id()));
            let tried = std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&probe, crate::fs::image::empty_image()))
                .map_err(|e| {
                    format!(
                        "cannot write an EROFS probe image '{}': {e}",
                        probe.display()
                    )
                })
                .and_then(|()| {
                    mount_erofs(&probe)
                        .map(drop)
                        .map_err(|e| format!("the kernel cannot mount EROFS from a file ({e})"))
                });
            let _ = std::fs::remove_file(&probe);
            tried
        })
        .clone()
}

/// Mount the EROFS image at `image` read-only, detached (not attached anywhere).
pub fn mount_erofs(image: &Path) -> Result<OwnedFd> {
    let fsfd = fsopen("erofs", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| mount_api("fsopen(erofs) for the lower layer", e))?;
    let source = image
        .to_str()
        .ok_or_else(|| Error::Other(format!("image path '{}' is not UTF-8", image.display())))?;
    fsconfig_set_string(&fsfd, "source", source)
        .map_err(|e| mount_api(&format!("fsconfig(erofs, source={source})"), e))?;
    fsconfig_create(&fsfd).map_err(|e| {
        mount_api(
            &format!("mount the EROFS image '{}' (see dmesg)", image.display()),
            e,
        )
    })?;
    fsmount(
        &fsfd,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOSUID,
    )
    .map_err(|e| mount_api("fsmount the EROFS lower layer", e))
}

/// Whether this process may mount overlayfs at all (CAP_SYS_ADMIN in the mount namespace's
/// user namespace): `fsopen` asks exactly that, and nothing is mounted by asking.
pub fn can_mount_overlayfs() -> std::result::Result<(), String> {
    match fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(_) => Ok(()),
        Err(e) if e == rustix::io::Errno::PERM => {
            Err("mounting overlayfs needs CAP_SYS_ADMIN (run as root)".into())
        }
        Err(e) if e == rustix::io::Errno::NODEV => {
            Err("the kernel has no overlayfs (modprobe overlay)".into())
        }
        Err(e) => Err(format!("cannot mount overlayfs: {e}")),
    }
}

fn mount_api(what: &str, e: rustix::io::Errno) -> Error {
    Error::Other(format!("{what}: {e}"))
}

/// A mounted, detached lower layer and the FUSE session serving it.
pub struct Lower {
    pub session: super::session::Mounted<ReadOnlyFuse>,
    pub mount: OwnedFd,
}

/// Make the private read-only FUSE mount of `fs` (not attached anywhere) and answer its INIT.
pub fn mount_lower(fs: Arc<ReadOnlyFs>, name: &str, passthrough: Passthrough) -> Result<Lower> {
    let dev = rustix::fs::open(
        "/dev/fuse",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::io("open", "/dev/fuse", e.into()))?;
    let fsfd = fsopen("fuse", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| mount_api("fsopen(fuse) for the lower layer", e))?;
    let uid = rustix::process::geteuid().as_raw();
    let gid = rustix::process::getegid().as_raw();
    let fd_text = std::os::fd::AsRawFd::as_raw_fd(&dev).to_string();
    for (k, v) in [
        ("source", name),
        ("fd", fd_text.as_str()),
        ("rootmode", "40000"),
        ("user_id", &uid.to_string()),
        ("group_id", &gid.to_string()),
    ] {
        fsconfig_set_string(&fsfd, k, v)
            .map_err(|e| mount_api(&format!("fsconfig(fuse, {k}={v})"), e))?;
    }
    fsconfig_set_flag(&fsfd, "default_permissions")
        .map_err(|e| mount_api("fsconfig(fuse, default_permissions)", e))?;
    fsconfig_create(&fsfd).map_err(|e| mount_api("create the lower FUSE superblock", e))?;
    // Under overlayfs the lower's backing files may stack one level only.
    let passthrough = if super::is_stacked_fs(fs.store().dir()) {
        Passthrough::Never
    } else {
        passthrough
    };
    let mut config = fuser::Config::default();
    config.n_threads = Some(2);
    config.clone_fd = true;
    // FUSE over io_uring when the kernel offers it, as for a read-only mount (every new name
    // in a base directory, every `mkdir` of an existing one and every copy-up waits for a
    // lower round trip; no difference from /dev/fuse was measurable yet on this VM).
    let rings = super::uring::Rings::prepare();
    let fuse = ReadOnlyFuse::new(fs, passthrough)
        .with_uring(rings.as_ref().map(|r| r.offer()))
        .with_unsupported_xattr_lists();
    let direct_read: Arc<dyn super::uring::DirectRead> = Arc::new(fuse.direct_reader());
    let session = fuser::Session::from_fd(fuse, dev, fuser::SessionACL::All, config)
        .map_err(|e| Error::io("answer INIT of", "the lower FUSE mount", e))?;
    let session = super::session::Mounted::from_session(session, rings, Some(direct_read));
    let mount = fsmount(
        &fsfd,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOSUID,
    )
    .map_err(|e| mount_api("fsmount the lower FUSE layer", e))?;
    Ok(Lower { session, mount })
}

/// The layers of an overlayfs mount.
pub struct Layers<'a> {
    /// The detached mount of the lower layer (already served, for FUSE).
    pub lower: &'a OwnedFd,
    pub kind: LowerKind,
    /// The data-only layer (the object store), for an EROFS lower.
    pub data: Option<&'a Path>,
    pub upper: &'a Path,
    pub work: &'a Path,
}

/// Mount overlayfs of `layers` at `mnt`, source `source`.
pub fn mount_overlay(layers: &Layers, source: &str, mnt: &Path) -> Result<()> {
    let Layers {
        lower,
        kind,
        data,
        upper,
        work,
    } = *layers;
    let open_dir = |p: &Path| {
        rustix::fs::open(
            p,
            rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC | rustix::fs::OFlags::PATH,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| Error::io("open", p, e.into()))
    };
    let (up, wk) = (open_dir(upper)?, open_dir(work)?);
    let fsfd = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| mount_api("fsopen(overlay)", e))?;
    let set = |k: &str, v: &str| {
        fsconfig_set_string(&fsfd, k, v)
            .map_err(|e| mount_api(&format!("fsconfig(overlay, {k}={v})"), e))
    };
    set("source", source)?;
    for (k, v) in overlay_options(kind) {
        set(k, v)?;
    }
    // Measurement only (docs/ARCHITECTURE.md): other options, `k=v,k=v`, set after ours.
    if let Ok(extra) = std::env::var("PVRFS_OVERLAYFS_OPTIONS") {
        for kv in extra.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            if v.is_empty() {
                fsconfig_set_flag(&fsfd, k)
                    .map_err(|e| mount_api(&format!("fsconfig(overlay, {k})"), e))?;
            } else {
                set(k, v)?;
            }
        }
    }
    fsconfig_set_fd(&fsfd, "lowerdir+", lower.as_fd())
        .map_err(|e| mount_api("fsconfig(overlay, lowerdir+)", e))?;
    if let Some(data) = data {
        let d = open_dir(data)?;
        fsconfig_set_fd(&fsfd, "datadir+", &d)
            .map_err(|e| mount_api("fsconfig(overlay, datadir+)", e))?;
    }
    fsconfig_set_fd(&fsfd, "upperdir", &up).map_err(|e| mount_api("fsconfig(upperdir)", e))?;
    fsconfig_set_fd(&fsfd, "workdir", &wk).map_err(|e| mount_api("fsconfig(workdir)", e))?;
    fsconfig_create(&fsfd).map_err(|e| overlay_error(e, upper))?;
    let m = fsmount(
        &fsfd,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NODEV,
    )
    .map_err(|e| mount_api("fsmount overlayfs", e))?;
    move_mount(
        &m,
        "",
        rustix::fs::CWD,
        mnt,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| Error::io("attach overlayfs at", mnt, e.into()))
}

fn overlay_error(e: rustix::io::Errno, upper: &Path) -> Error {
    if e == rustix::io::Errno::BUSY {
        return Error::Usage(format!(
            "the overlay's upper directory '{}' is in use by another overlayfs mount (a mount whose daemon died?); 'pvrfs mounts' lists it, 'pvrfs umount' clears it",
            upper.display()
        ));
    }
    mount_api("create the overlayfs superblock (see dmesg)", e)
}

/// The daemon of a kernel-backend mount: the overlay (upper layer + its lower revision), the
/// mount it serves, and the generation of the current lower session (a reset mounts a new
/// overlay and lower layer over the old ones, detached).
pub struct KernelDaemon {
    inner: parking_lot::Mutex<Inner>,
    mnt: std::path::PathBuf,
    source: String,
    passthrough: Passthrough,
    canonical: bool,
    ended: std::sync::mpsc::Sender<u64>,
}

struct Inner {
    ov: UpperOverlay,
    generation: u64,
}

use crate::fs::change::Changes;
use crate::fs::upper::UpperOverlay;

impl KernelDaemon {
    /// Mount `ov` at `mnt` (source `source`); returns the daemon and the channel on which the
    /// lower sessions report their end (by generation): see [`KernelDaemon::wait`].
    pub fn mount(
        mut ov: UpperOverlay,
        mnt: &Path,
        source: String,
        passthrough: Passthrough,
        canonical: bool,
    ) -> Result<(Arc<KernelDaemon>, std::sync::mpsc::Receiver<u64>)> {
        let (tx, rx) = std::sync::mpsc::channel();
        ov.set_canonical(canonical);
        let d = Arc::new(KernelDaemon {
            inner: parking_lot::Mutex::new(Inner { ov, generation: 1 }),
            mnt: mnt.to_path_buf(),
            source,
            passthrough,
            canonical,
            ended: tx,
        });
        {
            let g = d.inner.lock();
            d.mount_layer(&g)?;
        }
        Ok((d, rx))
    }

    /// Serve the lower revision of `inner` and mount overlayfs over it at the mountpoint.
    fn mount_layer(&self, inner: &Inner) -> Result<()> {
        if inner.ov.lower_kind() == LowerKind::Erofs {
            return self.mount_erofs_layer(inner);
        }
        let ov = &inner.ov;
        let fs = self.lower_fs(ov);
        let name = format!("{}:lower:{}", self.source, ov.lower_revision().rev);
        let Lower { session, mount } = mount_lower(fs, &name, self.passthrough)?;
        let generation = inner.generation;
        let ended = self.ended.clone();
        std::thread::Builder::new()
            .name(format!("pvrfs-lower-{generation}"))
            .spawn(move || {
                if let Err(e) = session.run() {
                    log::error!("lower FUSE session {generation}: {e}");
                }
                let _ = ended.send(generation);
            })
            .map_err(|e| Error::io("start the lower session of", &self.mnt, e))?;
        // If overlayfs refuses, dropping `mount` ends the lower session too.
        let (upper, work) = (ov.upper_dir(), ov.work_dir());
        let layers = Layers {
            lower: &mount,
            kind: LowerKind::Fuse,
            data: None,
            upper: &upper,
            work: &work,
        };
        mount_overlay(&layers, &self.source, &self.mnt)
    }

    /// The EROFS lower: the layer's image (made now if this layer has none yet for this
    /// presentation), the object store as data-only layer; then a thread that reports the end
    /// of this generation's overlay.
    fn mount_erofs_layer(&self, inner: &Inner) -> Result<()> {
        let ov = &inner.ov;
        // What the image shows besides the revision: its inline rendering and its owner (the
        // daemon's user, as `readonly::from_state` takes it without --uid/--gid).
        let key = format!(
            "{}-{}-{}",
            if self.canonical {
                "canonical"
            } else {
                "checkout"
            },
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw()
        );
        let image = ov.lower_image(&key);
        // A remount finds the image of its layer: nothing of the revision is read again.
        if !image.exists() {
            let began = std::time::Instant::now();
            let fs = self.lower_fs(ov);
            let bytes = crate::fs::image::erofs_image(&fs)?;
            crate::fsutil::atomic_write(&image, &bytes, 0o600)?;
            log::info!(
                "made the EROFS image of revision {} ({} bytes, {} paths) in {:.3} s: {}",
                ov.lower_revision().rev,
                bytes.len(),
                fs.tree().len(),
                began.elapsed().as_secs_f64(),
                image.display()
            );
        }
        let lower = mount_erofs(&image)?;
        let (upper, work) = (ov.upper_dir(), ov.work_dir());
        let objects = ov.repo().store().dir().to_path_buf();
        let layers = Layers {
            lower: &lower,
            kind: LowerKind::Erofs,
            data: Some(&objects),
            upper: &upper,
            work: &work,
        };
        mount_overlay(&layers, &self.source, &self.mnt)?;
        let id = mount_id(&self.mnt)?;
        let generation = inner.generation;
        let ended = self.ended.clone();
        let mnt = self.mnt.clone();
        std::thread::Builder::new()
            .name(format!("pvrfs-watch-{generation}"))
            .spawn(move || {
                if let Err(e) = wait_until_unmounted(id) {
                    log::error!("watching the mount table for {}: {e}", mnt.display());
                }
                let _ = ended.send(generation);
            })
            .map_err(|e| Error::io("start the mount watcher of", &self.mnt, e))?;
        Ok(())
    }

    /// The read-only file system of `ov`'s lower revision, as the mount presents it.
    fn lower_fs(&self, ov: &UpperOverlay) -> Arc<ReadOnlyFs> {
        let opts = crate::fs::readonly::Options {
            canonical: self.canonical,
            ..Default::default()
        };
        crate::fs::readonly::from_state(
            ov.repo(),
            ov.lower_revision(),
            ov.lower_state().clone(),
            &opts,
        )
    }

    /// Wait until the current overlay is unmounted (its lower session ends).
    pub fn wait(&self, ended: std::sync::mpsc::Receiver<u64>) {
        while let Ok(generation) = ended.recv() {
            if generation == self.inner.lock().generation {
                return;
            }
        }
    }

    /// Unmount the overlay (not lazily: a busy mount stays, as with `umount`).
    pub fn unmount(&self) -> Result<()> {
        rustix::mount::unmount(&self.mnt, rustix::mount::UnmountFlags::empty())
            .map_err(|e| Error::io("unmount", &self.mnt, e.into()))
    }
}

impl super::control::Controlled for KernelDaemon {
    fn backend(&self) -> &'static str {
        "kernel"
    }
    fn transport(&self) -> String {
        match self.inner.lock().ov.lower_kind() {
            LowerKind::Erofs => "kernel overlayfs (lower layer: EROFS image + object store)".into(),
            LowerKind::Fuse => "kernel overlayfs (lower layer on FUSE)".into(),
        }
    }
    fn status_text(&self) -> Result<String> {
        self.inner.lock().ov.status_text()
    }
    fn diff_text(&self) -> Result<String> {
        self.inner.lock().ov.diff_text()
    }
    fn view_state(&self) -> Result<crate::state::State> {
        self.inner.lock().ov.view_state()
    }
    fn warnings(&self) -> Result<Vec<String>> {
        self.inner.lock().ov.warnings()
    }
    fn commit(&self, message: &str) -> Result<crate::fs::change::Committed> {
        self.inner.lock().ov.commit_changes(message)
    }
    /// Detach the overlay (files open in it keep working on the discarded layer until closed),
    /// start a fresh upper layer on the head and mount it, with a lower layer of the head.
    fn reset(&self) -> Result<()> {
        let mut g = self.inner.lock();
        g.generation += 1;
        rustix::mount::unmount(&self.mnt, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| Error::io("detach the overlay at", &self.mnt, e.into()))?;
        let kind = preferred_lower(g.ov.repo());
        let mounted = g.ov.reset(kind).and_then(|()| self.mount_layer(&g));
        if mounted.is_err() {
            // Nothing is mounted any more: let the daemon end.
            let _ = self.ended.send(g.generation);
        }
        mounted
    }
    fn base_rev(&self) -> u64 {
        self.inner.lock().ov.head_rev()
    }
    fn workdir(&self) -> std::path::PathBuf {
        self.inner.lock().ov.repo().workdir().to_path_buf()
    }
}

/// The mount id (as `/proc/self/mountinfo` lists it) of the mount at `mnt`.
fn mount_id(mnt: &Path) -> Result<u64> {
    let st = rustix::fs::statx(
        rustix::fs::CWD,
        mnt,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        rustix::fs::StatxFlags::MNT_ID,
    )
    .map_err(|e| Error::io("statx", mnt, e.into()))?;
    Ok(st.stx_mnt_id)
}

/// Whether mount `id` is in the mount table `mountinfo` (its first field).
fn listed(mountinfo: &str, id: u64) -> bool {
    let id = id.to_string();
    mountinfo
        .lines()
        .any(|l| l.split(' ').next() == Some(id.as_str()))
}

/// Block until mount `id` leaves this mount namespace's table: `/proc/self/mountinfo` reports
/// every change of the table to `poll` (POLLPRI), counted from when it was opened, so no
/// change between a read and the next poll is missed.
fn wait_until_unmounted(id: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek};
    let mut table = std::fs::File::open("/proc/self/mountinfo")?;
    let mut text = String::new();
    loop {
        text.clear();
        table.rewind()?;
        table.read_to_string(&mut text)?;
        if !listed(&text, id) {
            return Ok(());
        }
        let mut fds = [rustix::event::PollFd::new(
            &table,
            rustix::event::PollFlags::PRI,
        )];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::listed;

    #[test]
    fn a_mount_is_listed_by_its_first_field_only() {
        let table = "22 1 0:21 / /proc rw - proc proc rw\n\
                     236 22 0:52 / /mnt/x rw - overlay pvrfs:/r@rw:default rw,lowerdir+=236\n";
        assert!(listed(table, 236));
        assert!(listed(table, 22));
        assert!(!listed(table, 1));
        assert!(!listed(table, 23));
        assert!(!listed("", 22));
    }
}

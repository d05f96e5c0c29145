//! Starting a mount daemon.
//!
//! Without `--foreground`, `pvrfs mount` checks what it cheaply can (repository, revision,
//! mountpoint, /dev/fuse), then [`spawn`] re-executes the binary with `--foreground` in a new
//! session, with stdio detached (logs go to `.pvr/pvrfs/logs/`) and the write end of a pipe in
//! `PVRFS_READY_FD`. The child ([`run`]) mounts and writes `ok` or the error text to the pipe;
//! the parent returns when the pipe says so (or closes: the child died), so "mount returned 0"
//! means "the tree is being served".

use crate::cli::MountArgs;
use crate::error::{Error, IoContext};
use crate::fs;
use crate::fuse::session::{self, SessionOptions};
use crate::fuse::{control, mounts};
use crate::repo::Repo;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

/// Environment variable naming the readiness pipe of a daemon child.
const READY_FD: &str = "PVRFS_READY_FD";

/// The FUSE session options a `mount` command line asks for.
fn session_options(args: &MountArgs) -> SessionOptions {
    SessionOptions {
        allow_other: args.allow_other,
        passthrough: args.passthrough.into(),
    }
}

/// What a read-only mount's command line asks the filesystem to show.
fn readonly_options(args: &MountArgs) -> fs::readonly::Options {
    fs::readonly::Options {
        canonical: args.canonical,
        uid: args.uid,
        gid: args.gid,
        verify: args.verify,
    }
}

/// The daemon itself (`mount --foreground`): mount, report readiness, serve until unmounted.
pub fn run(args: &MountArgs, repo_dir: &Path, mnt: &Path) -> anyhow::Result<()> {
    session::block_stop_signals();
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .try_init();
    // SAFETY: the parent passed us this fd for this purpose and nothing else owns it.
    let mut ready: Option<File> = std::env::var(READY_FD)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .map(|fd| File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
    std::env::remove_var(READY_FD);
    if args.rw {
        return run_rw(args, repo_dir, mnt, ready);
    }
    let result = (|| -> crate::Result<_> {
        let canon = mounts::check_mountpoint(mnt)?;
        let prepared = fs::readonly::prepare(repo_dir, &args.rev, &readonly_options(args))?;
        let session = session::mount_readonly(&prepared, &canon, &session_options(args))?;
        log::info!(
            "serving revision {} of {} at {} ({} inodes)",
            prepared.rev.rev,
            prepared.repo.workdir().display(),
            canon.display(),
            prepared.fs.tree().len()
        );
        Ok(session)
    })();
    report_readiness(&mut ready, result.as_ref().map(|_| ()));
    session::serve(result?)?;
    Ok(())
}

/// Tell the parent waiting in `spawn_daemon` that the daemon serves (`ok`), or why it does not
/// (`error CODE\nMESSAGE`, so the parent exits with the daemon's code). Said once, at most.
fn report_readiness(ready: &mut Option<File>, outcome: std::result::Result<(), &crate::Error>) {
    if let Some(mut r) = ready.take() {
        let _ = match outcome {
            Ok(()) => r.write_all(b"ok\n"),
            Err(e) => write!(r, "error {}\n{}", e.exit_code(), e),
        };
    }
}

/// The daemon of a `--rw` mount: load the overlay, mount, bind the control socket, report
/// readiness through `ready`, serve until unmounted.
fn run_rw(
    args: &MountArgs,
    repo_dir: &Path,
    mnt: &Path,
    mut ready: Option<File>,
) -> anyhow::Result<()> {
    match choose_backend(args, repo_dir) {
        Ok(Backend::Fuse) => run_fuse(args, repo_dir, mnt, ready),
        Ok(Backend::Kernel { fallback }) => {
            match mount_kernel(args, repo_dir, mnt) {
                Ok(mounted) => {
                    report_readiness(&mut ready, Ok(()));
                    serve_kernel(mounted, mnt)
                }
                Err(e) if fallback && !is_refusal(&e) => {
                    // `auto` on a new overlay: overlayfs could not be mounted here (the
                    // repository's file system cannot hold an upper layer, ...).
                    log::warn!("kernel overlayfs cannot be mounted ({e}); using the FUSE overlay");
                    if let Ok(repo) = Repo::open(repo_dir) {
                        let _ = fs::upper::UpperOverlay::discard(&repo, &args.overlay);
                    }
                    run_fuse(args, repo_dir, mnt, ready)
                }
                Err(e) => {
                    report_readiness(&mut ready, Err(&e));
                    Err(e.into())
                }
            }
        }
        Err(e) => {
            report_readiness(&mut ready, Err(&e));
            Err(e.into())
        }
    }
}

/// Errors that are about the overlay or the mountpoint, not about mounting overlayfs: the FUSE
/// backend would refuse them too.
fn is_refusal(e: &Error) -> bool {
    matches!(
        e,
        Error::Locked { .. } | Error::Remote { .. } | Error::Conflict(_) | Error::Usage(_)
    )
}

/// Which backend serves a `--rw` mount.
enum Backend {
    Fuse,
    /// `fallback`: a new overlay under `--cow auto`, which may still fall back to FUSE.
    Kernel {
        fallback: bool,
    },
}

/// `--cow` and the overlay's existing format decide; `kernel` is refused clearly where
/// overlayfs cannot be mounted.
fn choose_backend(args: &MountArgs, repo_dir: &Path) -> crate::Result<Backend> {
    use crate::cli::CowBackend;
    let repo = Repo::open(repo_dir)?;
    let (is_kernel, is_fuse) = (
        fs::upper::is_kernel_overlay(&repo, &args.overlay),
        fs::upper::is_fuse_overlay(&repo, &args.overlay),
    );
    let kernel_ok = crate::fuse::kernel::can_mount_overlayfs();
    match args.cow {
        CowBackend::Fuse if is_kernel => Err(Error::Usage(format!(
            "overlay '{}' holds changes made with the kernel backend; mount it with --cow kernel (or auto)",
            args.overlay
        ))),
        CowBackend::Fuse => Ok(Backend::Fuse),
        CowBackend::Kernel => match kernel_ok {
            Ok(()) => Ok(Backend::Kernel { fallback: false }),
            Err(why) => Err(Error::Usage(format!(
                "--cow kernel: kernel overlayfs cannot be mounted: {why} (--cow fuse works without it)"
            ))),
        },
        CowBackend::Auto if is_fuse => Ok(Backend::Fuse),
        CowBackend::Auto if is_kernel => match kernel_ok {
            Ok(()) => Ok(Backend::Kernel { fallback: false }),
            Err(why) => Err(Error::Usage(format!(
                "overlay '{}' was made with the kernel backend, which cannot be mounted here: {why}",
                args.overlay
            ))),
        },
        CowBackend::Auto => Ok(match kernel_ok {
            Ok(()) => Backend::Kernel { fallback: true },
            Err(why) => {
                log::info!("kernel overlayfs unavailable ({why}): using the FUSE overlay");
                Backend::Fuse
            }
        }),
    }
}

/// Open (or create) the kernel-backend overlay, mount it and bind its control socket.
fn mount_kernel(
    args: &MountArgs,
    repo_dir: &Path,
    mnt: &Path,
) -> crate::Result<Arc<crate::fuse::kernel::KernelDaemon>> {
    let canon = mounts::check_mountpoint(mnt)?;
    let repo = Repo::open(repo_dir)?;
    let new_lower = crate::fuse::kernel::preferred_lower(&repo);
    let ov = fs::upper::UpperOverlay::open_for_mount(&repo, &args.overlay, &args.rev, new_lower)?;
    let listener = control::bind(repo.workdir(), &canon)?;
    let (daemon, ended) = crate::fuse::kernel::KernelDaemon::mount(
        ov,
        &canon,
        session::fsname_rw(&repo, &args.overlay),
        session_options(args).passthrough,
        args.canonical,
    )?;
    log::info!(
        "serving overlay '{}' of {} at {} (read-write, kernel overlayfs)",
        args.overlay,
        repo.workdir().display(),
        canon.display()
    );
    let target: Arc<dyn control::Controlled> = daemon.clone();
    std::thread::Builder::new()
        .name("pvrfs-control".into())
        .spawn(move || control::serve(listener, target))
        .map_err(|e| Error::io("start control thread for", mnt, e))?;
    let waiter = daemon.clone();
    std::thread::Builder::new()
        .name("pvrfs-wait".into())
        .spawn(move || {
            waiter.wait(ended);
            std::process::exit(0);
        })
        .map_err(|e| Error::io("start waiter thread for", mnt, e))?;
    Ok(daemon)
}

/// Serve a kernel-backend mount until it is unmounted (the waiter thread exits the process) or
/// a stop signal asks for the unmount.
fn serve_kernel(daemon: Arc<crate::fuse::kernel::KernelDaemon>, mnt: &Path) -> anyhow::Result<()> {
    loop {
        if let Some(sig) = crate::sys::wait_for_signal(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
        {
            log::info!("signal {sig}: unmounting {}", mnt.display());
            if let Err(e) = daemon.unmount() {
                log::error!("unmount failed: {e}");
            }
        }
    }
}

/// The daemon of a `--rw` mount on the FUSE overlay.
fn run_fuse(
    args: &MountArgs,
    repo_dir: &Path,
    mnt: &Path,
    mut ready: Option<File>,
) -> anyhow::Result<()> {
    let result = (|| -> crate::Result<_> {
        let canon = mounts::check_mountpoint(mnt)?;
        let prepared = fs::cow::prepare(repo_dir, &args.rev, &args.overlay, args.canonical)?;
        let listener = control::bind(prepared.repo.workdir(), &canon)?;
        let session = session::mount_cow(&prepared, &args.overlay, &canon, &session_options(args))?;
        log::info!(
            "serving overlay '{}' on revision {} of {} at {} (read-write)",
            args.overlay,
            prepared.fs.base_rev(),
            prepared.repo.workdir().display(),
            canon.display()
        );
        Ok((session, listener, prepared, canon))
    })();
    let (session, listener, prepared, canon_mnt) = match result {
        Ok(v) => v,
        Err(e) => {
            report_readiness(&mut ready, Err(&e));
            return Err(e.into());
        }
    };
    let notifier = session.notifier();
    let target = Arc::new(control::FuseControl {
        fs: prepared.fs.clone(),
        invalidate: move |inval: fs::cow::Invalidate| {
            for (parent, name) in &inval.entries {
                let _ = notifier.inval_entry(fuser::INodeNo(*parent), std::ffi::OsStr::new(name));
            }
            for ino in &inval.inodes {
                let _ = notifier.inval_inode(fuser::INodeNo(*ino), 0, 0);
            }
        },
    });
    std::thread::Builder::new()
        .name("pvrfs-control".into())
        .spawn(move || control::serve(listener, target))
        .map_err(|e| Error::io("start control thread for", mnt, e))?;
    report_readiness(&mut ready, Ok(()));
    let served = session::serve(session);
    control::unbind(prepared.repo.workdir(), &canon_mnt);
    served?;
    Ok(())
}

/// Start the daemon of `args` in the background and wait until it serves (or says why not).
pub fn spawn(args: &MountArgs, repo: &Repo, repo_dir: &Path, mnt: &Path) -> anyhow::Result<()> {
    let (read_end, write_end) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::io("create pipe for", mnt, e.into()))?;
    let read_end = File::from(read_end);
    let exe = std::env::current_exe().ctx("find own executable", "/proc/self/exe")?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount")
        .arg(repo_dir)
        .arg(&args.rev)
        .arg(mnt)
        .arg("--foreground")
        .arg("--passthrough")
        .arg(match args.passthrough {
            crate::cli::PassthroughMode::Auto => "auto",
            crate::cli::PassthroughMode::Always => "always",
            crate::cli::PassthroughMode::Never => "never",
        })
        // Do not pin the caller's working directory (all paths passed are absolute).
        .current_dir("/");
    if args.rw {
        cmd.arg("--rw").arg("--overlay").arg(&args.overlay);
        cmd.arg("--cow").arg(match args.cow {
            crate::cli::CowBackend::Auto => "auto",
            crate::cli::CowBackend::Kernel => "kernel",
            crate::cli::CowBackend::Fuse => "fuse",
        });
    }
    for (on, flag) in [
        (args.allow_other, "--allow-other"),
        (args.canonical, "--canonical"),
        (args.verify, "--verify"),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    if let Some(uid) = args.uid {
        cmd.arg("--uid").arg(uid.to_string());
    }
    if let Some(gid) = args.gid {
        cmd.arg("--gid").arg(gid.to_string());
    }
    let raw = std::os::fd::AsRawFd::as_raw_fd(&write_end);
    cmd.env(READY_FD, raw.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file(repo, mnt));
    // SAFETY: the hook runs between fork and exec, where only async-signal-safe calls are
    // allowed: setsid(2) and fcntl(2) are; nothing allocates or takes a lock.
    unsafe {
        cmd.pre_exec(move || {
            // A session of its own: the daemon outlives the caller's terminal.
            let _ = rustix::process::setsid();
            // The readiness pipe's write end must survive the exec (it was made CLOEXEC so
            // that no other child inherits it).
            if libc::fcntl(raw, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().ctx("start mount daemon for", mnt)?;
    drop(write_end);
    let mut answer = String::new();
    let mut read_end = read_end;
    let _ = read_end.read_to_string(&mut answer);
    if answer.starts_with("ok") {
        return Ok(());
    }
    let status = child.wait().ok();
    // "error CODE\nMESSAGE": keep the daemon's exit code (5 locked, 2 usage, ...).
    if let Some((code, msg)) = answer
        .strip_prefix("error ")
        .and_then(|rest| rest.split_once('\n'))
        .and_then(|(c, m)| Some((c.parse::<u8>().ok()?, m)))
    {
        return Err(Error::Remote {
            code,
            message: msg.to_string(),
        }
        .into());
    }
    let msg = match answer.strip_prefix("error ") {
        Some(rest) => rest.split_once('\n').map_or(rest, |(_, m)| m).to_string(),
        None => format!(
            "the mount daemon exited ({}) before the mount was ready; see its log in {}",
            status.map_or("unknown status".into(), |s| s.to_string()),
            log_dir(repo).display()
        ),
    };
    Err(Error::Other(msg).into())
}

fn log_dir(repo: &Repo) -> std::path::PathBuf {
    repo.ext_dir().join("logs")
}

/// The daemon's stderr: a log file per mountpoint under the repo, or nothing if unwritable.
fn log_file(repo: &Repo, mnt: &Path) -> Stdio {
    let dir = log_dir(repo);
    let name: String = mnt
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Never through a symbolic link, and only into a regular file: a repository handed over
    // with a planted `logs/mount….log -> ~/.bashrc` would have the daemon append its log (which
    // quotes paths of the repository's state) to the user's file.
    let opened = std::fs::create_dir_all(&dir).and_then(|_| {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(dir.join(format!("mount{name}.log")))
    });
    match opened {
        Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => Stdio::from(f),
        _ => Stdio::null(),
    }
}

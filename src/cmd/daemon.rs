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
    let fs = prepared.fs.clone();
    std::thread::Builder::new()
        .name("pvrfs-control".into())
        .spawn(move || {
            control::serve(listener, fs, move |inval| {
                for (parent, name) in &inval.entries {
                    let _ =
                        notifier.inval_entry(fuser::INodeNo(*parent), std::ffi::OsStr::new(name));
                }
                for ino in &inval.inodes {
                    let _ = notifier.inval_inode(fuser::INodeNo(*ino), 0, 0);
                }
            })
        })
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
    let opened = std::fs::create_dir_all(&dir).and_then(|_| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("mount{name}.log")))
    });
    match opened {
        Ok(f) => Stdio::from(f),
        Err(_) => Stdio::null(),
    }
}

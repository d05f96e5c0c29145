//! The mount side of `pvrfs mount --rw`, `commit`, `status`, `diff` and `reset`.
//!
//! The daemon (`foreground_rw`) loads the overlay, mounts it, binds the mount's control socket
//! (`control.rs`) and serves both. The CLI commands find the mount (`--mount MNT`, or the cwd
//! inside one) and ask its daemon, which owns the overlay; they print what pvr prints for a
//! work tree: `commit` the new revision (and the warnings for what pvr's format cannot hold),
//! `status` `A/D/C path` lines, `diff` the RFC 7396 merge patch.
//!
//! `dispatch` calls these when a mount applies (see `mount_target`); the work-tree versions in
//! `cmd::repo` take over when no mount applies.

use crate::cli::{CommitArgs, DiffArgs, DiffFormat, MountArgs, ResetArgs};
use crate::cmd::Ctx;
use crate::control::{self, Request};
use crate::error::Error;
use crate::mount;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The mount a command addresses: `--mount MNT` or the pvrfs mount containing the cwd.
pub fn mount_target(ctx: &Ctx<'_>, explicit: Option<&Path>) -> crate::Result<Option<PathBuf>> {
    control::find_mount(&ctx.cwd, explicit)
}

fn req(op: &str, message: Option<String>) -> Request {
    Request {
        op: op.into(),
        message,
    }
}

/// `commit` of the mount `mnt`: the daemon commits its overlay as the next revision.
pub fn commit(mnt: &Path, args: CommitArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let a = control::request(mnt, &req("commit", args.message))?;
    for w in &a.warnings {
        writeln!(ctx.err, "warning: {w}")?;
    }
    match a.rev {
        Some(rev) => writeln!(ctx.out, "Committed revision {rev}")?,
        None => writeln!(ctx.out, "Nothing to commit")?,
    }
    Ok(())
}

/// `status` of the mount `mnt`, in pvr's format.
pub fn status(mnt: &Path, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let a = control::request(mnt, &req("status", None))?;
    ctx.out.write_all(a.text.as_bytes())?;
    Ok(())
}

/// `diff` of the mount `mnt`: its changes as pvr's merge patch.
pub fn diff(mnt: &Path, args: DiffArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    if !args.revs.is_empty() || args.format != DiffFormat::Merge {
        return Err(Error::Usage(
            "in a --rw mount, 'pvrfs diff' shows the mount's changes as a merge patch only (no revisions, no --format); run it outside the mount for revisions".into(),
        )
        .into());
    }
    let a = control::request(mnt, &req("diff", None))?;
    ctx.out.write_all(a.text.as_bytes())?;
    if !a.text.ends_with('\n') {
        writeln!(ctx.out)?;
    }
    Ok(())
}

/// `reset` of a mount: only with an explicit `--mount MNT` (inside a mount, refuse rather than
/// discard changes on a guess).
pub fn reset(mnt: &Path, args: ResetArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    if args.mount.is_none() {
        return Err(Error::Usage(
            "this is a pvrfs mount: 'pvrfs reset --mount MNT' discards its changes".into(),
        )
        .into());
    }
    control::request(mnt, &req("reset", None))?;
    if !ctx.quiet {
        writeln!(ctx.err, "discarded the changes of {}", mnt.display())?;
    }
    Ok(())
}

/// The daemon of a `--rw` mount: load the overlay, mount, bind the control socket, report
/// readiness through `ready`, serve until unmounted.
pub fn foreground_rw(
    args: &MountArgs,
    repo_dir: &Path,
    mnt: &Path,
    mut ready: Option<File>,
) -> anyhow::Result<()> {
    let result = (|| -> crate::Result<_> {
        let canon = mount::check_mountpoint(mnt)?;
        let opts = super::mount::options(args);
        let prepared = mount::prepare_rw(repo_dir, &args.rev, &args.overlay, &opts)?;
        let listener = control::bind(&canon)?;
        let session = mount::mount_rw(&prepared, &args.overlay, &canon, &opts)?;
        log::info!(
            "serving overlay '{}' on revision {} of {} at {} (read-write)",
            args.overlay,
            prepared.fs.base_rev(),
            prepared.repo.workdir().display(),
            canon.display()
        );
        Ok((session, listener, prepared))
    })();
    let (session, listener, prepared) = match result {
        Ok(v) => v,
        Err(e) => {
            super::mount::report_readiness(&mut ready, Err(&e));
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
    super::mount::report_readiness(&mut ready, Ok(()));
    mount::serve(session)?;
    Ok(())
}

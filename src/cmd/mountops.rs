//! The mount side of `pvrfs mount --rw`, `commit`, `status`, `diff` and `reset`.
//!
//! The daemon (`foreground_rw`) loads the overlay, mounts it, binds the mount's control socket
//! (`control.rs`) and serves both. The CLI commands find the mount (`--mount MNT`, or the cwd
//! inside one) and ask its daemon, which owns the overlay; they print what pvr prints for a
//! work tree: `commit` the new revision (and the warnings for what pvr's format cannot hold),
//! `status` `A/D/C path` lines, `diff` the RFC 7396 merge patch (or, with revisions or
//! `--format rfc6902`, the view against revisions), `json` the state a commit would make.
//! Read-only commands (`log`, `show`, `fsck`, `json REV`) inside any pvrfs mount use the
//! repository the mount serves (`mount_repo`).
//!
//! `dispatch` calls these when a mount applies (see `mount_target`); the work-tree versions in
//! `cmd::repo` take over when no mount applies.

use crate::cli::{CommitArgs, DiffArgs, DiffFormat, JsonArgs, MountArgs, ResetArgs};
use crate::cmd::Ctx;
use crate::control::{self, Request};
use crate::error::Error;
use crate::mount;
use crate::repo::Repo;
use crate::state::State;
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
    refuse_read_only(mnt, "commit")?;
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

/// `status` of the mount `mnt`, in pvr's format (a read-only mount never has changes).
pub fn status(mnt: &Path, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    if !is_rw(&mount_info(mnt)?) {
        return Ok(());
    }
    let a = control::request(mnt, &req("status", None))?;
    ctx.out.write_all(a.text.as_bytes())?;
    Ok(())
}

/// `diff` of the mount `mnt`. Without revisions, as a merge patch: the overlay's changes, asked
/// from the daemon (O(change)). Otherwise the view (or two revisions) against the revisions
/// named, in either format, as outside a mount. A read-only mount's view is its revision.
pub fn diff(mnt: &Path, args: DiffArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let m = describe(mnt)?;
    if args.revs.is_empty() && args.format == DiffFormat::Merge && m.rw {
        let a = control::request(mnt, &req("diff", None))?;
        ctx.out.write_all(a.text.as_bytes())?;
        if !a.text.ends_with('\n') {
            writeln!(ctx.out)?;
        }
        return Ok(());
    }
    let load = |spec: &str| m.repo.load_state(&m.repo.resolve(spec)?);
    let (old, new) = match args.revs.as_slice() {
        [] => (load(&m.rev)?, m.view(mnt)?),
        [a] => (load(a)?, m.view(mnt)?),
        [a, b] => (load(a)?, load(b)?),
        _ => unreachable!("clap allows at most two revisions"),
    };
    ctx.out
        .write_all(super::repo::render_patch(&old, &new, args.format).as_bytes())?;
    Ok(())
}

/// `json` (no revision) inside a mount: the state a commit would make now (`--rw`), or the
/// mounted revision's state (read-only mount).
pub fn json(mnt: &Path, args: JsonArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let state = describe(mnt)?.view(mnt)?;
    super::repo::print_state(&state, args.canonical, ctx)
}

/// What the CLI needs to know of a pvrfs mount, read once per command: whether it is writable,
/// the repository it serves and the revision it shows (or is based on, for `--rw`).
struct Mounted {
    rw: bool,
    repo: Repo,
    rev: String,
}

impl Mounted {
    /// What the mount shows, as a state: a `--rw` mount's view (asked from its daemon), or a
    /// read-only mount's revision.
    fn view(&self, mnt: &Path) -> crate::Result<State> {
        if !self.rw {
            return self.repo.load_state(&self.repo.resolve(&self.rev)?);
        }
        let a = control::request(mnt, &req("state", None))?;
        State::from_json_bytes(a.text.as_bytes(), &format!("the view of {}", mnt.display()))
    }
}

/// A `--rw` mount's daemon names its repository and base revision; a read-only mount's source
/// (`pvrfs:REPO@REV`) does.
fn describe(mnt: &Path) -> crate::Result<Mounted> {
    let info = mount_info(mnt)?;
    if is_rw(&info) {
        let a = control::request(mnt, &req("info", None))?;
        return Ok(Mounted {
            rw: true,
            repo: Repo::open(Path::new(&a.text))?,
            rev: a.rev.unwrap_or(0).to_string(),
        });
    }
    let (repo, rev) = info.repo_and_rev().ok_or_else(|| {
        Error::Other(format!(
            "cannot tell which repository '{}' serves (mount source '{}')",
            mnt.display(),
            info.source
        ))
    })?;
    Ok(Mounted {
        rw: false,
        repo: Repo::open(Path::new(repo))?,
        rev: rev.to_string(),
    })
}

/// `commit`/`reset` of a read-only mount: there is nothing to commit or discard.
fn refuse_read_only(mnt: &Path, what: &str) -> crate::Result<()> {
    let info = mount_info(mnt)?;
    if is_rw(&info) {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "'{}' is a read-only mount (revision {}): nothing to {what}; mount with --rw to change files",
        mnt.display(),
        info.repo_and_rev().map_or("?", |(_, rev)| rev)
    )))
}

fn mount_info(mnt: &Path) -> crate::Result<mount::MountInfo> {
    mount::list_mounts()?
        .into_iter()
        .find(|m| m.mountpoint == mnt)
        .ok_or_else(|| Error::Usage(format!("'{}' is not a pvrfs mount", mnt.display())))
}

fn is_rw(info: &mount::MountInfo) -> bool {
    info.source.contains("@rw:")
}

/// The repository a pvrfs mount serves (for read-only commands typed inside it).
pub fn mount_repo(mnt: &Path) -> crate::Result<Repo> {
    Ok(describe(mnt)?.repo)
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
    refuse_read_only(mnt, "reset")?;
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

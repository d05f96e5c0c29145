//! `commit`, `status`, `diff`, `json` and `reset` of a pvrfs mount.
//!
//! The commands find the mount (`cmd::target`: `--mount MNT`, or the cwd inside one) and ask
//! its daemon (`fuse::control`), which owns the overlay; they print what pvr prints for a
//! work tree: `commit` the new revision (and the warnings for what pvr's format cannot hold),
//! `status` `A/D/C path` lines, `diff` the RFC 7396 merge patch (or, with revisions or
//! `--format rfc6902`, the view against revisions), `json` the state a commit would make.
//!
//! `dispatch` calls these when a mount applies (see `target::mount_target`); the work-tree
//! versions in `cmd::repo` take over when no mount applies.

use super::render::{print_state, render_patch, terminal_safe};
use super::target::{describe, is_rw, mount_info, refuse_read_only};
use super::Ctx;
use crate::cli::{CommitArgs, DiffArgs, DiffFormat, JsonArgs, ResetArgs};
use crate::error::Error;
use crate::fuse::control::{self, Request};
use std::path::Path;

/// `commit` of the mount `mnt`: the daemon commits its overlay as the next revision.
pub fn commit(mnt: &Path, args: CommitArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    refuse_read_only(mnt, "commit")?;
    let a = control::request(
        mnt,
        &Request {
            op: "commit".into(),
            message: args.message,
        },
    )?;
    for w in &a.warnings {
        writeln!(ctx.err, "warning: {}", terminal_safe(w, true))?;
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
    let a = control::request(mnt, &Request::new("status"))?;
    // One line per path (`C path`): each line made safe on its own.
    for line in a.text.lines() {
        writeln!(ctx.out, "{}", terminal_safe(line, false))?;
    }
    Ok(())
}

/// `diff` of the mount `mnt`. Without revisions, as a merge patch: the overlay's changes, asked
/// from the daemon (O(change)). Otherwise the view (or two revisions) against the revisions
/// named, in either format, as outside a mount. A read-only mount's view is its revision.
pub fn diff(mnt: &Path, args: DiffArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let m = describe(mnt)?;
    if args.revs.is_empty() && args.format == DiffFormat::Merge && m.rw {
        let a = control::request(mnt, &Request::new("diff"))?;
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
        .write_all(render_patch(&old, &new, args.format).as_bytes())?;
    Ok(())
}

/// `json` (no revision) inside a mount: the state a commit would make now (`--rw`), or the
/// mounted revision's state (read-only mount).
pub fn json(mnt: &Path, args: JsonArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let state = describe(mnt)?.view(mnt)?;
    print_state(&state, args.canonical, ctx)
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
    control::request(mnt, &Request::new("reset"))?;
    if !ctx.quiet {
        writeln!(ctx.err, "discarded the changes of {}", mnt.display())?;
    }
    Ok(())
}

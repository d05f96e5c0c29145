//! `pvrfs mount`, `pvrfs umount`, `pvrfs mounts`. The daemon's start-up is `cmd::daemon`.

use super::daemon;
use super::render::terminal_safe;
use crate::cli::{MountArgs, UmountArgs};
use crate::cmd::Ctx;
use crate::error::{Error, IoContext};
use crate::fuse::mounts;
use crate::repo::Repo;

pub fn mount(args: MountArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    if args.rw && (args.uid.is_some() || args.gid.is_some() || args.verify) {
        // Not silently ignored: a --rw mount's files belong to whoever creates them (chown
        // works), and its reads of base content are not hash-checked.
        return Err(Error::Usage(
            "--uid, --gid and --verify apply to read-only mounts only (not with --rw)".into(),
        )
        .into());
    }
    // Absolute: the daemon runs in `/` (and `-C DIR` may be relative).
    let repo_dir = std::path::absolute(ctx.cwd.join(&args.repo)).ctx("resolve", &args.repo)?;
    let mnt =
        std::path::absolute(ctx.cwd.join(&args.mountpoint)).ctx("resolve", &args.mountpoint)?;
    if args.foreground {
        return daemon::run(&args, &repo_dir, &mnt);
    }
    // Fail early, in the caller's terminal, for everything that can be checked cheaply.
    let repo = Repo::open(&repo_dir)?;
    let rev = repo.resolve(&args.rev)?;
    mounts::check_mountpoint(&mnt)?;
    daemon::spawn(&args, &repo, &repo_dir, &mnt)?;
    if !ctx.quiet {
        // Which backend `--cow auto` chose, as the daemon says.
        let how = if args.rw {
            let backend = std::fs::canonicalize(&mnt).ok().and_then(|m| {
                crate::fuse::control::request(&m, &crate::fuse::control::Request::new("backend"))
                    .ok()
            });
            match backend.as_ref().map(|a| a.text.as_str()) {
                Some("kernel") => " (copy-on-write: kernel overlayfs)",
                Some("fuse") => " (copy-on-write: FUSE overlay)",
                _ => " (copy-on-write)",
            }
        } else {
            ""
        };
        writeln!(
            ctx.err,
            "mounted revision {} of {} at {}{how}",
            rev.rev,
            repo_dir.display(),
            mnt.display(),
        )?;
    }
    Ok(())
}

pub fn umount(args: UmountArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    mounts::unmount(&ctx.cwd.join(&args.mountpoint))?;
    Ok(())
}

pub fn mounts(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    for m in mounts::list_mounts()? {
        let (repo, rev) = m
            .repo_and_rev()
            .unwrap_or_else(|| (m.source.clone().into(), "?"));
        writeln!(
            ctx.out,
            "{}\t{}\t{}\t{}",
            terminal_safe(&m.mountpoint.to_string_lossy(), false),
            terminal_safe(&repo.to_string_lossy(), false),
            terminal_safe(rev, false),
            m.backend()
        )?;
    }
    Ok(())
}

//! Command implementations. Each takes its parsed arguments and a `Ctx`, writes its output to
//! `ctx.out` / `ctx.err`, and returns a library error on failure (mapped to an exit code by
//! `main`). Nothing here calls `std::process::exit` or prints directly.

mod daemon;
pub mod exchange;
pub mod mount;
pub mod mountops;
pub mod render;
pub mod repo;
pub mod serve;
pub mod target;

use crate::cli::{Cli, Command};
use std::io::Write;
use std::path::PathBuf;

/// Where a command runs and where it writes.
pub struct Ctx<'a> {
    /// The directory the command runs in (`-C DIR` or the process's cwd).
    pub cwd: PathBuf,
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    /// No progress bars or per-file chatter.
    pub quiet: bool,
    /// stderr is a terminal (progress bars only then).
    pub interactive: bool,
}

/// Run one parsed command line.
pub fn dispatch(cli: Cli, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    match cli.command {
        Command::Get(args) => exchange::get(args, ctx),
        Command::Merge(args) => exchange::merge(args, ctx),
        Command::Clone(args) => exchange::clone(args, ctx),
        Command::Push(args) => exchange::push(args, ctx),
        Command::Export(args) => exchange::export(args, ctx),
        Command::Import(args) => exchange::import(args, ctx),
        Command::Mount(args) => mount::mount(args, ctx),
        Command::Umount(args) => mount::umount(args, ctx),
        Command::Mounts => mount::mounts(ctx),
        Command::Serve(args) => serve::serve(args, ctx),
        Command::Init(a) => repo::init(a, ctx),
        Command::Add(a) => repo::add(a, ctx),
        Command::Json(a) => match (&a.rev, target::mount_target(ctx, None)?) {
            (None, Some(mnt)) => mountops::json(&mnt, a, ctx),
            _ => repo::json(a, ctx),
        },
        Command::Log(a) => repo::log(a, ctx),
        Command::Show(a) => repo::show(a, ctx),
        Command::Checkout(a) => repo::checkout(a, ctx),
        Command::Apply(a) => repo::apply(a, ctx),
        Command::Fsck(a) => repo::fsck(a, ctx),
        Command::Gc(a) => repo::gc(a, ctx),
        // Mount-aware: inside a pvrfs mount (or with --mount MNT) these act on the mount's
        // overlay through its daemon; elsewhere on the work tree.
        Command::Commit(a) => match target::mount_target(ctx, a.mount.as_deref())? {
            Some(mnt) => mountops::commit(&mnt, a, ctx),
            None => repo::commit(a, ctx),
        },
        Command::Status(a) => match target::mount_target(ctx, a.mount.as_deref())? {
            Some(mnt) => mountops::status(&mnt, ctx),
            None => repo::status(a, ctx),
        },
        Command::Diff(a) => match target::mount_target(ctx, a.mount.as_deref())? {
            Some(mnt) => mountops::diff(&mnt, a, ctx),
            None => repo::diff(a, ctx),
        },
        Command::Reset(a) => match target::mount_target(ctx, a.mount.as_deref())? {
            Some(mnt) => mountops::reset(&mnt, a, ctx),
            None => repo::reset(a, ctx),
        },
    }
}

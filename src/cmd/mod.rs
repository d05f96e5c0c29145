//! Command implementations. Each takes its parsed arguments and a `Ctx`, writes its output to
//! `ctx.out` / `ctx.err`, and returns a library error on failure (mapped to an exit code by
//! `main`). Nothing here calls `std::process::exit` or prints directly.

pub mod exchange;
pub mod mount;
pub mod mountops;

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
        // Mount-aware: these act on the --rw mount given by --mount or containing the cwd.
        // The work-tree versions (branch `core`) are not on this branch; at merge, each arm
        // becomes "if mountops::mount_target(..) is Some, the mount version, else core's".
        Command::Commit(args) => mountops::commit(args, ctx),
        Command::Status(args) => mountops::status(args, ctx),
        Command::Diff(args) => mountops::diff(args, ctx),
        Command::Reset(args) => mountops::reset(args, ctx),
        other => anyhow::bail!("'{other:?}' is not implemented in this build"),
    }
}

//! Command implementations. Each takes its parsed arguments and a `Ctx`, writes its output to
//! `ctx.out` / `ctx.err`, and returns a library error on failure (mapped to an exit code by
//! `main`). Nothing here calls `std::process::exit` or prints directly.

use crate::cli::{Cli, Command};

pub mod mount;
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
    #[allow(clippy::match_single_binding)] // arms are added per command
    match cli.command {
        Command::Mount(args) => mount::mount(args, ctx),
        Command::Umount(args) => mount::umount(args, ctx),
        Command::Mounts => mount::mounts(ctx),
        other => anyhow::bail!("'{other:?}' is not implemented in this build"),
    }
}

//! The `pvrfs` binary: parse arguments, run the command, map errors to exit codes.

use clap::Parser;
use std::io::{self, IsTerminal};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = pvrfs::cli::Cli::parse();
    let cwd = match &cli.dir {
        Some(d) => d.clone(),
        None => match std::env::current_dir() {
            Ok(d) => d,
            Err(e) => {
                eprintln!("pvrfs: cannot determine the current directory: {e}");
                return ExitCode::from(1);
            }
        },
    };
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut err = io::stderr();
    let interactive = err.is_terminal();
    let mut ctx = pvrfs::cmd::Ctx {
        cwd,
        out: &mut out,
        err: &mut err,
        quiet: cli.quiet,
        interactive,
    };
    let result = pvrfs::cmd::dispatch(cli, &mut ctx);
    let flushed = io::Write::flush(&mut out);
    match result.and(flushed.map_err(anyhow::Error::from)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            // Errors quote what servers, archives and states said: never raw to a terminal.
            let safe = |text: &str| pvrfs::cmd::render::terminal_safe(text, true).into_owned();
            let head = e.to_string();
            eprintln!("pvrfs: {}", safe(&head));
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                // Library errors already quote their source; do not print it twice.
                if !head.contains(&cause) {
                    eprintln!("  caused by: {}", safe(&cause));
                }
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn exit_code(e: &anyhow::Error) -> u8 {
    e.chain()
        .find_map(|c| c.downcast_ref::<pvrfs::Error>())
        .map_or(1, pvrfs::Error::exit_code)
}

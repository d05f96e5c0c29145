//! get, merge, clone, push (put), export, import: thin wrappers over `crate::exchange`.

use super::Ctx;
use crate::cli::{CloneArgs, ExchangeArgs, ExportArgs, ImportArgs, PushArgs, TransferArgs};
use crate::error::{Error, IoContext};
use crate::exchange::{self, Location, Mode, Options, Outcome, Parts};
use crate::repo::Repo;
use anyhow::Context;
use std::fs;
use std::io::Write;

/// Transfer options: progress bars on a terminal; the token from `--token` or `PVRFS_TOKEN`;
/// `PVRFS_IDLE_TIMEOUT` (seconds) and `PVRFS_MIN_RATE` (bytes/s) tune the network limits.
fn options(ctx: &Ctx<'_>, token: Option<&str>) -> Options {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let defaults = Options::default();
    Options {
        progress: ctx.interactive && !ctx.quiet,
        token: token.map(str::to_string).or_else(|| env("PVRFS_TOKEN")),
        idle_timeout: env("PVRFS_IDLE_TIMEOUT")
            .and_then(|v| v.parse().ok())
            .map_or(defaults.idle_timeout, std::time::Duration::from_secs),
        min_rate: env("PVRFS_MIN_RATE")
            .and_then(|v| v.parse().ok())
            .unwrap_or(defaults.min_rate),
        ..defaults
    }
}

/// S3 multipart tuning from `PVRFS_S3_MULTIPART_THRESHOLD` and `PVRFS_S3_PART_SIZE` (sizes
/// with K, M, G suffixes; defaults 256M and 64M; a part is at least 5M, S3's minimum).
fn s3_upload_sizes() -> anyhow::Result<(u64, u64)> {
    use crate::exchange::s3::multipart::{DEFAULT_PART_SIZE, DEFAULT_THRESHOLD, MIN_PART_SIZE};
    let size = |name: &str, default: u64| -> anyhow::Result<u64> {
        match std::env::var(name).ok().filter(|v| !v.is_empty()) {
            None => Ok(default),
            Some(v) => crate::cli::parse_size(&v)
                .map_err(|e| Error::Usage(format!("{name}={v}: {e}")).into()),
        }
    };
    let part = size("PVRFS_S3_PART_SIZE", DEFAULT_PART_SIZE)?;
    if part < MIN_PART_SIZE {
        return Err(Error::Usage(format!(
            "PVRFS_S3_PART_SIZE={part}: S3 parts are at least 5M ({MIN_PART_SIZE} bytes)"
        ))
        .into());
    }
    Ok((
        size("PVRFS_S3_MULTIPART_THRESHOLD", DEFAULT_THRESHOLD)?,
        part,
    ))
}

/// Options of a command that fetches: the transfer limits given (else `options`'), and temp
/// files that do not survive SIGINT/SIGTERM/SIGHUP (see `fsutil::TempFiles`).
fn fetch_options(ctx: &Ctx<'_>, token: Option<&str>, transfer: &TransferArgs) -> Options {
    crate::fsutil::remove_temp_files_on_signals();
    let o = options(ctx, token);
    Options {
        max_object_size: transfer.max_object_size.unwrap_or(o.max_object_size),
        min_rate: transfer.min_throughput.unwrap_or(o.min_rate),
        grace: transfer
            .transfer_grace
            .map_or(o.grace, |s| std::time::Duration::from_secs(s.max(1))),
        ..o
    }
}

fn report(ctx: &mut Ctx<'_>, repo: &Repo, origin: &str, o: &Outcome) -> anyhow::Result<()> {
    let t = &o.transfer;
    writeln!(
        ctx.out,
        "Fetched {} of {} objects ({} bytes) from {origin} into {}",
        t.moved,
        t.objects,
        t.bytes,
        repo.store().dir().display()
    )?;
    match &o.revision {
        Some(r) => writeln!(
            ctx.out,
            "Revision {} ({} entries). Run pvrfs checkout to update the work tree.",
            r.rev,
            o.state.len()
        )?,
        None => writeln!(ctx.out, "Already up to date; no new revision.")?,
    }
    Ok(())
}

fn get_or_merge(args: ExchangeArgs, ctx: &mut Ctx<'_>, mode: Mode) -> anyhow::Result<()> {
    let repo = Repo::discover(&ctx.cwd)?;
    let (src, parts) = exchange::split_fragment(&args.src)?;
    let loc = Location::parse(src, &ctx.cwd, false)?;
    let verb = if mode == Mode::Get { "get" } else { "merge" };
    let outcome = exchange::get_into(
        &repo,
        &loc,
        &parts,
        mode,
        &format!("{verb} {}", args.src),
        &fetch_options(ctx, args.token.as_deref(), &args.transfer),
    )?;
    report(ctx, &repo, &loc.describe(), &outcome)
}

pub fn get(args: ExchangeArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    get_or_merge(args, ctx, Mode::Get)
}

pub fn merge(args: ExchangeArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    get_or_merge(args, ctx, Mode::Merge)
}

pub fn import(args: ImportArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let repo = Repo::discover(&ctx.cwd)?;
    let path = ctx.cwd.join(&args.file);
    if !path.is_file() {
        return Err(Error::Usage(format!("'{}' is not a tarball", path.display())).into());
    }
    let loc = Location::Tarball(path);
    crate::fsutil::remove_temp_files_on_signals();
    let outcome = exchange::get_into(
        &repo,
        &loc,
        &Parts::default(),
        Mode::Get,
        &format!("import {}", args.file.display()),
        &Options {
            max_object_size: args
                .max_object_size
                .unwrap_or(exchange::DEFAULT_MAX_OBJECT_SIZE),
            ..options(ctx, None)
        },
    )?;
    report(ctx, &repo, &loc.describe(), &outcome)
}

/// init + get + checkout into a new (or empty) directory; on failure the directory is removed
/// again (or emptied, when it existed), so a failed clone leaves nothing behind.
pub fn clone(args: CloneArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let (src, parts) = exchange::split_fragment(&args.src)?;
    let loc = Location::parse(src, &ctx.cwd, false)?;
    let dir = match &args.dir {
        Some(d) => ctx.cwd.join(d),
        None => ctx
            .cwd
            .join(exchange::default_clone_dir(src).ok_or_else(|| {
                Error::Usage(format!("cannot name a directory after '{src}'; give DIR"))
            })?),
    };
    let existed = dir.exists();
    if existed && fs::read_dir(&dir).ctx("read", &dir)?.next().is_some() {
        return Err(Error::Usage(format!(
            "'{}' exists and is not empty; clone into a new or empty directory",
            dir.display()
        ))
        .into());
    }
    let result = (|| -> anyhow::Result<Outcome> {
        fs::create_dir_all(&dir).ctx("create", &dir)?;
        let repo = Repo::init(&dir, None, None)?;
        let outcome = exchange::get_into(
            &repo,
            &loc,
            &parts,
            Mode::Get,
            &format!("clone {}", args.src),
            &fetch_options(ctx, args.token.as_deref(), &args.transfer),
        )?;
        // The same checkout as `pvrfs checkout` (parallel, hash-verified, stat cache primed).
        let lock = repo.lock()?;
        let opts = crate::worktree::CheckoutOptions {
            canonical: false,
            hardlink: false,
            force: false,
        };
        crate::worktree::WorkTree::open(&repo)
            .checkout(&lock, &outcome.state, &opts)
            .context("checkout of the clone failed")?;
        Ok(outcome)
    })();
    match result {
        Ok(o) => {
            writeln!(
                ctx.out,
                "Cloned {} into {} ({} files, {} objects fetched)",
                loc.describe(),
                dir.display(),
                o.state.len(),
                o.transfer.moved
            )?;
            Ok(())
        }
        Err(e) => {
            if existed {
                if let Ok(rd) = fs::read_dir(&dir) {
                    for entry in rd.flatten() {
                        let p = entry.path();
                        let _ = if p.is_dir() {
                            fs::remove_dir_all(&p)
                        } else {
                            fs::remove_file(&p)
                        };
                    }
                }
            } else {
                let _ = fs::remove_dir_all(&dir);
            }
            Err(e)
        }
    }
}

pub fn push(args: PushArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let repo = Repo::discover(&ctx.cwd)?;
    let loc = Location::parse(&args.dest, &ctx.cwd, true)?;
    let rev = repo.latest()?;
    // A push to S3 may leave a multipart upload pending: a signal aborts it (and removes the
    // temp files of a push into another repository's store).
    crate::fsutil::remove_temp_files_on_signals();
    let (s3_multipart_threshold, s3_part_size) = s3_upload_sizes()?;
    let opts = Options {
        message: args.message.clone(),
        force: args.force,
        s3_multipart_threshold,
        s3_part_size,
        ..options(ctx, args.token.as_deref())
    };
    let t = exchange::push(&repo, &loc, &opts)?;
    let there = match t.remote_revision {
        Some(r) => format!(" (revision {r} there)"),
        None => String::new(),
    };
    writeln!(
        ctx.out,
        "Pushed revision {} to {}{there}: {} of {} objects uploaded ({} bytes), state last",
        rev.rev,
        loc.describe(),
        t.moved,
        t.objects,
        t.bytes
    )?;
    Ok(())
}

pub fn export(args: ExportArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let repo = Repo::discover(&ctx.cwd)?;
    let parts = Parts {
        include: args
            .parts
            .iter()
            .map(|p| p.trim_end_matches('/').to_string())
            .filter(|p| !p.is_empty())
            .collect(),
        exclude: Vec::new(),
    };
    if args.file.as_os_str() == "-" {
        exchange::export(&repo, &parts, ctx.out, false)?;
        return Ok(());
    }
    let path = ctx.cwd.join(&args.file);
    let name = path.to_string_lossy();
    let gzip = name.ends_with(".gz") || name.ends_with(".tgz");
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(&ctx.cwd);
    // Written to a temp file and renamed: a failed export leaves no partial tarball.
    let mut tmp = tempfile::Builder::new()
        .prefix(crate::fsutil::TEMP_PREFIX)
        .tempfile_in(parent)
        .ctx("create a temp file in", parent)?;
    let tmp_path = tmp.path().to_path_buf();
    let mut out = std::io::BufWriter::new(tmp.as_file_mut());
    exchange::export(&repo, &parts, &mut out, gzip)?;
    out.flush().ctx("write", &tmp_path)?;
    drop(out);
    tmp.as_file().sync_all().ctx("fsync", tmp.path())?;
    tmp.persist(&path)
        .map_err(|e| Error::io("rename into place", &path, e.error))?;
    Ok(())
}

//! The repository commands: init, add, status, diff, json, commit, log, show, checkout, reset,
//! apply, fsck, gc. Each formats what a `worktree` / `repo` library call returns; output is
//! byte-compatible with pvr where pvr has the command (see docs/FORMAT.md for differences).

use super::render::terminal_safe;
use super::Ctx;
use crate::cli::{
    AddArgs, ApplyArgs, CheckoutArgs, CommitArgs, DiffArgs, FsckArgs, GcArgs, InitArgs, JsonArgs,
    LogArgs, ResetArgs, ShowArgs, StatusArgs,
};
use crate::error::{Error, IoContext};
use crate::json;
use crate::oid::ObjectId;
use crate::patch;
use crate::repo::{Repo, Revision, DEFAULT_COMMIT_MSG};
use crate::state::State;
use crate::store::Verified;
use crate::worktree::{self, CheckoutOptions, WorkTree};
use anyhow::Result;
use rayon::prelude::*;
use std::collections::BTreeSet;
use std::io::Read;

fn open(ctx: &Ctx<'_>) -> crate::Result<Repo> {
    Repo::discover(&ctx.cwd)
}

/// The repository for commands that only read it (`log`, `show`, `fsck`, `json REV`): the one
/// around the cwd, or, with the cwd inside a pvrfs mount, the repository that mount serves.
fn open_for_reading(ctx: &Ctx<'_>) -> crate::Result<Repo> {
    match Repo::discover(&ctx.cwd) {
        Err(e @ crate::Error::NotARepo { .. }) => match super::target::mount_target(ctx, None) {
            Ok(Some(mnt)) => super::target::mount_repo(&mnt),
            _ => Err(e),
        },
        r => r,
    }
}

pub fn init(args: InitArgs, ctx: &mut Ctx<'_>) -> Result<()> {
    let spec = args.spec.or(args.spec_flag);
    std::fs::create_dir_all(&ctx.cwd).ctx("create", &ctx.cwd)?;
    let repo = Repo::init(&ctx.cwd, spec.as_deref(), args.objects.as_deref())?;
    if !ctx.quiet {
        writeln!(
            ctx.err,
            "Initialized an empty pvr repository in {}",
            repo.workdir().display()
        )?;
    }
    Ok(())
}

pub fn add(args: AddArgs, ctx: &mut Ctx<'_>) -> Result<()> {
    let repo = open(ctx)?;
    let lock = repo.lock()?;
    let added = WorkTree::open(&repo)
        .with_progress(ctx.interactive && !ctx.quiet)
        .add(&lock, &ctx.cwd, &args.paths, args.raw)?;
    warn_unstorable(&added.unstorable, "not added", ctx)?;
    Ok(())
}

/// One warning line per entry a state cannot hold (never skipped silently).
fn warn_unstorable(list: &[(String, &str)], outcome: &str, ctx: &mut Ctx<'_>) -> Result<()> {
    for (path, what) in list {
        writeln!(
            ctx.err,
            "pvrfs: warning: '{path}' is {what}, which a pvr state cannot hold; {outcome}"
        )?;
    }
    Ok(())
}

pub fn status(_args: StatusArgs, ctx: &mut Ctx<'_>) -> Result<()> {
    let repo = open(ctx)?;
    let scan = WorkTree::open(&repo).status()?;
    for (tag, paths) in [
        ("A", &scan.added),
        ("D", &scan.deleted),
        ("C", &scan.changed),
        ("?", &scan.untracked),
    ] {
        for p in paths {
            writeln!(ctx.out, "{tag} {}", terminal_safe(p, false))?;
        }
    }
    warn_unstorable(&scan.unstorable, "not tracked", ctx)?;
    // Freeing a 100k-entry head costs milliseconds that the answer does not wait for: hand it
    // to a thread (which a CLI process does not wait for when it exits). If no thread can be
    // had, it is freed here.
    let _ = std::thread::Builder::new().spawn(move || drop(scan));
    Ok(())
}

pub fn diff(args: DiffArgs, ctx: &mut Ctx<'_>) -> Result<()> {
    let repo = open(ctx)?;
    let (old, new) = match args.revs.as_slice() {
        [] => {
            let scan = WorkTree::open(&repo).scan()?;
            let state = scan.state()?;
            (scan.head, state)
        }
        [a] => {
            let old = repo.load_state(&repo.resolve(a)?)?;
            (old, WorkTree::open(&repo).scan()?.state()?)
        }
        [a, b] => (
            repo.load_state(&repo.resolve(a)?)?,
            repo.load_state(&repo.resolve(b)?)?,
        ),
        _ => unreachable!("clap allows at most two revisions"),
    };
    ctx.out
        .write_all(super::render::render_patch(&old, &new, args.format).as_bytes())?;
    Ok(())
}

pub fn json(args: JsonArgs, ctx: &mut Ctx<'_>) -> Result<()> {
    let repo = match &args.rev {
        Some(_) => open_for_reading(ctx)?,
        None => open(ctx)?,
    };
    let state = match &args.rev {
        Some(r) => repo.load_state(&repo.resolve(r)?)?,
        None => WorkTree::open(&repo).scan()?.state()?,
    };
    super::render::print_state(&state, args.canonical, ctx)
}

pub fn commit(args: CommitArgs, ctx: &mut Ctx<'_>) -> Result<()> {
    let repo = open(ctx)?;
    let lock = repo.lock()?;
    let message = args.message.as_deref().unwrap_or(DEFAULT_COMMIT_MSG);
    let mut log = Vec::new();
    let rev = match WorkTree::open(&repo)
        .with_progress(ctx.interactive && !ctx.quiet)
        .commit(&lock, message, &mut log)
    {
        Ok(rev) => rev,
        // pvr's commit exits 1 on a bad `.json` (status/diff/json exit 3).
        Err(e @ Error::InvalidJson { .. }) => anyhow::bail!("{e}; nothing was committed"),
        Err(e) => return Err(e.into()),
    };
    if !ctx.quiet {
        ctx.err.write_all(&log)?;
        writeln!(
            ctx.err,
            "Committed revision {} ({})",
            rev.rev,
            &rev.state.0.to_hex()[..12]
        )?;
    }
    Ok(())
}

fn format_time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| secs.to_string())
}

fn first_line(msg: &str) -> &str {
    msg.lines().next().unwrap_or("")
}

pub fn log(args: LogArgs, ctx: &mut Ctx<'_>) -> Result<()> {
    let repo = open_for_reading(ctx)?;
    let revs = repo.revisions()?;
    for r in revs.iter().rev().take(args.max_count.unwrap_or(usize::MAX)) {
        writeln!(
            ctx.out,
            "{:>4}  {}  {}  {}{}",
            r.rev,
            &r.state.0.to_hex()[..12],
            format_time(r.time),
            terminal_safe(first_line(&r.message), false),
            if r.recorded {
                ""
            } else {
                "  (not yet recorded)"
            }
        )?;
    }
    Ok(())
}

pub fn show(args: ShowArgs, ctx: &mut Ctx<'_>) -> Result<()> {
    let repo = open_for_reading(ctx)?;
    let rev = repo.resolve(args.rev.as_deref().unwrap_or("latest"))?;
    let state = repo.load_state(&rev)?;
    let parent_state = match rev.parent {
        Some(p) => repo.load_state(&repo.resolve(&p.to_string())?)?,
        None => State::default(),
    };
    writeln!(ctx.out, "revision {}", rev.rev)?;
    writeln!(ctx.out, "state    {}", rev.state.0)?;
    match rev.parent {
        Some(p) => writeln!(ctx.out, "parent   {p}")?,
        None => writeln!(ctx.out, "parent   (none)")?,
    }
    writeln!(ctx.out, "date     {}", format_time(rev.time))?;
    writeln!(ctx.out)?;
    for line in rev.message.lines() {
        writeln!(ctx.out, "    {}", terminal_safe(line, false))?;
    }
    writeln!(ctx.out)?;
    ctx.out
        .write_all(super::render::render_patch(&parent_state, &state, args.format).as_bytes())?;
    Ok(())
}

pub fn checkout(args: CheckoutArgs, ctx: &mut Ctx<'_>) -> Result<()> {
    let repo = open(ctx)?;
    let lock = repo.lock()?;
    let rev = repo.resolve(args.rev.as_deref().unwrap_or("latest"))?;
    let target = repo.load_state(&rev)?;
    let opts = CheckoutOptions {
        canonical: args.canonical,
        hardlink: args.hardlink,
        force: args.force,
    };
    let report = WorkTree::open(&repo)
        .with_progress(ctx.interactive && !ctx.quiet)
        .checkout(&lock, &target, &opts)?;
    if !ctx.quiet {
        writeln!(
            ctx.err,
            "Checked out revision {}: {} written, {} removed, {} unchanged",
            rev.rev, report.written, report.removed, report.unchanged
        )?;
    }
    Ok(())
}

pub fn reset(args: ResetArgs, ctx: &mut Ctx<'_>) -> Result<()> {
    let repo = open(ctx)?;
    let lock = repo.lock()?;
    let head = repo.head_state()?;
    let opts = CheckoutOptions {
        canonical: args.canonical,
        hardlink: false,
        force: true,
    };
    let report = WorkTree::open(&repo)
        .with_progress(ctx.interactive && !ctx.quiet)
        .checkout(&lock, &head, &opts)?;
    worktree::save_staged(&repo, &Default::default())?;
    worktree::save_staged_meta(&repo, &Default::default())?;
    if !ctx.quiet {
        writeln!(
            ctx.err,
            "Reset to the latest revision: {} written, {} removed",
            report.written, report.removed
        )?;
    }
    Ok(())
}

pub fn apply(args: ApplyArgs, ctx: &mut Ctx<'_>) -> Result<()> {
    let repo = open(ctx)?;
    let origin = args.patch.display().to_string();
    let bytes = if origin == "-" {
        let mut b = Vec::new();
        std::io::stdin().read_to_end(&mut b).ctx("read", "stdin")?;
        b
    } else {
        std::fs::read(&args.patch).ctx("read", &args.patch)?
    };
    let doc = json::parse(&bytes).map_err(|e| Error::CorruptState {
        origin: origin.clone(),
        detail: format!("not valid JSON: {e}"),
    })?;
    let lock = repo.lock()?;
    let latest = repo.latest()?;
    let base = repo.load_state(&latest)?;
    let new = patch::apply_to_state(&base, &doc, &origin)?;
    // Every object the result references must already be stored: refuse before writing.
    for (key, entry) in new.iter() {
        if let Some(id) = entry.object_id() {
            if base.get(key) != Some(entry) && !repo.store().contains(&id) {
                return Err(repo.store().missing(&id, Some(key)).into());
            }
        }
    }
    let message = args.message.unwrap_or_else(|| format!("apply {origin}"));
    let rev = repo.commit_state(&lock, &new, &message, Some(latest.rev))?;
    if !ctx.quiet {
        writeln!(
            ctx.err,
            "Applied {origin} as revision {} (the work tree is unchanged; `pvrfs checkout` updates it)",
            rev.rev
        )?;
    }
    Ok(())
}

/// Problems found in one revision (or `.pvr/json`), as printable lines.
fn check_revision(repo: &Repo, rev: &Revision, problems: &mut Vec<String>) -> Option<State> {
    let what = if rev.recorded {
        format!("revision {}", rev.rev)
    } else {
        format!("revision {} (.pvr/json)", rev.rev)
    };
    if let Some(d) = rev.diff {
        match repo.store().verify(&d.0) {
            Ok(Verified::Ok) => {}
            Ok(Verified::Missing) => {
                problems.push(format!("{what}: diff object {} is missing", d.0))
            }
            Ok(Verified::Corrupt { actual }) => problems.push(format!(
                "{what}: diff object {} is corrupt (hashes to {actual})",
                d.0
            )),
            Err(e) => problems.push(format!("{what}: {e}")),
        }
    }
    match repo.load_state(rev) {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(format!("{what}: {e}"));
            None
        }
    }
}

pub fn fsck(_args: FsckArgs, ctx: &mut Ctx<'_>) -> Result<()> {
    let repo = open_for_reading(ctx)?;
    let mut problems = Vec::new();
    // A head that does not load (hostile, or bad metadata) is a problem to list, not a reason
    // to stop: the recorded revisions are still checked.
    let (revs, head_ok) = match repo.revisions() {
        Ok(revs) => (revs, true),
        Err(e) => {
            problems.push(format!(".pvr/json: {e}"));
            (repo.recorded_revisions()?, false)
        }
    };
    // object id -> first path/revision needing it
    let mut needed: std::collections::BTreeMap<ObjectId, String> = Default::default();
    for rev in &revs {
        if let Some(state) = check_revision(&repo, rev, &mut problems) {
            for (key, entry) in state.iter() {
                if let Some(id) = entry.object_id() {
                    needed
                        .entry(id)
                        .or_insert_with(|| format!("'{key}' in revision {}", rev.rev));
                }
            }
        }
    }
    if head_ok {
        if let Err(e) = repo.head_state() {
            problems.push(format!(".pvr/json: {e}"));
        }
    }
    if let Err(e) = worktree::load_staged(&repo) {
        problems.push(format!(".pvr/new: {e}"));
    }
    if let Err(e) = worktree::load_staged_meta(&repo) {
        problems.push(format!(".pvr/pvrfs/new-meta: {e}"));
    }
    let store = repo.store();
    let mut object_problems: Vec<String> = needed
        .par_iter()
        .filter_map(|(id, user)| match store.verify(id) {
            Ok(Verified::Ok) => None,
            Ok(Verified::Missing) => Some(format!("object {id} is missing (needed by {user})")),
            Ok(Verified::Corrupt { actual }) => Some(format!(
                "object {id} is corrupt: its content hashes to {actual} (needed by {user})"
            )),
            Err(e) => Some(format!("object {id}: {e}")),
        })
        .collect();
    object_problems.sort();
    problems.extend(object_problems);
    for p in &problems {
        writeln!(ctx.out, "{}", terminal_safe(p, false))?;
    }
    if !problems.is_empty() {
        anyhow::bail!("fsck found {} problem(s)", problems.len());
    }
    if !ctx.quiet {
        writeln!(
            ctx.err,
            "{} revision(s), {} object(s) checked: no problems",
            revs.len(),
            needed.len()
        )?;
    }
    Ok(())
}

pub fn gc(args: GcArgs, ctx: &mut Ctx<'_>) -> Result<()> {
    let repo = open(ctx)?;
    // The store resolved to its real path; everything below deletes only from there.
    let Some(store) = repo.private_store() else {
        return Err(Error::Usage(format!(
            "refusing to gc: the object store {} (ObjectsDir {:?}) is not inside this repository's .pvr directory once resolved, and may be shared",
            repo.store().dir().display(),
            repo.config.objects_dir,
        ))
        .into());
    };
    let lock = repo.lock()?;
    let mut keep: BTreeSet<ObjectId> = BTreeSet::new();
    for rev in repo.revisions()? {
        keep.insert(rev.state.0);
        keep.extend(rev.diff.map(|d| d.0));
        // A revision we cannot read means we do not know what it needs: delete nothing.
        keep.extend(repo.load_state(&rev)?.object_ids());
    }
    keep.extend(worktree::load_staged(&repo)?.values().map(|s| s.sha));
    // The state the work tree was last checked out from (see `WorkTree::checkout`).
    if let Ok(text) = std::fs::read_to_string(repo.ext_dir().join("tree-base")) {
        keep.extend(ObjectId::from_hex(text.trim()).ok());
    }
    let store = &store;
    let mut removed = 0u64;
    let mut bytes = 0u64;
    for id in store.list()? {
        if keep.contains(&id) {
            continue;
        }
        bytes += std::fs::metadata(store.path_of(&id)).map_or(0, |m| m.len());
        removed += 1;
        if args.dry_run {
            writeln!(ctx.out, "would remove {id}")?;
        } else {
            store.remove(&id)?;
        }
    }
    if !args.dry_run {
        crate::fsutil::clean_temp_files(store.dir(), std::time::Duration::from_secs(3600));
        crate::fsutil::sync_dir(store.dir())?;
    }
    drop(lock);
    if !ctx.quiet {
        writeln!(
            ctx.err,
            "{} {removed} unreferenced object(s), {bytes} bytes",
            if args.dry_run {
                "would remove"
            } else {
                "removed"
            }
        )?;
    }
    Ok(())
}

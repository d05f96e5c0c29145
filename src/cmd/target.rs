//! Which mount a command addresses, and what it is: `--mount MNT` or the pvrfs mount around
//! the cwd (`mount_target`), read-only or `--rw`, the repository it serves and its revision
//! (`describe`). The mount-aware commands (`cmd::mountops`) and the read-only repository
//! commands typed inside a mount (`cmd::repo`) use it.

use super::Ctx;
use crate::error::Error;
use crate::fuse::control::{self, Request};
use crate::fuse::mounts::{self, MountInfo};
use crate::repo::Repo;
use crate::state::State;
use std::path::{Path, PathBuf};

/// The mount a command addresses: `--mount MNT` or the pvrfs mount containing the cwd.
pub fn mount_target(ctx: &Ctx<'_>, explicit: Option<&Path>) -> crate::Result<Option<PathBuf>> {
    mounts::find_mount(&ctx.cwd, explicit)
}

/// What the CLI needs to know of a pvrfs mount, read once per command: whether it is writable,
/// the repository it serves and the revision it shows (or is based on, for `--rw`).
pub struct MountView {
    pub rw: bool,
    pub repo: Repo,
    pub rev: String,
}

impl MountView {
    /// What the mount shows, as a state: a `--rw` mount's view (asked from its daemon), or a
    /// read-only mount's revision.
    pub fn view(&self, mnt: &Path) -> crate::Result<State> {
        if !self.rw {
            return self.repo.load_state(&self.repo.resolve(&self.rev)?);
        }
        let a = control::request(mnt, &Request::new("state"))?;
        State::from_json_bytes(a.text.as_bytes(), &format!("the view of {}", mnt.display()))
    }
}

/// A `--rw` mount's daemon names its repository and base revision; a read-only mount's source
/// (`pvrfs:REPO@REV`) does.
pub fn describe(mnt: &Path) -> crate::Result<MountView> {
    let info = mount_info(mnt)?;
    if is_rw(&info) {
        let a = control::request(mnt, &Request::new("info"))?;
        return Ok(MountView {
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
    Ok(MountView {
        rw: false,
        repo: Repo::open(&repo)?,
        rev: rev.to_string(),
    })
}

/// `commit`/`reset` of a read-only mount: there is nothing to commit or discard.
pub fn refuse_read_only(mnt: &Path, what: &str) -> crate::Result<()> {
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

pub fn mount_info(mnt: &Path) -> crate::Result<MountInfo> {
    mounts::list_mounts()?
        .into_iter()
        .find(|m| m.mountpoint == mnt)
        .ok_or_else(|| Error::Usage(format!("'{}' is not a pvrfs mount", mnt.display())))
}

pub fn is_rw(info: &MountInfo) -> bool {
    info.source.contains("@rw:")
}

/// The repository a pvrfs mount serves (for read-only commands typed inside it).
pub fn mount_repo(mnt: &Path) -> crate::Result<Repo> {
    Ok(describe(mnt)?.repo)
}

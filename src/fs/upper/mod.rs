//! The kernel-overlayfs backend's overlay, as plain Rust: an overlayfs upper directory read as
//! a change set against the base revision, and committed from there (no FUSE, no mount here).
//!
//! # Layout
//!
//! ```text
//! W/.pvr/pvrfs/overlay/<id>/
//! ├── lock          flock(2): one daemon at a time owns an overlay (as the FUSE backend's)
//! ├── kernel.json   {lower_rev, lower_state, head_rev, committed: [root...], layer: N}
//! ├── upper.N/      overlayfs upperdir: new and copied-up files, whiteouts, xattrs
//! ├── work.N/       overlayfs workdir
//! └── lower.N-K.erofs  EROFS image of the lower revision (EROFS lower only; K: presentation)
//! ```
//!
//! `kernel.json` marks the directory as a kernel-backend overlay (a FUSE-backend overlay has a
//! `snapshot` instead; one directory is never both). It is replaced atomically, and it is the
//! commit point of everything here: a reset writes a header naming fresh `upper.N+1`/`work.N+1`
//! and only then deletes the old pair; directories the header does not name are leftovers
//! and are deleted at load.
//!
//! # Model: lower, head, view
//!
//! - *lower*: the revision the read-only FUSE lower layer serves (`lower_rev`). It never
//!   changes while an upper layer holds changes against it: overlayfs forbids changing a lower
//!   layer under its upper, so after a commit the mount keeps the old lower.
//! - *view*: lower + upper, what the mount shows.
//! - *head*: the last revision committed from this overlay (`head_rev`; = lower until the first
//!   commit). Commit, status and diff compare the view with the head.
//!
//! `committed` holds the roots of what the head changed against the lower. Where the view can
//! differ from the head is then covered by `committed` ∪ the roots found in the upper layer, so
//! a build reads the head's entries and the view's files under those roots only (O(change); the
//! base is never walked). A commit makes those roots the new `committed`; a reset (which
//! unmounts) starts a fresh upper layer on the head, which becomes the lower.
//!
//! # Reading the upper layer (overlayfs's on-disk format, with `redirect_dir=on`; `metacopy`
//! is `on` over an EROFS lower, `off` over the FUSE lower: see [`LowerKind`])
//!
//! - a character device 0/0 is a *whiteout*: the name is gone from the view;
//! - a directory with `trusted.overlay.opaque` = `y` hides the lower directory of its name;
//! - a directory with `trusted.overlay.redirect` merges with the lower directory it names
//!   (absolute `/a/b`, or a name relative to its parent's lower directory): a renamed base
//!   directory;
//! - any other directory merges with the lower directory of the same name, if there is one;
//! - a regular file with `trusted.overlay.metacopy` is a metadata-only copy-up (a chmod,
//!   chown, touch or rename of a base file): its mode is its own, its data the lower file's,
//!   named by its `trusted.overlay.redirect` (a renamed file) or else by its own path under
//!   its parent's lower directory. Nothing is hashed for it;
//! - other regular files are whole: only they are hashed. A file that changes while it is
//!   hashed is read again (up to 5 times); never a torn object in a revision.
//!
//! # Metadata (modes, symlinks, empty directories)
//!
//! The lower layer serves the lower revision's metadata (`state::meta`), so the lower state
//! is read with it: a lower directory is one of its tree (files, symlinks or empty directories
//! under it), a lower path may be a symlink. In the upper layer a file's or directory's mode
//! is its permission bits (a chmod copies the object up), a symlink is stored with its target,
//! and a directory in which nothing stored remains is an empty directory of the state. A
//! merged directory (one the upper layer merges with the lower directory of its own path) is
//! a root only when its mode differs from the lower one's: otherwise only what changed under it
//! is read. A directory emptied or filled by a change under it is settled by `fs::change`
//! (`Built::finish`), which asks this view.

mod cache;

use super::change::{self, Built, Changes, CommitReport, Committed};
use crate::error::{Error, IoContext, Result};
use crate::json;
use crate::repo::{Repo, Revision};
use crate::state::{is_inline_path, Entry, State};
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The file marking a kernel-backend overlay directory.
pub const HEADER: &str = "kernel.json";

const OPAQUE: &str = "trusted.overlay.opaque";
const REDIRECT: &str = "trusted.overlay.redirect";
const METACOPY: &str = "trusted.overlay.metacopy";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Header {
    lower_rev: u64,
    /// State id of the lower revision (checked at load: the revision must not have changed).
    lower_state: String,
    head_rev: u64,
    /// Roots (view paths) under which the head differs from the lower.
    committed: BTreeSet<String>,
    /// Generation of the `upper.N`/`work.N` pair in use.
    layer: u64,
    /// What serves the lower layer under this upper layer (absent: the FUSE lower, which is
    /// all that overlays made before the EROFS lower had).
    #[serde(default)]
    lower: LowerKind,
}

/// What serves the lower layer of a kernel-backend overlay. Chosen when an upper layer is
/// created and kept with it: the two are mounted with different overlayfs options
/// (`metacopy`), and an upper layer made with metacopy copy-ups must never be mounted
/// without them (its metacopy files would read as holes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LowerKind {
    /// The daemon's private read-only FUSE mount of the lower revision (`metacopy=off`).
    #[default]
    Fuse,
    /// The EROFS image of the lower revision (`fs::image`), with the object store as a
    /// data-only layer (`metacopy=on`): the kernel serves the lower layer alone.
    Erofs,
}

impl LowerKind {
    pub fn name(self) -> &'static str {
        match self {
            LowerKind::Fuse => "fuse",
            LowerKind::Erofs => "erofs",
        }
    }
}

/// One kernel-backend overlay, opened and locked.
pub struct UpperOverlay {
    repo: Repo,
    id: String,
    dir: PathBuf,
    _lock: File,
    header: Header,
    lower_rev: Revision,
    lower: State,
    /// The head's state (equal to `lower` until the first commit).
    head: State,
    /// Inline JSON is rendered as `checkout --canonical` (the mount's `--canonical`).
    canonical: bool,
    /// The overlay's user (`uid`, `gid`): the upper directory's owner. Upper entries owned by
    /// anybody else are reported (owners are not recorded).
    owner: (u32, u32),
    /// Entries of upper files read by earlier builds (see `cache`).
    read_before: parking_lot::Mutex<cache::EntryCache>,
    /// Upper files read (hashed) by builds so far: the cost `read_before` saves, for the log.
    files_read: std::sync::atomic::AtomicU64,
}

/// Whether overlay `id` of `repo` exists and belongs to the kernel backend.
pub fn is_kernel_overlay(repo: &Repo, id: &str) -> bool {
    super::overlay::overlay_dir(repo, id).join(HEADER).exists()
}

/// Whether overlay `id` of `repo` exists and belongs to the FUSE backend.
pub fn is_fuse_overlay(repo: &Repo, id: &str) -> bool {
    super::overlay::overlay_dir(repo, id)
        .join("snapshot")
        .exists()
}

/// What is at a view path, found through the upper layer and the lower state.
enum Found {
    /// A directory: its upper directory (if any) and the lower directory it merges with.
    Dir {
        upper: Option<PathBuf>,
        lower: Option<String>,
    },
    /// A regular file, whiteout-free, in the upper layer.
    UpperFile(PathBuf),
    /// A metadata-only copy-up (metacopy) in the upper layer: its own mode and owner, the
    /// data of lower file `lower`.
    UpperMeta { disk: PathBuf, lower: String },
    /// Something else in the upper layer (symlink, FIFO, socket, device).
    UpperOther(PathBuf),
    /// A file of the lower revision, at this lower path.
    LowerFile(String),
    /// A symlink of the lower revision, with its target.
    LowerLink(String),
}

impl UpperOverlay {
    /// Open overlay `id` (locking it), or create it on revision `rev_spec` with a lower layer
    /// of kind `new_lower`.
    pub fn open_or_create(
        repo: &Repo,
        id: &str,
        rev_spec: &str,
        new_lower: LowerKind,
    ) -> Result<UpperOverlay> {
        super::overlay::check_id(id)?;
        let dir = super::overlay::overlay_dir(repo, id);
        if is_fuse_overlay(repo, id) {
            return Err(Error::Usage(format!(
                "overlay '{id}' holds changes made with the FUSE backend; mount it with --cow fuse (or discard them with 'pvrfs reset --mount' on such a mount)"
            )));
        }
        let lock = super::overlay::lock_dir(&dir)?;
        let header_path = dir.join(HEADER);
        let header = match fs::read(&header_path) {
            Ok(bytes) => serde_json::from_slice::<Header>(&bytes).map_err(|e| {
                Error::Other(format!(
                    "corrupt overlay header '{}': {e}",
                    header_path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rev = repo.resolve(rev_spec)?;
                let h = Header {
                    lower_rev: rev.rev,
                    lower_state: rev.state.0.to_hex(),
                    head_rev: rev.rev,
                    committed: BTreeSet::new(),
                    layer: 1,
                    lower: new_lower,
                };
                create_layer(&dir, 1)?;
                write_header(&dir, &h)?;
                h
            }
            Err(e) => return Err(Error::io("read", &header_path, e)),
        };
        let lower_rev = repo.resolve(&header.lower_rev.to_string())?;
        if lower_rev.state.0.to_hex() != header.lower_state {
            return Err(Error::Conflict(format!(
                "overlay '{id}' was made on revision {} with state {}, but that revision now has state {}",
                lower_rev.rev, header.lower_state, lower_rev.state.0
            )));
        }
        let lower = repo.load_state(&lower_rev)?;
        let head = if header.head_rev == header.lower_rev {
            lower.clone()
        } else {
            repo.load_state(&repo.resolve(&header.head_rev.to_string())?)?
        };
        create_layer(&dir, header.layer)?;
        remove_stale_layers(&dir, header.layer);
        let owner = layer_owner(&dir, header.layer)?;
        let mut ov = UpperOverlay {
            repo: repo.clone(),
            id: id.to_string(),
            dir,
            _lock: lock,
            header,
            lower_rev,
            lower,
            head,
            canonical: false,
            owner,
            read_before: Default::default(),
            files_read: Default::default(),
        };
        ov.finish_interrupted_commit()?;
        Ok(ov)
    }

    /// Open overlay `id` for a mount of revision `spec` (creating it on that revision, with a
    /// lower layer of kind `new_lower`): refused when another daemon holds it, or when it holds
    /// changes against another revision.
    pub fn open_for_mount(
        repo: &Repo,
        id: &str,
        spec: &str,
        new_lower: LowerKind,
    ) -> Result<UpperOverlay> {
        let rev = repo.resolve(spec)?;
        let ov = Self::open_or_create(repo, id, &rev.rev.to_string(), new_lower).map_err(|e| match e {
            Error::Locked { .. } => Error::Remote {
                code: e.exit_code(),
                message: format!(
                    "overlay '{id}' of {} is locked: another pvrfs daemon has it mounted (see 'pvrfs mounts'); use --overlay OTHER for a second writable mount",
                    repo.workdir().display()
                ),
            },
            e => e,
        })?;
        if ov.head_rev() != rev.rev {
            return Err(Error::Conflict(format!(
                "overlay '{id}' of {} holds changes made on revision {}, not {}: mount revision {} \
                 (and commit or 'pvrfs reset --mount MNT' there), or use another --overlay NAME",
                repo.workdir().display(),
                ov.head_rev(),
                rev.rev,
                ov.head_rev()
            )));
        }
        Ok(ov)
    }

    /// Remove overlay `id` entirely (the header first: without it the directory is no overlay).
    pub fn discard(repo: &Repo, id: &str) -> Result<()> {
        super::overlay::check_id(id)?;
        let dir = super::overlay::overlay_dir(repo, id);
        if !dir.exists() {
            return Ok(());
        }
        let _lock = super::overlay::lock_dir(&dir)?;
        let h = dir.join(HEADER);
        if h.exists() {
            fs::remove_file(&h).ctx("remove", &h)?;
        }
        fs::remove_dir_all(&dir).ctx("remove", &dir)
    }

    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// overlayfs's `upperdir`.
    pub fn upper_dir(&self) -> PathBuf {
        self.dir.join(format!("upper.{}", self.header.layer))
    }

    /// overlayfs's `workdir`.
    pub fn work_dir(&self) -> PathBuf {
        self.dir.join(format!("work.{}", self.header.layer))
    }

    /// What serves the lower layer of the current upper layer.
    pub fn lower_kind(&self) -> LowerKind {
        self.header.lower
    }

    /// Where the EROFS image of the current layer's lower revision is kept, for a presentation
    /// `key` (rendering and owner: see `fuse::kernel`). Deleted with its layer.
    pub fn lower_image(&self, key: &str) -> PathBuf {
        self.dir
            .join(format!("lower.{}-{key}.erofs", self.header.layer))
    }

    /// The revision the lower layer serves.
    pub fn lower_revision(&self) -> &Revision {
        &self.lower_rev
    }

    /// The lower revision's state (what the lower layer serves).
    pub fn lower_state(&self) -> &State {
        &self.lower
    }

    /// The revision the view is compared with (the last commit, or the lower).
    pub fn head_rev(&self) -> u64 {
        self.header.head_rev
    }

    /// Render inline JSON as `checkout --canonical` does (what the lower layer shows).
    pub fn set_canonical(&mut self, canonical: bool) {
        self.canonical = canonical;
    }

    /// Start a fresh, empty upper layer on the head, which becomes the lower. The overlayfs
    /// mount of the old layer must be gone (or detached) first.
    pub fn reset(&mut self, new_lower: LowerKind) -> Result<()> {
        let head_rev = self.repo.resolve(&self.header.head_rev.to_string())?;
        let old_layer = self.header.layer;
        let h = Header {
            lower_rev: head_rev.rev,
            lower_state: head_rev.state.0.to_hex(),
            head_rev: head_rev.rev,
            committed: BTreeSet::new(),
            layer: old_layer + 1,
            lower: new_lower,
        };
        create_layer(&self.dir, h.layer)?;
        let owner = layer_owner(&self.dir, h.layer)?;
        write_header(&self.dir, &h)?;
        self.owner = owner;
        self.header = h;
        self.lower_rev = head_rev;
        self.lower = self.head.clone();
        self.read_before.lock().clear();
        remove_stale_layers(&self.dir, self.header.layer);
        Ok(())
    }

    /// The roots of what the upper layer changes (minimal prefixes), plus warnings about what
    /// the upper layer holds that a state cannot.
    fn upper_roots(&self, warnings: &mut Vec<String>) -> Result<BTreeSet<String>> {
        let mut roots = BTreeSet::new();
        self.roots_in(&self.upper_dir(), "", Some(""), &mut roots, warnings)?;
        Ok(roots)
    }

    fn roots_in(
        &self,
        dir: &Path,
        view: &str,
        lower: Option<&str>,
        roots: &mut BTreeSet<String>,
        warnings: &mut Vec<String>,
    ) -> Result<()> {
        for e in fs::read_dir(dir).ctx("read upper directory", dir)? {
            let e = e.ctx("read upper directory", dir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let disk = e.path();
            let vp = join(view, &name);
            let meta = fs::symlink_metadata(&disk).ctx("stat", &disk)?;
            if view.is_empty() && name == ".pvr" {
                // overlayfs cannot refuse it as the FUSE overlay does (EPERM); a state cannot
                // hold it (it is the repository's own metadata).
                warnings.push(
                    "'.pvr' at the top is not stored (it is the repository's own metadata)".into(),
                );
                continue;
            }
            if meta.is_dir() && !is_whiteout(&meta) {
                let child_lower = self.child_lower(&disk, lower, &name)?;
                let merged = child_lower.as_deref() == Some(vp.as_str());
                // A copied-up directory keeps the lower mode; a chmod changes it.
                if merged && meta.mode() & 0o7777 == self.lower.meta().dir_mode(&vp) {
                    self.roots_in(&disk, &vp, child_lower.as_deref(), roots, warnings)?;
                    continue;
                }
            }
            roots.insert(vp);
        }
        Ok(())
    }

    /// The lower directory an upper directory `disk` (named `name`, in a directory merging
    /// with `parent_lower`) merges with.
    fn child_lower(
        &self,
        disk: &Path,
        parent_lower: Option<&str>,
        name: &str,
    ) -> Result<Option<String>> {
        if xattr(disk, OPAQUE)?.is_some_and(|v| v == b"y") {
            return Ok(None);
        }
        if let Some(r) = xattr(disk, REDIRECT)? {
            let r = String::from_utf8_lossy(&r).into_owned();
            let target = match r.strip_prefix('/') {
                Some(abs) => abs.to_string(),
                None => match parent_lower {
                    Some(p) => join(p, &r),
                    None => return Ok(None),
                },
            };
            return Ok(self.lower_is_dir(&target).then_some(target));
        }
        Ok(parent_lower
            .map(|p| join(p, name))
            .filter(|l| self.lower_is_dir(l)))
    }

    /// What the upper regular file `disk` (named `name`, in a directory merging with
    /// `parent_lower`) is: a whole file, or a metadata-only copy-up of a lower file. The lower
    /// file of a metacopy is named by its `trusted.overlay.redirect` (absolute, or relative to
    /// the parent's lower directory: a renamed base file), else it is the same name in the
    /// parent's lower directory.
    fn upper_file(&self, disk: PathBuf, parent_lower: Option<&str>, name: &str) -> Result<Found> {
        if xattr(&disk, METACOPY)?.is_none() {
            return Ok(Found::UpperFile(disk));
        }
        let lower = match xattr(&disk, REDIRECT)? {
            Some(r) => {
                let r = String::from_utf8_lossy(&r).into_owned();
                match r.strip_prefix('/') {
                    Some(abs) => Some(abs.to_string()),
                    None => parent_lower.map(|p| join(p, &r)),
                }
            }
            None => parent_lower.map(|p| join(p, name)),
        };
        match lower {
            Some(lp) if self.lower.get(&lp).is_some() => Ok(Found::UpperMeta { disk, lower: lp }),
            lp => Err(Error::Other(format!(
                "'{}' is a metadata-only copy-up of lower file '{}', which revision {} does not have",
                disk.display(),
                lp.unwrap_or_else(|| name.to_string()),
                self.lower_rev.rev
            ))),
        }
    }

    /// Whether the lower tree has a directory at `path` (files, symlinks or empty directories
    /// under it, or an empty directory itself).
    fn lower_is_dir(&self, path: &str) -> bool {
        self.lower.meta().is_dir(self.lower.entries_map(), path)
    }

    /// Find view path `path` (`""`: the root).
    fn find(&self, path: &str) -> Result<Option<Found>> {
        let mut upper = Some(self.upper_dir());
        let mut lower = Some(String::new());
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        for (i, seg) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            let here = upper.as_ref().map(|u| u.join(seg));
            let meta = match &here {
                Some(p) => match fs::symlink_metadata(p) {
                    Ok(m) => Some(m),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(Error::io("stat", p, e)),
                },
                None => None,
            };
            match meta {
                Some(m) if is_whiteout(&m) => return Ok(None),
                Some(m) if m.is_dir() => {
                    let disk = here.expect("some");
                    lower = self.child_lower(&disk, lower.as_deref(), seg)?;
                    upper = Some(disk);
                }
                Some(m) => {
                    if !last {
                        return Ok(None);
                    }
                    let disk = here.expect("some");
                    return Ok(Some(if m.is_file() {
                        self.upper_file(disk, lower.as_deref(), seg)?
                    } else {
                        Found::UpperOther(disk)
                    }));
                }
                None => {
                    upper = None;
                    let Some(l) = lower.take() else {
                        return Ok(None);
                    };
                    let lp = join(&l, seg);
                    if self.lower.get(&lp).is_some() {
                        return Ok(last.then_some(Found::LowerFile(lp)));
                    }
                    if let Some(target) = self.lower.meta().links.get(&lp) {
                        return Ok(last.then(|| Found::LowerLink(target.clone())));
                    }
                    if !self.lower_is_dir(&lp) {
                        return Ok(None);
                    }
                    lower = Some(lp);
                }
            }
        }
        Ok(Some(Found::Dir { upper, lower }))
    }

    /// Every file, symlink and directory of the view at or under `path` (which is `found`)
    /// into `built`. Returns false when nothing was stored for it (a special file, or a
    /// directory of such: its parent may be empty).
    fn collect(
        &self,
        found: Found,
        path: &str,
        store: Option<&Store>,
        built: &mut Built,
    ) -> Result<bool> {
        Ok(match found {
            Found::LowerFile(lp) => {
                let entry = self.lower_entry(&lp, path, store)?;
                built.insert(path, entry, self.lower.meta().file_mode(&lp))
            }
            Found::LowerLink(target) => built.symlink(path, &target),
            Found::UpperFile(ref disk) | Found::UpperMeta { ref disk, .. } => {
                let meta = fs::symlink_metadata(disk).ctx("stat", disk)?;
                self.check_owner(&meta, path, built);
                if meta.nlink() > 1 {
                    built.unstorable(
                        path,
                        format!("'{path}' is a hard link; it is stored as a separate copy"),
                    );
                }
                let entry = match &found {
                    // A chmod, chown, touch or rename of a base file: nothing to hash, its
                    // data is the lower file's (overlayfs copies the data up before any write).
                    Found::UpperMeta { lower, .. } => self.lower_entry(lower, path, store)?,
                    _ => self.upper_file_entry(disk, &meta, path, store)?,
                };
                built.insert(path, entry, meta.mode())
            }
            Found::UpperOther(disk) => self.collect_other(&disk, path, built)?,
            Found::Dir { upper, lower } => {
                let mut stored = false;
                let mut names = BTreeSet::new();
                let mode = match (&upper, &lower) {
                    (Some(u), _) => {
                        let meta = fs::symlink_metadata(u).ctx("stat", u)?;
                        if !path.is_empty() {
                            self.check_owner(&meta, path, built);
                        }
                        meta.mode()
                    }
                    (None, Some(l)) => self.lower.meta().dir_mode(l),
                    (None, None) => crate::state::meta::DEFAULT_DIR_MODE,
                };
                if let Some(u) = &upper {
                    for e in fs::read_dir(u).ctx("read upper directory", u)? {
                        let e = e.ctx("read upper directory", u)?;
                        let name = e.file_name().to_string_lossy().into_owned();
                        names.insert(name.clone());
                        let disk = e.path();
                        let meta = fs::symlink_metadata(&disk).ctx("stat", &disk)?;
                        let vp = join(path, &name);
                        let found = if is_whiteout(&meta) {
                            continue;
                        } else if path.is_empty() && name == ".pvr" {
                            continue; // warned about by `upper_roots`
                        } else if meta.is_dir() {
                            Found::Dir {
                                lower: self.child_lower(&disk, lower.as_deref(), &name)?,
                                upper: Some(disk),
                            }
                        } else if meta.is_file() {
                            self.upper_file(disk, lower.as_deref(), &name)?
                        } else {
                            Found::UpperOther(disk)
                        };
                        stored |= self.collect(found, &vp, store, built)?;
                    }
                }
                if let Some(l) = &lower {
                    stored |= self.collect_lower_dir(l, path, &names, store, built)?;
                }
                built.dir(path, mode, !stored)
            }
        })
    }

    /// The entry of the upper file `disk` (attributes `meta`) at view path `path`: read (and
    /// stored, with `store`), unless an earlier build read this very version.
    fn upper_file_entry(
        &self,
        disk: &Path,
        meta: &fs::Metadata,
        path: &str,
        store: Option<&Store>,
    ) -> Result<Entry> {
        let known = self.read_before.lock().get(path, meta).cloned();
        if let Some(entry) = known {
            let usable = match (&entry, store) {
                // The object was stored by an earlier commit; it joins the next sync.
                (Entry::Object(id), Some(store)) => store.keep_present(id),
                _ => true,
            };
            if usable {
                return Ok(entry);
            }
        }
        let read_began = std::time::SystemTime::now();
        self.files_read
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let open = || crate::fsutil::open_regular(disk, false).ctx("open", disk);
        let (entry, read) = change::stable_file_entry_and_meta(open, disk, path, store)?;
        self.read_before
            .lock()
            .remember(path, &read, read_began, &entry);
        Ok(entry)
    }

    /// What the lower directory `l` holds, seen at view path `path` where the upper directory
    /// there has `names` (those hide the lower entries of their names): files, symlinks,
    /// empty directories and modes. Returns whether anything was stored.
    fn collect_lower_dir(
        &self,
        l: &str,
        path: &str,
        names: &BTreeSet<String>,
        store: Option<&Store>,
        built: &mut Built,
    ) -> Result<bool> {
        // `rest`: a lower path under `l`, relative to it; `None` when an upper name hides it.
        let visible = |k: &str| -> Option<String> {
            let rest = if l.is_empty() { k } else { &k[l.len() + 1..] };
            let first = rest.split('/').next().unwrap_or(rest);
            (!names.contains(first)).then(|| join(path, rest))
        };
        let lower_meta = self.lower.meta();
        let mut stored = false;
        for (k, _) in change::entries_under(&self.lower, l) {
            if k == l {
                continue;
            }
            if let Some(vp) = visible(k) {
                let entry = self.lower_entry(k, &vp, store)?;
                stored |= built.insert(&vp, entry, lower_meta.file_mode(k));
            }
        }
        let prefix = if l.is_empty() {
            String::new()
        } else {
            format!("{l}/")
        };
        let below = |k: &&String| k.starts_with(&prefix);
        for (k, target) in lower_meta.links.range(prefix.clone()..) {
            if !below(&k) {
                break;
            }
            if let Some(vp) = visible(k) {
                stored |= built.symlink(&vp, target);
            }
        }
        for k in lower_meta.dirs.range(prefix.clone()..) {
            if !below(&k) {
                break;
            }
            if let Some(vp) = visible(k) {
                stored |= built.dir(&vp, lower_meta.dir_mode(k), true);
            }
        }
        // Directories of the lower tree with a mode of their own (files took theirs above).
        for (k, mode) in lower_meta.modes.range(prefix.clone()..) {
            if !below(&k) {
                break;
            }
            if self.lower.get(k).is_none() {
                if let Some(vp) = visible(k) {
                    let _ = built.dir(&vp, *mode, false);
                }
            }
        }
        Ok(stored)
    }

    /// Report an upper entry at `path` that is not the overlay user's.
    fn check_owner(&self, meta: &fs::Metadata, path: &str, built: &mut Built) {
        if (meta.uid(), meta.gid()) != self.owner {
            built.foreign_owner(path, meta.uid(), meta.gid());
        }
    }

    /// A symlink, FIFO, socket or device in the upper layer at view path `path`. Returns
    /// whether it was stored (a symlink).
    fn collect_other(&self, disk: &Path, path: &str, built: &mut Built) -> Result<bool> {
        let meta = fs::symlink_metadata(disk).ctx("stat", disk)?;
        self.check_owner(&meta, path, built);
        let ft = meta.file_type();
        if !ft.is_symlink() {
            let kind = if ft.is_fifo() {
                "fifo"
            } else if ft.is_socket() {
                "socket"
            } else if ft.is_char_device() {
                "character device"
            } else {
                "block device"
            };
            built.unstorable(
                path,
                format!("{kind} '{path}' is not stored (the pvr format has no special files)"),
            );
            return Ok(false);
        }
        if meta.nlink() > 1 {
            built.unstorable(
                path,
                format!("'{path}' is a hard link; it is stored as a separate copy"),
            );
        }
        let target = fs::read_link(disk).ctx("read symlink", disk)?;
        Ok(match target.to_str() {
            Some(t) => built.symlink(path, t),
            None => {
                built.unstorable(
                    path,
                    format!(
                        "symlink '{path}' -> '{}' is not stored (its target is not UTF-8, which a state cannot hold)",
                        target.to_string_lossy()
                    ),
                );
                false
            }
        })
    }

    /// The entry of lower file `lp` seen at view path `vp` (converted if it crosses the inline
    /// rule, as `pvr add` would).
    fn lower_entry(&self, lp: &str, vp: &str, store: Option<&Store>) -> Result<Entry> {
        let e = self
            .lower
            .get(lp)
            .cloned()
            .ok_or_else(|| Error::Other(format!("lower file '{lp}' vanished")))?;
        Ok(match e {
            Entry::Inline(v) if is_inline_path(vp) => Entry::Inline(v),
            Entry::Object(id) if !is_inline_path(vp) => Entry::Object(id),
            Entry::Object(id) => {
                let bytes = self.repo.store().read_verified(&id, Some(lp))?;
                change::json_entry(store, &bytes, vp)?
            }
            Entry::Inline(v) => {
                let bytes = if self.canonical {
                    json::render_checkout_canonical(&v)
                } else {
                    json::render_checkout(&v)
                };
                change::blob_entry(store, &bytes)?
            }
        })
    }

    /// Commit the view as the revision after the head. On error nothing is committed and the
    /// overlay is unchanged.
    pub fn commit(&mut self, message: &str) -> Result<CommitReport> {
        self.commit_inner(message, false)
            .map(Committed::into_report)
    }

    /// `commit`, unless nothing a revision can hold changed (then nothing is written).
    pub fn commit_changes(&mut self, message: &str) -> Result<Committed> {
        self.commit_inner(message, true)
    }

    fn commit_inner(&mut self, message: &str, skip_unchanged: bool) -> Result<Committed> {
        let t = std::time::Instant::now();
        let lock = self.repo.lock()?;
        let read = self.files_read();
        let built = self.build(true)?;
        log::debug!(
            "commit: upper layer built in {:?} ({} upper files read, {} known)",
            t.elapsed(),
            self.files_read() - read,
            self.read_before.lock().known()
        );
        if skip_unchanged && built.status().is_empty() {
            return Ok(Committed::Unchanged {
                warnings: built.warnings,
            });
        }
        let mut roots = BTreeSet::new();
        {
            let mut w = Vec::new();
            roots.extend(self.upper_roots(&mut w)?);
        }
        log::debug!("commit: roots at {:?}", t.elapsed());
        let revision = change::commit_built(
            &self.repo,
            &lock,
            &mut self.head,
            self.header.head_rev,
            &built,
            message,
        )
        .map_err(|e| match e {
            Error::Conflict(msg) => Error::Conflict(format!(
                "{msg} (the overlay is kept; `pvrfs reset --mount` discards it)"
            )),
            e => e,
        })?;
        crate::fsutil::crash_point("kernel-overlay:committed");
        log::debug!("commit: repository committed at {:?}", t.elapsed());
        self.adopt(&revision, roots)?;
        log::debug!("commit: adopted at {:?}", t.elapsed());
        Ok(Committed::Revision(CommitReport {
            revision,
            status: built.status(),
            warnings: built.warnings,
        }))
    }

    /// How many upper files builds have read (hashed) since this overlay was opened.
    pub fn files_read(&self) -> u64 {
        self.files_read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Record `revision` (whose state `self.head` already is) as the head, the upper layer's
    /// `roots` joining the committed ones.
    fn adopt(&mut self, revision: &Revision, roots: BTreeSet<String>) -> Result<()> {
        let mut h = self.header.clone();
        h.head_rev = revision.rev;
        h.committed = minimal(roots.iter().chain(&h.committed));
        write_header(&self.dir, &h).map_err(|e| {
            Error::Other(format!(
                "revision {} was committed, but overlay '{}' could not record it (the next mount does): {e}",
                revision.rev, self.id
            ))
        })?;
        self.header = h;
        Ok(())
    }

    /// A commit that crashed between the repository's commit point and the header leaves a
    /// head whose parent is our head and whose state is our view: record it.
    fn finish_interrupted_commit(&mut self) -> Result<()> {
        let latest = self.repo.latest()?;
        if latest.rev == self.header.head_rev || latest.parent != Some(self.header.head_rev) {
            return Ok(());
        }
        let built = self.build(false)?;
        if built.apply_to(&mut self.head).is_ok() && self.head.state_id() == latest.state.0 {
            let mut w = Vec::new();
            let roots = self.upper_roots(&mut w)?;
            return self.adopt(&latest, roots);
        }
        built.revert(&mut self.head);
        Ok(())
    }
}

/// The kernel backend's view, as `Built::finish` asks it.
struct KernelView<'o>(&'o UpperOverlay);

impl Changes for UpperOverlay {
    fn build(&self, store: bool) -> Result<Built> {
        let mut built = Built::new(&self.head);
        let mut warnings = Vec::new();
        let upper_roots = self.upper_roots(&mut warnings)?;
        let top = self.upper_dir();
        let top_mode = fs::symlink_metadata(&top).ctx("stat", &top)?.mode() & 0o7777;
        if top_mode != crate::state::meta::DEFAULT_DIR_MODE {
            warnings.push(format!(
                "mode {top_mode:04o} of the top directory is not stored (a tree's top directory has no recorded mode)"
            ));
        }
        let roots = minimal(upper_roots.iter().chain(&self.header.committed));
        let store = store.then(|| self.repo.store());
        for r in &roots {
            built.replace_under(&self.head, r);
            match self.find(r)? {
                None => {}
                Some(found) => {
                    self.collect(found, r, store, &mut built)?;
                }
            }
        }
        built.warnings.splice(0..0, warnings);
        let roots: Vec<String> = roots.into_iter().collect();
        built.finish(&self.head, &roots, &KernelView(self))?;
        Ok(built)
    }

    fn base_state(&self) -> &State {
        &self.head
    }
}

impl change::View for KernelView<'_> {
    fn is_dir(&self, path: &str) -> Result<bool> {
        Ok(matches!(self.0.find(path)?, Some(Found::Dir { .. })))
    }

    fn stores_nothing_under(&self, path: &str) -> Result<bool> {
        let ov = self.0;
        let Some(Found::Dir { upper, lower }) = ov.find(path)? else {
            return Ok(false);
        };
        let mut names = BTreeSet::new();
        if let Some(u) = &upper {
            for e in fs::read_dir(u).ctx("read upper directory", u)? {
                let e = e.ctx("read upper directory", u)?;
                names.insert(e.file_name().to_string_lossy().into_owned());
                let ft = e.file_type().ctx("stat", e.path())?;
                if ft.is_dir() || ft.is_file() || ft.is_symlink() {
                    return Ok(false);
                }
            }
        }
        // The lower directory's entries, unless the upper layer hides each of them.
        let Some(l) = lower else { return Ok(true) };
        let meta = ov.lower.meta();
        let prefix = if l.is_empty() {
            String::new()
        } else {
            format!("{l}/")
        };
        let hidden = |k: &String| {
            let rest = &k[prefix.len()..];
            names.contains(rest.split('/').next().unwrap_or(rest))
        };
        let below = |k: &&String| k.starts_with(&prefix);
        let from = || prefix.clone()..;
        let files = ov.lower.entries_map().range(from()).map(|(k, _)| k);
        let links = meta.links.range(from()).map(|(k, _)| k);
        let dirs = meta.dirs.range(from());
        Ok(files.take_while(below).all(hidden)
            && links.take_while(below).all(hidden)
            && dirs.take_while(below).all(hidden))
    }
}

fn is_whiteout(m: &fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

/// An xattr of `p` (not following symlinks); `None` when it has none of that name.
fn xattr(p: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    match rustix::fs::lgetxattr(p, name, &mut buf) {
        Ok(n) => {
            buf.truncate(n);
            Ok(Some(buf))
        }
        Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) => Ok(None),
        Err(e) => Err(Error::io("read overlayfs xattrs of", p, e.into())),
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The minimal prefixes of `paths` (a path under another is covered by it).
fn minimal<'a>(paths: impl Iterator<Item = &'a String>) -> BTreeSet<String> {
    let all: BTreeSet<&String> = paths.collect();
    let mut out: BTreeSet<String> = BTreeSet::new();
    for p in all {
        let covered = out
            .iter()
            .any(|r| r.is_empty() || p == r || p.starts_with(&format!("{r}/")));
        if !covered {
            out.insert(p.clone());
        }
    }
    out
}

fn create_layer(dir: &Path, layer: u64) -> Result<()> {
    for d in [format!("upper.{layer}"), format!("work.{layer}")] {
        let p = dir.join(d);
        if !p.exists() {
            fs::create_dir_all(&p).ctx("create", &p)?;
            // The upper directory is the view's top directory: the lower's mode, not the
            // umask's.
            let mode = crate::state::meta::DEFAULT_DIR_MODE;
            fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .ctx("chmod", &p)?;
        }
    }
    crate::fsutil::sync_dir(dir)
}

/// The owner of layer `layer`'s upper directory.
fn layer_owner(dir: &Path, layer: u64) -> Result<(u32, u32)> {
    let p = dir.join(format!("upper.{layer}"));
    let m = fs::metadata(&p).ctx("stat", &p)?;
    Ok((m.uid(), m.gid()))
}

fn write_header(dir: &Path, h: &Header) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(h).map_err(|e| Error::Other(e.to_string()))?;
    crate::fsutil::atomic_write(&dir.join(HEADER), &bytes, 0o644)
}

/// Delete `upper.N`/`work.N` pairs other than `layer` (left by a reset; best effort).
fn remove_stale_layers(dir: &Path, layer: u64) {
    let keep = [format!("upper.{layer}"), format!("work.{layer}")];
    let image_of_layer = format!("lower.{layer}-");
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if (name.starts_with("upper.") || name.starts_with("work.")) && !keep.contains(&name) {
            let _ = fs::remove_dir_all(e.path());
        } else if name.starts_with("lower.") && !name.starts_with(&image_of_layer) {
            // an EROFS image of an earlier layer (or an interrupted write of one)
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests;

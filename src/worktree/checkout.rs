//! `checkout`: make the work tree equal to a state — files through `.pvr/pvrfs/tmp/`, symlinks,
//! permission bits and empty directories — never writing or deleting through a symlink found in
//! the tree (every parent is resolved by `beneath`).
//!
//! Order: plan (refuse before touching anything when unsaved work would be lost) → remove files
//! and symlinks the target does not have → remove directories the target does not have (when
//! empty) → create the target's directories (a symlink, file or special file in the way is
//! either planned for removal or a refusal) → write files and symlinks, each by a rename over
//! the old entry, grouped by directory → set the directories' modes, deepest first (last, so
//! that a read-only directory is filled before it becomes read-only).

use super::add::merge_sorted;
use super::beneath::{chmod_fd, Beneath};
use super::scan::{entry_of, parents_of, probe, stored_as_object, Was};
use super::*;
use rustix::fs::{AtFlags, FileType};
use rustix::io::Errno;

/// What a state has at a path (files and symlinks; directories are handled apart).
#[derive(Debug, Clone, PartialEq)]
enum Node<'a> {
    File(&'a Entry, u32),
    Link(&'a str),
}

fn node<'s>(state: &'s State, path: &str) -> Option<Node<'s>> {
    if let Some(e) = state.get(path) {
        return Some(Node::File(e, state.meta().file_mode(path)));
    }
    state.meta().links.get(path).map(|t| Node::Link(t))
}

/// Every directory of a state's tree (empty ones included), without the root.
fn tree_dirs(state: &State) -> stat::HashSet<String> {
    let m = state.meta();
    let mut dirs = stat::HashSet::default();
    parents_of(
        state
            .iter()
            .map(|(k, _)| k.as_str())
            .chain(m.links.keys().map(String::as_str))
            .chain(m.dirs.iter().map(String::as_str)),
        &mut dirs,
    );
    dirs.extend(m.dirs.iter().cloned());
    dirs
}

/// What to put at one path.
enum Put {
    File(Planned),
    Link(String),
}

impl WorkTree<'_> {
    /// Make the work tree equal to `target` (see `CheckoutOptions`). The head is not moved.
    pub fn checkout(
        &mut self,
        _lock: &RepoLock,
        target: &State,
        opts: &CheckoutOptions,
    ) -> Result<CheckoutReport> {
        let repo = self.repo;
        let tree = Beneath::open(repo.workdir())?;
        let head = repo.head_state()?;
        let base = self.tree_base().unwrap_or_default();
        let staged = load_staged(repo)?;
        let staged_meta = load_staged_meta(repo)?;
        // Usually these are (nearly) the same 100k keys: a linear merge, not a set of 400k.
        let mut paths: Vec<&String> = head.entries_map().keys().collect();
        for keys in [
            base.entries_map().keys().collect::<Vec<_>>(),
            target.entries_map().keys().collect(),
            staged.keys().collect(),
            head.meta().links.keys().collect(),
            base.meta().links.keys().collect(),
            target.meta().links.keys().collect(),
            staged_meta.iter().collect(),
        ] {
            paths = merge_sorted(&paths, &keys);
        }
        self.load_cache();
        let cache = self.cache.as_ref().expect("loaded");
        // What is on disk now, and whether it holds work that neither the head nor the last
        // checked-out state has (only such work is protected).
        // By directory: one descriptor per directory (resolved without following symlinks),
        // and nothing more to ask about the files of a directory that is not there.
        let mut by_dir: Vec<(&str, Vec<&String>)> = Vec::new();
        let mut dir_index: HashMap<&str, usize> = HashMap::default();
        for path in paths {
            let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
            let i = *dir_index.entry(dir).or_insert_with(|| {
                by_dir.push((dir, Vec::new()));
                by_dir.len() - 1
            });
            by_dir[i].1.push(path);
        }
        let current: Vec<Vec<(&String, Found, bool)>> = by_dir
            .into_par_iter()
            .map(|(dir, paths)| {
                let fd = tree.dir(dir)?;
                paths
                    .into_iter()
                    .map(|path| {
                        let name = path.rsplit_once('/').map_or(path.as_str(), |(_, n)| n);
                        let key = match &fd {
                            None => None,
                            Some(fd) => {
                                match rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                                    Ok(st) => Some(StatKey::from_stat(&st)),
                                    Err(Errno::NOENT | Errno::NOTDIR) => None,
                                    Err(e) => {
                                        return Err(Error::io("stat", self.abs(path), e.into()))
                                    }
                                }
                            }
                        };
                        self.probe_for_checkout(&tree, cache, &head, &base, path, key)
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        let current = current.into_iter().flatten();
        let tm = target.meta();
        let old_tree_dirs: stat::HashSet<String> = tree_dirs(&head)
            .into_iter()
            .chain(tree_dirs(&base))
            .collect();
        let mut writes: Vec<(String, Put)> = Vec::new();
        let mut removes: Vec<String> = Vec::new();
        let mut conflicts: Vec<String> = Vec::new();
        let mut skipped: Vec<(String, CacheEntry)> = Vec::new();
        for (path, found, unsaved) in current {
            let blocked = unsaved && !opts.force;
            match node(target, path) {
                Some(Node::File(entry, mode)) => {
                    let plan = Planned::new(entry, mode, opts.canonical);
                    match &found {
                        Found::File(p) if p.sha == plan.sha && p.mode == mode => {
                            if let Some(key) = p.key {
                                skipped.push((path.clone(), plan.cache_entry(key)));
                            }
                        }
                        Found::Unstorable(_) if !opts.force => conflicts.push(path.clone()),
                        Found::Dir { .. } if !opts.force && !old_tree_dirs.contains(path) => {
                            conflicts.push(path.clone())
                        }
                        _ if blocked => conflicts.push(path.clone()),
                        _ => writes.push((path.clone(), Put::File(plan))),
                    }
                }
                Some(Node::Link(t)) => match &found {
                    Found::Link { target, cache, .. } if target == t => {
                        skipped.push((path.clone(), *cache))
                    }
                    Found::Unstorable(_) if !opts.force => conflicts.push(path.clone()),
                    Found::Dir { .. } if !opts.force && !old_tree_dirs.contains(path) => {
                        conflicts.push(path.clone())
                    }
                    _ if blocked => conflicts.push(path.clone()),
                    _ => writes.push((path.clone(), Put::Link(t.to_string()))),
                },
                None => {
                    let tracked = node(&head, path).is_some() || node(&base, path).is_some();
                    let present = matches!(found, Found::File(_) | Found::Link { .. });
                    if tracked && present {
                        if blocked {
                            conflicts.push(path.clone());
                        } else {
                            removes.push(path.clone());
                        }
                    }
                }
            }
        }
        // The target's directories: what is in the way of each (a symlink, a file) must be a
        // tracked entry this checkout removes, or is unsaved work (removed only with --force).
        let target_dirs = tree_dirs(target);
        let mut dirs_sorted: Vec<&String> = target_dirs.iter().collect();
        dirs_sorted.sort_unstable();
        let removing: stat::HashSet<&str> = removes.iter().map(String::as_str).collect();
        let mut missing: stat::HashSet<&str> = stat::HashSet::default();
        let mut in_the_way: Vec<String> = Vec::new();
        for d in &dirs_sorted {
            let parent_missing = d.rsplit_once('/').is_some_and(|(p, _)| missing.contains(p));
            if parent_missing {
                missing.insert(d);
                continue;
            }
            match tree.lstat(d)? {
                None => {
                    missing.insert(d);
                }
                Some(st) if FileType::from_raw_mode(st.st_mode as _) == FileType::Directory => {}
                Some(_) if removing.contains(d.as_str()) => {
                    missing.insert(d);
                }
                Some(_) if opts.force => {
                    missing.insert(d);
                    in_the_way.push(d.to_string());
                }
                Some(_) => conflicts.push(d.to_string()),
            }
        }
        if !conflicts.is_empty() {
            conflicts.sort();
            let shown: Vec<&str> = conflicts.iter().take(10).map(String::as_str).collect();
            return Err(Error::WouldLoseChanges(format!(
                "checkout would overwrite uncommitted changes in {} path(s): {}{}; commit them, or use --force to discard them",
                conflicts.len(),
                shown.join(", "),
                if conflicts.len() > 10 { ", ..." } else { "" }
            )));
        }
        // Every object must be there before anything is touched.
        for (path, w) in &writes {
            if let Put::File(Planned {
                object: Some(id), ..
            }) = w
            {
                if !repo.store().contains(id) {
                    return Err(repo.store().missing(id, Some(path)));
                }
            }
        }
        let tmp_dir = repo.ext_dir().join("tmp");
        fs::create_dir_all(&tmp_dir).ctx("create", &tmp_dir)?;
        fsutil::clean_temp_files(&tmp_dir, std::time::Duration::ZERO);
        let tmp_fd = rustix::fs::open(
            &tmp_dir,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| Error::io("open directory", &tmp_dir, e.into()))?;

        // Removals: files and symlinks, then the directories the target does not have.
        for path in removes.iter().chain(&in_the_way) {
            remove_entry(&tree, path)?;
            fsutil::crash_point("checkout:removed");
        }
        let mut old_dirs: Vec<&String> = old_tree_dirs
            .iter()
            .filter(|d| !target_dirs.contains(*d))
            .collect();
        old_dirs.sort_unstable_by(|a, b| b.cmp(a)); // children first
        old_dirs.dedup();
        for d in &old_dirs {
            remove_empty_dir(&tree, d)?;
        }
        // The target's directories, parents first; writable while this checkout fills them.
        let root_uid = rustix::process::geteuid().is_root();
        let umask = process_umask();
        // Directories made here with their final mode need no second look at the end.
        let mut exact: stat::HashSet<&str> = stat::HashSet::default();
        for d in &dirs_sorted {
            if missing.contains(d.as_str()) {
                let mode = tm.dir_mode(d);
                make_dir(&tree, d, mode | 0o700)?;
                if umask.is_some_and(|u| (mode | 0o700) & !u == mode) {
                    exact.insert(d);
                }
            } else if !root_uid {
                ensure_writable(&tree, d)?;
            }
        }
        // Files and symlinks, by directory (one open directory per group, groups in parallel).
        let mut groups: BTreeMap<&str, Vec<&(String, Put)>> = BTreeMap::new();
        for w in &writes {
            let dir = w.0.rsplit_once('/').map_or("", |(d, _)| d);
            groups.entry(dir).or_default().push(w);
        }
        let groups: Vec<(&str, Vec<&(String, Put)>)> = groups.into_iter().collect();
        let bar = Progress::new(self.progress, writes.len(), "checkout");
        let written: Vec<Vec<(String, Option<CacheEntry>)>> = groups
            .par_iter()
            .map(|(dir, items)| {
                let parent = tree.dir(dir)?.ok_or_else(|| not_a_dir(&tree, dir))?;
                items
                    .iter()
                    .map(|(path, w)| {
                        let name = path.rsplit_once('/').map_or(path.as_str(), |(_, n)| n);
                        let entry = match w {
                            Put::File(plan) => {
                                let key = write_file(
                                    repo,
                                    (&tmp_dir, &tmp_fd),
                                    (&parent, name),
                                    path,
                                    plan,
                                    opts.hardlink,
                                    umask,
                                    &tree,
                                )?;
                                Some(plan.cache_entry(key))
                            }
                            Put::Link(target) => {
                                write_link(&tmp_dir, &tmp_fd, &parent, name, path, target, &tree)?;
                                None
                            }
                        };
                        fsutil::crash_point("checkout:file-written");
                        bar.inc();
                        Ok((path.clone(), entry))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        bar.finish();
        // Modes of the directories, deepest first (a read-only parent is set after its
        // children).
        for d in dirs_sorted.iter().rev() {
            if !exact.contains(d.as_str()) {
                set_dir_mode(&tree, d, tm.dir_mode(d))?;
            }
        }
        // Work-tree files are not fsynced (git does not either): after a power cut a file may
        // come back empty, which the next checkout sees as an unsaved change and refuses to
        // overwrite without --force, so nothing is lost silently.
        self.set_tree_base(target)?;
        let written: Vec<(String, Option<CacheEntry>)> = written.into_iter().flatten().collect();
        let report = CheckoutReport {
            written: written.len(),
            removed: removes.len(),
            unchanged: skipped.len(),
        };
        self.load_cache().update_and_save(
            written
                .into_iter()
                .filter_map(|(p, c)| c.map(|c| (p, c)))
                .chain(skipped),
        );
        Ok(report)
    }
}

impl WorkTree<'_> {
    /// What is at `path` now (`key`: its `lstat`, `None` when absent), and whether it holds work
    /// that neither the head nor the last checked-out state has (only such work is protected).
    fn probe_for_checkout<'p>(
        &self,
        tree: &Beneath,
        cache: &StatCache,
        head: &State,
        base: &State,
        path: &'p String,
        key: Option<StatKey>,
    ) -> Result<(&'p String, Found, bool)> {
        let Some(key) = key else {
            return Ok((path, Found::Absent, false));
        };
        let known = node(head, path).or_else(|| node(base, path));
        let (was, known_entry) = match known {
            Some(Node::File(e, _)) => (Was::File(e), Some(e)),
            Some(Node::Link(t)) => (Was::Link(t), None),
            None => (Was::New, None),
        };
        let as_object = stored_as_object(path, matches!(known_entry, Some(Entry::Object(_))), None);
        let found = probe(
            tree,
            path,
            !as_object,
            &|k| cache.lookup(path, k),
            was,
            Some(key),
        )?;
        let here = match &found {
            Found::File(p) => match entry_of(path, as_object, p, known_entry) {
                Ok(e) => Some(Some((e, p.mode))),
                Err(_) => Some(None), // invalid JSON: unsaved work
            },
            Found::Link { target, .. } => {
                let t = target.as_str();
                let unsaved = node(head, path) != Some(Node::Link(t))
                    && node(base, path) != Some(Node::Link(t));
                return Ok((path, found.clone(), unsaved));
            }
            _ => None,
        };
        let unsaved = match here {
            None => false,
            Some(None) => true,
            Some(Some((e, mode))) => {
                let h = Node::File(&e, mode);
                node(head, path).as_ref() != Some(&h) && node(base, path).as_ref() != Some(&h)
            }
        };
        Ok((path, found, unsaved))
    }
}

fn not_a_dir(tree: &Beneath, dir: &str) -> Error {
    Error::Other(format!(
        "'{}' is not a directory (a symlink or a file is in the way); checkout never writes through it",
        tree.root_path().join(dir).display()
    ))
}

/// Remove the file, symlink or special file at `path` (never following anything). Absent, or
/// under something that is not a directory: nothing to do.
fn remove_entry(tree: &Beneath, path: &str) -> Result<()> {
    let Some((dir, name)) = tree.parent(path)? else {
        return Ok(());
    };
    match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        // A directory now stands there: it is not ours to remove.
        Err(Errno::ISDIR | Errno::PERM) => Ok(()),
        Err(e) => Err(Error::io("remove", tree.root_path().join(path), e.into())),
    }
}

/// Remove the directory `path` if it is empty (and a real directory).
fn remove_empty_dir(tree: &Beneath, path: &str) -> Result<()> {
    let Some((dir, name)) = tree.parent(path)? else {
        return Ok(());
    };
    match rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR) {
        Ok(()) => Ok(()),
        Err(Errno::NOENT | Errno::NOTEMPTY | Errno::EXIST | Errno::NOTDIR | Errno::BUSY) => Ok(()),
        Err(e) => Err(Error::io(
            "remove directory",
            tree.root_path().join(path),
            e.into(),
        )),
    }
}

/// The process's umask, from `/proc/self/status` (reading it with umask(2) would change it for
/// every thread for a moment); `None` when unknown.
fn process_umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("Umask:"))?;
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
    })
}

/// Create the directory `path` with `mode` (before the umask), whose parent exists (or a
/// concurrent checkout made it).
fn make_dir(tree: &Beneath, path: &str, mode: u32) -> Result<()> {
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    let dir = tree.dir(parent)?.ok_or_else(|| not_a_dir(tree, parent))?;
    match rustix::fs::mkdirat(&dir, name, rustix::fs::Mode::from_raw_mode(mode as _)) {
        Ok(()) => Ok(()),
        Err(Errno::EXIST) => match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode as _) == FileType::Directory => Ok(()),
            _ => Err(not_a_dir(tree, path)),
        },
        Err(e) => Err(Error::io(
            "create directory",
            tree.root_path().join(path),
            e.into(),
        )),
    }
}

/// Give the owner write and search permission on an existing directory (a read-only one from an
/// earlier checkout), so that this checkout can fill it; the final pass sets its mode.
fn ensure_writable(tree: &Beneath, path: &str) -> Result<()> {
    let Some(fd) = tree.dir(path)? else {
        return Ok(());
    };
    let st = rustix::fs::fstat(&fd)
        .map_err(|e| Error::io("stat", tree.root_path().join(path), e.into()))?;
    let mode = st.st_mode as u32 & 0o7777;
    if mode & 0o300 != 0o300 {
        chmod_fd(&fd, mode | 0o300, &tree.root_path().join(path))?;
    }
    Ok(())
}

fn set_dir_mode(tree: &Beneath, path: &str, mode: u32) -> Result<()> {
    let fd = tree.dir(path)?.ok_or_else(|| not_a_dir(tree, path))?;
    let abs = tree.root_path().join(path);
    let st = rustix::fs::fstat(&fd).map_err(|e| Error::io("stat", &abs, e.into()))?;
    if st.st_mode as u32 & 0o7777 != mode {
        chmod_fd(&fd, mode, &abs)?;
    }
    Ok(())
}

/// How `checkout` writes inline JSON and whether it copies or links objects.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckoutOptions {
    /// Canonical JSON instead of pvr's default 4-space rendering.
    pub canonical: bool,
    /// Hard-link objects instead of copying them (files whose mode is not the object file's
    /// are copied: a link shares the mode).
    pub hardlink: bool,
    /// Overwrite or remove files with uncommitted changes.
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckoutReport {
    pub written: usize,
    pub removed: usize,
    pub unchanged: usize,
}

/// The bytes and mode one file should have after checkout.
struct Planned {
    object: Option<ObjectId>,
    inline: Option<(Vec<u8>, ObjectId)>,
    sha: ObjectId,
    mode: u32,
}

impl Planned {
    fn new(entry: &Entry, mode: u32, canonical: bool) -> Planned {
        match entry {
            Entry::Object(id) => Planned {
                object: Some(*id),
                inline: None,
                sha: *id,
                mode,
            },
            Entry::Inline(v) => {
                let bytes = if canonical {
                    json::render_checkout_canonical(v)
                } else {
                    json::render_checkout(v)
                };
                let sha = ObjectId::hash_bytes(&bytes);
                let value_sha = ObjectId::hash_bytes(&json::to_canonical(v));
                Planned {
                    object: None,
                    inline: Some((bytes, value_sha)),
                    sha,
                    mode,
                }
            }
        }
    }

    fn cache_entry(&self, key: StatKey) -> CacheEntry {
        CacheEntry {
            key,
            sha: self.sha,
            value_sha: self.inline.as_ref().map(|(_, v)| *v),
        }
    }
}

/// Move the temp entry `tmp` (in the temp directory) to `name` in `parent`, replacing what is
/// there (a rename never follows the entry it replaces).
fn rename_into(
    tmp_fd: &rustix::fd::OwnedFd,
    tmp: &Path,
    parent: &rustix::fd::OwnedFd,
    name: &str,
    tree: &Beneath,
    path: &str,
) -> Result<()> {
    let tmp_name = tmp.file_name().expect("a temp file has a name");
    rustix::fs::renameat(tmp_fd, tmp_name, parent, name)
        .map_err(|e| Error::io("rename into place", tree.root_path().join(path), e.into()))
}

/// Write one file via a temp file in the temp directory `tmp` (path and descriptor), with its
/// mode, and rename it to `dest` (parent descriptor and name); objects are hashed while copied
/// and refused when they do not match their id. Returns the new file's stat key.
#[allow(clippy::too_many_arguments)]
fn write_file(
    repo: &Repo,
    tmp: (&Path, &rustix::fd::OwnedFd),
    dest: (&rustix::fd::OwnedFd, &str),
    path: &str,
    plan: &Planned,
    hardlink: bool,
    umask: Option<u32>,
    tree: &Beneath,
) -> Result<StatKey> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let (tmp_dir, tmp_fd) = tmp;
    let tmp = fsutil::temp_path_in(tmp_dir);
    let create = || {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(plan.mode)
            .open(&tmp)
            .ctx("create", &tmp)
    };
    let result = (|| {
        let file = if let Some((bytes, _)) = &plan.inline {
            let mut out = create()?;
            out.write_all(bytes).ctx("write", &tmp)?;
            Some(out)
        } else if let Some(id) = plan.object {
            let store = repo.store();
            let mut src = store.open_required(&id, Some(path))?;
            // A hard link shares the object file's mode: only when that is the wanted one.
            let same_mode = || {
                src.metadata()
                    .is_ok_and(|m| m.permissions().mode() & 0o7777 == plan.mode)
            };
            let (actual, file) = if hardlink && same_mode() {
                let (actual, _) =
                    ObjectId::hash_reader(&mut src).ctx("read object", store.path_of(&id))?;
                if actual == id {
                    fs::hard_link(store.path_of(&id), &tmp).ctx("hard-link object to", &tmp)?;
                }
                (actual, None)
            } else {
                let mut out = create()?;
                let mut hasher = crate::oid::Hasher::new();
                let mut buf = vec![0u8; 128 * 1024];
                loop {
                    let n = src.read(&mut buf).ctx("read object", store.path_of(&id))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    out.write_all(&buf[..n]).ctx("write", &tmp)?;
                }
                (hasher.finish().0, Some(out))
            };
            if actual != id {
                return Err(Error::CorruptObject {
                    id,
                    actual,
                    path: Some(path.to_string()),
                });
            }
            file
        } else {
            None
        };
        let meta = match &file {
            Some(f) => {
                // Exact bits, whatever the umask (and setuid/setgid, which open(2) drops).
                if umask.is_none_or(|u| plan.mode & !u != plan.mode) || plan.mode > 0o777 {
                    f.set_permissions(fs::Permissions::from_mode(plan.mode))
                        .ctx("chmod", &tmp)?;
                }
                f.metadata().ctx("stat", &tmp)?
            }
            None => fs::symlink_metadata(&tmp).ctx("stat", &tmp)?,
        };
        rename_into(tmp_fd, &tmp, dest.0, dest.1, tree, path)?;
        Ok(StatKey::of(&meta))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Create one symlink via a temp name in `tmp_dir` and rename it into place.
fn write_link(
    tmp_dir: &Path,
    tmp_fd: &rustix::fd::OwnedFd,
    parent: &rustix::fd::OwnedFd,
    name: &str,
    path: &str,
    target: &str,
    tree: &Beneath,
) -> Result<()> {
    let tmp = fsutil::temp_path_in(tmp_dir);
    let result = std::os::unix::fs::symlink(target, &tmp)
        .ctx("create symlink", &tmp)
        .and_then(|()| rename_into(tmp_fd, &tmp, parent, name, tree, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

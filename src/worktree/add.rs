//! `add` (stage files, store their objects) and `commit` of a work tree.

use super::beneath::Beneath;
use super::scan::{probe, Was};
use super::*;

/// What `add` staged, and what it found that a state cannot hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Added {
    /// Files, symlinks and empty directories staged, sorted.
    pub paths: Vec<String>,
    /// Entries under the given directories that were left out, with what they are.
    pub unstorable: Vec<(String, &'static str)>,
}

impl WorkTree<'_> {
    /// Stage files, symlinks and empty directories (`add`). `paths` are as the user typed
    /// them, relative to `cwd`; empty means the whole tree. A directory or the whole tree
    /// stages what is not yet tracked under it; a file named explicitly (or matched by a glob)
    /// is staged even when tracked. File objects are stored right away. What a state cannot
    /// hold is refused when named, and reported in `Added::unstorable` when found under a
    /// directory.
    pub fn add(
        &mut self,
        _lock: &RepoLock,
        cwd: &Path,
        paths: &[String],
        raw: bool,
    ) -> Result<Added> {
        let root = self.repo.workdir().to_path_buf();
        let head = self.repo.head_state()?;
        let hm = head.meta();
        let tracked = |p: &str| head.contains(p) || hm.links.contains_key(p);
        let mut picked: BTreeSet<String> = BTreeSet::new();
        let mut picked_meta: BTreeSet<String> = BTreeSet::new();
        let mut unstorable: Vec<(String, &'static str)> = Vec::new();
        let mut untracked_under = |start: &Path,
                                   picked: &mut BTreeSet<String>,
                                   picked_meta: &mut BTreeSet<String>|
         -> Result<()> {
            let listing = walk_entries(&root, start)?;
            picked.extend(listing.files.into_iter().filter(|f| !tracked(f)));
            picked_meta.extend(listing.links.into_iter().filter(|l| !tracked(l)));
            picked_meta.extend(
                listing
                    .empty_dirs
                    .into_iter()
                    .filter(|d| !hm.dirs.contains(d)),
            );
            unstorable.extend(listing.unstorable);
            Ok(())
        };
        if paths.is_empty() {
            untracked_under(&root, &mut picked, &mut picked_meta)?;
        }
        let mut everything: Option<walk::Listing> = None;
        for arg in paths {
            if arg.contains(['*', '?', '[', '{']) {
                let pattern = repo_relative_pattern(&root, cwd, arg)?;
                let glob = globset::Glob::new(&pattern)
                    .map_err(|e| Error::Usage(format!("bad glob '{arg}': {e}")))?
                    .compile_matcher();
                let all = match &everything {
                    Some(l) => l,
                    None => everything.insert(walk_entries(&root, &root)?),
                };
                let files: Vec<&String> = all.files.iter().filter(|f| glob.is_match(f)).collect();
                let links: Vec<&String> = all.links.iter().filter(|f| glob.is_match(f)).collect();
                if files.is_empty() && links.is_empty() {
                    return Err(Error::Usage(format!("'{arg}' did not match any files")));
                }
                picked.extend(files.into_iter().cloned());
                picked_meta.extend(links.into_iter().cloned());
                continue;
            }
            let abs = cwd.join(arg);
            let meta = fs::symlink_metadata(&abs)
                .map_err(|_| Error::Usage(format!("'{arg}' did not match any files")))?;
            // Resolve the directories, never the entry itself: `add link` stages the symlink.
            let canon = match (abs.parent(), abs.file_name()) {
                (Some(parent), Some(name)) => {
                    fs::canonicalize(parent).ctx("resolve", parent)?.join(name)
                }
                _ => fs::canonicalize(&abs).ctx("resolve", &abs)?,
            };
            let rel = canon.strip_prefix(&root).map_err(|_| {
                Error::Usage(format!(
                    "'{arg}' is outside the repository {}",
                    root.display()
                ))
            })?;
            let rel = rel
                .to_str()
                .ok_or_else(|| Error::Usage(format!("'{arg}' has a name that is not UTF-8")))?;
            if rel.split('/').next() == Some(crate::repo::PVR_DIR) {
                return Err(Error::Usage(format!(
                    "'{arg}' is inside .pvr, which is not part of the tree"
                )));
            }
            if crate::state::meta::has_reserved_component(rel) {
                return Err(Error::Usage(format!(
                    "'{arg}' is {}: pvrfs keeps its metadata there and does not store such a file",
                    walk::RESERVED
                )));
            }
            let ft = meta.file_type();
            if ft.is_dir() {
                untracked_under(&canon, &mut picked, &mut picked_meta)?;
            } else if ft.is_file() {
                picked.insert(rel.to_string());
            } else if ft.is_symlink() {
                picked_meta.insert(rel.to_string());
            } else {
                let what = stat::kind_of(rustix::fs::FileType::from_raw_mode(
                    std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) as _,
                ))
                .and_then(stat::unstorable)
                .unwrap_or("not a regular file, symlink or directory");
                return Err(Error::Usage(format!(
                    "'{arg}' is {what}, which a pvr state cannot hold (files, symlinks and directories only)"
                )));
            }
        }
        // A path staged as a file is not also staged as a symlink (and the other way round:
        // the last look decides at commit anyway).
        picked_meta.retain(|p| !picked.contains(p));
        let mut staged = load_staged(self.repo)?;
        let mut staged_meta = load_staged_meta(self.repo)?;
        let store = self.repo.store();
        let tree = Beneath::open(&root)?;
        self.load_cache();
        let cache = self.cache.as_ref().expect("loaded");
        let bar = Progress::new(self.progress, picked.len(), "adding");
        let results: Vec<(String, Probe)> = picked
            .into_par_iter()
            .inspect(|_| bar.inc())
            .map(|path| {
                let abs = root.join(&path);
                let vanished = || Error::Other(format!("'{path}' vanished while adding it"));
                let Some(st) = tree.lstat(&path)? else {
                    return Err(vanished());
                };
                let key = StatKey::from_stat(&st);
                let cached = |k: &StatKey| cache.lookup(&path, k);
                if !raw && is_inline_path(&path) {
                    // inline: only its hash is staged; the value is read at commit
                    return match probe(&tree, &path, false, &cached, Was::New, Some(key))? {
                        Found::File(p) => Ok((path, p)),
                        _ => Err(vanished()),
                    };
                }
                if let Some(hit) = cached(&key) {
                    if store.contains(&hit.sha) {
                        let p = Probe {
                            key: Some(key),
                            sha: hit.sha,
                            value: None,
                            value_sha: hit.value_sha,
                            same_as_head: false,
                            cached: true,
                            mode: key.permissions(),
                        };
                        return Ok((path, p));
                    }
                }
                // Hash while copying into the store: one read per file.
                let file = tree.open_file(&path)?.ok_or_else(vanished)?;
                let (sha, _) = store.put_opened(&abs, file)?;
                let stable = tree
                    .lstat(&path)?
                    .is_some_and(|st| StatKey::from_stat(&st) == key);
                let p = Probe {
                    key: stable.then_some(key),
                    sha,
                    value: None,
                    value_sha: None,
                    same_as_head: false,
                    cached: false,
                    mode: key.permissions(),
                };
                Ok((path, p))
            })
            .collect::<Result<_>>()?;
        bar.finish();
        store.sync()?;
        let mut added = Vec::with_capacity(results.len() + picked_meta.len());
        let mut cache_updates = Vec::new();
        for (path, p) in results {
            staged.insert(
                path.clone(),
                Staged {
                    force_object: raw,
                    sha: p.sha,
                },
            );
            staged_meta.remove(&path);
            if let Some(c) = p.cache_entry() {
                cache_updates.push((path.clone(), c));
            }
            added.push(path);
        }
        for path in picked_meta {
            staged.remove(&path);
            added.push(path.clone());
            staged_meta.insert(path);
        }
        added.sort();
        save_staged(self.repo, &staged)?;
        save_staged_meta(self.repo, &staged_meta)?;
        self.load_cache().update_and_save(cache_updates);
        Ok(Added {
            paths: added,
            unstorable,
        })
    }

    /// Record the working view as a new revision. `log` receives pvr's per-file lines (and
    /// pvrfs's for symlinks, directories and modes).
    pub fn commit(
        &mut self,
        lock: &RepoLock,
        message: &str,
        log: &mut dyn Write,
    ) -> Result<crate::repo::Revision> {
        let scan = self.scan()?;
        let store = self.repo.store();
        let tree = Beneath::open(self.repo.workdir())?;
        // Store the objects of new and changed entries (unchanged ones are already stored).
        let to_store: Vec<(&String, ObjectId)> = scan
            .updates
            .iter()
            .filter_map(|(p, e)| e.object_id().map(|id| (p, id)))
            .collect();
        let bar = Progress::new(self.progress, to_store.len(), "storing");
        to_store.par_iter().try_for_each(|(p, id)| {
            bar.inc();
            let abs = self.abs(p);
            store
                .put_opened_expecting(&abs, id, || {
                    tree.open_file(p)?.ok_or_else(|| {
                        Error::Other(format!(
                            "'{}' vanished or stopped being a regular file while it was committed; run the command again",
                            abs.display()
                        ))
                    })
                })
                .map(|_| ())
        })?;
        bar.finish();
        let state = scan.state()?;
        let rev = self
            .repo
            .commit_state_on(lock, Some(&scan.head), &state, message, None)?;
        fsutil::crash_point("commit:before-clearing-new");
        save_staged(self.repo, &StagedMap::new())?;
        save_staged_meta(self.repo, &BTreeSet::new())?;
        self.set_tree_base(&state)?;
        headindex::save_for(self.repo, &state, rev.state.0);
        let _ = write_commit_log(&scan, self.repo.workdir(), log);
        Ok(rev)
    }
}

fn write_commit_log(scan: &Scan, workdir: &Path, log: &mut dyn Write) -> std::io::Result<()> {
    let repo = workdir.display();
    let kind = |p: &str| match scan.updates.get(p) {
        Some(Entry::Inline(_)) => "inline",
        _ => "raw",
    };
    let (mut committing, mut adding, mut removing) = (Vec::new(), Vec::new(), Vec::new());
    let link = |p: &str| scan.meta.links.get(p);
    for p in &scan.changed {
        if let Some(dir) = p.strip_suffix('/') {
            committing.push(format!(
                "Committing mode {} of {repo}/{dir}/",
                crate::state::meta::format_mode(scan.meta.dir_mode(dir))
            ));
        } else if let Some(t) = link(p) {
            committing.push(format!("Committing symlink {repo}/{p} -> {t}"));
        } else if scan.staged.contains_key(p) {
            adding.push(match scan.updates.get(p) {
                Some(Entry::Object(id)) => format!("Adding raw {repo}/{p} with {id}"),
                _ => format!("Adding inline {p}"),
            });
        } else if scan.updates.contains_key(p) {
            committing.push(format!("Committing ({}): {repo}/{p}", kind(p)));
        } else {
            committing.push(format!(
                "Committing mode {} of {repo}/{p}",
                crate::state::meta::format_mode(scan.meta.file_mode(p))
            ));
        }
    }
    for p in &scan.added {
        if let Some(dir) = p.strip_suffix('/') {
            adding.push(format!("Adding directory {repo}/{dir}/"));
        } else if let Some(t) = link(p) {
            adding.push(format!("Adding symlink {repo}/{p} -> {t}"));
        } else {
            adding.push(match scan.updates.get(p) {
                Some(Entry::Object(id)) => format!("Adding raw {repo}/{p} with {id}"),
                _ => format!("Adding inline {p}"),
            });
        }
    }
    for p in &scan.deleted {
        removing.push(format!("Removing {p}"));
    }
    committing.sort();
    adding.sort();
    for line in committing.iter().chain(&adding).chain(&removing) {
        writeln!(log, "{line}")?;
    }
    Ok(())
}

/// The sorted union of two sorted, duplicate-free lists.
pub(super) fn merge_sorted<'a>(a: &[&'a String], b: &[&'a String]) -> Vec<&'a String> {
    if b.is_empty() {
        return a.to_vec();
    }
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// `pattern` typed in `cwd`, as a glob over repo-relative paths.
pub(super) fn repo_relative_pattern(root: &Path, cwd: &Path, pattern: &str) -> Result<String> {
    let cwd = fs::canonicalize(cwd).ctx("resolve", cwd)?;
    let prefix = cwd.strip_prefix(root).map_err(|_| {
        Error::Usage(format!(
            "the current directory is outside the repository {}",
            root.display()
        ))
    })?;
    let prefix = prefix.to_str().unwrap_or_default();
    let pattern = pattern.trim_start_matches("./");
    Ok(if prefix.is_empty() {
        pattern.to_string()
    } else {
        format!("{prefix}/{pattern}")
    })
}

//! `add` (stage files, store their objects) and `commit` of a work tree.

use super::scan::probe;
use super::*;

impl WorkTree<'_> {
    /// Stage files (`add`). `paths` are as the user typed them, relative to `cwd`; empty means
    /// the whole tree. A directory or the whole tree stages the files not yet tracked; a file
    /// named explicitly (or matched by a glob) is staged even when tracked. Objects are stored
    /// right away. Returns the staged paths.
    pub fn add(
        &mut self,
        _lock: &RepoLock,
        cwd: &Path,
        paths: &[String],
        raw: bool,
    ) -> Result<Vec<String>> {
        let root = self.repo.workdir().to_path_buf();
        let head = self.repo.head_state()?;
        let mut picked: BTreeSet<String> = BTreeSet::new();
        let untracked_under = |start: &Path, picked: &mut BTreeSet<String>| -> Result<()> {
            for f in walk_files(&root, start)? {
                if !head.contains(&f) {
                    picked.insert(f);
                }
            }
            Ok(())
        };
        if paths.is_empty() {
            untracked_under(&root, &mut picked)?;
        }
        let mut all_files: Option<Vec<String>> = None;
        for arg in paths {
            if arg.contains(['*', '?', '[', '{']) {
                let pattern = repo_relative_pattern(&root, cwd, arg)?;
                let glob = globset::Glob::new(&pattern)
                    .map_err(|e| Error::Usage(format!("bad glob '{arg}': {e}")))?
                    .compile_matcher();
                let files = match &all_files {
                    Some(f) => f,
                    None => all_files.insert(walk_files(&root, &root)?),
                };
                let before = picked.len();
                picked.extend(files.iter().filter(|f| glob.is_match(f)).cloned());
                if picked.len() == before && !files.iter().any(|f| glob.is_match(f)) {
                    return Err(Error::Usage(format!("'{arg}' did not match any files")));
                }
                continue;
            }
            let abs = cwd.join(arg);
            let meta = fs::symlink_metadata(&abs)
                .map_err(|_| Error::Usage(format!("'{arg}' did not match any files")))?;
            let canon = fs::canonicalize(&abs).ctx("resolve", &abs)?;
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
            if meta.is_dir() {
                untracked_under(&canon, &mut picked)?;
            } else if meta.is_file() {
                picked.insert(rel.to_string());
            } else {
                return Err(Error::Usage(format!(
                    "'{arg}' is not a regular file or directory (pvr states hold regular files only)"
                )));
            }
        }
        let mut staged = load_staged(self.repo)?;
        let store = self.repo.store();
        self.load_cache();
        let cache = self.cache.as_ref().expect("loaded");
        let bar = Progress::new(self.progress, picked.len(), "adding");
        let results: Vec<(String, Probe)> = picked
            .into_par_iter()
            .inspect(|_| bar.inc())
            .map(|path| {
                let abs = root.join(&path);
                let vanished = || Error::Other(format!("'{path}' vanished while adding it"));
                if !raw && is_inline_path(&path) {
                    // inline: only its hash is staged; the value is read at commit
                    let p = probe(&root, &path, false, &|k| cache.lookup(&path, k), None, None)?
                        .ok_or_else(vanished)?;
                    return Ok((path, p));
                }
                let meta = fs::symlink_metadata(&abs).map_err(|_| vanished())?;
                let key = StatKey::of(&meta);
                if let Some(hit) = cache.lookup(&path, &key) {
                    if store.contains(&hit.sha) {
                        let p = Probe {
                            key: Some(key),
                            sha: hit.sha,
                            value: None,
                            value_sha: hit.value_sha,
                            cached: true,
                        };
                        return Ok((path, p));
                    }
                }
                // Hash while copying into the store: one read per file.
                let (sha, _) = store.put_file(&abs)?;
                let stable = fs::symlink_metadata(&abs).is_ok_and(|m| StatKey::of(&m) == key);
                let p = Probe {
                    key: stable.then_some(key),
                    sha,
                    value: None,
                    value_sha: None,
                    cached: false,
                };
                Ok((path, p))
            })
            .collect::<Result<_>>()?;
        bar.finish();
        store.sync()?;
        let mut added = Vec::with_capacity(results.len());
        let mut cache_updates = Vec::new();
        for (path, p) in results {
            staged.insert(
                path.clone(),
                Staged {
                    force_object: raw,
                    sha: p.sha,
                },
            );
            if let Some(c) = p.cache_entry() {
                cache_updates.push((path.clone(), c));
            }
            added.push(path);
        }
        save_staged(self.repo, &staged)?;
        self.load_cache().update_and_save(cache_updates);
        Ok(added)
    }

    /// Record the working view as a new revision. `log` receives pvr's per-file lines.
    pub fn commit(
        &mut self,
        lock: &RepoLock,
        message: &str,
        log: &mut dyn Write,
    ) -> Result<crate::repo::Revision> {
        let scan = self.scan()?;
        let store = self.repo.store();
        // Store the objects of new and changed entries (unchanged ones are already stored).
        let to_store: Vec<(&String, ObjectId)> = scan
            .updates
            .iter()
            .filter_map(|(p, e)| e.object_id().map(|id| (p, id)))
            .collect();
        let bar = Progress::new(self.progress, to_store.len(), "storing");
        to_store.par_iter().try_for_each(|(p, id)| {
            bar.inc();
            store.put_file_expecting(&self.abs(p), id).map(|_| ())
        })?;
        bar.finish();
        let state = scan.state()?;
        let rev = self
            .repo
            .commit_state_on(lock, Some(&scan.head), &state, message, None)?;
        fsutil::crash_point("commit:before-clearing-new");
        save_staged(self.repo, &StagedMap::new())?;
        self.set_tree_base(&state)?;
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
    let mut committing: Vec<String> = scan
        .changed
        .iter()
        .filter(|p| !scan.staged.contains_key(*p))
        .map(|p| format!("Committing ({}): {repo}/{p}", kind(p)))
        .collect();
    let mut adding: Vec<String> = scan
        .added
        .iter()
        .chain(scan.changed.iter().filter(|p| scan.staged.contains_key(*p)))
        .map(|p| match scan.updates.get(p) {
            Some(Entry::Object(id)) => format!("Adding raw {repo}/{p} with {id}"),
            _ => format!("Adding inline {p}"),
        })
        .collect();
    committing.sort();
    adding.sort();
    for line in committing.iter().chain(&adding).chain(
        &scan
            .deleted
            .iter()
            .map(|p| format!("Removing {p}"))
            .collect::<Vec<_>>(),
    ) {
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

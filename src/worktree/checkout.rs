//! `checkout`: make the work tree equal to a state, file by file through `.pvr/pvrfs/tmp/`.

use super::add::merge_sorted;
use super::scan::{entry_of, probe, stored_as_object};
use super::*;

impl WorkTree<'_> {
    /// Make the work tree equal to `target` (see `CheckoutOptions`). The head is not moved.
    pub fn checkout(
        &mut self,
        _lock: &RepoLock,
        target: &State,
        opts: &CheckoutOptions,
    ) -> Result<CheckoutReport> {
        let repo = self.repo;
        let head = repo.head_state()?;
        let base = self.tree_base().unwrap_or_default();
        let staged = load_staged(repo)?;
        // Usually these are (nearly) the same 100k keys: a linear merge, not a set of 400k.
        let mut paths: Vec<&String> = head.entries_map().keys().collect();
        for keys in [
            base.entries_map().keys().collect::<Vec<_>>(),
            target.entries_map().keys().collect(),
            staged.keys().collect(),
        ] {
            paths = merge_sorted(&paths, &keys);
        }
        self.load_cache();
        let cache = self.cache.as_ref().expect("loaded");
        // What is on disk now, and whether it holds work that neither the head nor the last
        // checked-out state has (only such work is protected).
        let current: Vec<(&String, Option<Probe>, bool)> = paths
            .into_par_iter()
            .map(|path| {
                let known = head.get(path).or(base.get(path));
                let as_object = stored_as_object(path, known, None);
                let hv = match known {
                    Some(Entry::Inline(v)) => Some(v),
                    _ => None,
                };
                let p = probe(
                    self.repo.workdir(),
                    path,
                    !as_object,
                    &|k| cache.lookup(path, k),
                    hv,
                    None,
                )?;
                let unsaved = match &p {
                    None => false,
                    Some(p) => entry_of(path, as_object, p).map_or(true, |e| {
                        head.get(path) != Some(&e) && base.get(path) != Some(&e)
                    }),
                };
                Ok((path, p, unsaved))
            })
            .collect::<Result<_>>()?;
        let mut writes: Vec<(String, Planned)> = Vec::new();
        let mut removes: Vec<String> = Vec::new();
        let mut conflicts: Vec<String> = Vec::new();
        let mut skipped: Vec<(String, CacheEntry)> = Vec::new();
        for (path, p, unsaved) in current {
            match target.get(path) {
                Some(entry) => {
                    let plan = Planned::new(entry, opts.canonical);
                    match &p {
                        Some(p) if p.sha == plan.sha => {
                            if let Some(key) = p.key {
                                skipped.push((path.clone(), plan.cache_entry(key)));
                            }
                        }
                        _ if unsaved && !opts.force => conflicts.push(path.clone()),
                        _ => writes.push((path.clone(), plan)),
                    }
                }
                None if (head.contains(path) || base.contains(path)) && p.is_some() => {
                    if unsaved && !opts.force {
                        conflicts.push(path.clone());
                    } else {
                        removes.push(path.clone());
                    }
                }
                None => {}
            }
        }
        if !conflicts.is_empty() {
            let shown: Vec<&str> = conflicts.iter().take(10).map(String::as_str).collect();
            return Err(Error::WouldLoseChanges(format!(
                "checkout would overwrite uncommitted changes in {} file(s): {}{}; commit them, or use --force to discard them",
                conflicts.len(),
                shown.join(", "),
                if conflicts.len() > 10 { ", ..." } else { "" }
            )));
        }
        // Every object must be there before anything is touched.
        for (path, plan) in &writes {
            if let Some(id) = plan.object {
                if !repo.store().contains(&id) {
                    return Err(repo.store().missing(&id, Some(path)));
                }
            }
        }
        let tmp_dir = repo.ext_dir().join("tmp");
        fs::create_dir_all(&tmp_dir).ctx("create", &tmp_dir)?;
        fsutil::clean_temp_files(&tmp_dir, std::time::Duration::ZERO);
        for path in &removes {
            let abs = self.abs(path);
            match fs::remove_file(&abs) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", &abs, e)),
            }
            fsutil::crash_point("checkout:removed");
            remove_empty_parents(repo.workdir(), &abs);
        }
        let dirs: BTreeSet<PathBuf> = writes
            .iter()
            .filter_map(|(p, _)| self.abs(p).parent().map(Path::to_path_buf))
            .collect();
        for d in &dirs {
            fs::create_dir_all(d).ctx("create directory", d)?;
        }
        let bar = Progress::new(self.progress, writes.len(), "checkout");
        let written: Vec<(String, CacheEntry)> = writes
            .par_iter()
            .map(|(path, plan)| {
                let dest = self.abs(path);
                let key = write_file(repo, &tmp_dir, &dest, path, plan, opts.hardlink)?;
                fsutil::crash_point("checkout:file-written");
                bar.inc();
                Ok((path.clone(), plan.cache_entry(key)))
            })
            .collect::<Result<_>>()?;
        bar.finish();
        // Work-tree files are not fsynced (git does not either): after a power cut a file may
        // come back empty, which the next checkout sees as an unsaved change and refuses to
        // overwrite without --force, so nothing is lost silently.
        self.set_tree_base(target)?;
        let report = CheckoutReport {
            written: written.len(),
            removed: removes.len(),
            unchanged: skipped.len(),
        };
        self.load_cache()
            .update_and_save(written.into_iter().chain(skipped));
        Ok(report)
    }
}

/// Remove now-empty directories from `file`'s parent up to (not including) `root`.
fn remove_empty_parents(root: &Path, file: &Path) {
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

/// How `checkout` writes inline JSON and whether it copies or links objects.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckoutOptions {
    /// Canonical JSON instead of pvr's default 4-space rendering.
    pub canonical: bool,
    /// Hard-link objects instead of copying them.
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

/// The bytes one file should have after checkout.
struct Planned {
    object: Option<ObjectId>,
    inline: Option<(Vec<u8>, ObjectId)>,
    sha: ObjectId,
}

impl Planned {
    fn new(entry: &Entry, canonical: bool) -> Planned {
        match entry {
            Entry::Object(id) => Planned {
                object: Some(*id),
                inline: None,
                sha: *id,
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

/// Write one file via a temp file in `tmp_dir`; objects are hashed while copied and refused
/// when they do not match their id. Returns the new file's stat key.
fn write_file(
    repo: &Repo,
    tmp_dir: &Path,
    dest: &Path,
    path: &str,
    plan: &Planned,
    hardlink: bool,
) -> Result<StatKey> {
    let tmp = fsutil::temp_path_in(tmp_dir);
    let result = (|| {
        if let Some((bytes, _)) = &plan.inline {
            fs::write(&tmp, bytes).ctx("write", &tmp)?;
        } else if let Some(id) = plan.object {
            let store = repo.store();
            let mut src = store.open_required(&id, Some(path))?;
            let actual = if hardlink {
                let (actual, _) =
                    ObjectId::hash_reader(&mut src).ctx("read object", store.path_of(&id))?;
                if actual == id {
                    fs::hard_link(store.path_of(&id), &tmp).ctx("hard-link object to", &tmp)?;
                }
                actual
            } else {
                let mut out = File::create(&tmp).ctx("create", &tmp)?;
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
                hasher.finish().0
            };
            if actual != id {
                return Err(Error::CorruptObject {
                    id,
                    actual,
                    path: Some(path.to_string()),
                });
            }
        }
        let meta = fs::symlink_metadata(&tmp).ctx("stat", &tmp)?;
        fs::rename(&tmp, dest).ctx("rename into place", dest)?;
        Ok(StatKey::of(&meta))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

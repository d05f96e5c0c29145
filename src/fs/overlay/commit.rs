//! Commit, status and diff of an overlay: base state + changes → new `State`.
//!
//! Only the roots of the affected paths are visited (O(change)): base keys under each root are
//! removed, then the files under the root in the view are added back. Upper files are hashed (and
//! stored on commit); base content that moved keeps its object id without reading it, except when
//! it crosses the inline rule (`x.txt` ↔ `x.json`), where it is converted as `pvr add` would.
//!
//! The tree's metadata (`state::meta`) is carried the same way: under each root, the view's
//! permission bits, symlinks and empty directories replace the base's (`fs::change` settles
//! the directories a change empties or fills, and the documents).
//!
//! What the pvr format cannot hold is reported as a warning and stays in the overlay, so the
//! view never changes under the user: the mode of the top directory, owners other than the
//! mounting user, hard links (each name is stored with the same content), FIFOs, sockets and
//! device nodes (not stored at all; a directory holding nothing else is stored empty). Special
//! files never show in `status` or `diff`; one that took the place of a stored file shows as
//! that file's deletion.

use super::{Body, Content, Overlay, DIR_MODE, ROOT_INO};
use crate::error::{Error, Result};
use crate::fs::change::{self, Built, Changes, View};
pub use crate::fs::change::{CommitReport, Committed, StatusLine};
use crate::repo::Revision;
use crate::state::{is_inline_path, Entry, State};
use std::collections::{BTreeSet, HashMap};

/// The overlay's view, as `Built::finish` asks it.
struct OverlayView<'o>(&'o Overlay);

impl View for OverlayView<'_> {
    fn is_dir(&self, path: &str) -> Result<bool> {
        let ov = self.0;
        Ok(matches!(
            ov.resolve(path).map(|i| &ov.nodes[&i].body),
            Some(Body::Dir(_))
        ))
    }

    fn stores_nothing_under(&self, path: &str) -> Result<bool> {
        let ov = self.0;
        Ok(match ov.resolve(path).map(|i| &ov.nodes[&i].body) {
            Some(Body::Dir(children)) => children
                .values()
                .all(|c| matches!(ov.nodes[c].body, Body::Special(..))),
            _ => false,
        })
    }
}
use std::fs;

struct Walk<'a> {
    store: bool,
    built: &'a mut Built,
    /// Nodes already turned into an entry (hard links), for their content.
    done: HashMap<u64, Entry>,
}

impl Changes for Overlay {
    fn build(&self, store: bool) -> Result<Built> {
        let mut built = Built::new(&self.base);
        let roots = self.roots();
        for r in &roots {
            built.replace_under(&self.base, r);
        }
        let root = &self.nodes[&ROOT_INO];
        if root.mode != DIR_MODE {
            built.warnings.push(format!(
                "mode {:04o} of the top directory is not stored (a tree's top directory has no recorded mode)",
                root.mode
            ));
        }
        let mut walk = Walk {
            store,
            built: &mut built,
            done: HashMap::new(),
        };
        for r in &roots {
            if let Some(ino) = self.resolve(r) {
                self.collect(ino, r, &mut walk)?;
            }
        }
        built.finish(&self.base, &roots, &OverlayView(self))?;
        Ok(built)
    }

    fn base_state(&self) -> &State {
        &self.base
    }
}

impl Overlay {
    /// Add the view of `ino` at `path` to the walk. Returns false when nothing was stored for it
    /// (a special file).
    fn collect(&self, ino: u64, path: &str, w: &mut Walk<'_>) -> Result<bool> {
        let node = &self.nodes[&ino];
        let euid = rustix::process::geteuid().as_raw();
        let egid = rustix::process::getegid().as_raw();
        if node.uid != euid || node.gid != egid {
            w.built.foreign_owner(path, node.uid, node.gid);
        }
        match &node.body {
            Body::Dir(children) => {
                let mut stored = false;
                for (name, child) in children {
                    stored |= self.collect(*child, &super::join(path, name), w)?;
                }
                Ok(w.built.dir(path, node.mode, !stored))
            }
            Body::File(_) => {
                if node.links.len() > 1 {
                    self.unstorable(
                        w,
                        path,
                        format!("'{path}' is a hard link; it is stored as a separate copy"),
                    );
                }
                let entry = self.file_entry(ino, path, w)?;
                Ok(w.built.insert(path, entry, node.mode))
            }
            Body::Symlink(target) => {
                if node.links.len() > 1 {
                    self.unstorable(
                        w,
                        path,
                        format!("'{path}' is a hard link; it is stored as a separate copy"),
                    );
                }
                Ok(w.built.symlink(path, target))
            }
            Body::Special(kind, _) => {
                self.unstorable(
                    w,
                    path,
                    format!(
                        "{} '{path}' is not stored (the pvr format has no special files)",
                        kind.describe()
                    ),
                );
                Ok(false)
            }
        }
    }

    fn unstorable(&self, w: &mut Walk<'_>, path: &str, warning: String) {
        w.built.unstorable(path, warning);
    }

    /// The entry of the file `ino` stored at `path` (which decides the inline rule).
    fn file_entry(&self, ino: u64, path: &str, w: &mut Walk<'_>) -> Result<Entry> {
        if let Some(e) = w.done.get(&ino) {
            if is_inline_path(path) == matches!(e, Entry::Inline(_)) {
                return Ok(e.clone());
            }
        }
        let Body::File(content) = &self.nodes[&ino].body else {
            unreachable!("file_entry of a file");
        };
        let entry = match content {
            Content::Base(e) if self.base.get(path) == Some(e) => e.clone(),
            Content::Base(Entry::Inline(v)) if is_inline_path(path) => Entry::Inline(v.clone()),
            Content::Base(Entry::Object(id)) if !is_inline_path(path) => Entry::Object(*id),
            Content::Base(Entry::Object(id)) => {
                let bytes = self.repo.store().read_verified(id, Some(path))?;
                self.json_entry(&bytes, path, w.store)?
            }
            Content::Base(Entry::Inline(v)) => self.blob_entry(&self.render(v), w.store)?,
            Content::Upper(u) => {
                let up = self.upper_path(*u);
                change::stable_file_entry(
                    || self.open_upper(*u, false),
                    &up,
                    path,
                    w.store.then(|| self.repo.store()),
                )?
            }
        };
        w.done.insert(ino, entry.clone());
        Ok(entry)
    }

    fn json_entry(&self, bytes: &[u8], path: &str, store: bool) -> Result<Entry> {
        change::json_entry(store.then(|| self.repo.store()), bytes, path)
    }

    fn blob_entry(&self, bytes: &[u8], store: bool) -> Result<Entry> {
        change::blob_entry(store.then(|| self.repo.store()), bytes)
    }

    /// Turn base + overlay into the next revision, then rebase the overlay onto it. On any error
    /// (invalid JSON, head moved, I/O) nothing is committed and the overlay is unchanged.
    pub fn commit(&mut self, message: &str) -> Result<CommitReport> {
        self.commit_inner(message, false)
            .map(Committed::into_report)
    }

    /// `commit`, unless nothing a revision can hold changed (then nothing is written).
    pub fn commit_changes(&mut self, message: &str) -> Result<Committed> {
        self.commit_inner(message, true)
    }

    fn commit_inner(&mut self, message: &str, skip_unchanged: bool) -> Result<Committed> {
        let (revision, built) = self.commit_only_if(message, skip_unchanged)?;
        let Some(revision) = revision else {
            return Ok(Committed::Unchanged {
                warnings: built.warnings,
            });
        };
        crate::fsutil::crash_point("overlay:committed");
        let status = built.status();
        let warnings = built.warnings.clone();
        self.rebase(revision.clone(), built)?;
        Ok(Committed::Revision(CommitReport {
            revision,
            status,
            warnings,
        }))
    }

    /// Commit base + overlay as the next revision. On success the in-memory base already is the
    /// new state (the caller must `rebase`); on error nothing changed.
    #[cfg(test)]
    pub(super) fn commit_only(&mut self, message: &str) -> Result<(Revision, Built)> {
        let (revision, built) = self.commit_only_if(message, false)?;
        Ok((revision.expect("an empty commit was allowed"), built))
    }

    /// `commit_only`; with `skip_unchanged`, no revision (nothing written) when nothing a
    /// revision can hold changed.
    fn commit_only_if(
        &mut self,
        message: &str,
        skip_unchanged: bool,
    ) -> Result<(Option<Revision>, Built)> {
        let lock = self.repo.lock()?;
        let built = self.build(true)?;
        if skip_unchanged && built.status().is_empty() {
            return Ok((None, built));
        }
        match change::commit_built(
            &self.repo,
            &lock,
            &mut self.base,
            self.base_rev,
            &built,
            message,
        ) {
            Ok(revision) => Ok((Some(revision), built)),
            // The head moved since the base (another commit, or pvr): nothing was written.
            Err(Error::Conflict(msg)) => Err(Error::Conflict(format!(
                "{msg} (the overlay is kept; `pvrfs reset --mount` discards it)"
            ))),
            Err(e) => Err(e),
        }
    }

    /// Turn the base into the built state: remove `old`, insert `new` (validated).
    fn apply_built(&mut self, built: &Built) -> Result<()> {
        built
            .apply_to(&mut self.base)
            .inspect_err(|_| built.revert(&mut self.base))
    }

    /// Undo `apply_built` (also after a partial one).
    fn revert_built(&mut self, built: &Built) {
        built.revert(&mut self.base);
    }

    /// Make `revision` the base: the in-memory base already is its state (`apply_built`); keep in
    /// the overlay only what that state cannot reproduce, plus files open for writing.
    pub(super) fn rebase(&mut self, revision: Revision, built: Built) -> Result<()> {
        self.base_rev = revision.rev;
        self.base_state_id = revision.state.0;
        let mut retain: BTreeSet<String> = built.retain.into_iter().collect();
        for ino in self.uppers.clone() {
            let paths = self.link_paths(ino);
            let Some(first) = paths.first() else { continue };
            let Body::File(Content::Upper(u)) = self.nodes[&ino].body else {
                continue;
            };
            let entry = self.base.get(first).cloned();
            let same_bytes = match &entry {
                Some(Entry::Inline(v)) => {
                    let mut bytes = Vec::new();
                    let read = self
                        .open_upper(u, false)
                        .ok()
                        .and_then(|mut f| std::io::Read::read_to_end(&mut f, &mut bytes).ok());
                    read.is_some() && bytes == self.render(v)
                }
                Some(Entry::Object(_)) => true,
                None => false,
            };
            if self.writers.contains_key(&ino) || paths.len() > 1 || !same_bytes {
                retain.extend(paths);
                continue;
            }
            // The upper file's mtime was the truth; the node keeps it from now on.
            let mtime = fs::symlink_metadata(self.upper_path(u)).and_then(|m| m.modified());
            let node = self.nodes.get_mut(&ino).expect("exists");
            node.body = Body::File(Content::Base(entry.expect("checked")));
            if let Ok(t) = mtime {
                node.mtime = t;
            }
            self.uppers.remove(&ino);
        }
        // A kept path whose directories the new base lacks (a symlink alone in a new directory)
        // is anchored at its topmost such directory, so a snapshot recreates them first.
        self.affected = retain.iter().map(|p| self.anchor(p)).collect();
        // The new snapshot no longer names the converted upper files; compaction deletes them.
        self.compact().map_err(|e| {
            Error::Other(format!(
                "revision {} was committed, but the overlay could not be rebased onto it (the next load finishes that): {e}",
                self.base_rev
            ))
        })
    }

    /// The topmost ancestor-or-self of `path` that the base does not have.
    fn anchor(&self, path: &str) -> String {
        for (i, _) in path.match_indices('/') {
            if !self.base_has(&path[..i]) {
                return path[..i].to_string();
            }
        }
        path.to_string()
    }

    /// A commit that crashed after the repository's commit point but before the overlay was
    /// rebased leaves an overlay whose view *is* the new head: finish the rebase.
    pub(super) fn finish_interrupted_commit(&mut self) -> Result<()> {
        let latest = self.repo.latest()?;
        if latest.rev == self.base_rev || latest.parent != Some(self.base_rev) {
            return Ok(());
        }
        let built = self.build(false)?;
        self.apply_built(&built)?;
        if self.base.state_id() == latest.state.0 {
            self.rebase(latest, built)?;
        } else {
            self.revert_built(&built);
        }
        Ok(())
    }
}

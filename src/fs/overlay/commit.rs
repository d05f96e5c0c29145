//! Commit, status and diff of an overlay: base state + changes → new `State`.
//!
//! Only the roots of the affected paths are visited (O(change)): base keys under each root are
//! removed, then the files under the root in the view are added back. Upper files are hashed (and
//! stored on commit); base content that moved keeps its object id without reading it, except when
//! it crosses the inline rule (`x.txt` ↔ `x.json`), where it is converted as `pvr add` would.
//!
//! What the pvr format cannot hold is reported as a warning and stays in the overlay, so the
//! view never changes under the user: empty directories, modes other than 0644/0755, owners,
//! symlinks (a symlink to a file inside the tree is *also* stored as a copy of the file's
//! content, as pvr does; a dangling symlink or one to a directory is not stored), hard links
//! (each name is stored with the same content), FIFOs, sockets and device nodes (not stored at
//! all; a symlink to one is not stored either). Special files never show in `status` or
//! `diff`; one that took the place of a stored file shows as that file's deletion.

use super::{Body, Content, Overlay, DIR_MODE, FILE_MODE, ROOT_INO};
use crate::error::{Error, Result};
use crate::fs::change::{self, Built};
pub use crate::fs::change::{CommitReport, StatusLine};
use crate::json::{self, Value};
use crate::repo::Revision;
use crate::state::{is_inline_path, Entry, State};
use std::collections::{BTreeSet, HashMap};
use std::fs;

struct Walk<'a> {
    store: bool,
    built: &'a mut Built,
    /// Nodes already turned into an entry (hard links), for their content.
    done: HashMap<u64, Entry>,
}

impl Overlay {
    /// Compute the new state; `store` puts new content into the object store (commit) instead of
    /// only hashing it (status, diff).
    pub(super) fn build(&self, store: bool) -> Result<Built> {
        let mut built = Built::default();
        let roots = self.roots();
        for r in &roots {
            built.replace_under(&self.base, r);
        }
        let root = &self.nodes[&ROOT_INO];
        if root.mode != DIR_MODE {
            built.warnings.push(format!(
                "mode {:04o} of the top directory is not stored (the pvr format has no modes)",
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
        // A directory emptied by removing what was under it is itself unaffected: only its
        // parent-of-a-root position reveals it.
        let mut parents = BTreeSet::new();
        for r in &roots {
            if let Some((parent, _)) = r.rsplit_once('/') {
                parents.insert(parent);
            }
        }
        for p in parents {
            let empty = self
                .resolve(p)
                .is_some_and(|i| matches!(&self.nodes[&i].body, Body::Dir(c) if c.is_empty()));
            if empty && !walk.built.retain.iter().any(|r| r == p) {
                self.unstorable(
                    &mut walk,
                    p,
                    format!(
                        "empty directory '{p}' is not stored (the pvr format has no directories)"
                    ),
                );
            }
        }
        Ok(built)
    }

    fn collect(&self, ino: u64, path: &str, w: &mut Walk<'_>) -> Result<()> {
        let node = &self.nodes[&ino];
        let euid = rustix::process::geteuid().as_raw();
        let egid = rustix::process::getegid().as_raw();
        if node.uid != euid || node.gid != egid {
            w.built.retain.push(path.to_string());
        }
        match &node.body {
            Body::Dir(children) => {
                if node.mode != DIR_MODE {
                    self.unstorable(w, path, format!("mode {:04o} of directory '{path}' is not stored (the pvr format has no modes)", node.mode));
                }
                if children.is_empty() {
                    self.unstorable(
                        w,
                        path,
                        format!("empty directory '{path}' is not stored (the pvr format has no directories)"),
                    );
                }
                for (name, child) in children {
                    self.collect(*child, &super::join(path, name), w)?;
                }
            }
            Body::File(_) => {
                if node.mode != FILE_MODE {
                    self.unstorable(w, path, format!("mode {:04o} of '{path}' is not stored (the pvr format has no modes)", node.mode));
                }
                if node.links.len() > 1 {
                    self.unstorable(w, path, format!("'{path}' is a hard link; it is stored as a separate copy"));
                }
                let entry = self.file_entry(ino, path, w)?;
                self.insert(w, path, entry)?;
            }
            Body::Symlink(target) => match self.follow(path, target) {
                Some(file) => {
                    self.unstorable(w, path, format!("symlink '{path}' -> '{target}' is stored as a copy of its target's content"));
                    let entry = self.file_entry(file, path, w)?;
                    self.insert(w, path, entry)?;
                }
                None => self.unstorable(w, path, format!("symlink '{path}' -> '{target}' is not stored (it does not point to a file in the tree)")),
            },
            Body::Special(kind, _) => self.unstorable(
                w,
                path,
                format!(
                    "{} '{path}' is not stored (the pvr format has no special files)",
                    kind.describe()
                ),
            ),
        }
        Ok(())
    }

    fn unstorable(&self, w: &mut Walk<'_>, path: &str, warning: String) {
        w.built.unstorable(path, warning);
    }

    fn insert(&self, w: &mut Walk<'_>, path: &str, entry: Entry) -> Result<()> {
        w.built.insert(path, entry);
        Ok(())
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
                change::stable_file_entry(&up, path, w.store.then(|| self.repo.store()))?
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

    /// Follow a symlink inside the tree to a regular file (`None`: dangling, a directory, a
    /// loop, or leaving the tree).
    fn follow(&self, link_path: &str, target: &str) -> Option<u64> {
        let mut stack = vec![ROOT_INO];
        for seg in super::split(link_path)
            .0
            .split('/')
            .filter(|s| !s.is_empty())
        {
            stack.push(self.resolve_child(*stack.last()?, seg)?);
        }
        let mut todo: Vec<String> = Vec::new();
        let mut hops = 0;
        push_target(&mut todo, target)?;
        while let Some(seg) = todo.pop() {
            match seg.as_str() {
                "" | "." => {}
                ".." => {
                    if stack.len() < 2 {
                        return None;
                    }
                    stack.pop();
                }
                name => {
                    let child = self.resolve_child(*stack.last()?, name)?;
                    match &self.nodes[&child].body {
                        Body::Dir(_) => stack.push(child),
                        Body::File(_) => return todo.is_empty().then_some(child),
                        Body::Special(..) => return None,
                        Body::Symlink(t) => {
                            hops += 1;
                            if hops > 40 {
                                return None;
                            }
                            push_target(&mut todo, t)?;
                        }
                    }
                }
            }
        }
        None
    }

    fn resolve_child(&self, dir: u64, name: &str) -> Option<u64> {
        match &self.nodes.get(&dir)?.body {
            Body::Dir(c) => c.get(name).copied(),
            _ => None,
        }
    }

    /// The changed paths, as `pvrfs status` prints them (A, then D, then C; sorted in each).
    pub fn status(&self) -> Result<Vec<StatusLine>> {
        Ok(self.build(false)?.status())
    }

    /// `status` as text, one `X path` line each.
    pub fn status_text(&self) -> Result<String> {
        Ok(change::status_text(&self.status()?))
    }

    /// The RFC 7396 merge patch from the base state to the view (`{}` when clean).
    pub fn diff(&self) -> Result<Value> {
        Ok(self.build(false)?.merge_diff())
    }

    /// `diff` as `pvr diff` prints it (tab-indented, `{}` when clean).
    pub fn diff_text(&self) -> Result<String> {
        Ok(json::render_diff(&self.diff()?))
    }

    /// The state a commit would make now (base + overlay), without storing anything: what
    /// `pvrfs json`, `diff --format rfc6902` and `diff REV` inside a mount compare. O(tree): it
    /// copies the base.
    pub fn view_state(&self) -> Result<State> {
        let built = self.build(false)?;
        let mut state = self.base.clone();
        built.apply_to(&mut state)?;
        Ok(state)
    }

    /// Warnings a commit would give now.
    pub fn warnings(&self) -> Result<Vec<String>> {
        Ok(self.build(false)?.warnings)
    }

    /// Turn base + overlay into the next revision, then rebase the overlay onto it. On any error
    /// (invalid JSON, head moved, I/O) nothing is committed and the overlay is unchanged.
    pub fn commit(&mut self, message: &str) -> Result<CommitReport> {
        let (revision, built) = self.commit_only(message)?;
        crate::fsutil::crash_point("overlay:committed");
        let status = built.status();
        let warnings = built.warnings.clone();
        self.rebase(revision.clone(), built)?;
        Ok(CommitReport {
            revision,
            status,
            warnings,
        })
    }

    /// Commit base + overlay as the next revision. On success the in-memory base already is the
    /// new state (the caller must `rebase`); on error nothing changed.
    pub(super) fn commit_only(&mut self, message: &str) -> Result<(Revision, Built)> {
        let lock = self.repo.lock()?;
        let built = self.build(true)?;
        match change::commit_built(
            &self.repo,
            &lock,
            &mut self.base,
            self.base_rev,
            &built,
            message,
        ) {
            Ok(revision) => Ok((revision, built)),
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
                    fs::read(self.upper_path(u)).ok().as_deref() == Some(&self.render(v)[..])
                }
                Some(Entry::Object(_)) => true,
                None => false,
            };
            if self.writers.contains_key(&ino) || paths.len() > 1 || !same_bytes {
                retain.extend(paths);
                continue;
            }
            // The upper file's mtime was the truth; the node keeps it from now on.
            let mtime = fs::metadata(self.upper_path(u)).and_then(|m| m.modified());
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

fn push_target(todo: &mut Vec<String>, target: &str) -> Option<()> {
    if target.starts_with('/') {
        return None; // absolute: outside the tree, whatever the mount point
    }
    todo.extend(target.split('/').rev().map(str::to_string));
    Some(())
}

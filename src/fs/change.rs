//! A change set against a base state, and committing it: what both copy-on-write backends (the
//! FUSE overlay, `fs::overlay`, and the kernel-overlayfs upper layer, `fs::upper`) share.
//!
//! Model: a backend knows the *roots* of what changed (paths under which the view may differ
//! from the base). [`Built`] holds, under those roots only, the base's entries (`old`) and the
//! view's (`new`): the new state is the base with `old` removed and `new` inserted, so neither
//! building nor committing copies or walks the base (O(change)). Content is turned into entries
//! by the inline rule of `pvr add` ([`file_entry_from_bytes`], [`blob_entry`]).
//!
//! The tree's metadata (`state::meta`: permission bits, symlinks, empty directories) travels
//! the same way. The backend's walk records the view's metadata under the roots in
//! [`Built::view_meta`]; [`Built::finish`] makes the new state's metadata from the base's
//! outside the roots and the view's under them, settles the directories a change can empty or
//! fill without being under a root itself (the parents of roots, asked of the backend through
//! [`View`]), and computes `status` (a symlink or mode change is a change; a directory's path
//! ends in `/`). The documents are written anew only when the metadata changed.
//!
//! [`commit_built`] writes the revision under the repository lock: the base is edited in place
//! into the new state, `Repo::commit_state_with_diff` commits it with the RFC 6902 diff made
//! from the changed keys alone, and on any error the base is put back as it was.

use crate::error::{Error, Result};
use crate::json::{self, Value};
use crate::oid::ObjectId;
use crate::repo::{Repo, RepoLock, Revision};
use crate::state::meta::has_reserved_component;
use crate::state::{Entry, State, TreeMeta, META_NAME};
use crate::store::Store;
use std::collections::{BTreeMap, BTreeSet};

/// One line of `status`: `A` added, `D` deleted, `C` changed (a directory's path ends in `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine {
    pub code: char,
    pub path: String,
}

/// What a commit made and what it could not store.
#[derive(Debug, Clone)]
pub struct CommitReport {
    pub revision: Revision,
    pub status: Vec<StatusLine>,
    pub warnings: Vec<String>,
}

/// What a commit that skips an empty change did (`commit_changes` of a backend): the mount's
/// `pvrfs commit` makes no empty revision (as pvr), and deciding that from the commit's own
/// build reads each changed file once, where a status before the commit read it twice.
#[derive(Debug, Clone)]
pub enum Committed {
    Revision(CommitReport),
    /// Nothing a revision can hold changed; nothing was written.
    Unchanged {
        warnings: Vec<String>,
    },
}

impl Committed {
    /// The report of a commit that was allowed to be empty (such a commit always makes a
    /// revision).
    pub fn into_report(self) -> CommitReport {
        match self {
            Committed::Revision(report) => report,
            Committed::Unchanged { .. } => unreachable!("a commit allowed to be empty made none"),
        }
    }
}

/// The change from a base to a view, as state entries and metadata under the changed roots,
/// plus what the format could not hold. Made by [`Built::new`], filled by a backend's walk,
/// completed by [`Built::finish`].
#[derive(Debug)]
pub struct Built {
    /// The base's entries under the affected roots (what the view replaces).
    pub old: BTreeMap<String, Entry>,
    /// The view's entries under the affected roots.
    pub new: BTreeMap<String, Entry>,
    /// Every state key under an affected root, before or after.
    pub keys: BTreeSet<String>,
    pub warnings: Vec<String>,
    /// Paths whose view the new state cannot reproduce (the FUSE overlay keeps them).
    pub retain: Vec<String>,
    /// The view's metadata under the roots, as the backend's walk found it.
    pub view_meta: TreeMeta,
    /// The new state's metadata (the base's until `finish`).
    meta: TreeMeta,
    /// The base's metadata and documents, and the new documents (the old ones when the
    /// metadata did not change).
    old_meta: TreeMeta,
    old_docs: BTreeMap<String, Entry>,
    new_docs: BTreeMap<String, Entry>,
    /// What `status` shows (computed by `finish`, against the base it was built on).
    status: Vec<StatusLine>,
}

/// What a backend's view is, where [`Built::finish`] needs it outside the walked roots.
pub trait View {
    /// Whether the view has a directory at `path`.
    fn is_dir(&self, path: &str) -> Result<bool>;
    /// Whether the view has a directory at `path` holding nothing a state stores (nothing, or
    /// only special files); false when `path` is no directory.
    fn stores_nothing_under(&self, path: &str) -> Result<bool>;
}

/// What both copy-on-write backends answer from one built change set: `build` is theirs, the
/// questions asked of it (status, diff, the view's state, warnings) are the same for both.
pub trait Changes {
    /// Compute the change from the base to the view; `store` puts new content into the object
    /// store (commit) instead of only hashing it (status, diff).
    fn build(&self, store: bool) -> Result<Built>;

    /// The state the change is against (the mount's base revision).
    fn base_state(&self) -> &State;

    /// The changed paths, as `pvrfs status` prints them (A, then D, then C; sorted in each).
    fn status(&self) -> Result<Vec<StatusLine>> {
        Ok(self.build(false)?.status())
    }

    /// `status` as text, one `X path` line each.
    fn status_text(&self) -> Result<String> {
        Ok(status_text(&self.status()?))
    }

    /// The RFC 7396 merge patch from the base state to the view (`{}` when clean).
    fn diff(&self) -> Result<Value> {
        Ok(self.build(false)?.merge_diff())
    }

    /// `diff` as `pvr diff` prints it (tab-indented, `{}` when clean).
    fn diff_text(&self) -> Result<String> {
        Ok(json::render_diff(&self.diff()?))
    }

    /// The state a commit would make now (base + view), without storing anything: what
    /// `pvrfs json`, `diff --format rfc6902` and `diff REV` inside a mount compare. O(tree): it
    /// copies the base.
    fn view_state(&self) -> Result<State> {
        let built = self.build(false)?;
        let mut state = self.base_state().clone();
        built.apply_to(&mut state)?;
        Ok(state)
    }

    /// Warnings a commit would give now.
    fn warnings(&self) -> Result<Vec<String>> {
        Ok(self.build(false)?.warnings)
    }
}

/// Does `path` equal `root` or lie under it (`""` is the root of everything)?
pub fn under(path: &str, root: &str) -> bool {
    root.is_empty()
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Remove from `meta` everything at or under `root` (O(what is removed)).
fn remove_under(meta: &mut TreeMeta, root: &str) {
    fn keys_under<'a, I: Iterator<Item = &'a String>>(root: &str, range: I) -> Vec<String> {
        range.take_while(|k| under(k, root)).cloned().collect()
    }
    for k in keys_under(root, meta.modes.range(root.to_string()..).map(|(k, _)| k)) {
        meta.modes.remove(&k);
    }
    for k in keys_under(root, meta.links.range(root.to_string()..).map(|(k, _)| k)) {
        meta.links.remove(&k);
    }
    for k in keys_under(root, meta.dirs.range(root.to_string()..)) {
        meta.dirs.remove(&k);
    }
}

/// What a state has at a path, as `status` compares it.
#[derive(PartialEq)]
enum Leaf<'a> {
    File(&'a Entry, u32),
    Link(&'a str),
}

fn leaf<'a>(files: &'a BTreeMap<String, Entry>, m: &'a TreeMeta, k: &str) -> Option<Leaf<'a>> {
    match files.get(k) {
        Some(e) => Some(Leaf::File(e, m.file_mode(k))),
        None => m.links.get(k).map(|t| Leaf::Link(t)),
    }
}

impl Built {
    /// An empty change against `base`.
    pub fn new(base: &State) -> Built {
        Built {
            old: BTreeMap::new(),
            new: BTreeMap::new(),
            keys: BTreeSet::new(),
            warnings: Vec::new(),
            retain: Vec::new(),
            view_meta: TreeMeta::default(),
            meta: base.meta().clone(),
            old_meta: base.meta().clone(),
            old_docs: base.docs().clone(),
            new_docs: base.docs().clone(),
            status: Vec::new(),
        }
    }

    /// Record that everything `base` has at or under `root` is replaced by the view.
    pub fn replace_under(&mut self, base: &State, root: &str) {
        for (k, e) in entries_under(base, root) {
            self.keys.insert(k.clone());
            self.old.insert(k.clone(), e.clone());
        }
    }

    /// Whether `path` is one the tree cannot hold (a reserved name in it); if so, it is
    /// reported and kept out of the change.
    fn refused(&mut self, path: &str) -> bool {
        if !has_reserved_component(path) {
            return false;
        }
        self.unstorable(
            path,
            format!("'{path}' is not stored ('{META_NAME}' is a reserved name: pvrfs keeps a tree's metadata there)"),
        );
        true
    }

    /// The view holds `entry` at `path` (a regular file) with permission bits `mode`.
    /// Returns whether it is stored (not a reserved name).
    pub fn insert(&mut self, path: &str, entry: Entry, mode: u32) -> bool {
        if self.refused(path) {
            return false;
        }
        self.keys.insert(path.to_string());
        self.new.insert(path.to_string(), entry);
        self.view_meta.set_mode(path, mode, false);
        true
    }

    /// The view holds a symlink to `target` at `path`. Returns whether it is stored.
    pub fn symlink(&mut self, path: &str, target: &str) -> bool {
        if self.refused(path) {
            return false;
        }
        self.view_meta
            .links
            .insert(path.to_string(), target.to_string());
        true
    }

    /// The view holds a directory at `path` with permission bits `mode`; `empty`: nothing
    /// under it is stored. Returns whether it is stored (the top directory is not: a tree's
    /// top has no recorded mode).
    pub fn dir(&mut self, path: &str, mode: u32, empty: bool) -> bool {
        if path.is_empty() || self.refused(path) {
            return false;
        }
        self.view_meta.set_mode(path, mode, true);
        if empty {
            self.view_meta.dirs.insert(path.to_string());
        }
        true
    }

    /// `path` belongs to `uid:gid`, not to the overlay's user: reported (owners are not
    /// recorded) and kept in the overlay.
    pub fn foreign_owner(&mut self, path: &str, uid: u32, gid: u32) {
        self.unstorable(
            path,
            format!(
                "owner {uid}:{gid} of '{path}' is not stored (pvrfs records no owners; a mount shows its --uid/--gid)"
            ),
        );
    }

    /// A warning about something the format cannot hold at `path`.
    pub fn unstorable(&mut self, path: &str, warning: String) {
        self.warnings.push(warning);
        self.retain.push(path.to_string());
    }

    /// Complete the change once the backend has walked `roots` (the minimal roots it replaced
    /// with `replace_under`): the new metadata, its documents, and `status`.
    pub fn finish(&mut self, base: &State, roots: &[String], view: &dyn View) -> Result<()> {
        let in_roots = |p: &str| roots.iter().any(|r| under(p, r));
        let view_meta = std::mem::take(&mut self.view_meta);
        let mut meta = self.old_meta.clone();
        for r in roots {
            remove_under(&mut meta, r);
        }
        meta.links.extend(view_meta.links);
        meta.dirs.extend(view_meta.dirs);
        meta.modes.extend(view_meta.modes);
        // A directory emptied by removing what was under it is itself unaffected, and so is one
        // that received its first entry: only their parent-of-a-root position reveals them.
        let parents: BTreeSet<&str> = roots
            .iter()
            .filter_map(|r| r.rsplit_once('/').map(|(p, _)| p))
            .collect();
        for p in parents {
            if in_roots(p) {
                continue;
            }
            if view.stores_nothing_under(p)? {
                meta.dirs.insert(p.to_string());
            } else {
                meta.dirs.remove(p);
            }
        }
        self.new_docs = if meta == self.old_meta {
            self.old_docs.clone()
        } else {
            meta.documents()
                .into_iter()
                .map(|(k, v)| (k, Entry::Inline(v)))
                .collect()
        };
        self.meta = meta;
        self.status = self.status_lines(base, view)?;
        Ok(())
    }

    /// The status lines against `base` (before a commit applies the change): A, then D, then
    /// C, each sorted; a kind change (file ↔ symlink) or a mode change is a change.
    fn status_lines(&self, base: &State, view: &dyn View) -> Result<Vec<StatusLine>> {
        let (old_m, new_m) = (&self.old_meta, &self.meta);
        let mut groups: [BTreeSet<String>; 3] = Default::default();
        let link_paths: BTreeSet<&String> = old_m
            .links
            .iter()
            .chain(&new_m.links)
            .filter(|(k, _)| old_m.links.get(*k) != new_m.links.get(*k))
            .map(|(k, _)| k)
            .collect();
        for k in self.keys.iter().chain(link_paths) {
            match (leaf(&self.old, old_m, k), leaf(&self.new, new_m, k)) {
                (None, Some(_)) => groups[0].insert(k.clone()),
                (Some(_), None) => groups[1].insert(k.clone()),
                (Some(x), Some(y)) if x != y => groups[2].insert(k.clone()),
                _ => false,
            };
        }
        for d in new_m.dirs.difference(&old_m.dirs) {
            groups[0].insert(format!("{d}/"));
        }
        for d in old_m.dirs.difference(&new_m.dirs) {
            if !view.is_dir(d)? {
                groups[1].insert(format!("{d}/"));
            }
        }
        let base_files = base.entries_map();
        let mode_paths: BTreeSet<&String> = old_m
            .modes
            .iter()
            .chain(&new_m.modes)
            .filter(|(k, _)| old_m.modes.get(*k) != new_m.modes.get(*k))
            .map(|(k, _)| k)
            .collect();
        for d in mode_paths {
            let was_dir = !base_files.contains_key(d.as_str()) && old_m.is_dir(base_files, d);
            if was_dir && old_m.dir_mode(d) != new_m.dir_mode(d) && view.is_dir(d)? {
                groups[2].insert(format!("{d}/"));
            }
        }
        Ok(groups
            .into_iter()
            .zip(['A', 'D', 'C'])
            .flat_map(|(paths, code)| paths.into_iter().map(move |path| StatusLine { code, path }))
            .collect())
    }

    /// Turn `state` (the base) into the built state: remove `old`, insert `new`, set the
    /// metadata (validated; on error `state` is left part-way, see [`Built::revert`]).
    pub fn apply_to(&self, state: &mut State) -> Result<()> {
        for k in self.old.keys() {
            state.remove(k);
        }
        for (k, e) in &self.new {
            state.insert(k, e.clone())?;
        }
        state.set_meta(self.meta.clone())
    }

    /// Undo `apply_to` (also after a partial one).
    pub fn revert(&self, state: &mut State) {
        for k in self.new.keys() {
            state.remove(k);
        }
        for (k, e) in &self.old {
            // Those entries were valid together with the rest of the base.
            state
                .insert(k, e.clone())
                .expect("a base entry is valid in its base");
        }
        state.restore_meta(self.old_docs.clone(), self.old_meta.clone());
    }

    /// The changed paths, as `pvrfs status` prints them (A, then D, then C; sorted in each).
    pub fn status(&self) -> Vec<StatusLine> {
        self.status.clone()
    }

    /// The files and metadata documents before and after, in one map each.
    fn with_docs(&self) -> [BTreeMap<&String, &Entry>; 2] {
        [
            self.old.iter().chain(&self.old_docs).collect(),
            self.new.iter().chain(&self.new_docs).collect(),
        ]
    }

    /// The RFC 7396 merge patch from the base to the view (`{}` when clean).
    pub fn merge_diff(&self) -> Value {
        let pick = |m: &BTreeMap<&String, &Entry>| {
            Value::Object(
                m.iter()
                    .map(|(k, e)| ((*k).clone(), e.to_value()))
                    .collect(),
            )
        };
        let [old, new] = self.with_docs();
        crate::patch::merge_diff(&pick(&old), &pick(&new))
    }

    /// The RFC 6902 patch from the base to the built state, from the changed keys and
    /// documents only (O(change); whole values are replaced where `json_patch::diff` would
    /// descend into them, equally valid).
    pub fn json_patch(&self) -> Value {
        let [old, new] = self.with_docs();
        let keys: BTreeSet<&String> = old.keys().chain(new.keys()).copied().collect();
        let mut ops = Vec::new();
        for k in keys {
            let path = format!("/{}", k.replace('~', "~0").replace('/', "~1"));
            let op = |op: &str, value: Option<&Entry>| {
                let mut m = serde_json::Map::new();
                m.insert("op".into(), Value::String(op.into()));
                m.insert("path".into(), Value::String(path.clone()));
                if let Some(e) = value {
                    m.insert("value".into(), e.to_value());
                }
                Value::Object(m)
            };
            match (old.get(k), new.get(k)) {
                (Some(_), None) => ops.push(op("remove", None)),
                (None, Some(e)) => ops.push(op("add", Some(e))),
                (Some(a), Some(b)) if a != b => ops.push(op("replace", Some(b))),
                _ => {}
            }
        }
        Value::Array(ops)
    }
}

/// `status` lines as text, one `X path` line each.
pub fn status_text(lines: &[StatusLine]) -> String {
    lines
        .iter()
        .map(|l| format!("{} {}\n", l.code, l.path))
        .collect()
}

/// The entries of `state` at `root` or under `root/`.
pub fn entries_under<'s>(state: &'s State, root: &str) -> Vec<(&'s String, &'s Entry)> {
    let map = state.entries_map();
    let mut out: Vec<_> = map.get_key_value(root).into_iter().collect();
    let prefix = format!("{root}/");
    out.extend(
        map.range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix)),
    );
    out
}

/// Whether `state` has a directory at `path` (a key under `path/`; `""` is the root).
pub fn has_dir(state: &State, path: &str) -> bool {
    if path.is_empty() {
        return true;
    }
    let prefix = format!("{path}/");
    state
        .entries_map()
        .range(prefix.clone()..)
        .next()
        .is_some_and(|(k, _)| k.starts_with(&prefix))
}

/// The entry of a `.json` file's bytes: its parsed value, as `pvr add` stores it. `store`: put
/// new content into the object store (commit) instead of only hashing it (status, diff).
pub fn json_entry(store: Option<&Store>, bytes: &[u8], path: &str) -> Result<Entry> {
    let v = json::parse(bytes).map_err(|source| Error::InvalidJson {
        path: path.to_string(),
        source,
    })?;
    // A JSON string of 64 hex digits would read back as an object id (pvr quirk 5): store
    // such a file's bytes as an object instead, so its content survives.
    if json::is_object_id_string(&v) {
        return blob_entry(store, bytes);
    }
    Ok(Entry::Inline(v))
}

/// The entry of bytes stored as an object.
pub fn blob_entry(store: Option<&Store>, bytes: &[u8]) -> Result<Entry> {
    Ok(Entry::Object(match store {
        Some(s) => s.put_bytes(bytes)?,
        None => ObjectId::hash_bytes(bytes),
    }))
}

/// The entry of a file's bytes at `path` (which decides the inline rule).
pub fn file_entry_from_bytes(store: Option<&Store>, bytes: &[u8], path: &str) -> Result<Entry> {
    if crate::state::is_inline_path(path) {
        json_entry(store, bytes, path)
    } else {
        blob_entry(store, bytes)
    }
}

/// The entry of the file at `disk` (an upper file) seen at state path `path`, read again if it
/// changed while it was read (a writer still at work: its size, mtime or ctime moved): what is
/// stored is always one whole version of the file, or the commit is refused with a message
/// naming the file. Writes through a shared `mmap` do not move ctime at once and are not
/// detected.
///
/// `open` opens it (again, for each attempt): the caller's way of opening an upper file only as
/// a regular file and never through a symbolic link (`fsutil::open_regular`), since an upper
/// layer handed over with a repository may hold a planted link or FIFO.
pub fn stable_file_entry(
    open: impl Fn() -> Result<std::fs::File>,
    disk: &std::path::Path,
    path: &str,
    store: Option<&Store>,
) -> Result<Entry> {
    stable_file_entry_and_meta(open, disk, path, store).map(|(entry, _)| entry)
}

/// [`stable_file_entry`], with the attributes of the version that was read.
pub fn stable_file_entry_and_meta(
    open: impl Fn() -> Result<std::fs::File>,
    disk: &std::path::Path,
    path: &str,
    store: Option<&Store>,
) -> Result<(Entry, std::fs::Metadata)> {
    use crate::error::IoContext;
    use std::os::unix::fs::MetadataExt;
    let key = |m: &std::fs::Metadata| {
        (
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        )
    };
    for attempt in 0..5u64 {
        let f = open()?;
        let before = f.metadata().ctx("stat", disk)?;
        let entry = if crate::state::is_inline_path(path) {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut &f, &mut bytes).ctx("read", disk)?;
            json_entry(store, &bytes, path)?
        } else if let Some(s) = store {
            // The store names its input vaguely; a read error is the upper file's.
            let stored = s.put_reader(&f).map_err(|e| match e {
                Error::Io {
                    op: "read input for",
                    source,
                    ..
                } => Error::io("read", disk, source),
                other => other,
            })?;
            Entry::Object(stored.0)
        } else {
            Entry::Object(ObjectId::hash_reader(&f).ctx("read", disk)?.0)
        };
        let after = f.metadata().ctx("stat", disk)?;
        if key(&before) == key(&after) {
            return Ok((entry, after));
        }
        std::thread::sleep(std::time::Duration::from_millis(20 * (attempt + 1)));
    }
    Err(Error::Other(format!(
        "'{path}' kept changing while it was being committed (is something still writing it?); nothing was committed, try again"
    )))
}

/// Commit `base` + `built` as the revision after `base_rev`, under `lock`. On success `base`
/// is the new state; on any error (head moved, invalid state, I/O) nothing is committed and
/// `base` is as it was.
pub fn commit_built(
    repo: &Repo,
    lock: &RepoLock,
    base: &mut State,
    base_rev: u64,
    built: &Built,
    message: &str,
) -> Result<Revision> {
    let diff = built.json_patch();
    // The base is edited in place into the new state (O(change)) and put back on error.
    if let Err(e) = built.apply_to(base) {
        built.revert(base);
        return Err(e);
    }
    let committed = repo.commit_state_with_diff(lock, base, message, Some(base_rev), Some(diff));
    committed.inspect_err(|_| built.revert(base))
}

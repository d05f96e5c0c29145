//! A change set against a base state, and committing it: what both copy-on-write backends (the
//! FUSE overlay, `fs::overlay`, and the kernel-overlayfs upper layer, `fs::upper`) share.
//!
//! Model: a backend knows the *roots* of what changed (paths under which the view may differ
//! from the base). [`Built`] holds, under those roots only, the base's entries (`old`) and the
//! view's (`new`): the new state is the base with `old` removed and `new` inserted, so neither
//! building nor committing copies or walks the base (O(change)). Content is turned into entries
//! by the inline rule of `pvr add` ([`file_entry_from_bytes`], [`blob_entry`]).
//!
//! [`commit_built`] writes the revision under the repository lock: the base is edited in place
//! into the new state, `Repo::commit_state_with_diff` commits it with the RFC 6902 diff made
//! from the changed keys alone, and on any error the base is put back as it was.

use crate::error::{Error, Result};
use crate::json::{self, Value};
use crate::oid::ObjectId;
use crate::repo::{Repo, RepoLock, Revision};
use crate::state::{Entry, State};
use crate::store::Store;
use std::collections::{BTreeMap, BTreeSet};

/// One line of `status`: `A` added, `D` deleted, `C` changed.
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

/// The change from a base to a view, as state entries under the changed roots, plus what the
/// format could not hold.
#[derive(Debug, Default)]
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
}

impl Built {
    /// Record that everything `base` has at or under `root` is replaced by the view.
    pub fn replace_under(&mut self, base: &State, root: &str) {
        for (k, e) in entries_under(base, root) {
            self.keys.insert(k.clone());
            self.old.insert(k.clone(), e.clone());
        }
    }

    /// The view holds `entry` at `path`.
    pub fn insert(&mut self, path: &str, entry: Entry) {
        self.keys.insert(path.to_string());
        self.new.insert(path.to_string(), entry);
    }

    /// A warning about something the format cannot hold at `path`.
    pub fn unstorable(&mut self, path: &str, warning: String) {
        self.warnings.push(warning);
        self.retain.push(path.to_string());
    }

    /// Turn `state` (the base) into the built state: remove `old`, insert `new` (validated;
    /// on error `state` is left part-way, see [`Built::revert`]).
    pub fn apply_to(&self, state: &mut State) -> Result<()> {
        for k in self.old.keys() {
            state.remove(k);
        }
        for (k, e) in &self.new {
            state.insert(k, e.clone())?;
        }
        Ok(())
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
    }

    /// The changed paths, as `pvrfs status` prints them (A, then D, then C; sorted in each).
    pub fn status(&self) -> Vec<StatusLine> {
        let mut groups: [Vec<String>; 3] = Default::default();
        for k in &self.keys {
            match (self.old.get(k), self.new.get(k)) {
                (None, Some(_)) => groups[0].push(k.clone()),
                (Some(_), None) => groups[1].push(k.clone()),
                (Some(a), Some(b)) if a != b => groups[2].push(k.clone()),
                _ => {}
            }
        }
        groups
            .into_iter()
            .zip(['A', 'D', 'C'])
            .flat_map(|(paths, code)| paths.into_iter().map(move |path| StatusLine { code, path }))
            .collect()
    }

    /// The RFC 7396 merge patch from the base to the view (`{}` when clean).
    pub fn merge_diff(&self) -> Value {
        let pick = |m: &BTreeMap<String, Entry>| {
            Value::Object(m.iter().map(|(k, e)| (k.clone(), e.to_value())).collect())
        };
        crate::patch::merge_diff(&pick(&self.old), &pick(&self.new))
    }

    /// The RFC 6902 patch from the base to the built state, from the changed keys only
    /// (O(change); whole values are replaced where `json_patch::diff` would descend into them,
    /// equally valid).
    pub fn json_patch(&self) -> Value {
        let mut ops = Vec::new();
        for k in &self.keys {
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
            match (self.old.get(k), self.new.get(k)) {
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
pub fn stable_file_entry(
    disk: &std::path::Path,
    path: &str,
    store: Option<&Store>,
) -> Result<Entry> {
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
        let f = std::fs::File::open(disk).ctx("open", disk)?;
        let before = f.metadata().ctx("stat", disk)?;
        let entry = if crate::state::is_inline_path(path) {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut &f, &mut bytes).ctx("read", disk)?;
            json_entry(store, &bytes, path)?
        } else if let Some(s) = store {
            Entry::Object(s.put_reader(&f)?.0)
        } else {
            Entry::Object(ObjectId::hash_reader(&f).ctx("read", disk)?.0)
        };
        let after = f.metadata().ctx("stat", disk)?;
        if key(&before) == key(&after) {
            return Ok(entry);
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

//! The state of a revision: `#spec`, one entry per regular file, and the tree's metadata.
//!
//! Model (DESIGN §1): a flat JSON object whose keys are `/`-separated paths relative to the work
//! directory. A key ending in `.json` holds the file's parsed JSON inline, unless its value is a
//! 64-hex string (then it names an object, as `add --raw` makes it); every other key holds an
//! object id. Keys whose last component is `.pvrfs-meta.json` are not files: they are the
//! metadata documents of the tree (permission bits, symlinks, empty directories; see `meta`).
//! A `State` keeps them apart (`docs`), parsed into one [`TreeMeta`] (`meta`): `iter`, `get`,
//! `insert` and friends see files only; `to_value`, the canonical bytes and diffs see both.
//!
//! Invariants of a `State` value (enforced by `State::from_value`, `State::insert` and
//! `State::set_meta`, the only ways in): every key is a valid relative path; no key is a
//! directory prefix of another; object ids are 64 lowercase hex; the documents parse and agree
//! with the files (`meta` module docs), and `meta` is what they say. Entries are kept in a
//! `BTreeMap`, i.e. in code-point order, which is the canonical order, so serialising is a
//! single ordered walk. Removing a file can leave `meta` describing it: whoever removes files
//! sets the metadata again (`set_meta`), and `Repo` checks every state it commits
//! (`check_meta`).

pub mod meta;

pub use meta::{is_meta_key, TreeMeta, META_NAME};

use crate::error::{Error, Result};
use crate::json::{self, MemberValue, Value};
use crate::oid::ObjectId;
use std::collections::BTreeMap;

/// The `#spec` pvr writes by default.
pub const DEFAULT_SPEC: &str = "pantavisor-service-system@1";
/// The key holding the spec.
pub const SPEC_KEY: &str = "#spec";

/// What a state records for one file.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// The file's bytes live in the object store under this id.
    Object(ObjectId),
    /// A `.json` file stored as its parsed value (canonical numbers, see `json`).
    Inline(Value),
}

impl Entry {
    /// The JSON value this entry has in the state object.
    pub fn to_value(&self) -> Value {
        match self {
            Entry::Object(id) => Value::String(id.to_hex()),
            Entry::Inline(v) => v.clone(),
        }
    }

    pub fn object_id(&self) -> Option<ObjectId> {
        match self {
            Entry::Object(id) => Some(*id),
            Entry::Inline(_) => None,
        }
    }
}

/// True when `path` names a file whose content pvr inlines (a `.json` suffix).
pub fn is_inline_path(path: &str) -> bool {
    path.ends_with(".json")
}

/// The first path component no state key may have: the repository's own metadata directory
/// (pvr's layout: `W/.pvr/json`, `new`, `config`, `objects/`; pvrfs's `.pvr/pvrfs/`). A state
/// that could name a file there would let whoever publishes it rewrite the repository's
/// metadata on `clone`/`get`/`import`/`apply`/`checkout` (poisoned objects, a changed
/// `ObjectsDir`), so such keys are refused wherever a state is read or built.
pub const METADATA_DIR: &str = ".pvr";

/// Check a state key as a relative path; `Err(reason)` says what is wrong with it.
///
/// This is the one check every key goes through (state parsing, `State::insert`, `.pvr/new`),
/// so every entry point that accepts a state refuses the same keys.
pub fn validate_path(key: &str) -> std::result::Result<(), &'static str> {
    // Every key of a state is checked on every load (100k of them for a status): one pass over
    // the bytes answers for the usual key; anything it doubts gets the rules below, in their
    // order, for the exact reason.
    if plainly_valid_path(key.as_bytes()) {
        return Ok(());
    }
    check_path_rules(key)
}

/// `validate_path`'s rules one by one (the first broken one is the reason given).
fn check_path_rules(key: &str) -> std::result::Result<(), &'static str> {
    if key.is_empty() {
        return Err("empty path");
    }
    if key.split('/').next() == Some(METADATA_DIR) {
        return Err(
            "'.pvr' is the repository's own metadata directory; no file of a state may lie in it",
        );
    }
    if key.starts_with('/') {
        return Err("absolute path");
    }
    if key.contains('\0') {
        return Err("NUL byte in path");
    }
    if key.len() > MAX_PATH_BYTES {
        return Err("longer than 4095 bytes (PATH_MAX): no file system can hold it");
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err("empty path segment"),
            "." | ".." => return Err("'.' or '..' path segment"),
            s if s.len() > MAX_NAME_BYTES => {
                return Err("a path segment longer than 255 bytes (NAME_MAX): no file system can hold it, a mount could not list its directory")
            }
            _ => {}
        }
    }
    Ok(())
}

/// True when `validate_path` has nothing against `key` (false may still be valid: it is then
/// asked in full).
fn plainly_valid_path(key: &[u8]) -> bool {
    let segment_ok =
        |s: &[u8]| !s.is_empty() && s != b"." && s != b".." && s.len() <= MAX_NAME_BYTES;
    if key.is_empty() || key.len() > MAX_PATH_BYTES {
        return false;
    }
    let mut start = 0;
    for (i, &c) in key.iter().enumerate() {
        match c {
            0 => return false,
            b'/' => {
                let segment = &key[start..i];
                if !segment_ok(segment) || (start == 0 && segment == METADATA_DIR.as_bytes()) {
                    return false;
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = &key[start..];
    segment_ok(last) && !(start == 0 && last == METADATA_DIR.as_bytes())
}

/// Longest path segment of a key (`NAME_MAX`): longer names exist on no Linux file system; the
/// kernel refuses a FUSE directory listing holding one (the whole directory would fail).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest key (`PATH_MAX` less its NUL).
pub const MAX_PATH_BYTES: usize = 4095;

/// One revision's content.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct State {
    /// `#spec`; `None` only for a state that came without one (pvr always writes it).
    pub spec: Option<String>,
    /// Regular files.
    entries: BTreeMap<String, Entry>,
    /// Metadata documents (`.pvrfs-meta.json` keys), as stored.
    docs: BTreeMap<String, Entry>,
    /// What the documents say.
    meta: TreeMeta,
}

impl State {
    /// An empty state with the given spec (what `init` creates).
    pub fn empty(spec: &str) -> Self {
        State {
            spec: Some(spec.to_string()),
            ..Default::default()
        }
    }

    /// Parse state JSON bytes. `origin` names the source in errors (a file, a revision, a URL).
    ///
    /// Reads the top-level object member by member straight into entries (no intermediate map
    /// of the whole tree); behaves exactly as `json::parse` followed by `from_value`.
    pub fn from_json_bytes(bytes: &[u8], origin: &str) -> Result<Self> {
        let not_json = |e: json::SyntaxError| Error::CorruptState {
            origin: origin.to_string(),
            detail: format!("not valid JSON: {e}"),
        };
        match json::parse_object_members(bytes).map_err(not_json)? {
            Some(members) => Self::from_members(members, origin),
            // Not an object: let the general path produce its error.
            None => Self::from_value(json::parse(bytes).map_err(not_json)?, origin),
        }
    }

    /// `from_value` for members in input order (see `json::parse_object_members`).
    fn from_members(mut members: Vec<(String, MemberValue)>, origin: &str) -> Result<Self> {
        // Canonical input is strictly sorted already; anything else (pvr-made or hostile input)
        // is put in the order `from_value` would see: sorted, duplicate keys last one wins.
        if !members.windows(2).all(|w| w[0].0 < w[1].0) {
            // Stable, so among equal keys the last one in the input stays last.
            members.sort_by(|a, b| a.0.cmp(&b.0));
            let mut kept: Vec<(String, MemberValue)> = Vec::with_capacity(members.len());
            for m in members {
                match kept.last_mut() {
                    Some(last) if last.0 == m.0 => *last = m,
                    _ => kept.push(m),
                }
            }
            members = kept;
        }
        let mut spec = None;
        let mut entries = Vec::with_capacity(members.len());
        for (key, v) in members {
            if key == SPEC_KEY {
                match v {
                    MemberValue::Id(id) => spec = Some(id.to_hex()),
                    MemberValue::Value(Value::String(s)) => spec = Some(s),
                    MemberValue::Value(_) => {
                        return Err(Error::BadEntry {
                            origin: origin.to_string(),
                            key,
                            reason: "#spec must be a string".into(),
                        })
                    }
                }
                continue;
            }
            if let Err(reason) = validate_path(&key) {
                return Err(bad(origin, &key, reason));
            }
            let entry = match v {
                // 64 lowercase hex is an object id under every key, `.json` ones included.
                MemberValue::Id(id) => Entry::Object(id),
                MemberValue::Value(v) => {
                    entry_from_value(&key, v).map_err(|reason| Error::BadEntry {
                        origin: origin.to_string(),
                        key: key.clone(),
                        reason,
                    })?
                }
            };
            entries.push((key, entry));
        }
        Self::from_sorted(spec, entries, origin)
    }

    /// The final step of both loaders: `entries` are strictly sorted and individually valid.
    fn from_sorted(
        spec: Option<String>,
        entries: Vec<(String, Entry)>,
        origin: &str,
    ) -> Result<Self> {
        // Sorted input: collecting builds each map in bulk (O(n)), inserting would not.
        // (documents are few or none: without any, the entries are taken as they are)
        let (docs, files): (Vec<_>, Vec<_>) = if entries.iter().any(|(key, _)| is_meta_key(key)) {
            entries.into_iter().partition(|(key, _)| is_meta_key(key))
        } else {
            (Vec::new(), entries)
        };
        let mut state = State {
            spec,
            entries: files.into_iter().collect(),
            docs: docs.into_iter().collect(),
            meta: TreeMeta::default(),
        };
        state.check_no_file_dir_conflicts(origin)?;
        if !state.docs.is_empty() {
            state.meta = meta::parse(&state.entries, &state.docs, origin)?;
        }
        Ok(state)
    }

    /// Build and validate a state from its JSON value.
    pub fn from_value(value: Value, origin: &str) -> Result<Self> {
        let Value::Object(map) = value else {
            return Err(Error::CorruptState {
                origin: origin.to_string(),
                detail: "the state is not a JSON object".into(),
            });
        };
        let mut spec = None;
        let mut entries = Vec::with_capacity(map.len());
        for (key, v) in map {
            if key == SPEC_KEY {
                match v {
                    Value::String(s) => spec = Some(s),
                    _ => {
                        return Err(Error::BadEntry {
                            origin: origin.to_string(),
                            key,
                            reason: "#spec must be a string".into(),
                        })
                    }
                }
                continue;
            }
            if let Err(reason) = validate_path(&key) {
                return Err(bad(origin, &key, reason));
            }
            let entry = entry_from_value(&key, v).map_err(|reason| Error::BadEntry {
                origin: origin.to_string(),
                key: key.clone(),
                reason,
            })?;
            entries.push((key, entry));
        }
        // The map iterates in sorted order, so this is a bulk build, not n inserts.
        Self::from_sorted(spec, entries, origin)
    }

    /// Insert or replace one file, keeping the invariants (the path is validated and may not be a
    /// directory of another entry nor lie under a file entry).
    pub fn insert(&mut self, key: &str, entry: Entry) -> Result<()> {
        let origin = "the new state";
        if let Err(reason) = validate_path(key) {
            return Err(bad(origin, key, reason));
        }
        if let Entry::Inline(v) = &entry {
            check_inline_depth(v).map_err(|reason| bad(origin, key, &reason))?;
        }
        if meta::has_reserved_component(key) {
            return Err(bad(origin, key, RESERVED));
        }
        let mut prefix = key;
        while let Some(pos) = prefix.rfind('/') {
            prefix = &key[..pos];
            if self.entries.contains_key(prefix) {
                return Err(bad(
                    origin,
                    key,
                    &format!("'{prefix}' is a file, so it cannot also be a directory"),
                ));
            }
        }
        let dir_prefix = format!("{key}/");
        if let Some((other, _)) = self.entries.range(dir_prefix.clone()..).next() {
            if other.starts_with(&dir_prefix) {
                return Err(bad(
                    origin,
                    key,
                    &format!("it is a directory holding '{other}', so it cannot also be a file"),
                ));
            }
        }
        self.entries.insert(key.to_string(), entry);
        Ok(())
    }

    pub fn remove(&mut self, key: &str) -> Option<Entry> {
        self.entries.remove(key)
    }

    /// The tree's metadata: modes, symlinks, empty directories.
    pub fn meta(&self) -> &TreeMeta {
        &self.meta
    }

    /// The metadata documents, as stored (state key → inline value).
    pub fn docs(&self) -> &BTreeMap<String, Entry> {
        &self.docs
    }

    /// Replace the tree's metadata. It is checked against the files (nothing changes when it
    /// does not fit them); when it differs from the current metadata, the documents are written
    /// anew in writer placement (`meta` module docs), otherwise they stay byte for byte.
    pub fn set_meta(&mut self, new: TreeMeta) -> Result<()> {
        let mut new = new;
        // Normalise: a default mode is recorded as nothing.
        new.modes.retain(|path, mode| {
            let default = if self.entries.contains_key(path) {
                meta::DEFAULT_FILE_MODE
            } else {
                meta::DEFAULT_DIR_MODE
            };
            *mode != default
        });
        let docs: BTreeMap<String, Entry> = new
            .documents()
            .into_iter()
            .map(|(k, v)| (k, Entry::Inline(v)))
            .collect();
        meta::check(&new, &self.entries, docs.keys(), "the new state")?;
        if new != self.meta {
            self.docs = docs;
            self.meta = new;
        }
        Ok(())
    }

    /// Put back documents and metadata taken from this state earlier (`docs()`, `meta()`),
    /// unchecked and byte for byte: undoing an in-place edit that failed.
    pub fn restore_meta(&mut self, docs: BTreeMap<String, Entry>, meta: TreeMeta) {
        self.docs = docs;
        self.meta = meta;
    }

    /// Check that the metadata still fits the files (after `remove`/`insert`): the last check
    /// before a state is published.
    pub fn check_meta(&self, origin: &str) -> Result<()> {
        meta::check(&self.meta, &self.entries, self.docs.keys(), origin)
    }

    /// Files and documents together, in canonical order: the state as pvr sees it.
    pub fn iter_with_docs(&self) -> impl Iterator<Item = (&String, &Entry)> {
        let mut files = self.entries.iter().peekable();
        let mut docs = self.docs.iter().peekable();
        std::iter::from_fn(move || match (files.peek(), docs.peek()) {
            (Some((kf, _)), Some((kd, _))) if kd < kf => docs.next(),
            (Some(_), _) => files.next(),
            (None, _) => docs.next(),
        })
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in canonical (code point) order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    /// Entries whose key equals `prefix` or lies under `prefix/`.
    pub fn entries_map(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    /// Take the entries out, in canonical order (to index them without copying).
    pub fn into_entries(self) -> BTreeMap<String, Entry> {
        self.entries
    }

    /// Every object id the state references (deduplicated, sorted).
    pub fn object_ids(&self) -> Vec<ObjectId> {
        let mut ids: Vec<ObjectId> = self.entries.values().filter_map(Entry::object_id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn check_no_file_dir_conflicts(&self, origin: &str) -> Result<()> {
        // Every proper prefix ending before a '/' is a directory; none may also be a file.
        // Keys are sorted, so siblings are mostly adjacent: only check a parent directory's
        // prefixes when it differs from the previous key's. Documents count as files of the
        // directory they describe (pvr sees them so), and the reserved name is never a
        // directory.
        let mut previous_parent: Option<&str> = None;
        for key in self.entries.keys().chain(self.docs.keys()) {
            let dir = if is_meta_key(key) {
                meta::doc_dir(key)
            } else {
                key
            };
            if meta::has_reserved_component(dir) {
                return Err(bad(origin, key, RESERVED));
            }
            let Some(pos) = key.rfind('/') else {
                previous_parent = None;
                continue;
            };
            let parent = &key[..pos];
            if previous_parent == Some(parent) {
                continue;
            }
            // The previous parent and its directories were checked: of this one's, only those
            // below what the two share need a lookup (one per directory of a deep tree, not
            // one per level of each directory).
            let checked = previous_parent.unwrap_or("");
            previous_parent = Some(parent);
            for (pos, _) in key[..=pos].match_indices('/') {
                let dir = &key[..pos];
                let shared = checked.len() >= pos
                    && checked.as_bytes()[..pos] == *dir.as_bytes()
                    && checked.as_bytes().get(pos).is_none_or(|&c| c == b'/');
                if shared {
                    continue;
                }
                if self.entries.contains_key(dir) {
                    return Err(bad(
                        origin,
                        &key[..pos],
                        &format!("it is a file and also the directory of '{key}'"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The state as a JSON value (`#spec` first by code point order, as canonical JSON has it).
    pub fn to_value(&self) -> Value {
        let mut map = serde_json::Map::new();
        if let Some(spec) = &self.spec {
            map.insert(SPEC_KEY.to_string(), Value::String(spec.clone()));
        }
        for (k, e) in self.iter_with_docs() {
            map.insert(k.clone(), e.to_value());
        }
        Value::Object(map)
    }

    /// The canonical bytes pvr writes to `.pvr/json` on commit. Written straight from the
    /// entries (already in code-point order, `#spec` sorting before every path that matters:
    /// '#' is 0x23), without building an intermediate `Value` of the whole tree.
    pub fn to_canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * 96);
        out.push(b'{');
        let mut first = true;
        let mut spec_written = self.spec.is_none();
        for (key, entry) in self.iter_with_docs() {
            if !spec_written && key.as_str() > SPEC_KEY {
                write_member(&mut out, &mut first, SPEC_KEY, |o| {
                    json::write_canonical_string(self.spec.as_deref().unwrap_or_default(), o)
                });
                spec_written = true;
            }
            write_member(&mut out, &mut first, key, |o| match entry {
                Entry::Object(id) => {
                    o.push(b'"');
                    o.extend_from_slice(&id.hex_bytes());
                    o.push(b'"');
                }
                Entry::Inline(v) => json::write_canonical(v, o),
            });
        }
        if !spec_written {
            write_member(&mut out, &mut first, SPEC_KEY, |o| {
                json::write_canonical_string(self.spec.as_deref().unwrap_or_default(), o)
            });
        }
        out.push(b'}');
        out
    }

    /// The state id: sha256 of the canonical bytes.
    pub fn state_id(&self) -> ObjectId {
        ObjectId::hash_bytes(&self.to_canonical_bytes())
    }
}

fn write_member(out: &mut Vec<u8>, first: &mut bool, key: &str, value: impl FnOnce(&mut Vec<u8>)) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    json::write_canonical_string(key, out);
    out.push(b':');
    value(out);
}

const RESERVED: &str =
    "'.pvrfs-meta.json' is reserved for pvrfs's metadata documents (docs/FORMAT.md)";

fn bad(origin: &str, key: &str, reason: &str) -> Error {
    Error::BadEntry {
        origin: origin.to_string(),
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// Deepest an inline value may nest: the state object around it takes one of
/// [`json::MAX_DEPTH`]'s levels (so every state `parse` accepts passes, and nothing deeper
/// exists; see the `json` module's bounded-nesting invariant).
pub const MAX_INLINE_DEPTH: usize = json::MAX_DEPTH - 1;

/// `Err(reason)` when an inline value nests deeper than [`MAX_INLINE_DEPTH`].
fn check_inline_depth(v: &Value) -> std::result::Result<(), String> {
    if json::nesting_depth(v, MAX_INLINE_DEPTH) > MAX_INLINE_DEPTH {
        return Err(format!(
            "its value nests more than {MAX_INLINE_DEPTH} levels deep (a state may nest at most {})",
            json::MAX_DEPTH
        ));
    }
    Ok(())
}

/// Interpret one state value under the inline rule.
fn entry_from_value(key: &str, v: Value) -> std::result::Result<Entry, String> {
    check_inline_depth(&v)?;
    if is_inline_path(key) {
        if let Value::String(s) = &v {
            if ObjectId::looks_like_hex_id(s) {
                // pvr reads a 64-hex string under a `.json` key as an object id (quirk 5); so do
                // we, so that `add --raw` round-trips. Upper-case hex is such an id to pvr too,
                // and is refused here rather than looked up under a name that cannot exist.
                return ObjectId::from_hex(s)
                    .map(Entry::Object)
                    .map_err(|e| e.to_string());
            }
        }
        return Ok(Entry::Inline(v));
    }
    match v {
        Value::String(s) => ObjectId::from_hex(&s)
            .map(Entry::Object)
            .map_err(|e| e.to_string()),
        other => Err(format!(
            "expected an object id string, found {}",
            json_kind(&other)
        )),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quick_path_check_agrees_with_the_rules() {
        let long_name = "n".repeat(MAX_NAME_BYTES);
        let longer_name = "n".repeat(MAX_NAME_BYTES + 1);
        let long_path = format!("{}x", "d/".repeat((MAX_PATH_BYTES - 1) / 2));
        let mut keys: Vec<String> = [
            "",
            "a",
            "a/b",
            "a/b/c.json",
            "/a",
            "a/",
            "a//b",
            ".",
            "..",
            "./a",
            "a/..",
            "a/.",
            "...",
            ".a",
            "a.",
            ".pvr",
            ".pvr/x",
            "x/.pvr",
            ".pvrx/y",
            ".pv",
            "a\0b",
            "\0",
            "a/\0",
            "#spec",
            "a b/é",
        ]
        .iter()
        .map(|k| k.to_string())
        .collect();
        keys.extend([
            long_name.clone(),
            longer_name.clone(),
            format!("a/{long_name}"),
            format!("{longer_name}/a"),
            long_path.clone(),
            format!("{long_path}y"),
            "x".repeat(MAX_PATH_BYTES + 1),
        ]);
        assert!(keys.iter().any(|k| k.contains('\0')));
        for k in &keys {
            let quick = plainly_valid_path(k.as_bytes());
            let full = check_path_rules(k);
            assert_eq!(quick, full.is_ok(), "{k:?}: {full:?}");
            assert_eq!(validate_path(k), full, "{k:?}");
        }
    }

    const ID: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(text: &str) -> Result<State> {
        State::from_json_bytes(text.as_bytes(), "test")
    }

    #[test]
    fn direct_canonical_writer_matches_the_value_encoder() {
        let id = ObjectId::hash_bytes(b"x");
        let mut s = State::empty("spec@1");
        for key in [
            "!first",
            " space",
            "\"quote",
            "$after",
            "a/b.txt",
            "z\u{1F600}.bin",
            "é",
        ] {
            s.insert(key, Entry::Object(id)).unwrap();
        }
        let v = json::parse(br#"{"k":[1,2.50,null,"<\n>"]}"#).unwrap();
        s.insert("c.json", Entry::Inline(v)).unwrap();
        assert_eq!(s.to_canonical_bytes(), json::to_canonical(&s.to_value()));
        for spec in [Some("s"), None] {
            let mut e = State {
                spec: spec.map(str::to_string),
                ..Default::default()
            };
            assert_eq!(e.to_canonical_bytes(), json::to_canonical(&e.to_value()));
            e.insert("!a", Entry::Object(id)).unwrap();
            assert_eq!(e.to_canonical_bytes(), json::to_canonical(&e.to_value()));
        }
    }

    #[test]
    fn parses_objects_and_inline_values() {
        let s = parse(&format!(
            r##"{{"#spec":"x@1","a.txt":"{ID}","c.json":{{"k":[1,2]}},"raw.json":"{ID}"}}"##
        ))
        .unwrap();
        assert_eq!(s.spec.as_deref(), Some("x@1"));
        assert!(matches!(s.get("a.txt"), Some(Entry::Object(_))));
        assert!(matches!(s.get("c.json"), Some(Entry::Inline(_))));
        assert!(matches!(s.get("raw.json"), Some(Entry::Object(_))));
        let again = State::from_json_bytes(&s.to_canonical_bytes(), "x").unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn direct_canonical_writer_matches_value_encoder() {
        // keys around '#' (0x23) in code-point order: '!' < '#spec' < '$' < 'a' < 'é'
        let s = parse(&format!(
            r##"{{"#spec":"s\"q","!x":"{ID}","$y":"{ID}","a.json":{{"z":1,"b":[null,2.5]}},"é":"{ID}"}}"##
        ))
        .unwrap();
        assert_eq!(s.to_canonical_bytes(), json::to_canonical(&s.to_value()));
        let mut nospec = s.clone();
        nospec.spec = None;
        assert_eq!(
            nospec.to_canonical_bytes(),
            json::to_canonical(&nospec.to_value())
        );
        let empty = State::empty("x");
        assert_eq!(empty.to_canonical_bytes(), br##"{"#spec":"x"}"##);
    }

    #[test]
    fn init_text_parses_and_canonicalises() {
        let s = parse(r##"{ "#spec": "pantavisor-service-system@1" }"##).unwrap();
        assert_eq!(
            s.to_canonical_bytes(),
            br##"{"#spec":"pantavisor-service-system@1"}"##
        );
    }

    #[test]
    fn refuses_hostile_keys_naming_them() {
        for key in [
            "../etc/passwd",
            "/abs",
            "a//b",
            "a/./b",
            "a/",
            "",
            "x\u{0}y",
            "a/..",
            ".pvr",
            ".pvr/config",
            ".pvr/objects/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ".pvr/pvrfs/revs/0000000001.json",
            &"n".repeat(256),
            &format!("d/{}/f", "n".repeat(256)),
            &"a/".repeat(2048),
        ] {
            let text = format!(r#"{{"{}":"{ID}"}}"#, key.replace('\0', "\\u0000"));
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("invalid entry"), "{key:?}: {err}");
        }
    }

    #[test]
    fn the_longest_names_and_paths_are_accepted() {
        let name = "n".repeat(255);
        let path = format!("{}x", "d/".repeat(2047));
        assert_eq!(path.len(), 4095);
        for key in [name.as_str(), path.as_str()] {
            parse(&format!(r#"{{"{key}":"{ID}"}}"#)).unwrap();
        }
    }

    #[test]
    fn refuses_bad_ids_and_file_dir_conflicts() {
        let err = parse(r#"{"a.txt":"nothex"}"#).unwrap_err().to_string();
        assert!(
            err.contains("'a.txt'") && err.contains("not an object id"),
            "{err}"
        );
        let err = parse(r#"{"a.txt":5}"#).unwrap_err().to_string();
        assert!(err.contains("a number"), "{err}");
        let err = parse(&format!(r#"{{"a":"{ID}","a/b":"{ID}"}}"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("'a'"), "{err}");
        let err = parse(&format!(r#"{{"d/a":"{ID}","d/a/b/c":"{ID}"}}"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("'d/a'"), "{err}");
        // A conflict below directories the previous keys shared (checked once, not per key),
        // and one in the metadata documents after the files.
        for (keys, culprit) in [
            (&["d/e/f/1", "d/e/g", "d/e/g/h/2"][..], "'d/e/g'"),
            (
                &["d/e/f/1", "d/e/f/2", "d/e/f.x/3", "d/e/f.x", "d/e/f.x/4/5"][..],
                "'d/e/f.x'",
            ),
            (&["a/b/c", "a/b/d/e", "a/b/d/f", "a/b/d"][..], "'a/b/d'"),
            (
                &["k/l/m", "k/l/.pvrfs-meta.json", "k/l/m/.pvrfs-meta.json"][..],
                "'k/l/m'",
            ),
        ] {
            let members: Vec<String> = keys.iter().map(|k| format!(r#""{k}":"{ID}""#)).collect();
            let err = parse(&format!("{{{}}}", members.join(",")))
                .unwrap_err()
                .to_string();
            assert!(err.contains(culprit), "{keys:?}: {err}");
        }
        let fine: Vec<String> = ["d/e/f/1", "d/e/f/2", "d/e/g", "d/e/h/1", "d/e.x", "d/e0/1"]
            .iter()
            .map(|k| format!(r#""{k}":"{ID}""#))
            .collect();
        parse(&format!("{{{}}}", fine.join(","))).unwrap();
        assert!(parse("[]").is_err());
        assert!(parse(r##"{"#spec":1}"##).is_err());
    }

    /// The member-by-member loader must agree with `json::parse` + `from_value` on everything:
    /// results, errors and their wording.
    #[test]
    fn fast_loader_matches_the_value_path() {
        let up = ID.to_uppercase();
        let deep = format!(r#"{{"a.json":{}1{}}}"#, "[".repeat(511), "]".repeat(511));
        let too_deep = format!(r#"{{"a.json":{}1{}}}"#, "[".repeat(512), "]".repeat(512));
        let cases = [
            format!(r##"{{"#spec":"s","b.txt":"{ID}","a.txt":"{ID}"}}"##), // unsorted
            format!(r#"{{"a.txt":"nothex","a.txt":"{ID}"}}"#),             // duplicate: last wins
            format!(r#"{{"a.txt":"{ID}","a.txt":"nothex"}}"#),
            format!(r##"{{"#spec":"{ID}","x.json":"{ID}"}}"##), // hex spec, `add --raw` entry
            r##"{"#spec":1,"#spec":"s"}"##.to_string(),
            r##"{"#spec":"s","#spec":["s"]}"##.to_string(),
            format!(r#"{{"a.txt":"{up}"}}"#),
            format!(r#"{{"a.json":"{up}"}}"#),
            format!(r#"{{"a.txt":"e{}"}}"#, &ID[1..]), // escaped: same id
            format!(r#"{{"a.txt":"{ID}0"}}"#),
            format!(r#"{{"a.txt":"{}"}}"#, &ID[1..]),
            format!(r#"{{"a.txt":"{ID}"   }} trailing"#),
            format!(r#"{{"z/a":"{ID}","z":"{ID}","b":"{ID}"}}"#),
            format!(r#"{{"a.txt":"{ID}","../x":"{ID}","/y":"{ID}"}}"#),
            format!(r#"{{"a.txt":"{ID}","b.txt":"{ID}"#), // unexpected EOF
            format!(r#"{{"a.txt":"{ID}" "b.txt":1}}"#),
            format!(r#"{{"../x":"{ID}","b.txt":tru}}"#), // syntax error wins over a bad key
            format!(r#"{{"a.txt":"{ID}""#),
            format!(r#"{{"a.txt":"{}"#, &ID[..10]),
            r#"{"a.json":{"k":[1,2.50,null,{}]},"b.json":2.5e0}"#.to_string(),
            r#"{"a.txt":null}"#.to_string(),
            deep,
            too_deep,
            "{}".to_string(),
            " { } ".to_string(),
            "{".to_string(),
            "{,}".to_string(),
            r#"{"a":}"#.to_string(),
            "[]".to_string(),
            "\"s\"".to_string(),
            String::new(),
            "x".to_string(),
        ];
        for text in cases {
            let fast = State::from_json_bytes(text.as_bytes(), "o").map_err(|e| e.to_string());
            // What `from_json_bytes` did before it had its own loader.
            let slow = json::parse(text.as_bytes())
                .map_err(|e| Error::CorruptState {
                    origin: "o".into(),
                    detail: format!("not valid JSON: {e}"),
                })
                .and_then(|v| State::from_value(v, "o"))
                .map_err(|e| e.to_string());
            assert_eq!(fast, slow, "input: {text}");
        }
    }

    /// Documents are kept apart from the files, byte for byte, and parsed into `meta`.
    #[test]
    fn metadata_documents_are_not_files() {
        let text = format!(
            r##"{{"#spec":"s","a/.pvrfs-meta.json":{{"modes":{{"b":"0755"}}}},"a/b":"{ID}",".pvrfs-meta.json":{{"links":{{"l":"a/b"}},"dirs":["e"]}}}}"##
        );
        let s = parse(&text).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(
            s.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["a/b"]
        );
        assert!(!s.contains(".pvrfs-meta.json") && s.get("a/.pvrfs-meta.json").is_none());
        assert_eq!(s.docs().len(), 2);
        assert_eq!(s.meta().file_mode("a/b"), 0o755);
        assert_eq!(s.meta().links["l"], "a/b");
        // canonical bytes and the value agree, documents included, at their sorted places
        assert_eq!(s.to_canonical_bytes(), json::to_canonical(&s.to_value()));
        let again = State::from_json_bytes(&s.to_canonical_bytes(), "x").unwrap();
        assert_eq!(again, s);
        // setting the same metadata changes nothing; new metadata rewrites the documents
        let mut t = s.clone();
        t.set_meta(s.meta().clone()).unwrap();
        assert_eq!(t.to_canonical_bytes(), s.to_canonical_bytes());
        let mut m = s.meta().clone();
        m.dirs.clear();
        t.set_meta(m).unwrap();
        assert!(t.meta().dirs.is_empty());
        // metadata that does not fit the files is refused, and nothing changes
        let mut bad = t.meta().clone();
        bad.links.insert("a/b".into(), "x".into());
        let before = t.clone();
        assert!(matches!(t.set_meta(bad), Err(Error::BadMeta { .. })));
        assert_eq!(t, before);
        // documents cannot be inserted as files, nor the reserved name used as a directory
        let id = ObjectId::from_hex(ID).unwrap();
        assert!(t.insert(".pvrfs-meta.json", Entry::Object(id)).is_err());
        assert!(t.insert("x/.pvrfs-meta.json/y", Entry::Object(id)).is_err());
        assert!(parse(&format!(r#"{{".pvrfs-meta.json/y":"{ID}"}}"#)).is_err());
        assert!(parse(&format!(r#"{{".pvrfs-meta.json":"{ID}"}}"#)).is_err());
        // a file removed under its mode: caught before publishing
        let mut stale = s.clone();
        stale.remove("a/b");
        assert!(stale.check_meta("x").is_err());
        // a plain tree has no document: exactly pvr's bytes
        let mut plain = State::empty("s");
        plain.insert("f", Entry::Object(id)).unwrap();
        plain.set_meta(TreeMeta::default()).unwrap();
        assert_eq!(
            plain.to_canonical_bytes(),
            format!(r##"{{"#spec":"s","f":"{ID}"}}"##).into_bytes()
        );
    }

    #[test]
    fn insert_keeps_invariants() {
        let id = ObjectId::from_hex(ID).unwrap();
        let mut s = State::empty(DEFAULT_SPEC);
        s.insert("a/b", Entry::Object(id)).unwrap();
        assert!(s.insert("a", Entry::Object(id)).is_err());
        assert!(s.insert("a/b/c", Entry::Object(id)).is_err());
        s.insert("a.b", Entry::Object(id)).unwrap();
        s.insert("a/c", Entry::Object(id)).unwrap();
        assert!(s.insert("../x", Entry::Object(id)).is_err());
        assert_eq!(s.len(), 3);
        assert_eq!(s.object_ids().len(), 1);
    }
}

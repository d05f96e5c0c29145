//! Whole-tree metadata of a state: permission bits, symlinks and empty directories.
//!
//! # Model
//!
//! pvr's state holds regular files only. pvrfs keeps what else a tree has in inline JSON
//! documents at reserved keys named `.pvrfs-meta.json`, which pvr sees as ordinary inline JSON
//! files (docs/FORMAT.md has the exact rules and the reasons):
//!
//! ```json
//! {"dirs":["empty","tmp"],"links":{"sh":"busybox"},"modes":{"run.sh":"0755","tmp":"1777"}}
//! ```
//!
//! The document at `D/.pvrfs-meta.json` describes paths strictly under the directory `D`,
//! relative to `D` (the one at `.pvrfs-meta.json` the whole tree):
//! - `modes`: the 12 permission bits (setuid, setgid, sticky, rwx×3) of a file or directory as
//!   an octal string, only where they differ from the defaults (files 0644, directories 0755);
//! - `links`: symlinks and their targets. A target is data: any text (relative, absolute,
//!   dangling), never followed when writing;
//! - `dirs`: empty directories (a directory with anything in it exists through its content).
//!
//! Owners and times are not recorded. Writers put a path's metadata in the document of its
//! first-level directory (`bsp/x/y` → `bsp/.pvrfs-meta.json`; a top-level path → the root
//! document), so that a `merge` of a part (`#bsp`) carries it, with pvr as with pvrfs; readers
//! accept a document at any depth. A tree with nothing beyond 0644 files and non-empty 0755
//! directories has no document at all: its state is exactly pvr's.
//!
//! # Invariants (checked by `parse` for documents read, by [`check`] for metadata built in
//! memory; a violation is [`Error::BadMeta`] naming the document and the path)
//! - every path is a valid relative path, described by at most one document, with no component
//!   named `.pvrfs-meta.json` and no first component `.pvr`;
//! - no path lies under a file or a symlink;
//! - a mode is at most 0o7777 and belongs to a file of the state or to a directory of the tree
//!   (an empty directory, or a prefix of a file, symlink or empty directory), never to a symlink;
//! - a symlink is not a file and nothing lies under it (file, symlink, directory, document); its
//!   target is 1..=4095 bytes without NUL (what Linux stores);
//! - an empty directory is not a file or a symlink, and nothing lies under it;
//! - in memory, `modes` holds only non-default modes (explicit defaults are dropped when read).

use super::{validate_path, Entry};
use crate::error::{Error, Result};
use crate::json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The reserved file name of a metadata document.
pub const META_NAME: &str = ".pvrfs-meta.json";
/// Permission bits of a file when none are recorded (pvr's checkout writes 0644).
pub const DEFAULT_FILE_MODE: u32 = 0o644;
/// Permission bits of a directory when none are recorded.
pub const DEFAULT_DIR_MODE: u32 = 0o755;
/// The 12 permission bits a mode may hold (setuid, setgid, sticky and rwx for three classes).
pub const PERMISSION_BITS: u32 = 0o7777;
/// Longest symlink target Linux stores (PATH_MAX - 1).
pub const MAX_LINK_TARGET: usize = 4095;

/// True when `key` names a metadata document (its last component is `.pvrfs-meta.json`).
pub fn is_meta_key(key: &str) -> bool {
    key.strip_suffix(META_NAME)
        .is_some_and(|dir| dir.is_empty() || dir.ends_with('/'))
}

/// The directory a document describes: `""` for the root document.
pub fn doc_dir(key: &str) -> &str {
    let dir = &key[..key.len() - META_NAME.len()];
    dir.strip_suffix('/').unwrap_or(dir)
}

/// Where a writer puts the metadata of `path`: the document of its first-level directory, and
/// the path relative to that document's directory.
pub fn writer_placement(path: &str) -> (String, &str) {
    match path.split_once('/') {
        Some((top, rest)) => (format!("{top}/{META_NAME}"), rest),
        None => (META_NAME.to_string(), path),
    }
}

/// True when a component of `path` is the reserved name (such a path cannot be in a tree).
pub fn has_reserved_component(path: &str) -> bool {
    // (bytewise: `str::split` with a char pattern costs a searcher per call, once per key of
    // every state loaded)
    path.as_bytes()
        .split(|&c| c == b'/')
        .any(|s| s == META_NAME.as_bytes())
}

/// A mode as documents write it: four octal digits (`0755`, `4755`).
pub fn format_mode(mode: u32) -> String {
    format!("{:04o}", mode & PERMISSION_BITS)
}

/// A mode string: 1 to 6 octal digits with a value of at most 0o7777.
pub fn parse_mode(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 6 || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= PERMISSION_BITS)
}

/// Why a symlink target cannot be stored, if it cannot.
pub fn check_link_target(target: &str) -> std::result::Result<(), String> {
    if target.is_empty() {
        return Err("a symlink target cannot be empty".into());
    }
    if target.contains('\0') {
        return Err("a symlink target cannot contain NUL".into());
    }
    if target.len() > MAX_LINK_TARGET {
        return Err(format!(
            "the symlink target is {} bytes long; Linux stores at most {MAX_LINK_TARGET}",
            target.len()
        ));
    }
    Ok(())
}

/// What a tree has beyond its regular files: full paths relative to the tree's root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeMeta {
    /// Non-default permission bits of files and directories.
    pub modes: BTreeMap<String, u32>,
    /// Symlinks and their targets.
    pub links: BTreeMap<String, String>,
    /// Empty directories.
    pub dirs: BTreeSet<String>,
}

impl TreeMeta {
    /// Nothing to record: the state needs no document.
    pub fn is_empty(&self) -> bool {
        self.modes.is_empty() && self.links.is_empty() && self.dirs.is_empty()
    }

    /// The permission bits of the file at `path`.
    pub fn file_mode(&self, path: &str) -> u32 {
        self.modes.get(path).copied().unwrap_or(DEFAULT_FILE_MODE)
    }

    /// The permission bits of the directory at `path` (`""` is the root).
    pub fn dir_mode(&self, path: &str) -> u32 {
        self.modes.get(path).copied().unwrap_or(DEFAULT_DIR_MODE)
    }

    /// Record the permission bits of a file or directory (other bits of `mode` are ignored);
    /// the default is recorded as nothing.
    pub fn set_mode(&mut self, path: &str, mode: u32, is_dir: bool) {
        let mode = mode & PERMISSION_BITS;
        let default = if is_dir {
            DEFAULT_DIR_MODE
        } else {
            DEFAULT_FILE_MODE
        };
        if mode == default {
            self.modes.remove(path);
        } else {
            self.modes.insert(path.to_string(), mode);
        }
    }

    /// The documents that record this metadata, keyed by state key, in writer placement (see
    /// the module docs). Empty when there is nothing to record.
    pub fn documents(&self) -> BTreeMap<String, Value> {
        #[derive(Default)]
        struct Doc {
            dirs: Vec<Value>,
            links: serde_json::Map<String, Value>,
            modes: serde_json::Map<String, Value>,
        }
        let mut docs: BTreeMap<String, Doc> = BTreeMap::new();
        for path in &self.dirs {
            let (key, rel) = writer_placement(path);
            docs.entry(key)
                .or_default()
                .dirs
                .push(Value::String(rel.into()));
        }
        for (path, target) in &self.links {
            let (key, rel) = writer_placement(path);
            docs.entry(key)
                .or_default()
                .links
                .insert(rel.into(), Value::String(target.clone()));
        }
        for (path, mode) in &self.modes {
            let (key, rel) = writer_placement(path);
            docs.entry(key)
                .or_default()
                .modes
                .insert(rel.into(), Value::String(format_mode(*mode)));
        }
        docs.into_iter()
            .map(|(key, d)| {
                let mut m = serde_json::Map::new();
                if !d.dirs.is_empty() {
                    m.insert("dirs".into(), Value::Array(d.dirs));
                }
                if !d.links.is_empty() {
                    m.insert("links".into(), Value::Object(d.links));
                }
                if !d.modes.is_empty() {
                    m.insert("modes".into(), Value::Object(d.modes));
                }
                (key, Value::Object(m))
            })
            .collect()
    }

    /// Is `path` a directory of the tree made of `files` and this metadata (`""`: the root)?
    pub fn is_dir(&self, files: &BTreeMap<String, Entry>, path: &str) -> bool {
        path.is_empty()
            || self.dirs.contains(path)
            || first_under(files, path).is_some()
            || first_under(&self.links, path).is_some()
            || first_under_set(&self.dirs, path).is_some()
    }
}

/// The first key of `map` strictly under the directory `dir`.
fn first_under<'m, V>(map: &'m BTreeMap<String, V>, dir: &str) -> Option<&'m String> {
    let prefix = format!("{dir}/");
    map.range(prefix.clone()..)
        .next()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with(&prefix))
}

fn first_under_set<'s>(set: &'s BTreeSet<String>, dir: &str) -> Option<&'s String> {
    let prefix = format!("{dir}/");
    set.range(prefix.clone()..)
        .next()
        .filter(|k| k.starts_with(&prefix))
}

/// A document-relative path made absolute (within the tree) and checked.
fn full_path(dir: &str, rel: &str) -> std::result::Result<String, String> {
    validate_path(rel).map_err(|r| format!("{r} in '{rel}'"))?;
    let path = if dir.is_empty() {
        rel.to_string()
    } else {
        format!("{dir}/{rel}")
    };
    if has_reserved_component(&path) {
        return Err(format!(
            "'{META_NAME}' is a reserved name and cannot be part of the tree"
        ));
    }
    if path.split('/').next() == Some(crate::repo::PVR_DIR) {
        return Err("paths under .pvr are the repository's own, not part of the tree".into());
    }
    Ok(path)
}

/// Parse and check the documents `docs` (state key → entry) of a state whose files are `files`.
/// `origin` names the state in errors.
pub(super) fn parse(
    files: &BTreeMap<String, Entry>,
    docs: &BTreeMap<String, Entry>,
    origin: &str,
) -> Result<TreeMeta> {
    let mut meta = TreeMeta::default();
    // path -> the document describing it
    let mut owner: BTreeMap<String, &str> = BTreeMap::new();
    for (doc, entry) in docs {
        let bad = |path: &str, reason: String| Error::BadMeta {
            origin: origin.to_string(),
            doc: doc.clone(),
            path: path.to_string(),
            reason,
        };
        let Entry::Inline(Value::Object(sections)) = entry else {
            return Err(bad(
                doc,
                "a metadata document must be an inline JSON object (dirs, links, modes)".into(),
            ));
        };
        let dir = doc_dir(doc);
        let mut claim = |rel: &str| -> Result<String> {
            let path = full_path(dir, rel).map_err(|r| bad(rel, r))?;
            match owner.get(&path) {
                Some(other) if *other != doc.as_str() => Err(bad(
                    &path,
                    format!("the path is also described by the document '{other}'"),
                )),
                _ => {
                    owner.insert(path.clone(), doc);
                    Ok(path)
                }
            }
        };
        for (section, value) in sections {
            let not_a = |what: &str| bad(doc, format!("'{section}' must be {what}"));
            match section.as_str() {
                "dirs" => {
                    let Value::Array(items) = value else {
                        return Err(not_a("an array of paths"));
                    };
                    for item in items {
                        let Value::String(rel) = item else {
                            return Err(not_a("an array of path strings"));
                        };
                        meta.dirs.insert(claim(rel)?);
                    }
                }
                "links" => {
                    let Value::Object(links) = value else {
                        return Err(not_a("an object of path: target"));
                    };
                    for (rel, target) in links {
                        let path = claim(rel)?;
                        let Value::String(target) = target else {
                            return Err(bad(&path, "a symlink target must be a string".into()));
                        };
                        check_link_target(target).map_err(|r| bad(&path, r))?;
                        meta.links.insert(path, target.clone());
                    }
                }
                "modes" => {
                    let Value::Object(modes) = value else {
                        return Err(not_a("an object of path: \"octal mode\""));
                    };
                    for (rel, mode) in modes {
                        let path = claim(rel)?;
                        let parsed = match mode {
                            Value::String(text) => parse_mode(text),
                            _ => None,
                        };
                        let mode = parsed.ok_or_else(|| {
                            bad(
                                &path,
                                format!(
                                    "mode {mode} is not an octal string of at most 07777 (such as \"0755\")"
                                ),
                            )
                        })?;
                        meta.modes.insert(path, mode);
                    }
                }
                other => {
                    return Err(bad(
                        doc,
                        format!(
                            "unknown member '{other}' (this pvrfs knows dirs, links and modes; was it written by a newer pvrfs?)"
                        ),
                    ))
                }
            }
        }
    }
    let doc_of = |path: &str| -> String {
        owner
            .get(path)
            .map_or_else(|| writer_placement(path).0, |d| d.to_string())
    };
    check_with(&meta, files, docs.keys(), origin, &doc_of)?;
    // Explicit defaults say nothing: drop them, so that equal trees have equal metadata.
    let defaults: Vec<String> = meta
        .modes
        .iter()
        .filter(|(p, m)| {
            let default = if files.contains_key(p.as_str()) {
                DEFAULT_FILE_MODE
            } else {
                DEFAULT_DIR_MODE
            };
            **m == default
        })
        .map(|(p, _)| p.clone())
        .collect();
    for p in defaults {
        meta.modes.remove(&p);
    }
    Ok(meta)
}

/// Check metadata built in memory against the files and documents of a state (the invariants
/// in the module docs); errors name the document a writer would put the path in.
pub fn check<'k>(
    meta: &TreeMeta,
    files: &BTreeMap<String, Entry>,
    doc_keys: impl Iterator<Item = &'k String>,
    origin: &str,
) -> Result<()> {
    for path in meta
        .links
        .keys()
        .chain(meta.dirs.iter())
        .chain(meta.modes.keys())
    {
        full_path("", path).map_err(|reason| Error::BadMeta {
            origin: origin.to_string(),
            doc: writer_placement(path).0,
            path: path.clone(),
            reason,
        })?;
    }
    check_with(meta, files, doc_keys, origin, &|p| writer_placement(p).0)
}

fn check_with<'k>(
    meta: &TreeMeta,
    files: &BTreeMap<String, Entry>,
    doc_keys: impl Iterator<Item = &'k String>,
    origin: &str,
    doc_of: &dyn Fn(&str) -> String,
) -> Result<()> {
    let bad = |path: &str, reason: String| Error::BadMeta {
        origin: origin.to_string(),
        doc: doc_of(path),
        path: path.to_string(),
        reason,
    };
    // Nothing lies under a file or a symlink.
    for path in meta
        .links
        .keys()
        .chain(meta.dirs.iter())
        .chain(meta.modes.keys())
    {
        for (pos, _) in path.match_indices('/') {
            let prefix = &path[..pos];
            if files.contains_key(prefix) {
                return Err(bad(
                    path,
                    format!("'{prefix}' is a file, so nothing can lie under it"),
                ));
            }
            if meta.links.contains_key(prefix) {
                return Err(bad(
                    path,
                    format!("'{prefix}' is a symlink, so nothing can lie under it"),
                ));
            }
        }
    }
    let doc_keys: BTreeSet<&str> = doc_keys.map(String::as_str).collect();
    for (link, target) in &meta.links {
        check_link_target(target).map_err(|r| bad(link, r))?;
        if files.contains_key(link) {
            return Err(bad(link, "a symlink at a path that is also a file".into()));
        }
        if meta.dirs.contains(link) {
            return Err(bad(
                link,
                "a symlink at a path that is also an empty directory".into(),
            ));
        }
        let prefix = format!("{link}/");
        let under = first_under(files, link).cloned().or_else(|| {
            doc_keys
                .range(prefix.as_str()..)
                .next()
                .filter(|k| k.starts_with(&prefix))
                .map(|k| k.to_string())
        });
        if let Some(other) = under {
            return Err(bad(
                link,
                format!("a symlink at a path that is also the directory of '{other}'"),
            ));
        }
    }
    for dir in &meta.dirs {
        if files.contains_key(dir) {
            return Err(bad(
                dir,
                "an empty directory at a path that is also a file".into(),
            ));
        }
        let inside = first_under(files, dir)
            .or_else(|| first_under(&meta.links, dir))
            .or_else(|| first_under_set(&meta.dirs, dir));
        if let Some(other) = inside {
            return Err(bad(
                dir,
                format!("listed as an empty directory but it holds '{other}'"),
            ));
        }
    }
    for path in meta.modes.keys() {
        if meta.links.contains_key(path) {
            return Err(bad(
                path,
                "a mode for a symlink (symlinks have no permission bits of their own)".into(),
            ));
        }
        if !files.contains_key(path) && !meta.is_dir(files, path) {
            return Err(bad(
                path,
                "a mode for a path that is neither a file nor a directory of the state".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oid::ObjectId;

    fn files(keys: &[&str]) -> BTreeMap<String, Entry> {
        let id = ObjectId::hash_bytes(b"x");
        keys.iter()
            .map(|k| (k.to_string(), Entry::Object(id)))
            .collect()
    }

    fn docs(list: &[(&str, &str)]) -> BTreeMap<String, Entry> {
        list.iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Entry::Inline(crate::json::parse(v.as_bytes()).unwrap()),
                )
            })
            .collect()
    }

    #[test]
    fn reserved_keys_and_placement() {
        assert!(is_meta_key(".pvrfs-meta.json"));
        assert!(is_meta_key("a/b/.pvrfs-meta.json"));
        assert!(!is_meta_key("a/x.pvrfs-meta.json"));
        assert!(!is_meta_key("pvrfs-meta.json"));
        assert_eq!(doc_dir(".pvrfs-meta.json"), "");
        assert_eq!(doc_dir("a/b/.pvrfs-meta.json"), "a/b");
        assert_eq!(
            writer_placement("bsp/x/y"),
            ("bsp/.pvrfs-meta.json".to_string(), "x/y")
        );
        assert_eq!(
            writer_placement("tmp"),
            (".pvrfs-meta.json".to_string(), "tmp")
        );
    }

    #[test]
    fn modes_parse_strictly() {
        assert_eq!(parse_mode("0755"), Some(0o755));
        assert_eq!(parse_mode("4755"), Some(0o4755));
        assert_eq!(parse_mode("7777"), Some(0o7777));
        assert_eq!(parse_mode("644"), Some(0o644));
        for bad in [
            "",
            "10000",
            "0x1ff",
            "-1",
            "0758",
            "99",
            " 755",
            "0000007777",
        ] {
            assert_eq!(parse_mode(bad), None, "{bad}");
        }
        assert_eq!(format_mode(0o755), "0755");
        assert_eq!(format_mode(0o1777), "1777");
    }

    #[test]
    fn documents_round_trip_in_writer_placement() {
        let f = files(&["bin/busybox", "run.sh", "bsp/x/y", "bsp/z"]);
        let mut meta = TreeMeta::default();
        meta.set_mode("run.sh", 0o100755, false);
        meta.set_mode("bsp/x/y", 0o4755, false);
        meta.set_mode("bsp/z", 0o644, false); // default: not recorded
        meta.set_mode("tmp", 0o1777, true);
        meta.dirs.insert("tmp".into());
        meta.dirs.insert("bsp/empty".into());
        meta.links.insert("bin/sh".into(), "busybox".into());
        meta.links.insert("dangling".into(), "/no/where".into());
        check(&meta, &f, std::iter::empty(), "test").unwrap();
        let rendered = meta.documents();
        let text: Vec<(String, String)> = rendered
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    String::from_utf8(crate::json::to_canonical(v)).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            text,
            vec![
                (
                    ".pvrfs-meta.json".to_string(),
                    r#"{"dirs":["tmp"],"links":{"dangling":"/no/where"},"modes":{"run.sh":"0755","tmp":"1777"}}"#.to_string()
                ),
                (
                    "bin/.pvrfs-meta.json".to_string(),
                    r#"{"links":{"sh":"busybox"}}"#.to_string()
                ),
                (
                    "bsp/.pvrfs-meta.json".to_string(),
                    r#"{"dirs":["empty"],"modes":{"x/y":"4755"}}"#.to_string()
                ),
            ]
        );
        let as_entries: BTreeMap<String, Entry> = rendered
            .into_iter()
            .map(|(k, v)| (k, Entry::Inline(v)))
            .collect();
        assert_eq!(parse(&f, &as_entries, "test").unwrap(), meta);
        assert!(TreeMeta::default().documents().is_empty());
    }

    #[test]
    fn documents_at_any_depth_are_read_and_explicit_defaults_dropped() {
        let f = files(&["a/b/c", "a/b/d"]);
        let d = docs(&[
            (
                "a/b/.pvrfs-meta.json",
                r#"{"modes":{"c":"0700","d":"0644"}}"#,
            ),
            (".pvrfs-meta.json", r#"{"modes":{"a/b":"0700"}}"#),
        ]);
        let meta = parse(&f, &d, "test").unwrap();
        assert_eq!(meta.file_mode("a/b/c"), 0o700);
        assert_eq!(meta.dir_mode("a/b"), 0o700);
        assert_eq!(meta.modes.len(), 2, "{meta:?}");
    }

    /// Every kind of bad metadata is refused with the document and the path named.
    #[test]
    fn bad_metadata_is_refused_naming_document_and_path() {
        let f = files(&["a/passwd", "file", "bsp/x"]);
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case<'_>] = &[
            (
                &[(".pvrfs-meta.json", r#"{"modes":{"file":"9"}}"#)],
                "'file'",
                "octal",
            ),
            (
                &[(".pvrfs-meta.json", r#"{"modes":{"file":"10000"}}"#)],
                "'file'",
                "07777",
            ),
            (
                &[(".pvrfs-meta.json", r#"{"modes":{"file":493}}"#)],
                "'file'",
                "octal",
            ),
            (
                &[(".pvrfs-meta.json", r#"{"modes":{"nothere":"0755"}}"#)],
                "'nothere'",
                "neither a file",
            ),
            (
                &[(".pvrfs-meta.json", r#"{"links":{"file":"x"}}"#)],
                "'file'",
                "also a file",
            ),
            (
                &[(".pvrfs-meta.json", r#"{"links":{"a":"/etc"}}"#)],
                "'a'",
                "directory of 'a/passwd'",
            ),
            (
                &[(".pvrfs-meta.json", r#"{"links":{"../x":"y"}}"#)],
                "'../x'",
                "'..'",
            ),
            (
                &[("bsp/.pvrfs-meta.json", r#"{"links":{"../../x":"y"}}"#)],
                "'../../x'",
                "'..'",
            ),
            (
                &[(".pvrfs-meta.json", r#"{"links":{"/abs":"y"}}"#)],
                "'/abs'",
                "absolute",
            ),
            (
                &[(".pvrfs-meta.json", r#"{"links":{"l":""}}"#)],
                "'l'",
                "empty",
            ),
            (
                &[(
                    ".pvrfs-meta.json",
                    r#"{"links":{"l":"x","l2":"y"},"modes":{"l":"0777"}}"#,
                )],
                "'l'",
                "symlink",
            ),
            (
                &[(".pvrfs-meta.json", r#"{"links":{"l":"x"},"dirs":["l"]}"#)],
                "'l'",
                "empty directory",
            ),
            (
                &[(".pvrfs-meta.json", r#"{"links":{"l":"x","l/y":"z"}}"#)],
                "'l/y'",
                "'l' is a symlink",
            ),
            (
                &[(".pvrfs-meta.json", r#"{"links":{"file/y":"z"}}"#)],
                "'file/y'",
                "'file' is a file",
            ),
            (
                &[(".pvrfs-meta.json", r#"{"dirs":["bsp"]}"#)],
                "'bsp'",
                "holds 'bsp/x'",
            ),
            (
                &[(".pvrfs-meta.json", r#"{"dirs":["file"]}"#)],
                "'file'",
                "also a file",
            ),
            (
                &[(".pvrfs-meta.json", r#"{"dirs":["e","e/f"]}"#)],
                "'e'",
                "holds 'e/f'",
            ),
            (
                &[(".pvrfs-meta.json", r#"{"dirs":[".pvr"]}"#)],
                "'.pvr'",
                ".pvr",
            ),
            (
                &[(".pvrfs-meta.json", r#"{"dirs":["x/.pvrfs-meta.json"]}"#)],
                ".pvrfs-meta.json",
                "reserved",
            ),
            (
                &[(".pvrfs-meta.json", r#"{"owners":{}}"#)],
                "'.pvrfs-meta.json'",
                "unknown member 'owners'",
            ),
            (
                &[(".pvrfs-meta.json", r#"{"dirs":"e"}"#)],
                "'.pvrfs-meta.json'",
                "array",
            ),
            (
                &[(".pvrfs-meta.json", r#"[1]"#)],
                "'.pvrfs-meta.json'",
                "inline JSON object",
            ),
            (
                &[
                    (".pvrfs-meta.json", r#"{"links":{"bsp/l":"x"}}"#),
                    ("bsp/.pvrfs-meta.json", r#"{"links":{"l":"y"}}"#),
                ],
                "'bsp/l'",
                "also described by the document",
            ),
            (
                &[
                    ("l/.pvrfs-meta.json", r#"{}"#),
                    (".pvrfs-meta.json", r#"{"links":{"l":"y"}}"#),
                ],
                "'l'",
                "directory of 'l/.pvrfs-meta.json'",
            ),
        ];
        for (list, path, reason) in cases {
            let err = parse(&f, &docs(list), "the test state").unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, Error::BadMeta { .. }), "{text}");
            assert!(
                text.contains(path) && text.contains(reason),
                "{list:?}: {text}"
            );
            assert!(text.contains("(document '"), "{text}");
        }
    }

    #[test]
    fn link_targets_are_data() {
        let f = files(&["x"]);
        for target in [
            "/etc/passwd",
            "../../../../outside",
            "dangling",
            "a b\tc",
            "é",
        ] {
            let d = docs(&[(
                ".pvrfs-meta.json",
                &format!(
                    r#"{{"links":{{"l":{}}}}}"#,
                    serde_json::to_string(target).unwrap()
                ),
            )]);
            assert_eq!(parse(&f, &d, "t").unwrap().links["l"], target);
        }
        assert!(check_link_target(&"x".repeat(4095)).is_ok());
        assert!(check_link_target(&"x".repeat(4096)).is_err());
        assert!(check_link_target("a\0b").is_err());
    }
}

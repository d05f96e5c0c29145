//! The directory index of one revision: what a mount serves before it touches any object.
//!
//! Model: a revision's state is a flat list of file paths plus its metadata (`state::meta`):
//! symlinks, empty directories and permission bits; other directories exist only as prefixes.
//! `Tree::build` turns the files, symlinks and empty directories (one sorted list of leaves)
//! into an arena of nodes in one pass over the keys plus a sort of each directory's children,
//! i.e. O(paths · log fan-out), without a `PathBuf` per node:
//!
//! - every name lives once in one byte buffer (`names`), a node stores an offset and a length;
//! - nodes sit in one `Vec` in breadth-first order, so the children of a directory are one
//!   contiguous run, sorted by name bytes, and `lookup` is a binary search in that run;
//! - the inode number of a node is its index + 1 (the root is 1). The build is a pure function
//!   of the state, so inode numbers are stable for a revision, across remounts and machines;
//! - file contents are described, not loaded: an object id whose size is read from the store on
//!   first use (then cached), or an inline JSON value rendered on first use with the same
//!   renderer `checkout` uses; rendered bytes sit in a bounded LRU, their size is kept forever
//!   (getattr must be exact, and rendering again on every stat would be wasteful);
//! - a symlink's target lives in one byte buffer (`targets`); every node carries its 12
//!   permission bits (the state's, or the defaults 0644/0755; 0777 for a symlink).
//!
//! Invariants: node 0 is the root; `parent` of the root is the root; a directory's children are
//! strictly increasing by name; `.pvr` cannot appear (state validation refuses no such key, but
//! the build skips a top-level `.pvr` so a hostile state cannot shadow the metadata directory).

use super::ROOT_INO;
use crate::json::{self, Value};
use crate::oid::ObjectId;
use crate::state::{Entry, State};
use crate::store::Store;
use lru::LruCache;
use parking_lot::Mutex;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How many rendered inline files the cache holds.
const RENDER_CACHE_ENTRIES: usize = 4096;
/// Marks a size not known yet.
const UNKNOWN: u64 = u64::MAX;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// `first..first+count` are the node indices of the children.
    Dir {
        first: u32,
        count: u32,
        subdirs: u32,
    },
    /// Index into the tree's file table.
    File { file: u32 },
    /// Index into the tree's symlink targets.
    Symlink { link: u32 },
}

#[derive(Debug, Clone, Copy)]
struct Node {
    name_off: u32,
    name_len: u32,
    parent: u32,
    kind: NodeKind,
    /// Permission bits.
    mode: u16,
}

/// A leaf of the tree as the build sees it.
enum Leaf {
    File(Entry),
    Link(String),
    EmptyDir,
}

/// The permission bits of a symlink (what Linux shows; they are never checked).
const LINK_MODE: u16 = 0o777;

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum FileData {
    Object(ObjectId),
    /// Index into the tree's inline-value table.
    Inline(u32),
}

/// How inline JSON is rendered (as `checkout` or `checkout --canonical`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rendering {
    #[default]
    Checkout,
    Canonical,
}

/// The immutable directory index of one revision.
pub struct Tree {
    names: Vec<u8>,
    nodes: Vec<Node>,
    /// Per file: where its bytes come from, and its node (for its path in messages).
    files: Vec<(FileData, u32)>,
    /// Canonical bytes of all inline values, back to back (one allocation: thousands of small
    /// boxes made while the parsed state is alive would pin its freed pages), and each
    /// value's span in it.
    inline: Vec<u8>,
    inline_spans: Vec<(usize, usize)>,
    sizes: Vec<AtomicU64>,
    /// Symlink targets back to back, and each one's span in it.
    targets: Vec<u8>,
    target_spans: Vec<(u32, u32)>,
    rendering: Rendering,
    rendered: Mutex<LruCache<u32, Arc<[u8]>>>,
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tree")
            .field("nodes", &self.nodes.len())
            .field("files", &self.files.len())
            .finish()
    }
}

impl Tree {
    /// Build the index of `state`. Consumes the state: entries move into the tree.
    pub fn build(state: State, rendering: Rendering) -> Tree {
        let meta = state.meta().clone();
        let skip = |k: &str| k == ".pvr" || k.starts_with(".pvr/");
        let mut keys: Vec<(String, Leaf)> = state
            .into_entries()
            .into_iter()
            .filter(|(k, _)| !skip(k))
            .map(|(k, e)| (k, Leaf::File(e)))
            .collect();
        if !meta.links.is_empty() || !meta.dirs.is_empty() {
            // Validation keeps symlinks, empty directories and files apart: one sorted list.
            keys.extend(
                meta.links
                    .iter()
                    .filter(|(k, _)| !skip(k))
                    .map(|(k, t)| (k.clone(), Leaf::Link(t.clone()))),
            );
            keys.extend(
                meta.dirs
                    .iter()
                    .filter(|k| !skip(k))
                    .map(|k| (k.clone(), Leaf::EmptyDir)),
            );
            keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        let mode_of = |path: &str, is_dir: bool| -> u16 {
            let m = if is_dir {
                meta.dir_mode(path)
            } else {
                meta.file_mode(path)
            };
            m as u16
        };
        let mut tree = Tree {
            names: Vec::new(),
            nodes: Vec::with_capacity(keys.len() + keys.len() / 8 + 1),
            files: Vec::with_capacity(keys.len()),
            inline: Vec::new(),
            inline_spans: Vec::new(),
            sizes: Vec::with_capacity(keys.len()),
            targets: Vec::new(),
            target_spans: Vec::new(),
            rendering,
            rendered: Mutex::new(LruCache::new(
                NonZeroUsize::new(RENDER_CACHE_ENTRIES).expect("non-zero"),
            )),
        };
        tree.nodes.push(Node {
            name_off: 0,
            name_len: 0,
            parent: 0,
            kind: NodeKind::Dir {
                first: 0,
                count: 0,
                subdirs: 0,
            },
            mode: crate::state::meta::DEFAULT_DIR_MODE as u16,
        });
        // Breadth-first: (dir node, its keys as a range of `keys`, byte length of its prefix).
        // The keys under one directory are a contiguous run of the sorted key list, and so are
        // the keys under each of its children (all start with "prefix/child/"). An empty
        // directory is a leaf key with an empty run.
        let mut queue = std::collections::VecDeque::new();
        queue.push_back((0usize, 0..keys.len(), 0usize));
        let mut children: Vec<(&str, bool, std::ops::Range<usize>)> = Vec::new();
        while let Some((dir, range, prefix_len)) = queue.pop_front() {
            children.clear();
            let mut i = range.start;
            while i < range.end {
                let rest = &keys[i].0[prefix_len..];
                let (name, is_dir) = match rest.find('/') {
                    Some(p) => (&rest[..p], true),
                    None => (rest, matches!(keys[i].1, Leaf::EmptyDir)),
                };
                let mut j = i + 1;
                let mut sub = i..j;
                if is_dir && rest.len() > name.len() {
                    let dir_prefix_len = prefix_len + name.len() + 1;
                    let dir_prefix = &keys[i].0[..dir_prefix_len];
                    while j < range.end && keys[j].0.starts_with(dir_prefix) {
                        j += 1;
                    }
                    sub = i..j;
                } else if is_dir {
                    sub = j..j; // an empty directory
                }
                children.push((name, is_dir, sub));
                i = j;
            }
            children.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            let first = tree.nodes.len() as u32;
            let mut subdirs = 0;
            for (name, is_dir, sub) in children.iter() {
                let name_off = tree.names.len() as u32;
                tree.names.extend_from_slice(name.as_bytes());
                let index = tree.nodes.len();
                let dir_path_len = prefix_len + name.len();
                let (kind, mode) = if *is_dir {
                    subdirs += 1;
                    queue.push_back((index, sub.clone(), prefix_len + name.len() + 1));
                    // an empty directory's run is empty: its own key is the one before it
                    let key = &keys[if sub.is_empty() {
                        sub.start - 1
                    } else {
                        sub.start
                    }]
                    .0;
                    let kind = NodeKind::Dir {
                        first: 0,
                        count: 0,
                        subdirs: 0,
                    };
                    (kind, mode_of(&key[..dir_path_len], true))
                } else {
                    let (key, leaf) = &keys[sub.start];
                    match leaf {
                        Leaf::Link(target) => {
                            let start = tree.targets.len() as u32;
                            tree.targets.extend_from_slice(target.as_bytes());
                            tree.target_spans.push((start, target.len() as u32));
                            let link = tree.target_spans.len() as u32 - 1;
                            (NodeKind::Symlink { link }, LINK_MODE)
                        }
                        Leaf::File(entry) => {
                            let file = tree.files.len() as u32;
                            let data = match entry {
                                Entry::Object(id) => FileData::Object(*id),
                                Entry::Inline(v) => {
                                    // Kept as canonical bytes (compact); parsed again only to
                                    // render.
                                    let start = tree.inline.len();
                                    json::write_canonical(v, &mut tree.inline);
                                    tree.inline_spans.push((start, tree.inline.len()));
                                    FileData::Inline(tree.inline_spans.len() as u32 - 1)
                                }
                            };
                            tree.files.push((data, index as u32));
                            tree.sizes.push(AtomicU64::new(UNKNOWN));
                            (NodeKind::File { file }, mode_of(key, false))
                        }
                        Leaf::EmptyDir => unreachable!("empty directories are directories"),
                    }
                };
                tree.nodes.push(Node {
                    name_off,
                    name_len: name.len() as u32,
                    parent: dir as u32,
                    kind,
                    mode,
                });
            }
            tree.nodes[dir].kind = NodeKind::Dir {
                first,
                count: children.len() as u32,
                subdirs,
            };
        }
        drop(keys);
        tree.names.shrink_to_fit();
        tree.nodes.shrink_to_fit();
        tree.inline.shrink_to_fit();
        tree.inline_spans.shrink_to_fit();
        tree.targets.shrink_to_fit();
        tree.target_spans.shrink_to_fit();
        tree
    }

    /// The permission bits of `ino`.
    pub fn mode(&self, ino: u64) -> Option<u32> {
        self.node(ino).map(|n| u32::from(n.mode))
    }

    /// The target of symlink `ino` (`None` for anything else).
    pub fn link_target(&self, ino: u64) -> Option<&[u8]> {
        let NodeKind::Symlink { link } = self.node(ino)?.kind else {
            return None;
        };
        let (start, len) = self.target_spans[link as usize];
        Some(&self.targets[start as usize..(start + len) as usize])
    }

    /// Number of inodes (directories, files and symlinks).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.len() == 1
    }

    /// Number of files.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    fn node(&self, ino: u64) -> Option<&Node> {
        let index = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.nodes.get(index)
    }

    /// True when `ino` names a node of this tree.
    pub fn contains(&self, ino: u64) -> bool {
        self.node(ino).is_some()
    }

    pub fn kind(&self, ino: u64) -> Option<NodeKind> {
        self.node(ino).map(|n| n.kind)
    }

    pub fn parent(&self, ino: u64) -> Option<u64> {
        self.node(ino).map(|n| n.parent as u64 + 1)
    }

    /// The name of `ino` in its directory (empty for the root).
    pub fn name(&self, ino: u64) -> Option<&[u8]> {
        let n = self.node(ino)?;
        Some(&self.names[n.name_off as usize..(n.name_off + n.name_len) as usize])
    }

    /// The child of directory `parent` called `name`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Option<u64> {
        let NodeKind::Dir { first, count, .. } = self.node(parent)?.kind else {
            return None;
        };
        let run = &self.nodes[first as usize..(first + count) as usize];
        let pos = run
            .binary_search_by(|n| {
                self.names[n.name_off as usize..(n.name_off + n.name_len) as usize].cmp(name)
            })
            .ok()?;
        Some(first as u64 + pos as u64 + 1)
    }

    /// Inode numbers of the children of `dir`, in name order (empty for a file).
    pub fn children(&self, dir: u64) -> std::ops::Range<u64> {
        match self.node(dir).map(|n| n.kind) {
            Some(NodeKind::Dir { first, count, .. }) => {
                first as u64 + 1..(first + count) as u64 + 1
            }
            _ => 0..0,
        }
    }

    /// The file-table index of `ino` when it is a file.
    pub fn file_index(&self, ino: u64) -> Option<u32> {
        match self.node(ino)?.kind {
            NodeKind::File { file } => Some(file),
            NodeKind::Dir { .. } | NodeKind::Symlink { .. } => None,
        }
    }

    pub fn file_data(&self, file: u32) -> &FileData {
        &self.files[file as usize].0
    }

    /// The path of node `ino` from the root (`a/b/c`; empty for the root).
    pub fn path(&self, mut ino: u64) -> String {
        let mut parts = Vec::new();
        while ino != ROOT_INO {
            let Some(name) = self.name(ino) else { break };
            parts.push(String::from_utf8_lossy(name));
            ino = self.parent(ino).unwrap_or(ROOT_INO);
        }
        parts.reverse();
        parts.join("/")
    }

    /// The state key of a file (for messages).
    pub fn file_path(&self, file: u32) -> String {
        self.path(self.files[file as usize].1 as u64 + 1)
    }

    /// The size of a file: for an object, the size of its file in the store (`None` when it is
    /// missing or unreadable); for inline JSON, the length of its rendering.
    pub fn file_size(&self, file: u32, store: &Store) -> Option<u64> {
        let cached = self.sizes[file as usize].load(Ordering::Relaxed);
        if cached != UNKNOWN {
            return Some(cached);
        }
        let size = match &self.files[file as usize].0 {
            FileData::Object(id) => std::fs::metadata(store.path_of(id)).ok()?.len(),
            FileData::Inline(_) => self.rendered(file).len() as u64,
        };
        self.sizes[file as usize].store(size, Ordering::Relaxed);
        Some(size)
    }

    /// The bytes of an inline file as `checkout` writes them (rendered once, then cached).
    /// Panics if `file` is not inline.
    pub fn rendered(&self, file: u32) -> Arc<[u8]> {
        if let Some(bytes) = self.rendered.lock().get(&file) {
            return bytes.clone();
        }
        let FileData::Inline(v) = &self.files[file as usize].0 else {
            panic!("rendered() called for an object file");
        };
        let (start, end) = self.inline_spans[*v as usize];
        let canonical = &self.inline[start..end];
        let bytes: Arc<[u8]> = match self.rendering {
            Rendering::Canonical => canonical.to_vec().into(),
            Rendering::Checkout => {
                // Canonical bytes always parse back to the value they came from.
                let value: Value = json::parse(canonical).expect("canonical JSON parses");
                json::render_checkout(&value).into()
            }
        };
        self.sizes[file as usize].store(bytes.len() as u64, Ordering::Relaxed);
        self.rendered.lock().put(file, bytes.clone());
        bytes
    }

    /// Every distinct object id of the tree with the first path that uses it.
    pub fn objects(&self) -> Vec<(ObjectId, u32)> {
        let mut seen = std::collections::HashMap::new();
        for (i, (f, _)) in self.files.iter().enumerate() {
            if let FileData::Object(id) = f {
                seen.entry(*id).or_insert(i as u32);
            }
        }
        let mut v: Vec<_> = seen.into_iter().collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(keys: &[&str]) -> State {
        let mut s = State::empty("x@1");
        for k in keys {
            let entry = if k.ends_with(".json") {
                Entry::Inline(json::parse(br#"{"a":[1,2.5],"b":"<&>"}"#).unwrap())
            } else {
                Entry::Object(ObjectId::hash_bytes(k.as_bytes()))
            };
            s.insert(k, entry).unwrap();
        }
        s
    }

    fn path_of(t: &Tree, mut ino: u64) -> String {
        let mut parts = Vec::new();
        while ino != ROOT_INO {
            parts.push(String::from_utf8(t.name(ino).unwrap().to_vec()).unwrap());
            ino = t.parent(ino).unwrap();
        }
        parts.reverse();
        parts.join("/")
    }

    #[test]
    fn directories_come_from_paths_and_lookup_finds_everything() {
        let keys = [
            "a.b",
            "a/x",
            "a/y/z.json",
            "a!",
            "b c/é",
            "top.json",
            "a/y/w",
        ];
        let t = Tree::build(state(&keys), Rendering::Checkout);
        // root, a.b, a/, a!, "b c"/, top.json, a/x, a/y/, "b c"/é, a/y/w, a/y/z.json
        assert_eq!(t.len(), 11);
        assert_eq!(t.file_count(), 7);
        for k in keys {
            let mut ino = ROOT_INO;
            for part in k.split('/') {
                ino = t
                    .lookup(ino, part.as_bytes())
                    .unwrap_or_else(|| panic!("{k}"));
            }
            assert_eq!(path_of(&t, ino), k);
            assert!(t.file_index(ino).is_some());
        }
        let a = t.lookup(ROOT_INO, b"a").unwrap();
        assert!(matches!(
            t.kind(a),
            Some(NodeKind::Dir {
                count: 2,
                subdirs: 1,
                ..
            })
        ));
        assert!(matches!(
            t.kind(ROOT_INO),
            Some(NodeKind::Dir {
                count: 5,
                subdirs: 2,
                ..
            })
        ));
        assert_eq!(t.lookup(ROOT_INO, b"nope"), None);
        assert_eq!(t.lookup(t.lookup(ROOT_INO, b"a.b").unwrap(), b"x"), None);
        // children sorted by name bytes
        let names: Vec<_> = t
            .children(ROOT_INO)
            .map(|i| t.name(i).unwrap().to_vec())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }

    #[test]
    fn inode_numbers_are_a_function_of_the_state() {
        let keys = ["z", "m/n/o", "m/a", "b.json"];
        let t1 = Tree::build(state(&keys), Rendering::Checkout);
        let mut rev = keys;
        rev.reverse();
        let t2 = Tree::build(state(&rev), Rendering::Checkout);
        for ino in 1..=t1.len() as u64 {
            assert_eq!(path_of(&t1, ino), path_of(&t2, ino));
        }
        assert_eq!(t1.lookup(ROOT_INO, b"b.json"), Some(2));
    }

    #[test]
    fn inline_sizes_match_the_checkout_rendering() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        for rendering in [Rendering::Checkout, Rendering::Canonical] {
            let t = Tree::build(state(&["c.json"]), rendering);
            let file = t.file_index(2).unwrap();
            let value = json::parse(br#"{"a":[1,2.5],"b":"<&>"}"#).unwrap();
            let expect = match rendering {
                Rendering::Checkout => json::render_checkout(&value),
                Rendering::Canonical => json::render_checkout_canonical(&value),
            };
            assert_eq!(t.file_size(file, &store), Some(expect.len() as u64));
            assert_eq!(&*t.rendered(file), &expect[..]);
        }
    }

    #[test]
    fn many_inline_values_keep_their_own_bytes() {
        let mut s = State::empty("x@1");
        let values: Vec<String> = (0..50)
            .map(|i| format!(r#"{{"i":{i},"s":"{}"}}"#, "x".repeat(i)))
            .collect();
        for (i, v) in values.iter().enumerate() {
            s.insert(
                &format!("d{}/v{i}.json", i % 3),
                Entry::Inline(json::parse(v.as_bytes()).unwrap()),
            )
            .unwrap();
        }
        let t = Tree::build(s, Rendering::Canonical);
        for (i, v) in values.iter().enumerate() {
            let d = t
                .lookup(ROOT_INO, format!("d{}", i % 3).as_bytes())
                .unwrap();
            let ino = t.lookup(d, format!("v{i}.json").as_bytes()).unwrap();
            let file = t.file_index(ino).unwrap();
            let expect = json::to_canonical(&json::parse(v.as_bytes()).unwrap());
            assert_eq!(&*t.rendered(file), &expect[..]);
            assert_eq!(t.file_path(file), format!("d{}/v{i}.json", i % 3));
        }
    }

    #[test]
    fn object_sizes_come_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let id = store.put_bytes(b"12345").unwrap();
        let mut s = State::empty("x@1");
        s.insert("f", Entry::Object(id)).unwrap();
        s.insert("g", Entry::Object(ObjectId::hash_bytes(b"gone")))
            .unwrap();
        let t = Tree::build(s, Rendering::Checkout);
        assert_eq!(t.file_size(0, &store), Some(5));
        assert_eq!(t.file_size(1, &store), None);
        assert_eq!(t.objects().len(), 2);
    }
}

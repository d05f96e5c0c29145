//! The head index (`.pvr/pvrfs/headindex`): what `status` needs of the head state, in a binary
//! file that is mapped instead of parsing `.pvr/json` (8.8 MB of JSON at 100k files) on every
//! run — git's index idea, for the head only.
//!
//! # Model
//!
//! The index is a pure function of the bytes of `.pvr/json` it was built from: per file of the
//! head, in path order, whether the state holds it as an object or inline and an id — the
//! object id, or for an inline file the sha256 of its value's canonical bytes (what a probe
//! computes for a file on disk, `Probe::value_sha`; equal canonical bytes ⇔ equal values, see
//! `json`) — and the head's metadata (modes, symlinks, empty directories). It never describes
//! the work tree: the stat cache vouches for files, this for the head, and `scan` compares the
//! two.
//!
//! # When it is believed (`load_head`)
//!
//! It records the xxh3-128 fingerprint of the `.pvr/json` bytes it was built from, and, when
//! that file was *stable* at the time (its mtime and ctime before `walk::DirCache::cutoff_now`,
//! at least a second in the past, and its stat key the same before and after the read), that
//! file's stat key. Whoever moves the head (commit, checkout, reset, get, merge, the reference
//! pvr writing in place) changes the file, so:
//! - the recorded key equals the file's current key: believed without reading the file. A
//!   change after the build stamps a ctime at or after the cutoff, which the recorded key cannot
//!   have; replacing the file changes its inode or ctime;
//! - otherwise the file is read and fingerprinted: an equal fingerprint is believed (and the
//!   key recorded, once stable); a different one means the head moved: it is parsed as before
//!   and a new index written from the parsed state.
//!
//! So no other command has to remember to invalidate it, and a head that does not parse gives
//! the same error as without an index (an index is only ever built from a state that parsed).
//! A commit writes the index of the state it made (`save_for`), so the next status needs no
//! parse either.
//!
//! # Format (little-endian), written to a temp file and renamed
//! `b"PVRFSHI1"`, `checksum u64` (xxh3-64 of everything after it), `fingerprint [16]`,
//! `has_key u8` + the stat key (`size u64, mtime i64, ctime i64, ino u64, dev u64, mode u32`,
//! only when `has_key = 1`), `files u32`, per file in strictly ascending path order:
//! `kind u8 (0 object, 1 inline), id [32], path_len u32, path`; then `modes u32` × (`path`,
//! `mode u32`), `links u32` × (`path`, `target`), `dirs u32` × `path` (strings are `len u32` +
//! UTF-8 bytes). A file that does not decode, fails its checksum or has trailing bytes is no
//! index (the head is parsed): it is only a cache. A change of what the parser accepts or how
//! an entry is derived must change the magic.

use super::stat::StatKey;
use super::statcache::{put_bytes, put_key, write_replace, Bytes, Reader};
use super::walk::DirCache;
use crate::error::{IoContext, Result};
use crate::json;
use crate::oid::ObjectId;
use crate::repo::Repo;
use crate::state::{Entry, State, TreeMeta};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

const MAGIC: &[u8; 8] = b"PVRFSHI1";

/// What the head holds at one file path, as the index records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadFile {
    /// Stored as an object with this id.
    Object(ObjectId),
    /// Stored inline; the sha256 of the value's canonical bytes.
    Inline(ObjectId),
}

impl HeadFile {
    /// What the index records for `entry`.
    pub fn of(entry: &Entry) -> HeadFile {
        match entry {
            Entry::Object(id) => HeadFile::Object(*id),
            Entry::Inline(v) => HeadFile::Inline(ObjectId::hash_bytes(&json::to_canonical(v))),
        }
    }

    /// Is `entry` (a probed file's, whose inline value's canonical bytes hash to `value_sha`)
    /// what the head holds?
    pub fn is(&self, entry: &Entry, value_sha: Option<ObjectId>) -> bool {
        match (self, entry) {
            (HeadFile::Object(id), Entry::Object(other)) => id == other,
            (HeadFile::Inline(id), Entry::Inline(_)) => value_sha == Some(*id),
            _ => false,
        }
    }
}

/// Where one file record sits in the index bytes.
#[derive(Debug, Clone, Copy)]
struct Slot {
    rec: u32,
    path_len: u32,
}

/// A loaded (or freshly built) head index.
#[derive(Debug)]
pub struct HeadIndex {
    buf: Bytes,
    slots: Vec<Slot>,
    meta: TreeMeta,
    fingerprint: u128,
    json_key: Option<StatKey>,
}

/// The fingerprint of a `.pvr/json`'s bytes.
pub fn fingerprint(bytes: &[u8]) -> u128 {
    xxh3_128(bytes)
}

fn index_path(repo: &Repo) -> PathBuf {
    repo.ext_dir().join("headindex")
}

impl HeadIndex {
    /// The index of `state`, whose `.pvr/json` bytes have `fingerprint` (and stat key
    /// `json_key`, when stable).
    pub fn build(state: &State, fingerprint: u128, json_key: Option<StatKey>) -> HeadIndex {
        let bytes = encode(state, fingerprint, json_key);
        decode(Bytes::Owned(bytes)).expect("an index just encoded decodes")
    }

    /// The index at `path`; `None` when missing or damaged.
    pub fn load(path: &Path) -> Option<HeadIndex> {
        let file = fs::File::open(path).ok()?;
        // SAFETY: the index is only ever replaced by rename, never rewritten in place, so the
        // mapped file does not change under us (as the stat cache's `Bytes::Mapped`).
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.ok()?;
        decode(Bytes::Mapped(map))
    }

    /// An index decoded from `body` with the magic and checksum put in front (`crate::fuzzing`).
    pub(crate) fn from_body_for_fuzzing(body: &[u8]) -> Option<HeadIndex> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&xxh3_64(body).to_le_bytes());
        bytes.extend_from_slice(body);
        decode(Bytes::Owned(bytes))
    }

    /// Write this index to `path` (tests: plant an index).
    #[cfg(test)]
    pub(super) fn save_to(&self, path: &Path) {
        self.save(path)
    }

    fn save(&self, path: &Path) {
        if let Some(dir) = path.parent() {
            let _ = fs::create_dir_all(dir);
        }
        // Failure (a read-only repository) is ignored: the index is an optimisation.
        let _ = write_replace(path, &self.buf);
    }

    /// Every file of the head, in path order.
    pub fn files(&self) -> impl ExactSizeIterator<Item = (&str, HeadFile)> + '_ {
        self.slots.iter().map(|s| self.record(*s))
    }

    fn record(&self, s: Slot) -> (&str, HeadFile) {
        let rec = &self.buf[s.rec as usize..];
        let id = ObjectId::from_bytes(rec[1..33].try_into().expect("validated when loaded"));
        let path = &rec[37..37 + s.path_len as usize];
        // SAFETY: `decode` checked that every path is UTF-8, and the bytes do not change (see
        // `load`); checking again on every lookup was a visible share of `status`.
        let path = unsafe { std::str::from_utf8_unchecked(path) };
        let file = if rec[0] == 0 {
            HeadFile::Object(id)
        } else {
            HeadFile::Inline(id)
        };
        (path, file)
    }

    /// Is `path` a file of the head?
    pub fn contains(&self, path: &str) -> bool {
        self.slots
            .binary_search_by(|s| self.record(*s).0.cmp(path))
            .is_ok()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The head's modes, symlinks and empty directories.
    pub fn meta(&self) -> &TreeMeta {
        &self.meta
    }
}

/// The head as `status` gets it: from the index when it is believed, else parsed.
#[derive(Debug)]
pub enum LoadedHead {
    /// The index, believed on `.pvr/json`'s recorded stat key (the file was not read).
    ByKey(HeadIndex),
    /// The index, believed on the fingerprint of `.pvr/json`'s bytes.
    ByContent(HeadIndex),
    /// The head moved (or had no index): parsed; a new index was written.
    Parsed(State),
}

/// The head for `status` (see the module docs for when the index is believed). Errors are
/// those of `Repo::head_state`.
pub fn load_head(repo: &Repo) -> Result<LoadedHead> {
    load_head_with_cutoff(repo, DirCache::cutoff_now())
}

/// `load_head`, where a `.pvr/json` stat key counts as stable when its mtime and ctime are
/// before `cutoff` (ns).
pub(super) fn load_head_with_cutoff(repo: &Repo, cutoff: i64) -> Result<LoadedHead> {
    let json_path = repo.json_path();
    let mut file = fs::File::open(&json_path).ctx("read", &json_path)?;
    let key = StatKey::of(&file.metadata().ctx("read", &json_path)?);
    let path = index_path(repo);
    let index = HeadIndex::load(&path);
    if let Some(ix) = index.as_ref() {
        if ix.json_key == Some(key) {
            return Ok(LoadedHead::ByKey(index.expect("checked")));
        }
    }
    let mut bytes = Vec::with_capacity(key.size as usize);
    file.read_to_end(&mut bytes).ctx("read", &json_path)?;
    let unchanged = file
        .metadata()
        .is_ok_and(|m| StatKey::of(&m) == key && key.size == bytes.len() as u64);
    let stable_key = (unchanged && key.mtime_ns < cutoff && key.ctime_ns < cutoff).then_some(key);
    let print = fingerprint(&bytes);
    if let Some(ix) = index.filter(|ix| ix.fingerprint == print) {
        if stable_key.is_some() {
            let ix = rekey(ix, stable_key);
            ix.save(&path);
            return Ok(LoadedHead::ByContent(ix));
        }
        return Ok(LoadedHead::ByContent(ix));
    }
    let state = State::from_json_bytes(&bytes, &json_path.display().to_string())?;
    HeadIndex::build(&state, print, stable_key).save(&path);
    Ok(LoadedHead::Parsed(state))
}

/// After a commit made `state` (whose id is `state_id`) the head: write its index, so that the
/// next `status` does not parse it. `.pvr/json` is read back and written into the index only
/// if it still holds that state (another writer may have moved the head since); its stat key is
/// not recorded, since the file was just written (the first status a second later records it).
pub fn save_for(repo: &Repo, state: &State, state_id: ObjectId) {
    let Ok(bytes) = fs::read(repo.json_path()) else {
        return;
    };
    if ObjectId::hash_bytes(&bytes) == state_id {
        HeadIndex::build(state, fingerprint(&bytes), None).save(&index_path(repo));
    }
}

/// `ix` with another recorded stat key (the records are copied as they are).
fn rekey(ix: HeadIndex, json_key: Option<StatKey>) -> HeadIndex {
    let files_at = 8 + 8 + 16 + 1 + if ix.json_key.is_some() { 44 } else { 0 };
    let mut out = Vec::with_capacity(ix.buf.len() + 44);
    out.extend_from_slice(&ix.buf[..32]);
    put_header_key(&mut out, json_key);
    out.extend_from_slice(&ix.buf[files_at..]);
    seal(&mut out);
    decode(Bytes::Owned(out)).expect("an index just encoded decodes")
}

fn put_header_key(out: &mut Vec<u8>, key: Option<StatKey>) {
    match key {
        Some(k) => {
            out.push(1);
            put_key(out, &k);
        }
        None => out.push(0),
    }
}

/// Fill in the checksum.
fn seal(out: &mut [u8]) {
    let sum = xxh3_64(&out[16..]);
    out[8..16].copy_from_slice(&sum.to_le_bytes());
}

fn encode(state: &State, fingerprint: u128, json_key: Option<StatKey>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + state.len() * 100);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&fingerprint.to_le_bytes());
    put_header_key(&mut out, json_key);
    out.extend_from_slice(&(state.len() as u32).to_le_bytes());
    // The state's files iterate in byte order of their paths (a BTreeMap of Strings).
    for (path, entry) in state.iter() {
        let (kind, id) = match HeadFile::of(entry) {
            HeadFile::Object(id) => (0, id),
            HeadFile::Inline(id) => (1, id),
        };
        out.push(kind);
        out.extend_from_slice(id.as_bytes());
        put_bytes(&mut out, path.as_bytes());
    }
    let meta = state.meta();
    out.extend_from_slice(&(meta.modes.len() as u32).to_le_bytes());
    for (path, mode) in &meta.modes {
        put_bytes(&mut out, path.as_bytes());
        out.extend_from_slice(&mode.to_le_bytes());
    }
    out.extend_from_slice(&(meta.links.len() as u32).to_le_bytes());
    for (path, target) in &meta.links {
        put_bytes(&mut out, path.as_bytes());
        put_bytes(&mut out, target.as_bytes());
    }
    out.extend_from_slice(&(meta.dirs.len() as u32).to_le_bytes());
    for path in &meta.dirs {
        put_bytes(&mut out, path.as_bytes());
    }
    seal(&mut out);
    out
}

fn decode(buf: Bytes) -> Option<HeadIndex> {
    let bytes: &[u8] = &buf;
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let (sum, body) = rest.split_at_checked(8)?;
    if u64::from_le_bytes(sum.try_into().ok()?) != xxh3_64(body) || bytes.len() > u32::MAX as usize
    {
        return None;
    }
    let mut r = Reader { buf: body };
    let fingerprint = u128::from_le_bytes(r.take(16)?.try_into().ok()?);
    let json_key = match r.take(1)?[0] {
        0 => None,
        1 => Some(r.key()?),
        _ => return None,
    };
    let files = r.u32()? as usize;
    let mut slots = Vec::with_capacity(files.min(body.len() / 37));
    let mut last: Option<&[u8]> = None;
    for _ in 0..files {
        let rec = (bytes.len() - r.buf.len()) as u32;
        if r.take(1)?[0] > 1 {
            return None;
        }
        r.id()?;
        let path = r.bytes()?;
        std::str::from_utf8(path).ok()?;
        if last.is_some_and(|l| l >= path) {
            return None;
        }
        last = Some(path);
        slots.push(Slot {
            rec,
            path_len: path.len() as u32,
        });
    }
    let mut meta = TreeMeta::default();
    for _ in 0..r.u32()? {
        let path = r.str()?;
        meta.modes.insert(path, r.u32()?);
    }
    for _ in 0..r.u32()? {
        let path = r.str()?;
        meta.links.insert(path, r.str()?);
    }
    for _ in 0..r.u32()? {
        meta.dirs.insert(r.str()?);
    }
    if !r.buf.is_empty() {
        return None;
    }
    Some(HeadIndex {
        buf,
        slots,
        meta,
        fingerprint,
        json_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state with objects, inline values (one a 64-hex string stored as an object by its
    /// writer), modes, a symlink and an empty directory.
    fn sample() -> State {
        let json = br##"{"#spec":"pantavisor-service-system@1",
            ".pvrfs-meta.json":{"dirs":["empty"],"links":{"d/link":"../a.txt"},"modes":{"a.txt":"0755","d":"0700"}},
            "a.txt":"1111111111111111111111111111111111111111111111111111111111111111",
            "d/b.json":{"k":[1,2.5,{"x":null}]},
            "d/c.json":"2222222222222222222222222222222222222222222222222222222222222222",
            "z.json":[]}"##;
        State::from_json_bytes(json, "sample").unwrap()
    }

    #[test]
    fn round_trips_the_heads_files_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("headindex");
        let state = sample();
        let key = StatKey {
            size: 1,
            mtime_ns: 2,
            ctime_ns: 3,
            ino: 4,
            dev: 5,
            mode: 0o100644,
        };
        for json_key in [None, Some(key)] {
            HeadIndex::build(&state, 77, json_key).save(&path);
            let ix = HeadIndex::load(&path).unwrap();
            let want: Vec<(&str, HeadFile)> = state
                .iter()
                .map(|(k, e)| (k.as_str(), HeadFile::of(e)))
                .collect();
            assert_eq!(ix.files().collect::<Vec<_>>(), want);
            assert_eq!(ix.meta(), state.meta());
            assert_eq!((ix.fingerprint, ix.json_key), (77, json_key));
            assert!(ix.contains("d/b.json") && !ix.contains("d/link") && !ix.contains("d"));
            // an inline value is known by its canonical bytes' hash, as a probe computes it
            let value = json::parse(b"{ \"k\" : [1, 2.50, {\"x\": null}] }").unwrap();
            let id = ObjectId::hash_bytes(&json::to_canonical(&value));
            assert_eq!(want[1], ("d/b.json", HeadFile::Inline(id)));
            assert!(want[1].1.is(&Entry::Inline(value), Some(id)));
            assert!(!want[1].1.is(&Entry::Object(id), Some(id)));
            // a re-keyed index keeps everything else
            let other = rekey(ix, Some(StatKey { ino: 9, ..key }));
            assert_eq!(other.files().collect::<Vec<_>>(), want);
            assert_eq!(other.json_key.map(|k| k.ino), Some(9));
            assert_eq!(rekey(other, None).json_key, None);
        }
    }

    #[test]
    fn a_damaged_old_or_foreign_index_is_no_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("headindex");
        assert!(HeadIndex::load(&path).is_none());
        HeadIndex::build(&sample(), 1, None).save(&path);
        let good = fs::read(&path).unwrap();
        assert!(HeadIndex::load(&path).is_some());
        for i in [0, 7, 9, 20, 40, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            fs::write(&path, &bad).unwrap();
            assert!(HeadIndex::load(&path).is_none(), "byte {i}");
        }
        for bad in [&good[..good.len() - 1], &good[..20], b"", b"PVRFSHI0"] {
            fs::write(&path, bad).unwrap();
            assert!(HeadIndex::load(&path).is_none());
        }
        let mut longer = good.clone();
        longer.push(0);
        fs::write(&path, &longer).unwrap();
        assert!(HeadIndex::load(&path).is_none());
        // another version of the format, checksum and all: not read
        let mut old = good.clone();
        old[..8].copy_from_slice(b"PVRFSHI0");
        fs::write(&path, &old).unwrap();
        assert!(HeadIndex::load(&path).is_none());
        // files out of order, checksum fixed: refused
        let state = State::from_json_bytes(br#"{"a.json":{},"b.json":{}}"#, "t").unwrap();
        let mut swapped = encode(&state, 1, None);
        let a = swapped.iter().rposition(|&b| b == b'a').unwrap();
        let b = swapped.iter().rposition(|&b| b == b'b').unwrap();
        swapped.swap(a, b);
        seal(&mut swapped);
        assert!(decode(Bytes::Owned(swapped)).is_none());
    }
}

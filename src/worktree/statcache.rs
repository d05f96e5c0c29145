//! The stat cache (`.pvr/pvrfs/statcache`): what pvrfs last learned about each tracked file, so
//! that `status`, `diff` and `commit` re-read only files whose `lstat` changed (git's index idea),
//! and about each directory, so that `status` reads only directories that changed (git's
//! untracked cache; the rules are in `walk`).
//!
//! Per path it keeps the `lstat` key (size, mtime ns, ctime ns, inode, device, mode), the
//! sha256 of the file's bytes and, for a `.json` file that parsed, the sha256 of its value's
//! canonical bytes. Per directory it keeps a `walk::DirRecord`.
//!
//! Format (little-endian), written to a temp file and renamed:
//! `b"PVRFSSC3"`, `checksum u64` (of everything after it), `files u32`, then per file, in
//! strictly ascending path order (so lookups binary-search and scans merge, no hash map):
//! `size u64, mtime i64, ctime i64, ino u64, dev u64, mode u32, sha [32], has_value u8,
//! value_sha [32] (only when has_value = 1), path_len u32, path bytes`; then `dirs u32` and per
//! directory: `size u64, mtime i64, ctime i64, ino u64, dev u64, mode u32, flags u8 (1 =
//! stable, 2 = has an ignore entry), the ignore entry's key (only with flag 2), path_len u32,
//! path, listing_len u32, listing` (a listing entry is a kind byte — `f` file, `d` directory,
//! `l` symlink, `s` socket, `p` FIFO, `c`/`b` device, `n` name not UTF-8 — the name, a NUL).
//! Version 2 (without modes and symlinks) is not read: such a cache is empty. A file that does not decode, fails its checksum, or has trailing bytes makes the
//! whole cache empty (status then reads everything): it is only a cache.
//!
//! Racy entries (git's "racily clean" problem): a file written in the same timestamp tick as the
//! cache could change again without its mtime moving. A file entry is trusted only when the
//! file's mtime is strictly older than the cache file's own mtime, which comes from the same
//! (coarse) kernel clock as the files' mtimes; anything else is re-hashed and the cache
//! rewritten, so it converges on the next run.

use super::stat::{DirRecord, FxBuild, FxHasher, HashMap, StatKey};
use crate::fsutil;
use crate::oid::ObjectId;
use std::fs;
use std::hash::Hasher;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"PVRFSSC3";

/// What the cache knows about one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheEntry {
    pub key: StatKey,
    /// sha256 of the file's bytes (= its object id).
    pub sha: ObjectId,
    /// sha256 of the canonical bytes of the parsed JSON value (`.json` files that parse).
    pub value_sha: Option<ObjectId>,
}

/// Where one file record and its path sit in `StatCache::buf`.
#[derive(Debug, Clone, Copy)]
struct Slot {
    rec: u32,
    path: u32,
    len: u32,
}

/// The bytes of the file records: the cache file mapped as it was read, or built in memory.
#[derive(Debug)]
pub(super) enum Bytes {
    /// Safe to map: the cache is only ever replaced by rename, never rewritten in place, so
    /// the mapped file does not change under us.
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Default for Bytes {
    fn default() -> Self {
        Bytes::Owned(Vec::new())
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// The cache in memory: the file records stay in the bytes they were read as (sorted by path,
/// found by offset: loading 100k entries allocates nothing per entry); directory records are
/// decoded.
#[derive(Debug, Default)]
pub struct StatCache {
    path: PathBuf,
    /// `MAGIC`, checksum, `files u32` and the file records, up to `files_end` (the directory
    /// records that follow in a loaded file are decoded into `dirs`).
    buf: Bytes,
    files_end: usize,
    slots: Vec<Slot>,
    /// Directory records of the last status walk (see `walk`).
    dirs: HashMap<String, DirRecord>,
    /// mtime of the cache file when loaded (ns); entries with a newer or equal mtime are racy.
    written_ns: i64,
}

impl StatCache {
    /// Load the cache at `path`; a missing, unreadable or damaged cache is an empty one.
    pub fn load(path: &Path) -> StatCache {
        let mut cache = StatCache {
            path: path.to_path_buf(),
            ..Default::default()
        };
        let Ok(file) = fs::File::open(path) else {
            return cache;
        };
        let Ok(meta) = file.metadata() else {
            return cache;
        };
        // Mapped and pre-faulted in one call: no copy, and no fresh pages to zero.
        // SAFETY: see `Bytes::Mapped`; a file truncated by someone else would fault, not lie.
        let Ok(map) = (unsafe { memmap2::MmapOptions::new().populate().map(&file) }) else {
            return cache;
        };
        if let Some((slots, files_end, dirs)) = decode(&map) {
            cache.buf = Bytes::Mapped(map);
            cache.files_end = files_end;
            cache.slots = slots;
            cache.dirs = dirs;
            cache.written_ns = StatKey::of(&meta).mtime_ns;
        }
        cache
    }

    /// A cache decoded from `body` with the magic and checksum put in front (`crate::fuzzing`:
    /// a fuzzer could not guess the checksum); empty when it does not decode.
    pub(crate) fn from_body_for_fuzzing(body: &[u8]) -> StatCache {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&checksum(body).to_le_bytes());
        bytes.extend_from_slice(body);
        let mut cache = StatCache::default();
        if let Some((slots, files_end, dirs)) = decode(&bytes) {
            cache.buf = Bytes::Owned(bytes);
            cache.files_end = files_end;
            cache.slots = slots;
            cache.dirs = dirs;
        }
        cache
    }

    fn path_at(&self, i: usize) -> &[u8] {
        let s = self.slots[i];
        &self.buf[s.path as usize..(s.path + s.len) as usize]
    }

    fn entry_at(&self, i: usize) -> CacheEntry {
        let mut r = Reader {
            buf: &self.buf[self.slots[i].rec as usize..],
        };
        read_entry(&mut r).expect("validated when loaded")
    }

    fn find(&self, path: &str) -> Option<usize> {
        self.slots
            .binary_search_by(|s| {
                self.buf[s.path as usize..(s.path + s.len) as usize].cmp(path.as_bytes())
            })
            .ok()
    }

    /// The cached entry for `path` if the file's current `key` matches it and is not racy.
    pub fn lookup(&self, path: &str, key: &StatKey) -> Option<CacheEntry> {
        self.trusted(self.find(path)?, key)
    }

    /// Entry `i` (from `positions`) if the file's current `key` matches it and is not racy.
    pub fn trusted(&self, i: usize, key: &StatKey) -> Option<CacheEntry> {
        let e = self.entry_at(i);
        (e.key == *key && key.mtime_ns < self.written_ns).then_some(e)
    }

    /// The position of each of `paths` in the cache: a merge when `paths` come in sorted runs
    /// (a state's keys, then staged ones), a binary search where a run restarts.
    pub fn positions<'p>(&self, paths: impl IntoIterator<Item = &'p str>) -> Vec<Option<usize>> {
        let mut at = 0;
        let mut last: &[u8] = &[];
        paths
            .into_iter()
            .map(|p| {
                let p = p.as_bytes();
                if p < last {
                    at = self.slots.partition_point(|s| {
                        &self.buf[s.path as usize..(s.path + s.len) as usize] < p
                    });
                } else {
                    while at < self.slots.len() && self.path_at(at) < p {
                        at += 1;
                    }
                }
                last = p;
                (at < self.slots.len() && self.path_at(at) == p).then_some(at)
            })
            .collect()
    }

    pub fn get(&self, path: &str) -> Option<CacheEntry> {
        Some(self.entry_at(self.find(path)?))
    }

    /// Every file's path, in order.
    pub fn paths(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.slots.len()).map(|i| self.path_str(i))
    }

    fn path_str(&self, i: usize) -> &str {
        // SAFETY: `decode` checked every path is UTF-8 (`replace` builds them from `&str`), and
        // the bytes never change (see `Bytes::Mapped`); checking again cost a visible share of
        // a status at 100k files.
        unsafe { std::str::from_utf8_unchecked(self.path_at(i)) }
    }

    /// Every file entry, in path order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, CacheEntry)> + '_ {
        (0..self.slots.len()).map(|i| {
            let p = self.path_str(i);
            (p, self.entry_at(i))
        })
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The directory records (see `walk::DirCache`).
    pub fn dirs(&self) -> &HashMap<String, DirRecord> {
        &self.dirs
    }

    /// Replace the directory records (saved with the next save).
    pub fn set_dirs(&mut self, dirs: HashMap<String, DirRecord>) {
        self.dirs = dirs;
    }

    /// Replace the file entries (saved with the next save); a path given twice keeps its last
    /// entry.
    pub fn replace<S: AsRef<str>>(&mut self, entries: impl IntoIterator<Item = (S, CacheEntry)>) {
        let mut entries: Vec<(S, CacheEntry)> = entries.into_iter().collect();
        // Stable: of equal paths the last one given comes last, and is the one kept.
        entries.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        let mut buf = Vec::with_capacity(20 + entries.len() * 120);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&0u64.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        let mut slots: Vec<Slot> = Vec::with_capacity(entries.len());
        for (n, (path, e)) in entries.iter().enumerate() {
            let path = path.as_ref();
            if entries
                .get(n + 1)
                .is_some_and(|next| next.0.as_ref() == path)
            {
                continue;
            }
            let rec = buf.len() as u32;
            put_key(&mut buf, &e.key);
            buf.extend_from_slice(e.sha.as_bytes());
            match &e.value_sha {
                Some(v) => {
                    buf.push(1);
                    buf.extend_from_slice(v.as_bytes());
                }
                None => buf.push(0),
            }
            put_bytes(&mut buf, path.as_bytes());
            slots.push(Slot {
                rec,
                path: (buf.len() - path.len()) as u32,
                len: path.len() as u32,
            });
        }
        buf[16..20].copy_from_slice(&(slots.len() as u32).to_le_bytes());
        self.files_end = buf.len();
        self.buf = Bytes::Owned(buf);
        self.slots = slots;
    }

    /// Replace the file entries and write the cache out.
    pub fn replace_and_save<S: AsRef<str>>(
        &mut self,
        entries: impl IntoIterator<Item = (S, CacheEntry)>,
    ) {
        self.replace(entries);
        self.save();
    }

    /// Write the cache out as it is (after `replace` or `set_dirs`). Failure to write (a
    /// read-only repository) is ignored: the cache is an optimisation.
    pub fn save_now(&mut self) {
        self.save();
    }

    /// Insert or update entries, then save.
    pub fn update_and_save(&mut self, updates: impl IntoIterator<Item = (String, CacheEntry)>) {
        let mut all: Vec<(String, CacheEntry)> =
            self.entries().map(|(p, e)| (p.to_string(), e)).collect();
        all.extend(updates);
        self.replace(all);
        self.save();
    }

    fn save(&mut self) {
        let bytes = encode(&self.buf[..self.files_end], &self.dirs);
        if let Some(dir) = self.path.parent() {
            let _ = fs::create_dir_all(dir);
        }
        if write_replace(&self.path, &bytes).is_ok() {
            if let Ok(meta) = fs::metadata(&self.path) {
                self.written_ns = StatKey::of(&meta).mtime_ns;
            }
        }
    }
}

/// Temp file + rename, without fsync: a cache lost or rolled back by a power cut is harmless
/// (an entry only ever vouches for a file whose stat key still matches it), and fsyncing
/// megabytes on every status would not be.
pub(super) fn write_replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = fsutil::temp_path_in(dir);
    let result = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub(super) fn put_key(out: &mut Vec<u8>, k: &StatKey) {
    out.extend_from_slice(&k.size.to_le_bytes());
    out.extend_from_slice(&k.mtime_ns.to_le_bytes());
    out.extend_from_slice(&k.ctime_ns.to_le_bytes());
    out.extend_from_slice(&k.ino.to_le_bytes());
    out.extend_from_slice(&k.dev.to_le_bytes());
    out.extend_from_slice(&k.mode.to_le_bytes());
}

pub(super) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// A fast 64-bit checksum (FxHash over 8-byte words, then the length): enough to catch a torn
/// or damaged file, which is all it is for.
fn checksum(bytes: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(bytes);
    h.write(&(bytes.len() as u64).to_le_bytes());
    h.finish()
}

/// The whole file: `files` (header and file records, as `StatCache::buf`) + the directories,
/// with the checksum filled in.
fn encode(files: &[u8], dirs: &HashMap<String, DirRecord>) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + files.len() + dirs.len() * 120);
    if files.len() < 20 {
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[0; 12]);
    } else {
        out.extend_from_slice(files);
    }
    out.extend_from_slice(&(dirs.len() as u32).to_le_bytes());
    for (path, d) in dirs {
        put_key(&mut out, &d.key);
        out.push(u8::from(d.stable) | if d.ignore.is_some() { 2 } else { 0 });
        if let Some(k) = &d.ignore {
            put_key(&mut out, k);
        }
        put_bytes(&mut out, path.as_bytes());
        put_bytes(&mut out, &d.listing);
    }
    let sum = checksum(&out[16..]);
    out[8..16].copy_from_slice(&sum.to_le_bytes());
    out
}

fn read_entry(r: &mut Reader<'_>) -> Option<CacheEntry> {
    let key = r.key()?;
    let sha = r.id()?;
    let value_sha = match r.take(1)?[0] {
        0 => None,
        1 => Some(r.id()?),
        _ => return None,
    };
    Some(CacheEntry {
        key,
        sha,
        value_sha,
    })
}

pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }
    pub(super) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    pub(super) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub(super) fn id(&mut self) -> Option<ObjectId> {
        Some(ObjectId::from_bytes(self.take(32)?.try_into().ok()?))
    }
    pub(super) fn key(&mut self) -> Option<StatKey> {
        Some(StatKey {
            size: self.u64()?,
            mtime_ns: self.u64()? as i64,
            ctime_ns: self.u64()? as i64,
            ino: self.u64()?,
            dev: self.u64()?,
            mode: self.u32()?,
        })
    }
    pub(super) fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    pub(super) fn str(&mut self) -> Option<String> {
        Some(std::str::from_utf8(self.bytes()?).ok()?.to_string())
    }
}

/// File slots (offsets into `bytes`), where the file records end, and the directories.
type Decoded = (Vec<Slot>, usize, HashMap<String, DirRecord>);

fn decode(bytes: &[u8]) -> Option<Decoded> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let (sum, body) = rest.split_at_checked(8)?;
    if u64::from_le_bytes(sum.try_into().ok()?) != checksum(body) || bytes.len() > u32::MAX as usize
    {
        return None;
    }
    let mut r = Reader { buf: body };
    let files = r.u32()? as usize;
    let mut slots: Vec<Slot> = Vec::with_capacity(files.min(body.len() / 80));
    let offset = |r: &Reader<'_>| (bytes.len() - r.buf.len()) as u32;
    let mut last: Option<&[u8]> = None;
    for _ in 0..files {
        let rec = offset(&r);
        read_entry(&mut r)?;
        let path = r.bytes()?;
        std::str::from_utf8(path).ok()?;
        // strictly sorted, so that lookups can search and merge
        if last.is_some_and(|l| l >= path) {
            return None;
        }
        last = Some(path);
        slots.push(Slot {
            rec,
            path: offset(&r) - path.len() as u32,
            len: path.len() as u32,
        });
    }
    let files_end = bytes.len() - r.buf.len();
    let ndirs = r.u32()? as usize;
    let mut dirs =
        HashMap::with_capacity_and_hasher(ndirs.min(body.len() / 40), FxBuild::default());
    for _ in 0..ndirs {
        let key = r.key()?;
        let flags = r.take(1)?[0];
        if flags > 3 {
            return None;
        }
        let ignore = if flags & 2 != 0 { Some(r.key()?) } else { None };
        let path = r.str()?;
        let listing = r.bytes()?.to_vec();
        if listing.last().is_some_and(|&b| b != 0) {
            return None;
        }
        dirs.insert(
            path,
            DirRecord {
                key,
                ignore,
                stable: flags & 1 != 0,
                listing,
            },
        );
    }
    r.buf.is_empty().then_some((slots, files_end, dirs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> CacheEntry {
        CacheEntry {
            key: StatKey {
                size: n,
                mtime_ns: 5,
                ctime_ns: 6,
                ino: 7,
                dev: 8,
                mode: 0o100644,
            },
            sha: ObjectId::hash_bytes(&n.to_le_bytes()),
            value_sha: (n % 2 == 0).then(|| ObjectId::hash_bytes(b"v")),
        }
    }

    #[test]
    fn round_trips_and_trusts_only_entries_older_than_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("statcache");
        let mut cache = StatCache::load(&path);
        assert!(cache.is_empty());
        // given in any order, with a path twice (the last one wins)
        let mut entries: Vec<(String, CacheEntry)> = (0..5)
            .rev()
            .map(|n| (format!("d/f {n}.json"), entry(n)))
            .collect();
        entries.push(("d/f 2.json".into(), entry(9)));
        cache.replace_and_save(entries);
        let loaded = StatCache::load(&path);
        let got: Vec<(String, CacheEntry)> =
            loaded.entries().map(|(p, e)| (p.to_string(), e)).collect();
        let mut want: Vec<(String, CacheEntry)> = (0..5)
            .map(|n| (format!("d/f {n}.json"), entry(n)))
            .collect();
        want[2].1 = entry(9);
        assert_eq!(got, want);
        let e = entry(3);
        assert_eq!(loaded.lookup("d/f 3.json", &e.key), Some(e));
        assert_eq!(loaded.get("d/f 4.json"), Some(entry(4)));
        assert_eq!(loaded.get("d/f 5.json"), None);
        // positions: sorted runs are merged, a restart is searched
        assert_eq!(
            loaded.positions([
                "d/f 0.json",
                "d/f 3.json",
                "x",
                "d/f 1.json",
                "a",
                "d/f 4.json"
            ]),
            vec![Some(0), Some(3), None, Some(1), None, Some(4)]
        );
        // a different stat key, or a file as new as the cache, is not trusted
        let mut other = e.key;
        other.size += 1;
        assert!(loaded.lookup("d/f 3.json", &other).is_none());
        let mut racy_cache = StatCache::load(&path);
        let mut racy = e;
        racy.key.mtime_ns = racy_cache.written_ns;
        racy_cache.update_and_save([("d/f 3.json".to_string(), racy)]);
        racy_cache.written_ns = racy.key.mtime_ns;
        assert!(racy_cache.lookup("d/f 3.json", &racy.key).is_none());
        racy_cache.written_ns = racy.key.mtime_ns + 1;
        assert_eq!(racy_cache.lookup("d/f 3.json", &racy.key), Some(racy));
    }

    #[test]
    fn unsorted_file_records_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("statcache");
        let mut cache = StatCache::load(&path);
        cache.replace_and_save([("a".to_string(), entry(1)), ("b".to_string(), entry(2))]);
        // swap the two one-byte paths and fix the checksum: it decodes, but out of order
        let mut bytes = fs::read(&path).unwrap();
        let a = bytes.iter().rposition(|&b| b == b'a').unwrap();
        let b = bytes.iter().rposition(|&b| b == b'b').unwrap();
        bytes.swap(a, b);
        let sum = checksum(&bytes[16..]);
        bytes[8..16].copy_from_slice(&sum.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        assert!(StatCache::load(&path).is_empty());
    }

    #[test]
    fn directory_records_round_trip_and_damage_empties_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("statcache");
        let mut cache = StatCache::load(&path);
        let record = |n: u64, ignore| DirRecord {
            key: entry(n).key,
            ignore,
            stable: n % 2 == 0,
            listing: b"fa\0dsub\0".to_vec(),
        };
        let dirs: HashMap<String, DirRecord> = [
            (String::new(), record(1, None)),
            ("d/e".to_string(), record(2, Some(entry(3).key))),
        ]
        .into_iter()
        .collect();
        cache.set_dirs(dirs.clone());
        cache.replace_and_save((0..3).map(|n| (format!("f{n}"), entry(n))));
        let loaded = StatCache::load(&path);
        assert_eq!((loaded.dirs(), loaded.len()), (&dirs, 3));
        // any damaged byte, a truncation or trailing bytes: nothing is believed
        let good = fs::read(&path).unwrap();
        for i in [0, 9, 20, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            fs::write(&path, &bad).unwrap();
            let c = StatCache::load(&path);
            assert!(c.is_empty() && c.dirs().is_empty(), "byte {i}");
        }
        fs::write(&path, &good[..good.len() - 3]).unwrap();
        assert!(StatCache::load(&path).dirs().is_empty());
        let mut longer = good.clone();
        longer.push(0);
        fs::write(&path, &longer).unwrap();
        assert!(StatCache::load(&path).dirs().is_empty());
    }

    #[test]
    fn garbage_is_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("statcache");
        fs::write(&path, b"PVRFSSC1\x01\x02").unwrap();
        assert!(StatCache::load(&path).is_empty());
        fs::write(&path, b"nonsense").unwrap();
        assert!(StatCache::load(&path).is_empty());
    }
}

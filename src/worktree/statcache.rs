//! The stat cache (`.pvr/pvrfs/statcache`): what pvrfs last learned about each tracked file, so
//! that `status`, `diff` and `commit` re-read only files whose `lstat` changed (git's index idea),
//! and about each directory, so that `status` reads only directories that changed (git's
//! untracked cache; the rules are in `walk`).
//!
//! Per path it keeps the `lstat` key (size, mtime ns, ctime ns, inode, device), the sha256 of the
//! file's bytes and, for a `.json` file that parsed, the sha256 of its value's canonical bytes.
//! Per directory it keeps a `walk::DirRecord`.
//!
//! Format (little-endian), written to a temp file and renamed:
//! `b"PVRFSSC2"`, `checksum u64` (of everything after it), `files u32`, then per file:
//! `size u64, mtime i64, ctime i64, ino u64, dev u64, sha [32], has_value u8, value_sha [32]
//! (only when has_value = 1), path_len u32, path bytes`; then `dirs u32` and per directory:
//! `size u64, mtime i64, ctime i64, ino u64, dev u64, flags u8 (1 = stable, 2 = has an ignore
//! entry), the ignore entry's five u64 (only with flag 2), path_len u32, path, listing_len u32,
//! listing`. A file that does not decode, fails its checksum, or has trailing bytes makes the
//! whole cache empty (status then reads everything): it is only a cache.
//!
//! Racy entries (git's "racily clean" problem): a file written in the same timestamp tick as the
//! cache could change again without its mtime moving. A file entry is trusted only when the
//! file's mtime is strictly older than the cache file's own mtime, which comes from the same
//! (coarse) kernel clock as the files' mtimes; anything else is re-hashed and the cache
//! rewritten, so it converges on the next run.

use super::walk::DirRecord;
use crate::fsutil;
use crate::oid::ObjectId;
use std::fs;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"PVRFSSC2";

/// FxHash (rustc's hasher): paths are not attacker-chosen keys here, and SipHash was a visible
/// share of `status` on 100k files.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub type FxBuild = BuildHasherDefault<FxHasher>;
pub type HashMap<K, V> = std::collections::HashMap<K, V, FxBuild>;
pub type HashSet<K> = std::collections::HashSet<K, FxBuild>;

/// The part of `lstat` that tells whether a file may have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatKey {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
}

impl StatKey {
    pub fn of(meta: &fs::Metadata) -> Self {
        StatKey {
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }

    /// From a raw `stat` (field types vary by architecture, hence the casts).
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    pub fn from_stat(st: &rustix::fs::Stat) -> Self {
        StatKey {
            size: st.st_size as u64,
            mtime_ns: st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64,
            ctime_ns: st.st_ctime as i64 * 1_000_000_000 + st.st_ctime_nsec as i64,
            ino: st.st_ino as u64,
            dev: st.st_dev as u64,
        }
    }
}

/// What the cache knows about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub key: StatKey,
    /// sha256 of the file's bytes (= its object id).
    pub sha: ObjectId,
    /// sha256 of the canonical bytes of the parsed JSON value (`.json` files that parse).
    pub value_sha: Option<ObjectId>,
}

#[derive(Debug, Default)]
pub struct StatCache {
    path: PathBuf,
    entries: HashMap<String, CacheEntry>,
    /// Directory records of the last status walk (see `walk`).
    dirs: HashMap<String, DirRecord>,
    /// mtime of the cache file when loaded (ns); entries with a newer or equal mtime are racy.
    written_ns: i64,
}

impl StatCache {
    /// Load the cache at `path`; a missing or unreadable cache is an empty one.
    pub fn load(path: &Path) -> StatCache {
        let mut cache = StatCache {
            path: path.to_path_buf(),
            ..Default::default()
        };
        let Ok(meta) = fs::metadata(path) else {
            return cache;
        };
        let Ok(bytes) = fs::read(path) else {
            return cache;
        };
        if let Some((entries, dirs)) = decode(&bytes) {
            cache.entries = entries;
            cache.dirs = dirs;
            cache.written_ns = StatKey::of(&meta).mtime_ns;
        }
        cache
    }

    /// The cached entry for `path` if the file's current `key` matches it and is not racy.
    pub fn lookup(&self, path: &str, key: &StatKey) -> Option<&CacheEntry> {
        self.entries
            .get(path)
            .filter(|e| e.key == *key && key.mtime_ns < self.written_ns)
    }

    pub fn get(&self, path: &str) -> Option<&CacheEntry> {
        self.entries.get(path)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The directory records (see `walk::DirCache`).
    pub fn dirs(&self) -> &HashMap<String, DirRecord> {
        &self.dirs
    }

    /// Replace the directory records (saved with the next save).
    pub fn set_dirs(&mut self, dirs: HashMap<String, DirRecord>) {
        self.dirs = dirs;
    }

    /// Would the cache hold `entries` after a `replace` (no need to rewrite it)?
    fn same_as(&self, entries: &HashMap<String, CacheEntry>) -> bool {
        self.entries.len() == entries.len()
            && entries
                .iter()
                .all(|(k, e)| self.entries.get(k) == Some(e) && e.key.mtime_ns < self.written_ns)
    }

    /// Replace the file entries; true when that changed them or they hold racy entries (the
    /// cache should be saved).
    pub fn replace(&mut self, entries: HashMap<String, CacheEntry>) -> bool {
        if self.same_as(&entries) {
            return false;
        }
        self.entries = entries;
        true
    }

    /// Replace the file entries and write the cache out when that changed anything.
    pub fn replace_and_save(&mut self, entries: HashMap<String, CacheEntry>) {
        if self.replace(entries) {
            self.save();
        }
    }

    /// Write the cache out as it is (after `replace` or `set_dirs`). Failure to write (a
    /// read-only repository) is ignored: the cache is an optimisation.
    pub fn save_now(&mut self) {
        self.save();
    }

    /// Insert or update entries, then save.
    pub fn update_and_save(&mut self, entries: impl IntoIterator<Item = (String, CacheEntry)>) {
        self.entries.extend(entries);
        self.save();
    }

    fn save(&mut self) {
        let bytes = encode(&self.entries, &self.dirs);
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
fn write_replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = fsutil::temp_path_in(dir);
    let result = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn put_key(out: &mut Vec<u8>, k: &StatKey) {
    out.extend_from_slice(&k.size.to_le_bytes());
    out.extend_from_slice(&k.mtime_ns.to_le_bytes());
    out.extend_from_slice(&k.ctime_ns.to_le_bytes());
    out.extend_from_slice(&k.ino.to_le_bytes());
    out.extend_from_slice(&k.dev.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
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

fn encode(entries: &HashMap<String, CacheEntry>, dirs: &HashMap<String, DirRecord>) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + entries.len() * 120 + dirs.len() * 120);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&0u64.to_le_bytes()); // the checksum, filled in below
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (path, e) in entries {
        put_key(&mut out, &e.key);
        out.extend_from_slice(e.sha.as_bytes());
        match &e.value_sha {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(v.as_bytes());
            }
            None => out.push(0),
        }
        put_bytes(&mut out, path.as_bytes());
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

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn id(&mut self) -> Option<ObjectId> {
        Some(ObjectId::from_bytes(self.take(32)?.try_into().ok()?))
    }
    fn key(&mut self) -> Option<StatKey> {
        Some(StatKey {
            size: self.u64()?,
            mtime_ns: self.u64()? as i64,
            ctime_ns: self.u64()? as i64,
            ino: self.u64()?,
            dev: self.u64()?,
        })
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn str(&mut self) -> Option<String> {
        Some(std::str::from_utf8(self.bytes()?).ok()?.to_string())
    }
}

type Decoded = (HashMap<String, CacheEntry>, HashMap<String, DirRecord>);

fn decode(bytes: &[u8]) -> Option<Decoded> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let (sum, body) = rest.split_at_checked(8)?;
    if u64::from_le_bytes(sum.try_into().ok()?) != checksum(body) {
        return None;
    }
    let mut r = Reader { buf: body };
    let files = r.u32()? as usize;
    // Sized up front, bounded by what the bytes can hold (an entry takes > 100 bytes).
    let mut entries =
        HashMap::with_capacity_and_hasher(files.min(body.len() / 100), FxBuild::default());
    for _ in 0..files {
        let key = r.key()?;
        let sha = r.id()?;
        let value_sha = match r.take(1)?[0] {
            0 => None,
            1 => Some(r.id()?),
            _ => return None,
        };
        let path = r.str()?;
        entries.insert(
            path,
            CacheEntry {
                key,
                sha,
                value_sha,
            },
        );
    }
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
    r.buf.is_empty().then_some((entries, dirs))
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
        let entries: HashMap<String, CacheEntry> = (0..5)
            .map(|n| (format!("d/f {n}.json"), entry(n)))
            .collect();
        cache.replace_and_save(entries.clone());
        let loaded = StatCache::load(&path);
        assert_eq!(loaded.entries, entries);
        let e = entry(3);
        assert_eq!(loaded.lookup("d/f 3.json", &e.key), Some(&e));
        // a different stat key, or a file as new as the cache, is not trusted
        let mut other = e.key;
        other.size += 1;
        assert!(loaded.lookup("d/f 3.json", &other).is_none());
        let mut racy = e.key;
        racy.mtime_ns = loaded.written_ns;
        let mut racy_cache = StatCache::load(&path);
        racy_cache.entries.get_mut("d/f 3.json").unwrap().key = racy;
        assert!(racy_cache.lookup("d/f 3.json", &racy).is_none());
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
        cache.replace_and_save((0..3).map(|n| (format!("f{n}"), entry(n))).collect());
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

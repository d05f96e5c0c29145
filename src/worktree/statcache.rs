//! The stat cache (`.pvr/pvrfs/statcache`): what pvrfs last learned about each tracked file, so
//! that `status`, `diff` and `commit` re-read only files whose `lstat` changed (git's index idea).
//!
//! Per path it keeps the `lstat` key (size, mtime ns, ctime ns, inode, device), the sha256 of the
//! file's bytes and, for a `.json` file that parsed, the sha256 of its value's canonical bytes.
//!
//! Format (little-endian, written to a temp file and renamed, so never torn):
//! `b"PVRFSSC1"`, then per entry: `size u64, mtime i64, ctime i64, ino u64, dev u64, sha [32],
//! has_value u8, value_sha [32] (only when has_value = 1), path_len u32, path bytes`. Anything that
//! does not decode makes the whole cache empty: it is only a cache.
//!
//! Racy entries (git's "racily clean" problem): a file written in the same timestamp tick as the
//! cache could change again without its mtime moving. An entry is trusted only when the file's
//! mtime is strictly older than the cache file's own mtime, which comes from the same (coarse)
//! kernel clock as the files' mtimes; anything else is re-hashed and the cache rewritten, so it
//! converges on the next run.

use crate::fsutil;
use crate::oid::ObjectId;
use std::fs;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"PVRFSSC1";

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
        if let Some(entries) = decode(&bytes) {
            cache.entries = entries;
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

    /// Would the cache hold `entries` after a `replace` (no need to rewrite it)?
    fn same_as(&self, entries: &HashMap<String, CacheEntry>) -> bool {
        self.entries.len() == entries.len()
            && entries
                .iter()
                .all(|(k, e)| self.entries.get(k) == Some(e) && e.key.mtime_ns < self.written_ns)
    }

    /// Replace the whole content and write it out when it changed or holds racy entries.
    /// Failure to write (a read-only repository) is ignored: the cache is an optimisation.
    pub fn replace_and_save(&mut self, entries: HashMap<String, CacheEntry>) {
        if self.same_as(&entries) {
            return;
        }
        self.entries = entries;
        self.save();
    }

    /// Insert or update entries, then save.
    pub fn update_and_save(&mut self, entries: impl IntoIterator<Item = (String, CacheEntry)>) {
        self.entries.extend(entries);
        self.save();
    }

    fn save(&mut self) {
        let bytes = encode(&self.entries);
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

fn encode(entries: &HashMap<String, CacheEntry>) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + entries.len() * 120);
    out.extend_from_slice(MAGIC);
    for (path, e) in entries {
        out.extend_from_slice(&e.key.size.to_le_bytes());
        out.extend_from_slice(&e.key.mtime_ns.to_le_bytes());
        out.extend_from_slice(&e.key.ctime_ns.to_le_bytes());
        out.extend_from_slice(&e.key.ino.to_le_bytes());
        out.extend_from_slice(&e.key.dev.to_le_bytes());
        out.extend_from_slice(e.sha.as_bytes());
        match &e.value_sha {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(v.as_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path.as_bytes());
    }
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
    fn id(&mut self) -> Option<ObjectId> {
        Some(ObjectId::from_bytes(self.take(32)?.try_into().ok()?))
    }
}

fn decode(bytes: &[u8]) -> Option<HashMap<String, CacheEntry>> {
    let mut r = Reader {
        buf: bytes.strip_prefix(MAGIC.as_slice())?,
    };
    // Sized up front (entries are ~110 bytes) so 100k inserts do not rehash as the map grows.
    let mut entries = HashMap::with_capacity_and_hasher(bytes.len() / 100, FxBuild::default());
    while !r.buf.is_empty() {
        let key = StatKey {
            size: r.u64()?,
            mtime_ns: r.u64()? as i64,
            ctime_ns: r.u64()? as i64,
            ino: r.u64()?,
            dev: r.u64()?,
        };
        let sha = r.id()?;
        let value_sha = match r.take(1)?[0] {
            0 => None,
            1 => Some(r.id()?),
            _ => return None,
        };
        let len = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
        let path = std::str::from_utf8(r.take(len)?).ok()?.to_string();
        entries.insert(
            path,
            CacheEntry {
                key,
                sha,
                value_sha,
            },
        );
    }
    Some(entries)
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
    fn garbage_is_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("statcache");
        fs::write(&path, b"PVRFSSC1\x01\x02").unwrap();
        assert!(StatCache::load(&path).is_empty());
        fs::write(&path, b"nonsense").unwrap();
        assert!(StatCache::load(&path).is_empty());
    }
}

//! The overlay's metadata journal: a snapshot plus an append-only log of checksummed records.
//!
//! Files (in the overlay directory):
//! - `snapshot`: JSON `{generation, header, records}` written with `fsutil::atomic_write`, so it
//!   is always a complete old or new version.
//! - `journal`: an 8-byte magic, the generation as u64 LE, then records, each framed as
//!   `len: u32 LE | checksum: first 8 bytes of sha256(payload) | payload (JSON of a Record)`.
//!   An append is one `write(2)`: it is in the page cache when the operation returns, so it
//!   survives a killed process; it becomes durable against power loss at the next `sync`
//!   (the overlay syncs on a file's `fsync`, on `fsyncdir`, before compaction and commit) —
//!   the durability contract of a local file system, at a write instead of a flush per operation.
//!
//! Replay reads the snapshot, then the journal's records only if the journal's generation equals
//! the snapshot's (a crash between writing a compacted snapshot and resetting the journal leaves
//! an older journal whose records the snapshot already contains). Replay stops at the first
//! incomplete or mismatching frame — a torn tail — and the file is truncated there before new
//! appends, so a torn update is never half-applied: the operation either happened or not.

use super::Record;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::oid::ObjectId;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"PVRFSOJ1";
const HEADER_LEN: u64 = 16;
/// A record larger than this is treated as corruption (records are small metadata).
const MAX_RECORD: u32 = 16 << 20;

/// What the snapshot file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub generation: u64,
    pub header: Header,
    pub records: Vec<Record>,
}

/// The overlay's identity: its base revision and the id counter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub base_rev: u64,
    /// State id of the base revision, checked on open (a rewritten revision is refused).
    pub base_state: String,
    /// Every inode or upper id handed out so far is below this.
    pub next_id: u64,
}

/// The open append side of the journal.
pub struct Journal {
    path: PathBuf,
    file: File,
    /// End of the last whole record (the file's length and write position): kept here so an
    /// append costs one `write(2)`, not a seek and a stat besides.
    end: u64,
    /// Size of the snapshot this journal continues (0 when unknown: after a replay).
    snapshot_len: u64,
    /// Appended since the last `sync`.
    dirty: bool,
}

fn checksum(payload: &[u8]) -> [u8; 8] {
    let id = ObjectId::hash_bytes(payload);
    id.as_bytes()[..8].try_into().expect("8 bytes")
}

/// Encode one record as a frame.
pub fn frame(rec: &Record) -> Vec<u8> {
    let payload = serde_json::to_vec(rec).expect("records serialise");
    let mut out = Vec::with_capacity(12 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(&payload));
    out.extend_from_slice(&payload);
    out
}

/// `payload` framed as `frame` frames a record (length, checksum), whatever it holds: lets the
/// fuzzer reach the record decoder past the checksum (`crate::fuzzing`).
pub(crate) fn frame_payload_for_fuzzing(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(12 + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(payload));
    out.extend_from_slice(payload);
    out
}

/// Decode the frames of a journal body; returns the records and the byte length of the valid
/// prefix (everything after it is a torn or corrupt tail).
pub fn decode(body: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut pos = 0;
    while body.len() - pos >= 12 {
        let len = u32::from_le_bytes(body[pos..pos + 4].try_into().unwrap());
        if len > MAX_RECORD || body.len() - pos - 12 < len as usize {
            break;
        }
        let payload = &body[pos + 12..pos + 12 + len as usize];
        if checksum(payload) != body[pos + 4..pos + 12] {
            break;
        }
        let Ok(rec) = serde_json::from_slice::<Record>(payload) else {
            break;
        };
        records.push(rec);
        pos += 12 + len as usize;
    }
    (records, pos)
}

pub fn snapshot_path(dir: &Path) -> PathBuf {
    dir.join("snapshot")
}

pub fn journal_path(dir: &Path) -> PathBuf {
    dir.join("journal")
}

/// Read the snapshot (`None` when the overlay does not exist).
pub fn read_snapshot(dir: &Path) -> Result<Option<Snapshot>> {
    let path = snapshot_path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Other(format!("corrupt overlay snapshot {}: {e}", path.display())))
}

/// Write a new snapshot, then start an empty journal of the same generation.
pub fn write_snapshot(dir: &Path, snap: &Snapshot) -> Result<Journal> {
    let bytes = serde_json::to_vec(snap).expect("snapshot serialises");
    fsutil::atomic_write(&snapshot_path(dir), &bytes, 0o600)?;
    fsutil::crash_point("overlay:snapshot-written");
    let mut head = MAGIC.to_vec();
    head.extend_from_slice(&snap.generation.to_le_bytes());
    let path = journal_path(dir);
    fsutil::atomic_write(&path, &head, 0o600)?;
    let mut journal = Journal::open_append(&path, HEADER_LEN)?;
    journal.snapshot_len = bytes.len() as u64;
    Ok(journal)
}

/// The journal's records that belong to `generation` (empty for an older or missing journal),
/// truncating a torn tail so that appends continue after the last whole record.
pub fn replay(dir: &Path, generation: u64) -> Result<(Vec<Record>, Journal)> {
    let path = journal_path(dir);
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes).ctx("read", &path)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("open", &path, e)),
    }
    let current = bytes.len() as u64 >= HEADER_LEN
        && &bytes[..8] == MAGIC
        && u64::from_le_bytes(bytes[8..16].try_into().unwrap()) == generation;
    if !current {
        // Stale (pre-compaction) or unborn journal: its records are not ours.
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&generation.to_le_bytes());
        fsutil::atomic_write(&path, &head, 0o600)?;
        return Ok((Vec::new(), Journal::open_append(&path, HEADER_LEN)?));
    }
    let (records, valid) = decode(&bytes[HEADER_LEN as usize..]);
    let end = HEADER_LEN + valid as u64;
    Ok((records, Journal::open_append(&path, end)?))
}

impl Journal {
    fn open_append(path: &Path, end: u64) -> Result<Journal> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .ctx("open", path)?;
        if file.metadata().ctx("stat", path)?.len() != end {
            file.set_len(end).ctx("truncate torn tail of", path)?;
            file.sync_data().ctx("fsync", path)?;
        }
        file.seek(SeekFrom::Start(end)).ctx("seek", path)?;
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            end,
            snapshot_len: 0,
            dirty: false,
        })
    }

    /// Append one record (see the module docs for when it becomes durable).
    pub fn append(&mut self, rec: &Record) -> Result<()> {
        let bytes = frame(rec);
        let start = self.end;
        // A crash leaves a prefix of the frame at worst, which replay drops.
        let result = self.file.write_all(&bytes).ctx("append to", &self.path);
        if result.is_err() {
            // Never leave a partial frame in front of later appends (ENOSPC, EIO).
            let _ = self.file.set_len(start);
            let _ = self.file.seek(SeekFrom::Start(start));
        } else {
            self.end = start + bytes.len() as u64;
        }
        self.dirty = true;
        fsutil::crash_point("overlay:journal-appended");
        result
    }

    /// Make every appended record durable.
    pub fn sync(&mut self) -> Result<()> {
        if self.dirty {
            self.file.sync_data().ctx("fsync", &self.path)?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Time to compact: the journal passed `min` bytes and twice the snapshot's size. Tying the
    /// threshold to the snapshot keeps compaction's cost (rewriting the whole snapshot)
    /// proportional to the records appended since, so a large untar stays linear.
    pub fn wants_compaction(&self, min: u64) -> bool {
        self.end > min.max(2 * self.snapshot_len)
    }
}

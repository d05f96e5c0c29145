//! Tarballs in pvr's export layout: a member `json` (the state) followed by one member
//! `objects/<64 hex>` per object; gzip-compressed when the name ends in `.gz`/`.tgz`.
//!
//! Writing ([`write()`]) reproduces the headers Go's `archive/tar` gives pvr's export byte for
//! byte (ustar, octal fields NUL-terminated, checksum `%06o\0 `, uid/gid 0 with empty names,
//! `json` mode 0600 — it comes from a temp file in pvr, quirk 13 — objects 0644, no directory
//! members, two zero blocks at the end, no padding to a record). Two deliberate differences:
//! objects are written in id order (pvr's order is random) and every member's mtime is the
//! revision's commit time (pvr uses the files' mtimes), so an export is reproducible.
//!
//! Reading is untrusted: [`scan`] checks every member (only `json`, `objects/` and
//! `objects/<64 hex>` regular files; no `..`, no absolute names, no links or devices), hashes
//! every object and validates the state, writing nothing. Only after a clean scan does
//! `store_objects` read the archive again and store the objects the caller wants, each
//! verified once more as it is written.

use crate::error::{Error, IoContext, Result};
use crate::oid::ObjectId;
use crate::state::State;
use crate::store::Store;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

/// Largest `json` member accepted (a state is text; this only bounds memory).
const MAX_JSON: u64 = 1 << 30;
/// Largest member size the ustar header's 11 octal digits can hold.
const MAX_USTAR_SIZE: u64 = 0o77777777777;

/// What a clean archive holds.
#[derive(Debug)]
pub struct Scan {
    pub json: Vec<u8>,
    pub state: State,
    /// Objects present (all verified), with their sizes.
    pub objects: HashMap<ObjectId, u64>,
}

fn open(path: &Path) -> Result<tar::Archive<Box<dyn Read>>> {
    let f = File::open(path).ctx("open", path)?;
    let mut r = BufReader::new(f);
    // Sniff gzip by its magic rather than trusting the name.
    let gz = {
        use io::BufRead;
        let head = r.fill_buf().ctx("read", path)?;
        head.starts_with(&[0x1f, 0x8b])
    };
    let inner: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(r))
    } else {
        Box::new(r)
    };
    Ok(tar::Archive::new(inner))
}

/// What a member is, by its name.
enum Member {
    Json,
    ObjectsDir,
    Object(ObjectId),
}

fn classify(archive: &Path, entry: &tar::Entry<'_, Box<dyn Read>>) -> Result<Option<Member>> {
    let bytes = entry.path_bytes();
    let name = String::from_utf8_lossy(&bytes).into_owned();
    let hostile = |why: &str| {
        Error::Other(format!(
            "{}: refusing member '{name}': {why}; nothing was written",
            archive.display()
        ))
    };
    let kind = entry.header().entry_type();
    if kind == tar::EntryType::XGlobalHeader {
        return Ok(None); // pax global metadata, no file
    }
    if name.starts_with('/') {
        return Err(hostile("absolute path"));
    }
    if name.split('/').any(|s| s == "..") {
        return Err(hostile("'..' in the path"));
    }
    let clean = name.strip_prefix("./").unwrap_or(&name);
    let is_file = matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous);
    let what = match clean {
        "json" => Member::Json,
        "objects" | "objects/" if kind == tar::EntryType::Directory => Member::ObjectsDir,
        "." | "./" | "" if kind == tar::EntryType::Directory => return Ok(None),
        _ => match clean.strip_prefix("objects/") {
            Some(hex) => Member::Object(
                ObjectId::from_hex(hex)
                    .map_err(|_| hostile("an object's name must be 64 lowercase hex digits"))?,
            ),
            None => return Err(hostile("not part of a pvr export (json, objects/<sha256>)")),
        },
    };
    if !matches!(what, Member::ObjectsDir) && !is_file {
        return Err(hostile(&format!(
            "a {} where a regular file was expected (links and devices are not accepted)",
            type_name(kind)
        )));
    }
    Ok(Some(what))
}

fn type_name(kind: tar::EntryType) -> &'static str {
    use tar::EntryType::*;
    match kind {
        Symlink => "symbolic link",
        Link => "hard link",
        Char => "character device",
        Block => "block device",
        Fifo => "FIFO",
        Directory => "directory",
        _ => "special member",
    }
}

/// Check the whole archive without writing anything.
pub fn scan(path: &Path) -> Result<Scan> {
    let mut archive = open(path)?;
    let mut json: Option<Vec<u8>> = None;
    let mut objects = HashMap::new();
    let entries = archive.entries().ctx("read tar", path)?;
    for entry in entries {
        let mut entry = entry.ctx("read tar", path)?;
        let Some(member) = classify(path, &entry)? else {
            continue;
        };
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        match member {
            Member::ObjectsDir => {}
            Member::Json => {
                if json.is_some() {
                    return Err(Error::Other(format!(
                        "{}: more than one 'json' member; nothing was written",
                        path.display()
                    )));
                }
                if entry.size() > MAX_JSON {
                    return Err(Error::Other(format!(
                        "{}: member 'json' is too large ({} bytes)",
                        path.display(),
                        entry.size()
                    )));
                }
                let mut buf = Vec::with_capacity(entry.size() as usize);
                entry.read_to_end(&mut buf).ctx("read tar", path)?;
                json = Some(buf);
            }
            Member::Object(id) => {
                let (actual, len) = ObjectId::hash_reader(&mut entry).ctx("read tar", path)?;
                if actual != id {
                    return Err(Error::Other(format!(
                        "{}: member '{name}' is corrupt: its content hashes to {actual}; nothing was written",
                        path.display()
                    )));
                }
                objects.insert(id, len);
            }
        }
    }
    let json = json.ok_or_else(|| {
        Error::Other(format!(
            "{}: no 'json' member; not a pvr export",
            path.display()
        ))
    })?;
    let state = State::from_json_bytes(&json, &format!("{}:json", path.display()))?;
    Ok(Scan {
        json,
        state,
        objects,
    })
}

/// Store the wanted objects of an archive that [`scan`] accepted.
pub(crate) fn store_objects(
    path: &Path,
    wanted: &std::collections::HashSet<ObjectId>,
    store: &Store,
    progress: &super::Progress,
) -> Result<()> {
    if wanted.is_empty() {
        return Ok(());
    }
    let mut archive = open(path)?;
    for entry in archive.entries().ctx("read tar", path)? {
        let entry = entry.ctx("read tar", path)?;
        let Some(Member::Object(id)) = classify(path, &entry)? else {
            continue;
        };
        if !wanted.contains(&id) || store.contains(&id) {
            continue;
        }
        let len = store
            .put_reader_expecting(entry, &id)
            .map_err(|e| match e {
                Error::CorruptObject { actual, .. } => Error::Other(format!(
                    "{}: member 'objects/{id}' changed while it was read: it hashes to {actual}",
                    path.display()
                )),
                Error::Io {
                    op: "read input for",
                    source,
                    ..
                } => Error::io("read tar", path, source),
                other => other,
            })?;
        progress.done(true, len);
    }
    Ok(())
}

/// One ustar header exactly as Go's `archive/tar` writes it for pvr.
fn header(name: &str, mode: u32, size: u64, mtime: u64) -> [u8; 512] {
    fn octal(field: &mut [u8], value: u64) {
        let digits = field.len() - 1;
        let text = format!("{value:0digits$o}");
        field[..digits].copy_from_slice(text.as_bytes());
        field[digits] = 0;
    }
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0); // uid
    octal(&mut h[116..124], 0); // gid
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0); // devmajor
    octal(&mut h[337..345], 0); // devminor
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    // Go: six octal digits, NUL, space.
    h[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
    h[154] = 0;
    h[155] = b' ';
    h
}

fn pad(out: &mut dyn Write, len: u64) -> io::Result<()> {
    let rem = (len % 512) as usize;
    if rem != 0 {
        out.write_all(&[0u8; 512][..512 - rem])?;
    }
    Ok(())
}

/// An object to export: id and where its bytes are.
pub struct ExportObject<'a> {
    pub id: ObjectId,
    pub path: &'a Path,
    pub len: u64,
}

/// Write an export tar (uncompressed) to `out`. Objects are verified while they are copied.
pub fn write(
    out: &mut dyn Write,
    json: &[u8],
    objects: &[ExportObject<'_>],
    mtime: u64,
) -> Result<()> {
    let w = |e: io::Error| Error::io("write", "the export", e);
    out.write_all(&header("json", 0o600, json.len() as u64, mtime))
        .map_err(w)?;
    out.write_all(json).map_err(w)?;
    pad(out, json.len() as u64).map_err(w)?;
    for o in objects {
        if o.len > MAX_USTAR_SIZE {
            return Err(Error::Other(format!(
                "object {} is {} bytes, more than a ustar member can hold",
                o.id, o.len
            )));
        }
        let name = format!("objects/{}", o.id);
        out.write_all(&header(&name, 0o644, o.len, mtime))
            .map_err(w)?;
        let f = File::open(o.path).ctx("open object", o.path)?;
        let mut hashing = super::HashingReader::new(f.take(o.len));
        let copied = io::copy(&mut hashing, out).map_err(w)?;
        let actual = hashing.finish();
        if copied != o.len || actual != o.id {
            return Err(Error::CorruptObject {
                id: o.id,
                actual,
                path: None,
            });
        }
        pad(out, o.len).map_err(w)?;
    }
    out.write_all(&[0u8; 1024]).map_err(w)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_matches_go_archive_tar() {
        // The json header of pvr's export in the vectors (case 08), mtime 15301274306 octal.
        let h = header("json", 0o600, 426, 0o15301274306);
        assert_eq!(&h[100..108], b"0000600\0");
        assert_eq!(&h[124..136], b"00000000652\0");
        assert_eq!(&h[148..156], b"010134\0 ");
        assert_eq!(&h[329..345], b"0000000\x000000000\0");
    }
}

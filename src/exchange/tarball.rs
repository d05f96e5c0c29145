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
//! `store_objects` read the same open file again and store the objects the caller wants, each
//! verified once more as it is written; an object wanted but not found in that second read
//! (the file changed in between) fails the import.
//!
//! Sizes are checked from the headers before any member's data is read: an object larger than
//! the limit (`--max-object-size`) or a `json` larger than [`MAX_JSON`] is refused at its
//! header, so a small gzip bomb cannot make pvrfs hash or write gigabytes. Extension headers
//! are read here, not by the `tar` crate (which reads them whole into memory): a GNU long name
//! longer than [`MAX_NAME`] or pax records longer than [`MAX_PAX`] are refused, a pax `size`
//! that disagrees with the header (two readers could see two archives) and `linkpath` records
//! are refused, and a GNU long link name (only links have one) is refused.

use crate::error::{Error, IoContext, Result};
use crate::oid::ObjectId;
use crate::state::State;
use crate::store::Store;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::Path;

/// Largest `json` member accepted (a state is text; this only bounds memory).
pub const MAX_JSON: u64 = 1 << 30;
/// Largest member size the ustar header's 11 octal digits can hold.
const MAX_USTAR_SIZE: u64 = 0o77777777777;
/// Longest member name (a GNU long name): pvr's are `objects/<64 hex>`.
pub const MAX_NAME: u64 = 4096;
/// Largest pax extended header (its records name one member).
pub const MAX_PAX: u64 = 64 * 1024;

/// What a clean archive holds.
#[derive(Debug)]
pub struct Scan {
    pub json: Vec<u8>,
    pub state: State,
    /// Objects present (all verified), with their sizes.
    pub objects: HashMap<ObjectId, u64>,
    /// The archive, open: `store_objects` reads this same file again.
    file: File,
}

type Archive<'a> = tar::Archive<Box<dyn Read + 'a>>;

/// The archive in `file` from its start, gunzipped when it starts with gzip's magic (whatever
/// its name).
fn open<'a>(path: &Path, file: &'a File) -> Result<Archive<'a>> {
    let mut f = file;
    f.rewind().ctx("read", path)?;
    let mut r = BufReader::new(f);
    let gz = {
        use io::BufRead;
        let head = r.fill_buf().ctx("read", path)?;
        head.starts_with(&[0x1f, 0x8b])
    };
    let inner: Box<dyn Read + 'a> = if gz {
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

fn hostile(archive: &Path, name: &str, why: &str) -> Error {
    Error::Other(format!(
        "{}: refusing member '{name}': {why}; nothing was written",
        archive.display()
    ))
}

fn classify(archive: &Path, name: &str, kind: tar::EntryType) -> Result<Option<Member>> {
    let hostile = |why: &str| hostile(archive, name, why);
    if name.starts_with('/') {
        return Err(hostile("absolute path"));
    }
    if name.split('/').any(|s| s == "..") {
        return Err(hostile("'..' in the path"));
    }
    let clean = name.strip_prefix("./").unwrap_or(name);
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
        GNUSparse => "sparse file",
        _ => "special member",
    }
}

/// The data of an extension header, at most `limit` bytes (refused beyond).
fn read_extension(
    archive: &Path,
    entry: &mut tar::Entry<'_, Box<dyn Read + '_>>,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>> {
    let size = entry.header().entry_size().ctx("read tar", archive)?;
    if size > limit {
        return Err(Error::Other(format!(
            "{}: refusing a {what} of {size} bytes (at most {limit}); nothing was written",
            archive.display()
        )));
    }
    let mut data = Vec::with_capacity(size as usize);
    entry.read_to_end(&mut data).ctx("read tar", archive)?;
    Ok(data)
}

/// Run `f` on every member of the archive that is part of a pvr export, in order, after
/// checking its name, type and size (module docs); the member's data is read by `f`.
fn each_member(
    archive_path: &Path,
    file: &File,
    max_object: u64,
    mut f: impl FnMut(Member, &str, &mut tar::Entry<'_, Box<dyn Read + '_>>) -> Result<()>,
) -> Result<()> {
    let mut archive = open(archive_path, file)?;
    let mut long_name: Option<Vec<u8>> = None;
    let mut pax: Option<Vec<u8>> = None;
    let entries = archive.entries().ctx("read tar", archive_path)?.raw(true);
    for entry in entries {
        let mut entry = entry.ctx("read tar", archive_path)?;
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::GNULongName => {
                let mut name = read_extension(archive_path, &mut entry, MAX_NAME, "long name")?;
                if name.last() == Some(&0) {
                    name.pop();
                }
                long_name = Some(name);
                continue;
            }
            tar::EntryType::XHeader => {
                pax = Some(read_extension(
                    archive_path,
                    &mut entry,
                    MAX_PAX,
                    "pax header",
                )?);
                continue;
            }
            tar::EntryType::XGlobalHeader => {
                // pax global metadata (e.g. git archive's comment): nothing we use.
                read_extension(archive_path, &mut entry, MAX_PAX, "pax global header")?;
                continue;
            }
            _ => {}
        }
        let mut name = long_name
            .take()
            .unwrap_or_else(|| entry.header().path_bytes().into_owned());
        let size = entry.header().entry_size().ctx("read tar", archive_path)?;
        let shown = |n: &[u8]| String::from_utf8_lossy(n).into_owned();
        if kind == tar::EntryType::GNULongLink {
            return Err(hostile(
                archive_path,
                &shown(&name),
                "a link name (links are not accepted)",
            ));
        }
        if let Some(records) = pax.take() {
            for record in tar::PaxExtensions::new(&records) {
                let record = record
                    .map_err(|_| hostile(archive_path, &shown(&name), "a malformed pax header"))?;
                match record.key_bytes() {
                    b"path" => name = record.value_bytes().to_vec(),
                    b"size"
                        if record.value().ok().and_then(|v| v.parse::<u64>().ok())
                            != Some(size) =>
                    {
                        return Err(hostile(
                            archive_path,
                            &shown(&name),
                            "its pax size disagrees with its header",
                        ));
                    }
                    b"linkpath" => {
                        return Err(hostile(
                            archive_path,
                            &shown(&name),
                            "a link name (links are not accepted)",
                        ))
                    }
                    _ => {}
                }
            }
        }
        let name = String::from_utf8(name).map_err(|e| {
            hostile(
                archive_path,
                &shown(e.as_bytes()),
                "a name that is not UTF-8",
            )
        })?;
        let Some(member) = classify(archive_path, &name, kind)? else {
            continue;
        };
        let (limit, flag) = match member {
            Member::Json => (MAX_JSON, ""),
            Member::Object(_) => (max_object, " (--max-object-size)"),
            Member::ObjectsDir => (0, ""),
        };
        if size > limit {
            return Err(hostile(
                archive_path,
                &name,
                &format!("it is {size} bytes, more than the limit of {limit} bytes{flag}"),
            ));
        }
        f(member, &name, &mut entry)?;
    }
    Ok(())
}

/// Check the whole archive without writing anything; objects may be at most `max_object`
/// bytes.
pub fn scan(path: &Path, max_object: u64) -> Result<Scan> {
    let file = File::open(path).ctx("open", path)?;
    let meta = file.metadata().ctx("inspect", path)?;
    if !meta.is_file() {
        return Err(Error::Usage(format!(
            "'{}' is not a regular file; not a tarball",
            path.display()
        )));
    }
    let mut json: Option<Vec<u8>> = None;
    let mut objects = HashMap::new();
    each_member(path, &file, max_object, |member, name, entry| {
        match member {
            Member::ObjectsDir => {}
            Member::Json => {
                if json.is_some() {
                    return Err(Error::Other(format!(
                        "{}: more than one 'json' member; nothing was written",
                        path.display()
                    )));
                }
                let mut buf = Vec::with_capacity(entry.size() as usize);
                entry.read_to_end(&mut buf).ctx("read tar", path)?;
                json = Some(buf);
            }
            Member::Object(id) => {
                let (actual, len) = ObjectId::hash_reader(&mut *entry).ctx("read tar", path)?;
                if actual != id {
                    return Err(Error::Other(format!(
                        "{}: member '{name}' is corrupt: its content hashes to {actual}; nothing was written",
                        path.display()
                    )));
                }
                objects.insert(id, len);
            }
        }
        Ok(())
    })?;
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
        file,
    })
}

/// Store the wanted objects of an archive that [`scan`] accepted, reading the file it opened
/// again; every wanted object must be found again.
pub(crate) fn store_objects(
    path: &Path,
    scan: &Scan,
    wanted: &HashSet<ObjectId>,
    store: &Store,
    max_object: u64,
    progress: &super::Progress,
) -> Result<()> {
    if wanted.is_empty() {
        return Ok(());
    }
    let mut stored = HashSet::new();
    each_member(path, &scan.file, max_object, |member, _, entry| {
        let Member::Object(id) = member else {
            return Ok(());
        };
        if !wanted.contains(&id) || stored.contains(&id) {
            return Ok(());
        }
        if store.contains(&id) {
            stored.insert(id);
            return Ok(());
        }
        let len = store
            .put_reader_expecting(&mut *entry, &id)
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
        stored.insert(id);
        progress.done(true, len);
        Ok(())
    })?;
    if let Some(gone) = wanted.iter().find(|id| !stored.contains(id)) {
        return Err(Error::Other(format!(
            "{}: member 'objects/{gone}' was there when the archive was checked but not when it was read again (did the file change?); nothing was committed",
            path.display()
        )));
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

    /// An export of one object `data` (and `json` naming it), as `write` makes it.
    fn export(data: &[u8], with_object: bool) -> Vec<u8> {
        let id = ObjectId::hash_bytes(data);
        let dir = tempfile::tempdir().unwrap();
        let obj = dir.path().join("o");
        std::fs::write(&obj, data).unwrap();
        let json = format!(r##"{{"#spec":"s@1","f":"{id}"}}"##);
        let objects = [ExportObject {
            id,
            path: &obj,
            len: data.len() as u64,
        }];
        let mut out = Vec::new();
        let list: &[ExportObject<'_>] = if with_object { &objects } else { &[] };
        write(&mut out, json.as_bytes(), list, 0).unwrap();
        out
    }

    #[test]
    fn an_archive_changed_between_scan_and_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        std::fs::write(&path, export(b"hello", true)).unwrap();
        let scan = scan(&path, 1 << 20).unwrap();
        let id = ObjectId::hash_bytes(b"hello");
        assert_eq!(scan.objects.get(&id), Some(&5));
        // The same file, rewritten in place without the object.
        let same = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let bytes = export(b"hello", false);
        std::io::Write::write_all(&mut &same, &bytes).unwrap();
        same.set_len(bytes.len() as u64).unwrap();
        let store = Store::new(dir.path().join("objects"));
        std::fs::create_dir(store.dir()).unwrap();
        let wanted = HashSet::from([id]);
        let progress = super::super::Progress::new(false, 1, "test");
        let err = store_objects(&path, &scan, &wanted, &store, 1 << 20, &progress)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not when it was read again"), "{err}");
        assert!(!store.contains(&id));
        // Replaced by another file: the scanned one is read again, whatever the name holds now.
        std::fs::write(&path, export(b"hello", true)).unwrap();
        let scan = super::scan(&path, 1 << 20).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, export(b"other", true)).unwrap();
        store_objects(&path, &scan, &wanted, &store, 1 << 20, &progress).unwrap();
        assert!(store.contains(&id));
    }

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

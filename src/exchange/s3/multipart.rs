//! S3 multipart uploads: objects at or above the threshold (default [`DEFAULT_THRESHOLD`],
//! `PVRFS_S3_MULTIPART_THRESHOLD`), and every object above 5 GiB, which one `PUT` cannot carry.
//!
//! # Model
//! `CreateMultipartUpload` (with `x-amz-checksum-algorithm: SHA256`) → `UploadPart` 1..N →
//! `CompleteMultipartUpload` with every part's ETag and sha256. A reader thread reads the local
//! file a part at a time into a buffer, hashes the part (sent as the part's
//! `x-amz-checksum-sha256`, so the service checks every part's bytes on arrival) and feeds the
//! same bytes to a hash of the whole object; [`PARTS_IN_FLIGHT`] threads send the parts (so
//! the service finishing one part overlaps with the next part's bytes).
//!
//! # Invariants
//! - **Nothing is visible before it is verified.** Until `Complete`, S3 shows no object under
//!   the key. `Complete` is sent only after the whole file was read and its sha256 is the
//!   object's id; otherwise (the file is corrupt or changed while it was read) the upload is
//!   aborted and the push fails naming the object. The bytes hashed are the bytes sent: each
//!   part is sent from the buffer it was hashed in.
//! - **No orphaned upload when we can help it.** A `Pending` upload that is not completed is
//!   aborted: on any error (an abort that fails is said in the error, naming the upload), a
//!   panic (its Drop), and (through `fsutil::on_signal`) SIGINT/SIGTERM/SIGHUP. What cannot be helped: SIGKILL, a power cut, or a service that is
//!   gone by the time we abort; such an upload stays invisible but stored until a bucket
//!   lifecycle rule (`AbortIncompleteMultipartUpload`) or an operator removes it.
//! - **Bounded memory.** At most `PARTS_IN_FLIGHT + 1` part buffers per upload (one being
//!   read and hashed, the others being sent), and at most [`CONCURRENT_UPLOADS`] multipart
//!   uploads at a time in a process: at most 6 × 64 MiB at the default part size, whatever the
//!   objects' sizes.
//! - Each part is retried like a single `PUT` (bounded attempts, backoff, deadlines from
//!   `net`), from its buffer.
//!
//! The object's checksum as the service reports it afterwards is *composite* (the sha256 of
//! the parts' sha256s, `…-N`), not the sha256 of the object: S3 keeps no full-object sha256 for
//! multipart uploads. Readers that verify objects by `HEAD` (`pvrfs serve --store`) fall back
//! to reading such an object back and hashing it.

use super::{S3Bucket, OWN_URL_LIFETIME};
use crate::error::{Error, Result};
use crate::oid::{Hasher, ObjectId};
use rusty_s3::actions::{CompleteMultipartUpload, CreateMultipartUpload};
use rusty_s3::S3Action;
use std::io::Read;
use std::path::Path;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

/// Reports bytes as they leave (progress), from any of the sending threads.
pub type Sent<'a> = dyn Fn(u64) + Sync + 'a;

/// Part size by default: 64 MiB (S3 allows 5 MiB to 5 GiB; objects up to 625 GiB fit in
/// 10 000 parts of this size, bigger ones get bigger parts).
pub const DEFAULT_PART_SIZE: u64 = 64 << 20;
/// Objects of at least 256 MiB go in parts by default. Smaller ones keep the single `PUT`,
/// whose full-object sha256 the service keeps (and reports on `HEAD`); a failed single `PUT`
/// re-sends at most this much.
pub const DEFAULT_THRESHOLD: u64 = 256 << 20;
/// S3's smallest part (every part but the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// S3's most parts per upload.
pub const MAX_PARTS: u64 = 10_000;
/// S3's largest object (5 TiB).
pub const MAX_OBJECT: u64 = 5 << 40;
/// Parts of one upload sent at a time: a part's tail (the service finishing it) overlaps with
/// the next part's bytes.
pub const PARTS_IN_FLIGHT: usize = 2;
/// Multipart uploads running at once in one process (each holds up to `PARTS_IN_FLIGHT + 1`
/// part buffers).
pub const CONCURRENT_UPLOADS: usize = 2;
/// Validity of the abort URL kept for a signal: SigV4's longest (an upload may take hours).
const ABORT_URL_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest answer to `Create`/`Complete` read (a few hundred bytes of XML).
const MAX_ANSWER: u64 = 1 << 20;

/// The part size for an object of `len` bytes: `preferred` (at least [`MIN_PART_SIZE`]),
/// grown to a whole MiB as needed to stay within [`MAX_PARTS`] parts.
pub fn part_size_for(len: u64, preferred: u64) -> Result<u64> {
    if len > MAX_OBJECT {
        return Err(Error::Other(format!(
            "{len} bytes: S3 stores objects of at most {MAX_OBJECT} bytes (5 TiB)"
        )));
    }
    let needed = len.div_ceil(MAX_PARTS).next_multiple_of(1 << 20);
    Ok(preferred.max(MIN_PART_SIZE).max(needed).min(MAX_PART_SIZE))
}

/// Upload the local file at `path` (`len` bytes, expected to hash to `id`) as `key` in parts
/// (see the module docs).
pub(super) fn upload(
    b: &S3Bucket,
    key: &str,
    id: &ObjectId,
    path: &Path,
    len: u64,
    sent: &Sent<'_>,
) -> Result<()> {
    let part_size = part_size_for(len, b.part_size).map_err(|e| match e {
        Error::Other(m) => Error::Other(format!("object {id} is {m}")),
        other => other,
    })?;
    // Open it before anything is created: a missing file leaves nothing behind.
    let file = std::fs::File::open(path).map_err(|e| Error::io("open object", path, e))?;
    let _slot = UPLOAD_SLOTS.take();
    let mut pending = Pending::create(b, key)?;
    let result = send_parts(&pending, (file, path), len, part_size, id, sent)
        .and_then(|parts| pending.complete(&parts));
    let Err(e) = result else { return Ok(()) };
    match pending.abort() {
        Ok(()) => Err(e),
        // Said with the error: nothing else tells the user an upload was left behind.
        Err(why) => Err(Error::Other(format!(
            "{e}; the multipart upload {} of object {id} could not be aborted ({why}): it stays in the bucket, invisible, until it is aborted or a lifecycle rule (AbortIncompleteMultipartUpload) removes it",
            pending.upload_id
        ))),
    }
}

/// One uploaded part: its ETag (as the service sent it) and sha256 (base64).
struct DonePart {
    etag: String,
    sha256: ObjectId,
    sha256_b64: String,
    len: u64,
}

/// A part read from the file, hashed, waiting to be sent.
struct ReadPart {
    number: u16,
    bytes: Arc<Vec<u8>>,
    sha256: ObjectId,
    sha256_b64: String,
}

/// Read and hash the parts on a helper thread while [`PARTS_IN_FLIGHT`] threads send them
/// (module docs); the whole file's sha256 must be `id` before the parts are returned for
/// `Complete`.
fn send_parts(
    pending: &Pending<'_>,
    (file, path): (std::fs::File, &Path),
    len: u64,
    part_size: u64,
    id: &ObjectId,
    sent: &Sent<'_>,
) -> Result<Vec<DonePart>> {
    let count = len.div_ceil(part_size).max(1);
    let (parts_tx, parts_rx) = mpsc::sync_channel::<ReadPart>(0);
    let (spare_tx, spare_rx) = mpsc::channel::<Vec<u8>>();
    // `None` once a sender failed: the reader's next hand-over fails and it stops.
    let parts_rx = Mutex::new(Some(parts_rx));
    let done: Mutex<Vec<Option<DonePart>>> = Mutex::new((0..count).map(|_| None).collect());
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        let reader = std::thread::Builder::new()
            .name("pvrfs-s3-parts".into())
            .spawn_scoped(s, move || {
                read_parts(file, len, part_size, count, parts_tx, spare_rx)
            })
            .map_err(|e| Error::Other(format!("cannot start a thread: {e}")))?;
        let send_all = || loop {
            let next = match lock(&parts_rx).as_ref() {
                Some(rx) => rx.recv().ok(),
                None => None,
            };
            let Some(part) = next else { return };
            if lock(&first_error).is_some() {
                return;
            }
            match pending.upload_part(&part) {
                Ok(etag) => {
                    sent(part.bytes.len() as u64);
                    let n = usize::from(part.number) - 1;
                    lock(&done)[n] = Some(DonePart {
                        etag,
                        sha256: part.sha256,
                        sha256_b64: part.sha256_b64,
                        len: part.bytes.len() as u64,
                    });
                    // Hand the buffer back for a next part, unless a request thread that was
                    // given up on still holds it.
                    if let Ok(buffer) = Arc::try_unwrap(part.bytes) {
                        let _ = spare_tx.send(buffer);
                    }
                }
                Err(e) => {
                    lock(&first_error).get_or_insert(e);
                    lock(&parts_rx).take();
                    return;
                }
            }
        };
        let senders: Vec<_> = (1..PARTS_IN_FLIGHT)
            .map(|_| {
                std::thread::Builder::new()
                    .name("pvrfs-s3-send".into())
                    .spawn_scoped(s, send_all)
            })
            .collect();
        send_all();
        for sender in senders.into_iter().flatten() {
            let _ = sender.join();
        }
        // Every sender has stopped: a reader still waiting to hand over a part stops too.
        lock(&parts_rx).take();
        let whole = reader
            .join()
            .map_err(|_| Error::Other("the thread reading parts panicked".into()))?;
        if let Some(e) = lock(&first_error).take() {
            return Err(e);
        }
        let whole = whole.map_err(|e| Error::io("read object", path, e))?;
        if whole != *id {
            log::warn!(
                "{}: the local object {id} hashes to {whole}; aborting the upload",
                pending.what
            );
            return Err(Error::CorruptObject {
                id: *id,
                actual: whole,
                path: None,
            });
        }
        let done: Option<Vec<DonePart>> = std::mem::take(&mut *lock(&done)).into_iter().collect();
        done.ok_or_else(|| {
            Error::Other(format!(
                "{}: not every part was read (the file is shorter than {len} bytes)",
                pending.what
            ))
        })
    })
}

/// A mutex of this module, whose holders never leave data half-changed: poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The reader's side of [`send_parts`]: `count` parts of `part_size` bytes (the last one
/// shorter), each hashed on its own and into the whole object's hash, which is returned once
/// every part was handed over (or as soon as the sender stops taking them).
fn read_parts(
    file: std::fs::File,
    len: u64,
    part_size: u64,
    count: u64,
    parts: mpsc::SyncSender<ReadPart>,
    spares: mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<ObjectId> {
    let mut whole = Hasher::new();
    // One byte past `len`: a file that grew is caught by the whole hash, not read forever.
    let mut file = file.take(len + 1);
    for number in 1..=count {
        let want = part_size.min(len - (number - 1) * part_size);
        let mut buffer = spares.try_recv().unwrap_or_default();
        buffer.clear();
        buffer.reserve_exact(want as usize);
        let got = (&mut file).take(want).read_to_end(&mut buffer)?;
        if number == count {
            // Whatever follows `len` bytes belongs to the whole hash (so it cannot match).
            let mut extra = Vec::new();
            file.read_to_end(&mut extra)?;
            whole.update(&buffer);
            whole.update(&extra);
        } else {
            whole.update(&buffer);
        }
        if got as u64 != want {
            // Shorter than announced: the hash cannot match; stop here.
            return Ok(whole.finish().0);
        }
        let sha256 = ObjectId::hash_bytes(&buffer);
        let part = ReadPart {
            number: u16::try_from(number).expect("at most 10 000 parts"),
            bytes: Arc::new(buffer),
            sha256,
            sha256_b64: super::checksum_b64(&sha256),
        };
        if parts.send(part).is_err() {
            break; // the sender gave up
        }
    }
    Ok(whole.finish().0)
}

/// An upload that was created and not completed yet: aborted on an error, or when dropped
/// unsettled (a panic; module docs).
struct Pending<'a> {
    bucket: &'a S3Bucket,
    key: &'a str,
    upload_id: String,
    what: String,
    completed: bool,
    _on_signal: crate::fsutil::OnSignal,
}

impl<'a> Pending<'a> {
    /// `CreateMultipartUpload` for `key`, with SHA256 part checksums.
    fn create(b: &'a S3Bucket, key: &'a str) -> Result<Pending<'a>> {
        let what = b.url_for("multipart upload", key);
        let clock = b.net.clock();
        let upload_id = b.net.retrying(&what, &clock, || {
            let mut action = CreateMultipartUpload::new(&b.bucket, Some(&b.credentials), key);
            action
                .headers_mut()
                .insert("x-amz-checksum-algorithm", "SHA256");
            let url = action.sign(OWN_URL_LIFETIME).to_string();
            let resp = b
                .net
                .send(
                    "POST",
                    &url,
                    &[
                        ("x-amz-checksum-algorithm", "SHA256"),
                        ("Content-Type", "application/octet-stream"),
                    ],
                    Some(b""),
                )
                .map_err(|e| b.classify(e))?;
            let body = b
                .net
                .read_all(super::net::Answer::of(resp, &url), MAX_ANSWER, &clock)?;
            let text = String::from_utf8_lossy(&body);
            CreateMultipartUpload::parse_response(&text)
                .map(|r| r.upload_id().to_string())
                .map_err(|e| {
                    super::fatal(format!(
                        "{what}: the service's answer to CreateMultipartUpload does not parse: {e}"
                    ))
                })
        })?;
        // The abort a signal runs: presigned now, sent by the signal thread with a short
        // timeout (the process is about to die; it must not hang on a dead service).
        let abort_url = b
            .bucket
            .abort_multipart_upload(Some(&b.credentials), key, &upload_id)
            .sign(ABORT_URL_LIFETIME)
            .to_string();
        let on_signal = crate::fsutil::on_signal(move || {
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(5))
                .redirects(0)
                .build();
            let _ = agent.delete(&abort_url).call();
        });
        log::debug!("{what}: started upload {upload_id}");
        Ok(Pending {
            bucket: b,
            key,
            upload_id,
            what,
            completed: false,
            _on_signal: on_signal,
        })
    }

    /// `UploadPart` from the part's buffer, retried; the part's ETag.
    fn upload_part(&self, part: &ReadPart) -> Result<String> {
        let b = self.bucket;
        let what = format!("{} (part {})", self.what, part.number);
        let clock = b.net.clock();
        b.net.retrying(&what, &clock, || {
            let mut action =
                b.bucket
                    .upload_part(Some(&b.credentials), self.key, part.number, &self.upload_id);
            action
                .headers_mut()
                .insert("x-amz-checksum-sha256", part.sha256_b64.clone());
            let url = action.sign(OWN_URL_LIFETIME).to_string();
            let resp = b
                .net
                .put_shared(
                    &url,
                    &[("x-amz-checksum-sha256", &part.sha256_b64)],
                    Arc::clone(&part.bytes),
                )
                .map_err(|e| b.classify(e))?;
            resp.header("ETag")
                .map(str::to_string)
                .ok_or_else(|| super::fatal(format!("{what}: the service sent no ETag")))
        })
    }

    /// `CompleteMultipartUpload` with every part's ETag and sha256: the object appears.
    fn complete(&mut self, parts: &[DonePart]) -> Result<()> {
        let b = self.bucket;
        let body = complete_body(parts);
        let clock = b.net.clock();
        let result = b.net.retrying(&self.what, &clock, || {
            let action = CompleteMultipartUpload::new(
                &b.bucket,
                Some(&b.credentials),
                self.key,
                &self.upload_id,
                std::iter::empty::<&str>(),
            );
            let url = action.sign(OWN_URL_LIFETIME).to_string();
            let resp = b
                .net
                .send(
                    "POST",
                    &url,
                    &[("Content-Type", "application/xml")],
                    Some(body.as_bytes()),
                )
                .map_err(|e| b.classify(e))?;
            // S3 may answer 200 and report an error in the body (it sends the status line
            // before it has finished assembling the object).
            let answer = b
                .net
                .read_all(super::net::Answer::of(resp, &url), MAX_ANSWER, &clock)?;
            let text = String::from_utf8_lossy(&answer);
            if text.contains("<Error>") {
                return Err(super::net::Failure::Retry(format!(
                    "the service answered {}",
                    super::error_detail(200, &text)
                )));
            }
            Ok(())
        });
        if let Err(e) = result {
            // A retry after an answer that was lost finds the upload gone (NoSuchUpload): the
            // object is there if it has our parts' composite checksum and length.
            let len: u64 = parts.iter().map(|p| p.len).sum();
            let ours = Some(composite_checksum(parts.iter().map(|p| &p.sha256)));
            match b.head(self.key) {
                Ok(Some(h)) if h.len == len && h.sha256_b64 == ours => {}
                _ => return Err(e),
            }
        }
        self.completed = true;
        log::debug!("{}: completed upload {}", self.what, self.upload_id);
        Ok(())
    }

    /// `AbortMultipartUpload`, retried (a 404: already gone). Settles the upload either way.
    fn abort(&mut self) -> Result<()> {
        self.completed = true;
        let b = self.bucket;
        let clock = b.net.clock();
        b.net.retrying(&self.what, &clock, || {
            let url = b
                .bucket
                .abort_multipart_upload(Some(&b.credentials), self.key, &self.upload_id)
                .sign(OWN_URL_LIFETIME)
                .to_string();
            match b.net.send("DELETE", &url, &[], None) {
                Ok(_) | Err(super::NetError::Status(404, _)) => Ok(()),
                Err(e) => Err(b.classify(e)),
            }
        })
    }
}

impl Drop for Pending<'_> {
    /// A panic on the way: abort (an error is aborted by `upload`, which reports a failure).
    fn drop(&mut self) {
        if !self.completed {
            if let Err(e) = self.abort() {
                log::warn!(
                    "{}: could not abort upload {}: {e}",
                    self.what,
                    self.upload_id
                );
            }
        }
    }
}

/// The checksum S3 reports for an object uploaded in parts with SHA256 part checksums, from
/// the parts' sha256s: the sha256 of the parts' sha256s, in base64, `-` the number of parts.
pub fn composite_checksum<'a>(part_sha256s: impl IntoIterator<Item = &'a ObjectId>) -> String {
    let mut h = Hasher::new();
    let mut n = 0;
    for sha in part_sha256s {
        h.update(sha.as_bytes());
        n += 1;
    }
    format!("{}-{n}", super::checksum_b64(&h.finish().0))
}

/// The body of `CompleteMultipartUpload`: every part's number, ETag and sha256 (AWS requires
/// the checksums of an upload created with a checksum algorithm).
fn complete_body(parts: &[DonePart]) -> String {
    let escape = |text: &str| {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut body = String::from(
        r#"<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">"#,
    );
    for (i, part) in parts.iter().enumerate() {
        body.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag><ChecksumSHA256>{}</ChecksumSHA256></Part>",
            i + 1,
            escape(&part.etag),
            escape(&part.sha256_b64)
        ));
    }
    body.push_str("</CompleteMultipartUpload>");
    body
}

/// A counting semaphore: at most [`CONCURRENT_UPLOADS`] multipart uploads hold part buffers.
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

static UPLOAD_SLOTS: Slots = Slots {
    free: Mutex::new(CONCURRENT_UPLOADS),
    freed: Condvar::new(),
};

struct Slot;

impl Slots {
    fn take(&'static self) -> Slot {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *UPLOAD_SLOTS.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        UPLOAD_SLOTS.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_at_least_5_mib_and_at_most_10000() {
        assert_eq!(part_size_for(1 << 30, DEFAULT_PART_SIZE).unwrap(), 64 << 20);
        assert_eq!(part_size_for(100 << 20, 1).unwrap(), MIN_PART_SIZE);
        // 1 TiB in 64 MiB parts would be 16 384 parts: the parts grow to a whole MiB
        let size = part_size_for(1 << 40, DEFAULT_PART_SIZE).unwrap();
        assert!((1u64 << 40).div_ceil(size) <= MAX_PARTS && size % (1 << 20) == 0);
        assert!(part_size_for(MAX_OBJECT, DEFAULT_PART_SIZE).unwrap() <= MAX_PART_SIZE);
        assert!(part_size_for(MAX_OBJECT + 1, DEFAULT_PART_SIZE).is_err());
    }

    #[test]
    fn the_complete_body_names_every_part_in_order() {
        let part = |etag: &str, b64: &str| DonePart {
            etag: etag.into(),
            sha256: ObjectId::hash_bytes(etag.as_bytes()),
            sha256_b64: b64.into(),
            len: 5,
        };
        let parts = [part("\"a1\"", "x+y="), part("\"b2\"", "z/w=")];
        let body = complete_body(&parts);
        assert!(body.contains("<Part><PartNumber>1</PartNumber><ETag>\"a1\"</ETag><ChecksumSHA256>x+y=</ChecksumSHA256></Part><Part><PartNumber>2</PartNumber>"), "{body}");
    }
}

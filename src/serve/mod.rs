//! `pvrfs serve`: every pvrfs repository under a root directory, served over HTTP with pvr's
//! remote protocol (`src/remote.rs`), so the reference pvr and pvrfs's own client can clone,
//! get, merge, post and putobjects against it.
//!
//! # URLs (NAME = the repository's path under ROOT; `NAME@REV` is revision REV, read-only)
//! ```text
//! GET  /                                   names of the repositories the caller may read (JSON)
//! GET  /NAME[@REV]/.pvrremote              endpoints (absolute URLs, from the Host header)
//! GET  /NAME[@REV]/json                    the state, canonical; header Pvrfs-Revision: N
//! PUT  /NAME/json                          pvr put: the body becomes the next revision
//! GET  /NAME[@REV]/objects/<sha>           object record with a signed get URL; 404 if absent
//! POST /NAME/objects/                      offer an object: 200 + signed put URL, 409 if present
//! GET|HEAD|PUT /NAME/objects/<sha>/blob?…  signed object URLs of the embedded store
//! POST /NAME/post                          {"commit-msg", "rev", "state"}: a new revision
//! ```
//!
//! # Model and invariants
//! - This module is the protocol logic, synchronous and free of HTTP plumbing: [`Server::handle`]
//!   takes a request head and a body reader and returns a [`Reply`] (tests call it directly).
//!   `http.rs` adapts it to hyper: deadlines, size limits, streaming, logging, shutdown.
//! - Nothing unverified is accepted: an upload is hashed while it is written to a temp file and
//!   renamed into the store only when it matches its name (S3: see `objects.rs`); a posted
//!   state is refused, naming them, when any object it needs is absent or bad; a new revision is
//!   made by `Repo::commit_state`, the repository's single commit point, under its lock. A body
//!   cut short (dropped connection, deadline) fails the request before anything is published.
//! - `rev` in a post is the revision the client means to create: it must be the head + 1, or
//!   the post is a conflict (409) and nothing changes. `rev: -1` (pvr's default) appends.
//! - Access: bearer tokens from `--tokens` (see `tokens.rs`), checked before anything about the
//!   repository is revealed; signed URLs carry their own grant. Without `--tokens` everything
//!   is allowed, which `cmd::serve` permits only on a loopback address.

mod http;
mod objects;
pub(crate) mod signing;
pub mod tokens;

pub use http::{run, signals, RunningServer};
pub use objects::Backend;

use crate::error::Error;
use crate::exchange::s3::{S3Bucket, S3Config, S3Location, MAX_SINGLE_PUT};
use crate::exchange::Options;
use crate::json;
use crate::oid::ObjectId;
use crate::remote::{
    ErrorBody, ObjectRecord, PostReply, PvrRemote, OBJECT_TYPE_HEADER, OBJECT_TYPE_OBJECT,
    REMOTE_FILE, REMOTE_SPEC, REVISION_HEADER, STATE_KEY,
};
use crate::repo::{Repo, Revision, DEFAULT_COMMIT_MSG};
use crate::state::State;
use parking_lot::Mutex;
use signing::{Op, Signer};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokens::{Access, Tokens};

/// Knobs of a server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest JSON body (post, put, object offer).
    pub max_json: u64,
    /// Largest object accepted for upload.
    pub max_object: u64,
    /// A connection that makes no progress for this long is closed.
    pub idle: Duration,
    /// Slowest average transfer rate (bytes/s) after `grace`.
    pub min_rate: u64,
    pub grace: Duration,
    /// How long signed object URLs stay valid.
    pub url_lifetime: Duration,
    /// Simultaneous connections; more are answered 503 and closed.
    pub max_connections: usize,
    /// Threads checking objects of a posted state against S3.
    pub jobs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_json: 256 << 20,
            max_object: 64 << 30,
            idle: Duration::from_secs(60),
            min_rate: 32 * 1024,
            grace: Duration::from_secs(30),
            url_lifetime: Duration::from_secs(3600),
            max_connections: 256,
            jobs: 8,
        }
    }
}

/// What `pvrfs serve` was asked to do.
pub struct Config {
    pub root: PathBuf,
    /// None: no tokens, everything allowed (loopback only; see `cmd::serve`).
    pub tokens: Option<Tokens>,
    pub backend: Backend,
    /// Base of the URLs handed out instead of `http://<Host header>` (behind a proxy).
    pub public_url: Option<String>,
    pub limits: Limits,
}

impl Config {
    /// The object backend for `--store`: `None` embedded, or `s3://BUCKET/PREFIX`.
    pub fn backend_for(store: Option<&str>, limits: &Limits) -> crate::Result<Backend> {
        let Some(text) = store else {
            return Ok(Backend::Local);
        };
        let loc = S3Location::parse(text)?;
        let opts = Options {
            jobs: limits.jobs,
            idle_timeout: limits.idle,
            min_rate: limits.min_rate,
            grace: limits.grace,
            // Objects read back from the bucket to verify an upload: as large as accepted.
            max_object_size: limits.max_object,
            ..Options::default()
        };
        let bucket = S3Bucket::new(&S3Config::from_env()?, &loc.bucket, &opts)?;
        // Fail at start-up, not at the first request, when the bucket is unreachable.
        bucket.list_objects(&loc.key("."))?;
        Ok(Backend::S3(Box::new(objects::S3Objects::new(bucket, loc))))
    }
}

/// HTTP methods the protocol uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    Post,
    Other(String),
}

/// What the server needs to know about a request before its body.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    /// The path as sent (percent-encoded), without the query.
    pub path: String,
    pub query: String,
    pub host: Option<String>,
    /// The bearer token of `Authorization: Bearer …`, if any.
    pub token: Option<String>,
    pub content_length: Option<u64>,
    pub peer: SocketAddr,
}

/// A response body.
pub enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// Stream `len` bytes of this file (an object).
    File {
        file: std::fs::File,
        len: u64,
    },
}

/// A response.
pub struct Reply {
    pub status: u16,
    /// A reason phrase that says what went wrong (pvr prints the status line).
    pub reason: Option<String>,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

impl Reply {
    fn json(status: u16, value: &impl serde::Serialize) -> Reply {
        Reply {
            status,
            reason: None,
            headers: vec![("content-type", "application/json".into())],
            body: Body::Bytes(serde_json::to_vec(value).expect("serialisable")),
        }
    }

    /// An error answer: `{"error": message}`, the message also as the reason phrase.
    pub fn error(status: u16, message: impl Into<String>) -> Reply {
        let message = message.into();
        let mut r = Reply::json(
            status,
            &ErrorBody {
                error: message.clone(),
                missing: Vec::new(),
            },
        );
        r.reason = Some(message);
        r
    }

    fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// The endpoint a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Remote,
    Json,
    Objects,
    Object(ObjectId),
    Blob(ObjectId),
    Post,
}

/// A parsed repository path: the name, the revision asked for, the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    name: String,
    rev: Option<String>,
    endpoint: Endpoint,
}

/// Split `/NAME[@REV]/<endpoint>` (already percent-decoded segments).
fn parse_target(segments: &[String]) -> Option<Target> {
    let n = segments.len();
    let (endpoint, used) = match segments {
        [.., last] if last == REMOTE_FILE => (Endpoint::Remote, 1),
        [.., last] if last == "json" => (Endpoint::Json, 1),
        [.., last] if last == "post" => (Endpoint::Post, 1),
        [.., o, last] if o == "objects" && last.is_empty() => (Endpoint::Objects, 2),
        [.., last] if last == "objects" => (Endpoint::Objects, 1),
        [.., o, sha, b] if o == "objects" && b == "blob" => {
            (Endpoint::Blob(ObjectId::from_hex(sha).ok()?), 3)
        }
        [.., o, sha] if o == "objects" => (Endpoint::Object(ObjectId::from_hex(sha).ok()?), 2),
        _ => return None,
    };
    let mut name: Vec<String> = segments[..n - used].to_vec();
    let last = name.pop()?;
    let (last, rev) = match last.rsplit_once('@') {
        Some((l, r)) if !r.is_empty() => (l.to_string(), Some(r.to_string())),
        _ => (last, None),
    };
    name.push(last);
    // Names are plain relative paths: no empty, hidden, `.` or `..` segments.
    // (An encoded `/` inside a segment would let `x%2F..%2Fy` name `y` while token globs see
    // `x/...`.)
    if name
        .iter()
        .any(|s| s.is_empty() || s.starts_with('.') || s.contains(['\0', '\\', '/']))
    {
        return None;
    }
    Some(Target {
        name: name.join("/"),
        rev,
        endpoint,
    })
}

/// Percent-decode a path into segments (`None` for invalid UTF-8).
fn segments(path: &str) -> Option<Vec<String>> {
    path.trim_start_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned())
        })
        .collect()
}

/// Characters escaped in a URL path segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'@');

fn encode_name(name: &str) -> String {
    name.split('/')
        .map(|s| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// The protocol server (see the module docs).
pub struct Server {
    root: PathBuf,
    tokens: Option<Tokens>,
    backend: Backend,
    public_url: Option<String>,
    pub limits: Limits,
    signer: Signer,
    repos: Mutex<HashMap<String, Repo>>,
}

impl Server {
    pub fn new(config: Config) -> crate::Result<Server> {
        let root = std::fs::canonicalize(&config.root)
            .map_err(|e| Error::io("open the root directory", &config.root, e))?;
        if !root.is_dir() {
            return Err(Error::Usage(format!(
                "'{}' is not a directory",
                root.display()
            )));
        }
        Ok(Server {
            root,
            tokens: config.tokens,
            backend: config.backend,
            public_url: config
                .public_url
                .map(|u| u.trim_end_matches('/').to_string()),
            limits: config.limits,
            signer: Signer::random().map_err(|e| Error::io("read", "/dev/urandom", e))?,
            repos: Mutex::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Names of every repository under the root (a directory with `.pvr/json`; hidden
    /// directories and repositories' own trees are not searched).
    pub fn repository_names(&self) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, depth: usize, out: &mut Vec<String>) {
            if depth > 16 {
                return;
            }
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') || !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let p = e.path();
                if p.join(".pvr/json").is_file() {
                    if let Ok(rel) = p.strip_prefix(root) {
                        out.push(rel.to_string_lossy().into_owned());
                    }
                } else {
                    walk(root, &p, depth + 1, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &self.root, 0, &mut out);
        out.sort();
        out
    }

    fn base_url(&self, head: &RequestHead) -> String {
        if let Some(u) = &self.public_url {
            return u.clone();
        }
        let host = head
            .host
            .as_deref()
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
            .map_or_else(|| head.peer.to_string(), str::to_string);
        format!("http://{host}")
    }

    fn check(&self, head: &RequestHead, name: &str, need: Access) -> Result<(), Reply> {
        let Some(tokens) = &self.tokens else {
            return Ok(());
        };
        tokens
            .check(head.token.as_deref(), name, need)
            .map_err(|d| {
                let mut r = Reply::error(d.status, d.message);
                if d.status == 401 {
                    // Not "Bearer": pvr would then start an interactive login against us; with
                    // another scheme it stops and reports the 401 (pass --access-token).
                    r = r.with_header("www-authenticate", "Token realm=\"pvrfs-serve\"");
                }
                r
            })
    }

    /// The repository NAME, if it is one (inside the root, symlinks included).
    fn open_repo(&self, name: &str) -> Result<Repo, Reply> {
        let not_found = || Reply::error(404, format!("no repository '{name}' here"));
        if let Some(r) = self.repos.lock().get(name) {
            if r.json_path().is_file() {
                return Ok(r.clone());
            }
        }
        let dir = self.root.join(name);
        let real = std::fs::canonicalize(&dir).map_err(|_| not_found())?;
        if !real.starts_with(&self.root) || !real.join(".pvr/json").is_file() {
            return Err(not_found());
        }
        let repo = Repo::open(&real).map_err(|e| Reply::error(500, e.to_string()))?;
        self.repos.lock().insert(name.to_string(), repo.clone());
        Ok(repo)
    }

    /// Requests answered with at most a `stat`, an `open` and one read of a small file (the
    /// HTTP layer runs them inline, see `http.rs`): the remote description, object records and
    /// signed object downloads of the embedded store. (With S3, a record may need a `HEAD` to
    /// the service, and objects are not downloaded from here.) An object larger than the
    /// inline read is still streamed from a blocking thread.
    pub fn is_quick(&self, head: &RequestHead) -> bool {
        if !matches!(head.method, Method::Get | Method::Head) || self.backend.is_s3() {
            return false;
        }
        let Some(segs) = segments(&head.path) else {
            return false;
        };
        matches!(
            parse_target(&segs).map(|t| t.endpoint),
            Some(Endpoint::Remote | Endpoint::Object(_) | Endpoint::Blob(_))
        )
    }

    /// Handle one request. `body` yields the request body (already limited and deadlined by
    /// the caller); handlers read it only after the request is known to be acceptable.
    pub fn handle(&self, head: &RequestHead, body: &mut dyn Read) -> Reply {
        let Some(segs) = segments(&head.path) else {
            return Reply::error(400, "the path is not valid UTF-8");
        };
        if segs.iter().all(String::is_empty) {
            return self.list(head);
        }
        let Some(target) = parse_target(&segs) else {
            return Reply::error(404, format!("nothing at {}", head.path));
        };
        match self.dispatch(head, &target, body) {
            Ok(r) | Err(r) => r,
        }
    }

    fn dispatch(
        &self,
        head: &RequestHead,
        t: &Target,
        body: &mut dyn Read,
    ) -> Result<Reply, Reply> {
        use Endpoint as E;
        use Method as M;
        // Signed URLs carry their own grant; everything else needs the token's.
        if let E::Blob(id) = &t.endpoint {
            // The signature first: without a valid one nothing about the repository is told.
            let grant = self
                .signer
                .check(&t.name, id, &head.query, crate::repo::now())
                .map_err(|e| Reply::error(403, e))?;
            let repo = self.open_repo(&t.name)?;
            return self.blob(head, &t.name, &repo, id, grant, body);
        }
        let need = match (&head.method, &t.endpoint) {
            (M::Get | M::Head, _) => Access::Read,
            (M::Put, E::Json) | (M::Post, E::Objects | E::Post) => Access::Write,
            (m, _) => {
                return Err(
                    Reply::error(405, format!("{m:?} is not allowed on {}", head.path))
                        .with_header("allow", "GET, HEAD, POST, PUT"),
                )
            }
        };
        self.check(head, &t.name, need)?;
        let repo = self.open_repo(&t.name)?;
        if need == Access::Write {
            if let Some(rev) = &t.rev {
                return Err(Reply::error(
                    405,
                    format!(
                        "{}@{rev} is a past revision and read-only; write to {}",
                        t.name, t.name
                    ),
                ));
            }
        }
        match (&head.method, &t.endpoint) {
            (_, E::Remote) => Ok(self.remote(head, t)),
            (M::Put, E::Json) => self.put_json(head, t, &repo, body),
            (_, E::Json) => self.json(head, t, &repo),
            (M::Post, E::Objects) => self.offer(head, t, &repo, body),
            (_, E::Object(id)) => self.object(head, t, &repo, id),
            (M::Post, E::Post) => self.post(head, t, &repo, body),
            _ => Err(Reply::error(
                405,
                format!("{:?} is not allowed on {}", head.method, head.path),
            )),
        }
    }

    fn list(&self, head: &RequestHead) -> Reply {
        let names: Vec<String> = self
            .repository_names()
            .into_iter()
            .filter(|n| {
                self.tokens
                    .as_ref()
                    .is_none_or(|t| t.can_read(head.token.as_deref(), n))
            })
            .collect();
        Reply::json(200, &serde_json::json!({ "repositories": names }))
    }

    fn repo_url(&self, head: &RequestHead, t: &Target) -> String {
        let rev = t
            .rev
            .as_ref()
            .map_or(String::new(), |r| format!("@{}", encode_name(r)));
        format!("{}/{}{rev}", self.base_url(head), encode_name(&t.name))
    }

    fn remote(&self, head: &RequestHead, t: &Target) -> Reply {
        let base = self.repo_url(head, t);
        Reply::json(
            200,
            &PvrRemote {
                spec: REMOTE_SPEC.into(),
                json_get_url: format!("{base}/json"),
                json_key: STATE_KEY.into(),
                objects_endpoint: format!("{base}/objects"),
                post_url: format!("{base}/post"),
                post_fields: Vec::new(),
                post_fields_opt: vec!["commit-msg".into(), "rev".into()],
            },
        )
    }

    fn revision(&self, t: &Target, repo: &Repo) -> Result<Revision, Reply> {
        let spec = t.rev.as_deref().unwrap_or("latest");
        repo.resolve(spec).map_err(|e| match e {
            Error::UnknownRevision { .. } => Reply::error(404, format!("{}: {e}", t.name)),
            other => Reply::error(500, other.to_string()),
        })
    }

    fn json(&self, head: &RequestHead, t: &Target, repo: &Repo) -> Result<Reply, Reply> {
        let rev = self.revision(t, repo)?;
        let state = repo
            .load_state(&rev)
            .map_err(|e| Reply::error(500, e.to_string()))?;
        Ok(Reply {
            status: 200,
            reason: None,
            headers: vec![
                ("content-type", "application/json".into()),
                (REVISION_HEADER, rev.rev.to_string()),
            ],
            body: match head.method {
                Method::Head => Body::Empty,
                _ => Body::Bytes(state.to_canonical_bytes()),
            },
        })
    }

    /// The object record of `id`, with a signed URL to download it.
    fn object(
        &self,
        head: &RequestHead,
        t: &Target,
        repo: &Repo,
        id: &ObjectId,
    ) -> Result<Reply, Reply> {
        let found = self
            .backend
            .find(&t.name, repo, id)
            .map_err(|e| Reply::error(502, e.to_string()))?;
        let Some(found) = found else {
            return Err(Reply::error(
                404,
                format!("object {id} is not in {}", t.name),
            ));
        };
        let (size, get_url) = match found {
            objects::Found::Local(size) => (size, self.blob_url(head, t, id, Op::Get, None)),
            objects::Found::S3(size) => (
                size,
                self.backend
                    .s3_get_url(&t.name, id, self.limits.url_lifetime)
                    .expect("found in S3 only in S3 mode"),
            ),
        };
        let mut record = self.record(id, size, "");
        record.signed_get_url = get_url;
        Ok(Reply::json(200, &record).with_header(OBJECT_TYPE_HEADER, OBJECT_TYPE_OBJECT))
    }

    fn record(&self, id: &ObjectId, size: u64, name: &str) -> ObjectRecord {
        let now = chrono::Utc::now();
        let exp = now + chrono::Duration::from_std(self.limits.url_lifetime).unwrap_or_default();
        ObjectRecord {
            now: now.to_rfc3339(),
            expire_time: exp.to_rfc3339(),
            ..ObjectRecord::describe(id, size, name)
        }
    }

    fn blob_url(
        &self,
        head: &RequestHead,
        t: &Target,
        id: &ObjectId,
        op: Op,
        size: Option<u64>,
    ) -> String {
        let query = self.signer.query(
            op,
            &t.name,
            id,
            size,
            crate::repo::now(),
            self.limits.url_lifetime,
        );
        format!(
            "{}/{}/objects/{id}/blob?{query}",
            self.base_url(head),
            encode_name(&t.name)
        )
    }

    /// `POST objects/`: offer an object for upload.
    fn offer(
        &self,
        head: &RequestHead,
        t: &Target,
        repo: &Repo,
        body: &mut dyn Read,
    ) -> Result<Reply, Reply> {
        let bytes = self.read_json_body(head, body)?;
        let record: ObjectRecord = serde_json::from_slice(&bytes)
            .map_err(|e| Reply::error(400, format!("not an object record: {e}")))?;
        let (id, size) = record.claimed().map_err(|e| Reply::error(400, e))?;
        if size > self.limits.max_object {
            return Err(Reply::error(
                413,
                format!(
                    "object {id} is {size} bytes; this server accepts at most {}",
                    self.limits.max_object
                ),
            ));
        }
        let present = self
            .backend
            .find(&t.name, repo, &id)
            .map_err(|e| Reply::error(502, e.to_string()))?;
        if present.is_none() && self.backend.is_s3() && size > MAX_SINGLE_PUT {
            return Err(Reply::error(
                413,
                format!(
                    "object {id} is {size} bytes; an upload URL of this server is one S3 PUT, which holds at most {MAX_SINGLE_PUT} bytes (5 GiB): upload the object to {} with a multipart client (pvrfs push s3://…), then post",
                    self.backend.describe_objects(&t.name).unwrap_or_default()
                ),
            ));
        }
        let mut out = self.record(&id, size, &record.object_name);
        out.signed_put_url = match self
            .backend
            .s3_put_url(&t.name, &id, self.limits.url_lifetime)
        {
            Some(url) => url,
            None => self.blob_url(head, t, &id, Op::Put, Some(size)),
        };
        // 409: the remote has it (pvr skips it; with --force pvr uploads to the URL anyway).
        let status = if present.is_some() { 409 } else { 200 };
        Ok(Reply::json(status, &out).with_header(OBJECT_TYPE_HEADER, OBJECT_TYPE_OBJECT))
    }

    /// The signed object URLs of the embedded store.
    fn blob(
        &self,
        head: &RequestHead,
        name: &str,
        repo: &Repo,
        id: &ObjectId,
        grant: signing::Grant,
        body: &mut dyn Read,
    ) -> Result<Reply, Reply> {
        match (&head.method, grant.op) {
            (Method::Get | Method::Head, Op::Get) => {
                let file = repo
                    .store()
                    .open(id)
                    .map_err(|e| Reply::error(500, e.to_string()))?
                    .ok_or_else(|| Reply::error(404, format!("object {id} is not in {name}")))?;
                let len = file
                    .metadata()
                    .map_err(|e| Reply::error(500, e.to_string()))?
                    .len();
                let body = match head.method {
                    Method::Head => Body::Empty,
                    _ => Body::File { file, len },
                };
                Ok(Reply {
                    status: 200,
                    reason: None,
                    headers: vec![
                        ("content-type", "application/octet-stream".into()),
                        ("content-length", len.to_string()),
                    ],
                    body,
                })
            }
            (Method::Put, Op::Put) => {
                let size = grant.size.expect("put grants carry a size");
                match head.content_length {
                    Some(n) if n == size => {}
                    Some(n) => {
                        return Err(Reply::error(
                            400,
                            format!("object {id} is {size} bytes, but the request announces {n}"),
                        ))
                    }
                    None => return Err(Reply::error(411, "an upload needs a Content-Length")),
                }
                let limited = crate::exchange::RateGuard::with(
                    body,
                    self.limits.min_rate,
                    self.limits.grace,
                    Some(size),
                );
                match repo.store().put_reader_expecting(limited, id) {
                    Ok(n) if n == size => Ok(Reply::json(200, &serde_json::json!({}))),
                    Ok(n) => {
                        // Cannot happen for a body of the announced length that hashes right.
                        Err(Reply::error(
                            400,
                            format!("object {id}: got {n} bytes, expected {size}"),
                        ))
                    }
                    Err(Error::CorruptObject { actual, .. }) => Err(Reply::error(
                        400,
                        format!(
                            "the uploaded bytes hash to {actual}, not to {id}; nothing was stored"
                        ),
                    )),
                    Err(Error::Io {
                        op: "read input for",
                        source,
                        ..
                    }) => Err(Reply::error(
                        400,
                        format!("the upload of {id} broke off ({source}); nothing was stored"),
                    )),
                    Err(e) => Err(Reply::error(500, e.to_string())),
                }
            }
            _ => Err(Reply::error(
                403,
                "the signed URL does not grant this method",
            )),
        }
    }

    fn read_json_body(&self, head: &RequestHead, body: &mut dyn Read) -> Result<Vec<u8>, Reply> {
        let max = self.limits.max_json;
        if head.content_length.is_some_and(|n| n > max) {
            return Err(Reply::error(
                413,
                format!("the body is larger than {max} bytes"),
            ));
        }
        let mut bytes = Vec::new();
        body.take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Reply::error(400, format!("reading the body failed: {e}")))?;
        if bytes.len() as u64 > max {
            return Err(Reply::error(
                413,
                format!("the body is larger than {max} bytes"),
            ));
        }
        Ok(bytes)
    }

    /// `POST post`: a new revision from the envelope pvr sends.
    fn post(
        &self,
        head: &RequestHead,
        t: &Target,
        repo: &Repo,
        body: &mut dyn Read,
    ) -> Result<Reply, Reply> {
        let bytes = self.read_json_body(head, body)?;
        let json::Value::Object(mut envelope) = json::parse(&bytes)
            .map_err(|e| Reply::error(400, format!("the post is not JSON: {e}")))?
        else {
            return Err(Reply::error(400, "the post is not a JSON object"));
        };
        let state = envelope
            .remove(STATE_KEY)
            .or_else(|| envelope.remove("post"))
            .ok_or_else(|| {
                Reply::error(400, format!("the post has no '{STATE_KEY}' (json-key)"))
            })?;
        let message = match envelope.get("commit-msg") {
            Some(json::Value::String(s)) => s.clone(),
            None => DEFAULT_COMMIT_MSG.to_string(),
            Some(_) => return Err(Reply::error(400, "commit-msg must be a string")),
        };
        let rev = match envelope.get("rev") {
            None => -1,
            Some(json::Value::Number(n)) => n
                .to_string()
                .parse::<i64>()
                .map_err(|_| Reply::error(400, format!("rev '{n}' is not an integer")))?,
            Some(_) => return Err(Reply::error(400, "rev must be a number")),
        };
        let state = State::from_value(state, &format!("the post to {}", t.name))
            .map_err(|e| Reply::error(400, e.to_string()))?;
        self.commit(t, repo, state, &message, rev)
    }

    /// `PUT json` (pvr put): the body is the state of the next revision.
    fn put_json(
        &self,
        head: &RequestHead,
        t: &Target,
        repo: &Repo,
        body: &mut dyn Read,
    ) -> Result<Reply, Reply> {
        let bytes = self.read_json_body(head, body)?;
        let state = State::from_json_bytes(&bytes, &format!("the put to {}", t.name))
            .map_err(|e| Reply::error(400, e.to_string()))?;
        self.commit(t, repo, state, "put", -1)
    }

    /// Verify and commit `state` as revision `rev` (-1: the next).
    fn commit(
        &self,
        t: &Target,
        repo: &Repo,
        state: State,
        message: &str,
        rev: i64,
    ) -> Result<Reply, Reply> {
        let conflict = |head: u64| {
            Reply::error(
                409,
                format!(
                    "conflict: revision {rev} cannot be made, {} is at revision {head}; get it, merge, and post again",
                    t.name
                ),
            )
        };
        let server_error = |e: Error| Reply::error(500, e.to_string());
        let latest = repo.latest().map_err(server_error)?;
        if rev >= 0 && Some(rev as u64) != latest.rev.checked_add(1) {
            return Err(conflict(latest.rev));
        }
        // Every object must be here and verified before anything is committed. Objects of the
        // head state are (they were checked when it was made).
        let head_state = repo.load_state(&latest).map_err(server_error)?;
        let known: HashSet<ObjectId> = head_state.object_ids().into_iter().collect();
        let new: Vec<ObjectId> = state
            .object_ids()
            .into_iter()
            .filter(|id| !known.contains(id))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let bad = self
            .backend
            .unusable(&t.name, repo, &new, self.limits.jobs)
            .map_err(|e| Reply::error(502, e.to_string()))?;
        if !bad.is_empty() {
            let first = &bad[0];
            let mut r = Reply::json(
                422,
                &ErrorBody {
                    error: format!(
                        "{} object(s) of the posted state are missing or bad, e.g. {} ({}); upload them first; nothing was committed",
                        bad.len(),
                        first.id,
                        first.why
                    ),
                    missing: bad.iter().map(|u| u.id.to_hex()).collect(),
                },
            );
            r.reason = Some(format!(
                "{} object(s) missing, e.g. {}",
                bad.len(),
                first.id
            ));
            return Err(r);
        }
        let lock = repo.lock().map_err(|e| Reply::error(503, e.to_string()))?;
        let latest = repo.latest().map_err(server_error)?;
        let head_now = repo.head_state().map_err(server_error)?;
        let reply = |rev: &Revision, created: bool| PostReply {
            rev: rev.rev as i64,
            state_sha: rev.state.0.to_hex(),
            trail_id: t.name.clone(),
            commit_msg: rev.message.clone(),
            created,
        };
        if head_now == state
            && latest.recorded
            && (rev < 0 || Some(rev as u64) == latest.rev.checked_add(1))
        {
            return Ok(Reply::json(200, &reply(&latest, false)));
        }
        let expected = u64::try_from(rev).ok().map(|r| r.saturating_sub(1));
        match repo.commit_state_on(&lock, Some(&head_now), &state, message, expected) {
            Ok(r) => {
                log::info!(
                    "{}: revision {} ({} entries) committed: {message}",
                    t.name,
                    r.rev,
                    state.len()
                );
                Ok(Reply::json(200, &reply(&r, true)))
            }
            Err(Error::Conflict(_)) => Err(conflict(repo.latest().map_or(0, |l| l.rev))),
            Err(e) => Err(server_error(e)),
        }
    }
}

#[cfg(test)]
mod tests;

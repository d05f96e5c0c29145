//! Dumb HTTP(S) servers and CDNs serving pvr's plain layout: `GET BASE/json`,
//! `GET BASE/objects/<sha>`; push uses `HEAD` to skip objects the server has and `PUT`
//! (WebDAV-style, e.g. nginx `dav_methods PUT`) for the rest, objects first and `json` last.
//!
//! Every request is retried on transport errors, 5xx/408/429 answers, truncated bodies and
//! objects that do not hash to their name, at most `Options::attempts` times with exponential
//! backoff; 404 and other 4xx answers fail at once. A fetched object is hashed while it is
//! written to a temp file in the store and renamed into place only when it matches, so a
//! failed or corrupt download never leaves a bad object and a repeated get is a resume.
//!
//! # The server is untrusted
//! - **Redirects** are followed here, not by the HTTP library (at most [`MAX_REDIRECTS`]), and
//!   only to `http:` and `https:` URLs; a redirect anywhere else (`file:`, `ftp:`, …) fails the
//!   transfer with an error naming both URLs (the library panicked on `file:`).
//! - **Size**: a state does not carry object sizes, so every object is capped at
//!   `Options::max_object_size` (and the state at [`MAX_STATE_BYTES`]): a `Content-Length`
//!   above it fails at once, and a body is cut at the first byte past it. Neither is retried.
//! - **Time**: a body must keep the minimum average rate after the grace period
//!   (`RateGuard`), no read waits longer than the grace (or the idle timeout, if shorter) for
//!   a byte, and a transfer (one object or the state, all its attempts together) starts no new
//!   attempt once `grace + bytes received / min_rate` has passed since its first. So a server
//!   that trickles, stalls, or announces a length it never sends is cut off once, after about
//!   the grace time, not after every attempt's idle timeout.
//! - **Temp files** never outlive the process (see `store::TempObject`).

use super::Options;
use crate::error::{Error, Result};
use crate::oid::ObjectId;
use crate::store::Store;
use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, Instant};

/// Redirects followed per request.
pub const MAX_REDIRECTS: usize = 5;

/// Largest state (`json`) accepted from a server: a state is text; this only bounds memory.
pub const MAX_STATE_BYTES: u64 = 1 << 30;

/// A body larger than the limit; carried inside the `io::Error` of the read that stopped it.
#[derive(Debug)]
struct TooLarge {
    limit: u64,
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the body is larger than the limit of {} bytes (--max-object-size)",
            self.limit
        )
    }
}

impl std::error::Error for TooLarge {}

/// When a transfer (all its attempts) must be over: `grace + received / min_rate` after its
/// first attempt started.
struct Clock {
    started: Instant,
    received: Cell<u64>,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            started: Instant::now(),
            received: Cell::new(0),
        }
    }

    /// `Some(why)` once the transfer's time is up.
    fn passed(&self, opts: &Options) -> Option<String> {
        if opts.min_rate == 0 {
            return None;
        }
        let bytes = self.received.get();
        let allowed = opts
            .grace
            .saturating_add(Duration::from_secs_f64(bytes as f64 / opts.min_rate as f64));
        let elapsed = self.started.elapsed();
        (elapsed > allowed).then(|| {
            format!(
                "the transfer's time is up ({bytes} bytes in {:.1} s; it may take {:.1} s: --transfer-grace, --min-throughput)",
                elapsed.as_secs_f64(),
                allowed.as_secs_f64()
            )
        })
    }
}

/// A body cut at the first byte past `limit`, counting what arrived into a [`Clock`].
struct Capped<'a, R> {
    inner: R,
    read: u64,
    limit: u64,
    clock: &'a Clock,
}

impl<R: Read> Read for Capped<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Ask for at most one byte past the limit: that byte is the proof the body is too big.
        let room = (self.limit - self.read.min(self.limit)).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.read += n as u64;
        self.clock
            .received
            .set(self.clock.received.get().max(self.read));
        if self.read > self.limit {
            return Err(io::Error::other(TooLarge { limit: self.limit }));
        }
        Ok(n)
    }
}

/// One try of a request: retry or give up.
pub(crate) enum Failure {
    Retry(String),
    Fatal(Error),
}

pub struct HttpSource {
    base: String,
    agent: ureq::Agent,
    attempts: u32,
    backoff: Duration,
    opts: Options,
}

impl HttpSource {
    pub fn new(base: &str, opts: &Options) -> Self {
        // Redirects are followed by `get`, which checks where they lead; no read waits longer
        // than the grace for a byte (module docs, "Time").
        let agent = agent_builder(opts)
            .timeout_read(opts.idle_timeout.min(opts.grace))
            .redirects(0)
            .build();
        HttpSource {
            base: base.trim_end_matches('/').to_string(),
            agent,
            attempts: opts.attempts.max(1),
            backoff: opts.backoff,
            opts: opts.clone(),
        }
    }

    pub fn json_url(&self) -> String {
        format!("{}/json", self.base)
    }

    fn object_url(&self, id: &ObjectId) -> String {
        format!("{}/objects/{id}", self.base)
    }

    /// Run `attempt` until it succeeds, fails fatally, or the attempts are used up.
    fn retrying<T>(
        &self,
        what: &str,
        attempt: impl FnMut() -> std::result::Result<T, Failure>,
    ) -> Result<T> {
        retrying(self.attempts, self.backoff, what, attempt)
    }

    /// Like `retrying`, but no new attempt starts once the transfer's [`Clock`] says its time
    /// is up (module docs, "Time").
    fn retrying_until<T>(
        &self,
        what: &str,
        clock: &Clock,
        mut attempt: impl FnMut() -> std::result::Result<T, Failure>,
    ) -> Result<T> {
        let mut tries = 0;
        let mut last = String::new();
        self.retrying(what, || {
            if tries > 0 {
                if let Some(late) = clock.passed(&self.opts) {
                    return Err(Failure::Fatal(Error::Other(format!(
                        "{what}: {last}; no further attempt: {late} (gave up after {tries} attempts)"
                    ))));
                }
            }
            tries += 1;
            attempt().inspect_err(|f| {
                if let Failure::Retry(why) = f {
                    last = why.clone();
                }
            })
        })
    }

    /// `GET url`, following at most [`MAX_REDIRECTS`] redirects to http(s) URLs only. A body
    /// announced larger than `limit` fails at once. Returns the response and its announced length.
    fn get(
        &self,
        url: &str,
        limit: u64,
    ) -> std::result::Result<(ureq::Response, Option<u64>), Failure> {
        let mut current = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let resp = self
                .agent
                .get(&current)
                .call()
                .map_err(|e| classify(e, &current))?;
            if (300..400).contains(&resp.status()) {
                let location = resp.header("Location").unwrap_or_default().to_string();
                let next = url::Url::parse(&current)
                    .and_then(|u| u.join(&location))
                    .map_err(|e| {
                        fatal(format!(
                            "{current}: the server redirected to '{location}', which is not a URL ({e})"
                        ))
                    })?;
                if !matches!(next.scheme(), "http" | "https") {
                    return Err(fatal(format!(
                        "{current}: refusing to follow the server's redirect to '{next}': only http and https URLs are followed"
                    )));
                }
                current = next.into();
                continue;
            }
            let len = resp
                .header("Content-Length")
                .and_then(|v| v.trim().parse::<u64>().ok());
            if let Some(len) = len.filter(|&len| len > limit) {
                return Err(fatal(format!(
                    "{current}: the server announces {len} bytes, more than the limit of {limit} bytes (--max-object-size)"
                )));
            }
            return Ok((resp, len));
        }
        Err(fatal(format!(
            "{url}: more than {MAX_REDIRECTS} redirects; giving up"
        )))
    }

    /// A response body held to `limit`, the minimum rate (`RateGuard`) and `clock`.
    fn body<'a>(
        &self,
        resp: ureq::Response,
        announced: Option<u64>,
        limit: u64,
        clock: &'a Clock,
    ) -> Capped<'a, impl Read> {
        Capped {
            inner: super::RateGuard::new(resp.into_reader(), &self.opts, announced),
            read: 0,
            limit,
            clock,
        }
    }

    /// `GET BASE/json` (at most [`MAX_STATE_BYTES`]).
    pub fn json(&self) -> Result<Vec<u8>> {
        let url = self.json_url();
        let clock = Clock::start();
        self.retrying_until(&format!("GET {url}"), &clock, || {
            let (resp, len) = self.get(&url, MAX_STATE_BYTES)?;
            let mut body = Vec::new();
            self.body(resp, len, MAX_STATE_BYTES, &clock)
                .read_to_end(&mut body)
                .map_err(|e| body_failure(&e, &url))?;
            Ok(body)
        })
    }

    /// `GET BASE/objects/<id>` into `store`, verified. Returns the size.
    pub fn fetch(&self, id: &ObjectId, store: &Store) -> Result<u64> {
        let url = self.object_url(id);
        let limit = self.opts.max_object_size;
        let clock = Clock::start();
        self.retrying_until(&format!("GET {url}"), &clock, || {
            let (resp, len) = self.get(&url, limit)?;
            store
                .put_reader_expecting(self.body(resp, len, limit, &clock), id)
                .map_err(|e| match e {
                    Error::Io {
                        op: "read input for",
                        source,
                        ..
                    } => body_failure(&source, &url),
                    other => download_failure(other),
                })
        })
    }

    /// Does the server have the object, with the right size (`HEAD`)?
    pub fn has(&self, id: &ObjectId, len: u64) -> Result<bool> {
        let url = self.object_url(id);
        self.retrying(&format!("HEAD {url}"), || {
            match self.agent.head(&url).call() {
                Ok(resp) => Ok(resp
                    .header("Content-Length")
                    .and_then(|v| v.parse::<u64>().ok())
                    == Some(len)),
                Err(ureq::Error::Status(404, _)) => Ok(false),
                Err(e) => Err(classify(e, &url)),
            }
        })
    }

    /// `PUT` one local object (checked against its name first: never publish a bad object).
    pub fn put_object(&self, id: &ObjectId, path: &Path, len: u64) -> Result<()> {
        let f = File::open(path).map_err(|e| Error::io("open object", path, e))?;
        let (actual, _) = ObjectId::hash_reader(f).map_err(|e| Error::io("read", path, e))?;
        if actual != *id {
            return Err(Error::CorruptObject {
                id: *id,
                actual,
                path: None,
            });
        }
        let url = self.object_url(id);
        self.retrying(&format!("PUT {url}"), || {
            let f =
                File::open(path).map_err(|e| Failure::Fatal(Error::io("open object", path, e)))?;
            self.agent
                .put(&url)
                .set("Content-Length", &len.to_string())
                .set("Content-Type", "application/octet-stream")
                .send(f)
                .map_err(|e| classify(e, &url))
                .and_then(|resp| stored(resp, &url))
        })
    }

    /// `PUT BASE/json` (last).
    pub fn put_json(&self, bytes: &[u8]) -> Result<()> {
        let url = self.json_url();
        self.retrying(&format!("PUT {url}"), || {
            self.agent
                .put(&url)
                .set("Content-Type", "application/json")
                .send_bytes(bytes)
                .map_err(|e| classify(e, &url))
                .and_then(|resp| stored(resp, &url))
        })
    }
}

/// The HTTP agent of a transfer: connect timeout 15 s, the idle timeout of `opts` on reads and
/// writes, keep-alive connections for `opts.jobs` threads.
pub(crate) fn agent(opts: &Options) -> ureq::Agent {
    agent_builder(opts).build()
}

fn agent_builder(opts: &Options) -> ureq::AgentBuilder {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(opts.idle_timeout)
        .timeout_write(opts.idle_timeout)
        .max_idle_connections_per_host(opts.jobs.max(1) * 2)
        .user_agent(concat!("pvrfs/", env!("CARGO_PKG_VERSION")))
}

/// A `PUT` counts only when answered 2xx (redirects are not followed: a 3xx stored nothing).
fn stored(resp: ureq::Response, url: &str) -> std::result::Result<(), Failure> {
    match resp.status() {
        200..=299 => Ok(()),
        code => Err(fatal(format!(
            "{url}: the server answered {code} {} to PUT; nothing was stored there",
            resp.status_text()
        ))),
    }
}

fn fatal(message: String) -> Failure {
    Failure::Fatal(Error::Other(message))
}

/// A body that could not be read: over the size limit (final: another try would be cut off
/// too), or anything else (too slow, broken: worth another try while the transfer's time lasts).
fn body_failure(e: &io::Error, url: &str) -> Failure {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TooLarge>())
    {
        Some(c) => fatal(format!("{url}: {c}; nothing was stored")),
        None => Failure::Retry(format!("reading the body failed: {e}")),
    }
}

/// How a failed download into the store is retried: bytes that do not hash to the name and
/// broken bodies are worth another try; a local store error is not.
pub(crate) fn download_failure(e: Error) -> Failure {
    match e {
        Error::CorruptObject { actual, .. } => Failure::Retry(format!(
            "the server sent bytes that hash to {actual}, not to the object's name"
        )),
        Error::Io {
            op: "read input for",
            source,
            ..
        } => Failure::Retry(format!("reading the body failed: {source}")),
        other => Failure::Fatal(other),
    }
}

/// Run `attempt` until it succeeds, fails fatally, or `attempts` are used up, sleeping
/// `backoff` (doubled each time, at most 10 s) between tries. Shared by every network transfer.
pub(crate) fn retrying<T>(
    attempts: u32,
    backoff: Duration,
    what: &str,
    mut attempt: impl FnMut() -> std::result::Result<T, Failure>,
) -> Result<T> {
    let mut delay = backoff;
    let mut n = 1;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry(why)) if n >= attempts.max(1) => {
                return Err(Error::Other(format!(
                    "{what}: {why} (gave up after {n} attempts)"
                )))
            }
            Err(Failure::Retry(why)) => {
                log::warn!("{what}: {why}; retrying in {delay:?}");
                std::thread::sleep(delay);
                delay = delay.saturating_mul(2).min(Duration::from_secs(10));
                n += 1;
            }
        }
    }
}

/// Which failures are worth another try.
pub(crate) fn classify(e: ureq::Error, url: &str) -> Failure {
    match e {
        ureq::Error::Status(code, _) if code >= 500 || code == 408 || code == 429 => {
            Failure::Retry(format!("the server answered {code}"))
        }
        ureq::Error::Status(404, _) => Failure::Fatal(Error::Other(format!(
            "{url}: not found (404) on the server"
        ))),
        ureq::Error::Status(code, resp) => Failure::Fatal(Error::Other(format!(
            "{url}: the server answered {code} {}",
            resp.status_text()
        ))),
        ureq::Error::Transport(t) => Failure::Retry(format!("transport error: {t}")),
    }
}

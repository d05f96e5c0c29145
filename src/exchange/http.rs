//! Dumb HTTP(S) servers and CDNs serving pvr's plain layout: `GET BASE/json`,
//! `GET BASE/objects/<sha>`; push uses `HEAD` to skip objects the server has and `PUT`
//! (WebDAV-style, e.g. nginx `dav_methods PUT`) for the rest, objects first and `json` last.
//!
//! Every request is retried on transport errors, 5xx/408/429 answers, truncated bodies and
//! objects that do not hash to their name, at most `Options::attempts` times with exponential
//! backoff; 404 and other 4xx answers fail at once. A fetched object is hashed while it is
//! written to a temp file in the store and renamed into place only when it matches, so a
//! failed or corrupt download never leaves a bad object and a repeated get is a resume.

use super::Options;
use crate::error::{Error, Result};
use crate::oid::ObjectId;
use crate::store::Store;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

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
        HttpSource {
            base: base.trim_end_matches('/').to_string(),
            agent: agent(opts),
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

    /// `GET BASE/json`.
    pub fn json(&self) -> Result<Vec<u8>> {
        let url = self.json_url();
        self.retrying(&format!("GET {url}"), || {
            let resp = self.agent.get(&url).call().map_err(|e| classify(e, &url))?;
            let mut body = Vec::new();
            resp.into_reader()
                .take(1 << 30)
                .read_to_end(&mut body)
                .map_err(|e| Failure::Retry(format!("reading the body failed: {e}")))?;
            Ok(body)
        })
    }

    /// `GET BASE/objects/<id>` into `store`, verified. Returns the size.
    pub fn fetch(&self, id: &ObjectId, store: &Store) -> Result<u64> {
        let url = self.object_url(id);
        self.retrying(&format!("GET {url}"), || {
            let resp = self.agent.get(&url).call().map_err(|e| classify(e, &url))?;
            let len = resp
                .header("Content-Length")
                .and_then(|v| v.parse::<u64>().ok());
            let body = super::RateGuard::new(resp.into_reader(), &self.opts, len);
            store
                .put_reader_expecting(body, id)
                .map_err(download_failure)
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
                .map(drop)
                .map_err(|e| classify(e, &url))
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
                .map(drop)
                .map_err(|e| classify(e, &url))
        })
    }
}

/// The HTTP agent of a transfer: connect timeout 15 s, the idle timeout of `opts` on reads and
/// writes, keep-alive connections for `opts.jobs` threads.
pub(crate) fn agent(opts: &Options) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(opts.idle_timeout)
        .timeout_write(opts.idle_timeout)
        .max_idle_connections_per_host(opts.jobs.max(1) * 2)
        .user_agent(concat!("pvrfs/", env!("CARGO_PKG_VERSION")))
        .build()
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

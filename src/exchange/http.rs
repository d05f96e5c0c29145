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
//! The server is untrusted: redirects, sizes and time are held to the rules of `net` (every
//! HTTP request pvrfs makes goes through it); the state is capped at [`MAX_STATE_BYTES`], each
//! object at `Options::max_object_size`. Temp files never outlive the process (see
//! `store::TempObject`).

use super::net::{self, fatal, Failure, Net, NetError};
use super::Options;
use crate::error::{Error, Result};
use crate::oid::ObjectId;
use crate::store::Store;
use std::fs::File;
use std::path::Path;

pub use super::net::MAX_REDIRECTS;

/// Largest state (`json`) accepted from a server: a state is text; this only bounds memory.
pub const MAX_STATE_BYTES: u64 = 1 << 30;

pub struct HttpSource {
    base: String,
    net: Net,
}

impl HttpSource {
    pub fn new(base: &str, opts: &Options) -> Self {
        HttpSource {
            base: base.trim_end_matches('/').to_string(),
            net: Net::new(opts),
        }
    }

    pub fn json_url(&self) -> String {
        format!("{}/json", self.base)
    }

    fn object_url(&self, id: &ObjectId) -> String {
        format!("{}/objects/{id}", self.base)
    }

    /// `GET BASE/json` (at most [`MAX_STATE_BYTES`]).
    pub fn json(&self) -> Result<Vec<u8>> {
        let url = self.json_url();
        let clock = self.net.clock();
        self.net.retrying(&format!("GET {url}"), &clock, || {
            let answer = self
                .net
                .get(&url, &[], MAX_STATE_BYTES)
                .map_err(|e| classify(e, &url))?;
            self.net.read_all(answer, MAX_STATE_BYTES, &clock)
        })
    }

    /// `GET BASE/objects/<id>` into `store`, verified. Returns the size.
    pub fn fetch(&self, id: &ObjectId, store: &Store) -> Result<u64> {
        let url = self.object_url(id);
        let limit = self.net.opts().max_object_size;
        let clock = self.net.clock();
        self.net.retrying(&format!("GET {url}"), &clock, || {
            let answer = self
                .net
                .get(&url, &[], limit)
                .map_err(|e| classify(e, &url))?;
            let shown = answer.url.clone();
            store
                .put_reader_expecting(self.net.body(answer.resp, answer.len, limit, &clock), id)
                .map_err(|e| net::download_failure(e, &shown))
        })
    }

    /// Does the server have the object, with the right size (`HEAD`)?
    pub fn has(&self, id: &ObjectId, len: u64) -> Result<bool> {
        let url = self.object_url(id);
        let clock = self.net.clock();
        self.net.retrying(&format!("HEAD {url}"), &clock, || {
            match self.net.head(&url, &[]) {
                Ok(resp) => Ok(resp
                    .header("Content-Length")
                    .and_then(|v| v.parse::<u64>().ok())
                    == Some(len)),
                Err(NetError::Status(404, _)) => Ok(false),
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
        let clock = self.net.clock();
        let sent = self.net.retrying(&format!("PUT {url}"), &clock, || {
            let f =
                File::open(path).map_err(|e| Failure::Fatal(Error::io("open object", path, e)))?;
            let (result, sent) = self.net.upload(
                &url,
                &[("Content-Type", "application/octet-stream")],
                f,
                len,
            );
            result
                .map_err(|e| classify(e, &url))
                .and_then(|resp| stored(resp, &url))?;
            Ok(sent)
        })?;
        match sent {
            Some(sent) if sent != *id => Err(Error::CorruptObject {
                id: *id,
                actual: sent,
                path: None,
            }),
            _ => Ok(()),
        }
    }

    /// `PUT BASE/json` (last).
    pub fn put_json(&self, bytes: &[u8]) -> Result<()> {
        let url = self.json_url();
        let clock = self.net.clock();
        self.net.retrying(&format!("PUT {url}"), &clock, || {
            self.net
                .send(
                    "PUT",
                    &url,
                    &[("Content-Type", "application/json")],
                    Some(bytes),
                )
                .map_err(|e| classify(e, &url))
                .and_then(|resp| stored(resp, &url))
        })
    }
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

/// Which failures of the plain layout are worth another try.
fn classify(e: NetError, url: &str) -> Failure {
    match e {
        NetError::Status(code, _) if code >= 500 || code == 408 || code == 429 => {
            Failure::Retry(format!("the server answered {code}"))
        }
        NetError::Status(404, _) => fatal(format!("{url}: not found (404) on the server")),
        NetError::Status(code, resp) if (300..400).contains(&code) => fatal(format!(
            "{url}: the server answered {code} {}; nothing was stored there (uploads do not follow redirects)",
            resp.status_text()
        )),
        NetError::Status(code, resp) => fatal(format!(
            "{url}: the server answered {code} {}",
            resp.status_text()
        )),
        NetError::Failed(f) => f,
    }
}

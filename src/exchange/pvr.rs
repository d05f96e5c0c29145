//! The client side of pvr's remote protocol (`src/remote.rs` has the wire types): what
//! `pvrfs get/merge/clone/push URL` do when `URL/.pvrremote` answers.
//!
//! - get: `GET json-get-url`, then per missing object `GET objects-endpoint/<sha>` for its
//!   signed URL and `GET` that URL, verified into the store like every other source.
//! - push: `GET json-get-url` first (the baseline): when it already is our state nothing else
//!   happens (a no-op push is two requests); otherwise each object the baseline does not
//!   reference is offered (`POST objects-endpoint/`, 409 = the remote has it) and uploaded to
//!   the signed URL it gets, and finally the state is posted with `rev` = the baseline's
//!   revision + 1 when the remote says which revision it served (`pvrfs serve` does), so a
//!   post that raced with another one is refused as a conflict instead of overwriting it.
//!   Before any upload, a baseline this repository has not seen (somebody else pushed since our
//!   last get or push) is a conflict too (`bases`), unless `--force`.
//!
//! The bearer token goes to the protocol's endpoints only, never to signed URLs (which may
//! point at an S3 service), as pvr does.

use super::http::{download_failure, retrying, Failure};
use super::{Options, RateGuard, Transfer};
use crate::error::{Error, Result};
use crate::json;
use crate::oid::ObjectId;
use crate::remote::{ErrorBody, ObjectRecord, PostReply, PvrRemote, REMOTE_FILE, REVISION_HEADER};
use crate::state::State;
use crate::store::Store;
use std::io::Read;
use std::path::Path;

/// Largest JSON answer (state, records) read from a remote.
const MAX_JSON: u64 = 1 << 30;

/// A repository URL that speaks pvr's protocol.
pub struct PvrRemoteClient {
    base: String,
    pub remote: PvrRemote,
    agent: ureq::Agent,
    opts: Options,
}

/// The state a remote serves, and which revision it is (when the remote says).
pub struct RemoteState {
    pub bytes: Vec<u8>,
    pub revision: Option<u64>,
}

impl PvrRemoteClient {
    /// `GET BASE/.pvrremote`: `Some` when BASE is a pvr remote, `None` when it is not (404 or
    /// another refusal that a plain HTTP server gives for a missing file); 401 is an error
    /// (the remote exists but wants a token).
    pub fn detect(base: &str, opts: &Options) -> Result<Option<PvrRemoteClient>> {
        let base = base.trim_end_matches('/').to_string();
        let agent = super::http::agent(opts);
        let url = format!("{base}/{REMOTE_FILE}");
        let client = PvrRemoteClient {
            base,
            remote: PvrRemote::default(),
            agent,
            opts: opts.clone(),
        };
        let found = client.retry(&format!("GET {url}"), || {
            match client.authed(client.agent.get(&url)).call() {
                Ok(resp) => Ok(Some(read_limited(resp, &url)?)),
                Err(ureq::Error::Status(401, resp)) => {
                    Err(auth_failure(401, resp, &url, &client.opts))
                }
                Err(ureq::Error::Status(403, resp)) if client.opts.token.is_some() => {
                    Err(auth_failure(403, resp, &url, &client.opts))
                }
                Err(ureq::Error::Status(code, _)) if (400..500).contains(&code) => Ok(None),
                Err(e) => Err(classify(e, &url)),
            }
        })?;
        let Some(body) = found else { return Ok(None) };
        let remote: PvrRemote = serde_json::from_slice(&body)
            .map_err(|e| Error::Other(format!("{url}: not a pvr remote description: {e}")))?;
        if remote.json_get_url.is_empty() && remote.objects_endpoint.is_empty() {
            return Err(Error::Other(format!(
                "{url}: the remote description names neither json-get-url nor objects-endpoint"
            )));
        }
        let remote = PvrRemote {
            json_get_url: client.resolve(&remote.json_get_url)?,
            objects_endpoint: client.resolve(&remote.objects_endpoint)?,
            post_url: client.resolve(&remote.post_url)?,
            ..remote
        };
        Ok(Some(PvrRemoteClient { remote, ..client }))
    }

    pub fn describe(&self) -> &str {
        &self.base
    }

    /// Endpoint URLs may be relative to the repository URL.
    fn resolve(&self, url: &str) -> Result<String> {
        if url.is_empty() || url.contains("://") {
            return Ok(url.to_string());
        }
        let base = url::Url::parse(&format!("{}/", self.base))
            .map_err(|e| Error::Usage(format!("'{}' is not a URL: {e}", self.base)))?;
        base.join(url)
            .map(|u| u.to_string())
            .map_err(|e| Error::Other(format!("{}: bad endpoint URL '{url}': {e}", self.base)))
    }

    fn authed(&self, req: ureq::Request) -> ureq::Request {
        match &self.opts.token {
            Some(t) => req.set("Authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    fn retry<T>(
        &self,
        what: &str,
        attempt: impl FnMut() -> std::result::Result<T, Failure>,
    ) -> Result<T> {
        retrying(self.opts.attempts, self.opts.backoff, what, attempt)
    }

    /// `GET json-get-url`. `Ok(None)` when the remote has no state yet (404).
    pub fn json(&self) -> Result<Option<RemoteState>> {
        let url = &self.remote.json_get_url;
        if url.is_empty() {
            return Ok(None);
        }
        self.retry(&format!("GET {url}"), || {
            let resp = match self.authed(self.agent.get(url)).call() {
                Ok(r) => r,
                Err(ureq::Error::Status(404, _)) => return Ok(None),
                Err(ureq::Error::Status(code @ (401 | 403), resp)) => {
                    return Err(auth_failure(code, resp, url, &self.opts))
                }
                Err(e) => return Err(classify(e, url)),
            };
            let revision = resp.header(REVISION_HEADER).and_then(|v| v.parse().ok());
            Ok(Some(RemoteState {
                bytes: read_limited(resp, url)?,
                revision,
            }))
        })
    }

    /// Fetch one object into `store`, verified. Returns its size.
    pub fn fetch(&self, id: &ObjectId, store: &Store) -> Result<u64> {
        let info_url = format!(
            "{}/{id}",
            self.remote.objects_endpoint.trim_end_matches('/')
        );
        self.retry(&format!("GET {info_url}"), || {
            let resp = match self.authed(self.agent.get(&info_url)).call() {
                Ok(r) => r,
                Err(ureq::Error::Status(404, _)) => {
                    return Err(Failure::Fatal(Error::Other(format!(
                        "object {id} is missing from the remote {}",
                        self.base
                    ))))
                }
                Err(ureq::Error::Status(code @ (401 | 403), resp)) => {
                    return Err(auth_failure(code, resp, &info_url, &self.opts))
                }
                Err(e) => return Err(classify(e, &info_url)),
            };
            let record: ObjectRecord = serde_json::from_slice(&read_limited(resp, &info_url)?)
                .map_err(|e| {
                    Failure::Fatal(Error::Other(format!(
                        "{info_url}: not an object record: {e}"
                    )))
                })?;
            let get_url = self
                .resolve(&record.signed_get_url)
                .map_err(Failure::Fatal)?;
            if get_url.is_empty() {
                return Err(Failure::Fatal(Error::Other(format!(
                    "{info_url}: the record has no signed-geturl"
                ))));
            }
            let size = record.size.trim().parse::<u64>().ok();
            // Signed URLs carry their own authorisation: no bearer token.
            let resp = self
                .agent
                .get(&get_url)
                .call()
                .map_err(|e| classify(e, strip_query(&get_url)))?;
            let body = RateGuard::new(resp.into_reader(), &self.opts, size);
            store
                .put_reader_expecting(body, id)
                .map_err(download_failure)
        })
    }

    /// Offer an object for upload: `Some(signed put URL)`, or `None` when the remote has it.
    pub fn offer(&self, id: &ObjectId, name: &str, len: u64) -> Result<Option<String>> {
        let url = format!("{}/", self.remote.objects_endpoint.trim_end_matches('/'));
        let body = serde_json::to_vec(&ObjectRecord::describe(id, len, name))
            .expect("a record serialises");
        self.retry(&format!("POST {url} ({id})"), || {
            let req = self
                .authed(self.agent.post(&url))
                .set("Content-Type", "application/json");
            match req.send_bytes(&body) {
                Ok(resp) => {
                    let record: ObjectRecord = serde_json::from_slice(&read_limited(resp, &url)?)
                        .map_err(|e| {
                        Failure::Fatal(Error::Other(format!("{url}: not an object record: {e}")))
                    })?;
                    let put = self
                        .resolve(&record.signed_put_url)
                        .map_err(Failure::Fatal)?;
                    if put.is_empty() {
                        return Err(Failure::Fatal(Error::Other(format!(
                            "{url}: the record for {id} has no signed-puturl"
                        ))));
                    }
                    Ok(Some(put))
                }
                Err(ureq::Error::Status(409, _)) => Ok(None),
                Err(ureq::Error::Status(code @ (401 | 403), resp)) => {
                    Err(auth_failure(code, resp, &url, &self.opts))
                }
                Err(e) => Err(classify(e, &url)),
            }
        })
    }

    /// `PUT` a local object to its signed URL. The bytes are hashed while they are sent: if they
    /// do not match the name (the local object is corrupt) the push fails before the state is
    /// posted, so nothing ever references the bad upload (and a remote that verifies, like
    /// `pvrfs serve` or S3 with the checksum in the URL, refuses it anyway).
    pub fn upload(&self, put_url: &str, id: &ObjectId, path: &Path, len: u64) -> Result<()> {
        let shown = strip_query(put_url).to_string();
        let sent = self.retry(&format!("PUT {shown}"), || {
            let f = std::fs::File::open(path)
                .map_err(|e| Failure::Fatal(Error::io("open object", path, e)))?;
            let mut hashing = super::HashingReader::new(f.take(len));
            let result = self
                .agent
                .put(put_url)
                .set("Content-Length", &len.to_string())
                .set("Content-Type", "application/octet-stream")
                .send(&mut hashing);
            let actual = hashing.finish();
            match result {
                Ok(_) => Ok(actual),
                Err(ureq::Error::Status(code, resp)) if (400..500).contains(&code) => {
                    let why = error_text(code, resp);
                    let local = if actual != *id {
                        format!(" (the local object {} hashes to {actual})", path.display())
                    } else {
                        String::new()
                    };
                    Err(Failure::Fatal(Error::Other(format!(
                        "uploading object {id} to {shown} was refused: {why}{local}"
                    ))))
                }
                Err(e) => Err(classify(e, &shown)),
            }
        })?;
        if sent != *id {
            return Err(Error::CorruptObject {
                id: *id,
                actual: sent,
                path: None,
            });
        }
        Ok(())
    }

    /// `POST post-url` with the state. `rev` is the revision asked for (-1: the next one).
    pub fn post(&self, state: &State, message: &str, rev: i64) -> Result<PostReply> {
        let url = &self.remote.post_url;
        if url.is_empty() {
            return Err(Error::Other(format!(
                "{}: the remote names no post-url; it does not accept new revisions",
                self.base
            )));
        }
        let key = if self.remote.json_key.is_empty() {
            "post"
        } else {
            self.remote.json_key.as_str()
        };
        let mut envelope = serde_json::Map::new();
        envelope.insert("commit-msg".into(), json::Value::String(message.into()));
        envelope.insert("rev".into(), json::number_value(&rev.to_string()));
        envelope.insert(key.into(), state.to_value());
        let body = json::to_canonical(&json::Value::Object(envelope));
        self.retry(&format!("POST {url}"), || {
            let req = self
                .authed(self.agent.post(url))
                .set("Content-Type", "application/json");
            match req.send_bytes(&body) {
                Ok(resp) => serde_json::from_slice(&read_limited(resp, url)?).map_err(|e| {
                    Failure::Fatal(Error::Other(format!("{url}: not a post reply: {e}")))
                }),
                Err(ureq::Error::Status(409, resp)) => Err(Failure::Fatal(Error::Conflict(
                    format!("{url}: {}", error_text(409, resp)),
                ))),
                Err(ureq::Error::Status(code @ (401 | 403), resp)) => {
                    Err(auth_failure(code, resp, url, &self.opts))
                }
                Err(ureq::Error::Status(code, resp)) if (400..500).contains(&code) => Err(
                    Failure::Fatal(Error::Other(format!("{url}: {}", error_text(code, resp)))),
                ),
                Err(e) => Err(classify(e, url)),
            }
        })
    }
}

/// One object to push: id, the key needing it, its file and size.
pub type PushItem = super::PushItem;

/// Publish `state` to the remote (see the module docs).
pub fn push(
    client: &PvrRemoteClient,
    state: &State,
    objects: &[PushItem],
    message: &str,
    seen: Option<&super::bases::Base>,
    opts: &Options,
) -> Result<Transfer> {
    let baseline = client.json()?;
    let (base_state, base_rev) = match &baseline {
        Some(b) => {
            let s = State::from_json_bytes(&b.bytes, &client.remote.json_get_url)?;
            (Some(s), b.revision)
        }
        None => (None, None),
    };
    if base_state.as_ref() == Some(state) {
        return Ok(Transfer {
            objects: objects.len(),
            remote_revision: base_rev,
            ..Transfer::default()
        });
    }
    super::bases::check(
        client.describe(),
        seen,
        base_state.as_ref(),
        base_rev,
        state,
        opts.force,
    )?;
    let known: std::collections::HashSet<ObjectId> = base_state
        .as_ref()
        .map(|s| s.object_ids().into_iter().collect())
        .unwrap_or_default();
    let todo: Vec<PushItem> = objects
        .iter()
        .filter(|(id, ..)| !known.contains(id))
        .cloned()
        .collect();
    let mut transfer = super::push_objects(&todo, opts, |id, key, path, len| {
        match client.offer(id, key, len)? {
            None => Ok(false),
            Some(url) => client.upload(&url, id, path, len).map(|()| true),
        }
    })?;
    transfer.objects = objects.len();
    let rev = base_rev.map_or(-1, |r| r as i64 + 1);
    let reply = client.post(state, message, rev)?;
    transfer.remote_revision = u64::try_from(reply.rev).ok();
    Ok(transfer)
}

fn strip_query(url: &str) -> &str {
    url.split_once('?').map_or(url, |(u, _)| u)
}

fn read_limited(resp: ureq::Response, url: &str) -> std::result::Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    resp.into_reader()
        .take(MAX_JSON + 1)
        .read_to_end(&mut body)
        .map_err(|e| Failure::Retry(format!("reading the body failed: {e}")))?;
    if body.len() as u64 > MAX_JSON {
        return Err(Failure::Fatal(Error::Other(format!(
            "{url}: the answer is larger than {MAX_JSON} bytes"
        ))));
    }
    Ok(body)
}

/// The remote's explanation of an error answer: `error` of a JSON body, else the status line.
fn error_text(code: u16, resp: ureq::Response) -> String {
    let status = resp.status_text().to_string();
    let mut body = Vec::new();
    let _ = resp.into_reader().take(64 * 1024).read_to_end(&mut body);
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(e) if !e.error.is_empty() => format!("{code} {}", e.error),
        _ => format!("{code} {status}"),
    }
}

fn auth_failure(code: u16, resp: ureq::Response, url: &str, opts: &Options) -> Failure {
    let why = error_text(code, resp);
    let hint = match (code, &opts.token) {
        (401, None) => "; the remote wants a token: pass --token TOKEN or set PVRFS_TOKEN",
        (401, Some(_)) => "; the token was not accepted",
        _ => "; the token does not grant this",
    };
    Failure::Fatal(Error::Remote {
        code: 6,
        message: format!("{}: {why}{hint}", strip_query(url)),
    })
}

fn classify(e: ureq::Error, url: &str) -> Failure {
    match e {
        ureq::Error::Status(code, resp) if code >= 500 || code == 408 || code == 429 => {
            Failure::Retry(format!("the server answered {}", error_text(code, resp)))
        }
        ureq::Error::Status(code, resp) => Failure::Fatal(Error::Other(format!(
            "{url}: the server answered {}",
            error_text(code, resp)
        ))),
        ureq::Error::Transport(t) => Failure::Retry(format!("transport error: {t}")),
    }
}

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

use super::net::{self, fatal, shown, Failure, Net, NetError};
use super::{Options, Transfer};
use crate::error::{Error, Result};
use crate::json;
use crate::oid::ObjectId;
use crate::remote::{ErrorBody, ObjectRecord, PostReply, PvrRemote, REMOTE_FILE, REVISION_HEADER};
use crate::state::State;
use crate::store::Store;
use std::path::Path;

/// Largest state read from a remote (a state is text; this only bounds memory).
const MAX_JSON: u64 = 1 << 30;
/// Largest `.pvrremote`, object record or post reply read from a remote: each is a few hundred
/// bytes of JSON.
pub const MAX_ANSWER: u64 = 1 << 20;

/// A repository URL that speaks pvr's protocol.
pub struct PvrRemoteClient {
    base: String,
    pub remote: PvrRemote,
    net: Net,
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
        let url = format!("{base}/{REMOTE_FILE}");
        let client = PvrRemoteClient {
            base,
            remote: PvrRemote::default(),
            net: Net::new(opts),
            opts: opts.clone(),
        };
        let clock = client.net.clock();
        let found = client.net.retrying(&format!("GET {url}"), &clock, || {
            match client.net.get(&url, &headers(&client.auth()), MAX_ANSWER) {
                Ok(answer) => Ok(Some(client.net.read_all(answer, MAX_ANSWER, &clock)?)),
                Err(NetError::Status(401, resp)) => Err(client.auth_failure(401, resp, &url)),
                Err(NetError::Status(403, resp)) if client.opts.token.is_some() => {
                    Err(client.auth_failure(403, resp, &url))
                }
                Err(NetError::Status(code, _)) if (400..500).contains(&code) => Ok(None),
                Err(e) => Err(client.classify(e, &url)),
            }
        })?;
        let Some(body) = found else { return Ok(None) };
        let remote = crate::remote::parse_remote(&body)
            .map_err(|e| Error::Other(format!("{url}: not a pvr remote description: {e}")))?;
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

    /// Endpoint URLs may be relative to the repository URL; whatever they are, only http(s)
    /// URLs are accepted (`net` refuses others too, this names the field).
    fn resolve(&self, url: &str) -> Result<String> {
        if url.is_empty() {
            return Ok(String::new());
        }
        let base = url::Url::parse(&format!("{}/", self.base))
            .map_err(|e| Error::Usage(format!("'{}' is not a URL: {e}", self.base)))?;
        let joined = base
            .join(url)
            .map_err(|e| Error::Other(format!("{}: bad endpoint URL '{url}': {e}", self.base)))?;
        if !matches!(joined.scheme(), "http" | "https") {
            return Err(Error::Other(format!(
                "{}: refusing the endpoint URL '{}': only http and https URLs are used",
                self.base,
                shown(url)
            )));
        }
        Ok(joined.into())
    }

    /// The bearer token, for the protocol's endpoints (never for signed URLs).
    fn auth(&self) -> Vec<(&'static str, String)> {
        match &self.opts.token {
            Some(t) => vec![("Authorization", format!("Bearer {t}"))],
            None => Vec::new(),
        }
    }

    /// `GET json-get-url`. `Ok(None)` when the remote has no state yet (404).
    pub fn json(&self) -> Result<Option<RemoteState>> {
        let url = &self.remote.json_get_url;
        if url.is_empty() {
            return Ok(None);
        }
        let clock = self.net.clock();
        self.net.retrying(&format!("GET {url}"), &clock, || {
            let answer = match self.net.get(url, &headers(&self.auth()), MAX_JSON) {
                Ok(a) => a,
                Err(NetError::Status(404, _)) => return Ok(None),
                Err(NetError::Status(code @ (401 | 403), resp)) => {
                    return Err(self.auth_failure(code, resp, url))
                }
                Err(e) => return Err(self.classify(e, url)),
            };
            let revision = answer
                .header(REVISION_HEADER)
                .and_then(|v| v.trim().parse().ok());
            Ok(Some(RemoteState {
                bytes: self.net.read_all(answer, MAX_JSON, &clock)?,
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
        let limit = self.opts.max_object_size;
        let clock = self.net.clock();
        self.net.retrying(&format!("GET {info_url}"), &clock, || {
            let answer = match self.net.get(&info_url, &headers(&self.auth()), MAX_ANSWER) {
                Ok(a) => a,
                Err(NetError::Status(404, _)) => {
                    return Err(fatal(format!(
                        "object {id} is missing from the remote {}",
                        self.base
                    )))
                }
                Err(NetError::Status(code @ (401 | 403), resp)) => {
                    return Err(self.auth_failure(code, resp, &info_url))
                }
                Err(e) => return Err(self.classify(e, &info_url)),
            };
            let record = crate::remote::parse_record(&self.net.read_all(answer, MAX_ANSWER, &clock)?)
                .map_err(|e| fatal(format!("{info_url}: not an object record: {e}")))?;
            let get_url = self
                .resolve(&record.signed_get_url)
                .map_err(Failure::Fatal)?;
            if get_url.is_empty() {
                return Err(fatal(format!("{info_url}: the record has no signed-geturl")));
            }
            if let Some(size) = record.size.trim().parse::<u64>().ok().filter(|&s| s > limit) {
                return Err(fatal(format!(
                    "{info_url}: object {id} is {size} bytes, more than the limit of {limit} bytes (--max-object-size)"
                )));
            }
            // Signed URLs carry their own authorisation: no bearer token.
            let answer = self
                .net
                .get(&get_url, &[], limit)
                .map_err(|e| self.classify(e, &get_url))?;
            let shown = shown(&answer.url).to_string();
            store
                .put_reader_expecting(self.net.body(answer.resp, answer.len, limit, &clock), id)
                .map_err(|e| net::download_failure(e, &shown))
        })
    }

    /// Offer an object for upload: `Some(signed put URL)`, or `None` when the remote has it.
    pub fn offer(&self, id: &ObjectId, name: &str, len: u64) -> Result<Option<String>> {
        let url = format!("{}/", self.remote.objects_endpoint.trim_end_matches('/'));
        let body = serde_json::to_vec(&ObjectRecord::describe(id, len, name))
            .expect("a record serialises");
        let clock = self.net.clock();
        self.net
            .retrying(&format!("POST {url} ({id})"), &clock, || {
                let mut h = self.auth();
                h.push(("Content-Type", "application/json".into()));
                match self.net.send("POST", &url, &headers(&h), Some(&body)) {
                    Ok(resp) => {
                        let answer = net::Answer::of(resp, &url);
                        let record = crate::remote::parse_record(
                            &self.net.read_all(answer, MAX_ANSWER, &clock)?,
                        )
                        .map_err(|e| fatal(format!("{url}: not an object record: {e}")))?;
                        let put = self
                            .resolve(&record.signed_put_url)
                            .map_err(Failure::Fatal)?;
                        if put.is_empty() {
                            return Err(fatal(format!(
                                "{url}: the record for {id} has no signed-puturl"
                            )));
                        }
                        Ok(Some(put))
                    }
                    Err(NetError::Status(409, _)) => Ok(None),
                    Err(NetError::Status(code @ (401 | 403), resp)) => {
                        Err(self.auth_failure(code, resp, &url))
                    }
                    Err(e) => Err(self.classify(e, &url)),
                }
            })
    }

    /// `PUT` a local object to its signed URL. The bytes are hashed while they are sent: if they
    /// do not match the name (the local object is corrupt) the push fails before the state is
    /// posted, so nothing ever references the bad upload (and a remote that verifies, like
    /// `pvrfs serve` or S3 with the checksum in the URL, refuses it anyway).
    pub fn upload(&self, put_url: &str, id: &ObjectId, path: &Path, len: u64) -> Result<()> {
        let shown = shown(put_url).to_string();
        let clock = self.net.clock();
        let sent = self.net.retrying(&format!("PUT {shown}"), &clock, || {
            let f = std::fs::File::open(path)
                .map_err(|e| Failure::Fatal(Error::io("open object", path, e)))?;
            let (result, actual) = self.net.upload(
                put_url,
                &[("Content-Type", "application/octet-stream")],
                f,
                len,
            );
            match result {
                Ok(_) => Ok(actual),
                Err(NetError::Status(code, resp)) if (300..500).contains(&code) => {
                    let why = self.error_text(code, resp);
                    let local = match actual {
                        Some(actual) if actual != *id => {
                            format!(" (the local object {} hashes to {actual})", path.display())
                        }
                        _ => String::new(),
                    };
                    Err(fatal(format!(
                        "uploading object {id} to {shown} was refused: {why}{local}"
                    )))
                }
                Err(e) => Err(self.classify(e, &shown)),
            }
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
        let clock = self.net.clock();
        self.net.retrying(&format!("POST {url}"), &clock, || {
            let mut h = self.auth();
            h.push(("Content-Type", "application/json".into()));
            match self.net.send("POST", url, &headers(&h), Some(&body)) {
                Ok(resp) => {
                    let answer = net::Answer::of(resp, url);
                    crate::remote::parse_post_reply(&self.net.read_all(answer, MAX_ANSWER, &clock)?)
                        .map_err(|e| fatal(format!("{url}: not a post reply: {e}")))
                }
                Err(NetError::Status(409, resp)) => Err(Failure::Fatal(Error::Conflict(format!(
                    "{url}: {}",
                    self.error_text(409, resp)
                )))),
                Err(NetError::Status(code @ (401 | 403), resp)) => {
                    Err(self.auth_failure(code, resp, url))
                }
                Err(NetError::Status(code, resp)) if (300..500).contains(&code) => {
                    Err(fatal(format!("{url}: {}", self.error_text(code, resp))))
                }
                Err(e) => Err(self.classify(e, url)),
            }
        })
    }

    /// The remote's explanation of an error answer: `error` of a JSON body, else the status line.
    fn error_text(&self, code: u16, resp: Box<ureq::Response>) -> String {
        let status = resp.status_text().to_string();
        let body = self.net.error_body(resp);
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) if !e.error.is_empty() => format!("{code} {}", e.error),
            _ => format!("{code} {status}"),
        }
    }

    fn auth_failure(&self, code: u16, resp: Box<ureq::Response>, url: &str) -> Failure {
        let why = self.error_text(code, resp);
        let hint = match (code, &self.opts.token) {
            (401, None) => "; the remote wants a token: pass --token TOKEN or set PVRFS_TOKEN",
            (401, Some(_)) => "; the token was not accepted",
            _ => "; the token does not grant this",
        };
        Failure::Fatal(Error::Remote {
            code: 6,
            message: format!("{}: {why}{hint}", shown(url)),
        })
    }

    fn classify(&self, e: NetError, url: &str) -> Failure {
        match e {
            NetError::Status(code, resp) if code >= 500 || code == 408 || code == 429 => {
                Failure::Retry(format!(
                    "the server answered {}",
                    self.error_text(code, resp)
                ))
            }
            NetError::Status(code, resp) => fatal(format!(
                "{}: the server answered {}",
                shown(url),
                self.error_text(code, resp)
            )),
            NetError::Failed(f) => f,
        }
    }
}

/// Owned header pairs as the `(&str, &str)` slice `Net` takes.
fn headers<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(k, v)| (*k, v.as_str())).collect()
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
    // The revision to ask for (the server's word, so checked before anything is uploaded).
    let rev = match base_rev {
        None => -1,
        Some(r) => i64::try_from(r)
            .ok()
            .and_then(|r| r.checked_add(1))
            .ok_or_else(|| {
                Error::Other(format!(
                    "{}: the remote says it serves revision {r}, which has no next revision; nothing was pushed",
                    client.describe()
                ))
            })?,
    };
    let known: std::collections::HashSet<ObjectId> = base_state
        .as_ref()
        .map(|s| s.object_ids().into_iter().collect())
        .unwrap_or_default();
    let todo: Vec<PushItem> = objects
        .iter()
        .filter(|(id, ..)| !known.contains(id))
        .cloned()
        .collect();
    let mut transfer = super::push_objects(&todo, opts, |id, key, path, len, _| {
        match client.offer(id, key, len)? {
            None => Ok(false),
            Some(url) => client.upload(&url, id, path, len).map(|()| true),
        }
    })?;
    transfer.objects = objects.len();
    let reply = client.post(state, message, rev)?;
    transfer.remote_revision = u64::try_from(reply.rev).ok();
    Ok(transfer)
}

//! S3-compatible object stores (AWS S3, Garage, MinIO, …) in pvr's plain layout:
//!
//! ```text
//! s3://BUCKET/PREFIX/json                 the state, canonical JSON (written last)
//! s3://BUCKET/PREFIX/objects/<64 hex>     one S3 object per pvr object
//! ```
//!
//! Requests are signed with SigV4 by `rusty-s3` (sans-IO: it only builds presigned URLs) and
//! sent with `ureq`, so the same presigned URLs serve our own transfers and the ones `pvrfs
//! serve --store s3://…` hands to clients. Endpoint and credentials come from the standard
//! variables `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`), `AWS_REGION` (or
//! `AWS_DEFAULT_REGION`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`.
//! With an explicit endpoint, path-style URLs are used (`http://host/BUCKET/KEY`), as
//! self-hosted services expect; without one, AWS's virtual-host style.
//!
//! # Invariants
//! - Uploads carry `x-amz-checksum-sha256` (the object id in base64), so the service itself
//!   refuses a body that does not hash to the object's name before the object becomes visible
//!   (AWS, Garage and MinIO verify it). The bytes are also hashed while they are sent; if they
//!   do not match (the local object changed or is corrupt) the uploaded object is deleted and
//!   the push fails, so a service that ignored the checksum still never keeps a bad object
//!   under a good name.
//! - Objects at or above the multipart threshold (and every object above 5 GiB, one `PUT`'s
//!   limit) go in parts ([`multipart`]): each part checksummed, the whole object's sha256
//!   checked before `Complete` makes it visible, the upload aborted on any failure or signal.
//! - Downloads are verified while they are written into the local store (as for every source).
//! - `json` is written last and only after every object it references is present.
//! - Every request goes through `net` (http(s) only, redirects checked, sizes capped, deadlines)
//!   and is retried a bounded number of times. The service is untrusted like any server: a
//!   listing that repeats a continuation token or does not move forward, or runs past
//!   [`MAX_LIST_PAGES`] pages, is refused.

pub mod multipart;

use super::net::{self, fatal, Failure, Net, NetError};
use super::Options;
use crate::error::{Error, Result};
use crate::oid::ObjectId;
use crate::store::Store;
use base64::Engine;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// How long a presigned URL we use ourselves stays valid (each request signs a fresh one).
const OWN_URL_LIFETIME: Duration = Duration::from_secs(3600);
/// Largest object a single `PUT` may carry on AWS (5 GiB).
pub const MAX_SINGLE_PUT: u64 = 5 << 30;
/// Largest `json` accepted from a bucket (a state is text; this only bounds memory).
const MAX_JSON: u64 = 1 << 30;
/// Largest page of a listing (1000 keys of XML are a few hundred KiB).
const MAX_LIST_PAGE: u64 = 16 << 20;
/// Most pages a listing may have (100 million keys): a service that never ends one is cut off.
pub const MAX_LIST_PAGES: usize = 100_000;

/// `s3://BUCKET/PREFIX`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    pub prefix: String,
}

impl S3Location {
    /// Parse `s3://BUCKET[/PREFIX]`.
    pub fn parse(text: &str) -> Result<S3Location> {
        let rest = text
            .strip_prefix("s3://")
            .or_else(|| text.strip_prefix("S3://"))
            .ok_or_else(|| Error::Usage(format!("'{text}' is not an s3://BUCKET/PREFIX URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(Error::Usage(format!(
                "'{text}': '{bucket}' is not a valid bucket name (3-63 lowercase letters, digits, '-', '.')"
            )));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|s| s == "." || s == "..")
            || prefix.contains("//")
            || prefix.contains(['\\', '\0'])
        {
            return Err(Error::Usage(format!(
                "'{text}': the prefix may not contain '.', '..' or empty segments"
            )));
        }
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix,
        })
    }

    /// The key of `name` under the prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    pub fn json_key(&self) -> String {
        self.key("json")
    }

    pub fn object_key(&self, id: &ObjectId) -> String {
        self.key(&format!("objects/{id}"))
    }

    /// A location `sub` below this one (`serve --store` keeps each repository under its name).
    pub fn child(&self, sub: &str) -> S3Location {
        S3Location {
            bucket: self.bucket.clone(),
            prefix: self.key(sub.trim_matches('/')),
        }
    }

    pub fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Endpoint, region and credentials from the environment.
#[derive(Clone)]
pub struct S3Config {
    pub endpoint: url::Url,
    pub region: String,
    pub path_style: bool,
    credentials: Credentials,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint.as_str())
            .field("region", &self.region)
            .field("access_key", &self.credentials.key())
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// Read the standard AWS variables (see the module docs).
    pub fn from_env() -> Result<S3Config> {
        Self::from_vars(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// `from_env` with an injectable lookup (tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<S3Config> {
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_string());
        let explicit = var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL"));
        let (endpoint, path_style) = match explicit {
            Some(e) => (e, true),
            None => (format!("https://s3.{region}.amazonaws.com"), false),
        };
        let endpoint = url::Url::parse(&endpoint).map_err(|e| {
            Error::Usage(format!("AWS_ENDPOINT_URL '{endpoint}' is not a URL: {e}"))
        })?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(Error::Usage(format!(
                "AWS_ENDPOINT_URL '{endpoint}' must be an http:// or https:// URL"
            )));
        }
        let (Some(key), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(Error::Usage(
                "S3 needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL, AWS_REGION for a service other than AWS)".into(),
            ));
        };
        let credentials = match var("AWS_SESSION_TOKEN") {
            Some(token) => Credentials::new_with_token(key, secret, token),
            None => Credentials::new(key, secret),
        };
        Ok(S3Config {
            endpoint,
            region,
            path_style,
            credentials,
        })
    }
}

/// What `HEAD` says about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub len: u64,
    /// `x-amz-checksum-sha256` as stored by the service (base64), when it keeps checksums.
    pub sha256_b64: Option<String>,
}

/// One bucket, with an HTTP agent and the retry policy of an exchange.
pub struct S3Bucket {
    bucket: Bucket,
    credentials: Credentials,
    net: Net,
    /// Objects of at least this many bytes are uploaded in parts (see [`multipart`]).
    multipart_threshold: u64,
    part_size: u64,
}

/// The base64 form of an object id, as `x-amz-checksum-sha256` carries it.
pub fn checksum_b64(id: &ObjectId) -> String {
    base64::engine::general_purpose::STANDARD.encode(id.as_bytes())
}

impl S3Bucket {
    pub fn new(config: &S3Config, name: &str, opts: &Options) -> Result<S3Bucket> {
        let style = if config.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            config.endpoint.clone(),
            style,
            name.to_string(),
            config.region.clone(),
        )
        .map_err(|e| Error::Usage(format!("bucket '{name}' at {}: {e}", config.endpoint)))?;
        Ok(S3Bucket {
            bucket,
            credentials: config.credentials.clone(),
            net: Net::new(opts),
            multipart_threshold: opts.s3_multipart_threshold,
            part_size: opts.s3_part_size,
        })
    }

    pub fn name(&self) -> &str {
        self.bucket.name()
    }

    /// A presigned `GET` URL for `key`, valid for `lifetime`.
    pub fn presign_get(&self, key: &str, lifetime: Duration) -> String {
        self.bucket
            .get_object(Some(&self.credentials), key)
            .sign(lifetime)
            .to_string()
    }

    /// A presigned `PUT` URL for `key` that the service accepts only for a body of `len` bytes
    /// hashing to `id`: the checksum travels as an `x-amz-` query parameter (which S3 treats as
    /// the header), so a client that sends nothing but the body and its `Content-Length` (pvr)
    /// can use it, and the service refuses anything else.
    pub fn presign_put(&self, key: &str, id: &ObjectId, lifetime: Duration) -> String {
        let mut action = self.bucket.put_object(Some(&self.credentials), key);
        action
            .query_mut()
            .insert("x-amz-checksum-sha256", checksum_b64(id));
        action.sign(lifetime).to_string()
    }

    fn url_for(&self, what: &str, key: &str) -> String {
        format!("s3://{}/{key} ({what})", self.bucket.name())
    }

    /// `GET` a small object (the state). `None` when it does not exist.
    pub fn get_small(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let what = self.url_for("GET", key);
        let clock = self.net.clock();
        self.net.retrying(&what, &clock, || {
            let url = self.presign_get(key, OWN_URL_LIFETIME);
            let answer = match self.net.get(&url, &[], MAX_JSON) {
                Ok(a) => a,
                Err(NetError::Status(404, _)) => return Ok(None),
                Err(e) => return Err(self.classify(e)),
            };
            self.net.read_all(answer, MAX_JSON, &clock).map(Some)
        })
    }

    /// `GET` one object into `store`, verified against `id`. Returns its size.
    pub fn fetch(&self, key: &str, id: &ObjectId, store: &Store) -> Result<u64> {
        let what = self.url_for("GET", key);
        let limit = self.net.opts().max_object_size;
        let clock = self.net.clock();
        self.net.retrying(&what, &clock, || {
            let url = self.presign_get(key, OWN_URL_LIFETIME);
            let answer = self
                .net
                .get(&url, &[], limit)
                .map_err(|e| self.classify(e))?;
            store
                .put_reader_expecting(self.net.body(answer.resp, answer.len, limit, &clock), id)
                .map_err(|e| net::download_failure(e, &what))
        })
    }

    /// `HEAD` an object. `None` when it does not exist.
    pub fn head(&self, key: &str) -> Result<Option<Head>> {
        let what = self.url_for("HEAD", key);
        let clock = self.net.clock();
        self.net.retrying(&what, &clock, || {
            let mut action = self.bucket.head_object(Some(&self.credentials), key);
            action
                .headers_mut()
                .insert("x-amz-checksum-mode", "ENABLED");
            let url = action.sign(OWN_URL_LIFETIME).to_string();
            match self.net.head(&url, &[("x-amz-checksum-mode", "ENABLED")]) {
                Ok(resp) => Ok(Some(Head {
                    len: resp
                        .header("Content-Length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    sha256_b64: resp.header("x-amz-checksum-sha256").map(str::to_string),
                })),
                Err(NetError::Status(404, _)) => Ok(None),
                Err(e) => Err(self.classify(e)),
            }
        })
    }

    /// The objects under `prefix` (keys `prefix<64 hex>`) with their sizes (ListObjectsV2,
    /// 1000 keys per page; other keys are skipped). A listing whose continuation token repeats
    /// or whose keys do not move forward, or that runs past [`MAX_LIST_PAGES`] pages, is refused.
    pub fn list_objects(&self, prefix: &str) -> Result<HashMap<ObjectId, u64>> {
        let mut out = HashMap::new();
        let mut token: Option<String> = None;
        let mut seen_tokens = std::collections::HashSet::new();
        let mut last_key: Option<String> = None;
        let what = self.url_for("LIST", prefix);
        for _ in 0..MAX_LIST_PAGES {
            let clock = self.net.clock();
            let page = self.net.retrying(&what, &clock, || {
                let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
                action.with_prefix(prefix);
                if let Some(t) = &token {
                    action.with_continuation_token(t.as_str());
                }
                let url = action.sign(OWN_URL_LIFETIME).to_string();
                let answer = self
                    .net
                    .get(&url, &[], MAX_LIST_PAGE)
                    .map_err(|e| self.classify(e))?;
                let body = self.net.read_all(answer, MAX_LIST_PAGE, &clock)?;
                parse_list_page(&body).map_err(|e| {
                    fatal(format!(
                        "{what}: the service sent a listing that does not parse: {e}"
                    ))
                })
            })?;
            for (key, size) in page.keys {
                if last_key.as_ref().is_some_and(|last| key <= *last) {
                    return Err(Error::Other(format!(
                        "{what}: the service listed '{key}' out of order; refusing the listing"
                    )));
                }
                if let Some(id) = key
                    .strip_prefix(prefix)
                    .and_then(|hex| ObjectId::from_hex(hex).ok())
                {
                    out.insert(id, size);
                }
                last_key = Some(key);
            }
            match page.next {
                Some(t) => {
                    if !seen_tokens.insert(t.clone()) {
                        return Err(Error::Other(format!(
                            "{what}: the service repeated a continuation token; refusing a listing that never ends"
                        )));
                    }
                    token = Some(t);
                }
                None => return Ok(out),
            }
        }
        Err(Error::Other(format!(
            "{what}: more than {MAX_LIST_PAGES} pages; refusing a listing that never ends"
        )))
    }

    /// Upload the local object at `path` (`len` bytes) as `key`: one `PUT` below the multipart
    /// threshold, else a multipart upload ([`multipart`]). Either way the object becomes
    /// visible only once the service and we have checked its bytes against `id`. `sent(n)`
    /// reports bytes as they leave (per part for multipart uploads, at the end otherwise).
    pub fn put_object(
        &self,
        key: &str,
        id: &ObjectId,
        path: &Path,
        len: u64,
        sent: &multipart::Sent<'_>,
    ) -> Result<()> {
        if len >= self.multipart_threshold.min(MAX_SINGLE_PUT + 1) {
            return multipart::upload(self, key, id, path, len, sent);
        }
        self.put_single(key, id, path, len)
    }

    /// `PUT` the local object at `path` as `key` in one request. The service checks the body
    /// against `id` (checksum header); we hash it while sending too and delete the upload if it
    /// does not match (see the module docs).
    fn put_single(&self, key: &str, id: &ObjectId, path: &Path, len: u64) -> Result<()> {
        let what = self.url_for("PUT", key);
        let checksum = checksum_b64(id);
        let clock = self.net.clock();
        let sent = self.net.retrying(&what, &clock, || {
            let mut action = self.bucket.put_object(Some(&self.credentials), key);
            action
                .headers_mut()
                .insert("x-amz-checksum-sha256", checksum.clone());
            let url = action.sign(OWN_URL_LIFETIME).to_string();
            let f = std::fs::File::open(path)
                .map_err(|e| Failure::Fatal(Error::io("open object", path, e)))?;
            let (result, actual) = self.net.upload(
                &url,
                &[
                    ("Content-Type", "application/octet-stream"),
                    ("x-amz-checksum-sha256", &checksum),
                ],
                f,
                len,
            );
            match result {
                Ok(_) => Ok(actual),
                // The service refused the body: it does not hash to the name (BadDigest /
                // XAmzContentChecksumMismatch). Never retried: the local object is bad.
                Err(NetError::Status(400, resp)) if actual.is_some_and(|a| a != *id) => {
                    let detail = self.error_detail(resp);
                    Err(fatal(format!(
                        "{what}: refused by the service ({detail}): the local object {} hashes to {}",
                        path.display(),
                        actual.expect("checked")
                    )))
                }
                Err(e) => Err(self.classify(e)),
            }
        })?;
        match sent {
            Some(sent) if sent != *id => {
                // Only a service that ignores checksums gets here: take the bad upload back.
                let _ = self.delete(key);
                Err(Error::CorruptObject {
                    id: *id,
                    actual: sent,
                    path: None,
                })
            }
            _ => Ok(()),
        }
    }

    /// `PUT` small bytes (the state) as `key`, with their checksum.
    pub fn put_bytes(&self, key: &str, bytes: &[u8], content_type: &str) -> Result<()> {
        let what = self.url_for("PUT", key);
        let checksum = checksum_b64(&ObjectId::hash_bytes(bytes));
        let clock = self.net.clock();
        self.net.retrying(&what, &clock, || {
            let mut action = self.bucket.put_object(Some(&self.credentials), key);
            action
                .headers_mut()
                .insert("x-amz-checksum-sha256", checksum.clone());
            let url = action.sign(OWN_URL_LIFETIME).to_string();
            self.net
                .send(
                    "PUT",
                    &url,
                    &[
                        ("Content-Type", content_type),
                        ("x-amz-checksum-sha256", &checksum),
                    ],
                    Some(bytes),
                )
                .map(drop)
                .map_err(|e| self.classify(e))
        })
    }

    /// `DELETE` an object (absent objects are not an error).
    pub fn delete(&self, key: &str) -> Result<()> {
        let what = self.url_for("DELETE", key);
        let clock = self.net.clock();
        self.net.retrying(&what, &clock, || {
            let url = self
                .bucket
                .delete_object(Some(&self.credentials), key)
                .sign(OWN_URL_LIFETIME)
                .to_string();
            match self.net.send("DELETE", &url, &[], None) {
                Ok(_) | Err(NetError::Status(404, _)) => Ok(()),
                Err(e) => Err(self.classify(e)),
            }
        })
    }

    /// Stream an object and hash it (used to verify an upload the service did not checksum).
    pub fn hash_object(&self, key: &str) -> Result<Option<(ObjectId, u64)>> {
        let what = self.url_for("GET", key);
        let limit = self.net.opts().max_object_size;
        let clock = self.net.clock();
        self.net.retrying(&what, &clock, || {
            let url = self.presign_get(key, OWN_URL_LIFETIME);
            let answer = match self.net.get(&url, &[], limit) {
                Ok(a) => a,
                Err(NetError::Status(404, _)) => return Ok(None),
                Err(e) => return Err(self.classify(e)),
            };
            ObjectId::hash_reader(self.net.body(answer.resp, answer.len, limit, &clock))
                .map(Some)
                .map_err(|e| net::body_failure(&e, &what))
        })
    }

    /// The `<Code>` and `<Message>` of an S3 error answer, for messages.
    fn error_detail(&self, resp: Box<ureq::Response>) -> String {
        let status = resp.status();
        let body = String::from_utf8_lossy(&self.net.error_body(resp)).into_owned();
        error_detail(status, &body)
    }

    /// Which S3 failures are worth another try (as for plain HTTP, with S3's error text).
    fn classify(&self, e: NetError) -> Failure {
        match e {
            NetError::Status(code, resp) if code >= 500 || code == 408 || code == 429 => {
                Failure::Retry(format!("the service answered {}", self.error_detail(resp)))
            }
            NetError::Status(code, resp) => {
                let detail = self.error_detail(resp);
                let hint = match code {
                    300..=399 => " (a redirect: is AWS_REGION or AWS_ENDPOINT_URL right?)",
                    403 => " (check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION, and the key's rights on the bucket)",
                    404 => " (no such bucket or key)",
                    _ => "",
                };
                fatal(format!("the service answered {detail}{hint}"))
            }
            NetError::Failed(f) => f,
        }
    }
}

/// One page of a ListObjectsV2 answer: keys with sizes, and the continuation token (`None`:
/// the last page).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    pub keys: Vec<(String, u64)>,
    pub next: Option<String>,
}

/// Parse one page of a ListObjectsV2 answer (XML from the service: untrusted).
pub fn parse_list_page(body: &[u8]) -> std::result::Result<ListPage, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    let page = rusty_s3::actions::ListObjectsV2::parse_response(text).map_err(|e| e.to_string())?;
    Ok(ListPage {
        keys: page.contents.into_iter().map(|c| (c.key, c.size)).collect(),
        next: page.next_continuation_token.filter(|t| !t.is_empty()),
    })
}

/// The `<Code>` and `<Message>` of an S3 error answer's body, for messages.
fn error_detail(status: u16, body: &str) -> String {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&close)? + start;
        Some(body[start..end].to_string())
    };
    match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("{status} {c}: {m}"),
        (Some(c), None) => format!("{status} {c}"),
        _ => format!("{status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_name_keys() {
        let l = S3Location::parse("s3://my-bucket/a/b/").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("my-bucket", "a/b"));
        assert_eq!(l.json_key(), "a/b/json");
        let id = ObjectId::hash_bytes(b"x");
        assert_eq!(l.object_key(&id), format!("a/b/objects/{id}"));
        assert_eq!(l.child("dev1").json_key(), "a/b/dev1/json");
        let bare = S3Location::parse("s3://bkt").unwrap();
        assert_eq!(bare.json_key(), "json");
        assert_eq!(bare.describe(), "s3://bkt");
        for bad in [
            "s3://B/x",
            "s3://ab",
            "s3://bkt/a/../b",
            "http://bkt/x",
            "s3://bkt/a//b",
        ] {
            assert!(S3Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_comes_from_the_standard_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let c = S3Config::from_vars(vars(&[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:3900"),
            ("AWS_REGION", "garage"),
            ("AWS_ACCESS_KEY_ID", "GK1"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ]))
        .unwrap();
        assert!(c.path_style && c.region == "garage");
        let aws = S3Config::from_vars(vars(&[
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ]))
        .unwrap();
        assert_eq!(aws.endpoint.as_str(), "https://s3.us-east-1.amazonaws.com/");
        assert!(!aws.path_style);
        let err = S3Config::from_vars(vars(&[])).unwrap_err().to_string();
        assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
    }

    #[test]
    fn presigned_put_carries_the_checksum() {
        let c = S3Config::from_vars(|k| match k {
            "AWS_ENDPOINT_URL" => Some("http://127.0.0.1:3900".into()),
            "AWS_ACCESS_KEY_ID" => Some("GK1".into()),
            "AWS_SECRET_ACCESS_KEY" => Some("s".into()),
            _ => None,
        })
        .unwrap();
        let b = S3Bucket::new(&c, "bkt", &Options::default()).unwrap();
        let id = ObjectId::hash_bytes(b"hello");
        let url = b.presign_put("p/objects/x", &id, Duration::from_secs(60));
        assert!(
            url.starts_with("http://127.0.0.1:3900/bkt/p/objects/x?"),
            "{url}"
        );
        let b64 = checksum_b64(&id);
        let encoded: String = url::form_urlencoded::byte_serialize(b64.as_bytes()).collect();
        assert!(
            url.contains(&format!("x-amz-checksum-sha256={encoded}")),
            "{url}"
        );
    }
}

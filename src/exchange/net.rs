//! Every HTTP request pvrfs makes goes through [`Net`]: plain HTTP sources and destinations
//! (`http.rs`), pvr remotes and the signed URLs they hand out (`pvr.rs`), S3 (`s3/`). One
//! place, so one set of rules holds for every server pvrfs talks to.
//!
//! # A server is untrusted
//! - **Schemes**: only `http:` and `https:` URLs are requested, whoever names them (a
//!   `.pvrremote`, an object record, a redirect): anything else (`file:`, `ftp:`, …) fails the
//!   request with an error naming the URL.
//! - **Redirects** are followed here, never by the HTTP library (it panicked on `file:`), for
//!   `GET` and `HEAD` only, at most [`MAX_REDIRECTS`] per request, to `http(s)` URLs only.
//!   Headers (the bearer token included) go along only while the redirect stays on the same
//!   origin (scheme, host, port). `PUT`, `POST` and `DELETE` never follow: a 3xx answer is a
//!   refusal (nothing was stored there).
//! - **Size**: every body read is capped by the caller's limit (objects: `--max-object-size`,
//!   answers: what such an answer can sensibly be); a `Content-Length` above it fails at once,
//!   and a body is cut at the first byte past it. Neither is retried.
//! - **Time**: the status line and headers must arrive within the grace time (plus the time
//!   what we send may take at the minimum rate), else the request is given up (a server that
//!   trickles its headers a byte at a time is cut off too); a body must keep the minimum
//!   average rate after the grace period ([`RateGuard`]); no socket read waits longer than the
//!   grace (or the idle timeout, if shorter); and a transfer (one object or one answer, all its
//!   attempts together) starts no new attempt once `grace + bytes received / min_rate` has
//!   passed since its first ([`Clock`], [`Net::retrying`]). So a server that stalls, trickles,
//!   or announces a length it never sends is cut off once, after about the grace time.
//! - **Retries** are bounded (`Options::attempts`, exponential backoff, at most 10 s apart).
//!
//! `--min-throughput 0` turns the time rules off (only the idle timeout remains).

use super::{Options, RateGuard};
use crate::error::{Error, Result};
use crate::oid::ObjectId;
use std::cell::Cell;
use std::io::{self, Read};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Redirects followed per request.
pub const MAX_REDIRECTS: usize = 5;

/// One try of a request: retry or give up.
pub(crate) enum Failure {
    Retry(String),
    Fatal(Error),
}

pub(crate) fn fatal(message: String) -> Failure {
    Failure::Fatal(Error::Other(message))
}

/// How a request failed.
pub(crate) enum NetError {
    /// The server answered this status: 4xx/5xx, or 3xx to a request that does not follow
    /// redirects. The caller decides what it means.
    Status(u16, Box<ureq::Response>),
    /// Anything else (transport error, refused redirect or URL, no answer in time), classified.
    Failed(Failure),
}

impl From<Failure> for NetError {
    fn from(f: Failure) -> Self {
        NetError::Failed(f)
    }
}

/// An answer to a `GET` (redirects followed).
pub(crate) struct Answer {
    pub resp: ureq::Response,
    /// The `Content-Length` announced, if any.
    pub len: Option<u64>,
    /// The URL that answered (after redirects).
    pub url: String,
}

impl Answer {
    /// The answer of a request that does not follow redirects (`Net::send`).
    pub fn of(resp: ureq::Response, url: &str) -> Answer {
        let len = resp
            .header("Content-Length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        Answer {
            resp,
            len,
            url: url.to_string(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.resp.header(name)
    }
}

/// What a request sends.
enum Payload<'a> {
    Nothing,
    Bytes(&'a [u8]),
    /// A file's first `len` bytes, hashed on the way (the hash comes back with the answer).
    File(std::fs::File, u64),
    /// Bytes shared with the caller (a multipart upload's part: sent, and kept for a retry,
    /// without a copy).
    Shared(std::sync::Arc<Vec<u8>>),
}

/// The HTTP client of one exchange: a connection pool and the rules above.
#[derive(Clone)]
pub(crate) struct Net {
    agent: ureq::Agent,
    opts: Options,
}

impl Net {
    pub fn new(opts: &Options) -> Net {
        let wait = if opts.min_rate == 0 {
            opts.idle_timeout
        } else {
            opts.idle_timeout.min(opts.grace)
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(15).min(wait.max(Duration::from_secs(1))))
            .timeout_read(wait)
            .timeout_write(opts.idle_timeout)
            .redirects(0)
            .max_idle_connections_per_host(opts.jobs.max(1) * 2)
            .user_agent(concat!("pvrfs/", env!("CARGO_PKG_VERSION")))
            .build();
        Net {
            agent,
            opts: opts.clone(),
        }
    }

    pub fn opts(&self) -> &Options {
        &self.opts
    }

    /// A new transfer's clock (see [`Net::retrying`]).
    pub fn clock(&self) -> Clock {
        Clock::start()
    }

    /// Run `attempt` until it succeeds, fails fatally, or the attempts are used up, with
    /// exponential backoff; no new attempt starts once `clock` says the transfer's time is up.
    pub fn retrying<T>(
        &self,
        what: &str,
        clock: &Clock,
        mut attempt: impl FnMut() -> std::result::Result<T, Failure>,
    ) -> Result<T> {
        let mut tries = 0;
        let mut last = String::new();
        retrying(self.opts.attempts, self.opts.backoff, what, || {
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

    /// `GET url` with `headers`, following redirects (module docs). A body announced larger
    /// than `limit` fails at once.
    pub fn get(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        limit: u64,
    ) -> std::result::Result<Answer, NetError> {
        let (resp, url) = self.follow("GET", url, headers)?;
        let len = resp
            .header("Content-Length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(len) = len.filter(|&len| len > limit) {
            return Err(fatal(format!(
                "{}: the server announces {len} bytes, more than the limit of {limit} bytes{}",
                shown(&url),
                if limit == self.opts.max_object_size {
                    " (--max-object-size)"
                } else {
                    ""
                }
            ))
            .into());
        }
        Ok(Answer { resp, len, url })
    }

    /// `HEAD url` with `headers`, following redirects.
    pub fn head(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> std::result::Result<ureq::Response, NetError> {
        self.follow("HEAD", url, headers).map(|(resp, _)| resp)
    }

    /// `method url` with `bytes` as the body (none for `DELETE`); redirects are not followed.
    pub fn send(
        &self,
        method: &'static str,
        url: &str,
        headers: &[(&str, &str)],
        bytes: Option<&[u8]>,
    ) -> std::result::Result<ureq::Response, NetError> {
        let payload = bytes.map_or(Payload::Nothing, Payload::Bytes);
        no_redirect(self.once(method, url, headers, payload).0)
    }

    /// `PUT` the first `len` bytes of `file` to `url`; returns the answer and the sha256 of what
    /// was read from the file (compare it with the object's name). Redirects are not followed.
    pub fn upload(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        file: std::fs::File,
        len: u64,
    ) -> (
        std::result::Result<ureq::Response, NetError>,
        Option<ObjectId>,
    ) {
        let (result, sent) = self.once("PUT", url, headers, Payload::File(file, len));
        (no_redirect(result), sent)
    }

    /// `PUT` shared `bytes` to `url` (a multipart upload's part); redirects are not followed.
    pub fn put_shared(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        bytes: std::sync::Arc<Vec<u8>>,
    ) -> std::result::Result<ureq::Response, NetError> {
        no_redirect(self.once("PUT", url, headers, Payload::Shared(bytes)).0)
    }

    /// A response body held to `limit` bytes, the minimum rate and `clock`. `announced` is the
    /// length the server announced, if any: more than that is refused too.
    pub fn body<'c>(
        &self,
        resp: ureq::Response,
        announced: Option<u64>,
        limit: u64,
        clock: &'c Clock,
    ) -> Capped<'c, impl Read> {
        Capped {
            inner: RateGuard::new(resp.into_reader(), &self.opts, announced),
            read: 0,
            limit,
            clock,
            flag: if limit == self.opts.max_object_size {
                " (--max-object-size)"
            } else {
                ""
            },
        }
    }

    /// A whole (small) body, at most `limit` bytes (see [`Net::body`]).
    pub fn read_all(
        &self,
        answer: Answer,
        limit: u64,
        clock: &Clock,
    ) -> std::result::Result<Vec<u8>, Failure> {
        let mut body = Vec::new();
        self.body(answer.resp, answer.len, limit, clock)
            .read_to_end(&mut body)
            .map_err(|e| body_failure(&e, shown(&answer.url)))?;
        Ok(body)
    }

    /// The text of an error answer (at most 64 KiB, within the grace time), for messages.
    pub fn error_body(&self, resp: Box<ureq::Response>) -> Vec<u8> {
        let clock = Clock::start();
        let mut body = Vec::new();
        let _ = self
            .body(*resp, None, 64 * 1024, &clock)
            .read_to_end(&mut body);
        body
    }

    /// A request that may be redirected (`GET`, `HEAD`): at most [`MAX_REDIRECTS`] hops, each
    /// to an http(s) URL; headers only along the same origin.
    fn follow(
        &self,
        method: &'static str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> std::result::Result<(ureq::Response, String), NetError> {
        let first = checked_url(url)?;
        let mut current = first.clone();
        for _ in 0..=MAX_REDIRECTS {
            let same_origin = current.origin() == first.origin();
            let hop_headers: &[(&str, &str)] = if same_origin { headers } else { &[] };
            let (resp, _) = self.once(method, current.as_str(), hop_headers, Payload::Nothing);
            let resp = resp?;
            if !(300..400).contains(&resp.status()) {
                return Ok((resp, current.into()));
            }
            let location = resp.header("Location").unwrap_or_default().to_string();
            let next = current.join(&location).map_err(|e| {
                fatal(format!(
                    "{}: the server redirected to '{location}', which is not a URL ({e})",
                    shown(current.as_str())
                ))
            })?;
            if !matches!(next.scheme(), "http" | "https") {
                return Err(fatal(format!(
                    "{}: refusing to follow the server's redirect to '{next}': only http and https URLs are followed",
                    shown(current.as_str())
                ))
                .into());
            }
            current = next;
        }
        Err(fatal(format!(
            "{}: more than {MAX_REDIRECTS} redirects; giving up",
            shown(url)
        ))
        .into())
    }

    /// One request, no redirects. The status line and headers must come within the grace time
    /// plus what sending `payload` may take (module docs, "Time"): the request runs on a
    /// helper thread that is abandoned when they do not (the thread ends when the server stops
    /// or a read waits longer than the per-read timeout; a command does not wait for it).
    fn once(
        &self,
        method: &'static str,
        url: &str,
        headers: &[(&str, &str)],
        payload: Payload<'_>,
    ) -> (
        std::result::Result<ureq::Response, NetError>,
        Option<ObjectId>,
    ) {
        let parsed = match checked_url(url) {
            Ok(u) => u,
            Err(e) => return (Err(e.into()), None),
        };
        let mut req = self.agent.request_url(method, &parsed);
        for (name, value) in headers {
            req = req.set(name, value);
        }
        let sending = match &payload {
            Payload::Nothing => 0,
            Payload::Bytes(b) => b.len() as u64,
            Payload::File(_, len) => *len,
            Payload::Shared(b) => b.len() as u64,
        };
        // No overall ureq timeout: it would replace the per-read timeout for the body too.
        let headers_by = self.allowance(sending);
        // The body and its hash move to the helper thread and back.
        let (tx, rx) = mpsc::sync_channel(1);
        let rate = (self.opts.min_rate, self.opts.grace);
        let job: Box<dyn FnOnce() + Send> = match payload {
            Payload::Nothing => Box::new(move || {
                let _ = tx.send((req.call(), None));
            }),
            Payload::Bytes(b) => {
                let b = b.to_vec();
                Box::new(move || {
                    let _ = tx.send((req.send_bytes(&b), None));
                })
            }
            Payload::Shared(b) => Box::new(move || {
                let _ = tx.send((req.send_bytes(&b), None));
            }),
            Payload::File(f, len) => {
                let req = req.set("Content-Length", &len.to_string());
                Box::new(move || {
                    // Our side of the rate: a server that reads the upload too slowly is cut off.
                    let mut hashing = super::HashingReader::new(RateGuard::with(
                        f.take(len),
                        rate.0,
                        rate.1,
                        None,
                    ));
                    let result = req.send(&mut hashing);
                    let _ = tx.send((result, Some(hashing.finish())));
                })
            }
        };
        let Some(limit) = headers_by else {
            // No time rules: run here.
            job();
            return match rx.recv() {
                Ok((r, hash)) => (r.map_err(|e| from_ureq(e, url)), hash),
                Err(_) => (
                    Err(fatal(format!("{url}: the request failed")).into()),
                    None,
                ),
            };
        };
        if let Err(e) = std::thread::Builder::new()
            .name("pvrfs-http".into())
            .spawn(job)
        {
            return (
                Err(fatal(format!("cannot start a request thread: {e}")).into()),
                None,
            );
        }
        match rx.recv_timeout(limit) {
            Ok((r, hash)) => (r.map_err(|e| from_ureq(e, url)), hash),
            Err(_) => (
                Err(NetError::Failed(Failure::Retry(format!(
                    "no answer from {} within {:.0} s",
                    shown(url),
                    limit.as_secs_f64()
                )))),
                None,
            ),
        }
    }

    /// The time `bytes` may take: the grace time plus `bytes` at the minimum rate (`None`: no
    /// time rules).
    fn allowance(&self, bytes: u64) -> Option<Duration> {
        (self.opts.min_rate > 0).then(|| {
            self.opts.grace.saturating_add(Duration::from_secs_f64(
                bytes as f64 / self.opts.min_rate as f64,
            ))
        })
    }
}

/// A 3xx answer to a request that does not follow redirects is a refusal.
fn no_redirect(
    result: std::result::Result<ureq::Response, NetError>,
) -> std::result::Result<ureq::Response, NetError> {
    match result {
        Ok(resp) if (300..400).contains(&resp.status()) => {
            Err(NetError::Status(resp.status(), Box::new(resp)))
        }
        other => other,
    }
}

/// `url` parsed, if it is an http(s) URL.
fn checked_url(url: &str) -> std::result::Result<url::Url, Failure> {
    let parsed = url::Url::parse(url).map_err(|e| fatal(format!("'{url}' is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(fatal(format!(
            "refusing to request '{}': only http and https URLs are used",
            shown(url)
        )));
    }
    Ok(parsed)
}

fn from_ureq(e: ureq::Error, url: &str) -> NetError {
    match e {
        ureq::Error::Status(code, resp) => NetError::Status(code, Box::new(resp)),
        ureq::Error::Transport(t) => NetError::Failed(Failure::Retry(format!(
            "{}: transport error: {t}",
            shown(url)
        ))),
    }
}

/// A URL for messages: without its query (signed URLs carry credentials there).
pub(crate) fn shown(url: &str) -> &str {
    url.split_once('?').map_or(url, |(u, _)| u)
}

/// A body larger than the limit; carried inside the `io::Error` of the read that stopped it.
#[derive(Debug)]
struct TooLarge {
    limit: u64,
    flag: &'static str,
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the body is larger than the limit of {} bytes{}",
            self.limit, self.flag
        )
    }
}

impl std::error::Error for TooLarge {}

/// When a transfer (all its attempts) must be over: `grace + received / min_rate` after its
/// first attempt started.
pub(crate) struct Clock {
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
pub(crate) struct Capped<'a, R> {
    inner: R,
    read: u64,
    limit: u64,
    clock: &'a Clock,
    flag: &'static str,
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
            return Err(io::Error::other(TooLarge {
                limit: self.limit,
                flag: self.flag,
            }));
        }
        Ok(n)
    }
}

/// A body that could not be read: over the size limit (final: another try would be cut off
/// too), or anything else (too slow, broken: worth another try while the transfer's time lasts).
pub(crate) fn body_failure(e: &io::Error, url: &str) -> Failure {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TooLarge>())
    {
        Some(c) => fatal(format!("{url}: {c}; nothing was stored")),
        None => Failure::Retry(format!("reading the body failed: {e}")),
    }
}

/// How a failed download into the store is retried: bytes that do not hash to the name and
/// broken bodies are worth another try (an oversized one is not); a local store error is not.
pub(crate) fn download_failure(e: Error, url: &str) -> Failure {
    match e {
        Error::CorruptObject { actual, .. } => Failure::Retry(format!(
            "the server sent bytes that hash to {actual}, not to the object's name"
        )),
        Error::Io {
            op: "read input for",
            source,
            ..
        } => body_failure(&source, url),
        other => Failure::Fatal(other),
    }
}

/// Run `attempt` until it succeeds, fails fatally, or `attempts` are used up, sleeping
/// `backoff` (doubled each time, at most 10 s) between tries.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_are_requested() {
        let net = Net::new(&Options::default());
        for url in [
            "file:///etc/passwd",
            "ftp://h/x",
            "gopher://x/",
            "not a url",
        ] {
            match net.get(url, &[], 10) {
                Err(NetError::Failed(Failure::Fatal(e))) => {
                    assert!(e.to_string().contains(url), "{e}")
                }
                _ => panic!("{url} was requested"),
            }
        }
    }
}

//! HTTP/1.1 plumbing of `pvrfs serve` (hyper on a small tokio runtime), kept thin: the
//! protocol is `Server::handle`, which runs on a blocking thread with the request body as a
//! `Read` fed through a bounded channel, and answers a `Reply` streamed back the same way.
//!
//! Limits (see `Limits`): request heads at most 64 KiB; JSON bodies and uploads bounded by the
//! handlers; a connection whose reads or writes make no progress for `idle` is closed (slow or
//! stuck peers, idle keep-alive connections); a download slower on average than `min_rate`
//! after `grace` is cut off, as uploads are (`RateGuard`); at most `max_connections`
//! connections (more get 503). Memory per request is bounded by the channels (a few 256 KiB
//! chunks), whatever the object's size.
//!
//! Every request ends with one log line (peer, method, path without the signature, status,
//! bytes, time). Shutdown (Ctrl-C, SIGTERM, or `RunningServer::stop`) stops accepting, lets
//! requests in progress finish for up to 10 s, and drops the rest: an upload cut that way
//! leaves only a removed temp file, a post either committed or not.

use super::{Body, Method, Reply, RequestHead, Server};
use crate::error::{Error, Result};
use bytes::Bytes;
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;

/// Chunk size of streamed bodies; a few of these in flight per request bound its memory.
const CHUNK: usize = 256 * 1024;
/// Chunks buffered between the network and the handler, each way.
const CHANNEL_DEPTH: usize = 4;
/// How long requests in progress may run after a shutdown was asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// What is read and thrown away of a request body the handler did not read (a refusal), at
/// most, and for how long: a peer usually sends its whole body before it reads the answer, and
/// closing a connection with unread data resets it, so the peer would see a broken pipe instead
/// of the refusal. A bigger or slower body is cut off as before.
const DRAIN_MAX: usize = 16 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Serve `server` on `listener` until `shutdown` completes.
pub fn run(
    server: Arc<Server>,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Other(format!("cannot configure the listening socket: {e}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("pvrfs-serve")
        .enable_all()
        .build()
        .map_err(|e| Error::Other(format!("cannot start the server's runtime: {e}")))?;
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| Error::Other(format!("cannot use the listening socket: {e}")))?;
        serve(server, listener, shutdown).await;
        Ok(())
    });
    // Blocking handlers still running (a stuck disk) are abandoned after the grace period.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    result
}

/// Ctrl-C or SIGTERM.
pub async fn signals() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A server running on its own thread (tests, embedding); stopped on drop.
pub struct RunningServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl RunningServer {
    /// Serve on `listen` (port 0: any free port) in a background thread.
    pub fn start(server: Server, listen: SocketAddr) -> Result<RunningServer> {
        let listener = std::net::TcpListener::bind(listen)
            .map_err(|e| Error::Other(format!("cannot listen on {listen}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Other(format!("cannot read the listening address: {e}")))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = Arc::new(server);
        let thread = std::thread::Builder::new()
            .name("pvrfs-serve".into())
            .spawn(move || {
                run(server, listener, async move {
                    let _ = rx.await;
                })
            })
            .map_err(|e| Error::Other(format!("cannot start the server thread: {e}")))?;
        Ok(RunningServer {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop accepting, finish what is in progress (up to 10 s), and wait for the thread.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(Error::Other("the server thread panicked".into()))),
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

async fn serve(
    server: Arc<Server>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(
        server.limits.max_connections.max(1),
    ));
    let idle = server.limits.idle;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    log::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            log::warn!(
                "{peer}: refused, {} connections already open",
                server.limits.max_connections
            );
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = stream
                    .write_all(b"HTTP/1.1 503 Too Many Connections\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(IdleGuard::new(stream, idle));
        let server = server.clone();
        let service = hyper::service::service_fn(move |req| {
            let server = server.clone();
            async move { Ok::<_, std::convert::Infallible>(respond(server, peer, req).await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(idle)
            .max_buf_size(64 * 1024)
            .keep_alive(true)
            .serve_connection(io, service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!("{peer}: connection ended: {e}");
            }
            drop(slot);
        });
    }
    log::info!("stopping: no new connections; requests in progress get {SHUTDOWN_GRACE:?}");
    tokio::select! {
        _ = graceful.shutdown() => log::info!("stopped"),
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => log::warn!("stopped; requests still in progress were cut off"),
    }
}

/// Turn a hyper request into `Server::handle` on a blocking thread, and its reply back.
async fn respond(
    server: Arc<Server>,
    peer: SocketAddr,
    req: hyper::Request<Incoming>,
) -> hyper::Response<ReplyBody> {
    let start = Instant::now();
    let headers = req.headers();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let token = header("authorization").and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
            .then(|| rest.trim().to_string())
    });
    let method = match *req.method() {
        hyper::Method::GET => Method::Get,
        hyper::Method::HEAD => Method::Head,
        hyper::Method::PUT => Method::Put,
        hyper::Method::POST => Method::Post,
        ref other => Method::Other(other.to_string()),
    };
    let head = RequestHead {
        method,
        path: req.uri().path().to_string(),
        query: req.uri().query().unwrap_or("").to_string(),
        host: header("host"),
        token,
        content_length: header("content-length").and_then(|v| v.parse().ok()),
        peer,
    };
    let line = LogLine {
        peer,
        method: req.method().to_string(),
        path: head.path.clone(),
        status: 0,
        why: None,
        start,
    };
    let reply = if server.is_quick(&head) && hyper::body::Body::is_end_stream(req.body()) {
        // Describing a repository or an object is a stat and a few microseconds of work, and
        // reading a small object from the page cache not much more: done right here, without
        // a hand-off to a blocking thread and back (pvr asks for every object's record one
        // after the other, then downloads 4 at a time; a clone of 10 000 objects pays these
        // hand-offs 20 000 times, ~60% of the server's CPU time when they went through the
        // blocking pool). A cold disk stalls this worker for one read of at most `CHUNK`.
        inline_small_file(server.handle(&head, &mut io::empty()))
    } else {
        // The body reaches the handler through a bounded channel (backpressure on the peer).
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_DEPTH);
        let feeder = tokio::spawn(feed(req.into_body(), tx));
        let handler_server = server.clone();
        let reply = tokio::task::spawn_blocking(move || {
            let mut body = ChannelReader {
                rx,
                pending: Bytes::new(),
            };
            // Small files are read here, on the blocking thread, rather than streamed.
            inline_small_file(handler_server.handle(&head, &mut body))
        })
        .await
        .unwrap_or_else(|e| Reply::error(500, format!("internal error: {e}")));
        // A handler that did not read the whole body (a refusal) leaves the feeder draining
        // it (see `DRAIN_MAX`); hyper then closes the connection instead of reusing it.
        let mut feeder = feeder;
        if tokio::time::timeout(DRAIN_TIME, &mut feeder).await.is_err() {
            feeder.abort();
        }
        reply
    };
    let limits = &server.limits;
    let mut line = line;
    line.status = reply.status;
    line.why = reply.reason.clone();
    let body = ReplyBody::new(reply.body, line, limits.min_rate, limits.grace);
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() = hyper::StatusCode::from_u16(reply.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in reply.headers {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&value) {
            resp.headers_mut().append(name, v);
        }
    }
    if let Some(reason) = reply.reason {
        let clean: String = reason
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .take(300)
            .collect();
        if let Ok(r) = hyper::ext::ReasonPhrase::try_from(clean.into_bytes()) {
            resp.extensions_mut().insert(r);
        }
    }
    resp
}

/// A reply whose body is a file of at most `CHUNK` bytes, with the file read into memory (one
/// read, sent in one write with the head); larger files are left to be streamed.
fn inline_small_file(mut reply: Reply) -> Reply {
    if let Body::File { file, len } = &mut reply.body {
        if *len <= CHUNK as u64 {
            let mut buf = Vec::with_capacity(*len as usize);
            reply.body = match file.take(*len).read_to_end(&mut buf) {
                Ok(n) if n as u64 == *len => Body::Bytes(buf),
                Ok(n) => {
                    return Reply::error(
                        500,
                        format!("the object file is shorter than it was ({n} of {len} bytes)"),
                    )
                }
                Err(e) => return Reply::error(500, format!("reading the object failed: {e}")),
            };
        }
    }
    reply
}

/// Pass the request body's data frames to the handler's channel; an error (a broken or
/// timed-out connection) is passed on as one, so the handler never mistakes a cut body for a
/// complete one.
async fn feed(mut body: Incoming, tx: mpsc::Sender<io::Result<Bytes>>) {
    loop {
        let frame =
            std::future::poll_fn(|cx| hyper::body::Body::poll_frame(Pin::new(&mut body), cx)).await;
        match frame {
            None => return,
            Some(Err(e)) => {
                // hyper's message is generic; the cause (e.g. our idle timeout) says why.
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    why = format!("{why}: {s}");
                    source = s.source();
                }
                let _ = tx
                    .send(Err(io::Error::new(io::ErrorKind::ConnectionAborted, why)))
                    .await;
                return;
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if tx.send(Ok(data)).await.is_err() {
                        return drain(body).await;
                    }
                }
            }
        }
    }
}

/// Read and discard the rest of `body`, up to `DRAIN_MAX` bytes (the handler is gone).
async fn drain(mut body: Incoming) {
    let mut drained = 0;
    while drained <= DRAIN_MAX {
        let frame =
            std::future::poll_fn(|cx| hyper::body::Body::poll_frame(Pin::new(&mut body), cx)).await;
        match frame {
            Some(Ok(frame)) => drained += frame.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

/// The request body as a blocking `Read` for the handler.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    pending: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(e),
                Some(Ok(b)) => self.pending = b,
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending.split_to(n));
        Ok(n)
    }
}

/// The request's log line, written when its response body is done (or dropped).
struct LogLine {
    peer: SocketAddr,
    method: String,
    path: String,
    status: u16,
    /// Why a request failed (the error reply's reason).
    why: Option<String>,
    start: Instant,
}

enum Stream {
    Done,
    Bytes(Bytes),
    Chunks(mpsc::Receiver<io::Result<Bytes>>),
}

/// A response body: bytes, or a file streamed from a blocking reader; logs the request when it
/// ends and cuts off a peer that reads slower than the minimum rate.
pub struct ReplyBody {
    stream: Stream,
    len: u64,
    sent: u64,
    /// When the body started (the rate clock; a slow handler does not count against the peer).
    started: Instant,
    min_rate: u64,
    grace: Duration,
    line: LogLine,
    failed: Option<String>,
}

impl ReplyBody {
    fn new(body: Body, line: LogLine, min_rate: u64, grace: Duration) -> ReplyBody {
        let (stream, len) = match body {
            Body::Empty => (Stream::Done, 0),
            Body::Bytes(b) => {
                let len = b.len() as u64;
                (Stream::Bytes(Bytes::from(b)), len)
            }
            Body::File { file, len } => {
                let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
                tokio::task::spawn_blocking(move || stream_file(file, len, tx));
                (Stream::Chunks(rx), len)
            }
        };
        ReplyBody {
            stream,
            len,
            sent: 0,
            started: Instant::now(),
            min_rate,
            grace,
            line,
            failed: None,
        }
    }
}

fn stream_file(file: std::fs::File, len: u64, tx: mpsc::Sender<io::Result<Bytes>>) {
    let mut reader = file.take(len);
    let mut left = len;
    while left > 0 {
        let mut buf = vec![0u8; CHUNK.min(left as usize)];
        let n = match reader.read(&mut buf) {
            Ok(0) => {
                let _ = tx.blocking_send(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the object file is shorter than it was",
                )));
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        buf.truncate(n);
        left -= n as u64;
        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
            return; // the peer went away
        }
    }
}

impl hyper::body::Body for ReplyBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = &mut *self;
        if this.min_rate > 0 {
            let allowed =
                this.grace + Duration::from_secs_f64(this.sent as f64 / this.min_rate as f64);
            if this.started.elapsed() > allowed && this.sent < this.len {
                let msg = format!(
                    "the peer reads too slowly ({} of {} bytes sent)",
                    this.sent, this.len
                );
                this.failed = Some(msg.clone());
                return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::TimedOut, msg))));
            }
        }
        let next = match &mut this.stream {
            Stream::Done => None,
            Stream::Bytes(b) => {
                let b = std::mem::take(b);
                this.stream = Stream::Done;
                (!b.is_empty()).then_some(Ok(b))
            }
            Stream::Chunks(rx) => ready!(rx.poll_recv(cx)),
        };
        Poll::Ready(match next {
            None => {
                this.stream = Stream::Done;
                None
            }
            Some(Ok(b)) => {
                this.sent += b.len() as u64;
                Some(Ok(Frame::data(b)))
            }
            Some(Err(e)) => {
                this.failed = Some(e.to_string());
                Some(Err(e))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.stream, Stream::Done)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.len.saturating_sub(self.sent))
    }
}

impl Drop for ReplyBody {
    fn drop(&mut self) {
        let l = &self.line;
        let ms = l.start.elapsed().as_secs_f64() * 1000.0;
        let mut outcome = match (&self.failed, self.sent < self.len) {
            (Some(why), _) => format!(" cut off: {why}"),
            (None, true) => " (the peer went away)".to_string(),
            (None, false) => String::new(),
        };
        if let Some(why) = &l.why {
            outcome = format!("{outcome}: {why}");
        }
        log::info!(
            "{} {} {} {} {} B {ms:.1} ms{outcome}",
            l.peer,
            l.method,
            l.path,
            l.status,
            self.sent
        );
    }
}

/// A socket whose reads and writes fail with `TimedOut` when they wait longer than `idle` for
/// the peer (a stalled upload, a client that stopped reading, an idle keep-alive connection).
struct IdleGuard<S> {
    inner: S,
    idle: Duration,
    read_wait: Option<Pin<Box<tokio::time::Sleep>>>,
    write_wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> IdleGuard<S> {
    fn new(inner: S, idle: Duration) -> Self {
        IdleGuard {
            inner,
            idle,
            read_wait: None,
            write_wait: None,
        }
    }
}

/// Arm or check the wait timer of a pending operation; `Err` when it ran out.
fn waited_too_long(
    wait: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    idle: Duration,
    cx: &mut Context<'_>,
    what: &str,
) -> io::Result<()> {
    let sleep = wait.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
    match sleep.as_mut().poll(cx) {
        Poll::Ready(()) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the peer {what} nothing for {} s", idle.as_secs()),
        )),
        Poll::Pending => Ok(()),
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.read_wait = None;
                Poll::Ready(r)
            }
            Poll::Pending => match waited_too_long(&mut this.read_wait, this.idle, cx, "sent") {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.write_wait = None;
                Poll::Ready(r)
            }
            Poll::Pending => match waited_too_long(&mut this.write_wait, this.idle, cx, "read") {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

//! The control socket of a `--rw` mount: how `pvrfs commit/status/diff/reset` reach the daemon
//! that owns the overlay.
//!
//! # Addressing: a socket nobody else can take
//! A unix socket file `<32 hex of sha256(canonical mountpoint)>.sock` in the repository's
//! `.pvr/pvrfs/ctl/`, a directory the daemon creates with mode 0700 and refuses to use unless
//! it is a real directory (not a symlink) owned by the daemon's user with no access for group
//! or others. So no other user can bind the name first (the old abstract name
//! `sha256(mountpoint)` could be taken by anyone, making the owner's `mount --rw` fail), nor
//! even connect. Paths are reached through `/proc/self/fd/<dir fd>/<name>`, so the 108-byte
//! `sun_path` limit never applies to deep repositories. A socket file left by a killed daemon is
//! stale: the next daemon finds nobody answering on it and replaces it.
//!
//! The CLI finds the mount (`--mount MNT` or the cwd, `/proc/self/mountinfo`), takes the
//! repository from its source (`pvrfs:<repo>@rw:<overlay>`) and the daemon's uid from its
//! `user_id=`, checks the directory belongs to that uid, connects, and checks with
//! `SO_PEERCRED` that the peer is that uid: an answer never comes from anyone else.
//!
//! # Serving: hostile local users
//! - Only the daemon's own user (or root) is served. The peer's credentials (`SO_PEERCRED`)
//!   are checked on accept, **before anything is read**: anyone else gets a refusal and the
//!   connection is closed (so `--allow-other` users can edit files but not commit or reset).
//! - A request is one line of at most [`MAX_REQUEST_BYTES`]; a longer one is refused at the
//!   first byte past it, never buffered.
//! - Each connection is served on its own thread with an overall deadline
//!   ([`REQUEST_DEADLINE`] to send the request, the same to take the answer), at most
//!   [`MAX_CONNECTIONS`] at once, so a client that trickles or never finishes cannot hold up
//!   the owner's `status` or `commit`. Requests are then handled one at a time.
//!
//! # Protocol
//! One JSON request line, one JSON answer line, then the connection closes.
//! Request `{"op": "commit"|"status"|"diff"|"reset"|"state"|"info"|"transport"|"backend",
//! "message"?: str}`; `backend` answers `fuse` or `kernel` (which copy-on-write backend serves
//! the mount: the FUSE overlay, or kernel overlayfs over a private EROFS or FUSE lower layer);
//! `state` answers the view's canonical state JSON in `text`, `info` the repository's work
//! directory in `text` and the base revision in `rev`, `transport` how FUSE requests reach the
//! daemon (`io_uring (Q queues, R requests, B big reads off the caller's CPU, D read from the
//! disk)` or `/dev/fuse …`, `fuse::uring::Status`);
//! answer `{"ok": true, "text": str, "warnings": [str], "rev": u64?}` or
//! `{"ok": false, "code": u8, "error": str}` (the daemon's error and exit code).

use crate::error::{Error, IoContext, Result};
use crate::fs::change::Committed;
use crate::fs::cow::{CowFs, Invalidate};
use crate::oid::ObjectId;
use crate::state::State;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest request line accepted (a commit message included).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Time a client has to send its request, and again to take the answer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Connections served at once; more are refused until one ends.
pub const MAX_CONNECTIONS: usize = 16;

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Request {
    /// A request without a message.
    pub fn new(op: &str) -> Request {
        Request {
            op: op.into(),
            message: None,
        }
    }

    /// Parse one request line (what the daemon does with what it read).
    pub fn parse(line: &[u8]) -> Result<Request> {
        serde_json::from_slice::<Request>(line)
            .map_err(|e| Error::Usage(format!("bad control request: {e}")))
    }
}

#[derive(Debug, Serialize, Deserialize, Default)]
pub struct Answer {
    pub ok: bool,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(default)]
    pub rev: Option<u64>,
    #[serde(default)]
    pub code: u8,
    #[serde(default)]
    pub error: String,
}

/// The directory holding the control sockets of a repository's `--rw` mounts.
pub fn socket_dir(repo_workdir: &Path) -> PathBuf {
    repo_workdir.join(crate::repo::PVR_DIR).join("pvrfs/ctl")
}

/// The socket's file name for the mount at `mountpoint` (canonical).
pub fn socket_name(mountpoint: &Path) -> String {
    let hex = ObjectId::hash_bytes(mountpoint.as_os_str().as_encoded_bytes()).to_hex();
    format!("{}.sock", &hex[..32])
}

/// Open `dir` (creating it with mode 0700 when `create`) and insist that it is a directory,
/// not a symlink, owned by `owner`, with no permissions for group or others.
pub fn open_private_dir(dir: &Path, owner: u32, create: bool) -> Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    if create {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).ctx("create", parent)?;
        }
        match rustix::fs::mkdir(dir, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(Error::io("create", dir, e.into())),
        }
    }
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open control socket directory", dir, e.into()))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| Error::io("stat", dir, e.into()))?;
    if st.st_uid != owner || st.st_mode & 0o077 != 0 {
        return Err(Error::Other(format!(
            "refusing the control socket directory '{}': it must belong to uid {owner} with mode 0700 (it belongs to uid {} with mode {:o})",
            dir.display(),
            st.st_uid,
            st.st_mode & 0o7777
        )));
    }
    Ok(fd)
}

/// `/proc/self/fd/<dir>/<name>`: a short path to a file in an open directory.
fn via_fd(dir: &OwnedFd, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

/// Bind the control socket of the mount of `repo_workdir` at `mountpoint` (before the mount is
/// reported ready). A stale socket file (nobody answers on it) is replaced.
pub fn bind(repo_workdir: &Path, mountpoint: &Path) -> Result<UnixListener> {
    let dir_path = socket_dir(repo_workdir);
    let me = rustix::process::geteuid().as_raw();
    let dir = open_private_dir(&dir_path, me, true)?;
    let name = socket_name(mountpoint);
    let path = via_fd(&dir, &name);
    let in_use = || {
        Error::Usage(format!(
            "another pvrfs daemon already serves '{}'",
            mountpoint.display()
        ))
    };
    match UnixListener::bind(&path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(&path).is_ok() {
                return Err(in_use());
            }
            let _ = rustix::fs::unlinkat(&dir, name.as_str(), rustix::fs::AtFlags::empty());
            UnixListener::bind(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::AddrInUse => in_use(),
                _ => Error::io("bind control socket", dir_path.join(&name), e),
            })
        }
        Err(e) => Err(Error::io("bind control socket", dir_path.join(&name), e)),
    }
}

/// Remove the socket file of a daemon that stops serving (a leftover would only be stale).
pub fn unbind(repo_workdir: &Path, mountpoint: &Path) {
    let _ = std::fs::remove_file(socket_dir(repo_workdir).join(socket_name(mountpoint)));
}

fn peer_uid(s: &UnixStream) -> Option<u32> {
    rustix::net::sockopt::socket_peercred(s)
        .ok()
        .map(|c| c.uid.as_raw())
}

/// What the control socket asks of a `--rw` mount, whichever backend serves it.
pub trait Controlled: Send + Sync {
    /// `fuse` or `kernel`.
    fn backend(&self) -> &'static str;
    /// How requests reach the daemon (the `transport` operation).
    fn transport(&self) -> String;
    fn status_text(&self) -> Result<String>;
    fn diff_text(&self) -> Result<String>;
    fn view_state(&self) -> Result<State>;
    fn warnings(&self) -> Result<Vec<String>>;
    /// Commit the view as the next revision, unless nothing a revision can hold changed.
    fn commit(&self, message: &str) -> Result<Committed>;
    /// Discard every change (the view becomes the last committed revision).
    fn reset(&self) -> Result<()>;
    /// The revision the view is compared with.
    fn base_rev(&self) -> u64;
    fn workdir(&self) -> PathBuf;
}

/// The FUSE backend: a `CowFs`, and how to tell the kernel what a reset changed. The
/// invalidation runs after the overlay's lock is released (a kernel invalidation may wait for
/// a directory lock held by a process that is itself waiting for the overlay).
pub struct FuseControl<I: Fn(Invalidate) + Send + Sync> {
    pub fs: Arc<CowFs>,
    pub invalidate: I,
}

impl<I: Fn(Invalidate) + Send + Sync> Controlled for FuseControl<I> {
    fn backend(&self) -> &'static str {
        "fuse"
    }
    fn transport(&self) -> String {
        super::uring::status().describe()
    }
    fn status_text(&self) -> Result<String> {
        self.fs.status_text()
    }
    fn diff_text(&self) -> Result<String> {
        self.fs.diff_text()
    }
    fn view_state(&self) -> Result<State> {
        self.fs.view_state()
    }
    fn warnings(&self) -> Result<Vec<String>> {
        self.fs.warnings()
    }
    fn commit(&self, message: &str) -> Result<Committed> {
        self.fs.commit_changes(message)
    }
    fn reset(&self) -> Result<()> {
        let inval = self.fs.reset()?;
        (self.invalidate)(inval);
        Ok(())
    }
    fn base_rev(&self) -> u64 {
        self.fs.base_rev()
    }
    fn workdir(&self) -> PathBuf {
        self.fs.repo().workdir().to_path_buf()
    }
}

/// Serve requests on `listener` forever (a daemon thread).
pub fn serve(listener: UnixListener, target: Arc<dyn Controlled>) {
    let me = rustix::process::geteuid().as_raw();
    serve_with(
        listener,
        REQUEST_DEADLINE,
        move |uid| uid == me || uid == 0,
        move |req| handle(&*target, req),
    )
}

/// The serving loop of [`serve`], for any handler (see the module docs, "Serving"): `allowed`
/// judges the peer's uid before anything is read; each connection has `deadline` to send its
/// request (and again to take the answer); `handler` answers one request at a time.
pub fn serve_with(
    listener: UnixListener,
    deadline: Duration,
    allowed: impl Fn(u32) -> bool,
    handler: impl Fn(Request) -> Answer + Send + Sync + 'static,
) {
    let handler = Arc::new(Mutex::new(handler));
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if !peer_uid(&conn).is_some_and(&allowed) {
            refuse(
                conn,
                Error::Usage(
                    "only the user who mounted (or root) may commit, reset or inspect this mount"
                        .into(),
                ),
            );
            continue;
        }
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            refuse(
                conn,
                Error::Other(format!(
                    "the daemon is busy with {MAX_CONNECTIONS} other control connections; try again"
                )),
            );
            continue;
        }
        let (handler, active) = (handler.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("pvrfs-control-conn".into())
            .spawn(move || {
                serve_one(conn, deadline, &handler);
                active.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            log::warn!("could not start a thread for a control connection");
        }
    }
}

/// Answer without reading: the peer's request stays unread (its write may fail with EPIPE, but
/// the answer is already in its receive buffer).
fn refuse(conn: UnixStream, e: Error) {
    let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
    send(&conn, &failed(e));
}

fn send(mut conn: &UnixStream, answer: &Answer) {
    let mut text = serde_json::to_string(answer).unwrap_or_default();
    text.push('\n');
    let _ = conn.write_all(text.as_bytes());
}

/// Read one request line within `deadline` and [`MAX_REQUEST_BYTES`], answer it.
fn serve_one<H: Fn(Request) -> Answer>(conn: UnixStream, deadline: Duration, handler: &Mutex<H>) {
    let answer = match read_request(&conn, deadline) {
        Ok(line) => match Request::parse(&line) {
            Ok(req) => (handler.lock().unwrap_or_else(|e| e.into_inner()))(req),
            Err(e) => failed(e),
        },
        Err(e) => failed(e),
    };
    let _ = conn.set_write_timeout(Some(deadline));
    send(&conn, &answer);
}

/// One request line (without its newline), read with an overall deadline and a size cap.
pub fn read_request(conn: &UnixStream, deadline: Duration) -> Result<Vec<u8>> {
    let started = Instant::now();
    let mut line = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(Error::Usage(format!(
                "no complete control request within {} s; closing",
                deadline.as_secs()
            )));
        }
        conn.set_read_timeout(Some(left))
            .ctx("set a timeout on", "the control connection")?;
        // Never more than one byte past the cap.
        let want = (MAX_REQUEST_BYTES + 1 - line.len()).min(buf.len());
        let n = match (&*conn).read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(Error::io("read control request on", "socket", e)),
        };
        let chunk = &buf[..n];
        if let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&chunk[..end]);
            return Ok(line);
        }
        line.extend_from_slice(chunk);
        if n == 0 {
            return Ok(line); // EOF ends the request too
        }
        if line.len() > MAX_REQUEST_BYTES {
            return Err(Error::Usage(format!(
                "control request larger than {MAX_REQUEST_BYTES} bytes; refused"
            )));
        }
    }
}

fn failed(e: Error) -> Answer {
    Answer {
        ok: false,
        code: e.exit_code(),
        error: e.to_string(),
        ..Answer::default()
    }
}

fn handle(fs: &dyn Controlled, req: Request) -> Answer {
    let ok = |text: String| Answer {
        ok: true,
        text,
        ..Answer::default()
    };
    match req.op.as_str() {
        "commit" => {
            let msg = req
                .message
                .unwrap_or_else(|| "** No commit message **".into());
            // Nothing that a revision can hold changed: no empty revision (as pvr).
            match fs.commit(&msg) {
                Ok(Committed::Unchanged { warnings }) => Answer {
                    ok: true,
                    warnings,
                    ..Answer::default()
                },
                Ok(Committed::Revision(report)) => Answer {
                    ok: true,
                    rev: Some(report.revision.rev),
                    warnings: report.warnings,
                    text: report
                        .status
                        .iter()
                        .map(|l| format!("{} {}\n", l.code, l.path))
                        .collect(),
                    ..Answer::default()
                },
                Err(e) => failed(e),
            }
        }
        "status" => fs.status_text().map(ok).unwrap_or_else(failed),
        "diff" => fs.diff_text().map(ok).unwrap_or_else(failed),
        "state" => fs
            .view_state()
            .map(|st| ok(String::from_utf8_lossy(&st.to_canonical_bytes()).into_owned()))
            .unwrap_or_else(failed),
        "info" => Answer {
            rev: Some(fs.base_rev()),
            ..ok(fs.workdir().display().to_string())
        },
        "transport" => ok(fs.transport()),
        "backend" => ok(fs.backend().to_string()),
        "reset" => match fs.reset() {
            Ok(()) => ok(String::new()),
            Err(e) => failed(e),
        },
        other => failed(Error::Usage(format!("unknown control operation '{other}'"))),
    }
}

/// Send one request to the daemon of `mountpoint` and wait for its answer.
pub fn request(mountpoint: &Path, req: &Request) -> Result<Answer> {
    let not_rw = || {
        Error::Usage(format!(
            "'{}' is not a writable (--rw) pvrfs mount, or its daemon is gone",
            mountpoint.display()
        ))
    };
    let info = super::mounts::list_mounts()?
        .into_iter()
        .find(|m| m.mountpoint == mountpoint)
        .ok_or_else(not_rw)?;
    let (repo, _) = info.repo_and_rev().ok_or_else(not_rw)?;
    let owner = info.user_id.ok_or_else(not_rw)?;
    let dir_path = socket_dir(&repo);
    let dir = open_private_dir(&dir_path, owner, false).map_err(|e| match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
            Error::Usage(
                "only the user who mounted (or root) may commit, reset or inspect this mount"
                    .into(),
            )
        }
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => not_rw(),
        other => other,
    })?;
    let mut s = UnixStream::connect(via_fd(&dir, &socket_name(mountpoint))).map_err(|e| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
        ) {
            not_rw()
        } else {
            Error::io("connect to the daemon of", mountpoint, e)
        }
    })?;
    // The socket directory is the owner's, so only the owner's daemon can be listening; check
    // anyway that the answer comes from the uid that mounted.
    if peer_uid(&s) != Some(owner) {
        return Err(Error::Other(format!(
            "the control socket of '{}' is not served by uid {owner}, who mounted it; refusing to talk to it",
            mountpoint.display()
        )));
    }
    let mut line = serde_json::to_string(req).map_err(|e| Error::Other(e.to_string()))?;
    line.push('\n');
    // A write error is reported as such, never as a broken pipe (which `main` treats as a
    // closed stdout); the daemon's answer, if any, explains it better.
    let sent = s.write_all(line.as_bytes());
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .ctx("read answer from the daemon of", mountpoint)?;
    if let (true, Err(e)) = (answer.is_empty(), &sent) {
        return Err(Error::Other(format!(
            "could not send the request to the daemon of '{}': {e}",
            mountpoint.display()
        )));
    }
    if answer.is_empty() {
        return Err(Error::Other(format!(
            "the daemon of '{}' closed the connection without answering (did it die? see 'pvrfs mounts')",
            mountpoint.display()
        )));
    }
    let a: Answer = serde_json::from_str(&answer)
        .map_err(|e| Error::Other(format!("bad answer from the daemon: {e}")))?;
    if a.ok {
        Ok(a)
    } else {
        Err(Error::Remote {
            code: a.code.max(1),
            message: a.error,
        })
    }
}

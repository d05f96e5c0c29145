//! The control socket of a `--rw` mount: how `pvrfs commit/status/diff/reset` reach the daemon
//! that owns the overlay.
//!
//! Addressing: a Linux abstract unix socket named `pvrfs-ctl:` + the first 32 hex digits of
//! sha256(canonical mountpoint). Abstract names need no file (nothing stale after a SIGKILL, no
//! `sun_path` length limit for deep repositories) and vanish with the daemon. The CLI finds the
//! mountpoint from `--mount MNT` or from the cwd (the innermost pvrfs mount containing it, from
//! `/proc/self/mountinfo`), then connects. Only the daemon's own user (or root) is served: the
//! peer's uid is checked with `SO_PEERCRED`, so `--allow-other` users can edit files but not
//! commit or reset.
//!
//! Protocol: one JSON request line, one JSON answer line, then the connection closes.
//! Request `{"op": "commit"|"status"|"diff"|"reset"|"state"|"info"|"transport", "message"?: str}`;
//! `state` answers the view's canonical state JSON in `text`, `info` the repository's work
//! directory in `text` and the base revision in `rev`, `transport` how FUSE requests reach the
//! daemon (`io_uring (Q queues, R requests)` or `/dev/fuse …`, `fuse::uring::Status`);
//! answer `{"ok": true, "text": str, "warnings": [str], "rev": u64?}` or
//! `{"ok": false, "code": u8, "error": str}` (the daemon's error and exit code).

use crate::error::{Error, IoContext, Result};
use crate::fs::cow::{CowFs, Invalidate};
use crate::oid::ObjectId;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

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

/// The abstract socket name of the mount at `mountpoint` (canonical).
pub fn socket_name(mountpoint: &Path) -> String {
    let hex = ObjectId::hash_bytes(mountpoint.as_os_str().as_encoded_bytes()).to_hex();
    format!("pvrfs-ctl:{}", &hex[..32])
}

fn addr(mountpoint: &Path) -> Result<SocketAddr> {
    SocketAddr::from_abstract_name(socket_name(mountpoint).as_bytes())
        .map_err(|e| Error::io("name control socket of", mountpoint, e))
}

/// Bind the control socket of a mount (before the mount is reported ready).
pub fn bind(mountpoint: &Path) -> Result<UnixListener> {
    UnixListener::bind_addr(&addr(mountpoint)?).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            Error::Usage(format!(
                "another pvrfs daemon already serves '{}'",
                mountpoint.display()
            ))
        } else {
            Error::io("bind control socket of", mountpoint, e)
        }
    })
}

fn peer_uid(s: &UnixStream) -> Option<u32> {
    rustix::net::sockopt::socket_peercred(s)
        .ok()
        .map(|c| c.uid.as_raw())
}

/// Serve requests on `listener` forever (a daemon thread). `invalidate` tells the kernel what a
/// reset changed; it runs after the overlay's lock is released (a kernel invalidation may wait
/// for a directory lock held by a process that is itself waiting for the overlay).
pub fn serve(
    listener: UnixListener,
    fs: Arc<CowFs>,
    invalidate: impl Fn(Invalidate) + Send + 'static,
) {
    let me = rustix::process::geteuid().as_raw();
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        // One connection at a time: a client that never sends its line must not block others.
        let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
        // Read the request first in every case: closing on an unread request would make the
        // client's write fail (EPIPE) before it sees the answer.
        let mut line = String::new();
        let read = BufReader::new(&conn).read_line(&mut line);
        let answer = match (peer_uid(&conn), read) {
            (Some(uid), Ok(_)) if uid == me || uid == 0 => {
                match serde_json::from_str::<Request>(&line) {
                    Ok(req) => handle(&fs, req, &invalidate),
                    Err(e) => failed(Error::Usage(format!("bad control request: {e}"))),
                }
            }
            (_, Err(e)) => failed(Error::io("read control request on", "socket", e)),
            _ => failed(Error::Usage(
                "only the user who mounted (or root) may commit, reset or inspect this mount"
                    .into(),
            )),
        };
        let mut text = serde_json::to_string(&answer).unwrap_or_default();
        text.push('\n');
        let _ = conn.write_all(text.as_bytes());
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

fn handle(fs: &CowFs, req: Request, invalidate: &impl Fn(Invalidate)) -> Answer {
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
            match fs.status_text() {
                Ok(s) if s.is_empty() => {
                    return Answer {
                        ok: true,
                        warnings: fs.warnings().unwrap_or_default(),
                        ..Answer::default()
                    }
                }
                Ok(_) => {}
                Err(e) => return failed(e),
            }
            match fs.commit(&msg) {
                Ok(report) => Answer {
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
            ..ok(fs.repo().workdir().display().to_string())
        },
        "transport" => ok(super::uring::status().describe()),
        "reset" => match fs.reset() {
            Ok(inval) => {
                invalidate(inval);
                ok(String::new())
            }
            Err(e) => failed(e),
        },
        other => failed(Error::Usage(format!("unknown control operation '{other}'"))),
    }
}

/// Send one request to the daemon of `mountpoint` and wait for its answer.
pub fn request(mountpoint: &Path, req: &Request) -> Result<Answer> {
    let mut s = UnixStream::connect_addr(&addr(mountpoint)?).map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            Error::Usage(format!(
                "'{}' is not a writable (--rw) pvrfs mount, or its daemon is gone",
                mountpoint.display()
            ))
        } else {
            Error::io("connect to the daemon of", mountpoint, e)
        }
    })?;
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

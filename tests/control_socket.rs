//! Hostile local users against the control socket of a `--rw` mount (issue 11, item 5): another
//! user (`nobody`, uid 65534) tries to take the socket's name before the owner mounts, to plant
//! a directory of their own for it, to reach it, to flood it with a huge request, and clients
//! trickle or never finish. Each abuse must fail while the owner's commands keep working.
//!
//! Runs as root (to act as `nobody`); the abuser is this test binary re-executed as uid 65534
//! (`helper`), so no other tool is needed.

use pvrfs_testkit as common;

use common::*;
use pvrfs::fuse::control::{self, Answer, Request};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// This test binary, run as `nobody`, doing `action` (see `helper`).
fn as_nobody(action: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "helper", "--nocapture", "--test-threads=1"])
        .env("CONTROL_SOCKET_HELPER", action)
        .current_dir("/")
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null());
    cmd
}

/// Kills the helper when dropped (also on panic); keeps its stdout open until then.
struct Helper(Child, #[allow(dead_code)] std::process::ChildStdout);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start a helper and wait until it printed `READY`.
fn start_helper(action: &str) -> Helper {
    let mut child = as_nobody(action).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("READY") {
        match out.read(&mut byte) {
            Ok(1) => seen.push(byte[0]),
            _ => panic!("helper {action} ended: {}", String::from_utf8_lossy(&seen)),
        }
    }
    Helper(child, out)
}

/// The abuser's side, when run by `as_nobody`; a no-op test otherwise.
#[test]
fn helper() {
    let Ok(action) = std::env::var("CONTROL_SOCKET_HELPER") else {
        return;
    };
    let (what, arg) = action.split_once(':').unwrap();
    match what {
        // Hold an abstract socket name (what the old daemon bound) until killed.
        "bind-abstract" => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(arg.as_bytes()).unwrap();
            let _l = UnixListener::bind_addr(&addr).unwrap();
            println!("READY");
            std::thread::sleep(Duration::from_secs(120));
        }
        // Make a directory (and everything up to it) and wait.
        "mkdir" => {
            fs::create_dir_all(arg).unwrap();
            fs::set_permissions(arg, fs::Permissions::from_mode(0o777)).unwrap();
            println!("READY");
        }
        // Connect and send 300 MiB without a newline; print what came back and how much went.
        "flood" => {
            let s = UnixStream::connect(arg).unwrap();
            let writer = s.try_clone().unwrap();
            let sent = std::thread::spawn(move || {
                let chunk = vec![b'a'; 1 << 20];
                let mut sent = 0usize;
                let mut w = &writer;
                while sent < 300 << 20 {
                    if w.write_all(&chunk).is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
                sent
            });
            let mut answer = String::new();
            let _ = (&s).read_to_string(&mut answer);
            let _ = s.shutdown(std::net::Shutdown::Both);
            let sent = sent.join().unwrap();
            println!("SENT {sent}\nANSWER {answer}");
        }
        // Try to connect; print the outcome.
        "connect" => match UnixStream::connect(arg) {
            Ok(_) => println!("CONNECTED"),
            Err(e) => println!("REFUSED {e}"),
        },
        other => panic!("unknown helper action {other}"),
    }
}

/// A control server on a socket anyone may connect to (so that `nobody` reaches it and the
/// daemon's own checks are what is tested), answering "pong" and counting requests.
struct Server {
    dir: tempfile::TempDir,
    handled: Arc<AtomicUsize>,
}

impl Server {
    fn start(deadline: Duration) -> Server {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let path = dir.path().join("ctl.sock");
        let listener = UnixListener::bind(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).unwrap();
        let handled = Arc::new(AtomicUsize::new(0));
        let h = handled.clone();
        std::thread::spawn(move || {
            control::serve_with(
                listener,
                deadline,
                |uid| uid == 0,
                move |req: Request| {
                    h.fetch_add(1, Ordering::SeqCst);
                    Answer {
                        ok: true,
                        text: format!("pong {}", req.op),
                        ..Answer::default()
                    }
                },
            )
        });
        Server { dir, handled }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("ctl.sock")
    }

    /// A well-behaved request as root; its answer's text.
    fn ask(&self, op: &str) -> String {
        let mut s = UnixStream::connect(self.path()).unwrap();
        writeln!(s, r#"{{"op":"{op}"}}"#).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    }
}

#[test]
fn another_user_is_refused_before_anything_is_read() {
    if !is_root() {
        eprintln!("SKIP: needs root to act as nobody");
        return;
    }
    let server = Server::start(Duration::from_secs(10));
    let out = as_nobody(&format!("flood:{}", server.path().display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("only the user who mounted"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The daemon answered and closed without reading: the 300 MiB never went through.
    // (libtest may print "test helper ... " on the same line)
    let sent: usize = text
        .split("SENT ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(sent < 64 << 20, "{sent} bytes were accepted from nobody");
    assert_eq!(server.handled.load(Ordering::SeqCst), 0);
    assert!(server.ask("status").contains("pong status"));
}

#[test]
fn a_request_larger_than_the_cap_is_refused_at_the_cap() {
    let server = Server::start(Duration::from_secs(10));
    let s = UnixStream::connect(server.path()).unwrap();
    let writer = s.try_clone().unwrap();
    let sent = std::thread::spawn(move || {
        let chunk = vec![b'a'; 1 << 20];
        let mut sent = 0usize;
        while sent < 300 << 20 && (&writer).write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
        sent
    });
    let mut answer = String::new();
    let _ = (&s).read_to_string(&mut answer);
    let _ = s.shutdown(std::net::Shutdown::Both);
    assert!(answer.contains("larger than 1048576 bytes"), "{answer}");
    assert!(sent.join().unwrap() < 64 << 20);
    assert_eq!(server.handled.load(Ordering::SeqCst), 0);
}

#[test]
fn a_trickling_client_does_not_hold_up_others_and_is_cut_off() {
    let deadline = Duration::from_secs(2);
    let server = Server::start(deadline);
    let path = server.path();
    let trickler = std::thread::spawn(move || {
        let mut s = UnixStream::connect(path).unwrap();
        let started = Instant::now();
        // One byte every 200 ms, never a newline: each read succeeds, the request never ends.
        while started.elapsed() < Duration::from_secs(30) {
            if s.write_all(b" ").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        (answer, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    // Meanwhile the owner's requests are answered.
    for _ in 0..3 {
        assert!(server.ask("status").contains("pong status"));
    }
    let (answer, took) = trickler.join().unwrap();
    assert!(
        answer.contains("no complete control request within 2 s"),
        "{answer}"
    );
    assert!(
        took < Duration::from_secs(20),
        "the trickler held on for {took:?}"
    );
    // Silent clients (connected, sending nothing) are cut off the same way.
    let mut idle: Vec<UnixStream> = (0..4)
        .map(|_| UnixStream::connect(server.path()).unwrap())
        .collect();
    assert!(server.ask("info").contains("pong info"));
    let mut answer = String::new();
    idle[0].read_to_string(&mut answer).unwrap();
    assert!(answer.contains("no complete control request"), "{answer}");
    idle.clear();
}

/// The repository fixture of the mount tests, world-searchable so that `nobody` can reach
/// `.pvr/pvrfs/` when a test makes it writable.
fn repo_for_mount() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    repo_with(t.path(), &[("a.txt", b"a")]);
    t
}

/// Before the fix the socket had the abstract name `pvrfs-ctl:` + sha256(mountpoint): nobody
/// could bind it first and the owner's `mount --rw` failed ("another pvrfs daemon already
/// serves"). The socket now lives in the owner's 0700 directory.
#[test]
fn another_user_cannot_take_the_control_socket_first() {
    if !is_root() || !fuse_available() {
        eprintln!("SKIP: needs root and /dev/fuse");
        return;
    }
    let repo = repo_for_mount();
    let mnt = tempfile::tempdir().unwrap();
    let canon = fs::canonicalize(mnt.path()).unwrap();
    let hex = pvrfs::oid::ObjectId::hash_bytes(canon.as_os_str().as_encoded_bytes()).to_hex();
    let _squatter = start_helper(&format!("bind-abstract:pvrfs-ctl:{}", &hex[..32]));
    let out = Pvrfs::new()
        .command()
        .arg("mount")
        .arg(repo.path())
        .arg("latest")
        .arg(mnt.path())
        .args(["--rw", "--allow-other"])
        .output()
        .unwrap();
    let _guard = MountGuard(canon.clone());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(canon.join("b.txt"), b"b").unwrap();
    let out = Pvrfs::new()
        .command()
        .args(["status", "--mount"])
        .arg(&canon)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("b.txt"));
    // nobody cannot even reach the socket: its directory is the owner's, mode 0700.
    let sock = control::socket_dir(repo.path()).join(control::socket_name(&canon));
    assert!(sock.exists());
    let out = as_nobody(&format!("connect:{}", sock.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("REFUSED") && text.contains("ermission denied"),
        "{text}"
    );
    let out = Pvrfs::new()
        .command()
        .args(["status", "--mount"])
        .arg(&canon)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only the user who mounted"));
}

/// A socket directory made by someone else (possible only where `.pvr/pvrfs` is writable by
/// others) is refused: the daemon would otherwise listen where that user can swap the socket
/// and read the owner's requests.
#[test]
fn a_socket_directory_planted_by_another_user_is_refused() {
    if !is_root() || !fuse_available() {
        eprintln!("SKIP: needs root and /dev/fuse");
        return;
    }
    let repo = repo_for_mount();
    let ext = repo.path().join(".pvr/pvrfs");
    fs::create_dir_all(&ext).unwrap();
    for d in [repo.path().join(".pvr"), ext.clone()] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let planted = control::socket_dir(repo.path());
    let _h = start_helper(&format!("mkdir:{}", planted.display()));
    let mnt = tempfile::tempdir().unwrap();
    let out = Pvrfs::new()
        .command()
        .arg("mount")
        .arg(repo.path())
        .arg("latest")
        .arg(mnt.path())
        .arg("--rw")
        .output()
        .unwrap();
    let _guard = MountGuard(fs::canonicalize(mnt.path()).unwrap());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "mounted with a planted socket directory"
    );
    assert!(
        err.contains("refusing the control socket directory") && err.contains("65534"),
        "{err}"
    );
    assert!(!is_mount_point(mnt.path()));
}

/// Unmounts (if mounted) when dropped.
struct MountGuard(std::path::PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        if is_mount_point(&self.0) {
            let _ = Pvrfs::new().command().arg("umount").arg(&self.0).status();
            if is_mount_point(&self.0) {
                let _ = Command::new("fusermount3")
                    .args(["-u", "-z", "--"])
                    .arg(&self.0)
                    .status();
            }
        }
    }
}

//! Small helpers shared by the integration tests: run the binary, build repositories through
//! the library, compare trees, and a real nginx on a loopback port.
#![allow(dead_code)] // each test binary uses a different subset

use pvrfs::json;
use pvrfs::overlay::{Kind, Overlay, ROOT};
use pvrfs::repo::Repo;
use pvrfs::state::{Entry, State, DEFAULT_SPEC};
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The pvr conformance vectors exchange tests use (copied from pvr-vectors/repo-cases).
pub fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/exchange")
}

/// Run `pvrfs ARGS` in `dir`.
pub fn pvrfs(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pvrfs"))
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .output()
        .expect("run pvrfs")
}

/// Run `pvrfs ARGS` in `dir` and insist on success; returns stdout.
pub fn pvrfs_ok(dir: &Path, args: &[&str]) -> String {
    let out = pvrfs(dir, args);
    assert!(
        out.status.success(),
        "pvrfs {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Run `pvrfs ARGS` in `dir`, insist on failure; returns stderr.
pub fn pvrfs_err(dir: &Path, args: &[&str]) -> String {
    let out = pvrfs(dir, args);
    assert!(
        !out.status.success(),
        "pvrfs {args:?} should have failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// A repository whose latest revision holds `files` (`.json` files inline, others as objects).
pub fn repo_with(dir: &Path, files: &[(&str, &[u8])]) -> Repo {
    let repo = Repo::init(dir, None, None).unwrap();
    let mut state = State::empty(DEFAULT_SPEC);
    for (path, content) in files {
        let entry = if path.ends_with(".json") {
            Entry::Inline(json::parse(content).unwrap())
        } else {
            Entry::Object(repo.store().put_bytes(content).unwrap())
        };
        state.insert(path, entry).unwrap();
    }
    let lock = repo.lock().unwrap();
    repo.commit_state(&lock, &state, "base", None).unwrap();
    repo
}

pub fn commit(repo: &Repo, state: &State) {
    let lock = repo.lock().unwrap();
    repo.commit_state(&lock, state, "test", None).unwrap();
}

/// Every regular file under `root` (minus `.pvr`), as sorted `(relative path, bytes)`.
pub fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == ".pvr" {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Files (names) in a directory, sorted; empty when it does not exist.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real nginx serving `root` on a loopback port, PUT enabled (WebDAV), killed on drop.
pub struct Nginx {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// `None` (with a message) when nginx is not installed; scripts/setup-deps installs it.
    pub fn start(root: &Path) -> Option<Nginx> {
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        // Workers run as the current user (nginx would switch to nobody when started as root).
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root root;"
        } else {
            ""
        };
        let conf = format!(
            r#"{user}
daemon off;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        client_max_body_size 0;
        location / {{
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
"#,
            root = root.display()
        );
        let conf_path = dir.path().join("nginx.conf");
        fs::write(&conf_path, conf).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let server = Nginx {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers; SIGKILL would orphan them.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temp dir on a memory file system when there is one (tests that fsync a lot run faster).
pub fn fast_tempdir() -> TempDir {
    match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(_) => tempfile::tempdir().unwrap(),
    }
}

/// One line per visible node: `path kind mode nlink content-or-target`, sorted.
pub fn dump_overlay(ov: &mut Overlay) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![(ROOT, String::new())];
    while let Some((dir, path)) = todo.pop() {
        for (name, ino, kind) in ov.readdir(dir).unwrap() {
            let p = if path.is_empty() {
                name
            } else {
                format!("{path}/{name}")
            };
            let a = ov.getattr(ino).unwrap();
            let what = match kind {
                Kind::Dir => {
                    todo.push((ino, p.clone()));
                    "dir".to_string()
                }
                Kind::Symlink => format!("-> {}", ov.readlink(ino).unwrap()),
                Kind::File => {
                    let h = ov.open(ino, false, false).unwrap();
                    let bytes = ov.read(&h, 0, a.size as usize + 1).unwrap();
                    ov.release(h);
                    assert_eq!(bytes.len() as u64, a.size, "size of {p}");
                    format!("{:?}", String::from_utf8_lossy(&bytes))
                }
            };
            out.push(format!("{p} {:o} {} {what}", a.mode, a.nlink));
        }
    }
    out.sort();
    out
}

/// `dump_overlay` of a plain directory tree.
pub fn dump_dir(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, path)) = todo.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let p = if path.is_empty() {
                name
            } else {
                format!("{path}/{name}")
            };
            let md = fs::symlink_metadata(entry.path()).unwrap();
            let what = if md.is_dir() {
                todo.push((entry.path(), p.clone()));
                "dir".to_string()
            } else if md.file_type().is_symlink() {
                format!("-> {}", fs::read_link(entry.path()).unwrap().display())
            } else {
                let bytes = fs::read(entry.path()).unwrap();
                format!("{:?}", String::from_utf8_lossy(&bytes))
            };
            let mode = if md.file_type().is_symlink() {
                0o777
            } else {
                md.permissions().mode() & 0o7777
            };
            out.push(format!("{p} {mode:o} {} {what}", md.nlink()));
        }
    }
    out.sort();
    out
}

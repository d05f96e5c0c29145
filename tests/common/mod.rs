//! Small helpers shared by the integration tests: run the binary, build repositories through
//! the library, compare trees, and a real nginx on a loopback port.
#![allow(dead_code)] // each test binary uses a different subset

use pvrfs::fs::overlay::Overlay;
use pvrfs::fs::{Kind, ROOT_INO as ROOT};
use pvrfs::json::{self, Value};
use pvrfs::repo::{Repo, Revision};
use pvrfs::state::{Entry, State, DEFAULT_SPEC};
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
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
                special if special.is_special() => special_line(special, a.rdev as u64),
                _ => {
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

/// How the dumps show a FIFO, socket or device node (they have no content to compare).
fn special_line(kind: Kind, rdev: u64) -> String {
    format!("{} rdev={rdev}", kind.describe())
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
            let ft = md.file_type();
            let special = if ft.is_fifo() {
                Some(Kind::Fifo)
            } else if ft.is_socket() {
                Some(Kind::Socket)
            } else if ft.is_char_device() {
                Some(Kind::CharDevice)
            } else if ft.is_block_device() {
                Some(Kind::BlockDevice)
            } else {
                None
            };
            let what = if md.is_dir() {
                todo.push((entry.path(), p.clone()));
                "dir".to_string()
            } else if let Some(kind) = special {
                // Never read: opening a FIFO would block.
                special_line(kind, md.rdev())
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

/// The `pvrfs` binary under test.
pub fn pvrfs_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pvrfs"))
}

/// Run `pvrfs ARGS` and return its output (whatever the exit code).
pub fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = pvrfs_command();
    for a in args {
        cmd.arg(a.as_ref());
    }
    cmd.output().expect("run pvrfs")
}

/// True when real FUSE mounts can be tested; prints why not otherwise.
pub fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() {
        true
    } else {
        eprintln!("SKIPPED: /dev/fuse is absent on this machine; real-mount tests need FUSE");
        false
    }
}

/// A repository in a temp dir, built through the library.
pub struct TestRepo {
    pub dir: tempfile::TempDir,
    pub repo: Repo,
    state: State,
}

/// What a file of a test revision holds.
pub enum Content<'a> {
    Blob(&'a [u8]),
    Json(&'a str),
}

impl TestRepo {
    pub fn new() -> TestRepo {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::init(dir.path(), None, None).expect("init");
        let state = repo.head_state().expect("head");
        TestRepo { dir, repo, state }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Stage one file for the next commit.
    pub fn set(&mut self, path: &str, content: Content<'_>) -> &mut Self {
        let entry = match content {
            Content::Blob(b) => Entry::Object(self.repo.store().put_bytes(b).expect("put")),
            Content::Json(text) => Entry::Inline(json::parse(text.as_bytes()).expect("json")),
        };
        self.state.insert(path, entry).expect("insert");
        self
    }

    pub fn remove(&mut self, path: &str) -> &mut Self {
        self.state.remove(path);
        self
    }

    pub fn commit(&mut self, msg: &str) -> Revision {
        let lock = self.repo.lock().expect("lock");
        self.repo
            .commit_state(&lock, &self.state, msg, None)
            .expect("commit")
    }

    /// Write revision `rev` into `dest` as `checkout` does (same renderer, verified objects).
    pub fn render_checkout(&self, rev: &Revision, dest: &Path, canonical: bool) {
        let state = self.repo.load_state(rev).expect("load");
        for (key, entry) in state.iter() {
            let p = dest.join(key);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let bytes = match entry {
                Entry::Object(id) => self.repo.store().read_verified(id, Some(key)).unwrap(),
                Entry::Inline(v) if canonical => json::render_checkout_canonical(v),
                Entry::Inline(v) => json::render_checkout(v),
            };
            std::fs::write(p, bytes).unwrap();
        }
    }
}

impl Default for TestRepo {
    fn default() -> Self {
        Self::new()
    }
}

/// A live mount; dropping it unmounts (lazily, if it has to) and removes the mountpoint dir.
pub struct Mount {
    pub dir: tempfile::TempDir,
}

impl Mount {
    /// `pvrfs mount REPO REV MNT EXTRA...`; panics with the command's stderr on failure.
    pub fn new(repo: &Path, rev: &str, extra: &[&str]) -> Mount {
        Self::with_env(repo, rev, extra, &[])
    }

    /// `new`, with environment variables for the daemon (e.g. `RUST_LOG`).
    pub fn with_env(repo: &Path, rev: &str, extra: &[&str], env: &[(&str, &str)]) -> Mount {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = pvrfs_command()
            .envs(env.iter().copied())
            .arg("mount")
            .arg(repo)
            .arg(rev)
            .arg(dir.path())
            .args(extra)
            .output()
            .expect("run pvrfs mount");
        let m = Mount { dir };
        assert!(
            out.status.success(),
            "pvrfs mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        m
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn is_mounted(&self) -> bool {
        is_mount_point(self.dir.path())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.is_mounted() {
            return;
        }
        let ok = pvrfs_command()
            .arg("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z", "--"])
                .arg(self.dir.path())
                .status();
        }
    }
}

/// The pid of the daemon serving `mnt`: the re-executed `pvrfs mount … --foreground`, whose
/// command line names the mountpoint (resolved through its parent, so a dead mount is found).
pub fn daemon_pid(mnt: &Path) -> Option<i32> {
    let parent = fs::canonicalize(mnt.parent()?).ok()?;
    let mnt = parent.join(mnt.file_name()?);
    let want = mnt.as_os_str().as_encoded_bytes();
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.contains(&b"--foreground".as_slice()) && args.contains(&want) {
            return Some(pid);
        }
    }
    None
}

/// Wait until process `pid` has exited (a zombie nobody reaped yet counts); panics after 10 s.
pub fn wait_exited(pid: i32) {
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        if fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "process {pid} still running after 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGKILL the daemon serving `mnt` and wait until it has exited.
pub fn kill_daemon(mnt: &Path) {
    let pid = daemon_pid(mnt).unwrap_or_else(|| panic!("no daemon for {}", mnt.display()));
    // SAFETY: plain kill(2) of a daemon the test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    wait_exited(pid);
}

/// True when `p` is a mount point of this namespace.
pub fn is_mount_point(p: &Path) -> bool {
    let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    pvrfs::fuse::mounts::mount_points()
        .map(|ms| ms.iter().any(|m| m.mountpoint == p))
        .unwrap_or(false)
}

/// Every regular file under `root` as (relative path, bytes), sorted.
pub fn read_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                if p.file_name() != Some(std::ffi::OsStr::new(".pvr")) {
                    stack.push(p);
                }
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Parse JSON text into the library's value (for building expectations).
pub fn value(text: &str) -> Value {
    json::parse(text.as_bytes()).unwrap()
}

/// A temporary work directory (canonical path, so it matches what pvrfs prints), with pvr's
/// config dir (`$PVR_CONFIG_DIR`, holding the global object pool) beside it.
pub struct Dir {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub config_dir: PathBuf,
}

impl Dir {
    pub fn new() -> Dir {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = fs::canonicalize(tmp.path()).expect("canonicalize");
        let root = base.join("work");
        fs::create_dir(&root).unwrap();
        Dir {
            _tmp: tmp,
            root,
            config_dir: base.join("pvr-config"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn write(&self, rel: &str, data: impl AsRef<[u8]>) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn read_string(&self, rel: &str) -> String {
        String::from_utf8(self.read(rel)).unwrap()
    }

    /// Run `pvrfs ARGS` in the work dir.
    pub fn pvrfs(&self, args: &[&str]) -> Run {
        self.pvrfs_env(args, &[])
    }

    pub fn pvrfs_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pvrfs"));
        cmd.args(args).current_dir(&self.root);
        // never touch the real ~/.pvr
        cmd.env("HOME", &self.root)
            .env("PVR_CONFIG_DIR", &self.config_dir);
        cmd.env_remove("PVRFS_CRASH_AT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Run {
            args: args.join(" "),
            out: cmd.output().expect("run pvrfs"),
        }
    }

    /// Remove everything but `.pvr`.
    pub fn empty_work_dir(&self) {
        for e in fs::read_dir(&self.root).unwrap().flatten() {
            if e.file_name() == ".pvr" {
                continue;
            }
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                fs::remove_dir_all(p).unwrap();
            } else {
                fs::remove_file(p).unwrap();
            }
        }
    }

    /// `sha256  path` lines of every file outside `.pvr`, sorted by path (as `sha256sum`).
    pub fn sha_listing(&self) -> String {
        let mut lines = Vec::new();
        list_files(&self.root, &self.root, &mut lines);
        lines.sort_by(|a: &(String, String), b| a.1.cmp(&b.1));
        lines.iter().map(|(h, p)| format!("{h}  {p}\n")).collect()
    }
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p == root.join(".pvr") {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            list_files(root, &p, out);
        } else {
            let data = fs::read(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            out.push((pvrfs::oid::ObjectId::hash_bytes(&data).to_hex(), rel));
        }
    }
}

/// Copy a directory tree with fresh (writable) files.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            fs::write(&dest, fs::read(e.path()).unwrap()).unwrap();
        }
    }
}

/// The result of one `pvrfs` run.
pub struct Run {
    pub args: String,
    pub out: Output,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    /// Assert the exit code, showing the output when it is wrong.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            code,
            "pvrfs {}\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.stdout(),
            self.stderr()
        );
        self
    }
    pub fn ok(&self) -> &Self {
        self.expect_code(0)
    }
}

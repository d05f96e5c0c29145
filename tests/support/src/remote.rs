//! The remote-protocol and S3 tests' parts: a `pvrfs serve` process ([`Serve`]), a single-node
//! Garage, a real S3 service ([`Garage`]), and the reference pvr as a client ([`Pvr`]); servers
//! run on loopback and are stopped by a guard whose Drop runs on panic too.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Run `pvrfs ARGS` in `dir` with extra environment variables.
pub fn pvrfs_env(dir: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    let mut p = crate::pvrfs(args).dir(dir);
    for (k, v) in env {
        p = p.env(k, v);
    }
    p.run().out
}

pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn failed(out: &Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} should have failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ------------------------------------------------------------------------------------------
// pvrfs serve
// ------------------------------------------------------------------------------------------

/// A `pvrfs serve` process on a free loopback port; SIGINT (then SIGKILL) on drop.
pub struct Serve {
    child: Option<Child>,
    pub url: String,
    pub log: PathBuf,
}

impl Serve {
    /// `pvrfs serve --listen 127.0.0.1:0 EXTRA... ROOT`, with `env`.
    pub fn start(root: &Path, extra: &[&str], env: &[(String, String)]) -> Serve {
        Self::try_start(root, extra, env).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start(
        root: &Path,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Result<Serve, String> {
        let log = root.with_extension(format!("serve-{}.log", std::process::id() ^ rand_u32()));
        let file = fs::File::create(&log).unwrap();
        let mut cmd = Command::new(crate::bin::binary());
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .arg(root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start pvrfs serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            // Only a whole line: the server may be halfway through writing it.
            let line_start = text.find("http://");
            let whole = line_start.and_then(|s| text[s..].find('\n').map(|e| (s, s + e)));
            if let Some((start, end)) = whole {
                let url: String = text[start..end]
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect();
                let url = url.trim_end_matches('/').to_string();
                return Ok(Serve {
                    child: Some(child),
                    url,
                    log,
                });
            }
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!("pvrfs serve exited ({status}): {text}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("pvrfs serve did not start: {text}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn repo_url(&self, name: &str) -> String {
        format!("{}/{name}", self.url)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The request lines logged after byte `mark` of the log (`mark` = `log_text().len()`).
    pub fn requests_since(&self, mark: usize) -> Vec<String> {
        self.log_text()[mark..]
            .lines()
            .filter(|l| {
                l.contains(" GET ")
                    || l.contains(" POST ")
                    || l.contains(" PUT ")
                    || l.contains(" HEAD ")
            })
            .map(str::to_string)
            .collect()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// SIGINT and wait (at most 20 s); the exit status.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            // Our own child, not reaped yet: the pid is still its.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.interrupt();
        }
        let _ = fs::remove_file(&self.log);
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish() as u32
}

// ------------------------------------------------------------------------------------------
// The reference pvr
// ------------------------------------------------------------------------------------------

/// The reference pvr (see `reference`), with a home of its own (its global object pool and
/// auth cache live there).
pub struct Pvr {
    runner: PathBuf,
    home: tempfile::TempDir,
}

impl Pvr {
    /// The reference pvr, or `None` after a SKIPPED message naming `test`.
    pub fn find(test: &str) -> Option<Pvr> {
        crate::reference::reference_pvr(test).map(|runner| Pvr {
            runner,
            home: tempfile::tempdir().unwrap(),
        })
    }

    /// Run `pvr ARGS` in `dir` (stdin closed, 60 s at most).
    pub fn run(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(&self.runner)
            .args(args)
            .current_dir(dir)
            .env("PVR_HOME", self.home.path())
            .env("PVR_TIMEOUT", "60")
            .stdin(Stdio::null())
            .output()
            .expect("run the reference pvr")
    }

    pub fn ok(&self, dir: &Path, args: &[&str]) -> String {
        ok(&self.run(dir, args), &format!("pvr {args:?}"))
    }
}

// ------------------------------------------------------------------------------------------
// Garage
// ------------------------------------------------------------------------------------------

/// The garage binary: `$PVRFS_GARAGE`, `${PVRFS_TOOLS_DIR:-$HOME/.cache/pvrfs/tools}/bin`
/// (where scripts/setup-deps builds it), or PATH.
pub fn garage_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PVRFS_GARAGE") {
        return Some(PathBuf::from(p));
    }
    let tools = std::env::var_os("PVRFS_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/pvrfs/tools")));
    if let Some(p) = tools.map(|t| t.join("bin/garage")).filter(|p| p.is_file()) {
        return Some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("garage"))
            .find(|p| p.is_file())
    })
}

/// A single-node Garage on loopback with one bucket and one key; killed on drop.
pub struct Garage {
    child: Option<Child>,
    dir: tempfile::TempDir,
    binary: PathBuf,
    pub endpoint: String,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
}

impl Garage {
    /// Start one, or `None` (after a SKIP message) when the binary is absent.
    pub fn start() -> Option<Garage> {
        let Some(binary) = garage_binary() else {
            eprintln!("SKIPPED: garage is not installed (scripts/setup-deps builds it into ~/.cache/pvrfs/tools/bin)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let (rpc, s3, admin) = (crate::free_port(), crate::free_port(), crate::free_port());
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (rand_u32() as usize + i * 7919) % 256))
            .collect();
        let config = format!(
            r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{secret}"
"#,
            d = dir.path().display()
        );
        let conf = dir.path().join("garage.toml");
        fs::write(&conf, config).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&conf, fs::Permissions::from_mode(0o600)).unwrap();
        }
        let log = fs::File::create(dir.path().join("garage.log")).unwrap();
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&conf)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start garage");
        let mut g = Garage {
            child: Some(child),
            dir,
            binary,
            endpoint: format!("http://127.0.0.1:{s3}"),
            bucket: "pvrfs-test".into(),
            key_id: String::new(),
            secret: String::new(),
        };
        g.setup();
        Some(g)
    }

    fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.path().join("garage.toml"))
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// Retry a CLI step while the node comes up.
    fn cli_retry(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.cli(args) {
                Ok(t) => return t,
                Err(e) if Instant::now() > deadline => panic!(
                    "garage {args:?} failed: {e}\nserver log:\n{}",
                    fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn setup(&mut self) {
        let id = self.cli_retry(&["node", "id", "-q"]);
        let id = id.trim().split('@').next().unwrap().to_string();
        self.cli_retry(&["layout", "assign", "-z", "dc1", "-c", "20G", &id]);
        self.cli_retry(&["layout", "apply", "--version", "1"]);
        self.cli_retry(&["bucket", "create", &self.bucket.clone()]);
        let key = self.cli_retry(&["key", "create", "pvrfs-test-key"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no '{name}' in: {key}"))
        };
        self.key_id = field("Key ID:");
        self.secret = field("Secret key:");
        self.cli_retry(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            &self.bucket.clone(),
            "--key",
            "pvrfs-test-key",
        ]);
        // The S3 endpoint answers once the layout is active.
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(self.endpoint.trim_start_matches("http://")).is_err() {
            assert!(Instant::now() < deadline, "garage's S3 port never opened");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The standard AWS variables for this node.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_REGION".into(), "garage".into()),
            ("AWS_ACCESS_KEY_ID".into(), self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret.clone()),
        ]
    }

    /// A client of the bucket through pvrfs's own S3 module.
    pub fn bucket(&self) -> pvrfs::exchange::s3::S3Bucket {
        let env = self.env();
        let config = pvrfs::exchange::s3::S3Config::from_vars(|k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
        .unwrap();
        pvrfs::exchange::s3::S3Bucket::new(
            &config,
            &self.bucket,
            &pvrfs::exchange::Options::default(),
        )
        .unwrap()
    }
}

impl Garage {
    /// The multipart uploads pending under `prefix` (ListMultipartUploads), as
    /// `(key, upload id)`: started, neither completed nor aborted.
    pub fn pending_uploads(&self, prefix: &str) -> Vec<(String, String)> {
        let url = url_of(&format!("{}/{}/", self.endpoint, self.bucket));
        let query = [("prefix", prefix), ("uploads", "")];
        let signed = rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            rusty_s3::Method::Get,
            url,
            &self.key_id,
            &self.secret,
            None,
            "garage",
            600,
            query.iter().copied(),
            std::iter::empty(),
        );
        let body = ureq::get(signed.as_str())
            .call()
            .unwrap_or_else(|e| panic!("ListMultipartUploads: {e}"))
            .into_string()
            .unwrap();
        let tag = |text: &str, name: &str| {
            let open = format!("<{name}>");
            let start = text.find(&open)? + open.len();
            let end = text[start..].find(&format!("</{name}>"))? + start;
            Some(text[start..end].to_string())
        };
        body.split("<Upload>")
            .skip(1)
            .map(|u| {
                (
                    tag(u, "Key").unwrap_or_default(),
                    tag(u, "UploadId").unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The part numbers uploaded so far to a pending upload (ListParts).
    pub fn uploaded_parts(&self, key: &str, upload_id: &str) -> usize {
        let bucket = rusty_s3::Bucket::new(
            url_of(&self.endpoint),
            rusty_s3::UrlStyle::Path,
            self.bucket.clone(),
            "garage",
        )
        .unwrap();
        let creds = rusty_s3::Credentials::new(self.key_id.clone(), self.secret.clone());
        use rusty_s3::S3Action;
        let url = bucket
            .list_parts(Some(&creds), key, upload_id)
            .sign(Duration::from_secs(600));
        match ureq::get(url.as_str()).call() {
            Ok(resp) => resp.into_string().unwrap().matches("<Part>").count(),
            Err(_) => 0, // completed or aborted meanwhile
        }
    }
}

fn url_of(text: &str) -> url::Url {
    text.parse().unwrap()
}

impl Drop for Garage {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Read lines of a child's output until one contains `needle` (used for logs).
pub fn wait_for_line(path: &Path, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(f) = fs::File::open(path) {
            if BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .any(|l| l.contains(needle))
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

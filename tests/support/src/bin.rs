//! Running the `pvrfs` binary: [`pvrfs`] builds a command line, [`Pvrfs::run`] waits for it.
//!
//! Every run gets `HOME` pointed at its directory (never the real `~/.pvr`) and no inherited
//! crash-injection setting, unless the test sets one.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `pvrfs` binary of this build: beside the test executable's `deps/` directory (where
/// cargo puts the package's binaries), or `$PVRFS_BIN`.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PVRFS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().expect("deps dir");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("profile dir")
    } else {
        dir
    };
    let bin = dir.join("pvrfs");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo test builds it)",
        bin.display()
    );
    bin
}

/// `pvrfs ARGS`, to be configured and run.
pub fn pvrfs<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Pvrfs {
    let mut p = Pvrfs::new();
    for a in args {
        p = p.arg(a);
    }
    p
}

/// A `pvrfs` command line under construction.
pub struct Pvrfs {
    cmd: Command,
    shown: Vec<String>,
}

impl Default for Pvrfs {
    fn default() -> Self {
        Self::new()
    }
}

impl Pvrfs {
    /// `pvrfs` without arguments yet.
    pub fn new() -> Pvrfs {
        let mut cmd = Command::new(binary());
        cmd.env_remove("PVRFS_CRASH_AT");
        Pvrfs {
            cmd,
            shown: Vec::new(),
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.shown.push(a.as_ref().to_string_lossy().into_owned());
        self.cmd.arg(a);
        self
    }

    /// Run in `dir`, with `HOME` there too.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.cmd.current_dir(dir).env("HOME", dir);
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }

    /// The command, for what `run` does not cover (spawning a daemon, feeding stdin).
    pub fn command(self) -> Command {
        self.cmd
    }

    /// Run to completion, whatever the exit code.
    pub fn run(mut self) -> Run {
        let out = self.cmd.output().expect("run pvrfs");
        Run {
            args: self.shown.join(" "),
            out,
        }
    }

    /// Run to completion, whatever the exit code, but kill it (and fail the test) if it takes
    /// longer than `limit`: for commands that must not hang on hostile input.
    pub fn run_within(mut self, limit: std::time::Duration) -> Run {
        let out_file = tempfile::tempfile().expect("temp file");
        let err_file = tempfile::tempfile().expect("temp file");
        self.cmd
            .stdin(std::process::Stdio::null())
            .stdout(out_file.try_clone().expect("dup"))
            .stderr(err_file.try_clone().expect("dup"));
        let read = |mut f: &std::fs::File| {
            use std::io::{Read, Seek};
            let mut v = Vec::new();
            f.rewind().expect("rewind");
            f.read_to_end(&mut v).expect("read output");
            v
        };
        let mut child = self.cmd.spawn().expect("spawn pvrfs");
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for pvrfs") {
                break status;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "pvrfs {} did not finish within {limit:?} (killed); stderr:\n{}",
                    self.shown.join(" "),
                    String::from_utf8_lossy(&read(&err_file))
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        Run {
            args: self.shown.join(" "),
            out: Output {
                status,
                stdout: read(&out_file),
                stderr: read(&err_file),
            },
        }
    }

    /// Run and insist on success; returns stdout.
    pub fn ok(self) -> String {
        self.run().ok().stdout()
    }

    /// Run and insist on failure; returns stderr.
    pub fn fails(self) -> String {
        let r = self.run();
        assert!(
            !r.out.status.success(),
            "pvrfs {} should have failed:\n{}",
            r.args,
            r.stdout()
        );
        r.stderr()
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

    pub fn success(&self) -> bool {
        self.out.status.success()
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

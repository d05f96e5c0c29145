//! Durable file-system primitives: atomic replace, directory fsync, crash points.
//!
//! Invariant: every write to a repository goes through `atomic_write` (temp file in the same
//! directory → write → fsync → rename → fsync dir), so a reader or a crash sees the old or the
//! new bytes, never a mix. Temp files start with `.tmp-` and are ignored (and cleaned) by readers.
//!
//! `crash_point` is the fault-injection hook used by the crash tests: when the environment
//! variable `PVRFS_CRASH_AT=N` is set, the N-th crash point reached by the process aborts it on
//! the spot, like a `kill -9` at that moment.

use crate::error::{IoContext, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);
static CRASH_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Prefix of every temporary file pvrfs creates next to its final destination.
pub const TEMP_PREFIX: &str = ".tmp-";

/// A fresh temp path in `dir`, unique within this process and across processes.
pub fn temp_path_in(dir: &Path) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()))
}

/// True when an `O_TMPFILE` file can later be given a name through `/proc/self/fd` (the
/// store's anonymous temp objects, `store::TempObject`). Checked once.
/// `PVRFS_STORE_NAMED_TEMPS=1` says no, as on a file system without `O_TMPFILE` (tests).
pub fn can_link_anonymous_files() -> bool {
    static PROC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROC.get_or_init(|| {
        std::env::var_os("PVRFS_STORE_NAMED_TEMPS").is_none_or(|v| v != "1")
            && Path::new("/proc/self/fd").is_dir()
    })
}

/// The named temp files this process has open, so that a signal does not leave them behind.
///
/// [`TempFiles::register`] records a path; dropping the returned [`RegisteredTemp`] removes the
/// file (if still there) and forgets it. [`remove_temp_files_on_signals`] starts a thread that,
/// on SIGINT/SIGTERM/SIGHUP, removes every registered file and then dies of the same signal,
/// holding the registry's lock so that no new temp file appears in between. The cleanup runs in
/// an ordinary thread (the signals are blocked and taken with `sigwait`), so it may lock and
/// allocate; nothing runs in a signal handler.
pub struct TempFiles;

static REGISTERED_TEMPS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// A registered temp file (see [`TempFiles`]); removed when dropped unless renamed away.
pub struct RegisteredTemp {
    path: PathBuf,
}

impl TempFiles {
    pub fn register(path: PathBuf) -> RegisteredTemp {
        REGISTERED_TEMPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.clone());
        RegisteredTemp { path }
    }
}

impl RegisteredTemp {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RegisteredTemp {
    fn drop(&mut self) {
        let mut temps = REGISTERED_TEMPS.lock().unwrap_or_else(|e| e.into_inner());
        // After a rename into place the temp name is gone and this is a harmless ENOENT.
        let _ = fs::remove_file(&self.path);
        if let Some(i) = temps.iter().position(|p| *p == self.path) {
            temps.swap_remove(i);
        }
    }
}

/// Work that must not be left half-done when a signal ends the process, other than temp files:
/// e.g. a pending S3 multipart upload, which the service would keep (invisible, but stored and
/// billed) until it is aborted. Registered with [`on_signal`]; run by the thread that
/// [`remove_temp_files_on_signals`] starts, after the temp files are removed and before the
/// process dies. A cleanup must be quick and bounded (a request with a short timeout).
type Cleanup = Box<dyn Fn() + Send>;

static SIGNAL_CLEANUPS: std::sync::Mutex<Vec<(u64, Cleanup)>> = std::sync::Mutex::new(Vec::new());

/// A cleanup registered with [`on_signal`]; forgotten (not run) when dropped.
pub struct OnSignal {
    id: u64,
}

/// Run `cleanup` if SIGINT/SIGTERM/SIGHUP ends the process while the returned guard lives
/// (only in commands that called [`remove_temp_files_on_signals`]).
pub fn on_signal(cleanup: impl Fn() + Send + 'static) -> OnSignal {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    SIGNAL_CLEANUPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((id, Box::new(cleanup)));
    OnSignal { id }
}

impl Drop for OnSignal {
    fn drop(&mut self) {
        let mut cleanups = SIGNAL_CLEANUPS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = cleanups.iter().position(|(id, _)| *id == self.id) {
            drop(cleanups.swap_remove(i));
        }
    }
}

/// Remove registered temp files and run the [`on_signal`] cleanups on SIGINT/SIGTERM/SIGHUP,
/// then die of that signal (see [`TempFiles`]). Call it early, before other threads start (they inherit the blocked mask),
/// in commands that do not start other programs. Idempotent.
pub fn remove_temp_files_on_signals() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        const SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
        crate::sys::block_signals(&SIGNALS);
        let spawned = std::thread::Builder::new()
            .name("pvrfs-temp-cleanup".into())
            .spawn(|| {
                let Some(sig) = crate::sys::wait_for_signal(&SIGNALS) else {
                    return;
                };
                let temps = REGISTERED_TEMPS.lock().unwrap_or_else(|e| e.into_inner());
                for p in temps.iter() {
                    let _ = fs::remove_file(p);
                }
                let cleanups = SIGNAL_CLEANUPS.lock().unwrap_or_else(|e| e.into_inner());
                for (_, cleanup) in cleanups.iter() {
                    cleanup();
                }
                crate::sys::die_of_signal(sig);
            });
        if spawned.is_err() {
            crate::sys::unblock_signals(&SIGNALS);
        }
    });
}

/// Abort the process here if the crash-injection counter says so (see module docs).
pub fn crash_point(name: &str) {
    static TARGET: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let target = TARGET.get_or_init(|| {
        std::env::var("PVRFS_CRASH_AT")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if let Some(target) = *target {
        let n = CRASH_COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
        if n == target {
            eprintln!("pvrfs: injected crash at point {n} ({name})");
            // abort, not exit: no destructors, no flushing, like SIGKILL.
            std::process::abort();
        }
    }
}

/// fsync a directory so that renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).ctx("open directory", dir)?;
    d.sync_all().ctx("fsync directory", dir)
}

/// fsync every file in `paths` (`op` names the step in errors), several at a time: a device
/// (and a virtual disk even more so) finishes concurrent flushes in about the time of one, where
/// one after another costs a full flush wait each. The first error is returned.
pub fn fsync_all_parallel(paths: &[PathBuf], op: &'static str) -> Result<()> {
    const MAX_THREADS: usize = 8;
    let fsync = |p: &PathBuf| File::open(p).and_then(|f| f.sync_all()).ctx(op, p);
    if paths.len() <= 1 {
        return paths.iter().try_for_each(fsync);
    }
    let next = AtomicU64::new(0);
    let worker = || -> Result<()> {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed) as usize;
            let Some(p) = paths.get(i) else { return Ok(()) };
            fsync(p)?;
        }
    };
    std::thread::scope(|s| {
        let helpers: Vec<_> = (1..paths.len().min(MAX_THREADS))
            .map(|_| s.spawn(worker))
            .collect();
        let mine = worker();
        helpers
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .fold(mine, Result::and)
    })
}

/// A file written and made durable under a temporary name beside `path`, not yet visible.
/// [`StagedFile::install`] renames it into place and fsyncs the directory; dropping it without
/// installing removes the temporary file. Staging several files (on several threads) and then
/// installing them in order costs one flush wait instead of one per file, with the same crash
/// guarantees as [`atomic_write`] for each.
#[derive(Debug)]
pub struct StagedFile {
    tmp: PathBuf,
    path: PathBuf,
    installed: bool,
}

impl StagedFile {
    /// Write `data` (mode `mode`) to a new temporary file beside `path` and fsync it.
    pub fn write(path: &Path, data: &[u8], mode: u32) -> Result<StagedFile> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let staged = StagedFile {
            tmp: temp_path_in(dir),
            path: path.to_path_buf(),
            installed: false,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&staged.tmp)
            .ctx("create", &staged.tmp)?;
        f.write_all(data).ctx("write", &staged.tmp)?;
        crash_point("atomic_write:written");
        f.sync_all().ctx("fsync", &staged.tmp)?;
        Ok(staged)
    }

    /// Atomically replace the target with the staged bytes, durably (rename, fsync the directory).
    pub fn install(mut self) -> Result<()> {
        crash_point("atomic_write:before-rename");
        fs::rename(&self.tmp, &self.path).ctx("rename into place", &self.path)?;
        self.installed = true;
        crash_point("atomic_write:renamed");
        sync_dir(self.path.parent().unwrap_or(Path::new(".")))
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.installed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Atomically replace `path` with `data` (mode `mode`), durably.
pub fn atomic_write(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    StagedFile::write(path, data, mode)?.install()
}

/// Remove leftover temp files (from a crashed process) in `dir`, older than `min_age`.
pub fn clean_temp_files(dir: &Path, min_age: std::time::Duration) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for entry in rd.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let old_enough = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= min_age);
        if old_enough {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Open `path` for reading only if it is a regular file: never blocking on a FIFO or a device
/// (`O_NONBLOCK` until the type is checked), and, unless `follow`, never through a symbolic
/// link as the last component (`O_NOFOLLOW`). What someone else wrote (a plain-directory
/// source, a repository's object store) may be a FIFO, a device or a link to `/dev/zero`; those
/// are an error here (`InvalidData`, saying what the path is), not a hang or an endless read.
pub fn open_regular(path: &Path, follow: bool) -> std::io::Result<File> {
    open_regular_at(rustix::fs::CWD, path, false, follow)
}

/// [`open_regular`] of `name` relative to the directory `dir`, for writing too when `write`.
pub fn open_regular_at(
    dir: impl std::os::fd::AsFd,
    name: impl AsRef<Path>,
    write: bool,
    follow: bool,
) -> std::io::Result<File> {
    use rustix::fs::{FileType, Mode, OFlags};
    let access = if write { OFlags::RDWR } else { OFlags::RDONLY };
    let mut flags = access | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    let fd = match rustix::fs::openat(dir, name.as_ref(), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) if !follow => return Err(not_regular(FileType::Symlink)),
        Err(e) => return Err(e.into()),
    };
    let kind = FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
    if kind != FileType::RegularFile {
        return Err(not_regular(kind));
    }
    // Regular files ignore O_NONBLOCK, but the descriptor may be handed to the kernel (FUSE
    // passthrough): make it an ordinary one.
    rustix::fs::fcntl_setfl(&fd, OFlags::empty())?;
    Ok(File::from(fd))
}

/// The error of [`open_regular`] for a path of type `kind`.
fn not_regular(kind: rustix::fs::FileType) -> std::io::Error {
    use rustix::fs::FileType;
    let what = match kind {
        FileType::Fifo => "a FIFO",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Directory => "a directory",
        FileType::Socket => "a socket",
        FileType::Symlink => {
            return std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a symbolic link, not a regular file (links are not followed here)",
            )
        }
        _ => "something else",
    };
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{what}, not a regular file"),
    )
}

/// `Some(error)` when something that is not a regular file sits at `path` (not following a
/// symbolic link): what [`open_regular`] would say about it.
pub fn not_a_regular_file(path: &Path) -> Option<std::io::Error> {
    let meta = fs::symlink_metadata(path).ok()?;
    (!meta.file_type().is_file()).then(|| {
        not_regular(rustix::fs::FileType::from_raw_mode(
            std::os::unix::fs::MetadataExt::mode(&meta),
        ))
    })
}

/// Flush every dirty page of the file system holding `path` (one call instead of one fsync per
/// file: used after writing many objects, before publishing a state that references them).
pub fn sync_filesystem(path: &Path) -> Result<()> {
    let f = File::open(path).ctx("open", path)?;
    rustix::fs::syncfs(&f).map_err(|e| crate::error::Error::io("syncfs", path, e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        atomic_write(&p, b"one", 0o644).unwrap();
        atomic_write(&p, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_staged_file_is_invisible_until_installed_and_gone_if_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"old").unwrap();
        let staged = StagedFile::write(&p, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"old");
        drop(staged);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "temp removed");
        let staged = StagedFile::write(&p, b"new", 0o600).unwrap();
        staged.install().unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn parallel_fsync_syncs_all_and_names_a_failing_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths: Vec<PathBuf> = (0..20).map(|i| dir.path().join(format!("f{i}"))).collect();
        for p in &paths {
            fs::write(p, b"x").unwrap();
        }
        fsync_all_parallel(&paths, "fsync object").unwrap();
        paths.insert(7, dir.path().join("missing"));
        let err = fsync_all_parallel(&paths, "fsync object")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing") && err.contains("fsync object"),
            "{err}"
        );
    }

    #[test]
    fn cleans_old_temp_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let t = temp_path_in(dir.path());
        fs::write(&t, b"x").unwrap();
        fs::write(dir.path().join("keep"), b"x").unwrap();
        clean_temp_files(dir.path(), std::time::Duration::ZERO);
        assert!(!t.exists());
        assert!(dir.path().join("keep").exists());
    }
}

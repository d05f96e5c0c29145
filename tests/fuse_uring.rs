//! The FUSE-over-io_uring transport (`src/fuse_uring.rs`) on real mounts: with the kernel's
//! `enable_uring` on, a mount's requests must come through the per-CPU rings (the control
//! socket's `transport` answer counts them), on every CPU, with data intact; teardown by
//! `pvrfs umount` and by SIGKILL must leave no daemon behind; `PVRFS_FUSE_URING=0` keeps a
//! mount on `/dev/fuse`. Without `enable_uring` the ring tests skip with a message (CI enables
//! it: `.ci/run`).

use pvrfs_testkit as common;

use common::{daemon_pid, fuse_available, kill_daemon, wait_exited, Content, Mount, TestRepo};
use pvrfs::fuse::control::{self, Request};
use std::fs;
use std::path::Path;
use std::time::Duration;

const ENABLE: &str = "/sys/module/fuse/parameters/enable_uring";

fn uring_enabled() -> bool {
    let on = fs::read_to_string(ENABLE).is_ok_and(|v| matches!(v.trim(), "Y" | "1"));
    if !on {
        eprintln!("skipped: {ENABLE} is not enabled (echo 1 > {ENABLE} as root to run this test)");
    }
    on
}

fn fixture() -> TestRepo {
    let mut t = TestRepo::new();
    t.set("README", Content::Blob(b"hello\n"))
        .set("conf.json", Content::Json(r#"{"a":1}"#))
        .set("dir/data.bin", Content::Blob(&[7u8; 300_000]));
    t.commit("fixture");
    t
}

fn transport(mnt: &Path) -> String {
    let a = control::request(
        mnt,
        &Request {
            op: "transport".into(),
            message: None,
        },
    )
    .expect("control request");
    assert!(a.ok, "transport query failed: {:?}", a.error);
    a.text
}

/// Requests served by the rings so far, from `io_uring (Q queues, R requests, …)`.
fn ring_requests(text: &str) -> u64 {
    assert!(text.starts_with("io_uring ("), "not on io_uring: {text}");
    text.split(", ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable transport status '{text}'"))
}

/// Run `f` on a thread pinned to `cpu` (its requests go to that CPU's queue).
fn on_cpu<T: Send>(cpu: usize, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: a zeroed cpu_set_t is valid; cpu < CPU_SETSIZE here.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            f()
        })
        .join()
        .unwrap()
    })
}

/// Ordinary work in the mount: creates, writes (small and larger than one request), reads,
/// renames, directories, symlinks, unlink.
fn exercise(root: &Path, tag: &str) {
    let d = root.join(format!("work-{tag}"));
    fs::create_dir(&d).unwrap();
    for i in 0..50 {
        fs::write(d.join(format!("f{i}")), format!("{tag} {i}\n")).unwrap();
    }
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(d.join("big"), &big).unwrap();
    assert_eq!(fs::read(d.join("big")).unwrap(), big);
    fs::rename(d.join("f0"), d.join("renamed")).unwrap();
    std::os::unix::fs::symlink("renamed", d.join("link")).unwrap();
    assert_eq!(
        fs::read_to_string(d.join("link")).unwrap(),
        format!("{tag} 0\n")
    );
    fs::remove_file(d.join("f1")).unwrap();
    let mut names: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 50 + 1); // 50 - f0 - f1 + renamed + link + big
    assert_eq!(
        fs::read(root.join("dir/data.bin")).unwrap(),
        vec![7u8; 300_000]
    );
    assert_eq!(fs::read_to_string(root.join("README")).unwrap(), "hello\n");
}

fn thread_names(pid: i32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|t| fs::read_to_string(t.path().join("comm")).ok())
                .map(|s| s.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// (name, scheduling policy) of each thread of `pid` (`/proc/PID/task/TID/stat` field 41).
fn thread_policies(pid: i32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let stat = fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        // Fields after the name start at field 3 (state); policy is field 41.
        let policy = stat[close + 2..]
            .split(' ')
            .nth(41 - 3)
            .and_then(|f| f.parse().ok())
            .unwrap_or(u32::MAX);
        out.push((name, policy));
    }
    out
}

#[test]
fn rw_mount_is_served_by_the_rings_on_every_cpu() {
    if !fuse_available() || !uring_enabled() {
        return;
    }
    let t = fixture();
    let m = Mount::new(t.path(), "latest", &["--rw"]);
    let before = ring_requests(&transport(m.path()));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for cpu in 0..cpus {
        on_cpu(cpu, || exercise(m.path(), &format!("cpu{cpu}")));
    }
    let text = transport(m.path());
    let after = ring_requests(&text);
    assert!(
        after > before + 100 * cpus as u64,
        "too few requests came by the rings ({before} -> {after}): {text}"
    );
    // The daemon has one pinned queue thread per CPU beside fuser's /dev/fuse workers.
    let pid = daemon_pid(m.path()).expect("daemon process");
    let rings = thread_names(pid)
        .iter()
        .filter(|n| n.starts_with("pvrfs-ring-"))
        .count();
    assert!(rings >= cpus, "{rings} ring threads for {cpus} CPUs");
    // Replies are committed in SCHED_IDLE (to keep the caller on its CPU), but a queue thread
    // must never wait for requests in it: an idle-policy thread woken on a busy CPU starves.
    std::thread::sleep(Duration::from_millis(100));
    for (name, policy) in thread_policies(pid) {
        if name.starts_with("pvrfs-ring-") {
            assert_eq!(
                policy, 0,
                "{name} waits in scheduling policy {policy}, not SCHED_OTHER"
            );
        }
    }
    // The change is committed as usual.
    let out = common::Pvrfs::new()
        .command()
        .args(["commit", "-m", "ring", "--mount"])
        .arg(m.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(m);
    wait_exited(pid);
}

#[test]
fn read_only_mount_uses_the_rings_and_exits_on_umount() {
    if !fuse_available() || !uring_enabled() {
        return;
    }
    let t = fixture();
    let m = Mount::new(t.path(), "latest", &[]);
    let pid = daemon_pid(m.path()).expect("daemon process");
    for cpu in 0..std::thread::available_parallelism().map_or(1, |n| n.get()) {
        on_cpu(cpu, || {
            assert_eq!(
                fs::read(m.join("dir/data.bin")).unwrap(),
                vec![7u8; 300_000]
            );
            assert_eq!(fs::read_to_string(m.join("README")).unwrap(), "hello\n");
        });
    }
    assert!(
        thread_names(pid)
            .iter()
            .any(|n| n.starts_with("pvrfs-ring-")),
        "no io_uring queue threads in the read-only daemon"
    );
    drop(m);
    wait_exited(pid);
}

/// The `Cpus_allowed_list` of each thread of `pid` whose name starts with `prefix`.
fn thread_cpus(pid: i32, prefix: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let status = fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
        };
        if let (Some(name), Some(cpus)) = (field("Name:"), field("Cpus_allowed_list:")) {
            if name.starts_with(prefix) {
                out.push((name, cpus));
            }
        }
    }
    out.sort();
    out
}

/// A streaming read through the daemon (no-open mode) is served off the reader's CPU: its
/// readahead-sized READs (1 MiB, the daemon widens the window) move the queue thread off its
/// CPU, and the next small request brings it back (both logged at debug level). Needs two
/// CPUs and root (only root may widen the window; at 128 KiB no READ is big enough).
#[test]
fn streaming_reads_are_served_off_the_readers_cpu() {
    if !fuse_available() || !uring_enabled() {
        return;
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2
        || !rustix::process::geteuid().is_root()
    {
        eprintln!("skipped: needs two CPUs and root (to widen the mount's readahead)");
        return;
    }
    let blob: Vec<u8> = (0..8u32 << 20).map(|i| (i % 247) as u8).collect();
    let mut t = fixture();
    t.set("big.img", Content::Blob(&blob));
    t.commit("big");
    {
        let m = Mount::with_env(
            t.path(),
            "latest",
            &["--passthrough", "never"],
            &[("RUST_LOG", "pvrfs::fuse::uring=debug")],
        );
        let pid = daemon_pid(m.path()).expect("daemon process");
        on_cpu(0, || assert!(fs::read(m.join("big.img")).unwrap() == blob));
        // A small request on CPU 0 brings queue 0's thread home.
        on_cpu(0, || {
            assert_eq!(fs::read_to_string(m.join("README")).unwrap(), "hello\n")
        });
        assert!(
            thread_cpus(pid, "pvrfs-ring-0")
                .iter()
                .all(|(_, c)| c == "0"),
            "queue 0's thread did not return to CPU 0: {:?}",
            thread_cpus(pid, "pvrfs-ring-")
        );
    }
    let log: String = fs::read_dir(t.repo.ext_dir().join("logs"))
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let away = log.find("io_uring queue 0: serving big READs off its CPU");
    let home = log.rfind("io_uring queue 0: back on its CPU");
    assert!(
        matches!((away, home), (Some(a), Some(h)) if a < h),
        "queue 0 did not serve the big READs off its CPU and come back:\n{log}"
    );
}

/// READs that come by the rings are answered by the read-only file system's direct reader
/// (data copied straight into the ring's payload), not through fuser's dispatch: byte-exact at
/// any offset, short at the end of the file, and EIO for a missing object.
#[test]
fn read_only_reads_by_the_rings_are_served_directly() {
    use std::io::{Read, Seek, SeekFrom};
    if !fuse_available() || !uring_enabled() {
        return;
    }
    let t = fixture();
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut t = t;
    t.set("dir/pattern.bin", Content::Blob(&blob))
        .set("gone.txt", Content::Blob(b"this object goes missing"));
    t.commit("more");
    let gone = pvrfs::oid::ObjectId::hash_bytes(b"this object goes missing");
    fs::remove_file(t.repo.store().path_of(&gone)).unwrap();
    {
        let m = Mount::with_env(
            t.path(),
            "latest",
            &[],
            &[("RUST_LOG", "fuser::request=debug,pvrfs::fuse::uring=debug")],
        );
        assert_eq!(fs::read(m.join("dir/pattern.bin")).unwrap(), blob);
        assert_eq!(
            fs::read_to_string(m.join("conf.json")).unwrap(),
            "{\n    \"a\": 1\n}"
        );
        let mut f = fs::File::open(m.join("dir/pattern.bin")).unwrap();
        f.seek(SeekFrom::Start(299_990)).unwrap();
        let mut tail = Vec::new();
        f.read_to_end(&mut tail).unwrap();
        assert_eq!(tail, &blob[299_990..]);
        let e = fs::read(m.join("gone.txt")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    }
    let log: String = fs::read_dir(t.repo.ext_dir().join("logs"))
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let reads: Vec<&str> = log.lines().filter(|l| l.contains(" READ ")).collect();
    assert!(!reads.is_empty(), "no READ logged:\n{log}");
    assert!(
        reads.iter().all(|l| l.contains("(io_uring, direct)")),
        "READs went through fuser's dispatch:\n{}",
        reads.join("\n")
    );
}

#[test]
fn killed_ring_daemon_leaves_a_dead_mount_that_umount_clears() {
    if !fuse_available() || !uring_enabled() {
        return;
    }
    let t = fixture();
    let m = Mount::new(t.path(), "latest", &["--rw"]);
    fs::write(m.join("x"), b"1").unwrap();
    kill_daemon(m.path());
    assert!(
        fs::read(m.join("x")).is_err(),
        "a killed daemon still serves"
    );
    let out = common::Pvrfs::new()
        .command()
        .arg("umount")
        .arg(m.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!m.is_mounted());
    // The overlay is intact: a new mount (on the ring again) serves the file.
    let m2 = Mount::new(t.path(), "latest", &["--rw"]);
    assert_eq!(fs::read(m2.join("x")).unwrap(), b"1");
    ring_requests(&transport(m2.path()));
}

#[test]
fn env_zero_keeps_the_mount_on_dev_fuse() {
    if !fuse_available() {
        return;
    }
    let t = fixture();
    let m = Mount::with_env(t.path(), "latest", &["--rw"], &[("PVRFS_FUSE_URING", "0")]);
    exercise(m.path(), "plain");
    let text = transport(m.path());
    assert!(text.starts_with("/dev/fuse"), "{text}");
    let pid = daemon_pid(m.path()).expect("daemon process");
    assert!(!thread_names(pid)
        .iter()
        .any(|n| n.starts_with("pvrfs-ring-")));
    drop(m);
    wait_exited(pid);
}

/// A `--rw` mount made with `PVRFS_FUSE_URING_FAIL=fail` works end to end on `/dev/fuse`,
/// says why, and its daemon exits on unmount.
fn falls_back_to_dev_fuse(fail: &str, tag: &str) {
    let t = fixture();
    let m = Mount::with_env(
        t.path(),
        "latest",
        &["--rw"],
        &[("PVRFS_FUSE_URING_FAIL", fail)],
    );
    exercise(m.path(), tag);
    let text = transport(m.path());
    assert!(
        text.starts_with("/dev/fuse (io_uring registration refused"),
        "{text}"
    );
    let pid = daemon_pid(m.path()).expect("daemon process");
    drop(m);
    wait_exited(pid);
}

#[test]
fn refused_registration_falls_back_to_dev_fuse() {
    if !fuse_available() || !uring_enabled() {
        return;
    }
    // Every ring entry is registered without buffers: the kernel refuses them and must
    // release the requests it held for the ring to /dev/fuse.
    falls_back_to_dev_fuse("1", "fallback");
}

#[test]
fn queue_threads_that_cannot_start_leave_the_mount_on_dev_fuse() {
    if !fuse_available() || !uring_enabled() {
        return;
    }
    // INIT granted the ring, then the last queue's thread is not started: the kernel holds
    // every request until all queues registered, so the daemon must make it give up the ring.
    falls_back_to_dev_fuse("start", "unstarted");
}

/// A cold blob's READs are read from the disk by the ring itself (`DiskRead`: O_DIRECT into
/// the entry's payload, several in flight per queue; the daemon logs each): the bytes are
/// exact at every offset, the end of the file included, and a warm object is copied from its
/// page cache instead.
#[test]
fn cold_blob_reads_are_read_from_the_disk_by_the_ring() {
    if !fuse_available() || !uring_enabled() {
        return;
    }
    let blob: Vec<u8> = (0..(6u32 << 20) + 777).map(|i| (i % 251) as u8).collect();
    let mut t = fixture();
    t.set("big.img", Content::Blob(&blob));
    t.commit("big");
    let object = t
        .path()
        .join(".pvr/objects")
        .join(pvrfs::oid::ObjectId::hash_bytes(&blob).to_hex());
    if let Err(e) = pvrfs::fs::direct::DirectFile::reopen(&fs::File::open(&object).unwrap()) {
        return eprintln!(
            "NOTE: skipped: the test directory's file system offers no direct I/O ({e})"
        );
    }
    let disk_reads = || -> usize {
        fs::read_dir(t.repo.ext_dir().join("logs"))
            .unwrap()
            .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
            .map(|log| log.matches("read from the disk").count())
            .sum()
    };
    let read_through_mount = || {
        let m = Mount::with_env(
            t.path(),
            "latest",
            &["--passthrough", "never"],
            &[("RUST_LOG", "pvrfs::fuse::uring=debug")],
        );
        assert!(fs::read(m.join("big.img")).unwrap() == blob, "wrong bytes");
    };
    common::pagecache::evict(&object);
    if common::pagecache::cached_pages(&object) > 0 {
        return eprintln!("NOTE: skipped: the object's pages cannot be dropped here");
    }
    read_through_mount();
    let cold = disk_reads();
    assert!(cold > 0, "no READ was read from the disk by the ring");
    // A warm object (a fresh mount: its own pages are cold) is copied from the page cache.
    fs::read(&object).unwrap();
    read_through_mount();
    assert_eq!(disk_reads(), cold, "a warm object was read from the disk");
}

//! Real mounts of revisions (tier 3): every test mounts through `pvrfs mount` into a temp dir
//! and the `Mount` guard unmounts, also on panic. Skipped only where /dev/fuse is absent.

use pvrfs_testkit as common;

use common::pagecache::{cached_pages, evict};
use common::{
    daemon_pid, files, fuse_available, is_mount_point, kill_daemon, pvrfs, Content, Mount, TestRepo,
};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const JSON: &str =
    r#"{"name":"app <&>","n":[1,2.50,1e3],"nested":{"b":true,"a":null},"s":"tab\there é"}"#;

/// A revision exercising the awkward cases: inline JSON, nested dirs, an empty file, a raw
/// (object-stored) .json, non-ASCII and space names, a bigger blob.
fn fixture() -> (TestRepo, pvrfs::repo::Revision) {
    let mut t = TestRepo::new();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    t.set("README", Content::Blob(b"hello\n"))
        .set("empty", Content::Blob(b""))
        .set("config.json", Content::Json(JSON))
        .set("app/run.json", Content::Json(r#"[1,{"x":"y"}]"#))
        .set("app/bin/tool", Content::Blob(b"#!/bin/sh\necho tool\n"))
        .set("app/deep/er/still/file.txt", Content::Blob(b"deep"))
        .set(
            "raw.json",
            Content::Blob(b"{ \"stored\":  \"as object\" }\n"),
        )
        .set("names/with space.txt", Content::Blob(b"space"))
        .set("names/été ünï.bin", Content::Blob(b"unicode"))
        .set("blobs/big.img", Content::Blob(&big));
    let rev = t.commit("fixture");
    (t, rev)
}

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

#[test]
fn mounted_tree_equals_checkout_byte_for_byte() {
    if !fuse_available() {
        return;
    }
    let (t, rev) = fixture();
    for (canonical, extra) in [
        (false, &[][..]),
        (true, &["--canonical"][..]),
        (false, &["--passthrough", "never"][..]),
        (false, &["--passthrough", "always", "--verify"][..]),
    ] {
        let m = Mount::new(t.path(), "latest", extra);
        let expect = tempfile::tempdir().unwrap();
        t.render_checkout(&rev, expect.path(), canonical);
        let got = files(m.path());
        assert_eq!(got.len(), 10);
        assert_eq!(got, files(expect.path()), "canonical={canonical}");
        assert!(
            !m.join(".pvr").exists(),
            ".pvr must not be part of the tree"
        );
        // `diff -r` agrees too.
        let st = std::process::Command::new("diff")
            .arg("-r")
            .arg(m.path())
            .arg(expect.path())
            .status()
            .unwrap();
        assert!(st.success());
    }
}

fn stat_tree(root: &Path) -> BTreeMap<String, std::fs::Metadata> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    out.insert(String::new(), std::fs::metadata(root).unwrap());
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p.clone());
            }
            out.insert(
                p.strip_prefix(root).unwrap().to_string_lossy().into_owned(),
                meta,
            );
        }
    }
    out
}

#[test]
fn attributes_are_exact_and_inodes_stable_across_remounts() {
    if !fuse_available() {
        return;
    }
    let (t, rev) = fixture();
    let expect = tempfile::tempdir().unwrap();
    t.render_checkout(&rev, expect.path(), false);
    let first = {
        let m = Mount::new(t.path(), "1", &[]);
        let stats = stat_tree(m.path());
        for (path, meta) in &stats {
            assert_eq!(meta.mtime(), rev.time, "{path}");
            assert_eq!(meta.ctime(), rev.time, "{path}");
            assert_eq!(meta.uid(), unsafe { libc::getuid() });
            if meta.is_dir() {
                assert_eq!(meta.mode() & 0o7777, 0o755, "{path}");
                let subdirs = std::fs::read_dir(m.path().join(path))
                    .unwrap()
                    .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
                    .count() as u64;
                assert_eq!(meta.nlink(), 2 + subdirs, "nlink of '{path}'");
            } else {
                assert!(meta.is_file());
                assert_eq!(meta.mode() & 0o7777, 0o644, "{path}");
                assert_eq!(meta.nlink(), 1);
                let native = std::fs::metadata(expect.path().join(path)).unwrap();
                assert_eq!(meta.len(), native.len(), "size of '{path}'");
                assert_eq!(
                    meta.blocks(),
                    meta.len().div_ceil(512),
                    "blocks of '{path}'"
                );
            }
        }
        assert_eq!(stats[""].ino(), 1);
        // statfs: the tree's inodes and bytes, nothing free.
        let c = CString::new(m.path().as_os_str().as_bytes()).unwrap();
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
        assert_eq!(s.f_files as usize, stats.len());
        assert_eq!(s.f_bfree, 0);
        assert_eq!(s.f_namemax, 255);
        let bytes: u64 = stats
            .values()
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum();
        assert_eq!(s.f_blocks * s.f_frsize, bytes.div_ceil(4096) * 4096);
        assert!(s.f_flag & libc::ST_RDONLY != 0);
        // xattrs: like a filesystem without xattr support (getxattr EOPNOTSUPP, empty list).
        let f = CString::new(m.join("README").as_os_str().as_bytes()).unwrap();
        let name = CString::new("user.x").unwrap();
        let mut buf = [0u8; 64];
        let r = unsafe { libc::getxattr(f.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 64) };
        assert_eq!(
            (r, std::io::Error::last_os_error().raw_os_error()),
            (-1, Some(libc::EOPNOTSUPP))
        );
        let r = unsafe { libc::listxattr(f.as_ptr(), buf.as_mut_ptr().cast(), 64) };
        assert_eq!(r, 0);
        stats
            .into_iter()
            .map(|(p, m)| (p, m.ino()))
            .collect::<BTreeMap<_, _>>()
    };
    let m = Mount::new(t.path(), "latest", &[]);
    let second: BTreeMap<_, _> = stat_tree(m.path())
        .into_iter()
        .map(|(p, m)| (p, m.ino()))
        .collect();
    assert_eq!(
        first, second,
        "inode numbers must be stable across remounts"
    );
    // and readdir's d_ino agrees with stat's st_ino
    for e in std::fs::read_dir(m.join("app")).unwrap() {
        let e = e.unwrap();
        assert_eq!(
            std::os::unix::fs::DirEntryExt::ino(&e),
            e.metadata().unwrap().ino()
        );
    }
}

#[test]
fn every_write_call_fails_with_erofs() {
    if !fuse_available() {
        return;
    }
    let (t, _) = fixture();
    let m = Mount::new(t.path(), "latest", &[]);
    let f = m.join("README");
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
    let last = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    use std::fs::OpenOptions;
    assert_eq!(
        errno_of(OpenOptions::new().write(true).open(&f)),
        libc::EROFS
    );
    assert_eq!(
        errno_of(OpenOptions::new().read(true).write(true).open(&f)),
        libc::EROFS
    );
    assert_eq!(
        errno_of(OpenOptions::new().append(true).open(&f)),
        libc::EROFS
    );
    assert_eq!(
        errno_of(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(m.join("new"))
        ),
        libc::EROFS
    );
    assert_eq!(errno_of(std::fs::create_dir(m.join("d"))), libc::EROFS);
    assert_eq!(errno_of(std::fs::remove_file(&f)), libc::EROFS);
    assert_eq!(
        errno_of(std::fs::remove_dir(m.join("app/bin"))),
        libc::EROFS
    );
    assert_eq!(errno_of(std::fs::rename(&f, m.join("R2"))), libc::EROFS);
    assert_eq!(
        errno_of(std::os::unix::fs::symlink("x", m.join("l"))),
        libc::EROFS
    );
    assert_eq!(errno_of(std::fs::hard_link(&f, m.join("h"))), libc::EROFS);
    assert_eq!(
        errno_of(std::fs::set_permissions(
            &f,
            std::os::unix::fs::PermissionsExt::from_mode(0o600)
        )),
        libc::EROFS
    );
    unsafe {
        assert_eq!(
            (libc::chown(c(&f).as_ptr(), 0, 0), last()),
            (-1, libc::EROFS),
            "chown"
        );
        assert_eq!(
            (libc::truncate(c(&f).as_ptr(), 0), last()),
            (-1, libc::EROFS),
            "truncate"
        );
        assert_eq!(
            (libc::utimes(c(&f).as_ptr(), std::ptr::null()), last()),
            (-1, libc::EROFS),
            "utimes"
        );
        assert_eq!(
            (
                libc::mknod(c(&m.join("fifo")).as_ptr(), libc::S_IFIFO | 0o644, 0),
                last()
            ),
            (-1, libc::EROFS),
            "mknod"
        );
        let n = CString::new("user.x").unwrap();
        assert_eq!(
            (
                libc::setxattr(c(&f).as_ptr(), n.as_ptr(), b"v".as_ptr().cast(), 1, 0),
                last()
            ),
            (-1, libc::EROFS),
            "setxattr"
        );
        assert_eq!(
            (libc::removexattr(c(&f).as_ptr(), n.as_ptr()), last()),
            (-1, libc::EROFS),
            "removexattr"
        );
    }
    // reading still works and nothing changed
    assert_eq!(std::fs::read(&f).unwrap(), b"hello\n");
}

#[test]
fn concurrent_readers_see_the_right_bytes() {
    if !fuse_available() {
        return;
    }
    let (t, rev) = fixture();
    let m = Mount::new(t.path(), "latest", &[]);
    let expect = tempfile::tempdir().unwrap();
    t.render_checkout(&rev, expect.path(), false);
    let files = files(expect.path());
    std::thread::scope(|s| {
        for i in 0..8 {
            let files = &files;
            let m = &m;
            s.spawn(move || {
                for round in 0..20 {
                    // half the threads hammer the same file, half walk all files
                    let pick: Vec<_> = if i % 2 == 0 {
                        files.iter().filter(|(p, _)| p == "blobs/big.img").collect()
                    } else {
                        files.iter().skip(round % files.len()).collect()
                    };
                    for (p, bytes) in pick {
                        assert_eq!(&std::fs::read(m.join(p)).unwrap(), bytes, "{p}");
                    }
                }
            });
        }
    });
}

#[test]
fn two_revisions_mounted_side_by_side() {
    if !fuse_available() {
        return;
    }
    let (mut t, r1) = fixture();
    t.set("README", Content::Blob(b"changed\n"))
        .remove("empty")
        .set("config.json", Content::Json(r#"{"v":2}"#))
        .set("new/dir/file", Content::Blob(b"new"));
    let r2 = t.commit("second");
    let m1 = Mount::new(t.path(), "1", &[]);
    let m2 = Mount::new(t.path(), "2", &[]);
    for (m, rev) in [(&m1, &r1), (&m2, &r2)] {
        let expect = tempfile::tempdir().unwrap();
        t.render_checkout(rev, expect.path(), false);
        assert_eq!(files(m.path()), files(expect.path()));
    }
    assert_eq!(std::fs::read(m1.join("README")).unwrap(), b"hello\n");
    assert_eq!(std::fs::read(m2.join("README")).unwrap(), b"changed\n");
    assert!(!m1.join("new").exists());
    let out = pvrfs(["mounts"]).run().out;
    let text = String::from_utf8_lossy(&out.stdout);
    for m in [&m1, &m2] {
        let canon = std::fs::canonicalize(m.path()).unwrap();
        assert!(text.contains(&*canon.to_string_lossy()), "{text}");
    }
    assert!(
        text.lines().any(|l| l.ends_with("\t1\tro"))
            && text.lines().any(|l| l.ends_with("\t2\tro")),
        "{text}"
    );
}

#[test]
fn missing_and_corrupt_objects_give_eio_and_the_rest_is_served() {
    if !fuse_available() {
        return;
    }
    // with passthrough (EIO at open) and in no-open mode (EIO at the first read)
    for mode in ["auto", "never"] {
        missing_and_corrupt(mode);
    }
}

fn missing_and_corrupt(mode: &str) {
    let (t, _) = fixture();
    let store = t.repo.store();
    let missing = pvrfs::oid::ObjectId::hash_bytes(b"hello\n");
    std::fs::remove_file(store.path_of(&missing)).unwrap();
    let corrupt = pvrfs::oid::ObjectId::hash_bytes(b"space");
    std::fs::write(store.path_of(&corrupt), b"SPACE").unwrap();
    let m = Mount::new(t.path(), "latest", &["--verify", "--passthrough", mode]);
    assert_eq!(errno_of(std::fs::read(m.join("README"))), libc::EIO);
    assert_eq!(
        errno_of(std::fs::read(m.join("names/with space.txt"))),
        libc::EIO
    );
    // twice: still EIO, and only one log line per object
    assert_eq!(
        errno_of(std::fs::read(m.join("names/with space.txt"))),
        libc::EIO
    );
    assert_eq!(
        std::fs::read(m.join("app/deep/er/still/file.txt")).unwrap(),
        b"deep"
    );
    assert_eq!(
        std::fs::read(m.join("names/été ünï.bin")).unwrap(),
        b"unicode"
    );
    assert!(std::fs::read_dir(m.path()).unwrap().count() > 0);
    let logs = t.repo.ext_dir().join("logs");
    let log: String = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let line_for = |id: &pvrfs::oid::ObjectId| {
        log.lines()
            .filter(|l| l.contains(&id.to_hex()))
            .collect::<Vec<_>>()
    };
    let l = line_for(&missing);
    assert_eq!(l.len(), 1, "{log}");
    assert!(l[0].contains("README") && l[0].contains("missing"), "{log}");
    let l = line_for(&corrupt);
    assert_eq!(l.len(), 1, "{log}");
    assert!(
        l[0].contains("names/with space.txt") && l[0].contains("corrupt"),
        "{log}"
    );
}

#[test]
fn errors_are_clear_and_leave_nothing_mounted() {
    if !fuse_available() {
        return;
    }
    let (t, _) = fixture();
    let mnt = tempfile::tempdir().unwrap();
    let stderr = |args: &[&dyn AsRef<std::ffi::OsStr>]| pvrfs(args).fails();
    let e = stderr(&[&"mount", &t.path(), &"7", &mnt.path()]);
    assert!(e.contains("unknown revision '7'"), "{e}");
    let e = stderr(&[&"mount", &mnt.path(), &"latest", &mnt.path()]);
    assert!(e.contains("not a pvr repository"), "{e}");
    let e = stderr(&[&"mount", &t.path(), &"latest", &mnt.path().join("nope")]);
    assert!(e.contains("does not exist"), "{e}");
    assert!(!is_mount_point(mnt.path()));
    let m = Mount::new(t.path(), "latest", &[]);
    let e = stderr(&[&"mount", &t.path(), &"latest", &m.path()]);
    assert!(e.contains("busy"), "{e}");
    let e = stderr(&[&"umount", &mnt.path()]);
    assert!(e.contains("not a mount point"), "{e}");
    let e = stderr(&[&"umount", &"/proc"]);
    assert!(e.contains("not a pvrfs mount"), "{e}");
}

#[test]
fn a_killed_daemon_leaves_a_mount_that_umount_clears() {
    if !fuse_available() {
        return;
    }
    let (t, _) = fixture();
    let m = Mount::new(t.path(), "latest", &[]);
    let canon = std::fs::canonicalize(m.path()).unwrap();
    assert_eq!(std::fs::read(m.join("README")).unwrap(), b"hello\n");
    let pid = daemon_pid(&canon).expect("daemon process");
    kill_daemon(&canon);
    // Cached attributes may still answer; anything reaching the daemon gets ENOTCONN
    // (ECONNABORTED while the kernel is still tearing the connection down, ECANCELED while
    // it cancels a FUSE-over-io_uring ring).
    let e = errno_of(std::fs::read(m.join("app/deep/er/still/file.txt")));
    assert!(
        pvrfs::fuse::mounts::is_dead_errno(e),
        "errno {e} from a dead mount (pid {pid})"
    );
    let e = pvrfs(["mount"])
        .arg(t.path())
        .arg("latest")
        .arg(m.path())
        .run()
        .out;
    assert!(String::from_utf8_lossy(&e.stderr).contains("dead FUSE mount"));
    let out = pvrfs(["umount"]).arg(m.path()).run().out;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!m.is_mounted());
}

#[test]
fn a_sandbox_runs_programs_from_the_mounted_revision() {
    if !fuse_available() {
        return;
    }
    if std::process::Command::new("bwrap")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("bwrap is required for this test (scripts/setup-deps installs it)");
    }
    // A tiny root filesystem: a script, a real ELF program (run through the host's loader,
    // since the format carries no exec bits), and empty dirs to bind the host's libraries on.
    let mut t = TestRepo::new();
    let env_bin = std::fs::read("/usr/bin/env").unwrap();
    t.set(
        "app/hello.sh",
        Content::Blob(b"echo \"hello from $0\"; cat /etc/app.json\n"),
    )
    .set("etc/app.json", Content::Json(r#"{"greeting":"hi"}"#))
    .set("app/env", Content::Blob(&env_bin));
    for d in ["usr", "bin", "lib", "lib64", "proc", "dev", "tmp"] {
        t.set(&format!("{d}/.keep"), Content::Blob(b""));
    }
    t.commit("rootfs");
    let m = Mount::new(t.path(), "latest", &["--allow-other"]);
    let out = std::process::Command::new("bwrap")
        .arg("--ro-bind")
        .arg(m.path())
        .arg("/")
        .args(["--ro-bind", "/usr", "/usr", "--ro-bind", "/usr/bin", "/bin"])
        .args([
            "--ro-bind",
            "/usr/lib",
            "/lib",
            "--ro-bind",
            "/usr/lib64",
            "/lib64",
        ])
        .args([
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--unshare-all",
            "--die-with-parent",
        ])
        .args([
            "/bin/sh",
            "-c",
            "sh /app/hello.sh && /lib64/ld-linux-x86-64.so.2 /app/env -i SANDBOX=yes",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        "hello from /app/hello.sh\n{\n    \"greeting\": \"hi\"\n}SANDBOX=yes\n"
    );
}

/// The daemon log of the mounts of `t` (all of them, concatenated).
fn daemon_log(t: &TestRepo) -> String {
    std::fs::read_dir(t.repo.ext_dir().join("logs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect()
}

#[test]
fn blob_reads_bypass_the_daemon_with_passthrough_and_go_through_it_without() {
    if !fuse_available() {
        return;
    }
    for (mode, expect_reads) in [("always", false), ("never", true)] {
        let (t, _) = fixture();
        let ino;
        {
            let m = Mount::with_env(
                t.path(),
                "latest",
                &["--passthrough", mode],
                &[("RUST_LOG", "fuser::request=debug,pvrfs::fuse::uring=debug")],
            );
            let big = m.join("blobs/big.img");
            ino = std::fs::metadata(&big).unwrap().ino();
            assert_eq!(std::fs::read(&big).unwrap().len(), 3_000_000);
        }
        let log = daemon_log(&t);
        let reads = log
            .lines()
            .filter(|l| l.contains(&format!("ino {ino:#018x} READ ")))
            .count();
        assert_eq!(
            reads > 0,
            expect_reads,
            "--passthrough {mode}: {reads} READ requests reached the daemon"
        );
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("ino {ino:#018x} OPEN"))),
            "{mode}"
        );
    }
}

/// The READ requests of inode `ino` in a daemon log (either transport), as (offset, size).
fn reads_of(log: &str, ino: u64) -> Vec<(u64, u64)> {
    let tag = format!("ino {ino:#018x} READ ");
    log.lines()
        .filter_map(|l| l.split_once(&tag).map(|(_, rest)| rest))
        .map(|rest| {
            let field = |name: &str| -> u64 {
                let v = rest.split(name).nth(1).expect(rest);
                let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().expect(rest)
            };
            (field("offset "), field("size "))
        })
        .collect()
}

/// The default (`--passthrough auto`) serves both workloads: blobs of 1 MiB or more are handed
/// to the kernel (passthrough: their reads never reach the daemon) while files are opened at a
/// low rate; once small files are opened fast (`fs::opens::SWITCH_OPENS` within a second) the
/// mount switches to no-open mode for good: no OPEN reaches the daemon any more, and blob data
/// then comes through it into the page cache, once.
#[test]
fn auto_passes_blobs_through_until_small_files_are_opened_fast() {
    use pvrfs::fs::opens::SWITCH_OPENS;
    if !fuse_available() {
        return;
    }
    let (t, _) = fixture();
    let big_bytes;
    let (readme, big);
    let opens_before_switch;
    {
        let m = Mount::with_env(
            t.path(),
            "latest",
            &[],
            &[("RUST_LOG", "fuser::request=debug,pvrfs::fuse::uring=debug")],
        );
        readme = std::fs::metadata(m.join("README")).unwrap().ino();
        big = std::fs::metadata(m.join("blobs/big.img")).unwrap().ino();
        big_bytes = std::fs::read(m.join("blobs/big.img")).unwrap();
        assert_eq!(big_bytes.len(), 3_000_000);
        let log = daemon_log(&t);
        assert!(
            reads_of(&log, big).is_empty(),
            "the blob was not passed through"
        );
        // A burst of small-file opens: the first SWITCH_OPENS reach the daemon, then none.
        for _ in 0..2 * SWITCH_OPENS {
            assert_eq!(std::fs::read(m.join("README")).unwrap(), b"hello\n");
        }
        opens_before_switch = daemon_log(&t).matches(" OPEN ").count();
        for _ in 0..50 {
            assert_eq!(
                std::fs::read(m.join("app/bin/tool")).unwrap(),
                b"#!/bin/sh\necho tool\n"
            );
        }
        // After the switch the blob comes through the daemon, the same bytes.
        assert_eq!(std::fs::read(m.join("blobs/big.img")).unwrap(), big_bytes);
        assert_eq!(std::fs::read(m.join("blobs/big.img")).unwrap(), big_bytes);
    }
    let log = daemon_log(&t);
    let opens = log.matches(" OPEN ").count();
    // 1 blob open, SWITCH_OPENS - 1 cached README opens, the one answered ENOSYS
    assert_eq!(opens_before_switch, 1 + SWITCH_OPENS as usize, "{log}");
    assert_eq!(
        opens, opens_before_switch,
        "OPEN reached the daemon after the switch"
    );
    assert_eq!(
        reads_of(&log, readme).len(),
        1,
        "README read once, then cached"
    );
    let bytes: u64 = reads_of(&log, big).iter().map(|r| r.1).sum();
    assert!(
        (3_000_000..3_000_000 + (1 << 20)).contains(&bytes),
        "after the switch the blob came through the daemon once ({bytes} bytes)"
    );
}

/// The kernel refuses cached reads of an inode while a passthrough open of it is alive (EIO, or
/// an empty read), so an auto mount does not switch to no-open mode while a blob opened with
/// passthrough is still open: other readers keep getting its bytes, and the switch comes with
/// the first burst of small opens after it was closed.
#[test]
fn a_blob_held_open_keeps_readable_and_delays_the_switch() {
    use pvrfs::fs::opens::SWITCH_OPENS;
    if !fuse_available() {
        return;
    }
    let (t, _) = fixture();
    let m = Mount::with_env(
        t.path(),
        "latest",
        &[],
        &[("RUST_LOG", "fuser::request=debug,pvrfs::fs::opens=info")],
    );
    let want = std::fs::read(m.join("blobs/big.img")).unwrap();
    let held = std::fs::File::open(m.join("blobs/big.img")).unwrap();
    let burst = || {
        for _ in 0..2 * SWITCH_OPENS {
            assert_eq!(std::fs::read(m.join("README")).unwrap(), b"hello\n");
        }
    };
    burst();
    assert_eq!(std::fs::read(m.join("blobs/big.img")).unwrap(), want);
    assert!(
        !daemon_log(&t).contains("no-open mode"),
        "switched while a blob was held"
    );
    drop(held);
    // RELEASE reaches the daemon asynchronously after close.
    std::thread::sleep(std::time::Duration::from_millis(200));
    burst();
    assert!(
        daemon_log(&t).contains("no-open mode"),
        "no switch after the blob closed"
    );
    assert_eq!(std::fs::read(m.join("blobs/big.img")).unwrap(), want);
}

/// As root, the mount's readahead window is widened (`fuse::readahead`), so that blob data
/// comes in READ requests of 1 MiB (FUSE's `max_pages`) instead of the kernel default of
/// 128 KiB.
#[test]
fn blob_reads_come_in_large_requests() {
    if !fuse_available() {
        return;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: only root may widen a mount's readahead (/sys/class/bdi)");
        return;
    }
    let (t, _) = fixture();
    let big;
    {
        let m = Mount::with_env(
            t.path(),
            "latest",
            &["--passthrough", "never"],
            &[("RUST_LOG", "fuser::request=debug,pvrfs::fuse::uring=debug")],
        );
        let dev = std::fs::metadata(m.path()).unwrap().dev();
        let knob = format!(
            "/sys/class/bdi/{}:{}/read_ahead_kb",
            rustix::fs::major(dev),
            rustix::fs::minor(dev)
        );
        assert_eq!(
            std::fs::read_to_string(&knob).unwrap().trim(),
            pvrfs::fuse::readahead::READAHEAD_KB.to_string()
        );
        big = std::fs::metadata(m.join("blobs/big.img")).unwrap().ino();
        assert_eq!(
            std::fs::read(m.join("blobs/big.img")).unwrap().len(),
            3_000_000
        );
    }
    let reads = reads_of(&daemon_log(&t), big);
    assert!(
        reads.iter().any(|r| r.1 == 1 << 20),
        "no 1 MiB READ request: {reads:?}"
    );
}

/// A cold blob read through the daemon (no-open mode) comes straight from the disk into the
/// replies (`fs::direct`; on io_uring the ring reads it into its payload buffer): the object's
/// own pages stay out of the page cache, so the bytes are cached once, in the mount's pages,
/// and they are right. On both transports (io_uring where the kernel offers it).
#[test]
fn cold_blobs_read_through_the_daemon_are_cached_once() {
    if !fuse_available() {
        return;
    }
    for uring in ["0", "1"] {
        let (t, _) = fixture();
        let object = objects_of(&t)
            .into_iter()
            .max_by_key(|p| std::fs::metadata(p).unwrap().len())
            .unwrap();
        let file = std::fs::File::open(&object).unwrap();
        if let Err(e) = pvrfs::fs::direct::DirectFile::reopen(&file) {
            return eprintln!(
                "NOTE: skipped: the test directory's file system offers no direct I/O ({e})"
            );
        }
        let m = Mount::with_env(
            t.path(),
            "latest",
            &["--passthrough", "never"],
            &[("PVRFS_FUSE_URING", uring)],
        );
        let expected = std::fs::read(&object).unwrap();
        evict(&object);
        if cached_pages(&object) > 0 {
            // E.g. a store on tmpfs, whose pages are the files themselves.
            return eprintln!("NOTE: skipped: the object's pages cannot be dropped here");
        }
        let got = std::fs::read(m.join("blobs/big.img")).unwrap();
        assert!(got == expected, "PVRFS_FUSE_URING={uring}: wrong bytes");
        let pages = expected.len().div_ceil(4096);
        let cached = cached_pages(&object);
        // Reads under 128 KiB (the first of a file, the tail) may come through the page cache.
        assert!(
            cached * 4 < pages,
            "PVRFS_FUSE_URING={uring}: {cached} of {pages} pages of the object were cached by a read through the mount"
        );
    }
}

/// The object files of a test repository.
fn objects_of(t: &TestRepo) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(t.path().join(".pvr/objects"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// pvr's own repositories: `.pvr/json` as pvr wrote it, objects in a pool outside the repo
/// (found through `ObjectsDir`), no pvrfs history. Inline files must read back exactly as the
/// reference pvr's checkout wrote them (tests/fixtures/.../repo-renderings).
#[test]
fn pvr_made_repositories_mount_and_match_pvr_checkout() {
    if !fuse_available() {
        return;
    }
    let cases =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/canonical-json/repo-renderings");
    let mut checked = 0;
    for case in std::fs::read_dir(&cases).unwrap() {
        let case = case.unwrap().path();
        let Ok(steps) = std::fs::read_to_string(case.join("steps.md")) else {
            continue;
        };
        let lines: Vec<&str> = steps.lines().collect();
        for (flavour, extra) in [
            ("checkout-default", &[][..]),
            ("checkout-canonical", &["--canonical"][..]),
        ] {
            // "NN. `pvr checkout ...` → exit 0; files: NN-rc, NN-json" then "→ tree saved as expected/<flavour>/"
            let Some(i) = lines
                .iter()
                .position(|l| l.contains(&format!("expected/{flavour}/")))
            else {
                continue;
            };
            let step = lines[i - 1].split('.').next().unwrap().trim();
            let state_bytes = std::fs::read(case.join(format!("expected/{step}-json"))).unwrap();
            let work = tempfile::tempdir().unwrap();
            let pool = tempfile::tempdir().unwrap();
            std::fs::create_dir(work.path().join(".pvr")).unwrap();
            std::fs::write(work.path().join(".pvr/json"), &state_bytes).unwrap();
            let config = format!(
                "{{\n\t\"DefaultGetUrl\": \"\",\n\t\"DefaultPutUrl\": \"\",\n\t\"DefaultPostUrl\": \"\",\n\t\"ObjectsDir\": \"{}\",\n\t\"AccessTokens\": null,\n\t\"RefreshTokens\": null\n}}",
                pool.path().display()
            );
            std::fs::write(work.path().join(".pvr/config"), config).unwrap();
            let state = pvrfs::state::State::from_json_bytes(&state_bytes, "fixture").unwrap();
            let m = Mount::new(work.path(), "latest", extra);
            // an empty checkout was saved as no directory at all
            let dir = case.join("expected").join(flavour);
            let expected = if dir.exists() { files(&dir) } else { vec![] };
            let inline: Vec<_> = state
                .iter()
                .filter(|(_, e)| matches!(e, pvrfs::state::Entry::Inline(_)))
                .map(|(k, _)| k.clone())
                .collect();
            for (path, bytes) in &expected {
                if inline.contains(path) {
                    assert_eq!(
                        &std::fs::read(m.join(path)).unwrap(),
                        bytes,
                        "{} {flavour} {path}",
                        case.display()
                    );
                    checked += 1;
                } else {
                    assert!(m.join(path).exists(), "{path}");
                }
            }
            for k in &inline {
                assert!(
                    expected.iter().any(|(p, _)| p == k),
                    "{k} mounted but not in pvr's checkout"
                );
            }
        }
    }
    assert!(checked >= 10, "only {checked} files compared");
}

#[test]
fn uid_and_gid_options_own_every_file() {
    if !fuse_available() {
        return;
    }
    let (t, _) = fixture();
    let m = Mount::new(t.path(), "latest", &["--uid", "1234", "--gid", "4321"]);
    for p in ["", "README", "app", "app/run.json"] {
        let meta = std::fs::metadata(m.join(p)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1234, 4321), "{p}");
    }
}

#[test]
fn relative_paths_and_dash_c_work_with_the_background_daemon() {
    if !fuse_available() {
        return;
    }
    let (t, _) = fixture();
    let parent = t.path().parent().unwrap();
    let repo_name = t.path().file_name().unwrap();
    // the guard owns the mountpoint, which lives beside the repo
    let m = Mount {
        dir: tempfile::tempdir_in(parent).unwrap(),
    };
    let mnt_name = m.path().file_name().unwrap();
    let out = common::Pvrfs::new()
        .command()
        .current_dir("/")
        .arg("-C")
        .arg(parent.strip_prefix("/").unwrap())
        .arg("mount")
        .arg(repo_name)
        .arg("1")
        .arg(mnt_name)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("mounted revision 1"));
    assert_eq!(std::fs::read(m.join("README")).unwrap(), b"hello\n");
}

#[test]
fn sigterm_to_the_daemon_unmounts_cleanly() {
    if !fuse_available() {
        return;
    }
    let (t, _) = fixture();
    let m = Mount::new(t.path(), "latest", &[]);
    let pid = daemon_pid(m.path()).expect("daemon process");
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    for _ in 0..1000 {
        if !m.is_mounted() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!m.is_mounted(), "SIGTERM must unmount");
}

/// A name the revision lacks is answered once and then kept by the kernel as a negative entry
/// (the kernel backend's overlayfs asks the lower layer about every new name it creates).
#[test]
fn missing_names_are_cached_as_negative_entries() {
    if !fuse_available() {
        return;
    }
    let (t, _) = fixture();
    {
        let m = Mount::with_env(
            t.path(),
            "latest",
            &[],
            &[("RUST_LOG", "fuser::request=debug")],
        );
        for _ in 0..3 {
            let e = std::fs::metadata(m.join("no-such-name")).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        }
    }
    let log = daemon_log(&t);
    let lookups = log
        .lines()
        .filter(|l| l.contains("LOOKUP") && l.contains("no-such-name"))
        .count();
    assert_eq!(lookups, 1, "{log}");
}

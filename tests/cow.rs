//! Real copy-on-write mounts (`pvrfs mount --rw`): every operation through std/libc on the
//! mount, the tool scenarios (editor save, appends, git, cc/make, tar), commit/status/diff/reset
//! from the CLI, remount and SIGKILL recovery. The `Mount` guard unmounts, also on panic.

use pvrfs_testkit as common;

use common::{fuse_available, kill_daemon, Content, Mount, Pvrfs, TestRepo};
use pvrfs::state::Entry;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

common::cow_tests!(
    basic_operations_behave_as_on_a_local_fs,
    rename_flags_fsync_locks_and_mmap,
    commit_status_diff_and_reset_from_the_cli,
    overlay_survives_umount_and_sigkill_and_is_exclusive,
    tools_work_in_the_tree_editor_appends_git_cc_make_tar,
    concurrent_readers_and_writers_see_each_others_data,
    fifos_sockets_and_devices_live_in_the_overlay,
    xattrs_and_dot_pvr_are_refused,
    allow_other_enforces_modes_and_owners,
    descriptors_open_across_a_reset,
    cargo_builds_a_tiny_crate_in_the_tree,
    char_device_0_0_is_a_whiteout_on_kernel,
    commit_while_a_file_is_written_is_whole_or_refused,
    mounts_and_the_control_socket_say_which_backend,
    umount_returns_once_the_daemon_is_gone_so_a_remount_works_at_once,
    inode_flag_ioctls_are_unsupported_quietly,
    metadata_changes_of_base_files_commit_their_objects_unread,
);

fn fixture() -> TestRepo {
    let mut t = TestRepo::new();
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    t.set("README", Content::Blob(b"hello\n"))
        .set("config.json", Content::Json(r#"{"a":1,"b":[true,null]}"#))
        .set("app/bin/tool", Content::Blob(b"#!/bin/sh\necho tool\n"))
        .set("app/data.txt", Content::Blob(b"data"))
        .set("blobs/big.img", Content::Blob(&big));
    t.commit("fixture");
    t
}

fn rw(t: &TestRepo) -> Mount {
    Mount::new(t.path(), "latest", &["--rw"])
}

/// `pvrfs ARGS` run with its cwd in `dir`.
fn cli(dir: &Path, args: &[&str]) -> Output {
    Pvrfs::new()
        .command()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run pvrfs")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("HOME", dir)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "sh -c {script:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn basic_operations_behave_as_on_a_local_fs() {
    if !fuse_available() {
        return;
    }
    let t = fixture();
    let m = rw(&t);
    // create, O_EXCL
    fs::write(m.join("new.txt"), b"new").unwrap();
    assert_eq!(fs::read(m.join("new.txt")).unwrap(), b"new");
    let excl = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.join("new.txt"));
    assert_eq!(errno_of(excl), libc::EEXIST);
    // write into a base file: copy-up on open-for-write, size honest
    {
        let mut f = OpenOptions::new()
            .write(true)
            .open(m.join("README"))
            .unwrap();
        f.seek(SeekFrom::Start(6)).unwrap();
        f.write_all(b"world\n").unwrap();
    }
    assert_eq!(fs::read(m.join("README")).unwrap(), b"hello\nworld\n");
    assert_eq!(fs::metadata(m.join("README")).unwrap().len(), 12);
    // append
    for line in ["a\n", "b\n"] {
        let mut f = OpenOptions::new()
            .append(true)
            .open(m.join("app/data.txt"))
            .unwrap();
        f.write_all(line.as_bytes()).unwrap();
    }
    assert_eq!(fs::read(m.join("app/data.txt")).unwrap(), b"dataa\nb\n");
    // truncate and ftruncate
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.join("new.txt"))
        .unwrap();
    assert_eq!(fs::metadata(m.join("new.txt")).unwrap().len(), 0);
    let f = OpenOptions::new()
        .write(true)
        .open(m.join("blobs/big.img"))
        .unwrap();
    f.set_len(10).unwrap();
    drop(f);
    assert_eq!(
        fs::read(m.join("blobs/big.img")).unwrap(),
        (0..10u8).collect::<Vec<_>>()
    );
    // mkdir / rmdir
    fs::create_dir(m.join("d")).unwrap();
    fs::write(m.join("d/f"), b"x").unwrap();
    assert_eq!(errno_of(fs::remove_dir(m.join("d"))), libc::ENOTEMPTY);
    assert_eq!(fs::metadata(m.join("d")).unwrap().nlink(), 2);
    // app, blobs, d + . + ..; overlayfs counts no links of a directory merged with a lower
    // one (docs/SEMANTICS.md)
    let root_links = if common::cow() == "kernel" { 1 } else { 5 };
    assert_eq!(fs::metadata(m.path()).unwrap().nlink(), root_links);
    // rename over an existing file, and of a directory
    fs::rename(m.join("d/f"), m.join("README")).unwrap();
    assert_eq!(fs::read(m.join("README")).unwrap(), b"x");
    fs::rename(m.join("app"), m.join("d/app")).unwrap();
    assert_eq!(
        fs::read(m.join("d/app/bin/tool")).unwrap(),
        b"#!/bin/sh\necho tool\n"
    );
    fs::remove_dir(m.join("d/app/bin")).unwrap_err();
    // symlink / readlink, hard link
    std::os::unix::fs::symlink("../README", m.join("d/link")).unwrap();
    assert_eq!(
        fs::read_link(m.join("d/link")).unwrap(),
        Path::new("../README")
    );
    assert_eq!(fs::read(m.join("d/link")).unwrap(), b"x");
    fs::hard_link(m.join("README"), m.join("hard")).unwrap();
    assert_eq!(fs::metadata(m.join("README")).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(m.join("README")).unwrap().ino(),
        fs::metadata(m.join("hard")).unwrap().ino()
    );
    // chmod, utimens
    fs::set_permissions(m.join("hard"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        fs::metadata(m.join("README")).unwrap().mode() & 0o7777,
        0o600
    );
    let c = CString::new(m.join("hard").as_os_str().as_bytes()).unwrap();
    let times = [
        libc::timespec {
            tv_sec: 1_000_000,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: 2_000_000,
            tv_nsec: 0,
        },
    ];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) },
        0
    );
    assert_eq!(fs::metadata(m.join("hard")).unwrap().mtime(), 2_000_000);
    // unlink of an open file: still readable through its handle
    let mut f = fs::File::open(m.join("hard")).unwrap();
    fs::remove_file(m.join("hard")).unwrap();
    fs::remove_file(m.join("README")).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "x");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    // statfs answers
    let st = rustix::fs::statvfs(m.path()).unwrap();
    assert!(st.f_bsize > 0);
    // the revision was never modified
    let head = t.repo.head_state().unwrap();
    assert!(head.get("README").is_some());
}

fn rename_flags_fsync_locks_and_mmap() {
    if !fuse_available() {
        return;
    }
    for extra in [&["--rw"][..], &["--rw", "--passthrough", "never"][..]] {
        let t = fixture();
        let m = Mount::new(t.path(), "latest", extra);
        rename_fsync_locks_mmap(&m);
    }
}

fn rename_fsync_locks_mmap(m: &Mount) {
    let cpath = |p: &str| CString::new(m.join(p).as_os_str().as_bytes()).unwrap();
    fs::write(m.join("a"), b"A").unwrap();
    fs::write(m.join("b"), b"B").unwrap();
    let renameat2 = |a: &str, b: &str, flags: u32| unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cpath(a).as_ptr(),
            libc::AT_FDCWD,
            cpath(b).as_ptr(),
            flags,
        )
    };
    assert_eq!(renameat2("a", "b", libc::RENAME_NOREPLACE), -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EEXIST)
    );
    assert_eq!(renameat2("a", "b", libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read(m.join("a")).unwrap(), b"B");
    assert_eq!(fs::read(m.join("b")).unwrap(), b"A");
    // fsync / fdatasync / fsyncdir
    let f = OpenOptions::new().write(true).open(m.join("a")).unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    fs::File::open(m.path()).unwrap().sync_all().unwrap();
    // flock and POSIX locks are exclusive among openers
    let g = OpenOptions::new().write(true).open(m.join("a")).unwrap();
    use std::os::fd::AsRawFd;
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    assert_eq!(
        unsafe { libc::flock(g.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        -1
    );
    let mut lk: libc::flock = unsafe { std::mem::zeroed() };
    lk.l_type = libc::F_WRLCK as i16;
    lk.l_whence = libc::SEEK_SET as i16;
    assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &lk) }, 0);
    drop((f, g));
    // shared writable mmap reaches the file
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("blobs/big.img"))
        .unwrap();
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        std::ptr::copy_nonoverlapping(b"MMAP".as_ptr(), p.cast::<u8>(), 4);
        assert_eq!(libc::msync(p, 4096, libc::MS_SYNC), 0);
        libc::munmap(p, 4096);
    }
    drop(f);
    let mut head = [0u8; 6];
    fs::File::open(m.join("blobs/big.img"))
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(&head, b"MMAP\x04\x05");
    assert_eq!(
        fs::metadata(m.join("blobs/big.img")).unwrap().len(),
        2_000_000
    );
}

fn commit_status_diff_and_reset_from_the_cli() {
    if !fuse_available() {
        return;
    }
    let t = fixture();
    let m = rw(&t);
    fs::write(m.join("app/new.txt"), b"fresh").unwrap();
    fs::remove_file(m.join("README")).unwrap();
    fs::write(m.join("config.json"), br#"{"a":2}"#).unwrap();
    fs::create_dir(m.join("empty")).unwrap();
    let status = ok(cli(&m.join("app"), &["status"]));
    assert_eq!(status, "A app/new.txt\nA empty/\nD README\nC config.json\n");
    let diff = ok(cli(m.path(), &["diff"]));
    assert!(diff.contains("\"README\": null"), "{diff}");
    // invalid JSON: refused, nothing committed, overlay intact
    fs::write(m.join("bad.json"), b"{nope").unwrap();
    let out = cli(m.path(), &["commit", "-m", "x"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.json"));
    assert_eq!(t.repo.latest().unwrap().rev, 1);
    fs::remove_file(m.join("bad.json")).unwrap();
    // commit from inside the mount; the mount continues on the new revision
    let out = cli(&m.join("app"), &["commit", "-m", "from the mount"]);
    let text = ok_with_err(out);
    assert!(text.0.contains("Committed revision 2"), "{text:?}");
    assert!(!text.1.contains("warning"), "{text:?}");
    let head = t.repo.latest().unwrap();
    assert_eq!(head.rev, 2);
    let state = t.repo.head_state().unwrap();
    assert!(state.meta().dirs.contains("empty"));
    assert!(state.get("README").is_none());
    assert!(matches!(state.get("app/new.txt"), Some(Entry::Object(_))));
    assert_eq!(ok(cli(m.path(), &["status"])), "");
    assert_eq!(fs::read(m.join("app/new.txt")).unwrap(), b"fresh");
    // head moved since the base: refused, overlay kept
    fs::write(m.join("later.txt"), b"later").unwrap();
    let mut moved = t.repo.head_state().unwrap();
    let id = t.repo.store().put_bytes(b"o").unwrap();
    moved.insert("other", Entry::Object(id)).unwrap();
    common::commit(&t.repo, &moved);
    let out = cli(m.path(), &["commit", "-m", "stale"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("moved"));
    assert_eq!(ok(cli(m.path(), &["status"])), "A later.txt\n");
    // A deleted file whose absence the kernel has cached (negative entries live long) ...
    fs::remove_file(m.join("app/bin/tool")).unwrap();
    fs::remove_file(m.join("config.json")).unwrap();
    assert!(!m.join("app/bin/tool").exists() && !m.join("config.json").exists());
    // reset --mount discards; reset without --mount inside a mount refuses
    assert!(!cli(m.path(), &["reset"]).status.success());
    ok(cli(
        Path::new("/"),
        &["reset", "--mount", m.path().to_str().unwrap()],
    ));
    assert!(!m.join("later.txt").exists());
    assert_eq!(fs::read(m.join("app/new.txt")).unwrap(), b"fresh");
    // ... is back after the reset, at the top and deeper down.
    assert_eq!(
        fs::read(m.join("app/bin/tool")).unwrap(),
        b"#!/bin/sh\necho tool\n"
    );
    // (as revision 2, the overlay's base, has it)
    assert_eq!(
        fs::read_to_string(m.join("config.json")).unwrap(),
        "{\n    \"a\": 2\n}"
    );
}

fn ok_with_err(out: Output) -> (String, String) {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (ok(out), err)
}

fn overlay_survives_umount_and_sigkill_and_is_exclusive() {
    if !fuse_available() {
        return;
    }
    let t = fixture();
    let m = rw(&t);
    fs::write(m.join("kept.txt"), b"kept").unwrap();
    {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(m.join("synced"))
            .unwrap();
        (&f).write_all(b"durable").unwrap();
        f.sync_all().unwrap();
    }
    // a second mount of the same overlay is refused
    let other = tempfile::tempdir().unwrap();
    let out = Pvrfs::new()
        .command()
        .arg("mount")
        .arg(t.path())
        .arg("latest")
        .arg(other.path())
        .arg("--rw")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("overlay 'default'") && err.contains("locked"),
        "{err}"
    );
    // another overlay of the same repository can be mounted beside it
    let m_other = Mount::new(t.path(), "latest", &["--rw", "--overlay", "second"]);
    assert!(!m_other.join("kept.txt").exists());
    drop(m_other);
    // remounting an overlay on another revision than its base is refused
    let out = Pvrfs::new()
        .command()
        .arg("mount")
        .arg(t.path())
        .arg("0")
        .arg(other.path())
        .args(["--rw", "--overlay", "second"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("made on revision 1"),
        "{err}"
    );
    // SIGKILL the daemon, clear the dead mount, remount: everything is back
    kill_daemon(m.path());
    ok(Pvrfs::new()
        .command()
        .arg("umount")
        .arg(m.path())
        .output()
        .unwrap());
    let m2 = rw(&t);
    assert_eq!(fs::read(m2.join("kept.txt")).unwrap(), b"kept");
    assert_eq!(fs::read(m2.join("synced")).unwrap(), b"durable");
    drop(m2);
    let m3 = rw(&t);
    assert_eq!(fs::read(m3.join("kept.txt")).unwrap(), b"kept");
    drop(m);
}

fn tools_work_in_the_tree_editor_appends_git_cc_make_tar() {
    if !fuse_available() {
        return;
    }
    let t = fixture();
    let m = rw(&t);
    let d = m.path();
    // An editor's save: write a temp file, fsync it, rename it over the original (vim's way
    // with `backupcopy=no`), then the same through vim itself.
    sh(
        d,
        "printf 'edited\\n' > .README.swp && sync .README.swp && mv .README.swp README && cat README",
    );
    assert_eq!(fs::read(m.join("README")).unwrap(), b"edited\n");
    sh(
        d,
        "vim -Nu NONE -n -es -c 'set backupcopy=no writebackup' -c '%s/edited/by vim/' -c 'wq' README",
    );
    assert_eq!(fs::read(m.join("README")).unwrap(), b"by vim\n");
    // >> appends from many processes
    sh(d, "for i in 1 2 3 4 5; do echo line$i >> log.txt; done");
    assert_eq!(
        fs::read_to_string(m.join("log.txt")).unwrap(),
        "line1\nline2\nline3\nline4\nline5\n"
    );
    // git in the tree
    sh(
        d,
        "git init -q proj && cd proj && git config user.email t@e && git config user.name t \
         && echo one > f && git add f && git commit -qm one && echo two > f && git commit -qam two \
         && git checkout -q HEAD~1 && test \"$(cat f)\" = one && git checkout -q - && git status --short && git fsck --no-progress 2>&1",
    );
    assert_eq!(fs::read(m.join("proj/f")).unwrap(), b"two\n");
    // cc + make of a small C project
    fs::create_dir(m.join("c")).unwrap();
    fs::write(
        m.join("c/main.c"),
        "#include <stdio.h>\nint add(int,int);\nint main(void){printf(\"%d\\n\", add(2,3));return 0;}\n",
    )
    .unwrap();
    fs::write(m.join("c/add.c"), "int add(int a,int b){return a+b;}\n").unwrap();
    fs::write(
        m.join("c/Makefile"),
        "prog: main.o add.o\n\tcc -o $@ $^\n%.o: %.c\n\tcc -c -o $@ $<\n",
    )
    .unwrap();
    assert_eq!(sh(&m.join("c"), "make -s && ./prog"), "5\n");
    assert_eq!(
        sh(&m.join("c"), "touch add.c && make && ./prog")
            .lines()
            .last(),
        Some("5")
    );
    // tar x of an archive into the tree, compared with the same extraction on local disk
    let src = tempfile::tempdir().unwrap();
    sh(
        src.path(),
        "mkdir -p t/a/b && echo x > t/a/b/x && ln -s a/b/x t/sl && ln t/a/b/x t/hl && \
         head -c 300000 /dev/urandom > t/rand && chmod 755 t/a && mkdir out && tar cf out/t.tar t",
    );
    // (inside this test's own temp dir: both backends' runs of this test go at once)
    let tarball = src.path().join("out/t.tar");
    sh(d, &format!("tar xf {}", tarball.display()));
    let local = tempfile::tempdir().unwrap();
    sh(local.path(), &format!("tar xf {}", tarball.display()));
    assert_eq!(
        common::dump_dir(&m.join("t")),
        common::dump_dir(&local.path().join("t"))
    );
    fs::remove_file(tarball).unwrap();
    // and all of it commits
    ok(cli(d, &["commit", "-m", "tools"]));
    let state = t.repo.head_state().unwrap();
    assert!(state.get("proj/.git/HEAD").is_some());
    assert!(state.get("c/prog").is_some());
    assert!(state.get("t/rand").is_some());
}

/// Readers and writers of one file at once, in both orders (cached opens first, passthrough
/// opens first): every reader sees what the writer wrote, as on a local file system.
fn concurrent_readers_and_writers_see_each_others_data() {
    if !fuse_available() {
        return;
    }
    let t = fixture();
    let m = rw(&t);
    // a reader of the base content first, then a writer (copy-up)
    let reader = fs::File::open(m.join("app/data.txt")).unwrap();
    let writer = OpenOptions::new()
        .write(true)
        .open(m.join("app/data.txt"))
        .unwrap();
    use std::os::unix::fs::FileExt;
    writer.write_all_at(b"DATA", 0).unwrap();
    let mut buf = [0u8; 4];
    reader.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"DATA");
    drop((reader, writer));
    // a writer of a new file first, then a reader while it keeps writing (tail -f)
    let writer = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.join("log"))
        .unwrap();
    writer.write_all_at(b"one\n", 0).unwrap();
    let reader = fs::File::open(m.join("log")).unwrap();
    writer.write_all_at(b"two\n", 4).unwrap();
    let mut s = String::new();
    (&reader).read_to_string(&mut s).unwrap();
    assert_eq!(s, "one\ntwo\n");
    // a file open for writing across a commit keeps working
    ok(cli(m.path(), &["commit", "-m", "while open"]));
    writer.write_all_at(b"three\n", 8).unwrap();
    drop((reader, writer));
    assert_eq!(fs::read(m.join("log")).unwrap(), b"one\ntwo\nthree\n");
    assert_eq!(ok(cli(m.path(), &["status"])), "C log\n");
}

/// FIFOs, sockets and device nodes are overlay nodes: made by mknod/mkfifo/bind, typed in
/// `stat` and `readdir`, linkable, renamable, chmod/chown/utimens-able, working in the kernel
/// (a FIFO carries data, a socket accepts connections; devices cannot be opened: `nodev`),
/// reported and kept by a commit, and surviving umount and a SIGKILLed daemon.
fn fifos_sockets_and_devices_live_in_the_overlay() {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::net::{UnixListener, UnixStream};
    if !fuse_available() {
        return;
    }
    let root = unsafe { libc::geteuid() } == 0;
    let t = fixture();
    let m = rw(&t);
    let c = |m: &Mount, p: &str| CString::new(m.join(p).as_os_str().as_bytes()).unwrap();
    // mknod of a regular file makes an ordinary (empty) file
    assert_eq!(
        unsafe { libc::mknod(c(&m, "plain").as_ptr(), libc::S_IFREG | 0o644, 0) },
        0
    );
    assert!(m.join("plain").is_file());
    // a FIFO: data goes through it in the kernel
    assert_eq!(
        unsafe { libc::mkfifo(c(&m, "app/pipe").as_ptr(), 0o644) },
        0
    );
    let writer = {
        let p = m.join("app/pipe");
        std::thread::spawn(move || fs::write(p, b"through the pipe").unwrap())
    };
    assert_eq!(fs::read(m.join("app/pipe")).unwrap(), b"through the pipe");
    writer.join().unwrap();
    // a socket: bind makes the node, connections go through the kernel
    let listener = UnixListener::bind(m.join("sock")).unwrap();
    let mut client = UnixStream::connect(m.join("sock")).unwrap();
    client.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    listener.accept().unwrap().0.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    drop((client, listener));
    // a character device keeps its number, but a FUSE mount is nodev: it cannot be opened
    let null = libc::makedev(1, 3);
    let r = unsafe { libc::mknod(c(&m, "null").as_ptr(), libc::S_IFCHR | 0o666, null) };
    if root {
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        let md = fs::symlink_metadata(m.join("null")).unwrap();
        assert!(md.file_type().is_char_device());
        assert_eq!(md.rdev(), null);
        assert_eq!(errno_of(fs::File::open(m.join("null"))), libc::EACCES);
    } else {
        // only CAP_MKNOD may make devices (the kernel checks it before asking the daemon)
        assert_eq!(r, -1);
    }
    let kinds = |m: &Mount| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(m.path())
            .unwrap()
            .chain(fs::read_dir(m.join("app")).unwrap())
            .map(|e| {
                let e = e.unwrap();
                // `DirEntry::file_type` is readdir's d_type
                let ft = e.file_type().unwrap();
                let k = if ft.is_fifo() {
                    "fifo"
                } else if ft.is_socket() {
                    "socket"
                } else if ft.is_char_device() {
                    "char"
                } else {
                    return String::new();
                };
                format!("{} {k}", e.file_name().to_string_lossy())
            })
            .filter(|s| !s.is_empty())
            .collect();
        v.sort();
        v
    };
    let mut want = vec!["pipe fifo", "sock socket"];
    if root {
        want.insert(0, "null char");
    }
    assert_eq!(kinds(&m), want);
    // link, rename, chmod, chown, utimens, unlink, as for any file
    fs::hard_link(m.join("app/pipe"), m.join("pipe2")).unwrap();
    fs::rename(m.join("pipe2"), m.join("app/pipe3")).unwrap();
    fs::set_permissions(m.join("app/pipe"), fs::Permissions::from_mode(0o600)).unwrap();
    if root {
        std::os::unix::fs::lchown(m.join("app/pipe"), Some(12), Some(34)).unwrap();
    }
    let times = [
        libc::timespec {
            tv_sec: 1_000_000,
            tv_nsec: 5,
        },
        libc::timespec {
            tv_sec: 2_000_000,
            tv_nsec: 7,
        },
    ];
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c(&m, "sock").as_ptr(), times.as_ptr(), 0) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    fs::remove_file(m.join("plain")).unwrap();
    want.push("pipe3 fifo");
    want.sort();
    assert_eq!(kinds(&m), want);
    let check = |m: &Mount| {
        let p = fs::symlink_metadata(m.join("app/pipe")).unwrap();
        assert!(p.file_type().is_fifo());
        assert_eq!((p.mode() & 0o7777, p.nlink()), (0o600, 2));
        if root {
            assert_eq!((p.uid(), p.gid()), (12, 34));
            assert_eq!(fs::symlink_metadata(m.join("null")).unwrap().rdev(), null);
        }
        assert_eq!(
            p.ino(),
            fs::symlink_metadata(m.join("app/pipe3")).unwrap().ino()
        );
        let s = fs::symlink_metadata(m.join("sock")).unwrap();
        assert!(s.file_type().is_socket());
        assert_eq!((s.mtime(), s.mtime_nsec()), (2_000_000, 7));
    };
    check(&m);
    // commit: each one is reported, none is stored, all stay; status and diff do not list them
    fs::write(m.join("README"), b"changed\n").unwrap();
    let (out, err) = ok_with_err(cli(m.path(), &["commit", "-m", "specials"]));
    assert!(out.contains("Committed revision 2"), "{out}");
    for w in [
        "fifo 'app/pipe' is not stored (the pvr format has no special files)",
        "fifo 'app/pipe3' is not stored",
        "socket 'sock' is not stored",
    ] {
        assert!(err.contains(w), "missing {w:?} in:\n{err}");
    }
    if root {
        assert!(
            err.contains("character device 'null' is not stored"),
            "{err}"
        );
    }
    let head = t.repo.head_state().unwrap();
    let keys: Vec<&String> = head.iter().map(|(k, _)| k).collect();
    assert!(!keys
        .iter()
        .any(|k| k.contains("pipe") || *k == "sock" || *k == "null"));
    assert_eq!(ok(cli(m.path(), &["status"])), "");
    assert_eq!(ok(cli(m.path(), &["diff"])), "{}\n");
    check(&m);
    // umount and remount
    drop(m);
    let m = rw(&t);
    check(&m);
    assert_eq!(kinds(&m), want);
    // made, then the daemon is SIGKILLed: still there after remount
    assert_eq!(unsafe { libc::mkfifo(c(&m, "late").as_ptr(), 0o640) }, 0);
    kill_daemon(m.path());
    ok(Pvrfs::new()
        .command()
        .arg("umount")
        .arg(m.path())
        .output()
        .unwrap());
    let m2 = rw(&t);
    check(&m2);
    let late = fs::symlink_metadata(m2.join("late")).unwrap();
    assert!(late.file_type().is_fifo());
    assert_eq!(late.mode() & 0o7777, 0o640);
    for p in ["app/pipe", "app/pipe3", "sock", "late"] {
        fs::remove_file(m2.join(p)).unwrap();
    }
    drop(m);
}

/// What a pvr state cannot hold at all is refused with the errno a local fs without it would
/// give.
fn xattrs_and_dot_pvr_are_refused() {
    if !fuse_available() {
        return;
    }
    let t = fixture();
    let m = rw(&t);
    let c = |p: &str| CString::new(m.join(p).as_os_str().as_bytes()).unwrap();
    fs::write(m.join("plain"), b"").unwrap();
    let r = unsafe {
        libc::setxattr(
            c("plain").as_ptr(),
            c"user.x".as_ptr(),
            b"v".as_ptr().cast(),
            1,
            0,
        )
    };
    if common::cow() == "kernel" {
        // overlayfs keeps user xattrs in the upper layer and cannot refuse a top-level `.pvr`;
        // neither is committed (docs/SEMANTICS.md).
        assert_eq!(r, 0);
        // A base file lists no xattrs. The EROFS lower has only overlayfs's own, which
        // overlayfs hides; the FUSE lower says it has none to list (ENOSYS once, so that
        // copy-ups do not ask). Once copied up, the file lists what the upper holds.
        // (Asked with a buffer: overlayfs answers a size query with the lower's unfiltered size.)
        let mut buf = vec![0u8; 4096];
        let r = unsafe { libc::listxattr(c("README").as_ptr(), buf.as_mut_ptr().cast(), 4096) };
        let listed = (r, std::io::Error::last_os_error().raw_os_error());
        if common::kernel_lower() == "fuse" {
            assert_eq!(listed, (-1, Some(libc::EOPNOTSUPP)));
        } else {
            let names = String::from_utf8_lossy(&buf[..r.max(0) as usize]).into_owned();
            assert_eq!(r, 0, "{listed:?}: {names}");
        }
        fs::set_permissions(m.join("README"), fs::Permissions::from_mode(0o600)).unwrap();
        let r = unsafe { libc::listxattr(c("README").as_ptr(), std::ptr::null_mut(), 0) };
        assert!(r >= 0, "{}", std::io::Error::last_os_error());
        assert_eq!(fs::read(m.join("README")).unwrap(), b"hello\n");
        fs::create_dir(m.join(".pvr")).unwrap();
        fs::write(m.join(".pvr/x"), b"x").unwrap();
        let out = cli(m.path(), &["commit", "-m", "dot pvr"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains("'.pvr' at the top is not stored"), "{err}");
        let json = ok(cli(m.path(), &["json"]));
        assert!(
            !json.contains(".pvr/") && json.contains("\"plain\""),
            "{json}"
        );
    } else {
        assert_eq!(r, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EOPNOTSUPP)
        );
        assert_eq!(errno_of(fs::create_dir(m.join(".pvr"))), libc::EPERM);
        assert_eq!(unsafe { libc::mkfifo(c(".pvr").as_ptr(), 0o644) }, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EPERM)
        );
    }
    // read-only-only options are refused with --rw, not ignored
    let out = cli(
        t.path(),
        &["mount", ".", "latest", "/nonexistent", "--rw", "--verify"],
    );
    assert_eq!(out.status.code(), Some(2));
    // outside any mount, without --mount, status is the work tree's (the repo dir here)
    let out = cli(t.path(), &["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --mount naming something that is not a pvrfs mount: a clear refusal
    let out = cli(t.path(), &["status", "--mount", "."]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a pvrfs mount"));
}

/// With `--allow-other`, the kernel checks permissions from the overlay's modes and owners
/// (`default_permissions`), as on a local file system.
fn allow_other_enforces_modes_and_owners() {
    if !fuse_available() || unsafe { libc::geteuid() } != 0 {
        return;
    }
    let t = fixture();
    let m = Mount::new(t.path(), "latest", &["--rw", "--allow-other"]);
    fs::write(m.join("secret"), b"s").unwrap();
    fs::set_permissions(m.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(m.join("public"), b"p").unwrap();
    fs::set_permissions(m.join("public"), fs::Permissions::from_mode(0o644)).unwrap();
    let as_nobody = |script: &str| {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).current_dir("/");
        // SAFETY: only setgid/setuid between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.output().unwrap()
    };
    let mnt = m.path().display().to_string();
    assert!(as_nobody(&format!("cat {mnt}/public")).status.success());
    let out = as_nobody(&format!("cat {mnt}/secret"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    assert!(!as_nobody(&format!("echo x > {mnt}/public"))
        .status
        .success());
    assert!(!as_nobody(&format!("touch {mnt}/new")).status.success());
    // and a user who may write makes files owned by them
    fs::create_dir(m.join("shared")).unwrap();
    fs::set_permissions(m.join("shared"), fs::Permissions::from_mode(0o777)).unwrap();
    assert!(as_nobody(&format!("echo x > {mnt}/shared/mine"))
        .status
        .success());
    assert_eq!(fs::metadata(m.join("shared/mine")).unwrap().uid(), 65534);
    // but cannot commit: only the mounting user (or root) may
    let out = {
        use std::os::unix::process::CommandExt;
        let mut cmd = Pvrfs::new().command();
        cmd.args(["status", "--mount"]).arg(m.path());
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.output().unwrap()
    };
    assert!(
        !out.status.success(),
        "status as nobody: {:?} [{}] [{}]",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("only the user who mounted"));
    // a file owned by another user: stored, its owner reported (pvrfs records no owners)
    let before = t.repo.latest().unwrap().rev;
    let out = cli(m.path(), &["commit", "-m", "x"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out);
    assert!(
        err.contains("owner 65534:65534 of 'shared/mine' is not stored"),
        "{err}"
    );
    // modes and empty directories are stored
    fs::set_permissions(m.join("public"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(m.join("empty-dir")).unwrap();
    ok(cli(m.path(), &["commit", "-m", "modes"]));
    let state = t.repo.head_state().unwrap();
    assert_eq!(state.meta().file_mode("public"), 0o600);
    assert_eq!(state.meta().dir_mode("shared"), 0o777);
    assert!(state.meta().dirs.contains("empty-dir"));
    // nothing changed that a revision can hold (the owner stays in the overlay): no empty
    // revision
    let out = cli(m.path(), &["commit", "-m", "empty"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(ok(out), "Nothing to commit\n");
    assert!(err.contains("owner 65534:65534"), "{err}");
    assert_eq!(t.repo.latest().unwrap().rev, before + 2);
}

/// Files open across a reset keep working on their discarded data, and do not disturb the new
/// overlay's bookkeeping:
/// a file reopened for writing after the reset survives a commit while the old descriptor closes.
fn descriptors_open_across_a_reset() {
    if !fuse_available() {
        return;
    }
    let t = fixture();
    let m = Mount::new(t.path(), "latest", &["--rw", "--passthrough", "never"]);
    use std::os::unix::fs::FileExt;
    // the same inode before and after the reset (base numbering is the same)
    let old = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("app/data.txt"))
        .unwrap();
    old.write_all_at(b"discarded", 0).unwrap();
    ok(cli(
        Path::new("/"),
        &["reset", "--mount", m.path().to_str().unwrap()],
    ));
    assert_eq!(fs::read(m.join("app/data.txt")).unwrap(), b"data");
    // (the old descriptor still works on its discarded file)
    old.write_all_at(b"more", 9).unwrap();
    let new = OpenOptions::new()
        .write(true)
        .open(m.join("app/data.txt"))
        .unwrap();
    drop(old);
    std::thread::sleep(std::time::Duration::from_millis(200)); // RELEASE is asynchronous
                                                               // the new writer must still count as open: the commit keeps its upper file
    ok(cli(m.path(), &["commit", "-m", "after reset"]));
    new.write_all_at(b"still here", 0).unwrap();
    drop(new);
    assert_eq!(fs::read(m.join("app/data.txt")).unwrap(), b"still here");
}

/// `cargo build` of a tiny crate inside the tree (locks, hard links, renames, mmap of outputs).
fn cargo_builds_a_tiny_crate_in_the_tree() {
    if !fuse_available() || Command::new("cargo").arg("--version").output().is_err() {
        return;
    }
    let t = fixture();
    let m = rw(&t);
    fs::create_dir_all(m.join("hello/src")).unwrap();
    fs::write(
        m.join("hello/Cargo.toml"),
        "[package]\nname = \"hello\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    fs::write(
        m.join("hello/src/main.rs"),
        "fn main() { println!(\"hello from the mount\"); }\n",
    )
    .unwrap();
    let out = Command::new("cargo")
        .args(["run", "--offline", "--quiet"])
        .current_dir(m.join("hello"))
        .env_remove("CARGO_TARGET_DIR")
        .env("CARGO_INCREMENTAL", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the mount\n"
    );
    assert!(m.join("hello/Cargo.lock").exists());
}

/// overlayfs keeps whiteouts as character devices 0/0 and refuses to create one (EPERM); other
/// device numbers work on both backends (docs/SEMANTICS.md).
fn char_device_0_0_is_a_whiteout_on_kernel() {
    let t = fixture();
    let m = rw(&t);
    let c = |p: &str| CString::new(m.join(p).as_os_str().as_bytes()).unwrap();
    let r = unsafe { libc::mknod(c("zero").as_ptr(), libc::S_IFCHR | 0o644, 0) };
    if common::cow() == "kernel" {
        assert_eq!(r, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EPERM)
        );
    } else {
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    }
    let r = unsafe {
        libc::mknod(
            c("null").as_ptr(),
            libc::S_IFCHR | 0o644,
            libc::makedev(1, 3),
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(
        fs::symlink_metadata(m.join("null")).unwrap().rdev(),
        libc::makedev(1, 3)
    );
}

/// A file rewritten continuously during commits is committed as one whole version of it, or
/// the commit refuses with a message naming it; once the writer stops, the commit goes through.
fn commit_while_a_file_is_written_is_whole_or_refused() {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const SIZE: usize = 4 << 20;
    let t = fixture();
    let m = rw(&t);
    let path = m.join("busy.bin");
    fs::write(&path, vec![0u8; SIZE]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), path.clone());
        std::thread::spawn(move || {
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            let mut k = 1u8;
            while !stop.load(Ordering::Relaxed) {
                // Each version is one byte value throughout, written in 64 KiB pieces: a torn
                // read would mix two values.
                let chunk = vec![k; 64 << 10];
                for off in (0..SIZE).step_by(chunk.len()) {
                    f.write_all_at(&chunk, off as u64).unwrap();
                }
                k = k.wrapping_add(1).max(1);
            }
        })
    };
    let check_head = |t: &TestRepo| {
        let head = t.repo.head_state().unwrap();
        let id = head.get("busy.bin").and_then(|e| e.object_id()).unwrap();
        let bytes = t.repo.store().read_verified(&id, None).unwrap();
        assert_eq!(bytes.len(), SIZE);
        assert!(
            bytes.iter().all(|&b| b == bytes[0]),
            "a torn version of busy.bin was committed"
        );
    };
    let mut refused = 0;
    for i in 0..4 {
        let out = cli(m.path(), &["commit", "-m", &format!("busy {i}")]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            check_head(&t);
        } else {
            assert!(
                err.contains("'busy.bin' kept changing while it was being committed"),
                "{err}"
            );
            refused += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let out = cli(m.path(), &["commit", "-m", "quiet"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_head(&t);
    eprintln!("{refused} of 4 commits during the writes were refused");
}

/// `pvrfs mounts` and the control socket's `backend` say which backend serves a `--rw` mount;
/// a kernel-backend mount is one `overlay` entry: its lower layer is in no mount table.
fn mounts_and_the_control_socket_say_which_backend() {
    let t = fixture();
    let m = rw(&t);
    let canon = fs::canonicalize(m.path()).unwrap();
    let out = ok(Pvrfs::new().command().arg("mounts").output().unwrap());
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{}\t", canon.display())))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.ends_with(&format!("\trw:default\t{}", common::cow())),
        "{line}"
    );
    let answer =
        pvrfs::fuse::control::request(&canon, &pvrfs::fuse::control::Request::new("backend"))
            .unwrap();
    assert_eq!(answer.text, common::cow());
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let repo = t.path().display().to_string();
    let ours: Vec<&str> = table.lines().filter(|l| l.contains(&repo)).collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    let fstype = if common::cow() == "kernel" {
        " - overlay pvrfs:"
    } else {
        " - fuse"
    };
    assert!(ours[0].contains(fstype), "{}", ours[0]);
    if common::cow() == "kernel" {
        // which lower layer: the EROFS image with the object store as data-only layer, or
        // the FUSE mount (`PVRFS_KERNEL_LOWER=fuse`, or where EROFS cannot be used)
        let transport =
            pvrfs::fuse::control::request(&canon, &pvrfs::fuse::control::Request::new("transport"))
                .unwrap()
                .text;
        let objects = format!("datadir+={}/.pvr/objects", repo);
        if common::kernel_lower() == "erofs" {
            assert!(transport.contains("EROFS image"), "{transport}");
            assert!(ours[0].contains(&objects), "{}", ours[0]);
            assert!(ours[0].contains("metacopy=on"), "{}", ours[0]);
        } else {
            assert!(transport.contains("lower layer on FUSE"), "{transport}");
            assert!(!ours[0].contains("datadir+="), "{}", ours[0]);
        }
    }
}

/// A chmod, touch or rename of base files (and of a base directory holding one) commits the
/// same objects with the new modes and names. Over the EROFS lower these are metadata-only
/// copy-ups: the 2 MB blob's data is never copied into the upper layer nor read by the commit.
/// A write afterwards copies the data up and commits new bytes.
fn metadata_changes_of_base_files_commit_their_objects_unread() {
    let t = fixture();
    let before = t.repo.head_state().unwrap();
    let m = rw(&t);
    fs::set_permissions(m.join("blobs/big.img"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(m.join("app/data.txt"), m.join("data-moved.txt")).unwrap();
    fs::rename(m.join("app/bin"), m.join("app/sbin")).unwrap();
    fs::set_permissions(m.join("app/sbin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    let now = std::time::SystemTime::now();
    fs::File::options()
        .write(true)
        .open(m.join("README"))
        .unwrap()
        .set_modified(now)
        .unwrap();
    if common::cow() == "kernel" && common::kernel_lower() == "erofs" {
        let upper = fs::read_dir(t.path().join(".pvr/pvrfs/overlay/default"))
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("upper."))
            .unwrap()
            .path();
        let copied = fs::metadata(upper.join("blobs/big.img")).unwrap();
        assert_eq!(copied.len(), 2_000_000);
        assert!(
            copied.blocks() * 512 < 100_000,
            "the chmod copied {} bytes of data up",
            copied.blocks() * 512
        );
    }
    let out = ok_with_err(cli(m.path(), &["commit", "-m", "metadata only"]));
    assert!(out.0.contains("Committed revision 2"), "{out:?}");
    let head = t.repo.head_state().unwrap();
    assert_eq!(head.get("blobs/big.img"), before.get("blobs/big.img"));
    assert_eq!(head.meta().file_mode("blobs/big.img"), 0o600);
    assert_eq!(head.get("data-moved.txt"), before.get("app/data.txt"));
    assert!(head.get("app/data.txt").is_none() && head.get("app/bin/tool").is_none());
    assert_eq!(head.get("app/sbin/tool"), before.get("app/bin/tool"));
    assert_eq!(head.meta().file_mode("app/sbin/tool"), 0o755);
    assert_eq!(head.get("README"), before.get("README"));
    assert_eq!(ok(cli(m.path(), &["status"])), "");
    // the data is the base's, through the mount too
    assert_eq!(fs::read(m.join("data-moved.txt")).unwrap(), b"data");
    // a write copies the data up first: the new bytes are committed, the old never changed
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("blobs/big.img"))
        .unwrap()
        .write_all(b"tail")
        .unwrap();
    ok_with_err(cli(m.path(), &["commit", "-m", "data"]));
    let head = t.repo.head_state().unwrap();
    let Some(Entry::Object(id)) = head.get("blobs/big.img") else {
        panic!("blobs/big.img is not an object");
    };
    let mut expected: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    expected.extend_from_slice(b"tail");
    assert_eq!(fs::read(t.repo.store().path_of(id)).unwrap(), expected);
    assert_eq!(head.meta().file_mode("blobs/big.img"), 0o600);
    let Some(Entry::Object(old)) = before.get("blobs/big.img") else {
        panic!("blobs/big.img was not an object");
    };
    assert_eq!(
        fs::metadata(t.repo.store().path_of(old)).unwrap().len(),
        2_000_000
    );
    drop(m);
}

/// `--cow auto` mounts the FUSE overlay for a user who may not mount overlayfs (no
/// CAP_SYS_ADMIN), and `--cow kernel` refuses clearly (exit 2) for that user.
#[test]
fn auto_picks_fuse_without_cap_sys_admin_and_kernel_refuses_clearly() {
    if !fuse_available() || unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root (to run the mount as the unprivileged user 'tests')");
        return;
    }
    let dev_fuse = fs::metadata("/dev/fuse").unwrap().permissions().mode();
    let user_ok = Command::new("id")
        .arg("tests")
        .output()
        .is_ok_and(|o| o.status.success());
    if dev_fuse & 0o006 != 0o006 || !user_ok {
        eprintln!("SKIPPED: /dev/fuse is not usable by other users, or no user 'tests' (scripts/setup-deps)");
        return;
    }
    let t = fixture();
    let m = Mount {
        dir: tempfile::tempdir().unwrap(),
    };
    let chown = |p: &Path| {
        let st = Command::new("chown")
            .args(["-R", "tests:tests"])
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    };
    chown(t.path());
    chown(m.path());
    let as_tests = |args: &[&str], cwd: &Path| {
        Command::new("setpriv")
            .args(["--reuid=tests", "--regid=tests", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_pvrfs"))
            .args(args)
            .current_dir(cwd)
            .output()
            .unwrap()
    };
    let (repo, mnt) = (t.path().to_str().unwrap(), m.path().to_str().unwrap());
    let out = as_tests(
        &["mount", repo, "latest", mnt, "--rw", "--cow", "kernel"],
        Path::new("/"),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cow kernel: kernel overlayfs cannot be mounted")
            && err.contains("CAP_SYS_ADMIN"),
        "{err}"
    );
    assert!(!m.is_mounted());
    ok(as_tests(
        &["mount", repo, "latest", mnt, "--rw"],
        Path::new("/"),
    ));
    assert!(m.is_mounted());
    let backend = as_tests(&["mounts"], Path::new("/"));
    assert!(String::from_utf8_lossy(&backend.stdout)
        .contains(&format!("{mnt}\t{repo}\trw:default\tfuse")));
    // (root may not enter a FUSE mount of another user made without --allow-other)
    let st = Command::new("setpriv")
        .args([
            "--reuid=tests",
            "--regid=tests",
            "--clear-groups",
            "--",
            "sh",
            "-c",
        ])
        .arg(format!("cd {mnt} && echo new > added.txt"))
        .status()
        .unwrap();
    assert!(st.success());
    let out = ok(as_tests(
        &["commit", "-m", "as tests", "--mount", mnt],
        Path::new("/"),
    ));
    assert!(out.contains("Committed revision 2"), "{out}");
    assert!(t.repo.head_state().unwrap().get("added.txt").is_some());
}

/// `pvrfs umount` waits for the daemon, which writes out and releases the overlay as it ends: a
/// mount of the same overlay right after it must not find it "locked by another daemon".
fn umount_returns_once_the_daemon_is_gone_so_a_remount_works_at_once() {
    if !fuse_available() {
        return;
    }
    let t = fixture();
    for round in 0..3 {
        // `Mount::new` panics if the overlay is still locked by the previous round's daemon.
        let m = rw(&t);
        fs::write(m.join(&format!("r{round}")), b"x").unwrap();
        let pid = common::mounts::daemon_pid(m.path()).expect("a daemon serves the mount");
        ok(Pvrfs::new()
            .command()
            .arg("umount")
            .arg(m.path())
            .output()
            .unwrap());
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let alive = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']));
        assert!(
            !alive,
            "round {round}: the daemon still runs after umount: {stat}"
        );
    }
    let m = rw(&t);
    for round in 0..3 {
        assert!(m.join(&format!("r{round}")).exists());
    }
}

/// `lsattr`'s FS_IOC_GETFLAGS, and overlayfs's copy-up of base directories (it asks the lower
/// layer for their flags), get a plain ENOTTY: not fuser's default ENOSYS with a three-line
/// warning in the daemon's log per call (one per directory a `tar x` copied up).
fn inode_flag_ioctls_are_unsupported_quietly() {
    if !fuse_available() {
        return;
    }
    use std::os::fd::AsRawFd;
    let t = fixture();
    let m = rw(&t);
    fs::write(m.join("app/bin/new"), b"copies up app/ and app/bin/").unwrap();
    // Base files (not copied up; a copied-up directory is the upper file system's).
    for path in ["README", "app/data.txt", "blobs"] {
        let f = fs::File::open(m.join(path)).unwrap();
        let mut flags: libc::c_int = 0;
        // SAFETY: FS_IOC_GETFLAGS writes one int into `flags`, which outlives the call.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), 0x8008_6601, &mut flags) };
        let err = std::io::Error::last_os_error().raw_os_error();
        assert_eq!(
            (r, err),
            (-1, Some(libc::ENOTTY)),
            "FS_IOC_GETFLAGS of {path}"
        );
    }
    drop(m);
    let logs = t.path().join(".pvr/pvrfs/logs");
    for entry in fs::read_dir(&logs).unwrap() {
        let log = fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(
            !log.contains("[Not Implemented] ioctl"),
            "daemon log:\n{log}"
        );
    }
}

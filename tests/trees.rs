//! Whole trees end to end (issue 12): a generated tree with exec scripts, setuid and setgid
//! files, a sticky directory, relative, absolute and dangling symlinks, symlinks to directories
//! and empty directories goes through commit → checkout, a read-only mount, a `--rw` mount with
//! changes committed and remounted, export/import and push/clone over HTTP (nginx), and comes out
//! equal each time: `diff -r --no-dereference` plus a listing of every entry's mode and link
//! target. A busybox root filesystem runs from a read-only mount in `bwrap`; the reference pvr
//! handles a state with metadata; checkout never writes through a planted symlink (issue 11.3).

use pvrfs_testkit as common;

use common::reference::reference_pvr;
use common::*;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

common::cow_tests!(rw_mount_changes_commit_as_such);

fn pvrfs_ok(dir: &Path, args: &[&str]) -> String {
    pvrfs(args).dir(dir).ok()
}

fn pvrfs_err(dir: &Path, args: &[&str]) -> String {
    pvrfs(args).dir(dir).fails()
}

fn pvrfs_run(dir: &Path, args: &[&str]) -> Run {
    pvrfs(args).dir(dir).run()
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn put(root: &Path, rel: &str, data: &str, mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, data).unwrap();
    chmod(&p, mode);
}

/// The generated tree: every kind of entry and mode a source tree or a root filesystem has.
fn make_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    put(root, "bin/busybox", "not really busybox\n", 0o755);
    put(root, "bin/su", "setuid\n", 0o4755);
    put(root, "bin/wall", "setgid\n", 0o2755);
    put(root, "scripts/build.sh", "#!/bin/sh\necho build\n", 0o755);
    put(root, "scripts/private.sh", "#!/bin/sh\n", 0o700);
    put(root, "etc/config.json", "{\"a\": [1, 2.5]}", 0o644);
    put(root, "etc/shadow", "root:*:0:0\n", 0o600);
    put(root, "usr/lib/libc.so", "libc\n", 0o644);
    put(root, "readme.txt", "hello\n", 0o644);
    symlink("busybox", root.join("bin/sh")).unwrap();
    symlink("../bin/busybox", root.join("scripts/bb")).unwrap();
    symlink("/usr/share/zoneinfo/UTC", root.join("etc/localtime")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    symlink("usr/lib", root.join("lib")).unwrap();
    symlink("lib", root.join("lib64")).unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    chmod(&root.join("tmp"), 0o1777);
    fs::create_dir_all(root.join("var/empty")).unwrap();
    fs::create_dir_all(root.join("opt/a/b")).unwrap();
    fs::create_dir_all(root.join("secret/inner")).unwrap();
    put(root, "secret/inner/key", "k\n", 0o400);
    chmod(&root.join("secret"), 0o700);
    chmod(&root.join("var"), 0o750);
}

/// Every entry under `root` (`.pvr` and the top directory left out): mode, path, link target.
fn listing(root: &Path) -> String {
    let out = Command::new("find")
        .arg(".")
        .args([
            "-path",
            "./.pvr",
            "-prune",
            "-o",
            "-mindepth",
            "1",
            "-printf",
            "%M %p %l\n",
        ])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    lines.sort_unstable();
    lines.join("\n")
}

/// `a` and `b` hold the same tree: bytes, symlinks (not followed) and modes.
fn assert_same_tree(a: &Path, b: &Path, what: &str) {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference", "-x", ".pvr"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: diff -r --no-dereference differs:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        listing(a),
        listing(b),
        "{what}: modes or link targets differ"
    );
}

fn workspace() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let base = fs::canonicalize(t.path()).unwrap();
    (t, base)
}

/// A committed repository of the generated tree at `base/src`.
fn committed(base: &Path) -> PathBuf {
    let src = base.join("src");
    make_tree(&src);
    pvrfs_ok(&src, &["init"]);
    pvrfs_ok(&src, &["add"]);
    pvrfs_ok(&src, &["commit", "-m", "the tree"]);
    // inline JSON as every checkout and mount renders it (pvr's rendering)
    pvrfs_ok(&src, &["checkout", "--force"]);
    assert_eq!(pvrfs_ok(&src, &["status"]), "");
    src
}

/// Check the repository out into a fresh work tree (its own `.pvr` copied) and return it.
fn checkout_copy(repo: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    let status = Command::new("cp")
        .args(["-a"])
        .arg(repo.join(".pvr"))
        .arg(dest)
        .status()
        .unwrap();
    assert!(status.success());
    pvrfs_ok(dest, &["checkout", "--force"]);
}

#[test]
fn commit_then_checkout_reproduces_the_tree() {
    let (_t, base) = workspace();
    let src = committed(&base);
    let json = fs::read_to_string(src.join(".pvr/json")).unwrap();
    assert!(json.contains(r#""bin/.pvrfs-meta.json":{"links":{"sh":"busybox"},"modes":{"busybox":"0755","su":"4755","wall":"2755"}}"#), "{json}");
    let co = base.join("co");
    checkout_copy(&src, &co);
    assert_same_tree(&src, &co, "checkout");
    assert_eq!(pvrfs_ok(&co, &["status"]), "");
    // A second checkout changes nothing; a mode change is seen and undone.
    chmod(&co.join("bin/su"), 0o755);
    assert_eq!(pvrfs_ok(&co, &["status"]), "C bin/su\n");
    pvrfs_ok(&co, &["checkout", "--force"]);
    assert_same_tree(&src, &co, "checkout after a chmod");
}

#[test]
fn read_only_mount_shows_the_tree() {
    if !fuse_available() {
        eprintln!("SKIP: /dev/fuse is not available");
        return;
    }
    let (_t, base) = workspace();
    let src = committed(&base);
    let m = Mount::new(&src, "latest", &[]);
    assert_same_tree(&src, m.path(), "read-only mount");
    // honest link counts: a directory has 2 + its subdirectories
    let nlink = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(p).unwrap().nlink()
    };
    assert_eq!(nlink(&m.join("opt")), 3);
    assert_eq!(nlink(&m.join("var/empty")), 2);
    assert_eq!(nlink(&m.join("bin/sh")), 1);
    assert_eq!(fs::read_link(m.join("lib64")).unwrap(), Path::new("lib"));
    assert_eq!(
        fs::read_to_string(m.join("lib64/libc.so")).unwrap(),
        "libc\n",
        "symlinks to directories resolve inside the mount"
    );
}

/// `--rw` (each backend): chmod, symlink, mkdir of an empty directory and renames of symlinks
/// commit as such; a remount of the new revision shows exactly the changed tree.
fn rw_mount_changes_commit_as_such() {
    let (_t, base) = workspace();
    let src = committed(&base);
    let expected = base.join("expected");
    fs::create_dir(&expected).unwrap();
    assert!(Command::new("cp")
        .args(["-a", "--no-target-directory"])
        .arg(&src)
        .arg(&expected)
        .status()
        .unwrap()
        .success());
    let m = Mount::new(&src, "latest", &["--rw"]);
    let change = |root: &Path| {
        chmod(&root.join("readme.txt"), 0o751);
        chmod(&root.join("scripts"), 0o711);
        symlink("../readme.txt", root.join("etc/motd")).unwrap();
        fs::create_dir(root.join("var/empty/new")).unwrap();
        chmod(&root.join("var/empty/new"), 0o700);
        fs::rename(root.join("lib64"), root.join("lib32")).unwrap();
        fs::remove_file(root.join("dangling")).unwrap();
        symlink("still/nowhere", root.join("dangling")).unwrap();
        fs::remove_dir(root.join("opt/a/b")).unwrap();
        fs::remove_file(root.join("etc/shadow")).unwrap();
        put(root, "tmp/made.sh", "#!/bin/sh\n", 0o755);
    };
    change(m.path());
    change(&expected);
    assert_same_tree(&expected, m.path(), "--rw mount before commit");
    let status = pvrfs_ok(m.path(), &["status"]);
    for line in [
        "A etc/motd",
        "A lib32",
        "A tmp/made.sh",
        "A var/empty/new/",
        "A opt/a/",
        "D lib64",
        "D etc/shadow",
        "C readme.txt",
        "C scripts/",
        "C dangling",
    ] {
        assert!(
            status.lines().any(|l| l == line),
            "{line:?} not in:\n{status}"
        );
    }
    let out = pvrfs_run(m.path(), &["commit", "-m", "changed in the mount"]);
    out.ok();
    assert!(!out.stderr().contains("warning"), "{}", out.stderr());
    assert_eq!(pvrfs_ok(m.path(), &["status"]), "");
    drop(m);
    let again = Mount::new(&src, "latest", &[]);
    assert_same_tree(&expected, again.path(), "remount of the committed revision");
    drop(again);
    let co = base.join("co");
    checkout_copy(&src, &co);
    assert_same_tree(&expected, &co, "checkout of the committed revision");
}

#[test]
fn export_import_carries_the_tree() {
    let (_t, base) = workspace();
    let src = committed(&base);
    pvrfs_ok(&src, &["export", base.join("t.tgz").to_str().unwrap()]);
    let dst = base.join("dst");
    fs::create_dir(&dst).unwrap();
    pvrfs_ok(&dst, &["init"]);
    pvrfs_ok(&dst, &["import", base.join("t.tgz").to_str().unwrap()]);
    pvrfs_ok(&dst, &["checkout", "--force"]);
    assert_same_tree(&src, &dst, "export/import");
    // a part keeps its metadata with it
    let part = base.join("part");
    fs::create_dir(&part).unwrap();
    pvrfs_ok(&part, &["init"]);
    pvrfs_ok(
        &part,
        &["get", &format!("{}#bin", src.join(".pvr").display())],
    );
    pvrfs_ok(&part, &["checkout", "--force"]);
    assert_eq!(
        fs::read_link(part.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let mode = fs::metadata(part.join("bin/su"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o4755);
}

#[test]
fn push_and_clone_over_http_carry_the_tree() {
    let (_t, base) = workspace();
    let www = base.join("www");
    fs::create_dir(&www).unwrap();
    let Some(nginx) = Nginx::start(&www) else {
        eprintln!("SKIP: nginx is not installed (scripts/setup-deps installs nginx-light)");
        return;
    };
    let src = committed(&base);
    let url = nginx.url("trees/");
    pvrfs_ok(&src, &["push", &url]);
    pvrfs_ok(&base, &["clone", &url, "cloned"]);
    assert_same_tree(&src, &base.join("cloned"), "push/clone over HTTP");
}

/// A busybox root filesystem, its applets as symlinks, committed as a plain tree and run from a
/// read-only mount as `/` in a bwrap sandbox.
#[test]
fn busybox_rootfs_runs_from_a_read_only_mount() {
    let busybox = Path::new("/bin/busybox");
    if !fuse_available() {
        eprintln!("SKIP: /dev/fuse is not available");
        return;
    }
    let Some(bwrap) = ["/usr/bin/bwrap", "/bin/bwrap"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("SKIP: bwrap is not installed (scripts/setup-deps installs bubblewrap)");
        return;
    };
    if !busybox.exists() {
        eprintln!("SKIP: /bin/busybox is absent (scripts/setup-deps installs busybox-static)");
        return;
    }
    let (_t, base) = workspace();
    let root = base.join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy(busybox, root.join("bin/busybox")).unwrap();
    chmod(&root.join("bin/busybox"), 0o755);
    let list = Command::new(busybox).arg("--list").output().unwrap();
    let applets: Vec<String> = String::from_utf8(list.stdout)
        .unwrap()
        .lines()
        .filter(|a| *a != "busybox")
        .map(str::to_string)
        .collect();
    assert!(applets.len() > 100, "{applets:?}");
    for a in &applets {
        symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    for d in ["proc", "dev", "etc", "root"] {
        fs::create_dir(root.join(d)).unwrap();
    }
    fs::create_dir(root.join("tmp")).unwrap();
    chmod(&root.join("tmp"), 0o1777);
    pvrfs_ok(&root, &["init"]);
    pvrfs_ok(&root, &["add"]);
    pvrfs_ok(&root, &["commit", "-m", "busybox rootfs"]);
    assert_eq!(pvrfs_ok(&root, &["status"]), "");
    let m = Mount::new(&root, "latest", &[]);
    let out = Command::new(bwrap)
        .arg("--ro-bind")
        .arg(m.path())
        .arg("/")
        .args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"])
        .args(["/bin/sh", "-c", "ls /bin | wc -l"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bwrap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(count, applets.len() + 1, "every applet and busybox itself");
}

/// The reference pvr reads a state with metadata as an ordinary state: status, checkout, get,
/// merge, export and import work without errors (it writes the documents as files and no
/// symlinks or modes: docs/FORMAT.md, "How pvr sees it").
#[test]
fn the_reference_pvr_handles_a_state_with_metadata() {
    let Some(pvr) = reference_pvr("the_reference_pvr_handles_a_state_with_metadata") else {
        return;
    };
    let (_t, base) = workspace();
    let src = committed(&base);
    let home = base.join("pvr-home");
    let run = |dir: &Path, args: &[&str]| {
        let out = Command::new(&pvr)
            .args(args)
            .current_dir(dir)
            .env("PVR_HOME", &home)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pvr {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // pvr's clone: the documents are plain JSON files to it, and its status is clean
    run(&base, &["clone", src.join(".pvr").to_str().unwrap(), "pc"]);
    let pc = base.join("pc");
    assert!(pc.join(".pvrfs-meta.json").is_file() && pc.join("bin/.pvrfs-meta.json").is_file());
    assert_eq!(run(&pc, &["status"]).trim(), "");
    run(&pc, &["checkout"]);
    assert_eq!(
        fs::read(pc.join(".pvr/json")).unwrap(),
        fs::read(src.join(".pvr/json")).unwrap()
    );
    // get, merge (of a part: its document goes with it), export, import
    let pg = base.join("pg");
    fs::create_dir(&pg).unwrap();
    run(&pg, &["init"]);
    run(&pg, &["get", src.join(".pvr").to_str().unwrap()]);
    run(&pg, &["checkout"]);
    let pm = base.join("pm");
    fs::create_dir(&pm).unwrap();
    run(&pm, &["init"]);
    fs::write(pm.join("mine.txt"), "m").unwrap();
    run(&pm, &["add", "."]);
    run(&pm, &["commit", "-m", "mine"]);
    run(
        &pm,
        &["merge", &format!("{}#bin", src.join(".pvr").display())],
    );
    let merged = fs::read_to_string(pm.join(".pvr/json")).unwrap();
    assert!(merged.contains("bin/.pvrfs-meta.json"), "{merged}");
    // pvrfs reads pvr's merge: bin's modes and symlink came along
    let st = pvrfs::state::State::from_json_bytes(merged.as_bytes(), "pvr's merge").unwrap();
    assert_eq!(st.meta().links["bin/sh"], "busybox");
    assert_eq!(st.meta().file_mode("bin/su"), 0o4755);
    run(&pg, &["export", base.join("p.tar.gz").to_str().unwrap()]);
    let pi = base.join("pi");
    fs::create_dir(&pi).unwrap();
    run(&pi, &["init"]);
    run(&pi, &["import", base.join("p.tar.gz").to_str().unwrap()]);
    run(&pi, &["checkout"]);
    assert_eq!(run(&pi, &["status"]).trim(), "");
    // and pvrfs in a tree pvr checked out: the documents are reported, never stored, and the
    // tree's real state (no symlinks, plain modes) is what status shows
    let st = pvrfs_run(&pc, &["status"]);
    let stderr = st.stderr();
    assert!(
        stderr.contains(".pvrfs-meta.json") && stderr.contains("reserved"),
        "{stderr}"
    );
    let stdout = st.stdout();
    assert!(
        stdout.contains("D bin/sh") && stdout.contains("C bin/su"),
        "{stdout}"
    );
}

/// Issue 11.3 through the command line: a directory replaced by a symlink to somewhere outside
/// the work tree; neither checkout nor checkout --force writes or deletes through it.
#[test]
fn checkout_never_writes_or_deletes_through_a_planted_symlink() {
    let (_t, base) = workspace();
    let w = base.join("w");
    let outside = base.join("outside");
    fs::create_dir_all(w.join("dir")).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(w.join("dir/file"), "tracked\n").unwrap();
    pvrfs_ok(&w, &["init"]);
    pvrfs_ok(&w, &["add"]);
    pvrfs_ok(&w, &["commit", "-m", "one"]);
    fs::remove_dir_all(w.join("dir")).unwrap();
    symlink("../outside", w.join("dir")).unwrap();
    // without --force: refused (the symlink is unsaved work), nothing written outside
    let err = pvrfs_err(&w, &["checkout"]);
    assert!(err.contains("dir"), "{err}");
    assert_eq!(names(&outside), Vec::<String>::new());
    // a file under the symlink's target is not the tracked one: reset does not delete it
    fs::write(outside.join("file"), "precious\n").unwrap();
    pvrfs_ok(&w, &["reset"]);
    assert_eq!(
        fs::read_to_string(outside.join("file")).unwrap(),
        "precious\n"
    );
    assert!(fs::symlink_metadata(w.join("dir")).unwrap().is_dir());
    assert_eq!(fs::read_to_string(w.join("dir/file")).unwrap(), "tracked\n");
    // and going to a revision without dir/file with the symlink planted again
    pvrfs_ok(&w, &["checkout", "--force"]);
    fs::remove_file(w.join("dir/file")).unwrap();
    pvrfs_ok(&w, &["commit", "-m", "no file"]);
    fs::remove_dir_all(w.join("dir")).unwrap();
    symlink("../outside", w.join("dir")).unwrap();
    pvrfs_ok(&w, &["checkout", "--force", "1"]);
    assert_eq!(
        fs::read_to_string(outside.join("file")).unwrap(),
        "precious\n"
    );
    assert_eq!(fs::read_to_string(w.join("dir/file")).unwrap(), "tracked\n");
}

/// Bad metadata (item 4) is refused everywhere with the path named, and nothing is written:
/// a state that holds it cannot be checked out, mounted, applied, fetched or imported, and fsck
/// reports it.
#[test]
fn bad_metadata_is_refused_naming_the_path() {
    let (_t, base) = workspace();
    let w = base.join("w");
    fs::create_dir_all(w.join("a")).unwrap();
    fs::write(w.join("a/passwd"), "x\n").unwrap();
    pvrfs_ok(&w, &["init"]);
    pvrfs_ok(&w, &["add"]);
    pvrfs_ok(&w, &["commit", "-m", "one"]);
    let good = fs::read(w.join(".pvr/json")).unwrap();
    // a patch that plants a symlink over a directory: refused, no revision
    let patch = base.join("bad.json");
    fs::write(&patch, r#"{".pvrfs-meta.json":{"links":{"a":"/etc"}}}"#).unwrap();
    let err = pvrfs_err(&w, &["apply", patch.to_str().unwrap()]);
    assert!(
        err.contains("'a'") && err.contains("directory of 'a/passwd'"),
        "{err}"
    );
    assert_eq!(fs::read(w.join(".pvr/json")).unwrap(), good);
    // a mode out of range published by someone else: get and import refuse it
    let other = base.join("other");
    fs::create_dir_all(other.join("objects")).unwrap();
    let text = String::from_utf8(good.clone()).unwrap().replacen(
        "{",
        r#"{".pvrfs-meta.json":{"modes":{"a/passwd":"99999"}},"#,
        1,
    );
    fs::write(other.join("json"), &text).unwrap();
    let err = pvrfs_err(&w, &["get", other.to_str().unwrap()]);
    assert!(err.contains("'a/passwd'") && err.contains("07777"), "{err}");
    assert_eq!(fs::read(w.join(".pvr/json")).unwrap(), good);
    // the same state as the head (pvr or a hand edit put it there): checkout, mount and fsck
    // name the path, and the work tree is left alone
    fs::write(w.join(".pvr/json"), &text).unwrap();
    fs::write(w.join("a/passwd"), "edited\n").unwrap();
    let err = pvrfs_err(&w, &["checkout", "--force"]);
    assert!(err.contains("'a/passwd'"), "{err}");
    assert_eq!(fs::read_to_string(w.join("a/passwd")).unwrap(), "edited\n");
    let out = pvrfs_run(&w, &["fsck"]);
    assert!(!out.success());
    assert!(out.stdout().contains("'a/passwd'"), "{}", out.stdout());
    if fuse_available() {
        let mnt = tempfile::tempdir().unwrap();
        let out = pvrfs_run(&w, &["mount", ".", "latest", mnt.path().to_str().unwrap()]);
        assert!(!out.success());
        assert!(out.stderr().contains("'a/passwd'"), "{}", out.stderr());
        assert!(!is_mount_point(mnt.path()));
    }
}

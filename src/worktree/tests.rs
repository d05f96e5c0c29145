use super::add::merge_sorted;
use super::*;

fn setup() -> (tempfile::TempDir, Repo) {
    let dir = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(dir.path()).unwrap();
    let repo = Repo::init(&root, None, None).unwrap();
    (dir, repo)
}

fn write(repo: &Repo, rel: &str, data: &str) {
    let p = repo.workdir().join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn add_all(repo: &Repo, raw: bool, paths: &[&str]) -> Vec<String> {
    let lock = repo.lock().unwrap();
    let paths: Vec<String> = paths.iter().map(|s| s.to_string()).collect();
    WorkTree::open(repo)
        .add(&lock, repo.workdir(), &paths, raw)
        .unwrap()
        .paths
}

fn commit(repo: &Repo) -> String {
    let lock = repo.lock().unwrap();
    let mut log = Vec::new();
    WorkTree::open(repo).commit(&lock, "m", &mut log).unwrap();
    String::from_utf8(log).unwrap()
}

#[test]
fn add_stages_untracked_files_and_commit_records_them() {
    let (_d, repo) = setup();
    write(&repo, "a.txt", "a");
    write(&repo, "d/x.json", "{ \"k\" : 1 }");
    write(&repo, "ign/skip.txt", "s");
    write(&repo, ".pvrignore", "ign/\n");
    let added = add_all(&repo, false, &[]);
    assert_eq!(added, vec![".pvrignore", "a.txt", "d/x.json"]);
    let staged = load_staged(&repo).unwrap();
    assert!(!staged["d/x.json"].force_object);
    assert!(repo.store().contains(&staged["a.txt"].sha));
    let log = commit(&repo);
    assert!(log.contains("Adding inline d/x.json"), "{log}");
    let head = repo.head_state().unwrap();
    assert_eq!(
        head.get("d/x.json"),
        Some(&Entry::Inline(json::parse(b"{\"k\":1}").unwrap()))
    );
    assert!(!repo.new_path().exists());
    // reformatting an inline json is not a change; editing a value is
    write(&repo, "d/x.json", "{\n  \"k\": 1\n}\n");
    let scan = WorkTree::open(&repo).scan().unwrap();
    assert!(scan.changed.is_empty());
    write(&repo, "d/x.json", "{\"k\": 2}");
    let scan = WorkTree::open(&repo).scan().unwrap();
    assert_eq!(scan.changed, vec!["d/x.json"]);
}

#[test]
fn status_is_right_when_the_tracked_set_moved_away_from_the_stat_cache() {
    // The walk starts from the stat cache's paths while the head parses (`reconcile`).
    let (_d, repo) = setup();
    for f in ["a.txt", "d/b.txt", "d/c.txt"] {
        write(&repo, f, f);
    }
    add_all(&repo, false, &[]);
    commit(&repo);
    let scan = WorkTree::open(&repo).scan_all().unwrap();
    assert!(scan.is_clean() && scan.untracked.is_empty(), "{scan:?}");
    // The head drops d/b.txt behind the work tree's back (as `apply` or pvr could): it is
    // still on disk and in the cache, and now untracked, in walk order.
    let lock = repo.lock().unwrap();
    let mut state = repo.head_state().unwrap();
    state.remove("d/b.txt");
    repo.commit_state(&lock, &state, "drop b", None).unwrap();
    drop(lock);
    write(&repo, "d/a-new.txt", "n");
    let scan = WorkTree::open(&repo).scan_all().unwrap();
    assert_eq!(scan.untracked, vec!["d/a-new.txt", "d/b.txt"]);
    assert!(scan.is_clean());
    // A staged path the cache never saw: reported as added, not as untracked.
    let mut staged = load_staged(&repo).unwrap();
    staged.insert(
        "d/a-new.txt".into(),
        Staged {
            force_object: false,
            sha: ObjectId::hash_bytes(b"n"),
        },
    );
    save_staged(&repo, &staged).unwrap();
    let scan = WorkTree::open(&repo).scan_all().unwrap();
    assert_eq!(scan.added, vec!["d/a-new.txt"]);
    assert_eq!(scan.untracked, vec!["d/b.txt"]);
}

#[test]
fn stat_cache_avoids_rereading_and_notices_same_size_edits() {
    let (_d, repo) = setup();
    write(&repo, "f.bin", "aaaa");
    add_all(&repo, false, &[]);
    commit(&repo);
    std::thread::sleep(std::time::Duration::from_millis(20));
    // the first scan may find racy entries; after it the cache is trusted
    WorkTree::open(&repo).scan().unwrap();
    let wt = WorkTree::open(&repo);
    let meta = fs::symlink_metadata(repo.workdir().join("f.bin")).unwrap();
    let mut wt = wt;
    assert!(wt
        .load_cache()
        .lookup("f.bin", &StatKey::of(&meta))
        .is_some());
    // same size, new content: mtime/ctime move, so it is re-hashed
    write(&repo, "f.bin", "bbbb");
    let scan = WorkTree::open(&repo).scan().unwrap();
    assert_eq!(scan.changed, vec!["f.bin"]);
}

#[test]
fn a_trusted_cache_entry_is_believed_without_reading_the_file() {
    let (_d, repo) = setup();
    write(&repo, "f.bin", "aaaa");
    write(&repo, "c.json", "{\"a\": 1}");
    add_all(&repo, false, &[]);
    commit(&repo);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut wt = WorkTree::open(&repo);
    // Lie in the cache: same stat key, other hashes. If scan re-read the files it would
    // see no change; trusting the cache, it reports both as changed.
    let lies: Vec<(String, CacheEntry)> = ["f.bin", "c.json"]
        .iter()
        .map(|p| {
            let meta = fs::symlink_metadata(repo.workdir().join(p)).unwrap();
            let bogus = ObjectId::hash_bytes(b"bogus");
            let value_sha = p.ends_with(".json").then_some(bogus);
            (
                p.to_string(),
                CacheEntry {
                    key: StatKey::of(&meta),
                    sha: bogus,
                    value_sha,
                },
            )
        })
        .collect();
    wt.load_cache().update_and_save(lies);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let scan = WorkTree::open(&repo).scan().unwrap();
    // f.bin: believed; c.json: the value hash does not match the head, so it is parsed
    assert_eq!(scan.changed, vec!["f.bin"]);
}

#[test]
fn an_inline_file_the_cache_vouches_for_keeps_the_heads_value() {
    // A trusted entry whose value hash is the head's: nothing is read or copied (the probe says
    // `same_as_head`), yet the working state, diff and checkout see the head's value.
    use std::os::unix::fs::PermissionsExt;
    let (_d, repo) = setup();
    write(&repo, "c.json", "{\"a\": [1, {\"b\": \"x\"}]}");
    write(&repo, "d/e.json", "{\"k\": true}");
    add_all(&repo, false, &[]);
    commit(&repo);
    std::thread::sleep(std::time::Duration::from_millis(20));
    WorkTree::open(&repo).scan().unwrap(); // may find racy entries; the cache is trusted after
    let head = repo.head_state().unwrap();
    let scan = WorkTree::open(&repo).scan().unwrap();
    assert!(scan.is_clean() && scan.changed.is_empty(), "{scan:?}");
    assert_eq!(scan.state().unwrap(), head);
    // a mode change alone: listed, the value still the head's; also once the cache vouches
    // for the file with its new mode
    let path = repo.workdir().join("d/e.json");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    for _ in 0..2 {
        let scan = WorkTree::open(&repo).scan().unwrap();
        assert_eq!(scan.changed, vec!["d/e.json"]);
        let state = scan.state().unwrap();
        assert_eq!(state.get("d/e.json"), head.get("d/e.json"));
        assert_eq!(state.get("c.json"), head.get("c.json"));
        assert_eq!(state.meta().file_mode("d/e.json"), 0o755);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn invalid_json_is_reported_with_its_path() {
    let (_d, repo) = setup();
    write(&repo, "bad.json", "{bad");
    add_all(&repo, false, &[]);
    let err = WorkTree::open(&repo).scan().unwrap_err();
    assert_eq!(
        err.to_string(),
        "JSON Unmarshal (bad.json): invalid character 'b' looking for beginning of object key string"
    );
    // --raw stores it as an object instead
    add_all(&repo, true, &["bad.json"]);
    commit(&repo);
    assert!(matches!(
        repo.head_state().unwrap().get("bad.json"),
        Some(Entry::Object(_))
    ));
}

#[test]
fn hex_string_json_is_stored_as_an_object() {
    let (_d, repo) = setup();
    let hex = "\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"";
    write(&repo, "sha.json", hex);
    add_all(&repo, false, &[]);
    commit(&repo);
    let id = ObjectId::hash_bytes(hex.as_bytes());
    assert_eq!(
        repo.head_state().unwrap().get("sha.json"),
        Some(&Entry::Object(id))
    );
    assert!(repo.store().contains(&id));
    assert!(WorkTree::open(&repo).scan().unwrap().changed.is_empty());
}

#[test]
fn checkout_writes_removes_and_protects_changes() {
    let (_d, repo) = setup();
    write(&repo, "a/b.txt", "one");
    write(&repo, "c.json", "[1, 2.50]");
    add_all(&repo, false, &[]);
    commit(&repo);
    let first = repo.head_state().unwrap();
    fs::remove_dir_all(repo.workdir().join("a")).unwrap();
    write(&repo, "new.txt", "n");
    add_all(&repo, false, &[]);
    commit(&repo);
    let lock = repo.lock().unwrap();
    let mut wt = WorkTree::open(&repo);
    // back to the first state: new.txt goes, a/b.txt comes back
    let r = wt
        .checkout(&lock, &first, &CheckoutOptions::default())
        .unwrap();
    // c.json is rewritten in pvr's rendering (same value, other bytes)
    assert_eq!((r.written, r.removed), (2, 1));
    assert_eq!(
        fs::read_to_string(repo.workdir().join("a/b.txt")).unwrap(),
        "one"
    );
    assert!(!repo.workdir().join("new.txt").exists());
    let head = repo.head_state().unwrap();
    write(&repo, "c.json", "[7]");
    let err = wt
        .checkout(&lock, &head, &CheckoutOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::WouldLoseChanges(_)), "{err}");
    assert_eq!(
        fs::read_to_string(repo.workdir().join("c.json")).unwrap(),
        "[7]"
    );
    let opts = CheckoutOptions {
        force: true,
        canonical: true,
        ..Default::default()
    };
    wt.checkout(&lock, &head, &opts).unwrap();
    assert_eq!(
        fs::read_to_string(repo.workdir().join("c.json")).unwrap(),
        "[1,2.5E0]"
    );
    assert!(repo.workdir().join("new.txt").exists());
    // a/b.txt came from the last checkout, so it is tracked and goes
    assert!(!repo.workdir().join("a").exists());
}

#[test]
fn checkout_refuses_corrupt_objects() {
    let (_d, repo) = setup();
    write(&repo, "f", "data");
    add_all(&repo, false, &[]);
    commit(&repo);
    let id = ObjectId::hash_bytes(b"data");
    let obj = repo.store().path_of(&id);
    fs::write(&obj, "evil").unwrap();
    fs::remove_file(repo.workdir().join("f")).unwrap();
    let lock = repo.lock().unwrap();
    let head = repo.head_state().unwrap();
    for hardlink in [false, true] {
        let opts = CheckoutOptions {
            hardlink,
            ..Default::default()
        };
        let err = WorkTree::open(&repo)
            .checkout(&lock, &head, &opts)
            .unwrap_err();
        assert!(matches!(err, Error::CorruptObject { .. }), "{err}");
        assert!(!repo.workdir().join("f").exists());
    }
}

#[test]
fn merge_sorted_is_a_sorted_union() {
    let owned: Vec<String> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let r = |idx: &[usize]| idx.iter().map(|&i| &owned[i]).collect::<Vec<_>>();
    assert_eq!(
        merge_sorted(&r(&[0, 2, 4]), &r(&[1, 2, 3])),
        r(&[0, 1, 2, 3, 4])
    );
    assert_eq!(merge_sorted(&r(&[]), &r(&[1])), r(&[1]));
    assert_eq!(merge_sorted(&r(&[3]), &r(&[])), r(&[3]));
}

#[test]
fn walk_order_is_per_directory() {
    let mut v = vec!["a.txt", "a/b", "a b/c", "ab"];
    v.sort_by(|a, b| walk_order(a, b));
    assert_eq!(v, vec!["a/b", "a b/c", "a.txt", "ab"]);
}

mod whole_trees {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn chmod(repo: &Repo, rel: &str, mode: u32) {
        fs::set_permissions(repo.workdir().join(rel), fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mode(repo: &Repo, rel: &str) -> u32 {
        fs::symlink_metadata(repo.workdir().join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    fn checkout(repo: &Repo, state: &State, force: bool) -> Result<CheckoutReport> {
        let lock = repo.lock().unwrap();
        let opts = CheckoutOptions {
            force,
            ..Default::default()
        };
        WorkTree::open(repo).checkout(&lock, state, &opts)
    }

    /// Exec bits, setuid, a sticky directory, symlinks of every kind and empty directories go
    /// into the state's documents and come back out of a checkout exactly.
    #[test]
    fn modes_symlinks_and_empty_dirs_round_trip() {
        let (_d, repo) = setup();
        write(&repo, "run.sh", "#!/bin/sh\n");
        chmod(&repo, "run.sh", 0o755);
        write(&repo, "bin/busybox", "bb");
        chmod(&repo, "bin/busybox", 0o4755);
        symlink("busybox", repo.workdir().join("bin/sh")).unwrap();
        symlink("/etc/passwd", repo.workdir().join("abs")).unwrap();
        symlink("no/where", repo.workdir().join("dangling")).unwrap();
        symlink("bin", repo.workdir().join("bindir")).unwrap();
        fs::create_dir_all(repo.workdir().join("tmp")).unwrap();
        chmod(&repo, "tmp", 0o1777);
        fs::create_dir_all(repo.workdir().join("bsp/empty")).unwrap();
        let scan = WorkTree::open(&repo).scan_all().unwrap();
        assert_eq!(
            scan.untracked,
            [
                "abs",
                "bin/busybox",
                "bin/sh",
                "bindir",
                "bsp/empty/",
                "dangling",
                "run.sh",
                "tmp/"
            ]
        );
        let added = add_all(&repo, false, &[]);
        assert_eq!(added.len(), 8, "{added:?}");
        let scan = WorkTree::open(&repo).scan_all().unwrap();
        assert_eq!(
            scan.added,
            [
                "abs",
                "bin/busybox",
                "bin/sh",
                "bindir",
                "bsp/empty/",
                "dangling",
                "run.sh",
                "tmp/"
            ]
        );
        assert!(scan.untracked.is_empty(), "{:?}", scan.untracked);
        commit(&repo);
        let head = repo.head_state().unwrap();
        let docs: Vec<(String, String)> = head
            .docs()
            .iter()
            .map(|(k, e)| {
                (
                    k.clone(),
                    String::from_utf8(json::to_canonical(&e.to_value())).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            docs,
            [
                (
                    ".pvrfs-meta.json".to_string(),
                    r#"{"dirs":["tmp"],"links":{"abs":"/etc/passwd","bindir":"bin","dangling":"no/where"},"modes":{"run.sh":"0755","tmp":"1777"}}"#.to_string()
                ),
                (
                    "bin/.pvrfs-meta.json".to_string(),
                    r#"{"links":{"sh":"busybox"},"modes":{"busybox":"4755"}}"#.to_string()
                ),
                (
                    "bsp/.pvrfs-meta.json".to_string(),
                    r#"{"dirs":["empty"]}"#.to_string()
                ),
            ]
        );
        assert!(WorkTree::open(&repo).scan_all().unwrap().is_clean());
        // Into an empty work tree: everything comes back, exactly.
        for entry in fs::read_dir(repo.workdir()).unwrap() {
            let p = entry.unwrap().path();
            if p.file_name().unwrap() != ".pvr" {
                match fs::symlink_metadata(&p).unwrap().is_dir() {
                    true => fs::remove_dir_all(&p).unwrap(),
                    false => fs::remove_file(&p).unwrap(),
                }
            }
        }
        checkout(&repo, &head, false).unwrap();
        assert_eq!(mode(&repo, "run.sh"), 0o755);
        assert_eq!(mode(&repo, "bin/busybox"), 0o4755);
        assert_eq!(mode(&repo, "tmp"), 0o1777);
        assert_eq!(mode(&repo, "bin"), 0o755);
        assert!(repo.workdir().join("bsp/empty").is_dir());
        for (link, target) in [
            ("bin/sh", "busybox"),
            ("abs", "/etc/passwd"),
            ("dangling", "no/where"),
            ("bindir", "bin"),
        ] {
            assert_eq!(
                fs::read_link(repo.workdir().join(link)).unwrap(),
                Path::new(target)
            );
        }
        let scan = WorkTree::open(&repo).scan_all().unwrap();
        assert!(scan.is_clean() && scan.untracked.is_empty(), "{scan:?}");
    }

    /// A chmod, a new symlink target, a symlink replacing a file, a removed empty directory
    /// and a directory left empty are all changes, shown and committed.
    #[test]
    fn metadata_changes_are_changes() {
        let (_d, repo) = setup();
        write(&repo, "a.sh", "a");
        write(&repo, "d/f", "f");
        write(&repo, "plain", "p");
        symlink("a.sh", repo.workdir().join("l")).unwrap();
        fs::create_dir(repo.workdir().join("e")).unwrap();
        add_all(&repo, false, &[]);
        commit(&repo);
        chmod(&repo, "a.sh", 0o700);
        chmod(&repo, "d", 0o750);
        fs::remove_file(repo.workdir().join("l")).unwrap();
        symlink("plain", repo.workdir().join("l")).unwrap();
        fs::remove_file(repo.workdir().join("plain")).unwrap();
        symlink("a.sh", repo.workdir().join("plain")).unwrap();
        fs::remove_dir(repo.workdir().join("e")).unwrap();
        fs::remove_file(repo.workdir().join("d/f")).unwrap();
        let scan = WorkTree::open(&repo).scan_all().unwrap();
        assert_eq!(scan.added, ["d/"]);
        assert_eq!(scan.deleted, ["d/f", "e/"]);
        assert_eq!(scan.changed, ["a.sh", "d/", "l", "plain"]);
        assert!(scan.untracked.is_empty(), "{:?}", scan.untracked);
        let log = commit(&repo);
        assert!(log.contains("Committing mode 0700 of"), "{log}");
        assert!(log.contains("Committing symlink"), "{log}");
        let head = repo.head_state().unwrap();
        let m = head.meta();
        assert_eq!(m.file_mode("a.sh"), 0o700);
        assert_eq!(m.dir_mode("d"), 0o750);
        assert_eq!(m.links["l"], "plain");
        assert_eq!(m.links["plain"], "a.sh");
        assert!(!head.contains("plain"));
        assert_eq!(m.dirs.iter().collect::<Vec<_>>(), ["d"]);
        assert!(WorkTree::open(&repo).scan_all().unwrap().is_clean());
    }

    /// Sockets, FIFOs and the reserved name are listed, never stored; named explicitly, `add`
    /// refuses them.
    #[test]
    fn what_cannot_be_stored_is_listed() {
        let (_d, repo) = setup();
        write(&repo, "a", "a");
        write(&repo, "sub/.pvrfs-meta.json", "{}");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            repo.workdir().join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(repo.workdir().join("sock")).unwrap();
        let scan = WorkTree::open(&repo).scan_all().unwrap();
        let listed: Vec<(&str, &str)> = scan
            .unstorable
            .iter()
            .map(|(p, w)| (p.as_str(), *w))
            .collect();
        assert_eq!(
            listed,
            [
                ("fifo", "a FIFO"),
                ("sock", "a socket"),
                ("sub/.pvrfs-meta.json", walk::RESERVED)
            ]
        );
        assert_eq!(scan.untracked, ["a"]);
        let lock = repo.lock().unwrap();
        let added = WorkTree::open(&repo)
            .add(&lock, repo.workdir(), &[], false)
            .unwrap();
        assert_eq!(added.paths, ["a"]);
        assert_eq!(added.unstorable.len(), 3);
        for (name, want) in [("fifo", "a FIFO"), ("sub/.pvrfs-meta.json", "reserved")] {
            let err = WorkTree::open(&repo)
                .add(&lock, repo.workdir(), &[name.to_string()], false)
                .unwrap_err()
                .to_string();
            assert!(err.contains(name) && err.contains(want), "{err}");
        }
    }

    /// Issue 11.3: a directory replaced by a symlink to somewhere outside the tree is never
    /// written or deleted through, by status, checkout or checkout --force.
    #[test]
    fn checkout_never_writes_or_deletes_through_a_planted_symlink() {
        let (_d, repo) = setup();
        let elsewhere = tempfile::tempdir().unwrap();
        let outside = elsewhere.path().join("outside");
        fs::create_dir(&outside).unwrap();
        write(&repo, "dir/file", "mine");
        write(&repo, "keep", "k");
        add_all(&repo, false, &[]);
        commit(&repo);
        let head = repo.head_state().unwrap();
        fs::remove_dir_all(repo.workdir().join("dir")).unwrap();
        fs::write(outside.join("file"), "precious").unwrap();
        symlink(&outside, repo.workdir().join("dir")).unwrap();
        // status does not look through it: dir/file is gone, dir is an untracked symlink
        let scan = WorkTree::open(&repo).scan_all().unwrap();
        assert_eq!(
            (scan.deleted.as_slice(), scan.untracked.as_slice()),
            (&["dir/file".to_string()][..], &["dir".to_string()][..])
        );
        // checkout refuses (the symlink is unsaved work), writes nothing
        let err = checkout(&repo, &head, false).unwrap_err();
        assert!(matches!(err, Error::WouldLoseChanges(_)), "{err}");
        assert_eq!(
            fs::read_to_string(outside.join("file")).unwrap(),
            "precious"
        );
        // a state without dir/file: the file "under" the symlink is not deleted
        let mut without = head.clone();
        without.remove("dir/file");
        checkout(&repo, &without, true).unwrap();
        assert_eq!(
            fs::read_to_string(outside.join("file")).unwrap(),
            "precious"
        );
        // --force replaces the symlink by a directory; outside is untouched
        checkout(&repo, &head, true).unwrap();
        assert!(fs::symlink_metadata(repo.workdir().join("dir"))
            .unwrap()
            .is_dir());
        assert_eq!(
            fs::read_to_string(repo.workdir().join("dir/file")).unwrap(),
            "mine"
        );
        assert_eq!(
            fs::read_to_string(outside.join("file")).unwrap(),
            "precious"
        );
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
        // a tracked file replaced by a symlink to an outside file: --force replaces the
        // symlink, the outside file keeps its bytes
        fs::remove_file(repo.workdir().join("keep")).unwrap();
        symlink(outside.join("file"), repo.workdir().join("keep")).unwrap();
        checkout(&repo, &head, true).unwrap();
        assert_eq!(
            fs::read_to_string(repo.workdir().join("keep")).unwrap(),
            "k"
        );
        assert!(!fs::symlink_metadata(repo.workdir().join("keep"))
            .unwrap()
            .is_symlink());
        assert_eq!(
            fs::read_to_string(outside.join("file")).unwrap(),
            "precious"
        );
    }

    /// A state whose documents hold bad metadata cannot be checked out: the error names the
    /// path, and nothing is written.
    #[test]
    fn bad_metadata_fails_checkout_naming_the_path() {
        let (_d, repo) = setup();
        let id = repo.store().put_bytes(b"x").unwrap();
        let text =
            format!(r#"{{"a/passwd":"{id}",".pvrfs-meta.json":{{"links":{{"a":"/etc"}}}}}}"#);
        let err = State::from_json_bytes(text.as_bytes(), "the test state").unwrap_err();
        assert!(err.to_string().contains("'a'"), "{err}");
        assert_eq!(err.exit_code(), 3);
    }

    /// Read-only directories are filled before they become read-only.
    #[test]
    fn read_only_directories_check_out() {
        let (_d, repo) = setup();
        write(&repo, "ro/f", "f");
        chmod(&repo, "ro", 0o555);
        add_all(&repo, false, &[]);
        commit(&repo);
        let head = repo.head_state().unwrap();
        chmod(&repo, "ro", 0o755);
        fs::remove_dir_all(repo.workdir().join("ro")).unwrap();
        checkout(&repo, &head, false).unwrap();
        assert_eq!(mode(&repo, "ro"), 0o555);
        assert_eq!(
            fs::read_to_string(repo.workdir().join("ro/f")).unwrap(),
            "f"
        );
        chmod(&repo, "ro", 0o755);
    }
}

#[test]
fn parallel_probes_keep_order_and_report_a_failure() {
    use super::scan::par_map_exact;
    let items: Vec<usize> = (0..10_000).collect();
    let doubled = par_map_exact(items.clone().into_par_iter(), |i| Ok(i * 2)).unwrap();
    assert_eq!(doubled, items.iter().map(|i| i * 2).collect::<Vec<_>>());
    // one failure among many: it is the error returned, whatever else ran
    let err = par_map_exact(items.clone().into_par_iter(), |i| {
        if i == 7_777 {
            Err(Error::Other(format!("item {i} failed")))
        } else {
            Ok(i)
        }
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "item 7777 failed");
    // several: one of them
    let err = par_map_exact(items.into_par_iter(), |i| {
        if i % 1000 == 3 {
            Err(Error::Other(format!("item {i} failed")))
        } else {
            Ok(i)
        }
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("item ") && err.ends_with("3 failed"),
        "{err}"
    );
    assert!(par_map_exact(Vec::<usize>::new().into_par_iter(), Ok)
        .unwrap()
        .is_empty());
}

/// `status` takes the head from the head index (`headindex`) while the head has not moved.
mod head_index {
    use super::*;
    use crate::worktree::headindex::{HeadIndex, LoadedHead};
    use rand::{Rng, SeedableRng};
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// Never stable: a just-written `.pvr/json` as the real cutoff sees it.
    const RACY: i64 = i64::MIN;
    /// Always stable: `.pvr/json` as a status a second later sees it.
    const STABLE: i64 = i64::MAX;

    type Lists = (
        Vec<String>,
        Vec<String>,
        Vec<String>,
        Vec<String>,
        Vec<(String, &'static str)>,
    );

    fn lists<H: HeadView>(s: &Scan<H>) -> Lists {
        (
            s.added.clone(),
            s.deleted.clone(),
            s.changed.clone(),
            s.untracked.clone(),
            s.unstorable.clone(),
        )
    }

    fn how(s: &Status) -> &'static str {
        match s.head {
            LoadedHead::ByKey(_) => "key",
            LoadedHead::ByContent(_) => "content",
            LoadedHead::Parsed(_) => "parsed",
        }
    }

    fn index_path(repo: &Repo) -> PathBuf {
        repo.ext_dir().join("headindex")
    }

    /// What a status with no caches at all says: the head parsed (`scan_all` never reads the
    /// head index), and no stat cache (moved aside by rename, which keeps its mtime, and put
    /// back afterwards, so that the caches go on as they were).
    fn uncached(repo: &Repo) -> std::result::Result<Lists, String> {
        let cache = repo.ext_dir().join("statcache");
        let aside = repo.ext_dir().join("statcache.aside");
        let had = fs::rename(&cache, &aside).is_ok();
        let got = WorkTree::open(repo)
            .scan_all()
            .map(|s| lists(&s))
            .map_err(|e| e.to_string());
        if had {
            fs::rename(&aside, &cache).unwrap();
        } else {
            let _ = fs::remove_file(&cache);
        }
        got
    }

    #[test]
    fn status_parses_the_head_only_when_it_moved() {
        let (_d, repo) = setup();
        write(&repo, "a.txt", "a");
        write(&repo, "d/b.json", "{\"k\": [1, 2]}");
        write(&repo, "c.json", "\"x\"");
        add_all(&repo, false, &[]);
        commit(&repo);
        // the commit wrote the index of its state; `.pvr/json` was just written, so its stat
        // key is not recorded: the file is fingerprinted
        let st = WorkTree::open(&repo).status_with_cutoff(RACY).unwrap();
        assert_eq!((how(&st), st.is_clean()), ("content", true));
        let st = WorkTree::open(&repo).status_with_cutoff(RACY).unwrap();
        assert_eq!(how(&st), "content");
        // once it is old enough its key is recorded, and then it is not even read
        let st = WorkTree::open(&repo).status_with_cutoff(STABLE).unwrap();
        assert_eq!(how(&st), "content");
        let st = WorkTree::open(&repo).status_with_cutoff(STABLE).unwrap();
        assert_eq!((how(&st), st.is_clean()), ("key", true));
        // only changed files are read: a new value, and a reformatting that is no change
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(&repo, "d/b.json", "{\"k\": [1, 3]}");
        write(&repo, "c.json", " \"x\" ");
        let st = WorkTree::open(&repo).status_with_cutoff(STABLE).unwrap();
        assert_eq!((how(&st), st.files_read), ("key", 2));
        assert_eq!(st.changed, vec!["d/b.json"]);
        // the head moves behind the work tree's back (as `apply`, `get` or pvr would): the
        // stat key no longer matches, the fingerprint neither: parsed, and right
        let lock = repo.lock().unwrap();
        let mut head = repo.head_state().unwrap();
        head.remove("c.json");
        head.insert(
            "d/b.json",
            Entry::Inline(json::parse(b"{\"k\":[1,3]}").unwrap()),
        )
        .unwrap();
        repo.commit_state(&lock, &head, "moved", None).unwrap();
        drop(lock);
        let st = WorkTree::open(&repo).status_with_cutoff(STABLE).unwrap();
        assert_eq!(how(&st), "parsed");
        assert_eq!(
            (st.changed.len(), st.untracked.clone()),
            (0, vec!["c.json".to_string()])
        );
        let want = lists(&st);
        let st = WorkTree::open(&repo).status_with_cutoff(STABLE).unwrap();
        assert_eq!((how(&st), lists(&st)), ("key", want.clone()));
        assert_eq!(uncached(&repo), Ok(want));
    }

    #[test]
    fn a_just_written_head_is_never_believed_on_its_stat_key() {
        // The real cutoff: `.pvr/json` written now is racy, so its key is not recorded and
        // every status fingerprints the file.
        let (_d, repo) = setup();
        write(&repo, "a.txt", "a");
        add_all(&repo, false, &[]);
        commit(&repo);
        for _ in 0..3 {
            let st = WorkTree::open(&repo).status().unwrap();
            assert_eq!(how(&st), "content");
        }
        // a recorded key is believed as long as it matches, without reading the file: an
        // index keyed to the current file but built from another state is taken at its word
        let _ = WorkTree::open(&repo).status_with_cutoff(STABLE).unwrap();
        let json = repo.json_path();
        let key = StatKey::of(&fs::metadata(&json).unwrap());
        let mut other = repo.head_state().unwrap();
        other
            .insert("ghost.txt", Entry::Object(ObjectId::hash_bytes(b"g")))
            .unwrap();
        HeadIndex::build(&other, 0, Some(key)).save_to(&index_path(&repo));
        let st = WorkTree::open(&repo).status_with_cutoff(STABLE).unwrap();
        assert_eq!(
            (how(&st), st.deleted.clone()),
            ("key", vec!["ghost.txt".to_string()])
        );
        // ... and only then: the same lie under another key is checked against the bytes
        let moved = StatKey {
            ino: key.ino + 1,
            ..key
        };
        HeadIndex::build(&other, 0, Some(moved)).save_to(&index_path(&repo));
        let st = WorkTree::open(&repo).status_with_cutoff(STABLE).unwrap();
        assert_eq!((how(&st), st.is_clean()), ("parsed", true));
    }

    #[test]
    fn a_damaged_index_is_rebuilt_and_never_believed() {
        let (_d, repo) = setup();
        write(&repo, "a.txt", "a");
        write(&repo, "b.json", "{}");
        add_all(&repo, false, &[]);
        commit(&repo);
        let good = fs::read(index_path(&repo)).unwrap();
        for damage in [0, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[damage] ^= 1;
            fs::write(index_path(&repo), &bad).unwrap();
            let st = WorkTree::open(&repo).status_with_cutoff(RACY).unwrap();
            assert_eq!((how(&st), st.is_clean()), ("parsed", true));
            let st = WorkTree::open(&repo).status_with_cutoff(RACY).unwrap();
            assert_eq!(how(&st), "content");
        }
        // a head that does not parse fails as it did without an index
        fs::write(repo.json_path(), "{bad").unwrap();
        let err = WorkTree::open(&repo).status().unwrap_err().to_string();
        assert_eq!(
            err,
            WorkTree::open(&repo).scan_all().unwrap_err().to_string()
        );
    }

    /// Random edits, adds, commits and head moves: `status` (from the index, believed by key
    /// or by content) says exactly what a status with no cache says.
    #[test]
    fn status_with_the_index_equals_status_without_any_cache() {
        let (_d, repo) = setup();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(14);
        let names = [
            "a.txt",
            "b.bin",
            "d/c.txt",
            "d/e/f.txt",
            "j.json",
            "d/k.json",
            "d/e/m.json",
        ];
        let texts = ["", "one", "two", "three\n"];
        let hex = format!("\"{}\"", "ab".repeat(32));
        let values = [
            "{\"a\": 1}",
            "{ \"a\" : 1.0 }",
            "{\"a\": 2}",
            "[1, \"x\", null]",
            "\"s\"",
            hex.as_str(),
            "7e1",
            "70",
        ];
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        let mut changes = 0;
        for round in 0..150 {
            let name = names[rng.gen_range(0..names.len())];
            let abs = repo.workdir().join(name);
            match rng.gen_range(0..12) {
                0..=3 => {
                    let _ = fs::remove_file(&abs);
                    let text = if name.ends_with(".json") {
                        values[rng.gen_range(0..values.len())]
                    } else {
                        texts[rng.gen_range(0..texts.len())]
                    };
                    write(&repo, name, text);
                }
                4 => {
                    let _ = fs::remove_file(&abs);
                }
                5 => {
                    let mode = [0o644, 0o755, 0o600][rng.gen_range(0..3)];
                    let _ = fs::set_permissions(&abs, fs::Permissions::from_mode(mode));
                }
                6 => {
                    let _ = fs::remove_file(&abs);
                    let _ = fs::create_dir_all(abs.parent().unwrap());
                    let _ = symlink(["a.txt", "../x", "d"][rng.gen_range(0..3)], &abs);
                }
                7 => {
                    let empty = repo.workdir().join("d/empty");
                    if fs::remove_dir(&empty).is_err() {
                        let _ = fs::create_dir_all(&empty);
                    }
                }
                8 => {
                    let lock = repo.lock().unwrap();
                    let raw = rng.gen_bool(0.3);
                    let _ = WorkTree::open(&repo).add(&lock, repo.workdir(), &[], raw);
                }
                9 | 10 => {
                    let lock = repo.lock().unwrap();
                    let _ = WorkTree::open(&repo).commit(&lock, "r", &mut Vec::new());
                }
                _ => {
                    // the head moves behind the work tree's back
                    let lock = repo.lock().unwrap();
                    let mut head = repo.head_state().unwrap();
                    let id = ObjectId::hash_bytes(texts[rng.gen_range(0..texts.len())].as_bytes());
                    if rng.gen_bool(0.5) {
                        head.remove(name);
                    } else if name.ends_with(".json") && rng.gen_bool(0.5) {
                        let v = json::parse(values[rng.gen_range(0..values.len())].as_bytes());
                        let _ = head.insert(name, Entry::Inline(v.unwrap()));
                    } else {
                        let _ = head.insert(name, Entry::Object(id));
                    }
                    let _ = repo.commit_state(&lock, &head, "moved", None);
                }
            }
            let first = WorkTree::open(&repo).status_with_cutoff(STABLE);
            let first_how = first.as_ref().map_or("error", how);
            let first = first.map(|s| lists(&s)).map_err(|e| e.to_string());
            let second = WorkTree::open(&repo).status_with_cutoff(STABLE);
            if first.is_ok() {
                // the first status recorded the key (or found it recorded)
                assert_eq!(second.as_ref().map_or("error", how), "key", "round {round}");
            }
            let second = second.map(|s| lists(&s)).map_err(|e| e.to_string());
            *counts.entry(first_how).or_default() += 1;
            let none = uncached(&repo);
            changes += usize::from(none.as_ref().is_ok_and(|l| !l.2.is_empty()));
            assert_eq!(
                first, none,
                "round {round}: status ({first_how}) vs no cache"
            );
            assert_eq!(second, none, "round {round}: status (key) vs no cache");
        }
        // every way of getting the head was exercised, and there were changes to report
        for way in ["key", "content", "parsed"] {
            assert!(counts.get(way).is_some_and(|&n| n > 3), "{counts:?}");
        }
        assert!(changes > 50, "{changes}");
    }
}

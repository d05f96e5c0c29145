//! pvrfs's own client against `pvrfs serve` (and with the reference pvr on the other side), and
//! the server under hostile and unlucky conditions: concurrent posts, dropped and corrupt
//! uploads, slow peers, oversized requests, Ctrl-C, a non-loopback address without tokens.

use pvrfs::oid::ObjectId;
use pvrfs::repo::Repo;
use pvrfs_testkit::remote::{failed, ok, pvrfs_env, Pvr, Serve};
use pvrfs_testkit::{files as tree, repo_with};
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

fn pvrfs(dir: &Path, args: &[&str]) -> String {
    ok(&pvrfs_env(dir, args, &[]), &format!("pvrfs {args:?}"))
}

fn pvrfs_fails(dir: &Path, args: &[&str]) -> String {
    failed(&pvrfs_env(dir, args, &[]), &format!("pvrfs {args:?}"))
}

fn served(root: &Path) -> Repo {
    let dir = root.join("team/dev1");
    fs::create_dir_all(&dir).unwrap();
    let blob: Vec<u8> = (0..400_000u32).map(|i| (i * 11 % 253) as u8).collect();
    repo_with(
        &dir,
        &[
            ("bsp/kernel.img", &blob),
            ("bsp/run.json", br#"{"a":1}"#),
            ("app/x.bin", b"x"),
            ("top.txt", b"top"),
        ],
    )
}

fn no_temp_files(dir: &Path) {
    let temps: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(
        temps.is_empty(),
        "temp files left in {}: {temps:?}",
        dir.display()
    );
}

#[test]
fn pvrfs_clone_get_merge_push_against_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let root = t.join("root");
    let origin = served(&root);
    let serve = Serve::start(&root, &[], &[]);
    let url = serve.repo_url("team/dev1");

    // clone over the protocol == clone of the work directory (a work dir is a valid source)
    pvrfs(t, &["clone", &url, "remote"]);
    pvrfs(
        t,
        &["clone", root.join("team/dev1").to_str().unwrap(), "local"],
    );
    assert_eq!(tree(&t.join("remote")), tree(&t.join("local")));
    let remote = Repo::open(&t.join("remote")).unwrap();
    assert_eq!(remote.head_state().unwrap(), origin.head_state().unwrap());
    // the default directory name of a work-dir or REPO/.pvr source is the repository's name
    pvrfs(t, &["clone", root.join("team/dev1/.pvr").to_str().unwrap()]);
    assert_eq!(tree(&t.join("dev1")), tree(&t.join("local")));

    // get/merge with parts into a repository with files of its own
    let mine = t.join("mine");
    fs::create_dir_all(&mine).unwrap();
    let m = repo_with(&mine, &[("own.txt", b"own")]);
    pvrfs(&mine, &["merge", &format!("{url}#bsp")]);
    let s = m.head_state().unwrap();
    assert!(s.contains("own.txt") && s.contains("bsp/kernel.img") && !s.contains("app/x.bin"));
    pvrfs(&mine, &["get", &format!("{url}#-bsp")]);
    let s = m.head_state().unwrap();
    assert!(!s.contains("own.txt") && !s.contains("bsp/run.json") && s.contains("top.txt"));

    // push: a new revision there, byte-identical state; the message travels
    fs::write(t.join("remote/top.txt"), b"changed").unwrap();
    fs::write(t.join("remote/new.bin"), vec![9u8; 50_000]).unwrap();
    pvrfs(&t.join("remote"), &["add", "new.bin"]);
    pvrfs(&t.join("remote"), &["commit", "-m", "local change"]);
    let out = pvrfs(&t.join("remote"), &["push", &url]);
    assert!(
        out.contains("revision 2 there") && out.contains("2 of 4 objects uploaded"),
        "{out}"
    );
    let latest = origin.latest().unwrap();
    assert_eq!((latest.rev, latest.message.as_str()), (2, "local change"));
    assert_eq!(
        fs::read(origin.json_path()).unwrap(),
        fs::read(remote.json_path()).unwrap()
    );
    // a no-op push is two requests: the remote's description and its state
    let mark = serve.log_text().len();
    let out = pvrfs(&t.join("remote"), &["push", &url]);
    assert!(out.contains("0 of 4 objects uploaded"), "{out}");
    let reqs = serve.requests_since(mark);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(origin.latest().unwrap().rev, 2);
    // a get of what is already here records nothing
    let out = pvrfs(&t.join("remote"), &["get", &url]);
    assert!(out.contains("Already up to date"), "{out}");
    // a past revision by URL
    pvrfs(t, &["clone", &format!("{url}@1"), "old"]);
    assert_eq!(tree(&t.join("old")), tree(&t.join("local")));
    // push to a local repository's work directory makes a revision there
    let out = pvrfs(
        &t.join("remote"),
        &["push", t.join("local").to_str().unwrap()],
    );
    assert!(out.contains("revision 2 there"), "{out}");
    assert_eq!(
        Repo::open(&t.join("local")).unwrap().head_state().unwrap(),
        remote.head_state().unwrap()
    );
    pvrfs(&root.join("team/dev1"), &["fsck"]);
}

#[test]
fn pvrfs_and_the_reference_pvr_share_a_server() {
    let Some(pvr) = Pvr::find("pvrfs_and_the_reference_pvr_share_a_server") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let root = t.join("root");
    served(&root);
    let serve = Serve::start(&root, &[], &[]);
    let url = serve.repo_url("team/dev1");
    // pvr posts, pvrfs gets exactly that
    pvr.ok(t, &["clone", &url, "p"]);
    fs::write(t.join("p/by-pvr.txt"), b"pvr was here").unwrap();
    pvr.ok(&t.join("p"), &["add", "."]);
    pvr.ok(&t.join("p"), &["commit", "-m", "pvr"]);
    pvr.ok(&t.join("p"), &["post", "-m", "from pvr", &url]);
    pvrfs(t, &["clone", &url, "f"]);
    assert_eq!(
        fs::read(t.join("f/.pvr/json")).unwrap(),
        fs::read(t.join("p/.pvr/json")).unwrap()
    );
    assert_eq!(tree(&t.join("f")), tree(&t.join("p")));
    // pvrfs pushes, pvr gets exactly that
    fs::write(t.join("f/by-pvrfs.txt"), b"pvrfs too").unwrap();
    pvrfs(&t.join("f"), &["add"]);
    pvrfs(&t.join("f"), &["commit", "-m", "pvrfs"]);
    pvrfs(&t.join("f"), &["push", &url]);
    pvr.ok(&t.join("p"), &["get", &url]);
    pvr.ok(&t.join("p"), &["checkout"]);
    assert_eq!(
        fs::read(t.join("f/.pvr/json")).unwrap(),
        fs::read(t.join("p/.pvr/json")).unwrap()
    );
    assert_eq!(tree(&t.join("f")), tree(&t.join("p")));
}

#[test]
fn two_pushes_on_one_base_one_wins_the_other_gets_a_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let root = t.join("root");
    let origin = served(&root);
    let serve = Serve::start(&root, &[], &[]);
    let url = serve.repo_url("team/dev1");
    for name in ["a", "b", "c", "d"] {
        pvrfs(t, &["clone", &url, name]);
        fs::write(t.join(name).join("top.txt"), format!("from {name}")).unwrap();
        pvrfs(&t.join(name), &["commit", "-m", name]);
    }
    // one after the other: the second has not seen the first's revision
    pvrfs(&t.join("a"), &["push", &url]);
    assert_eq!(origin.latest().unwrap().rev, 2);
    let err = pvrfs_fails(&t.join("b"), &["push", &url]);
    assert!(
        err.contains("conflict") && err.contains("revision 2") && err.contains("merge"),
        "{err}"
    );
    assert_eq!(origin.latest().unwrap().rev, 2);
    assert_eq!(
        fs::read(origin.json_path()).unwrap(),
        fs::read(t.join("a/.pvr/json")).unwrap()
    );
    // after merging what it had not seen, it may push
    pvrfs(&t.join("b"), &["merge", &format!("{url}#bsp")]);
    pvrfs(&t.join("b"), &["push", &url]);
    assert_eq!(origin.latest().unwrap().rev, 3);
    // --force replaces without merging
    pvrfs(&t.join("c"), &["push", "--force", &url]);
    assert_eq!(origin.latest().unwrap().rev, 4);

    // at the same time: exactly one wins, the other gets a conflict either way
    for name in ["d", "e"] {
        let _ = fs::remove_dir_all(t.join(name));
        pvrfs(t, &["clone", &url, name]);
        fs::write(t.join(name).join("top.txt"), format!("from {name}")).unwrap();
        pvrfs(&t.join(name), &["commit", "-m", name]);
    }
    let (rd, re) = std::thread::scope(|s| {
        let d = s.spawn(|| pvrfs_env(&t.join("d"), &["push", &url], &[]));
        let e = s.spawn(|| pvrfs_env(&t.join("e"), &["push", &url], &[]));
        (d.join().unwrap(), e.join().unwrap())
    });
    let (winner, loser) = match (rd.status.success(), re.status.success()) {
        (true, false) => ("d", re),
        (false, true) => ("e", rd),
        other => panic!("exactly one push must win: {other:?}\n{rd:?}\n{re:?}"),
    };
    let err = String::from_utf8_lossy(&loser.stderr).into_owned();
    assert!(
        err.contains("conflict") && err.contains("revision 5"),
        "{err}"
    );
    assert_eq!(origin.latest().unwrap().rev, 5);
    assert_eq!(
        fs::read(origin.json_path()).unwrap(),
        fs::read(t.join(winner).join(".pvr/json")).unwrap()
    );
}

/// Offer an object over the protocol and return its signed upload URL.
fn upload_url(url: &str, data: &[u8]) -> String {
    let id = ObjectId::hash_bytes(data);
    let body = format!(
        r#"{{"objectname":"x","sha256sum":"{id}","size":"{}"}}"#,
        data.len()
    );
    let resp = ureq::post(&format!("{url}/objects/"))
        .send_string(&body)
        .unwrap();
    let v: serde_json::Value = serde_json::from_reader(resp.into_reader()).unwrap();
    v["signed-puturl"].as_str().unwrap().to_string()
}

/// Send `head` then `body` on a raw connection to `url`'s host, then close it.
fn raw(url: &str, head: &str, body: &[u8]) -> TcpStream {
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    let mut s = TcpStream::connect(host).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    s
}

fn path_and_query(url: &str) -> String {
    let rest = url.trim_start_matches("http://");
    rest[rest.find('/').unwrap()..].to_string()
}

#[test]
fn dropped_and_corrupt_uploads_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let root = t.join("root");
    let origin = served(&root);
    let serve = Serve::start(&root, &[], &[]);
    let url = serve.repo_url("team/dev1");
    let store = origin.store().dir().to_path_buf();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
    let id = ObjectId::hash_bytes(&data);

    // a connection dropped halfway through the upload
    let put = upload_url(&url, &data);
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        path_and_query(&put),
        data.len()
    );
    drop(raw(&url, &head, &data[..300_000]));
    assert!(
        pvrfs_testkit::remote::wait_for_line(&serve.log, "broke off", Duration::from_secs(10)),
        "{}",
        serve.log_text()
    );
    assert!(!origin.store().contains(&id));
    no_temp_files(&store);

    // the right length, the wrong bytes
    let mut bad = data.clone();
    bad[500_000] ^= 1;
    let err = ureq::put(&put).send_bytes(&bad).unwrap_err();
    let ureq::Error::Status(400, resp) = err else {
        panic!("{err:?}")
    };
    assert!(resp.into_string().unwrap().contains("nothing was stored"));
    assert!(!origin.store().contains(&id));
    no_temp_files(&store);

    // a post that breaks off commits nothing
    let body = format!(r#"{{"commit-msg":"x","rev":-1,"state":{{"a.bin":"{id}"}}}}"#);
    let head = format!(
        "POST /team/dev1/post HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    drop(raw(&url, &head, &body.as_bytes()[..body.len() / 2]));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(origin.latest().unwrap().rev, 1);

    // a state whose object never arrived is refused, naming it
    let resp = ureq::post(&format!("{url}/post"))
        .send_string(&body)
        .unwrap_err();
    let ureq::Error::Status(422, resp) = resp else {
        panic!("{resp:?}")
    };
    assert!(resp.into_string().unwrap().contains(&id.to_hex()));
    assert_eq!(origin.latest().unwrap().rev, 1);

    // pvrfs push of a repository whose local object is corrupt publishes nothing
    pvrfs(t, &["clone", &url, "c"]);
    fs::write(t.join("c/new.bin"), &data).unwrap();
    pvrfs(&t.join("c"), &["add"]);
    pvrfs(&t.join("c"), &["commit", "-m", "new"]);
    let local = Repo::open(&t.join("c")).unwrap();
    fs::write(local.store().path_of(&id), &bad).unwrap();
    let err = pvrfs_fails(&t.join("c"), &["push", &url]);
    assert!(err.contains(&id.to_hex()), "{err}");
    assert!(!origin.store().contains(&id));
    assert_eq!(origin.latest().unwrap().rev, 1);
    no_temp_files(&store);
}

#[test]
fn slow_and_oversized_requests_are_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    served(&root);
    let serve = Serve::start(
        &root,
        &[
            "--idle-timeout",
            "1",
            "--max-json-size",
            "1000",
            "--max-object-size",
            "2000000",
        ],
        &[],
    );
    let url = serve.repo_url("team/dev1");
    // a peer that starts a request and stalls is disconnected after the idle timeout
    let start = Instant::now();
    let mut s = raw(&url, "GET /team/dev1/json HTTP/1.1\r\nHo", b"");
    let mut buf = [0u8; 64];
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let n = s.read(&mut buf).unwrap_or(0);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "held for {:?}",
        start.elapsed()
    );
    let _ = n;
    // an upload that stalls halfway: cut off, nothing stored
    let data = vec![5u8; 100_000];
    let put = upload_url(&url, &data);
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
        path_and_query(&put)
    );
    let mut s = raw(&url, &head, &data[..10_000]);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "held for {:?}",
        start.elapsed()
    );
    assert!(
        pvrfs_testkit::remote::wait_for_line(
            &serve.log,
            "sent nothing for 1 s",
            Duration::from_secs(5)
        ),
        "{}",
        serve.log_text()
    );
    let origin = Repo::open(&root.join("team/dev1")).unwrap();
    assert!(!origin.store().contains(&ObjectId::hash_bytes(&data)));
    no_temp_files(origin.store().dir());
    // bodies over the limits
    let big = format!(r#"{{"state":{{"x.json":"{}"}}}}"#, "y".repeat(5000));
    let err = ureq::post(&format!("{url}/post"))
        .send_string(&big)
        .unwrap_err();
    assert!(matches!(err, ureq::Error::Status(413, _)), "{err:?}");
    let id = ObjectId::hash_bytes(b"z");
    let err = ureq::post(&format!("{url}/objects/"))
        .send_string(&format!(r#"{{"sha256sum":"{id}","size":"3000000"}}"#))
        .unwrap_err();
    assert!(matches!(err, ureq::Error::Status(413, _)), "{err:?}");
    // the server still serves
    assert_eq!(
        ureq::get(&format!("{url}/json")).call().unwrap().status(),
        200
    );
}

#[test]
fn serve_refuses_an_open_address_without_tokens_and_stops_on_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    served(&root);
    let out = pvrfs_env(tmp.path(), &["serve", "--listen", "0.0.0.0:0", "root"], &[]);
    let err = failed(&out, "serve on 0.0.0.0 without tokens");
    assert!(err.contains("--tokens") && err.contains("0.0.0.0"), "{err}");
    assert_eq!(out.status.code(), Some(2));
    let tokens = tmp.path().join("tokens");
    fs::write(&tokens, "short read *\n").unwrap();
    let err = Serve::try_start(&root, &["--tokens", tokens.to_str().unwrap()], &[])
        .err()
        .unwrap();
    assert!(
        err.contains("tokens:1") && err.contains("too short"),
        "{err}"
    );

    let mut serve = Serve::start(&root, &[], &[]);
    let url = serve.repo_url("team/dev1");
    assert_eq!(
        ureq::get(&format!("{url}/.pvrremote"))
            .call()
            .unwrap()
            .status(),
        200
    );
    let status = serve.interrupt();
    assert!(status.success(), "{status}");
    assert!(serve.log_text().contains("stopped"), "{}", serve.log_text());
    assert!(ureq::get(&format!("{url}/.pvrremote")).call().is_err());
}

#[test]
fn tokens_for_the_pvrfs_client() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let root = t.join("root");
    let origin = served(&root);
    let tokens = t.join("tokens");
    fs::write(&tokens, "writer-token-0123456789 write team/*\n").unwrap();
    let serve = Serve::start(&root, &["--tokens", tokens.to_str().unwrap()], &[]);
    let url = serve.repo_url("team/dev1");
    let err = pvrfs_fails(t, &["clone", &url, "x"]);
    assert!(err.contains("401") && err.contains("--token"), "{err}");
    assert!(!t.join("x").exists());
    let env = [(
        "PVRFS_TOKEN".to_string(),
        "writer-token-0123456789".to_string(),
    )];
    ok(
        &pvrfs_env(t, &["clone", &url, "x"], &env),
        "clone with PVRFS_TOKEN",
    );
    fs::write(t.join("x/top.txt"), b"new").unwrap();
    pvrfs(&t.join("x"), &["commit", "-m", "tok"]);
    pvrfs(
        &t.join("x"),
        &["push", "--token", "writer-token-0123456789", &url],
    );
    assert_eq!(origin.latest().unwrap().rev, 2);
    let err = pvrfs_fails(
        &t.join("x"),
        &["push", "--token", "wrong-token-0123456789", &url],
    );
    assert!(err.contains("401") && err.contains("not accepted"), "{err}");
}

#[test]
fn pvrfs_client_against_serve_with_objects_in_garage() {
    let Some(garage) = pvrfs_testkit::remote::Garage::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let root = t.join("root");
    let origin = served(&root);
    let store = format!("s3://{}/srv", garage.bucket);
    let serve = Serve::start(&root, &["--store", &store], &garage.env());
    let url = serve.repo_url("team/dev1");
    // objects of the served repository's own store are still served
    pvrfs(t, &["clone", &url, "c"]);
    assert_eq!(
        Repo::open(&t.join("c")).unwrap().head_state().unwrap(),
        origin.head_state().unwrap()
    );
    // a push sends the new objects to the bucket through presigned URLs
    let data: Vec<u8> = (0..700_000u32).map(|i| (i % 199) as u8).collect();
    let id = ObjectId::hash_bytes(&data);
    fs::write(t.join("c/new.bin"), &data).unwrap();
    pvrfs(&t.join("c"), &["add"]);
    pvrfs(&t.join("c"), &["commit", "-m", "to s3"]);
    let out = pvrfs(&t.join("c"), &["push", &url]);
    assert!(out.contains("1 of 4 objects uploaded"), "{out}");
    let bucket = garage.bucket();
    let key = format!("srv/team/dev1/objects/{id}");
    assert_eq!(
        bucket.head(&key).unwrap().map(|h| h.len),
        Some(data.len() as u64)
    );
    assert!(!origin.store().contains(&id));
    assert_eq!(origin.latest().unwrap().rev, 2);
    // and another client gets it from the bucket
    pvrfs(t, &["clone", &url, "d"]);
    assert_eq!(fs::read(t.join("d/new.bin")).unwrap(), data);

    // the presigned upload URL only takes the right bytes (the service checks the sha256)
    let other: Vec<u8> = vec![42u8; 1000];
    let put = upload_url(&url, &other);
    assert!(put.contains("x-amz-checksum-sha256"), "{put}");
    let err = ureq::put(&put).send_bytes(&vec![43u8; 1000]).unwrap_err();
    assert!(matches!(err, ureq::Error::Status(400, _)), "{err:?}");
    let other_id = ObjectId::hash_bytes(&other);
    assert!(bucket
        .head(&format!("srv/team/dev1/objects/{other_id}"))
        .unwrap()
        .is_none());
    // an object planted under a wrong name is found out when a state wants it, and deleted
    let planted = ObjectId::hash_bytes(b"what the name says");
    let planted_key = format!("srv/team/dev1/objects/{planted}");
    bucket
        .put_bytes(&planted_key, b"something else", "application/octet-stream")
        .unwrap();
    let body = format!(r#"{{"rev":-1,"state":{{"p.bin":"{planted}","q.bin":"{other_id}"}}}}"#);
    let err = ureq::post(&format!("{url}/post"))
        .send_string(&body)
        .unwrap_err();
    let ureq::Error::Status(422, resp) = err else {
        panic!("{err:?}")
    };
    let text = resp.into_string().unwrap();
    assert!(
        text.contains(&planted.to_hex()) && text.contains(&other_id.to_hex()),
        "{text}"
    );
    assert!(
        bucket.head(&planted_key).unwrap().is_none(),
        "the bad object is deleted"
    );
    assert_eq!(origin.latest().unwrap().rev, 2);
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn big_objects_stream_through_the_server_with_bounded_memory() {
    // Big enough that holding it whole would show (the server's own footprint is ~15 MiB).
    const SIZE: usize = 48 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let repo_dir = t.join("root/big");
    fs::create_dir_all(&repo_dir).unwrap();
    let mut f = fs::File::create(repo_dir.join("big.img")).unwrap();
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    for i in 0..SIZE / chunk.len() {
        let mut c = chunk.clone();
        c[0] = i as u8;
        f.write_all(&c).unwrap();
    }
    drop(f);
    pvrfs(&repo_dir, &["init"]);
    pvrfs(&repo_dir, &["add"]);
    pvrfs(&repo_dir, &["commit", "-m", "big"]);
    let serve = Serve::start(&t.join("root"), &[], &[]);
    let url = serve.repo_url("big");
    // download through the server, then upload a changed copy through it
    pvrfs(t, &["clone", &url, "c"]);
    assert_eq!(
        fs::metadata(t.join("c/big.img")).unwrap().len(),
        SIZE as u64
    );
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(t.join("c/big.img"))
        .unwrap();
    f.write_all(b"changed").unwrap();
    drop(f);
    pvrfs(&t.join("c"), &["commit", "-m", "changed"]);
    let out = pvrfs(&t.join("c"), &["push", &url]);
    assert!(out.contains("1 of 1 objects uploaded"), "{out}");
    let peak = peak_rss(serve.pid());
    eprintln!("server peak RSS: {} MiB", peak >> 20);
    assert!(
        peak < 40 << 20,
        "the server peaked at {} MiB for a {} MiB object",
        peak >> 20,
        SIZE >> 20
    );
    assert_eq!(Repo::open(&repo_dir).unwrap().latest().unwrap().rev, 2);
}

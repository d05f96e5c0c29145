//! Hostile HTTP servers (issue 11, item 6, and item 1 over HTTP): a real TCP server on a
//! loopback port, written here, that redirects to `file://`, sends endless bodies, announces a
//! length it never sends, trickles, or announces a huge length; and a `get` killed by SIGTERM
//! in the middle of an endless download. Each must end in a clear error (never a panic), keep
//! the repository as it was, and leave no temp file in the object store.

use pvrfs_testkit as common;

use common::*;
use std::path::Path;

/// `pvrfs ARGS` in `dir` (HOME there too), whatever its exit code.
fn run_in(dir: &Path, args: &[&str]) -> std::process::Output {
    pvrfs(args).dir(dir).run().out
}
use common::hostile::{Reply, Server};
use pvrfs::oid::ObjectId;
use std::collections::HashMap;
use std::fs;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A publication whose object `big` behaves as `reply`; returns the routes and the object's path.
fn publication(reply: Reply) -> (HashMap<String, Reply>, String) {
    let small = b"alpha".to_vec();
    let (is, ib) = (
        ObjectId::hash_bytes(&small),
        ObjectId::hash_bytes(b"the real big object"),
    );
    let json = format!(r##"{{"#spec":"x@1","a":"{is}","big":"{ib}"}}"##);
    let big = format!("/r/objects/{ib}");
    let routes = HashMap::from([
        ("/r/json".to_string(), Reply::Bytes(json.into_bytes())),
        (format!("/r/objects/{is}"), Reply::Bytes(small)),
        (big.clone(), reply),
    ]);
    (routes, big)
}

/// Everything in the object store that is not a verified object (temp files, leftovers).
fn strays(store: &Path) -> Vec<String> {
    names(store)
        .into_iter()
        .filter(|n| ObjectId::from_hex(n).is_err())
        .collect()
}

/// Run `pvrfs get URL ARGS` in a fresh repository; returns (exit code, stderr, seconds, dir).
fn get(server: &Server, args: &[&str]) -> (Option<i32>, String, f64, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    repo_with(tmp.path(), &[("local", b"l")]);
    let before = fs::read(tmp.path().join(".pvr/json")).unwrap();
    let url = server.url();
    let mut all = vec!["get", url.as_str()];
    all.extend_from_slice(args);
    let t = Instant::now();
    let out = run_in(tmp.path(), &all);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(
        fs::read(tmp.path().join(".pvr/json")).unwrap(),
        before,
        "the head moved"
    );
    let store = tmp.path().join(".pvr/objects");
    assert_eq!(strays(&store), Vec::<String>::new(), "left in the store");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        secs,
        tmp,
    )
}

#[test]
fn a_redirect_to_file_is_refused_with_an_error_not_a_panic() {
    for target in ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://x/"] {
        let (routes, big) = publication(Reply::Redirect(target.into()));
        let server = Server::start(routes);
        let (code, err, _, _) = get(&server, &[]);
        assert_eq!(code, Some(1), "{target}: {err}");
        assert!(
            err.contains("refusing to follow") && err.contains(target) && err.contains(&big),
            "{target}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(server.hits(&big), 1, "a refused redirect is not retried");
    }
    // Redirects to http(s) are followed (a few, not forever).
    let (mut routes, big) = publication(Reply::Redirect("/r/moved".into()));
    let Reply::Bytes(json) = routes["/r/json"].clone() else {
        unreachable!()
    };
    routes.insert("/r/json".into(), Reply::Redirect("/r/state".into()));
    routes.insert("/r/state".into(), Reply::Bytes(json));
    routes.insert(big.clone(), Reply::Redirect(big.clone()));
    let server = Server::start(routes);
    let (code, err, _, _) = get(&server, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("more than 5 redirects"), "{err}");
    assert_eq!(
        server.hits("/r/state"),
        1,
        "the state's redirect was followed"
    );
}

#[test]
fn an_endless_body_stops_at_the_first_byte_past_the_limit() {
    let (routes, big) = publication(Reply::Endless);
    let server = Server::start(routes);
    let (code, err, _, _) = get(&server, &["--max-object-size", "1M"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("larger than the limit of 1048576 bytes") && err.contains(&big),
        "{err}"
    );
    assert_eq!(server.hits(&big), 1, "a body over the limit is not retried");
    // The server got to send little more than the limit (socket buffers aside).
    assert!(server.sent.load(Ordering::SeqCst) < 64 << 20);
}

#[test]
fn an_announced_length_over_the_limit_fails_at_once() {
    let (routes, big) = publication(Reply::Announce(10 << 30));
    let server = Server::start(routes);
    let (code, err, _, _) = get(&server, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("announces 10737418240 bytes"), "{err}");
    assert_eq!(server.hits(&big), 1);
}

/// A 5-byte object announced and stalled after 2 bytes used to cost 5 attempts of 60 s each.
#[test]
fn a_stalled_body_is_cut_off_after_the_grace_time_once() {
    let (routes, big) = publication(Reply::Stall {
        announced: 5,
        sent: b"ab".to_vec(),
    });
    let server = Server::start(routes);
    let (code, err, secs, _) = get(&server, &["--transfer-grace", "2"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&big) && err.contains("gave up after 1 attempts"),
        "{err}"
    );
    assert_eq!(server.hits(&big), 1, "no new attempt after the deadline");
    assert!(secs < 20.0, "took {secs} s");
}

/// A server that sends a byte every 300 ms: below any useful throughput.
#[test]
fn a_trickling_server_is_cut_off_by_the_transfer_deadline() {
    let (routes, big) = publication(Reply::Trickle {
        bytes: vec![7u8; 1000],
        every: Duration::from_millis(300),
    });
    let server = Server::start(routes);
    let (code, err, secs, _) = get(
        &server,
        &["--transfer-grace", "2", "--min-throughput", "1K"],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("too slow") && err.contains(&big), "{err}");
    assert_eq!(server.hits(&big), 1);
    assert!(secs < 20.0, "took {secs} s");
}

/// SIGTERM in the middle of an endless download: nothing stays in the store, with anonymous
/// temp objects (the default) and with named ones (file systems without `O_TMPFILE`).
#[test]
fn sigterm_during_a_download_leaves_no_temp_file() {
    for named in [false, true] {
        let (routes, _) = publication(Reply::Endless);
        let server = Server::start(routes);
        let tmp = tempfile::tempdir().unwrap();
        repo_with(tmp.path(), &[]);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pvrfs"));
        cmd.args(["get", &server.url()])
            .current_dir(tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if named {
            cmd.env("PVRFS_STORE_NAMED_TEMPS", "1");
        }
        let mut child = cmd.spawn().unwrap();
        let store = tmp.path().join(".pvr/objects");
        let t = Instant::now();
        while server.sent.load(Ordering::SeqCst) < 8 << 20 && t.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        if named {
            assert!(
                !strays(&store).is_empty(),
                "the named temp file should exist meanwhile"
            );
        }
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(libc::SIGTERM),
            "named={named}: {status:?}"
        );
        assert_eq!(strays(&store), Vec::<String>::new(), "named={named}");
    }
}

/// Item 1 over HTTP: a served state with a key under `.pvr/` is refused before any object moves.
#[test]
fn a_served_state_with_keys_under_pvr_is_refused() {
    let bytes = b"poison".to_vec();
    let id = ObjectId::hash_bytes(&bytes);
    let routes = HashMap::from([
        (
            "/r/json".to_string(),
            Reply::Bytes(format!(r#"{{".pvr/objects/{id}":"{id}"}}"#).into_bytes()),
        ),
        (format!("/r/objects/{id}"), Reply::Bytes(bytes)),
    ]);
    let server = Server::start(routes);
    let (code, err, _, tmp) = get(&server, &[]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains(&format!("'.pvr/objects/{id}'")) && err.contains("/r/json"),
        "{err}"
    );
    assert_eq!(server.hits(&format!("/r/objects/{id}")), 0);
    let out = run_in(tmp.path(), &["clone", &server.url(), "c"]);
    assert_eq!(out.status.code(), Some(3));
}

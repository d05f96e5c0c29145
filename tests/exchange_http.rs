//! get / clone / push over HTTP: against a real nginx (WebDAV PUT) on a loopback port, and
//! against a misbehaving server that drops connections, answers 500, truncates or corrupts.

use pvrfs_testkit as common;

use common::*;
use pvrfs::exchange::{self, Location, Mode, Options, Parts};
use pvrfs::oid::ObjectId;
use pvrfs::repo::Repo;
use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn push_to_nginx_then_clone_and_get_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("www");
    fs::create_dir(&root).unwrap();
    let Some(nginx) = Nginx::start(&root) else {
        eprintln!("SKIP: nginx is not installed (scripts/setup-deps installs nginx-light)");
        return;
    };
    let a = tmp.path().join("a");
    fs::create_dir(&a).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("d{}/f{i}", i % 3), format!("file {i}").into_bytes()))
        .chain([("blob/big.img".to_string(), big)])
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let repo = repo_with(&a, &refs);
    let url = nginx.url("pub/dev1/");
    let out = pvrfs(["push", &url]).dir(&a).ok();
    assert!(out.contains("41 of 41 objects uploaded"), "{out}");
    assert_eq!(
        fs::read(root.join("pub/dev1/json")).unwrap(),
        repo.head_state().unwrap().to_canonical_bytes()
    );
    let out = pvrfs(["push", &url]).dir(&a).ok();
    assert!(out.contains("0 of 41 objects uploaded"), "{out}");

    pvrfs(["clone", &url, "b"]).dir(tmp.path()).ok();
    let b = Repo::open(&tmp.path().join("b")).unwrap();
    assert_eq!(
        b.head_state().unwrap().state_id(),
        repo.head_state().unwrap().state_id()
    );
    let mut expected = files.clone();
    expected.sort();
    assert_eq!(common::files(&tmp.path().join("b")), expected);
    let out = pvrfs(["get", &url]).dir(&tmp.path().join("b")).ok();
    assert!(
        out.contains("Fetched 0 of 41") && out.contains("Already up to date"),
        "{out}"
    );

    // parts over HTTP, into a repo that has other files
    let c = tmp.path().join("c");
    fs::create_dir(&c).unwrap();
    let other = repo_with(&c, &[("mine", b"m")]);
    pvrfs(["merge", &format!("{url}#d1")]).dir(&c).ok();
    let s = other.head_state().unwrap();
    assert!(s.contains("mine") && s.contains("d1/f1") && !s.contains("d0/f0"));
    // a missing repository is a clear error, nothing changes
    let err = pvrfs(["get", &nginx.url("nothing/")]).dir(&c).fails();
    assert!(err.contains("nothing/json") && err.contains("404"), "{err}");
    assert_eq!(other.head_state().unwrap(), s);
}

/// What the fake server does with the n-th request (1-based) for a path.
#[derive(Clone, Copy, Debug)]
enum Act {
    Serve,
    Status500,
    Drop,
    Truncate,
    Corrupt,
    NotFound,
}

struct BadServer {
    port: u16,
    stop: Arc<AtomicBool>,
    hits: Arc<Mutex<HashMap<String, u32>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BadServer {
    /// Serve `files` (path → bytes), misbehaving as `act(path, n)` says.
    fn start(
        files: HashMap<String, Vec<u8>>,
        act: impl Fn(&str, u32) -> Act + Send + Sync + 'static,
    ) -> BadServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let hits: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let (stop2, hits2) = (stop.clone(), hits.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                        break;
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let n = {
                    let mut hits = hits2.lock().unwrap();
                    let n = hits.entry(path.clone()).or_default();
                    *n += 1;
                    *n
                };
                let body = files.get(&path).cloned();
                let head = |code: &str, len: usize| {
                    format!("HTTP/1.1 {code}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
                };
                let _ = match (act(&path, n), body) {
                    (Act::Drop, _) => Ok(()),
                    (Act::Status500, _) => conn.write_all(head("500 Oops", 0).as_bytes()),
                    (Act::NotFound, _) | (_, None) => {
                        conn.write_all(head("404 Not Found", 0).as_bytes())
                    }
                    (Act::Serve, Some(b)) => conn
                        .write_all(head("200 OK", b.len()).as_bytes())
                        .and_then(|_| conn.write_all(&b)),
                    (Act::Truncate, Some(b)) => conn
                        .write_all(head("200 OK", b.len()).as_bytes())
                        .and_then(|_| conn.write_all(&b[..b.len() / 2])),
                    (Act::Corrupt, Some(mut b)) => {
                        b[0] ^= 0xff;
                        conn.write_all(head("200 OK", b.len()).as_bytes())
                            .and_then(|_| conn.write_all(&b))
                    }
                };
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        });
        BadServer {
            port,
            stop,
            hits,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/r", self.port)
    }

    fn hits(&self, path: &str) -> u32 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

impl Drop for BadServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fast() -> Options {
    Options {
        jobs: 2,
        attempts: 3,
        backoff: Duration::from_millis(10),
        ..Options::default()
    }
}

/// A remote with two objects; returns (files, ids).
fn remote_files() -> (HashMap<String, Vec<u8>>, ObjectId, ObjectId) {
    let a = b"alpha".to_vec();
    let b: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let (ia, ib) = (ObjectId::hash_bytes(&a), ObjectId::hash_bytes(&b));
    let json = format!(r##"{{"#spec":"x@1","a":"{ia}","big":"{ib}"}}"##);
    let files = HashMap::from([
        ("/r/json".to_string(), json.into_bytes()),
        (format!("/r/objects/{ia}"), a),
        (format!("/r/objects/{ib}"), b),
    ]);
    (files, ia, ib)
}

#[test]
fn transient_failures_are_retried_a_bounded_number_of_times() {
    let (files, ia, ib) = remote_files();
    let big = format!("/r/objects/{ib}");
    let big2 = big.clone();
    let server = BadServer::start(files, move |path, n| match (path == big2, n) {
        (true, 1) => Act::Drop,
        (true, 2) => Act::Truncate,
        (false, 1) if path != "/r/json" => Act::Status500,
        _ => Act::Serve,
    });
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo_with(tmp.path(), &[]);
    let loc = Location::Http(server.url());
    let o = exchange::get_into(&repo, &loc, &Parts::default(), Mode::Get, "get", &fast()).unwrap();
    assert_eq!((o.transfer.objects, o.transfer.moved), (2, 2));
    assert!(repo.store().contains(&ia) && repo.store().contains(&ib));
    assert_eq!(server.hits(&big), 3);
    assert_eq!(server.hits(&format!("/r/objects/{ia}")), 2);
}

#[test]
fn persistent_failures_leave_the_repo_untouched() {
    for act in [
        Act::Status500,
        Act::Drop,
        Act::Truncate,
        Act::Corrupt,
        Act::NotFound,
    ] {
        let (files, ia, ib) = remote_files();
        let big = format!("/r/objects/{ib}");
        let big2 = big.clone();
        let server = BadServer::start(
            files,
            move |path, _| if path == big2 { act } else { Act::Serve },
        );
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo_with(tmp.path(), &[("local", b"l")]);
        let json_before = fs::read(repo.json_path()).unwrap();
        let revs = repo.revisions().unwrap().len();
        let loc = Location::Http(server.url());
        let err = exchange::get_into(&repo, &loc, &Parts::default(), Mode::Get, "get", &fast())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&big) && err.contains("'big'"),
            "{act:?}: {err}"
        );
        match act {
            Act::NotFound => {
                assert!(err.contains("404"), "{err}");
                assert_eq!(server.hits(&big), 1, "404 is not retried");
            }
            _ => {
                assert!(err.contains("gave up after 3 attempts"), "{act:?}: {err}");
                assert_eq!(server.hits(&big), 3, "{act:?}: bounded retries");
            }
        }
        if matches!(act, Act::Corrupt) {
            assert!(err.contains("hash"), "{err}");
        }
        assert_eq!(fs::read(repo.json_path()).unwrap(), json_before, "{act:?}");
        assert_eq!(repo.revisions().unwrap().len(), revs, "{act:?}");
        assert!(!repo.store().contains(&ib), "{act:?}: bad object stored");
        // no temp files left in the store
        assert!(
            names(repo.store().dir())
                .iter()
                .all(|n| !n.starts_with(".tmp")),
            "{act:?}"
        );
        // the good object may stay: a retry then only fetches the missing one
        let _ = ia;
    }
}

#[test]
fn an_invalid_remote_state_is_refused_before_any_object_moves() {
    let (mut files, _, ib) = remote_files();
    files.insert(
        "/r/json".into(),
        format!(r#"{{"big":"{ib}","../x":"{ib}"}}"#).into_bytes(),
    );
    let server = BadServer::start(files, |_, _| Act::Serve);
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo_with(tmp.path(), &[]);
    let err = pvrfs(["get", &server.url()]).dir(tmp.path()).fails();
    assert!(err.contains("'../x'") && err.contains("/r/json"), "{err}");
    assert_eq!(server.hits(&format!("/r/objects/{ib}")), 0);
    assert!(!repo.store().contains(&ib));
}

#[test]
fn push_never_publishes_json_when_an_object_upload_fails() {
    let server = BadServer::start(HashMap::new(), |path, _| {
        if path.contains("/objects/") {
            Act::Status500
        } else {
            Act::Serve
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo_with(tmp.path(), &[("a", b"a")]);
    let err = exchange::push(&repo, &Location::Http(server.url()), &fast())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("500") && err.contains("gave up after 3 attempts"),
        "{err}"
    );
    assert_eq!(
        server.hits("/r/json"),
        0,
        "json was sent although an object failed"
    );
}

#[test]
fn a_repeated_get_resumes_and_fetches_only_what_is_missing() {
    let (files, ia, ib) = remote_files();
    let big = format!("/r/objects/{ib}");
    let small = format!("/r/objects/{ia}");
    let healthy = Arc::new(AtomicBool::new(false));
    let (h2, big2) = (healthy.clone(), big.clone());
    let server = BadServer::start(files, move |path, _| {
        if path == big2 && !h2.load(Ordering::SeqCst) {
            Act::Status500
        } else {
            Act::Serve
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo_with(tmp.path(), &[]);
    let loc = Location::Http(server.url());
    let opts = fast(); // two threads: the small object is fetched while the big one fails
    exchange::get_into(&repo, &loc, &Parts::default(), Mode::Get, "get", &opts).unwrap_err();
    assert!(repo.store().contains(&ia) && !repo.store().contains(&ib));
    healthy.store(true, Ordering::SeqCst);
    let o = exchange::get_into(&repo, &loc, &Parts::default(), Mode::Get, "get", &opts).unwrap();
    assert_eq!((o.transfer.objects, o.transfer.moved), (2, 1));
    assert_eq!(
        server.hits(&small),
        1,
        "the verified object was fetched again"
    );
    assert_eq!(repo.head_state().unwrap().object_ids().len(), 2);
}

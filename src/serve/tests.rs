//! The protocol logic without a network: `Server::handle` with request heads and byte bodies.

use super::*;
use crate::state::Entry;
use std::io;

const HOST: &str = "127.0.0.1:9";

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    server: Server,
}

/// A root with repository `dev1` (revision 1: `a.txt`, `cfg.json`) and the given tokens.
fn fixture(tokens: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let repo_dir = root.join("dev1");
    std::fs::create_dir_all(&repo_dir).unwrap();
    let repo = Repo::init(&repo_dir, None, None).unwrap();
    let mut state = repo.head_state().unwrap();
    let id = repo.store().put_bytes(b"alpha").unwrap();
    state.insert("a.txt", Entry::Object(id)).unwrap();
    state
        .insert(
            "cfg.json",
            Entry::Inline(json::parse(b"{\"k\":1}").unwrap()),
        )
        .unwrap();
    let lock = repo.lock().unwrap();
    repo.commit_state(&lock, &state, "one", None).unwrap();
    let server = Server::new(Config {
        root: root.clone(),
        tokens: tokens.map(|t| Tokens::parse(t, "tokens").unwrap()),
        backend: Backend::Local,
        public_url: None,
        limits: Limits::default(),
    })
    .unwrap();
    Fixture {
        _dir: dir,
        root,
        server,
    }
}

fn head(method: Method, path: &str) -> RequestHead {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    RequestHead {
        method,
        path: path.to_string(),
        query: query.to_string(),
        host: Some(HOST.into()),
        token: None,
        content_length: None,
        peer: "127.0.0.1:1".parse().unwrap(),
    }
}

fn call(s: &Server, h: &RequestHead, body: &[u8]) -> (u16, Vec<u8>) {
    let mut h = h.clone();
    if !body.is_empty() {
        h.content_length = Some(body.len() as u64);
    }
    let r = s.handle(&h, &mut &body[..]);
    let bytes = match r.body {
        Body::Empty => Vec::new(),
        Body::Bytes(b) => b,
        Body::File { mut file, .. } => {
            let mut v = Vec::new();
            file.read_to_end(&mut v).unwrap();
            v
        }
    };
    (r.status, bytes)
}

fn value(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
}

/// The path and query of an absolute URL this server handed out.
fn local(url: &str) -> &str {
    url.strip_prefix(&format!("http://{HOST}")).unwrap()
}

fn offer(s: &Server, data: &[u8]) -> (u16, serde_json::Value) {
    let id = ObjectId::hash_bytes(data);
    let body = format!(
        r#"{{"objectname":"x","sha256sum":"{id}","size":"{}"}}"#,
        data.len()
    );
    let (status, out) = call(s, &head(Method::Post, "/dev1/objects/"), body.as_bytes());
    (status, value(&out))
}

fn post(s: &Server, state: &str, rev: i64) -> (u16, serde_json::Value) {
    let body = format!(r#"{{"commit-msg":"m","rev":{rev},"state":{state}}}"#);
    let (status, out) = call(s, &head(Method::Post, "/dev1/post"), body.as_bytes());
    (status, value(&out))
}

#[test]
fn paths_name_repositories_revisions_and_endpoints() {
    let seg = |p: &str| segments(p).unwrap();
    let t = parse_target(&seg("/team/dev1@3/objects/")).unwrap();
    assert_eq!(
        (t.name.as_str(), t.rev.as_deref(), t.endpoint),
        ("team/dev1", Some("3"), Endpoint::Objects)
    );
    let id = ObjectId::hash_bytes(b"x");
    assert_eq!(
        parse_target(&seg(&format!("/a%20b/objects/{id}/blob"))).unwrap(),
        Target {
            name: "a b".into(),
            rev: None,
            endpoint: Endpoint::Blob(id)
        }
    );
    for bad in [
        "/.pvr/json",
        "/../x/json",
        "/a//json",
        "/json",
        "/a/objects/zz",
        "/a/other",
        "/team%2F..%2Fother/json",
        "/%2e%2e/json",
        "/a/.pvr/json",
    ] {
        assert!(parse_target(&seg(bad)).is_none(), "{bad}");
    }
}

#[test]
fn remote_json_and_objects_are_served_with_signed_urls() {
    let f = fixture(None);
    let s = &f.server;
    let (status, out) = call(s, &head(Method::Get, "/dev1/.pvrremote"), b"");
    assert_eq!(status, 200);
    let remote: PvrRemote = serde_json::from_slice(&out).unwrap();
    assert_eq!(remote.json_get_url, format!("http://{HOST}/dev1/json"));
    let r = s.handle(&head(Method::Get, "/dev1/json"), &mut io::empty());
    assert_eq!(
        r.headers.iter().find(|h| h.0 == REVISION_HEADER).unwrap().1,
        "1"
    );
    let (_, json) = call(s, &head(Method::Get, "/dev1/json"), b"");
    let repo = Repo::open(&f.root.join("dev1")).unwrap();
    assert_eq!(json, repo.head_state().unwrap().to_canonical_bytes());
    // A past revision by URL.
    let (status, json0) = call(s, &head(Method::Get, "/dev1@0/json"), b"");
    assert_eq!(
        (status, json0),
        (200, b"{\"#spec\":\"pantavisor-service-system@1\"}".to_vec())
    );
    assert_eq!(call(s, &head(Method::Get, "/dev1@7/json"), b"").0, 404);
    // An object record, then its bytes through the signed URL.
    let id = ObjectId::hash_bytes(b"alpha");
    let (status, out) = call(s, &head(Method::Get, &format!("/dev1/objects/{id}")), b"");
    assert_eq!(status, 200);
    let record: ObjectRecord = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        (record.sha.as_str(), record.size.as_str()),
        (id.to_hex().as_str(), "5")
    );
    let (status, bytes) = call(s, &head(Method::Get, local(&record.signed_get_url)), b"");
    assert_eq!((status, bytes.as_slice()), (200, &b"alpha"[..]));
    // A tampered signature, or the URL for another object, is refused.
    let other = ObjectId::hash_bytes(b"beta");
    let forged = local(&record.signed_get_url).replace(&id.to_hex(), &other.to_hex());
    assert_eq!(call(s, &head(Method::Get, &forged), b"").0, 403);
    assert_eq!(
        call(
            s,
            &head(Method::Get, &format!("/dev1/objects/{other}")),
            b""
        )
        .0,
        404
    );
    assert_eq!(call(s, &head(Method::Get, "/nope/json"), b"").0, 404);
    let (status, list) = call(s, &head(Method::Get, "/"), b"");
    assert_eq!(
        (status, value(&list)["repositories"][0].as_str()),
        (200, Some("dev1"))
    );
}

#[test]
fn uploads_are_verified_before_they_are_stored() {
    let f = fixture(None);
    let s = &f.server;
    let repo = Repo::open(&f.root.join("dev1")).unwrap();
    let data = b"new object";
    let id = ObjectId::hash_bytes(data);
    let (status, rec) = offer(s, data);
    assert_eq!(status, 200);
    let put = local(rec["signed-puturl"].as_str().unwrap()).to_string();
    // Wrong bytes of the right length: refused, nothing stored.
    let (status, out) = call(s, &head(Method::Put, &put), b"new objecT");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&out));
    assert!(String::from_utf8_lossy(&out).contains("nothing was stored"));
    assert!(!repo.store().contains(&id));
    // A body that breaks off: refused, nothing stored, no temp file left.
    let mut h = head(Method::Put, &put);
    h.content_length = Some(data.len() as u64);
    let mut broken = (&data[..4]).chain(FailingReader);
    let r = s.handle(&h, &mut broken);
    assert_eq!(r.status, 400);
    assert!(!repo.store().contains(&id));
    let leftovers: Vec<_> = std::fs::read_dir(repo.store().dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A different announced size: refused before reading.
    assert_eq!(call(s, &head(Method::Put, &put), b"new object!").0, 400);
    // The right bytes: stored; offering again is 409.
    assert_eq!(call(s, &head(Method::Put, &put), data).0, 200);
    assert!(repo.store().contains(&id));
    assert_eq!(offer(s, data).0, 409);
}

struct FailingReader;
impl Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "connection dropped",
        ))
    }
}

#[test]
fn posts_need_every_object_and_the_right_base_revision() {
    let f = fixture(None);
    let s = &f.server;
    let repo = Repo::open(&f.root.join("dev1")).unwrap();
    let a = ObjectId::hash_bytes(b"alpha");
    let missing = ObjectId::hash_bytes(b"never uploaded");
    let (status, out) = post(s, &format!(r#"{{"a.txt":"{a}","b.bin":"{missing}"}}"#), -1);
    assert_eq!(status, 422);
    assert_eq!(out["missing"][0].as_str(), Some(missing.to_hex().as_str()));
    assert_eq!(repo.latest().unwrap().rev, 1, "nothing committed");
    // rev = head + 1 wins; the same base again is a conflict.
    let (status, out) = post(s, &format!(r#"{{"a.txt":"{a}","c.json":{{}}}}"#), 2);
    assert_eq!((status, out["rev"].as_i64()), (200, Some(2)));
    assert_eq!(
        out["state-sha"].as_str(),
        Some(repo.latest().unwrap().state.0.to_hex().as_str())
    );
    let (status, out) = post(s, &format!(r#"{{"a.txt":"{a}","d.json":{{}}}}"#), 2);
    assert_eq!(status, 409);
    assert!(
        out["error"].as_str().unwrap().contains("revision 2"),
        "{out}"
    );
    assert_eq!(repo.latest().unwrap().rev, 2);
    // rev -1 appends; posting the head again changes nothing.
    let (status, out) = post(s, &format!(r#"{{"a.txt":"{a}"}}"#), -1);
    assert_eq!((status, out["rev"].as_i64()), (200, Some(3)));
    let (status, out) = post(s, &format!(r#"{{"a.txt":"{a}"}}"#), -1);
    assert_eq!(
        (status, out["rev"].as_i64(), out["created"].as_bool()),
        (200, Some(3), Some(false))
    );
    // Past revisions are read-only; garbage is a 400.
    let (status, _) = call(s, &head(Method::Post, "/dev1@1/post"), b"{}");
    assert_eq!(status, 405);
    assert_eq!(post(s, r#"{"../x":"zz"}"#, -1).0, 400);
    assert_eq!(call(s, &head(Method::Post, "/dev1/post"), b"[1]").0, 400);
}

#[test]
fn tokens_guard_reads_and_writes() {
    let f = fixture(Some(
        "reader-token-0123456 read *\nwriter-token-0123456 write dev1\n",
    ));
    let s = &f.server;
    let with = |m: Method, path: &str, token: Option<&str>| {
        let mut h = head(m, path);
        h.token = token.map(str::to_string);
        h
    };
    let r = s.handle(&with(Method::Get, "/dev1/json", None), &mut io::empty());
    assert_eq!(r.status, 401);
    assert!(r.headers.iter().any(|h| h.0 == "www-authenticate"));
    assert_eq!(
        s.handle(
            &with(Method::Get, "/dev1/json", Some("reader-token-0123456")),
            &mut io::empty()
        )
        .status,
        200
    );
    assert_eq!(
        s.handle(
            &with(Method::Get, "/dev1/json", Some("unknown-token-0123456")),
            &mut io::empty()
        )
        .status,
        401
    );
    let r = s.handle(
        &with(Method::Post, "/dev1/post", Some("reader-token-0123456")),
        &mut &b"{}"[..],
    );
    assert_eq!(r.status, 403);
    assert!(r.reason.unwrap().contains("write"));
    // Refused before the repository is looked at: a missing one answers the same.
    assert_eq!(
        s.handle(&with(Method::Get, "/ghost/json", None), &mut io::empty())
            .status,
        401
    );
    // The listing shows only what the token may read.
    let (_, list) = call(s, &with(Method::Get, "/", None), b"");
    assert_eq!(value(&list)["repositories"].as_array().unwrap().len(), 0);
}

#[test]
fn oversized_bodies_are_refused() {
    let mut f = fixture(None);
    f.server.limits.max_json = 100;
    f.server.limits.max_object = 10;
    let (status, _) = post(&f.server, &format!("\"{}\"", "x".repeat(200)), -1);
    assert_eq!(status, 413);
    assert_eq!(offer(&f.server, b"more than ten bytes").0, 413);
}

#[test]
fn signed_object_downloads_are_answered_inline_small_or_streamed_large() {
    let f = fixture(None);
    let repo = Repo::open(&f.root.join("dev1")).unwrap();
    // Around the inline limit (256 KiB, `http::CHUNK`): read in one go, or streamed in chunks.
    let sizes = [0usize, 5, 256 * 1024, 256 * 1024 + 1, 3 << 20];
    let objects: Vec<(ObjectId, Vec<u8>)> = sizes
        .iter()
        .map(|&n| {
            let data: Vec<u8> = (0..n as u32).map(|i| (i * 7 % 251) as u8).collect();
            (repo.store().put_bytes(&data).unwrap(), data)
        })
        .collect();
    let quick = |m: Method, p: &str| f.server.is_quick(&head(m, p));
    let some = &objects[1].0;
    assert!(quick(Method::Get, &format!("/dev1/objects/{some}/blob")));
    assert!(quick(Method::Head, &format!("/dev1/objects/{some}/blob")));
    assert!(quick(Method::Get, &format!("/dev1/objects/{some}")));
    assert!(!quick(Method::Put, &format!("/dev1/objects/{some}/blob")));
    assert!(!quick(Method::Post, "/dev1/objects/"));
    assert!(!quick(Method::Get, "/dev1/json"));

    let Fixture {
        _dir: _keep,
        server,
        ..
    } = f;
    let running = RunningServer::start(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let base = running.url();
    for (id, data) in &objects {
        let resp = ureq::get(&format!("{base}/dev1/objects/{id}"))
            .call()
            .unwrap();
        let record: ObjectRecord = serde_json::from_reader(resp.into_reader()).unwrap();
        let url = record.signed_get_url;
        let resp = ureq::get(&url).call().unwrap();
        assert_eq!(
            resp.header("content-length"),
            Some(data.len().to_string().as_str())
        );
        let mut got = Vec::new();
        resp.into_reader().read_to_end(&mut got).unwrap();
        assert!(got == *data, "object {id} of {} bytes", data.len());
        let resp = ureq::head(&url).call().unwrap();
        assert_eq!(
            resp.header("content-length"),
            Some(data.len().to_string().as_str())
        );
        // A signed get URL does not grant an upload, and a forged one grants nothing.
        match ureq::put(&url).send_bytes(data) {
            Err(ureq::Error::Status(403, _)) => {}
            other => panic!("a PUT to a get URL answered {other:?}"),
        }
        let forged = url.replace("sig=", "sig=0");
        match ureq::get(&forged).call() {
            Err(ureq::Error::Status(403, _)) => {}
            other => panic!("a forged URL answered {other:?}"),
        }
    }
    running.stop().unwrap();
}

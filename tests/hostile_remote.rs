//! Hostile pvr remotes and S3 endpoints (issue 11, the rules of plain HTTP for every request):
//! a misbehaving server (`common::hostile`) that redirects to `file://` or in circles, names
//! `file:` endpoints and signed URLs, sends bodies bigger than `--max-object-size`, trickles
//! its headers, or lists a bucket without end. Each must end in a clear error (never a panic
//! or a hang), keep the repository as it was, and leave nothing in the object store but
//! verified objects.

use pvrfs_testkit as common;

use common::hostile::{Reply, Server};
use common::*;
use pvrfs::oid::ObjectId;
use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

/// Longest any of these commands may take: every case is cut off well before.
const LIMIT: Duration = Duration::from_secs(90);

/// Everything in the object store that is not a verified object.
fn strays(store: &Path) -> Vec<String> {
    let mut bad: Vec<String> = names(store)
        .into_iter()
        .filter(|n| ObjectId::from_hex(n).is_err())
        .collect();
    for n in names(store) {
        if let Ok(id) = ObjectId::from_hex(&n) {
            let bytes = fs::read(store.join(&n)).unwrap();
            if ObjectId::hash_bytes(&bytes) != id {
                bad.push(n);
            }
        }
    }
    bad
}

/// `pvrfs ARGS` in a fresh repository, with `env`; checks the head did not move and the store
/// holds only verified objects. Returns (exit code, stderr).
fn run_get(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let tmp = tempfile::tempdir().unwrap();
    repo_with(tmp.path(), &[("local", b"l")]);
    let before = fs::read(tmp.path().join(".pvr/json")).unwrap();
    let mut cmd = pvrfs(args).dir(tmp.path());
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    let run = cmd.run_within(LIMIT);
    assert_eq!(
        fs::read(tmp.path().join(".pvr/json")).unwrap(),
        before,
        "the head moved"
    );
    assert_eq!(
        strays(&tmp.path().join(".pvr/objects")),
        Vec::<String>::new(),
        "left in the store"
    );
    let err = run.stderr();
    assert!(!err.contains("panicked"), "{err}");
    (run.code(), err)
}

/// A pvr remote under `/r`: `.pvrremote` names `json`, `objects/` and `post`; the state has
/// one object, `big`, whose record points at `/r/blob`. `routes` adds or replaces routes.
fn remote(extra: impl FnOnce(&mut HashMap<String, Reply>, ObjectId)) -> Server {
    let id = ObjectId::hash_bytes(b"the real big object");
    let mut routes = HashMap::from([
        (
            "/r/.pvrremote".to_string(),
            Reply::Bytes(
                br#"{"pvr-spec":"pvr-remote@1","json-get-url":"json","objects-endpoint":"objects","post-url":"post"}"#
                    .to_vec(),
            ),
        ),
        (
            "/r/json".to_string(),
            Reply::Bytes(format!(r##"{{"#spec":"x@1","big":"{id}"}}"##).into_bytes()),
        ),
        (
            format!("/r/objects/{id}"),
            Reply::Bytes(
                format!(r#"{{"sha256sum":"{id}","size":"","signed-geturl":"/r/blob"}}"#)
                    .into_bytes(),
            ),
        ),
        (
            "/r/blob".to_string(),
            Reply::Bytes(b"the real big object".to_vec()),
        ),
    ]);
    extra(&mut routes, id);
    Server::start(routes)
}

#[test]
fn the_hostile_remote_harness_serves_a_good_remote() {
    // The baseline: the same remote, unchanged, is fetched (so the refusals below are real).
    let server = remote(|_, _| {});
    let (code, err) = {
        let tmp = tempfile::tempdir().unwrap();
        repo_with(tmp.path(), &[]);
        let run = pvrfs(["get", &server.url()])
            .dir(tmp.path())
            .run_within(LIMIT);
        (run.code(), run.stderr())
    };
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_pvr_remote_redirecting_to_file_is_refused_not_followed() {
    for route in ["/r/.pvrremote", "/r/json", "/r/blob"] {
        let server = remote(|routes, _| {
            routes.insert(route.into(), Reply::Redirect("file:///etc/passwd".into()));
        });
        let (code, err) = run_get(&["get", &server.url()], &[]);
        assert_eq!(code, 1, "{route}: {err}");
        assert!(
            err.contains("refusing to follow") && err.contains("file:///etc/passwd"),
            "{route}: {err}"
        );
        assert_eq!(
            server.hits(route),
            1,
            "{route}: a refused redirect is not retried"
        );
    }
}

#[test]
fn a_pvr_remote_redirecting_in_circles_is_cut_off() {
    let server = remote(|routes, id| {
        let record = format!("/r/objects/{id}");
        routes.insert(record.clone(), Reply::Redirect(record));
    });
    let (code, err) = run_get(&["get", &server.url()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("more than 5 redirects"), "{err}");
}

#[test]
fn a_pvr_remote_naming_file_urls_is_refused() {
    // An endpoint in the description, and a signed URL in an object record.
    let server = remote(|routes, _| {
        routes.insert(
            "/r/.pvrremote".into(),
            Reply::Bytes(
                br#"{"json-get-url":"file:///etc/passwd","objects-endpoint":"objects"}"#.to_vec(),
            ),
        );
    });
    let (code, err) = run_get(&["get", &server.url()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("only http and https") && err.contains("file:///etc/passwd"),
        "{err}"
    );
    let server = remote(|routes, id| {
        routes.insert(
            format!("/r/objects/{id}"),
            Reply::Bytes(br#"{"size":"19","signed-geturl":"file:///etc/passwd"}"#.to_vec()),
        );
    });
    let (code, err) = run_get(&["get", &server.url()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("only http and https") && err.contains("file:///etc/passwd"),
        "{err}"
    );
}

#[test]
fn a_pvr_remote_object_is_capped_at_max_object_size() {
    // No size in the record, no length on the body: 8 MiB of zeros for a 1 MiB limit.
    let server = remote(|routes, _| {
        routes.insert("/r/blob".into(), Reply::Huge(8 << 20));
    });
    let (code, err) = run_get(&["get", &server.url(), "--max-object-size", "1M"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("larger than the limit of 1048576 bytes") && err.contains("/r/blob"),
        "{err}"
    );
    assert_eq!(
        server.hits("/r/blob"),
        1,
        "an oversized body is not retried"
    );
    // A record announcing more than the limit fails before the body is asked for.
    let server = remote(|routes, id| {
        routes.insert(
            format!("/r/objects/{id}"),
            Reply::Bytes(br#"{"size":"99999999999","signed-geturl":"/r/blob"}"#.to_vec()),
        );
    });
    let (code, err) = run_get(&["get", &server.url()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("more than the limit"), "{err}");
    assert_eq!(server.hits("/r/blob"), 0);
}

#[test]
fn a_pvr_remote_answer_is_capped() {
    // An object record of 8 MiB is not an object record.
    let server = remote(|routes, id| {
        routes.insert(format!("/r/objects/{id}"), Reply::Huge(8 << 20));
    });
    let (code, err) = run_get(&["get", &server.url()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("larger than the limit of 1048576 bytes"),
        "{err}"
    );
}

#[test]
fn a_server_trickling_its_headers_is_cut_off() {
    // Plain HTTP and a pvr remote alike: the status line and headers must come within the
    // grace time, whatever the per-read timeout.
    for route in ["/r/json", "/r/.pvrremote"] {
        let server = remote(|routes, _| {
            routes.insert(
                route.into(),
                Reply::TrickleHeaders {
                    every: Duration::from_millis(200),
                },
            );
        });
        let t = std::time::Instant::now();
        let (code, err) = run_get(&["get", &server.url(), "--transfer-grace", "2"], &[]);
        assert_eq!(code, 1, "{route}: {err}");
        assert!(err.contains("no answer from"), "{route}: {err}");
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{route}: {:?}",
            t.elapsed()
        );
    }
}

/// An S3 "service" on the hostile server: path-style `http://127.0.0.1:PORT/bkt/p/...`.
fn s3_env(server: &Server) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", server.origin()),
        ("AWS_REGION", "garage".into()),
        ("AWS_ACCESS_KEY_ID", "GKhostile".into()),
        ("AWS_SECRET_ACCESS_KEY", "secret".into()),
    ]
}

fn s3_get(server: &Server, args: &[&str]) -> (i32, String) {
    let env = s3_env(server);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut all = vec!["get", "s3://bkt/p"];
    all.extend_from_slice(args);
    run_get(&all, &env)
}

#[test]
fn an_s3_endpoint_redirecting_to_file_is_refused() {
    let server = Server::start(HashMap::from([(
        "/bkt/p/json".to_string(),
        Reply::Redirect("file:///etc/passwd".into()),
    )]));
    let (code, err) = s3_get(&server, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refusing to follow"), "{err}");
    // Signatures stay out of messages.
    assert!(!err.contains("X-Amz-Signature"), "{err}");
}

#[test]
fn an_s3_object_is_capped_at_max_object_size() {
    let id = ObjectId::hash_bytes(b"the real big object");
    let server = Server::start(HashMap::from([
        (
            "/bkt/p/json".to_string(),
            Reply::Bytes(format!(r##"{{"#spec":"x@1","big":"{id}"}}"##).into_bytes()),
        ),
        (format!("/bkt/p/objects/{id}"), Reply::Huge(8 << 20)),
    ]));
    let (code, err) = s3_get(&server, &["--max-object-size", "1M"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("larger than the limit of 1048576 bytes"),
        "{err}"
    );
    assert_eq!(server.hits(&format!("/bkt/p/objects/{id}")), 1);
}

/// A listing page of ListObjectsV2 holding `keys`, continued with `token` when given.
fn list_page(keys: &[&str], token: Option<&str>) -> Vec<u8> {
    let mut xml = String::from(
        r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bkt</Name><Prefix>p/objects/</Prefix><MaxKeys>1000</MaxKeys>"#,
    );
    for k in keys {
        xml.push_str(&format!(
            "<Contents><Key>{k}</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified><ETag>\"x\"</ETag><Size>1</Size><StorageClass>STANDARD</StorageClass></Contents>"
        ));
    }
    match token {
        Some(t) => xml.push_str(&format!(
            "<IsTruncated>true</IsTruncated><NextContinuationToken>{t}</NextContinuationToken>"
        )),
        None => xml.push_str("<IsTruncated>false</IsTruncated>"),
    }
    xml.push_str("</ListBucketResult>");
    xml.into_bytes()
}

#[test]
fn an_s3_listing_that_never_ends_is_refused() {
    // The same continuation token forever (the push would list for ever).
    let server = Server::start(HashMap::from([(
        "/bkt/".to_string(),
        Reply::Bytes(list_page(&[], Some("again"))),
    )]));
    let tmp = tempfile::tempdir().unwrap();
    repo_with(tmp.path(), &[("f", b"x")]);
    let mut cmd = pvrfs(["push", "s3://bkt/p"]).dir(tmp.path());
    for (k, v) in s3_env(&server) {
        cmd = cmd.env(k, v);
    }
    let run = cmd.run_within(LIMIT);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert!(
        run.stderr().contains("repeated a continuation token"),
        "{}",
        run.stderr()
    );
    assert_eq!(server.hits("/bkt/"), 2);
}

#[test]
fn a_pvr_remote_announcing_an_absurd_revision_is_refused_on_push() {
    // The revision header of the state a push builds on: the next revision would overflow.
    for absurd in ["9223372036854775807", "18446744073709551615"] {
        let server = remote(|routes, id| {
            routes.insert(
                "/r/json".into(),
                Reply::With {
                    headers: format!("pvrfs-revision: {absurd}\r\n"),
                    bytes: format!(r##"{{"#spec":"x@1","big":"{id}"}}"##).into_bytes(),
                },
            );
        });
        let tmp = tempfile::tempdir().unwrap();
        // Inline files only: no objects to offer, the post comes right after the baseline.
        repo_with(tmp.path(), &[("f.json", b"{}")]);
        let run = pvrfs(["push", &server.url(), "--force"])
            .dir(tmp.path())
            .run_within(LIMIT);
        let err = run.stderr();
        assert_eq!(run.code(), 1, "{absurd}: {err}");
        assert!(!err.contains("panicked"), "{absurd}: {err}");
        assert!(
            err.contains(&format!("revision {absurd}")),
            "{absurd}: {err}"
        );
        assert_eq!(server.hits("/r/post"), 0, "{absurd}: nothing was posted");
    }
}

/// What a server or a publisher says reaches the terminal escaped: an error text and a state
/// key full of escape sequences (clear the screen, set the title, fake a line).
#[test]
fn escape_sequences_from_servers_and_states_never_reach_the_terminal() {
    let evil = "\u{1b}[2J\u{1b}]0;owned\u{7}\rfake line\u{9b}31m";
    let server = remote(|routes, _| {
        routes.insert(
            "/r/.pvrremote".into(),
            Reply::Status {
                status: "401 Unauthorized".into(),
                bytes: serde_json::to_vec(&serde_json::json!({ "error": evil })).unwrap(),
            },
        );
    });
    let (code, err) = run_get(&["get", &server.url()], &[]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("\\u{1b}]0;owned\\u{7}"), "{err:?}");
    assert!(
        !err.contains(['\u{1b}', '\u{7}', '\r', '\u{9b}']),
        "{err:?}"
    );
    // A published key with the same bytes: get, then status (the key is "deleted" in the tree).
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("objects")).unwrap();
    let id = ObjectId::hash_bytes(b"x");
    fs::write(src.join("objects").join(id.to_hex()), b"x").unwrap();
    let key = format!("a{evil}");
    let json = serde_json::to_vec(&serde_json::json!({ key.clone(): id.to_hex() })).unwrap();
    fs::write(src.join("json"), json).unwrap();
    let w = tmp.path().join("w");
    fs::create_dir(&w).unwrap();
    repo_with(&w, &[]);
    pvrfs(["get", src.to_str().unwrap()]).dir(&w).ok();
    let status = pvrfs(["status"]).dir(&w).ok();
    assert!(status.starts_with("D a\\u{1b}[2J"), "{status:?}");
    assert!(
        !status.contains(['\u{1b}', '\u{7}', '\r', '\u{9b}']),
        "{status:?}"
    );
    let log = pvrfs(["log"]).dir(&w).ok();
    assert!(!log.contains('\u{1b}'), "{log:?}");
}

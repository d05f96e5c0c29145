//! What the fuzz targets (`fuzz/fuzz_targets/`) run, one function per target, and what the
//! regression test (`tests/fuzz_regressions.rs`) replays: every parser and decoder that reads
//! bytes someone else may have written.
//!
//! Each function takes arbitrary bytes and must return normally: an `Err` from the code under
//! test is a correct refusal; a panic, an overflow or a failed check here is a bug. Besides "no
//! panic", each checks a property of what was accepted (round trips, the nesting bound), so the
//! fuzzer finds wrong answers too, not only crashes.
//!
//! Not part of the API: the fuzz crate and the tests are its only users.

use crate::fs::overlay::journal;
use crate::fuse::control;
use crate::json;
use crate::patch;
use crate::state::State;
use crate::worktree::{headindex, statcache};

/// `State::from_json_bytes` and the canonical encoder: whatever parses, re-encodes to bytes
/// that parse to the same state and encode to themselves; `json::parse` likewise.
pub fn state_round_trip(data: &[u8]) {
    if let Ok(v) = json::parse(data) {
        assert!(json::nesting_depth(&v, json::MAX_DEPTH) <= json::MAX_DEPTH);
        let canonical = json::to_canonical(&v);
        let again = json::parse(&canonical).expect("canonical JSON parses");
        assert_eq!(again, v, "json round trip");
        assert_eq!(json::to_canonical(&again), canonical);
        let _ = json::render_diff(&v);
        let _ = json::render_checkout(&v);
        let _ = json::to_pvr_json_pretty(&v);
    }
    if let Ok(state) = State::from_json_bytes(data, "fuzz") {
        let bytes = state.to_canonical_bytes();
        let again = State::from_json_bytes(&bytes, "fuzz").expect("canonical state parses");
        assert_eq!(again, state, "state round trip");
        assert_eq!(again.to_canonical_bytes(), bytes);
        assert!(state
            .iter()
            .all(|(k, _)| k.split('/').next() != Some(".pvr")));
    }
}

/// A small base state for patches when the input does not bring its own.
const BASE: &str = r##"{"#spec":"s@1","a.json":{"k":[1,2.5,null,"x"],"o":{"p":true}},"d/b.txt":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}"##;

/// RFC 7396 / RFC 6902 `apply` (`patch::apply_to_state`): the input is a patch, or a base
/// state, a newline and a patch. What applies is a valid state (nesting bounded), and the
/// RFC 6902 diff between base and result applies back to the result.
pub fn patch_apply(data: &[u8]) {
    let (base, doc) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => match State::from_json_bytes(&data[..i], "base") {
            Ok(base) => (base, &data[i + 1..]),
            Err(_) => return,
        },
        None => (
            State::from_json_bytes(BASE.as_bytes(), "base").expect("valid"),
            data,
        ),
    };
    let Ok(doc) = json::parse(doc) else { return };
    let Ok(new) = patch::apply_to_state(&base, &doc, "fuzz") else {
        return;
    };
    let bytes = new.to_canonical_bytes();
    assert_eq!(State::from_json_bytes(&bytes, "fuzz").expect("valid"), new);
    let diff = patch::state_json_patch(&base, &new);
    assert_eq!(
        patch::apply_to_state(&base, &diff, "diff").expect("our own diff applies"),
        new,
        "diff/apply round trip"
    );
}

/// Tar import (`exchange::tarball::scan`): an archive is accepted only with a valid state and
/// objects that hash to their names.
pub fn tar_import(data: &[u8]) {
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::tempdir().expect("temp dir");
    }
    DIR.with(|dir| {
        let path = dir.path().join("input.tar");
        std::fs::write(&path, data).expect("write the input");
        if let Ok(scan) = crate::exchange::tarball::scan(&path, 1 << 20) {
            let again = State::from_json_bytes(&scan.json, "fuzz").expect("scanned state");
            assert_eq!(again, scan.state);
        }
    });
}

/// The stat cache decoder (`.pvr/pvrfs/statcache`): the input is the body after the magic and
/// checksum, which are filled in (a random checksum would stop every input at the first check).
/// Whatever decodes can be read back entry by entry.
pub fn statcache_decode(data: &[u8]) {
    let cache = statcache::StatCache::from_body_for_fuzzing(data);
    for (path, entry) in cache.entries() {
        assert_eq!(cache.get(path), Some(entry));
    }
    let _ = cache.dirs().len();
}

/// The head index decoder (`.pvr/pvrfs/headindex`): the input is the body after the magic and
/// checksum, which are filled in. Whatever decodes can be read back: every file is found by its
/// path, in strictly ascending order.
pub fn headindex_decode(data: &[u8]) {
    if let Some(index) = headindex::HeadIndex::from_body_for_fuzzing(data) {
        let mut last: Option<&str> = None;
        for (path, _) in index.files() {
            assert!(last.is_none_or(|l| l < path));
            assert!(index.contains(path));
            last = Some(path);
        }
        let _ = index.meta().is_empty();
    }
}

/// The overlay journal decoder: raw bytes, and the input framed with a valid length and
/// checksum (so its JSON reaches the record decoder). A decoded record frames and decodes to
/// itself.
pub fn journal_decode(data: &[u8]) {
    let (records, valid) = journal::decode(data);
    assert!(valid <= data.len());
    let framed = journal::frame_payload_for_fuzzing(data);
    let (more, _) = journal::decode(&framed);
    for rec in records.iter().chain(&more) {
        let (again, len) = journal::decode(&journal::frame(rec));
        assert_eq!(again.as_slice(), std::slice::from_ref(rec));
        assert_eq!(len, journal::frame(rec).len());
    }
}

/// The control socket's request reading and parsing: the input is what a client sends.
pub fn control_request(data: &[u8]) {
    let _ = control::Request::parse(data);
    let Ok((mut client, server)) = std::os::unix::net::UnixStream::pair() else {
        return;
    };
    // Small inputs fit the socket buffer; the cap is tested by the unit tests with big ones.
    let data = &data[..data.len().min(64 * 1024)];
    if std::io::Write::write_all(&mut client, data).is_err() {
        return;
    }
    drop(client);
    if let Ok(line) = control::read_request(&server, std::time::Duration::from_secs(5)) {
        assert!(line.len() <= control::MAX_REQUEST_BYTES);
        assert!(!line.contains(&b'\n'));
        let _ = control::Request::parse(&line);
    }
}

/// The answers of a pvr remote (`remote::parse_remote`, `parse_record`, `parse_post_reply`):
/// whatever parses serialises to JSON that parses to the same value.
pub fn remote_answers(data: &[u8]) {
    use crate::remote;
    if let Ok(r) = remote::parse_remote(data) {
        let again = remote::parse_remote(&serde_json::to_vec(&r).expect("serialises"));
        assert_eq!(again.as_ref(), Ok(&r), "remote description round trip");
    }
    if let Ok(rec) = remote::parse_record(data) {
        if let Ok((id, size)) = rec.claimed() {
            assert_eq!(id.to_hex(), rec.sha);
            assert_eq!(size.to_string(), rec.size.trim().trim_start_matches('+'));
        }
        let again = remote::parse_record(&serde_json::to_vec(&rec).expect("serialises"));
        assert_eq!(again.as_ref(), Ok(&rec), "object record round trip");
    }
    if let Ok(reply) = remote::parse_post_reply(data) {
        let again = remote::parse_post_reply(&serde_json::to_vec(&reply).expect("serialises"));
        assert_eq!(again.as_ref(), Ok(&reply), "post reply round trip");
    }
}

/// A page of an S3 listing (`exchange::s3::parse_list_page`, the service's XML).
pub fn s3_listing(data: &[u8]) {
    if let Ok(page) = crate::exchange::s3::parse_list_page(data) {
        assert!(page.next.as_ref().is_none_or(|t| !t.is_empty()));
        assert_eq!(crate::exchange::s3::parse_list_page(data), Ok(page));
    }
}

/// The tokens file of `pvrfs serve` (`serve::tokens::Tokens::parse`): the first line is a
/// token and a repository name to check, the rest the file.
pub fn serve_tokens(data: &[u8]) {
    use crate::serve::tokens::{Access, Tokens};
    let text = String::from_utf8_lossy(data);
    let (probe, file) = text.split_once('\n').unwrap_or(("", &text));
    let (token, name) = probe.split_once(' ').unwrap_or((probe, "r"));
    if let Ok(tokens) = Tokens::parse(file, "fuzz") {
        let read = tokens.check(Some(token), name, Access::Read);
        let write = tokens.check(Some(token), name, Access::Write);
        // Write access includes read access.
        assert!(write.is_err() || read.is_ok());
        for r in [read, write] {
            if let Err(denied) = r {
                assert!(matches!(denied.status, 401 | 403));
            }
        }
    }
}

/// One request to `pvrfs serve` (`serve::Server::handle`), the input being
/// `METHOD TARGET\nTOKEN\nBODY`. The server has one repository, `dev1`, readable by anybody
/// and writable with the token `fuzz-writer-token-0001`; its signed-URL check is also fed the
/// query. Every answer has a valid status, and whatever a request did, the repository still
/// loads (a client cannot brick a served repository).
pub fn serve_request(data: &[u8]) {
    use crate::serve::{Backend, Config, Limits, Method, RequestHead, Server};
    struct Fixture {
        _dir: tempfile::TempDir,
        repo: std::path::PathBuf,
        server: Server,
    }
    thread_local! {
        static SERVER: Fixture = {
            let dir = tempfile::tempdir().expect("temp dir");
            let root = dir.path().join("root");
            let repo = root.join("dev1");
            std::fs::create_dir_all(&repo).expect("mkdir");
            let r = crate::repo::Repo::init(&repo, None, None).expect("init");
            let mut state = r.head_state().expect("head");
            let id = r.store().put_bytes(b"alpha").expect("put");
            state.insert("a.txt", crate::state::Entry::Object(id)).expect("insert");
            let lock = r.lock().expect("lock");
            r.commit_state(&lock, &state, "one", None).expect("commit");
            let tokens = crate::serve::tokens::Tokens::parse(
                "- read *\nfuzz-writer-token-0001 write *\n",
                "fuzz",
            )
            .expect("tokens");
            let server = Server::new(Config {
                root,
                tokens: Some(tokens),
                backend: Backend::Local,
                public_url: None,
                limits: Limits {
                    max_json: 1 << 20,
                    max_object: 1 << 20,
                    ..Limits::default()
                },
            })
            .expect("server");
            Fixture { _dir: dir, repo, server }
        };
    }
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let line = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let token = parts
        .next()
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .filter(|t| !t.is_empty());
    let body = parts.next().unwrap_or_default();
    let (method, target) = line.split_once(' ').unwrap_or(("GET", &line));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "PUT" => Method::Put,
        "POST" => Method::Post,
        other => Method::Other(other.to_string()),
    };
    let writes = matches!(method, Method::Put | Method::Post);
    let head = RequestHead {
        method,
        path: path.to_string(),
        query: query.to_string(),
        host: Some("127.0.0.1:9".into()),
        token,
        content_length: Some(body.len() as u64),
        peer: "127.0.0.1:1".parse().expect("address"),
    };
    let signer = crate::serve::signing::Signer::with_key([7; 32]);
    let _ = signer.check(
        "dev1",
        &crate::oid::ObjectId::hash_bytes(b"alpha"),
        query,
        0,
    );
    SERVER.with(|f| {
        let reply = f.server.handle(&head, &mut &body[..]);
        assert!(
            (200..600).contains(&reply.status),
            "status {}",
            reply.status
        );
        if writes {
            let repo = crate::repo::Repo::open(&f.repo).expect("the repository opens");
            let latest = repo.latest().expect("its latest revision loads");
            repo.load_state(&latest).expect("its head state loads");
        }
    });
}

/// What a target runs on one input.
pub type Target = fn(&[u8]);

/// Every target by name, for the regression test and `scripts/fuzz`.
pub const TARGETS: &[(&str, Target)] = &[
    ("state_round_trip", state_round_trip),
    ("patch_apply", patch_apply),
    ("tar_import", tar_import),
    ("statcache_decode", statcache_decode),
    ("headindex_decode", headindex_decode),
    ("journal_decode", journal_decode),
    ("control_request", control_request),
    ("remote_answers", remote_answers),
    ("s3_listing", s3_listing),
    ("serve_tokens", serve_tokens),
    ("serve_request", serve_request),
];

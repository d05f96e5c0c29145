//! Multipart uploads to S3 (a real single-node Garage on loopback), with the part size lowered
//! to S3's minimum (5 MiB) through `PVRFS_S3_PART_SIZE` / `PVRFS_S3_MULTIPART_THRESHOLD` so a
//! few MiB span several parts: a push in parts comes back byte-identical; a part whose
//! connection breaks is sent again; an upload that is interrupted, or whose file changes under
//! it, leaves no object and no pending upload; `pvrfs
//! serve --store s3://` accepts objects uploaded in parts and refuses offers above one PUT.

use pvrfs::oid::ObjectId;
use pvrfs::repo::Repo;
use pvrfs_testkit::remote::{failed, ok, pvrfs_env, Garage, Serve};
use pvrfs_testkit::repo_with;
use pvrfs_testkit::throttle::Throttle;
use std::fs;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// `n` bytes that differ from part to part.
fn data(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed).to_le_bytes()[1])
        .collect()
}

/// Garage's variables plus 5 MiB parts for objects of 5 MiB and more.
fn env_in_parts(g: &Garage, endpoint: Option<&str>) -> Vec<(String, String)> {
    let mut env = g.env();
    if let Some(e) = endpoint {
        env.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
        env.push(("AWS_ENDPOINT_URL".into(), e.into()));
    }
    env.push(("PVRFS_S3_PART_SIZE".into(), "5M".into()));
    env.push(("PVRFS_S3_MULTIPART_THRESHOLD".into(), "5M".into()));
    env
}

#[test]
fn a_push_in_parts_comes_back_byte_identical() {
    let Some(g) = Garage::start() else { return };
    let env = env_in_parts(&g, None);
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let a = t.join("a");
    fs::create_dir_all(&a).unwrap();
    // 8 full parts and a short one; a small object keeps the single PUT
    let image = data(40 * MIB + 12_345, 1);
    let repo = repo_with(&a, &[("bsp/image.img", &image), ("app/x.bin", b"small")]);
    let dest = format!("s3://{}/dev", g.bucket);
    let (out, peak) = with_peak_rss(&a, &["push", &dest], &env);
    let out = ok(&out, "push in parts");
    assert!(out.contains("2 of 2 objects uploaded"), "{out}");
    // ~20 MiB for the binary and three 5 MiB part buffers (not the 40 MiB object)
    assert!(
        peak < 48 * MIB as u64,
        "the push peaked at {} MiB for a 40 MiB object",
        peak >> 20
    );
    let id = ObjectId::hash_bytes(&image);
    let head = g
        .bucket()
        .head(&format!("dev/objects/{id}"))
        .unwrap()
        .expect("the object is there");
    assert_eq!(head.len, image.len() as u64);
    // the service checked each part's sha256: its checksum of the object is composite
    let parts: Vec<ObjectId> = image.chunks(5 * MIB).map(ObjectId::hash_bytes).collect();
    assert_eq!(parts.len(), 9);
    assert_eq!(
        head.sha256_b64,
        Some(pvrfs::exchange::s3::multipart::composite_checksum(&parts))
    );
    let small = ObjectId::hash_bytes(b"small");
    let small_head = g.bucket().head(&format!("dev/objects/{small}")).unwrap();
    assert_eq!(
        small_head.unwrap().sha256_b64,
        Some(pvrfs::exchange::s3::checksum_b64(&small))
    );
    assert!(g.pending_uploads("dev/").is_empty());

    let (out, peak) = with_peak_rss(t, &["clone", &dest, "c"], &env);
    ok(&out, "clone");
    assert!(
        peak < 48 * MIB as u64,
        "the clone peaked at {} MiB for a 40 MiB object",
        peak >> 20
    );
    assert_eq!(fs::read(t.join("c/bsp/image.img")).unwrap(), image);
    let b = t.join("b");
    fs::create_dir_all(&b).unwrap();
    let other = repo_with(&b, &[("mine.txt", b"mine")]);
    ok(&pvrfs_env(&b, &["get", &dest], &env), "get");
    assert_eq!(other.head_state().unwrap(), repo.head_state().unwrap());
    let stored = other.store().path_of(&id);
    assert_eq!(fs::read(stored).unwrap(), image);
}

/// Run `pvrfs ARGS` in `dir`; its output and peak resident memory (`VmHWM`, read every few
/// milliseconds while it runs: `wait4`'s `ru_maxrss` would count the test process it was
/// forked from). The binary alone peaks at ~20 MiB (debug build, a small push).
fn with_peak_rss(
    dir: &Path,
    args: &[&str],
    env: &[(String, String)],
) -> (std::process::Output, u64) {
    let mut cmd = pvrfs_testkit::pvrfs(args).dir(dir).command();
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let status = format!("/proc/{}/status", child.id());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let hwm = fs::read_to_string(&status).ok().and_then(|text| {
                    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
                    line.split_whitespace().nth(1)?.parse::<u64>().ok()
                });
                peak = peak.max(hwm.unwrap_or(0) * 1024);
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };
    let output = child.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    (output, watcher.join().unwrap())
}

#[test]
fn a_part_whose_connection_breaks_is_sent_again() {
    let Some(g) = Garage::start() else { return };
    // the first connection breaks 7 MiB into what it carries: inside a part
    let proxy = Throttle::start_cutting(
        g.endpoint.trim_start_matches("http://"),
        1 << 40,
        Some(7 * MIB as u64),
    );
    let env = env_in_parts(&g, Some(&proxy.url()));
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let a = t.join("a");
    fs::create_dir_all(&a).unwrap();
    let image = data(12 * MIB, 5);
    repo_with(&a, &[("image.img", &image)]);
    let dest = format!("s3://{}/retry", g.bucket);
    let out = ok(
        &pvrfs_env(&a, &["push", &dest], &env),
        "push through a break",
    );
    assert!(out.contains("1 of 1 objects uploaded"), "{out}");
    assert!(proxy.was_cut(), "the connection was not cut");
    let id = ObjectId::hash_bytes(&image);
    let parts: Vec<ObjectId> = image.chunks(5 * MIB).map(ObjectId::hash_bytes).collect();
    assert_eq!(
        g.bucket()
            .head(&format!("retry/objects/{id}"))
            .unwrap()
            .and_then(|h| h.sha256_b64),
        Some(pvrfs::exchange::s3::multipart::composite_checksum(&parts))
    );
    assert!(g.pending_uploads("retry/").is_empty());
    ok(&pvrfs_env(t, &["clone", &dest, "c"], &g.env()), "clone");
    assert_eq!(fs::read(t.join("c/image.img")).unwrap(), image);
}

/// `pvrfs push DEST` started in the background.
fn push_in_background(dir: &Path, dest: &str, env: &[(String, String)]) -> Child {
    let mut cmd = pvrfs_testkit::pvrfs(["push", dest]).dir(dir).command();
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().unwrap()
}

/// Wait until the push has a pending upload with at least one part in the bucket; its key and
/// upload id. Panics when the push ends first (it did not upload in parts).
fn wait_for_first_part(g: &Garage, prefix: &str, push: &mut Child) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((key, upload)) = g.pending_uploads(prefix).into_iter().next() {
            if g.uploaded_parts(&key, &upload) >= 1 {
                return (key, upload);
            }
        }
        if let Some(status) = push.try_wait().unwrap() {
            let mut stderr = String::new();
            use std::io::Read;
            let _ = push.stderr.take().unwrap().read_to_string(&mut stderr);
            panic!("the push ended ({status}) before a part was uploaded: {stderr}");
        }
        assert!(Instant::now() < deadline, "no part was uploaded in 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Nothing of a push is visible: no object, no state, no pending upload.
fn nothing_left(g: &Garage, prefix: &str, id: &ObjectId) {
    let bucket = g.bucket();
    assert!(bucket
        .head(&format!("{prefix}objects/{id}"))
        .unwrap()
        .is_none());
    assert!(bucket
        .get_small(&format!("{prefix}json"))
        .unwrap()
        .is_none());
    assert_eq!(
        g.pending_uploads(prefix),
        vec![],
        "an upload was left pending"
    );
}

#[test]
fn an_interrupted_upload_in_parts_leaves_nothing() {
    let Some(g) = Garage::start() else { return };
    // 2 MiB/s a connection, two parts at a time: 4 parts take ~5 s, time enough to interrupt
    // after the first
    let proxy = Throttle::start(g.endpoint.trim_start_matches("http://"), 2 * MIB as u64);
    let env = env_in_parts(&g, Some(&proxy.url()));
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    fs::create_dir_all(&a).unwrap();
    let image = data(16 * MIB, 2);
    repo_with(&a, &[("image.img", &image)]);
    let dest = format!("s3://{}/int", g.bucket);
    let mut push = push_in_background(&a, &dest, &env);
    wait_for_first_part(&g, "int/", &mut push);
    let pid = rustix::process::Pid::from_child(&push);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let out = push.wait_with_output().unwrap();
    assert!(!out.status.success(), "the push was interrupted");
    nothing_left(&g, "int/", &ObjectId::hash_bytes(&image));
}

#[test]
fn a_file_that_changes_during_an_upload_in_parts_is_refused() {
    let Some(g) = Garage::start() else { return };
    // 8 parts at 4 MiB/s a connection: when the first part is in, the reader (at most a few
    // parts ahead of the senders) has not read the last one
    let proxy = Throttle::start(g.endpoint.trim_start_matches("http://"), 4 * MIB as u64);
    let env = env_in_parts(&g, Some(&proxy.url()));
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    fs::create_dir_all(&a).unwrap();
    let image = data(40 * MIB, 3);
    let repo = repo_with(&a, &[("image.img", &image)]);
    let id = ObjectId::hash_bytes(&image);
    let dest = format!("s3://{}/chg", g.bucket);
    let mut push = push_in_background(&a, &dest, &env);
    wait_for_first_part(&g, "chg/", &mut push);
    // change the last part in place (same size)
    let path = repo.store().path_of(&id);
    let mut perms = fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    fs::set_permissions(&path, perms).unwrap();
    let mut changed = image.clone();
    let end = changed.len();
    changed[end - 100..].fill(0);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start((end - 100) as u64)).unwrap();
        f.write_all(&[0u8; 100]).unwrap();
    }
    let out = push.wait_with_output().unwrap();
    let err = failed(&out, "push of a file that changed");
    assert!(
        err.contains(&id.to_hex()) && err.contains(&ObjectId::hash_bytes(&changed).to_hex()),
        "{err}"
    );
    nothing_left(&g, "chg/", &id);
}

#[test]
fn serve_accepts_objects_uploaded_in_parts_and_refuses_offers_above_one_put() {
    let Some(g) = Garage::start() else { return };
    let env = env_in_parts(&g, None);
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let root = t.join("root");
    let served = root.join("dev1");
    fs::create_dir_all(&served).unwrap();
    repo_with(&served, &[("a.txt", b"alpha")]);
    let serve = Serve::start(&root, &["--store", &format!("s3://{}/srv", g.bucket)], &env);
    let url = serve.repo_url("dev1");
    ok(&pvrfs_env(t, &["clone", &url, "c"], &env), "clone");
    let image = data(11 * MIB, 4);
    let id = ObjectId::hash_bytes(&image);
    fs::write(t.join("c/image.img"), &image).unwrap();
    ok(&pvrfs_env(&t.join("c"), &["add"], &[]), "add");
    ok(
        &pvrfs_env(&t.join("c"), &["commit", "-m", "image"], &[]),
        "commit",
    );
    // the object goes to the server's place in the bucket in parts, directly ...
    ok(
        &pvrfs_env(
            &t.join("c"),
            &["push", &format!("s3://{}/srv/dev1", g.bucket)],
            &env,
        ),
        "push in parts to the bucket",
    );
    let head = g.bucket().head(&format!("srv/dev1/objects/{id}")).unwrap();
    assert!(head.unwrap().sha256_b64.unwrap().ends_with("-3"));
    // ... and a post of the state that needs it is accepted: its composite checksum is not
    // taken for a wrong sha256 (the object is read back and hashed instead)
    let out = ok(&pvrfs_env(&t.join("c"), &["push", &url], &env), "push");
    assert!(out.contains("0 of 2 objects uploaded"), "{out}");
    assert_eq!(Repo::open(&served).unwrap().latest().unwrap().rev, 2);
    assert!(g
        .bucket()
        .head(&format!("srv/dev1/objects/{id}"))
        .unwrap()
        .is_some());

    // an offer above one S3 PUT (5 GiB) gets no upload URL that would fail: 413, naming it
    let big = ObjectId::hash_bytes(b"pretend this is 6 GiB");
    let size = 6u64 << 30;
    let offer = format!(r#"{{"objectname":"big.img","sha256sum":"{big}","size":"{size}"}}"#);
    let err = ureq::post(&format!("{url}/objects/"))
        .send_string(&offer)
        .unwrap_err();
    let ureq::Error::Status(413, resp) = err else {
        panic!("{err:?}")
    };
    let body: serde_json::Value = serde_json::from_str(&resp.into_string().unwrap()).unwrap();
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains(&big.to_hex()) && message.contains(&size.to_string()),
        "{message}"
    );
    // an offer of 5 GiB exactly still gets one
    let offer = offer.replace(&size.to_string(), &(5u64 << 30).to_string());
    let resp = ureq::post(&format!("{url}/objects/"))
        .send_string(&offer)
        .unwrap();
    assert_eq!(resp.status(), 200);
}

//! An overlay somebody else prepared (a repository handed over with its `.pvr/`): upper files
//! that are symbolic links to the mounting user's files, or FIFOs, are refused (EIO) when read,
//! written, synced or committed, never followed.

use super::*;
use crate::fs::ToErrno;
use crate::state::DEFAULT_SPEC;

fn overlay_with_upper() -> (tempfile::TempDir, Repo, PathBuf, u64) {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w");
    fs::create_dir(&w).unwrap();
    let repo = Repo::init(&w, None, None).unwrap();
    let mut state = State::empty(DEFAULT_SPEC);
    state
        .insert(
            "a.txt",
            Entry::Object(repo.store().put_bytes(b"alpha").unwrap()),
        )
        .unwrap();
    let lock = repo.lock().unwrap();
    repo.commit_state(&lock, &state, "base", None).unwrap();
    drop(lock);
    let mut ov = Overlay::load_or_create(&repo, "m", "latest", Options::default()).unwrap();
    let ino = ov.resolve("a.txt").unwrap();
    let h = ov.open(ino, true, true).unwrap();
    ov.write(&h, 0, b"mine").unwrap();
    ov.release(h);
    let Body::File(Content::Upper(upper)) = ov.nodes[&ino].body else {
        panic!("not copied up")
    };
    let upper_path = ov.upper_path(upper);
    drop(ov);
    (dir, repo, upper_path, ino)
}

#[test]
fn planted_upper_files_are_never_followed() {
    for plant in ["link", "fifo"] {
        let (dir, repo, upper, ino) = overlay_with_upper();
        let secret = dir.path().join("secret");
        fs::write(&secret, b"the victim's secret").unwrap();
        fs::remove_file(&upper).unwrap();
        match plant {
            "link" => std::os::unix::fs::symlink(&secret, &upper).unwrap(),
            _ => rustix::fs::mknodat(
                rustix::fs::CWD,
                &upper,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o600),
                0,
            )
            .unwrap(),
        }
        let mut ov = Overlay::load(&repo, "m", Options::default()).unwrap();
        for write in [false, true] {
            let e = ov.open(ino, write, false).unwrap_err();
            assert_eq!(e.errno(), libc::EIO, "{plant} write={write}: {e}");
            assert!(e.to_string().contains("not a regular file"), "{plant}: {e}");
        }
        let e = ov.commit("steal").unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{plant}: {e}");
        assert_eq!(repo.latest().unwrap().rev, 1, "{plant}: nothing committed");
        assert_eq!(fs::read(&secret).unwrap(), b"the victim's secret");
        let _ = ov.sync();
    }
}

#[test]
fn implausible_ids_in_a_journal_are_refused_not_overflowed() {
    for (ino, upper) in [(u64::MAX, 7), (5_000, u64::MAX), (0, 7)] {
        let (_dir, repo, _, _) = overlay_with_upper();
        let ov_dir = overlay_dir(&repo, "m");
        let rec = Record::Create {
            path: "evil".into(),
            ino,
            upper,
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(journal::journal_path(&ov_dir))
            .unwrap();
        std::io::Write::write_all(&mut f, &journal::frame(&rec)).unwrap();
        drop(f);
        let err = Overlay::load(&repo, "m", Options::default())
            .err()
            .unwrap_or_else(|| panic!("{ino}/{upper}: loaded"))
            .to_string();
        assert!(err.contains("implausible"), "{ino}/{upper}: {err}");
    }
}

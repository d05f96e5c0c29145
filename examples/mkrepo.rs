//! Bench/demo helper: commit the files of SRC as the next revision of the repository at REPO
//! (created when missing). `*.json` files are inlined when they parse, as `pvr add` does;
//! everything else is stored as an object. Used by `scripts/bench-mount`, which builds large
//! repositories without going through a work tree.
//!
//! Usage: cargo run --release --example mkrepo -- SRC REPO

use pvrfs::repo::Repo;
use pvrfs::state::{is_inline_path, Entry};
use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            walk(&e.path(), out)?;
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 3, "usage: mkrepo SRC REPO");
    let (src, dest) = (Path::new(&args[1]), Path::new(&args[2]));
    std::fs::create_dir_all(dest)?;
    let repo = match Repo::open(dest) {
        Ok(r) => r,
        Err(pvrfs::Error::NotARepo { .. }) => Repo::init(dest, None, None)?,
        Err(e) => return Err(e.into()),
    };
    // The new revision holds exactly SRC's files.
    let mut state = pvrfs::state::State::empty(
        repo.head_state()?
            .spec
            .as_deref()
            .unwrap_or(pvrfs::state::DEFAULT_SPEC),
    );
    let mut files = Vec::new();
    walk(src, &mut files)?;
    for f in files {
        let key = f.strip_prefix(src)?.to_string_lossy().into_owned();
        let inline = if is_inline_path(&key) {
            pvrfs::json::parse(&std::fs::read(&f)?).ok()
        } else {
            None
        };
        let entry = match inline {
            Some(v) => Entry::Inline(v),
            None => Entry::Object(repo.store().put_file(&f)?.0),
        };
        state.insert(&key, entry)?;
    }
    let lock = repo.lock()?;
    let rev = repo.commit_state(&lock, &state, "mkrepo", None)?;
    println!("revision {} with {} files", rev.rev, state.len());
    Ok(())
}

//! What each remote looked like when this repository last exchanged with it, so that a push
//! never silently replaces changes it has not seen (a lost update).
//!
//! `.pvr/pvrfs/remotes.json`: `{"<location>": {"state": "<state id>", "revision": N|null}}`,
//! written (atomically) after every successful get/merge/clone from, or push to, a pvr remote or
//! an S3 prefix. A push goes ahead only when the remote's current state is the one recorded
//! (nothing happened there since), is our own state, or has no entries (a fresh repository);
//! otherwise it is a conflict: get or merge the remote first, or push with `--force`. This is
//! the rule `git push` applies to branches; the revision number (`rev` of a post) additionally
//! guards the moment between reading the remote and posting to it.

use crate::error::{Error, Result};
use crate::fsutil;
use crate::oid::ObjectId;
use crate::repo::{ObjectIdText, Repo};
use crate::state::State;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One remote's last known state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    pub state: ObjectIdText,
    #[serde(default)]
    pub revision: Option<u64>,
}

fn path(repo: &Repo) -> std::path::PathBuf {
    repo.ext_dir().join("remotes.json")
}

/// The key of a location: its text without a trailing `/`.
pub fn key(location: &str) -> String {
    location.trim_end_matches('/').to_string()
}

fn load_all(repo: &Repo) -> Result<BTreeMap<String, Base>> {
    let p = path(repo);
    match std::fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::CorruptState {
            origin: p.display().to_string(),
            detail: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(Error::io("read", &p, e)),
    }
}

/// The recorded base of `location`, if any.
pub fn get(repo: &Repo, location: &str) -> Result<Option<Base>> {
    Ok(load_all(repo)?.remove(&key(location)))
}

/// Record that `location` now has `state` (at `revision`). The caller holds the repo lock.
pub fn record(repo: &Repo, location: &str, state: ObjectId, revision: Option<u64>) -> Result<()> {
    let mut all = load_all(repo)?;
    all.insert(
        key(location),
        Base {
            state: ObjectIdText(state),
            revision,
        },
    );
    let p = path(repo);
    std::fs::create_dir_all(repo.ext_dir()).map_err(|e| Error::io("create", repo.ext_dir(), e))?;
    let bytes = serde_json::to_vec_pretty(&all).expect("serialisable");
    fsutil::atomic_write(&p, &bytes, 0o644)
}

/// May `ours` replace `theirs` (the remote's current state, `None` when it has none)?
pub fn check(
    location: &str,
    base: Option<&Base>,
    theirs: Option<&State>,
    their_revision: Option<u64>,
    ours: &State,
    force: bool,
) -> Result<()> {
    let Some(theirs) = theirs else { return Ok(()) };
    if force || theirs.is_empty() || theirs == ours {
        return Ok(());
    }
    let id = theirs.state_id();
    if base.is_some_and(|b| b.state.0 == id) {
        return Ok(());
    }
    let at = their_revision.map_or(String::new(), |r| format!(" (revision {r})"));
    let seen = match base {
        Some(b) => match b.revision {
            Some(r) => format!("you last exchanged revision {r} with it"),
            None => "it changed since you last exchanged with it".to_string(),
        },
        None => "this repository never got or pushed it".to_string(),
    };
    Err(Error::Conflict(format!(
        "conflict: {location} has changes you do not have{at}: {seen}; `pvrfs merge {location}` (or get) first, or push --force to replace them; nothing was pushed"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Entry;

    fn state(files: &[&str]) -> State {
        let mut s = State::empty("x@1");
        for f in files {
            s.insert(f, Entry::Object(ObjectId::hash_bytes(f.as_bytes())))
                .unwrap();
        }
        s
    }

    #[test]
    fn a_push_may_replace_only_what_it_has_seen() {
        let (a, b, mine) = (state(&["a"]), state(&["b"]), state(&["m"]));
        let seen_a = Base {
            state: ObjectIdText(a.state_id()),
            revision: Some(1),
        };
        assert!(check("r", Some(&seen_a), Some(&a), Some(1), &mine, false).is_ok());
        let err = check("r", Some(&seen_a), Some(&b), Some(2), &mine, false).unwrap_err();
        assert!(
            err.to_string().contains("conflict") && err.to_string().contains("revision 1"),
            "{err}"
        );
        assert!(check("r", Some(&seen_a), Some(&b), Some(2), &mine, true).is_ok());
        assert!(check("r", None, Some(&b), None, &mine, false).is_err());
        assert!(check("r", None, Some(&state(&[])), Some(0), &mine, false).is_ok());
        assert!(check("r", None, None, None, &mine, false).is_ok());
        assert!(check("r", None, Some(&mine), None, &mine, false).is_ok());
    }

    #[test]
    fn bases_are_recorded_per_location() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path(), None, None).unwrap();
        let id = ObjectId::hash_bytes(b"s");
        assert_eq!(get(&repo, "http://h/r").unwrap(), None);
        record(&repo, "http://h/r/", id, Some(3)).unwrap();
        assert_eq!(get(&repo, "http://h/r").unwrap().unwrap().revision, Some(3));
        assert_eq!(get(&repo, "s3://b/p").unwrap(), None);
    }
}

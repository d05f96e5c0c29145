//! The one error type of the library, and its mapping to exit codes.
//!
//! Every variant carries what a person needs to act: the file, the state key, the object id or
//! the revision. `anyhow` is used only at the CLI edge; library functions return `Result<T>`.

use crate::oid::ObjectId;
use std::io;
use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a pvr repository (no .pvr/json found in {} or any parent)", .path.display())]
    NotARepo { path: PathBuf },

    #[error("{} is already a pvr repository (remove its .pvr/ first to start over)", .path.display())]
    AlreadyARepo { path: PathBuf },

    #[error("could not {op} '{}': {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A state JSON (`.pvr/json`, a revision's state object, a fetched `json`) is unusable.
    #[error("corrupt state in {origin}: {detail}")]
    CorruptState { origin: String, detail: String },

    /// A key of a state is not an acceptable path or value.
    #[error("invalid entry '{key}' in {origin}: {reason}")]
    BadEntry {
        origin: String,
        key: String,
        reason: String,
    },

    /// A metadata document of a state (`.pvrfs-meta.json`, see `state::meta`) says something
    /// about a path that the format does not allow.
    #[error("invalid metadata for '{path}' in {origin} (document '{doc}'): {reason}")]
    BadMeta {
        origin: String,
        doc: String,
        path: String,
        reason: String,
    },

    /// A tracked `.json` file does not parse. Display matches pvr's `JSON Unmarshal (path): msg`.
    #[error("JSON Unmarshal ({path}): {source}")]
    InvalidJson {
        path: String,
        #[source]
        source: crate::json::SyntaxError,
    },

    #[error("object {id} is missing from the object store {}{}", .store.display(), for_path(.path))]
    MissingObject {
        id: ObjectId,
        store: PathBuf,
        path: Option<String>,
    },

    #[error("object {id} is corrupt: its content hashes to {actual}{}", for_path(.path))]
    CorruptObject {
        id: ObjectId,
        actual: ObjectId,
        path: Option<String>,
    },

    #[error("unknown revision '{spec}'{}", if .hint.is_empty() { String::new() } else { format!(" ({})", .hint) })]
    UnknownRevision { spec: String, hint: String },

    #[error("the repository is locked by another pvrfs process ({}); try again when it finishes", .path.display())]
    Locked { path: PathBuf },

    /// The operation would lose uncommitted work.
    #[error("{0}")]
    WouldLoseChanges(String),

    /// The command's arguments make no sense here.
    #[error("{0}")]
    Usage(String),

    /// A patch or merge that cannot be applied.
    #[error("{0}")]
    Conflict(String),

    #[error("{0}")]
    Other(String),

    /// An error with an explicit exit code: reported by another pvrfs process (a mount daemon),
    /// or reworded for its context.
    #[error("{message}")]
    Remote { code: u8, message: String },
}

fn for_path(path: &Option<String>) -> String {
    match path {
        Some(p) => format!(" (needed for '{p}')"),
        None => String::new(),
    }
}

impl Error {
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// Process exit code for this error. 3 for bad input data follows pvr (`JSON Unmarshal` exits 3).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::InvalidJson { .. }
            | Error::CorruptState { .. }
            | Error::BadEntry { .. }
            | Error::BadMeta { .. } => 3,
            Error::MissingObject { .. } | Error::CorruptObject { .. } => 4,
            Error::Locked { .. } => 5,
            Error::Remote { code, .. } => *code,
            _ => 1,
        }
    }
}

/// Attach an operation and a path to an `io::Result`.
pub trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}

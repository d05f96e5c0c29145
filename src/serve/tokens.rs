//! Bearer tokens of `pvrfs serve --tokens FILE`: which token may read or write which
//! repositories.
//!
//! ```text
//! # TOKEN            ACCESS  REPOSITORIES (globs on NAME; `*` stays in one path segment, `**` crosses)
//! 3f9c0b7e1d2a44c8   write   team/*  dev1
//! 77aa01d9e2c34b5f   read    *
//! sha256:<64 hex>    read    public/**      # the token's sha256 instead of the token itself
//! -                  read    public/**      # `-`: requests that carry no token
//! ```
//!
//! `write` includes `read`. A token may appear on several lines (their grants add up). Tokens
//! are at least 16 characters, without spaces. Lookups hash the presented token and compare
//! digests in a map, so checking a token leaks nothing through timing about the others.

use crate::error::{Error, Result};
use crate::oid::ObjectId;
use globset::{GlobBuilder, GlobMatcher};
use std::collections::HashMap;
use std::path::Path;

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    fn word(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

#[derive(Debug)]
struct Grant {
    access: Access,
    patterns: Vec<GlobMatcher>,
}

/// Why a request is refused: 401 (no or unknown token) or 403 (the token lacks the right).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub status: u16,
    pub message: String,
}

/// The parsed tokens file.
#[derive(Debug, Default)]
pub struct Tokens {
    by_digest: HashMap<ObjectId, Vec<Grant>>,
    anonymous: Vec<Grant>,
}

/// Shortest token accepted (a guessable token is no protection).
pub const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::metadata(path) {
                if m.permissions().mode() & 0o004 != 0 {
                    log::warn!(
                        "{} is readable by every user; tokens in it are secrets (chmod 600)",
                        path.display()
                    );
                }
            }
        }
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse the file's text; `origin` names it in errors (with the line number).
    pub fn parse(text: &str, origin: &str) -> Result<Tokens> {
        let mut tokens = Tokens::default();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: String| Error::Usage(format!("{origin}:{}: {why}", n + 1));
            let mut words = line.split_whitespace();
            let token = words.next().expect("non-empty line");
            let access = match words.next() {
                Some("read") => Access::Read,
                Some("write") => Access::Write,
                Some(other) => {
                    return Err(bad(format!(
                        "access must be 'read' or 'write', not '{other}'"
                    )))
                }
                None => return Err(bad("expected TOKEN ACCESS REPOSITORIES...".into())),
            };
            let mut patterns = Vec::new();
            for pat in words {
                let glob = GlobBuilder::new(pat)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| bad(format!("bad repository pattern '{pat}': {e}")))?;
                patterns.push(glob.compile_matcher());
            }
            if patterns.is_empty() {
                return Err(bad("no repositories named (use * for all)".into()));
            }
            let grant = Grant { access, patterns };
            if token == "-" {
                tokens.anonymous.push(grant);
                continue;
            }
            let digest = match token.strip_prefix("sha256:") {
                Some(hex) => ObjectId::from_hex(hex).map_err(|_| {
                    bad("sha256: must be followed by 64 lowercase hex digits".into())
                })?,
                None if token.len() < MIN_TOKEN_LEN => {
                    return Err(bad(format!(
                        "token too short ({} characters; at least {MIN_TOKEN_LEN})",
                        token.len()
                    )))
                }
                None => ObjectId::hash_bytes(token.as_bytes()),
            };
            tokens.by_digest.entry(digest).or_default().push(grant);
        }
        Ok(tokens)
    }

    /// Number of distinct tokens (anonymous access not counted).
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty() && self.anonymous.is_empty()
    }

    /// May `token` (None: none presented) do `need` on repository `name`?
    pub fn check(&self, token: Option<&str>, name: &str, need: Access) -> Result<(), Denied> {
        let allows = |grants: &[Grant]| {
            grants
                .iter()
                .any(|g| g.access >= need && g.patterns.iter().any(|p| p.is_match(name)))
        };
        if allows(&self.anonymous) {
            return Ok(());
        }
        let Some(token) = token else {
            return Err(Denied {
                status: 401,
                message: format!(
                    "{name} needs a token with {} access (Authorization: Bearer TOKEN; pvr --access-token, pvrfs --token)",
                    need.word()
                ),
            });
        };
        match self.by_digest.get(&ObjectId::hash_bytes(token.as_bytes())) {
            None => Err(Denied {
                status: 401,
                message: "unknown token".into(),
            }),
            Some(grants) if allows(grants) => Ok(()),
            Some(_) => Err(Denied {
                status: 403,
                message: format!("the token does not grant {} access to {name}", need.word()),
            }),
        }
    }

    /// May anybody with `token` read `name` (for listings)?
    pub fn can_read(&self, token: Option<&str>, name: &str) -> bool {
        self.check(token, name, Access::Read).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "
# comment
writer-token-0123456   write  team/*   dev1
reader-token-0123456   read   *        # every top-level repository
-                      read   public/**
";

    #[test]
    fn grants_follow_the_file() {
        let t = Tokens::parse(FILE, "tokens").unwrap();
        assert_eq!(t.len(), 2);
        let w = Some("writer-token-0123456");
        assert!(t.check(w, "team/a", Access::Write).is_ok());
        assert!(t.check(w, "dev1", Access::Read).is_ok());
        // `*` stays within one segment
        let deny = t.check(w, "team/a/b", Access::Read).unwrap_err();
        assert_eq!(deny.status, 403);
        let r = Some("reader-token-0123456");
        assert!(t.check(r, "dev1", Access::Read).is_ok());
        let deny = t.check(r, "dev1", Access::Write).unwrap_err();
        assert_eq!(deny.status, 403);
        assert!(deny.message.contains("write"), "{}", deny.message);
        assert!(t.check(None, "public/x/y", Access::Read).is_ok());
        assert_eq!(
            t.check(None, "public/x", Access::Write).unwrap_err().status,
            401
        );
        assert_eq!(t.check(None, "dev1", Access::Read).unwrap_err().status, 401);
        assert_eq!(
            t.check(Some("nope-nope-nope-nope"), "dev1", Access::Read)
                .unwrap_err()
                .message,
            "unknown token"
        );
    }

    #[test]
    fn hashed_tokens_and_bad_lines() {
        let digest = ObjectId::hash_bytes(b"a-very-secret-token");
        let t = Tokens::parse(&format!("sha256:{digest} write *\n"), "f").unwrap();
        assert!(t
            .check(Some("a-very-secret-token"), "x", Access::Write)
            .is_ok());
        for (bad, what) in [
            ("short write *", "too short"),
            ("long-enough-token-1 admin *", "'read' or 'write'"),
            ("long-enough-token-1 read", "no repositories"),
            ("sha256:xyz read *", "64 lowercase hex"),
            ("long-enough-token-1 read a[", "bad repository pattern"),
        ] {
            let err = Tokens::parse(bad, "f").unwrap_err().to_string();
            assert!(
                err.contains(what) && err.starts_with("f:1:"),
                "{bad}: {err}"
            );
        }
    }
}

//! Signed object URLs of the embedded store, the local counterpart of S3's presigned URLs:
//! `…/NAME/objects/<sha>/blob?op=get&exp=T&sig=HMAC` to download and
//! `…?op=put&size=N&exp=T&sig=HMAC` to upload exactly N bytes hashing to `<sha>`.
//!
//! The signature is HMAC-SHA256 over (op, repository, object id, size, expiry) with a key made
//! at start-up, so a URL grants that one operation on that one object until it expires (or the
//! server restarts) and nothing else; the bearer token is never needed (pvr, like S3 clients,
//! sends none to signed URLs). Signatures are compared in constant time.

use crate::oid::ObjectId;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::Read;
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

/// Which operation a URL grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Put,
}

impl Op {
    fn word(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
        }
    }
}

/// What a valid signed URL grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub op: Op,
    /// The exact size an upload must have (`put` only).
    pub size: Option<u64>,
}

pub struct Signer {
    key: [u8; 32],
}

impl Signer {
    /// A signer with a fresh random key.
    pub fn random() -> std::io::Result<Signer> {
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
        Ok(Signer { key })
    }

    /// A signer with a known key (tests and fuzzing).
    pub fn with_key(key: [u8; 32]) -> Signer {
        Signer { key }
    }

    fn mac(&self, op: Op, name: &str, id: &ObjectId, size: Option<u64>, exp: i64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("any key length");
        // Fields separated by NUL: none of them can contain one.
        let size = size.map_or(String::new(), |s| s.to_string());
        for field in [op.word(), name, &id.to_hex(), &size, &exp.to_string()] {
            mac.update(field.as_bytes());
            mac.update(&[0]);
        }
        mac
    }

    /// The query string for `op` on `name`'s object `id`, valid for `lifetime` from `now`.
    pub fn query(
        &self,
        op: Op,
        name: &str,
        id: &ObjectId,
        size: Option<u64>,
        now: i64,
        lifetime: Duration,
    ) -> String {
        let exp = now.saturating_add(lifetime.as_secs() as i64);
        let sig = hex::encode(self.mac(op, name, id, size, exp).finalize().into_bytes());
        match (op, size) {
            (Op::Put, Some(size)) => format!("op=put&size={size}&exp={exp}&sig={sig}"),
            _ => format!("op={}&exp={exp}&sig={sig}", op.word()),
        }
    }

    /// Check a signed URL's query for `name`'s object `id` at time `now`.
    pub fn check(&self, name: &str, id: &ObjectId, query: &str, now: i64) -> Result<Grant, String> {
        let mut op = None;
        let mut size = None;
        let mut exp = None;
        let mut sig = None;
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "op" => op = Some(v),
                "size" => size = Some(v.parse::<u64>().map_err(|_| "bad size".to_string())?),
                "exp" => exp = Some(v.parse::<i64>().map_err(|_| "bad expiry".to_string())?),
                "sig" => sig = Some(hex::decode(v).map_err(|_| "bad signature".to_string())?),
                _ => {}
            }
        }
        let op = match op {
            Some("get") => Op::Get,
            Some("put") => Op::Put,
            _ => return Err("not a signed object URL (no op)".into()),
        };
        let (Some(exp), Some(sig)) = (exp, sig) else {
            return Err("not a signed object URL (no exp/sig)".into());
        };
        if op == Op::Put && size.is_none() {
            return Err("a signed upload URL must carry its size".into());
        }
        self.mac(op, name, id, size, exp)
            .verify_slice(&sig)
            .map_err(|_| {
                "the URL's signature is not valid (altered, or from before a restart)".to_string()
            })?;
        if now > exp {
            return Err(format!(
                "the signed URL expired {} s ago; ask for a new one",
                now - exp
            ));
        }
        Ok(Grant { op, size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_grant_one_operation_on_one_object_until_they_expire() {
        let s = Signer::with_key([7; 32]);
        let id = ObjectId::hash_bytes(b"x");
        let other = ObjectId::hash_bytes(b"y");
        let q = s.query(Op::Put, "dev1", &id, Some(5), 1000, Duration::from_secs(60));
        assert_eq!(
            s.check("dev1", &id, &q, 1000).unwrap(),
            Grant {
                op: Op::Put,
                size: Some(5)
            }
        );
        assert!(s.check("dev1", &other, &q, 1000).is_err());
        assert!(s.check("dev2", &id, &q, 1000).is_err());
        assert!(s
            .check("dev1", &id, &q, 1061)
            .unwrap_err()
            .contains("expired"));
        let bigger = q.replace("size=5", "size=6");
        assert!(s
            .check("dev1", &id, &bigger, 1000)
            .unwrap_err()
            .contains("signature"));
        let as_get = q.replace("op=put", "op=get");
        assert!(s.check("dev1", &id, &as_get, 1000).is_err());
        let g = s.query(Op::Get, "dev1", &id, None, 1000, Duration::from_secs(60));
        assert_eq!(s.check("dev1", &id, &g, 1000).unwrap().op, Op::Get);
        assert!(Signer::with_key([8; 32])
            .check("dev1", &id, &g, 1000)
            .is_err());
    }
}

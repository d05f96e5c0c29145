//! Object ids: the lowercase 64-hex sha256 of an object's bytes.
//!
//! Parsed once at the edge (`ObjectId::from_hex`) so that nothing downstream handles an
//! unvalidated id; the store names files by `ObjectId::to_hex`, so a validated id can never
//! name anything outside the store (no `/`, no `..`).

use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

/// A sha256 digest. `Ord` is byte order, which equals the order of the hex names.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId([u8; 32]);

/// Why a string is not an object id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{text}' is not an object id (expected 64 lowercase hex digits)")]
pub struct BadObjectId {
    pub text: String,
}

impl ObjectId {
    pub const HEX_LEN: usize = 64;

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ObjectId(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `from_hex` on raw bytes, for parsers: `None` unless exactly 64 lowercase hex digits.
    pub fn from_hex_bytes(hex: &[u8]) -> Option<Self> {
        // Nibble of each byte, 0xFF for anything but `0-9a-f`; checked once per pair with an OR
        // (this runs once per entry when a state is loaded).
        const NIBBLE: [u8; 256] = {
            let mut t = [0xFF; 256];
            let mut c = 0;
            while c < 10 {
                t[b'0' as usize + c] = c as u8;
                c += 1;
            }
            let mut c = 0;
            while c < 6 {
                t[b'a' as usize + c] = 10 + c as u8;
                c += 1;
            }
            t
        };
        let hex: &[u8; 64] = hex.try_into().ok()?;
        let mut out = [0u8; 32];
        let mut bad = 0u8;
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            let (hi, lo) = (NIBBLE[pair[0] as usize], NIBBLE[pair[1] as usize]);
            bad |= hi | lo;
            *byte = (hi << 4) | (lo & 0x0F);
        }
        (bad & 0xF0 == 0).then_some(ObjectId(out))
    }

    /// Strict parse: exactly 64 lowercase hex digits, as pvr writes them.
    pub fn from_hex(text: &str) -> Result<Self, BadObjectId> {
        let bad = || BadObjectId {
            text: text.chars().take(80).collect(),
        };
        if text.len() != Self::HEX_LEN
            || !text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).map_err(|_| bad())?;
        Ok(ObjectId(out))
    }

    /// True for a string of 64 hex digits in either case: the shape pvr treats as an id
    /// when it reads a `.json` key's value (quirk 5 of the vectors).
    pub fn looks_like_hex_id(text: &str) -> bool {
        text.len() == Self::HEX_LEN && text.bytes().all(|b| b.is_ascii_hexdigit())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The hex name without allocating (hot in state serialisation and store paths).
    pub fn hex_bytes(&self) -> [u8; 64] {
        let mut buf = [0u8; 64];
        hex::encode_to_slice(self.0, &mut buf).expect("64 bytes fit 32 bytes of hex");
        buf
    }

    /// The id of a byte slice.
    pub fn hash_bytes(data: &[u8]) -> Self {
        ObjectId(Sha256::digest(data).into())
    }

    /// The id of everything a reader yields, streaming in 256 KiB chunks.
    pub fn hash_reader(mut reader: impl Read) -> io::Result<(Self, u64)> {
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
        }
        Ok(hasher.finish())
    }
}

/// Incremental hashing, for hash-while-writing.
pub struct Hasher {
    inner: Sha256,
    len: u64,
}

impl Hasher {
    pub fn new() -> Self {
        Hasher {
            inner: Sha256::new(),
            len: 0,
        }
    }
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.len += data.len() as u64;
    }
    /// The id and the number of bytes hashed.
    pub fn finish(self) -> (ObjectId, u64) {
        (ObjectId(self.inner.finalize().into()), self.len)
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.to_hex())
    }
}

impl FromStr for ObjectId {
    type Err = BadObjectId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn from_hex_bytes_is_from_hex() {
        let up = EMPTY.to_uppercase();
        let mut cases = vec![EMPTY.to_string(), up, String::new(), format!("{EMPTY}0")];
        for bad in ['g', 'G', 'A', '/', ':', '`', '@', '\u{e9}'] {
            for at in [0, 1, 62, 63] {
                let mut s = EMPTY.to_string();
                s.replace_range(at..at + 1, &bad.to_string());
                cases.push(s);
            }
        }
        for c in cases {
            assert_eq!(
                ObjectId::from_hex_bytes(c.as_bytes()),
                ObjectId::from_hex(&c).ok(),
                "{c}"
            );
        }
    }

    #[test]
    fn hashes_and_round_trips() {
        let id = ObjectId::hash_bytes(b"");
        assert_eq!(id.to_hex(), EMPTY);
        assert_eq!(ObjectId::from_hex(EMPTY).unwrap(), id);
        let (streamed, len) = ObjectId::hash_reader(&b"hello"[..]).unwrap();
        assert_eq!(streamed, ObjectId::hash_bytes(b"hello"));
        assert_eq!(len, 5);
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "abc",
            &EMPTY.to_uppercase(),
            &format!("{EMPTY}0"),
            "../../../../etc/passwd0000000000000000000000000000000000000000000",
            &EMPTY.replace('e', "g"),
        ] {
            assert!(ObjectId::from_hex(bad).is_err(), "{bad}");
        }
        assert!(ObjectId::looks_like_hex_id(&EMPTY.to_uppercase()));
    }
}

//! pvr's remote protocol: the wire types both ends share (the client in `exchange::pvr`, the
//! server in `serve`). Defined by pvr's `api/remote.go` and `libpvr/repolib.go`
//! (pantacor/pvr 09601ee1); field names and JSON shapes are pvr's, byte for byte where pvr
//! parses them with Go's `encoding/json` into typed structs (e.g. `size` is a *string*).
//!
//! ```text
//! GET  REPO/.pvrremote            -> PvrRemote (endpoints)
//! GET  json-get-url               -> the state (canonical JSON)
//! GET  objects-endpoint/<sha>     -> ObjectRecord with signed-geturl; 404 when absent
//! POST objects-endpoint/          <- ObjectRecord{objectname, sha256sum, size}
//!                                 -> 200 ObjectRecord with signed-puturl; 409 when present
//! PUT  signed-puturl              <- the object's bytes (Content-Length)
//! POST post-url                   <- {"commit-msg":…, "rev":N|-1, <json-key>: state}
//!                                 -> PostReply {"rev", "state-sha", …}
//! ```
//! Everything here is plain data and parsing; no I/O.

use crate::oid::ObjectId;
use serde::{Deserialize, Serialize};

/// The file a pvr remote answers under the repository URL.
pub const REMOTE_FILE: &str = ".pvrremote";
/// The protocol version pvrfs speaks (`pvr-spec`).
pub const REMOTE_SPEC: &str = "pvr-remote@1";
/// The key the state travels under in a post (`json-key`); pvr falls back to `post`.
pub const STATE_KEY: &str = "state";
/// Header on `json-get-url` answers of `pvrfs serve`: the revision the body is. pvr ignores
/// it; pvrfs's client posts `rev` = this + 1, so a concurrent post shows up as a conflict.
pub const REVISION_HEADER: &str = "pvrfs-revision";
/// pvr's object type header (`objects.HttpHeaderPantahubObjectType`); we only ever serve
/// plain objects.
pub const OBJECT_TYPE_HEADER: &str = "pantahub-object-type";
pub const OBJECT_TYPE_OBJECT: &str = "object";

/// `GET REPO/.pvrremote`: where the state and the objects are (pvr's `PvrRemote`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PvrRemote {
    #[serde(rename = "pvr-spec", default)]
    pub spec: String,
    #[serde(rename = "json-get-url", default)]
    pub json_get_url: String,
    #[serde(rename = "json-key", default)]
    pub json_key: String,
    #[serde(rename = "objects-endpoint", default)]
    pub objects_endpoint: String,
    #[serde(rename = "post-url", default)]
    pub post_url: String,
    #[serde(rename = "post-fields", default)]
    pub post_fields: Vec<String>,
    #[serde(rename = "post-fields-opt", default)]
    pub post_fields_opt: Vec<String>,
}

/// One object as the objects endpoint describes it (pvr's `ObjectWithAccess`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    #[serde(default)]
    pub id: String,
    #[serde(rename = "storage-id", default)]
    pub storage_id: String,
    #[serde(default)]
    pub owner: String,
    #[serde(rename = "objectname", default)]
    pub object_name: String,
    #[serde(rename = "sha256sum", default)]
    pub sha: String,
    /// A decimal string in pvr's structs; numbers are accepted too.
    #[serde(default, deserialize_with = "string_or_number")]
    pub size: String,
    #[serde(rename = "mime-type", default)]
    pub mime_type: String,
    #[serde(rename = "signed-puturl", default)]
    pub signed_put_url: String,
    #[serde(rename = "signed-geturl", default)]
    pub signed_get_url: String,
    #[serde(default)]
    pub now: String,
    #[serde(rename = "expire-time", default)]
    pub expire_time: String,
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        S(String),
        N(serde_json::Number),
    }
    Ok(match Either::deserialize(d)? {
        Either::S(s) => s,
        Either::N(n) => n.to_string(),
    })
}

impl ObjectRecord {
    /// The id and size a client claims in an upload request, checked.
    pub fn claimed(&self) -> Result<(ObjectId, u64), String> {
        let id = ObjectId::from_hex(&self.sha).map_err(|e| format!("sha256sum: {e}"))?;
        let size = self
            .size
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("size '{}' is not a byte count", self.size))?;
        Ok((id, size))
    }

    /// A record for object `id` of `size` bytes (URLs filled in by the caller).
    pub fn describe(id: &ObjectId, size: u64, name: &str) -> ObjectRecord {
        ObjectRecord {
            id: id.to_hex(),
            storage_id: id.to_hex(),
            owner: String::new(),
            object_name: name.to_string(),
            sha: id.to_hex(),
            size: size.to_string(),
            mime_type: "application/octet-stream".into(),
            ..Default::default()
        }
    }
}

/// What a post answers (pvr reads `rev`, `state-sha`, `trail-id`; `revlocal` only when rev is -1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostReply {
    pub rev: i64,
    #[serde(rename = "state-sha", default)]
    pub state_sha: String,
    #[serde(rename = "trail-id", default)]
    pub trail_id: String,
    #[serde(rename = "commit-msg", default)]
    pub commit_msg: String,
    /// False when the posted state already was the head (no new revision).
    #[serde(default = "yes")]
    pub created: bool,
}

fn yes() -> bool {
    true
}

/// An error answer's body: `{"error": "…", "missing": [ids]}` (pvr prints the body on a failed
/// post; pvrfs's client reads `error`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// A `.pvrremote` answer, checked: it must name json-get-url or objects-endpoint.
pub fn parse_remote(bytes: &[u8]) -> Result<PvrRemote, String> {
    let remote: PvrRemote = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if remote.json_get_url.is_empty() && remote.objects_endpoint.is_empty() {
        return Err("it names neither json-get-url nor objects-endpoint".into());
    }
    Ok(remote)
}

/// An object record (the answer of `objects-endpoint/<sha>` or of an upload offer).
pub fn parse_record(bytes: &[u8]) -> Result<ObjectRecord, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// The answer of a post.
pub fn parse_post_reply(bytes: &[u8]) -> Result<PostReply, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_pvrs_upload_request() {
        // What pvr's postObjects sends (Go's encoding/json of ObjectWithAccess).
        let body = r#"{"id":"","storage-id":"","owner":"","objectname":"bsp/kernel.img","sha256sum":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824","size":"5","mime-type":"application/octet-stream","signed-puturl":"","signed-geturl":"","now":"","expire-time":""}"#;
        let r: ObjectRecord = serde_json::from_str(body).unwrap();
        let (id, size) = r.claimed().unwrap();
        assert_eq!((id, size), (ObjectId::hash_bytes(b"hello"), 5));
        let n: ObjectRecord = serde_json::from_str(r#"{"sha256sum":"x","size":7}"#).unwrap();
        assert_eq!(n.size, "7");
        assert!(n.claimed().unwrap_err().contains("sha256sum"));
        // size stays a string on the way out (pvr's struct field is a string)
        let out = serde_json::to_string(&ObjectRecord::describe(&id, 5, "a")).unwrap();
        assert!(out.contains(r#""size":"5""#), "{out}");
    }

    #[test]
    fn remote_description_round_trips_with_pvrs_names() {
        let r = PvrRemote {
            spec: REMOTE_SPEC.into(),
            json_get_url: "http://h/r/json".into(),
            json_key: STATE_KEY.into(),
            objects_endpoint: "http://h/r/objects".into(),
            post_url: "http://h/r/post".into(),
            post_fields: vec![],
            post_fields_opt: vec!["commit-msg".into(), "rev".into()],
        };
        let text = serde_json::to_string(&r).unwrap();
        for name in [
            "pvr-spec",
            "json-get-url",
            "json-key",
            "objects-endpoint",
            "post-url",
        ] {
            assert!(text.contains(name), "{text}");
        }
        assert_eq!(serde_json::from_str::<PvrRemote>(&text).unwrap(), r);
    }
}

//! Where `pvrfs serve` keeps objects: each repository's own store (the embedded default), or an
//! S3 bucket (`--store s3://BUCKET/PREFIX`, each repository under `PREFIX/NAME/objects/<sha>`,
//! the plain layout, so `pvrfs get s3://BUCKET/PREFIX/NAME`-style tools see ordinary keys).
//!
//! With S3, clients move the bytes to and from the bucket directly through presigned URLs; the
//! upload URL carries the object's sha256 (`x-amz-checksum-sha256`), so the service refuses a
//! body that does not match before it becomes visible. Before a state that references an object
//! is accepted, the object is checked once more: `HEAD` with checksum mode must report the
//! expected sha256, or, from a service that keeps no checksums (or only a composite one: an
//! object that `pvrfs push s3://…` uploaded in parts), the object is read back and hashed; a
//! mismatching object is deleted and reported missing.
//!
//! A presigned upload URL is one S3 `PUT`, which holds at most 5 GiB, and pvr's protocol has
//! one upload URL per object: an offer of a bigger object is refused (413) unless the bucket
//! already has it. Objects the repository's own
//! local store holds are served from there in both modes.
//!
//! Names of present S3 objects are cached per repository (filled by one listing, then by
//! `HEAD`s of objects not seen yet), so describing a known object costs no S3 request.

use crate::error::Result;
use crate::exchange::s3::{checksum_b64, S3Bucket, S3Location};
use crate::oid::ObjectId;
use crate::repo::Repo;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;

/// Where an object was found, with its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Local(u64),
    S3(u64),
}

/// Why a posted state's object is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    pub id: ObjectId,
    pub why: &'static str,
}

pub enum Backend {
    Local,
    S3(Box<S3Objects>),
}

pub struct S3Objects {
    bucket: S3Bucket,
    root: S3Location,
    /// Per repository name: objects known to be in the bucket, with their sizes (`None` until
    /// the repository's prefix was listed once).
    known: Mutex<HashMap<String, HashMap<ObjectId, u64>>>,
}

impl S3Objects {
    pub fn new(bucket: S3Bucket, root: S3Location) -> S3Objects {
        S3Objects {
            bucket,
            root,
            known: Mutex::default(),
        }
    }

    pub fn describe(&self) -> String {
        self.root.describe()
    }

    fn location(&self, name: &str) -> S3Location {
        self.root.child(name)
    }

    fn key(&self, name: &str, id: &ObjectId) -> String {
        self.location(name).object_key(id)
    }

    /// Is the object in the bucket (cache, else one listing of the repository, else `HEAD`)?
    fn size_of(&self, name: &str, id: &ObjectId) -> Result<Option<u64>> {
        if let Some(size) = self.known.lock().get(name).and_then(|m| m.get(id)) {
            return Ok(Some(*size));
        }
        let listed = self.known.lock().contains_key(name);
        if !listed {
            let loc = self.location(name);
            let prefix = loc.key("objects/");
            let found = self.bucket.list_objects(&prefix)?;
            let size = found.get(id).copied();
            self.known.lock().insert(name.to_string(), found);
            if size.is_some() {
                return Ok(size);
            }
        }
        let head = self.bucket.head(&self.key(name, id))?;
        if let Some(h) = &head {
            self.remember(name, id, h.len);
        }
        Ok(head.map(|h| h.len))
    }

    fn remember(&self, name: &str, id: &ObjectId, size: u64) {
        self.known
            .lock()
            .entry(name.to_string())
            .or_default()
            .insert(*id, size);
    }

    fn forget(&self, name: &str, id: &ObjectId) {
        if let Some(m) = self.known.lock().get_mut(name) {
            m.remove(id);
        }
    }

    /// Check an uploaded object against its name (see the module docs); a bad one is deleted.
    fn verify(&self, name: &str, id: &ObjectId) -> Result<Option<&'static str>> {
        let key = self.key(name, id);
        let Some(head) = self.bucket.head(&key)? else {
            self.forget(name, id);
            return Ok(Some("missing"));
        };
        let good = match &head.sha256_b64 {
            // A composite checksum (`…-N`, a multipart upload's) is not the object's sha256.
            Some(sum) if !sum.contains('-') => *sum == checksum_b64(id),
            _ => matches!(self.bucket.hash_object(&key)?, Some((actual, _)) if actual == *id),
        };
        if good {
            self.remember(name, id, head.len);
            return Ok(None);
        }
        log::warn!("{key}: does not hash to its name; deleting it");
        self.bucket.delete(&key)?;
        self.forget(name, id);
        Ok(Some("corrupt (deleted)"))
    }
}

impl Backend {
    pub fn is_s3(&self) -> bool {
        matches!(self, Backend::S3(_))
    }

    /// Where the object `id` of repository `name` is.
    pub fn find(&self, name: &str, repo: &Repo, id: &ObjectId) -> Result<Option<Found>> {
        if let Ok(m) = std::fs::metadata(repo.store().path_of(id)) {
            if m.is_file() {
                return Ok(Some(Found::Local(m.len())));
            }
        }
        match self {
            Backend::Local => Ok(None),
            Backend::S3(s3) => Ok(s3.size_of(name, id)?.map(Found::S3)),
        }
    }

    /// The objects of `ids` that a state may not reference yet: absent, or (S3) not hashing to
    /// their name. Objects in the local store are valid by the store's invariant.
    pub fn unusable(
        &self,
        name: &str,
        repo: &Repo,
        ids: &[ObjectId],
        jobs: usize,
    ) -> Result<Vec<Unusable>> {
        let bad = Mutex::new(Vec::new());
        crate::exchange::for_each_parallel(ids, jobs, |id| {
            if repo.store().contains(id) {
                return Ok(());
            }
            let why = match self {
                Backend::Local => Some("missing"),
                Backend::S3(s3) => s3.verify(name, id)?,
            };
            if let Some(why) = why {
                bad.lock().push(Unusable { id: *id, why });
            }
            Ok(())
        })?;
        let mut bad = bad.into_inner();
        bad.sort_by_key(|u| u.id);
        Ok(bad)
    }

    /// Where repository `name`'s objects live in the bucket (`s3://BUCKET/PREFIX/NAME/objects/`;
    /// S3 mode only).
    pub fn describe_objects(&self, name: &str) -> Option<String> {
        match self {
            Backend::S3(s3) => Some(format!("{}/objects/", s3.location(name).describe())),
            Backend::Local => None,
        }
    }

    /// A presigned S3 URL to download an object of the bucket (S3 mode only).
    pub fn s3_get_url(&self, name: &str, id: &ObjectId, lifetime: Duration) -> Option<String> {
        match self {
            Backend::S3(s3) => Some(s3.bucket.presign_get(&s3.key(name, id), lifetime)),
            Backend::Local => None,
        }
    }

    /// A presigned S3 URL to upload an object, checksum included (S3 mode only).
    pub fn s3_put_url(&self, name: &str, id: &ObjectId, lifetime: Duration) -> Option<String> {
        match self {
            Backend::S3(s3) => Some(s3.bucket.presign_put(&s3.key(name, id), id, lifetime)),
            Backend::Local => None,
        }
    }
}

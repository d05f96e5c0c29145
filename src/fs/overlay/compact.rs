//! Persistence: compaction of the journal into a new snapshot, and clean-up of orphaned upper
//! files.

use super::*;

impl Overlay {
    /// Minimal prefixes of the affected paths (see module docs).
    pub(super) fn roots(&self) -> Vec<String> {
        let mut roots: Vec<String> = Vec::new();
        for p in &self.affected {
            let covered = p
                .match_indices('/')
                .any(|(i, _)| self.affected.contains(&p[..i]));
            if !covered {
                roots.push(p.clone());
            }
        }
        roots
    }

    /// True when the base has `path` or anything under it (files, symlinks, empty
    /// directories).
    pub(super) fn base_has(&self, path: &str) -> bool {
        let meta = self.base.meta();
        if self.base.contains(path) || meta.links.contains_key(path) {
            return true;
        }
        if meta.is_dir(self.base.entries_map(), path) {
            return true;
        }
        let prefix = format!("{path}/");
        self.base
            .entries_map()
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix))
    }

    /// Rewrite the snapshot from memory and start an empty journal (see module docs).
    pub fn compact(&mut self) -> RepoResult<()> {
        // The snapshot names upper files: they must be durable first.
        self.sync()?;
        let mut records = Vec::new();
        let mut seen: HashMap<u64, String> = HashMap::new();
        // The root has no path to be affected by: its attributes are always written.
        let root = &self.nodes[&ROOT_INO];
        let root_times = (root.mtime != self.base_time).then_some(root.mtime.into());
        records.push(Record::SetAttr {
            path: String::new(),
            mode: Some(root.mode),
            uid: Some(root.uid),
            gid: Some(root.gid),
            atime: root_times,
            mtime: root_times,
        });
        for r in self.roots() {
            if self.base_has(&r) {
                records.push(Record::Remove { path: r.clone() });
            }
            if let Some(ino) = self.resolve(&r) {
                self.emit(ino, &r, &mut seen, &mut records);
            }
        }
        let snap = Snapshot {
            generation: self.generation + 1,
            header: Header {
                base_rev: self.base_rev,
                base_state: self.base_state_id.to_hex(),
                next_id: self.next_id,
            },
            records,
        };
        self.journal = Some(journal::write_snapshot(&self.dir, &snap)?);
        self.generation = snap.generation;
        // Only now does no record name the upper files of removed or rebased nodes.
        self.clean_orphan_uppers();
        Ok(())
    }

    pub(super) fn emit(
        &self,
        ino: u64,
        path: &str,
        seen: &mut HashMap<u64, String>,
        out: &mut Vec<Record>,
    ) {
        if let Some(first) = seen.get(&ino) {
            out.push(Record::Link {
                src: first.clone(),
                dst: path.to_string(),
            });
            return;
        }
        seen.insert(ino, path.to_string());
        let n = &self.nodes[&ino];
        let (mode, uid, gid) = (n.mode, n.uid, n.gid);
        match &n.body {
            Body::Dir(children) => {
                out.push(Record::Mkdir {
                    path: path.to_string(),
                    ino,
                    mode,
                    uid,
                    gid,
                });
                for (name, child) in children {
                    self.emit(*child, &join(path, name), seen, out);
                }
            }
            Body::File(Content::Upper(upper)) => out.push(Record::Create {
                path: path.to_string(),
                ino,
                upper: *upper,
                mode,
                uid,
                gid,
            }),
            Body::File(Content::Base(e)) => out.push(Record::PutBase {
                path: path.to_string(),
                ino,
                object: e.object_id().map(|id| id.to_hex()),
                inline: match e {
                    Entry::Inline(v) => {
                        Some(String::from_utf8_lossy(&json::to_canonical(v)).into_owned())
                    }
                    Entry::Object(_) => None,
                },
                mode,
                uid,
                gid,
            }),
            Body::Symlink(target) => out.push(Record::Symlink {
                path: path.to_string(),
                ino,
                target: target.clone(),
                uid,
                gid,
            }),
            Body::Special(kind, rdev) => out.push(Record::Mknod {
                path: path.to_string(),
                ino,
                kind: *kind,
                rdev: *rdev,
                mode,
                uid,
                gid,
            }),
        }
        if n.mtime != self.base_time && !matches!(n.body, Body::File(Content::Upper(_))) {
            out.push(Record::SetAttr {
                path: path.to_string(),
                mode: None,
                uid: None,
                gid: None,
                atime: Some(n.atime.into()),
                mtime: Some(n.mtime.into()),
            });
        }
    }

    /// Remove upper files no node refers to (left by a crash between creating and journaling).
    pub(super) fn clean_orphan_uppers(&self) {
        let live: HashSet<String> = self
            .uppers
            .iter()
            .filter_map(|ino| match self.nodes.get(ino)?.body {
                Body::File(Content::Upper(u)) => Some(format!("u{u}")),
                _ => None,
            })
            .collect();
        let pooled = |name: &str| {
            let id = name.strip_prefix('u').and_then(|n| n.parse::<u64>().ok());
            matches!((&self.pool, id), (Some(p), Some(id)) if p.is_reserved(id))
        };
        let Ok(rd) = fs::read_dir(self.dir.join("upper")) else {
            return;
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) && !pooled(&name) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

//! Applying journal records to the in-memory tree (`Overlay::apply`), and the node bookkeeping
//! every operation shares: allocation, links (`attach`/`detach`), change marks (`affected`).

use super::*;

impl Overlay {
    /// Journal a record, then apply it. Callers have validated it, so applying cannot fail
    /// except through a bug, which is reported rather than hidden.
    pub(super) fn commit_record(&mut self, rec: Record) -> Result<()> {
        let journal = self
            .journal
            .as_mut()
            .expect("an open overlay has a journal");
        journal.append(&rec)?;
        let compact = journal.wants_compaction(COMPACT_AT);
        self.dropped_uppers.clear(); // left over from replay: compaction handles those
        self.apply(&rec)?;
        for u in std::mem::take(&mut self.dropped_uppers) {
            self.free_big_upper(u);
        }
        if compact {
            self.compact()?;
        }
        Ok(())
    }

    pub(super) fn alloc(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub(super) fn mark(&mut self, path: &str) {
        if !path.is_empty() {
            self.affected.insert(path.to_string());
        }
    }

    /// Insert a node under the inode its record names, or a fresh one if that inode is taken:
    /// after a commit, a node kept in the overlay may carry an inode that the new base's own
    /// numbering gives to another node at the next load. Returns the inode used.
    pub(super) fn new_node(&mut self, ino: u64, body: Body, mode: u32, uid: u32, gid: u32) -> u64 {
        let now = SystemTime::now();
        self.next_id = self.next_id.max(ino + 1);
        let ino = if self.nodes.contains_key(&ino) {
            self.alloc()
        } else {
            ino
        };
        if let Body::File(Content::Upper(u)) = body {
            self.next_id = self.next_id.max(u + 1);
            self.uppers.insert(ino);
        }
        self.nodes.insert(
            ino,
            Node {
                body,
                mode,
                uid,
                gid,
                atime: now,
                mtime: now,
                ctime: now,
                links: Vec::new(),
            },
        );
        ino
    }

    /// Resolve the parent directory of `path` and the final name, for replay.
    pub(super) fn parent_of(&self, op: &'static str, path: &str) -> Result<(u64, String)> {
        let (dir, name) = split(path);
        let parent = self
            .resolve(dir)
            .ok_or_else(|| errno(op, dir, libc::ENOENT))?;
        self.children(op, parent)?;
        Ok((parent, name.to_string()))
    }

    pub(super) fn touch_dir(&mut self, ino: u64) {
        let now = SystemTime::now();
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.mtime = now;
            n.ctime = now;
        }
    }

    /// Give `ino` the name `name` in `parent`. Like `detach`, this changes the node's ctime
    /// (`link` and `rename` do on a local file system) and the parent's mtime and ctime.
    pub(super) fn attach(&mut self, parent: u64, name: &str, ino: u64) {
        dir_children(&mut self.nodes, parent).insert(name.to_string(), ino);
        let node = self.nodes.get_mut(&ino).expect("attached node exists");
        node.links.push((parent, name.to_string()));
        node.ctime = SystemTime::now();
        if matches!(node.body, Body::Dir(_)) {
            *self.subdirs.entry(parent).or_default() += 1;
        }
        self.touch_dir(parent);
    }

    pub(super) fn detach(&mut self, parent: u64, name: &str) -> Option<u64> {
        let ino = dir_children(&mut self.nodes, parent).remove(name)?;
        let node = self.nodes.get_mut(&ino).expect("child exists");
        if matches!(node.body, Body::Dir(_)) {
            if let Some(n) = self.subdirs.get_mut(&parent) {
                *n = n.saturating_sub(1);
            }
        }
        if let Some(i) = node
            .links
            .iter()
            .position(|(p, n)| *p == parent && n == name)
        {
            node.links.remove(i);
        }
        node.ctime = SystemTime::now();
        self.touch_dir(parent);
        Some(ino)
    }

    /// Drop a subtree that is no longer linked (upper files of its files go too, unless open).
    pub(super) fn drop_unlinked(&mut self, ino: u64) {
        let Some(node) = self.nodes.get(&ino) else {
            return;
        };
        if !node.links.is_empty() {
            return;
        }
        match node.body.clone() {
            Body::Dir(children) => {
                for (name, child) in children {
                    self.detach(ino, &name);
                    self.drop_unlinked(child);
                }
                self.nodes.remove(&ino);
            }
            // While open, the node and its upper file stay (see `handles`). Otherwise the upper
            // file goes at the next compaction (records before this one may still name it), or
            // at once if big (`free_big_upper`, on the live path only).
            Body::File(Content::Upper(_)) if self.handles.contains_key(&ino) => {}
            Body::File(Content::Upper(u)) => {
                self.dropped_uppers.push(u);
                self.uppers.remove(&ino);
                self.nodes.remove(&ino);
            }
            _ => {
                self.uppers.remove(&ino);
                self.nodes.remove(&ino);
            }
        }
    }

    /// Apply one record to memory (replay and live path).
    pub(super) fn apply(&mut self, rec: &Record) -> Result<()> {
        // Ids come from disk on replay: one near 2^64 would overflow the counter (a panic, or
        // a wrap onto the root's inode); inode 0 is no inode at all.
        let ids: &[u64] = match rec {
            Record::Mkdir { ino, .. } | Record::Symlink { ino, .. } | Record::Mknod { ino, .. } => {
                &[*ino, 1]
            }
            Record::PutBase { ino, .. } => &[*ino, 1],
            Record::Create { ino, upper, .. } => &[*ino, *upper],
            Record::CopyUp { upper, .. } => &[*upper, 1],
            _ => &[1, 1],
        };
        if let Some(bad) = ids.iter().find(|&&id| id == 0 || id >= MAX_ID) {
            return Err(errno(
                "replay: implausible inode or upper file number",
                bad.to_string(),
                libc::EIO,
            ));
        }
        match rec {
            Record::Mkdir {
                path,
                ino,
                mode,
                uid,
                gid,
            } => {
                let (parent, name) = self.parent_of("mkdir", path)?;
                let ino = self.new_node(*ino, Body::Dir(BTreeMap::new()), *mode, *uid, *gid);
                self.attach(parent, &name, ino);
                self.mark(path);
            }
            Record::Create {
                path,
                ino,
                upper,
                mode,
                uid,
                gid,
            } => {
                let (parent, name) = self.parent_of("create", path)?;
                let up = self.upper_path(*upper);
                if !up.exists() {
                    // The record is durable but the new empty file's name was not: recreate it.
                    File::create(&up).ctx("create", &up)?;
                }
                let ino =
                    self.new_node(*ino, Body::File(Content::Upper(*upper)), *mode, *uid, *gid);
                self.attach(parent, &name, ino);
                self.mark(path);
            }
            Record::Symlink {
                path,
                ino,
                target,
                uid,
                gid,
            } => {
                let (parent, name) = self.parent_of("symlink", path)?;
                let ino = self.new_node(
                    *ino,
                    Body::Symlink(target.clone()),
                    SYMLINK_MODE,
                    *uid,
                    *gid,
                );
                self.attach(parent, &name, ino);
                self.mark(path);
            }
            Record::Mknod {
                path,
                ino,
                kind,
                rdev,
                mode,
                uid,
                gid,
            } => {
                if !kind.is_special() {
                    return Err(errno("mknod", path.as_str(), libc::EINVAL));
                }
                let (parent, name) = self.parent_of("mknod", path)?;
                let ino = self.new_node(*ino, Body::Special(*kind, *rdev), *mode, *uid, *gid);
                self.attach(parent, &name, ino);
                self.mark(path);
            }
            Record::PutBase {
                path,
                ino,
                object,
                inline,
                mode,
                uid,
                gid,
            } => {
                let (parent, name) = self.parent_of("restore", path)?;
                let entry = match (object, inline) {
                    (Some(hex), _) => Entry::Object(ObjectId::from_hex(hex).map_err(|e| {
                        FsError::Repo(Error::Other(format!("bad object id in overlay: {e}")))
                    })?),
                    (None, Some(text)) => {
                        Entry::Inline(json::parse(text.as_bytes()).map_err(|e| {
                            FsError::Repo(Error::Other(format!("bad inline value in overlay: {e}")))
                        })?)
                    }
                    (None, None) => return Err(errno("restore", path.as_str(), libc::EINVAL)),
                };
                let ino = self.new_node(*ino, Body::File(Content::Base(entry)), *mode, *uid, *gid);
                self.attach(parent, &name, ino);
                self.mark(path);
            }
            Record::CopyUp { path, upper } => {
                let ino = self
                    .resolve(path)
                    .ok_or_else(|| errno("copy up", path.as_str(), libc::ENOENT))?;
                let up = self.upper_path(*upper);
                if !up.exists() {
                    return Err(errno(
                        "copy up: missing upper file",
                        up.display().to_string(),
                        libc::EIO,
                    ));
                }
                let node = self.nodes.get_mut(&ino).expect("resolved");
                node.body = Body::File(Content::Upper(*upper));
                self.uppers.insert(ino);
                self.next_id = self.next_id.max(upper + 1);
                for p in self.link_paths(ino) {
                    self.mark(&p);
                }
            }
            Record::Link { src, dst } => {
                let ino = self
                    .resolve(src)
                    .ok_or_else(|| errno("link", src.as_str(), libc::ENOENT))?;
                let (parent, name) = self.parent_of("link", dst)?;
                self.attach(parent, &name, ino);
                self.mark(src);
                self.mark(dst);
            }
            Record::Remove { path } => {
                let (parent, name) = self.parent_of("remove", path)?;
                let ino = self
                    .detach(parent, &name)
                    .ok_or_else(|| errno("remove", path.as_str(), libc::ENOENT))?;
                self.drop_unlinked(ino);
                self.mark(path);
            }
            Record::Rename { src, dst, exchange } => {
                let (sp, sn) = self.parent_of("rename", src)?;
                let (dp, dn) = self.parent_of("rename", dst)?;
                let s = self
                    .detach(sp, &sn)
                    .ok_or_else(|| errno("rename", src.as_str(), libc::ENOENT))?;
                let d = self.detach(dp, &dn);
                self.attach(dp, &dn, s);
                match (d, exchange) {
                    (Some(d), true) => self.attach(sp, &sn, d),
                    (Some(d), false) => self.drop_unlinked(d),
                    (None, _) => {}
                }
                self.mark(src);
                self.mark(dst);
            }
            Record::SetAttr {
                path,
                mode,
                uid,
                gid,
                atime,
                mtime,
            } => {
                let ino = self
                    .resolve(path)
                    .ok_or_else(|| errno("setattr", path.as_str(), libc::ENOENT))?;
                let node = self.nodes.get_mut(&ino).expect("resolved");
                node.mode = mode.unwrap_or(node.mode);
                node.uid = uid.unwrap_or(node.uid);
                node.gid = gid.unwrap_or(node.gid);
                node.atime = atime.map(Into::into).unwrap_or(node.atime);
                node.mtime = mtime.map(Into::into).unwrap_or(node.mtime);
                node.ctime = SystemTime::now();
                // Attributes of untouched base files are re-emitted by compaction only if marked.
                for p in self.link_paths(ino) {
                    self.mark(&p);
                }
            }
        }
        Ok(())
    }

    /// Every path naming a node (hard links give several).
    pub(super) fn link_paths(&self, ino: u64) -> Vec<String> {
        let Some(node) = self.nodes.get(&ino) else {
            return Vec::new();
        };
        node.links
            .iter()
            .filter_map(|(p, n)| Some(join(&self.path_of(*p)?, n)))
            .collect()
    }

    pub(super) fn new_entry_path(
        &self,
        op: &'static str,
        parent: u64,
        name: &str,
    ) -> Result<String> {
        check_name(op, name)?;
        if self.child(op, parent, name)?.is_some() {
            return Err(errno(
                op,
                join(&self.display_path(parent), name),
                libc::EEXIST,
            ));
        }
        let path = join(
            &self
                .path_of(parent)
                .ok_or_else(|| errno(op, self.display_path(parent), libc::ENOENT))?,
            name,
        );
        // `.pvr` at the top is the repository's own metadata; the format cannot hold it.
        if path == crate::repo::PVR_DIR {
            return Err(errno(op, path, libc::EPERM));
        }
        Ok(path)
    }
}

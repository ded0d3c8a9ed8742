//! Image layers as lower layers of the merged filesystem: [`StoreLower`]
//! implements `stacko_fusefs::lower::Lower` over one layer of the store,
//! reading only the records each call needs.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Arc;

use stacko_fusefs::error::{Errno, Result};
use stacko_fusefs::lower::{Kind, Lower, LowerAttr, LowerEntry, LowerFile, LowerIno, Timestamp};
use stacko_store::read::ContentReader;
use stacko_store::{LayerId, Node, NodeKind, Store, ROOT_INO};

/// One image layer of the store, seen as a read-only lower layer.
pub struct StoreLower {
    store: Arc<Store>,
    layer: LayerId,
}

impl StoreLower {
    /// The lower layer for `layer` of `store`.
    pub fn new(store: Arc<Store>, layer: LayerId) -> Self {
        StoreLower { store, layer }
    }

    fn node(&self, ino: LowerIno) -> Result<Node> {
        self.store
            .node(self.layer, ino)
            .map_err(store_errno)?
            .ok_or(Errno::ENOENT)
    }
}

/// The errno for a store error (a missing record is ENOENT, the rest EIO).
fn store_errno(e: stacko_store::Error) -> Errno {
    Errno(e.errno())
}

fn kind_of(kind: NodeKind) -> Kind {
    match kind {
        NodeKind::File => Kind::File,
        NodeKind::Dir => Kind::Dir,
        NodeKind::Symlink => Kind::Symlink,
        NodeKind::CharDev => Kind::CharDev,
        NodeKind::BlockDev => Kind::BlockDev,
        NodeKind::Fifo => Kind::Fifo,
        NodeKind::Socket => Kind::Socket,
        NodeKind::Whiteout => Kind::Whiteout,
    }
}

fn time(t: stacko_store::Timestamp) -> Timestamp {
    Timestamp {
        sec: t.sec,
        nsec: t.nsec,
    }
}

/// Open content of a stored file: inline bytes or the object file.
struct StoreFile(ContentReader);

impl LowerFile for StoreFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.0.read_at(offset, buf).map_err(store_errno)
    }

    fn backing_file(&self) -> Option<&File> {
        match &self.0 {
            ContentReader::Object(f) => Some(f),
            ContentReader::Inline(_) => None,
        }
    }
}

impl Lower for StoreLower {
    fn root(&self) -> LowerIno {
        ROOT_INO
    }

    fn lookup(&self, dir: LowerIno, name: &OsStr) -> Result<Option<LowerEntry>> {
        let entry = self
            .store
            .lookup(self.layer, dir, name.as_bytes())
            .map_err(store_errno)?;
        Ok(entry.map(|e| LowerEntry {
            ino: e.ino,
            kind: kind_of(e.kind),
        }))
    }

    fn getattr(&self, ino: LowerIno) -> Result<LowerAttr> {
        let n = self.node(ino)?;
        Ok(LowerAttr {
            kind: kind_of(n.kind),
            perm: n.mode & 0o7777,
            uid: n.uid,
            gid: n.gid,
            size: n.size,
            blocks: n.size.div_ceil(512),
            atime: time(n.atime),
            mtime: time(n.mtime),
            ctime: time(n.ctime),
            rdev: n.rdev,
            nlink: n.nlink,
            opaque: n.opaque,
        })
    }

    fn read_dir(
        &self,
        dir: LowerIno,
        after: Option<&OsStr>,
        f: &mut dyn FnMut(&OsStr, LowerEntry) -> bool,
    ) -> Result<()> {
        for entry in self
            .store
            .read_dir(self.layer, dir, after.map(|a| a.as_bytes()))
        {
            let e = entry.map_err(store_errno)?;
            let lower = LowerEntry {
                ino: e.ino,
                kind: kind_of(e.kind),
            };
            if !f(OsStr::from_bytes(&e.name), lower) {
                break;
            }
        }
        Ok(())
    }

    fn open(&self, ino: LowerIno) -> Result<Box<dyn LowerFile>> {
        let n = self.node(ino)?;
        if n.kind != NodeKind::File {
            return Err(Errno::EINVAL);
        }
        let reader = self.store.open_content(&n.content).map_err(store_errno)?;
        Ok(Box::new(StoreFile(reader)))
    }

    fn readlink(&self, ino: LowerIno) -> Result<Vec<u8>> {
        let n = self.node(ino)?;
        self.store.readlink(&n).map_err(|_| Errno::EINVAL)
    }

    fn list_xattrs(&self, ino: LowerIno) -> Result<Vec<OsString>> {
        Ok(self
            .node(ino)?
            .xattrs
            .into_iter()
            .map(|x| OsString::from_vec(x.name))
            .collect())
    }

    fn get_xattr(&self, ino: LowerIno, name: &OsStr) -> Result<Option<Vec<u8>>> {
        Ok(self
            .node(ino)?
            .xattrs
            .into_iter()
            .find(|x| x.name == name.as_bytes())
            .map(|x| x.value))
    }
}

//! The read API the FUSE layer and the exporters use: each call touches
//! only the records it needs, never a whole layer.

use std::fs::File;
use std::ops::Bound;
use std::os::unix::fs::FileExt;

use crate::error::{Error, Result};
use crate::keys;
use crate::records::{
    decode, Content, DirEntry, DirentRecord, Ino, LayerId, Node, NodeKind, Xattr,
};
use crate::store::Store;

/// An open handle on a node's content.
pub enum ContentReader {
    /// Inline bytes (small files, symlink targets) or empty.
    Inline(Vec<u8>),
    /// An object file.
    Object(File),
}

impl ContentReader {
    /// Reads at `offset` into `buf`; returns bytes read (0 at end). Fills
    /// `buf` unless the end of the content comes first.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        match self {
            ContentReader::Inline(bytes) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let n = buf.len().min(bytes.len() - start);
                buf[..n].copy_from_slice(&bytes[start..start + n]);
                Ok(n)
            }
            ContentReader::Object(file) => read_full_at(file, offset, buf),
        }
    }

    /// The content's length.
    pub fn len(&self) -> Result<u64> {
        match self {
            ContentReader::Inline(bytes) => Ok(bytes.len() as u64),
            ContentReader::Object(file) => Ok(file
                .metadata()
                .map_err(|e| Error::io("reading object metadata", e))?
                .len()),
        }
    }

    /// Whether the content is empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// `pread` until `buf` is full or the file ends.
fn read_full_at(file: &File, offset: u64, buf: &mut [u8]) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading an object", e)),
        }
    }
    Ok(done)
}

/// Iterates the entries of one directory in name order.
pub struct DirIter {
    pub(crate) inner: sled::Iter,
}

impl Iterator for DirIter {
    type Item = Result<DirEntry>;
    fn next(&mut self) -> Option<Self::Item> {
        let item = self.inner.next()?;
        Some(
            item.map_err(Error::from)
                .and_then(|(k, v)| entry_of(&k, &v)),
        )
    }
}

/// A [`DirEntry`] from a `dirents` key and value.
fn entry_of(key: &[u8], value: &[u8]) -> Result<DirEntry> {
    let (_, _, name) = keys::split_dirent(key).ok_or(Error::Format {
        tree: "dirents",
        detail: format!("key of {} bytes", key.len()),
    })?;
    let rec: DirentRecord = decode("dirents", value)?;
    Ok(DirEntry {
        name: name.to_vec(),
        ino: rec.ino,
        kind: rec.kind,
    })
}

/// The first key past every entry of directory `dir` of `layer`.
fn dir_end(layer: LayerId, dir: Ino) -> Bound<Vec<u8>> {
    match (dir.checked_add(1), layer.checked_add(1)) {
        (Some(next), _) => Bound::Excluded(keys::dir_prefix(layer, next).to_vec()),
        (None, Some(next_layer)) => Bound::Excluded(keys::layer_prefix(next_layer).to_vec()),
        (None, None) => Bound::Unbounded,
    }
}

impl Store {
    /// The node `ino` of `layer`.
    pub fn node(&self, layer: LayerId, ino: Ino) -> Result<Option<Node>> {
        match self.nodes.get(keys::node(layer, ino))? {
            None => Ok(None),
            Some(v) => decode("nodes", &v).map(Some),
        }
    }

    /// Looks `name` up in directory `parent` of `layer`.
    pub fn lookup(&self, layer: LayerId, parent: Ino, name: &[u8]) -> Result<Option<DirEntry>> {
        let key = keys::dirent(layer, parent, name);
        match self.dirents.get(&key)? {
            None => Ok(None),
            Some(v) => entry_of(&key, &v).map(Some),
        }
    }

    /// Lists directory `dir` of `layer` in name order, starting after the
    /// name `after` (a stable readdir cookie), or from the start.
    pub fn read_dir(&self, layer: LayerId, dir: Ino, after: Option<&[u8]>) -> DirIter {
        let start = match after {
            Some(name) => Bound::Excluded(keys::dirent(layer, dir, name)),
            None => Bound::Included(keys::dir_prefix(layer, dir).to_vec()),
        };
        DirIter {
            inner: self.dirents.range((start, dir_end(layer, dir))),
        }
    }

    /// The extended attributes of node `ino` of `layer` (None if no such node).
    pub fn xattrs(&self, layer: LayerId, ino: Ino) -> Result<Option<Vec<Xattr>>> {
        Ok(self.node(layer, ino)?.map(|n| n.xattrs))
    }

    /// Opens a node's content for reading.
    pub fn open_content(&self, content: &Content) -> Result<ContentReader> {
        Ok(match content {
            Content::Empty => ContentReader::Inline(Vec::new()),
            Content::Inline(bytes) => ContentReader::Inline(bytes.clone()),
            Content::Object(id) => ContentReader::Object(self.objects.open_object(id)?),
        })
    }

    /// Reads `buf.len()` bytes at `offset` of a node's content.
    pub fn read(&self, node: &Node, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.open_content(&node.content)?.read_at(offset, buf)
    }

    /// A symlink's target.
    pub fn readlink(&self, node: &Node) -> Result<Vec<u8>> {
        match (&node.kind, &node.content) {
            (NodeKind::Symlink, Content::Inline(target)) => Ok(target.clone()),
            (NodeKind::Symlink, _) => Err(Error::Format {
                tree: "nodes",
                detail: "symlink without an inline target".into(),
            }),
            _ => Err(Error::BadInput("not a symlink".into())),
        }
    }
}

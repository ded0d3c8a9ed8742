//! The read API the FUSE layer and the exporters use: each call touches
//! only the records it needs, never a whole layer.

use std::fs::File;

use crate::error::Result;
use crate::records::{Content, DirEntry, Ino, LayerId, Node};
use crate::store::Store;

/// An open handle on a node's content.
pub enum ContentReader {
    /// Inline bytes (small files, symlink targets) or empty.
    Inline(Vec<u8>),
    /// An object file.
    Object(File),
}

impl ContentReader {
    /// Reads at `offset` into `buf`; returns bytes read (0 at end).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let _ = (offset, buf);
        todo!()
    }
}

/// Iterates the entries of one directory in name order.
pub struct DirIter {
    pub(crate) inner: sled::Iter,
}

impl Iterator for DirIter {
    type Item = Result<DirEntry>;
    fn next(&mut self) -> Option<Self::Item> {
        todo!()
    }
}

impl Store {
    /// The node `ino` of `layer`.
    pub fn node(&self, layer: LayerId, ino: Ino) -> Result<Option<Node>> {
        let _ = (layer, ino);
        todo!()
    }

    /// Looks `name` up in directory `parent` of `layer`.
    pub fn lookup(&self, layer: LayerId, parent: Ino, name: &[u8]) -> Result<Option<DirEntry>> {
        let _ = (layer, parent, name);
        todo!()
    }

    /// Lists directory `dir` of `layer` in name order, starting after the
    /// name `after` (a stable readdir cookie), or from the start.
    pub fn read_dir(&self, layer: LayerId, dir: Ino, after: Option<&[u8]>) -> DirIter {
        let _ = (layer, dir, after);
        todo!()
    }

    /// Opens a node's content for reading.
    pub fn open_content(&self, content: &Content) -> Result<ContentReader> {
        let _ = content;
        todo!()
    }

    /// Reads `buf.len()` bytes at `offset` of a node's content.
    pub fn read(&self, node: &Node, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.open_content(&node.content)?.read_at(offset, buf)
    }

    /// A symlink's target.
    pub fn readlink(&self, node: &Node) -> Result<Vec<u8>> {
        let _ = node;
        todo!()
    }
}

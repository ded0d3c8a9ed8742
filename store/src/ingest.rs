//! Building layers: the [`LayerBuilder`] that tar import and directory
//! ingest both feed, and [`ingest_dir`] for plain trees and overlayfs upper
//! directories.

use std::io::Read;
use std::path::Path;

use crate::error::Result;
use crate::progress::Progress;
use crate::records::{DirEntry, Ino, LayerId, Node};
use crate::store::Store;

/// What a finished layer holds; passed to [`Store::commit_image`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSummary {
    /// The layer's id.
    pub layer: LayerId,
    /// Bytes of file content (before dedup).
    pub bytes: u64,
    /// Non-directory nodes.
    pub files: u64,
}

/// Writes one new layer in batches. Nothing is visible to readers of any
/// image until [`Store::commit_image`] references the finished layer.
/// Dropping a builder without `finish` leaves a `Building` layer that the
/// next open removes.
pub struct LayerBuilder<'s> {
    pub(crate) store: &'s Store,
    pub(crate) layer: LayerId,
}

impl<'s> LayerBuilder<'s> {
    /// The id of the layer being built.
    pub fn layer(&self) -> LayerId {
        self.layer
    }

    /// Sets the root directory's metadata (mode, owner, times, xattrs, opaque).
    pub fn set_root(&mut self, node: Node) -> Result<()> {
        let _ = node;
        todo!()
    }

    /// Adds `name` under directory `parent`. For files, use [`Self::add_file`];
    /// for symlinks, `node.content` is `Inline(target)`. Errors if the name exists.
    pub fn add(&mut self, parent: Ino, name: &[u8], node: Node) -> Result<Ino> {
        let _ = (parent, name, node);
        todo!()
    }

    /// Adds a regular file, streaming its content: inlined when it is at most
    /// [`crate::INLINE_MAX`] bytes, else written to the object directory.
    /// `node.size` is set from the bytes read.
    pub fn add_file(&mut self, parent: Ino, name: &[u8], node: Node, data: &mut dyn Read) -> Result<Ino> {
        let _ = (parent, name, node, data);
        todo!()
    }

    /// Adds another name for an existing non-directory node (a hard link); bumps its nlink.
    pub fn link(&mut self, parent: Ino, name: &[u8], target: Ino) -> Result<()> {
        let _ = (parent, name, target);
        todo!()
    }

    /// Replaces the metadata of a node already added (e.g. a directory's
    /// mtime once its children are in); content is kept.
    pub fn update(&mut self, ino: Ino, node: Node) -> Result<()> {
        let _ = (ino, node);
        todo!()
    }

    /// Looks a name up among the entries added so far.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<DirEntry>> {
        let _ = (parent, name);
        todo!()
    }

    /// A node added so far.
    pub fn node(&self, ino: Ino) -> Result<Option<Node>> {
        let _ = ino;
        todo!()
    }

    /// Writes the last batch, makes the objects durable and puts them in place.
    /// The layer stays unreferenced until [`Store::commit_image`].
    pub fn finish(self) -> Result<LayerSummary> {
        todo!()
    }
}

/// Ingests the directory tree at `src` into a new layer. Char 0:0 devices
/// become whiteouts; `trusted.overlay.opaque`/`user.overlay.opaque` = `y`
/// (or a `.wh..wh..opq` entry) mark opaque directories; other overlay-internal
/// xattrs are dropped. Hard links stay hard links. Sockets are kept as nodes.
pub fn ingest_dir(store: &Store, src: &Path, progress: &dyn Progress) -> Result<LayerSummary> {
    let _ = (store, src, progress);
    todo!()
}

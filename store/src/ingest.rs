//! Building layers: the [`LayerBuilder`] that tar import and directory
//! ingest both feed, and [`ingest_dir`] for plain trees and overlayfs upper
//! directories.
//!
//! Memory stays bounded whatever the tree size: nodes and entries are kept
//! in memory only until the next batch (a few thousand records) is written
//! to sled, file content is streamed, and written objects are published in
//! groups.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::keys;
use crate::objects::PendingObject;
use crate::progress::Progress;
use crate::records::{
    encode, Content, DirEntry, DirentRecord, Ino, LayerId, LayerRecord, LayerState, Node, NodeKind,
    ObjectId, Timestamp, Xattr, INLINE_MAX, NAME_MAX, ROOT_INO,
};
use crate::store::{lock, Store};
use crate::xattr;

/// Pending nodes + entries that trigger a batch write to sled.
const BATCH_RECORDS: usize = 4096;

/// Object rows pending in memory that trigger their write to sled (about
/// 0.5 MB of digests). Rows are written sorted, many at a time: inserted
/// one by one as objects came (keys that start with a digest land all over
/// both trees), sled rewrote a leaf page every few rows and the store grew
/// by several times the rows' own size.
const ROW_BATCH: usize = 16384;

/// Written objects that trigger a publish (db flush, syncfs, renames).
const PUBLISH_OBJECTS: usize = 4096;

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
/// Dropping a builder without `finish` removes what it wrote; if the
/// process dies instead, the `Building` layer left behind is removed at
/// the next open.
///
/// Node numbers are given out in order from 2 ([`ROOT_INO`] is the root
/// directory, made at the start as mode 0755 owned by the current user).
/// The builder keeps `nlink` itself: 1 + links for non-directories,
/// 2 + subdirectories for directories; the `nlink` of nodes passed in is ignored.
pub struct LayerBuilder<'s> {
    pub(crate) store: &'s Store,
    pub(crate) layer: LayerId,
    next_ino: Ino,
    created: Timestamp,
    /// Nodes written since the last batch (readers consult these first).
    nodes: HashMap<Ino, Node>,
    /// Entries written since the last batch.
    dirents: HashMap<(Ino, Vec<u8>), DirentRecord>,
    /// Objects written to temp files, not yet renamed into place.
    objects: Vec<PendingObject>,
    /// Objects this layer uses whose rows are not written yet; pinned in
    /// `store.object_lock` so that no purge deletes them meanwhile.
    rows: BTreeSet<ObjectId>,
    bytes: u64,
    files: u64,
    finished: bool,
}

impl<'s> LayerBuilder<'s> {
    /// Registers a new `Building` layer (durably) with its root directory.
    pub(crate) fn start(store: &'s Store) -> Result<Self> {
        let created = Timestamp::now();
        let record = LayerRecord {
            state: LayerState::Building,
            created,
            next_ino: ROOT_INO + 1,
        };
        let layer = loop {
            let id = store.db.generate_id()?;
            if id == 0 {
                continue;
            }
            let key = keys::layer(id);
            if store
                .layers
                .compare_and_swap(key, None as Option<&[u8]>, Some(encode(&record)))?
                .is_ok()
            {
                break id;
            }
        };
        lock(&store.active).insert(layer);
        let mut builder = LayerBuilder {
            store,
            layer,
            next_ino: ROOT_INO + 1,
            created,
            nodes: HashMap::new(),
            dirents: HashMap::new(),
            objects: Vec::new(),
            rows: BTreeSet::new(),
            bytes: 0,
            files: 0,
            finished: false,
        };
        // The layer record must be durable before anything that names the
        // layer, or a crash could leave rows that no garbage collection finds.
        store.flush()?;
        let mut root = Node::new(NodeKind::Dir, 0o755);
        // SAFETY: geteuid/getegid cannot fail.
        (root.uid, root.gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        builder.nodes.insert(ROOT_INO, root);
        Ok(builder)
    }

    /// The id of the layer being built.
    pub fn layer(&self) -> LayerId {
        self.layer
    }

    /// Sets the root directory's metadata (mode, owner, times, xattrs, opaque).
    pub fn set_root(&mut self, node: Node) -> Result<()> {
        self.update(ROOT_INO, node)
    }

    /// Adds `name` under directory `parent`. For files, use [`Self::add_file`]
    /// (or pass `Content::Inline`/`Content::Empty`, or `Content::Object` of
    /// an object already in the store); for symlinks, `node.content` is
    /// `Inline(target)`. Errors if the name exists.
    ///
    /// `size` is derived: content length for files and symlinks, 0 otherwise.
    pub fn add(&mut self, parent: Ino, name: &[u8], mut node: Node) -> Result<Ino> {
        self.check_new_entry(parent, name)?;
        check_content(&node)?;
        node.size = match &node.content {
            Content::Inline(b) => b.len() as u64,
            Content::Object(id) => self.register_existing(id)?.unwrap_or(node.size),
            Content::Empty => 0,
        };
        self.insert_new(parent, name, node)
    }

    /// Adds a regular file, streaming its content: inlined when it is at most
    /// [`crate::INLINE_MAX`] bytes, else written to the object directory.
    /// `node.size` is set from the bytes read.
    pub fn add_file(
        &mut self,
        parent: Ino,
        name: &[u8],
        mut node: Node,
        data: &mut dyn Read,
    ) -> Result<Ino> {
        if node.kind != NodeKind::File {
            return Err(Error::BadInput(format!("add_file of a {:?}", node.kind)));
        }
        self.check_new_entry(parent, name)?;
        let head = read_head(data)?;
        if head.len() as u64 <= INLINE_MAX {
            node.size = head.len() as u64;
            node.content = if head.is_empty() {
                Content::Empty
            } else {
                Content::Inline(head)
            };
        } else {
            let pending = self.store.objects.write_prefixed(&head, data)?;
            node.size = pending.len;
            node.content = Content::Object(pending.id);
            self.register_pending(pending)?;
        }
        self.insert_new(parent, name, node)
    }

    /// Adds a regular file whose content is the rest of `src` (a large
    /// source file): copied into the object directory by the kernel while
    /// another thread hashes it. `node.size` is set from the bytes copied.
    pub fn add_file_copy(
        &mut self,
        parent: Ino,
        name: &[u8],
        mut node: Node,
        src: &File,
    ) -> Result<Ino> {
        if node.kind != NodeKind::File {
            return Err(Error::BadInput(format!(
                "add_file_copy of a {:?}",
                node.kind
            )));
        }
        self.check_new_entry(parent, name)?;
        let pending = self.store.objects.write_copy(src)?;
        node.size = pending.len;
        if pending.len == 0 {
            node.content = Content::Empty;
            pending.discard();
        } else {
            node.content = Content::Object(pending.id);
            self.register_pending(pending)?;
        }
        self.insert_new(parent, name, node)
    }

    /// Adds another name for an existing non-directory node (a hard link); bumps its nlink.
    pub fn link(&mut self, parent: Ino, name: &[u8], target: Ino) -> Result<()> {
        self.check_new_entry(parent, name)?;
        let mut node = self.existing(target)?;
        if node.kind == NodeKind::Dir {
            return Err(Error::BadInput(format!(
                "hard link {} to a directory",
                String::from_utf8_lossy(name)
            )));
        }
        node.nlink = node.nlink.saturating_add(1);
        let kind = node.kind;
        self.put_node(target, node);
        self.dirents
            .insert((parent, name.to_vec()), DirentRecord { ino: target, kind });
        self.maybe_flush()
    }

    /// Replaces the metadata of a node already added (e.g. a directory's
    /// mtime once its children are in); content, size and nlink are kept.
    /// The kind cannot change.
    pub fn update(&mut self, ino: Ino, mut node: Node) -> Result<()> {
        let old = self.existing(ino)?;
        if old.kind != node.kind {
            return Err(Error::BadInput(format!(
                "node {ino} is a {:?}, cannot become a {:?}",
                old.kind, node.kind
            )));
        }
        node.content = old.content;
        node.size = old.size;
        node.nlink = old.nlink;
        node.xattrs.sort();
        if node.kind != NodeKind::Dir {
            node.opaque = false;
        }
        self.put_node(ino, node);
        self.maybe_flush()
    }

    /// Looks a name up among the entries added so far.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<DirEntry>> {
        if let Some(rec) = self.dirents.get(&(parent, name.to_vec())) {
            return Ok(Some(DirEntry {
                name: name.to_vec(),
                ino: rec.ino,
                kind: rec.kind,
            }));
        }
        self.store.lookup(self.layer, parent, name)
    }

    /// A node added so far.
    pub fn node(&self, ino: Ino) -> Result<Option<Node>> {
        if let Some(n) = self.nodes.get(&ino) {
            return Ok(Some(n.clone()));
        }
        self.store.node(self.layer, ino)
    }

    /// Bytes of file content and non-directory nodes added so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.bytes, self.files)
    }

    /// Writes the last batch, makes the objects durable and puts them in place.
    /// The layer stays unreferenced until [`Store::commit_image`].
    pub fn finish(mut self) -> Result<LayerSummary> {
        self.flush_batch()?;
        let record = LayerRecord {
            state: LayerState::Building,
            created: self.created,
            next_ino: self.next_ino,
        };
        self.store
            .layers
            .insert(keys::layer(self.layer), encode(&record))?;
        self.publish_objects()?;
        self.finished = true;
        Ok(LayerSummary {
            layer: self.layer,
            bytes: self.bytes,
            files: self.files,
        })
    }

    /// A node that must exist.
    fn existing(&self, ino: Ino) -> Result<Node> {
        self.node(ino)?.ok_or_else(|| {
            Error::BadInput(format!(
                "node {ino} does not exist in the layer being built"
            ))
        })
    }

    /// Checks that `name` is a valid entry name, `parent` a directory, and the name free.
    fn check_new_entry(&self, parent: Ino, name: &[u8]) -> Result<()> {
        check_entry_name(name)?;
        let dir = self.existing(parent)?;
        if dir.kind != NodeKind::Dir {
            return Err(Error::BadInput(format!("node {parent} is not a directory")));
        }
        if self.lookup(parent, name)?.is_some() {
            return Err(Error::Exists {
                what: "entry",
                name: String::from_utf8_lossy(name).into_owned(),
            });
        }
        Ok(())
    }

    /// Gives `node` the next ino, names it `name` in `parent`, and counts it.
    fn insert_new(&mut self, parent: Ino, name: &[u8], mut node: Node) -> Result<Ino> {
        let ino = self.next_ino;
        self.next_ino += 1;
        node.xattrs.sort();
        if node.kind == NodeKind::Dir {
            node.nlink = 2;
            let mut dir = self.existing(parent)?;
            dir.nlink = dir.nlink.saturating_add(1);
            self.put_node(parent, dir);
        } else {
            node.nlink = 1;
            node.opaque = false;
            self.files += 1;
            if node.kind == NodeKind::File {
                self.bytes += node.size;
            }
        }
        let kind = node.kind;
        self.put_node(ino, node);
        self.dirents
            .insert((parent, name.to_vec()), DirentRecord { ino, kind });
        self.maybe_flush()?;
        Ok(ino)
    }

    fn put_node(&mut self, ino: Ino, node: Node) {
        self.nodes.insert(ino, node);
    }

    /// Records that this layer uses an object already in place (or already
    /// written by this builder); returns its length when it is in place.
    fn register_existing(&mut self, id: &ObjectId) -> Result<Option<u64>> {
        let store = self.store;
        let mut pins = lock(&store.object_lock);
        let len = fs::metadata(self.store.objects.path(id))
            .ok()
            .map(|m| m.len());
        if len.is_none() && !self.has_object_row(id)? {
            return Err(Error::BadInput(format!(
                "object {} is not in the store",
                id.to_hex()
            )));
        }
        self.claim_object(&mut pins, id);
        drop(pins);
        self.maybe_write_rows()?;
        Ok(len)
    }

    /// Records that this layer uses a freshly written object; keeps its temp
    /// file for publishing unless the object is (or will be) in place anyway.
    fn register_pending(&mut self, mut obj: PendingObject) -> Result<()> {
        {
            let store = self.store;
            let mut pins = lock(&store.object_lock);
            // Under the lock: no other layer can release the object between
            // this check and our claim (a pin until our rows are written).
            let known = self.has_object_row(&obj.id)?;
            if known || self.store.objects.contains(&obj.id) {
                if let Some(tmp) = obj.tmp.take() {
                    let _ = fs::remove_file(tmp);
                }
            }
            if !known {
                self.claim_object(&mut pins, &obj.id);
            }
        }
        self.maybe_write_rows()?;
        if obj.tmp.is_some() {
            self.objects.push(obj);
            if self.objects.len() >= PUBLISH_OBJECTS {
                self.publish_objects()?;
            }
        }
        Ok(())
    }

    fn has_object_row(&self, id: &ObjectId) -> Result<bool> {
        Ok(self.rows.contains(id)
            || self
                .store
                .object_layers
                .contains_key(keys::object_layer(id, self.layer))?)
    }

    /// Claims `id` for this layer: its rows wait in `rows`, the object
    /// stays pinned in `pins` (the guarded `store.object_lock`) until written.
    fn claim_object(&mut self, pins: &mut HashMap<ObjectId, u32>, id: &ObjectId) {
        if self.rows.insert(*id) {
            *pins.entry(*id).or_insert(0) += 1;
        }
    }

    fn maybe_write_rows(&mut self) -> Result<()> {
        if self.rows.len() >= ROW_BATCH {
            self.write_rows()?;
        }
        Ok(())
    }

    /// Writes the pending object rows to sled in key order, then unpins
    /// their objects (the rows now protect them). Plain inserts: the rows
    /// need no atomicity (the layer is not referenced before its commit),
    /// and a `sled::Batch` of this size raised peak memory by 100+ MiB.
    fn write_rows(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        // `rows` is sorted by digest, so the keys come in order.
        for id in &self.rows {
            self.store
                .object_layers
                .insert(&keys::object_layer(id, self.layer)[..], &[][..])?;
        }
        self.unpin_rows();
        Ok(())
    }

    /// Forgets the pending rows and releases their pins.
    fn unpin_rows(&mut self) {
        let rows = std::mem::take(&mut self.rows);
        let mut pins = lock(&self.store.object_lock);
        for id in rows {
            if let Some(n) = pins.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(&id);
                }
            }
        }
    }

    /// Makes the object rows durable, then the temp files, then renames them
    /// into place (so no object file exists that no row accounts for).
    fn publish_objects(&mut self) -> Result<()> {
        self.write_rows()?;
        self.store.flush()?;
        if self.objects.is_empty() {
            return Ok(());
        }
        self.store.objects.sync_all()?;
        let objs = std::mem::take(&mut self.objects);
        self.store.objects.publish_all(objs)
    }

    fn maybe_flush(&mut self) -> Result<()> {
        if self.nodes.len() + self.dirents.len() >= BATCH_RECORDS {
            self.flush_batch()?;
        }
        Ok(())
    }

    /// Writes the pending nodes and entries to sled, one batch per tree.
    fn flush_batch(&mut self) -> Result<()> {
        let mut nodes = sled::Batch::default();
        for (ino, node) in self.nodes.drain() {
            nodes.insert(&keys::node(self.layer, ino), encode(&node));
        }
        let mut dirents = sled::Batch::default();
        for ((parent, name), rec) in self.dirents.drain() {
            dirents.insert(keys::dirent(self.layer, parent, &name), encode(&rec));
        }
        self.store.nodes.apply_batch(nodes)?;
        self.store.dirents.apply_batch(dirents)?;
        Ok(())
    }
}

impl Drop for LayerBuilder<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        for obj in self.objects.drain(..) {
            obj.discard();
        }
        self.unpin_rows();
        self.nodes.clear();
        self.dirents.clear();
        // Best effort: whatever stays is removed at the next open.
        let _ = self.store.purge_layer(self.layer);
        lock(&self.store.active).remove(&self.layer);
    }
}

/// Refuses names that cannot be directory entries.
fn check_entry_name(name: &[u8]) -> Result<()> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name == b"." || name == b".." {
        "`.` and `..` are not entries"
    } else if name.contains(&b'/') || name.contains(&0) {
        "it contains `/` or NUL"
    } else if name.len() > NAME_MAX {
        "it is longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(Error::BadInput(format!(
        "entry name {:?}: {why}",
        String::from_utf8_lossy(name)
    )))
}

/// Refuses content that does not fit the node's kind.
fn check_content(node: &Node) -> Result<()> {
    let ok = match (&node.kind, &node.content) {
        (NodeKind::File, _) => true,
        (NodeKind::Symlink, Content::Inline(t)) => !t.is_empty() && !t.contains(&0),
        (_, Content::Empty) => node.kind != NodeKind::Symlink,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::BadInput(format!(
            "a {:?} node cannot hold this content",
            node.kind
        )))
    }
}

/// Reads up to `INLINE_MAX + 1` bytes.
fn read_head(data: &mut dyn Read) -> Result<Vec<u8>> {
    let mut head = Vec::with_capacity(INLINE_MAX as usize + 1);
    data.take(INLINE_MAX + 1)
        .read_to_end(&mut head)
        .map_err(|e| Error::io("reading file content", e))?;
    Ok(head)
}

/// Ingests the directory tree at `src` into a new layer. Char 0:0 devices
/// become whiteouts; `trusted.overlay.opaque`/`user.overlay.opaque` = `y`
/// (or a `.wh..wh..opq` entry) mark opaque directories; other overlay-internal
/// xattrs are dropped. Hard links stay hard links. Sockets are kept as nodes.
/// Symlinks are stored, never followed.
pub fn ingest_dir(store: &Store, src: &Path, progress: &dyn Progress) -> Result<LayerSummary> {
    let meta = lstat(src)?;
    if !meta.is_dir() {
        return Err(Error::BadInput(format!(
            "{} is not a directory",
            src.display()
        )));
    }
    let mut ingest = Ingest::new(store.layer_builder()?, progress);
    let listing = list_dir(src)?;
    let mut root = node_from_meta(src, &meta)?;
    root.opaque |= listing.opaque;
    ingest.builder.set_root(root)?;
    ingest.walk(Frame {
        path: src.to_path_buf(),
        ino: ROOT_INO,
        names: listing.names.into_iter(),
    })?;
    ingest.builder.finish()
}

/// A directory being walked: its remaining entries, sorted by name.
pub(crate) struct Frame {
    pub(crate) path: PathBuf,
    pub(crate) ino: Ino,
    pub(crate) names: std::vec::IntoIter<OsString>,
}

/// State of one [`ingest_dir`] run (also used by [`crate::apply`]).
pub(crate) struct Ingest<'s, 'p> {
    pub(crate) builder: LayerBuilder<'s>,
    /// (st_dev, st_ino) of nodes with several links → the node they became.
    links: HashMap<(u64, u64), Ino>,
    pub(crate) progress: &'p dyn Progress,
}

impl<'s, 'p> Ingest<'s, 'p> {
    /// Starts an ingest into `builder`.
    pub(crate) fn new(builder: LayerBuilder<'s>, progress: &'p dyn Progress) -> Self {
        Ingest {
            builder,
            links: HashMap::new(),
            progress,
        }
    }

    /// Adds everything below the directory of `root` (already added as `root.ino`).
    pub(crate) fn walk(&mut self, root: Frame) -> Result<()> {
        let mut stack = vec![root];
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.names.next() else {
                stack.pop();
                continue;
            };
            let path = frame.path.join(&name);
            let parent = frame.ino;
            if let Some(child) = self.entry(parent, &path, name.as_bytes())? {
                stack.push(child);
            }
        }
        Ok(())
    }

    /// Adds one entry; returns a frame to walk if it is a directory.
    pub(crate) fn entry(&mut self, parent: Ino, path: &Path, name: &[u8]) -> Result<Option<Frame>> {
        let meta = lstat(path)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            let listing = list_dir(path)?;
            let mut node = node_from_meta(path, &meta)?;
            node.opaque |= listing.opaque;
            let ino = self.builder.add(parent, name, node)?;
            self.progress.advance(0, 1);
            return Ok(Some(Frame {
                path: path.to_path_buf(),
                ino,
                names: listing.names.into_iter(),
            }));
        }
        let key = (meta.dev(), meta.ino());
        if meta.nlink() > 1 {
            if let Some(&target) = self.links.get(&key) {
                self.builder.link(parent, name, target)?;
                self.progress.advance(0, 1);
                return Ok(None);
            }
        }
        let mut node = node_from_meta(path, &meta)?;
        let ino = if ft.is_file() && meta.len() >= COPY_IN_KERNEL_MIN {
            let file = open_nofollow(path)?;
            self.builder
                .add_file_copy(parent, name, node, &file)
                .map_err(|e| with_path(e, path))?
        } else if ft.is_file() {
            let mut file = open_nofollow(path)?;
            let mut reader = PathReader {
                file: &mut file,
                path,
            };
            self.builder.add_file(parent, name, node, &mut reader)?
        } else {
            if ft.is_symlink() {
                let target = fs::read_link(path)
                    .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
                node.content = Content::Inline(target.as_os_str().as_bytes().to_vec());
            }
            self.builder.add(parent, name, node)?
        };
        if meta.nlink() > 1 {
            self.links.insert(key, ino);
        }
        self.progress
            .advance(if ft.is_file() { meta.len() } else { 0 }, 1);
        Ok(None)
    }
}

/// Source files of at least this many bytes are copied into the object
/// directory inside the kernel (`copy_file_range`) and hashed alongside;
/// smaller ones are streamed through a buffer.
const COPY_IN_KERNEL_MIN: u64 = 1 << 20;

/// Names the source file in an I/O error.
fn with_path(e: Error, path: &Path) -> Error {
    match e {
        Error::Io { context, source } => {
            Error::io(format!("{context} ({})", path.display()), source)
        }
        other => other,
    }
}

/// Wraps read errors of a source file with its path.
struct PathReader<'a> {
    file: &'a mut File,
    path: &'a Path,
}

impl Read for PathReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", self.path.display()),
            )
        })
    }
}

pub(crate) fn lstat(path: &Path) -> Result<Metadata> {
    fs::symlink_metadata(path).map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))
}

fn open_nofollow(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))
}

/// A directory's entry names, sorted, without the overlay opaque marker.
pub(crate) struct Listing {
    pub(crate) names: Vec<OsString>,
    /// A `.wh..wh..opq` entry was present.
    pub(crate) opaque: bool,
}

/// The name overlayfs (and aufs) use to mark a directory opaque.
const OPAQUE_ENTRY: &[u8] = b".wh..wh..opq";

pub(crate) fn list_dir(path: &Path) -> Result<Listing> {
    let ctx = |e| Error::io(format!("cannot read directory {}", path.display()), e);
    let mut names = Vec::new();
    let mut opaque = false;
    for entry in fs::read_dir(path).map_err(ctx)? {
        let name = entry.map_err(ctx)?.file_name();
        if name.as_bytes() == OPAQUE_ENTRY {
            opaque = true;
        } else {
            names.push(name);
        }
    }
    names.sort();
    Ok(Listing { names, opaque })
}

/// The node kind of an lstat result (char 0:0 is an overlay whiteout).
fn kind_of(meta: &Metadata) -> NodeKind {
    let ft = meta.file_type();
    if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_file() {
        NodeKind::File
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if ft.is_char_device() {
        if meta.rdev() == 0 {
            NodeKind::Whiteout
        } else {
            NodeKind::CharDev
        }
    } else if ft.is_block_device() {
        NodeKind::BlockDev
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else {
        NodeKind::Socket
    }
}

/// A node with everything lstat and the xattrs say (content left empty).
pub(crate) fn node_from_meta(path: &Path, meta: &Metadata) -> Result<Node> {
    let kind = kind_of(meta);
    let (xattrs, opaque) = filter_xattrs(xattr::list(path)?);
    let mut node = Node::new(kind, meta.mode());
    node.uid = meta.uid();
    node.gid = meta.gid();
    node.atime = ts(meta.atime(), meta.atime_nsec());
    node.mtime = ts(meta.mtime(), meta.mtime_nsec());
    node.ctime = ts(meta.ctime(), meta.ctime_nsec());
    node.rdev = match kind {
        NodeKind::CharDev | NodeKind::BlockDev => meta.rdev(),
        _ => 0,
    };
    node.xattrs = xattrs;
    node.opaque = opaque && kind == NodeKind::Dir;
    Ok(node)
}

/// Drops overlay-internal xattrs; tells whether they marked the node opaque.
fn filter_xattrs(all: Vec<Xattr>) -> (Vec<Xattr>, bool) {
    let opaque = all.iter().any(xattr::is_opaque_marker);
    let kept = all
        .into_iter()
        .filter(|x| !xattr::is_overlay(&x.name))
        .collect();
    (kept, opaque)
}

fn ts(sec: i64, nsec: i64) -> Timestamp {
    Timestamp {
        sec,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    }
}

//! Opening the store, and the image records.
//!
//! Every change of image records is one sled transaction over the
//! `images` and `layers` trees, taken under one in-process lock (only one
//! process can open the store, so that lock serializes all image changes),
//! followed by a flush.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;

use crate::error::{Error, Result};
use crate::ingest::{LayerBuilder, LayerSummary};
use crate::objects::{create_private_dir, ObjectDir};
use crate::records::{
    decode, encode, validate_name, Content, ImageRecord, ImageState, LayerId, LayerRecord,
    LayerState, Node, ObjectId, Timestamp,
};
use crate::{gc, keys};

/// Options for [`Store::open_with`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// sled's page cache in bytes (bounds the store's memory).
    pub cache_bytes: u64,
    /// How long to wait for another process to release the lock.
    pub lock_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 64 << 20,
            lock_timeout: Duration::from_secs(0),
        }
    }
}

/// An open store. Cheap to share by reference across threads (`Sync`).
pub struct Store {
    pub(crate) home: PathBuf,
    pub(crate) db: sled::Db,
    pub(crate) images: sled::Tree,
    pub(crate) layers: sled::Tree,
    pub(crate) nodes: sled::Tree,
    pub(crate) dirents: sled::Tree,
    pub(crate) object_layers: sled::Tree,
    /// Stackpoints by name (see [`crate::stackpoints`]).
    pub(crate) stackpoints: sled::Tree,
    /// Instances by id.
    pub(crate) instances: sled::Tree,
    /// Image name → the instances that use it.
    pub(crate) image_users: sled::Tree,
    pub(crate) objects: ObjectDir,
    /// Layers being built or finished but not yet committed: never collected.
    pub(crate) active: Mutex<HashSet<LayerId>>,
    /// Serializes changes of image records (and garbage collection's view of them).
    pub(crate) image_lock: Mutex<()>,
    /// Serializes "does any layer reference this object" with object removal;
    /// taken while object files and rows are checked or changed. Holds the
    /// objects that layer builders have claimed but whose rows they have not
    /// written yet (a count per object): a purge never deletes those.
    pub(crate) object_lock: Mutex<HashMap<ObjectId, u32>>,
}

/// How long to sleep between attempts to take the lock.
const LOCK_RETRY: Duration = Duration::from_millis(50);

/// Locks a mutex, ignoring poisoning (the data guarded is `()` or a set
/// whose every state is valid).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether a sled error says another holder has the database's lock.
fn is_lock_error(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => {
            let msg = io.to_string();
            io.kind() == std::io::ErrorKind::WouldBlock
                || msg.contains("could not acquire lock")
                || msg.contains("WouldBlock")
        }
        _ => false,
    }
}

/// Opens sled at `path`, retrying while it is locked until `opts.lock_timeout`.
fn open_db(path: &Path, opts: &StoreOptions) -> Result<sled::Db> {
    let start = Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(opts.cache_bytes)
            .open();
        match opened {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_error(&e) => {
                if start.elapsed() >= opts.lock_timeout {
                    return Err(Error::Locked(path.display().to_string()));
                }
                std::thread::sleep(LOCK_RETRY);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Aborts a transaction with a store error.
pub(crate) fn abort<T>(e: Error) -> std::result::Result<T, ConflictableTransactionError<Error>> {
    Err(ConflictableTransactionError::Abort(e))
}

/// Reads an image record inside a transaction.
pub(crate) fn tx_image(
    images: &TransactionalTree,
    name: &str,
) -> std::result::Result<Option<ImageRecord>, ConflictableTransactionError<Error>> {
    match images.get(name.as_bytes())? {
        None => Ok(None),
        Some(v) => decode("images", &v).map(Some).or_else(abort),
    }
}

/// Inside a transaction: checks that `layer` is a `Building` layer and marks it live.
fn tx_make_live(
    layers: &TransactionalTree,
    layer: LayerId,
) -> std::result::Result<(), ConflictableTransactionError<Error>> {
    let key = keys::layer(layer);
    let Some(v) = layers.get(key)? else {
        return abort(Error::Refused(format!("layer {layer} does not exist")));
    };
    let mut rec: LayerRecord = decode("layers", &v).or_else(abort)?;
    if rec.state != LayerState::Building {
        return abort(Error::Refused(format!("layer {layer} is already in use")));
    }
    rec.state = LayerState::Live;
    layers.insert(&key, encode(&rec))?;
    Ok(())
}

fn image_not_found(name: &str) -> Error {
    Error::NotFound {
        what: "image",
        name: name.to_string(),
    }
}

impl Store {
    /// Opens (creating if needed) the store in `home` with default options,
    /// then removes layers that no image references (interrupted imports and deletes).
    pub fn open(home: &Path) -> Result<Store> {
        Self::open_with(home, &StoreOptions::default())
    }

    /// Opens with options; fails with [`crate::Error::Locked`] if another
    /// process holds the store longer than `lock_timeout`.
    pub fn open_with(home: &Path, opts: &StoreOptions) -> Result<Store> {
        std::fs::create_dir_all(home)
            .map_err(|e| Error::io(format!("creating {}", home.display()), e))?;
        let db = open_db(&home.join("db"), opts)?;
        let tree = |name: &str| db.open_tree(name);
        let store = Store {
            home: home.to_path_buf(),
            images: tree("images")?,
            layers: tree("layers")?,
            nodes: tree("nodes")?,
            dirents: tree("dirents")?,
            object_layers: tree("object_layers")?,
            stackpoints: tree("stackpoints")?,
            instances: tree("instances")?,
            image_users: tree("image_users")?,
            objects: ObjectDir::open(&home.join("objects"))?,
            db,
            active: Mutex::new(HashSet::new()),
            image_lock: Mutex::new(()),
            object_lock: Mutex::new(HashMap::new()),
        };
        create_private_dir(&store.checkouts_dir())?;
        store.collect_garbage()?;
        gc::remove_unused_variants(&store)?;
        store.flush()?;
        Ok(store)
    }

    /// The store's directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The object directory.
    pub fn objects(&self) -> &ObjectDir {
        &self.objects
    }

    /// Where layer checkouts for the kernel overlayfs path live (`HOME/checkouts`).
    pub fn checkouts_dir(&self) -> PathBuf {
        self.home.join("checkouts")
    }

    /// Writes everything to disk.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// One image by name.
    pub fn image(&self, name: &str) -> Result<Option<ImageRecord>> {
        match self.images.get(name.as_bytes())? {
            None => Ok(None),
            Some(v) => decode("images", &v).map(Some),
        }
    }

    /// All images, sorted by name.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        self.images
            .iter()
            .values()
            .map(|v| decode("images", &v?))
            .collect()
    }

    /// The image and its ancestors, top (the image itself) first.
    pub fn image_chain(&self, name: &str) -> Result<Vec<ImageRecord>> {
        let mut chain: Vec<ImageRecord> = Vec::new();
        let mut next = Some(name.to_string());
        while let Some(n) = next {
            if chain.iter().any(|r| r.name == n) {
                return Err(Error::Format {
                    tree: "images",
                    detail: format!("image {n:?} is its own ancestor"),
                });
            }
            let rec = self.image(&n)?.ok_or_else(|| image_not_found(&n))?;
            next = rec.parent.clone();
            chain.push(rec);
        }
        Ok(chain)
    }

    /// Creates an open image with an empty layer on top of `parent`.
    /// Errors: invalid name, name exists, parent missing.
    pub fn create_image(&self, name: &str, parent: Option<&str>) -> Result<ImageRecord> {
        self.check_new_image(name, parent)?;
        let layer = self.layer_builder()?.finish()?;
        self.commit_image(name, parent, &layer, ImageState::Open)
    }

    /// Checks, without changing anything, that image `name` could be created
    /// on `parent`: the name is valid and free, the parent exists. Callers run
    /// this before a long import so that bad input fails at once.
    pub fn check_new_image(&self, name: &str, parent: Option<&str>) -> Result<()> {
        validate_name(name)?;
        if self.image(name)?.is_some() {
            return Err(Error::Exists {
                what: "image",
                name: name.to_string(),
            });
        }
        if let Some(p) = parent {
            if self.image(p)?.is_none() {
                return Err(image_not_found(p));
            }
        }
        Ok(())
    }

    /// Starts a new layer (in `Building` state) to be filled by ingest or tar import.
    pub fn layer_builder(&self) -> Result<LayerBuilder<'_>> {
        LayerBuilder::start(self)
    }

    /// In one transaction: creates image `name` on `parent` whose layer is the
    /// finished `layer`, and marks the layer live. On error the finished
    /// layer is discarded (its nodes and unshared objects removed), so the
    /// store is as it was before the import.
    pub fn commit_image(
        &self,
        name: &str,
        parent: Option<&str>,
        layer: &LayerSummary,
        state: ImageState,
    ) -> Result<ImageRecord> {
        let result = self.commit_image_tx(name, parent, layer, state);
        if result.is_err() {
            self.discard_layer(layer)?;
        }
        result
    }

    fn commit_image_tx(
        &self,
        name: &str,
        parent: Option<&str>,
        layer: &LayerSummary,
        state: ImageState,
    ) -> Result<ImageRecord> {
        validate_name(name)?;
        let _guard = lock(&self.image_lock);
        self.check_active(layer.layer)?;
        let rec = ImageRecord {
            name: name.to_string(),
            parent: parent.map(str::to_string),
            layer: layer.layer,
            state,
            created: Timestamp::now(),
            size: layer.bytes,
            files: layer.files,
        };
        let value = encode(&rec);
        (&self.images, &self.layers).transaction(|(images, layers)| {
            if tx_image(images, name)?.is_some() {
                return abort(Error::Exists {
                    what: "image",
                    name: name.to_string(),
                });
            }
            if let Some(p) = parent {
                if tx_image(images, p)?.is_none() {
                    return abort(image_not_found(p));
                }
            }
            tx_make_live(layers, layer.layer)?;
            images.insert(name.as_bytes(), value.clone())?;
            Ok(())
        })?;
        lock(&self.active).remove(&layer.layer);
        self.flush()?;
        Ok(rec)
    }

    /// Refuses a layer that is not a finished, uncommitted layer of this process.
    fn check_active(&self, layer: LayerId) -> Result<()> {
        if lock(&self.active).contains(&layer) {
            Ok(())
        } else {
            Err(Error::Refused(format!(
                "layer {layer} is not a finished layer waiting to be committed"
            )))
        }
    }

    /// Removes a finished layer that will not be committed (an import that
    /// failed after [`LayerBuilder::finish`]). Layers already committed are
    /// refused.
    pub fn discard_layer(&self, layer: &LayerSummary) -> Result<()> {
        self.check_active(layer.layer)?;
        self.purge(layer.layer)?;
        lock(&self.active).remove(&layer.layer);
        Ok(())
    }

    /// In one transaction: points existing image `name` at the finished
    /// `layer` (its edits committed), sets its state, and releases the old
    /// layer. On error the finished layer is discarded.
    pub fn replace_layer(
        &self,
        name: &str,
        layer: &LayerSummary,
        state: ImageState,
    ) -> Result<ImageRecord> {
        match self.replace_layer_tx(name, layer, state) {
            Ok((rec, old)) => {
                self.purge(old)?;
                self.flush()?;
                Ok(rec)
            }
            Err(e) => {
                self.discard_layer(layer)?;
                Err(e)
            }
        }
    }

    /// The transaction of [`Self::replace_layer`]; returns the new record and the old layer.
    fn replace_layer_tx(
        &self,
        name: &str,
        layer: &LayerSummary,
        state: ImageState,
    ) -> Result<(ImageRecord, LayerId)> {
        let _guard = lock(&self.image_lock);
        self.check_active(layer.layer)?;
        let (rec, old) = (&self.images, &self.layers).transaction(|(images, layers)| {
            let Some(mut rec) = tx_image(images, name)? else {
                return abort(image_not_found(name));
            };
            let old = rec.layer;
            rec.layer = layer.layer;
            rec.state = state;
            rec.size = layer.bytes;
            rec.files = layer.files;
            tx_make_live(layers, layer.layer)?;
            images.insert(name.as_bytes(), encode(&rec))?;
            Ok((rec, old))
        })?;
        lock(&self.active).remove(&layer.layer);
        self.flush()?;
        Ok((rec, old))
    }

    /// Sets an image's state (open/sealed) in one transaction.
    pub fn set_image_state(&self, name: &str, state: ImageState) -> Result<ImageRecord> {
        let _guard = lock(&self.image_lock);
        let rec = self.images.transaction(|images| {
            let Some(mut rec) = tx_image(images, name)? else {
                return abort(image_not_found(name));
            };
            rec.state = state;
            images.insert(name.as_bytes(), encode(&rec))?;
            Ok(rec)
        })?;
        self.flush()?;
        Ok(rec)
    }

    /// Deletes an image: refused while another image has it as parent or an
    /// instance uses it (checked in the transaction that deletes it).
    /// The record goes in one transaction; its layer's data and unreferenced
    /// objects are removed afterwards (or at the next open after a crash).
    pub fn delete_image(&self, name: &str) -> Result<()> {
        let layer = {
            let _guard = lock(&self.image_lock);
            if let Some(child) = self.first_child(name)? {
                return Err(Error::Refused(format!(
                    "image {name} has child image {child}; delete it first"
                )));
            }
            let trees = (&self.images, &self.image_users, &self.instances);
            let rec = trees.transaction(|(images, users, instances)| {
                let Some(rec) = tx_image(images, name)? else {
                    return abort(image_not_found(name));
                };
                crate::stackpoints::tx_refuse_if_used(users, instances, name)?;
                images.remove(name.as_bytes())?;
                Ok(rec)
            })?;
            self.flush()?;
            rec.layer
        };
        self.purge(layer)?;
        self.flush()
    }

    /// The first image (by name) whose parent is `name`.
    fn first_child(&self, name: &str) -> Result<Option<String>> {
        for rec in self.images()? {
            if rec.parent.as_deref() == Some(name) {
                return Ok(Some(rec.name));
            }
        }
        Ok(None)
    }

    /// Removes layers not referenced by any image, and their unreferenced objects.
    pub fn collect_garbage(&self) -> Result<GcStats> {
        let candidates = {
            let _guard = lock(&self.image_lock);
            let referenced: HashSet<LayerId> = self.images()?.iter().map(|r| r.layer).collect();
            let active = lock(&self.active);
            let mut out = Vec::new();
            for key in self.layers.iter().keys() {
                let key = key?;
                let id = keys::be_u64(&key).ok_or(Error::Format {
                    tree: "layers",
                    detail: format!("key of {} bytes", key.len()),
                })?;
                if !referenced.contains(&id) && !active.contains(&id) {
                    out.push(id);
                }
            }
            out
        };
        let mut stats = GcStats::default();
        for layer in candidates {
            stats.objects += self.purge(layer)?;
            stats.layers += 1;
        }
        if stats.layers > 0 {
            self.flush()?;
        }
        Ok(stats)
    }

    /// Releases a layer: removes its nodes, entries and object references,
    /// and deletes objects no other layer references.
    pub(crate) fn purge_layer(&self, layer: LayerId) -> Result<()> {
        self.purge(layer).map(|_| ())
    }

    /// [`Self::purge_layer`], returning the number of object files removed.
    /// Object files go first, the layer record last: a crash part-way leaves
    /// an unreferenced layer record, and the next open finishes the job.
    fn purge(&self, layer: LayerId) -> Result<u64> {
        let removed = self.purge_objects(layer)?;
        let prefix = keys::layer_prefix(layer);
        gc::remove_prefix(&self.nodes, &prefix)?;
        gc::remove_prefix(&self.dirents, &prefix)?;
        self.layers.remove(keys::layer(layer))?;
        Ok(removed)
    }

    /// Drops the layer's object references; deletes objects left
    /// unreferenced. The objects are those its nodes name; for a layer whose
    /// build was cut short, also those whose rows were written before the
    /// nodes naming them (found by a scan of `object_layers`).
    fn purge_objects(&self, layer: LayerId) -> Result<u64> {
        let mut ids = BTreeSet::new();
        for item in self.nodes.scan_prefix(keys::layer_prefix(layer)) {
            let (_, value) = item?;
            let node: Node = decode("nodes", &value)?;
            if let Content::Object(id) = node.content {
                ids.insert(id);
            }
        }
        let complete = match self.layers.get(keys::layer(layer))? {
            Some(v) => decode::<LayerRecord>("layers", &v)?.state == LayerState::Live,
            None => false,
        };
        if !complete {
            for key in self.object_layers.iter().keys() {
                let key = key?;
                if keys::be_u64(&key[32..]) == Some(layer) {
                    ids.insert(object_of_key(&key)?);
                }
            }
        }
        let mut removed = 0;
        for id in ids {
            if self.release_object(&id, layer)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes the row (object, layer); deletes the object file if no other
    /// layer references it. Returns whether a file was deleted.
    fn release_object(&self, id: &ObjectId, layer: LayerId) -> Result<bool> {
        let pins = lock(&self.object_lock);
        // A builder that claimed the object will write its row later.
        let mut shared = pins.contains_key(id);
        for key in self.object_layers.scan_prefix(id.0).keys() {
            if shared {
                break;
            }
            if keys::be_u64(&key?[32..]) != Some(layer) {
                shared = true;
                break;
            }
        }
        let mut deleted = false;
        if !shared && self.objects.contains(id) {
            self.objects.remove(id)?;
            deleted = true;
        }
        self.object_layers.remove(keys::object_layer(id, layer))?;
        Ok(deleted)
    }

    /// Every layer record with its id, in id order (for diagnostics and tests).
    pub fn layer_records(&self) -> Result<Vec<(LayerId, LayerRecord)>> {
        let mut out = Vec::new();
        for item in self.layers.iter() {
            let (key, value) = item?;
            let id = keys::be_u64(&key).ok_or(Error::Format {
                tree: "layers",
                detail: format!("key of {} bytes", key.len()),
            })?;
            out.push((id, decode("layers", &value)?));
        }
        Ok(out)
    }

    /// Whether any layer references the object (rows in `object_layers`).
    pub fn object_referenced(&self, id: &ObjectId) -> Result<bool> {
        Ok(self
            .object_layers
            .scan_prefix(id.0)
            .next()
            .transpose()?
            .is_some())
    }
}

/// The object digest at the start of an `object_layers` key.
fn object_of_key(key: &[u8]) -> Result<ObjectId> {
    let head: [u8; 32] = key
        .get(..32)
        .and_then(|t| t.try_into().ok())
        .filter(|_| key.len() == 40)
        .ok_or(Error::Format {
            tree: "object_layers",
            detail: format!("key of {} bytes", key.len()),
        })?;
    Ok(ObjectId(head))
}

/// What [`Store::collect_garbage`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Layers removed.
    pub layers: u64,
    /// Object files removed.
    pub objects: u64,
}

//! Opening the store, and the image records.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Result;
use crate::ingest::LayerBuilder;
use crate::objects::ObjectDir;
use crate::records::{ImageRecord, ImageState, LayerId};

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
    pub(crate) layer_objects: sled::Tree,
    pub(crate) object_layers: sled::Tree,
    pub(crate) objects: ObjectDir,
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
        let _ = (home, opts);
        todo!()
    }

    /// The store's directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The object directory.
    pub fn objects(&self) -> &ObjectDir {
        &self.objects
    }

    /// Writes everything to disk.
    pub fn flush(&self) -> Result<()> {
        todo!()
    }

    /// One image by name.
    pub fn image(&self, name: &str) -> Result<Option<ImageRecord>> {
        let _ = name;
        todo!()
    }

    /// All images, sorted by name.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        todo!()
    }

    /// The image and its ancestors, top (the image itself) first.
    pub fn image_chain(&self, name: &str) -> Result<Vec<ImageRecord>> {
        let _ = name;
        todo!()
    }

    /// Creates an open image with an empty layer on top of `parent`.
    /// Errors: invalid name, name exists, parent missing.
    pub fn create_image(&self, name: &str, parent: Option<&str>) -> Result<ImageRecord> {
        let _ = (name, parent);
        todo!()
    }

    /// Starts a new layer (in `Building` state) to be filled by ingest or tar import.
    pub fn layer_builder(&self) -> Result<LayerBuilder<'_>> {
        todo!()
    }

    /// In one transaction: creates image `name` on `parent` whose layer is the
    /// finished `layer`, and marks the layer live. Errors leave the layer unreferenced.
    pub fn commit_image(
        &self,
        name: &str,
        parent: Option<&str>,
        layer: &crate::ingest::LayerSummary,
        state: ImageState,
    ) -> Result<ImageRecord> {
        let _ = (name, parent, layer, state);
        todo!()
    }

    /// In one transaction: points existing image `name` at the finished
    /// `layer` (its edits committed), sets its state, and releases the old layer.
    pub fn replace_layer(
        &self,
        name: &str,
        layer: &crate::ingest::LayerSummary,
        state: ImageState,
    ) -> Result<ImageRecord> {
        let _ = (name, layer, state);
        todo!()
    }

    /// Sets an image's state (open/sealed) in one transaction.
    pub fn set_image_state(&self, name: &str, state: ImageState) -> Result<ImageRecord> {
        let _ = (name, state);
        todo!()
    }

    /// Deletes an image: refused while another image has it as parent.
    /// The record goes in one transaction; its layer's data and unreferenced
    /// objects are removed afterwards (or at the next open after a crash).
    pub fn delete_image(&self, name: &str) -> Result<()> {
        let _ = name;
        todo!()
    }

    /// Removes layers not referenced by any image, and their unreferenced objects.
    pub fn collect_garbage(&self) -> Result<GcStats> {
        todo!()
    }

    /// Releases a layer: removes its nodes, entries and object references,
    /// and deletes objects no other layer references.
    pub(crate) fn purge_layer(&self, layer: LayerId) -> Result<()> {
        let _ = layer;
        todo!()
    }
}

/// What [`Store::collect_garbage`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Layers removed.
    pub layers: u64,
    /// Object files removed.
    pub objects: u64,
}

//! The content-addressed object directory: `objects/ab/cdef…` named by the
//! blake3 digest of the content. Objects are immutable once renamed into place.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::records::ObjectId;

/// The object directory of a store.
pub struct ObjectDir {
    pub(crate) root: PathBuf,
}

/// An object written to a temp file, hashed, not yet in place.
/// [`ObjectDir::sync_all`] then [`PendingObject::publish`] put it in place.
pub struct PendingObject {
    /// The digest of the content.
    pub id: ObjectId,
    /// Content length.
    pub len: u64,
    /// The temp file (None when the object already existed: nothing to publish).
    pub(crate) tmp: Option<PathBuf>,
}

impl ObjectDir {
    /// Opens (creating) the object directory at `root`; removes stale temp files.
    pub fn open(root: &Path) -> Result<ObjectDir> {
        let _ = root;
        todo!()
    }

    /// The path an object lives at.
    pub fn path(&self, id: &ObjectId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join(&hex[..2]).join(&hex[2..])
    }

    /// Whether the object is present.
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.path(id).exists()
    }

    /// Streams `data` into a temp file while hashing it. If an object with
    /// the same digest exists, the temp file is dropped at once.
    pub fn write(&self, data: &mut dyn Read) -> Result<PendingObject> {
        let _ = data;
        todo!()
    }

    /// Makes every pending temp file durable (one `syncfs` of the object directory's filesystem).
    pub fn sync_all(&self) -> Result<()> {
        todo!()
    }

    /// Renames a pending object into place (after [`ObjectDir::sync_all`]).
    pub fn publish(&self, obj: PendingObject) -> Result<ObjectId> {
        let _ = obj;
        todo!()
    }

    /// Opens an object for reading.
    pub fn open_object(&self, id: &ObjectId) -> Result<File> {
        let _ = id;
        todo!()
    }

    /// Deletes an object file (the caller checked nothing references it).
    pub fn remove(&self, id: &ObjectId) -> Result<()> {
        let _ = id;
        todo!()
    }

    /// Total bytes of all object files (for tests and `list-images`).
    pub fn total_bytes(&self) -> Result<u64> {
        todo!()
    }
}

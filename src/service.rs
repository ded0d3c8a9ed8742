//! [`Service`]: the commands served in-process over an open [`Store`].
//! The daemon owns one and serves every connection with it; the image
//! commands themselves are in [`crate::images`].

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use stacko_store::Store;

use crate::error::Result;
use crate::mounts::FuseMounts;

/// The store plus what keeps concurrent commands from tripping over each other.
///
/// Commands that add data (new-image, import-image) or read layers
/// (export-image) hold the gate shared; commands that remove data
/// (delete-image, garbage collection) hold it exclusively, so that an
/// object an import found already present cannot be deleted under it.
/// Listing needs neither: every image record is read in one sled call.
///
/// Stackpoint, instance and edit commands (which mount and unmount) are
/// serialized by one more lock, so that "is it mounted", the state change
/// and the remount happen as one step.
pub struct Service {
    store: Arc<Store>,
    gate: RwLock<()>,
    /// Serializes stackpoint, instance and edit commands.
    state: Mutex<()>,
    /// Serializes the making of layer checkouts.
    pub(crate) checkouts: Mutex<()>,
    /// The FUSE filesystems this process serves.
    pub(crate) fuse: FuseMounts,
}

impl Service {
    /// Opens the store in `home` (only one process may: the daemon).
    pub fn open(home: &Path) -> Result<Service> {
        let svc = Service::new(Store::open(home)?);
        crate::checkouts::remove_unused(&svc)?;
        Ok(svc)
    }

    /// Serves over an already open store.
    pub fn new(store: Store) -> Service {
        Service {
            store: Arc::new(store),
            gate: RwLock::new(()),
            state: Mutex::new(()),
            checkouts: Mutex::new(()),
            fuse: FuseMounts::new(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store, shared (FUSE lower layers hold it).
    pub fn shared_store(&self) -> Arc<Store> {
        Arc::clone(&self.store)
    }

    /// The FUSE filesystems this process serves.
    pub fn fuse_mounts(&self) -> &FuseMounts {
        &self.fuse
    }

    /// The store's directory (the stacko home).
    pub fn home(&self) -> &Path {
        self.store.home()
    }

    pub(crate) fn state_lock(&self) -> MutexGuard<'_, ()> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Flushes the store to disk.
    pub fn flush(&self) -> Result<()> {
        Ok(self.store.flush()?)
    }

    pub(crate) fn shared(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Tells a long operation whether its caller still wants it (the daemon's
/// client may have gone away).
pub trait Cancel: Sync {
    /// A cheap check, made before every read and write of the operation.
    fn is_cancelled(&self) -> bool;

    /// A definitive check made once, just before committing; may ask the
    /// caller (the daemon sends a frame to its client).
    fn confirm_cancelled(&self) -> bool {
        self.is_cancelled()
    }
}

impl Cancel for AtomicBool {
    fn is_cancelled(&self) -> bool {
        self.load(Ordering::Relaxed)
    }
}

/// Never cancelled.
pub struct NeverCancel;

impl Cancel for NeverCancel {
    fn is_cancelled(&self) -> bool {
        false
    }
}

/// A reader or writer that fails once `cancel` says so (the client went away).
pub(crate) struct Cancellable<'a, T> {
    pub(crate) inner: T,
    pub(crate) cancel: &'a dyn Cancel,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the client went away")
}

impl<T: Read> Read for Cancellable<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(gone());
        }
        self.inner.read(buf)
    }
}

impl<T: Write> Write for Cancellable<'_, T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(gone());
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

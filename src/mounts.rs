//! Mounting a stack of layers with an upper directory, with either engine,
//! and the FUSE filesystems this process serves.
//!
//! - **kernel**: kernel overlayfs (`userxattr`) over the layers' checkouts
//!   ([`crate::checkouts`]); the mount lives on without this process.
//! - **fuse**: [`stacko_fusefs::OverlayFs`] over [`StoreLower`] layers, served
//!   by threads of this process (the daemon), which keeps the session in
//!   [`FuseMounts`] and does not exit while any is mounted.
//!
//! Both read and write the same upper-directory format, so one instance can
//! be mounted by either engine. Stackpoint instances get the FUSE
//! filesystem's improvements over kernel overlayfs (metadata-only copy-up,
//! real renames of lower directories, hard links kept whole), which write
//! xattrs kernel overlayfs with `userxattr` does not follow. A FUSE mount
//! of such an upper leaves the marker file [`KERNEL_PREP_MARKER`] in its work
//! directory; the next kernel mount first rewrites the upper with
//! [`stacko_fusefs::upper::prepare_for_kernel`] and then removes the marker,
//! so the conversion is paid only when an instance changes engine. Image
//! edits run without those features: `close-image` reads the upper directly.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use stacko_fusefs::config::MountConfig;
use stacko_fusefs::lower::Lower;
use stacko_fusefs::upper::Upper;
use stacko_fusefs::{fuse, OverlayFs};
use stacko_store::{LayerId, Store};

use crate::api::Backend;
use crate::backend::{self, MountState, Plan};
use crate::checkouts;
use crate::error::{Error, Result};
use crate::service::Service;
use crate::storelower::StoreLower;

/// How long an unmount waits for the FUSE threads of the mount to finish.
pub const FUSE_STOP_WAIT: Duration = Duration::from_secs(10);

/// What to mount where.
#[derive(Clone, Debug)]
pub struct MountSpec {
    /// For messages and the mount table: `stackpoint NAME`, `image NAME`.
    pub label: String,
    /// The mount directory.
    pub dir: PathBuf,
    /// The layers, top first.
    pub layers: Vec<LayerId>,
    /// The upper directory.
    pub upper: PathBuf,
    /// The work directory (same filesystem as `upper`).
    pub work: PathBuf,
    /// Whether the FUSE engine may use its features beyond kernel overlayfs
    /// (metacopy, redirect_dir, index) in this upper.
    pub fuse_features: bool,
}

/// Marker file in a work directory: a FUSE mount with features may have
/// left xattrs kernel overlayfs does not follow; prepare before a kernel mount.
pub const KERNEL_PREP_MARKER: &str = "stacko-prepare-for-kernel";

/// The store's layers as lower layers of the FUSE filesystem, top first.
fn store_lowers(store: &Arc<Store>, layers: &[LayerId]) -> Vec<Arc<dyn Lower>> {
    layers
        .iter()
        .map(|&l| Arc::new(StoreLower::new(Arc::clone(store), l)) as Arc<dyn Lower>)
        .collect()
}

/// Readies `dir` for a new mount: nothing to do when nothing is mounted
/// there, a dead FUSE mount (its server was killed) is cleaned up, and a
/// live mount is refused with the error `refusal` makes.
pub(crate) fn clear_mount_dir(dir: &Path, refusal: impl FnOnce() -> Error) -> Result<()> {
    match backend::mount_state(dir)? {
        MountState::NotMounted => Ok(()),
        MountState::DeadFuse(_) => {
            backend::unmount(dir, true)?;
            Ok(())
        }
        MountState::Mounted(_) => Err(refusal()),
    }
}

/// Makes the upper of `spec` readable by kernel overlayfs if a FUSE mount
/// with features used it since the last kernel mount.
pub(crate) fn prepare_upper_for_kernel(store: &Arc<Store>, spec: &MountSpec) -> Result<()> {
    let marker = spec.work.join(KERNEL_PREP_MARKER);
    if !marker.exists() {
        return Ok(());
    }
    let lowers = store_lowers(store, &spec.layers);
    stacko_fusefs::upper::prepare_for_kernel(&lowers, &spec.upper, &spec.work).map_err(|e| {
        Error::io(
            format!(
                "cannot prepare the upper of {} for kernel overlayfs",
                spec.label
            ),
            e.into(),
        )
    })?;
    std::fs::remove_file(&marker)
        .map_err(|e| Error::io(format!("removing {}", marker.display()), e))?;
    crate::fsutil::sync_dir(&spec.work)
}

/// How `dir` is mounted now: `None` when not mounted or a dead FUSE mount.
pub fn mounted_as(dir: &Path) -> Result<Option<Backend>> {
    Ok(match backend::mount_state(dir)? {
        MountState::Mounted(e) if e.is_fuse() => Some(Backend::Fuse),
        MountState::Mounted(_) => Some(Backend::Kernel),
        MountState::NotMounted | MountState::DeadFuse(_) => None,
    })
}

/// Picks the engine for `what`: the one asked for, else the automatic
/// choice. `hint` says what to do when only a user namespace would work.
pub fn pick_backend(requested: Option<Backend>, what: &str, hint: &str) -> Result<Backend> {
    match backend::choose_backend(requested.map(Into::into))? {
        Plan::Kernel => Ok(Backend::Kernel),
        Plan::Fuse(_) => Ok(Backend::Fuse),
        Plan::UserNs { .. } => Err(Error::Refused(format!(
            "cannot mount {what} here: no CAP_SYS_ADMIN for kernel overlayfs and no usable \
             fusermount3 for FUSE; {hint}"
        ))),
    }
}

impl Service {
    /// Mounts `spec` with `engine`. A dead FUSE mount left at the directory
    /// (its server was killed) is cleaned up first; a live mount is refused.
    pub(crate) fn mount_spec(&self, spec: &MountSpec, engine: Backend) -> Result<()> {
        clear_mount_dir(&spec.dir, || {
            Error::Refused(format!(
                "{} is already mounted at {}",
                spec.label,
                spec.dir.display()
            ))
        })?;
        crate::fsutil::make_dir(&spec.dir, 0o755)?;
        match engine {
            Backend::Kernel => {
                prepare_upper_for_kernel(&self.shared_store(), spec)?;
                let lowers = checkouts::ensure_all(self, &spec.layers)?;
                let mut overlay = backend::Overlay::new(lowers).with_upper(&spec.upper, &spec.work);
                overlay.source = "stacko".into();
                overlay.mount(&spec.dir)?;
                Ok(())
            }
            Backend::Fuse => self.fuse.mount(self.shared_store(), spec),
        }
    }

    /// Unmounts `dir` (a busy mount is refused unless `lazy`) and, for a FUSE
    /// mount this process serves, waits for its threads to stop.
    pub(crate) fn unmount_dir(&self, dir: &Path, lazy: bool) -> Result<()> {
        backend::unmount(dir, lazy)?;
        if !lazy {
            self.fuse.wait_gone(dir, FUSE_STOP_WAIT);
        }
        Ok(())
    }
}

/// The FUSE filesystems served by this process's threads.
pub struct FuseMounts {
    shared: Arc<Shared>,
}

struct Shared {
    /// (serial, mount directory) of every session still running.
    live: Mutex<Vec<(u64, PathBuf)>>,
    changed: Condvar,
    next: AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, PathBuf)>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for FuseMounts {
    fn default() -> Self {
        Self::new()
    }
}

/// Makes a work directory usable by the FUSE filesystem: kernel overlayfs
/// leaves `work/work` with mode 000, which an unprivileged owner cannot open.
fn open_up_work(work: &Path) {
    let inner = work.join("work");
    if let Ok(m) = std::fs::symlink_metadata(&inner) {
        if m.is_dir() && m.permissions().mode() & 0o700 != 0o700 {
            let _ = std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o700));
        }
    }
}

impl FuseMounts {
    /// No mounts yet.
    pub fn new() -> Self {
        FuseMounts {
            shared: Arc::new(Shared {
                live: Mutex::new(Vec::new()),
                changed: Condvar::new(),
                next: AtomicU64::new(1),
            }),
        }
    }

    /// Mounts the FUSE filesystem for `spec` and serves it in new threads
    /// until it is unmounted. Returns once the mount is usable.
    pub fn mount(&self, store: Arc<Store>, spec: &MountSpec) -> Result<()> {
        let fail = |e: &dyn std::fmt::Display| Error::Io {
            context: format!(
                "cannot mount {} at {} with FUSE",
                spec.label,
                spec.dir.display()
            ),
            source: std::io::Error::other(e.to_string()),
        };
        stacko_fusefs::sys::raise_nofile_limit();
        open_up_work(&spec.work);
        let lowers = store_lowers(&store, &spec.layers);
        let upper = Upper::open(&spec.upper, &spec.work).map_err(|e| fail(&e))?;
        let mut cfg = MountConfig::default();
        if spec.fuse_features {
            let marker = spec.work.join(KERNEL_PREP_MARKER);
            std::fs::write(&marker, b"")
                .map_err(|e| Error::io(format!("writing {}", marker.display()), e))?;
            crate::fsutil::sync_dir(&spec.work)?;
        } else {
            cfg.fs.metacopy = false;
            cfg.fs.redirect_dir = false;
            cfg.fs.index = false;
        }
        cfg.fsname = Some(format!("stacko:{}", spec.label.replace([' ', ','], ":")));
        let plan = fuse::plan(&cfg);
        cfg.fs.writeback = plan.writeback;
        let fs = OverlayFs::new(lowers, Some(upper), cfg.fs.clone()).map_err(|e| fail(&e))?;
        let mounted = fuse::mount(Arc::new(fs), &cfg, &plan, &spec.dir).map_err(|e| fail(&e))?;
        let serial = self.shared.next.fetch_add(1, Ordering::Relaxed);
        self.shared.lock().push((serial, spec.dir.clone()));
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name(format!("fuse-{serial}"))
            .spawn(move || {
                let _ = mounted.run();
                shared.lock().retain(|(s, _)| *s != serial);
                shared.changed.notify_all();
            });
        if let Err(e) = spawned {
            // The Mounted went with the failed closure: dropping it unmounted.
            self.shared.lock().retain(|(s, _)| *s != serial);
            return Err(Error::io("cannot start the FUSE threads", e));
        }
        Ok(())
    }

    /// How many FUSE filesystems are being served.
    pub fn active(&self) -> usize {
        self.shared.lock().len()
    }

    /// The directories of the FUSE filesystems being served.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.shared.lock().iter().map(|(_, d)| d.clone()).collect()
    }

    /// Waits until no session serves `dir` (at most `timeout`); says whether none does.
    pub fn wait_gone(&self, dir: &Path, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut live = self.shared.lock();
        loop {
            if !live.iter().any(|(_, d)| d == dir) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            live = self
                .shared
                .changed
                .wait_timeout(live, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Unmounts every FUSE filesystem served here (lazily when busy) and
    /// waits a little for their threads; `log` hears about each.
    pub fn unmount_all(&self, log: &dyn Fn(String)) {
        for dir in self.dirs() {
            let result = match backend::unmount(&dir, false) {
                Err(backend::Error::Busy { .. }) => backend::unmount(&dir, true),
                other => other,
            };
            match result {
                Ok(_) => log(format!("unmounted {}", dir.display())),
                Err(e) => log(format!("unmounting {}: {e}", dir.display())),
            }
        }
        let deadline = Instant::now() + FUSE_STOP_WAIT;
        for dir in self.dirs() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_gone(&dir, left);
        }
    }
}

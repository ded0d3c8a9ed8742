//! The upper (writable) directory and its work directory, in kernel overlayfs format.
//!
//! * whiteout: character device 0:0 (see [`crate::whiteout`]);
//! * opaque directory: `user.overlay.opaque=y` (also read: `trusted.overlay.opaque`, a
//!   `.wh..wh..opq` entry);
//! * scratch files for atomic copy-up: `WORKDIR/work/` (the directory kernel overlayfs uses
//!   too, and empties at mount);
//! * stacko's hard-link index: `WORKDIR/stacko-index/<merged inode number in hex>`;
//! * bookkeeping xattrs of symlinks and special files: `WORKDIR/stacko-meta/` (see
//!   [`crate::sidemeta`]).
//!
//! # Mounting a stacko upper with kernel overlayfs
//!
//! Kernel overlayfs mounted with `-o userxattr` (the only form open to unprivileged users,
//! and the one the kernel engine uses) turns `metacopy` off, does not follow
//! `user.overlay.redirect` (a lookup of a non-opaque redirected directory fails with
//! EPERM), and has no hard-link index. stacko uses all three, so an upper it wrote may
//! hold metadata-only copies (the kernel would read zeros), renamed lower directories
//! (the kernel would refuse them) and hard-link names not yet copied up (the kernel would
//! show the lower inode, split from its copied-up siblings). **Before an upper written by
//! stacko is mounted by the kernel engine, run [`prepare_for_kernel`] on it** (while it is
//! not mounted). It costs what it costs: the data of every metadata-only copy is copied;
//! every redirected directory is materialized as an opaque upper directory holding a copy
//! of its whole lower subtree (data included); and when the hard-link index is not empty,
//! the whole merged tree is walked to link the remaining names. An upper that used none
//! of these features costs one walk of the upper directories.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::FsConfig;
use crate::dirlower::WH_OPAQUE;
use crate::error::{Errno, Result};
use crate::fs::OverlayFs;
use crate::lower::Lower;
pub use crate::prepare::PrepareStats;
use crate::sys::{self, XTarget};
use crate::{whiteout, xattr};

/// Name of the scratch directory inside the work directory.
pub const WORK_SUBDIR: &str = "work";
/// Name of the hard-link index directory inside the work directory.
pub const INDEX_SUBDIR: &str = "stacko-index";

/// The upper directory, with its work and index directories open.
#[derive(Debug)]
pub struct Upper {
    root: OwnedFd,
    work: OwnedFd,
    index: OwnedFd,
    side: OwnedFd,
    tmp_seq: AtomicU64,
    /// Name (in the scratch directory) of the shared whiteout new whiteouts are hard links
    /// of, as kernel overlayfs does: a link allocates no inode, which on ext4 is much
    /// cheaper than `mknod` (above all right after many deletions).
    shared_whiteout: std::sync::Mutex<Option<OsString>>,
    /// Whether this process may chown to any owner (effective uid 0).
    pub privileged: bool,
}

fn open_path_dir(p: &Path) -> Result<OwnedFd> {
    let c = sys::cstr(p.as_os_str())?;
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

fn ensure_subdir(parent: RawFd, name: &str) -> Result<OwnedFd> {
    match sys::mkdirat(parent, OsStr::new(name), 0o700) {
        Ok(()) | Err(Errno(libc::EEXIST)) => {}
        Err(e) => return Err(e),
    }
    sys::open_dir(parent, OsStr::new(name))
}

impl Upper {
    /// Opens `upper` and `work` (which must be on the same filesystem), creating the work
    /// subdirectories and emptying leftovers of an interrupted copy-up.
    pub fn open(upper: &Path, work: &Path) -> Result<Upper> {
        let root = open_path_dir(upper)?;
        let workroot = open_path_dir(work)?;
        let ust = sys::fstat(root.as_raw_fd())?;
        let wst = sys::fstat(workroot.as_raw_fd())?;
        if ust.st_dev != wst.st_dev {
            return Err(Errno::EXDEV);
        }
        let workfd = ensure_subdir(workroot.as_raw_fd(), WORK_SUBDIR)?;
        for e in sys::list_dir(workfd.as_raw_fd())? {
            let _ = remove_tree(workfd.as_raw_fd(), &e.name);
        }
        let index = ensure_subdir(workroot.as_raw_fd(), INDEX_SUBDIR)?;
        let side = ensure_subdir(workroot.as_raw_fd(), crate::sidemeta::SIDE_SUBDIR)?;
        Ok(Upper {
            root,
            work: workfd,
            index,
            side,
            tmp_seq: AtomicU64::new(0),
            shared_whiteout: std::sync::Mutex::new(None),
            privileged: sys::geteuid() == 0,
        })
    }

    /// Fd of the upper root directory.
    pub fn root_fd(&self) -> RawFd {
        self.root.as_raw_fd()
    }

    /// Fd of the scratch directory.
    pub fn work_fd(&self) -> RawFd {
        self.work.as_raw_fd()
    }

    /// Fd of the hard-link index directory.
    pub fn index_fd(&self) -> RawFd {
        self.index.as_raw_fd()
    }

    /// Fd of the side-metadata directory (see [`crate::sidemeta`]).
    pub fn side_fd(&self) -> RawFd {
        self.side.as_raw_fd()
    }

    /// A fresh scratch name, unique within this process.
    pub fn tmp_name(&self) -> OsString {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("#stacko-{}-{n}", std::process::id()))
    }

    /// Name of the index entry of merged inode `ino`.
    pub fn index_name(ino: u64) -> OsString {
        OsString::from(format!("{ino:016x}"))
    }

    /// Makes a whiteout named `name` in `dirfd` (which must not hold `name`): a hard link
    /// of the shared whiteout, or a new character device 0:0 if linking fails.
    pub fn make_whiteout(&self, dirfd: RawFd, name: &OsStr) -> Result<()> {
        let mut g = self
            .shared_whiteout
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for _ in 0..2 {
            let shared = match &*g {
                Some(n) => n.clone(),
                None => {
                    let n = OsString::from(format!("#stacko-whiteout-{}", std::process::id()));
                    match whiteout::create(self.work_fd(), &n) {
                        Ok(()) | Err(Errno(libc::EEXIST)) => {}
                        Err(_) => break,
                    }
                    *g = Some(n.clone());
                    n
                }
            };
            match sys::linkat(self.work_fd(), &shared, dirfd, name) {
                Ok(()) => return Ok(()),
                Err(Errno(libc::EEXIST)) => return Err(Errno::EEXIST),
                Err(Errno(libc::EMLINK)) | Err(Errno(libc::ENOENT)) => {
                    // too many links (or removed under us): start a new shared whiteout
                    let _ = sys::unlinkat(self.work_fd(), &shared, 0);
                    *g = None;
                }
                Err(_) => break,
            }
        }
        drop(g);
        whiteout::create(dirfd, name)
    }

    /// Replaces `name` in `dirfd` (an existing non-directory, or a directory holding only
    /// whiteouts) by a whiteout, atomically.
    pub fn replace_with_whiteout(&self, dirfd: RawFd, name: &OsStr, is_dir: bool) -> Result<()> {
        let tmp = self.tmp_name();
        self.make_whiteout(self.work_fd(), &tmp)?;
        if is_dir {
            if let Err(e) = sys::renameat2(self.work_fd(), &tmp, dirfd, name, libc::RENAME_EXCHANGE)
            {
                let _ = sys::unlinkat(self.work_fd(), &tmp, 0);
                return Err(e);
            }
            // The old directory is now the scratch entry: empty and remove it.
            remove_tree(self.work_fd(), &tmp)?;
        } else if let Err(e) = sys::renameat2(self.work_fd(), &tmp, dirfd, name, 0) {
            let _ = sys::unlinkat(self.work_fd(), &tmp, 0);
            return Err(e);
        }
        Ok(())
    }

    /// Creates a whiteout at `name` in `dirfd`, which holds nothing of that name (or holds a
    /// whiteout already).
    pub fn create_whiteout(&self, dirfd: RawFd, name: &OsStr) -> Result<()> {
        match self.make_whiteout(dirfd, name) {
            Ok(()) => Ok(()),
            Err(Errno(libc::EEXIST)) => {
                let st = sys::fstatat(dirfd, name)?;
                if whiteout::is_whiteout(&st) {
                    Ok(())
                } else {
                    self.replace_with_whiteout(
                        dirfd,
                        name,
                        st.st_mode & libc::S_IFMT == libc::S_IFDIR,
                    )
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// Whether the upper directory open as `dirfd` is opaque, given its xattr names.
pub fn is_opaque(dirfd: RawFd, names: &[OsString]) -> Result<bool> {
    for n in [xattr::USER_OPAQUE, xattr::TRUSTED_OPAQUE] {
        if xattr::has(names, n) {
            if let Some(v) = sys::getxattr(XTarget::Fd(dirfd), OsStr::new(n))? {
                if v == b"y" {
                    return Ok(true);
                }
            }
        }
    }
    Ok(sys::fstatat_opt(
        dirfd,
        OsStr::new(std::str::from_utf8(WH_OPAQUE).unwrap_or("")),
    )?
    .is_some())
}

/// Marks the directory open as `dirfd` opaque.
pub fn set_opaque(dirfd: RawFd) -> Result<()> {
    sys::setxattr(XTarget::Fd(dirfd), OsStr::new(xattr::USER_OPAQUE), b"y", 0)
}

/// Removes `name` in `dirfd` and, if it is a directory, everything below it.
pub fn remove_tree(dirfd: RawFd, name: &OsStr) -> Result<()> {
    match sys::unlinkat(dirfd, name, 0) {
        Ok(()) => return Ok(()),
        Err(Errno(libc::EISDIR)) | Err(Errno(libc::EPERM)) => {}
        Err(e) => return Err(e),
    }
    let sub = sys::open_dir(dirfd, name)?;
    for e in sys::list_dir(sub.as_raw_fd())? {
        remove_tree(sub.as_raw_fd(), &e.name)?;
    }
    drop(sub);
    sys::unlinkat(dirfd, name, libc::AT_REMOVEDIR)
}

/// Removes every entry of the directory `dirfd` (used on directories that hold only
/// whiteouts before they are removed or replaced).
pub fn clear_dir(dirfd: RawFd) -> Result<()> {
    for e in sys::list_dir(dirfd)? {
        remove_tree(dirfd, &e.name)?;
    }
    Ok(())
}

/// Rewrites the upper directory `upper` (with its work directory `work`) over `lowers`
/// (top first, as mounted) so that kernel overlayfs with `-o userxattr` reads the same tree
/// stacko shows: metadata-only copies get their data, redirected directories become
/// opaque upper directories holding their lower content, and names of hard-linked lower
/// files not yet copied up are linked to their index entry. See the module documentation
/// for the cost.
///
/// The upper must not be mounted meanwhile. Each step is atomic (copy-ups are built in the
/// work directory and renamed into place; a metadata-only copy loses its mark only once its
/// data is synced; a directory turns opaque only once its whole lower content is up), so an
/// interrupted run leaves an upper that stacko still reads correctly, and running again
/// finishes the job. Running it on a prepared upper changes nothing.
pub fn prepare_for_kernel(
    lowers: &[Arc<dyn Lower>],
    upper: &Path,
    work: &Path,
) -> Result<PrepareStats> {
    let up = Upper::open(upper, work)?;
    // metacopy off: entries copied up here carry their data
    let cfg = FsConfig {
        metacopy: false,
        ..FsConfig::default()
    };
    let fs = OverlayFs::new(lowers.to_vec(), Some(up), cfg)?;
    fs.prepare_for_kernel()
}

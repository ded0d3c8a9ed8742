//! Making an upper directory written by stacko readable by kernel overlayfs (see
//! [`crate::upper::prepare_for_kernel`]).

use std::ffi::{OsStr, OsString};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crate::error::{Errno, Result};
use crate::fs::{CopyMode, OverlayFs};
use crate::lower::Kind;
use crate::node::{Node, ROOT_INO};
use crate::sys::{self, XTarget};
use crate::{upper, whiteout, xattr};

/// What [`crate::upper::prepare_for_kernel`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrepareStats {
    /// Metadata-only copies whose data was copied up.
    pub metacopy_filled: u64,
    /// Redirected directories turned into opaque upper directories.
    pub dirs_materialized: u64,
    /// Lower entries copied up into materialized directories.
    pub entries_copied: u64,
    /// Names of hard-linked lower files linked to their index entry in the upper.
    pub links_restored: u64,
}

fn has_redirect(names: &[OsString]) -> bool {
    xattr::has(names, xattr::USER_REDIRECT) || xattr::has(names, xattr::TRUSTED_REDIRECT)
}

impl OverlayFs {
    /// Whether the index directory holds entries (then lower-only names of indexed files
    /// may exist anywhere in the tree).
    fn index_in_use(&self) -> Result<bool> {
        match &self.upper {
            Some(u) => Ok(!sys::list_dir(u.index_fd())?.is_empty()),
            None => Ok(false),
        }
    }

    /// Whether (`parent`, `name`) exists in the upper as a real entry (not a whiteout).
    fn upper_has(&self, parent: &Node, name: &OsStr) -> Result<bool> {
        let Some(d) = parent.st().dirfd.clone() else {
            return Ok(false);
        };
        Ok(
            matches!(sys::fstatat_opt(d.as_raw_fd(), name)?, Some(st) if !whiteout::is_whiteout(&st)),
        )
    }

    /// Walks the merged tree and rewrites what kernel overlayfs (`userxattr`: no metacopy,
    /// no redirects, no index) would read differently. See
    /// [`crate::upper::prepare_for_kernel`].
    pub(crate) fn prepare_for_kernel(&self) -> Result<PrepareStats> {
        self.writable()?;
        let mut stats = PrepareStats::default();
        let everywhere = self.index_in_use()?;
        let root = self.node(ROOT_INO)?;
        self.prepare_dir(&root, false, everywhere, &mut stats)?;
        Ok(stats)
    }

    /// Prepares directory `dir`. `materialize`: an ancestor is being materialized, so every
    /// lower entry below must be copied up.
    fn prepare_dir(
        &self,
        dir: &Arc<Node>,
        materialize: bool,
        everywhere: bool,
        stats: &mut PrepareStats,
    ) -> Result<()> {
        let (dirfd, has_lower) = {
            let s = dir.st();
            (s.dirfd.clone(), !s.lower_dirs.is_empty())
        };
        let names = match &dirfd {
            Some(fd) => sys::listxattr(XTarget::Fd(fd.as_raw_fd()))?,
            None => Vec::new(),
        };
        let redirected = has_redirect(&names);
        let materialize = materialize || (redirected && has_lower);
        if materialize && has_lower {
            self.copy_up_dir_chain(dir)?;
        }
        let listing = self.listing(dir)?;
        for e in listing.iter() {
            let a = match self.lookup(dir.ino, &e.name) {
                Ok(a) => a,
                Err(Errno(libc::ENOENT)) => continue,
                Err(err) => return Err(err),
            };
            let r = self.prepare_entry(dir, &e.name, a.ino, materialize, everywhere, stats);
            self.forget(a.ino, 1);
            r?;
        }
        if materialize && has_lower {
            // Every lower entry is in the upper now: hide the lower directories, then drop
            // the redirect (an opaque directory's redirect is never read by the kernel).
            let fd = dir.st().dirfd.clone().ok_or(Errno::EIO)?;
            let names = sys::listxattr(XTarget::Fd(fd.as_raw_fd()))?;
            if !upper::is_opaque(fd.as_raw_fd(), &names)? {
                upper::set_opaque(fd.as_raw_fd())?;
            }
            sys::fsync(fd.as_raw_fd(), false)?;
            // Whiteouts in an opaque directory hide nothing, and the kernel lists them in a
            // directory it takes for a plain upper one: remove them.
            for e in sys::list_dir(fd.as_raw_fd())? {
                let wh = match sys::fstatat_opt(fd.as_raw_fd(), &e.name)? {
                    Some(st) => whiteout::is_whiteout(&st),
                    None => false,
                };
                if wh || whiteout::oci_target(&e.name).is_some() {
                    sys::unlinkat(fd.as_raw_fd(), &e.name, 0)?;
                }
            }
            dir.st_mut().lower_dirs.clear();
            if redirected {
                stats.dirs_materialized += 1;
            }
        }
        if redirected {
            if let Some(fd) = dir.st().dirfd.clone() {
                for n in [xattr::USER_REDIRECT, xattr::TRUSTED_REDIRECT] {
                    match sys::removexattr(XTarget::Fd(fd.as_raw_fd()), OsStr::new(n)) {
                        Ok(()) | Err(Errno(libc::ENODATA)) => {}
                        Err(_) if n == xattr::TRUSTED_REDIRECT => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    fn prepare_entry(
        &self,
        dir: &Arc<Node>,
        name: &OsStr,
        ino: u64,
        materialize: bool,
        everywhere: bool,
        stats: &mut PrepareStats,
    ) -> Result<()> {
        let node = self.node(ino)?;
        if node.kind == Kind::Dir {
            let (upper_part, lower_part) = {
                let s = node.st();
                (s.dirfd.is_some(), !s.lower_dirs.is_empty())
            };
            if materialize && !upper_part {
                self.copy_up_dir_chain(&node)?;
                stats.entries_copied += 1;
            }
            if materialize && lower_part || upper_part || everywhere {
                self.prepare_dir(&node, materialize, everywhere, stats)?;
            }
            return Ok(());
        }
        let in_upper = self.upper_has(dir, name)?;
        let indexed = node.st().indexed;
        if !in_upper && (materialize || indexed) {
            self.copy_up_dir_chain(dir)?;
            self.ensure_upper_name(&node, dir, name)?;
            if indexed {
                stats.links_restored += 1;
            } else {
                stats.entries_copied += 1;
            }
        }
        if node.kind == Kind::File && node.st().metacopy {
            self.copy_up(&node, CopyMode::Data)?;
            stats.metacopy_filled += 1;
        }
        Ok(())
    }
}

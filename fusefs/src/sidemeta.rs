//! Bookkeeping xattrs of upper inodes that cannot hold `user.*` xattrs.
//!
//! Linux allows `user.*` extended attributes on regular files and directories only, so the
//! origin number (`user.stacko.origin`) and the owner override
//! (`user.containers.override_stat`) of a copied-up symlink, fifo, socket or device cannot
//! live on the inode itself. They are kept instead as the same xattrs on an empty regular
//! file `WORKDIR/stacko-meta/<key>`, where the key names the upper inode by its number and
//! birth time (`<st_ino hex>-<btime sec>.<btime nsec>`; `0.0` on filesystems without birth
//! times). The birth time makes a left-over entry of a removed inode never apply to a later
//! inode that reuses its number. Renames and hard links keep the inode, so they keep the
//! entry; stacko removes the entry when it removes the last name of the inode.
//!
//! Kernel overlayfs does not read this directory: an upper mounted by the kernel engine shows
//! such nodes with their real owner and the upper inode number.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, RawFd};

use crate::error::{Errno, Result};
use crate::lower::Kind;
use crate::sys::{self, XTarget};
use crate::upper::Upper;

/// Name of the side-metadata directory inside the work directory.
pub const SIDE_SUBDIR: &str = "stacko-meta";

/// Whether nodes of `kind` keep their bookkeeping xattrs in the side directory.
pub fn needs_side(kind: Kind) -> bool {
    !matches!(kind, Kind::File | Kind::Dir)
}

/// The side key of the inode at `name` in `dirfd` (not following symlinks).
pub fn key(dirfd: RawFd, name: &OsStr) -> Result<OsString> {
    let c = sys::cstr(name)?;
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::statx(
            dirfd,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW
                | if name.is_empty() {
                    libc::AT_EMPTY_PATH
                } else {
                    0
                },
            libc::STATX_INO | libc::STATX_BTIME,
            &mut stx,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    let (bs, bn) = if stx.stx_mask & libc::STATX_BTIME != 0 {
        (stx.stx_btime.tv_sec, stx.stx_btime.tv_nsec)
    } else {
        (0, 0)
    };
    Ok(OsString::from(format!("{:x}-{bs}.{bn}", stx.stx_ino)))
}

impl Upper {
    /// Sets bookkeeping xattr `xname` of the inode at `name` in `dirfd`.
    pub fn side_set(&self, dirfd: RawFd, name: &OsStr, xname: &str, value: &[u8]) -> Result<()> {
        let k = key(dirfd, name)?;
        let f = sys::openat(
            self.side_fd(),
            &k,
            libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW,
            0o600,
        )?;
        sys::setxattr(XTarget::Fd(f.as_raw_fd()), OsStr::new(xname), value, 0)
    }

    /// Removes bookkeeping xattr `xname` of the inode at `name` in `dirfd` (no error if it
    /// has none).
    pub fn side_remove(&self, dirfd: RawFd, name: &OsStr, xname: &str) -> Result<()> {
        let k = key(dirfd, name)?;
        match sys::removexattr(XTarget::At(self.side_fd(), &k), OsStr::new(xname)) {
            Ok(()) | Err(Errno(libc::ENODATA)) | Err(Errno(libc::ENOENT)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The bookkeeping xattrs (name, value) of the inode at `name` in `dirfd`.
    pub fn side_get_all(&self, dirfd: RawFd, name: &OsStr) -> Vec<(OsString, Vec<u8>)> {
        let Ok(k) = key(dirfd, name) else {
            return Vec::new();
        };
        let t = XTarget::At(self.side_fd(), &k);
        let Ok(names) = sys::listxattr(t) else {
            return Vec::new();
        };
        names
            .into_iter()
            .filter_map(|n| {
                let v = sys::getxattr(XTarget::At(self.side_fd(), &k), &n)
                    .ok()
                    .flatten()?;
                Some((n, v))
            })
            .collect()
    }

    /// Drops the entry of the inode at `name` in `dirfd` if this name is its last one.
    pub fn side_drop_if_last(&self, dirfd: RawFd, name: &OsStr) {
        if let Ok(Some(st)) = sys::fstatat_opt(dirfd, name) {
            let kind = Kind::from_mode(st.st_mode);
            if st.st_nlink <= 1 && kind.is_some_and(needs_side) {
                if let Ok(k) = key(dirfd, name) {
                    let _ = sys::unlinkat(self.side_fd(), &k, 0);
                }
            }
        }
    }
}

//! Whiteouts in the upper directory: a character device 0:0 (kernel overlayfs format, which
//! an unprivileged user may create), or the OCI form `.wh.NAME` read for compatibility.

use std::ffi::{OsStr, OsString};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;

use crate::dirlower::WH_PREFIX;
use crate::error::Result;
use crate::sys;

/// Whether a stat describes a whiteout.
pub fn is_whiteout(st: &libc::stat) -> bool {
    sys::is_whiteout_stat(st)
}

/// The OCI whiteout name of `name` (`.wh.NAME`).
pub fn oci_name(name: &OsStr) -> OsString {
    let mut v = WH_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    OsString::from(std::ffi::OsStr::from_bytes(&v))
}

/// If `name` is an OCI whiteout (`.wh.X`, not the opaque marker), the name `X` it hides.
pub fn oci_target(name: &OsStr) -> Option<&OsStr> {
    let b = name.as_bytes();
    if b == crate::dirlower::WH_OPAQUE {
        return None;
    }
    b.strip_prefix(WH_PREFIX)
        .filter(|r| !r.is_empty())
        .map(OsStr::from_bytes)
}

/// Creates a whiteout named `name` in `dirfd` (which must not hold `name`).
pub fn create(dirfd: RawFd, name: &OsStr) -> Result<()> {
    sys::mknodat(dirfd, name, libc::S_IFCHR, 0)
}

/// Whether `name` in `dirfd` is hidden by an OCI `.wh.NAME` entry.
pub fn has_oci_whiteout(dirfd: RawFd, name: &OsStr) -> Result<bool> {
    Ok(sys::fstatat_opt(dirfd, &oci_name(name))?.is_some())
}

//! The error type of the filesystem logic: an errno, as the kernel would report it.

use std::io;

/// An error carrying the errno that the filesystem operation returns to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} (errno {})", io::Error::from_raw_os_error(*.0), .0)]
pub struct Errno(pub i32);

impl Errno {
    /// No such file or directory.
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    /// Operation not permitted.
    pub const EPERM: Errno = Errno(libc::EPERM);
    /// Input/output error.
    pub const EIO: Errno = Errno(libc::EIO);
    /// Bad file descriptor.
    pub const EBADF: Errno = Errno(libc::EBADF);
    /// File exists.
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    /// Cross-device link.
    pub const EXDEV: Errno = Errno(libc::EXDEV);
    /// Not a directory.
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    /// Is a directory.
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    /// Invalid argument.
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    /// Read-only filesystem.
    pub const EROFS: Errno = Errno(libc::EROFS);
    /// Directory not empty.
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    /// No data available (missing xattr).
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    /// Operation not supported.
    pub const ENOTSUP: Errno = Errno(libc::EOPNOTSUPP);
    /// Result too large.
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    /// Function not implemented.
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    /// File name too long.
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    /// Too many links.
    pub const EMLINK: Errno = Errno(libc::EMLINK);
    /// Text file busy.
    pub const ETXTBSY: Errno = Errno(libc::ETXTBSY);
    /// Permission denied.
    pub const EACCES: Errno = Errno(libc::EACCES);

    /// The errno left by the last failed libc call.
    pub fn last() -> Errno {
        Errno(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }
}

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<Errno> for io::Error {
    fn from(e: Errno) -> Self {
        io::Error::from_raw_os_error(e.0)
    }
}

/// Result of a filesystem operation.
pub type Result<T> = std::result::Result<T, Errno>;

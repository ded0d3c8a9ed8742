//! Errors of the mount backend layer: one line each, with the errno that caused them.

use std::io;
use std::path::PathBuf;

/// Result of a backend operation.
pub type Result<T> = std::result::Result<T, Error>;

/// An error from the mount backend layer.
///
/// `Display` is always a single line a user can act on; [`Error::errno`] gives the
/// underlying OS error number where there is one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No mount method (or not the requested one) can work in this process. The
    /// message names what is missing and what to do about it.
    #[error("{message}")]
    Unavailable {
        /// One-line diagnosis and remedy.
        message: String,
        /// errno of the failed probe, if a probe failed (e.g. `EPERM`).
        errno: Option<i32>,
    },
    /// The target has open files (umount gave `EBUSY`).
    #[error("{} is busy (a process has files open there); close them or use --lazy", path.display())]
    Busy {
        /// The mount point.
        path: PathBuf,
    },
    /// The path is not a mount point.
    #[error("{} is not a mount point", path.display())]
    NotMounted {
        /// The path that was asked about.
        path: PathBuf,
    },
    /// The legacy `mount(2)` option string does not fit in one page (kernel without `fsopen`).
    #[error(
        "overlay mount options for {layers} layers are {len} bytes, over the {limit}-byte page \
         limit of mount(2) on this kernel (no fsopen; `lowerdir+` needs Linux >= 6.8): use fewer \
         layers or shorter layer paths"
    )]
    OptionsTooLong {
        /// Number of lower layers asked for.
        layers: usize,
        /// Length of the option string including its terminating NUL.
        len: usize,
        /// The page size, which is the kernel's limit.
        limit: usize,
    },
    /// A system call failed. `kernel` holds the filesystem context log, if the kernel wrote one.
    #[error("{op} {}: {}{}{}", path.display(), io::Error::from_raw_os_error(*errno), fmt_log(kernel),
        hint.as_ref().map(|h| format!("; {h}")).unwrap_or_default())]
    Os {
        /// What was being done (e.g. `fsconfig lowerdir+`, `umount`).
        op: String,
        /// The path concerned.
        path: PathBuf,
        /// The OS error number.
        errno: i32,
        /// Messages read from the fs context (`e ...`/`w ...` lines), possibly empty.
        kernel: Vec<String>,
        /// What to do about it, when the errno has a usual cause.
        hint: Option<String>,
    },
    /// A helper program (e.g. `fusermount3`) failed or could not be run.
    #[error("{program} failed: {message}")]
    Command {
        /// The program that was run.
        program: String,
        /// Its first line of error output, or the spawn error.
        message: String,
        /// errno if the program could not be started, or one deduced from its message.
        errno: Option<i32>,
    },
}

fn fmt_log(log: &[String]) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!(" (kernel: {})", log.join("; "))
    }
}

impl Error {
    /// The OS error number behind this error, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Unavailable { errno, .. } => *errno,
            Error::Busy { .. } => Some(libc::EBUSY),
            Error::NotMounted { .. } => Some(libc::EINVAL),
            Error::OptionsTooLong { .. } => Some(libc::E2BIG),
            Error::Os { errno, .. } => Some(*errno),
            Error::Command { errno, .. } => *errno,
        }
    }

    /// Build an [`Error::Os`] from the current `errno`.
    pub(crate) fn last_os(op: impl Into<String>, path: impl Into<PathBuf>) -> Error {
        Error::Os {
            op: op.into(),
            path: path.into(),
            errno: last_errno(),
            kernel: Vec::new(),
            hint: None,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e.errno() {
            Some(n) => io::Error::new(io::Error::from_raw_os_error(n).kind(), e),
            None => io::Error::other(e),
        }
    }
}

/// The calling thread's current errno.
pub(crate) fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

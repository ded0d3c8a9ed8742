//! The store's error type. Every error maps to an errno so that the FUSE
//! layer and the CLI can report it faithfully.

use std::io;

/// Result alias used throughout the store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What the store was doing.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// sled failed (corruption, I/O, or the lock is held by another process).
    #[error("database: {0}")]
    Db(String),
    /// Another process holds the store's lock.
    #[error("the store at {0} is locked by another process")]
    Locked(String),
    /// A record could not be decoded (corrupt, or written by a newer version).
    #[error("corrupt or unsupported record in {tree}: {detail}")]
    Format {
        /// The sled tree the record came from.
        tree: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A name that may not be used (empty, `/`, `.`/`..`, too long).
    #[error("invalid name {name:?}: {why}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// A named object does not exist.
    #[error("{what} {name:?} does not exist")]
    NotFound {
        /// "image", "stackpoint", ...
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// A named object exists already.
    #[error("{what} {name:?} already exists")]
    Exists {
        /// "image", "stackpoint", ...
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// The operation is refused in the current state (with the reason).
    #[error("{0}")]
    Refused(String),
    /// Input (an archive, a source tree) is malformed or unsafe.
    #[error("bad input: {0}")]
    BadInput(String),
}

impl Error {
    /// Wraps an I/O error with context.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The errno that best describes this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::Db(_) | Error::Format { .. } => libc::EIO,
            Error::Locked(_) => libc::EAGAIN,
            Error::InvalidName { .. } | Error::BadInput(_) => libc::EINVAL,
            Error::NotFound { .. } => libc::ENOENT,
            Error::Exists { .. } => libc::EEXIST,
            Error::Refused(_) => libc::EBUSY,
        }
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => Error::io("database", io),
            other => Error::Db(other.to_string()),
        }
    }
}

impl From<sled::transaction::TransactionError<Error>> for Error {
    fn from(e: sled::transaction::TransactionError<Error>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => e.into(),
        }
    }
}

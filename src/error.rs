//! The library's error type: store errors, plus what can go wrong between
//! the CLI and the daemon. Every error has an [`ErrorKind`] that survives
//! the trip over the socket, so the CLI can map it without parsing text.

use std::io;

use serde::{Deserialize, Serialize};

use crate::protocol::FrameError;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The broad class of an error; sent over the socket with the message.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A named thing (image, parent, source file) does not exist.
    NotFound,
    /// A named thing already exists.
    Exists,
    /// The input is invalid: a bad name, a malformed archive, a bad path.
    Invalid,
    /// The operation is refused in the current state (an image in use, a terminal as output).
    Refused,
    /// An I/O, database, protocol or daemon failure.
    Io,
}

/// Everything the stacko library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] stacko_store::Error),
    /// An error reported by the daemon, as it came over the socket.
    #[error("{message}")]
    Remote {
        /// Its class.
        kind: ErrorKind,
        /// The daemon's message.
        message: String,
    },
    /// Invalid input detected by this crate (paths, sources, destinations).
    #[error("{0}")]
    Invalid(String),
    /// Something named does not exist (a source path, ...).
    #[error("{0}")]
    NotFound(String),
    /// Something named exists already (an export destination, ...).
    #[error("{0}")]
    Exists(String),
    /// Refused in the current state.
    #[error("{0}")]
    Refused(String),
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A malformed or unexpected message on the daemon socket.
    #[error("daemon protocol: {0}")]
    Protocol(#[from] FrameError),
    /// The daemon could not be started, reached, or went away.
    #[error("{0}")]
    Daemon(String),
    /// Mounting or unmounting failed (busy, not mounted, no way to mount here).
    #[error(transparent)]
    Backend(#[from] crate::backend::Error),
}

impl Error {
    /// Wraps an I/O error with context.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        use stacko_store::Error as S;
        match self {
            Error::Store(e) => match e {
                S::NotFound { .. } => ErrorKind::NotFound,
                S::Exists { .. } => ErrorKind::Exists,
                S::InvalidName { .. } | S::BadInput(_) => ErrorKind::Invalid,
                S::Refused(_) | S::Locked(_) => ErrorKind::Refused,
                S::Io { .. } | S::Db(_) | S::Format { .. } => ErrorKind::Io,
            },
            Error::Remote { kind, .. } => *kind,
            Error::Invalid(_) => ErrorKind::Invalid,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Exists(_) => ErrorKind::Exists,
            Error::Refused(_) => ErrorKind::Refused,
            Error::Io { .. } | Error::Protocol(_) | Error::Daemon(_) => ErrorKind::Io,
            Error::Backend(e) => match e {
                crate::backend::Error::Busy { .. }
                | crate::backend::Error::NotMounted { .. }
                | crate::backend::Error::Unavailable { .. }
                | crate::backend::Error::OptionsTooLong { .. } => ErrorKind::Refused,
                _ => ErrorKind::Io,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_store_error() {
        let e: Error = stacko_store::Error::NotFound {
            what: "image",
            name: "x".into(),
        }
        .into();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e: Error = stacko_store::validate_name("a/b").unwrap_err().into();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        let e = Error::Remote {
            kind: ErrorKind::Exists,
            message: "m".into(),
        };
        assert_eq!(e.kind(), ErrorKind::Exists);
        assert_eq!(e.to_string(), "m");
    }
}

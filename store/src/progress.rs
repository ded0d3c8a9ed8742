//! Progress reporting for long operations (ingest, checkout, tar).

/// Receives progress of a long operation. Implementations must be cheap:
/// they are called once per file.
pub trait Progress: Send + Sync {
    /// The total amount of work in bytes, when it becomes known.
    fn set_total(&self, _bytes: u64) {}
    /// `bytes` more bytes and `files` more entries are done.
    fn advance(&self, _bytes: u64, _files: u64) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}

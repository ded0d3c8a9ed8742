//! The one way in: every command the CLI runs is a method of [`Api`].
//!
//! [`crate::Service`] implements it in-process over an open store;
//! [`crate::Client`] implements it by asking the daemon, which serves each
//! request with its own `Service`. The CLI only ever holds a `Client`.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use stacko_store::progress::Progress;
use stacko_store::{ImageRecord, ImageState, Timestamp};

use crate::error::Result;

/// What `list-images` and friends report about one image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The image's name.
    pub name: String,
    /// The image it stacks on.
    pub parent: Option<String>,
    /// Open (editable) or sealed.
    pub state: ImageState,
    /// When it was made.
    pub created: Timestamp,
    /// Bytes of file content in its own layer.
    pub size: u64,
    /// Non-directory entries in its own layer.
    pub files: u64,
}

impl From<ImageRecord> for ImageInfo {
    fn from(r: ImageRecord) -> Self {
        ImageInfo {
            name: r.name,
            parent: r.parent,
            state: r.state,
            created: r.created,
            size: r.size,
            files: r.files,
        }
    }
}

/// What an import reads.
#[derive(Debug)]
pub enum Source {
    /// A directory (plain tree or overlayfs upper dir) or an archive file
    /// (tar, plain, gzip or zstd). Relative paths are taken from the caller's
    /// working directory.
    Path(PathBuf),
    /// An open descriptor to read an archive from (stdin for `-`).
    Fd(OwnedFd),
}

/// Where an export writes.
#[derive(Debug)]
pub enum Dest {
    /// A file, written to a temp file beside it and renamed into place.
    Path {
        /// The file.
        path: PathBuf,
        /// Replace an existing file.
        force: bool,
    },
    /// An open descriptor (stdout for `-`); a terminal is refused.
    Fd(OwnedFd),
}

/// `import-image NAME SOURCE [--parent P]`.
#[derive(Debug)]
pub struct ImportRequest {
    /// The new image's name.
    pub name: String,
    /// The image it stacks on.
    pub parent: Option<String>,
    /// What to read.
    pub source: Source,
}

/// `export-image NAME DEST [--flatten]`.
#[derive(Debug)]
pub struct ExportRequest {
    /// The image.
    pub name: String,
    /// Export the merged tree of the whole stack instead of the image's own layer.
    pub flatten: bool,
    /// Where to write.
    pub dest: Dest,
}

/// The commands, one method each. Implemented by [`crate::Service`] (in
/// process) and [`crate::Client`] (through the daemon); both behave the same.
pub trait Api {
    /// `new-image NAME [PARENT]`: an open, empty image on `parent`.
    fn new_image(&self, name: &str, parent: Option<&str>) -> Result<ImageInfo>;

    /// `delete-image NAME`: refused while another image stacks on it.
    fn delete_image(&self, name: &str) -> Result<()>;

    /// `list-images`: all images, sorted by name.
    fn list_images(&self) -> Result<Vec<ImageInfo>>;

    /// `import-image`: a new sealed image from a directory or an archive.
    /// The names are checked before any input is read; on any error nothing is committed.
    fn import_image(&self, req: ImportRequest, progress: &dyn Progress) -> Result<ImageInfo>;

    /// `export-image`: a tar archive of the image's own layer (with OCI
    /// whiteouts) or, flattened, of its whole stack.
    fn export_image(&self, req: ExportRequest, progress: &dyn Progress) -> Result<()>;
}

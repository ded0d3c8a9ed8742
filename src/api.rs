//! The one way in: every command the CLI runs is a method of [`Api`].
//!
//! [`crate::Service`] implements it in-process over an open store;
//! [`crate::Client`] implements it by asking the daemon, which serves each
//! request with its own `Service`. The CLI only ever holds a `Client`.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use stacko_store::progress::Progress;
use stacko_store::stackpoints::{InstanceId, InstanceRecord, MountBackend};
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

/// A mount engine, as `--backend kernel|fuse` names it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Kernel overlayfs over layer checkouts.
    Kernel,
    /// The stacko FUSE filesystem, served by the daemon.
    Fuse,
}

impl Backend {
    /// `kernel` or `fuse`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Kernel => "kernel",
            Backend::Fuse => "fuse",
        }
    }
}

impl FromStr for Backend {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Backend> {
        match s {
            "kernel" => Ok(Backend::Kernel),
            "fuse" => Ok(Backend::Fuse),
            other => Err(crate::error::Error::Invalid(format!(
                "unknown backend {other:?}: use `kernel` or `fuse`"
            ))),
        }
    }
}

impl From<Backend> for crate::backend::Kind {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Kernel => crate::backend::Kind::Kernel,
            Backend::Fuse => crate::backend::Kind::Fuse,
        }
    }
}

impl From<crate::backend::Kind> for Backend {
    fn from(k: crate::backend::Kind) -> Self {
        match k {
            crate::backend::Kind::Kernel => Backend::Kernel,
            crate::backend::Kind::Fuse => Backend::Fuse,
        }
    }
}

impl From<Backend> for MountBackend {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Kernel => MountBackend::Kernel,
            Backend::Fuse => MountBackend::Fuse,
        }
    }
}

impl From<MountBackend> for Backend {
    fn from(b: MountBackend) -> Self {
        match b {
            MountBackend::Kernel => Backend::Kernel,
            MountBackend::Fuse => Backend::Fuse,
        }
    }
}

/// What `list-stackpoints` and the stackpoint commands report about one stackpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StackpointInfo {
    /// Its name.
    pub name: String,
    /// The mount directory.
    pub dir: PathBuf,
    /// The current instance.
    pub current: InstanceId,
    /// The current instance's image.
    pub image: String,
    /// Instances made current, oldest first.
    pub history: Vec<InstanceId>,
    /// Index of the current instance in `history`.
    pub cursor: u32,
    /// All its instances, in creation order.
    pub instances: Vec<InstanceId>,
    /// The backend recorded by `mount-stackpoint --backend`, if any.
    pub backend: Option<Backend>,
    /// How it is mounted now (`None`: not mounted, or a dead FUSE mount).
    pub mounted: Option<Backend>,
    /// When it was made.
    pub created: Timestamp,
}

/// What `list-instances` reports about one instance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct InstanceInfo {
    /// Its id.
    pub id: InstanceId,
    /// Its stackpoint.
    pub stackpoint: String,
    /// Its image.
    pub image: String,
    /// Whether it is its stackpoint's current instance.
    pub current: bool,
    /// When it was made.
    pub created: Timestamp,
}

impl InstanceInfo {
    /// From a record; `current` says whether it is its stackpoint's current instance.
    pub fn new(r: InstanceRecord, current: bool) -> Self {
        InstanceInfo {
            id: r.id,
            stackpoint: r.stackpoint,
            image: r.image,
            current,
            created: r.created,
        }
    }
}

/// `new-stackpoint NAME IMAGE [--dir PATH] [--force]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NewStackpoint {
    /// The stackpoint's name.
    pub name: String,
    /// The image of its first instance.
    pub image: String,
    /// The mount directory (absolute); default `HOME/stackpoints/NAME`.
    pub dir: Option<PathBuf>,
    /// Accept a non-empty directory.
    pub force: bool,
}

/// What `stacko run` needs to mount a stackpoint itself, in a user namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RunPlan {
    /// The stackpoint.
    pub name: String,
    /// Where to mount it.
    pub dir: PathBuf,
    /// Checked-out layers, top first (kernel overlayfs lower directories).
    pub lowers: Vec<PathBuf>,
    /// The current instance's upper directory.
    pub upper: PathBuf,
    /// Its work directory.
    pub work: PathBuf,
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

    /// `edit-image NAME`: mounts the image writable over its parent stack
    /// (`backend` overrides the automatic choice); returns the directory to edit.
    fn edit_image(&self, name: &str, backend: Option<Backend>) -> Result<PathBuf>;

    /// `close-image NAME`: unmounts the edit, commits it into the image's layer, seals it.
    fn close_image(&self, name: &str, progress: &dyn Progress) -> Result<ImageInfo>;

    /// `get-image-dir NAME`: the directory of an image being edited.
    fn image_dir(&self, name: &str) -> Result<PathBuf>;

    /// `new-stackpoint`: the stackpoint and its first instance, current.
    fn new_stackpoint(&self, req: &NewStackpoint) -> Result<StackpointInfo>;

    /// `delete-stackpoint NAME`: unmounts it, deletes it and its instances' data.
    fn delete_stackpoint(&self, name: &str) -> Result<()>;

    /// `new-stackpoint-instance NAME IMAGE`: a new instance, not current.
    fn new_instance(&self, name: &str, image: &str) -> Result<InstanceInfo>;

    /// `set-stackpoint-instance NAME INSTANCE`: makes it current (remounting if mounted).
    fn set_instance(&self, name: &str, id: InstanceId) -> Result<StackpointInfo>;

    /// `delete-stackpoint-instance NAME INSTANCE`: refused for the current one.
    fn delete_instance(&self, name: &str, id: InstanceId) -> Result<()>;

    /// `cutover-stackpoint NAME IMAGE [--reuse]`: switches to a new (or the
    /// latest existing) instance of `image`, remounting if mounted.
    fn cutover(&self, name: &str, image: &str, reuse: bool) -> Result<StackpointInfo>;

    /// `fallback-stackpoint NAME [--to INSTANCE]`: goes back in the history.
    fn fallback(&self, name: &str, to: Option<InstanceId>) -> Result<StackpointInfo>;

    /// `mount-stackpoint NAME [--backend B]` (a given backend is remembered).
    fn mount_stackpoint(&self, name: &str, backend: Option<Backend>) -> Result<StackpointInfo>;

    /// `umount-stackpoint NAME [--lazy]`.
    fn umount_stackpoint(&self, name: &str, lazy: bool) -> Result<()>;

    /// `get-stackpoint-dir NAME`.
    fn stackpoint_dir(&self, name: &str) -> Result<PathBuf>;

    /// `is-stackpoint-mounted NAME` (a dead FUSE mount is not mounted).
    fn is_stackpoint_mounted(&self, name: &str) -> Result<bool>;

    /// `list-stackpoints`, sorted by name.
    fn list_stackpoints(&self) -> Result<Vec<StackpointInfo>>;

    /// `list-instances [NAME]`: the instances of one stackpoint, or all, by id.
    fn list_instances(&self, name: Option<&str>) -> Result<Vec<InstanceInfo>>;

    /// For `stacko run`: checks the current instance's layers out and says
    /// what to mount where.
    fn prepare_run(&self, name: &str) -> Result<RunPlan>;
}

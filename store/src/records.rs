//! Records stored as sled values, and their encoding.
//!
//! Every value is one format-version byte followed by the postcard encoding
//! of the record. Decoding refuses an unknown version and trailing bytes.
//! The golden-bytes tests in this module freeze the format: changing a
//! record means a new version number and a decoder for the old one.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Error, Result};

/// The format version written in front of every record.
pub const FORMAT_VERSION: u8 = 1;

/// Files whose content is at most this many bytes are stored inline in sled.
/// Kept small: inline content is not shared between images (each import of
/// a tree would add all its small files to sled again, with sled's space
/// overhead on top), whereas objects are stored once. Records written with
/// a larger limit (4096 before) still read as they are.
pub const INLINE_MAX: u64 = 256;

/// The longest name (image, stackpoint, directory entry) in bytes.
pub const NAME_MAX: usize = 255;

/// Identifies a layer: a tree of nodes owned by one image.
pub type LayerId = u64;

/// A node number inside one layer. The root directory of every layer is [`ROOT_INO`].
pub type Ino = u64;

/// The root directory's node number in every layer.
pub const ROOT_INO: Ino = 1;

/// A blake3 digest naming an object in the object directory.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// Lower-case hex, as used for the object's file name.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// A point in time with nanoseconds, as in `struct timespec`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    /// Seconds since the epoch (may be negative).
    pub sec: i64,
    /// Nanoseconds, 0..1_000_000_000.
    pub nsec: u32,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        }
    }
}

/// What a node is. Hard links are not a kind: several directory entries
/// name the same node, whose `nlink` counts them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link; the target is the node's inline content.
    Symlink,
    /// A character device (`rdev` holds the device number).
    CharDev,
    /// A block device (`rdev` holds the device number).
    BlockDev,
    /// A named pipe.
    Fifo,
    /// A unix socket.
    Socket,
    /// An overlay whiteout: hides the name in lower layers.
    Whiteout,
}

/// Where a node's bytes are.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// No content (directories, devices, empty files).
    Empty,
    /// Stored in the record: small files and symlink targets.
    Inline(Vec<u8>),
    /// Stored in the object directory under this digest.
    Object(ObjectId),
}

/// One extended attribute.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Xattr {
    /// Full name, namespace included (`user.foo`, `security.capability`).
    pub name: Vec<u8>,
    /// Value bytes.
    pub value: Vec<u8>,
}

/// A node of a layer tree: everything `stat` shows plus content and xattrs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// What it is.
    pub kind: NodeKind,
    /// Permission bits, setuid/setgid/sticky included (`mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last access.
    pub atime: Timestamp,
    /// Last modification.
    pub mtime: Timestamp,
    /// Last status change, as seen at ingest.
    pub ctime: Timestamp,
    /// Size in bytes (content length; symlink target length).
    pub size: u64,
    /// Device number for device nodes.
    pub rdev: u64,
    /// Number of directory entries naming this node (for directories: 2 + subdirectories).
    pub nlink: u32,
    /// The bytes.
    pub content: Content,
    /// Extended attributes sorted by name; overlay-internal ones are never stored.
    pub xattrs: Vec<Xattr>,
    /// For directories: hides everything below the same path in lower layers.
    pub opaque: bool,
}

impl Node {
    /// A node of `kind` with `mode`, owned by uid/gid 0, all times now, no content.
    pub fn new(kind: NodeKind, mode: u32) -> Self {
        let now = Timestamp::now();
        Node {
            kind,
            mode: mode & 0o7777,
            uid: 0,
            gid: 0,
            atime: now,
            mtime: now,
            ctime: now,
            size: 0,
            rdev: 0,
            nlink: if kind == NodeKind::Dir { 2 } else { 1 },
            content: Content::Empty,
            xattrs: Vec::new(),
            opaque: false,
        }
    }

    /// `st_mode` with the file-type bits set from `kind` (whiteouts show as char devices).
    pub fn st_mode(&self) -> u32 {
        let t = match self.kind {
            NodeKind::File => libc::S_IFREG,
            NodeKind::Dir => libc::S_IFDIR,
            NodeKind::Symlink => libc::S_IFLNK,
            NodeKind::CharDev | NodeKind::Whiteout => libc::S_IFCHR,
            NodeKind::BlockDev => libc::S_IFBLK,
            NodeKind::Fifo => libc::S_IFIFO,
            NodeKind::Socket => libc::S_IFSOCK,
        };
        t | (self.mode & 0o7777)
    }
}

/// The value of a directory entry: which node a name points at, and its kind
/// (so that a listing needs no node lookups).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirentRecord {
    /// The node named.
    pub ino: Ino,
    /// Its kind.
    pub kind: NodeKind,
}

/// A directory entry as returned by listings and lookups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The name (no `/`, not `.` or `..`).
    pub name: Vec<u8>,
    /// The node it names.
    pub ino: Ino,
    /// The node's kind.
    pub kind: NodeKind,
}

/// An image's lifecycle.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageState {
    /// Made by `new-image` and not yet closed: may be edited.
    Open,
    /// Sealed by `close-image` or made by `import-image`.
    Sealed,
}

/// A named image: one layer on top of an optional parent image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ImageRecord {
    /// The image's name.
    pub name: String,
    /// The image below it, if any.
    pub parent: Option<String>,
    /// Its own layer.
    pub layer: LayerId,
    /// Open or sealed.
    pub state: ImageState,
    /// When it was made.
    pub created: Timestamp,
    /// Bytes of file content in its own layer (inline and objects, before dedup).
    pub size: u64,
    /// Number of non-directory nodes in its own layer.
    pub files: u64,
}

/// Whether a layer is referenced yet.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerState {
    /// Being written; not referenced by any image. Removed at the next open.
    Building,
    /// Complete; referenced by an image. A live layer that no image
    /// references any more (an interrupted delete) is removed at the next open.
    Live,
}

/// Book-keeping for a layer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerRecord {
    /// Building or live.
    pub state: LayerState,
    /// When it was started.
    pub created: Timestamp,
    /// The next free node number in the layer.
    pub next_ino: Ino,
}

/// Encodes a record: the version byte, then postcard.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let out = vec![FORMAT_VERSION];
    // postcard cannot fail on our types: no maps with non-string keys, no unsized data.
    match postcard::to_extend(record, out) {
        Ok(v) => v,
        Err(e) => panic!("postcard encoding of a plain record failed: {e}"),
    }
}

/// Decodes a record written by [`encode`]; refuses unknown versions and trailing bytes.
pub fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T> {
    let (&version, body) = bytes.split_first().ok_or(Error::Format {
        tree,
        detail: "empty value".into(),
    })?;
    if version != FORMAT_VERSION {
        return Err(Error::Format {
            tree,
            detail: format!("format version {version}, this build reads {FORMAT_VERSION}"),
        });
    }
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| Error::Format {
        tree,
        detail: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(Error::Format {
            tree,
            detail: format!("{} trailing bytes", rest.len()),
        });
    }
    Ok(value)
}

/// Checks a user-given name (image, stackpoint): non-empty, no `/` or NUL,
/// not `.` or `..`, at most [`NAME_MAX`] bytes, no leading `-`, no control characters.
pub fn validate_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are reserved")
    } else if name.len() > NAME_MAX {
        Some("it is longer than 255 bytes")
    } else if name.contains('/') {
        Some("it contains `/`")
    } else if name.starts_with('-') {
        Some("it starts with `-`")
    } else if name.chars().any(|c| c.is_control()) {
        Some("it contains a control character")
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::InvalidName {
            name: name.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

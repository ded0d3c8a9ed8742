//! The read-only lower layer interface.
//!
//! A [`Lower`] is one read-only layer addressed by inode numbers of its own (no paths): the
//! merged filesystem only ever asks for the root, looks names up in directories it already
//! holds, and reads nodes by number. Two implementations exist: [`crate::dirlower::DirLower`]
//! over a plain directory in overlayfs lowerdir format, and (outside this crate) one over
//! stacko's store. Layers are shared as `Arc<dyn Lower>`.

use std::ffi::{OsStr, OsString};
use std::fs::File;

use crate::error::Result;

/// Inode number inside one lower layer.
pub type LowerIno = u64;

/// The kind of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// A whiteout: the name is deleted in this layer and hides every layer below.
    Whiteout,
}

impl Kind {
    /// Kind from the `S_IFMT` bits of a mode (`None` for unknown types).
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            _ => return None,
        })
    }

    /// The `S_IFMT` bits of this kind (a whiteout is a character device).
    pub fn mode_bits(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::CharDev | Kind::Whiteout => libc::S_IFCHR,
            Kind::BlockDev => libc::S_IFBLK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
        }
    }

    /// Kind from a `DT_*` directory entry type (`None` if unknown).
    pub fn from_dtype(t: u8) -> Option<Kind> {
        Some(match t {
            libc::DT_REG => Kind::File,
            libc::DT_DIR => Kind::Dir,
            libc::DT_LNK => Kind::Symlink,
            libc::DT_CHR => Kind::CharDev,
            libc::DT_BLK => Kind::BlockDev,
            libc::DT_FIFO => Kind::Fifo,
            libc::DT_SOCK => Kind::Socket,
            _ => return None,
        })
    }
}

/// A point in time: seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timestamp {
    /// Seconds since the epoch (may be negative).
    pub sec: i64,
    /// Nanoseconds, 0..1e9.
    pub nsec: u32,
}

/// Attributes of a lower node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LowerAttr {
    /// Kind of node.
    pub kind: Kind,
    /// Permission bits including set-id and sticky bits (`0o7777`), without type bits.
    pub perm: u32,
    /// Owner (after applying any `user.containers.override_stat` the layer carries).
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (target length for symlinks).
    pub size: u64,
    /// Allocated 512-byte blocks (an estimate is fine).
    pub blocks: u64,
    /// Access time.
    pub atime: Timestamp,
    /// Modification time.
    pub mtime: Timestamp,
    /// Status change time.
    pub ctime: Timestamp,
    /// Device number for device nodes.
    pub rdev: u64,
    /// Number of names of this node inside the layer.
    pub nlink: u32,
    /// For directories: the directory is opaque (hides the same directory in lower layers).
    pub opaque: bool,
}

/// A directory entry of a lower layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowerEntry {
    /// Inode number of the entry in this layer (meaningless for whiteouts).
    pub ino: LowerIno,
    /// Kind of the entry; `Whiteout` hides the name in every layer below.
    pub kind: Kind,
}

/// Open content of a lower regular file.
pub trait LowerFile: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns 0 at end of file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize>;

    /// A real file holding the content, if there is one: used for `copy_file_range` during
    /// copy-up, `SEEK_DATA`/`SEEK_HOLE` and FUSE passthrough.
    fn backing_file(&self) -> Option<&File> {
        None
    }
}

/// One read-only layer.
pub trait Lower: Send + Sync {
    /// Inode number of the layer's root directory.
    fn root(&self) -> LowerIno;

    /// Looks up `name` in directory `dir`. Returns `Ok(None)` if absent and an entry of kind
    /// [`Kind::Whiteout`] if the layer deletes the name. Names reserved by the layer format
    /// (such as `.wh.*`) are never returned.
    fn lookup(&self, dir: LowerIno, name: &OsStr) -> Result<Option<LowerEntry>>;

    /// Attributes of a node.
    fn getattr(&self, ino: LowerIno) -> Result<LowerAttr>;

    /// Whether directory `dir` is opaque (implementations may cache this).
    fn is_opaque(&self, dir: LowerIno) -> Result<bool> {
        Ok(self.getattr(dir)?.opaque)
    }

    /// Lists directory `dir` in name order, starting after `after` (from the start if `None`),
    /// whiteouts included (as entries of kind [`Kind::Whiteout`]). `f` returns `false` to stop.
    fn read_dir(
        &self,
        dir: LowerIno,
        after: Option<&OsStr>,
        f: &mut dyn FnMut(&OsStr, LowerEntry) -> bool,
    ) -> Result<()>;

    /// Opens the content of a regular file.
    fn open(&self, ino: LowerIno) -> Result<Box<dyn LowerFile>>;

    /// Target of a symbolic link.
    fn readlink(&self, ino: LowerIno) -> Result<Vec<u8>>;

    /// Names of the node's extended attributes (all of them; the merged filesystem hides the
    /// overlay-internal ones).
    fn list_xattrs(&self, ino: LowerIno) -> Result<Vec<OsString>>;

    /// Value of one extended attribute, `Ok(None)` if not set.
    fn get_xattr(&self, ino: LowerIno, name: &OsStr) -> Result<Option<Vec<u8>>>;
}

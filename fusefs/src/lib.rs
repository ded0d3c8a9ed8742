//! stacko's merged filesystem: read-only lower layers plus a copy-on-write upper directory
//! in kernel overlayfs format, served over FUSE (see issue 3).
//!
//! * [`lower`]: the [`lower::Lower`] trait every layer source implements; [`dirlower`]: a
//!   layer read from a plain directory.
//! * [`upper`], [`whiteout`], [`xattr`]: the on-disk format of the upper and work directories;
//!   [`sidemeta`]: bookkeeping of upper symlinks and special files (which hold no `user.*`
//!   xattrs).
//! * [`node`]: the inode table; [`dircache`]: cached merged listings; [`lowerindex`]: merged
//!   lower-directory indexes (lookups in O(1) of the depth); [`copyup`]: copy-up.
//! * [`fs`]: the filesystem logic as plain methods (testable without FUSE).
//! * [`fuse`]: the adapter to fuser (the only module that names it); [`config`]: mount options.

#![warn(missing_docs)]

pub mod config;
pub mod copyup;
pub mod dircache;
pub mod dirlower;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod lower;
pub mod lowerindex;
pub mod node;
pub mod prepare;
pub mod shard;
pub mod sidemeta;
pub mod sys;
pub mod upper;
pub mod whiteout;
pub mod xattr;

pub use config::{FsConfig, MountConfig};
pub use error::{Errno, Result};
pub use fs::OverlayFs;
pub use lower::{Kind, Lower, LowerAttr, LowerEntry, LowerFile, LowerIno};

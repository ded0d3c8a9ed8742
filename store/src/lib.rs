//! stacko's image store.
//!
//! # On-disk layout
//!
//! A store lives in one directory (the "home"):
//!
//! ```text
//! HOME/db/                 sled database (one process at a time: sled locks it)
//! HOME/objects/ab/cdef…    file content > INLINE_MAX bytes, named by blake3 (hex, 2-char fan-out)
//! HOME/objects/tmp/        temp files being written; renamed into place once synced
//! HOME/checkouts/          layer checkouts for the kernel overlayfs path
//! HOME/instances/<id>/     an instance's upper/ and work/ (made by the stacko crate)
//! HOME/edits/<image>/      upper/, work/, mnt/ of an image being edited
//! HOME/stackpoints/<name>  default mount directory of a stackpoint
//! ```
//!
//! sled trees (keys are big-endian bytes built in [`keys`], values are
//! [`records`] with a version byte):
//!
//! | tree            | key                          | value            |
//! |-----------------|------------------------------|------------------|
//! | `images`        | name (UTF-8)                 | [`records::ImageRecord`] |
//! | `layers`        | layer id                     | [`records::LayerRecord`] |
//! | `nodes`         | layer ‖ ino                  | [`records::Node`] |
//! | `dirents`       | layer ‖ parent ino ‖ name    | [`records::DirentRecord`] |
//! | `object_layers` | digest ‖ layer               | empty            |
//! | `stackpoints`   | name (UTF-8)                 | [`stackpoints::StackpointRecord`] |
//! | `instances`     | instance id (u64)            | [`stackpoints::InstanceRecord`] |
//! | `image_users`   | image name (UTF-8)           | [`stackpoints::ImageUsersRecord`] |
//!
//! # Atomicity
//!
//! A layer is written under a fresh layer id in `Building` state, in
//! batches, while no image references it. Objects are written to temp
//! files, synced (one `syncfs`) and renamed before the small transaction
//! that creates or updates the image record and marks the layer `Live`.
//! A crash before that transaction leaves an unreferenced layer, which the
//! next [`Store::open`] removes; a crash after it leaves the complete image.
//! An object is deleted only when `object_layers` holds no layer for it.

#![warn(missing_docs)]

pub mod apply;
pub mod checkout;
pub mod error;
mod gc;
pub mod ingest;
pub mod keys;
pub mod objects;
pub mod progress;
pub mod read;
pub mod records;
pub mod stackpoints;
pub mod store;
pub mod tar;
mod xattr;

pub use error::{Error, Result};
pub use records::*;
pub use store::Store;

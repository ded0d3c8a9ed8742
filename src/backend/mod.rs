//! Mount backends: deciding how this process can mount, and doing it.
//!
//! Three ways to mount a stack of layers, picked by [`choose_backend`]:
//! - **kernel**: kernel overlayfs ([`kernel::Overlay`]) when we hold `CAP_SYS_ADMIN`
//!   (root, or inside a user namespace that owns our mount namespace);
//! - **fuse**: the stacko FUSE filesystem, mounted directly or through `fusermount3`;
//! - **user namespace**: neither works here, so `stacko run` enters a new user + mount
//!   namespace ([`userns::run_in_userns`]) and mounts there.
//!
//! [`mountinfo`] answers "is this mounted, and how", [`unmount`](mod@unmount) takes mounts down.
//! Everything fails with [`Error`]: one line, with the errno behind it.

pub mod choose;
pub mod error;
pub mod kernel;
pub mod mountinfo;
pub mod privilege;
pub mod unmount;
pub mod userns;

#[cfg(test)]
mod testutil;

pub use choose::{choose_backend, choose_in_userns, FuseVia, Kind, Plan};
pub use error::{Error, Result};
pub use kernel::{MountApi, Overlay, UpperDirs};
pub use mountinfo::{is_mount_point, mount_state, MountEntry, MountState};
pub use privilege::{probe_userns, Privileges, UserNsSupport};
pub use unmount::{unmount, Unmounted};
pub use userns::run_in_userns;

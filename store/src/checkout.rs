//! Checking a layer out into a directory in kernel overlayfs lowerdir format,
//! for the kernel fast path: whiteouts as char 0:0, opaque directories with
//! `user.overlay.opaque=y` (and `trusted.overlay.opaque=y` when permitted),
//! file data hardlinked (or reflinked) from the object directory, not copied.

use std::path::Path;

use crate::error::Result;
use crate::progress::Progress;
use crate::records::LayerId;
use crate::store::Store;

/// Checks `layer` out into `dest` (created; must not exist). Built in a
/// temp directory beside `dest` and renamed into place, so a crash leaves
/// no half checkout under `dest`.
pub fn checkout(store: &Store, layer: LayerId, dest: &Path, progress: &dyn Progress) -> Result<()> {
    let _ = (store, layer, dest, progress);
    todo!()
}

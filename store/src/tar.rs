//! Tar import and export with OCI layer whiteouts (`.wh.NAME`, `.wh..wh..opq`).
//! Compression on import (gzip, zstd, none) is detected from the content.
//! Nanosecond times and xattrs travel in PAX headers (`mtime`, `SCHILY.xattr.*`).

use std::io::{Read, Write};

use crate::error::Result;
use crate::ingest::LayerSummary;
use crate::progress::Progress;
use crate::records::LayerId;
use crate::store::Store;

/// Imports a tar stream (plain, gzip or zstd) into a new layer. Refuses,
/// with [`crate::Error::BadInput`] and nothing committed: absolute paths,
/// `..` components, writes through a symlink of the archive, hard links to
/// names not in the archive, truncated or corrupt data, entry types the
/// store cannot represent.
pub fn import_tar(store: &Store, input: &mut dyn Read, progress: &dyn Progress) -> Result<LayerSummary> {
    let _ = (store, input, progress);
    todo!()
}

/// Writes a tar stream of `layers` (top first). With one layer and
/// `flatten == false`, the layer as it is, whiteouts and opaque directories
/// in OCI form; with `flatten == true`, the merged tree of all the layers.
pub fn export_tar(
    store: &Store,
    layers: &[LayerId],
    flatten: bool,
    out: &mut dyn Write,
    progress: &dyn Progress,
) -> Result<()> {
    let _ = (store, layers, flatten, out, progress);
    todo!()
}

//! Tar import and export with OCI layer whiteouts (`.wh.NAME`, `.wh..wh..opq`).
//! Compression on import (gzip, zstd, none) is detected from the content.
//! Nanosecond times and xattrs travel in PAX headers (`mtime`, `SCHILY.xattr.*`).
//!
//! # Import rules
//!
//! - Paths: a leading `./`, `.` and empty components are dropped; absolute
//!   paths, `..` components and names over 255 bytes are refused. Parents
//!   not listed in the archive are made as directories (0755, uid/gid 0,
//!   the times of the entry that needed them).
//! - Duplicate names are refused (the store cannot take back an earlier
//!   entry), except a directory listed again or after being made
//!   implicitly: it takes the later entry's metadata.
//! - Whiteouts: `.wh.NAME` becomes a whiteout node (mode 0), `.wh..wh..opq`
//!   marks its directory opaque, other `.wh..wh.*` (aufs) names are refused.
//!   Like directory ingest, a char device 0:0 is a whiteout and
//!   `*.overlay.opaque=y` marks an opaque directory; other overlay xattrs are dropped.
//! - Hard links must name an earlier non-directory entry of the archive.
//! - GNU sparse entries (`S`) are stored expanded; PAX-format sparse files
//!   (`GNU.sparse.*`) are refused. Global PAX headers (`g`) are ignored.
//!   Any other entry type the store has no node for (sockets cannot be in a
//!   tar; GNU volume labels, dump directories, ...) is refused.
//! - PAX records are parsed by their length, so xattr values may hold any
//!   byte. In xattr names `%25` and `%3D` stand for `%` and `=` (as GNU tar
//!   writes them). `RHT.security.selinux` is read as `security.selinux`.
//! - The archive must be complete: every entry's data and the end-of-archive
//!   block must be there, and a compressed stream must end cleanly.
//!
//! # Export format
//!
//! GNU headers (long names as GNU long-name entries) preceded by a PAX
//! header with `mtime`, `atime`, `ctime` (nanoseconds) and `SCHILY.xattr.*`.
//! The root is written as `./`, directories with a trailing `/`, entries
//! depth-first in byte order of names; no user or group names, so the same
//! store state always gives the same bytes. Sockets are skipped (tar cannot
//! hold them).

mod export;
mod import;
mod pax;
mod source;

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
/// store cannot represent. A failure of `input` itself is an
/// [`crate::Error::Io`]. The returned layer is finished but unreferenced:
/// pass it to [`Store::commit_image`]. Reports each entry to `progress`.
pub fn import_tar(
    store: &Store,
    input: &mut dyn Read,
    progress: &dyn Progress,
) -> Result<LayerSummary> {
    import::import(store, input, progress)
}

/// Writes a tar stream of `layers` (top first). With one layer and
/// `flatten == false`, the layer as it is, whiteouts and opaque directories
/// in OCI form; with `flatten == true`, the merged tree of all the layers
/// (the top layer wins, whiteouts and opaque directories hide what is below
/// and are not written). With `flatten == false` and several layers, only
/// `layers[0]` is written. A failed export never ends with an
/// end-of-archive marker, so a partial stream is recognisably truncated.
pub fn export_tar(
    store: &Store,
    layers: &[LayerId],
    flatten: bool,
    out: &mut dyn Write,
    progress: &dyn Progress,
) -> Result<()> {
    export::export(store, layers, flatten, out, progress)
}

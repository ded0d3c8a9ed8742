//! Garbage-collection helpers: bounded-memory prefix deletion in sled, and
//! removal of checkout variants that no checkout uses any more.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;

use crate::checkout::{variants_dir, CLAIM_SUFFIX};
use crate::error::{Error, Result};
use crate::store::Store;

/// How many keys are collected and deleted per batch.
pub(crate) const CHUNK: usize = 4096;

/// Up to [`CHUNK`] keys starting with `prefix`.
pub(crate) fn first_keys(tree: &sled::Tree, prefix: &[u8]) -> Result<Vec<sled::IVec>> {
    let mut out = Vec::new();
    for key in tree.scan_prefix(prefix).keys().take(CHUNK) {
        out.push(key?);
    }
    Ok(out)
}

/// Removes every key starting with `prefix`, [`CHUNK`] keys per batch.
pub(crate) fn remove_prefix(tree: &sled::Tree, prefix: &[u8]) -> Result<u64> {
    let mut removed = 0;
    loop {
        let chunk = first_keys(tree, prefix)?;
        if chunk.is_empty() {
            return Ok(removed);
        }
        let mut batch = sled::Batch::default();
        removed += chunk.len() as u64;
        for key in chunk {
            batch.remove(key);
        }
        tree.apply_batch(batch)?;
    }
}

/// Removes variant files that no checkout links to any more, and claim
/// markers whose object or variant is gone. Runs at open, while no
/// checkout can be in progress (the store's lock is held, no `Store` handed out yet).
pub(crate) fn remove_unused_variants(store: &Store) -> Result<()> {
    let dir = variants_dir(store);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    let ctx = |e| Error::io(format!("listing {}", dir.display()), e);
    let mut claims = Vec::new();
    for entry in entries {
        let entry = entry.map_err(ctx)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(CLAIM_SUFFIX) {
            claims.push(name);
            continue;
        }
        let meta = entry.metadata().map_err(ctx)?;
        if meta.nlink() == 1 {
            remove_quietly(&dir.join(&name))?;
        }
    }
    for claim in claims {
        let marker = dir.join(&claim);
        let hex = claim.trim_end_matches(CLAIM_SUFFIX);
        let object = store
            .objects
            .root
            .join(hex.get(..2).unwrap_or(""))
            .join(hex.get(2..).unwrap_or(""));
        let variant = fs::read_link(&marker).ok().map(|v| dir.join(v));
        let object_meta = fs::metadata(&object).ok();
        let variant_meta = variant.as_ref().and_then(|v| fs::symlink_metadata(v).ok());
        let keep = match (&object_meta, &variant_meta) {
            (Some(o), Some(v)) => {
                // The claimed variant is the object's own inode; unused when
                // only the object and the variant name link to it.
                let unused = o.ino() == v.ino() && o.dev() == v.dev() && v.nlink() <= 2;
                if unused {
                    if let Some(v) = &variant {
                        remove_quietly(v)?;
                    }
                }
                !unused
            }
            _ => false,
        };
        if !keep {
            remove_quietly(&marker)?;
        }
    }
    Ok(())
}

fn remove_quietly(path: &std::path::Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

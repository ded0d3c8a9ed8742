//! Layer checkouts for the kernel overlayfs path: `HOME/checkouts/<layer
//! id>`, made once per layer (at its first kernel mount) and reused by every
//! mount of every image that stacks on the layer. Layers never change once
//! committed (a closed edit makes a new layer), so a checkout never goes
//! stale; it is removed with its layer.

use std::path::PathBuf;

use stacko_store::checkout::checkout;
use stacko_store::progress::NoProgress;
use stacko_store::{LayerId, Store};

use crate::error::Result;
use crate::fsutil;
use crate::service::Service;

/// Where the checkout of `layer` lives.
pub fn path(store: &Store, layer: LayerId) -> PathBuf {
    store.checkouts_dir().join(layer.to_string())
}

/// The checkout of `layer`, made now if it does not exist yet.
pub fn ensure(svc: &Service, layer: LayerId) -> Result<PathBuf> {
    let dest = path(svc.store(), layer);
    if dest.is_dir() {
        return Ok(dest);
    }
    let _one_at_a_time = svc.checkouts.lock().unwrap_or_else(|p| p.into_inner());
    if !dest.is_dir() {
        checkout(svc.store(), layer, &dest, &NoProgress)?;
    }
    Ok(dest)
}

/// The checkouts of `layers` (top first), made where missing.
pub fn ensure_all(svc: &Service, layers: &[LayerId]) -> Result<Vec<PathBuf>> {
    layers.iter().map(|&l| ensure(svc, l)).collect()
}

/// Removes the checkout of a layer that is gone (best effort: a leftover is
/// removed by [`remove_unused`] at the next start).
pub fn remove(store: &Store, layer: LayerId) {
    let _ = fsutil::remove_tree(&path(store, layer));
}

/// Removes checkouts whose layer no longer exists.
pub fn remove_unused(svc: &Service) -> Result<()> {
    let live: std::collections::HashSet<LayerId> = svc
        .store()
        .layer_records()?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let dir = svc.store().checkouts_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.parse::<LayerId>().ok()) else {
            continue;
        };
        if !live.contains(&id) {
            fsutil::remove_tree(&entry.path())?;
        }
    }
    Ok(())
}

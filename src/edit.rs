//! Editing images: `edit-image` mounts an image writable over its parent
//! stack, `close-image` commits the edits into the image's layer and seals it.
//!
//! An edit lives in `HOME/edits/<image>/`: `upper/` and `work/` (overlayfs
//! format) and `mnt/`, the directory the user edits. While that directory
//! exists the image is "being edited": no instance or child image can be
//! made of it, and it cannot be deleted. The edit survives a daemon restart
//! or a reboot: `edit-image` mounts it again.
//!
//! `close-image` unmounts, builds a new layer (the image's own layer with
//! the upper applied, [`stacko_store::apply::apply_upper`]), points the image
//! at it and seals it in one transaction, then removes the edit directory.

use std::path::{Path, PathBuf};

use stacko_store::apply::apply_upper;
use stacko_store::progress::Progress;
use stacko_store::{validate_name, Error as StoreError, ImageRecord, ImageState};

use crate::api::{Backend, ImageInfo};
use crate::backend::{self, MountState};
use crate::error::{Error, Result};
use crate::mounts::{mounted_as, pick_backend, MountSpec};
use crate::service::Service;
use crate::{checkouts, fsutil, instances};

/// `HOME/edits/<image>`.
pub fn edit_dir(home: &Path, image: &str) -> PathBuf {
    home.join("edits").join(image)
}

/// The directory the user edits: `HOME/edits/<image>/mnt`.
pub fn mount_dir(home: &Path, image: &str) -> PathBuf {
    edit_dir(home, image).join("mnt")
}

/// Whether `image` is being edited.
pub fn is_editing(home: &Path, image: &str) -> bool {
    edit_dir(home, image).exists()
}

impl Service {
    fn existing_image(&self, name: &str) -> Result<ImageRecord> {
        validate_name(name)?;
        self.store().image(name)?.ok_or_else(|| {
            StoreError::NotFound {
                what: "image",
                name: name.to_string(),
            }
            .into()
        })
    }

    /// Refuses to edit an image something depends on.
    fn check_editable(&self, name: &str) -> Result<()> {
        let advice =
            format!("make a new image on top of it (new-image NEW {name}) and edit that instead");
        if let Some(child) = self
            .store()
            .images()?
            .into_iter()
            .find(|r| r.parent.as_deref() == Some(name))
        {
            return Err(Error::Refused(format!(
                "image {name} cannot be edited: image {} stacks on it; {advice}",
                child.name
            )));
        }
        if let Some(&id) = self.store().image_users(name)?.first() {
            let sp = self
                .store()
                .instance(id)?
                .map(|i| i.stackpoint)
                .unwrap_or_default();
            return Err(Error::Refused(format!(
                "image {name} cannot be edited: it is used by instance {id} of stackpoint {sp}; {advice}"
            )));
        }
        Ok(())
    }

    fn edit_spec(&self, name: &str) -> Result<MountSpec> {
        let chain = self.store().image_chain(name)?;
        let dir = edit_dir(self.home(), name);
        Ok(MountSpec {
            label: format!("image {name}"),
            dir: dir.join("mnt"),
            layers: chain.iter().map(|r| r.layer).collect(),
            upper: dir.join("upper"),
            work: dir.join("work"),
            fuse_features: false,
        })
    }

    /// `edit-image`.
    pub(crate) fn image_edit(&self, name: &str, backend: Option<Backend>) -> Result<PathBuf> {
        let _g = self.state_lock();
        let rec = self.existing_image(name)?;
        let mnt = mount_dir(self.home(), name);
        let resuming = is_editing(self.home(), name);
        if resuming && mounted_as(&mnt)?.is_some() {
            return Ok(mnt);
        }
        if !resuming {
            self.check_editable(name)?;
        }
        let hint = format!(
            "make the image from a directory with `stacko import-image {name} DIR` instead"
        );
        let engine = pick_backend(backend, &format!("image {name} for editing"), &hint)?;
        let spec = self.edit_spec(name)?;
        let root = instances::stack_root(self.store(), name)?;
        let made = (|| {
            instances::make_upper_work(&spec.upper, &spec.work, root.as_ref())?;
            if rec.state == ImageState::Sealed {
                self.store().set_image_state(name, ImageState::Open)?;
            }
            self.mount_spec(&spec, engine)
        })();
        if let Err(e) = made {
            if !resuming {
                if rec.state == ImageState::Sealed {
                    let _ = self.store().set_image_state(name, ImageState::Sealed);
                }
                let _ = fsutil::remove_tree(&edit_dir(self.home(), name));
            }
            return Err(e);
        }
        Ok(mnt)
    }

    /// `close-image`.
    pub(crate) fn image_close(&self, name: &str, progress: &dyn Progress) -> Result<ImageInfo> {
        let _g = self.state_lock();
        let rec = self.existing_image(name)?;
        if !is_editing(self.home(), name) {
            return match rec.state {
                ImageState::Open => Ok(self
                    .store()
                    .set_image_state(name, ImageState::Sealed)?
                    .into()),
                ImageState::Sealed => Err(Error::Refused(format!(
                    "image {name} is sealed and not being edited: nothing to close"
                ))),
            };
        }
        let spec = self.edit_spec(name)?;
        match backend::mount_state(&spec.dir)? {
            MountState::NotMounted => {}
            MountState::DeadFuse(_) => {
                backend::unmount(&spec.dir, true)?;
            }
            MountState::Mounted(_) => self.unmount_dir(&spec.dir, false).map_err(|e| {
                Error::Refused(format!(
                    "cannot close image {name}: {e}; nothing was changed"
                ))
            })?,
        }
        let ancestors: Vec<_> = spec.layers.iter().skip(1).copied().collect();
        let _shared = self.shared();
        let layer = apply_upper(self.store(), rec.layer, &ancestors, &spec.upper, progress)
            .map_err(|e| {
                Error::Refused(format!(
                    "cannot commit the edits of image {name}: {e}; the edits are kept \
                 (edit-image {name} mounts them again)"
                ))
            })?;
        let new = self
            .store()
            .replace_layer(name, &layer, ImageState::Sealed)?;
        checkouts::remove(self.store(), rec.layer);
        fsutil::remove_tree(&edit_dir(self.home(), name))?;
        Ok(new.into())
    }

    /// `get-image-dir`.
    pub(crate) fn image_edit_dir(&self, name: &str) -> Result<PathBuf> {
        self.existing_image(name)?;
        if !is_editing(self.home(), name) {
            return Err(Error::Refused(format!(
                "image {name} is not being edited: run edit-image {name}"
            )));
        }
        Ok(mount_dir(self.home(), name))
    }
}

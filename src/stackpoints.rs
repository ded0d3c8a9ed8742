//! The stackpoint and instance commands, served by [`Service`].
//!
//! Every state change is one store transaction. Commands that change what
//! a mounted stackpoint shows (cutover, fallback, set) unmount it first
//! (a busy mount stops them before anything changes), change the state,
//! and mount it again with the same engine; if the change fails, the old
//! instance is mounted again.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use stacko_store::stackpoints::{InstanceId, InstanceRecord, StackpointRecord, Switch};
use stacko_store::{validate_name, Error as StoreError};

use crate::api::{Backend, InstanceInfo, NewStackpoint, RunPlan, StackpointInfo};
use crate::backend::{self, MountState};
use crate::error::{Error, Result};
use crate::mounts::{
    clear_mount_dir, mounted_as, pick_backend, prepare_upper_for_kernel, MountSpec,
};
use crate::service::Service;
use crate::{checkouts, edit, instances, mountdir};

/// What to do when only `stacko run` can mount.
const RUN_HINT: &str =
    "run commands in it with `stacko run NAME -- COMMAND...`, which mounts it in a user namespace";

impl Service {
    /// The stackpoint `name`, which must exist.
    pub(crate) fn existing_stackpoint(&self, name: &str) -> Result<StackpointRecord> {
        validate_name(name)?;
        self.store().stackpoint(name)?.ok_or_else(|| {
            StoreError::NotFound {
                what: "stackpoint",
                name: name.to_string(),
            }
            .into()
        })
    }

    /// The instance `id`, which must belong to `sp`.
    fn own_instance(&self, sp: &StackpointRecord, id: InstanceId) -> Result<InstanceRecord> {
        match self.store().instance(id)? {
            Some(i) if i.stackpoint == sp.name => Ok(i),
            Some(i) => Err(Error::Refused(format!(
                "instance {id} belongs to stackpoint {}, not {}",
                i.stackpoint, sp.name
            ))),
            None => Err(StoreError::NotFound {
                what: "instance",
                name: id.to_string(),
            }
            .into()),
        }
    }

    /// Checks that instances of `image` may be made: it exists and is not being edited.
    fn check_instance_image(&self, image: &str) -> Result<()> {
        validate_name(image)?;
        if self.store().image(image)?.is_none() {
            return Err(StoreError::NotFound {
                what: "image",
                name: image.to_string(),
            }
            .into());
        }
        if edit::is_editing(self.home(), image) {
            return Err(Error::Refused(format!(
                "image {image} is being edited: close-image {image} before making instances of it"
            )));
        }
        Ok(())
    }

    fn info(&self, rec: &StackpointRecord) -> Result<StackpointInfo> {
        let image = self
            .store()
            .instance(rec.current)?
            .map(|i| i.image)
            .unwrap_or_default();
        Ok(StackpointInfo {
            name: rec.name.clone(),
            dir: rec.dir_path(),
            current: rec.current,
            image,
            history: rec.history.clone(),
            cursor: rec.cursor,
            instances: rec.instances.clone(),
            backend: rec.backend.map(Backend::from),
            mounted: mounted_as(&rec.dir_path()).unwrap_or(None),
            created: rec.created,
        })
    }

    /// Makes the directories of a new instance `id` of `image`.
    fn make_instance_dirs(&self, id: InstanceId, image: &str) -> Result<()> {
        let root = instances::stack_root(self.store(), image)?;
        instances::ensure(self.home(), id, root.as_ref()).map(|_| ())
    }

    /// What mounting `inst` at `rec`'s directory takes (the instance's
    /// directories are made if missing).
    fn instance_spec(&self, rec: &StackpointRecord, inst: &InstanceRecord) -> Result<MountSpec> {
        let chain = self.store().image_chain(&inst.image)?;
        let root = chain
            .first()
            .map(|top| self.store().node(top.layer, stacko_store::ROOT_INO))
            .transpose()?
            .flatten();
        let (upper, work) = instances::ensure(self.home(), inst.id, root.as_ref())?;
        Ok(MountSpec {
            label: format!("stackpoint {}", rec.name),
            dir: rec.dir_path(),
            layers: chain.iter().map(|r| r.layer).collect(),
            upper,
            work,
            fuse_features: true,
        })
    }

    /// Mounts `rec`'s current instance with `engine`.
    fn mount_current(&self, rec: &StackpointRecord, engine: Backend) -> Result<()> {
        let inst = self.own_instance(rec, rec.current)?;
        let spec = self.instance_spec(rec, &inst)?;
        self.mount_spec(&spec, engine)
    }

    /// Unmounts `rec` if mounted, applies `change`, and mounts the result
    /// with the same engine (the old state again if `change` fails).
    fn switch(
        &self,
        rec: &StackpointRecord,
        what: &str,
        change: impl FnOnce() -> Result<StackpointRecord>,
    ) -> Result<StackpointRecord> {
        let dir = rec.dir_path();
        let was = mounted_as(&dir)?;
        if was.is_some() {
            self.unmount_dir(&dir, false).map_err(|e| {
                Error::Refused(format!(
                    "cannot {what} stackpoint {}: {e}; nothing was changed",
                    rec.name
                ))
            })?;
        }
        match change() {
            Ok(new) => {
                if let Some(engine) = was {
                    self.mount_current(&new, engine).map_err(|e| {
                        Error::Refused(format!(
                            "stackpoint {} now shows instance {}, but mounting it again failed: {e}",
                            new.name, new.current
                        ))
                    })?;
                }
                Ok(new)
            }
            Err(e) => {
                if let Some(engine) = was {
                    let _ = self.mount_current(rec, engine);
                }
                Err(e)
            }
        }
    }

    /// The engine for `rec`: the one asked for, else the one it remembers, else automatic.
    fn engine_for(&self, rec: &StackpointRecord, requested: Option<Backend>) -> Result<Backend> {
        let wanted = requested.or(rec.backend.map(Backend::from));
        let what = format!("stackpoint {}", rec.name);
        pick_backend(wanted, &what, &RUN_HINT.replace("NAME", &rec.name))
    }

    /// `new-stackpoint`.
    pub(crate) fn sp_new(&self, req: &NewStackpoint) -> Result<StackpointInfo> {
        let _g = self.state_lock();
        validate_name(&req.name)?;
        if self.store().stackpoint(&req.name)?.is_some() {
            return Err(StoreError::Exists {
                what: "stackpoint",
                name: req.name.clone(),
            }
            .into());
        }
        self.check_instance_image(&req.image)?;
        let others = self.store().stackpoints()?;
        let prepared = mountdir::prepare(
            self.home(),
            &req.name,
            req.dir.as_deref(),
            req.force,
            &others,
        )?;
        let made = (|| {
            let id = self.store().new_instance_id()?;
            self.make_instance_dirs(id, &req.image)?;
            let dir = prepared.dir.as_os_str().as_bytes();
            match self
                .store()
                .create_stackpoint(&req.name, dir, &req.image, id)
            {
                Ok((rec, _)) => Ok(rec),
                Err(e) => {
                    let _ = instances::remove(self.home(), id);
                    Err(e.into())
                }
            }
        })();
        match made {
            Ok(rec) => self.info(&rec),
            Err(e) => {
                prepared.undo();
                Err(e)
            }
        }
    }

    /// `delete-stackpoint`.
    pub(crate) fn sp_delete(&self, name: &str) -> Result<()> {
        let _g = self.state_lock();
        let rec = self.existing_stackpoint(name)?;
        let dir = rec.dir_path();
        match backend::mount_state(&dir)? {
            MountState::NotMounted => {}
            MountState::DeadFuse(_) => {
                backend::unmount(&dir, true)?;
            }
            MountState::Mounted(_) => self.unmount_dir(&dir, false).map_err(|e| {
                Error::Refused(format!(
                    "cannot delete stackpoint {name}: {e}; nothing was changed"
                ))
            })?,
        }
        let (_, gone) = self.store().delete_stackpoint(name)?;
        for inst in gone {
            instances::remove(self.home(), inst.id)?;
        }
        if dir == mountdir::default_dir(self.home(), name) {
            let _ = std::fs::remove_dir(&dir);
        }
        Ok(())
    }

    /// `new-stackpoint-instance`.
    pub(crate) fn sp_new_instance(&self, name: &str, image: &str) -> Result<InstanceInfo> {
        let _g = self.state_lock();
        self.existing_stackpoint(name)?;
        self.check_instance_image(image)?;
        let id = self.store().new_instance_id()?;
        self.make_instance_dirs(id, image)?;
        match self.store().add_instance(name, image, id) {
            Ok(inst) => Ok(InstanceInfo::new(inst, false)),
            Err(e) => {
                let _ = instances::remove(self.home(), id);
                Err(e.into())
            }
        }
    }

    /// `set-stackpoint-instance`.
    pub(crate) fn sp_set(&self, name: &str, id: InstanceId) -> Result<StackpointInfo> {
        let _g = self.state_lock();
        let rec = self.existing_stackpoint(name)?;
        self.own_instance(&rec, id)?;
        if rec.current == id {
            return self.info(&rec);
        }
        let new = self.switch(&rec, "switch", || Ok(self.store().set_current(name, id)?.0))?;
        self.info(&new)
    }

    /// `delete-stackpoint-instance`.
    pub(crate) fn sp_delete_instance(&self, name: &str, id: InstanceId) -> Result<()> {
        let _g = self.state_lock();
        self.existing_stackpoint(name)?;
        self.store().delete_instance(name, id)?;
        instances::remove(self.home(), id)
    }

    /// `cutover-stackpoint`.
    pub(crate) fn sp_cutover(
        &self,
        name: &str,
        image: &str,
        reuse: bool,
    ) -> Result<StackpointInfo> {
        let _g = self.state_lock();
        let rec = self.existing_stackpoint(name)?;
        self.check_instance_image(image)?;
        let mut existing = None;
        if reuse {
            for &id in rec.instances.iter().rev() {
                if self.store().instance(id)?.is_some_and(|i| i.image == image) {
                    existing = Some(id);
                    break;
                }
            }
        }
        let (target, fresh) = match existing {
            Some(id) => (Switch::Existing(id), None),
            None => {
                let id = self.store().new_instance_id()?;
                self.make_instance_dirs(id, image)?;
                (
                    Switch::New {
                        id,
                        image: image.to_string(),
                    },
                    Some(id),
                )
            }
        };
        let result = self.switch(&rec, "cut over", || {
            Ok(self.store().cutover(name, &target)?.0)
        });
        if let (Err(_), Some(id)) = (&result, fresh) {
            if self.store().instance(id)?.is_none() {
                let _ = instances::remove(self.home(), id);
            }
        }
        self.info(&result?)
    }

    /// `fallback-stackpoint`.
    pub(crate) fn sp_fallback(&self, name: &str, to: Option<InstanceId>) -> Result<StackpointInfo> {
        let _g = self.state_lock();
        let rec = self.existing_stackpoint(name)?;
        match to {
            Some(id) => {
                self.own_instance(&rec, id)?;
            }
            // Checked before unmounting: fails when there is nothing to fall back to.
            None => {
                rec.clone().step_back()?;
            }
        }
        let new = self.switch(&rec, "fall back", || Ok(self.store().fallback(name, to)?.0))?;
        self.info(&new)
    }

    /// `mount-stackpoint`.
    pub(crate) fn sp_mount(&self, name: &str, backend: Option<Backend>) -> Result<StackpointInfo> {
        let _g = self.state_lock();
        let mut rec = self.existing_stackpoint(name)?;
        if mounted_as(&rec.dir_path())?.is_none() {
            let engine = self.engine_for(&rec, backend)?;
            self.mount_current(&rec, engine)?;
        }
        if let Some(b) = backend {
            if rec.backend != Some(b.into()) {
                rec = self.store().set_stackpoint_backend(name, Some(b.into()))?;
            }
        }
        self.info(&rec)
    }

    /// `umount-stackpoint`.
    pub(crate) fn sp_umount(&self, name: &str, lazy: bool) -> Result<()> {
        let _g = self.state_lock();
        let rec = self.existing_stackpoint(name)?;
        let dir = rec.dir_path();
        match backend::mount_state(&dir)? {
            MountState::NotMounted => Err(Error::Refused(format!(
                "stackpoint {name} is not mounted ({})",
                dir.display()
            ))),
            MountState::DeadFuse(_) => Ok(backend::unmount(&dir, true).map(|_| ())?),
            MountState::Mounted(_) => self.unmount_dir(&dir, lazy),
        }
    }

    /// `is-stackpoint-mounted`.
    pub(crate) fn sp_is_mounted(&self, name: &str) -> Result<bool> {
        let rec = self.existing_stackpoint(name)?;
        Ok(mounted_as(&rec.dir_path())?.is_some())
    }

    /// `list-stackpoints`.
    pub(crate) fn sp_list(&self) -> Result<Vec<StackpointInfo>> {
        self.store()
            .stackpoints()?
            .iter()
            .map(|r| self.info(r))
            .collect()
    }

    /// `list-instances`.
    pub(crate) fn sp_list_instances(&self, name: Option<&str>) -> Result<Vec<InstanceInfo>> {
        let sps: Vec<StackpointRecord> = match name {
            Some(n) => vec![self.existing_stackpoint(n)?],
            None => self.store().stackpoints()?,
        };
        let current: std::collections::HashSet<InstanceId> =
            sps.iter().map(|s| s.current).collect();
        let mut out: Vec<InstanceInfo> = match name {
            Some(_) => sps[0]
                .instances
                .iter()
                .filter_map(|&id| self.store().instance(id).transpose())
                .map(|r| r.map(|r| InstanceInfo::new(r.clone(), current.contains(&r.id))))
                .collect::<std::result::Result<_, _>>()?,
            None => self
                .store()
                .instances()?
                .into_iter()
                .map(|r| {
                    let cur = current.contains(&r.id);
                    InstanceInfo::new(r, cur)
                })
                .collect(),
        };
        out.sort_by_key(|i| i.id);
        Ok(out)
    }

    /// For `stacko run`: the checkouts and directories of the current instance.
    pub(crate) fn sp_prepare_run(&self, name: &str) -> Result<RunPlan> {
        let _g = self.state_lock();
        let rec = self.existing_stackpoint(name)?;
        let inst = self.own_instance(&rec, rec.current)?;
        let spec = self.instance_spec(&rec, &inst)?;
        clear_mount_dir(&spec.dir, || {
            Error::Refused(format!(
                "stackpoint {name} is mounted at {}: run the command there directly",
                spec.dir.display()
            ))
        })?;
        crate::fsutil::make_dir(&spec.dir, 0o755)?;
        prepare_upper_for_kernel(&self.shared_store(), &spec)?;
        let lowers: Vec<PathBuf> = checkouts::ensure_all(self, &spec.layers)?;
        Ok(RunPlan {
            name: rec.name.clone(),
            dir: spec.dir,
            lowers,
            upper: spec.upper,
            work: spec.work,
        })
    }
}

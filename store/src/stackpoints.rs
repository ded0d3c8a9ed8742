//! Stackpoints and instances: their records, and every change of them as
//! one sled transaction.
//!
//! An *instance* is a thin copy-on-write layer over an image stack: a
//! record here (which image, which stackpoint) plus an upper and a work
//! directory that the stacko crate makes beside the store. A *stackpoint*
//! is a named mount directory showing one of its instances, the current
//! one. Its history is a list of instance ids with a cursor, like Nix
//! generations: a cutover (or set) appends and moves the cursor to the end,
//! a fallback moves the cursor one step back without forgetting what came
//! after it.
//!
//! Trees (keys built by hand, values are [`crate::records`] encodings):
//!
//! | tree          | key                       | value                |
//! |---------------|---------------------------|----------------------|
//! | `stackpoints` | name (UTF-8)              | [`StackpointRecord`] |
//! | `instances`   | instance id, u64 BE       | [`InstanceRecord`]   |
//! | `image_users` | image name (UTF-8)        | [`ImageUsersRecord`] |
//!
//! `image_users` exists so that "is this image used by an instance" can be
//! answered inside a transaction (sled transactions cannot scan), which is
//! how `delete-image` refuses an image in use atomically with the delete.

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;

use crate::error::{Error, Result};
use crate::records::{decode, encode, validate_name, Timestamp};
use crate::store::{abort, tx_image, Store};

/// Identifies an instance (never 0, never reused while the store lives).
pub type InstanceId = u64;

/// Which engine a stackpoint was last asked to mount with (`--backend`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountBackend {
    /// Kernel overlayfs over layer checkouts.
    Kernel,
    /// The stacko FUSE filesystem.
    Fuse,
}

/// A named mount directory and the instances it can show.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StackpointRecord {
    /// The stackpoint's name.
    pub name: String,
    /// The absolute mount directory, as raw bytes.
    pub dir: Vec<u8>,
    /// The instance shown (always `history[cursor]`).
    pub current: InstanceId,
    /// Every instance of this stackpoint, in creation order.
    pub instances: Vec<InstanceId>,
    /// Instances made current, oldest first; each id at most once.
    pub history: Vec<InstanceId>,
    /// Index of the current instance in `history`.
    pub cursor: u32,
    /// The backend asked for by the last `mount-stackpoint --backend`, if any.
    pub backend: Option<MountBackend>,
    /// When it was made.
    pub created: Timestamp,
}

/// One instance: a copy-on-write layer over an image, owned by a stackpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct InstanceRecord {
    /// Its id.
    pub id: InstanceId,
    /// The stackpoint it belongs to.
    pub stackpoint: String,
    /// The image it shows.
    pub image: String,
    /// When it was made.
    pub created: Timestamp,
}

/// The instances that use one image (sorted ids).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageUsersRecord {
    /// Instance ids, ascending.
    pub instances: Vec<InstanceId>,
}

/// What a cutover switches to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Switch {
    /// A new instance with this (freshly allocated) id, of this image.
    New {
        /// The id from [`Store::new_instance_id`].
        id: InstanceId,
        /// The image.
        image: String,
    },
    /// An instance the stackpoint already has.
    Existing(InstanceId),
}

/// `instances` tree key.
pub fn instance_key(id: InstanceId) -> [u8; 8] {
    id.to_be_bytes()
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<Error>>;

fn stackpoint_not_found(name: &str) -> Error {
    Error::NotFound {
        what: "stackpoint",
        name: name.to_string(),
    }
}

fn instance_not_found(id: InstanceId) -> Error {
    Error::NotFound {
        what: "instance",
        name: id.to_string(),
    }
}

impl StackpointRecord {
    /// Makes `id` current: moves it to the end of the history (an id is
    /// there at most once) and the cursor with it.
    pub fn make_current(&mut self, id: InstanceId) {
        self.history.retain(|&h| h != id);
        self.history.push(id);
        self.cursor = (self.history.len() - 1) as u32;
        self.current = id;
    }

    /// Moves the cursor one step back in the history.
    pub fn step_back(&mut self) -> Result<InstanceId> {
        if self.cursor == 0 {
            return Err(Error::Refused(format!(
                "stackpoint {} has no earlier instance to fall back to (current: instance {}); \
                 use --to INSTANCE or set-stackpoint-instance",
                self.name, self.current
            )));
        }
        self.cursor -= 1;
        self.current = self.history[self.cursor as usize];
        Ok(self.current)
    }

    /// Moves the cursor to `id` if it is in the history (keeping the
    /// history), else makes it current as [`Self::make_current`] does.
    pub fn go_to(&mut self, id: InstanceId) {
        match self.history.iter().position(|&h| h == id) {
            Some(i) => {
                self.cursor = i as u32;
                self.current = id;
            }
            None => self.make_current(id),
        }
    }

    /// Forgets instance `id` (not the current one): removes it from the
    /// instance list and the history, keeping the cursor on the current one.
    pub fn forget(&mut self, id: InstanceId) {
        self.instances.retain(|&i| i != id);
        self.history.retain(|&h| h != id);
        self.cursor = self
            .history
            .iter()
            .position(|&h| h == self.current)
            .unwrap_or(0) as u32;
    }

    /// The mount directory as a path.
    pub fn dir_path(&self) -> std::path::PathBuf {
        use std::os::unix::ffi::OsStrExt;
        std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&self.dir))
    }
}

fn tx_stackpoint(t: &TransactionalTree, name: &str) -> TxResult<Option<StackpointRecord>> {
    match t.get(name.as_bytes())? {
        None => Ok(None),
        Some(v) => decode("stackpoints", &v).map(Some).or_else(abort),
    }
}

fn tx_existing_stackpoint(t: &TransactionalTree, name: &str) -> TxResult<StackpointRecord> {
    match tx_stackpoint(t, name)? {
        Some(r) => Ok(r),
        None => abort(stackpoint_not_found(name)),
    }
}

fn tx_instance(t: &TransactionalTree, id: InstanceId) -> TxResult<Option<InstanceRecord>> {
    match t.get(instance_key(id))? {
        None => Ok(None),
        Some(v) => decode("instances", &v).map(Some).or_else(abort),
    }
}

fn tx_users(t: &TransactionalTree, image: &str) -> TxResult<ImageUsersRecord> {
    match t.get(image.as_bytes())? {
        None => Ok(ImageUsersRecord::default()),
        Some(v) => decode("image_users", &v).or_else(abort),
    }
}

fn tx_put_users(t: &TransactionalTree, image: &str, users: &ImageUsersRecord) -> TxResult<()> {
    if users.instances.is_empty() {
        t.remove(image.as_bytes())?;
    } else {
        t.insert(image.as_bytes(), encode(users))?;
    }
    Ok(())
}

/// The instance `id`, which must belong to stackpoint `sp`.
fn tx_own_instance(
    t: &TransactionalTree,
    sp: &StackpointRecord,
    id: InstanceId,
) -> TxResult<InstanceRecord> {
    match tx_instance(t, id)? {
        Some(r) if r.stackpoint == sp.name => Ok(r),
        Some(r) => abort(Error::Refused(format!(
            "instance {id} belongs to stackpoint {}, not {}",
            r.stackpoint, sp.name
        ))),
        None => abort(instance_not_found(id)),
    }
}

/// Inside a transaction: refuses when an instance uses `image`
/// ("image X is used by instance N of stackpoint S").
pub(crate) fn tx_refuse_if_used(
    users: &TransactionalTree,
    instances: &TransactionalTree,
    image: &str,
) -> TxResult<()> {
    let u = tx_users(users, image)?;
    let Some(&first) = u.instances.first() else {
        return Ok(());
    };
    let sp = tx_instance(instances, first)?
        .map(|r| r.stackpoint)
        .unwrap_or_else(|| "?".into());
    let more = match u.instances.len() {
        1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    abort(Error::Refused(format!(
        "image {image} is used by instance {first} of stackpoint {sp}{more}; \
         delete those instances (or their stackpoints) first"
    )))
}

/// Inside a transaction: writes a new instance record of `image` (which must
/// exist) and registers it as a user of the image.
fn tx_add_instance(
    images: &TransactionalTree,
    instances: &TransactionalTree,
    users: &TransactionalTree,
    rec: &InstanceRecord,
) -> TxResult<()> {
    if tx_image(images, &rec.image)?.is_none() {
        return abort(Error::NotFound {
            what: "image",
            name: rec.image.clone(),
        });
    }
    if tx_instance(instances, rec.id)?.is_some() {
        return abort(Error::Exists {
            what: "instance",
            name: rec.id.to_string(),
        });
    }
    instances.insert(&instance_key(rec.id), encode(rec))?;
    let mut u = tx_users(users, &rec.image)?;
    if let Err(pos) = u.instances.binary_search(&rec.id) {
        u.instances.insert(pos, rec.id);
    }
    tx_put_users(users, &rec.image, &u)
}

/// Inside a transaction: removes an instance record and its image-user row.
fn tx_remove_instance(
    instances: &TransactionalTree,
    users: &TransactionalTree,
    rec: &InstanceRecord,
) -> TxResult<()> {
    instances.remove(&instance_key(rec.id))?;
    let mut u = tx_users(users, &rec.image)?;
    u.instances.retain(|&i| i != rec.id);
    tx_put_users(users, &rec.image, &u)
}

impl Store {
    /// A fresh instance id (never 0). Allocating one changes no record: an
    /// id that is never committed is simply skipped.
    pub fn new_instance_id(&self) -> Result<InstanceId> {
        loop {
            let id = self.db.generate_id()?;
            if id != 0 {
                return Ok(id);
            }
        }
    }

    /// One stackpoint by name.
    pub fn stackpoint(&self, name: &str) -> Result<Option<StackpointRecord>> {
        match self.stackpoints.get(name.as_bytes())? {
            None => Ok(None),
            Some(v) => decode("stackpoints", &v).map(Some),
        }
    }

    /// All stackpoints, sorted by name.
    pub fn stackpoints(&self) -> Result<Vec<StackpointRecord>> {
        self.stackpoints
            .iter()
            .values()
            .map(|v| decode("stackpoints", &v?))
            .collect()
    }

    /// One instance by id.
    pub fn instance(&self, id: InstanceId) -> Result<Option<InstanceRecord>> {
        match self.instances.get(instance_key(id))? {
            None => Ok(None),
            Some(v) => decode("instances", &v).map(Some),
        }
    }

    /// All instances, by id.
    pub fn instances(&self) -> Result<Vec<InstanceRecord>> {
        self.instances
            .iter()
            .values()
            .map(|v| decode("instances", &v?))
            .collect()
    }

    /// The ids of the instances that use `image`.
    pub fn image_users(&self, image: &str) -> Result<Vec<InstanceId>> {
        match self.image_users.get(image.as_bytes())? {
            None => Ok(Vec::new()),
            Some(v) => Ok(decode::<ImageUsersRecord>("image_users", &v)?.instances),
        }
    }

    /// In one transaction: stackpoint `name` at `dir` with its first
    /// instance `id` of `image`, current.
    pub fn create_stackpoint(
        &self,
        name: &str,
        dir: &[u8],
        image: &str,
        id: InstanceId,
    ) -> Result<(StackpointRecord, InstanceRecord)> {
        validate_name(name)?;
        validate_name(image)?;
        let now = Timestamp::now();
        let inst = InstanceRecord {
            id,
            stackpoint: name.to_string(),
            image: image.to_string(),
            created: now,
        };
        let sp = StackpointRecord {
            name: name.to_string(),
            dir: dir.to_vec(),
            current: id,
            instances: vec![id],
            history: vec![id],
            cursor: 0,
            backend: None,
            created: now,
        };
        let trees = (
            &self.images,
            &self.stackpoints,
            &self.instances,
            &self.image_users,
        );
        trees.transaction(|(images, sps, instances, users)| {
            if tx_stackpoint(sps, name)?.is_some() {
                return abort(Error::Exists {
                    what: "stackpoint",
                    name: name.to_string(),
                });
            }
            tx_add_instance(images, instances, users, &inst)?;
            sps.insert(name.as_bytes(), encode(&sp))?;
            Ok(())
        })?;
        self.flush()?;
        Ok((sp, inst))
    }

    /// In one transaction: a new instance `id` of `image` for stackpoint `sp`
    /// (not made current).
    pub fn add_instance(&self, sp: &str, image: &str, id: InstanceId) -> Result<InstanceRecord> {
        validate_name(sp)?;
        validate_name(image)?;
        let inst = InstanceRecord {
            id,
            stackpoint: sp.to_string(),
            image: image.to_string(),
            created: Timestamp::now(),
        };
        let trees = (
            &self.images,
            &self.stackpoints,
            &self.instances,
            &self.image_users,
        );
        trees.transaction(|(images, sps, instances, users)| {
            let mut rec = tx_existing_stackpoint(sps, sp)?;
            tx_add_instance(images, instances, users, &inst)?;
            rec.instances.push(id);
            sps.insert(sp.as_bytes(), encode(&rec))?;
            Ok(())
        })?;
        self.flush()?;
        Ok(inst)
    }

    /// In one transaction: switches stackpoint `sp` to a new or existing
    /// instance and appends it to the history. Returns the stackpoint and
    /// the instance now current.
    pub fn cutover(&self, sp: &str, to: &Switch) -> Result<(StackpointRecord, InstanceRecord)> {
        validate_name(sp)?;
        let created = Timestamp::now();
        let trees = (
            &self.images,
            &self.stackpoints,
            &self.instances,
            &self.image_users,
        );
        let out = trees.transaction(|(images, sps, instances, users)| {
            let mut rec = tx_existing_stackpoint(sps, sp)?;
            let inst = match to {
                Switch::New { id, image } => {
                    let inst = InstanceRecord {
                        id: *id,
                        stackpoint: sp.to_string(),
                        image: image.clone(),
                        created,
                    };
                    tx_add_instance(images, instances, users, &inst)?;
                    rec.instances.push(*id);
                    inst
                }
                Switch::Existing(id) => tx_own_instance(instances, &rec, *id)?,
            };
            rec.make_current(inst.id);
            sps.insert(sp.as_bytes(), encode(&rec))?;
            Ok((rec, inst))
        })?;
        self.flush()?;
        Ok(out)
    }

    /// In one transaction: moves the history cursor of `sp` one step back,
    /// or to instance `to`.
    pub fn fallback(
        &self,
        sp: &str,
        to: Option<InstanceId>,
    ) -> Result<(StackpointRecord, InstanceRecord)> {
        validate_name(sp)?;
        let out = (&self.stackpoints, &self.instances).transaction(|(sps, instances)| {
            let mut rec = tx_existing_stackpoint(sps, sp)?;
            let id = match to {
                Some(id) => {
                    tx_own_instance(instances, &rec, id)?;
                    rec.go_to(id);
                    id
                }
                None => rec.step_back().or_else(abort)?,
            };
            let inst = tx_own_instance(instances, &rec, id)?;
            sps.insert(sp.as_bytes(), encode(&rec))?;
            Ok((rec, inst))
        })?;
        self.flush()?;
        Ok(out)
    }

    /// In one transaction: makes instance `id` of `sp` current (appended to the history).
    pub fn set_current(
        &self,
        sp: &str,
        id: InstanceId,
    ) -> Result<(StackpointRecord, InstanceRecord)> {
        self.cutover(sp, &Switch::Existing(id))
    }

    /// In one transaction: deletes instance `id` of `sp`; refused for the current one.
    pub fn delete_instance(&self, sp: &str, id: InstanceId) -> Result<InstanceRecord> {
        validate_name(sp)?;
        let trees = (&self.stackpoints, &self.instances, &self.image_users);
        let inst = trees.transaction(|(sps, instances, users)| {
            let mut rec = tx_existing_stackpoint(sps, sp)?;
            let inst = tx_own_instance(instances, &rec, id)?;
            if rec.current == id {
                return abort(Error::Refused(format!(
                    "instance {id} is the current instance of stackpoint {sp}; \
                     cut over or fall back to another one first"
                )));
            }
            tx_remove_instance(instances, users, &inst)?;
            rec.forget(id);
            sps.insert(sp.as_bytes(), encode(&rec))?;
            Ok(inst)
        })?;
        self.flush()?;
        Ok(inst)
    }

    /// In one transaction: deletes stackpoint `sp` and all its instances;
    /// returns what was deleted.
    pub fn delete_stackpoint(&self, sp: &str) -> Result<(StackpointRecord, Vec<InstanceRecord>)> {
        validate_name(sp)?;
        let trees = (&self.stackpoints, &self.instances, &self.image_users);
        let out = trees.transaction(|(sps, instances, users)| {
            let rec = tx_existing_stackpoint(sps, sp)?;
            let mut gone = Vec::new();
            for &id in &rec.instances {
                if let Some(inst) = tx_instance(instances, id)? {
                    tx_remove_instance(instances, users, &inst)?;
                    gone.push(inst);
                }
            }
            sps.remove(sp.as_bytes())?;
            Ok((rec, gone))
        })?;
        self.flush()?;
        Ok(out)
    }

    /// In one transaction: records the backend `sp` should be mounted with.
    pub fn set_stackpoint_backend(
        &self,
        sp: &str,
        backend: Option<MountBackend>,
    ) -> Result<StackpointRecord> {
        validate_name(sp)?;
        let rec = self.stackpoints.transaction(|sps| {
            let mut rec = tx_existing_stackpoint(sps, sp)?;
            rec.backend = backend;
            sps.insert(sp.as_bytes(), encode(&rec))?;
            Ok(rec)
        })?;
        self.flush()?;
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp() -> StackpointRecord {
        StackpointRecord {
            name: "sp".into(),
            dir: b"/mnt/sp".to_vec(),
            current: 7,
            instances: vec![5, 7],
            history: vec![5, 7],
            cursor: 1,
            backend: Some(MountBackend::Fuse),
            created: Timestamp {
                sec: 1_700_000_000,
                nsec: 5,
            },
        }
    }

    #[test]
    fn golden_stackpoint_record() {
        let bytes = encode(&sp());
        assert_eq!(
            bytes,
            [
                &[1u8, 2, b's', b'p', 7][..],
                b"/mnt/sp",
                &[7, 2, 5, 7, 2, 5, 7, 1, 1, 1, 0x80, 0xc4, 0x9f, 0xd5, 0x0c, 5][..],
            ]
            .concat()
        );
        assert_eq!(
            decode::<StackpointRecord>("stackpoints", &bytes).unwrap(),
            sp()
        );
    }

    #[test]
    fn golden_instance_and_users_records() {
        let rec = InstanceRecord {
            id: 300,
            stackpoint: "s".into(),
            image: "im".into(),
            created: Timestamp { sec: -1, nsec: 0 },
        };
        let bytes = encode(&rec);
        assert_eq!(bytes, [1, 0xac, 0x02, 1, b's', 2, b'i', b'm', 1, 0]);
        assert_eq!(decode::<InstanceRecord>("instances", &bytes).unwrap(), rec);
        let users = ImageUsersRecord {
            instances: vec![1, 300],
        };
        assert_eq!(encode(&users), [1, 2, 1, 0xac, 0x02]);
        assert_eq!(instance_key(0x0102), [0, 0, 0, 0, 0, 0, 1, 2]);
    }

    #[test]
    fn trailing_bytes_and_other_versions_are_refused() {
        let mut bytes = encode(&sp());
        bytes.push(0);
        assert!(decode::<StackpointRecord>("stackpoints", &bytes).is_err());
        let mut bytes = encode(&sp());
        bytes[0] = 2;
        assert!(decode::<StackpointRecord>("stackpoints", &bytes).is_err());
    }

    #[test]
    fn changes_are_transactions_that_refuse_bad_requests() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("home")).unwrap();
        store.create_image("a", None).unwrap();
        store.create_image("b", None).unwrap();
        let i1 = store.new_instance_id().unwrap();
        let (rec, inst) = store.create_stackpoint("sp", b"/x", "a", i1).unwrap();
        assert_eq!((rec.current, inst.image.as_str()), (i1, "a"));
        // Missing image: nothing written, the id is not used.
        let bad = store.new_instance_id().unwrap();
        assert!(matches!(
            store.create_stackpoint("sq", b"/y", "nope", bad),
            Err(Error::NotFound { .. })
        ));
        assert!(store.stackpoint("sq").unwrap().is_none());
        assert!(store.instance(bad).unwrap().is_none());
        assert!(matches!(
            store.create_stackpoint("sp", b"/y", "a", bad),
            Err(Error::Exists { .. })
        ));
        // An image in use cannot be deleted.
        let e = store.delete_image("a").unwrap_err();
        assert_eq!(e.to_string(), format!("image a is used by instance {i1} of stackpoint sp; delete those instances (or their stackpoints) first"));
        assert!(store.image("a").unwrap().is_some());
        // Cutover, fallback, set, delete.
        let i2 = store.new_instance_id().unwrap();
        let (rec, _) = store
            .cutover(
                "sp",
                &Switch::New {
                    id: i2,
                    image: "b".into(),
                },
            )
            .unwrap();
        assert_eq!((rec.current, rec.history.clone()), (i2, vec![i1, i2]));
        let e = store.delete_instance("sp", i2).unwrap_err();
        assert!(e.to_string().contains("current instance"), "{e}");
        let (rec, inst) = store.fallback("sp", None).unwrap();
        assert_eq!((rec.current, inst.id), (i1, i1));
        assert!(store.fallback("sp", None).is_err());
        assert_eq!(store.stackpoint("sp").unwrap().unwrap().current, i1);
        store.delete_instance("sp", i2).unwrap();
        assert_eq!(store.image_users("b").unwrap(), Vec::<InstanceId>::new());
        store.delete_image("b").unwrap();
        assert!(matches!(
            store.set_current("sp", i2),
            Err(Error::NotFound { .. })
        ));
        let (rec, gone) = store.delete_stackpoint("sp").unwrap();
        assert_eq!((rec.name.as_str(), gone.len()), ("sp", 1));
        store.delete_image("a").unwrap();
        assert!(store.instances().unwrap().is_empty());
    }

    #[test]
    fn history_is_a_list_with_a_cursor() {
        let mut r = sp();
        r.make_current(9);
        assert_eq!(
            (r.history.clone(), r.cursor, r.current),
            (vec![5, 7, 9], 2, 9)
        );
        assert_eq!(r.step_back().unwrap(), 7);
        assert_eq!(r.step_back().unwrap(), 5);
        assert!(r.step_back().is_err());
        assert_eq!((r.cursor, r.current), (0, 5));
        // Going to an instance in the history keeps the history.
        r.go_to(9);
        assert_eq!((r.history.clone(), r.cursor), (vec![5, 7, 9], 2));
        // Making an old one current moves it to the end, once.
        r.make_current(5);
        assert_eq!(
            (r.history.clone(), r.cursor, r.current),
            (vec![7, 9, 5], 2, 5)
        );
        r.instances = vec![5, 7, 9];
        r.forget(9);
        assert_eq!((r.history.clone(), r.cursor, r.current), (vec![7, 5], 1, 5));
        assert_eq!(r.instances, vec![5, 7]);
    }
}

//! What the stackpoint and instance commands print.
//!
//! # JSON
//!
//! `list-stackpoints --json`: an array sorted by name of objects with
//! `name`, `dir`, `current` (instance id), `image` (of the current
//! instance), `history` (instance ids, oldest first), `cursor` (index of
//! the current one in `history`), `instances` (all ids), `backend`
//! (`"kernel"`, `"fuse"` or null: the one remembered by `mount-stackpoint
//! --backend`), `mounted` (`"kernel"`, `"fuse"` or null), `created`,
//! `created_unix`.
//!
//! `list-instances --json`: an array sorted by id of objects with `id`,
//! `stackpoint`, `image`, `current` (bool), `created`, `created_unix`.

use serde::Serialize;
use stacko::{Backend, InstanceInfo, StackpointInfo};

use crate::output::{local_time, table};

fn backend_name(b: Option<Backend>) -> Option<&'static str> {
    b.map(Backend::name)
}

/// The `list-stackpoints` table.
pub fn stackpoints_table(sps: &[StackpointInfo]) -> String {
    let rows: Vec<Vec<String>> = sps
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.current.to_string(),
                s.image.clone(),
                backend_name(s.mounted).unwrap_or("-").to_string(),
                s.dir.display().to_string(),
            ]
        })
        .collect();
    table(
        &["NAME", "INSTANCE", "IMAGE", "MOUNTED", "DIR"],
        &rows,
        &[1],
    )
}

/// One stackpoint in JSON.
#[derive(Serialize)]
pub struct StackpointJson {
    name: String,
    dir: String,
    current: u64,
    image: String,
    history: Vec<u64>,
    cursor: u32,
    instances: Vec<u64>,
    backend: Option<&'static str>,
    mounted: Option<&'static str>,
    created: String,
    created_unix: i64,
}

/// The `list-stackpoints --json` array.
pub fn stackpoints_json(sps: &[StackpointInfo]) -> Vec<StackpointJson> {
    sps.iter()
        .map(|s| StackpointJson {
            name: s.name.clone(),
            dir: s.dir.display().to_string(),
            current: s.current,
            image: s.image.clone(),
            history: s.history.clone(),
            cursor: s.cursor,
            instances: s.instances.clone(),
            backend: backend_name(s.backend),
            mounted: backend_name(s.mounted),
            created: local_time(s.created).1,
            created_unix: s.created.sec,
        })
        .collect()
}

/// The `list-instances` table.
pub fn instances_table(insts: &[InstanceInfo]) -> String {
    let rows: Vec<Vec<String>> = insts
        .iter()
        .map(|i| {
            vec![
                i.id.to_string(),
                i.stackpoint.clone(),
                i.image.clone(),
                if i.current { "*".into() } else { String::new() },
                local_time(i.created).0,
            ]
        })
        .collect();
    table(
        &["ID", "STACKPOINT", "IMAGE", "CURRENT", "CREATED"],
        &rows,
        &[0],
    )
}

/// One instance in JSON.
#[derive(Serialize)]
pub struct InstanceJson {
    id: u64,
    stackpoint: String,
    image: String,
    current: bool,
    created: String,
    created_unix: i64,
}

/// The `list-instances --json` array.
pub fn instances_json(insts: &[InstanceInfo]) -> Vec<InstanceJson> {
    insts
        .iter()
        .map(|i| InstanceJson {
            id: i.id,
            stackpoint: i.stackpoint.clone(),
            image: i.image.clone(),
            current: i.current,
            created: local_time(i.created).1,
            created_unix: i.created.sec,
        })
        .collect()
}

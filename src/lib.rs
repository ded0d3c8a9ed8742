//! stacko: images, instances and stackpoints.
//!
//! Every command goes through one API, the [`Api`] trait. [`Service`]
//! implements it over an open store; [`Client`] implements it by asking the
//! daemon ([`daemon`]), the one process that opens the store. The CLI calls
//! [`connect`] and nothing else.
//!
//! Modules: [`api`] (the trait and its types), [`service`] and [`images`]
//! (the commands over a store), [`stackpoints`], [`instances`], [`edit`]
//! (stackpoints, instances, image editing), [`mounts`], [`checkouts`],
//! [`mountdir`] and [`backend`] (mounting), [`run`] (`stacko run`),
//! [`storelower`] (store layers as FUSE lower layers), [`fsutil`], [`protocol`] (messages and framing),
//! [`channel`] and [`fdpass`] (the socket), [`client`], [`daemon`] and
//! [`session`] (the two ends), [`home`] (where state lives), [`buildid`],
//! [`log`], [`error`].

#![warn(missing_docs)]

pub mod api;
pub mod backend;
pub mod buildid;
pub mod channel;
pub mod checkouts;
pub mod client;
pub mod daemon;
pub mod edit;
pub mod error;
pub mod fdpass;
pub mod fsutil;
pub mod home;
pub mod images;
pub mod instances;
pub mod log;
pub mod mountdir;
pub mod mounts;
pub mod protocol;
pub mod run;
pub mod service;
pub mod session;
pub mod stackpoints;
pub mod storelower;

use std::path::Path;

pub use api::{
    Api, Backend, Dest, ExportRequest, ImageInfo, ImportRequest, InstanceInfo, NewStackpoint,
    RunPlan, Source, StackpointInfo,
};
pub use client::Client;
pub use error::{Error, ErrorKind, Result};
pub use service::Service;
pub use stacko_store::progress::{NoProgress, Progress};
pub use stacko_store::{ImageState, Timestamp};

/// Connects to the daemon serving `home`, starting it if needed.
pub fn connect(home: &Path) -> Result<Client> {
    Client::connect(home)
}

//! Helpers shared by the tar tests: building archives entry by entry (with
//! PAX times and xattrs, or with raw headers for hostile input), and a
//! snapshot of a layer through the read API for comparing trees.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use stacko_store::ingest::LayerSummary;
use stacko_store::progress::NoProgress;
use stacko_store::store::StoreOptions;
use stacko_store::tar::{export_tar, import_tar};
use stacko_store::{
    Content, DirEntry, ImageState, Ino, LayerId, NodeKind, Store, Timestamp, Xattr, ROOT_INO,
};

/// One archive entry to write.
#[derive(Clone)]
pub struct E {
    pub path: Vec<u8>,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// PAX `mtime` value (None: header seconds only).
    pub mtime: Option<String>,
    pub header_mtime: u64,
    pub atime: Option<String>,
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub data: Vec<u8>,
    pub link: Option<Vec<u8>>,
    pub dev: (u32, u32),
}

impl E {
    fn new(kind: tar::EntryType, path: impl AsRef<[u8]>) -> E {
        E {
            path: path.as_ref().to_vec(),
            kind,
            mode: 0o644,
            uid: 1000,
            gid: 100,
            mtime: Some("1700000000.123456789".into()),
            header_mtime: 1_700_000_000,
            atime: None,
            xattrs: Vec::new(),
            data: Vec::new(),
            link: None,
            dev: (0, 0),
        }
    }

    pub fn file(path: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> E {
        E {
            data: data.as_ref().to_vec(),
            ..E::new(tar::EntryType::Regular, path)
        }
    }

    pub fn dir(path: impl AsRef<[u8]>) -> E {
        E {
            mode: 0o755,
            ..E::new(tar::EntryType::Directory, path)
        }
    }

    pub fn symlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> E {
        E {
            mode: 0o777,
            link: Some(target.as_ref().to_vec()),
            ..E::new(tar::EntryType::Symlink, path)
        }
    }

    pub fn hardlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> E {
        E {
            link: Some(target.as_ref().to_vec()),
            ..E::new(tar::EntryType::Link, path)
        }
    }

    pub fn fifo(path: impl AsRef<[u8]>) -> E {
        E::new(tar::EntryType::Fifo, path)
    }

    pub fn chardev(path: impl AsRef<[u8]>, major: u32, minor: u32) -> E {
        E {
            dev: (major, minor),
            ..E::new(tar::EntryType::Char, path)
        }
    }

    pub fn mode(mut self, mode: u32) -> E {
        self.mode = mode;
        self
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> E {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(mut self, pax: &str) -> E {
        self.mtime = Some(pax.into());
        self
    }

    pub fn atime(mut self, pax: &str) -> E {
        self.atime = Some(pax.into());
        self
    }

    pub fn xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> E {
        self.xattrs.push((name.into(), value.as_ref().to_vec()));
        self
    }
}

fn path_of(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// Writes entries with the tar crate (GNU headers, PAX records, long names).
pub fn archive(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(m) = &e.mtime {
            pax.push(("mtime".into(), m.clone().into_bytes()));
        }
        if let Some(a) = &e.atime {
            pax.push(("atime".into(), a.clone().into_bytes()));
        }
        for (k, v) in &e.xattrs {
            // GNU tar's escaping of the name (a PAX key ends at the first `=`).
            let k = k.replace('%', "%25").replace('=', "%3D");
            pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
        }
        b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.header_mtime);
        h.set_size(e.data.len() as u64);
        if e.kind == tar::EntryType::Char || e.kind == tar::EntryType::Block {
            h.set_device_major(e.dev.0).unwrap();
            h.set_device_minor(e.dev.1).unwrap();
        }
        match &e.link {
            Some(target) => b
                .append_link(&mut h, path_of(&e.path), path_of(target))
                .unwrap(),
            None => b
                .append_data(&mut h, path_of(&e.path), e.data.as_slice())
                .unwrap(),
        }
    }
    b.into_inner().unwrap()
}

/// An entry with its name written verbatim (no checks): for hostile archives.
pub fn raw_entry(out: &mut Vec<u8>, name: &[u8], kind: tar::EntryType, data: &[u8], link: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(data.len() as u64);
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// The end-of-archive marker.
pub fn end(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0u8; 1024]);
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// Opens (or reopens) a store. sled releases its lock from a background
/// thread shortly after the previous handle is dropped, so wait for it.
pub fn open(dir: &Path) -> Store {
    let opts = StoreOptions {
        lock_timeout: std::time::Duration::from_secs(30),
        ..StoreOptions::default()
    };
    Store::open_with(dir, &opts).unwrap()
}

pub fn import(store: &Store, bytes: &[u8]) -> stacko_store::Result<LayerSummary> {
    import_tar(store, &mut &bytes[..], &NoProgress)
}

pub fn import_as(store: &Store, name: &str, parent: Option<&str>, bytes: &[u8]) -> LayerId {
    let summary = import(store, bytes).unwrap();
    store
        .commit_image(name, parent, &summary, ImageState::Sealed)
        .unwrap()
        .layer
}

pub fn export(store: &Store, layers: &[LayerId], flatten: bool) -> Vec<u8> {
    let mut out = Vec::new();
    export_tar(store, layers, flatten, &mut out, &NoProgress).unwrap();
    out
}

/// Everything about a node that a round trip must keep (ctime excepted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub kind: NodeKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub size: u64,
    pub rdev: u64,
    pub nlink: u32,
    pub data: Vec<u8>,
    pub xattrs: Vec<Xattr>,
    pub opaque: bool,
    /// For a multiply-linked node: the first path (in walk order) naming it.
    pub link_group: Option<Vec<u8>>,
}

/// A layer's tree by path ("" is the root; `/`-joined).
pub type Snapshot = BTreeMap<Vec<u8>, Seen>;

pub fn snapshot(store: &Store, layer: LayerId) -> Snapshot {
    let mut out = Snapshot::new();
    let mut first: HashMap<Ino, Vec<u8>> = HashMap::new();
    walk(store, layer, ROOT_INO, Vec::new(), &mut out, &mut first);
    out
}

fn walk(
    store: &Store,
    layer: LayerId,
    ino: Ino,
    path: Vec<u8>,
    out: &mut Snapshot,
    first: &mut HashMap<Ino, Vec<u8>>,
) {
    let node = store.node(layer, ino).unwrap().expect("node of an entry");
    let data = match &node.content {
        Content::Empty => Vec::new(),
        _ => read_all(store, &node),
    };
    let link_group = if node.kind != NodeKind::Dir && node.nlink > 1 {
        Some(first.entry(ino).or_insert_with(|| path.clone()).clone())
    } else {
        None
    };
    out.insert(
        path.clone(),
        Seen {
            kind: node.kind,
            mode: node.mode,
            uid: node.uid,
            gid: node.gid,
            atime: node.atime,
            mtime: node.mtime,
            size: node.size,
            rdev: node.rdev,
            nlink: node.nlink,
            data,
            xattrs: node.xattrs.clone(),
            opaque: node.opaque,
            link_group,
        },
    );
    if node.kind == NodeKind::Dir {
        let entries: Vec<DirEntry> = store
            .read_dir(layer, ino, None)
            .map(|e| e.unwrap())
            .collect();
        for e in entries {
            let mut child = path.clone();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(&e.name);
            walk(store, layer, e.ino, child, out, first);
        }
    }
}

fn read_all(store: &Store, node: &stacko_store::Node) -> Vec<u8> {
    let reader = store.open_content(&node.content).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 3000]; // odd size: exercises partial reads
    loop {
        let n = reader.read_at(out.len() as u64, &mut buf).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// The (path, entry type byte) list of an archive, as the tar crate reads it.
pub fn listing(bytes: &[u8]) -> Vec<(Vec<u8>, u8)> {
    let mut ar = tar::Archive::new(bytes);
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path_bytes().into_owned(),
                e.header().entry_type().as_byte(),
            )
        })
        .collect()
}

pub fn ts(sec: i64, nsec: u32) -> Timestamp {
    Timestamp { sec, nsec }
}

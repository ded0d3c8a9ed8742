//! Snapshots of a mounted tree and their comparison.
//!
//! A snapshot walks the mount with lstat/readdir/readlink/read/listxattr and records, for
//! every path: kind, permission bits, owner, size, link count, rdev, inode number, mtime,
//! content (regular files), target (symlinks), xattrs and the readdir listing with d_types
//! (directories). Errors (e.g. EACCES for an unprivileged walker) are recorded as values so
//! that they are compared too.

use super::layers::{EXPLICIT_TIME_END, EXPLICIT_TIME_START};
use super::sys::{self, errno_name, SysResult};
use std::collections::BTreeMap;
use std::path::Path;

/// One path's recorded state.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Kind letter (see [`sys::kind_of`]).
    pub kind: char,
    /// `st_mode & 07777`.
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// `st_size`.
    pub size: u64,
    /// `st_nlink`.
    pub nlink: u64,
    /// `st_rdev`.
    pub rdev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// `st_mtime` (sec, nsec).
    pub mtime: (i64, i64),
    /// `st_ctime` (sec, nsec); only compared for raw lower-layer snapshots.
    pub ctime: (i64, i64),
    /// Regular files: the whole content (or the errno of reading it).
    pub content: Option<SysResult<Vec<u8>>>,
    /// Symlinks: the target.
    pub target: Option<SysResult<Vec<u8>>>,
    /// All xattrs except `security.*`/`system.*`: name -> value.
    pub xattrs: SysResult<BTreeMap<String, SysResult<Vec<u8>>>>,
    /// Directories: readdir listing (name, d_type), sorted.
    pub children: Option<SysResult<Vec<(String, u8)>>>,
}

/// Path (relative to the mount root, `""` is the root) -> state.
pub type Tree = BTreeMap<String, Node>;

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

/// Walks `root` and records everything below it.
pub fn snapshot(root: &Path) -> Tree {
    let mut t = Tree::new();
    walk(root, "", &mut t);
    t
}

fn walk(root: &Path, rel: &str, out: &mut Tree) {
    let p = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let st = match sys::lstat(&p) {
        Ok(st) => st,
        Err(e) => {
            // Listed by readdir but not stat-able: record as a broken node.
            out.insert(
                rel.to_string(),
                Node {
                    kind: '!',
                    perm: e as u32,
                    uid: 0,
                    gid: 0,
                    size: 0,
                    nlink: 0,
                    rdev: 0,
                    ino: 0,
                    mtime: (0, 0),
                    ctime: (0, 0),
                    content: None,
                    target: None,
                    xattrs: Err(e),
                    children: None,
                },
            );
            return;
        }
    };
    let kind = sys::kind_of(st.st_mode);
    let xattrs = sys::llistxattr(&p).map(|names| {
        names
            .into_iter()
            .filter(|n| !n.starts_with("security.") && !n.starts_with("system."))
            .map(|n| {
                let v = sys::lgetxattr(&p, &n);
                (n, v)
            })
            .collect()
    });
    let mut node = Node {
        kind,
        perm: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        nlink: st.st_nlink as u64,
        rdev: st.st_rdev as u64,
        ino: st.st_ino as u64,
        mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
        content: None,
        target: None,
        xattrs,
        children: None,
    };
    match kind {
        'f' => node.content = Some(sys::read_file(&p)),
        'l' => node.target = Some(sys::readlink(&p)),
        'd' => {
            let list = sys::readdir(&p);
            node.children = Some(list.clone());
            out.insert(rel.to_string(), node);
            if let Ok(list) = list {
                for (name, _) in list {
                    walk(root, &join(rel, &name), out);
                }
            }
            return;
        }
        _ => {}
    }
    out.insert(rel.to_string(), node);
}

fn explicit(t: (i64, i64)) -> bool {
    (EXPLICIT_TIME_START..EXPLICIT_TIME_END).contains(&t.0)
}

fn show_res<T: std::fmt::Debug>(r: &SysResult<T>) -> String {
    match r {
        Ok(v) => format!("{v:?}"),
        Err(e) => errno_name(*e),
    }
}

fn show_bytes(b: &[u8]) -> String {
    if b.len() <= 48 {
        format!("{:?}", String::from_utf8_lossy(b))
    } else {
        format!("<{} bytes>", b.len())
    }
}

fn content_diff(k: &SysResult<Vec<u8>>, e: &SysResult<Vec<u8>>) -> Option<String> {
    match (k, e) {
        (Ok(a), Ok(b)) if a == b => None,
        (Ok(a), Ok(b)) => {
            let first = a
                .iter()
                .zip(b.iter())
                .position(|(x, y)| x != y)
                .unwrap_or(a.len().min(b.len()));
            Some(format!(
                "content differs: kernel {} vs engine {} (lengths {} / {}, first difference at byte {first})",
                show_bytes(a),
                show_bytes(b),
                a.len(),
                b.len()
            ))
        }
        (a, b) if a == b => None,
        (a, b) => Some(format!(
            "content read: kernel {} vs engine {}",
            show_res_bytes(a),
            show_res_bytes(b)
        )),
    }
}

fn show_res_bytes(r: &SysResult<Vec<u8>>) -> String {
    match r {
        Ok(b) => show_bytes(b),
        Err(e) => errno_name(*e),
    }
}

/// Xattr name prefixes that belong to overlay implementations and must never be shown to users.
pub const INTERNAL_XATTR_PREFIXES: &[&str] = &[
    "user.overlay.",
    "trusted.overlay.",
    "user.fuseoverlayfs.",
    "user.containers.",
    "user.stacko.",
];

/// Decides, for a link-count difference on a non-directory, whether it is an allowed
/// improvement (see `diff::allowed_difference`). Arguments: path, kernel nlink, engine nlink.
pub type NlinkJudge<'a> = &'a dyn Fn(&str, u64, u64) -> bool;

/// Compares a kernel snapshot with an engine snapshot; returns human-readable differences.
/// Inode numbers are not compared here (they are engine-specific); see [`ino_changes`].
/// The xattrs whose values the observing user may read. A documented limit
/// of running without privilege: kernel overlayfs copies up a lower file's
/// xattrs with the mounter's (root's) rights, while a rootless FUSE server
/// over plain lower directories has only the user's, so an xattr value the
/// user cannot read (EACCES on both engines) is not copied by stacko. Values
/// the user can read are compared; so are all values in the root tier, where
/// EACCES never happens.
fn readable_xattrs(
    x: &SysResult<BTreeMap<String, SysResult<Vec<u8>>>>,
) -> SysResult<BTreeMap<&String, &SysResult<Vec<u8>>>> {
    match x {
        Err(e) => Err(*e),
        Ok(map) => Ok(map
            .iter()
            .filter(|(_, value)| !matches!(value, Err(libc::EACCES)))
            .collect()),
    }
}

pub fn compare(kernel: &Tree, engine: &Tree, nlink_ok: NlinkJudge) -> Vec<String> {
    let mut d = Vec::new();
    for (path, e) in engine {
        if let Ok(x) = &e.xattrs {
            for n in x.keys() {
                if INTERNAL_XATTR_PREFIXES.iter().any(|p| n.starts_with(p)) {
                    d.push(format!("/{path}: engine exposes internal xattr {n:?}"));
                }
            }
        }
        if !kernel.contains_key(path) {
            d.push(format!(
                "/{path}: only in engine (kind {}, perm {:o})",
                e.kind, e.perm
            ));
        }
    }
    for (path, k) in kernel {
        let Some(e) = engine.get(path) else {
            d.push(format!(
                "/{path}: only in kernel (kind {}, perm {:o})",
                k.kind, k.perm
            ));
            continue;
        };
        let mut f = |what: String| d.push(format!("/{path}: {what}"));
        if k.kind != e.kind {
            f(format!("kind: kernel {} vs engine {}", k.kind, e.kind));
            continue;
        }
        if k.perm != e.perm {
            f(format!("mode: kernel {:o} vs engine {:o}", k.perm, e.perm));
        }
        if (k.uid, k.gid) != (e.uid, e.gid) {
            f(format!(
                "owner: kernel {}:{} vs engine {}:{}",
                k.uid, k.gid, e.uid, e.gid
            ));
        }
        if k.kind != 'd' && k.size != e.size {
            f(format!("size: kernel {} vs engine {}", k.size, e.size));
        }
        if k.kind != 'd' && k.nlink != e.nlink && !nlink_ok(path, k.nlink, e.nlink) {
            f(format!("nlink: kernel {} vs engine {}", k.nlink, e.nlink));
        }
        if k.kind == 'd' {
            // Kernel overlayfs reports 1 for merged directories (documented: "unknown", as
            // find(1) understands it), otherwise the true count. An engine may report 1 for any
            // directory (merged ones, and ones it renamed where the kernel had to copy); any
            // other value must be the true count 2 + subdirectories.
            let subdirs = match &e.children {
                Some(Ok(c)) => c.iter().filter(|(_, t)| *t == libc::DT_DIR).count() as u64,
                _ => 0,
            };
            let ok =
                e.nlink == 1 || (e.nlink == 2 + subdirs && (k.nlink == 1 || k.nlink == e.nlink));
            if !ok {
                f(format!(
                    "dir nlink: kernel {} vs engine {} ({} subdirs)",
                    k.nlink, e.nlink, subdirs
                ));
            }
        }
        if (k.kind == 'c' || k.kind == 'b') && k.rdev != e.rdev {
            f(format!("rdev: kernel {:x} vs engine {:x}", k.rdev, e.rdev));
        }
        if (explicit(k.mtime) || explicit(e.mtime)) && k.mtime != e.mtime {
            f(format!(
                "mtime: kernel {:?} vs engine {:?} (explicitly set times must be kept)",
                k.mtime, e.mtime
            ));
        }
        if let (Some(kc), Some(ec)) = (&k.content, &e.content) {
            if let Some(m) = content_diff(kc, ec) {
                f(m);
            }
        }
        if k.target != e.target {
            f(format!(
                "symlink target: kernel {} vs engine {}",
                k.target.as_ref().map(show_res_bytes).unwrap_or_default(),
                e.target.as_ref().map(show_res_bytes).unwrap_or_default()
            ));
        }
        if readable_xattrs(&k.xattrs) != readable_xattrs(&e.xattrs) {
            f(format!(
                "xattrs: kernel {} vs engine {}",
                show_res(&k.xattrs),
                show_res(&e.xattrs)
            ));
        }
        if k.children != e.children {
            let show = |c: &Option<SysResult<Vec<(String, u8)>>>| match c {
                Some(Ok(v)) => format!(
                    "{:?}",
                    v.iter()
                        .map(|(n, t)| format!("{n}:{t}"))
                        .collect::<Vec<_>>()
                ),
                Some(Err(e)) => errno_name(*e),
                None => "-".into(),
            };
            f(format!(
                "readdir: kernel {} vs engine {}",
                show(&k.children),
                show(&e.children)
            ));
        }
    }
    d
}

/// Paths whose inode number differs between two snapshots of the same engine.
pub fn ino_changes(before: &Tree, after: &Tree) -> Vec<String> {
    before
        .iter()
        .filter_map(|(p, b)| {
            let a = after.get(p)?;
            (a.ino != b.ino).then(|| format!("/{p}: st_ino {} -> {}", b.ino, a.ino))
        })
        .collect()
}

/// A raw snapshot of a lower directory, for checking that no engine writes into lower layers.
pub fn raw_snapshot(dir: &Path) -> Tree {
    snapshot(dir)
}

/// Exact comparison of two raw snapshots (everything recorded, ctime and inode numbers included).
pub fn compare_raw(before: &Tree, after: &Tree) -> Vec<String> {
    let mut d = Vec::new();
    for (p, b) in before {
        match after.get(p) {
            None => d.push(format!("/{p}: removed")),
            Some(a) if a != b => d.push(format!("/{p}: changed: {b:?} -> {a:?}")),
            Some(_) => {}
        }
    }
    for p in after.keys() {
        if !before.contains_key(p) {
            d.push(format!("/{p}: added"));
        }
    }
    d
}

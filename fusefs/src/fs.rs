//! The merged filesystem: lower layers plus a copy-on-write upper directory.
//!
//! Every operation is a plain method returning [`Result`] with an errno, so the logic is
//! tested without FUSE; [`crate::fuse`] only adapts these methods to fuser.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::config::FsConfig;
use crate::dircache::{DirCache, DirEntry, Listing};
use crate::dirlower::{attr_from_stat, parse_override_stat, WH_OPAQUE};
use crate::error::{Errno, Result};
use crate::lower::{Kind, Lower, LowerAttr, LowerEntry, LowerFile, Timestamp};
use crate::lowerindex::{self, Hits, LowerIndex};
use crate::node::{decode_lower, LowerRef, Node, NodeState, NodeTable, ROOT_INO};
use crate::shard::ShardedMap;
use crate::sys::{self, SetTime, XTarget};
use crate::upper::{self, Upper};
use crate::{whiteout, xattr};

/// Attributes of a merged node, as shown to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Merged inode number (also the FUSE node id).
    pub ino: u64,
    /// Kind of node.
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub perm: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Access time.
    pub atime: Timestamp,
    /// Modification time.
    pub mtime: Timestamp,
    /// Change time.
    pub ctime: Timestamp,
    /// Device number.
    pub rdev: u64,
}

/// Who asks for an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    /// Caller's fs uid.
    pub uid: u32,
    /// Caller's fs gid.
    pub gid: u32,
    /// Caller's pid (0 if unknown).
    pub pid: u32,
}

impl Ctx {
    /// The context of the daemon itself.
    pub fn current() -> Ctx {
        Ctx {
            uid: sys::geteuid(),
            gid: sys::getegid(),
            pid: std::process::id(),
        }
    }
}

/// Changes requested by `setattr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits (type bits ignored).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
    /// Open handle the change comes through, if any.
    pub fh: Option<u64>,
}

/// Result of opening a file.
#[derive(Debug)]
pub struct Opened {
    /// Handle number.
    pub fh: u64,
    /// The page cache of the file may be kept (always true: only this mount changes it).
    pub keep_cache: bool,
    /// Serve reads and writes through kernel passthrough to this file, if set.
    pub passthrough: Option<Arc<File>>,
}

/// Copy-up depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMode {
    /// Metadata only, if the configuration allows (data stays in the lower file).
    Meta,
    /// Metadata and data.
    Data,
}

pub(crate) enum HFile {
    Upper(Arc<File>),
    Lower { f: Arc<dyn LowerFile>, gen: u64 },
}

pub(crate) struct Handle {
    node: Arc<Node>,
    file: RwLock<HFile>,
    flags: i32,
}

/// What a lookup found.
#[derive(Default)]
pub(crate) struct Resolved {
    pub(crate) kind: Option<Kind>,
    pub(crate) ino: u64,
    pub(crate) upper: bool,
    pub(crate) origin: Option<LowerRef>,
    pub(crate) lower_dirs: Vec<LowerRef>,
    pub(crate) lpath: Option<Arc<[u8]>>,
    pub(crate) metacopy: bool,
    pub(crate) indexed: bool,
    pub(crate) override_stat: Option<(u32, u32, u32)>,
    pub(crate) dirfd: Option<OwnedFd>,
    pub(crate) lower_attr: Option<LowerAttr>,
}

/// Owner, group and mode kept in `user.containers.override_stat`.
pub(crate) type OwnerMode = (u32, u32, u32);

/// Makes a node: (directory fd, name, permission bits) -> the open file, for regular files.
pub(crate) type MakeFn<'a> = dyn Fn(RawFd, &OsStr, u32) -> Result<Option<OwnedFd>> + 'a;

/// Result of merging one name over a list of lower directories.
pub(crate) struct LowerHit {
    pub(crate) top: Option<(usize, LowerEntry)>,
    pub(crate) dirs: Vec<LowerRef>,
}

/// The merged filesystem.
pub struct OverlayFs {
    pub(crate) lowers: Vec<Arc<dyn Lower>>,
    pub(crate) upper: Option<Upper>,
    pub(crate) cfg: FsConfig,
    pub(crate) nodes: NodeTable,
    pub(crate) root_lower_dirs: Vec<LowerRef>,
    handles: ShardedMap<Arc<Handle>>,
    /// Open directories: the snapshot (with "." and "..") and the listing generation it
    /// was taken at.
    dir_handles: ShardedMap<(Listing, u64)>,
    next_fh: AtomicU64,
    pub(crate) dircache: DirCache,
    pub(crate) lindex: LowerIndex,
    passthrough: AtomicBool,
}

impl std::fmt::Debug for OverlayFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayFs")
            .field("layers", &self.lowers.len())
            .field("upper", &self.upper.is_some())
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

fn check_name(name: &OsStr) -> Result<()> {
    if name.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name.as_bytes().contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// The lower path of `name` in a directory whose lower path is `parent` (`None`: the root).
pub(crate) fn join_lpath(parent: Option<&Arc<[u8]>>, name: &OsStr) -> Arc<[u8]> {
    let mut v = parent.map(|p| p.to_vec()).unwrap_or_default();
    v.push(b'/');
    v.extend_from_slice(name.as_bytes());
    v.into()
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// Whether the process `pid` has `gid` among its groups.
fn pid_in_group(pid: u32, gid: u32) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    s.lines()
        .filter(|l| l.starts_with("Groups:") || l.starts_with("Gid:"))
        .flat_map(|l| l.split_whitespace().skip(1))
        .any(|g| g.parse::<u32>().ok() == Some(gid))
}

impl OverlayFs {
    /// A filesystem over `lowers` (top first) and an optional upper directory.
    pub fn new(
        lowers: Vec<Arc<dyn Lower>>,
        upper: Option<Upper>,
        cfg: FsConfig,
    ) -> Result<OverlayFs> {
        let nodes = NodeTable::new();
        let mut root_lower_dirs = Vec::new();
        for (i, l) in lowers.iter().enumerate() {
            let r = l.root();
            root_lower_dirs.push((i, r));
            if l.is_opaque(r)? {
                break;
            }
        }
        let mut st = NodeState::new(ROOT_INO, OsString::new());
        st.lpath = Some(Arc::from(&b""[..]));
        if let Some(u) = &upper {
            let fd = sys::open_dir(u.root_fd(), OsStr::new(""))?;
            let names = sys::listxattr(XTarget::Fd(fd.as_raw_fd()))?;
            if !upper::is_opaque(fd.as_raw_fd(), &names)? {
                st.lower_dirs = root_lower_dirs.clone();
            }
            st.upper = true;
            st.dirfd = Some(Arc::new(fd));
        } else {
            st.lower_dirs = root_lower_dirs.clone();
        }
        st.origin = st.lower_dirs.first().copied();
        nodes.insert_root(Node::new(ROOT_INO, Kind::Dir, st));
        let dircache = DirCache::new(cfg.dircache_dirs);
        let lindex = LowerIndex::new(
            cfg.dircache_dirs.max(64) * 4,
            cfg.lower_index_entries,
            cfg.lower_index_dir_entries,
            16_384,
        );
        Ok(OverlayFs {
            lowers,
            upper,
            cfg,
            nodes,
            root_lower_dirs,
            handles: ShardedMap::new(),
            dir_handles: ShardedMap::new(),
            next_fh: AtomicU64::new(1),
            dircache,
            lindex,
            passthrough: AtomicBool::new(false),
        })
    }

    /// Opens the layers and upper directory named by a mount configuration.
    pub fn from_config(
        cfg: &crate::config::MountConfig,
    ) -> std::result::Result<OverlayFs, crate::config::ConfigError> {
        use crate::config::ConfigError;
        let mut lowers: Vec<Arc<dyn Lower>> = Vec::new();
        for d in &cfg.lowerdirs {
            let l = crate::dirlower::DirLower::open(d)
                .map_err(|e| ConfigError(format!("lower directory {}: {e}", d.display())))?;
            lowers.push(Arc::new(l));
        }
        let upper = match (&cfg.upperdir, &cfg.workdir) {
            (Some(u), Some(w)) if !cfg.read_only => Some(Upper::open(u, w).map_err(|e| {
                if e == Errno::EXDEV {
                    ConfigError(format!(
                        "upper directory {} and work directory {} must be on the same filesystem",
                        u.display(),
                        w.display()
                    ))
                } else {
                    ConfigError(format!(
                        "upper directory {} / work directory {}: {e}",
                        u.display(),
                        w.display()
                    ))
                }
            })?),
            _ => None,
        };
        let mut fcfg = cfg.fs.clone();
        fcfg.writeback = crate::fuse::plan(cfg).writeback;
        OverlayFs::new(lowers, upper, fcfg)
            .map_err(|e| ConfigError(format!("cannot set up the merged root: {e}")))
    }

    /// Turns FUSE passthrough decisions on or off (the adapter turns it off when the kernel
    /// refuses backing files).
    pub fn set_passthrough(&self, on: bool) {
        self.passthrough.store(on, Ordering::Relaxed);
    }

    /// Whether the mount has an upper directory.
    pub fn is_writable(&self) -> bool {
        self.upper.is_some()
    }

    /// Number of live nodes (for tests and memory checks).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn writable(&self) -> Result<&Upper> {
        self.upper.as_ref().ok_or(Errno::EROFS)
    }

    pub(crate) fn node(&self, ino: u64) -> Result<Arc<Node>> {
        self.nodes.get(ino).ok_or(Errno::ENOENT)
    }

    pub(crate) fn dirfd_of(&self, ino: u64) -> Result<Arc<OwnedFd>> {
        self.node(ino)?.st().dirfd.clone().ok_or(Errno::ENOENT)
    }

    // ---------------------------------------------------------------- lookup and merge

    /// Merges `name` over the lower directories `dirs` (top first).
    ///
    /// Through the chain's index when there is one (or the chain is long enough to build
    /// one), so the cost does not grow with the number of layers; see [`crate::lowerindex`].
    pub(crate) fn lower_merge(&self, dirs: &[LowerRef], name: &OsStr) -> Result<LowerHit> {
        if dirs.is_empty() {
            return Ok(LowerHit {
                top: None,
                dirs: Vec::new(),
            });
        }
        if self.cfg.lower_index_entries > 0 {
            if let Some(ix) = self.lindex.get(dirs) {
                return self.hit_of(ix.get(name));
            }
            if dirs.len() >= lowerindex::INDEX_ON_LOOKUP_MIN_LAYERS {
                if let Some(ix) = self.lindex.get_or_build(&self.lowers, dirs)? {
                    return self.hit_of(ix.get(name));
                }
                if let Some(h) = self.lindex.get_name(dirs, name) {
                    return self.hit_of(h.as_ref());
                }
                let h = lowerindex::walk_layers(&self.lowers, dirs, name)?;
                self.lindex.put_name(dirs, name, h.clone());
                return self.hit_of(h.as_ref());
            }
        }
        let h = lowerindex::walk_layers(&self.lowers, dirs, name)?;
        self.hit_of(h.as_ref())
    }

    /// Turns the layers holding a name into the merge result, applying opaque directories.
    fn hit_of(&self, hits: Option<&Hits>) -> Result<LowerHit> {
        let mut hit = LowerHit {
            top: None,
            dirs: Vec::new(),
        };
        let Some(h) = hits else { return Ok(hit) };
        for &(layer, e) in h.as_slice() {
            let layer = layer as usize;
            if hit.top.is_none() {
                hit.top = Some((layer, e));
            }
            if e.kind != Kind::Dir {
                break;
            }
            hit.dirs.push((layer, e.ino));
            if self.lowers[layer].is_opaque(e.ino)? {
                break;
            }
        }
        Ok(hit)
    }

    /// Whether some lower layer shows `name` in directory `parent` (ignoring the upper).
    pub(crate) fn lower_visible(&self, parent: &Node, name: &OsStr) -> Result<bool> {
        let dirs = parent.st().lower_dirs.clone();
        Ok(self.lower_merge(&dirs, name)?.top.is_some())
    }

    /// Lower directories of the path `path` ("/a/b") in the lower stack.
    pub(crate) fn lower_dirs_of_path(&self, path: &[u8]) -> Result<Vec<LowerRef>> {
        let mut dirs = self.root_lower_dirs.clone();
        for comp in path.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            if dirs.is_empty() {
                break;
            }
            let hit = self.lower_merge(&dirs, OsStr::from_bytes(comp))?;
            dirs = match hit.top {
                Some((_, e)) if e.kind == Kind::Dir => hit.dirs,
                _ => Vec::new(),
            };
        }
        Ok(dirs)
    }

    /// Finds what `name` in `parent` is, without touching the node table.
    pub(crate) fn resolve(&self, parent: &Node, name: &OsStr) -> Result<Option<Resolved>> {
        check_name(name)?;
        if parent.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let (pdirfd, plower, plpath) = {
            let s = parent.st();
            if s.unlinked {
                return Ok(None);
            }
            (s.dirfd.clone(), s.lower_dirs.clone(), s.lpath.clone())
        };
        if let Some(d) = &pdirfd {
            let dfd = d.as_raw_fd();
            if let Some(st) = sys::fstatat_opt(dfd, name)? {
                if whiteout::is_whiteout(&st) {
                    return Ok(None);
                }
                let kind = Kind::from_mode(st.st_mode).ok_or(Errno::EIO)?;
                let side = match &self.upper {
                    Some(u) if crate::sidemeta::needs_side(kind) => Some(u.side_get_all(dfd, name)),
                    _ => None,
                };
                let names = if side.is_some() {
                    Vec::new()
                } else {
                    sys::listxattr(XTarget::At(dfd, name)).unwrap_or_default()
                };
                let mut r = Resolved {
                    kind: Some(kind),
                    upper: true,
                    ..Default::default()
                };
                let get = |n: &str| -> Option<Vec<u8>> {
                    if let Some(side) = &side {
                        side.iter()
                            .find(|(k, _)| k.as_bytes() == n.as_bytes())
                            .map(|(_, v)| v.clone())
                    } else if xattr::has(&names, n) {
                        sys::getxattr(XTarget::At(dfd, name), OsStr::new(n))
                            .ok()
                            .flatten()
                    } else {
                        None
                    }
                };
                let origin_ino = get(xattr::ORIGIN).and_then(|v| parse_u64(&v));
                r.ino = origin_ino.unwrap_or_else(|| self.nodes.inos.upper(st.st_ino));
                r.origin = origin_ino
                    .and_then(decode_lower)
                    .filter(|(l, _)| *l < self.lowers.len());
                r.override_stat = get(xattr::OVERRIDE_STAT).and_then(|v| parse_override_stat(&v));
                if kind == Kind::Dir {
                    if let Some(n) = self.nodes.get(r.ino) {
                        if n.kind == Kind::Dir && !n.st().unlinked {
                            return Ok(Some(r));
                        }
                    }
                    let fd = sys::open_dir(dfd, name)?;
                    let opaque = upper::is_opaque(fd.as_raw_fd(), &names)?;
                    let redirect =
                        get(xattr::USER_REDIRECT).or_else(|| get(xattr::TRUSTED_REDIRECT));
                    if let Some(rd) = redirect {
                        // existing redirects are always followed; `redirect_dir` only governs making them
                        let abs: Arc<[u8]> = if rd.first() == Some(&b'/') {
                            rd.into()
                        } else {
                            join_lpath(plpath.as_ref(), OsStr::from_bytes(&rd))
                        };
                        if !opaque {
                            r.lower_dirs = self.lower_dirs_of_path(&abs)?;
                        }
                        r.lpath = Some(abs);
                    } else {
                        if !opaque {
                            let hit = self.lower_merge(&plower, name)?;
                            if let Some((_, e)) = hit.top {
                                if e.kind == Kind::Dir {
                                    r.lower_dirs = hit.dirs;
                                }
                            }
                        }
                        r.lpath = Some(join_lpath(plpath.as_ref(), name));
                    }
                    if r.origin.is_none() {
                        r.origin = r.lower_dirs.first().copied();
                    }
                    r.dirfd = Some(fd);
                } else if kind == Kind::File {
                    r.metacopy = (xattr::has(&names, xattr::USER_METACOPY)
                        || xattr::has(&names, xattr::TRUSTED_METACOPY))
                        && r.origin.is_some();
                    if st.st_nlink > 1 && origin_ino.is_some() {
                        if let Some(u) = &self.upper {
                            if let Some(ist) =
                                sys::fstatat_opt(u.index_fd(), &Upper::index_name(r.ino))?
                            {
                                r.indexed = ist.st_ino == st.st_ino;
                            }
                        }
                    }
                    if r.metacopy {
                        // The lower layer only answers for numbers it has handed out: look
                        // the data source up by name, at its redirect if it was renamed
                        // (absolute lower path, as kernel overlayfs writes for metacopy files).
                        let redirect =
                            get(xattr::USER_REDIRECT).filter(|rd| rd.first() == Some(&b'/'));
                        let hit = match redirect {
                            Some(rd) => {
                                let cut = rd.iter().rposition(|b| *b == b'/').unwrap_or(0);
                                let dirs = self.lower_dirs_of_path(&rd[..cut])?;
                                self.lower_merge(&dirs, OsStr::from_bytes(&rd[cut + 1..]))?
                            }
                            None => self.lower_merge(&plower, name)?,
                        };
                        r.metacopy = matches!((hit.top, r.origin), (Some((l, e)), Some((ol, oi))) if l == ol && e.ino == oi);
                    }
                }
                return Ok(Some(r));
            }
        }
        let hit = self.lower_merge(&plower, name)?;
        let Some((layer, e)) = hit.top else {
            return Ok(None);
        };
        if let Some(d) = &pdirfd {
            if whiteout::has_oci_whiteout(d.as_raw_fd(), name)? {
                return Ok(None);
            }
        }
        let mut r = Resolved {
            kind: Some(e.kind),
            ino: self.nodes.inos.lower(layer, e.ino),
            origin: Some((layer, e.ino)),
            ..Default::default()
        };
        if e.kind == Kind::Dir {
            r.lower_dirs = hit.dirs;
            r.lpath = Some(join_lpath(plpath.as_ref(), name));
        } else if let Some(n) = self.nodes.get(r.ino) {
            if n.kind == e.kind && !n.st().unlinked {
                return Ok(Some(r));
            }
        } else {
            let la = self.lowers[layer].getattr(e.ino)?;
            if e.kind == Kind::File && la.nlink > 1 && self.cfg.index {
                if let Some(u) = &self.upper {
                    r.indexed =
                        sys::fstatat_opt(u.index_fd(), &Upper::index_name(r.ino))?.is_some();
                    if r.indexed {
                        let n = Upper::index_name(r.ino);
                        let names =
                            sys::listxattr(XTarget::At(u.index_fd(), &n)).unwrap_or_default();
                        r.metacopy = xattr::has(&names, xattr::USER_METACOPY);
                        if xattr::has(&names, xattr::OVERRIDE_STAT) {
                            r.override_stat = sys::getxattr(
                                XTarget::At(u.index_fd(), &n),
                                OsStr::new(xattr::OVERRIDE_STAT),
                            )
                            .ok()
                            .flatten()
                            .and_then(|v| parse_override_stat(&v));
                        }
                    }
                }
            }
            r.lower_attr = Some(la);
        }
        Ok(Some(r))
    }

    /// Puts a resolved node in the table (or finds the live one), adding `refs` references.
    pub(crate) fn instantiate(
        &self,
        parent: u64,
        name: &OsStr,
        r: Resolved,
        refs: u64,
    ) -> Result<Arc<Node>> {
        let kind = r.kind.ok_or(Errno::EIO)?;
        if let Some(n) = self.nodes.get(r.ino) {
            if n.kind == kind && !n.st().unlinked {
                n.refs.fetch_add(refs, Ordering::Relaxed);
                let mut s = n.st_mut();
                if (s.parent != parent || s.name != name)
                    && !s.aliases.iter().any(|(p, a)| *p == parent && a == name)
                {
                    s.aliases.push((parent, name.to_os_string()));
                }
                return Ok(n.clone());
            }
        }
        let mut st = NodeState::new(parent, name.to_os_string());
        st.upper = r.upper;
        st.dirfd = r.dirfd.map(Arc::new);
        st.origin = r.origin;
        st.lower_dirs = r.lower_dirs;
        st.lpath = r.lpath;
        st.metacopy = r.metacopy;
        st.indexed = r.indexed;
        st.override_stat = r.override_stat;
        let (n, _) = self.nodes.get_or_insert(Node::new(r.ino, kind, st), refs);
        Ok(n)
    }

    /// Looks `name` up in `parent` without adding a kernel reference.
    pub(crate) fn child(&self, parent: &Arc<Node>, name: &OsStr) -> Result<Option<Arc<Node>>> {
        match self.resolve(parent, name)? {
            None => Ok(None),
            Some(r) => Ok(Some(self.instantiate(parent.ino, name, r, 0)?)),
        }
    }

    /// FUSE `lookup`: finds `name` in `parent` and takes one kernel reference on it.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        let p = self.node(parent)?;
        if name == "." {
            let a = self.attr_of(&p, None)?;
            p.refs.fetch_add(1, Ordering::Relaxed);
            return Ok(a);
        }
        if name == ".." {
            let pp = self.node(p.st().parent)?;
            let a = self.attr_of(&pp, None)?;
            pp.refs.fetch_add(1, Ordering::Relaxed);
            return Ok(a);
        }
        let r = self.resolve(&p, name)?.ok_or(Errno::ENOENT)?;
        let la = r.lower_attr.clone();
        let n = self.instantiate(parent, name, r, 1)?;
        match self.attr_of(&n, la) {
            Ok(a) => Ok(a),
            Err(e) => {
                self.nodes.forget(n.ino, 1);
                Err(e)
            }
        }
    }

    /// FUSE `forget`: drops `n` kernel references.
    pub fn forget(&self, ino: u64, n: u64) {
        self.nodes.forget(ino, n);
    }

    // ---------------------------------------------------------------- attributes

    /// Location of a node's upper inode: (dir fd holder, raw fd, name; empty for a dir).
    pub(crate) fn upper_loc(&self, node: &Node) -> Result<(Option<Arc<OwnedFd>>, RawFd, OsString)> {
        let s = node.st();
        if node.kind == Kind::Dir {
            let d = s.dirfd.clone().ok_or(Errno::ENOENT)?;
            let raw = d.as_raw_fd();
            return Ok((Some(d), raw, OsString::new()));
        }
        if s.indexed {
            let u = self.upper.as_ref().ok_or(Errno::EIO)?;
            return Ok((None, u.index_fd(), Upper::index_name(node.ino)));
        }
        if !s.upper {
            return Err(Errno::ENOENT);
        }
        let (parent, name) = (s.parent, s.name.clone());
        drop(s);
        let d = self.dirfd_of(parent)?;
        let raw = d.as_raw_fd();
        Ok((Some(d), raw, name))
    }

    /// Whether the node has an upper inode (metadata in the upper).
    pub(crate) fn has_upper(node: &Node) -> bool {
        let s = node.st();
        if node.kind == Kind::Dir {
            s.dirfd.is_some()
        } else {
            s.upper || s.indexed
        }
    }

    fn raw_attr(&self, node: &Node, prefetched: Option<LowerAttr>) -> Result<Attr> {
        let (ovr, origin, ndirs, indexed, unlinked, orphan) = {
            let s = node.st();
            (
                s.override_stat,
                s.origin,
                s.lower_dirs.len(),
                s.indexed,
                s.unlinked,
                s.orphan.clone(),
            )
        };
        let mut a = if let Some(fd) = orphan.filter(|_| unlinked) {
            attr_from_stat(&sys::fstat(fd.as_raw_fd())?)
        } else if Self::has_upper(node) {
            let (_hold, fd, name) = self.upper_loc(node)?;
            let st = sys::fstatat(fd, &name)?;
            let mut la = attr_from_stat(&st);
            if indexed {
                la.nlink = sys::getxattr(XTarget::At(fd, &name), OsStr::new(xattr::NLINK))
                    .ok()
                    .flatten()
                    .and_then(|v| parse_u64(&v))
                    .map(|n| n as u32)
                    .unwrap_or(la.nlink.saturating_sub(1));
            }
            la
        } else {
            let (layer, lino) = origin.ok_or(Errno::EIO)?;
            match prefetched {
                Some(a) => a,
                None => self.lowers[layer].getattr(lino)?,
            }
        };
        if let Some((uid, gid, mode)) = ovr {
            a.uid = uid;
            a.gid = gid;
            a.perm = mode & 0o7777;
        }
        if node.kind == Kind::Dir {
            let layers = ndirs + usize::from(Self::has_upper(node));
            if layers > 1 {
                a.nlink = 1;
            }
        }
        a.kind = node.kind;
        if unlinked && node.kind != Kind::Dir && !indexed {
            a.nlink = 0;
        }
        Ok(Attr {
            ino: node.ino,
            kind: node.kind,
            perm: a.perm,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            blocks: a.blocks,
            atime: a.atime,
            mtime: a.mtime,
            ctime: a.ctime,
            rdev: a.rdev,
        })
    }

    fn attr_of(&self, node: &Node, prefetched: Option<LowerAttr>) -> Result<Attr> {
        let mut a = self.raw_attr(node, prefetched)?;
        if let Some(u) = self.cfg.squash_uid {
            a.uid = u;
        }
        if let Some(g) = self.cfg.squash_gid {
            a.gid = g;
        }
        Ok(a)
    }

    /// FUSE `getattr`.
    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let n = self.node(ino)?;
        self.attr_of(&n, None)
    }

    /// Sets owner and mode of a freshly made upper inode (or an existing one); without
    /// privilege, what cannot be set is kept in `user.containers.override_stat`.
    pub(crate) fn set_owner_mode(
        &self,
        fd: RawFd,
        name: &OsStr,
        kind: Kind,
        uid: u32,
        gid: u32,
        perm: u32,
    ) -> Result<Option<(u32, u32, u32)>> {
        let u = self.writable()?;
        if u.privileged {
            let st = sys::fstatat(fd, name)?;
            if st.st_uid != uid || st.st_gid != gid {
                sys::fchownat(fd, name, uid, gid)?;
            }
            if kind != Kind::Symlink
                && (st.st_mode & 0o7777 != perm || st.st_uid != uid || st.st_gid != gid)
            {
                sys::fchmodat(fd, name, perm)?;
            }
            return Ok(None);
        }
        let chown_ok = (uid == sys::geteuid() && gid == sys::getegid())
            || sys::fchownat(fd, name, uid, gid).is_ok();
        let owner_bits = if kind == Kind::Dir { 0o700 } else { 0o600 };
        let real = perm | owner_bits;
        if kind != Kind::Symlink {
            sys::fchmodat(fd, name, real)?;
        }
        let t = XTarget::At(fd, name);
        // symlinks and special files hold no user.* xattrs: their override lives in the side
        // directory (see `crate::sidemeta`)
        let side = crate::sidemeta::needs_side(kind);
        if !chown_ok || real != perm {
            let v = format!("{uid}:{gid}:{:o}", kind.mode_bits() | perm);
            if side {
                u.side_set(fd, name, xattr::OVERRIDE_STAT, v.as_bytes())?;
            } else {
                let _ = sys::setxattr(t, OsStr::new(xattr::OVERRIDE_STAT), v.as_bytes(), 0);
            }
            Ok(Some((uid, gid, perm)))
        } else {
            if side {
                let _ = u.side_remove(fd, name, xattr::OVERRIDE_STAT);
            } else {
                let _ = sys::removexattr(t, OsStr::new(xattr::OVERRIDE_STAT));
            }
            Ok(None)
        }
    }

    /// FUSE `setattr`.
    pub fn setattr(&self, ino: u64, sa: SetAttr) -> Result<Attr> {
        self.writable()?;
        let node = self.node(ino)?;
        let orphan = {
            let s = node.st();
            if s.unlinked {
                s.orphan.clone()
            } else {
                None
            }
        };
        if let Some(o) = orphan {
            return self.setattr_orphan(&node, &o, sa);
        }
        let nonzero_size = matches!(sa.size, Some(s) if s > 0);
        if sa.size.is_some() && node.kind == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        self.copy_up(
            &node,
            if nonzero_size {
                CopyMode::Data
            } else {
                CopyMode::Meta
            },
        )?;
        if sa.size == Some(0) && node.st().metacopy {
            self.drop_metacopy_by_truncate(&node)?;
        }
        let (_hold, fd, name) = self.upper_loc(&node)?;
        if sa.uid.is_some() || sa.gid.is_some() || sa.mode.is_some() {
            let privileged = self.writable()?.privileged;
            let had_override = node.st().override_stat.is_some();
            if privileged && !had_override {
                if sa.uid.is_some() || sa.gid.is_some() {
                    sys::fchownat(
                        fd,
                        &name,
                        sa.uid.unwrap_or(u32::MAX),
                        sa.gid.unwrap_or(u32::MAX),
                    )?;
                }
                if let (Some(m), true) = (sa.mode, node.kind != Kind::Symlink) {
                    sys::fchmodat(fd, &name, m & 0o7777)?;
                }
            } else {
                let cur = self.raw_attr(&node, None)?;
                let uid = sa.uid.unwrap_or(cur.uid);
                let gid = sa.gid.unwrap_or(cur.gid);
                let mut perm = sa.mode.map(|m| m & 0o7777).unwrap_or(cur.perm);
                if sa.mode.is_none()
                    && node.kind != Kind::Dir
                    && (sa.uid.is_some() || sa.gid.is_some())
                {
                    // chown clears set-id bits on non-directories, as chown(2) on Linux does
                    // (with FUSE_HANDLE_KILLPRIV_V2 the kernel leaves this to the filesystem)
                    perm &= !(libc::S_ISUID | if perm & 0o010 != 0 { libc::S_ISGID } else { 0 });
                }
                if privileged {
                    let _ =
                        sys::removexattr(XTarget::At(fd, &name), OsStr::new(xattr::OVERRIDE_STAT));
                    if crate::sidemeta::needs_side(node.kind) {
                        let _ = self
                            .writable()?
                            .side_remove(fd, &name, xattr::OVERRIDE_STAT);
                    }
                    sys::fchownat(fd, &name, uid, gid)?;
                    if node.kind != Kind::Symlink {
                        sys::fchmodat(fd, &name, perm)?;
                    }
                    node.st_mut().override_stat = None;
                } else {
                    let ovr = self.set_owner_mode(fd, &name, node.kind, uid, gid, perm)?;
                    node.st_mut().override_stat = ovr;
                }
            }
        }
        if let Some(size) = sa.size {
            let via_handle = sa.fh.and_then(|fh| self.handles.get(fh)).and_then(|h| {
                match &*h.file.read().unwrap_or_else(|e| e.into_inner()) {
                    HFile::Upper(f) if h.flags & libc::O_ACCMODE != libc::O_RDONLY => {
                        Some(f.clone())
                    }
                    _ => None,
                }
            });
            match via_handle {
                Some(f) => sys::ftruncate(f.as_raw_fd(), size)?,
                None => {
                    let f = sys::openat(fd, &name, libc::O_WRONLY | libc::O_NOFOLLOW, 0)?;
                    sys::ftruncate(f.as_raw_fd(), size)?;
                }
            }
        }
        if sa.atime.is_some() || sa.mtime.is_some() {
            sys::utimensat(
                fd,
                &name,
                sa.atime.unwrap_or(SetTime::Omit),
                sa.mtime.unwrap_or(SetTime::Omit),
            )?;
        }
        self.attr_of(&node, None)
    }

    /// Clears the set-user-ID bit, and the set-group-ID bit when group-execute is set, of a
    /// non-directory, as the kernel does on write, truncate and chown by a caller without
    /// `CAP_FSETID`. The FUSE adapter calls it where the kernel leaves this to the filesystem
    /// (`FUSE_HANDLE_KILLPRIV_V2`). Nothing is copied up when no bit needs clearing.
    /// Returns whether a bit was cleared.
    pub fn kill_suidgid(&self, ino: u64) -> Result<bool> {
        let node = self.node(ino)?;
        if node.kind == Kind::Dir {
            return Ok(false);
        }
        let a = self.attr_of(&node, None)?;
        let kill = libc::S_ISUID
            | if a.perm & 0o010 != 0 {
                libc::S_ISGID
            } else {
                0
            };
        if a.perm & kill == 0 {
            return Ok(false);
        }
        self.setattr(
            ino,
            SetAttr {
                mode: Some(a.perm & !kill),
                ..Default::default()
            },
        )?;
        Ok(true)
    }

    /// `setattr` of an open file whose names are all gone: through its inode.
    fn setattr_orphan(&self, node: &Node, o: &OwnedFd, sa: SetAttr) -> Result<Attr> {
        let path = OsString::from(format!("/proc/self/fd/{}", o.as_raw_fd()));
        let acc = if sa.size.is_some() {
            libc::O_WRONLY
        } else {
            libc::O_RDONLY
        };
        let f = sys::openat(libc::AT_FDCWD, &path, acc, 0)?;
        let fd = f.as_raw_fd();
        if sa.uid.is_some() || sa.gid.is_some() {
            sys::fchownat(
                fd,
                OsStr::new(""),
                sa.uid.unwrap_or(u32::MAX),
                sa.gid.unwrap_or(u32::MAX),
            )?;
        }
        if let Some(m) = sa.mode {
            sys::fchmod(fd, m & 0o7777)?;
        }
        if let Some(size) = sa.size {
            sys::ftruncate(fd, size)?;
        }
        if sa.atime.is_some() || sa.mtime.is_some() {
            sys::utimensat(
                fd,
                OsStr::new(""),
                sa.atime.unwrap_or(SetTime::Omit),
                sa.mtime.unwrap_or(SetTime::Omit),
            )?;
        }
        self.attr_of(node, None)
    }

    /// FUSE `readlink`.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        if node.kind != Kind::Symlink {
            return Err(Errno::EINVAL);
        }
        if Self::has_upper(&node) {
            let (_h, fd, name) = self.upper_loc(&node)?;
            return sys::readlinkat(fd, &name);
        }
        let (l, i) = node.st().origin.ok_or(Errno::EIO)?;
        self.lowers[l].readlink(i)
    }

    // ---------------------------------------------------------------- creation

    /// Checks `name` is free in `parent`, copies the parent up, and says whether the upper
    /// holds a whiteout at `name`.
    fn prepare_create(&self, parent: &Arc<Node>, name: &OsStr) -> Result<(Arc<OwnedFd>, bool)> {
        self.writable()?;
        check_name(name)?;
        if parent.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        if parent.st().unlinked {
            return Err(Errno::ENOENT);
        }
        // The upper entry decides alone when there is one; otherwise the lower layers.
        let (pdirfd, plower) = {
            let s = parent.st();
            (s.dirfd.clone(), s.lower_dirs.clone())
        };
        let upper_entry = match &pdirfd {
            Some(d) => sys::fstatat_opt(d.as_raw_fd(), name)?,
            None => None,
        };
        let wh = match upper_entry {
            Some(st) if whiteout::is_whiteout(&st) => true,
            Some(_) => return Err(Errno::EEXIST),
            None => {
                if !plower.is_empty() && self.resolve(parent, name)?.is_some() {
                    return Err(Errno::EEXIST);
                }
                false
            }
        };
        let dirfd = match pdirfd {
            Some(d) => d,
            None => self.copy_up_dir_chain(parent)?,
        };
        Ok((dirfd, wh))
    }

    /// Owner, group and mode of a new node in `parent` (setgid directories pass their group
    /// on, and the set-gid bit to subdirectories).
    fn new_owner(&self, parent: &Node, ctx: Ctx, kind: Kind, mode: u32) -> Result<(u32, u32, u32)> {
        let pa = self.raw_attr(parent, None)?;
        let mut perm = mode & 0o7777;
        let gid = if pa.perm & libc::S_ISGID != 0 {
            if kind == Kind::Dir {
                perm |= libc::S_ISGID;
            }
            pa.gid
        } else {
            ctx.gid
        };
        if kind != Kind::Dir
            && perm & libc::S_ISGID != 0
            && ctx.uid != 0
            && gid != ctx.gid
            && !(ctx.pid != 0 && pid_in_group(ctx.pid, gid))
        {
            perm &= !libc::S_ISGID;
        }
        Ok((ctx.uid, gid, perm))
    }

    /// Makes a node `name` in `parent` with `make(dirfd, name)`, then sets owner and mode.
    /// Over a whiteout, the node is built in the work directory and renamed into place.
    fn create_node(
        &self,
        parent: &Arc<Node>,
        name: &OsStr,
        kind: Kind,
        mode: u32,
        ctx: Ctx,
        make: &MakeFn<'_>,
    ) -> Result<(Arc<Node>, Option<OwnedFd>)> {
        let (dirfd, wh) = self.prepare_create(parent, name)?;
        let u = self.writable()?;
        let (uid, gid, perm) = self.new_owner(parent, ctx, kind, mode)?;
        let dfd = dirfd.as_raw_fd();
        let (fd, ovr) = if wh {
            let tmp = u.tmp_name();
            let work = u.work_fd();
            let built = (|| -> Result<(Option<OwnedFd>, Option<OwnerMode>)> {
                let fd = make(work, &tmp, perm)?;
                let ovr = self.set_owner_mode(work, &tmp, kind, uid, gid, perm)?;
                if kind == Kind::Dir {
                    let d = sys::open_dir(work, &tmp)?;
                    upper::set_opaque(d.as_raw_fd())?;
                    sys::renameat2(work, &tmp, dfd, name, libc::RENAME_EXCHANGE)?;
                    sys::unlinkat(work, &tmp, 0)?;
                } else {
                    sys::renameat2(work, &tmp, dfd, name, 0)?;
                }
                Ok((fd, ovr))
            })();
            match built {
                Ok(x) => x,
                Err(e) => {
                    let _ = upper::remove_tree(work, &tmp);
                    return Err(e);
                }
            }
        } else {
            let fd = make(dfd, name, perm)?;
            match self.set_owner_mode(dfd, name, kind, uid, gid, perm) {
                Ok(ovr) => (fd, ovr),
                Err(e) => {
                    let _ = upper::remove_tree(dfd, name);
                    return Err(e);
                }
            }
        };
        self.dircache.invalidate(parent.ino);
        let st = sys::fstatat(dfd, name)?;
        let mut r = Resolved {
            kind: Some(kind),
            ino: self.nodes.inos.upper(st.st_ino),
            upper: true,
            override_stat: ovr,
            ..Default::default()
        };
        if kind == Kind::Dir {
            r.dirfd = Some(sys::open_dir(dfd, name)?);
            r.lpath = Some(join_lpath(parent.st().lpath.as_ref(), name));
        }
        let n = self.instantiate(parent.ino, name, r, 1)?;
        Ok((n, fd))
    }

    /// FUSE `mknod` (regular files, devices, fifos, sockets).
    pub fn mknod(&self, parent: u64, name: &OsStr, mode: u32, rdev: u64, ctx: Ctx) -> Result<Attr> {
        let p = self.node(parent)?;
        let kind = Kind::from_mode(mode).unwrap_or(Kind::File);
        if kind == Kind::Dir || kind == Kind::Symlink {
            return Err(Errno::EINVAL);
        }
        let (n, _) = self.create_node(&p, name, kind, mode, ctx, &|d, nm, perm| {
            sys::mknodat(d, nm, kind.mode_bits() | (perm & 0o777) | 0o600, rdev)?;
            Ok(None)
        })?;
        self.attr_of(&n, None)
    }

    /// FUSE `mkdir`.
    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, ctx: Ctx) -> Result<Attr> {
        let p = self.node(parent)?;
        let (n, _) = self.create_node(&p, name, Kind::Dir, mode, ctx, &|d, nm, perm| {
            sys::mkdirat(d, nm, (perm & 0o777) | 0o700)?;
            Ok(None)
        })?;
        self.attr_of(&n, None)
    }

    /// FUSE `symlink`.
    pub fn symlink(&self, parent: u64, name: &OsStr, target: &OsStr, ctx: Ctx) -> Result<Attr> {
        let p = self.node(parent)?;
        let (n, _) = self.create_node(&p, name, Kind::Symlink, 0o777, ctx, &|d, nm, _| {
            sys::symlinkat(target, d, nm)?;
            Ok(None)
        })?;
        self.attr_of(&n, None)
    }

    /// FUSE `create`: makes and opens a regular file.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        ctx: Ctx,
    ) -> Result<(Attr, Opened)> {
        let p = self.node(parent)?;
        let oflags = self.upper_open_flags(flags);
        let (n, fd) = self.create_node(&p, name, Kind::File, mode, ctx, &|d, nm, perm| {
            let fd = sys::openat(
                d,
                nm,
                oflags | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                (perm & 0o777) | 0o600,
            )?;
            Ok(Some(fd))
        })?;
        let attr = self.attr_of(&n, None)?;
        let file = Arc::new(File::from(fd.ok_or(Errno::EIO)?));
        let opened =
            self.register_handle(&n, HFile::Upper(file.clone()), flags, Some(file), true)?;
        Ok((attr, opened))
    }

    /// FUSE `link`: a new name `newname` in `newparent` for node `ino`.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Attr> {
        let u = self.writable()?;
        let node = self.node(ino)?;
        if node.kind == Kind::Dir {
            return Err(Errno::EPERM);
        }
        let np = self.node(newparent)?;
        let (dirfd, wh) = self.prepare_create(&np, newname)?;
        self.copy_up(&node, CopyMode::Meta)?;
        if !node.st().indexed {
            // a metadata-only copy must stay at its lower name: bring the data
            self.copy_up(&node, CopyMode::Data)?;
        }
        let (_h, sfd, sname) = self.upper_loc(&node)?;
        let dfd = dirfd.as_raw_fd();
        if wh {
            let tmp = u.tmp_name();
            sys::linkat(sfd, &sname, u.work_fd(), &tmp)?;
            if let Err(e) = sys::renameat2(u.work_fd(), &tmp, dfd, newname, 0) {
                let _ = sys::unlinkat(u.work_fd(), &tmp, 0);
                return Err(e);
            }
        } else {
            sys::linkat(sfd, &sname, dfd, newname)?;
        }
        if node.st().indexed {
            self.adjust_index_nlink(&node, 1)?;
        }
        {
            let mut s = node.st_mut();
            s.aliases.push((newparent, newname.to_os_string()));
        }
        node.refs.fetch_add(1, Ordering::Relaxed);
        self.dircache.invalidate(newparent);
        self.attr_of(&node, None)
    }

    pub(crate) fn adjust_index_nlink(&self, node: &Node, delta: i64) -> Result<u64> {
        let u = self.writable()?;
        let name = Upper::index_name(node.ino);
        let t = XTarget::At(u.index_fd(), &name);
        let cur = sys::getxattr(t, OsStr::new(xattr::NLINK))?
            .and_then(|v| parse_u64(&v))
            .unwrap_or(1);
        let next = (cur as i64 + delta).max(0) as u64;
        if next == 0 {
            let _ = sys::unlinkat(u.index_fd(), &name, 0);
        } else {
            sys::setxattr(t, OsStr::new(xattr::NLINK), next.to_string().as_bytes(), 0)?;
        }
        Ok(next)
    }

    // ---------------------------------------------------------------- removal

    /// Forgets the name (`parent`, `name`) of `node` after it left the merged tree.
    /// For a node with open files: an `O_PATH` fd of its upper inode, taken before a name is
    /// removed, kept if that was the last name (see `NodeState::orphan`).
    fn orphan_fd(&self, node: &Node) -> Option<Arc<OwnedFd>> {
        if node.kind != Kind::File
            || node.opens.lock().unwrap_or_else(|e| e.into_inner()).count == 0
        {
            return None;
        }
        if !Self::has_upper(node) {
            return None;
        }
        let (_h, fd, name) = self.upper_loc(node).ok()?;
        sys::openat(fd, &name, libc::O_PATH | libc::O_NOFOLLOW, 0)
            .ok()
            .map(Arc::new)
    }

    fn drop_name(
        &self,
        node: &Arc<Node>,
        parent: u64,
        name: &OsStr,
        orphan: Option<Arc<OwnedFd>>,
    ) -> Result<()> {
        if node.st().indexed {
            self.adjust_index_nlink(node, -1)?;
        }
        let mut s = node.st_mut();
        if s.parent == parent && s.name == name {
            if let Some((p, a)) = s.aliases.pop() {
                let old_parent = s.parent;
                s.parent = p;
                s.name = a;
                let promoted_upper = match self.nodes.get(p).and_then(|pn| pn.st().dirfd.clone()) {
                    Some(d) => {
                        matches!(sys::fstatat_opt(d.as_raw_fd(), &s.name), Ok(Some(st)) if !whiteout::is_whiteout(&st))
                    }
                    None => false,
                };
                s.upper = promoted_upper;
                drop(s);
                self.nodes.repin(old_parent, p);
                return Ok(());
            }
            s.unlinked = true;
            s.upper = false;
            s.dirfd = None;
            drop(s);
            if node.kind != Kind::Dir {
                // the open files keep the inode: keep a handle for its attributes
                node.st_mut().orphan = orphan;
            }
        } else {
            s.aliases.retain(|(p, a)| !(*p == parent && a == name));
        }
        Ok(())
    }

    /// Before one name of a lower file with several names goes away, moves the file to the
    /// hard-link index, whose link count then tracks the names left (`st_nlink` stays true;
    /// kernel overlayfs keeps showing the lower count).
    fn index_before_name_drop(&self, node: &Arc<Node>) -> Result<()> {
        if node.kind != Kind::File || !self.cfg.index || Self::has_upper(node) {
            return Ok(());
        }
        let Some((l, i)) = node.st().origin else {
            return Ok(());
        };
        if self.lowers[l].getattr(i)?.nlink > 1 {
            // a file the mounting user may not read (rootless) cannot be copied: then a
            // metadata-only index entry keeps the count; the unlink never fails for this
            if self.copy_up(node, CopyMode::Meta).is_err() {
                let _ = self.copy_up_with(node, CopyMode::Meta, true);
            }
        }
        Ok(())
    }

    /// FUSE `unlink`.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        let u = self.writable()?;
        let p = self.node(parent)?;
        let node = self.child(&p, name)?.ok_or(Errno::ENOENT)?;
        if node.kind == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        self.index_before_name_drop(&node)?;
        let dirfd = self.copy_up_dir_chain(&p)?;
        let dfd = dirfd.as_raw_fd();
        let in_upper =
            matches!(sys::fstatat_opt(dfd, name)?, Some(st) if !whiteout::is_whiteout(&st));
        // Not in the upper yet visible: a lower layer shows it.
        let lower = !in_upper || self.lower_visible(&p, name)?;
        if in_upper && crate::sidemeta::needs_side(node.kind) {
            u.side_drop_if_last(dfd, name);
        }
        let _names = node.name_lock.write().unwrap_or_else(|e| e.into_inner());
        let orphan = self.orphan_fd(&node);
        match (in_upper, lower) {
            (true, true) => u.replace_with_whiteout(dfd, name, false)?,
            (true, false) => sys::unlinkat(dfd, name, 0)?,
            (false, true) => u.create_whiteout(dfd, name)?,
            (false, false) => return Err(Errno::ENOENT),
        }
        self.dircache.invalidate(parent);
        self.drop_name(&node, parent, name, orphan)
    }

    /// FUSE `rmdir`.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        let u = self.writable()?;
        let p = self.node(parent)?;
        if name == "." {
            return Err(Errno::EINVAL);
        }
        if name == ".." {
            return Err(Errno::ENOTEMPTY);
        }
        let node = self.child(&p, name)?.ok_or(Errno::ENOENT)?;
        if node.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        if !self.listing(&node)?.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        let dirfd = self.copy_up_dir_chain(&p)?;
        let dfd = dirfd.as_raw_fd();
        let in_upper = matches!(sys::fstatat_opt(dfd, name)?, Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR);
        let lower = self.lower_visible(&p, name)?;
        if in_upper {
            if lower {
                u.replace_with_whiteout(dfd, name, true)?;
            } else {
                if let Some(d) = node.st().dirfd.clone() {
                    upper::clear_dir(d.as_raw_fd())?;
                }
                sys::unlinkat(dfd, name, libc::AT_REMOVEDIR)?;
            }
        } else if lower {
            u.create_whiteout(dfd, name)?;
        } else {
            return Err(Errno::ENOENT);
        }
        self.dircache.invalidate(parent);
        self.dircache.invalidate(node.ino);
        let mut s = node.st_mut();
        s.unlinked = true;
        s.upper = false;
        s.dirfd = None;
        s.lower_dirs.clear();
        Ok(())
    }

    // ---------------------------------------------------------------- rename

    /// Makes sure the name (`parent`, `name`) of `node` exists in the upper directory.
    pub(crate) fn ensure_upper_name(
        &self,
        node: &Arc<Node>,
        parent: &Node,
        name: &OsStr,
    ) -> Result<()> {
        let dirfd = parent.st().dirfd.clone().ok_or(Errno::EIO)?;
        if matches!(sys::fstatat_opt(dirfd.as_raw_fd(), name)?, Some(st) if !whiteout::is_whiteout(&st))
        {
            return Ok(());
        }
        if node.st().indexed {
            let u = self.writable()?;
            // a copy-up of this name: the merged parent does not change
            let times = crate::copyup::saved_times(dirfd.as_raw_fd());
            let r = sys::linkat(
                u.index_fd(),
                &Upper::index_name(node.ino),
                dirfd.as_raw_fd(),
                name,
            );
            crate::copyup::restore_times(dirfd.as_raw_fd(), times);
            return r;
        }
        let moved_from = {
            let mut s = node.st_mut();
            if !(s.parent == parent.ino && s.name == name) {
                // copy up under this name: it becomes the primary name (and pins its parent)
                let old = (
                    s.parent,
                    std::mem::replace(&mut s.name, name.to_os_string()),
                );
                s.parent = parent.ino;
                s.aliases.retain(|(p, a)| !(*p == parent.ino && a == name));
                let old_parent = old.0;
                s.aliases.push(old);
                Some(old_parent)
            } else {
                None
            }
        };
        if let Some(old_parent) = moved_from {
            self.nodes.repin(old_parent, parent.ino);
        }
        self.copy_up(node, CopyMode::Meta)?;
        if node.st().indexed {
            return self.ensure_upper_name(node, parent, name);
        }
        Ok(())
    }

    /// Before a metadata-only copy at (`parent`, `name`) moves: copies its data (so that
    /// the moved file stays readable by kernel overlayfs without [`upper::prepare_for_kernel`]);
    /// if the mounting user may not read the data (rootless, a root-only lower file), records
    /// where the data is instead (`user.overlay.redirect`, the absolute lower path, as kernel
    /// overlayfs does for metacopy files), so that the rename still works. For a hard-linked
    /// file the mark is on its index entry, shared by all its names (any lower name of the
    /// file leads to the same data).
    fn keep_metacopy_source(&self, node: &Arc<Node>, parent: &Node, name: &OsStr) -> Result<()> {
        if !node.st().metacopy {
            return Ok(());
        }
        let err = match self.copy_up(node, CopyMode::Data) {
            Ok(()) => return Ok(()),
            Err(e) if e == Errno(libc::EACCES) || e == Errno(libc::EPERM) => e,
            Err(e) => return Err(e),
        };
        let marked = (|| -> Result<()> {
            let (_h, fd, uname) = self.upper_loc(node)?;
            let t = XTarget::At(fd, &uname);
            let names = sys::listxattr(t)?;
            if !xattr::has(&names, xattr::USER_REDIRECT) {
                let lp = join_lpath(parent.st().lpath.as_ref(), name);
                sys::setxattr(t, OsStr::new(xattr::USER_REDIRECT), &lp, 0)?;
            }
            Ok(())
        })();
        marked.map_err(|_| err)
    }

    /// Prepares a directory that moves to (`np`, `nname`): a redirect if it has lower parts,
    /// or opaque if lower layers show something at its new name.
    fn prepare_moved_dir(&self, dir: &Node, np: &Node, nname: &OsStr) -> Result<()> {
        let (fd, has_lower, lpath) = {
            let s = dir.st();
            (
                s.dirfd.clone().ok_or(Errno::EIO)?,
                !s.lower_dirs.is_empty(),
                s.lpath.clone(),
            )
        };
        let names = sys::listxattr(XTarget::Fd(fd.as_raw_fd())).unwrap_or_default();
        if has_lower {
            if !xattr::has(&names, xattr::USER_REDIRECT)
                && !xattr::has(&names, xattr::TRUSTED_REDIRECT)
            {
                let lp = lpath.ok_or(Errno::EIO)?;
                sys::setxattr(
                    XTarget::Fd(fd.as_raw_fd()),
                    OsStr::new(xattr::USER_REDIRECT),
                    &lp,
                    0,
                )?;
            }
        } else if self.lower_visible(np, nname)? && !upper::is_opaque(fd.as_raw_fd(), &names)? {
            upper::set_opaque(fd.as_raw_fd())?;
        }
        Ok(())
    }

    /// FUSE `rename` (flags: `RENAME_NOREPLACE`, `RENAME_EXCHANGE`).
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let u = self.writable()?;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0
            || flags == libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE
        {
            return Err(Errno::EINVAL);
        }
        check_name(newname)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let op = self.node(parent)?;
        let np = self.node(newparent)?;
        let src = self.child(&op, name)?.ok_or(Errno::ENOENT)?;
        let dst = self.child(&np, newname)?;
        if parent == newparent && name == newname {
            return Ok(());
        }
        if flags & libc::RENAME_NOREPLACE != 0 && dst.is_some() {
            return Err(Errno::EEXIST);
        }
        if exchange && dst.is_none() {
            return Err(Errno::ENOENT);
        }
        if let Some(d) = &dst {
            if d.ino == src.ino && !exchange {
                return Ok(());
            }
            if !exchange {
                if src.kind == Kind::Dir && d.kind != Kind::Dir {
                    return Err(Errno::ENOTDIR);
                }
                if src.kind != Kind::Dir && d.kind == Kind::Dir {
                    return Err(Errno::EISDIR);
                }
                if d.kind == Kind::Dir && !self.listing(d)?.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
            }
        }
        let moving_lower_dir = |n: &Node| n.kind == Kind::Dir && !n.st().lower_dirs.is_empty();
        if !self.cfg.redirect_dir
            && (moving_lower_dir(&src)
                || (exchange && dst.as_ref().is_some_and(|d| moving_lower_dir(d))))
        {
            return Err(Errno::EXDEV);
        }
        if !exchange {
            if let Some(d) = &dst {
                self.index_before_name_drop(d)?;
            }
        }
        let mut d_orphan = None;
        let odir = self.copy_up_dir_chain(&op)?;
        let ndir = self.copy_up_dir_chain(&np)?;
        let (ofd, nfd) = (odir.as_raw_fd(), ndir.as_raw_fd());
        self.ensure_upper_name(&src, &op, name)?;
        if src.kind == Kind::File {
            self.keep_metacopy_source(&src, &op, name)?;
        }
        if src.kind == Kind::Dir {
            self.prepare_moved_dir(&src, &np, newname)?;
        }
        // the names move: no open by an upper name meanwhile (lock order: node number)
        let mut moving: Vec<&Arc<Node>> = std::iter::once(&src).chain(dst.iter()).collect();
        moving.sort_by_key(|n| n.ino);
        moving.dedup_by_key(|n| n.ino);
        let _names: Vec<_> = moving
            .iter()
            .map(|n| n.name_lock.write().unwrap_or_else(|e| e.into_inner()))
            .collect();
        if exchange {
            let d = dst.as_ref().ok_or(Errno::ENOENT)?;
            self.ensure_upper_name(d, &np, newname)?;
            if d.kind == Kind::File {
                self.keep_metacopy_source(d, &np, newname)?;
            }
            if d.kind == Kind::Dir {
                self.prepare_moved_dir(d, &op, name)?;
            }
            sys::renameat2(ofd, name, nfd, newname, libc::RENAME_EXCHANGE)?;
        } else {
            d_orphan = dst.as_ref().and_then(|d| self.orphan_fd(d));
            if dst
                .as_ref()
                .is_some_and(|d| crate::sidemeta::needs_side(d.kind))
            {
                u.side_drop_if_last(nfd, newname);
            }
            if let Some(d) = &dst {
                if d.kind == Kind::Dir {
                    if let Some(fd) = d.st().dirfd.clone() {
                        upper::clear_dir(fd.as_raw_fd())?;
                    }
                }
            }
            let need_wh = self.lower_visible(&op, name)?;
            // Anything left at the new name in the upper (a whiteout) is replaced; a
            // whiteout cannot be replaced by a directory through rename(2), so drop it.
            if src.kind == Kind::Dir {
                if let Some(st) = sys::fstatat_opt(nfd, newname)? {
                    if whiteout::is_whiteout(&st) {
                        sys::unlinkat(nfd, newname, 0)?;
                    }
                }
            }
            if need_wh {
                match sys::renameat2(ofd, name, nfd, newname, libc::RENAME_WHITEOUT) {
                    Ok(()) => {}
                    Err(Errno(libc::EINVAL)) | Err(Errno(libc::EPERM)) => {
                        sys::renameat2(ofd, name, nfd, newname, 0)?;
                        u.create_whiteout(ofd, name)?;
                    }
                    Err(e) => return Err(e),
                }
            } else {
                sys::renameat2(ofd, name, nfd, newname, 0)?;
            }
        }
        self.dircache.invalidate(parent);
        self.dircache.invalidate(newparent);
        // bookkeeping
        if let Some(d) = &dst {
            if exchange {
                self.rename_name(d, newparent, newname, parent, name);
            } else {
                if d.kind == Kind::Dir {
                    self.dircache.invalidate(d.ino);
                    let mut s = d.st_mut();
                    s.unlinked = true;
                    s.upper = false;
                    s.dirfd = None;
                } else {
                    self.drop_name(d, newparent, newname, d_orphan)?;
                }
            }
        }
        self.rename_name(&src, parent, name, newparent, newname);
        Ok(())
    }

    fn rename_name(&self, node: &Arc<Node>, op: u64, oname: &OsStr, np: u64, nname: &OsStr) {
        let mut s = node.st_mut();
        if s.parent == op && s.name == oname {
            s.parent = np;
            s.name = nname.to_os_string();
            s.upper = true;
            drop(s);
            self.nodes.repin(op, np);
        } else {
            for (p, a) in s.aliases.iter_mut() {
                if *p == op && a == oname {
                    *p = np;
                    *a = nname.to_os_string();
                }
            }
        }
    }

    // ---------------------------------------------------------------- files

    fn upper_open_flags(&self, flags: i32) -> i32 {
        // O_TRUNC is kept: with FUSE_ATOMIC_O_TRUNC the kernel leaves truncation to open.
        let keep = libc::O_ACCMODE
            | libc::O_APPEND
            | libc::O_TRUNC
            | libc::O_DIRECT
            | libc::O_SYNC
            | libc::O_DSYNC
            | libc::O_NOATIME;
        let mut f = flags & keep;
        if self.cfg.writeback {
            f &= !libc::O_APPEND;
            if f & libc::O_ACCMODE == libc::O_WRONLY {
                f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
            }
        }
        f & !libc::O_NOATIME
    }

    fn open_upper_data(&self, node: &Node, flags: i32) -> Result<File> {
        let _names = node.name_lock.read().unwrap_or_else(|e| e.into_inner());
        let (_h, fd, name) = self.upper_loc(node)?;
        let f = self.upper_open_flags(flags) | libc::O_NOFOLLOW;
        match sys::openat(fd, &name, f, 0) {
            Ok(fd) => Ok(File::from(fd)),
            Err(Errno(libc::EACCES))
                if self.cfg.writeback && flags & libc::O_ACCMODE == libc::O_WRONLY =>
            {
                let f = (f & !libc::O_ACCMODE) | libc::O_WRONLY;
                Ok(File::from(sys::openat(fd, &name, f, 0)?))
            }
            Err(e) => Err(e),
        }
    }

    fn register_handle(
        &self,
        node: &Arc<Node>,
        file: HFile,
        flags: i32,
        backing: Option<Arc<File>>,
        upper_backing: bool,
    ) -> Result<Opened> {
        let pt_on = self.passthrough.load(Ordering::Relaxed);
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let mode = {
            let mut o = node.opens.lock().unwrap_or_else(|e| e.into_inner());
            let mode = if o.count == 0 {
                if pt_on && backing.is_some() {
                    Some(upper_backing)
                } else {
                    None
                }
            } else {
                match o.passthrough {
                    // lower backing still in use and the data has moved up
                    Some(false) if write || upper_backing => return Err(Errno::ETXTBSY),
                    Some(_) if backing.is_none() => return Err(Errno::ETXTBSY),
                    m => m,
                }
            };
            o.count += 1;
            o.passthrough = mode;
            mode
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.with_mut(fh, |m| {
            m.insert(
                fh,
                Arc::new(Handle {
                    node: node.clone(),
                    file: RwLock::new(file),
                    flags,
                }),
            )
        });
        Ok(Opened {
            fh,
            keep_cache: true,
            passthrough: if mode.is_some() { backing } else { None },
        })
    }

    /// The adapter could not set up passthrough for this open: serve it through the cache.
    pub fn passthrough_refused(&self, fh: u64) {
        if let Some(h) = self.handles.get(fh) {
            let mut o = h.node.opens.lock().unwrap_or_else(|e| e.into_inner());
            if o.count <= 1 {
                o.passthrough = None;
            }
        }
    }

    /// FUSE `open` (regular files).
    pub fn open(&self, ino: u64, flags: i32) -> Result<Opened> {
        let node = self.node(ino)?;
        match node.kind {
            Kind::File => {}
            Kind::Dir => return Err(Errno::EISDIR),
            _ => return Err(Errno::EINVAL),
        }
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let trunc = flags & libc::O_TRUNC != 0;
        if write || trunc {
            self.writable()?;
            if trunc && write {
                self.copy_up(&node, CopyMode::Meta)?;
                if node.st().metacopy {
                    self.drop_metacopy_by_truncate(&node)?;
                }
            }
            self.copy_up(&node, CopyMode::Data)?;
        }
        let (in_upper, origin, gen) = {
            let s = node.st();
            (s.data_in_upper(), s.origin, s.data_gen)
        };
        if in_upper {
            let f = Arc::new(self.open_upper_data(&node, flags)?);
            return self.register_handle(&node, HFile::Upper(f.clone()), flags, Some(f), true);
        }
        let (l, i) = origin.ok_or(Errno::EIO)?;
        let lf: Arc<dyn LowerFile> = Arc::from(self.lowers[l].open(i)?);
        let backing = if self.cfg.passthrough_lower {
            lf.backing_file()
                .and_then(|f| f.try_clone().ok())
                .map(Arc::new)
        } else {
            None
        };
        self.register_handle(&node, HFile::Lower { f: lf, gen }, flags, backing, false)
    }

    fn handle(&self, fh: u64) -> Result<Arc<Handle>> {
        self.handles.get(fh).ok_or(Errno::EBADF)
    }

    /// Switches a handle reading lower data to the upper file after a data copy-up.
    fn refresh_handle(&self, h: &Handle) -> Result<()> {
        let stale = match &*h.file.read().unwrap_or_else(|e| e.into_inner()) {
            HFile::Lower { gen, .. } => {
                let s = h.node.st();
                s.data_in_upper() && s.data_gen != *gen
            }
            HFile::Upper(_) => false,
        };
        if stale {
            let f = self.open_upper_data(&h.node, libc::O_RDONLY)?;
            *h.file.write().unwrap_or_else(|e| e.into_inner()) = HFile::Upper(Arc::new(f));
        }
        Ok(())
    }

    /// FUSE `read`.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let h = self.handle(fh)?;
        self.refresh_handle(&h)?;
        let mut buf = vec![0u8; size as usize];
        let n = match &*h.file.read().unwrap_or_else(|e| e.into_inner()) {
            HFile::Upper(f) => sys::pread_full(f.as_raw_fd(), &mut buf, offset)?,
            HFile::Lower { f, .. } => {
                let mut done = 0;
                while done < buf.len() {
                    let n = f.read_at(&mut buf[done..], offset + done as u64)?;
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
                done
            }
        };
        buf.truncate(n);
        Ok(buf)
    }

    fn upper_file(&self, h: &Handle) -> Result<Arc<File>> {
        match &*h.file.read().unwrap_or_else(|e| e.into_inner()) {
            HFile::Upper(f) => Ok(f.clone()),
            HFile::Lower { .. } => Err(Errno::EBADF),
        }
    }

    /// FUSE `write`.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let h = self.handle(fh)?;
        let f = self.upper_file(&h)?;
        sys::pwrite_all(f.as_raw_fd(), data, offset)
    }

    /// FUSE `flush` (nothing is buffered in the daemon).
    pub fn flush(&self, fh: u64) -> Result<()> {
        self.handle(fh).map(|_| ())
    }

    /// FUSE `fsync`.
    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let h = self.handle(fh)?;
        let r = match &*h.file.read().unwrap_or_else(|e| e.into_inner()) {
            HFile::Upper(f) => sys::fsync(f.as_raw_fd(), datasync),
            HFile::Lower { .. } => Ok(()),
        };
        r
    }

    /// FUSE `release`. Returns `Some(ino)` when the last passthrough open of that node
    /// closed (the adapter then drops its backing file).
    pub fn release(&self, fh: u64) -> Option<u64> {
        let h = self.handles.with_mut(fh, |m| m.remove(&fh))?;
        let mut o = h.node.opens.lock().unwrap_or_else(|e| e.into_inner());
        o.count = o.count.saturating_sub(1);
        if o.count == 0 && o.passthrough.take().is_some() {
            return Some(h.node.ino);
        }
        None
    }

    /// FUSE `fallocate`.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        self.writable()?;
        let h = self.handle(fh)?;
        let f = self.upper_file(&h)?;
        sys::fallocate(f.as_raw_fd(), mode, offset, len)
    }

    /// FUSE `lseek` (`SEEK_DATA` / `SEEK_HOLE` and the plain forms).
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let h = self.handle(fh)?;
        self.refresh_handle(&h)?;
        let size = self.attr_of(&h.node, None)?.size as i64;
        let fd = match &*h.file.read().unwrap_or_else(|e| e.into_inner()) {
            HFile::Upper(f) => Some(f.as_raw_fd()),
            HFile::Lower { f, .. } => f.backing_file().map(|b| b.as_raw_fd()),
        };
        if let Some(fd) = fd {
            return sys::lseek(fd, offset, whence);
        }
        match whence {
            libc::SEEK_SET => Ok(offset),
            libc::SEEK_END => Ok(size + offset),
            libc::SEEK_DATA if offset < size => Ok(offset),
            libc::SEEK_HOLE if offset < size => Ok(size),
            libc::SEEK_DATA | libc::SEEK_HOLE => Err(Errno(libc::ENXIO)),
            _ => Err(Errno::EINVAL),
        }
    }

    /// FUSE `copy_file_range`.
    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<usize> {
        self.writable()?;
        let hin = self.handle(fh_in)?;
        self.refresh_handle(&hin)?;
        let hout = self.handle(fh_out)?;
        let out = self.upper_file(&hout)?;
        let len = len.min(1 << 30) as usize;
        let in_fd = match &*hin.file.read().unwrap_or_else(|e| e.into_inner()) {
            HFile::Upper(f) => Some(f.as_raw_fd()),
            HFile::Lower { f, .. } => f.backing_file().map(|b| b.as_raw_fd()),
        };
        if let Some(fd) = in_fd {
            match sys::copy_file_range(fd, off_in, out.as_raw_fd(), off_out, len) {
                Ok(n) => return Ok(n),
                Err(Errno(libc::EXDEV))
                | Err(Errno(libc::EOPNOTSUPP))
                | Err(Errno(libc::ENOSYS)) => {}
                Err(e) => return Err(e),
            }
        }
        let chunk = self.read(fh_in, off_in, len.min(1 << 20) as u32)?;
        sys::pwrite_all(out.as_raw_fd(), &chunk, off_out)
    }

    // ---------------------------------------------------------------- directories

    /// The merged listing of a directory node (from the cache if present).
    pub(crate) fn listing(&self, node: &Node) -> Result<Listing> {
        if let Some(l) = self.dircache.get(node.ino) {
            return Ok(l);
        }
        let generation = self.dircache.generation(node.ino);
        let (dirfd, dirs) = {
            let s = node.st();
            if s.unlinked {
                return Ok(Arc::new(Vec::new()));
            }
            (s.dirfd.clone(), s.lower_dirs.clone())
        };
        let mut out: Vec<DirEntry> = Vec::new();
        let mut seen = std::collections::HashSet::<OsString>::new();
        if let Some(d) = &dirfd {
            let fd = d.as_raw_fd();
            for e in sys::list_dir(fd)? {
                if e.name.as_bytes() == WH_OPAQUE {
                    continue;
                }
                if let Some(t) = whiteout::oci_target(&e.name) {
                    seen.insert(t.to_os_string());
                    continue;
                }
                let kind = match Kind::from_dtype(e.dtype) {
                    Some(Kind::CharDev) | None => {
                        let st = match sys::fstatat_opt(fd, &e.name)? {
                            Some(st) => st,
                            None => continue,
                        };
                        if whiteout::is_whiteout(&st) {
                            seen.insert(e.name);
                            continue;
                        }
                        Kind::from_mode(st.st_mode).unwrap_or(Kind::File)
                    }
                    Some(k) => k,
                };
                if !seen.insert(e.name.clone()) {
                    continue;
                }
                let origin = match &self.upper {
                    Some(u) if crate::sidemeta::needs_side(kind) => u
                        .side_get_all(fd, &e.name)
                        .into_iter()
                        .find(|(k, _)| k.as_bytes() == xattr::ORIGIN.as_bytes())
                        .map(|(_, v)| v),
                    _ => sys::getxattr(XTarget::At(fd, &e.name), OsStr::new(xattr::ORIGIN))
                        .ok()
                        .flatten(),
                };
                let ino = origin
                    .and_then(|v| parse_u64(&v))
                    .unwrap_or_else(|| self.nodes.inos.upper(e.ino));
                out.push(DirEntry {
                    name: e.name,
                    kind,
                    ino,
                });
            }
        }
        let ix = if self.cfg.lower_index_entries > 0 && !dirs.is_empty() {
            self.lindex.get_or_build(&self.lowers, &dirs)?
        } else {
            None
        };
        if let Some(ix) = &ix {
            out.reserve(ix.len());
            for (name, (layer, e)) in ix.iter() {
                if !seen.is_empty() && seen.contains(name) {
                    continue;
                }
                out.push(DirEntry {
                    name: name.to_os_string(),
                    kind: e.kind,
                    ino: self.nodes.inos.lower(layer, e.ino),
                });
            }
        }
        for &(layer, d) in if ix.is_some() { &[][..] } else { &dirs[..] } {
            let mut err = None;
            self.lowers[layer]
                .read_dir(d, None, &mut |name, e| {
                    if seen.contains(name) {
                        return true;
                    }
                    seen.insert(name.to_os_string());
                    if e.kind != Kind::Whiteout {
                        out.push(DirEntry {
                            name: name.to_os_string(),
                            kind: e.kind,
                            ino: self.nodes.inos.lower(layer, e.ino),
                        });
                    }
                    true
                })
                .unwrap_or_else(|e| err = Some(e));
            if let Some(e) = err {
                return Err(e);
            }
        }
        let l: Listing = Arc::new(out);
        self.dircache
            .put_if_unchanged(node.ino, l.clone(), generation);
        Ok(l)
    }

    /// The listing of directory `ino` with "." and "..", and the generation it is of.
    fn dir_snapshot(&self, ino: u64) -> Result<(Listing, u64)> {
        let node = self.node(ino)?;
        if node.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let generation = self.dircache.generation(ino);
        let parent = node.st().parent;
        let mut full = vec![
            DirEntry {
                name: ".".into(),
                kind: Kind::Dir,
                ino,
            },
            DirEntry {
                name: "..".into(),
                kind: Kind::Dir,
                ino: parent,
            },
        ];
        full.extend(self.listing(&node)?.iter().cloned());
        Ok((Arc::new(full), generation))
    }

    /// FUSE `opendir`: snapshots the merged listing.
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let snap = self.dir_snapshot(ino)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dir_handles.with_mut(fh, |m| m.insert(fh, snap));
        Ok(fh)
    }

    /// FUSE `readdir`: the entries of an open directory from position `offset` (each
    /// entry's own offset is its position + 1).
    ///
    /// Reading from the start retakes the snapshot if the directory changed since it was
    /// taken: the kernel holds the directory lock across a `readdir` request (so no rename
    /// in it runs meanwhile) but not between `opendir` and the first `readdir`, and it may
    /// keep what it reads in its directory cache (`FOPEN_CACHE_DIR`); a snapshot older
    /// than a rename would be cached there and hide or duplicate the moved entry.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Listing> {
        let (l, generation) = self.dir_handles.get(fh).ok_or(Errno::EBADF)?;
        if offset == 0 {
            let ino = l.first().map(|e| e.ino).ok_or(Errno::EBADF)?;
            if self.dircache.generation(ino) != generation {
                let snap = self.dir_snapshot(ino)?;
                let fresh = snap.0.clone();
                self.dir_handles.with_mut(fh, |m| m.insert(fh, snap));
                return Ok(fresh);
            }
        }
        Ok(l)
    }

    /// FUSE `releasedir`.
    pub fn releasedir(&self, fh: u64) {
        self.dir_handles.with_mut(fh, |m| m.remove(&fh));
    }

    /// FUSE `fsyncdir`.
    pub fn fsyncdir(&self, ino: u64, datasync: bool) -> Result<()> {
        let node = self.node(ino)?;
        let fd = node.st().dirfd.clone();
        match fd {
            Some(d) => sys::fsync(d.as_raw_fd(), datasync),
            None => Ok(()),
        }
    }

    /// FUSE `statfs`: of the upper directory (or of the top layer without one).
    pub fn statfs(&self) -> Result<libc::statvfs> {
        match &self.upper {
            Some(u) => sys::fstatvfs(u.root_fd()),
            None => {
                let root = self.node(ROOT_INO)?;
                let _ = root;
                let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
                st.f_bsize = 4096;
                st.f_frsize = 4096;
                st.f_namemax = 255;
                Ok(st)
            }
        }
    }

    // ---------------------------------------------------------------- xattrs

    fn private_xattr_errno(name: &OsStr) -> Errno {
        let b = name.as_bytes();
        if b.starts_with(b"trusted.overlay.") || b.starts_with(b"user.overlay.") {
            Errno::ENOTSUP
        } else {
            Errno::ENODATA
        }
    }

    /// FUSE `getxattr`.
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        if xattr::is_internal(name) {
            return Err(Self::private_xattr_errno(name));
        }
        let node = self.node(ino)?;
        let v = if Self::has_upper(&node) {
            let (_h, fd, n) = self.upper_loc(&node)?;
            sys::getxattr(XTarget::At(fd, &n), name)?
        } else {
            let (l, i) = node.st().origin.ok_or(Errno::EIO)?;
            self.lowers[l].get_xattr(i, name)?
        };
        v.ok_or(Errno::ENODATA)
    }

    /// FUSE `listxattr` (overlay-internal names hidden).
    pub fn listxattr(&self, ino: u64) -> Result<Vec<OsString>> {
        let node = self.node(ino)?;
        let names = if Self::has_upper(&node) {
            let (_h, fd, n) = self.upper_loc(&node)?;
            sys::listxattr(XTarget::At(fd, &n))?
        } else {
            let (l, i) = node.st().origin.ok_or(Errno::EIO)?;
            self.lowers[l].list_xattrs(i)?
        };
        Ok(names
            .into_iter()
            .filter(|n| !xattr::is_internal(n))
            .collect())
    }

    /// FUSE `setxattr`.
    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        self.writable()?;
        if xattr::is_internal(name) {
            return Err(Errno::ENOTSUP);
        }
        let node = self.node(ino)?;
        self.copy_up(&node, CopyMode::Meta)?;
        let (_h, fd, n) = self.upper_loc(&node)?;
        sys::setxattr(XTarget::At(fd, &n), name, value, flags)
    }

    /// FUSE `removexattr`.
    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        self.writable()?;
        if xattr::is_internal(name) {
            return Err(Self::private_xattr_errno(name));
        }
        let node = self.node(ino)?;
        if !Self::has_upper(&node) {
            // Missing attribute: fail before copying anything up.
            self.getxattr(ino, name)?;
        }
        self.copy_up(&node, CopyMode::Meta)?;
        let (_h, fd, n) = self.upper_loc(&node)?;
        sys::removexattr(XTarget::At(fd, &n), name)
    }
}

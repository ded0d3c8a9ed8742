//! [`Lower`] over a plain directory in overlayfs lowerdir format.
//!
//! Format: a character device 0:0 is a whiteout; a `.wh.NAME` entry whites out `NAME` (OCI
//! layer form); a directory is opaque if `trusted.overlay.opaque` or `user.overlay.opaque` is
//! `y`, or if it holds a `.wh..wh..opq` entry. `.wh.*` names themselves are never shown.
//!
//! Inode numbers are the directory's own `st_ino`. Each number seen is mapped to a path
//! relative to the layer root (one compact byte string per node), so memory grows with the
//! number of nodes visited, not with their depth; lookups go through the layer root fd.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::error::{Errno, Result};
use crate::lower::{Kind, Lower, LowerAttr, LowerEntry, LowerFile, LowerIno, Timestamp};
use crate::shard::ShardedMap;
use crate::sys::{self, XTarget};
use crate::xattr;

/// Prefix of OCI-style whiteout names.
pub const WH_PREFIX: &[u8] = b".wh.";
/// OCI-style opaque marker entry.
pub const WH_OPAQUE: &[u8] = b".wh..wh..opq";

#[derive(Debug)]
struct Entry {
    /// Path relative to the layer root; empty for the root.
    path: Box<[u8]>,
    /// Cached opaque flag (directories only).
    opaque: OnceLock<bool>,
    /// Cached: the directory holds `.wh.*` entries (directories only).
    has_wh: OnceLock<bool>,
}

/// A lower layer read from a directory.
#[derive(Debug)]
pub struct DirLower {
    root_fd: OwnedFd,
    root_ino: u64,
    nodes: ShardedMap<Arc<Entry>>,
}

/// Reads `user.containers.override_stat` ("uid:gid:mode", mode in octal) if present.
pub fn parse_override_stat(v: &[u8]) -> Option<(u32, u32, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let mut it = s.trim().split(':');
    let uid = it.next()?.parse().ok()?;
    let gid = it.next()?.parse().ok()?;
    let mode = u32::from_str_radix(it.next()?, 8).ok()?;
    Some((uid, gid, mode))
}

fn ts(sec: i64, nsec: i64) -> Timestamp {
    Timestamp {
        sec,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    }
}

/// Converts a `stat` to [`LowerAttr`] (opaque left false).
pub fn attr_from_stat(st: &libc::stat) -> LowerAttr {
    let kind = if sys::is_whiteout_stat(st) {
        Kind::Whiteout
    } else {
        Kind::from_mode(st.st_mode).unwrap_or(Kind::File)
    };
    LowerAttr {
        kind,
        perm: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: ts(st.st_atime, st.st_atime_nsec),
        mtime: ts(st.st_mtime, st.st_mtime_nsec),
        ctime: ts(st.st_ctime, st.st_ctime_nsec),
        rdev: st.st_rdev,
        nlink: st.st_nlink as u32,
        opaque: false,
    }
}

impl DirLower {
    /// Opens the layer rooted at `dir`.
    pub fn open(dir: &Path) -> Result<DirLower> {
        let c = sys::cstr(dir.as_os_str())?;
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(Errno::last());
        }
        let root_fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let st = sys::fstat(root_fd.as_raw_fd())?;
        let nodes = ShardedMap::new();
        nodes.with_mut(st.st_ino, |m| {
            m.insert(
                st.st_ino,
                Arc::new(Entry {
                    path: Box::new([]),
                    opaque: OnceLock::new(),
                    has_wh: OnceLock::new(),
                }),
            )
        });
        Ok(DirLower {
            root_fd,
            root_ino: st.st_ino,
            nodes,
        })
    }

    /// Number of nodes whose path is remembered (for memory checks).
    pub fn known_nodes(&self) -> usize {
        self.nodes.len()
    }

    fn entry(&self, ino: LowerIno) -> Result<Arc<Entry>> {
        self.nodes.get(ino).ok_or(Errno::ENOENT)
    }

    fn rel(path: &[u8]) -> &OsStr {
        OsStr::from_bytes(path)
    }

    fn join(dir: &[u8], name: &OsStr) -> Vec<u8> {
        let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
        if !dir.is_empty() {
            p.extend_from_slice(dir);
            p.push(b'/');
        }
        p.extend_from_slice(name.as_bytes());
        p
    }

    fn remember(&self, ino: u64, path: Vec<u8>) {
        if self.nodes.with(ino, |_| ()).is_some() {
            return;
        }
        self.nodes.with_mut(ino, |m| {
            m.entry(ino).or_insert_with(|| {
                Arc::new(Entry {
                    path: path.into_boxed_slice(),
                    opaque: OnceLock::new(),
                    has_wh: OnceLock::new(),
                })
            });
        });
    }

    fn target<'a>(&self, path: &'a [u8]) -> XTarget<'a> {
        XTarget::At(self.root_fd.as_raw_fd(), OsStr::from_bytes(path))
    }

    fn entry_opaque(&self, e: &Entry) -> bool {
        *e.opaque.get_or_init(|| {
            let t = self.target(&e.path);
            for n in [xattr::TRUSTED_OPAQUE, xattr::USER_OPAQUE] {
                if let Ok(Some(v)) = sys::getxattr(t, OsStr::new(n)) {
                    if v == b"y" {
                        return true;
                    }
                }
            }
            let p = Self::join(&e.path, OsStr::from_bytes(WH_OPAQUE));
            matches!(
                sys::fstatat_opt(self.root_fd.as_raw_fd(), Self::rel(&p)),
                Ok(Some(_))
            )
        })
    }
}

struct DirLowerFile {
    file: File,
}

impl LowerFile for DirLowerFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        sys::pread(self.file.as_raw_fd(), buf, offset)
    }

    fn backing_file(&self) -> Option<&File> {
        Some(&self.file)
    }
}

impl Lower for DirLower {
    fn root(&self) -> LowerIno {
        self.root_ino
    }

    fn lookup(&self, dir: LowerIno, name: &OsStr) -> Result<Option<LowerEntry>> {
        if name.as_bytes().starts_with(WH_PREFIX) {
            return Ok(None);
        }
        let d = self.entry(dir)?;
        let path = Self::join(&d.path, name);
        match sys::fstatat_opt(self.root_fd.as_raw_fd(), Self::rel(&path))? {
            Some(st) => {
                if sys::is_whiteout_stat(&st) {
                    return Ok(Some(LowerEntry {
                        ino: st.st_ino,
                        kind: Kind::Whiteout,
                    }));
                }
                let kind = Kind::from_mode(st.st_mode).ok_or(Errno::EIO)?;
                self.remember(st.st_ino, path);
                Ok(Some(LowerEntry {
                    ino: st.st_ino,
                    kind,
                }))
            }
            None => {
                let has_wh = *d.has_wh.get_or_init(|| {
                    match sys::open_dir(self.root_fd.as_raw_fd(), Self::rel(&d.path))
                        .and_then(|fd| sys::list_dir(fd.as_raw_fd()))
                    {
                        Ok(list) => list
                            .iter()
                            .any(|e| e.name.as_bytes().starts_with(WH_PREFIX)),
                        Err(_) => true,
                    }
                });
                if !has_wh {
                    return Ok(None);
                }
                let mut wh = WH_PREFIX.to_vec();
                wh.extend_from_slice(name.as_bytes());
                let whp = Self::join(&d.path, OsStr::from_bytes(&wh));
                if sys::fstatat_opt(self.root_fd.as_raw_fd(), Self::rel(&whp))?.is_some() {
                    Ok(Some(LowerEntry {
                        ino: 0,
                        kind: Kind::Whiteout,
                    }))
                } else {
                    Ok(None)
                }
            }
        }
    }

    fn getattr(&self, ino: LowerIno) -> Result<LowerAttr> {
        let e = self.entry(ino)?;
        let st = sys::fstatat(self.root_fd.as_raw_fd(), Self::rel(&e.path))?;
        let mut a = attr_from_stat(&st);
        if a.kind == Kind::Dir {
            a.opaque = self.entry_opaque(&e);
        }
        if let Ok(Some(v)) = sys::getxattr(self.target(&e.path), OsStr::new(xattr::OVERRIDE_STAT)) {
            if let Some((uid, gid, mode)) = parse_override_stat(&v) {
                a.uid = uid;
                a.gid = gid;
                a.perm = mode & 0o7777;
                if mode & libc::S_IFMT != 0 {
                    if let Some(k) = Kind::from_mode(mode) {
                        if a.kind != Kind::Dir && k != Kind::Dir {
                            a.kind = k;
                        }
                    }
                }
            }
        }
        Ok(a)
    }

    fn is_opaque(&self, dir: LowerIno) -> Result<bool> {
        let e = self.entry(dir)?;
        Ok(self.entry_opaque(&e))
    }

    fn read_dir(
        &self,
        dir: LowerIno,
        after: Option<&OsStr>,
        f: &mut dyn FnMut(&OsStr, LowerEntry) -> bool,
    ) -> Result<()> {
        let d = self.entry(dir)?;
        let fd = sys::open_dir(self.root_fd.as_raw_fd(), Self::rel(&d.path))?;
        let raw = sys::list_dir(fd.as_raw_fd())?;
        let mut out: Vec<(OsString, LowerEntry)> = Vec::with_capacity(raw.len());
        for de in raw {
            let nb = de.name.as_bytes();
            if nb == WH_OPAQUE {
                continue;
            }
            if let Some(rest) = nb.strip_prefix(WH_PREFIX) {
                if !rest.is_empty() {
                    out.push((
                        OsStr::from_bytes(rest).to_os_string(),
                        LowerEntry {
                            ino: 0,
                            kind: Kind::Whiteout,
                        },
                    ));
                }
                continue;
            }
            let kind = match Kind::from_dtype(de.dtype) {
                Some(Kind::CharDev) | None => {
                    let st = sys::fstatat(fd.as_raw_fd(), &de.name)?;
                    if sys::is_whiteout_stat(&st) {
                        Kind::Whiteout
                    } else {
                        Kind::from_mode(st.st_mode).unwrap_or(Kind::File)
                    }
                }
                Some(k) => k,
            };
            if kind != Kind::Whiteout {
                self.remember(de.ino, Self::join(&d.path, &de.name));
            }
            out.push((de.name, LowerEntry { ino: de.ino, kind }));
        }
        out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        // A real entry and a `.wh.` entry of the same name: keep the real one.
        out.dedup_by(|b, a| {
            if a.0 == b.0 {
                if a.1.kind == Kind::Whiteout {
                    a.1 = b.1;
                }
                true
            } else {
                false
            }
        });
        for (name, e) in &out {
            if let Some(a) = after {
                if name.as_bytes() <= a.as_bytes() {
                    continue;
                }
            }
            if !f(name, *e) {
                break;
            }
        }
        Ok(())
    }

    fn open(&self, ino: LowerIno) -> Result<Box<dyn LowerFile>> {
        let e = self.entry(ino)?;
        let fd = sys::openat(
            self.root_fd.as_raw_fd(),
            Self::rel(&e.path),
            libc::O_RDONLY | libc::O_NOFOLLOW,
            0,
        )?;
        Ok(Box::new(DirLowerFile {
            file: File::from(fd),
        }))
    }

    fn readlink(&self, ino: LowerIno) -> Result<Vec<u8>> {
        let e = self.entry(ino)?;
        sys::readlinkat(self.root_fd.as_raw_fd(), Self::rel(&e.path))
    }

    fn list_xattrs(&self, ino: LowerIno) -> Result<Vec<OsString>> {
        let e = self.entry(ino)?;
        sys::listxattr(self.target(&e.path))
    }

    fn get_xattr(&self, ino: LowerIno, name: &OsStr) -> Result<Option<Vec<u8>>> {
        let e = self.entry(ino)?;
        sys::getxattr(self.target(&e.path), name)
    }
}

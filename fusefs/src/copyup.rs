//! Copy-up: bringing a lower node into the upper directory before it is changed.
//!
//! A copy-up is built under a scratch name in the work directory (content, owner, mode,
//! times, xattrs, and the origin number), then renamed into place, so the upper never shows
//! a half-made node. Data is streamed with `copy_file_range` (holes kept, no whole-file
//! buffer). Each node has a copy-up lock, so concurrent opens copy it once.
//!
//! With `metacopy`, metadata changes copy up metadata only: the upper file is sparse, of the
//! right size, and marked `user.overlay.metacopy`; data is copied on the first open for
//! writing (in place, then the mark is removed). Lower files with several names go to the
//! hard-link index (`stacko-index/<ino>`), and each name is a hard link of the index entry.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::error::{Errno, Result};
use crate::fs::{CopyMode, OverlayFs};
use crate::lower::{Kind, LowerFile};
use crate::node::{decode_lower, Node};
use crate::sys::{self, SetTime, XTarget};
use crate::upper::{self, Upper};
use crate::xattr;

const CHUNK: usize = 1 << 20;

/// Copies `size` bytes of `src` into the file `out` at the same offsets, keeping holes when
/// the source has a backing file.
pub fn copy_data(src: &dyn LowerFile, out: RawFd, size: u64) -> Result<()> {
    if let Some(bf) = src.backing_file() {
        let fd = bf.as_raw_fd();
        let mut off = 0u64;
        while off < size {
            let data = match sys::lseek(fd, off as i64, libc::SEEK_DATA) {
                Ok(d) => d as u64,
                Err(Errno(libc::ENXIO)) => break,
                Err(_) => off,
            };
            if data >= size {
                break;
            }
            let hole = sys::lseek(fd, data as i64, libc::SEEK_HOLE)
                .map(|h| h as u64)
                .unwrap_or(size)
                .min(size);
            let mut pos = data;
            while pos < hole {
                let want = (hole - pos).min(1 << 30) as usize;
                let n = match sys::copy_file_range(fd, pos, out, pos, want) {
                    Ok(n) => n,
                    Err(Errno(libc::EXDEV))
                    | Err(Errno(libc::EINVAL))
                    | Err(Errno(libc::EOPNOTSUPP))
                    | Err(Errno(libc::ENOSYS)) => {
                        copy_buffered(src, out, pos, hole)?;
                        hole as usize - pos as usize
                    }
                    Err(e) => return Err(e),
                };
                if n == 0 {
                    break;
                }
                pos += n as u64;
            }
            off = hole.max(off + 1);
        }
    } else {
        copy_buffered(src, out, 0, size)?;
    }
    sys::ftruncate(out, size)
}

fn copy_buffered(src: &dyn LowerFile, out: RawFd, from: u64, to: u64) -> Result<()> {
    let mut buf = vec![0u8; CHUNK.min((to - from) as usize).max(1)];
    let mut pos = from;
    while pos < to {
        let want = ((to - pos) as usize).min(buf.len());
        let n = src.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            sys::pwrite_all(out, &buf[..n], pos)?;
        }
        pos += n as u64;
    }
    Ok(())
}

/// Access and modification times of the file open as `fd`, to be put back with
/// [`restore_times`] after stacko changed the file for its own bookkeeping (a copy-up adds
/// an entry to the upper parent directory; the merged directory did not change, and kernel
/// overlayfs restores the parent's times the same way).
pub(crate) fn saved_times(fd: RawFd) -> Option<(SetTime, SetTime)> {
    let st = sys::fstat(fd).ok()?;
    Some((
        SetTime::At(st.st_atime, st.st_atime_nsec),
        SetTime::At(st.st_mtime, st.st_mtime_nsec),
    ))
}

/// Puts back times saved by [`saved_times`] (best effort, as in kernel overlayfs).
pub(crate) fn restore_times(fd: RawFd, times: Option<(SetTime, SetTime)>) {
    if let Some((a, m)) = times {
        let _ = sys::utimensat(fd, OsStr::new(""), a, m);
    }
}

impl OverlayFs {
    /// Makes sure directory `dir` (and its ancestors) exist in the upper; returns its fd.
    pub(crate) fn copy_up_dir_chain(&self, dir: &Arc<Node>) -> Result<Arc<OwnedFd>> {
        if let Some(fd) = dir.st().dirfd.clone() {
            return Ok(fd);
        }
        self.writable()?;
        let mut chain = vec![dir.clone()];
        loop {
            let last = chain.last().ok_or(Errno::EIO)?;
            let parent = last.st().parent;
            let pn = self.node(parent)?;
            if pn.st().dirfd.is_some() || pn.ino == last.ino {
                break;
            }
            chain.push(pn);
        }
        for n in chain.iter().rev() {
            self.copy_up(n, CopyMode::Meta)?;
        }
        dir.st().dirfd.clone().ok_or(Errno::EIO)
    }

    fn copied_enough(node: &Node, mode: CopyMode) -> bool {
        let s = node.st();
        let has = if node.kind == Kind::Dir {
            s.dirfd.is_some()
        } else {
            s.upper || s.indexed
        };
        has && !(mode == CopyMode::Data && s.metacopy)
    }

    /// Copies `node` up (metadata only if `mode` is `Meta` and metacopy is on).
    ///
    /// A hard-linked lower file normally goes to the index with its data; when the mounting
    /// user may not read that data (rootless, a root-only lower file), a metadata copy goes
    /// there instead (as kernel overlayfs, mounted by root, would copy the data), so that a
    /// metadata change or a rename of such a file does not fail for want of read permission.
    pub(crate) fn copy_up(&self, node: &Arc<Node>, mode: CopyMode) -> Result<()> {
        match self.copy_up_with(node, mode, false) {
            Err(e)
                if (e == Errno(libc::EACCES) || e == Errno(libc::EPERM))
                    && mode == CopyMode::Meta
                    && node.kind == Kind::File
                    && self.cfg.metacopy =>
            {
                self.copy_up_with(node, mode, true).map_err(|_| e)
            }
            r => r,
        }
    }

    /// [`Self::copy_up`]; with `meta_index`, a hard-linked file may go to the index as a
    /// metadata-only copy too (used when its data cannot be read, to keep its link count).
    pub(crate) fn copy_up_with(
        &self,
        node: &Arc<Node>,
        mode: CopyMode,
        meta_index: bool,
    ) -> Result<()> {
        if Self::copied_enough(node, mode) {
            return Ok(());
        }
        let u = self.writable()?;
        let _g = node.copy_lock.lock().unwrap_or_else(|e| e.into_inner());
        if Self::copied_enough(node, mode) {
            return Ok(());
        }
        let (parent, name, origin, has_upper, unlinked) = {
            let s = node.st();
            let has = if node.kind == Kind::Dir {
                s.dirfd.is_some()
            } else {
                s.upper || s.indexed
            };
            (s.parent, s.name.clone(), s.origin, has, s.unlinked)
        };
        if has_upper {
            // metadata is up; the data is missing
            return self.fill_metacopy(node);
        }
        if unlinked {
            return Err(Errno::ENOENT);
        }
        let (layer, lino) = origin.ok_or(Errno::EIO)?;
        let pdir = self.copy_up_dir_chain(&self.node(parent)?)?;
        let ptimes = saved_times(pdir.as_raw_fd());
        let lower = &self.lowers[layer];
        let la = lower.getattr(lino)?;
        let work = u.work_fd();
        let tmp = u.tmp_name();
        let mut meta_only = false;
        let mut made_kind = node.kind;
        let built = (|| -> Result<()> {
            match node.kind {
                Kind::Dir => sys::mkdirat(work, &tmp, 0o700)?,
                Kind::Symlink => {
                    let t = lower.readlink(lino)?;
                    sys::symlinkat(
                        <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&t),
                        work,
                        &tmp,
                    )?
                }
                Kind::File => {
                    let fd = sys::openat(
                        work,
                        &tmp,
                        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                        0o600,
                    )?;
                    meta_only = mode == CopyMode::Meta
                        && self.cfg.metacopy
                        && (meta_index || !(self.cfg.index && la.nlink > 1))
                        && la.size > 0
                        && decode_lower(node.ino).is_some();
                    if meta_only {
                        sys::ftruncate(fd.as_raw_fd(), la.size)?;
                        sys::setxattr(
                            XTarget::Fd(fd.as_raw_fd()),
                            OsStr::new(xattr::USER_METACOPY),
                            b"",
                            0,
                        )?;
                    } else if la.size > 0 {
                        let src = lower.open(lino)?;
                        copy_data(src.as_ref(), fd.as_raw_fd(), la.size)?;
                    }
                }
                Kind::CharDev | Kind::BlockDev | Kind::Fifo | Kind::Socket => {
                    match sys::mknodat(work, &tmp, node.kind.mode_bits() | 0o600, la.rdev) {
                        Ok(()) => {}
                        Err(Errno(libc::EPERM)) if !u.privileged => {
                            // Keep the intended type in override_stat on a placeholder file.
                            made_kind = Kind::File;
                            sys::openat(
                                work,
                                &tmp,
                                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                                0o600,
                            )?;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Kind::Whiteout => return Err(Errno::EIO),
            }
            let t = XTarget::At(work, &tmp);
            if let Ok(names) = lower.list_xattrs(lino) {
                for n in names {
                    if xattr::is_internal(&n) {
                        continue;
                    }
                    if let Ok(Some(v)) = lower.get_xattr(lino, &n) {
                        let _ = sys::setxattr(t, &n, &v, 0);
                    }
                }
            }
            if crate::sidemeta::needs_side(made_kind) {
                u.side_set(work, &tmp, xattr::ORIGIN, node.ino.to_string().as_bytes())?;
            } else {
                sys::setxattr(
                    t,
                    OsStr::new(xattr::ORIGIN),
                    node.ino.to_string().as_bytes(),
                    0,
                )?;
            }
            let ovr = self.set_owner_mode(work, &tmp, made_kind, la.uid, la.gid, la.perm)?;
            let ovr = if made_kind != node.kind {
                let v = format!(
                    "{}:{}:{:o}",
                    la.uid,
                    la.gid,
                    node.kind.mode_bits() | la.perm
                );
                sys::setxattr(t, OsStr::new(xattr::OVERRIDE_STAT), v.as_bytes(), 0)?;
                Some((la.uid, la.gid, la.perm))
            } else {
                ovr
            };
            sys::utimensat(
                work,
                &tmp,
                SetTime::At(la.atime.sec, la.atime.nsec as i64),
                SetTime::At(la.mtime.sec, la.mtime.nsec as i64),
            )?;
            let indexed = node.kind == Kind::File && self.cfg.index && la.nlink > 1;
            if indexed {
                let iname = Upper::index_name(node.ino);
                sys::setxattr(
                    t,
                    OsStr::new(xattr::NLINK),
                    la.nlink.to_string().as_bytes(),
                    0,
                )?;
                if meta_only {
                    // Its names may move or be made by link(2) later; the redirect (the lower
                    // path of this name, which is one of the file's lower names) keeps its
                    // data found from every name, and across a remount.
                    let plp = self.node(parent)?.st().lpath.clone();
                    let lp = crate::fs::join_lpath(plp.as_ref(), &name);
                    sys::setxattr(t, OsStr::new(xattr::USER_REDIRECT), &lp, 0)?;
                }
                match sys::renameat2(work, &tmp, u.index_fd(), &iname, libc::RENAME_NOREPLACE) {
                    Ok(()) => {}
                    Err(Errno(libc::EEXIST)) => {
                        // left over from an earlier mount: use it
                        let _ = sys::unlinkat(work, &tmp, 0);
                    }
                    Err(e) => return Err(e),
                }
                sys::linkat(u.index_fd(), &iname, pdir.as_raw_fd(), &name)?;
                let mut s = node.st_mut();
                s.indexed = true;
                s.upper = true;
                s.override_stat = ovr;
                s.metacopy = meta_only;
            } else {
                sys::renameat2(work, &tmp, pdir.as_raw_fd(), &name, 0)?;
                let dirfd = if node.kind == Kind::Dir {
                    Some(Arc::new(sys::open_dir(pdir.as_raw_fd(), &name)?))
                } else {
                    None
                };
                let mut s = node.st_mut();
                s.upper = true;
                s.dirfd = dirfd;
                s.override_stat = ovr;
                s.metacopy = meta_only;
            }
            if !meta_only {
                node.st_mut().data_gen += 1;
            }
            Ok(())
        })();
        restore_times(pdir.as_raw_fd(), ptimes);
        if let Err(e) = built {
            let _ = upper::remove_tree(work, &tmp);
            return Err(e);
        }
        self.dircache.invalidate(parent);
        Ok(())
    }

    /// Completes a metadata-only copy-up: writes the data into the upper file in place, then
    /// removes the metacopy mark.
    fn fill_metacopy(&self, node: &Arc<Node>) -> Result<()> {
        let origin = node.st().origin.ok_or(Errno::EIO)?;
        let (_h, fd, name) = self.upper_loc(node)?;
        let out = sys::openat(fd, &name, libc::O_WRONLY | libc::O_NOFOLLOW, 0)?;
        let size = sys::fstat(out.as_raw_fd())?.st_size as u64;
        // bringing the data up is no change of the merged file: keep its times
        let times = saved_times(out.as_raw_fd());
        let lower = &self.lowers[origin.0];
        let la = lower.getattr(origin.1)?;
        let src = lower.open(origin.1)?;
        copy_data(src.as_ref(), out.as_raw_fd(), la.size.min(size))?;
        sys::ftruncate(out.as_raw_fd(), size)?;
        restore_times(out.as_raw_fd(), times);
        sys::fsync(out.as_raw_fd(), true)?;
        self.clear_metacopy_mark(fd, &name)?;
        let mut s = node.st_mut();
        s.metacopy = false;
        s.data_gen += 1;
        Ok(())
    }

    fn clear_metacopy_mark(&self, fd: RawFd, name: &OsStr) -> Result<()> {
        // the redirect of a renamed metadata-only copy only says where its data was (kernel
        // overlayfs refuses a redirect on a file that is no metadata-only copy)
        match sys::removexattr(XTarget::At(fd, name), OsStr::new(xattr::USER_REDIRECT)) {
            Ok(()) | Err(Errno(libc::ENODATA)) => {}
            Err(e) => return Err(e),
        }
        for m in [xattr::USER_METACOPY, xattr::TRUSTED_METACOPY] {
            match sys::removexattr(XTarget::At(fd, name), OsStr::new(m)) {
                Ok(()) | Err(Errno(libc::ENODATA)) => {}
                Err(e) if m == xattr::TRUSTED_METACOPY => {
                    let _ = e;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Truncating a metadata-only copy to zero needs no data: drop the mark.
    pub(crate) fn drop_metacopy_by_truncate(&self, node: &Arc<Node>) -> Result<()> {
        let _g = node.copy_lock.lock().unwrap_or_else(|e| e.into_inner());
        if !node.st().metacopy {
            return Ok(());
        }
        let (_h, fd, name) = self.upper_loc(node)?;
        let f = sys::openat(fd, &name, libc::O_WRONLY | libc::O_NOFOLLOW, 0)?;
        sys::ftruncate(f.as_raw_fd(), 0)?;
        self.clear_metacopy_mark(fd, &name)?;
        let mut s = node.st_mut();
        s.metacopy = false;
        s.data_gen += 1;
        Ok(())
    }
}

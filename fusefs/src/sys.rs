//! Thin, safe wrappers around the `*at` system calls the filesystem is built on.
//!
//! Every function takes a directory file descriptor and a single path component (or a
//! relative path) and returns an [`Errno`] on failure.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::error::{Errno, Result};

/// Converts a name to a C string; a name holding NUL is invalid.
pub fn cstr(name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

fn check(r: libc::c_int) -> Result<libc::c_int> {
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

fn check_ssize(r: libc::ssize_t) -> Result<usize> {
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r as usize)
    }
}

/// `fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW)`; an empty name stats `dirfd` itself.
pub fn fstatat(dirfd: RawFd, name: &OsStr) -> Result<libc::stat> {
    let c = cstr(name)?;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let flags = if name.is_empty() {
        libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    check(unsafe { libc::fstatat(dirfd, c.as_ptr(), &mut st, flags) })?;
    Ok(st)
}

/// `fstatat` that maps ENOENT to `None`.
pub fn fstatat_opt(dirfd: RawFd, name: &OsStr) -> Result<Option<libc::stat>> {
    match fstatat(dirfd, name) {
        Ok(st) => Ok(Some(st)),
        Err(Errno(libc::ENOENT)) | Err(Errno(libc::ENOTDIR)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `fstat(fd)`.
pub fn fstat(fd: RawFd) -> Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// `openat(dirfd, name, flags | O_CLOEXEC, mode)`.
pub fn openat(dirfd: RawFd, name: &OsStr, flags: i32, mode: u32) -> Result<OwnedFd> {
    let c = cstr(name)?;
    let fd = check(unsafe {
        libc::openat(
            dirfd,
            c.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a directory (read-only, usable with `*at` calls, `fgetxattr` and listing).
pub fn open_dir(dirfd: RawFd, name: &OsStr) -> Result<OwnedFd> {
    openat(
        dirfd,
        if name.is_empty() {
            OsStr::new(".")
        } else {
            name
        },
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

/// `mkdirat`.
pub fn mkdirat(dirfd: RawFd, name: &OsStr, mode: u32) -> Result<()> {
    let c = cstr(name)?;
    check(unsafe { libc::mkdirat(dirfd, c.as_ptr(), mode) })?;
    Ok(())
}

/// `mknodat`.
pub fn mknodat(dirfd: RawFd, name: &OsStr, mode: u32, rdev: u64) -> Result<()> {
    let c = cstr(name)?;
    check(unsafe { libc::mknodat(dirfd, c.as_ptr(), mode, rdev as libc::dev_t) })?;
    Ok(())
}

/// `symlinkat(target, dirfd, name)`.
pub fn symlinkat(target: &OsStr, dirfd: RawFd, name: &OsStr) -> Result<()> {
    let t = cstr(target)?;
    let c = cstr(name)?;
    check(unsafe { libc::symlinkat(t.as_ptr(), dirfd, c.as_ptr()) })?;
    Ok(())
}

/// `linkat(olddir, oldname, newdir, newname, 0)`.
pub fn linkat(olddir: RawFd, oldname: &OsStr, newdir: RawFd, newname: &OsStr) -> Result<()> {
    let o = cstr(oldname)?;
    let n = cstr(newname)?;
    check(unsafe { libc::linkat(olddir, o.as_ptr(), newdir, n.as_ptr(), 0) })?;
    Ok(())
}

/// `unlinkat(dirfd, name, flags)`.
pub fn unlinkat(dirfd: RawFd, name: &OsStr, flags: i32) -> Result<()> {
    let c = cstr(name)?;
    check(unsafe { libc::unlinkat(dirfd, c.as_ptr(), flags) })?;
    Ok(())
}

/// `renameat2(olddir, oldname, newdir, newname, flags)`.
pub fn renameat2(
    olddir: RawFd,
    oldname: &OsStr,
    newdir: RawFd,
    newname: &OsStr,
    flags: u32,
) -> Result<()> {
    let o = cstr(oldname)?;
    let n = cstr(newname)?;
    check(unsafe { libc::renameat2(olddir, o.as_ptr(), newdir, n.as_ptr(), flags) })?;
    Ok(())
}

/// `readlinkat`.
pub fn readlinkat(dirfd: RawFd, name: &OsStr) -> Result<Vec<u8>> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; 256];
    loop {
        let n = check_ssize(unsafe {
            libc::readlinkat(dirfd, c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        })?;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// `fchownat(dirfd, name, uid, gid, AT_SYMLINK_NOFOLLOW)` (empty name: `dirfd` itself).
pub fn fchownat(dirfd: RawFd, name: &OsStr, uid: u32, gid: u32) -> Result<()> {
    let c = cstr(name)?;
    let flags = if name.is_empty() {
        libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    check(unsafe { libc::fchownat(dirfd, c.as_ptr(), uid, gid, flags) })?;
    Ok(())
}

/// `fchmodat(dirfd, name, mode, 0)`; symlinks are not followed by callers (they never chmod them).
pub fn fchmodat(dirfd: RawFd, name: &OsStr, mode: u32) -> Result<()> {
    if name.is_empty() {
        return fchmod(dirfd, mode);
    }
    let c = cstr(name)?;
    check(unsafe { libc::fchmodat(dirfd, c.as_ptr(), mode, 0) })?;
    Ok(())
}

/// `fchmod(fd, mode)`.
pub fn fchmod(fd: RawFd, mode: u32) -> Result<()> {
    check(unsafe { libc::fchmod(fd, mode) })?;
    Ok(())
}

/// A timestamp for [`utimensat`]: a value, "now" or "leave as is".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    /// Leave unchanged.
    Omit,
    /// Set to the current time.
    Now,
    /// Set to seconds and nanoseconds since the epoch.
    At(i64, i64),
}

fn timespec(t: SetTime) -> libc::timespec {
    match t {
        SetTime::Omit => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        SetTime::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        SetTime::At(s, ns) => libc::timespec {
            tv_sec: s,
            tv_nsec: ns,
        },
    }
}

/// `utimensat(dirfd, name, [atime, mtime], AT_SYMLINK_NOFOLLOW)` (empty name: `dirfd` itself).
pub fn utimensat(dirfd: RawFd, name: &OsStr, atime: SetTime, mtime: SetTime) -> Result<()> {
    let times = [timespec(atime), timespec(mtime)];
    if name.is_empty() {
        check(unsafe { libc::futimens(dirfd, times.as_ptr()) })?;
        return Ok(());
    }
    let c = cstr(name)?;
    check(unsafe {
        libc::utimensat(dirfd, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
    })?;
    Ok(())
}

/// `ftruncate`.
pub fn ftruncate(fd: RawFd, size: u64) -> Result<()> {
    check(unsafe { libc::ftruncate(fd, size as libc::off_t) })?;
    Ok(())
}

/// `pread`.
pub fn pread(fd: RawFd, buf: &mut [u8], offset: u64) -> Result<usize> {
    loop {
        let r = unsafe {
            libc::pread(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                offset as libc::off_t,
            )
        };
        match check_ssize(r) {
            Err(Errno(libc::EINTR)) => continue,
            x => return x,
        }
    }
}

/// Reads until `buf` is full or end of file.
pub fn pread_full(fd: RawFd, buf: &mut [u8], offset: u64) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = pread(fd, &mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// `pwrite`, writing everything.
pub fn pwrite_all(fd: RawFd, buf: &[u8], offset: u64) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let r = unsafe {
            libc::pwrite(
                fd,
                buf[done..].as_ptr().cast(),
                buf.len() - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        match check_ssize(r) {
            Err(Errno(libc::EINTR)) => continue,
            Err(e) => {
                if done > 0 {
                    return Ok(done);
                }
                return Err(e);
            }
            Ok(0) => break,
            Ok(n) => done += n,
        }
    }
    Ok(done)
}

/// `copy_file_range` between two fds at explicit offsets; returns bytes copied.
pub fn copy_file_range(
    fd_in: RawFd,
    off_in: u64,
    fd_out: RawFd,
    off_out: u64,
    len: usize,
) -> Result<usize> {
    let mut oi = off_in as libc::loff_t;
    let mut oo = off_out as libc::loff_t;
    let r = unsafe { libc::copy_file_range(fd_in, &mut oi, fd_out, &mut oo, len, 0) };
    check_ssize(r)
}

/// `lseek` (used for SEEK_DATA / SEEK_HOLE).
pub fn lseek(fd: RawFd, offset: i64, whence: i32) -> Result<i64> {
    let r = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r as i64)
    }
}

/// `fallocate`.
pub fn fallocate(fd: RawFd, mode: i32, offset: u64, len: u64) -> Result<()> {
    check(unsafe { libc::fallocate(fd, mode, offset as libc::off_t, len as libc::off_t) })?;
    Ok(())
}

/// `fsync` or `fdatasync`.
pub fn fsync(fd: RawFd, datasync: bool) -> Result<()> {
    check(unsafe {
        if datasync {
            libc::fdatasync(fd)
        } else {
            libc::fsync(fd)
        }
    })?;
    Ok(())
}

/// `fstatvfs`.
pub fn fstatvfs(fd: RawFd) -> Result<libc::statvfs> {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstatvfs(fd, &mut st) })?;
    Ok(st)
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct RawDirent {
    /// Entry name.
    pub name: OsString,
    /// Inode number as stored in the directory.
    pub ino: u64,
    /// `DT_*` type, `DT_UNKNOWN` if the filesystem does not say.
    pub dtype: u8,
}

/// Lists a directory (without `.` and `..`), given an fd of it.
pub fn list_dir(dirfd: RawFd) -> Result<Vec<RawDirent>> {
    let fd = openat(
        dirfd,
        OsStr::new("."),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )?;
    let raw = fd.as_raw_fd();
    let dir = unsafe { libc::fdopendir(raw) };
    if dir.is_null() {
        return Err(Errno::last());
    }
    std::mem::forget(fd); // owned by `dir` now
    let mut out = Vec::new();
    loop {
        unsafe { *libc::__errno_location() = 0 };
        let ent = unsafe { libc::readdir64(dir) };
        if ent.is_null() {
            let err = unsafe { *libc::__errno_location() };
            unsafe { libc::closedir(dir) };
            if err != 0 {
                return Err(Errno(err));
            }
            break;
        }
        let ent = unsafe { &*ent };
        let name = unsafe { CStr::from_ptr(ent.d_name.as_ptr()) }.to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push(RawDirent {
            name: OsString::from_vec(name.to_vec()),
            ino: ent.d_ino,
            dtype: ent.d_type,
        });
    }
    Ok(out)
}

/// Path naming `name` inside the directory open as `dirfd`, through `/proc/self/fd`, for
/// calls that have no `*at` form (the `l*xattr` family). An empty name names the directory.
pub fn proc_path(dirfd: RawFd, name: &OsStr) -> Result<CString> {
    let mut p = format!("/proc/self/fd/{dirfd}").into_bytes();
    if !name.is_empty() {
        p.push(b'/');
        p.extend_from_slice(name.as_bytes());
    }
    CString::new(p).map_err(|_| Errno::EINVAL)
}

/// Where an xattr call applies: an open fd, or a name inside a directory fd (not followed).
#[derive(Debug, Clone, Copy)]
pub enum XTarget<'a> {
    /// An fd opened for reading (not `O_PATH`).
    Fd(RawFd),
    /// `name` inside directory `dirfd`; the empty name means the directory itself.
    At(RawFd, &'a OsStr),
}

/// Whether the kernel lacks the `*xattrat` system calls (Linux < 6.13): then xattrs of a
/// name inside a directory fd go through a `/proc/self/fd` path.
static NO_XATTRAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

// System call numbers of the `*xattrat` calls (Linux 6.13; the same on every architecture).
const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
const SYS_REMOVEXATTRAT: libc::c_long = 466;

/// `struct xattr_args` of the `*xattrat` calls.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// Runs an `*xattrat` call on (`dirfd`, `name`) without following symlinks; `None` when
/// the kernel does not have it (the caller then uses the `/proc` path).
fn xattrat(
    call: impl FnOnce(libc::c_int, *const libc::c_char, libc::c_uint) -> libc::c_long,
    dirfd: RawFd,
    name: &CStr,
) -> Option<libc::c_long> {
    use std::sync::atomic::Ordering;
    if NO_XATTRAT.load(Ordering::Relaxed) {
        return None;
    }
    let r = call(
        dirfd,
        name.as_ptr(),
        libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
    );
    if r < 0 && Errno::last() == Errno::ENOSYS {
        NO_XATTRAT.store(true, Ordering::Relaxed);
        return None;
    }
    Some(r)
}

/// Gets an xattr; `Ok(None)` if it is not set.
pub fn getxattr(t: XTarget<'_>, name: &OsStr) -> Result<Option<Vec<u8>>> {
    let n = cstr(name)?;
    let at = match t {
        XTarget::At(d, p) if !p.is_empty() => Some((d, cstr(p)?)),
        _ => None,
    };
    let mut path = None;
    let mut buf = vec![0u8; 256];
    loop {
        if let Some((d, p)) = &at {
            let r = xattrat(
                |fd, pp, fl| unsafe {
                    let args = XattrArgs {
                        value: buf.as_mut_ptr() as u64,
                        size: buf.len() as u32,
                        flags: 0,
                    };
                    libc::syscall(
                        SYS_GETXATTRAT,
                        fd,
                        pp,
                        fl,
                        n.as_ptr(),
                        &args as *const XattrArgs,
                        std::mem::size_of::<XattrArgs>(),
                    )
                },
                *d,
                p,
            );
            match r {
                Some(r) => match check_ssize(r as libc::ssize_t) {
                    Ok(len) => {
                        buf.truncate(len);
                        return Ok(Some(buf));
                    }
                    Err(Errno(libc::ENODATA)) => return Ok(None),
                    Err(Errno(libc::ERANGE)) if buf.len() < 1 << 20 => {
                        buf.resize(buf.len() * 8, 0);
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                None => {
                    if path.is_none() {
                        if let XTarget::At(d, p) = t {
                            path = Some(proc_path(d, p)?);
                        }
                    }
                }
            }
        }
        let r = unsafe {
            match (&path, t) {
                (Some(p), _) => {
                    libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                }
                (None, XTarget::Fd(fd)) | (None, XTarget::At(fd, _)) => {
                    libc::fgetxattr(fd, n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                }
            }
        };
        match check_ssize(r) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(Some(buf));
            }
            Err(Errno(libc::ENODATA)) => return Ok(None),
            Err(Errno(libc::ERANGE)) if buf.len() < 1 << 20 => buf.resize(buf.len() * 8, 0),
            Err(e) => return Err(e),
        }
    }
}

/// Sets an xattr with `flags` (`XATTR_CREATE` / `XATTR_REPLACE` / 0).
pub fn setxattr(t: XTarget<'_>, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
    let n = cstr(name)?;
    let r = unsafe {
        match t {
            XTarget::At(d, p) if !p.is_empty() => {
                let pc = cstr(p)?;
                let args = XattrArgs {
                    value: value.as_ptr() as u64,
                    size: value.len() as u32,
                    flags: flags as u32,
                };
                match xattrat(
                    |fd, pp, fl| {
                        libc::syscall(
                            SYS_SETXATTRAT,
                            fd,
                            pp,
                            fl,
                            n.as_ptr(),
                            &args as *const XattrArgs,
                            std::mem::size_of::<XattrArgs>(),
                        )
                    },
                    d,
                    &pc,
                ) {
                    Some(r) => r as libc::c_int,
                    None => {
                        let path = proc_path(d, p)?;
                        libc::lsetxattr(
                            path.as_ptr(),
                            n.as_ptr(),
                            value.as_ptr().cast(),
                            value.len(),
                            flags,
                        )
                    }
                }
            }
            XTarget::Fd(fd) | XTarget::At(fd, _) => {
                libc::fsetxattr(fd, n.as_ptr(), value.as_ptr().cast(), value.len(), flags)
            }
        }
    };
    check(r)?;
    Ok(())
}

/// Removes an xattr.
pub fn removexattr(t: XTarget<'_>, name: &OsStr) -> Result<()> {
    let n = cstr(name)?;
    let r = unsafe {
        match t {
            XTarget::At(d, p) if !p.is_empty() => {
                let pc = cstr(p)?;
                match xattrat(
                    |fd, pp, fl| libc::syscall(SYS_REMOVEXATTRAT, fd, pp, fl, n.as_ptr()),
                    d,
                    &pc,
                ) {
                    Some(r) => r as libc::c_int,
                    None => {
                        let path = proc_path(d, p)?;
                        libc::lremovexattr(path.as_ptr(), n.as_ptr())
                    }
                }
            }
            XTarget::Fd(fd) | XTarget::At(fd, _) => libc::fremovexattr(fd, n.as_ptr()),
        }
    };
    check(r)?;
    Ok(())
}

/// Lists xattr names.
pub fn listxattr(t: XTarget<'_>) -> Result<Vec<OsString>> {
    let at = match t {
        XTarget::At(d, p) if !p.is_empty() => Some((d, cstr(p)?)),
        _ => None,
    };
    let mut path = None;
    let mut buf = vec![0u8; 1024];
    loop {
        let via_at = match &at {
            Some((d, p)) => xattrat(
                |fd, pp, fl| unsafe {
                    libc::syscall(SYS_LISTXATTRAT, fd, pp, fl, buf.as_mut_ptr(), buf.len())
                },
                *d,
                p,
            ),
            None => None,
        };
        if via_at.is_none() && at.is_some() && path.is_none() {
            if let XTarget::At(d, p) = t {
                path = Some(proc_path(d, p)?);
            }
        }
        let r = unsafe {
            match (via_at, &path, t) {
                (Some(r), _, _) => r as libc::ssize_t,
                (None, Some(p), _) => {
                    libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                }
                (None, None, XTarget::Fd(fd)) | (None, None, XTarget::At(fd, _)) => {
                    libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len())
                }
            }
        };
        match check_ssize(r) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| OsString::from_vec(s.to_vec()))
                    .collect());
            }
            Err(Errno(libc::ERANGE)) if buf.len() < 1 << 20 => buf.resize(buf.len() * 8, 0),
            Err(Errno(libc::ENOTSUP)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    }
}

/// Current effective uid.
pub fn geteuid() -> u32 {
    unsafe { libc::geteuid() }
}

/// Current effective gid.
pub fn getegid() -> u32 {
    unsafe { libc::getegid() }
}

/// Whether this `stat` is an overlay whiteout (a character device 0:0).
pub fn is_whiteout_stat(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// Raises the soft open-file limit to the hard limit (the daemon holds a directory fd for
/// every directory that has an upper part, and one fd per open file).
pub fn raise_nofile_limit() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

//! Thin syscall wrappers: every call returns `Ok(value)` or `Err(errno)`, so that the
//! differential tests can compare outcomes exactly, errno for errno.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// An errno value.
pub type Errno = i32;
/// Result of one syscall.
pub type SysResult<T> = Result<T, Errno>;

/// The symbolic name of an errno (for messages).
pub fn errno_name(e: Errno) -> String {
    let n = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETXTBSY => "ETXTBSY",
        libc::ERANGE => "ERANGE",
        libc::E2BIG => "E2BIG",
        _ => return format!("errno {e}"),
    };
    n.to_string()
}

fn errno() -> Errno {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Path to a C string (paths with NUL never occur in the tests).
pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("string without NUL")
}

fn check(r: libc::c_int) -> SysResult<()> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// An owned file descriptor; closed on drop (errors ignored), or by [`Fd::close`] (errors reported).
#[derive(Debug)]
pub struct Fd(pub libc::c_int);

impl Fd {
    /// Closes, reporting the errno of close(2) (FUSE flush errors surface here).
    pub fn close(mut self) -> SysResult<()> {
        let fd = std::mem::replace(&mut self.0, -1);
        check(unsafe { libc::close(fd) })
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        if self.0 >= 0 {
            unsafe { libc::close(self.0) };
        }
    }
}

/// open(2).
pub fn open(p: &Path, flags: libc::c_int, mode: u32) -> SysResult<Fd> {
    let c = cpath(p);
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(Fd(fd))
    }
}

/// pwrite(2), looping over short writes.
pub fn pwrite_all(fd: &Fd, mut buf: &[u8], mut off: u64) -> SysResult<usize> {
    let mut done = 0;
    while !buf.is_empty() {
        let n = unsafe { libc::pwrite(fd.0, buf.as_ptr().cast(), buf.len(), off as libc::off_t) };
        if n < 0 {
            return Err(errno());
        }
        if n == 0 {
            return Err(libc::EIO);
        }
        let n = n as usize;
        done += n;
        off += n as u64;
        buf = &buf[n..];
    }
    Ok(done)
}

/// write(2), looping over short writes.
pub fn write_all(fd: &Fd, mut buf: &[u8]) -> SysResult<usize> {
    let mut done = 0;
    while !buf.is_empty() {
        let n = unsafe { libc::write(fd.0, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(errno());
        }
        if n == 0 {
            return Err(libc::EIO);
        }
        done += n as usize;
        buf = &buf[n as usize..];
    }
    Ok(done)
}

/// pread(2) of up to `len` bytes, looping until EOF or `len`.
pub fn pread(fd: &Fd, len: usize, off: u64) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = unsafe {
            libc::pread(
                fd.0,
                buf[got..].as_mut_ptr().cast(),
                len - got,
                (off + got as u64) as libc::off_t,
            )
        };
        if n < 0 {
            return Err(errno());
        }
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    buf.truncate(got);
    Ok(buf)
}

/// Reads a whole file by path.
pub fn read_file(p: &Path) -> SysResult<Vec<u8>> {
    let fd = open(p, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
    let mut out = Vec::new();
    loop {
        let chunk = pread(&fd, 1 << 20, out.len() as u64)?;
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    fd.close()?;
    Ok(out)
}

/// Writes a whole file (create/truncate) with `mode`.
pub fn write_file(p: &Path, data: &[u8], mode: u32) -> SysResult<()> {
    let fd = open(p, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, mode)?;
    write_all(&fd, data)?;
    fd.close()
}

/// stat(2) (follows symlinks).
pub fn stat(p: &Path) -> SysResult<libc::stat> {
    let c = cpath(p);
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::stat(c.as_ptr(), &mut st) })?;
    Ok(st)
}

/// lstat(2).
pub fn lstat(p: &Path) -> SysResult<libc::stat> {
    let c = cpath(p);
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::lstat(c.as_ptr(), &mut st) })?;
    Ok(st)
}

/// fstat(2).
pub fn fstat(fd: &Fd) -> SysResult<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd.0, &mut st) })?;
    Ok(st)
}

/// truncate(2).
pub fn truncate(p: &Path, len: u64) -> SysResult<()> {
    let c = cpath(p);
    check(unsafe { libc::truncate(c.as_ptr(), len as libc::off_t) })
}

/// ftruncate(2).
pub fn ftruncate(fd: &Fd, len: u64) -> SysResult<()> {
    check(unsafe { libc::ftruncate(fd.0, len as libc::off_t) })
}

/// fallocate(2).
pub fn fallocate(fd: &Fd, mode: i32, off: u64, len: u64) -> SysResult<()> {
    check(unsafe { libc::fallocate(fd.0, mode, off as libc::off_t, len as libc::off_t) })
}

/// fsync(2).
pub fn fsync(fd: &Fd) -> SysResult<()> {
    check(unsafe { libc::fsync(fd.0) })
}

/// mkdir(2).
pub fn mkdir(p: &Path, mode: u32) -> SysResult<()> {
    let c = cpath(p);
    check(unsafe { libc::mkdir(c.as_ptr(), mode as libc::mode_t) })
}

/// rmdir(2).
pub fn rmdir(p: &Path) -> SysResult<()> {
    let c = cpath(p);
    check(unsafe { libc::rmdir(c.as_ptr()) })
}

/// unlink(2).
pub fn unlink(p: &Path) -> SysResult<()> {
    let c = cpath(p);
    check(unsafe { libc::unlink(c.as_ptr()) })
}

/// renameat2(2) with `flags` (0, RENAME_NOREPLACE or RENAME_EXCHANGE).
pub fn rename2(from: &Path, to: &Path, flags: u32) -> SysResult<()> {
    let a = cpath(from);
    let b = cpath(to);
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    })
}

/// link(2) (does not follow a symlink source).
pub fn link(from: &Path, to: &Path) -> SysResult<()> {
    let a = cpath(from);
    let b = cpath(to);
    check(unsafe { libc::link(a.as_ptr(), b.as_ptr()) })
}

/// symlink(2): creates `p` pointing at `target`.
pub fn symlink(target: &str, p: &Path) -> SysResult<()> {
    let t = cstr(target);
    let c = cpath(p);
    check(unsafe { libc::symlink(t.as_ptr(), c.as_ptr()) })
}

/// mknod(2).
pub fn mknod(p: &Path, mode: u32, dev: u64) -> SysResult<()> {
    let c = cpath(p);
    check(unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, dev as libc::dev_t) })
}

/// chmod(2) (follows symlinks).
pub fn chmod(p: &Path, mode: u32) -> SysResult<()> {
    let c = cpath(p);
    check(unsafe { libc::chmod(c.as_ptr(), mode as libc::mode_t) })
}

/// chown(2) (follows symlinks).
pub fn chown(p: &Path, uid: u32, gid: u32) -> SysResult<()> {
    let c = cpath(p);
    check(unsafe { libc::chown(c.as_ptr(), uid, gid) })
}

/// lchown(2).
pub fn lchown(p: &Path, uid: u32, gid: u32) -> SysResult<()> {
    let c = cpath(p);
    check(unsafe { libc::lchown(c.as_ptr(), uid, gid) })
}

/// utimensat(2) with explicit times `(sec, nsec)`; `follow=false` sets AT_SYMLINK_NOFOLLOW.
pub fn utimens(p: &Path, atime: (i64, i64), mtime: (i64, i64), follow: bool) -> SysResult<()> {
    let c = cpath(p);
    let ts = [
        libc::timespec {
            tv_sec: atime.0 as libc::time_t,
            tv_nsec: atime.1 as _,
        },
        libc::timespec {
            tv_sec: mtime.0 as libc::time_t,
            tv_nsec: mtime.1 as _,
        },
    ];
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    check(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), flags) })
}

/// readlink(2).
pub fn readlink(p: &Path) -> SysResult<Vec<u8>> {
    let c = cpath(p);
    let mut buf = vec![0u8; 4096];
    let n = unsafe { libc::readlink(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(errno());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// setxattr(2) (follows symlinks) or lsetxattr(2).
pub fn setxattr(p: &Path, name: &str, value: &[u8], follow: bool) -> SysResult<()> {
    let c = cpath(p);
    let n = cstr(name);
    check(unsafe {
        if follow {
            libc::setxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        } else {
            libc::lsetxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        }
    })
}

/// removexattr(2) (follows symlinks).
pub fn removexattr(p: &Path, name: &str) -> SysResult<()> {
    let c = cpath(p);
    let n = cstr(name);
    check(unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) })
}

/// lgetxattr(2).
pub fn lgetxattr(p: &Path, name: &str) -> SysResult<Vec<u8>> {
    let c = cpath(p);
    let n = cstr(name);
    let mut buf = vec![0u8; 65536];
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(errno());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// llistxattr(2): the names.
pub fn llistxattr(p: &Path) -> SysResult<Vec<String>> {
    let c = cpath(p);
    let mut buf = vec![0u8; 65536];
    let r = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(errno());
    }
    buf.truncate(r as usize);
    Ok(buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// readdir(3) of `p`: (name, d_type) without `.` and `..`, sorted by name.
pub fn readdir(p: &Path) -> SysResult<Vec<(String, u8)>> {
    let c = cpath(p);
    let dir = unsafe { libc::opendir(c.as_ptr()) };
    if dir.is_null() {
        return Err(errno());
    }
    let mut out = Vec::new();
    loop {
        // readdir returns NULL at the end and on error; errno tells which.
        unsafe { *libc::__errno_location() = 0 };
        let ent = unsafe { libc::readdir64(dir) };
        if ent.is_null() {
            let e = unsafe { *libc::__errno_location() };
            unsafe { libc::closedir(dir) };
            if e != 0 {
                return Err(e);
            }
            break;
        }
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        let name = String::from_utf8_lossy(name.to_bytes()).into_owned();
        if name == "." || name == ".." {
            continue;
        }
        out.push((name, unsafe { (*ent).d_type }));
    }
    out.sort();
    Ok(out)
}

/// Kind letter of a mode: `f` file, `d` dir, `l` symlink, `p` fifo, `c` char, `b` block, `s` socket.
pub fn kind_of(mode: u32) -> char {
    match mode & libc::S_IFMT {
        libc::S_IFREG => 'f',
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFIFO => 'p',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFSOCK => 's',
        _ => '?',
    }
}

/// Whether `p` is a mount point in this mount namespace (by /proc/self/mountinfo).
pub fn is_mountpoint(p: &Path) -> bool {
    let want = p.as_os_str().as_bytes();
    let info = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
    info.split(|b| *b == b'\n').any(|line| {
        line.split(|b| *b == b' ')
            .nth(4)
            .map(|mp| unescape_mountinfo(mp) == want)
            .unwrap_or(false)
    })
}

/// The fstype column of the mountinfo line of mount point `p`.
pub fn mount_fstype(p: &Path) -> Option<String> {
    let want = p.as_os_str().as_bytes();
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() > 4 && unescape_mountinfo(f[4].as_bytes()) == want {
            let dash = f.iter().position(|x| *x == "-")?;
            f.get(dash + 1).map(|s| s.to_string())
        } else {
            None
        }
    })
}

fn unescape_mountinfo(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (s[i + 1] - b'0') * 64 + (s[i + 2] - b'0') * 8 + (s[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// umount2(2).
pub fn umount2(p: &Path, flags: i32) -> SysResult<()> {
    let c = cpath(p);
    check(unsafe { libc::umount2(c.as_ptr(), flags) })
}

/// mount(2) of kernel overlayfs with the given option string.
pub fn mount_overlay(target: &Path, data: &str) -> SysResult<()> {
    let src = cstr("overlay");
    let t = cpath(target);
    let d = cstr(data);
    check(unsafe { libc::mount(src.as_ptr(), t.as_ptr(), src.as_ptr(), 0, d.as_ptr().cast()) })
}

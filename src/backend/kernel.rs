//! Mounting kernel overlayfs through the new mount API, with a `mount(2)` fallback.
//!
//! The new API (`fsopen`/`fsconfig`/`fsmount`/`move_mount`, Linux >= 5.2) passes each
//! lower layer as its own `lowerdir+` parameter (Linux >= 6.8), so the stack depth is
//! not bounded by the one-page option string of `mount(2)`; the kernel's own limit
//! is 500 lower layers. When `fsopen` is missing (`ENOSYS`) or the kernel does not
//! know `lowerdir+`, the mount is done with `mount(2)` and `lowerdir=a:b:...`, and an
//! option string longer than a page is refused with [`Error::OptionsTooLong`].
//!
//! The upper format stacko writes uses `user.overlay.*` xattrs, so `userxattr` is on
//! by default; it is what lets the mount work inside a user namespace too.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::error::{last_errno, Error, Result};

const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_SET_FD: libc::c_uint = 5;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
const MOUNT_ATTR_RDONLY: libc::c_uint = 0x1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
/// Longest string value `fsconfig(FSCONFIG_SET_STRING)` accepts (the kernel copies
/// at most 256 bytes including the NUL). Longer layer paths are passed as file
/// descriptors (`FSCONFIG_SET_FD`, overlayfs in Linux >= 6.13).
pub const FSCONFIG_STRING_MAX: usize = 255;

/// The writable part of an overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpperDirs {
    /// Upper directory (receives writes, whiteouts, opaque markers).
    pub upper: PathBuf,
    /// Empty work directory on the same filesystem as `upper`.
    pub work: PathBuf,
}

/// An overlay mount to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// Lower layers, topmost first. Without an upper, at least two are needed.
    pub lowers: Vec<PathBuf>,
    /// Upper and work directories; `None` gives a read-only overlay.
    pub upper: Option<UpperDirs>,
    /// Use `user.overlay.*` xattrs (`-o userxattr`). Default `true`: stacko's format.
    pub userxattr: bool,
    /// Mount read-only (`MOUNT_ATTR_RDONLY`).
    pub read_only: bool,
    /// Source shown in `/proc/self/mountinfo`. Default `"stacko"`.
    pub source: String,
}

/// Which kernel interface made the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountApi {
    /// `fsopen`/`fsconfig` with one `lowerdir+` per layer.
    FsConfig,
    /// `mount(2)` with a `lowerdir=a:b` option string.
    Legacy,
}

impl Overlay {
    /// An overlay of `lowers` (topmost first), read-only, with `userxattr`.
    pub fn new(lowers: Vec<PathBuf>) -> Overlay {
        Overlay {
            lowers,
            upper: None,
            userxattr: true,
            read_only: false,
            source: "stacko".to_string(),
        }
    }

    /// Add an upper and a work directory, making the overlay writable.
    pub fn with_upper(mut self, upper: impl Into<PathBuf>, work: impl Into<PathBuf>) -> Overlay {
        self.upper = Some(UpperDirs {
            upper: upper.into(),
            work: work.into(),
        });
        self
    }

    /// Mount on `target` (an existing directory). Uses the new mount API when the kernel
    /// has it, else `mount(2)`; returns which one was used.
    pub fn mount(&self, target: &Path) -> Result<MountApi> {
        self.check(target)?;
        match self.mount_fsconfig(target)? {
            Some(()) => Ok(MountApi::FsConfig),
            None => self.mount_legacy(target).map(|()| MountApi::Legacy),
        }
    }

    fn check(&self, target: &Path) -> Result<()> {
        if self.lowers.is_empty() {
            return Err(Error::Unavailable {
                message: format!("overlay on {}: no lower layer given", target.display()),
                errno: Some(libc::EINVAL),
            });
        }
        Ok(())
    }

    /// The new mount API. `Ok(None)` means the kernel lacks it (or `lowerdir+`): fall back.
    fn mount_fsconfig(&self, target: &Path) -> Result<Option<()>> {
        // Before 6.5 overlayfs sat behind the VFS's legacy fs_context wrapper, which
        // accepts any key (so `lowerdir+` would only fail at create): use mount(2).
        if kernel_release().is_some_and(|v| v < (6, 5)) {
            return Ok(None);
        }
        let ctx = match FsContext::open("overlay") {
            Ok(ctx) => ctx,
            Err(libc::ENOSYS) => return Ok(None),
            Err(errno) => {
                return Err(os_error(
                    "fsopen overlay",
                    target,
                    errno,
                    Vec::new(),
                    hint(errno),
                ))
            }
        };
        ctx.set_string("source", OsStr::new(&self.source), target)?;
        for (i, lower) in self.lowers.iter().enumerate() {
            let lower = absolute(lower)?;
            match ctx.set_string("lowerdir+", lower.as_os_str(), &lower) {
                Ok(()) => {}
                // Kernel < 6.8: "overlay: Unknown parameter 'lowerdir+'".
                Err(Error::Os {
                    errno: libc::EINVAL,
                    kernel,
                    ..
                }) if i == 0 && kernel.iter().any(|l| l.contains("Unknown parameter")) => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(u) = &self.upper {
            let upper = absolute(&u.upper)?;
            let work = absolute(&u.work)?;
            ctx.set_string("upperdir", upper.as_os_str(), &upper)?;
            ctx.set_string("workdir", work.as_os_str(), &work)?;
        }
        if self.userxattr {
            ctx.set_flag("userxattr", target)?;
        }
        ctx.create(target)?;
        let attrs = if self.read_only { MOUNT_ATTR_RDONLY } else { 0 };
        // SAFETY: fsmount on a valid fs context fd.
        let mfd = unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                ctx.fd.as_raw_fd(),
                FSMOUNT_CLOEXEC,
                attrs,
            )
        };
        if mfd < 0 {
            let errno = last_errno();
            return Err(os_error("fsmount overlay", target, errno, ctx.log(), None));
        }
        // SAFETY: mfd is a new fd owned by nobody else.
        let mfd = unsafe { OwnedFd::from_raw_fd(mfd as libc::c_int) };
        let t = cstring(target.as_os_str(), target)?;
        // SAFETY: valid fd, empty path with MOVE_MOUNT_F_EMPTY_PATH, valid target string.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mfd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if r < 0 {
            let errno = last_errno();
            return Err(os_error(
                "move_mount overlay to",
                target,
                errno,
                Vec::new(),
                hint(errno),
            ));
        }
        Ok(Some(()))
    }

    /// The `lowerdir=a:b:c,...` option string for `mount(2)`, with `\`, `:` and `,` escaped.
    pub(crate) fn legacy_options(&self) -> Result<Vec<u8>> {
        let mut o = b"lowerdir=".to_vec();
        for (i, lower) in self.lowers.iter().enumerate() {
            if i > 0 {
                o.push(b':');
            }
            escape_into(&mut o, absolute(lower)?.as_os_str());
        }
        if let Some(u) = &self.upper {
            o.extend_from_slice(b",upperdir=");
            escape_into(&mut o, absolute(&u.upper)?.as_os_str());
            o.extend_from_slice(b",workdir=");
            escape_into(&mut o, absolute(&u.work)?.as_os_str());
        }
        if self.userxattr {
            o.extend_from_slice(b",userxattr");
        }
        Ok(o)
    }

    /// Mount with `mount(2)`. Refuses an option string over one page, which the kernel
    /// would silently truncate.
    pub(crate) fn mount_legacy(&self, target: &Path) -> Result<()> {
        self.check(target)?;
        let opts = self.legacy_options()?;
        // SAFETY: sysconf cannot fail for _SC_PAGESIZE.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        if opts.len() + 1 > page {
            return Err(Error::OptionsTooLong {
                layers: self.lowers.len(),
                len: opts.len() + 1,
                limit: page,
            });
        }
        let data = cstring(OsStr::from_bytes(&opts), target)?;
        let src = cstring(OsStr::new(&self.source), target)?;
        let t = cstring(target.as_os_str(), target)?;
        let flags = if self.read_only { libc::MS_RDONLY } else { 0 };
        // SAFETY: all pointers are valid NUL-terminated strings.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                t.as_ptr(),
                c"overlay".as_ptr(),
                flags,
                data.as_ptr().cast(),
            )
        };
        if r != 0 {
            let errno = last_errno();
            return Err(os_error(
                "mount overlay on",
                target,
                errno,
                Vec::new(),
                hint(errno),
            ));
        }
        Ok(())
    }
}

/// The running kernel's (major, minor) version, from `uname`.
pub fn kernel_release() -> Option<(u32, u32)> {
    // SAFETY: uname fills a zeroed struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    // SAFETY: uname NUL-terminates release.
    let rel = unsafe { CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    parse_release(&rel)
}

/// Parse `"6.18.44-foo"` into `(6, 18)`.
fn parse_release(rel: &str) -> Option<(u32, u32)> {
    let mut it = rel.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn escape_into(out: &mut Vec<u8>, s: &OsStr) {
    for &b in s.as_bytes() {
        if matches!(b, b'\\' | b':' | b',') {
            out.push(b'\\');
        }
        out.push(b);
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| Error::Os {
        op: "resolve".into(),
        path: p.to_path_buf(),
        errno: e.raw_os_error().unwrap_or(libc::EINVAL),
        kernel: Vec::new(),
        hint: None,
    })
}

fn cstring(s: &OsStr, path: &Path) -> Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| Error::Os {
        op: "path contains a NUL byte:".into(),
        path: path.to_path_buf(),
        errno: libc::EINVAL,
        kernel: Vec::new(),
        hint: None,
    })
}

/// Advice for errors whose usual cause is missing privilege.
fn hint(errno: i32) -> Option<&'static str> {
    match errno {
        libc::EPERM => {
            Some("kernel overlayfs needs CAP_SYS_ADMIN: run as root or use `stacko run`")
        }
        libc::ENODEV => Some("the kernel has no overlayfs: `modprobe overlay`"),
        _ => None,
    }
}

fn os_error(op: &str, path: &Path, errno: i32, kernel: Vec<String>, hint: Option<&str>) -> Error {
    Error::Os {
        op: op.to_string(),
        path: path.to_path_buf(),
        errno,
        kernel,
        hint: hint.map(str::to_string),
    }
}

/// An `fsopen` filesystem context.
struct FsContext {
    fd: OwnedFd,
}

impl FsContext {
    /// `fsopen(fstype)`; the error is the raw errno so the caller can detect `ENOSYS`.
    fn open(fstype: &str) -> std::result::Result<FsContext, i32> {
        let name = CString::new(fstype).map_err(|_| libc::EINVAL)?;
        // SAFETY: valid string; returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
        if fd < 0 {
            return Err(last_errno());
        }
        // SAFETY: fd is new and owned by nobody else.
        Ok(FsContext {
            fd: unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) },
        })
    }

    fn config(&self, cmd: libc::c_uint, key: Option<&CStr>, value: Option<&CStr>) -> libc::c_long {
        let key = key.map_or(std::ptr::null(), |k| k.as_ptr());
        let value = value.map_or(std::ptr::null(), |v| v.as_ptr());
        // SAFETY: valid fd and NUL-terminated strings or nulls, as fsconfig expects for cmd.
        unsafe { libc::syscall(libc::SYS_fsconfig, self.fd.as_raw_fd(), cmd, key, value, 0) }
    }

    /// Set a string parameter; a value too long for `fsconfig` is passed as an fd instead.
    fn set_string(&self, key: &str, value: &OsStr, path: &Path) -> Result<()> {
        if value.len() > FSCONFIG_STRING_MAX {
            return self.set_dir_fd(key, path);
        }
        let op = format!("overlay fsconfig {key}");
        let k = CString::new(key).map_err(|_| Error::last_os(op.clone(), path))?;
        let v = cstring(value, path)?;
        if self.config(FSCONFIG_SET_STRING, Some(&k), Some(&v)) < 0 {
            let errno = last_errno();
            return Err(os_error(&op, path, errno, self.log(), None));
        }
        Ok(())
    }

    /// Pass directory `path` as an open fd (`FSCONFIG_SET_FD`).
    fn set_dir_fd(&self, key: &str, path: &Path) -> Result<()> {
        let op = format!("overlay fsconfig {key} (as fd)");
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(path)
            .map_err(|e| Error::Os {
                op: format!("open layer for {op}"),
                path: path.to_path_buf(),
                errno: e.raw_os_error().unwrap_or(libc::EIO),
                kernel: Vec::new(),
                hint: None,
            })?;
        let k = CString::new(key).map_err(|_| Error::last_os(op.clone(), path))?;
        // SAFETY: valid fds and key; FSCONFIG_SET_FD takes a null value and the fd as aux.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.fd.as_raw_fd(),
                FSCONFIG_SET_FD,
                k.as_ptr(),
                std::ptr::null::<libc::c_char>(),
                dir.as_raw_fd(),
            )
        };
        if r < 0 {
            let errno = last_errno();
            let hint = format!(
                "the path is over the {FSCONFIG_STRING_MAX}-byte fsconfig limit and this kernel \
                 takes no layer fds (a newer kernel does, 6.13+): use a shorter path"
            );
            return Err(os_error(&op, path, errno, self.log(), Some(&hint)));
        }
        Ok(())
    }

    fn set_flag(&self, key: &str, path: &Path) -> Result<()> {
        let op = format!("overlay fsconfig {key}");
        let k = CString::new(key).map_err(|_| Error::last_os(op.clone(), path))?;
        if self.config(FSCONFIG_SET_FLAG, Some(&k), None) < 0 {
            let errno = last_errno();
            return Err(os_error(&op, path, errno, self.log(), None));
        }
        Ok(())
    }

    fn create(&self, target: &Path) -> Result<()> {
        if self.config(FSCONFIG_CMD_CREATE, None, None) < 0 {
            let errno = last_errno();
            let log = self.log();
            let hint = if log.is_empty() && errno == libc::EINVAL {
                // Some overlayfs checks only print to the kernel log.
                Some("see `dmesg | grep overlay` for the reason")
            } else {
                hint(errno)
            };
            return Err(os_error("create overlay for", target, errno, log, hint));
        }
        Ok(())
    }

    /// Drain the context's message log (`e ...`, `w ...`, `i ...` lines).
    fn log(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            // SAFETY: reading into a valid buffer of the given length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 || out.len() >= 32 {
                break;
            }
            let msg = String::from_utf8_lossy(&buf[..n as usize]);
            let msg = msg.trim_end();
            let msg = msg
                .strip_prefix("e ")
                .or_else(|| msg.strip_prefix("w "))
                .or_else(|| msg.strip_prefix("i "))
                .unwrap_or(msg);
            out.push(msg.replace('\n', " "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{self as tu, rerun, role, MountGuard, Role};
    use super::*;
    use std::fs;

    /// Mount the three-layer fixture through the new API, check the view, write, unmount.
    fn merged_view_case() {
        let tmp = tu::tempdir();
        let (lowers, up, work, mnt) = tu::three_layer_fixture(tmp.path());
        let api = Overlay::new(lowers)
            .with_upper(&up, &work)
            .mount(&mnt)
            .expect("mount overlay");
        let _g = MountGuard(mnt.clone());
        assert_eq!(api, MountApi::FsConfig);
        let entry = crate::backend::mountinfo::mount_at(&mnt)
            .expect("mountinfo")
            .expect("mounted");
        assert_eq!(entry.fs_type, "overlay");
        assert!(
            entry.super_options.contains("userxattr"),
            "{}",
            entry.super_options
        );
        tu::check_three_layer_view(&mnt);
        // A write goes to the upper dir; deleting a lower file makes a whiteout there.
        fs::write(mnt.join("written.txt"), "w").expect("write through overlay");
        fs::remove_file(mnt.join("keep.txt")).expect("delete lower file");
        assert_eq!(
            fs::read_to_string(up.join("written.txt")).expect("upper"),
            "w"
        );
        let wh = fs::symlink_metadata(up.join("keep.txt")).expect("whiteout in upper");
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        crate::backend::unmount(&mnt, false).expect("unmount");
        assert!(!crate::backend::is_mount_point(&mnt).expect("mountinfo"));
    }

    #[test]
    fn three_lowers_and_upper_as_root() {
        if !tu::is_full_root() {
            eprintln!("SKIP: needs root with CAP_SYS_ADMIN");
            return;
        }
        merged_view_case();
    }

    #[test]
    fn three_lowers_and_upper_in_userns() {
        match role() {
            Some(_) => merged_view_case(),
            None if tu::is_full_root() => {
                rerun(
                    "backend::kernel::tests::three_lowers_and_upper_in_userns",
                    Role::UserNs,
                );
                rerun(
                    "backend::kernel::tests::three_lowers_and_upper_in_userns",
                    Role::UserInUserNs,
                );
                rerun(
                    "backend::kernel::tests::three_lowers_and_upper_in_userns",
                    Role::NoSysAdminInUserNs,
                );
            }
            None => eprintln!("SKIP: needs root to switch privilege levels"),
        }
    }

    #[test]
    fn without_cap_sys_admin_mount_fails_with_eperm_and_says_why() {
        match role() {
            Some(Role::NoSysAdmin | Role::User) => {
                let tmp = tu::tempdir();
                let (lowers, up, work, mnt) = tu::three_layer_fixture(tmp.path());
                let err = Overlay::new(lowers)
                    .with_upper(up, work)
                    .mount(&mnt)
                    .unwrap_err();
                eprintln!("unprivileged mount: {err}");
                assert_eq!(err.errno(), Some(libc::EPERM), "{err}");
                assert!(err.to_string().contains("CAP_SYS_ADMIN"), "{err}");
                assert!(!crate::backend::is_mount_point(&mnt).expect("mountinfo"));
            }
            Some(other) => panic!("unexpected role {other:?}"),
            None if tu::is_full_root() => {
                let name = "backend::kernel::tests::without_cap_sys_admin_mount_fails_with_eperm_and_says_why";
                rerun(name, Role::NoSysAdmin);
                rerun(name, Role::User);
            }
            None => eprintln!("SKIP: needs root to switch privilege levels"),
        }
    }

    /// 500 tiny layers: far over the one-page `mount(2)` limit, fine with `lowerdir+`.
    fn many_layers_case() {
        let tmp = tu::tempdir();
        let lowers = tu::many_layers(tmp.path(), 500);
        let mnt = tmp.path().join("m");
        fs::create_dir(&mnt).expect("mkdir");
        let ov = Overlay::new(lowers);
        assert!(
            ov.legacy_options().expect("opts").len() > 4096,
            "test must exceed one page"
        );
        assert_eq!(
            ov.mount(&mnt).expect("mount 500 layers"),
            MountApi::FsConfig
        );
        let _g = MountGuard(mnt.clone());
        assert_eq!(
            fs::read_to_string(mnt.join("bottom.txt")).expect("bottom"),
            "from the bottom"
        );
        assert_eq!(fs::read_to_string(mnt.join("f0")).expect("top"), "0");
        assert_eq!(fs::read_to_string(mnt.join("f499")).expect("f499"), "499");
        assert_eq!(tu::names(&mnt).len(), 501);
        crate::backend::unmount(&mnt, false).expect("unmount");
    }

    #[test]
    fn five_hundred_layers_through_lowerdir_plus() {
        match role() {
            Some(_) => many_layers_case(),
            None if tu::is_full_root() => {
                many_layers_case();
                rerun(
                    "backend::kernel::tests::five_hundred_layers_through_lowerdir_plus",
                    Role::UserInUserNs,
                );
            }
            None => eprintln!("SKIP: needs root with CAP_SYS_ADMIN"),
        }
    }

    #[test]
    fn more_layers_than_the_kernel_stacks_gives_its_log() {
        if !tu::is_full_root() {
            eprintln!("SKIP: needs root with CAP_SYS_ADMIN");
            return;
        }
        let tmp = tu::tempdir();
        let lowers = tu::many_layers(tmp.path(), 501);
        let mnt = tmp.path().join("m");
        fs::create_dir(&mnt).expect("mkdir");
        let err = Overlay::new(lowers).mount(&mnt).unwrap_err();
        let msg = err.to_string();
        eprintln!("501 layers: {msg}");
        assert!(
            msg.contains("kernel: overlay: too many lower directories, limit is 500"),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
        assert!(!crate::backend::is_mount_point(&mnt).expect("mountinfo"));
    }

    #[test]
    fn bad_layers_report_the_path_and_where_to_look() {
        if !tu::is_full_root() {
            eprintln!("SKIP: needs root with CAP_SYS_ADMIN");
            return;
        }
        let tmp = tu::tempdir();
        let mnt = tmp.path().join("m");
        fs::create_dir(&mnt).expect("mkdir");
        let missing = tmp.path().join("no-such-layer");
        let err = Overlay::new(vec![tmp.path().to_path_buf(), missing.clone()])
            .mount(&mnt)
            .unwrap_err();
        let msg = err.to_string();
        eprintln!("missing lower: {msg}");
        assert_eq!(err.errno(), Some(libc::ENOENT), "{msg}");
        assert!(
            msg.contains("lowerdir+") && msg.contains("no-such-layer"),
            "{msg}"
        );
        // Work dir on another filesystem than upper: the kernel explains in its log.
        let up = tmp.path().join("up");
        fs::create_dir(&up).expect("mkdir");
        let err = Overlay::new(vec![tmp.path().join("m")])
            .with_upper(&up, "/dev/shm")
            .mount(&mnt)
            .unwrap_err();
        let msg = err.to_string();
        eprintln!("workdir elsewhere: {msg}");
        assert_eq!(err.errno(), Some(libc::EINVAL), "{msg}");
        assert!(msg.contains("dmesg"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn legacy_mount_works_and_escapes_separators() {
        if !tu::is_full_root() {
            eprintln!("SKIP: needs root with CAP_SYS_ADMIN");
            return;
        }
        let tmp = tu::tempdir();
        let (mut lowers, up, work, mnt) = tu::three_layer_fixture(tmp.path());
        // A layer path with the option separators in it.
        let odd = tmp.path().join("odd:na,me\\x");
        fs::rename(&lowers[1], &odd).expect("rename");
        lowers[1] = odd;
        let ov = Overlay::new(lowers).with_upper(&up, &work);
        ov.mount_legacy(&mnt).expect("legacy mount");
        {
            let _g = MountGuard(mnt.clone());
            tu::check_three_layer_view(&mnt);
            crate::backend::unmount(&mnt, false).expect("unmount");
        }
        // The same odd path through lowerdir+ needs no escaping.
        fs::remove_dir_all(&work).expect("clean work");
        fs::create_dir(&work).expect("mkdir work");
        assert_eq!(ov.mount(&mnt).expect("fsconfig mount"), MountApi::FsConfig);
        let _g = MountGuard(mnt.clone());
        tu::check_three_layer_view(&mnt);
    }

    #[test]
    fn legacy_refuses_options_over_a_page() {
        let tmp = tu::tempdir();
        let lowers: Vec<PathBuf> = (0..500)
            .map(|i| tmp.path().join(format!("layer-{i:04}")))
            .collect();
        let err = Overlay::new(lowers).mount_legacy(tmp.path()).unwrap_err();
        match &err {
            Error::OptionsTooLong {
                layers: 500,
                len,
                limit,
            } => assert!(len > limit),
            other => panic!("want OptionsTooLong, got {other:?}"),
        }
        assert!(err.to_string().contains("page limit"), "{err}");
    }

    #[test]
    fn layer_path_over_fsconfig_string_limit_is_passed_as_fd() {
        if !tu::is_full_root() {
            eprintln!("SKIP: needs root with CAP_SYS_ADMIN");
            return;
        }
        let tmp = tu::tempdir();
        let deep = tmp
            .path()
            .join("d".repeat(120))
            .join("e".repeat(120))
            .join("f".repeat(40));
        assert!(deep.as_os_str().len() > FSCONFIG_STRING_MAX);
        tu::put(&deep.join("deep.txt"), "deep");
        let other = tmp.path().join("o");
        tu::put(&other.join("o.txt"), "o");
        let mnt = tmp.path().join("m");
        fs::create_dir(&mnt).expect("mkdir");
        Overlay::new(vec![other, deep])
            .mount(&mnt)
            .expect("mount with long layer path");
        let _g = MountGuard(mnt.clone());
        assert_eq!(tu::names(&mnt), ["deep.txt", "o.txt"]);
    }

    #[test]
    fn read_only_overlay_refuses_writes() {
        if !tu::is_full_root() {
            eprintln!("SKIP: needs root with CAP_SYS_ADMIN");
            return;
        }
        let tmp = tu::tempdir();
        let (lowers, up, work, mnt) = tu::three_layer_fixture(tmp.path());
        let mut ov = Overlay::new(lowers).with_upper(&up, &work);
        ov.read_only = true;
        ov.mount(&mnt).expect("mount");
        let _g = MountGuard(mnt.clone());
        tu::check_three_layer_view(&mnt);
        let err = fs::write(mnt.join("new.txt"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        let e = crate::backend::mountinfo::mount_at(&mnt)
            .expect("info")
            .expect("mounted");
        assert!(
            e.mount_options.split(',').any(|o| o == "ro"),
            "{}",
            e.mount_options
        );
    }

    #[test]
    fn kernel_release_parses() {
        assert_eq!(parse_release("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0"), Some((5, 4)));
        assert_eq!(parse_release("6.8"), Some((6, 8)));
        assert_eq!(parse_release("garbage"), None);
        assert!(kernel_release().is_some());
    }

    #[test]
    fn no_lowers_is_refused() {
        let err = Overlay::new(Vec::new())
            .mount(Path::new("/nonexistent"))
            .unwrap_err();
        assert!(err.to_string().contains("no lower layer"), "{err}");
    }
}

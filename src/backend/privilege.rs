//! What this process may mount: capabilities, user namespace, `/dev/fuse`, `fusermount3`.
//!
//! [`Privileges::detect`] only reads files under `/proc` and stats/opens a few paths; it
//! has no side effects. [`probe_userns`] forks a short-lived child that tries to enter a
//! user and mount namespace, which is the only reliable test (seccomp filters and LSMs
//! can forbid what the sysctls allow).

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Bit number of `CAP_SYS_ADMIN` in the capability masks.
const CAP_SYS_ADMIN: u32 = 21;
/// `NS_GET_USERNS` ioctl on a namespace fd: returns an fd of the owning user namespace.
const NS_GET_USERNS: libc::c_ulong = 0xb701;

/// State of the FUSE device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevFuse {
    /// `/dev/fuse` does not exist (module not loaded, or a container without the device).
    Missing,
    /// `/dev/fuse` exists but opening it read-write failed with this errno.
    NotOpenable {
        /// errno of the failed open (usually `EACCES`).
        errno: i32,
    },
    /// `/dev/fuse` opens read-write.
    Usable,
}

/// Why a `fusermount3` that was found cannot mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FusermountProblem {
    /// The binary is not owned by root with the setuid bit.
    NotSetuidRoot,
    /// It lives on a filesystem mounted `nosuid`.
    NosuidFilesystem,
    /// This process has `no_new_privs` set, so setuid has no effect.
    NoNewPrivs,
    /// `CAP_SYS_ADMIN` is not in the bounding set, so even setuid root cannot mount.
    NoSysAdminInBoundingSet,
    /// We may not execute it.
    NotExecutable,
    /// We are in a child user namespace whose mount namespace belongs to an ancestor:
    /// setuid root only gains capabilities in our namespace, which cannot mount there.
    ForeignMountNs,
}

/// The `fusermount3` helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fusermount3 {
    /// Not found on `PATH`, `/bin`, `/usr/bin` or `/usr/local/bin`.
    Missing,
    /// Found, but it cannot mount for us.
    Unusable {
        /// Where it was found.
        path: PathBuf,
        /// The first problem found.
        problem: FusermountProblem,
    },
    /// Found, setuid root, and nothing stops it from gaining its privileges.
    Usable(PathBuf),
}

impl Fusermount3 {
    /// The binary's path if it is usable.
    pub fn usable_path(&self) -> Option<&Path> {
        match self {
            Fusermount3::Usable(p) => Some(p),
            _ => None,
        }
    }
}

/// Whether unprivileged user namespaces can be created (with a mount namespace inside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserNsSupport {
    /// A probe child entered a new user + mount namespace and made its mounts private.
    Allowed,
    /// They cannot be used; `reason` is one line naming the cause and the fix.
    Denied {
        /// Diagnosis with remedy, e.g. "user namespaces are disabled (`sysctl ...`)".
        reason: String,
        /// errno of the failed step, if a probe ran.
        errno: Option<i32>,
    },
}

/// What this process can do, as far as mounting is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileges {
    /// Effective user id.
    pub euid: u32,
    /// Effective group id.
    pub egid: u32,
    /// `CAP_SYS_ADMIN` is in the effective set (over our own user namespace).
    pub cap_sys_admin: bool,
    /// `CAP_SYS_ADMIN` is in the bounding set (needed by setuid `fusermount3`).
    pub bounding_sys_admin: bool,
    /// `no_new_privs` is set (setuid binaries gain nothing).
    pub no_new_privs: bool,
    /// We run in a user namespace other than the initial one (`/proc/self/uid_map`
    /// is not the identity map `0 0 4294967295`).
    pub in_child_userns: bool,
    /// Our mount namespace is owned by our user namespace, so `cap_sys_admin` lets us mount.
    pub owns_mount_ns: bool,
    /// The kernel has overlayfs (registered, or available as a module).
    pub overlayfs: bool,
    /// State of `/dev/fuse`.
    pub dev_fuse: DevFuse,
    /// State of `fusermount3`.
    pub fusermount3: Fusermount3,
}

impl Privileges {
    /// Detect the privileges of the calling process. Reads `/proc`, stats and opens
    /// `/dev/fuse` (closing it at once); never fails: what cannot be read counts as absent.
    pub fn detect() -> Privileges {
        // SAFETY: geteuid/getegid cannot fail.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let cap_eff = status_hex(&status, "CapEff:");
        let cap_bnd = status_hex(&status, "CapBnd:");
        let has = |mask: Option<u64>| match mask {
            Some(m) => m & (1u64 << CAP_SYS_ADMIN) != 0,
            None => euid == 0,
        };
        let no_new_privs = status
            .lines()
            .find_map(|l| l.strip_prefix("NoNewPrivs:"))
            .map(|v| v.trim() == "1")
            .unwrap_or(false);
        let in_child_userns = fs::read_to_string("/proc/self/uid_map")
            .map(|m| is_child_uid_map(&m))
            .unwrap_or(false);
        let bounding_sys_admin = has(cap_bnd);
        let owns_mount_ns = owns_mount_ns();
        let mut fusermount3 = find_fusermount3(no_new_privs, bounding_sys_admin);
        if let Fusermount3::Usable(path) = &fusermount3 {
            if in_child_userns && !owns_mount_ns {
                fusermount3 = Fusermount3::Unusable {
                    path: path.clone(),
                    problem: FusermountProblem::ForeignMountNs,
                };
            }
        }
        Privileges {
            euid,
            egid,
            cap_sys_admin: has(cap_eff),
            bounding_sys_admin,
            no_new_privs,
            in_child_userns,
            owns_mount_ns,
            overlayfs: overlayfs_available(),
            dev_fuse: dev_fuse_state(Path::new("/dev/fuse")),
            fusermount3,
        }
    }

    /// `CAP_SYS_ADMIN` that actually allows mounting here (our mount namespace is ours).
    pub fn can_mount(&self) -> bool {
        self.cap_sys_admin && self.owns_mount_ns
    }
}

/// Parse a hexadecimal field of `/proc/self/status` such as `CapEff:`.
fn status_hex(status: &str, key: &str) -> Option<u64> {
    let v = status.lines().find_map(|l| l.strip_prefix(key))?;
    u64::from_str_radix(v.trim(), 16).ok()
}

/// True unless the uid map is the initial namespace's identity map.
pub(crate) fn is_child_uid_map(map: &str) -> bool {
    let lines: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| !f.is_empty())
        .collect();
    !(lines.len() == 1 && lines[0] == ["0", "0", "4294967295"])
}

/// Whether the user namespace owning our mount namespace is our own user namespace.
fn owns_mount_ns() -> bool {
    let Ok(mnt) = fs::File::open("/proc/self/ns/mnt") else {
        return true;
    };
    let Ok(user) = fs::metadata("/proc/self/ns/user") else {
        return true;
    };
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: ioctl on a valid fd; a non-negative result is a new fd we own.
    let fd = unsafe { libc::ioctl(mnt.as_raw_fd(), NS_GET_USERNS as _) };
    if fd < 0 {
        // EPERM: the owner is an ancestor namespace, outside our scope.
        return super::error::last_errno() != libc::EPERM;
    }
    // SAFETY: fd was just returned by the kernel and is owned by nobody else.
    let owner = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    match owner.metadata() {
        Ok(m) => m.ino() == user.ino() && m.dev() == user.dev(),
        Err(_) => true,
    }
}

/// Overlayfs is registered in `/proc/filesystems` or exists as a loadable module.
fn overlayfs_available() -> bool {
    if let Ok(fss) = fs::read_to_string("/proc/filesystems") {
        if fss
            .lines()
            .any(|l| l.split_whitespace().last() == Some("overlay"))
        {
            return true;
        }
    }
    if Path::new("/sys/module/overlay").exists() {
        return true;
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = Path::new("/lib/modules")
        .join(release.trim())
        .join("kernel/fs/overlayfs");
    dir.is_dir()
}

/// Open `path` read-write (then close it) to see whether FUSE can be used.
pub(crate) fn dev_fuse_state(path: &Path) -> DevFuse {
    match fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => DevFuse::Usable,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DevFuse::Missing,
        Err(e) => DevFuse::NotOpenable {
            errno: e.raw_os_error().unwrap_or(libc::EACCES),
        },
    }
}

/// Find `fusermount3` on `PATH` then in the usual directories, and check it can work.
fn find_fusermount3(no_new_privs: bool, bounding_sys_admin: bool) -> Fusermount3 {
    let Some(path) = locate_fusermount3() else {
        return Fusermount3::Missing;
    };
    match fusermount_problem(&path, no_new_privs, bounding_sys_admin) {
        Some(problem) => Fusermount3::Unusable { path, problem },
        None => Fusermount3::Usable(path),
    }
}

/// The path of `fusermount3`: first on `PATH`, then `/bin`, `/usr/bin`, `/usr/local/bin`.
pub fn locate_fusermount3() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/bin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from));
    dirs.iter()
        .filter(|d| d.is_absolute())
        .map(|d| d.join("fusermount3"))
        .find(|p| p.is_file())
}

fn fusermount_problem(
    path: &Path,
    no_new_privs: bool,
    bounding_sys_admin: bool,
) -> Option<FusermountProblem> {
    let Ok(meta) = fs::metadata(path) else {
        return Some(FusermountProblem::NotExecutable);
    };
    if meta.uid() != 0 || meta.permissions().mode() & libc::S_ISUID == 0 {
        return Some(FusermountProblem::NotSetuidRoot);
    }
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return Some(FusermountProblem::NotExecutable);
    };
    // SAFETY: c is a valid NUL-terminated string.
    if unsafe { libc::access(c.as_ptr(), libc::X_OK) } != 0 {
        return Some(FusermountProblem::NotExecutable);
    }
    // SAFETY: statvfs with a valid path and a zeroed out-struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0 && st.f_flag & libc::ST_NOSUID != 0 {
        return Some(FusermountProblem::NosuidFilesystem);
    }
    if no_new_privs {
        return Some(FusermountProblem::NoNewPrivs);
    }
    if !bounding_sys_admin {
        return Some(FusermountProblem::NoSysAdminInBoundingSet);
    }
    None
}

/// Check whether this process can create a user namespace with a mount namespace.
///
/// First reads the sysctls (`kernel.unprivileged_userns_clone` on Debian kernels,
/// `user.max_user_namespaces`), then forks a child that calls
/// `unshare(CLONE_NEWUSER | CLONE_NEWNS)`, writes its `setgroups`, `uid_map` and
/// `gid_map`, and makes `/` private, reporting the first failing step. The child
/// changes nothing outside its own namespaces and exits at once.
pub fn probe_userns() -> UserNsSupport {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        if let Ok(v) = fs::read_to_string("/proc/sys/kernel/unprivileged_userns_clone") {
            if v.trim() == "0" {
                return UserNsSupport::Denied {
                    reason: "unprivileged user namespaces are disabled (`sysctl kernel.unprivileged_userns_clone=1`)".into(),
                    errno: None,
                };
            }
        }
    }
    if let Ok(v) = fs::read_to_string("/proc/sys/user/max_user_namespaces") {
        if v.trim() == "0" {
            return UserNsSupport::Denied {
                reason: "user namespaces are disabled (`sysctl user.max_user_namespaces=15000`)"
                    .into(),
                errno: None,
            };
        }
    }
    match super::userns::probe_child() {
        Ok(()) => UserNsSupport::Allowed,
        Err((step, errno)) => {
            let apparmor =
                fs::read_to_string("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
                    .map(|v| v.trim() == "1")
                    .unwrap_or(false);
            let hint = if apparmor {
                "AppArmor restricts them (`sysctl kernel.apparmor_restrict_unprivileged_userns=0`)"
            } else if errno == libc::EPERM || errno == libc::ENOSPC {
                "blocked by the system or container (in Docker: `--security-opt seccomp=unconfined --security-opt apparmor=unconfined`)"
            } else {
                "unsupported here"
            };
            UserNsSupport::Denied {
                reason: format!(
                    "user namespaces are not usable: {step} failed: {}; {hint}",
                    std::io::Error::from_raw_os_error(errno)
                ),
                errno: Some(errno),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uid_map_means_initial_namespace() {
        assert!(!is_child_uid_map("         0          0 4294967295\n"));
        assert!(is_child_uid_map("         0       1002          1\n"));
        assert!(is_child_uid_map("0 0 4294967295\n1 1 1\n"));
        assert!(is_child_uid_map("         0          0          1\n"));
    }

    #[test]
    fn status_fields_parse() {
        let s = "Name:\tx\nCapEff:\t000001fffeffffff\nCapBnd:\t0000000000200000\n";
        assert_eq!(status_hex(s, "CapEff:"), Some(0x1fffeffffff));
        assert_eq!(status_hex(s, "CapBnd:"), Some(1 << CAP_SYS_ADMIN));
        assert_eq!(status_hex(s, "CapPrm:"), None);
    }

    #[test]
    fn dev_fuse_states() {
        let tmp = tempfile::tempdir().expect("tmp");
        assert_eq!(dev_fuse_state(&tmp.path().join("fuse")), DevFuse::Missing);
        let f = tmp.path().join("ro");
        fs::write(&f, "").expect("write");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o444)).expect("chmod");
        let want = if unsafe { libc::geteuid() } == 0 {
            DevFuse::Usable // root ignores the mode (CAP_DAC_OVERRIDE)
        } else {
            DevFuse::NotOpenable {
                errno: libc::EACCES,
            }
        };
        assert_eq!(dev_fuse_state(&f), want);
    }

    #[test]
    fn fusermount_checks_setuid_root() {
        let tmp = tempfile::tempdir().expect("tmp");
        let f = tmp.path().join("fusermount3");
        fs::write(&f, "#!/bin/sh\n").expect("write");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(
            fusermount_problem(&f, false, true),
            Some(FusermountProblem::NotSetuidRoot)
        );
        if let Some(real) = locate_fusermount3() {
            let meta = fs::metadata(&real).expect("stat");
            if meta.uid() == 0 && meta.permissions().mode() & libc::S_ISUID != 0 {
                assert_eq!(fusermount_problem(&real, false, true), None);
                assert_eq!(
                    fusermount_problem(&real, true, true),
                    Some(FusermountProblem::NoNewPrivs)
                );
                assert_eq!(
                    fusermount_problem(&real, false, false),
                    Some(FusermountProblem::NoSysAdminInBoundingSet)
                );
            }
        }
    }
}

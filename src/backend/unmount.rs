//! Unmounting: `umount2`, or `fusermount3 -u` for FUSE mounts an ordinary user made.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use super::error::{last_errno, Error, Result};
use super::mountinfo::{mount_state, resolve, MountState};
use super::privilege::locate_fusermount3;

/// How a mount was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmounted {
    /// By `umount2(2)`.
    Umount2,
    /// By `fusermount3 -u`.
    Fusermount3,
}

/// Unmount the topmost mount at `path`.
///
/// Without `lazy`, a mount with open files gives [`Error::Busy`]; with `lazy` it is
/// detached (`MNT_DETACH` / `fusermount3 -z`) and goes away when the last file closes.
/// A dead FUSE mount (`ENOTCONN`) is always detached. A FUSE mount that `umount2`
/// refuses with `EPERM` (an ordinary user's, made through `fusermount3`) is unmounted
/// with `fusermount3 -u`. A path that is not a mount point gives [`Error::NotMounted`].
pub fn unmount(path: &Path, lazy: bool) -> Result<Unmounted> {
    let p = resolve(path)?;
    let (entry, lazy) = match mount_state(&p)? {
        MountState::NotMounted => return Err(Error::NotMounted { path: p }),
        MountState::Mounted(e) => (e, lazy),
        MountState::DeadFuse(e) => (e, true),
    };
    let flags = libc::UMOUNT_NOFOLLOW | if lazy { libc::MNT_DETACH } else { 0 };
    let c = CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::Os {
        op: "umount".into(),
        path: p.clone(),
        errno: libc::EINVAL,
        kernel: Vec::new(),
        hint: None,
    })?;
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        return Ok(Unmounted::Umount2);
    }
    match last_errno() {
        libc::EBUSY => Err(Error::Busy { path: p }),
        libc::EINVAL => Err(Error::NotMounted { path: p }),
        errno @ (libc::EPERM | libc::EACCES) if entry.is_fuse() => fusermount_unmount(&p, lazy)
            .map_err(|e| match e {
                Error::Command { errno: None, .. } => os_error(&p, errno),
                e => e,
            }),
        errno => Err(os_error(&p, errno)),
    }
}

fn os_error(p: &Path, errno: i32) -> Error {
    let hint = (errno == libc::EPERM).then(|| {
        "unmounting needs CAP_SYS_ADMIN (or fusermount3, for a FUSE mount you made)".to_string()
    });
    Error::Os {
        op: "umount".into(),
        path: p.to_path_buf(),
        errno,
        kernel: Vec::new(),
        hint,
    }
}

/// Run `fusermount3 -u [-z] PATH`, mapping its complaints to our errors.
fn fusermount_unmount(p: &Path, lazy: bool) -> Result<Unmounted> {
    let Some(bin) = locate_fusermount3() else {
        return Err(Error::Command {
            program: "fusermount3".into(),
            message: "not installed (`apt-get install fuse3`)".into(),
            errno: None,
        });
    };
    let mut cmd = Command::new(&bin);
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    cmd.arg("--").arg(p);
    let out = cmd.output().map_err(|e| Error::Command {
        program: bin.display().to_string(),
        message: e.to_string(),
        errno: e.raw_os_error(),
    })?;
    if out.status.success() {
        return Ok(Unmounted::Fusermount3);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    let lower = first.to_lowercase();
    if lower.contains("busy") {
        return Err(Error::Busy {
            path: p.to_path_buf(),
        });
    }
    if lower.contains("not found in") || lower.contains("not mounted") {
        return Err(Error::NotMounted {
            path: p.to_path_buf(),
        });
    }
    let errno = if lower.contains("permitted") || lower.contains("permission") {
        Some(libc::EPERM)
    } else {
        Some(libc::EIO)
    };
    Err(Error::Command {
        program: bin.display().to_string(),
        message: if first.is_empty() {
            format!("exited with {}", out.status)
        } else {
            first
        },
        errno,
    })
}

#[cfg(test)]
mod tests {
    use super::super::mountinfo::{is_live_mount, mount_state, MountState};
    use super::super::testutil::{self as tu, rerun, role, MountGuard, Role};
    use super::*;
    use std::fs;
    use std::path::PathBuf;
    use std::process::{Child, Stdio};

    #[test]
    fn busy_mount_gives_the_clear_error_and_lazy_detaches() {
        if !tu::is_full_root() {
            eprintln!("SKIP: needs root with CAP_SYS_ADMIN");
            return;
        }
        let tmp = tu::tempdir();
        let (mnt, _g) = tu::two_layer_overlay(tmp.path(), "m");
        let open = fs::File::open(mnt.join("x")).expect("open in mount");
        let err = unmount(&mnt, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is busy (a process has files open there); close them or use --lazy",
                mnt.display()
            )
        );
        assert_eq!(err.errno(), Some(libc::EBUSY));
        assert!(
            is_live_mount(&mnt).expect("state"),
            "a refused unmount must leave the mount"
        );
        assert_eq!(unmount(&mnt, true).expect("lazy"), Unmounted::Umount2);
        assert_eq!(mount_state(&mnt).expect("state"), MountState::NotMounted);
        drop(open);
    }

    #[test]
    fn not_a_mount_point_is_an_error() {
        let tmp = tu::tempdir();
        let err = unmount(tmp.path(), false).unwrap_err();
        assert!(matches!(err, Error::NotMounted { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("{} is not a mount point", tmp.path().display())
        );
    }

    /// A fuse-overlayfs mount of two layers at `mnt`, served by the returned child.
    fn fuse_mount(root: &std::path::Path, mnt: &PathBuf) -> Child {
        let (a, b) = (root.join("fa"), root.join("fb"));
        tu::put(&a.join("x"), "x");
        tu::put(&b.join("y"), "y");
        fs::create_dir_all(mnt).expect("mkdir");
        let mut child = Command::new("fuse-overlayfs")
            .arg("-f")
            .arg("-o")
            .arg(format!("lowerdir={}:{}", a.display(), b.display()))
            .arg(mnt)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn fuse-overlayfs (apt-get install fuse-overlayfs)");
        // Wait for the mount to appear (polling, no timing assertion).
        for _ in 0..1000 {
            if let Ok(MountState::Mounted(e)) = mount_state(mnt) {
                assert!(e.is_fuse(), "{e:?}");
                return child;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("fuse-overlayfs did not mount {}", mnt.display());
    }

    fn fuse_case(expect: Unmounted) {
        let tmp = tu::tempdir();
        let mnt = tmp.path().join("fm");
        let mut server = fuse_mount(tmp.path(), &mnt);
        let _g = MountGuard(mnt.clone());
        assert_eq!(fs::read_to_string(mnt.join("y")).expect("read"), "y");
        // Busy.
        let open = fs::File::open(mnt.join("x")).expect("open");
        let err = unmount(&mnt, false).unwrap_err();
        assert!(matches!(err, Error::Busy { .. }), "{err:?}");
        drop(open);
        assert_eq!(unmount(&mnt, false).expect("unmount"), expect);
        assert_eq!(mount_state(&mnt).expect("state"), MountState::NotMounted);
        let _ = server.wait();
        // Dead: kill the server; the mount stays, stat says ENOTCONN.
        let mut server = fuse_mount(tmp.path(), &mnt);
        server.kill().expect("kill");
        server.wait().expect("wait");
        match mount_state(&mnt).expect("state") {
            MountState::DeadFuse(e) => assert!(e.is_fuse()),
            other => panic!("want DeadFuse, got {other:?}"),
        }
        assert!(!is_live_mount(&mnt).expect("live"));
        assert_eq!(unmount(&mnt, false).expect("clean up dead mount"), expect);
        assert_eq!(mount_state(&mnt).expect("state"), MountState::NotMounted);
    }

    #[test]
    fn fuse_mounts_live_busy_and_dead() {
        match role() {
            Some(Role::User) => fuse_case(Unmounted::Fusermount3),
            Some(other) => panic!("unexpected role {other:?}"),
            None if tu::is_full_root() => {
                fuse_case(Unmounted::Umount2);
                rerun(
                    "backend::unmount::tests::fuse_mounts_live_busy_and_dead",
                    Role::User,
                );
            }
            None => eprintln!("SKIP: needs root to switch privilege levels"),
        }
    }
}

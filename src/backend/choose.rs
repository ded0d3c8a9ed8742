//! Picking how to mount: kernel overlayfs, FUSE, or a user namespace via `stacko run`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::error::{Error, Result};
use super::privilege::{DevFuse, Fusermount3, FusermountProblem, Privileges, UserNsSupport};

/// A mount engine, as named by `--backend kernel|fuse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Kernel overlayfs over checked-out layer directories (`-o userxattr`).
    Kernel,
    /// The stacko FUSE filesystem.
    Fuse,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Kernel => "kernel",
            Kind::Fuse => "fuse",
        })
    }
}

impl FromStr for Kind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Kind> {
        match s {
            "kernel" => Ok(Kind::Kernel),
            "fuse" => Ok(Kind::Fuse),
            other => Err(Error::Unavailable {
                message: format!("unknown backend {other:?}: use `kernel` or `fuse`"),
                errno: Some(libc::EINVAL),
            }),
        }
    }
}

/// How a FUSE mount gets made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FuseVia {
    /// `mount(2)` on an open `/dev/fuse` fd: we hold `CAP_SYS_ADMIN`.
    Direct,
    /// The setuid helper at this path.
    Fusermount3(PathBuf),
}

/// The mount method chosen for this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Mount kernel overlayfs here.
    Kernel,
    /// Mount FUSE here.
    Fuse(FuseVia),
    /// Nothing can be mounted in this namespace, but user namespaces work: the caller
    /// must use `stacko run`, which mounts with `inner` inside a new user+mount namespace.
    UserNs {
        /// The engine to use inside the namespace.
        inner: Kind,
    },
}

/// Choose how to mount in this process, honouring `--backend` if `requested`.
///
/// Without a request: kernel overlayfs with `CAP_SYS_ADMIN` (root, or inside a user
/// namespace that owns our mount namespace), else FUSE through a usable `fusermount3`,
/// else [`Plan::UserNs`] if user namespaces work (probed by forking), else an
/// [`Error::Unavailable`] whose one line says what is missing and what to do.
/// With a request, that engine is used here or the error says why it cannot be.
pub fn choose_backend(requested: Option<Kind>) -> Result<Plan> {
    decide(
        &Privileges::detect(),
        super::privilege::probe_userns,
        requested,
    )
}

/// Choose the engine to use inside a new user+mount namespace (`stacko run`).
///
/// Fails if user namespaces cannot be created. Prefers kernel overlayfs (allowed in a
/// user namespace since Linux 5.11), else FUSE if `/dev/fuse` opens.
pub fn choose_in_userns(requested: Option<Kind>) -> Result<Kind> {
    decide_in_userns(
        &Privileges::detect(),
        &super::privilege::probe_userns(),
        requested,
    )
}

/// The decision of [`choose_backend`], from given facts (pure apart from calling `userns`,
/// which is only called when needed).
pub(crate) fn decide(
    p: &Privileges,
    userns: impl FnOnce() -> UserNsSupport,
    requested: Option<Kind>,
) -> Result<Plan> {
    let kernel_ok = p.can_mount() && p.overlayfs;
    let fuse_dev = p.dev_fuse == DevFuse::Usable;
    let fuse_direct = p.can_mount() && fuse_dev;
    let fuse_helper = p.fusermount3.usable_path().filter(|_| fuse_dev);
    let fuse_plan = || {
        if fuse_direct {
            Some(Plan::Fuse(FuseVia::Direct))
        } else {
            fuse_helper.map(|h| Plan::Fuse(FuseVia::Fusermount3(h.to_path_buf())))
        }
    };
    match requested {
        None => {
            if kernel_ok {
                return Ok(Plan::Kernel);
            }
            if let Some(plan) = fuse_plan() {
                return Ok(plan);
            }
            let ns = userns();
            if let UserNsSupport::Allowed = ns {
                if p.overlayfs {
                    return Ok(Plan::UserNs {
                        inner: Kind::Kernel,
                    });
                }
                if fuse_dev {
                    return Ok(Plan::UserNs { inner: Kind::Fuse });
                }
            }
            Err(unavailable(
                "cannot mount here",
                &problems(p, Some(&ns), None),
            ))
        }
        Some(Kind::Kernel) => {
            if kernel_ok {
                return Ok(Plan::Kernel);
            }
            Err(unavailable(
                "--backend kernel cannot work here",
                &problems(p, None, Some(Kind::Kernel)),
            ))
        }
        Some(Kind::Fuse) => {
            if let Some(plan) = fuse_plan() {
                return Ok(plan);
            }
            Err(unavailable(
                "--backend fuse cannot work here",
                &problems(p, None, Some(Kind::Fuse)),
            ))
        }
    }
}

/// The decision of [`choose_in_userns`], from given facts.
pub(crate) fn decide_in_userns(
    p: &Privileges,
    ns: &UserNsSupport,
    requested: Option<Kind>,
) -> Result<Kind> {
    if let UserNsSupport::Denied { reason, errno } = ns {
        return Err(Error::Unavailable {
            message: format!("cannot enter a user namespace: {reason}"),
            errno: *errno,
        });
    }
    let fuse_dev = p.dev_fuse == DevFuse::Usable;
    match requested {
        Some(Kind::Kernel) | None if p.overlayfs => Ok(Kind::Kernel),
        Some(Kind::Kernel) => Err(unavailable(
            "--backend kernel cannot work here",
            &["the kernel has no overlayfs (`modprobe overlay`)".to_string()],
        )),
        Some(Kind::Fuse) | None if fuse_dev => Ok(Kind::Fuse),
        _ => Err(unavailable(
            "cannot mount in a user namespace",
            &problems(p, None, Some(Kind::Fuse)),
        )),
    }
}

fn unavailable(head: &str, problems: &[String]) -> Error {
    let errno = Some(libc::EPERM);
    let message = if problems.is_empty() {
        head.to_string()
    } else {
        format!("{head}: {}", problems.join("; "))
    };
    Error::Unavailable { message, errno }
}

/// The missing pieces, each with its remedy. `only` narrows to one engine.
fn problems(p: &Privileges, ns: Option<&UserNsSupport>, only: Option<Kind>) -> Vec<String> {
    let mut out = Vec::new();
    if only != Some(Kind::Fuse) {
        if !p.cap_sys_admin {
            out.push("kernel overlayfs needs CAP_SYS_ADMIN (run as root)".to_string());
        } else if !p.owns_mount_ns {
            out.push("kernel overlayfs needs a mount namespace owned by this user namespace (`unshare -m`)".to_string());
        }
        if !p.overlayfs {
            out.push("the kernel has no overlayfs (`modprobe overlay`)".to_string());
        }
    }
    if only != Some(Kind::Kernel) {
        match &p.dev_fuse {
            DevFuse::Missing => out.push(
                "/dev/fuse is missing (`modprobe fuse`; in a container add `--device /dev/fuse`)"
                    .to_string(),
            ),
            DevFuse::NotOpenable { errno } => out.push(format!(
                "/dev/fuse cannot be opened read-write ({}; `chmod 666 /dev/fuse`)",
                std::io::Error::from_raw_os_error(*errno)
            )),
            DevFuse::Usable => {}
        }
        if !p.can_mount() {
            match &p.fusermount3 {
                Fusermount3::Missing => {
                    out.push("fusermount3 is not installed (`apt-get install fuse3`)".to_string())
                }
                Fusermount3::Unusable { path, problem } => {
                    let path = path.display();
                    out.push(match problem {
                        FusermountProblem::NotSetuidRoot => {
                            format!("{path} is not setuid root (`chmod u+s {path}`)")
                        }
                        FusermountProblem::NosuidFilesystem => {
                            format!("{path} is on a nosuid filesystem, so it cannot gain root")
                        }
                        FusermountProblem::NoNewPrivs => {
                            "no_new_privs is set, so setuid fusermount3 cannot gain root".to_string()
                        }
                        FusermountProblem::NoSysAdminInBoundingSet => {
                            "CAP_SYS_ADMIN is dropped from the bounding set, so fusermount3 cannot mount".to_string()
                        }
                        FusermountProblem::NotExecutable => {
                            format!("{path} is not executable by you")
                        }
                        FusermountProblem::ForeignMountNs => {
                            "fusermount3 cannot mount from a user namespace without its own mount namespace (`unshare -m`)".to_string()
                        }
                    })
                }
                Fusermount3::Usable(_) => {}
            }
        }
    }
    match ns {
        Some(UserNsSupport::Denied { reason, .. }) => out.push(reason.clone()),
        Some(UserNsSupport::Allowed) | None => {}
    }
    if only.is_some() {
        out.push("without it use `stacko run STACKPOINT -- COMMAND` (user namespace)".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{self as tu, rerun, role, Role};
    use super::*;

    fn root() -> Privileges {
        Privileges {
            euid: 0,
            egid: 0,
            cap_sys_admin: true,
            bounding_sys_admin: true,
            no_new_privs: false,
            in_child_userns: false,
            owns_mount_ns: true,
            overlayfs: true,
            dev_fuse: DevFuse::Usable,
            fusermount3: Fusermount3::Usable("/usr/bin/fusermount3".into()),
        }
    }

    fn user() -> Privileges {
        Privileges {
            euid: 1000,
            egid: 1000,
            cap_sys_admin: false,
            ..root()
        }
    }

    fn allowed() -> UserNsSupport {
        UserNsSupport::Allowed
    }

    fn denied() -> UserNsSupport {
        UserNsSupport::Denied {
            reason: "unprivileged user namespaces are disabled (`sysctl kernel.unprivileged_userns_clone=1`)".into(),
            errno: None,
        }
    }

    fn never() -> UserNsSupport {
        panic!("the user namespace probe must not run when a plain mount works")
    }

    #[test]
    fn root_gets_kernel_user_gets_fusermount3() {
        assert_eq!(decide(&root(), never, None).expect("root"), Plan::Kernel);
        assert_eq!(
            decide(&root(), never, Some(Kind::Fuse)).expect("root fuse"),
            Plan::Fuse(FuseVia::Direct)
        );
        let fm = Plan::Fuse(FuseVia::Fusermount3("/usr/bin/fusermount3".into()));
        assert_eq!(decide(&user(), never, None).expect("user"), fm);
        assert_eq!(
            decide(&user(), never, Some(Kind::Fuse)).expect("user fuse"),
            fm
        );
        let no_overlay = Privileges {
            overlayfs: false,
            ..root()
        };
        assert_eq!(
            decide(&no_overlay, never, None).expect("no overlay"),
            Plan::Fuse(FuseVia::Direct)
        );
    }

    #[test]
    fn userns_when_nothing_else_works() {
        let ci = Privileges {
            cap_sys_admin: false,
            bounding_sys_admin: false,
            fusermount3: Fusermount3::Unusable {
                path: "/usr/bin/fusermount3".into(),
                problem: FusermountProblem::NoSysAdminInBoundingSet,
            },
            ..root()
        };
        assert_eq!(
            decide(&ci, allowed, None).expect("ci"),
            Plan::UserNs {
                inner: Kind::Kernel
            }
        );
        let ci_no_overlay = Privileges {
            overlayfs: false,
            ..ci.clone()
        };
        assert_eq!(
            decide(&ci_no_overlay, allowed, None).expect("ci"),
            Plan::UserNs { inner: Kind::Fuse }
        );
        assert_eq!(
            decide_in_userns(&ci, &allowed(), None).expect("in ns"),
            Kind::Kernel
        );
        assert_eq!(
            decide_in_userns(&ci, &allowed(), Some(Kind::Fuse)).expect("in ns"),
            Kind::Fuse
        );
        let err = decide_in_userns(&ci, &denied(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("kernel.unprivileged_userns_clone=1"), "{err}");
    }

    #[test]
    fn nothing_works_names_every_missing_piece_on_one_line() {
        let p = Privileges {
            dev_fuse: DevFuse::NotOpenable {
                errno: libc::EACCES,
            },
            fusermount3: Fusermount3::Missing,
            ..user()
        };
        let msg = decide(&p, denied, None).unwrap_err().to_string();
        for want in [
            "CAP_SYS_ADMIN",
            "chmod 666 /dev/fuse",
            "apt-get install fuse3",
            "sysctl kernel.unprivileged_userns_clone=1",
        ] {
            assert!(msg.contains(want), "{want:?} missing from: {msg}");
        }
        assert!(!msg.contains('\n'), "{msg}");
        let p = Privileges {
            dev_fuse: DevFuse::Missing,
            ..p
        };
        let msg = decide(&p, denied, None).unwrap_err().to_string();
        assert!(
            msg.contains("/dev/fuse is missing") && msg.contains("modprobe fuse"),
            "{msg}"
        );
        let p = Privileges {
            fusermount3: Fusermount3::Unusable {
                path: "/usr/bin/fusermount3".into(),
                problem: FusermountProblem::NotSetuidRoot,
            },
            ..p
        };
        let msg = decide(&p, denied, None).unwrap_err().to_string();
        assert!(msg.contains("chmod u+s /usr/bin/fusermount3"), "{msg}");
    }

    #[test]
    fn requested_backend_that_cannot_work_is_refused() {
        let err = decide(&user(), never, Some(Kind::Kernel))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--backend kernel cannot work here"),
            "{err}"
        );
        assert!(
            err.contains("CAP_SYS_ADMIN") && err.contains("stacko run"),
            "{err}"
        );
        let p = Privileges {
            dev_fuse: DevFuse::Missing,
            ..root()
        };
        let err = decide(&p, never, Some(Kind::Fuse)).unwrap_err().to_string();
        assert!(
            err.starts_with("--backend fuse cannot work here") && err.contains("/dev/fuse"),
            "{err}"
        );
        assert_eq!(
            decide(&p, never, Some(Kind::Kernel)).expect("kernel"),
            Plan::Kernel
        );
        let not_ours = Privileges {
            owns_mount_ns: false,
            in_child_userns: true,
            ..root()
        };
        let err = decide(&not_ours, never, Some(Kind::Kernel))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mount namespace"), "{err}");
    }

    #[test]
    fn backend_names_parse() {
        assert_eq!("kernel".parse::<Kind>().expect("kernel"), Kind::Kernel);
        assert_eq!("fuse".parse::<Kind>().expect("fuse"), Kind::Fuse);
        let err = "nfs".parse::<Kind>().unwrap_err().to_string();
        assert!(err.contains("kernel") && err.contains("fuse"), "{err}");
        assert_eq!(Kind::Fuse.to_string(), "fuse");
    }

    /// What this machine offers at each privilege level (see NOTES): detected for real.
    #[test]
    fn real_detection_at_each_privilege_level() {
        let p = Privileges::detect();
        match role() {
            None if tu::is_full_root() => {
                assert!(
                    p.cap_sys_admin && p.owns_mount_ns && !p.in_child_userns,
                    "{p:?}"
                );
                assert_eq!(choose_backend(None).expect("root"), Plan::Kernel);
                assert!(probe_userns_ok());
                let name = "backend::choose::tests::real_detection_at_each_privilege_level";
                for r in [
                    Role::UserNs,
                    Role::User,
                    Role::UserInUserNs,
                    Role::NoSysAdmin,
                    Role::NoSysAdminInUserNs,
                    Role::UserNoNewPrivs,
                    Role::Nothing,
                    Role::UserNsOnly,
                ] {
                    rerun(name, r);
                }
            }
            None => eprintln!("SKIP: needs root to switch privilege levels"),
            Some(Role::User) => {
                assert!(
                    !p.cap_sys_admin && !p.in_child_userns && p.euid != 0,
                    "{p:?}"
                );
                let fm = p
                    .fusermount3
                    .usable_path()
                    .expect("fusermount3 usable")
                    .to_path_buf();
                assert_eq!(
                    choose_backend(None).expect("user"),
                    Plan::Fuse(FuseVia::Fusermount3(fm))
                );
                let err = choose_backend(Some(Kind::Kernel)).unwrap_err();
                assert!(err.to_string().contains("CAP_SYS_ADMIN"), "{err}");
                assert_eq!(choose_in_userns(None).expect("run"), Kind::Kernel);
            }
            Some(Role::NoSysAdmin) => {
                assert!(!p.cap_sys_admin && !p.bounding_sys_admin, "{p:?}");
                assert!(
                    matches!(
                        p.fusermount3,
                        Fusermount3::Unusable {
                            problem: FusermountProblem::NoSysAdminInBoundingSet,
                            ..
                        }
                    ),
                    "{p:?}"
                );
                assert_eq!(
                    choose_backend(None).expect("nocap"),
                    Plan::UserNs {
                        inner: Kind::Kernel
                    }
                );
                let err = choose_backend(Some(Kind::Fuse)).unwrap_err().to_string();
                assert!(err.contains("bounding set"), "{err}");
            }
            Some(Role::UserNoNewPrivs) => {
                assert!(p.no_new_privs && !p.cap_sys_admin, "{p:?}");
                assert!(
                    matches!(
                        p.fusermount3,
                        Fusermount3::Unusable {
                            problem: FusermountProblem::NoNewPrivs,
                            ..
                        }
                    ),
                    "{p:?}"
                );
                assert_eq!(
                    choose_backend(None).expect("nnp"),
                    Plan::UserNs {
                        inner: Kind::Kernel
                    }
                );
            }
            Some(Role::UserNsOnly) => {
                // Root of a user namespace, but the mount namespace is the host's.
                assert!(
                    p.in_child_userns && p.cap_sys_admin && !p.owns_mount_ns,
                    "{p:?}"
                );
                assert!(
                    matches!(
                        p.fusermount3,
                        Fusermount3::Unusable {
                            problem: FusermountProblem::ForeignMountNs,
                            ..
                        }
                    ),
                    "{p:?}"
                );
                assert_eq!(
                    choose_backend(None).expect("userns only"),
                    Plan::UserNs {
                        inner: Kind::Kernel
                    }
                );
                let err = choose_backend(Some(Kind::Kernel)).unwrap_err().to_string();
                assert!(err.contains("mount namespace"), "{err}");
            }
            Some(Role::Nothing) => {
                assert!(p.in_child_userns && !p.cap_sys_admin, "{p:?}");
                let err = choose_backend(None).unwrap_err();
                let msg = err.to_string();
                eprintln!("nothing works: {msg}");
                assert!(msg.starts_with("cannot mount here: "), "{msg}");
                for want in [
                    "CAP_SYS_ADMIN",
                    "bounding set",
                    "sysctl user.max_user_namespaces",
                ] {
                    assert!(msg.contains(want), "{want:?} missing from: {msg}");
                }
                assert!(!msg.contains('\n'), "{msg}");
                let err = choose_in_userns(None).unwrap_err().to_string();
                assert!(err.starts_with("cannot enter a user namespace"), "{err}");
                // The fork probe itself sees the same (bypassing the sysctl read).
                assert_eq!(
                    super::super::userns::probe_child().map_err(|e| e.1),
                    Err(libc::ENOSPC)
                );
            }
            Some(Role::UserNs | Role::UserInUserNs | Role::NoSysAdminInUserNs) => {
                assert!(
                    p.in_child_userns && p.cap_sys_admin && p.owns_mount_ns && p.euid == 0,
                    "{p:?}"
                );
                assert_eq!(choose_backend(None).expect("in userns"), Plan::Kernel);
            }
        }
    }

    fn probe_userns_ok() -> bool {
        super::super::privilege::probe_userns() == UserNsSupport::Allowed
    }
}

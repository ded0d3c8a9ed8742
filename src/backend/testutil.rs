//! Test helpers: layer fixtures, mount guards, and re-running one test at another
//! privilege level (`unshare -Urm`, the `stackotest` user, no `CAP_SYS_ADMIN`).

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::unmount::unmount;

/// Env var telling a re-executed test binary which role it plays.
pub const ROLE_ENV: &str = "STACKO_BACKEND_TEST_ROLE";
/// The unprivileged account used for tests.
pub const TEST_USER: &str = "stackotest";

/// A privilege level to re-run a test at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `unshare -Urm` as the current (root) user.
    UserNs,
    /// The unprivileged `stackotest` user (via `setpriv`).
    User,
    /// `stackotest` inside `unshare -Urm`.
    UserInUserNs,
    /// Root without `CAP_SYS_ADMIN` (bounding and inheritable sets).
    NoSysAdmin,
    /// Root without `CAP_SYS_ADMIN`, inside `unshare -Urm`.
    NoSysAdminInUserNs,
    /// `stackotest` with `no_new_privs` (setuid `fusermount3` gains nothing).
    UserNoNewPrivs,
    /// `unshare -Ur`: root of a new user namespace, still in the host's mount namespace.
    UserNsOnly,
    /// Nothing works: in a user namespace whose `user.max_user_namespaces` is 0 (set
    /// there, not on the host), without `CAP_SYS_ADMIN`.
    Nothing,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::UserNs => "userns",
            Role::User => "user",
            Role::UserInUserNs => "user-userns",
            Role::NoSysAdmin => "nocap",
            Role::NoSysAdminInUserNs => "nocap-userns",
            Role::UserNoNewPrivs => "user-nnp",
            Role::Nothing => "nothing",
            Role::UserNsOnly => "userns-only",
        }
    }
}

/// The role this process plays, if it is a re-executed child.
pub fn role() -> Option<Role> {
    let v = std::env::var(ROLE_ENV).ok()?;
    [
        Role::UserNs,
        Role::User,
        Role::UserInUserNs,
        Role::NoSysAdmin,
        Role::NoSysAdminInUserNs,
        Role::UserNoNewPrivs,
        Role::Nothing,
        Role::UserNsOnly,
    ]
    .into_iter()
    .find(|r| r.name() == v)
}

/// Whether we are root with `CAP_SYS_ADMIN` in the initial namespace (the parent role).
pub fn is_full_root() -> bool {
    let p = super::privilege::Privileges::detect();
    p.euid == 0 && p.cap_sys_admin && !p.in_child_userns
}

/// Re-run test `name` (full path without the crate, e.g. `backend::kernel::tests::x`)
/// in `role`, and assert it ran exactly that one test and passed.
pub fn rerun(name: &str, role: Role) {
    let exe = std::env::current_exe().expect("current_exe");
    // For stackotest: a world-readable copy in a world-readable dir.
    let copy_dir = tempfile::Builder::new()
        .prefix("stacko-testbin")
        .tempdir()
        .expect("tempdir");
    let mut cmd;
    let unshare = ["unshare", "-Urm", "--"];
    let drop_cap = [
        "setpriv",
        "--bounding-set",
        "-sys_admin",
        "--inh-caps",
        "-sys_admin",
        "--",
    ];
    let as_user = [
        "setpriv",
        "--reuid",
        TEST_USER,
        "--regid",
        TEST_USER,
        "--clear-groups",
        "--",
    ];
    let bin = match role {
        Role::User | Role::UserInUserNs | Role::UserNoNewPrivs => {
            fs::set_permissions(copy_dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
            let bin = copy_dir.path().join("testbin");
            // Copied by a child process: a write fd to `bin` held by this multi-threaded
            // process could be inherited by another test thread's fork and make the exec
            // below fail with ETXTBSY.
            let st = Command::new("cp")
                .arg(&exe)
                .arg(&bin)
                .status()
                .expect("spawn cp");
            assert!(st.success(), "copy test binary");
            fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod");
            bin
        }
        _ => exe,
    };
    let nnp = ["setpriv", "--no-new-privs", "--"];
    let nothing = [
        "unshare",
        "-Ur",
        "--",
        "sh",
        "-c",
        "echo 0 > /proc/sys/user/max_user_namespaces && exec \"$@\"",
        "sh",
    ];
    let prefix: Vec<&str> = match role {
        Role::UserNs => unshare.to_vec(),
        Role::User => as_user.to_vec(),
        Role::UserInUserNs => [&as_user[..], &unshare[..]].concat(),
        Role::NoSysAdmin => drop_cap.to_vec(),
        Role::NoSysAdminInUserNs => [&drop_cap[..], &unshare[..]].concat(),
        Role::UserNoNewPrivs => [&as_user[..], &nnp[..]].concat(),
        Role::Nothing => [&nothing[..], &drop_cap[..]].concat(),
        Role::UserNsOnly => vec!["unshare", "-Ur", "--"],
    };
    cmd = Command::new(prefix[0]);
    cmd.args(&prefix[1..])
        .arg(&bin)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role.name())
        .env("TMPDIR", "/tmp")
        .current_dir("/tmp");
    let out: Output = cmd.output().expect("spawn child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "child test {name} as {role:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

/// A mount that is lazily unmounted when dropped (if still mounted).
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = unmount(&self.0, true);
    }
}

/// Mounts kernel overlayfs over two fresh layers (`a/x` over `b/y`, both under `dir`) at
/// `dir/<name>`; the mount goes when the returned guard drops.
pub fn two_layer_overlay(dir: &Path, name: &str) -> (PathBuf, MountGuard) {
    let (a, b) = (dir.join("a"), dir.join("b"));
    put(&a.join("x"), "x");
    put(&b.join("y"), "y");
    let mnt = dir.join(name);
    fs::create_dir(&mnt).expect("mkdir");
    super::kernel::Overlay::new(vec![a, b])
        .mount(&mnt)
        .expect("mount");
    let guard = MountGuard(mnt.clone());
    (mnt, guard)
}

/// Write a file, creating parents.
pub fn put(path: &Path, content: &str) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).expect("mkdir");
    }
    fs::write(path, content).expect("write");
}

/// Make an overlay whiteout (char device 0:0) at `path`.
pub fn whiteout(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: valid path.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(0, 0)) };
    assert_eq!(
        r,
        0,
        "mknod whiteout {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Mark directory `path` opaque (`user.overlay.opaque=y`).
pub fn opaque(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: valid path, name and value.
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"user.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr opaque {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Three lower layers, an upper and a work dir under `root`, in stacko's on-disk
/// format. Returns (lowers top first, upper, work, mount target).
pub fn three_layer_fixture(root: &Path) -> (Vec<PathBuf>, PathBuf, PathBuf, PathBuf) {
    let (l1, l2, l3) = (root.join("l1"), root.join("l2"), root.join("l3"));
    let (up, work, mnt) = (root.join("upper"), root.join("work"), root.join("merged"));
    for d in [&l1, &l2, &l3, &up, &work, &mnt] {
        fs::create_dir_all(d).expect("mkdir");
    }
    // bottom
    put(&l3.join("a.txt"), "bottom-a");
    put(&l3.join("gone.txt"), "bottom-gone");
    put(&l3.join("dir/old.txt"), "old");
    put(&l3.join("keep.txt"), "bottom-keep");
    // middle
    put(&l2.join("a.txt"), "middle-a");
    put(&l2.join("mid.txt"), "middle");
    // top: opaque dir hides dir/old.txt, whiteout hides gone.txt
    put(&l1.join("dir/new.txt"), "new");
    opaque(&l1.join("dir"));
    whiteout(&l1.join("gone.txt"));
    // upper: wins over a.txt, whites out mid.txt
    put(&up.join("a.txt"), "upper-a");
    put(&up.join("up.txt"), "up");
    whiteout(&up.join("mid.txt"));
    (vec![l1, l2, l3], up, work, mnt)
}

/// Names in a directory, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Check the merged view of [`three_layer_fixture`] at `mnt`.
pub fn check_three_layer_view(mnt: &Path) {
    assert_eq!(names(mnt), ["a.txt", "dir", "keep.txt", "up.txt"]);
    assert_eq!(fs::read_to_string(mnt.join("a.txt")).expect("a"), "upper-a");
    assert_eq!(
        fs::read_to_string(mnt.join("keep.txt")).expect("keep"),
        "bottom-keep"
    );
    assert_eq!(
        names(&mnt.join("dir")),
        ["new.txt"],
        "opaque dir must hide the lower dir/old.txt"
    );
    assert!(
        !mnt.join("gone.txt").exists(),
        "whiteout in l1 must hide gone.txt"
    );
    assert!(
        !mnt.join("mid.txt").exists(),
        "whiteout in upper must hide mid.txt"
    );
}

/// `n` tiny layers under `root` (`root/L/<i>`), each with its own file `f<i>`; the
/// bottom one also holds `bottom.txt`. Returns them top first.
pub fn many_layers(root: &Path, n: usize) -> Vec<PathBuf> {
    let base = root.join("L");
    (0..n)
        .map(|i| {
            let d = base.join(i.to_string());
            fs::create_dir_all(&d).expect("mkdir");
            fs::write(d.join(format!("f{i}")), i.to_string()).expect("write");
            if i == n - 1 {
                fs::write(d.join("bottom.txt"), "from the bottom").expect("write");
            }
            d
        })
        .collect()
}

/// A temp dir readable by everyone (so the `stackotest` user can use it when made by root).
pub fn tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("stacko-backend")
        .tempdir()
        .expect("tempdir");
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

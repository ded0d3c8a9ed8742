//! Running a command in a new user + mount namespace (`stacko run`).
//!
//! A multithreaded process cannot `unshare(CLONE_NEWUSER)` (the kernel returns
//! `EINVAL`), and the daemon and test harness are multithreaded. So we `fork` first:
//! the child has a single thread and enters the namespaces itself. Between `fork` and
//! `exec` the child runs the caller's `setup` (which mounts); this allocates, which is
//! safe with glibc (its `fork` resets the allocator's locks) but `setup` must not wait
//! on locks other threads of the parent might have held (stdout, loggers, mutexes).
//! Everything the namespace entry itself needs (id maps, argv) is prepared before
//! `fork`, and that part uses raw system calls only.

use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// Steps of entering the namespace, for error messages.
const STEPS: [&str; 6] = [
    "fork",
    "unshare(CLONE_NEWUSER|CLONE_NEWNS)",
    "writing /proc/self/setgroups",
    "writing /proc/self/uid_map",
    "writing /proc/self/gid_map",
    "making mounts private (mount --make-rprivate /)",
];

/// Id maps prepared before `fork`.
struct Maps {
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
}

impl Maps {
    /// Map our effective uid and gid to 0 inside (single lines, allowed unprivileged).
    fn for_caller() -> Maps {
        // SAFETY: geteuid/getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Maps {
            uid_map: format!("0 {uid} 1\n").into_bytes(),
            gid_map: format!("0 {gid} 1\n").into_bytes(),
        }
    }
}

/// Write `data` to the file `path` with raw system calls.
fn write_file(path: &std::ffi::CStr, data: &[u8]) -> Result<(), i32> {
    // SAFETY: valid path; buffer and length match.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(errno());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let e = errno();
        libc::close(fd);
        if n < 0 || n as usize != data.len() {
            return Err(if n < 0 { e } else { libc::EIO });
        }
    }
    Ok(())
}

fn errno() -> i32 {
    // SAFETY: __errno_location always returns the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

/// In the (single-threaded) child: enter a new user + mount namespace, become root
/// there, make all mounts private. On failure returns (step index, errno).
fn enter(maps: &Maps) -> Result<(), (usize, i32)> {
    // SAFETY: plain system calls with valid arguments.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) } != 0 {
        return Err((1, errno()));
    }
    match write_file(c"/proc/self/setgroups", b"deny") {
        Ok(()) | Err(libc::ENOENT) => {}
        Err(e) => return Err((2, e)),
    }
    write_file(c"/proc/self/uid_map", &maps.uid_map).map_err(|e| (3, e))?;
    write_file(c"/proc/self/gid_map", &maps.gid_map).map_err(|e| (4, e))?;
    // SAFETY: null source/type/data are allowed for a propagation change.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err((5, errno()));
    }
    Ok(())
}

/// A pipe whose ends close on exec.
fn cloexec_pipe() -> io::Result<(libc::c_int, libc::c_int)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((fds[0], fds[1]))
}

/// Read everything from `fd` until EOF, then close it.
fn read_all(fd: libc::c_int) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        // SAFETY: valid buffer and length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            out.extend_from_slice(&buf[..n as usize]);
        } else if n == 0 || errno() != libc::EINTR {
            break;
        }
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    out
}

/// Wait for `pid`, retrying on `EINTR`; returns the raw wait status.
fn wait(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Write an error report `[errno: i32][step: u32][message]` to the pipe and `_exit(127)`.
fn report_and_exit(fd: libc::c_int, step: usize, errno: i32, msg: &[u8]) -> ! {
    let mut rec = [0u8; 1024];
    let n = msg.len().min(rec.len() - 8);
    rec[..4].copy_from_slice(&errno.to_ne_bytes());
    rec[4..8].copy_from_slice(&(step as u32).to_ne_bytes());
    rec[8..8 + n].copy_from_slice(&msg[..n]);
    // SAFETY: writing a valid buffer, then exiting without running destructors or atexit.
    unsafe {
        libc::write(fd, rec.as_ptr().cast(), 8 + n);
        libc::_exit(127)
    }
}

/// Run `argv` (looked up on `PATH`) in a new user and mount namespace, as uid/gid 0
/// there (mapped to our effective uid/gid), after `setup` ran in that namespace (to
/// mount things only the command will see). Waits for it and returns its exit status.
///
/// The child forks off this process, enters the namespaces (writing `setgroups`
/// "deny" and single-line `uid_map`/`gid_map`), makes every mount private, calls
/// `setup`, then `execvp`s. Errors of any of these steps (including a `setup` error or
/// a command that is not found) come back as the `Err` of this function, with the
/// errno's kind and a message naming the step. See the module docs for what `setup`
/// may do after `fork`.
pub fn run_in_userns(
    setup: impl FnOnce() -> io::Result<()>,
    argv: &[OsString],
) -> io::Result<ExitStatus> {
    let Some(first) = argv.first() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no command given to run",
        ));
    };
    let cargs = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "command argument contains a NUL byte",
            )
        })?;
    let mut ptrs: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let maps = Maps::for_caller();
    let (rd, wr) = cloexec_pipe()?;

    // SAFETY: fork; the child only uses the prepared data, `setup`, and exits or execs.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: closing our own fds.
        unsafe {
            libc::close(rd);
            libc::close(wr);
        }
        return Err(e);
    }
    if pid == 0 {
        // Child.
        // SAFETY: closing our copy of the read end.
        unsafe { libc::close(rd) };
        if let Err((step, e)) = enter(&maps) {
            report_and_exit(wr, step, e, b"");
        }
        let setup = std::panic::catch_unwind(std::panic::AssertUnwindSafe(setup))
            .unwrap_or_else(|_| Err(io::Error::other("setup panicked")));
        if let Err(e) = setup {
            let errno = e.raw_os_error().or_else(|| {
                e.get_ref()
                    .and_then(|inner| inner.downcast_ref::<super::error::Error>())
                    .and_then(|b| b.errno())
            });
            report_and_exit(wr, 6, errno.unwrap_or(libc::EIO), e.to_string().as_bytes());
        }
        // SAFETY: argv pointers are valid and NULL-terminated.
        unsafe { libc::execvp(ptrs[0], ptrs.as_ptr()) };
        let e = errno();
        report_and_exit(wr, 7, e, b"");
    }

    // Parent.
    // SAFETY: closing our copy of the write end so EOF arrives at exec or exit.
    unsafe { libc::close(wr) };
    let report = read_all(rd);
    let status = wait(pid)?;
    if report.len() >= 8 {
        let errno = i32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
        let step = u32::from_ne_bytes([report[4], report[5], report[6], report[7]]) as usize;
        let msg = String::from_utf8_lossy(&report[8..]);
        let kind = io::Error::from_raw_os_error(errno).kind();
        let text = match step {
            6 => format!("setting up the namespace failed: {msg}"),
            7 => format!(
                "cannot run {}: {}",
                first.to_string_lossy(),
                io::Error::from_raw_os_error(errno)
            ),
            s => format!(
                "cannot enter a user namespace: {} failed: {}",
                STEPS.get(s).copied().unwrap_or("?"),
                io::Error::from_raw_os_error(errno)
            ),
        };
        return Err(io::Error::new(kind, text));
    }
    Ok(ExitStatus::from_raw(status))
}

/// Fork a child that enters a user + mount namespace and exits: `Err((step, errno))`
/// names the first step that failed. Used by [`super::privilege::probe_userns`].
pub(crate) fn probe_child() -> Result<(), (&'static str, i32)> {
    let maps = Maps::for_caller();
    let (rd, wr) = cloexec_pipe().map_err(|e| (STEPS[0], e.raw_os_error().unwrap_or(libc::EIO)))?;
    // SAFETY: the child only makes raw system calls and exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = errno();
        // SAFETY: closing our own fds.
        unsafe {
            libc::close(rd);
            libc::close(wr);
        }
        return Err((STEPS[0], e));
    }
    if pid == 0 {
        // SAFETY: closing our copy of the read end.
        unsafe { libc::close(rd) };
        match enter(&maps) {
            Ok(()) => unsafe { libc::_exit(0) },
            Err((step, e)) => report_and_exit(wr, step, e, b""),
        }
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(wr) };
    let report = read_all(rd);
    let status = wait(pid).map_err(|e| (STEPS[0], e.raw_os_error().unwrap_or(libc::EIO)))?;
    if report.len() >= 8 {
        let errno = i32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
        let step = u32::from_ne_bytes([report[4], report[5], report[6], report[7]]) as usize;
        return Err((STEPS.get(step).copied().unwrap_or("?"), errno));
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err((STEPS[0], libc::ECHILD));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{self as tu, rerun, role, Role};
    use super::*;
    use crate::backend::kernel::Overlay;
    use std::fs;
    use std::os::fd::AsRawFd;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    /// In a new user+mount namespace: mount an overlay of two layers, `cat` a file from
    /// each through it with stdout going to a file, check what came out.
    fn cat_through_overlay_case() {
        let tmp = tu::tempdir();
        let (a, b, mnt) = (
            tmp.path().join("a"),
            tmp.path().join("b"),
            tmp.path().join("m"),
        );
        tu::put(&a.join("top.txt"), "from a\n");
        tu::put(&b.join("bottom.txt"), "from b\n");
        tu::put(&b.join("top.txt"), "hidden\n");
        fs::create_dir(&mnt).expect("mkdir");
        let out_path = tmp.path().join("out");
        let out = fs::File::create(&out_path).expect("create out");
        let (a2, b2, m2) = (a.clone(), b.clone(), mnt.clone());
        let status = run_in_userns(
            move || {
                Overlay::new(vec![a2, b2]).mount(&m2)?;
                // SAFETY: dup2 of valid fds in the child.
                if unsafe { libc::dup2(out.as_raw_fd(), 1) } < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            },
            &[
                OsString::from("cat"),
                mnt.join("top.txt").into_os_string(),
                mnt.join("bottom.txt").into_os_string(),
                OsString::from("/proc/self/uid_map"),
            ],
        )
        .expect("run_in_userns");
        assert!(status.success(), "{status}");
        let got = fs::read_to_string(&out_path).expect("read out");
        let mut lines = got.lines();
        assert_eq!(lines.next(), Some("from a"));
        assert_eq!(lines.next(), Some("from b"));
        // The command ran as uid 0 mapped to our euid, one id only.
        let euid = unsafe { libc::geteuid() };
        let map: Vec<&str> = lines
            .next()
            .expect("uid_map line")
            .split_whitespace()
            .collect();
        assert_eq!(map, ["0", &euid.to_string(), "1"]);
        // The mount was only in the child's namespace.
        assert!(!crate::backend::is_mount_point(&mnt).expect("mountinfo"));
        assert!(!mnt.join("top.txt").exists());
    }

    #[test]
    fn cat_through_an_overlay_mounted_in_the_namespace() {
        match role() {
            Some(Role::NoSysAdmin) => {
                // The plain mount really is refused at this level...
                let tmp = tu::tempdir();
                let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
                tu::put(&a.join("x"), "x");
                tu::put(&b.join("y"), "y");
                let err = Overlay::new(vec![a, b]).mount(tmp.path()).unwrap_err();
                assert_eq!(err.errno(), Some(libc::EPERM), "{err}");
                // ...but works in a user namespace.
                cat_through_overlay_case();
            }
            Some(Role::User) => {
                assert_ne!(unsafe { libc::geteuid() }, 0);
                cat_through_overlay_case();
            }
            Some(other) => panic!("unexpected role {other:?}"),
            None if tu::is_full_root() => {
                cat_through_overlay_case();
                let name =
                    "backend::userns::tests::cat_through_an_overlay_mounted_in_the_namespace";
                rerun(name, Role::User);
                rerun(name, Role::NoSysAdmin);
            }
            None => cat_through_overlay_case(),
        }
    }

    #[test]
    fn exit_code_is_forwarded() {
        let st = run_in_userns(|| Ok(()), &args(&["sh", "-c", "exit 7"])).expect("run");
        assert_eq!(st.code(), Some(7));
        let st = run_in_userns(|| Ok(()), &args(&["sh", "-c", "kill -TERM $$"])).expect("run");
        assert_eq!(st.signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn setup_and_exec_failures_come_back_as_errors() {
        let err = run_in_userns(
            || Err(io::Error::from_raw_os_error(libc::ENOENT)),
            &args(&["true"]),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string()
                .starts_with("setting up the namespace failed"),
            "{err}"
        );
        // A backend error keeps its errno and message.
        let err = run_in_userns(
            || Err(crate::backend::Error::NotMounted { path: "/x".into() }.into()),
            &args(&["true"]),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("/x is not a mount point"), "{err}");
        // (An absolute path: a PATH search reports EACCES if some PATH dir is unreadable.)
        let err = run_in_userns(|| Ok(()), &args(&["/nonexistent/stacko-cmd"])).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string()
                .starts_with("cannot run /nonexistent/stacko-cmd"),
            "{err}"
        );
        let err = run_in_userns(|| panic!("boom"), &args(&["true"])).unwrap_err();
        assert!(err.to_string().contains("setup panicked"), "{err}");
        assert_eq!(
            run_in_userns(|| Ok(()), &[]).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn probe_child_enters_a_namespace_here() {
        assert_eq!(probe_child(), Ok(()));
    }
}

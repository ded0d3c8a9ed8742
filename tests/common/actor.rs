//! Runs closures on a dedicated thread, optionally with another user's credentials.
//!
//! Linux credentials are per thread at the syscall level (glibc's `setresuid` wrapper
//! broadcasts to every thread; the raw syscall does not). The actor thread issues the raw
//! `setgroups`/`setresgid`/`setresuid` syscalls, so it acts as the unprivileged user while
//! the rest of the test process stays root (needed to mount kernel overlayfs, clean up, and
//! apply the harness's own fix-ups on the kernel side).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Sender};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send>;

/// A worker thread running jobs in order with fixed credentials.
pub struct Actor {
    tx: Option<Sender<Job>>,
    handle: Option<JoinHandle<()>>,
    /// `Some((uid, gid))` when the thread dropped to that user.
    pub creds: Option<(u32, u32)>,
}

impl Actor {
    /// Starts the thread; with `creds`, it drops to that uid/gid with no supplementary groups.
    pub fn new(creds: Option<(u32, u32)>) -> Actor {
        let (tx, rx) = channel::<Job>();
        let (ready_tx, ready_rx) = channel::<Result<(), String>>();
        let handle = std::thread::Builder::new()
            .name("actor".into())
            .spawn(move || {
                if let Some((uid, gid)) = creds {
                    let r = unsafe {
                        if libc::syscall(
                            libc::SYS_setgroups,
                            0usize,
                            std::ptr::null::<libc::gid_t>(),
                        ) != 0
                        {
                            Err("setgroups")
                        } else if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0 {
                            Err("setresgid")
                        } else if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
                            Err("setresuid")
                        } else {
                            Ok(())
                        }
                    };
                    let r =
                        r.map_err(|what| format!("{what}: {}", std::io::Error::last_os_error()));
                    let r = r.and_then(|()| {
                        let (u, g) = unsafe {
                            (
                                libc::syscall(libc::SYS_geteuid),
                                libc::syscall(libc::SYS_getegid),
                            )
                        };
                        if u as u32 == uid && g as u32 == gid {
                            Ok(())
                        } else {
                            Err(format!("credentials did not change: euid {u} egid {g}"))
                        }
                    });
                    let failed = r.is_err();
                    let _ = ready_tx.send(r);
                    if failed {
                        return;
                    }
                } else {
                    let _ = ready_tx.send(Ok(()));
                }
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .expect("spawn actor thread");
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("actor could not switch to {creds:?}: {e}"),
            Err(_) => panic!("actor thread died while switching to {creds:?}"),
        }
        Actor {
            tx: Some(tx),
            handle: Some(handle),
            creds,
        }
    }

    /// Runs `f` on the actor thread and returns its result (a panic in `f` is re-raised here).
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (rtx, rrx) = channel();
        let job: Job = Box::new(move || {
            let _ = rtx.send(catch_unwind(AssertUnwindSafe(f)));
        });
        self.tx
            .as_ref()
            .expect("actor alive")
            .send(job)
            .expect("actor thread gone");
        match rrx.recv().expect("actor thread died") {
            Ok(v) => v,
            Err(p) => resume_unwind(p),
        }
    }
}

impl Drop for Actor {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

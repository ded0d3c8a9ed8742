//! Mount guards: kernel overlayfs (the oracle) and the engine under test (a FUSE process run
//! in the foreground with `-f`). Both unmount in `Drop`, even while a test panics; a busy mount
//! is detached lazily, and an engine that does not exit after its unmount is killed (by pid).

use super::sys;
use super::Engine;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Liveness bound for a mount to appear or an engine to exit. Not a performance assertion:
/// it only turns a hang into a clear failure.
const LIVENESS: Duration = Duration::from_secs(30);

fn lowerdir_opt(lowers: &[PathBuf]) -> String {
    lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// A kernel overlayfs mount (`-o userxattr`), unmounted on drop.
pub struct KernelOverlay {
    mnt: PathBuf,
    mounted: bool,
}

impl KernelOverlay {
    /// Mounts `lowers` (top first) + `upper`/`work` on `mnt`.
    pub fn mount(
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        mnt: &Path,
    ) -> Result<KernelOverlay, String> {
        let data = format!(
            "lowerdir={},upperdir={},workdir={},userxattr",
            lowerdir_opt(lowers),
            upper.display(),
            work.display()
        );
        sys::mount_overlay(mnt, &data).map_err(|e| {
            format!(
                "mount -t overlay -o {data} {}: {}",
                mnt.display(),
                sys::errno_name(e)
            )
        })?;
        Ok(KernelOverlay {
            mnt: mnt.to_path_buf(),
            mounted: true,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// Unmounts, reporting failure.
    pub fn unmount(&mut self) -> Result<(), String> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        unmount_path(&self.mnt)
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        if self.mounted {
            self.mounted = false;
            let _ = unmount_path(&self.mnt);
        }
    }
}

/// umount, with a lazy-detach fallback so that cleanup never blocks on a busy mount.
fn unmount_path(mnt: &Path) -> Result<(), String> {
    // EBUSY can be passing: a process forked by another test thread holds copies of this
    // thread's open fds until it execs. A reference that stays (an fd this test leaked)
    // still fails after the retries.
    let mut r = sys::umount2(mnt, 0);
    for _ in 0..40 {
        if r != Err(libc::EBUSY) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        r = sys::umount2(mnt, 0);
    }
    match r {
        Ok(()) => Ok(()),
        Err(e) => {
            let lazy = sys::umount2(mnt, libc::MNT_DETACH);
            Err(format!(
                "umount {}: {} (lazy detach: {:?})",
                mnt.display(),
                sys::errno_name(e),
                lazy.map_err(sys::errno_name)
            ))
        }
    }
}

/// How to start the engine.
#[derive(Clone, Debug)]
pub struct EngineOpts {
    /// Lower directories, top first.
    pub lowers: Vec<PathBuf>,
    /// Upper and work directories (`None`: a read-only mount).
    pub upper_work: Option<(PathBuf, PathBuf)>,
    /// Mount point.
    pub mnt: PathBuf,
    /// Run as this (uid, gid) through `setpriv` (the engine then mounts through fusermount3).
    pub user: Option<(u32, u32)>,
    /// File collecting the engine's stdout and stderr.
    pub log: PathBuf,
}

/// A running engine (`-f`), unmounted and reaped on drop.
pub struct EngineMount {
    opts: EngineOpts,
    child: Option<Child>,
    mounted: bool,
}

impl EngineMount {
    /// Starts `engine` and waits until its mount appears (or the process dies).
    pub fn mount(engine: &Engine, opts: &EngineOpts) -> Result<EngineMount, String> {
        let mut o = format!("lowerdir={}", lowerdir_opt(&opts.lowers));
        if let Some((u, w)) = &opts.upper_work {
            o.push_str(&format!(
                ",upperdir={},workdir={}",
                u.display(),
                w.display()
            ));
        }
        if let Ok(extra) = std::env::var(super::ENV_EXTRA_OPTS) {
            if !extra.is_empty() {
                o.push(',');
                o.push_str(&extra);
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&opts.log)
            .map_err(|e| format!("open engine log {}: {e}", opts.log.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = match opts.user {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(&engine.path);
                c
            }
            None => Command::new(&engine.path),
        };
        cmd.arg("-f").arg("-o").arg(&o).arg(&opts.mnt);
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let cmdline = format!("{cmd:?}");
        let child = cmd.spawn().map_err(|e| format!("spawn {cmdline}: {e}"))?;
        let mut me = EngineMount {
            opts: opts.clone(),
            child: Some(child),
            mounted: false,
        };
        let start = Instant::now();
        loop {
            if sys::is_mountpoint(&opts.mnt) {
                me.mounted = true;
                return Ok(me);
            }
            if let Some(st) = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                me.child = None;
                return Err(format!(
                    "engine exited ({st}) before mounting: {cmdline}\n--- engine log ---\n{}",
                    me.log()
                ));
            }
            if start.elapsed() > LIVENESS {
                return Err(format!(
                    "engine did not mount within {LIVENESS:?}: {cmdline}\n--- log ---\n{}",
                    me.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.opts.mnt
    }

    /// The options it was started with (to remount).
    pub fn opts(&self) -> &EngineOpts {
        &self.opts
    }

    /// The engine's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.opts.log).unwrap_or_default()
    }

    /// The engine's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILLs the engine (our own child, by pid): aborts the FUSE connection so that hung
    /// syscalls return. Used by watchdogs.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
    }

    /// Unmounts cleanly and checks that the engine then exits with status 0.
    pub fn unmount(&mut self) -> Result<(), String> {
        let mut errs = Vec::new();
        if self.mounted {
            self.mounted = false;
            if let Err(e) = self.umount_once() {
                errs.push(e);
            }
        }
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            loop {
                match c.try_wait() {
                    Ok(Some(st)) => {
                        if !st.success() {
                            errs.push(format!("engine exited with {st} after unmount"));
                        }
                        break;
                    }
                    Ok(None) if start.elapsed() < LIVENESS => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        errs.push(format!(
                            "engine did not exit within {LIVENESS:?} after unmount; killed"
                        ));
                        break;
                    }
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{}\n--- engine log ---\n{}",
                errs.join("; "),
                self.log()
            ))
        }
    }

    fn umount_once(&self) -> Result<(), String> {
        if let Some((uid, gid)) = self.opts.user {
            // A user mount is taken down the way its owner would: fusermount3 -u (retried
            // while busy, for the reason given in `unmount_path`).
            let run = || {
                Command::new("setpriv")
                    .arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg("fusermount3")
                    .arg("-u")
                    .arg(&self.opts.mnt)
                    .output()
            };
            let busy = |o: &std::process::Output| {
                !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("busy")
            };
            let mut out = run();
            for _ in 0..40 {
                if !matches!(&out, Ok(o) if busy(o)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
                out = run();
            }
            match out {
                Ok(o) if o.status.success() => return Ok(()),
                Ok(o) => {
                    let _ = unmount_path(&self.opts.mnt);
                    return Err(format!(
                        "fusermount3 -u failed: {}",
                        String::from_utf8_lossy(&o.stderr)
                    ));
                }
                Err(e) => {
                    let _ = unmount_path(&self.opts.mnt);
                    return Err(format!("fusermount3: {e}"));
                }
            }
        }
        unmount_path(&self.opts.mnt)
    }
}

impl Drop for EngineMount {
    fn drop(&mut self) {
        if self.mounted {
            self.mounted = false;
            if self.umount_once().is_err() {
                let _ = sys::umount2(&self.opts.mnt, libc::MNT_DETACH);
            }
        }
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

//! The daemon: the one process that opens the store, serving every client
//! over `HOME/daemon.sock`.
//!
//! Life cycle:
//! 1. take an flock on `HOME/daemon.lock` (a daemon that loses exits quietly:
//!    another one serves), write `HOME/daemon.pid`;
//! 2. remove a stale socket, bind `HOME/daemon.sock` (mode 0600), open the store;
//! 3. serve each connection in its own thread ([`crate::session`]);
//! 4. retire when idle (no connection, nothing in progress and no FUSE
//!    filesystem served) for the idle period, on SIGTERM/SIGINT, on [`crate::protocol::Request::Shutdown`],
//!    or when a client of another build connects: unlink the socket, serve
//!    the connections already queued, wait for running operations, unmount
//!    the FUSE filesystems it serves, flush the store, remove the pid file, exit.
//!
//! The idle period is `STACKO_DAEMON_IDLE_SECS` (default 30; 0 = never).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::home;
use crate::log::Log;
use crate::service::Service;
use crate::session;

/// The default idle period before the daemon exits.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(30);

/// The longest socket path a `sockaddr_un` holds.
pub const SOCKET_PATH_MAX: usize = 107;

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// Copy the log to stderr.
    pub foreground: bool,
    /// Exit after this long with nothing to do; `None` = never.
    pub idle: Option<Duration>,
}

impl DaemonOptions {
    /// Options from the environment (`STACKO_DAEMON_IDLE_SECS`).
    pub fn from_env(foreground: bool) -> Self {
        let idle = match std::env::var("STACKO_DAEMON_IDLE_SECS") {
            Ok(v) => match v.trim().parse::<u64>() {
                Ok(0) => None,
                Ok(n) => Some(Duration::from_secs(n)),
                Err(_) => Some(DEFAULT_IDLE),
            },
            Err(_) => Some(DEFAULT_IDLE),
        };
        DaemonOptions { foreground, idle }
    }
}

/// Checks that the socket path of `home` fits in a `sockaddr_un`.
pub fn check_socket_path(home: &Path) -> Result<PathBuf> {
    let sock = home::socket_path(home);
    if sock.as_os_str().len() > SOCKET_PATH_MAX {
        return Err(Error::Invalid(format!(
            "the stacko home {} is too long a path for the daemon's socket \
             (at most {} bytes with /daemon.sock): use a shorter --home",
            home.display(),
            SOCKET_PATH_MAX
        )));
    }
    Ok(sock)
}

/// Counts what keeps the daemon alive: open connections now, mounts later.
pub struct Activity {
    state: Mutex<(usize, Instant)>,
    changed: Condvar,
}

/// Held while something is in progress; the daemon does not go idle meanwhile.
pub struct Busy<'a>(&'a Activity);

impl Activity {
    fn new() -> Self {
        Activity {
            state: Mutex::new((0, Instant::now())),
            changed: Condvar::new(),
        }
    }

    /// Marks something in progress until the guard is dropped.
    pub fn busy(&self) -> Busy<'_> {
        self.enter();
        Busy(self)
    }

    fn enter(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0 += 1;
    }

    fn leave(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 = s.0.saturating_sub(1);
        s.1 = Instant::now();
        self.changed.notify_all();
    }

    /// How long nothing has been in progress (`None` while something is).
    pub fn idle_for(&self) -> Option<Duration> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (s.0 == 0).then(|| s.1.elapsed())
    }

    fn wait_idle(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while s.0 > 0 {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// What every session of the daemon shares.
pub struct Daemon {
    /// The store's commands.
    pub service: Service,
    /// Open connections (and, later, mounts).
    pub activity: Activity,
    /// The log.
    pub log: Log,
    retiring: AtomicBool,
}

impl Daemon {
    /// Asks the daemon to stop accepting, finish, and exit.
    pub fn retire(&self, why: &str) {
        if !self.retiring.swap(true, Ordering::SeqCst) {
            self.log.line(format!("retiring: {why}"));
        }
    }
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

fn lock_home(home: &Path) -> Result<Option<File>> {
    let path = home::lock_path(home);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        return Err(Error::io(format!("cannot lock {}", path.display()), e));
    }
    Ok(Some(f))
}

fn write_pid(home: &Path) -> Result<()> {
    let path = home::pid_path(home);
    let tmp = path.with_extension("pid.tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

fn bind(sock: &Path) -> Result<(UnixListener, (u64, u64))> {
    match std::fs::remove_file(sock) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::io(
                format!("cannot remove stale {}", sock.display()),
                e,
            ))
        }
    }
    // Single-threaded here: the umask makes the socket 0600 from the start.
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(sock);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = l.map_err(|e| Error::io(format!("cannot listen on {}", sock.display()), e))?;
    let m = std::fs::metadata(sock)
        .map_err(|e| Error::io(format!("cannot stat {}", sock.display()), e))?;
    let _ = std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o600));
    Ok((l, (m.dev(), m.ino())))
}

fn unlink_if_ours(sock: &Path, id: (u64, u64)) {
    if let Ok(m) = std::fs::metadata(sock) {
        if (m.dev(), m.ino()) == id {
            let _ = std::fs::remove_file(sock);
        }
    }
}

fn wait_readable(l: &UnixListener, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: l.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

fn spawn_session(daemon: &Arc<Daemon>, conn: UnixStream) {
    let d = Arc::clone(daemon);
    // Counted before the thread starts, so the daemon cannot go idle in between.
    d.activity.enter();
    let spawned = std::thread::Builder::new()
        .name("stacko-session".into())
        .spawn(move || {
            let _busy = Busy(&d.activity);
            session::serve(&d, conn);
        });
    if let Err(e) = spawned {
        daemon
            .log
            .line(format!("cannot start a session thread: {e}"));
        daemon.activity.leave();
    }
}

/// Answers every queued connection with `message` (the store would not open).
fn refuse_queued(l: &UnixListener, message: &str) {
    use crate::channel::Channel;
    use crate::error::ErrorKind;
    use crate::protocol::{Request, Response, WireError};
    if l.set_nonblocking(true).is_err() {
        return;
    }
    while let Ok((conn, _)) = l.accept() {
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let mut ch = Channel::new(conn);
        let _ = ch.recv::<Request>();
        if let Ok(tx) = ch.sender() {
            let _ = tx.send(
                &Response::Error(WireError {
                    kind: ErrorKind::Io,
                    message: message.to_string(),
                }),
                &[],
            );
        }
    }
}

/// Runs the daemon for `home` until it retires. Returns `Ok` at once when
/// another daemon already serves `home`.
pub fn run(home: &Path, opts: &DaemonOptions) -> Result<()> {
    home::ensure(home)?;
    let sock = check_socket_path(home)?;
    let _ = std::env::set_current_dir("/");
    let Some(_lock) = lock_home(home)? else {
        if opts.foreground {
            eprintln!("stacko daemon: another daemon serves {}", home.display());
        }
        return Ok(());
    };
    let log = Log::open(&home::log_path(home), opts.foreground);
    log.line(format!(
        "starting for {} ({}, idle exit {:?})",
        home.display(),
        crate::buildid::build_id(),
        opts.idle
    ));
    write_pid(home)?;
    let (listener, sock_id) = match bind(&sock) {
        Ok(x) => x,
        Err(e) => {
            log.line(format!("error: {e}"));
            let _ = std::fs::remove_file(home::pid_path(home));
            return Err(e);
        }
    };
    let service = match Service::open(home) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!(
                "the daemon cannot open the store in {}: {e}",
                home.display()
            );
            log.line(format!("error: {msg}"));
            refuse_queued(&listener, &msg);
            unlink_if_ours(&sock, sock_id);
            let _ = std::fs::remove_file(home::pid_path(home));
            return Err(Error::Daemon(msg));
        }
    };
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let daemon = Arc::new(Daemon {
        service,
        activity: Activity::new(),
        log,
        retiring: AtomicBool::new(false),
    });
    daemon.log.line(format!("listening on {}", sock.display()));
    loop {
        if wait_readable(&listener, Duration::from_millis(200)) {
            match listener.accept() {
                Ok((conn, _)) => spawn_session(&daemon, conn),
                Err(e) => daemon.log.line(format!("accept: {e}")),
            }
        }
        if SIGNALLED.load(Ordering::SeqCst) {
            daemon.retire("signal");
        }
        // Never idle while a FUSE filesystem is served from here.
        if let (Some(idle), Some(quiet)) = (opts.idle, daemon.activity.idle_for()) {
            if quiet >= idle && daemon.service.fuse_mounts().active() == 0 {
                daemon.retire("idle");
            }
        }
        if daemon.retiring.load(Ordering::SeqCst) {
            break;
        }
    }
    // No new connection can find us once the socket is gone; serve those already queued.
    unlink_if_ours(&sock, sock_id);
    if listener.set_nonblocking(true).is_ok() {
        while let Ok((conn, _)) = listener.accept() {
            let _ = conn.set_nonblocking(false);
            spawn_session(&daemon, conn);
        }
    }
    drop(listener);
    daemon.activity.wait_idle();
    // The FUSE filesystems die with this process: unmount them cleanly.
    daemon
        .service
        .fuse_mounts()
        .unmount_all(&|line| daemon.log.line(line));
    if let Err(e) = daemon.service.flush() {
        daemon.log.line(format!("flush: {e}"));
    }
    let _ = std::fs::remove_file(home::pid_path(home));
    daemon.log.line("exiting");
    let _ = std::io::stderr().flush();
    Ok(())
}

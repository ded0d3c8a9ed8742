//! [`Client`]: the [`Api`] served by the daemon, which it starts on demand.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use stacko_store::progress::Progress;

use crate::api::{
    Api, Backend, Dest, ExportRequest, ImageInfo, ImportRequest, InstanceInfo, NewStackpoint,
    RunPlan, Source, StackpointInfo,
};
use crate::buildid::build_id;
use crate::channel::{Channel, Sender};
use crate::daemon::check_socket_path;
use crate::error::{Error, Result};
use crate::home;
use crate::protocol::{
    FrameError, Request, Response, StackpointRequest as S, WireDest, WirePath, WireSource,
};

/// How long [`Client::connect`] keeps trying to reach a daemon.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a new daemon may be started while none answers.
const RESPAWN_EVERY: Duration = Duration::from_millis(250);

/// A connection to the daemon serving one home.
pub struct Client {
    home: PathBuf,
    pid: u32,
    conn: Mutex<(Channel, Sender)>,
}

enum Handshake {
    Ok(Client),
    /// A daemon of another build answered; it retires, and we start ours.
    OtherBuild(String),
    /// The daemon went away during the handshake (it was exiting).
    Gone(String),
}

fn is_gone(e: &FrameError) -> bool {
    match e {
        FrameError::Truncated => true,
        FrameError::Io(e) => matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

fn handshake(home: &Path, sock: UnixStream) -> Result<Handshake> {
    let mut ch = Channel::new(sock);
    let tx = ch
        .sender()
        .map_err(|e| Error::io("cannot use the daemon socket", e))?;
    let hello = Request::Hello {
        build_id: build_id().to_string(),
    };
    if let Err(e) = tx.send(&hello, &[]) {
        return if is_gone(&e) {
            Ok(Handshake::Gone(e.to_string()))
        } else {
            Err(e.into())
        };
    }
    match ch.recv::<Response>() {
        Ok(Some((
            Response::Hello {
                build_id: theirs,
                pid,
            },
            _,
        ))) => {
            if theirs == build_id() {
                Ok(Handshake::Ok(Client {
                    home: home.to_path_buf(),
                    pid,
                    conn: Mutex::new((ch, tx)),
                }))
            } else {
                Ok(Handshake::OtherBuild(format!(
                    "daemon pid {pid} is build {theirs}"
                )))
            }
        }
        Ok(Some((Response::Error(e), _))) => Err(Error::Remote {
            kind: e.kind,
            message: e.message,
        }),
        Ok(Some((other, _))) => Err(Error::Daemon(format!(
            "the daemon answered the handshake with {other:?}"
        ))),
        Ok(None) => Ok(Handshake::Gone("the daemon closed the connection".into())),
        Err(FrameError::Version { got }) => Ok(Handshake::OtherBuild(format!(
            "daemon speaks protocol version {got}"
        ))),
        Err(e) if is_gone(&e) => Ok(Handshake::Gone(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

fn spawn_daemon(home: &Path) -> Result<Child> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::io("cannot find the stacko executable to start the daemon", e))?;
    let mut cmd = Command::new(&exe);
    cmd.arg("--home")
        .arg(home)
        .arg("daemon")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| {
        Error::io(
            format!("cannot start the stacko daemon ({})", exe.display()),
            e,
        )
    })
}

/// The error the daemon `pid` logged last, if any.
fn logged_error(home: &Path, pid: u32) -> Option<String> {
    let tag = format!("[{pid}] error: ");
    let log = std::fs::read_to_string(home::log_path(home)).ok()?;
    let line = log.lines().rev().find(|l| l.contains(&tag))?;
    line.split_once(&tag).map(|(_, msg)| msg.to_string())
}

impl Client {
    /// Connects to the daemon serving `home`, starting one (this same
    /// executable, `stacko --home HOME daemon`) when none answers. Several
    /// callers racing all succeed: the daemon's lock picks one daemon. A
    /// crashed daemon's socket is replaced; a daemon of another build is
    /// asked to retire and replaced.
    pub fn connect(home: &Path) -> Result<Client> {
        let sock = check_socket_path(home)?;
        let log = home::log_path(home);
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut child: Option<Child> = None;
        let mut last_spawn: Option<Instant> = None;
        let mut waiting_for = String::from("no daemon answered");
        loop {
            match UnixStream::connect(&sock) {
                Ok(s) => match handshake(home, s)? {
                    Handshake::Ok(c) => return Ok(c),
                    Handshake::OtherBuild(why) => {
                        waiting_for = format!(
                            "waiting for a daemon of another build to finish and exit: {why}"
                        )
                    }
                    Handshake::Gone(why) => waiting_for = why,
                },
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT) | Some(libc::ECONNREFUSED)
                    ) =>
                {
                    if let Some(c) = child.as_mut() {
                        match c.try_wait() {
                            Ok(Some(status)) if !status.success() => {
                                let why = logged_error(home, c.id())
                                    .unwrap_or_else(|| format!("it exited with {status}"));
                                return Err(Error::Daemon(format!(
                                    "the stacko daemon failed to start: {why} (see {})",
                                    log.display()
                                )));
                            }
                            Ok(Some(_)) => child = None,
                            Ok(None) => {}
                            Err(_) => child = None,
                        }
                    }
                    let due = last_spawn.is_none_or(|t| t.elapsed() >= RESPAWN_EVERY);
                    if child.is_none() && due {
                        child = Some(spawn_daemon(home)?);
                        last_spawn = Some(Instant::now());
                    }
                }
                Err(e) => {
                    return Err(Error::io(
                        format!("cannot connect to the stacko daemon at {}", sock.display()),
                        e,
                    ))
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Daemon(format!(
                    "the stacko daemon did not answer within {} s ({waiting_for}); see {}",
                    CONNECT_TIMEOUT.as_secs(),
                    log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Connects to the daemon serving `home` if one is running; starts none.
    pub fn connect_running(home: &Path) -> Result<Option<Client>> {
        let sock = check_socket_path(home)?;
        match UnixStream::connect(&sock) {
            Ok(s) => match handshake(home, s)? {
                Handshake::Ok(c) => Ok(Some(c)),
                Handshake::OtherBuild(_) | Handshake::Gone(_) => Ok(None),
            },
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT) | Some(libc::ECONNREFUSED)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::io(
                format!("cannot connect to the stacko daemon at {}", sock.display()),
                e,
            )),
        }
    }

    /// The home the daemon serves.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The daemon's process id.
    pub fn daemon_pid(&self) -> u32 {
        self.pid
    }

    /// Asks the daemon to retire: it finishes what is running, then exits.
    pub fn shutdown(&self) -> Result<()> {
        match self.call(&Request::Shutdown, &[], &stacko_store::progress::NoProgress)? {
            Response::Done => Ok(()),
            other => Err(unexpected("shutdown", other)),
        }
    }

    /// Sends one request, relays progress, returns the final answer.
    fn call(
        &self,
        req: &Request,
        fds: &[BorrowedFd<'_>],
        progress: &dyn Progress,
    ) -> Result<Response> {
        let cmd = req.command();
        let lost = || {
            Error::Daemon(format!(
                "lost the stacko daemon during {cmd}; nothing was changed unless it had finished \
                 (see {})",
                home::log_path(&self.home).display()
            ))
        };
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let (ch, tx) = &mut *conn;
        tx.send(req, fds)
            .map_err(|e| if is_gone(&e) { lost() } else { e.into() })?;
        let (mut bytes, mut files, mut total) = (0u64, 0u64, None);
        loop {
            match ch.recv::<Response>() {
                Ok(Some((
                    Response::Progress {
                        bytes: b,
                        files: f,
                        total: t,
                    },
                    _,
                ))) => {
                    if t != total {
                        if let Some(t) = t {
                            progress.set_total(t);
                        }
                        total = t;
                    }
                    progress.advance(b.saturating_sub(bytes), f.saturating_sub(files));
                    bytes = bytes.max(b);
                    files = files.max(f);
                }
                Ok(Some((Response::Error(e), _))) => {
                    return Err(Error::Remote {
                        kind: e.kind,
                        message: e.message,
                    })
                }
                Ok(Some((r, _))) => return Ok(r),
                Ok(None) => return Err(lost()),
                Err(e) if is_gone(&e) => return Err(lost()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn unexpected(cmd: &str, r: Response) -> Error {
    Error::Daemon(format!("the daemon answered {cmd} with {r:?}"))
}

fn absolute(p: &Path) -> Result<WirePath> {
    std::path::absolute(p)
        .map(|p| WirePath::from(p.as_path()))
        .map_err(|e| Error::io(format!("cannot resolve {}", p.display()), e))
}

impl Api for Client {
    fn new_image(&self, name: &str, parent: Option<&str>) -> Result<ImageInfo> {
        let req = Request::NewImage {
            name: name.into(),
            parent: parent.map(str::to_string),
        };
        match self.call(&req, &[], &stacko_store::progress::NoProgress)? {
            Response::Image(i) => Ok(i),
            other => Err(unexpected("new-image", other)),
        }
    }

    fn delete_image(&self, name: &str) -> Result<()> {
        let req = Request::DeleteImage { name: name.into() };
        match self.call(&req, &[], &stacko_store::progress::NoProgress)? {
            Response::Done => Ok(()),
            other => Err(unexpected("delete-image", other)),
        }
    }

    fn list_images(&self) -> Result<Vec<ImageInfo>> {
        match self.call(
            &Request::ListImages,
            &[],
            &stacko_store::progress::NoProgress,
        )? {
            Response::Images(v) => Ok(v),
            other => Err(unexpected("list-images", other)),
        }
    }

    fn import_image(&self, req: ImportRequest, progress: &dyn Progress) -> Result<ImageInfo> {
        let ImportRequest {
            name,
            parent,
            source,
        } = req;
        let (source, fd) = match &source {
            Source::Path(p) => (WireSource::Path(absolute(p)?), None),
            Source::Fd(fd) => (WireSource::Fd, Some(fd.as_fd())),
        };
        let req = Request::ImportImage {
            name,
            parent,
            source,
        };
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        match self.call(&req, &fds, progress)? {
            Response::Image(i) => Ok(i),
            other => Err(unexpected("import-image", other)),
        }
    }

    fn export_image(&self, req: ExportRequest, progress: &dyn Progress) -> Result<()> {
        let ExportRequest {
            name,
            flatten,
            dest,
        } = req;
        let (dest, fd) = match &dest {
            Dest::Path { path, force } => (
                WireDest::Path {
                    path: absolute(path)?,
                    force: *force,
                },
                None,
            ),
            Dest::Fd(fd) => (WireDest::Fd, Some(fd.as_fd())),
        };
        let req = Request::ExportImage {
            name,
            flatten,
            dest,
        };
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        match self.call(&req, &fds, progress)? {
            Response::Done => Ok(()),
            other => Err(unexpected("export-image", other)),
        }
    }

    fn edit_image(&self, name: &str, backend: Option<Backend>) -> Result<PathBuf> {
        let req = Request::EditImage {
            name: name.into(),
            backend,
        };
        self.path_call("edit-image", &req)
    }

    fn close_image(&self, name: &str, progress: &dyn Progress) -> Result<ImageInfo> {
        let req = Request::CloseImage { name: name.into() };
        match self.call(&req, &[], progress)? {
            Response::Image(i) => Ok(i),
            other => Err(unexpected("close-image", other)),
        }
    }

    fn image_dir(&self, name: &str) -> Result<PathBuf> {
        self.path_call("get-image-dir", &Request::GetImageDir { name: name.into() })
    }

    fn new_stackpoint(&self, req: &NewStackpoint) -> Result<StackpointInfo> {
        let mut req = req.clone();
        if let Some(d) = &req.dir {
            req.dir = Some(absolute(d)?.to_path());
        }
        self.sp_call(S::New(req))
    }

    fn delete_stackpoint(&self, name: &str) -> Result<()> {
        self.done_call(S::Delete { name: name.into() })
    }

    fn new_instance(&self, name: &str, image: &str) -> Result<InstanceInfo> {
        let req = Request::Stackpoint(S::NewInstance {
            name: name.into(),
            image: image.into(),
        });
        match self.call(&req, &[], &stacko_store::progress::NoProgress)? {
            Response::Instance(i) => Ok(i),
            other => Err(unexpected("new-stackpoint-instance", other)),
        }
    }

    fn set_instance(&self, name: &str, id: u64) -> Result<StackpointInfo> {
        self.sp_call(S::SetInstance {
            name: name.into(),
            instance: id,
        })
    }

    fn delete_instance(&self, name: &str, id: u64) -> Result<()> {
        self.done_call(S::DeleteInstance {
            name: name.into(),
            instance: id,
        })
    }

    fn cutover(&self, name: &str, image: &str, reuse: bool) -> Result<StackpointInfo> {
        self.sp_call(S::Cutover {
            name: name.into(),
            image: image.into(),
            reuse,
        })
    }

    fn fallback(&self, name: &str, to: Option<u64>) -> Result<StackpointInfo> {
        self.sp_call(S::Fallback {
            name: name.into(),
            to,
        })
    }

    fn mount_stackpoint(&self, name: &str, backend: Option<Backend>) -> Result<StackpointInfo> {
        self.sp_call(S::Mount {
            name: name.into(),
            backend,
        })
    }

    fn umount_stackpoint(&self, name: &str, lazy: bool) -> Result<()> {
        self.done_call(S::Umount {
            name: name.into(),
            lazy,
        })
    }

    fn stackpoint_dir(&self, name: &str) -> Result<PathBuf> {
        self.path_call(
            "get-stackpoint-dir",
            &Request::Stackpoint(S::GetDir { name: name.into() }),
        )
    }

    fn is_stackpoint_mounted(&self, name: &str) -> Result<bool> {
        let req = Request::Stackpoint(S::IsMounted { name: name.into() });
        match self.call(&req, &[], &stacko_store::progress::NoProgress)? {
            Response::Bool(b) => Ok(b),
            other => Err(unexpected("is-stackpoint-mounted", other)),
        }
    }

    fn list_stackpoints(&self) -> Result<Vec<StackpointInfo>> {
        let req = Request::Stackpoint(S::List);
        match self.call(&req, &[], &stacko_store::progress::NoProgress)? {
            Response::Stackpoints(v) => Ok(v),
            other => Err(unexpected("list-stackpoints", other)),
        }
    }

    fn list_instances(&self, name: Option<&str>) -> Result<Vec<InstanceInfo>> {
        let req = Request::Stackpoint(S::ListInstances {
            name: name.map(str::to_string),
        });
        match self.call(&req, &[], &stacko_store::progress::NoProgress)? {
            Response::Instances(v) => Ok(v),
            other => Err(unexpected("list-instances", other)),
        }
    }

    fn prepare_run(&self, name: &str) -> Result<RunPlan> {
        let req = Request::Stackpoint(S::PrepareRun { name: name.into() });
        match self.call(&req, &[], &stacko_store::progress::NoProgress)? {
            Response::RunPlan(p) => Ok(p),
            other => Err(unexpected("run", other)),
        }
    }
}

impl Client {
    /// A request answered with a path.
    fn path_call(&self, cmd: &str, req: &Request) -> Result<PathBuf> {
        match self.call(req, &[], &stacko_store::progress::NoProgress)? {
            Response::Path(p) => Ok(p.to_path()),
            other => Err(unexpected(cmd, other)),
        }
    }

    /// A stackpoint request answered with the stackpoint.
    fn sp_call(&self, req: S) -> Result<StackpointInfo> {
        let req = Request::Stackpoint(req);
        let cmd = req.command();
        match self.call(&req, &[], &stacko_store::progress::NoProgress)? {
            Response::Stackpoint(i) => Ok(i),
            other => Err(unexpected(cmd, other)),
        }
    }

    /// A stackpoint request answered with `Done`.
    fn done_call(&self, req: S) -> Result<()> {
        let req = Request::Stackpoint(req);
        let cmd = req.command();
        match self.call(&req, &[], &stacko_store::progress::NoProgress)? {
            Response::Done => Ok(()),
            other => Err(unexpected(cmd, other)),
        }
    }
}

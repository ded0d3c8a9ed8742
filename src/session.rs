//! One client connection inside the daemon: the handshake, then requests
//! dispatched to the daemon's [`crate::Service`], with progress streamed back.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use stacko_store::progress::Progress;

use crate::api::{Api, Dest, ExportRequest, ImportRequest, Source};
use crate::buildid::build_id;
use crate::channel::{Channel, Sender};
use crate::daemon::Daemon;
use crate::error::Error;
use crate::protocol::{
    FrameError, Request, Response, StackpointRequest, WireDest, WireError, WirePath, WireSource,
};
use crate::service::Cancel;

/// How long a new connection may take to say hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often progress frames are sent at most.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

fn wire_error(e: &Error) -> Response {
    Response::Error(WireError {
        kind: e.kind(),
        message: e.to_string(),
    })
}

/// Progress sent to the client as frames, at most every [`PROGRESS_INTERVAL`].
/// A failed send means the client is gone: `cancelled` is set, and the
/// operation stops at its next read or write.
struct WireProgress<'a> {
    tx: &'a Sender,
    bytes: AtomicU64,
    files: AtomicU64,
    total: Mutex<Option<u64>>,
    last: Mutex<Instant>,
    cancelled: AtomicBool,
}

impl<'a> WireProgress<'a> {
    fn new(tx: &'a Sender) -> Self {
        WireProgress {
            tx,
            bytes: AtomicU64::new(0),
            files: AtomicU64::new(0),
            total: Mutex::new(None),
            last: Mutex::new(Instant::now()),
            cancelled: AtomicBool::new(false),
        }
    }

    fn send(&self) {
        let frame = Response::Progress {
            bytes: self.bytes.load(Ordering::Relaxed),
            files: self.files.load(Ordering::Relaxed),
            total: *self.total.lock().unwrap_or_else(|p| p.into_inner()),
        };
        if self.tx.send(&frame, &[]).is_err() {
            self.cancelled.store(true, Ordering::Relaxed);
        }
    }
}

impl Cancel for WireProgress<'_> {
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Sends a progress frame now: a client that went away makes it fail.
    fn confirm_cancelled(&self) -> bool {
        self.send();
        self.is_cancelled()
    }
}

impl Progress for WireProgress<'_> {
    fn set_total(&self, bytes: u64) {
        *self.total.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
        self.send();
    }

    fn advance(&self, bytes: u64, files: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.files.fetch_add(files, Ordering::Relaxed);
        // Whoever finds the interval passed sends; the others go on.
        let due = match self.last.try_lock() {
            Ok(mut last) if last.elapsed() >= PROGRESS_INTERVAL => {
                *last = Instant::now();
                true
            }
            _ => false,
        };
        if due {
            self.send();
        }
    }
}

fn one_fd(fds: Vec<OwnedFd>, what: &str) -> Result<OwnedFd, Error> {
    fds.into_iter()
        .next()
        .ok_or_else(|| Error::Invalid(format!("{what}: the client sent no descriptor")))
}

fn path(p: std::path::PathBuf) -> Response {
    Response::Path(WirePath::from(p.as_path()))
}

fn stackpoint(svc: &crate::Service, req: StackpointRequest) -> Result<Response, Error> {
    use StackpointRequest as S;
    match req {
        S::New(r) => svc.new_stackpoint(&r).map(Response::Stackpoint),
        S::Delete { name } => svc.delete_stackpoint(&name).map(|()| Response::Done),
        S::Cutover { name, image, reuse } => {
            svc.cutover(&name, &image, reuse).map(Response::Stackpoint)
        }
        S::Fallback { name, to } => svc.fallback(&name, to).map(Response::Stackpoint),
        S::NewInstance { name, image } => svc.new_instance(&name, &image).map(Response::Instance),
        S::SetInstance { name, instance } => {
            svc.set_instance(&name, instance).map(Response::Stackpoint)
        }
        S::DeleteInstance { name, instance } => svc
            .delete_instance(&name, instance)
            .map(|()| Response::Done),
        S::Mount { name, backend } => svc
            .mount_stackpoint(&name, backend)
            .map(Response::Stackpoint),
        S::Umount { name, lazy } => svc.umount_stackpoint(&name, lazy).map(|()| Response::Done),
        S::GetDir { name } => svc.stackpoint_dir(&name).map(path),
        S::IsMounted { name } => svc.is_stackpoint_mounted(&name).map(Response::Bool),
        S::List => svc.list_stackpoints().map(Response::Stackpoints),
        S::ListInstances { name } => svc.list_instances(name.as_deref()).map(Response::Instances),
        S::PrepareRun { name } => svc.prepare_run(&name).map(Response::RunPlan),
    }
}

fn dispatch(daemon: &Daemon, req: Request, fds: Vec<OwnedFd>, tx: &Sender) -> Response {
    let svc = &daemon.service;
    let result: Result<Response, Error> = match req {
        Request::Hello { .. } => Err(Error::Invalid("hello sent twice".into())),
        Request::Shutdown => {
            daemon.retire("asked to shut down");
            Ok(Response::Done)
        }
        Request::NewImage { name, parent } => {
            svc.new_image(&name, parent.as_deref()).map(Response::Image)
        }
        Request::DeleteImage { name } => svc.delete_image(&name).map(|()| Response::Done),
        Request::ListImages => svc.list_images().map(Response::Images),
        Request::ImportImage {
            name,
            parent,
            source,
        } => {
            let source = match source {
                WireSource::Path(p) => Ok(Source::Path(p.to_path())),
                WireSource::Fd => one_fd(fds, "import-image").map(Source::Fd),
            };
            source.and_then(|source| {
                let progress = WireProgress::new(tx);
                let req = ImportRequest {
                    name,
                    parent,
                    source,
                };
                svc.import_image_with(req, &progress, &progress)
                    .map(Response::Image)
            })
        }
        Request::ExportImage {
            name,
            flatten,
            dest,
        } => {
            let dest = match dest {
                WireDest::Path { path, force } => Ok(Dest::Path {
                    path: path.to_path(),
                    force,
                }),
                WireDest::Fd => one_fd(fds, "export-image").map(Dest::Fd),
            };
            dest.and_then(|dest| {
                let progress = WireProgress::new(tx);
                let req = ExportRequest {
                    name,
                    flatten,
                    dest,
                };
                svc.export_image_with(req, &progress, &progress)
                    .map(|()| Response::Done)
            })
        }
        Request::EditImage { name, backend } => svc.edit_image(&name, backend).map(path),
        Request::CloseImage { name } => {
            let progress = WireProgress::new(tx);
            svc.close_image(&name, &progress).map(Response::Image)
        }
        Request::GetImageDir { name } => svc.image_dir(&name).map(path),
        Request::Stackpoint(req) => stackpoint(svc, req),
    };
    result.unwrap_or_else(|e| wire_error(&e))
}

/// Serves one connection until the client hangs up.
pub fn serve(daemon: &Daemon, conn: UnixStream) {
    let mut ch = Channel::new(conn);
    let tx = match ch.sender() {
        Ok(tx) => tx,
        Err(e) => {
            daemon.log.line(format!("session: {e}"));
            return;
        }
    };
    let ours = build_id();
    // A client that connects and says nothing must not keep the daemon alive.
    let _ = ch.socket().set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let first = ch.recv::<Request>();
    let _ = ch.socket().set_read_timeout(None);
    match first {
        Ok(Some((Request::Hello { build_id }, _))) if build_id == ours => {
            let hello = Response::Hello {
                build_id: ours.to_string(),
                pid: std::process::id(),
            };
            if tx.send(&hello, &[]).is_err() {
                return;
            }
        }
        Ok(Some((Request::Hello { build_id }, _))) => {
            let _ = tx.send(&not_ours(ours), &[]);
            daemon.retire(&format!("a client of another build connected ({build_id})"));
            return;
        }
        Err(FrameError::Version { got }) => {
            let _ = tx.send(&not_ours(ours), &[]);
            daemon.retire(&format!("a client of protocol version {got} connected"));
            return;
        }
        Ok(Some(_)) => {
            let e = Error::Invalid("the first message must be a hello".into());
            let _ = tx.send(&wire_error(&e), &[]);
            return;
        }
        Ok(None) => return,
        Err(e) => {
            daemon.log.line(format!("handshake: {e}"));
            return;
        }
    }
    loop {
        let (req, fds) = match ch.recv::<Request>() {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(e) => {
                daemon.log.line(format!("bad request: {e}"));
                let _ = tx.send(&wire_error(&Error::Protocol(e)), &[]);
                return;
            }
        };
        let cmd = req.command();
        let started = Instant::now();
        let resp = dispatch(daemon, req, fds, &tx);
        let outcome = match &resp {
            Response::Error(e) => format!("error: {}", e.message),
            _ => "ok".into(),
        };
        daemon.log.line(format!(
            "{cmd}: {outcome} ({:.3} s)",
            started.elapsed().as_secs_f64()
        ));
        if tx.send(&resp, &[]).is_err() {
            return;
        }
    }
}

/// The answer to a client of another build: our own hello, from which the
/// client sees the mismatch and waits for us to retire.
fn not_ours(ours: &str) -> Response {
    Response::Hello {
        build_id: ours.to_string(),
        pid: std::process::id(),
    }
}

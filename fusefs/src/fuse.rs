//! The FUSE adapter: implements `fuser::Filesystem` by calling [`OverlayFs`]. This is the
//! only module that names fuser.
//!
//! Kernel settings asked for at `init`: 1 MiB `max_write`, readdirplus, parallel directory
//! operations, cached symlinks, atomic `O_TRUNC`, and either FUSE passthrough (as root:
//! reads and writes go straight to the backing file) or the writeback cache (they exclude
//! each other in the kernel). POSIX locks are not implemented on purpose: the kernel then
//! handles `fcntl`/`flock` locks locally, which is right for a single-host mount.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, BsdFileFlags, Config, CopyFileRangeFlags, Errno as FErrno, FileAttr,
    FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, Session, SessionACL, TimeOrNow, WriteFlags,
};

use crate::config::MountConfig;
use crate::error::Errno;
use crate::fs::{Attr, Ctx, Opened, OverlayFs, SetAttr};
use crate::lower::{Kind, Timestamp};
use crate::sys::{self, SetTime};

fn errno(e: Errno) -> FErrno {
    FErrno::from_i32(e.0)
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::CharDev | Kind::Whiteout => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
    }
}

fn system_time(t: Timestamp) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec as u64)
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: system_time(a.ctime),
        kind: file_type(a.kind),
        perm: a.perm as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        blksize: 4096,
        flags: 0,
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => SetTime::At(d.as_secs() as i64, d.subsec_nanos() as i64),
            Err(e) => {
                let d = e.duration();
                let (mut s, mut ns) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
                if ns < 0 {
                    s -= 1;
                    ns += 1_000_000_000;
                }
                SetTime::At(s, ns)
            }
        },
    }
}

fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

/// The fuser filesystem: a thin shell over [`OverlayFs`].
pub struct FuseFs {
    fs: Arc<OverlayFs>,
    ttl: Duration,
    want_passthrough: bool,
    want_writeback: bool,
    readdirplus: bool,
    destroyed: Option<crossbeam_channel::Sender<()>>,
    backings: Mutex<HashMap<u64, Arc<BackingId>>>,
    /// Serialises open and release of one inode, so that the open count and the backing
    /// file registered with the kernel change together.
    open_locks: Vec<Mutex<()>>,
    /// Request counters by operation, when `STACKO_OVERLAY_STATS` names a file to write
    /// them to at unmount (a profiling aid: how many round trips a workload costs).
    stats: Option<(std::path::PathBuf, Vec<std::sync::atomic::AtomicU64>)>,
    /// Sends invalidations to the kernel once the session exists (for changes the kernel
    /// cannot see in a reply, such as set-id bits cleared by an `O_TRUNC` open).
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
}

/// Answers a request whose reply carries nothing but success or an errno.
fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

/// Names of the counted operations, in the order of [`FuseFs::tick`] indexes.
const OPS: [&str; 33] = [
    "lookup",
    "forget",
    "getattr",
    "setattr",
    "readlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "open",
    "read",
    "write",
    "flush",
    "release",
    "fsync",
    "opendir",
    "readdir",
    "readdirplus",
    "releasedir",
    "fsyncdir",
    "statfs",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "access",
    "create",
    "fallocate",
    "lseek",
    "copy_file_range",
];

impl std::fmt::Debug for FuseFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseFs").field("fs", &self.fs).finish()
    }
}

impl FuseFs {
    /// Wraps `fs`; `ttl` is how long the kernel may cache entries and attributes.
    pub fn new(
        fs: Arc<OverlayFs>,
        ttl: Duration,
        passthrough: bool,
        writeback: bool,
        readdirplus: bool,
    ) -> FuseFs {
        FuseFs {
            readdirplus,
            destroyed: None,
            fs,
            ttl,
            want_passthrough: passthrough,
            want_writeback: writeback && !passthrough,
            backings: Mutex::new(HashMap::new()),
            open_locks: (0..64).map(|_| Mutex::new(())).collect(),
            notifier: Arc::new(std::sync::OnceLock::new()),
            stats: std::env::var_os("STACKO_OVERLAY_STATS").map(|p| {
                (
                    p.into(),
                    OPS.iter()
                        .map(|_| std::sync::atomic::AtomicU64::new(0))
                        .collect(),
                )
            }),
        }
    }

    /// Answers a request that makes or finds a node.
    fn reply_entry(&self, reply: ReplyEntry, r: Result<Attr, Errno>) {
        match r {
            Ok(a) => reply.entry(&self.ttl, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    #[inline]
    fn tick(&self, op: usize) {
        if let Some((_, c)) = &self.stats {
            c[op].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn write_stats(&self) {
        if let Some((path, c)) = &self.stats {
            let mut out = String::new();
            for (name, n) in OPS.iter().zip(c) {
                let n = n.load(std::sync::atomic::Ordering::Relaxed);
                if n > 0 {
                    out.push_str(&format!("{name} {n}\n"));
                }
            }
            let _ = std::fs::write(path, out);
        }
    }

    fn open_lock(&self, ino: u64) -> std::sync::MutexGuard<'_, ()> {
        self.open_locks[(ino.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % 64]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The passthrough backing id of inode `ino`, registered with the kernel
    /// by `open_backing` on first use; `None` (and handle `fh` served through
    /// the page cache) when the kernel refuses, and passthrough is turned off
    /// for good when it refuses for lack of privilege.
    fn backing_id(
        &self,
        ino: u64,
        fh: u64,
        open_backing: impl FnOnce() -> io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        let mut b = self.backings.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = b.get(&ino) {
            return Some(id.clone());
        }
        match open_backing() {
            Ok(id) => {
                let id = Arc::new(id);
                b.insert(ino, id.clone());
                Some(id)
            }
            Err(e) => {
                if e.raw_os_error() == Some(libc::EPERM) {
                    self.fs.set_passthrough(false);
                }
                self.fs.passthrough_refused(fh);
                None
            }
        }
    }

    fn reply_open(&self, fh_ino: u64, o: Opened, reply: ReplyOpen) {
        let flags = FopenFlags::FOPEN_NOFLUSH
            | if o.keep_cache {
                FopenFlags::FOPEN_KEEP_CACHE
            } else {
                FopenFlags::empty()
            };
        if let Some(file) = &o.passthrough {
            let id = self.backing_id(fh_ino, o.fh, || reply.open_backing(file.as_fd()));
            if let Some(id) = id {
                reply.opened_passthrough(FileHandle(o.fh), FopenFlags::FOPEN_NOFLUSH, &id);
                return;
            }
        }
        reply.opened(FileHandle(o.fh), flags);
    }
}

impl Filesystem for FuseFs {
    fn destroy(&mut self) {
        self.write_stats();
        if let Some(tx) = self.destroyed.take() {
            let _ = tx.send(());
        }
    }

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        if self.readdirplus {
            let _ = config.add_capabilities(
                InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO,
            );
        }
        for cap in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_MAX_PAGES,
            // set-id bits are cleared here (write/truncate/chown), so the kernel neither asks
            // getattr before every chown nor getxattr(security.capability) before every write
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ] {
            let _ = config.add_capabilities(cap);
        }
        let mut passthrough = false;
        if self.want_passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            passthrough = true;
        }
        self.fs.set_passthrough(passthrough);
        if self.want_writeback && !passthrough {
            let _ = config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.tick(0);
        match self.fs.lookup(parent.0, name) {
            Ok(a) => reply.entry(&self.ttl, &file_attr(&a), Generation(0)),
            Err(e) if e == Errno::ENOENT => {
                // negative entry, cached for the TTL (only this mount changes the tree)
                let mut a = file_attr(&Attr {
                    ino: 0,
                    kind: Kind::File,
                    perm: 0,
                    nlink: 0,
                    uid: 0,
                    gid: 0,
                    size: 0,
                    blocks: 0,
                    atime: Timestamp::default(),
                    mtime: Timestamp::default(),
                    ctime: Timestamp::default(),
                    rdev: 0,
                });
                a.ino = INodeNo(0);
                reply.entry(&self.ttl, &a, Generation(0))
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.tick(1);
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.tick(2);
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.tick(3);
        let sa = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            fh: fh.map(|f| f.0),
        };
        // FUSE_HANDLE_KILLPRIV_V2: the kernel sends an empty setattr (fuser drops the
        // FATTR_KILL_SUIDGID bit) when a write-like change must clear set-id bits, and leaves
        // truncation by an unprivileged caller to us (caller without CAP_FSETID ~ uid != 0).
        let empty = sa == SetAttr::default() && ctime.is_none();
        let kill = empty || (size.is_some() && mode.is_none() && req.uid() != 0);
        let res = self.fs.setattr(ino.0, sa).and_then(|a| {
            if kill {
                self.fs.kill_suidgid(ino.0)?;
                self.fs.getattr(ino.0)
            } else {
                Ok(a)
            }
        });
        match res {
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.tick(4);
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.tick(5);
        self.reply_entry(
            reply,
            self.fs.mknod(parent.0, name, mode, rdev as u64, ctx(req)),
        )
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.tick(6);
        self.reply_entry(reply, self.fs.mkdir(parent.0, name, mode, ctx(req)))
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.tick(7);
        reply_empty(reply, self.fs.unlink(parent.0, name))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.tick(8);
        reply_empty(reply, self.fs.rmdir(parent.0, name))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.tick(9);
        let r = self
            .fs
            .symlink(parent.0, link_name, target.as_os_str(), ctx(req));
        self.reply_entry(reply, r)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.tick(10);
        let r = self
            .fs
            .rename(parent.0, name, newparent.0, newname, flags.bits());
        reply_empty(reply, r)
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.tick(11);
        self.reply_entry(reply, self.fs.link(ino.0, newparent.0, newname))
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.tick(12);
        let _g = self.open_lock(ino.0);
        // O_TRUNC by an unprivileged caller clears set-id bits (FUSE_HANDLE_KILLPRIV_V2)
        let kill = flags.0 & libc::O_TRUNC != 0
            && flags.0 & libc::O_ACCMODE != libc::O_RDONLY
            && req.uid() != 0;
        let res = self.fs.open(ino.0, flags.0).and_then(|o| {
            if kill {
                match self.fs.kill_suidgid(ino.0) {
                    Ok(true) => {
                        // the open reply carries no attributes: drop the kernel's cached mode
                        if let Some(n) = self.notifier.get() {
                            let _ = n.inval_inode(ino, -1, 0);
                        }
                    }
                    Ok(false) => {}
                    Err(e) => {
                        let _ = self.fs.release(o.fh);
                        return Err(e);
                    }
                }
            }
            Ok(o)
        });
        match res {
            Ok(o) => self.reply_open(ino.0, o, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.tick(13);
        match self.fs.read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.tick(14);
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            if let Err(e) = self.fs.kill_suidgid(ino.0) {
                reply.error(errno(e));
                return;
            }
        }
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.tick(15);
        reply_empty(reply, self.fs.flush(fh.0))
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.tick(16);
        let _g = self.open_lock(_ino.0);
        if let Some(ino) = self.fs.release(fh.0) {
            self.backings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&ino);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.tick(17);
        reply_empty(reply, self.fs.fsync(fh.0, datasync))
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.tick(18);
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.tick(19);
        let l = match self.fs.readdir(fh.0, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(errno(e)),
        };
        for (i, e) in l.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), i as u64 + 1, file_type(e.kind), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.tick(20);
        let l = match self.fs.readdir(fh.0, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(errno(e)),
        };
        for (i, e) in l.iter().enumerate().skip(offset as usize) {
            let dots = e.name == "." || e.name == "..";
            let attr = if dots {
                match self.fs.getattr(e.ino).or_else(|_| self.fs.getattr(ino.0)) {
                    Ok(a) => a,
                    Err(_) => continue,
                }
            } else {
                match self.fs.lookup(ino.0, &e.name) {
                    Ok(a) => a,
                    Err(_) => continue,
                }
            };
            if reply.add(
                INodeNo(attr.ino),
                i as u64 + 1,
                &e.name,
                &self.ttl,
                &file_attr(&attr),
                Generation(0),
            ) {
                if !dots {
                    self.fs.forget(attr.ino, 1);
                }
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.tick(21);
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.tick(22);
        reply_empty(reply, self.fs.fsyncdir(ino.0, datasync))
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.tick(23);
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.tick(24);
        reply_empty(reply, self.fs.setxattr(ino.0, name, value, flags))
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.tick(25);
        match self.fs.getxattr(ino.0, name) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(FErrno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.tick(26);
        match self.fs.listxattr(ino.0) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(n.as_os_str()));
                    buf.push(0);
                }
                if size == 0 {
                    reply.size(buf.len() as u32)
                } else if buf.len() > size as usize {
                    reply.error(FErrno::ERANGE)
                } else {
                    reply.data(&buf)
                }
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.tick(27);
        reply_empty(reply, self.fs.removexattr(ino.0, name))
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        self.tick(28);
        match self.fs.getattr(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.tick(29);
        match self.fs.create(parent.0, name, mode, flags, ctx(req)) {
            Ok((a, o)) => {
                let fa = file_attr(&a);
                let _g = self.open_lock(a.ino);
                if let Some(file) = &o.passthrough {
                    let id = self.backing_id(a.ino, o.fh, || reply.open_backing(file.as_fd()));
                    if let Some(id) = id {
                        reply.created_passthrough(
                            &self.ttl,
                            &fa,
                            Generation(0),
                            FileHandle(o.fh),
                            FopenFlags::FOPEN_NOFLUSH,
                            &id,
                        );
                        return;
                    }
                }
                reply.created(
                    &self.ttl,
                    &fa,
                    Generation(0),
                    FileHandle(o.fh),
                    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
                )
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.tick(30);
        reply_empty(reply, self.fs.fallocate(fh.0, offset, length, mode))
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.tick(31);
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.tick(32);
        match self
            .fs
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// A mounted, not yet serving, filesystem.
pub struct Mounted {
    session: Session<FuseFs>,
    mountpoint: std::path::PathBuf,
    destroyed: crossbeam_channel::Receiver<()>,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted")
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

/// Unmounts a [`Mounted`] filesystem from another thread (e.g. on SIGTERM).
#[derive(Debug, Clone)]
pub struct Unmounter {
    mountpoint: std::path::PathBuf,
}

impl Unmounter {
    /// Unmounts (`umount2`, or `fusermount3 -u` without privilege); serving then ends.
    pub fn unmount(&self) -> io::Result<()> {
        let c = sys::cstr(self.mountpoint.as_os_str()).map_err(io::Error::from)?;
        if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EPERM) {
            return Err(e);
        }
        let st = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.mountpoint)
            .status()?;
        if st.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "fusermount3 -u {} failed",
                self.mountpoint.display()
            )))
        }
    }
}

impl Mounted {
    /// A handle to unmount from elsewhere.
    pub fn unmounter(&self) -> Unmounter {
        Unmounter {
            mountpoint: self.mountpoint.clone(),
        }
    }

    /// Serves requests until the filesystem is unmounted.
    ///
    /// fuser 0.18 unmounts the mount point by path when its session ends if its device
    /// still polls with an error, which is the case after an external `umount`; by then a
    /// new mount may sit at the same path. So the session runs in the background and its
    /// mount handle is never dropped: unmounting is done by [`Unmounter`] or by the user.
    pub fn run(self) -> io::Result<()> {
        let bg = self.session.spawn()?;
        let _ = self.destroyed.recv();
        std::mem::forget(bg);
        Ok(())
    }
}

/// Mount parameters derived from a [`MountConfig`] and the process's privilege.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Use FUSE passthrough.
    pub passthrough: bool,
    /// Use the writeback cache.
    pub writeback: bool,
    /// Allow other users.
    pub allow_other: bool,
}

/// Decides passthrough / writeback / allow_other for `cfg`.
pub fn plan(cfg: &MountConfig) -> Plan {
    let root = sys::geteuid() == 0;
    let passthrough = cfg.passthrough.unwrap_or(root);
    let writeback = !passthrough && cfg.writeback.unwrap_or(true);
    Plan {
        passthrough,
        writeback,
        allow_other: cfg.allow_other.unwrap_or(root),
    }
}

/// Mounts `fs` at `mountpoint` (direct `mount(2)` as root, `fusermount3` otherwise) and
/// completes the FUSE handshake, so the mount is usable when this returns.
pub fn mount(
    fs: Arc<OverlayFs>,
    cfg: &MountConfig,
    plan: &Plan,
    mountpoint: &Path,
) -> io::Result<Mounted> {
    let root = sys::geteuid() == 0;
    let mut opts = vec![
        MountOption::FSName(
            cfg.fsname
                .clone()
                .unwrap_or_else(|| "stacko-overlay".into()),
        ),
        MountOption::Subtype("stacko-overlay".into()),
        MountOption::DefaultPermissions,
    ];
    if cfg.read_only || !fs.is_writable() {
        opts.push(MountOption::RO);
    }
    let has = |f: &str| cfg.flags.iter().any(|x| x == f);
    for f in &cfg.flags {
        opts.push(match f.as_str() {
            "dev" => MountOption::Dev,
            "nodev" => MountOption::NoDev,
            "suid" => MountOption::Suid,
            "nosuid" => MountOption::NoSuid,
            "exec" => MountOption::Exec,
            "noexec" => MountOption::NoExec,
            "atime" => MountOption::Atime,
            "noatime" => MountOption::NoAtime,
            "sync" => MountOption::Sync,
            "async" => MountOption::Async,
            "dirsync" => MountOption::DirSync,
            other => MountOption::CUSTOM(other.to_string()),
        });
    }
    if root && !has("nodev") && !has("dev") {
        opts.push(MountOption::Dev);
    }
    if root && !has("nosuid") && !has("suid") {
        opts.push(MountOption::Suid);
    }
    let mut config = Config::default();
    config.mount_options = opts;
    config.acl = if plan.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(cfg.threads.max(1));
    config.clone_fd = true;
    let mut ffs = FuseFs::new(
        fs,
        cfg.ttl,
        plan.passthrough,
        plan.writeback,
        cfg.readdirplus,
    );
    let (tx, rx) = crossbeam_channel::bounded(1);
    ffs.destroyed = Some(tx);
    let mountpoint = std::fs::canonicalize(mountpoint)?;
    let notifier = ffs.notifier.clone();
    let session = Session::new(ffs, &mountpoint, &config)?;
    let _ = notifier.set(session.notifier());
    Ok(Mounted {
        session,
        mountpoint,
        destroyed: rx,
    })
}

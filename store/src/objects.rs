//! The content-addressed object directory: `objects/ab/cdef…` named by the
//! blake3 digest of the content. Objects are immutable once renamed into place.
//!
//! Writing an object streams it into `objects/tmp/` while hashing it (one
//! 1 MiB buffer, never the whole file in memory). Durability is batched:
//! [`ObjectDir::sync_all`] makes every pending temp file durable with one
//! `syncfs(2)`, then [`ObjectDir::publish`] (or the builder's batch publish)
//! renames them into place and makes the renames durable.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::records::ObjectId;

/// Size of the buffer objects are streamed through.
const BUF_SIZE: usize = 1 << 20;

/// Name of the temp directory inside the object directory.
const TMP_DIR: &str = "tmp";

/// The object directory of a store.
pub struct ObjectDir {
    pub(crate) root: PathBuf,
    /// Makes temp file names unique within this process.
    counter: AtomicU64,
}

/// An object written to a temp file, hashed, not yet in place.
/// [`ObjectDir::sync_all`] then [`PendingObject::publish`] put it in place.
#[derive(Debug)]
pub struct PendingObject {
    /// The digest of the content.
    pub id: ObjectId,
    /// Content length.
    pub len: u64,
    /// The temp file (None when the object already existed: nothing to publish).
    pub(crate) tmp: Option<PathBuf>,
}

impl PendingObject {
    /// Deletes the temp file, if any (the object is not wanted after all).
    pub fn discard(mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = fs::remove_file(tmp);
        }
    }

    /// Renames the object into place in `dir`; see [`ObjectDir::publish`].
    pub fn publish(self, dir: &ObjectDir) -> Result<ObjectId> {
        dir.publish(self)
    }
}

/// Counts of the object directory's content.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectStats {
    /// Number of object files.
    pub count: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

impl ObjectDir {
    /// Opens (creating) the object directory at `root`; removes stale temp files.
    ///
    /// Only the process that holds the store's lock may call this: temp files
    /// of another writer would be removed.
    pub fn open(root: &Path) -> Result<ObjectDir> {
        create_private_dir(root)?;
        let tmp = root.join(TMP_DIR);
        create_private_dir(&tmp)?;
        let dir = ObjectDir {
            root: root.to_path_buf(),
            counter: AtomicU64::new(0),
        };
        dir.remove_stale_temps()?;
        Ok(dir)
    }

    fn remove_stale_temps(&self) -> Result<()> {
        let tmp = self.root.join(TMP_DIR);
        let entries =
            fs::read_dir(&tmp).map_err(|e| Error::io(format!("listing {}", tmp.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("listing {}", tmp.display()), e))?;
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("removing stale temp file {}", path.display()),
                        e,
                    ))
                }
            }
        }
        Ok(())
    }

    /// The path an object lives at.
    pub fn path(&self, id: &ObjectId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join(&hex[..2]).join(&hex[2..])
    }

    /// Whether the object is present.
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.path(id).exists()
    }

    /// Streams `data` into a temp file while hashing it. If an object with
    /// the same digest exists, the temp file is dropped at once.
    pub fn write(&self, data: &mut dyn Read) -> Result<PendingObject> {
        self.write_prefixed(&[], data)
            .map(|p| self.drop_if_present(p))
    }

    /// If the object is already in place, deletes the temp file.
    pub(crate) fn drop_if_present(&self, mut obj: PendingObject) -> PendingObject {
        if obj.tmp.is_some() && self.contains(&obj.id) {
            if let Some(tmp) = obj.tmp.take() {
                let _ = fs::remove_file(tmp);
            }
        }
        obj
    }

    /// Like [`Self::write`] with `head` in front of `data`, and always keeps
    /// the temp file (the caller decides, under its lock, whether the object
    /// exists already).
    pub(crate) fn write_prefixed(&self, head: &[u8], data: &mut dyn Read) -> Result<PendingObject> {
        self.write_temp(|file| stream_into(file, head, data))
    }

    /// Fills a new temp file with `fill` (which returns digest and length);
    /// removes the temp file if it fails.
    fn write_temp(
        &self,
        fill: impl FnOnce(&mut File) -> Result<(ObjectId, u64)>,
    ) -> Result<PendingObject> {
        let (path, mut file) = self.create_temp()?;
        match fill(&mut file) {
            Ok((id, len)) => Ok(PendingObject {
                id,
                len,
                tmp: Some(path),
            }),
            Err(e) => {
                drop(file);
                let _ = fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Copies the whole of `src` (from its current position) into a temp
    /// object inside the kernel with `copy_file_range` (no trip through this
    /// process), in chunks; a second thread hashes each chunk from the page
    /// cache while the next one is copied, and writeback of each chunk starts
    /// at once, so the final sync has little left to do. Falls back to
    /// streaming where the kernel cannot copy between the two files. Always
    /// keeps the temp file, as [`Self::write_prefixed`].
    pub(crate) fn write_copy(&self, src: &File) -> Result<PendingObject> {
        self.write_temp(|file| copy_and_hash(src, file))
    }

    fn create_temp(&self) -> Result<(PathBuf, File)> {
        loop {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let path = self
                .root
                .join(TMP_DIR)
                .join(format!("{}-{n}", std::process::id()));
            let opened = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&path);
            match opened {
                Ok(f) => return Ok((path, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Error::io(
                        format!("creating temp object {}", path.display()),
                        e,
                    ))
                }
            }
        }
    }

    /// Makes every pending temp file durable (one `syncfs` of the object directory's filesystem).
    pub fn sync_all(&self) -> Result<()> {
        syncfs(&self.root)
    }

    /// Renames a pending object into place (after [`ObjectDir::sync_all`]).
    /// The rename is made durable (its fan-out directory is fsynced). If
    /// the object appeared in the meantime, the temp file is deleted.
    pub fn publish(&self, obj: PendingObject) -> Result<ObjectId> {
        let id = obj.id;
        if let Some(fanout) = self.rename_into_place(obj)? {
            fsync_dir(&fanout)?;
            fsync_dir(&self.root)?;
        }
        Ok(id)
    }

    /// Publishes many objects (after [`ObjectDir::sync_all`]) with one
    /// `syncfs` for all the renames.
    pub(crate) fn publish_all(&self, objs: Vec<PendingObject>) -> Result<()> {
        let mut renamed = false;
        for obj in objs {
            renamed |= self.rename_into_place(obj)?.is_some();
        }
        if renamed {
            syncfs(&self.root)?;
        }
        Ok(())
    }

    /// Renames the temp file into place; returns the fan-out dir if it renamed.
    fn rename_into_place(&self, mut obj: PendingObject) -> Result<Option<PathBuf>> {
        let Some(tmp) = obj.tmp.take() else {
            return Ok(None);
        };
        let dest = self.path(&obj.id);
        if dest.exists() {
            let _ = fs::remove_file(&tmp);
            return Ok(None);
        }
        let fanout = dest
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        match fs::create_dir(&fanout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(format!("creating {}", fanout.display()), e)),
        }
        fs::rename(&tmp, &dest)
            .map_err(|e| Error::io(format!("renaming object into {}", dest.display()), e))?;
        Ok(Some(fanout))
    }

    /// Opens an object for reading.
    pub fn open_object(&self, id: &ObjectId) -> Result<File> {
        let path = self.path(id);
        File::open(&path).map_err(|e| Error::io(format!("opening object {}", path.display()), e))
    }

    /// Deletes an object file (the caller checked nothing references it).
    /// A missing object is not an error.
    pub fn remove(&self, id: &ObjectId) -> Result<()> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing object {}", path.display()), e)),
        }
    }

    /// Total bytes of all object files (for tests and `list-images`).
    pub fn total_bytes(&self) -> Result<u64> {
        Ok(self.stats()?.bytes)
    }

    /// Number and total size of the object files (temp files not included).
    pub fn stats(&self) -> Result<ObjectStats> {
        let mut stats = ObjectStats::default();
        let ctx = |p: &Path| format!("listing {}", p.display());
        for fanout in fs::read_dir(&self.root).map_err(|e| Error::io(ctx(&self.root), e))? {
            let fanout = fanout.map_err(|e| Error::io(ctx(&self.root), e))?;
            if fanout.file_name() == TMP_DIR {
                continue;
            }
            let dir = fanout.path();
            if !fanout
                .file_type()
                .map_err(|e| Error::io(ctx(&dir), e))?
                .is_dir()
            {
                continue;
            }
            for obj in fs::read_dir(&dir).map_err(|e| Error::io(ctx(&dir), e))? {
                let obj = obj.map_err(|e| Error::io(ctx(&dir), e))?;
                let meta = obj.metadata().map_err(|e| Error::io(ctx(&dir), e))?;
                stats.count += 1;
                stats.bytes += meta.len();
            }
        }
        Ok(stats)
    }
}

/// Bytes per `copy_file_range` call in [`copy_and_hash`].
const COPY_CHUNK: usize = 64 << 20;

/// One `copy_file_range` of up to `len` bytes at the files' positions:
/// `Ok(None)` when the kernel cannot copy between these files.
fn copy_range(src: &File, dst: &File, len: usize) -> Result<Option<usize>> {
    use std::os::unix::io::AsRawFd;
    loop {
        // SAFETY: a syscall on two open descriptors; null offsets use and
        // advance the files' own positions.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                std::ptr::null_mut(),
                dst.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                0,
            )
        };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EXDEV | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP) => return Ok(None),
            _ => return Err(Error::io("copying file content", e)),
        }
    }
}

/// Starts writeback of `len` bytes of `file` at `offset` (a hint: errors are
/// left to the sync that follows).
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: a syscall on an open descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Copies the rest of `src` into the empty `dst` (see [`ObjectDir::write_copy`])
/// and returns the digest and length of what was copied.
fn copy_and_hash(src: &File, dst: &mut File) -> Result<(ObjectId, u64)> {
    let (done_tx, done_rx) = std::sync::mpsc::channel::<(u64, u64)>();
    let reader = dst
        .try_clone()
        .map_err(|e| Error::io("reopening an object", e))?;
    std::thread::scope(|scope| {
        let hashing = scope.spawn(move || -> Result<blake3::Hasher> {
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; BUF_SIZE];
            for (start, len) in done_rx {
                let mut at = start;
                while at < start + len {
                    let want = usize::try_from(start + len - at)
                        .unwrap_or(BUF_SIZE)
                        .min(BUF_SIZE);
                    let n = read_full_at(&reader, &mut buf[..want], at)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    at += n as u64;
                }
            }
            Ok(hasher)
        });
        let mut total = 0u64;
        let copied = loop {
            match copy_range(src, dst, COPY_CHUNK) {
                Ok(Some(0)) => break Ok(true),
                Ok(Some(n)) => {
                    start_writeback(dst, total, n as u64);
                    let _ = done_tx.send((total, n as u64));
                    total += n as u64;
                }
                Ok(None) if total == 0 => break Ok(false),
                Ok(None) => {
                    break Err(Error::io(
                        "copying file content",
                        io::Error::from_raw_os_error(libc::EXDEV),
                    ))
                }
                Err(e) => break Err(e),
            }
        };
        drop(done_tx);
        let hasher = hashing.join().map_err(|_| {
            Error::io(
                "hashing an object",
                io::Error::other("hash thread panicked"),
            )
        })?;
        match copied? {
            true => Ok((ObjectId(*hasher?.finalize().as_bytes()), total)),
            false => {
                let mut src = src;
                stream_into(dst, &[], &mut src)
            }
        }
    })
}

/// `pread` until `buf` is full or the file ends.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading an object", e)),
        }
    }
    Ok(done)
}

/// Copies `head` then `data` into `file`, hashing; returns digest and length.
fn stream_into(file: &mut File, head: &[u8], data: &mut dyn Read) -> Result<(ObjectId, u64)> {
    let mut hasher = blake3::Hasher::new();
    let write_err = |e| Error::io("writing an object", e);
    hasher.update(head);
    file.write_all(head).map_err(write_err)?;
    let mut len = head.len() as u64;
    // One buffer per thread, reused: most objects are a few KiB, and
    // zeroing a fresh 1 MiB buffer for each cost more than hashing them.
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with_borrow_mut(|buf| {
        if buf.len() < BUF_SIZE {
            buf.resize(BUF_SIZE, 0);
        }
        copy_hashing(file, data, buf, &mut hasher, &mut len)
    })?;
    Ok((ObjectId(*hasher.finalize().as_bytes()), len))
}

/// The loop of [`stream_into`]: reads `data` through `buf` into `file` and the hasher.
fn copy_hashing(
    file: &mut File,
    data: &mut dyn Read,
    buf: &mut [u8],
    hasher: &mut blake3::Hasher,
    len: &mut u64,
) -> Result<()> {
    let write_err = |e| Error::io("writing an object", e);
    loop {
        let n = match data.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("reading file content", e)),
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(write_err)?;
        *len += n as u64;
    }
    Ok(())
}

/// Creates a directory (mode 0700) if it does not exist.
pub(crate) fn create_private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::io(format!("creating {}", path.display()), e)),
    }
}

/// `syncfs(2)` on the filesystem holding `dir`.
pub(crate) fn syncfs(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| Error::io(format!("opening {}", dir.display()), e))?;
    // SAFETY: plain syscall on a valid, open file descriptor.
    let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
    if rc != 0 {
        return Err(Error::io(
            format!("syncfs {}", dir.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// fsyncs a directory (makes renames and creations in it durable).
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| Error::io(format!("opening {}", dir.display()), e))?;
    f.sync_all()
        .map_err(|e| Error::io(format!("fsync {}", dir.display()), e))
}

/// A path as a C string (paths never hold NUL bytes on unix, but check).
pub(crate) fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::BadInput(format!("path {} contains a NUL byte", path.display())))
}

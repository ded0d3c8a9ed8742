//! Checking a layer out into a directory in kernel overlayfs lowerdir format,
//! for the kernel fast path: whiteouts as char 0:0, opaque directories with
//! `user.overlay.opaque=y` (and `trusted.overlay.opaque=y` when permitted),
//! file data hardlinked (or reflinked) from the object directory, not copied.
//!
//! # Object-backed files and differing metadata
//!
//! A hard link shares the inode, and with it mode, owner, times and xattrs.
//! One object may be used by several images with different metadata (the
//! same binary as 0755 in one image and 0644 in another, other mtimes,
//! other xattrs). So a checkout never links to the object for its own sake;
//! it links to a *variant*: a file under `HOME/checkouts/.variants/` named
//! `<object hex>-<hash>`, where the hash covers exactly the metadata an
//! inode carries and a checkout sets: mode, uid, gid, mtime (ns) and the
//! xattrs. Every checkout that needs that object with that metadata links
//! to the same variant, so identical files across images and checkouts are
//! one inode. A variant is made, in order of preference:
//!
//! 1. by `FICLONE` (reflink) of the object, where the filesystem can
//!    (btrfs, XFS): no data is copied, and any number of variants of one
//!    object share the data;
//! 2. by *claiming* the object inode itself: the first variant of an object
//!    that cannot be reflinked takes the object file's inode, after setting
//!    its metadata (owner, mode, times, xattrs) to the variant's. The claim
//!    is recorded by a symlink `<object hex>.claim` naming the variant,
//!    created atomically, so only one variant ever claims an object. As an
//!    unprivileged user, a variant whose mode would deny the owner read
//!    access does not claim (the store must still read the object);
//! 3. by copying the data, only when neither of the above works: on a
//!    filesystem without reflink, the second and later *differing*
//!    metadata of one object cost one copy each (shared again by every
//!    checkout with that same metadata).
//!
//! What is not preserved: `atime` is the one of the checkout that made the
//! variant (it is not part of the hash, so that reads do not multiply
//! variants); `ctime` cannot be set. As an unprivileged user, files are
//! owned by that user (the hash then uses that uid/gid), and xattrs the
//! user may not set (`trusted.*`, `security.*`) are skipped.
//!
//! Because variants and checkouts share inodes with each other and with
//! the object directory, a checkout must be treated as read-only: it is an
//! overlayfs lower directory, never written in place. Unused variants are
//! removed when the store is opened (see `gc`).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::objects::{cpath, create_private_dir, fsync_dir, syncfs};
use crate::progress::Progress;
use crate::read::DirIter;
use crate::records::{Content, Ino, LayerId, Node, NodeKind, ObjectId, ROOT_INO};
use crate::store::Store;
use crate::xattr;

/// Suffix of the claim markers in the variants directory.
pub(crate) const CLAIM_SUFFIX: &str = ".claim";

/// Makes temp names unique within the process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Where variants live: `HOME/checkouts/.variants`.
pub(crate) fn variants_dir(store: &Store) -> PathBuf {
    store.checkouts_dir().join(".variants")
}

/// Checks `layer` out into `dest` (created; must not exist). Built in a
/// temp directory beside `dest` and renamed into place, so a crash leaves
/// no half checkout under `dest` (stale temp directories of dead processes
/// are removed by the next checkout to the same `dest`).
pub fn checkout(store: &Store, layer: LayerId, dest: &Path, progress: &dyn Progress) -> Result<()> {
    if fs::symlink_metadata(dest).is_ok() {
        return Err(Error::Exists {
            what: "checkout directory",
            name: dest.display().to_string(),
        });
    }
    let (parent, name) = split_dest(dest)?;
    remove_stale_temps(&parent, &name)?;
    let tmp = parent.join(format!(
        ".{name}.checkout-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let built = Checkout::new(store, layer, progress).run(&tmp);
    let placed = built.and_then(|()| {
        syncfs(&tmp)?;
        fs::rename(&tmp, dest)
            .map_err(|e| Error::io(format!("renaming checkout to {}", dest.display()), e))?;
        fsync_dir(&parent)
    });
    if placed.is_err() {
        remove_tree(&tmp);
    }
    placed
}

/// The parent directory and file name of `dest`.
fn split_dest(dest: &Path) -> Result<(PathBuf, String)> {
    let name = dest
        .file_name()
        .ok_or_else(|| {
            Error::BadInput(format!(
                "checkout destination {} has no name",
                dest.display()
            ))
        })?
        .to_string_lossy()
        .into_owned();
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// Removes `.NAME.checkout-PID-N` directories of processes that are gone.
fn remove_stale_temps(parent: &Path, name: &str) -> Result<()> {
    let prefix = format!(".{name}.checkout-");
    let entries =
        fs::read_dir(parent).map_err(|e| Error::io(format!("listing {}", parent.display()), e))?;
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        let pid: Option<i32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if let Some(pid) = pid {
            // SAFETY: signal 0 only checks that the process exists.
            let gone = unsafe { libc::kill(pid, 0) } != 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            if gone {
                remove_tree(&entry.path());
            }
        }
    }
    Ok(())
}

/// Best-effort removal of a tree whose directories may be read-only.
fn remove_tree(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let _ = fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
    }
    let _ = fs::remove_dir_all(root);
}

/// A directory being written: its entries still to check out.
struct Frame {
    path: PathBuf,
    node: Node,
    entries: DirIter,
}

/// State of one checkout.
struct Checkout<'s, 'p> {
    store: &'s Store,
    layer: LayerId,
    progress: &'p dyn Progress,
    privileged: bool,
    uid: u32,
    gid: u32,
    /// Paths of nodes with several links, by ino: later names link to them.
    links: HashMap<Ino, PathBuf>,
}

impl<'s, 'p> Checkout<'s, 'p> {
    fn new(store: &'s Store, layer: LayerId, progress: &'p dyn Progress) -> Self {
        // SAFETY: these calls cannot fail.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Checkout {
            store,
            layer,
            progress,
            privileged: euid == 0,
            uid: euid,
            gid: egid,
            links: HashMap::new(),
        }
    }

    /// Writes the whole layer under `root` (created).
    fn run(mut self, root: &Path) -> Result<()> {
        let root_node = self.existing(ROOT_INO)?;
        mkdir_private(root)?;
        let mut stack = vec![Frame {
            path: root.to_path_buf(),
            node: root_node,
            entries: self.store.read_dir(self.layer, ROOT_INO, None),
        }];
        while let Some(frame) = stack.last_mut() {
            let Some(entry) = frame.entries.next() else {
                if let Some(done) = stack.pop() {
                    self.set_meta(&done.path, &done.node)?;
                }
                continue;
            };
            let entry = entry?;
            let path = frame.path.join(std::ffi::OsStr::from_bytes(&entry.name));
            let node = self.existing(entry.ino)?;
            if node.kind == NodeKind::Dir {
                mkdir_private(&path)?;
                self.progress.advance(0, 1);
                stack.push(Frame {
                    path,
                    node,
                    entries: self.store.read_dir(self.layer, entry.ino, None),
                });
            } else {
                self.place(&path, entry.ino, &node)?;
            }
        }
        Ok(())
    }

    fn existing(&self, ino: Ino) -> Result<Node> {
        self.store
            .node(self.layer, ino)?
            .ok_or_else(|| Error::Format {
                tree: "nodes",
                detail: format!("layer {} has an entry for missing node {ino}", self.layer),
            })
    }

    /// Creates one non-directory node at `path`.
    fn place(&mut self, path: &Path, ino: Ino, node: &Node) -> Result<()> {
        if let Some(first) = self.links.get(&ino) {
            return hard_link(first, path);
        }
        match (&node.kind, &node.content) {
            (NodeKind::File, Content::Object(id)) => self.place_object(path, node, id)?,
            (NodeKind::File, content) => {
                let data = match content {
                    Content::Inline(b) => b.as_slice(),
                    _ => &[],
                };
                write_new(path, data)?;
                self.set_meta(path, node)?;
            }
            (NodeKind::Symlink, _) => {
                let target = self.store.readlink(node)?;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), path)
                    .map_err(|e| Error::io(format!("creating symlink {}", path.display()), e))?;
                self.set_meta(path, node)?;
            }
            _ => {
                make_special(path, node)?;
                self.set_meta(path, node)?;
            }
        }
        if node.nlink > 1 {
            self.links.insert(ino, path.to_path_buf());
        }
        self.progress.advance(node.size, 1);
        Ok(())
    }

    /// The owner a checked-out file gets.
    fn owner(&self, node: &Node) -> (u32, u32) {
        if self.privileged {
            (node.uid, node.gid)
        } else {
            (self.uid, self.gid)
        }
    }

    /// Sets owner, mode, xattrs (and overlay opaque markers) and times, in that order
    /// (chown clears setuid bits and capabilities; every change moves ctime/mtime).
    fn set_meta(&self, path: &Path, node: &Node) -> Result<()> {
        let c = cpath(path)?;
        if self.privileged {
            // SAFETY: valid C string.
            if unsafe { libc::lchown(c.as_ptr(), node.uid, node.gid) } != 0 {
                let e = io::Error::last_os_error();
                // Inside a user namespace, unmapped ids cannot be set: keep ours.
                if !matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EINVAL)) {
                    return Err(Error::io(format!("chown {}", path.display()), e));
                }
            }
        }
        if node.kind != NodeKind::Symlink {
            fs::set_permissions(
                path,
                std::os::unix::fs::PermissionsExt::from_mode(node.mode & 0o7777),
            )
            .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
        }
        for x in &node.xattrs {
            self.set_xattr(path, node.kind, &x.name, &x.value)?;
        }
        if node.opaque {
            self.set_xattr(path, node.kind, b"user.overlay.opaque", b"y")?;
            if self.privileged {
                self.set_xattr(path, node.kind, b"trusted.overlay.opaque", b"y")?;
            }
        }
        set_times(&c, path, node)
    }

    /// Sets an xattr; skips those the filesystem or our privileges refuse,
    /// except `user.*` on files and directories, which must work.
    fn set_xattr(&self, path: &Path, kind: NodeKind, name: &[u8], value: &[u8]) -> Result<()> {
        let Err(e) = xattr::set(path, name, value)? else {
            return Ok(());
        };
        let must_work =
            name.starts_with(b"user.") && matches!(kind, NodeKind::File | NodeKind::Dir);
        let refused = matches!(
            e.raw_os_error(),
            Some(libc::EPERM) | Some(libc::ENOTSUP) | Some(libc::EACCES)
        );
        if refused && !must_work {
            return Ok(());
        }
        Err(Error::io(
            format!(
                "setting xattr {} on {}",
                String::from_utf8_lossy(name),
                path.display()
            ),
            e,
        ))
    }

    /// Links an object-backed file from its variant (see the module docs).
    fn place_object(&self, path: &Path, node: &Node, id: &ObjectId) -> Result<()> {
        let dir = variants_dir(self.store);
        create_private_dir(&dir)?;
        let variant = dir.join(self.variant_name(node, id));
        for _ in 0..3 {
            match fs::hard_link(&variant, path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.make_variant(&dir, &variant, node, id)?
                }
                // Another filesystem, or the variant has too many links: a private copy.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EXDEV) | Some(libc::EMLINK)) => {
                    return self.write_private(path, node, id)
                }
                Err(e) => return Err(Error::io(format!("linking {}", path.display()), e)),
            }
        }
        self.write_private(path, node, id)
    }

    /// `<object hex>-<hash of mode, owner, mtime, xattrs>`.
    fn variant_name(&self, node: &Node, id: &ObjectId) -> String {
        let (uid, gid) = self.owner(node);
        let mut h = blake3::Hasher::new();
        h.update(&(node.mode & 0o7777).to_le_bytes());
        h.update(&uid.to_le_bytes());
        h.update(&gid.to_le_bytes());
        h.update(&node.mtime.sec.to_le_bytes());
        h.update(&node.mtime.nsec.to_le_bytes());
        for x in &node.xattrs {
            h.update(&(x.name.len() as u64).to_le_bytes());
            h.update(&x.name);
            h.update(&(x.value.len() as u64).to_le_bytes());
            h.update(&x.value);
        }
        let digest = h.finalize().to_hex();
        format!("{}-{}", id.to_hex(), &digest.as_str()[..16])
    }

    /// Creates `variant`: reflink, else claim the object inode, else copy.
    fn make_variant(&self, dir: &Path, variant: &Path, node: &Node, id: &ObjectId) -> Result<()> {
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let object = self.store.objects.path(id);
        if reflink(&object, &tmp)? {
            return self.publish_variant(&tmp, variant, node);
        }
        if self.claim(dir, variant, node, id)? {
            self.set_meta(&object, node)?;
            return match fs::hard_link(&object, variant) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(Error::io(
                    format!("linking variant {}", variant.display()),
                    e,
                )),
            };
        }
        copy_object(&object, &tmp)?;
        self.publish_variant(&tmp, variant, node)
    }

    /// Gives the finished temp file its metadata and links it in as `variant`.
    fn publish_variant(&self, tmp: &Path, variant: &Path, node: &Node) -> Result<()> {
        let result = self
            .set_meta(tmp, node)
            .and_then(|()| match fs::hard_link(tmp, variant) {
                Ok(()) => Ok(()),
                // Made by someone else meanwhile: same metadata, same content.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(Error::io(
                    format!("linking variant {}", variant.display()),
                    e,
                )),
            });
        let _ = fs::remove_file(tmp);
        result
    }

    /// Tries to claim the object inode for `variant`; true if claimed.
    fn claim(&self, dir: &Path, variant: &Path, node: &Node, id: &ObjectId) -> Result<bool> {
        if !self.privileged && node.mode & 0o400 == 0 {
            return Ok(false);
        }
        let object = self.store.objects.path(id);
        let meta = fs::metadata(&object)
            .map_err(|e| Error::io(format!("object {}", object.display()), e))?;
        if meta.nlink() != 1 {
            return Ok(false);
        }
        let marker = dir.join(format!("{}{CLAIM_SUFFIX}", id.to_hex()));
        let target = variant.file_name().unwrap_or_default();
        match std::os::unix::fs::symlink(target, &marker) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io(format!("creating {}", marker.display()), e)),
        }
    }

    /// A copy of the object at `path` with the node's metadata (no variant shared).
    fn write_private(&self, path: &Path, node: &Node, id: &ObjectId) -> Result<()> {
        let object = self.store.objects.path(id);
        if !reflink(&object, path)? {
            copy_object(&object, path)?;
        }
        self.set_meta(path, node)
    }
}

fn mkdir_private(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::io(format!("creating directory {}", path.display()), e))
}

fn hard_link(first: &Path, path: &Path) -> Result<()> {
    fs::hard_link(first, path).map_err(|e| Error::io(format!("linking {}", path.display()), e))
}

fn create_new(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))
}

fn write_new(path: &Path, data: &[u8]) -> Result<()> {
    create_new(path)?
        .write_all(data)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Creates `dest` as a reflink of `src`; false (and no `dest`) if the filesystem cannot.
fn reflink(src: &Path, dest: &Path) -> Result<bool> {
    let from =
        File::open(src).map_err(|e| Error::io(format!("opening object {}", src.display()), e))?;
    let to = create_new(dest)?;
    // SAFETY: FICLONE takes the source fd as its argument; both fds are open.
    let rc = unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) };
    if rc == 0 {
        return Ok(true);
    }
    drop(to);
    let _ = fs::remove_file(dest);
    Ok(false)
}

/// Copies an object's bytes into a new file at `dest`.
fn copy_object(src: &Path, dest: &Path) -> Result<()> {
    let mut from =
        File::open(src).map_err(|e| Error::io(format!("opening object {}", src.display()), e))?;
    let mut to = create_new(dest)?;
    io::copy(&mut from, &mut to)
        .map_err(|e| Error::io(format!("copying into {}", dest.display()), e))?;
    Ok(())
}

/// Creates a fifo, socket, device or whiteout.
fn make_special(path: &Path, node: &Node) -> Result<()> {
    let (kind_bits, rdev) = match node.kind {
        NodeKind::Fifo => (libc::S_IFIFO, 0),
        NodeKind::Socket => (libc::S_IFSOCK, 0),
        NodeKind::Whiteout => (libc::S_IFCHR, 0),
        NodeKind::CharDev => (libc::S_IFCHR, node.rdev),
        NodeKind::BlockDev => (libc::S_IFBLK, node.rdev),
        other => {
            return Err(Error::BadInput(format!(
                "cannot create a {other:?} as a special file"
            )))
        }
    };
    let c = cpath(path)?;
    // SAFETY: valid C string; mknod has no memory effects.
    if unsafe { libc::mknod(c.as_ptr(), kind_bits | 0o600, rdev as libc::dev_t) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EPERM)
        && matches!(node.kind, NodeKind::CharDev | NodeKind::BlockDev)
    {
        return Err(Error::Refused(format!(
            "cannot create device node {}: creating devices needs root (CAP_MKNOD)",
            path.display()
        )));
    }
    Err(Error::io(format!("creating {}", path.display()), e))
}

/// Sets atime and mtime without following symlinks.
fn set_times(c: &std::ffi::CStr, path: &Path, node: &Node) -> Result<()> {
    let spec = |t: crate::records::Timestamp| libc::timespec {
        tv_sec: t.sec as libc::time_t,
        tv_nsec: t.nsec as libc::c_long,
    };
    let times = [spec(node.atime), spec(node.mtime)];
    // SAFETY: valid C string and a two-element timespec array.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(Error::io(
            format!("setting times of {}", path.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

//! An instance's data: `HOME/instances/<id>/upper` and `work`. Making an
//! instance is O(1) whatever the image's size: a record in the store plus
//! these two directories.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use stacko_store::stackpoints::InstanceId;
use stacko_store::{Node, Store, ROOT_INO};

use crate::error::{Error, Result};
use crate::fsutil;

/// `HOME/instances/<id>`.
pub fn dir(home: &Path, id: InstanceId) -> PathBuf {
    home.join("instances").join(id.to_string())
}

/// The upper and work directories of instance `id`.
pub fn upper_work(home: &Path, id: InstanceId) -> (PathBuf, PathBuf) {
    let d = dir(home, id);
    (d.join("upper"), d.join("work"))
}

/// The root directory's metadata of the image stack whose top layer is `top`
/// (what a mount of it shows at its root).
pub fn stack_root(store: &Store, image: &str) -> Result<Option<Node>> {
    let chain = store.image_chain(image)?;
    match chain.first() {
        Some(top) => Ok(store.node(top.layer, ROOT_INO)?),
        None => Ok(None),
    }
}

/// Makes `upper` and `work` (when missing). A new upper directory takes the
/// mode, owner and times of `root`, so that the mounted root looks like the
/// image's root (the owner only where this process may chown).
pub fn make_upper_work(upper: &Path, work: &Path, root: Option<&Node>) -> Result<()> {
    let fresh = !upper.exists();
    fsutil::make_dir(upper, 0o755)?;
    fsutil::make_dir(work, 0o700)?;
    if let (true, Some(root)) = (fresh, root) {
        copy_root_meta(upper, root)?;
    }
    Ok(())
}

/// Makes the directories of instance `id` if they are missing; returns (upper, work).
pub fn ensure(home: &Path, id: InstanceId, root: Option<&Node>) -> Result<(PathBuf, PathBuf)> {
    let (upper, work) = upper_work(home, id);
    make_upper_work(&upper, &work, root)?;
    Ok((upper, work))
}

/// Removes instance `id`'s directories.
pub fn remove(home: &Path, id: InstanceId) -> Result<()> {
    fsutil::remove_tree(&dir(home, id))
}

fn copy_root_meta(dir: &Path, root: &Node) -> Result<()> {
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("{} contains a NUL byte", dir.display())))?;
    // Owner first: chown clears set-id bits, chmod then sets them.
    // SAFETY: valid path; failure (not permitted for an ordinary user) is fine.
    unsafe { libc::lchown(c.as_ptr(), root.uid, root.gid) };
    // SAFETY: valid path.
    if unsafe { libc::chmod(c.as_ptr(), (root.mode & 0o7777) as libc::mode_t) } != 0 {
        return Err(Error::io(
            format!("cannot chmod {}", dir.display()),
            std::io::Error::last_os_error(),
        ));
    }
    let ts = |t: stacko_store::Timestamp| libc::timespec {
        tv_sec: t.sec as libc::time_t,
        tv_nsec: t.nsec as libc::c_long,
    };
    let times = [ts(root.atime), ts(root.mtime)];
    // SAFETY: valid path and two timespecs; failure only loses the times.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    Ok(())
}

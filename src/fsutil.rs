//! Small filesystem helpers: removing trees that may hold read-only
//! directories, checking directory contents, making directories private.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// Removes `path` and everything below it, making directories writable on
/// the way (checkouts and overlay work directories hold `0555` and `000`
/// directories). A path that does not exist is not an error.
pub fn remove_tree(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("cannot remove {}", path.display()), e)),
    };
    if !meta.is_dir() {
        return fs::remove_file(path)
            .map_err(|e| Error::io(format!("cannot remove {}", path.display()), e));
    }
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
    let entries =
        fs::read_dir(path).map_err(|e| Error::io(format!("cannot list {}", path.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("cannot list {}", path.display()), e))?;
        remove_tree(&entry.path())?;
    }
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("cannot remove {}", path.display()), e)),
    }
}

/// Whether directory `path` has no entries.
pub fn is_empty_dir(path: &Path) -> Result<bool> {
    let mut it =
        fs::read_dir(path).map_err(|e| Error::io(format!("cannot list {}", path.display()), e))?;
    Ok(it.next().is_none())
}

/// Creates `path` (and missing parents) with `mode` if it does not exist.
pub fn make_dir(path: &Path, mode: u32) -> Result<()> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::io(format!("cannot create {}", path.display()), e)),
    }
}

/// Makes the entries of directory `path` durable (fsync of the directory).
pub fn sync_dir(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("cannot sync {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_read_only_directories() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("f"), b"x").unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(t.path().join("a"), fs::Permissions::from_mode(0o555)).unwrap();
        remove_tree(&t.path().join("a")).unwrap();
        assert!(!t.path().join("a").exists());
        remove_tree(&t.path().join("a")).unwrap();
        assert!(is_empty_dir(t.path()).unwrap());
    }
}

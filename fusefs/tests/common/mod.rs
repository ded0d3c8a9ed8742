//! Helpers shared by the fusefs test files (each file uses some of them).
#![allow(dead_code)]

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use stacko_fusefs::{Errno, OverlayFs};

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Writes a file, creating its parents.
pub fn write(p: &Path, s: &str) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(p, s).unwrap();
}

/// Makes an overlay whiteout (char device 0:0), creating its parents.
pub fn whiteout(p: &Path) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    let c = cpath(p);
    assert_eq!(
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) },
        0,
        "mknod whiteout {p:?}"
    );
}

/// Sets an xattr on `p` itself (not a symlink's target).
pub fn set_user_xattr(p: &Path, name: &str, v: &[u8]) {
    let c = cpath(p);
    let n = CString::new(name).unwrap();
    assert_eq!(
        unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) },
        0,
        "lsetxattr {name} on {p:?}"
    );
}

/// An xattr of `p` itself, if it has it.
pub fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = cpath(p);
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        None
    } else {
        buf.truncate(r as usize);
        Some(buf)
    }
}

/// Walks a path from the root, taking lookup references like the kernel would.
pub fn walk(f: &OverlayFs, path: &str) -> Result<u64, Errno> {
    let mut ino = 1;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        ino = f.lookup(ino, OsStr::new(c))?.ino;
    }
    Ok(ino)
}

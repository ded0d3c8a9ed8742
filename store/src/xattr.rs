//! Extended attributes through `libc` (`l*xattr`: symlinks are never followed).

use std::ffi::CString;
use std::io;
use std::path::Path;

use crate::error::{Error, Result};
use crate::objects::cpath;
use crate::records::Xattr;

/// Whether an errno means "this filesystem or file has no xattrs".
fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENODATA))
}

/// All xattrs of `path` (not following symlinks), sorted by name.
/// A filesystem without xattr support gives an empty list.
pub(crate) fn list(path: &Path) -> Result<Vec<Xattr>> {
    let c = cpath(path)?;
    let names = match list_names(&c) {
        Ok(n) => n,
        Err(e) if unsupported(&e) => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::io(
                format!("listing xattrs of {}", path.display()),
                e,
            ))
        }
    };
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname =
            CString::new(name).map_err(|_| Error::BadInput("xattr name with NUL".into()))?;
        match get(&c, &cname) {
            Ok(value) => out.push(Xattr {
                name: name.to_vec(),
                value,
            }),
            // Removed between list and get: skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => {
                return Err(Error::io(
                    format!(
                        "reading xattr {} of {}",
                        String::from_utf8_lossy(name),
                        path.display()
                    ),
                    e,
                ))
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The NUL-separated name list, growing the buffer on ERANGE.
fn list_names(path: &CString) -> io::Result<Vec<u8>> {
    loop {
        // SAFETY: a NULL buffer of size 0 asks for the needed size.
        let size = unsafe { libc::llistxattr(path.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: buf is valid for buf.len() bytes.
        let got = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

/// One xattr's value, growing the buffer on ERANGE.
fn get(path: &CString, name: &CString) -> io::Result<Vec<u8>> {
    loop {
        // SAFETY: a NULL buffer of size 0 asks for the needed size.
        let size =
            unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: buf is valid for buf.len() bytes.
        let got = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

/// Sets one xattr on `path` (not following symlinks); returns the raw error.
pub(crate) fn set(path: &Path, name: &[u8], value: &[u8]) -> Result<io::Result<()>> {
    let c = cpath(path)?;
    let cname = CString::new(name).map_err(|_| Error::BadInput("xattr name with NUL".into()))?;
    // SAFETY: valid C strings and a value buffer of value.len() bytes.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Ok(if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    })
}

/// Whether an xattr name is overlayfs-internal (never stored in a layer).
pub(crate) fn is_overlay(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

/// Whether an xattr marks an overlayfs opaque directory.
pub(crate) fn is_opaque_marker(x: &Xattr) -> bool {
    (x.name == b"trusted.overlay.opaque" || x.name == b"user.overlay.opaque") && x.value == b"y"
}

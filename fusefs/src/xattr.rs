//! Names of the overlay-internal extended attributes, and which names users may see.
//!
//! The upper directory uses kernel overlayfs's `userxattr` names (`user.overlay.*`); the
//! `trusted.overlay.*` forms are read too. stacko's own bookkeeping lives in `user.stacko.*`.
//! None of these, nor `user.containers.override_stat`, is visible through the mount.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Opaque directory marker, `userxattr` form (value `y`).
pub const USER_OPAQUE: &str = "user.overlay.opaque";
/// Opaque directory marker, privileged form (value `y`).
pub const TRUSTED_OPAQUE: &str = "trusted.overlay.opaque";
/// Directory redirect (absolute path of the lower directory, from the layer root).
pub const USER_REDIRECT: &str = "user.overlay.redirect";
/// Directory redirect, privileged form.
pub const TRUSTED_REDIRECT: &str = "trusted.overlay.redirect";
/// Metadata-only copy-up marker: the data is still in the lower file.
pub const USER_METACOPY: &str = "user.overlay.metacopy";
/// Metadata-only copy-up marker, privileged form.
pub const TRUSTED_METACOPY: &str = "trusted.overlay.metacopy";
/// stacko: merged inode number of the lower node a copied-up node came from (decimal).
pub const ORIGIN: &str = "user.stacko.origin";
/// stacko: merged link count of a hard-linked node kept in the index (decimal).
pub const NLINK: &str = "user.stacko.nlink";
/// Owner and mode the filesystem could not set for lack of privilege ("uid:gid:mode").
pub const OVERRIDE_STAT: &str = "user.containers.override_stat";

const HIDDEN_PREFIXES: [&[u8]; 3] = [b"trusted.overlay.", b"user.overlay.", b"user.stacko."];

/// Whether `name` is internal to the overlay and must be hidden from users.
pub fn is_internal(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b == OVERRIDE_STAT.as_bytes() || HIDDEN_PREFIXES.iter().any(|p| b.starts_with(p))
}

/// Whether a list of xattr names holds `name`.
pub fn has(names: &[std::ffi::OsString], name: &str) -> bool {
    names.iter().any(|n| n.as_bytes() == name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_names_are_hidden_and_user_names_are_not() {
        assert!(is_internal(OsStr::new("trusted.overlay.opaque")));
        assert!(is_internal(OsStr::new("user.overlay.redirect")));
        assert!(is_internal(OsStr::new("user.stacko.origin")));
        assert!(is_internal(OsStr::new("user.containers.override_stat")));
        assert!(!is_internal(OsStr::new("user.mime_type")));
        assert!(!is_internal(OsStr::new("security.capability")));
        assert!(!is_internal(OsStr::new("user.overlayfoo")));
    }
}

//! Where stacko keeps its state (the "home"): the store, the daemon's
//! socket, lock, pid file and log.
//!
//! Resolution order: `--home DIR`, then `STACKO_HOME`, then
//! `/var/lib/stacko` for root, else `$XDG_DATA_HOME/stacko` (when it is an
//! absolute path), else `$HOME/.local/share/stacko`.

use std::ffi::OsString;
use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The default home for root.
pub const ROOT_HOME: &str = "/var/lib/stacko";

/// The daemon's socket in a home.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join("daemon.sock")
}

/// The file the daemon holds an flock on while it runs.
pub fn lock_path(home: &Path) -> PathBuf {
    home.join("daemon.lock")
}

/// The file holding the running daemon's process id.
pub fn pid_path(home: &Path) -> PathBuf {
    home.join("daemon.pid")
}

/// The daemon's log.
pub fn log_path(home: &Path) -> PathBuf {
    home.join("daemon.log")
}

/// Resolves the home from the `--home` flag and this process's environment
/// and user, makes it absolute and creates it (mode 0700) if missing.
pub fn resolve(flag: Option<&Path>) -> Result<PathBuf> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let home = resolve_with(flag, |k| std::env::var_os(k), euid)?;
    let home = std::path::absolute(&home)
        .map_err(|e| Error::io(format!("cannot make {} absolute", home.display()), e))?;
    ensure(&home)?;
    Ok(home)
}

/// The pure part of [`resolve`]: `env` looks up environment variables.
/// Empty variables count as unset.
pub fn resolve_with(
    flag: Option<&Path>,
    env: impl Fn(&str) -> Option<OsString>,
    euid: u32,
) -> Result<PathBuf> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(dir) = flag {
        if dir.as_os_str().is_empty() {
            return Err(Error::Invalid("--home is empty: give a directory".into()));
        }
        return Ok(dir.to_path_buf());
    }
    if let Some(dir) = var("STACKO_HOME") {
        return Ok(PathBuf::from(dir));
    }
    if euid == 0 {
        return Ok(PathBuf::from(ROOT_HOME));
    }
    if let Some(xdg) = var("XDG_DATA_HOME").map(PathBuf::from) {
        // The XDG spec says relative values are invalid and must be ignored.
        if xdg.is_absolute() {
            return Ok(xdg.join("stacko"));
        }
    }
    if let Some(home) = var("HOME") {
        return Ok(PathBuf::from(home).join(".local/share/stacko"));
    }
    Err(Error::Invalid(
        "cannot tell where to keep stacko's state: neither HOME nor XDG_DATA_HOME is set; \
         give --home DIR or set STACKO_HOME"
            .into(),
    ))
}

/// Creates `home` (and missing parents) with mode 0700 if it does not exist;
/// refuses a path that exists and is not a directory.
pub fn ensure(home: &Path) -> Result<()> {
    match std::fs::metadata(home) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::Invalid(format!(
            "stacko home {} exists and is not a directory",
            home.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(home)
            .map_err(|e| Error::io(format!("cannot create stacko home {}", home.display()), e)),
        Err(e) => Err(Error::io(
            format!("cannot use stacko home {}", home.display()),
            e,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let m: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn flag_wins_over_everything() {
        let e = env(&[("STACKO_HOME", "/s"), ("HOME", "/h")]);
        assert_eq!(
            resolve_with(Some(Path::new("/f")), &e, 0).unwrap(),
            PathBuf::from("/f")
        );
    }

    #[test]
    fn stacko_home_wins_over_defaults() {
        let e = env(&[
            ("STACKO_HOME", "/s"),
            ("HOME", "/h"),
            ("XDG_DATA_HOME", "/x"),
        ]);
        assert_eq!(resolve_with(None, &e, 0).unwrap(), PathBuf::from("/s"));
        assert_eq!(resolve_with(None, &e, 1000).unwrap(), PathBuf::from("/s"));
    }

    #[test]
    fn root_default() {
        let e = env(&[("HOME", "/root"), ("XDG_DATA_HOME", "/x")]);
        assert_eq!(resolve_with(None, &e, 0).unwrap(), PathBuf::from(ROOT_HOME));
    }

    #[test]
    fn user_defaults() {
        let e = env(&[("HOME", "/home/u"), ("XDG_DATA_HOME", "/x")]);
        assert_eq!(
            resolve_with(None, &e, 1000).unwrap(),
            PathBuf::from("/x/stacko")
        );
        let e = env(&[("HOME", "/home/u"), ("XDG_DATA_HOME", "rel")]);
        assert_eq!(
            resolve_with(None, &e, 1000).unwrap(),
            PathBuf::from("/home/u/.local/share/stacko")
        );
        let e = env(&[("HOME", "/home/u"), ("STACKO_HOME", "")]);
        assert_eq!(
            resolve_with(None, &e, 1000).unwrap(),
            PathBuf::from("/home/u/.local/share/stacko")
        );
    }

    #[test]
    fn no_home_at_all_is_a_clear_error() {
        let e = env(&[]);
        let err = resolve_with(None, &e, 1000).unwrap_err();
        assert!(err.to_string().contains("--home"), "{err}");
        assert!(resolve_with(Some(Path::new("")), &e, 1000).is_err());
    }

    #[test]
    fn ensure_creates_0700_and_refuses_files() {
        let t = tempfile::tempdir().unwrap();
        let h = t.path().join("a/b");
        ensure(&h).unwrap();
        let mode = std::fs::metadata(&h).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        ensure(&h).unwrap();
        let f = t.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        assert!(ensure(&f).is_err());
    }
}

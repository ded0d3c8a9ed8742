//! Choosing and checking a stackpoint's mount directory (`--dir`).
//!
//! The default is `HOME/stackpoints/NAME`. A given directory must be
//! absolute and valid UTF-8, must not be a file, must be empty unless
//! `--force`, must not be inside the stacko home nor contain it, and must
//! not be inside, equal to, or contain another stackpoint's directory. A
//! missing directory is created (and removed again if the stackpoint cannot
//! be made).

use std::io;
use std::path::{Path, PathBuf};

use stacko_store::stackpoints::StackpointRecord;

use crate::error::{Error, Result};
use crate::fsutil;

/// The default mount directory of stackpoint `name`.
pub fn default_dir(home: &Path, name: &str) -> PathBuf {
    home.join("stackpoints").join(name)
}

/// A checked mount directory, and the first directory this check created
/// (to remove if the stackpoint is not made after all).
#[derive(Debug)]
pub struct Prepared {
    /// The directory, absolute, symlinks resolved.
    pub dir: PathBuf,
    /// The topmost directory created, if any.
    pub created: Option<PathBuf>,
}

impl Prepared {
    /// Removes what was created.
    pub fn undo(&self) {
        if let Some(c) = &self.created {
            let _ = fsutil::remove_tree(c);
        }
    }
}

/// `path` with symlinks resolved in the part that exists; `..` is refused
/// in the part that does not.
pub fn canonical(path: &Path) -> Result<PathBuf> {
    if !path.is_absolute() {
        return Err(Error::Invalid(format!(
            "{} is not an absolute path",
            path.display()
        )));
    }
    let mut existing = path.to_path_buf();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    loop {
        match std::fs::canonicalize(&existing) {
            Ok(c) => {
                let mut out = c;
                for part in rest.iter().rev() {
                    out.push(part);
                }
                return Ok(out);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let Some(name) = existing.file_name() else {
                    return Err(Error::Invalid(format!(
                        "{} contains `..` after a directory that does not exist",
                        path.display()
                    )));
                };
                rest.push(name.to_os_string());
                if !existing.pop() {
                    return Err(Error::io(format!("cannot resolve {}", path.display()), e));
                }
            }
            Err(e) => return Err(Error::io(format!("cannot use {}", path.display()), e)),
        }
    }
}

/// Checks the directory for new stackpoint `name` and creates it if missing.
pub fn prepare(
    home: &Path,
    name: &str,
    given: Option<&Path>,
    force: bool,
    others: &[StackpointRecord],
) -> Result<Prepared> {
    let home_c = canonical(home)?;
    let (dir, user_given) = match given {
        Some(d) => (canonical(d)?, true),
        None => (canonical(&default_dir(home, name))?, false),
    };
    let shown = dir.display().to_string();
    if dir.to_str().is_none() {
        return Err(Error::Invalid(format!("--dir {shown} is not valid UTF-8")));
    }
    if user_given {
        if dir.starts_with(&home_c) {
            return Err(Error::Invalid(format!(
                "--dir {shown} is inside the stacko home {}: choose a directory outside it",
                home_c.display()
            )));
        }
        if home_c.starts_with(&dir) {
            return Err(Error::Invalid(format!(
                "--dir {shown} contains the stacko home {}: choose another directory",
                home_c.display()
            )));
        }
    }
    for other in others {
        let theirs = canonical(&other.dir_path()).unwrap_or_else(|_| other.dir_path());
        let why = if theirs == dir {
            Some("is the directory of")
        } else if dir.starts_with(&theirs) {
            Some("is inside the directory of")
        } else if theirs.starts_with(&dir) {
            Some("contains the directory of")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(Error::Invalid(format!(
                "--dir {shown} {why} stackpoint {} ({})",
                other.name,
                theirs.display()
            )));
        }
    }
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => {
            if !force && !fsutil::is_empty_dir(&dir)? {
                return Err(Error::Invalid(format!(
                    "--dir {shown} is not empty: give an empty or missing directory, \
                     or pass --force to mount over what it holds"
                )));
            }
            Ok(Prepared { dir, created: None })
        }
        Ok(_) => Err(Error::Invalid(format!(
            "--dir {shown} exists and is not a directory"
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut top = dir.clone();
            while let Some(parent) = top.parent() {
                if parent.exists() {
                    break;
                }
                top = parent.to_path_buf();
            }
            fsutil::make_dir(&dir, 0o755)?;
            Ok(Prepared {
                dir,
                created: Some(top),
            })
        }
        Err(e) => Err(Error::io(format!("cannot use {shown}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stacko_store::Timestamp;

    fn sp(name: &str, dir: &Path) -> StackpointRecord {
        use std::os::unix::ffi::OsStrExt;
        StackpointRecord {
            name: name.into(),
            dir: dir.as_os_str().as_bytes().to_vec(),
            current: 1,
            instances: vec![1],
            history: vec![1],
            cursor: 0,
            backend: None,
            created: Timestamp::default(),
        }
    }

    #[test]
    fn bad_dirs_are_refused_and_missing_ones_made() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let file = t.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let full = t.path().join("full");
        std::fs::create_dir_all(full.join("x")).unwrap();
        let taken = t.path().join("taken");
        std::fs::create_dir_all(&taken).unwrap();
        let others = [sp("other", &taken)];
        let err = |d: &Path, force: bool| {
            prepare(&home, "n", Some(d), force, &others)
                .unwrap_err()
                .to_string()
        };
        assert!(err(&file, false).contains("is not a directory"));
        assert!(err(&full, false).contains("is not empty"));
        assert!(err(&home.join("x"), false).contains("inside the stacko home"));
        assert!(err(t.path(), true).contains("contains the stacko home"));
        assert!(err(&taken, false).contains("is the directory of stackpoint other"));
        assert!(err(&taken.join("a/b"), false).contains("inside the directory of stackpoint other"));
        assert!(!taken.join("a").exists());
        assert!(prepare(&home, "n", Some(&full), true, &others).is_ok());
        let p = prepare(
            &home,
            "n",
            Some(&t.path().join("new/deeper")),
            false,
            &others,
        )
        .unwrap();
        assert!(p.dir.is_dir());
        assert_eq!(
            p.created.as_deref(),
            Some(t.path().canonicalize().unwrap().join("new").as_path())
        );
        p.undo();
        assert!(!t.path().join("new").exists());
        let d = prepare(&home, "n", None, false, &others).unwrap();
        assert!(d.dir.ends_with("stackpoints/n"));
    }
}

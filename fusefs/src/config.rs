//! Mount options, in the syntax of fuse-overlayfs and kernel overlayfs:
//! `lowerdir=A:B,upperdir=U,workdir=W[,squash_to_uid=N,squash_to_gid=N,...]`.
//!
//! The leftmost lower directory is the top layer. Without `upperdir` the mount is read-only.
//! A `\` escapes the next character (so `\,` and `\:` are literal in paths).

use std::path::PathBuf;
use std::time::Duration;

/// A mount option that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Options of the filesystem logic (see [`crate::fs::OverlayFs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// Show every owner as this uid.
    pub squash_uid: Option<u32>,
    /// Show every group as this gid.
    pub squash_gid: Option<u32>,
    /// chmod/chown/utimens/setxattr of a lower file copy metadata only.
    pub metacopy: bool,
    /// Renaming a directory with lower parts records a redirect (no EXDEV).
    pub redirect_dir: bool,
    /// Hard-linked lower files are copied up once, into an index, so they stay one inode.
    pub index: bool,
    /// The kernel writeback cache is on (affects how files are opened).
    pub writeback: bool,
    /// Capacity of the merged-listing cache (directories).
    pub dircache_dirs: usize,
    /// Also use passthrough for files still read from a lower layer (`passthrough=all`).
    /// Faster cold reads, but opening such a file for writing while it is open for reading
    /// fails with ETXTBSY (the kernel allows one backing file per inode).
    pub passthrough_lower: bool,
    /// Names held in all by the merged lower-directory indexes ([`crate::lowerindex`]);
    /// 0 turns the indexes off (every lookup then walks the layers).
    pub lower_index_entries: usize,
    /// A directory whose lower layers hold more names than this is not indexed.
    pub lower_index_dir_entries: usize,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            squash_uid: None,
            squash_gid: None,
            metacopy: true,
            redirect_dir: true,
            index: true,
            writeback: false,
            dircache_dirs: 1024,
            passthrough_lower: false,
            lower_index_entries: 400_000,
            lower_index_dir_entries: 100_000,
        }
    }
}

/// Everything the mount command was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountConfig {
    /// Lower directories, top first.
    pub lowerdirs: Vec<PathBuf>,
    /// Upper directory (None: read-only mount).
    pub upperdir: Option<PathBuf>,
    /// Work directory (required with `upperdir`).
    pub workdir: Option<PathBuf>,
    /// Filesystem options.
    pub fs: FsConfig,
    /// Request-handling threads.
    pub threads: usize,
    /// Writeback cache: `None` = automatic (on when passthrough is off).
    pub writeback: Option<bool>,
    /// FUSE passthrough: `None` = automatic (on as root).
    pub passthrough: Option<bool>,
    /// Let every user use the mount: `None` = automatic (on as root).
    pub allow_other: Option<bool>,
    /// Source name shown in the mount table.
    pub fsname: Option<String>,
    /// Mount read-only even with an upper directory.
    pub read_only: bool,
    /// Generic mount flags passed on (`dev`, `nosuid`, `noatime`, ...).
    pub flags: Vec<String>,
    /// How long the kernel may cache entries and attributes.
    pub ttl: Duration,
    /// Ask the kernel for READDIRPLUS (listings carry attributes).
    pub readdirplus: bool,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            lowerdirs: Vec::new(),
            upperdir: None,
            workdir: None,
            fs: FsConfig::default(),
            threads: 4,
            writeback: None,
            passthrough: None,
            allow_other: None,
            fsname: None,
            read_only: false,
            flags: Vec::new(),
            ttl: Duration::from_secs(86400),
            readdirplus: true,
        }
    }
}

/// Splits on unescaped `sep`, keeping escapes.
fn split_escaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn on_off(key: &str, v: Option<&str>) -> Result<bool, ConfigError> {
    match v {
        None | Some("on") | Some("yes") | Some("true") | Some("1") => Ok(true),
        Some("off") | Some("no") | Some("false") | Some("0") => Ok(false),
        Some(x) => Err(ConfigError(format!(
            "option {key}: expected on or off, got {x:?}"
        ))),
    }
}

fn number(key: &str, v: Option<&str>) -> Result<u32, ConfigError> {
    v.and_then(|v| v.parse().ok()).ok_or_else(|| {
        ConfigError(format!(
            "option {key}: expected a number, got {:?}",
            v.unwrap_or("")
        ))
    })
}

const PASSED_FLAGS: [&str; 11] = [
    "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "sync", "async",
    "dirsync",
];
const IGNORED: [&str; 16] = [
    "rw",
    "default_permissions",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "_netdev",
    "nofail",
    "relatime",
    "strictatime",
    "userxattr",
    "volatile",
    "static_nlink",
    "noacl",
];

impl MountConfig {
    /// Applies one `-o` argument (comma-separated options) on top of `self`.
    pub fn apply(&mut self, opts: &str) -> Result<(), ConfigError> {
        for opt in split_escaped(opts, ',') {
            if opt.is_empty() {
                continue;
            }
            let (key, val) = match opt.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (opt.clone(), None),
            };
            let v = val.as_deref();
            let need = |v: Option<&str>| -> Result<String, ConfigError> {
                match v {
                    Some(x) if !x.is_empty() => Ok(x.to_string()),
                    _ => Err(ConfigError(format!("option {key} needs a value"))),
                }
            };
            match key.as_str() {
                "lowerdir" => {
                    let v = need(v)?;
                    self.lowerdirs = split_escaped(&v, ':')
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .map(|s| PathBuf::from(unescape(&s)))
                        .collect();
                }
                "upperdir" => self.upperdir = Some(PathBuf::from(unescape(&need(v)?))),
                "workdir" => self.workdir = Some(PathBuf::from(unescape(&need(v)?))),
                "squash_to_uid" => self.fs.squash_uid = Some(number(&key, v)?),
                "squash_to_gid" => self.fs.squash_gid = Some(number(&key, v)?),
                "squash_to_root" => {
                    self.fs.squash_uid = Some(0);
                    self.fs.squash_gid = Some(0);
                }
                "metacopy" => self.fs.metacopy = on_off(&key, v)?,
                "redirect_dir" => {
                    self.fs.redirect_dir = match v {
                        Some("follow") | Some("nofollow") => false,
                        _ => on_off(&key, v)?,
                    }
                }
                "index" => self.fs.index = on_off(&key, v)?,
                "threads" => {
                    let n = number(&key, v)?;
                    if n == 0 || n > 256 {
                        return Err(ConfigError(format!(
                            "option threads: {n} is out of range 1..=256"
                        )));
                    }
                    self.threads = n as usize;
                }
                "writeback" | "writeback_cache" => self.writeback = Some(on_off(&key, v)?),
                "passthrough" if v == Some("all") => {
                    self.passthrough = Some(true);
                    self.fs.passthrough_lower = true;
                }
                "passthrough" => self.passthrough = Some(on_off(&key, v)?),
                "allow_other" | "allow_root" => self.allow_other = Some(true),
                "noallow_other" => self.allow_other = Some(false),
                "fsname" => self.fsname = Some(need(v)?),
                "subtype" => {}
                "timeout" | "entry_timeout" | "attr_timeout" => {
                    self.ttl = Duration::from_secs(number(&key, v)? as u64)
                }
                "dircache" => self.fs.dircache_dirs = number(&key, v)?.max(1) as usize,
                "lower_index" => self.fs.lower_index_entries = number(&key, v)? as usize,
                "ro" => self.read_only = true,
                "readdirplus" => self.readdirplus = on_off(&key, v)?,
                "uidmapping" | "gidmapping" => {
                    return Err(ConfigError(format!(
                        "option {key} is not supported (mount inside a user namespace instead)"
                    )))
                }
                k if PASSED_FLAGS.contains(&k) && v.is_none() => self.flags.push(k.to_string()),
                k if IGNORED.contains(&k)
                    || k.starts_with("x-")
                    || k == "fast_ino"
                    || k == "xino" => {}
                _ => return Err(ConfigError(format!("unknown mount option {opt:?}"))),
            }
        }
        Ok(())
    }

    /// Checks the combination of options.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.lowerdirs.is_empty() {
            return Err(ConfigError("missing option lowerdir=DIR[:DIR...]".into()));
        }
        if self.upperdir.is_some() != self.workdir.is_some() {
            return Err(ConfigError(
                "upperdir and workdir must be given together".into(),
            ));
        }
        Ok(())
    }

    /// Parses a complete option string.
    pub fn parse(opts: &str) -> Result<MountConfig, ConfigError> {
        let mut c = MountConfig::default();
        c.apply(opts)?;
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_overlay_style_options() {
        let c = MountConfig::parse(
            "lowerdir=/a:/b\\:c,upperdir=/u,workdir=/w,squash_to_uid=1000,squash_to_gid=100,noatime",
        )
        .unwrap();
        assert_eq!(
            c.lowerdirs,
            vec![PathBuf::from("/a"), PathBuf::from("/b:c")]
        );
        assert_eq!(c.upperdir, Some(PathBuf::from("/u")));
        assert_eq!(c.workdir, Some(PathBuf::from("/w")));
        assert_eq!(c.fs.squash_uid, Some(1000));
        assert_eq!(c.fs.squash_gid, Some(100));
        assert_eq!(c.flags, vec!["noatime".to_string()]);
    }

    #[test]
    fn rejects_bad_input_with_a_message() {
        assert!(MountConfig::parse("upperdir=/u,workdir=/w")
            .unwrap_err()
            .0
            .contains("lowerdir"));
        assert!(MountConfig::parse("lowerdir=/a,upperdir=/u")
            .unwrap_err()
            .0
            .contains("workdir"));
        assert!(MountConfig::parse("lowerdir=/a,bogus")
            .unwrap_err()
            .0
            .contains("bogus"));
        assert!(MountConfig::parse("lowerdir=/a,squash_to_uid=x").is_err());
        assert!(MountConfig::parse("lowerdir=/a,metacopy=maybe").is_err());
        let ro = MountConfig::parse("lowerdir=/a").unwrap();
        assert!(ro.upperdir.is_none());
    }

    #[test]
    fn passthrough_modes() {
        let c = MountConfig::parse("lowerdir=/a,passthrough=all").unwrap();
        assert_eq!(c.passthrough, Some(true));
        assert!(c.fs.passthrough_lower);
        let c = MountConfig::parse("lowerdir=/a,passthrough=off,readdirplus=off").unwrap();
        assert_eq!(c.passthrough, Some(false));
        assert!(!c.fs.passthrough_lower && !c.readdirplus);
    }

    #[test]
    fn escaped_comma_in_path() {
        let c = MountConfig::parse("lowerdir=/a\\,b,rw").unwrap();
        assert_eq!(c.lowerdirs, vec![PathBuf::from("/a,b")]);
    }
}

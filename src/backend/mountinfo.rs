//! Reading `/proc/self/mountinfo`: is a path a mount point, of which type, is it a dead FUSE mount.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

use super::error::{Error, Result};

/// One line of `/proc/self/mountinfo`, with escapes (`\040` etc.) decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Unique mount id.
    pub mount_id: u64,
    /// Id of the parent mount.
    pub parent_id: u64,
    /// Device `major:minor` of the filesystem.
    pub device: (u32, u32),
    /// Root of the mount within its filesystem.
    pub root: PathBuf,
    /// Mount point, relative to this process's root.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,...`).
    pub mount_options: String,
    /// Filesystem type: `overlay`, `fuse`, `fuse.<subtype>`, ...
    pub fs_type: String,
    /// Mount source (`stacko`, `/dev/sda1`, ...).
    pub source: String,
    /// Superblock options (`rw,lowerdir=...,userxattr`).
    pub super_options: String,
}

impl MountEntry {
    /// Whether this is a FUSE mount (`fuse`, `fuseblk`, `fuse.*`).
    pub fn is_fuse(&self) -> bool {
        self.fs_type == "fuse" || self.fs_type == "fuseblk" || self.fs_type.starts_with("fuse.")
    }
}

/// What is at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountState {
    /// Not a mount point.
    NotMounted,
    /// A live mount (the topmost one at that point).
    Mounted(MountEntry),
    /// A FUSE mount whose server is gone (`ENOTCONN`). Unmount it to clean up.
    DeadFuse(MountEntry),
}

/// Decode mountinfo's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` `\`).
pub fn unescape(field: &str) -> OsString {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if v <= 0xff {
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

/// Parse one mountinfo line; `None` if it is malformed.
pub fn parse_line(line: &str) -> Option<MountEntry> {
    let mut f = line.split(' ');
    let mount_id = f.next()?.parse().ok()?;
    let parent_id = f.next()?.parse().ok()?;
    let (maj, min) = f.next()?.split_once(':')?;
    let device = (maj.parse().ok()?, min.parse().ok()?);
    let root = PathBuf::from(unescape(f.next()?));
    let mount_point = PathBuf::from(unescape(f.next()?));
    let mount_options = f.next()?.to_string();
    // Optional fields end at a lone "-".
    for tag in f.by_ref() {
        if tag == "-" {
            break;
        }
    }
    let fs_type = unescape(f.next()?).to_string_lossy().into_owned();
    let source = unescape(f.next()?).to_string_lossy().into_owned();
    let super_options = f
        .next()
        .map(|s| unescape(s).to_string_lossy().into_owned())
        .unwrap_or_default();
    Some(MountEntry {
        mount_id,
        parent_id,
        device,
        root,
        mount_point,
        mount_options,
        fs_type,
        source,
        super_options,
    })
}

/// Parse a whole mountinfo text, skipping malformed lines.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// All mounts visible to this process.
pub fn mounts() -> Result<Vec<MountEntry>> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(|e| Error::Os {
        op: "read".into(),
        path: "/proc/self/mountinfo".into(),
        errno: e.raw_os_error().unwrap_or(libc::EIO),
        kernel: Vec::new(),
        hint: None,
    })?;
    Ok(parse(&text))
}

/// Absolute, symlink-free form of `path` without touching its last component, so it
/// works on a dead FUSE mount (where `stat` of the mount point itself fails).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).map_err(|e| os("resolve", path, e))?;
    let mut comps = abs.components();
    let last = match comps.next_back() {
        Some(Component::Normal(n)) => n.to_os_string(),
        _ => return fs::canonicalize(&abs).map_err(|e| os("resolve", path, e)),
    };
    let parent = comps.as_path();
    let parent = fs::canonicalize(parent).map_err(|e| os("resolve", parent, e))?;
    Ok(parent.join(last))
}

fn os(op: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Os {
        op: op.into(),
        path: path.to_path_buf(),
        errno: e.raw_os_error().unwrap_or(libc::EIO),
        kernel: Vec::new(),
        hint: None,
    }
}

/// The topmost mount whose mount point is exactly `path`, if any.
pub fn mount_at(path: &Path) -> Result<Option<MountEntry>> {
    let p = resolve(path)?;
    Ok(mounts()?.into_iter().rev().find(|m| m.mount_point == p))
}

/// Whether `path` is a mount point.
pub fn is_mount_point(path: &Path) -> Result<bool> {
    Ok(mount_at(path)?.is_some())
}

/// The filesystem type mounted at `path`, if it is a mount point.
pub fn fs_type(path: &Path) -> Result<Option<String>> {
    Ok(mount_at(path)?.map(|m| m.fs_type))
}

/// Whether the filesystem at `path` answers with `ENOTCONN` (a FUSE mount whose server
/// died). Uses `statfs`, which always reaches the FUSE server; a plain `stat` can be
/// answered from the kernel's attribute cache for a while after the server died.
pub fn not_connected(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
    else {
        return false;
    };
    // SAFETY: valid path and a zeroed out-struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 {
        return false;
    }
    super::error::last_errno() == libc::ENOTCONN
}

/// What is at `path`: nothing, a live mount, or a dead FUSE mount.
pub fn mount_state(path: &Path) -> Result<MountState> {
    let Some(m) = mount_at(path)? else {
        return Ok(MountState::NotMounted);
    };
    if m.is_fuse() && not_connected(&m.mount_point) {
        return Ok(MountState::DeadFuse(m));
    }
    Ok(MountState::Mounted(m))
}

/// Whether `path` holds a mount that works (a dead FUSE mount counts as not mounted).
pub fn is_live_mount(path: &Path) -> Result<bool> {
    Ok(matches!(mount_state(path)?, MountState::Mounted(_)))
}

#[cfg(test)]
mod tests {
    use super::super::testutil as tu;
    use super::*;

    const SAMPLE: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
36 22 0:31 / /tmp/with\\040space\\011tab rw,nosuid shared:5 master:2 - overlay stacko rw,lowerdir=/a\\134b,userxattr
37 22 0:32 / /mnt/f rw,nosuid,nodev - fuse.fuse-overlayfs fuse-overlayfs rw,user_id=1002,group_id=1002
garbage line
";

    #[test]
    fn parses_escapes_optional_fields_and_skips_garbage() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].mount_point, Path::new("/"));
        assert_eq!(m[0].fs_type, "ext4");
        assert_eq!(m[1].mount_point, Path::new("/tmp/with space\ttab"));
        assert_eq!(
            (m[1].mount_id, m[1].parent_id, m[1].device),
            (36, 22, (0, 31))
        );
        assert_eq!(m[1].fs_type, "overlay");
        assert_eq!(m[1].source, "stacko");
        assert_eq!(m[1].super_options, "rw,lowerdir=/a\\b,userxattr");
        assert!(!m[1].is_fuse());
        assert_eq!(m[2].fs_type, "fuse.fuse-overlayfs");
        assert!(m[2].is_fuse());
    }

    #[test]
    fn unescape_leaves_non_octal_backslashes() {
        assert_eq!(unescape("a\\040b"), OsString::from("a b"));
        assert_eq!(unescape("a\\134"), OsString::from("a\\"));
        assert_eq!(unescape("a\\9xx\\"), OsString::from("a\\9xx\\"));
        assert_eq!(unescape("\\04"), OsString::from("\\04"));
    }

    #[test]
    fn real_mount_points() {
        assert!(is_mount_point(Path::new("/")).expect("/"));
        assert!(is_mount_point(Path::new("/proc")).expect("/proc"));
        assert_eq!(
            fs_type(Path::new("/proc")).expect("/proc").as_deref(),
            Some("proc")
        );
        let tmp = tu::tempdir();
        assert!(!is_mount_point(tmp.path()).expect("tmp"));
        assert_eq!(
            mount_state(tmp.path()).expect("tmp"),
            MountState::NotMounted
        );
        assert!(mount_state(&tmp.path().join("missing")).is_ok());
        assert!(mount_state(&tmp.path().join("no/such/parent")).is_err());
    }

    #[test]
    fn overlay_on_a_path_with_a_space_is_found() {
        if !tu::is_full_root() {
            eprintln!("SKIP: needs root with CAP_SYS_ADMIN");
            return;
        }
        let tmp = tu::tempdir();
        let (mnt, _g) = tu::two_layer_overlay(tmp.path(), "with space");
        // Through a relative-ish spelling with "..", too.
        let odd = tmp.path().join("a").join("..").join("with space");
        for p in [&mnt, &odd] {
            match mount_state(p).expect("state") {
                MountState::Mounted(e) => {
                    assert_eq!(e.fs_type, "overlay");
                    assert_eq!(e.source, "stacko");
                    assert_eq!(e.mount_point, mnt);
                }
                other => panic!("want Mounted, got {other:?}"),
            }
        }
        assert!(is_live_mount(&mnt).expect("live"));
        crate::backend::unmount(&mnt, false).expect("unmount");
        assert_eq!(mount_state(&mnt).expect("state"), MountState::NotMounted);
    }
}

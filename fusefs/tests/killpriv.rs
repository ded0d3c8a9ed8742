//! Clearing of set-id bits that the filesystem does itself under
//! `FUSE_HANDLE_KILLPRIV_V2` (write, truncate, chown), tested without FUSE.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use stacko_fusefs::config::FsConfig;
use stacko_fusefs::dirlower::DirLower;
use stacko_fusefs::fs::SetAttr;
use stacko_fusefs::upper::Upper;
use stacko_fusefs::{Lower, OverlayFs};

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        for d in ["l", "u", "w"] {
            fs::create_dir(root.join(d)).unwrap();
        }
        Env { _tmp: tmp, root }
    }
    /// A lower file `name` with permission bits `perm`.
    fn lower_file(&self, name: &str, perm: u32) {
        let p = self.root.join("l").join(name);
        fs::write(&p, "data").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(perm)).unwrap();
    }
    fn mount(&self) -> OverlayFs {
        let lowers: Vec<Arc<dyn Lower>> =
            vec![Arc::new(DirLower::open(&self.root.join("l")).unwrap())];
        let up = Upper::open(&self.root.join("u"), &self.root.join("w")).unwrap();
        OverlayFs::new(lowers, Some(up), FsConfig::default()).unwrap()
    }
    fn in_upper(&self, name: &str) -> bool {
        fs::symlink_metadata(self.root.join("u").join(name)).is_ok()
    }
}

#[test]
fn kill_clears_suid_and_sgid_with_group_exec() {
    let e = Env::new();
    e.lower_file("f", 0o6775);
    let f = e.mount();
    let ino = f.lookup(1, OsStr::new("f")).unwrap().ino;
    assert!(f.kill_suidgid(ino).unwrap());
    assert_eq!(f.getattr(ino).unwrap().perm, 0o775);
    // the lower layer is untouched: only the upper copy changed
    let lower = fs::metadata(e.root.join("l/f"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(lower, 0o6775);
    assert_eq!(fs::read(e.root.join("l/f")).unwrap(), b"data");
}

#[test]
fn kill_keeps_sgid_without_group_exec_and_copies_nothing_when_idle() {
    let e = Env::new();
    e.lower_file("lock", 0o2664);
    e.lower_file("plain", 0o644);
    let f = e.mount();
    let lock = f.lookup(1, OsStr::new("lock")).unwrap().ino;
    let plain = f.lookup(1, OsStr::new("plain")).unwrap().ino;
    // set-group-ID without group execute marks mandatory locking: it stays
    assert!(!f.kill_suidgid(lock).unwrap());
    assert_eq!(f.getattr(lock).unwrap().perm, 0o2664);
    assert!(!f.kill_suidgid(plain).unwrap());
    assert!(
        !e.in_upper("lock") && !e.in_upper("plain"),
        "nothing to clear, nothing copied up"
    );
}

#[test]
fn chown_without_mode_clears_set_id_bits() {
    let e = Env::new();
    e.lower_file("s", 0o6755);
    let f = e.mount();
    let ino = f.lookup(1, OsStr::new("s")).unwrap().ino;
    let a = f.getattr(ino).unwrap();
    // chown to the current owner still clears them, as chown(2) does
    let a2 = f
        .setattr(
            ino,
            SetAttr {
                uid: Some(a.uid),
                gid: Some(a.gid),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(a2.perm, 0o755);
}

#[test]
fn directories_keep_their_set_id_bits() {
    let e = Env::new();
    let d = e.root.join("l/d");
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o2775)).unwrap();
    let f = e.mount();
    let ino = f.lookup(1, OsStr::new("d")).unwrap().ino;
    assert!(!f.kill_suidgid(ino).unwrap());
    assert_eq!(f.getattr(ino).unwrap().perm, 0o2775);
}

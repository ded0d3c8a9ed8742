//! Real mounts of the `stacko-overlay` binary (as root), compared with kernel overlayfs on
//! the same directories, and the upper directory format checked across both engines.
//!
//! Skipped (with a message) only when `/dev/fuse` is missing; the kernel overlayfs parts
//! need root and are skipped, with a message, without it.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_stacko-overlay");

fn fuse_available() -> bool {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipping: /dev/fuse is missing");
        return false;
    }
    true
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn is_mounted(p: &Path) -> bool {
    let p = fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let m = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    m.lines()
        .any(|l| l.split_whitespace().nth(1) == Some(p.to_str().unwrap_or("")))
}

struct Mnt(PathBuf);

impl Drop for Mnt {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg(&self.0).status();
            if is_mounted(&self.0) {
                let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            }
        }
    }
}

fn stacko_mount(opts: &str, mnt: &Path) -> Mnt {
    let out = Command::new(BIN)
        .arg("-o")
        .arg(opts)
        .arg(mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(mnt), "daemon returned before the mount was up");
    Mnt(mnt.to_path_buf())
}

fn kernel_mount(opts: &str, mnt: &Path) -> Option<Mnt> {
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", opts])
        .arg(mnt)
        .status()
        .ok()?;
    if !st.success() {
        eprintln!("skipping kernel overlayfs part: mount -t overlay failed");
        return None;
    }
    Some(Mnt(mnt.to_path_buf()))
}

fn umount(m: Mnt) {
    // A just-closed file can keep the mount busy for a moment (the release
    // reaches the server asynchronously): retry briefly before failing.
    let mut tries = 0;
    let st = loop {
        let st = Command::new("umount").arg(&m.0).status().unwrap();
        tries += 1;
        if st.success() || tries == 20 {
            break st;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        st.success(),
        "umount {} failed {tries} times",
        m.0.display()
    );
    // the daemon exits once unmounted
    std::mem::forget(m);
}

/// (type, mode, size, content or link target) of every path below `root`.
fn snapshot(root: &Path) -> BTreeMap<String, (char, u32, u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    fn rec(root: &Path, rel: &Path, out: &mut BTreeMap<String, (char, u32, u64, Vec<u8>)>) {
        let mut entries: Vec<_> = fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        entries.sort();
        for name in entries {
            let r = rel.join(&name);
            let p = root.join(&r);
            let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let ft = m.file_type();
            let (t, content) = if ft.is_dir() {
                ('d', Vec::new())
            } else if ft.is_symlink() {
                (
                    'l',
                    fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                )
            } else if ft.is_file() {
                ('f', fs::read(&p).unwrap())
            } else if ft.is_fifo() {
                ('p', Vec::new())
            } else {
                ('c', Vec::new())
            };
            let size = if ft.is_dir() { 0 } else { m.len() };
            out.insert(
                r.to_string_lossy().into_owned(),
                (t, m.mode() & 0o7777, size, content),
            );
            if ft.is_dir() {
                rec(root, &r, out);
            }
        }
    }
    rec(root, Path::new(""), &mut out);
    out
}

struct Dirs {
    _t: tempfile::TempDir,
    base: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().to_path_buf();
        for d in ["l1", "l2", "u", "w", "m", "k", "kw"] {
            fs::create_dir(base.join(d)).unwrap();
        }
        let l1 = base.join("l1");
        let l2 = base.join("l2");
        fs::create_dir_all(l2.join("dir/sub")).unwrap();
        fs::write(l2.join("dir/sub/deep"), "deep").unwrap();
        fs::write(l2.join("dir/f"), "low f").unwrap();
        fs::create_dir_all(l1.join("dir")).unwrap();
        fs::write(l1.join("dir/g"), "g").unwrap();
        fs::write(l1.join("top"), "top").unwrap();
        fs::write(l2.join("top"), "hidden").unwrap();
        fs::create_dir(l2.join("empty")).unwrap();
        fs::create_dir_all(l2.join("gone/x")).unwrap();
        fs::write(l2.join("big"), vec![7u8; 300_000]).unwrap();
        std::os::unix::fs::symlink("top", l1.join("sym")).unwrap();
        Dirs { _t: t, base }
    }
    fn p(&self, s: &str) -> PathBuf {
        self.base.join(s)
    }
    fn opts(&self, upper: &str, work: &str) -> String {
        format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            self.p("l1").display(),
            self.p("l2").display(),
            self.p(upper).display(),
            self.p(work).display()
        )
    }
}

/// Changes that both engines store in the same upper format.
fn mutate(m: &Path) {
    fs::write(m.join("dir/f"), "changed").unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("big"))
        .unwrap()
        .write_all(b"tail")
        .unwrap();
    fs::remove_file(m.join("dir/g")).unwrap();
    fs::remove_dir_all(m.join("gone")).unwrap();
    fs::create_dir(m.join("gone")).unwrap();
    fs::write(m.join("gone/new"), "n").unwrap();
    fs::create_dir_all(m.join("fresh/a/b")).unwrap();
    fs::write(m.join("fresh/a/b/c"), "c").unwrap();
    fs::rename(m.join("top"), m.join("top2")).unwrap();
    fs::remove_dir(m.join("empty")).unwrap();
    std::os::unix::fs::symlink("dir/f", m.join("sym2")).unwrap();
    fs::set_permissions(m.join("fresh"), fs::Permissions::from_mode(0o750)).unwrap();
}

#[test]
fn basic_operations_on_a_real_mount() {
    if !fuse_available() || !is_root() {
        if Path::new("/dev/fuse").exists() {
            eprintln!("skipping: needs root");
        }
        return;
    }
    let d = Dirs::new();
    let m = d.p("m");
    let mnt = stacko_mount(&d.opts("u", "w"), &m);
    assert_eq!(fs::read_to_string(m.join("top")).unwrap(), "top");
    assert_eq!(fs::read_to_string(m.join("dir/sub/deep")).unwrap(), "deep");
    let mut names: Vec<_> = fs::read_dir(m.join("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, vec!["f", "g", "sub"]);
    let ino = fs::metadata(m.join("dir/f")).unwrap().ino();
    fs::write(m.join("dir/f"), "new").unwrap();
    assert_eq!(
        fs::metadata(m.join("dir/f")).unwrap().ino(),
        ino,
        "st_ino kept across copy-up"
    );
    assert_eq!(fs::read_to_string(d.p("u/dir/f")).unwrap(), "new");
    fs::rename(m.join("dir"), m.join("moved")).unwrap();
    assert_eq!(
        fs::read_to_string(m.join("moved/sub/deep")).unwrap(),
        "deep"
    );
    fs::remove_file(m.join("top")).unwrap();
    assert!(fs::metadata(m.join("top")).is_err());
    fs::hard_link(m.join("moved/f"), m.join("hl")).unwrap();
    assert_eq!(fs::metadata(m.join("hl")).unwrap().nlink(), 2);
    fs::set_permissions(m.join("big"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(m.join("big")).unwrap().mode() & 0o777, 0o600);
    assert_eq!(fs::read(m.join("big")).unwrap(), vec![7u8; 300_000]);
    // shared writable mmap through the page cache
    {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.join("big"))
            .unwrap();
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        unsafe {
            *(p as *mut u8) = b'M';
            libc::msync(p, 4096, libc::MS_SYNC);
            libc::munmap(p, 4096);
        }
    }
    assert_eq!(fs::read(m.join("big")).unwrap()[0], b'M');
    let ino_big = fs::metadata(m.join("big")).unwrap().ino();
    let ino_moved = fs::metadata(m.join("moved")).unwrap().ino();
    umount(mnt);
    assert_eq!(fs::read(d.p("u/big")).unwrap()[0], b'M');
    let mnt = stacko_mount(&d.opts("u", "w"), &m);
    assert_eq!(
        fs::metadata(m.join("big")).unwrap().ino(),
        ino_big,
        "st_ino kept across remount"
    );
    assert_eq!(fs::metadata(m.join("moved")).unwrap().ino(), ino_moved);
    assert_eq!(
        fs::read_to_string(m.join("moved/sub/deep")).unwrap(),
        "deep"
    );
    drop(mnt);
}

#[test]
fn upper_written_by_stacko_mounts_under_kernel_overlayfs() {
    if !fuse_available() || !is_root() {
        return;
    }
    let d = Dirs::new();
    let mnt = stacko_mount(&d.opts("u", "w"), &d.p("m"));
    mutate(&d.p("m"));
    let seen = snapshot(&d.p("m"));
    umount(mnt);
    let Some(k) = kernel_mount(&format!("{},userxattr", d.opts("u", "kw")), &d.p("k")) else {
        return;
    };
    assert_eq!(snapshot(&d.p("k")), seen);
    drop(k);
}

#[test]
fn upper_written_by_kernel_overlayfs_mounts_under_stacko() {
    if !fuse_available() || !is_root() {
        return;
    }
    let d = Dirs::new();
    let Some(k) = kernel_mount(&format!("{},userxattr", d.opts("u", "kw")), &d.p("k")) else {
        return;
    };
    mutate(&d.p("k"));
    let seen = snapshot(&d.p("k"));
    umount(k);
    let mnt = stacko_mount(&d.opts("u", "w"), &d.p("m"));
    assert_eq!(snapshot(&d.p("m")), seen);
    drop(mnt);
}

#[test]
fn same_tree_as_kernel_overlayfs_after_the_same_changes() {
    if !fuse_available() || !is_root() {
        return;
    }
    let d = Dirs::new();
    fs::create_dir(d.p("u2")).unwrap();
    let mnt = stacko_mount(&d.opts("u", "w"), &d.p("m"));
    let Some(k) = kernel_mount(&format!("{},userxattr", d.opts("u2", "kw")), &d.p("k")) else {
        return;
    };
    mutate(&d.p("m"));
    mutate(&d.p("k"));
    assert_eq!(snapshot(&d.p("m")), snapshot(&d.p("k")));
    drop(k);
    drop(mnt);
}

#[test]
fn foreground_mount_unmounts_on_sigterm_and_reports_errors() {
    if !fuse_available() || !is_root() {
        return;
    }
    let d = Dirs::new();
    // a bad option fails before anything is mounted, with a message
    let out = Command::new(BIN)
        .args(["-o", "lowerdir=/nonexistent-dir"])
        .arg(d.p("m"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent-dir"));
    assert!(!is_mounted(&d.p("m")));
    // mount(8) helper argument order: SOURCE MOUNTPOINT -o OPTIONS, in the foreground
    let mut child = Command::new(BIN)
        .arg("stacko-overlay")
        .arg(d.p("m"))
        .args(["-f", "-o", &d.opts("u", "w")])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !is_mounted(&d.p("m")) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "mount did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _guard = Mnt(d.p("m"));
    assert_eq!(fs::read_to_string(d.p("m/top")).unwrap(), "top");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert!(st.success(), "daemon exit status {st:?}");
    assert!(!is_mounted(&d.p("m")));
}

#[test]
fn prepared_upper_with_metacopy_redirects_and_links_reads_the_same_under_kernel_overlayfs() {
    use stacko_fusefs::dirlower::DirLower;
    use stacko_fusefs::upper::{prepare_for_kernel, PrepareStats};
    use stacko_fusefs::Lower;
    use std::sync::Arc;
    if !fuse_available() || !is_root() {
        return;
    }
    let d = Dirs::new();
    fs::create_dir(d.p("l2/links")).unwrap();
    fs::write(d.p("l2/links/a"), "linked").unwrap();
    fs::hard_link(d.p("l2/links/a"), d.p("l2/links/b")).unwrap();
    let m = d.p("m");
    let mnt = stacko_mount(&d.opts("u", "w"), &m);
    // metadata-only copies, a renamed lower directory holding one, one moved further into
    // a new directory, and a hard-linked lower file written through one name
    fs::set_permissions(m.join("big"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(m.join("dir/sub/deep"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::rename(m.join("dir"), m.join("moved")).unwrap();
    fs::create_dir(m.join("fresh")).unwrap();
    fs::rename(m.join("moved/sub"), m.join("fresh/sub2")).unwrap();
    fs::write(m.join("links/a"), "changed through a").unwrap();
    assert_eq!(
        fs::read_to_string(m.join("links/b")).unwrap(),
        "changed through a"
    );
    let seen = snapshot(&m);
    umount(mnt);
    assert!(
        get_xattr(&d.p("u/big"), "user.overlay.metacopy").is_some(),
        "chmod made a metadata-only copy"
    );
    assert!(
        get_xattr(&d.p("u/moved"), "user.overlay.redirect").is_some(),
        "rename made a redirect"
    );
    // Unprepared, the kernel reads this upper wrong: that is what the preparation fixes.
    if let Some(k) = kernel_mount(&format!("{},userxattr", d.opts("u", "kw")), &d.p("k")) {
        let big_ok = fs::read(d.p("k/big"))
            .map(|b| b == vec![7u8; 300_000])
            .unwrap_or(false);
        let moved_ok = fs::read_dir(d.p("k/moved")).is_ok() && fs::read(d.p("k/moved/f")).is_ok();
        let link_ok = fs::read_to_string(d.p("k/links/b"))
            .map(|s| s == "changed through a")
            .unwrap_or(false);
        assert!(
            !(big_ok && moved_ok && link_ok),
            "kernel overlayfs read the unprepared upper right"
        );
        umount(k);
    }
    let lowers: Vec<Arc<dyn Lower>> = ["l1", "l2"]
        .iter()
        .map(|l| Arc::new(DirLower::open(&d.p(l)).unwrap()) as Arc<dyn Lower>)
        .collect();
    let st = prepare_for_kernel(&lowers, &d.p("u"), &d.p("w")).unwrap();
    assert!(st.metacopy_filled >= 2, "{st:?}");
    assert!(st.dirs_materialized >= 2, "{st:?}");
    assert!(st.links_restored >= 1, "{st:?}");
    assert!(get_xattr(&d.p("u/big"), "user.overlay.metacopy").is_none());
    assert!(get_xattr(&d.p("u/moved"), "user.overlay.redirect").is_none());
    let Some(k) = kernel_mount(&format!("{},userxattr", d.opts("u", "kw")), &d.p("k")) else {
        return;
    };
    assert_eq!(
        snapshot(&d.p("k")),
        seen,
        "kernel overlayfs over the prepared upper"
    );
    umount(k);
    // idempotent, and stacko still shows the same tree
    assert_eq!(
        prepare_for_kernel(&lowers, &d.p("u"), &d.p("w"))
            .unwrap()
            .metacopy_filled,
        0
    );
    let again = prepare_for_kernel(&lowers, &d.p("u"), &d.p("w")).unwrap();
    assert_eq!(
        PrepareStats {
            links_restored: 0,
            ..again
        },
        PrepareStats::default(),
        "{again:?}"
    );
    let mnt = stacko_mount(&d.opts("u", "w"), &m);
    assert_eq!(snapshot(&m), seen, "stacko over the prepared upper");
    drop(mnt);
}

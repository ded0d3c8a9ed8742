//! Interoperability with GNU tar (installed on every Debian machine the
//! project runs on): its archives import with nanosecond times, xattrs and
//! hard links, and our exports extract with it to the same files.

mod tar_support;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use stacko_store::NodeKind;
use tar_support::*;

fn gnu_tar(args: &[&str], dir: &Path) {
    let status = Command::new("tar")
        .args(args)
        .current_dir(dir)
        .status()
        .expect("GNU tar must be installed");
    assert!(status.success(), "tar {args:?} failed");
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of value.len() bytes.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name}: {}",
        std::io::Error::last_os_error()
    );
}

fn get_xattr(path: &Path, name: &str) -> Vec<u8> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of buf.len() bytes.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(
        rc >= 0,
        "getxattr {name}: {}",
        std::io::Error::last_os_error()
    );
    buf.truncate(rc as usize);
    buf
}

fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let times = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    // SAFETY: a valid C string and two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0);
}

#[test]
fn gnu_tar_archives_import_with_times_xattrs_and_links() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let long = format!("{}/{}", "d".repeat(80), "f".repeat(80));
    fs::create_dir_all(src.join(&long).parent().unwrap()).unwrap();
    fs::write(src.join("f"), "hello").unwrap();
    fs::write(src.join(&long), "long").unwrap();
    fs::hard_link(src.join("f"), src.join("g")).unwrap();
    std::os::unix::fs::symlink("f", src.join("s")).unwrap();
    set_xattr(&src.join("f"), "user.k", b"v\nw");
    set_xattr(&src.join("f"), "user.a=b", b"eq");
    set_mtime(&src.join("f"), 1_700_000_000, 123_456_789);
    gnu_tar(
        &[
            "--xattrs",
            "--format=posix",
            "-cf",
            "p.tar",
            "-C",
            "src",
            ".",
        ],
        dir.path(),
    );
    // The GNU format has no xattrs and whole-second times, but long names.
    gnu_tar(
        &["--format=gnu", "-cf", "g.tar", "-C", "src", "."],
        dir.path(),
    );
    gnu_tar(
        &["--format=posix", "-czf", "p.tgz", "-C", "src", "."],
        dir.path(),
    );

    let store = open(&dir.path().join("store"));
    let posix = snapshot(
        &store,
        import_as(
            &store,
            "posix",
            None,
            &fs::read(dir.path().join("p.tar")).unwrap(),
        ),
    );
    let f = &posix[&b"f"[..]];
    assert_eq!(f.data, b"hello");
    assert_eq!(f.mtime, ts(1_700_000_000, 123_456_789));
    let xattrs: Vec<(&[u8], &[u8])> = f
        .xattrs
        .iter()
        .map(|x| (&x.name[..], &x.value[..]))
        .collect();
    assert_eq!(
        xattrs,
        vec![(&b"user.a=b"[..], &b"eq"[..]), (b"user.k", b"v\nw")]
    );
    assert_eq!(posix[&b"g"[..]].link_group, Some(b"f".to_vec()));
    assert_eq!(posix[&b"s"[..]].kind, NodeKind::Symlink);
    assert_eq!(posix[long.as_bytes()].data, b"long");

    let gnu = snapshot(
        &store,
        import_as(
            &store,
            "gnu",
            None,
            &fs::read(dir.path().join("g.tar")).unwrap(),
        ),
    );
    assert_eq!(gnu[long.as_bytes()].data, b"long");
    assert_eq!(gnu[&b"f"[..]].mtime, ts(1_700_000_000, 0)); // the GNU format has whole seconds
    assert_eq!(gnu[&b"g"[..]].link_group, Some(b"f".to_vec()));

    let gz = snapshot(
        &store,
        import_as(
            &store,
            "gz",
            None,
            &fs::read(dir.path().join("p.tgz")).unwrap(),
        ),
    );
    assert_eq!(gz[long.as_bytes()].data, b"long");
}

#[test]
fn exports_extract_with_gnu_tar() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("store"));
    let long = format!("{}/{}", "d".repeat(80), "f".repeat(80));
    let big = noise(20_000, 5);
    let layer = import_as(
        &store,
        "img",
        None,
        &archive(&[
            E::dir("./").mode(0o755),
            E::file("f", "hello")
                .mode(0o640)
                .mtime("1700000000.123456789")
                .xattr("user.k", "v\nw")
                .xattr("user.a=b%", "eq"),
            E::hardlink("g", "f"),
            E::symlink("s", "f"),
            E::file("big", &big),
            E::file(&long, "long"),
            E::file(b"n\xffn", "non-utf-8"),
            E::dir("sub/").mode(0o700).mtime("1600000000.5"),
        ]),
    );
    fs::write(dir.path().join("out.tar"), export(&store, &[layer], false)).unwrap();
    fs::create_dir(dir.path().join("dst")).unwrap();
    gnu_tar(
        &[
            "--xattrs",
            "--xattrs-include=*",
            "-xpf",
            "out.tar",
            "-C",
            "dst",
        ],
        dir.path(),
    );

    let dst = dir.path().join("dst");
    let f = fs::metadata(dst.join("f")).unwrap();
    assert_eq!(fs::read(dst.join("f")).unwrap(), b"hello");
    assert_eq!(f.permissions().mode() & 0o7777, 0o640);
    assert_eq!((f.mtime(), f.mtime_nsec()), (1_700_000_000, 123_456_789));
    assert_eq!(f.nlink(), 2);
    assert_eq!(fs::metadata(dst.join("g")).unwrap().ino(), f.ino());
    assert_eq!(get_xattr(&dst.join("f"), "user.k"), b"v\nw");
    assert_eq!(get_xattr(&dst.join("f"), "user.a=b%"), b"eq");
    assert_eq!(fs::read_link(dst.join("s")).unwrap(), Path::new("f"));
    assert_eq!(fs::read(dst.join("big")).unwrap(), big);
    assert_eq!(fs::read(dst.join(&long)).unwrap(), b"long");
    assert_eq!(
        fs::read(dst.join(std::ffi::OsStr::from_bytes(b"n\xffn"))).unwrap(),
        b"non-utf-8"
    );
    let sub = fs::metadata(dst.join("sub")).unwrap();
    assert_eq!(sub.permissions().mode() & 0o7777, 0o700);
    assert_eq!(
        (sub.mtime(), sub.mtime_nsec()),
        (1_600_000_000, 500_000_000)
    );
}

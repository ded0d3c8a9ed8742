//! Tests of the merged filesystem logic on temporary directories, without FUSE.

mod common;
use common::*;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use stacko_fusefs::config::FsConfig;
use stacko_fusefs::dirlower::DirLower;
use stacko_fusefs::fs::{Ctx, SetAttr};
use stacko_fusefs::upper::Upper;
use stacko_fusefs::{Errno, Kind, Lower, OverlayFs};

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    layers: usize,
}

impl Env {
    fn new(layers: usize) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        for i in 0..layers {
            fs::create_dir(root.join(format!("l{i}"))).unwrap();
        }
        fs::create_dir(root.join("u")).unwrap();
        fs::create_dir(root.join("w")).unwrap();
        Env {
            _tmp: tmp,
            root,
            layers,
        }
    }
    fn l(&self, i: usize) -> PathBuf {
        self.root.join(format!("l{i}"))
    }
    fn u(&self) -> PathBuf {
        self.root.join("u")
    }
    fn mount_with(&self, cfg: FsConfig, upper: bool) -> OverlayFs {
        let lowers: Vec<Arc<dyn Lower>> = (0..self.layers)
            .map(|i| Arc::new(DirLower::open(&self.l(i)).unwrap()) as Arc<dyn Lower>)
            .collect();
        let up = if upper {
            Some(Upper::open(&self.u(), &self.root.join("w")).unwrap())
        } else {
            None
        };
        OverlayFs::new(lowers, up, cfg).unwrap()
    }
    fn mount(&self) -> OverlayFs {
        self.mount_with(FsConfig::default(), true)
    }
}

fn ctx() -> Ctx {
    Ctx::current()
}

fn parent_and_name(f: &OverlayFs, path: &str) -> (u64, OsString) {
    let (d, n) = path.rsplit_once('/').unwrap_or(("", path));
    (walk(f, d).unwrap(), OsString::from(n))
}

fn names(f: &OverlayFs, path: &str) -> Vec<String> {
    let ino = walk(f, path).unwrap();
    let fh = f.opendir(ino).unwrap();
    let mut v: Vec<String> = f
        .readdir(fh, 0)
        .unwrap()
        .iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    f.releasedir(fh);
    v.sort();
    v
}

fn read(f: &OverlayFs, path: &str) -> String {
    let ino = walk(f, path).unwrap();
    let o = f.open(ino, libc::O_RDONLY).unwrap();
    let d = f.read(o.fh, 0, 1 << 20).unwrap();
    f.release(o.fh);
    String::from_utf8(d).unwrap()
}

fn write_at(f: &OverlayFs, path: &str, off: u64, data: &str, flags: i32) {
    let ino = walk(f, path).unwrap();
    let o = f.open(ino, libc::O_WRONLY | flags).unwrap();
    f.write(o.fh, off, data.as_bytes()).unwrap();
    f.release(o.fh);
}

fn is_whiteout(p: &Path) -> bool {
    match fs::symlink_metadata(p) {
        Ok(m) => m.mode() & libc::S_IFMT == libc::S_IFCHR && m.rdev() == 0,
        Err(_) => false,
    }
}

#[test]
fn lookup_honours_whiteouts_and_opaque_dirs_in_every_form() {
    let e = Env::new(2);
    write(&e.l(1).join("gone/f"), "x");
    whiteout(&e.l(0).join("gone"));
    write(&e.l(1).join("oci"), "x");
    write(&e.l(0).join(".wh.oci"), "");
    write(&e.l(1).join("op1/old"), "x");
    write(&e.l(0).join("op1/new"), "x");
    set_user_xattr(&e.l(0).join("op1"), "user.overlay.opaque", b"y");
    write(&e.l(1).join("op2/old"), "x");
    write(&e.l(0).join("op2/.wh..wh..opq"), "");
    write(&e.l(0).join("op2/new"), "x");
    write(&e.l(1).join("merged/low"), "x");
    write(&e.l(0).join("merged/high"), "x");
    let f = e.mount();
    assert_eq!(walk(&f, "gone"), Err(Errno::ENOENT));
    assert_eq!(walk(&f, "oci"), Err(Errno::ENOENT));
    assert_eq!(walk(&f, ".wh.oci"), Err(Errno::ENOENT));
    assert_eq!(names(&f, "op1"), vec!["new"]);
    assert_eq!(names(&f, "op2"), vec!["new"]);
    assert_eq!(walk(&f, "op2/old"), Err(Errno::ENOENT));
    assert_eq!(names(&f, "merged"), vec!["high", "low"]);
    assert_eq!(names(&f, ""), vec!["merged", "op1", "op2"]);
    assert_eq!(
        f.getattr(walk(&f, "merged").unwrap()).unwrap().nlink,
        1,
        "merged dirs report one link"
    );
}

#[test]
fn top_layer_wins_and_upper_whiteouts_hide() {
    let e = Env::new(2);
    write(&e.l(0).join("a"), "top");
    write(&e.l(1).join("a"), "bottom");
    write(&e.l(1).join("b"), "b");
    write(&e.u().join("c"), "upper");
    whiteout(&e.u().join("b"));
    let f = e.mount();
    assert_eq!(read(&f, "a"), "top");
    assert_eq!(read(&f, "c"), "upper");
    assert_eq!(walk(&f, "b"), Err(Errno::ENOENT));
    assert_eq!(names(&f, ""), vec!["a", "c"]);
}

#[test]
fn write_copies_up_atomically_and_keeps_the_inode_number() {
    let e = Env::new(1);
    write(&e.l(0).join("d/f"), "hello");
    let f = e.mount();
    let ino = walk(&f, "d/f").unwrap();
    write_at(&f, "d/f", 5, " world", 0);
    assert_eq!(read(&f, "d/f"), "hello world");
    assert_eq!(
        fs::read_to_string(e.l(0).join("d/f")).unwrap(),
        "hello",
        "lower untouched"
    );
    assert_eq!(
        fs::read_to_string(e.u().join("d/f")).unwrap(),
        "hello world"
    );
    assert_eq!(f.getattr(ino).unwrap().ino, ino);
    assert_eq!(walk(&f, "d/f").unwrap(), ino);
    assert_eq!(
        fs::read_dir(e.root.join("w/work")).unwrap().count(),
        0,
        "no scratch left"
    );
    drop(f);
    let f2 = e.mount();
    assert_eq!(walk(&f2, "d/f").unwrap(), ino, "stable across remount");
    assert_eq!(walk(&f2, "d").unwrap(), walk(&e.mount(), "d").unwrap());
}

#[test]
fn chmod_of_a_lower_file_copies_metadata_only() {
    let e = Env::new(1);
    let data = "x".repeat(100_000);
    write(&e.l(0).join("big"), &data);
    let f = e.mount();
    let ino = walk(&f, "big").unwrap();
    let a = f
        .setattr(
            ino,
            SetAttr {
                mode: Some(0o600),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(a.perm, 0o600);
    assert_eq!(a.size, 100_000);
    let up = e.u().join("big");
    let m = fs::metadata(&up).unwrap();
    assert_eq!(m.len(), 100_000);
    assert!(m.blocks() < 8, "upper is sparse: {} blocks", m.blocks());
    assert!(get_xattr(&up, "user.overlay.metacopy").is_some());
    assert_eq!(read(&f, "big"), data, "data still read from the lower file");
    // first write copies the data
    write_at(&f, "big", 0, "Y", 0);
    assert!(get_xattr(&up, "user.overlay.metacopy").is_none());
    let mut expect = data.clone();
    expect.replace_range(0..1, "Y");
    assert_eq!(read(&f, "big"), expect);
    assert_eq!(f.getattr(ino).unwrap().perm, 0o600);
    // metadata-only state survives a remount
    write(&e.l(0).join("other"), "abc");
    let o = walk(&f, "other").unwrap();
    f.setxattr(o, OsStr::new("user.test"), b"v", 0).unwrap();
    drop(f);
    let f2 = e.mount();
    assert_eq!(read(&f2, "other"), "abc");
    assert_eq!(
        f2.getxattr(walk(&f2, "other").unwrap(), OsStr::new("user.test"))
            .unwrap(),
        b"v"
    );
}

#[test]
fn truncate_to_zero_and_o_trunc_need_no_data_copy() {
    let e = Env::new(1);
    write(&e.l(0).join("f"), "0123456789");
    let f = e.mount();
    let ino = walk(&f, "f").unwrap();
    let o = f.open(ino, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    f.write(o.fh, 0, b"ab").unwrap();
    f.release(o.fh);
    assert_eq!(read(&f, "f"), "ab");
    let a = f
        .setattr(
            ino,
            SetAttr {
                size: Some(5),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(a.size, 5);
    assert_eq!(read(&f, "f"), "ab\0\0\0");
}

#[test]
fn unlink_and_rmdir_leave_whiteouts_only_where_lower_shows_through() {
    let e = Env::new(1);
    write(&e.l(0).join("d/a"), "a");
    write(&e.l(0).join("d/b"), "b");
    write(&e.l(0).join("f"), "f");
    let f = e.mount();
    let root = 1;
    f.mknod(root, OsStr::new("new"), libc::S_IFREG | 0o644, 0, ctx())
        .unwrap();
    f.unlink(root, OsStr::new("new")).unwrap();
    assert!(
        fs::symlink_metadata(e.u().join("new")).is_err(),
        "upper-only file leaves nothing"
    );
    f.unlink(root, OsStr::new("f")).unwrap();
    assert!(is_whiteout(&e.u().join("f")));
    assert_eq!(walk(&f, "f"), Err(Errno::ENOENT));
    let (d, _) = parent_and_name(&f, "d/a");
    assert_eq!(f.rmdir(root, OsStr::new("d")), Err(Errno::ENOTEMPTY));
    assert_eq!(f.unlink(root, OsStr::new("d")), Err(Errno::EISDIR));
    f.unlink(d, OsStr::new("a")).unwrap();
    f.unlink(d, OsStr::new("b")).unwrap();
    assert!(names(&f, "d").is_empty());
    f.rmdir(root, OsStr::new("d")).unwrap();
    assert!(is_whiteout(&e.u().join("d")));
    assert_eq!(names(&f, ""), Vec::<String>::new());
    // recreate over the whiteout: an opaque directory
    f.mkdir(root, OsStr::new("d"), 0o755, ctx()).unwrap();
    assert!(names(&f, "d").is_empty(), "lower entries stay hidden");
    assert_eq!(
        get_xattr(&e.u().join("d"), "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    f.mknod(root, OsStr::new("f"), libc::S_IFREG | 0o640, 0, ctx())
        .unwrap();
    assert_eq!(read(&f, "f"), "");
    assert_eq!(f.getattr(walk(&f, "f").unwrap()).unwrap().perm, 0o640);
}

#[test]
fn rename_of_a_lower_directory_is_a_real_rename_with_a_redirect() {
    let e = Env::new(1);
    for i in 0..50 {
        write(&e.l(0).join(format!("src/sub/f{i}")), &i.to_string());
    }
    let f = e.mount();
    let ino = walk(&f, "src").unwrap();
    f.rename(1, OsStr::new("src"), 1, OsStr::new("dst"), 0)
        .unwrap();
    assert_eq!(walk(&f, "src"), Err(Errno::ENOENT));
    assert_eq!(walk(&f, "dst").unwrap(), ino);
    assert_eq!(read(&f, "dst/sub/f7"), "7");
    assert_eq!(names(&f, "dst/sub").len(), 50);
    assert!(is_whiteout(&e.u().join("src")));
    assert_eq!(
        get_xattr(&e.u().join("dst"), "user.overlay.redirect").as_deref(),
        Some(&b"/src"[..])
    );
    assert!(
        fs::read_dir(e.u().join("dst")).unwrap().next().is_none(),
        "nothing copied below"
    );
    drop(f);
    let f2 = e.mount();
    assert_eq!(read(&f2, "dst/sub/f49"), "49");
    assert_eq!(walk(&f2, "dst").unwrap(), ino);
    // move it again, into a new directory
    f2.mkdir(1, OsStr::new("x"), 0o755, ctx()).unwrap();
    let x = walk(&f2, "x").unwrap();
    f2.rename(1, OsStr::new("dst"), x, OsStr::new("y"), 0)
        .unwrap();
    assert_eq!(read(&f2, "x/y/sub/f3"), "3");
    drop(f2);
    assert_eq!(read(&e.mount(), "x/y/sub/f3"), "3");
}

#[test]
fn rename_flags_and_errors_follow_renameat2() {
    let e = Env::new(1);
    write(&e.l(0).join("a"), "A");
    write(&e.l(0).join("b"), "B");
    write(&e.l(0).join("d/x"), "x");
    write(&e.l(0).join("e/y"), "y");
    let f = e.mount();
    let r = |a: &str, b: &str, fl: u32| f.rename(1, OsStr::new(a), 1, OsStr::new(b), fl);
    walk(&f, "a").unwrap();
    walk(&f, "d").unwrap();
    walk(&f, "e").unwrap();
    assert_eq!(r("a", "b", libc::RENAME_NOREPLACE), Err(Errno::EEXIST));
    assert_eq!(r("a", "d", 0), Err(Errno::EISDIR));
    assert_eq!(r("d", "a", 0), Err(Errno::ENOTDIR));
    assert_eq!(r("d", "e", 0), Err(Errno::ENOTEMPTY));
    assert_eq!(r("nope", "z", 0), Err(Errno::ENOENT));
    assert_eq!(r("a", "zz", libc::RENAME_EXCHANGE), Err(Errno::ENOENT));
    r("a", "b", libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(read(&f, "a"), "B");
    assert_eq!(read(&f, "b"), "A");
    r("d", "a", libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(read(&f, "d"), "B");
    assert_eq!(read(&f, "a/x"), "x");
    r("b", "d", 0).unwrap();
    assert_eq!(read(&f, "d"), "A");
    assert_eq!(walk(&f, "b"), Err(Errno::ENOENT));
    assert_eq!(names(&f, ""), vec!["a", "d", "e"]);
    // rename onto an empty lower directory replaces it; its lower content must not return
    let e2 = Env::new(1);
    write(&e2.l(0).join("full/z"), "z");
    fs::create_dir(e2.l(0).join("empty")).unwrap();
    let f2 = e2.mount();
    let full = walk(&f2, "full").unwrap();
    f2.unlink(full, OsStr::new("z")).unwrap();
    walk(&f2, "empty").unwrap();
    f2.mkdir(1, OsStr::new("n"), 0o755, ctx()).unwrap();
    f2.rename(1, OsStr::new("n"), 1, OsStr::new("full"), 0)
        .unwrap();
    assert!(names(&f2, "full").is_empty());
    drop(f2);
    assert!(names(&e2.mount(), "full").is_empty());
}

#[test]
fn hard_links_stay_one_inode_after_copy_up() {
    let e = Env::new(1);
    write(&e.l(0).join("a"), "data");
    fs::create_dir(e.l(0).join("sub")).unwrap();
    fs::hard_link(e.l(0).join("a"), e.l(0).join("sub/b")).unwrap();
    let f = e.mount();
    let ia = walk(&f, "a").unwrap();
    let ib = walk(&f, "sub/b").unwrap();
    assert_eq!(ia, ib);
    assert_eq!(f.getattr(ia).unwrap().nlink, 2);
    write_at(&f, "a", 4, "+more", 0);
    assert_eq!(read(&f, "sub/b"), "data+more");
    assert_eq!(f.getattr(ib).unwrap().nlink, 2);
    let sub = walk(&f, "sub").unwrap();
    f.link(ia, 1, OsStr::new("c")).unwrap();
    assert_eq!(f.getattr(ia).unwrap().nlink, 3);
    f.unlink(sub, OsStr::new("b")).unwrap();
    assert_eq!(f.getattr(ia).unwrap().nlink, 2);
    drop(f);
    // remount: the untouched lower name still finds the index
    let f2 = e.mount();
    assert_eq!(read(&f2, "c"), "data+more");
    assert_eq!(walk(&f2, "c").unwrap(), ia);
    assert_eq!(f2.getattr(ia).unwrap().nlink, 2);
    assert_eq!(walk(&f2, "sub/b"), Err(Errno::ENOENT));
    // a link to a lower file with one name
    write(&e.l(0).join("single"), "s");
    let f3 = e.mount();
    let s = walk(&f3, "single").unwrap();
    f3.link(s, 1, OsStr::new("single2")).unwrap();
    assert_eq!(f3.getattr(s).unwrap().nlink, 2);
    assert_eq!(walk(&f3, "single2").unwrap(), s);
}

#[test]
fn overlay_internal_xattrs_are_hidden() {
    let e = Env::new(1);
    write(&e.l(0).join("f"), "x");
    set_user_xattr(&e.l(0).join("f"), "user.visible", b"1");
    set_user_xattr(&e.l(0).join("f"), "user.overlay.secret", b"1");
    let f = e.mount();
    let ino = walk(&f, "f").unwrap();
    let n: Vec<_> = f.listxattr(ino).unwrap();
    assert_eq!(n, vec![OsString::from("user.visible")]);
    assert_eq!(
        f.setxattr(ino, OsStr::new("user.overlay.opaque"), b"y", 0),
        Err(Errno::ENOTSUP)
    );
    f.setattr(
        ino,
        SetAttr {
            mode: Some(0o644),
            ..Default::default()
        },
    )
    .unwrap();
    let n: Vec<_> = f.listxattr(ino).unwrap();
    assert_eq!(
        n,
        vec![OsString::from("user.visible")],
        "origin/metacopy marks hidden after copy-up"
    );
    assert_eq!(
        f.getxattr(ino, OsStr::new("user.stacko.origin")),
        Err(Errno::ENODATA)
    );
    assert_eq!(
        f.removexattr(ino, OsStr::new("user.none")),
        Err(Errno::ENODATA)
    );
}

#[test]
fn read_only_mount_refuses_writes() {
    let e = Env::new(1);
    write(&e.l(0).join("f"), "x");
    let f = e.mount_with(FsConfig::default(), false);
    let ino = walk(&f, "f").unwrap();
    assert_eq!(f.mkdir(1, OsStr::new("d"), 0o755, ctx()), Err(Errno::EROFS));
    assert_eq!(f.open(ino, libc::O_RDWR).err(), Some(Errno::EROFS));
    assert_eq!(f.unlink(1, OsStr::new("f")), Err(Errno::EROFS));
    assert_eq!(read(&f, "f"), "x");
}

#[test]
fn create_and_errors_match_the_kernel() {
    let e = Env::new(1);
    write(&e.l(0).join("f"), "x");
    let f = e.mount();
    assert_eq!(
        f.mkdir(1, OsStr::new("f"), 0o755, ctx()).err(),
        Some(Errno::EEXIST)
    );
    let long = "n".repeat(256);
    assert_eq!(
        f.lookup(1, OsStr::new(&long)).err(),
        Some(Errno::ENAMETOOLONG)
    );
    let (a, o) = f
        .create(1, OsStr::new("new"), 0o600, libc::O_RDWR, ctx())
        .unwrap();
    f.write(o.fh, 0, b"abc").unwrap();
    f.release(o.fh);
    assert_eq!(a.perm, 0o600);
    assert_eq!(read(&f, "new"), "abc");
    f.symlink(1, OsStr::new("ln"), OsStr::new("new"), ctx())
        .unwrap();
    assert_eq!(f.readlink(walk(&f, "ln").unwrap()).unwrap(), b"new");
    assert_eq!(
        f.getattr(walk(&f, "ln").unwrap()).unwrap().kind,
        Kind::Symlink
    );
}

#[test]
fn setgid_directories_pass_their_group_on() {
    let e = Env::new(1);
    fs::create_dir(e.l(0).join("sg")).unwrap();
    let f = e.mount();
    let sg = walk(&f, "sg").unwrap();
    let gid = 4242;
    if sys_is_root() {
        f.setattr(
            sg,
            SetAttr {
                gid: Some(gid),
                mode: Some(0o2775),
                ..Default::default()
            },
        )
        .unwrap();
        let c = Ctx {
            uid: 0,
            gid: 0,
            pid: 0,
        };
        let a = f.mkdir(sg, OsStr::new("child"), 0o755, c).unwrap();
        assert_eq!(a.gid, gid);
        assert_ne!(a.perm & libc::S_ISGID, 0, "subdirectories inherit set-gid");
        let a = f
            .mknod(sg, OsStr::new("file"), libc::S_IFREG | 0o644, 0, c)
            .unwrap();
        assert_eq!(a.gid, gid);
    }
}

fn sys_is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn many_layers_merge_in_order() {
    let e = Env::new(40);
    for i in 0..40 {
        write(&e.l(i).join(format!("d/only{i}")), &i.to_string());
        write(&e.l(i).join("d/shared"), &i.to_string());
    }
    whiteout(&e.l(20).join("d/only30"));
    let f = e.mount();
    let n = names(&f, "d");
    assert_eq!(n.len(), 40, "39 own files + shared: {n:?}");
    assert_eq!(read(&f, "d/shared"), "0");
    assert_eq!(read(&f, "d/only39"), "39");
    assert_eq!(walk(&f, "d/only30"), Err(Errno::ENOENT));
}

#[test]
fn concurrent_opens_copy_up_once() {
    let e = Env::new(1);
    write(&e.l(0).join("f"), &"z".repeat(1 << 20));
    let f = Arc::new(e.mount());
    let ino = walk(&f, "f").unwrap();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let f = f.clone();
            std::thread::spawn(move || {
                let o = f.open(ino, libc::O_RDWR).unwrap();
                f.write(o.fh, i * 10, b"!").unwrap();
                f.release(o.fh);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let o = f.open(ino, libc::O_RDONLY).unwrap();
    let d = f.read(o.fh, 0, 1 << 20).unwrap();
    assert_eq!(d.len(), 1 << 20);
    for i in 0..8 {
        assert_eq!(d[i * 10], b'!', "write {i} kept");
    }
    assert_eq!(fs::read_dir(e.root.join("w/work")).unwrap().count(), 0);
}

#[test]
fn without_redirect_dir_a_lower_directory_rename_is_exdev_like_the_kernel() {
    let e = Env::new(1);
    write(&e.l(0).join("d/f"), "x");
    let cfg = FsConfig {
        redirect_dir: false,
        ..FsConfig::default()
    };
    let f = e.mount_with(cfg.clone(), true);
    walk(&f, "d").unwrap();
    assert_eq!(
        f.rename(1, OsStr::new("d"), 1, OsStr::new("e"), 0),
        Err(Errno::EXDEV)
    );
    // a directory made in the upper moves freely
    f.mkdir(1, OsStr::new("n"), 0o755, ctx()).unwrap();
    f.rename(1, OsStr::new("n"), 1, OsStr::new("m"), 0).unwrap();
    drop(f);
    // redirects made earlier are still followed
    let f = e.mount();
    f.rename(1, OsStr::new("d"), 1, OsStr::new("e"), 0).unwrap();
    drop(f);
    assert_eq!(read(&e.mount_with(cfg, true), "e/f"), "x");
}

#[test]
fn metacopy_off_copies_data_on_chmod() {
    let e = Env::new(1);
    write(&e.l(0).join("f"), "data");
    let f = e.mount_with(
        FsConfig {
            metacopy: false,
            ..FsConfig::default()
        },
        true,
    );
    let ino = walk(&f, "f").unwrap();
    f.setattr(
        ino,
        SetAttr {
            mode: Some(0o640),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(fs::read_to_string(e.u().join("f")).unwrap(), "data");
    assert!(get_xattr(&e.u().join("f"), "user.overlay.metacopy").is_none());
}

/// Directory times in the upper, as (mtime sec, mtime nsec).
fn mtime_of(p: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec())
}

fn set_mtime(p: &Path, sec: i64) {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let t = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: 500,
        },
    ];
    assert_eq!(
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                t.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        },
        0
    );
}

#[test]
fn copy_up_keeps_the_times_of_parent_directories() {
    let e = Env::new(1);
    write(&e.l(0).join("d/e/f"), "data");
    fs::hard_link(e.l(0).join("d/e/f"), e.l(0).join("d/g")).unwrap();
    set_mtime(&e.l(0).join("d/e"), 1_100_000_000);
    set_mtime(&e.l(0).join("d"), 1_100_001_000);
    set_mtime(&e.u(), 1_300_000_000);
    let f = e.mount();
    write_at(&f, "d/e/f", 0, "DA", 0);
    assert_eq!(read(&f, "d/g"), "DAta");
    // the upper root, and the copied-up directories, keep their times
    assert_eq!(mtime_of(&e.u()), (1_300_000_000, 500));
    assert_eq!(mtime_of(&e.u().join("d")), (1_100_001_000, 500));
    assert_eq!(mtime_of(&e.u().join("d/e")), (1_100_000_000, 500));
    let d = walk(&f, "d").unwrap();
    assert_eq!(f.getattr(d).unwrap().mtime.sec, 1_100_001_000);
    // linking the other name of the hard-link group into place is a copy-up too
    let g = walk(&f, "d/g").unwrap();
    f.setattr(
        g,
        SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(mtime_of(&e.u().join("d")), (1_100_001_000, 500));
}

#[test]
fn rename_of_a_lower_file_keeps_its_times() {
    let e = Env::new(1);
    write(&e.l(0).join("b"), "bbbb");
    set_mtime(&e.l(0).join("b"), 1_100_002_000);
    let f = e.mount();
    f.rename(1, OsStr::new("b"), 1, OsStr::new("c"), 0).unwrap();
    let c = walk(&f, "c").unwrap();
    assert_eq!(f.getattr(c).unwrap().mtime.sec, 1_100_002_000);
    assert_eq!(f.getattr(c).unwrap().mtime.nsec, 500);
    assert_eq!(read(&f, "c"), "bbbb");
}

#[test]
fn link_of_a_lower_fifo_works() {
    let e = Env::new(1);
    let c = std::ffi::CString::new(e.l(0).join("p").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let f = e.mount();
    let p = walk(&f, "p").unwrap();
    let a = f.link(p, 1, OsStr::new("n")).unwrap();
    assert_eq!(a.ino, p);
    assert_eq!(a.nlink, 2);
    assert_eq!(a.kind, Kind::Fifo);
    assert_eq!(walk(&f, "n").unwrap(), p);
    // fifos hold no user.* xattrs: the origin number survives a remount through the side map
    drop(f);
    let f2 = e.mount();
    assert_eq!(walk(&f2, "n").unwrap(), p);
    assert_eq!(walk(&f2, "p").unwrap(), p);
    assert_eq!(f2.getattr(p).unwrap().nlink, 2);
}

#[test]
fn side_metadata_of_symlinks_follows_the_inode_and_not_its_number() {
    let e = Env::new(1);
    let up = Upper::open(&e.u(), &e.root.join("w")).unwrap();
    let dir = fs::File::open(e.u()).unwrap();
    let dfd = std::os::fd::AsRawFd::as_raw_fd(&dir);
    std::os::unix::fs::symlink("target", e.u().join("s")).unwrap();
    up.side_set(
        dfd,
        OsStr::new("s"),
        "user.containers.override_stat",
        b"0:0:120777",
    )
    .unwrap();
    fs::rename(e.u().join("s"), e.u().join("t")).unwrap();
    let got = up.side_get_all(dfd, OsStr::new("t"));
    assert_eq!(
        got,
        vec![(
            OsString::from("user.containers.override_stat"),
            b"0:0:120777".to_vec()
        )]
    );
    up.side_drop_if_last(dfd, OsStr::new("t"));
    fs::remove_file(e.u().join("t")).unwrap();
    std::os::unix::fs::symlink("other", e.u().join("t")).unwrap();
    assert!(
        up.side_get_all(dfd, OsStr::new("t")).is_empty(),
        "no stale entry for a new inode"
    );
    assert_eq!(
        fs::read_dir(e.root.join("w/stacko-meta")).unwrap().count(),
        0
    );
}

#[test]
fn unlinking_one_name_of_a_lower_hard_link_drops_nlink() {
    let e = Env::new(1);
    write(&e.l(0).join("d1/x"), "xxxx");
    fs::create_dir(e.l(0).join("s")).unwrap();
    fs::hard_link(e.l(0).join("d1/x"), e.l(0).join("s/y")).unwrap();
    let f = e.mount();
    let (s, _) = parent_and_name(&f, "s/y");
    let x = walk(&f, "d1/x").unwrap();
    assert_eq!(f.getattr(x).unwrap().nlink, 2);
    f.unlink(s, OsStr::new("y")).unwrap();
    assert_eq!(f.getattr(x).unwrap().nlink, 1);
    assert_eq!(read(&f, "d1/x"), "xxxx");
    drop(f);
    let f2 = e.mount();
    let x2 = walk(&f2, "d1/x").unwrap();
    assert_eq!(f2.getattr(x2).unwrap().nlink, 1);
    assert_eq!(walk(&f2, "s/y"), Err(Errno::ENOENT));
}

#[test]
fn an_open_file_keeps_working_after_its_last_name_is_removed() {
    let e = Env::new(1);
    write(&e.l(0).join("low"), "lower data");
    let f = e.mount();
    for name in ["new", "low"] {
        let ino = if name == "new" {
            let (a, o) = f
                .create(1, OsStr::new(name), 0o644, libc::O_RDWR, ctx())
                .unwrap();
            f.release(o.fh);
            a.ino
        } else {
            walk(&f, name).unwrap()
        };
        let o = f.open(ino, libc::O_RDWR).unwrap();
        f.unlink(1, OsStr::new(name)).unwrap();
        let a = f.getattr(ino).unwrap();
        assert_eq!(a.nlink, 0, "{name}");
        f.write(o.fh, 0, b"Hello, World!").unwrap();
        assert_eq!(f.read(o.fh, 0, 13).unwrap(), b"Hello, World!");
        assert_eq!(f.getattr(ino).unwrap().size, 13);
        let a = f
            .setattr(
                ino,
                SetAttr {
                    size: Some(5),
                    mode: Some(0o600),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!((a.size, a.perm), (5, 0o600));
        f.release(o.fh);
        assert_eq!(walk(&f, name), Err(Errno::ENOENT));
    }
}

#[test]
fn open_never_meets_the_whiteout_a_concurrent_rename_leaves() {
    let e = Env::new(1);
    write(&e.l(0).join("f"), "init\n");
    let f = Arc::new(e.mount());
    let ino = walk(&f, "f").unwrap();
    write_at(&f, "f", 0, "init\n", 0); // copied up: later opens go by the upper name
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renamer = {
        let (f, stop) = (f.clone(), stop.clone());
        std::thread::spawn(move || {
            for _ in 0..3000 {
                f.rename(1, OsStr::new("f"), 1, OsStr::new("g"), 0).unwrap();
                f.rename(1, OsStr::new("g"), 1, OsStr::new("f"), 0).unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let mut opens = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) || opens == 0 {
        let o = f
            .open(ino, libc::O_WRONLY | libc::O_APPEND)
            .unwrap_or_else(|e| panic!("open during renames: {e:?}"));
        f.release(o.fh);
        opens += 1;
    }
    renamer.join().unwrap();
    assert_eq!(read(&f, "f"), "init\n");
}

#[test]
fn reading_a_directory_from_the_start_sees_renames_after_opendir() {
    let e = Env::new(1);
    write(&e.l(0).join("a/f"), "f");
    fs::create_dir(e.l(0).join("b")).unwrap();
    let f = e.mount();
    let a = walk(&f, "a").unwrap();
    let b = walk(&f, "b").unwrap();
    let fh = f.opendir(b).unwrap();
    f.rename(a, OsStr::new("f"), b, OsStr::new("g"), 0).unwrap();
    let l: Vec<String> = f
        .readdir(fh, 0)
        .unwrap()
        .iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    assert_eq!(l, vec![".", "..", "g"]);
    f.releasedir(fh);
}

#[test]
fn a_moved_metadata_only_copy_finds_its_data_through_its_redirect() {
    // What a rootless mount leaves when it renames a metadata-only copy whose data it may
    // not read (as root the rename copies the data instead, see below).
    let e = Env::new(1);
    write(&e.l(0).join("d/f"), "lower data");
    let lino = fs::metadata(e.l(0).join("d/f")).unwrap().ino();
    let up = e.u().join("h");
    let file = fs::File::create(&up).unwrap();
    file.set_len(10).unwrap();
    drop(file);
    let merged = (1u64 << 48) | lino;
    set_user_xattr(&up, "user.overlay.metacopy", b"");
    set_user_xattr(&up, "user.stacko.origin", merged.to_string().as_bytes());
    set_user_xattr(&up, "user.overlay.redirect", b"/d/f");
    whiteout(&e.u().join("d"));
    let f = e.mount();
    assert_eq!(walk(&f, "h").unwrap(), merged);
    assert_eq!(read(&f, "h"), "lower data");
    write_at(&f, "h", 0, "LOWER", 0);
    assert_eq!(read(&f, "h"), "LOWER data");
    assert!(get_xattr(&up, "user.overlay.metacopy").is_none());
    assert!(
        get_xattr(&up, "user.overlay.redirect").is_none(),
        "kernel overlayfs refuses it on a full copy"
    );
    // as root, renaming a metadata-only copy copies its data: no redirect left
    write(&e.l(0).join("x"), "xx");
    let f = e.mount();
    let x = walk(&f, "x").unwrap();
    f.setattr(
        x,
        SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .unwrap();
    f.rename(1, OsStr::new("x"), 1, OsStr::new("y"), 0).unwrap();
    assert!(get_xattr(&e.u().join("y"), "user.overlay.redirect").is_none());
    assert_eq!(read(&f, "y"), "xx");
}

/// Runs `f` on a thread whose credentials (raw per-thread `setresuid`, not the libc
/// wrapper that changes every thread) are those of an ordinary user, as in a rootless
/// mount; `None` when the test process is not root and cannot switch.
fn as_ordinary_user<T: Send + 'static>(
    uid: u32,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    std::thread::spawn(move || {
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
                0
            );
            assert_eq!(libc::syscall(libc::SYS_setresgid, uid, uid, uid), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
        }
        f()
    })
    .join()
    .ok()
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

#[test]
fn rootless_exchange_of_a_lower_dir_with_an_unreadable_hard_linked_file() {
    // rootless: `renameat2(d1, x, RENAME_EXCHANGE)` where x is a root-only (0600) lower
    // file with two names; its data cannot be copied, so its index entry is a metadata copy
    // (regression: the exchange failed with EACCES).
    use std::os::unix::fs::PermissionsExt;
    let e = Env::new(1);
    const UID: u32 = 65534;
    fs::set_permissions(&e.root, fs::Permissions::from_mode(0o755)).unwrap();
    write(&e.l(0).join("d1/a"), "a");
    write(&e.l(0).join("x"), "secret");
    fs::set_permissions(e.l(0).join("x"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::hard_link(e.l(0).join("x"), e.l(0).join("d1/xx")).unwrap();
    chown(&e.u(), UID, UID);
    chown(&e.root.join("w"), UID, UID);
    let root = e.root.clone();
    let lower = e.l(0);
    let upper = e.u();
    let r = as_ordinary_user(UID, move || {
        let d = Arc::new(DirLower::open(&lower).unwrap()) as Arc<dyn Lower>;
        let up = Upper::open(&upper, &root.join("w")).unwrap();
        let f = OverlayFs::new(vec![d], Some(up), FsConfig::default()).unwrap();
        assert_eq!(walk(&f, "x/a").err(), Some(Errno(libc::ENOTDIR)));
        // a third name, made by link(2) and moved before any other name moves
        let xino = walk(&f, "x").unwrap();
        f.link(xino, 1, OsStr::new("l")).unwrap();
        f.rename(1, OsStr::new("l"), 1, OsStr::new("m"), 0).unwrap();
        assert_eq!(f.getattr(walk(&f, "m").unwrap()).unwrap().nlink, 3);
        f.rename(
            1,
            OsStr::new("d1"),
            1,
            OsStr::new("x"),
            libc::RENAME_EXCHANGE,
        )
        .unwrap();
        let a = f.getattr(walk(&f, "d1").unwrap()).unwrap();
        assert_eq!(
            (a.kind, a.uid, a.perm, a.nlink, a.size),
            (Kind::File, 0, 0o600, 3, 6)
        );
        let x = f.getattr(walk(&f, "x").unwrap()).unwrap();
        assert_eq!((x.kind, x.uid), (Kind::Dir, 0));
        assert_eq!(names(&f, "x"), vec!["a", "xx"]);
        let xx = f.getattr(walk(&f, "x/xx").unwrap()).unwrap();
        assert_eq!((xx.ino, xx.nlink), (a.ino, 3));
        // remounted, the same
        drop(f);
        let d = Arc::new(DirLower::open(&lower).unwrap()) as Arc<dyn Lower>;
        let up = Upper::open(&upper, &root.join("w")).unwrap();
        let f = OverlayFs::new(vec![d], Some(up), FsConfig::default()).unwrap();
        let a2 = f.getattr(walk(&f, "d1").unwrap()).unwrap();
        assert_eq!(
            (a2.kind, a2.uid, a2.perm, a2.nlink, a2.size, a2.ino),
            (Kind::File, 0, 0o600, 3, 6, a.ino)
        );
        assert_eq!(f.getattr(walk(&f, "m").unwrap()).unwrap().ino, a.ino);
        assert_eq!(names(&f, "x"), vec!["a", "xx"]);
    });
    if r.is_none() && unsafe { libc::geteuid() } == 0 {
        panic!("the unprivileged part failed");
    }
    // what the root mount (able to read it) makes of it
    let f = e.mount();
    for name in ["d1", "m", "x/xx"] {
        assert_eq!(read(&f, name), "secret", "{name}");
    }
}

/// The kernel's lookup counts are the only thing that keeps a node alive: renaming one name
/// of a lower hard link (copy-up under a name that was not the node's first) and then
/// dropping every kernel reference to the file must leave both directories resolvable.
/// Found by the differential test (a RENAME_EXCHANGE of `d1` with `s/y` after a `find`).
#[test]
fn renaming_the_second_name_of_a_hard_link_keeps_parent_references_balanced() {
    let e = Env::new(1);
    fs::create_dir(e.l(0).join("d1")).unwrap();
    fs::create_dir(e.l(0).join("s")).unwrap();
    write(&e.l(0).join("d1/x"), "data");
    fs::hard_link(e.l(0).join("d1/x"), e.l(0).join("s/y")).unwrap();
    let f = e.mount();
    let d1 = walk(&f, "d1").unwrap();
    let s = walk(&f, "s").unwrap();
    let first = walk(&f, "d1/x").unwrap(); // the node's first name is d1/x
    let second = walk(&f, "s/y").unwrap();
    assert_eq!(first, second);
    f.rename(s, OsStr::new("y"), s, OsStr::new("z"), 0).unwrap();
    // the kernel drops its two references to the file, then looks into both dirs again
    f.forget(first, 2);
    assert!(f.getattr(s).is_ok(), "s lost while the kernel holds it");
    assert!(f.getattr(d1).is_ok(), "d1 lost while the kernel holds it");
    assert_eq!(f.lookup(s, OsStr::new("z")).unwrap().ino, first);
    assert_eq!(read(&f, "d1/x"), "data"); // one more lookup of d1 and of the file
                                          // once the kernel forgets everything it looked up, nothing is left pinned
    f.forget(first, 2);
    f.forget(s, 2);
    f.forget(d1, 3);
    assert!(
        f.getattr(s).is_err() && f.getattr(d1).is_err(),
        "a pin leaked"
    );
}

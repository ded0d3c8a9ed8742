//! Helpers shared by the store's integration tests: fixture trees on the
//! real filesystem, an independent reading of what a tree should become,
//! and walks of layers through the read API.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use stacko_store::{Content, Ino, LayerId, Node, NodeKind, Store, Timestamp, Xattr, ROOT_INO};

/// Root of the initial user namespace (trusted xattrs, device nodes, mounts).
pub fn is_root() -> bool {
    let init_ns = fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(false);
    init_ns && unsafe { libc::geteuid() == 0 }
}

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let n = CString::new(name).unwrap();
    let rc = unsafe {
        libc::lsetxattr(
            cstr(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name} on {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

pub fn get_xattrs(p: &Path) -> Vec<Xattr> {
    let c = cstr(p);
    let mut names = vec![0u8; 65536];
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "listxattr {}", p.display());
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).unwrap();
        let mut val = vec![0u8; 65536];
        let m =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        assert!(m >= 0);
        val.truncate(m as usize);
        out.push(Xattr {
            name: name.to_vec(),
            value: val,
        });
    }
    out.sort();
    out
}

/// Sets atime and mtime (with nanoseconds) without following symlinks.
pub fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    let t = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cstr(p).as_ptr(),
            t.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", p.display());
}

pub fn mknod(p: &Path, mode: u32, dev: u64) {
    let rc = unsafe { libc::mknod(cstr(p).as_ptr(), mode, dev) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A future atime (relatime never moves it when reading) with nanoseconds.
pub fn future_atime(i: i64) -> (i64, i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (now + 86_400 + i, 123_456_789)
}

/// Builds the main fixture: inline and object files, dirs, symlinks, a
/// fifo, a socket, hard links, xattrs, setuid, ns times (and a char device as root).
pub fn make_fixture(root: &Path) {
    fs::create_dir_all(root.join("dir/sub/deeper")).unwrap();
    fs::create_dir(root.join("empty-dir")).unwrap();
    fs::write(root.join("small.txt"), b"hello, world\n").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("exactly-inline"), bytes(1, 4096)).unwrap();
    fs::write(root.join("just-over"), bytes(2, 4097)).unwrap();
    fs::write(root.join("dir/large.bin"), bytes(3, 3 << 20 | 17)).unwrap();
    fs::write(root.join("dir/sub/deeper/deep.txt"), b"deep").unwrap();
    fs::write(root.join("dir/hard1"), bytes(4, 10_000)).unwrap();
    fs::hard_link(root.join("dir/hard1"), root.join("dir/sub/hard2")).unwrap();
    fs::hard_link(root.join("dir/hard1"), root.join("hard3")).unwrap();
    fs::write(root.join("inline-link-a"), b"tiny").unwrap();
    fs::hard_link(root.join("inline-link-a"), root.join("inline-link-b")).unwrap();
    std::os::unix::fs::symlink("../small.txt", root.join("dir/rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("dir", root.join("dir-link")).unwrap();
    mknod(&root.join("fifo"), libc::S_IFIFO | 0o640, 0);
    drop(std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap());
    fs::write(root.join("setuid"), bytes(5, 5000)).unwrap();
    fs::set_permissions(
        root.join("setuid"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    fs::set_permissions(
        root.join("dir/sub"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    fs::set_permissions(
        root.join("small.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    set_xattr(&root.join("small.txt"), "user.note", b"a note");
    set_xattr(&root.join("small.txt"), "user.empty", b"");
    set_xattr(&root.join("dir"), "user.dir", &bytes(6, 300));
    set_xattr(&root.join("just-over"), "user.bin", &[0, 1, 2, 255]);
    if is_root() {
        set_xattr(&root.join("dir/large.bin"), "trusted.stacko-test", b"t");
        mknod(
            &root.join("null-dev"),
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 3),
        );
        mknod(
            &root.join("blk-dev"),
            libc::S_IFBLK | 0o660,
            libc::makedev(7, 200),
        );
        let c = cstr(&root.join("dir/hard1"));
        assert_eq!(unsafe { libc::lchown(c.as_ptr(), 1234, 5678) }, 0);
    }
    set_all_times(root);
}

/// Gives every entry distinct ns times, directories after their children.
pub fn set_all_times(root: &Path) {
    let mut all = Vec::new();
    walk(root, &mut |p, _| all.push(p.to_path_buf()));
    // Deepest first so that directory times stick.
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        let i = i as i64;
        set_times(
            p,
            future_atime(i),
            (1_600_000_000 + i * 1000, 100_000_001 + i),
        );
    }
    set_times(root, future_atime(-1), (1_500_000_000, 42));
}

/// Calls `f` for every entry below `root` (not root itself), parents first, sorted.
pub fn walk(root: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) {
    let mut names: Vec<_> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        let m = fs::symlink_metadata(&p).unwrap();
        f(&p, &m);
        if m.is_dir() {
            walk(&p, f);
        }
    }
}

/// What ingest should make of `path`, computed independently of the store
/// (content left `Empty`; compared separately).
pub fn expected_node(path: &Path) -> Node {
    let m = fs::symlink_metadata(path).unwrap();
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_file() {
        NodeKind::File
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if ft.is_char_device() && m.rdev() == 0 {
        NodeKind::Whiteout
    } else if ft.is_char_device() {
        NodeKind::CharDev
    } else if ft.is_block_device() {
        NodeKind::BlockDev
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else {
        NodeKind::Socket
    };
    let all = get_xattrs(path);
    let opaque = kind == NodeKind::Dir
        && (all.iter().any(|x| {
            (x.name == b"trusted.overlay.opaque" || x.name == b"user.overlay.opaque")
                && x.value == b"y"
        }) || path.join(".wh..wh..opq").exists());
    let xattrs: Vec<Xattr> = all
        .into_iter()
        .filter(|x| {
            !x.name.starts_with(b"trusted.overlay.") && !x.name.starts_with(b"user.overlay.")
        })
        .collect();
    let size = match kind {
        NodeKind::File | NodeKind::Symlink => m.len(),
        _ => 0,
    };
    // Directories: 2 + subdirectories (what ext4 reports too).
    let nlink = m.nlink() as u32;
    Node {
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        atime: Timestamp {
            sec: m.atime(),
            nsec: m.atime_nsec() as u32,
        },
        mtime: Timestamp {
            sec: m.mtime(),
            nsec: m.mtime_nsec() as u32,
        },
        ctime: Timestamp {
            sec: m.ctime(),
            nsec: m.ctime_nsec() as u32,
        },
        size,
        rdev: if matches!(kind, NodeKind::CharDev | NodeKind::BlockDev) {
            m.rdev()
        } else {
            0
        },
        nlink,
        content: Content::Empty,
        xattrs,
        opaque,
    }
}

/// Snapshot of what a tree should become: relative path → expected node.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    out.insert(PathBuf::new(), expected_node(root));
    walk(root, &mut |p, _| {
        if p.file_name().map(|n| n.as_bytes()) != Some(b".wh..wh..opq") {
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                expected_node(p),
            );
        }
    });
    out
}

/// Every node of a layer by relative path (through the read API).
pub fn walk_layer(store: &Store, layer: LayerId) -> BTreeMap<PathBuf, (Ino, Node)> {
    let mut out = BTreeMap::new();
    let root = store.node(layer, ROOT_INO).unwrap().expect("root node");
    out.insert(PathBuf::new(), (ROOT_INO, root));
    let mut stack = vec![(PathBuf::new(), ROOT_INO)];
    while let Some((dir, ino)) = stack.pop() {
        let mut last: Option<Vec<u8>> = None;
        for e in store.read_dir(layer, ino, None) {
            let e = e.unwrap();
            if let Some(prev) = &last {
                assert!(prev < &e.name, "read_dir not sorted");
            }
            last = Some(e.name.clone());
            let node = store
                .node(layer, e.ino)
                .unwrap()
                .expect("entry names a node");
            assert_eq!(node.kind, e.kind, "entry kind");
            let p = dir.join(std::ffi::OsStr::from_bytes(&e.name));
            if node.kind == NodeKind::Dir {
                stack.push((p.clone(), e.ino));
            }
            out.insert(p, (e.ino, node));
        }
    }
    out
}

/// All of a node's content through the read API, in odd-sized chunks.
pub fn read_all(store: &Store, node: &Node) -> Vec<u8> {
    let reader = store.open_content(&node.content).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 70_001];
    loop {
        let n = reader.read_at(out.len() as u64, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// Object files on disk: (count, bytes), walked independently of the store.
pub fn objects_on_disk(home: &Path) -> (u64, u64) {
    let mut count = 0;
    let mut total = 0;
    for fan in fs::read_dir(home.join("objects")).unwrap() {
        let fan = fan.unwrap();
        if fan.file_name() == "tmp" {
            continue;
        }
        for obj in fs::read_dir(fan.path()).unwrap() {
            count += 1;
            total += obj.unwrap().metadata().unwrap().len();
        }
    }
    (count, total)
}

/// Files in `objects/tmp`.
pub fn temp_files(home: &Path) -> usize {
    fs::read_dir(home.join("objects/tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

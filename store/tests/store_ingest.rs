//! Ingest of real directory trees, read back through the read API.

mod store_common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use stacko_store::ingest::ingest_dir;
use stacko_store::progress::{NoProgress, Progress};
use stacko_store::{Content, Error, ImageState, Ino, Node, NodeKind, Store, INLINE_MAX, ROOT_INO};
use store_common::*;

#[derive(Default)]
struct Count {
    bytes: AtomicU64,
    files: AtomicU64,
}

impl Progress for Count {
    fn advance(&self, bytes: u64, files: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.files.fetch_add(files, Ordering::Relaxed);
    }
}

/// Compares every field of every node of `layer` with the snapshot of `src`.
fn assert_layer_matches(store: &Store, layer: u64, src: &Path, snap: &BTreeMap<PathBuf, Node>) {
    let got = walk_layer(store, layer);
    let got_paths: Vec<_> = got.keys().collect();
    let want_paths: Vec<_> = snap.keys().collect();
    assert_eq!(
        got_paths, want_paths,
        "the layer holds exactly the tree's names"
    );
    for (path, want) in snap {
        let (_, node) = &got[path];
        let mut meta = node.clone();
        meta.content = Content::Empty;
        assert_eq!(&meta, want, "metadata of {}", path.display());
        let full = src.join(path);
        match node.kind {
            NodeKind::File => {
                let data = fs::read(&full).unwrap();
                assert_eq!(read_all(store, node), data, "content of {}", path.display());
                match &node.content {
                    Content::Empty => assert!(data.is_empty()),
                    Content::Inline(b) => {
                        assert!(
                            !b.is_empty() && b.len() as u64 <= INLINE_MAX,
                            "{}",
                            path.display()
                        )
                    }
                    Content::Object(id) => {
                        assert!(data.len() as u64 > INLINE_MAX);
                        let m = fs::metadata(store.objects().path(id)).unwrap();
                        assert_eq!(m.len(), data.len() as u64);
                    }
                }
            }
            NodeKind::Symlink => {
                let target = fs::read_link(&full).unwrap();
                assert_eq!(store.readlink(node).unwrap(), target.as_os_str().as_bytes());
            }
            _ => assert_eq!(node.content, Content::Empty, "{}", path.display()),
        }
    }
}

fn ino_of(layer: &BTreeMap<PathBuf, (Ino, Node)>, p: &str) -> Ino {
    layer[Path::new(p)].0
}

#[test]
fn ingest_plain_tree_reads_back_every_field() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_fixture(&src);
    let snap = snapshot(&src);
    let store = Store::open(&tmp.path().join("home")).unwrap();
    let progress = Count::default();
    let summary = ingest_dir(&store, &src, &progress).unwrap();
    let img = store
        .commit_image("img", None, &summary, ImageState::Sealed)
        .unwrap();
    assert_layer_matches(&store, img.layer, &src, &snap);

    let layer = walk_layer(&store, img.layer);
    // Hard links stay hard links, of inline and object files alike.
    let h = ino_of(&layer, "dir/hard1");
    assert_eq!(ino_of(&layer, "dir/sub/hard2"), h);
    assert_eq!(ino_of(&layer, "hard3"), h);
    assert_eq!(layer[Path::new("dir/hard1")].1.nlink, 3);
    assert_eq!(
        ino_of(&layer, "inline-link-a"),
        ino_of(&layer, "inline-link-b")
    );
    if is_root() {
        let dev = &layer[Path::new("null-dev")].1;
        assert_eq!(
            (dev.kind, dev.rdev),
            (NodeKind::CharDev, libc::makedev(1, 3))
        );
        assert_eq!(layer[Path::new("dir/hard1")].1.uid, 1234);
    }
    assert_eq!(layer[Path::new("sock")].1.kind, NodeKind::Socket);
    assert_eq!(layer[Path::new("fifo")].1.kind, NodeKind::Fifo);
    assert_eq!(layer[Path::new("dir/sub")].1.mode, 0o750);
    assert_eq!(layer[Path::new("setuid")].1.mode, 0o4755);
    assert_eq!(layer[Path::new("")].1.mtime.nsec, 42);

    // Summary, image record and progress agree with the tree.
    let mut unique: BTreeMap<Ino, &Node> = BTreeMap::new();
    for (ino, node) in layer.values() {
        if node.kind != NodeKind::Dir {
            unique.insert(*ino, node);
        }
    }
    let bytes: u64 = unique
        .values()
        .filter(|n| n.kind == NodeKind::File)
        .map(|n| n.size)
        .sum();
    assert_eq!((summary.files, summary.bytes), (unique.len() as u64, bytes));
    assert_eq!((img.files, img.size), (unique.len() as u64, bytes));
    assert_eq!(
        progress.files.load(Ordering::Relaxed),
        snap.len() as u64 - 1
    );
    assert_eq!(temp_files(store.home()), 0);
}

#[test]
fn lookup_and_listing_from_a_cookie() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_fixture(&src);
    let store = Store::open(&tmp.path().join("home")).unwrap();
    let s = ingest_dir(&store, &src, &NoProgress).unwrap();
    let img = store
        .commit_image("img", None, &s, ImageState::Sealed)
        .unwrap();
    let l = img.layer;

    let dir = store.lookup(l, ROOT_INO, b"dir").unwrap().expect("dir");
    assert_eq!(dir.kind, NodeKind::Dir);
    assert!(store.lookup(l, ROOT_INO, b"missing").unwrap().is_none());
    assert!(
        store.lookup(l, dir.ino, b"small.txt").unwrap().is_none(),
        "lookup stays in its directory"
    );

    let mut want: Vec<Vec<u8>> = fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    want.sort();
    let all: Vec<Vec<u8>> = store
        .read_dir(l, ROOT_INO, None)
        .map(|e| e.unwrap().name)
        .collect();
    assert_eq!(all, want);
    for (i, name) in want.iter().enumerate() {
        let rest: Vec<Vec<u8>> = store
            .read_dir(l, ROOT_INO, Some(name))
            .map(|e| e.unwrap().name)
            .collect();
        assert_eq!(
            rest,
            want[i + 1..].to_vec(),
            "listing after {:?}",
            String::from_utf8_lossy(name)
        );
    }
    // A cookie that is not a name (removed meanwhile) still resumes in order.
    let rest: Vec<Vec<u8>> = store
        .read_dir(l, ROOT_INO, Some(b"dir-linj~"))
        .map(|e| e.unwrap().name)
        .collect();
    assert_eq!(rest.first().map(Vec::as_slice), Some(&b"dir-link"[..]));
    // An empty directory lists nothing, and nothing of its neighbours.
    let empty = store.lookup(l, ROOT_INO, b"empty-dir").unwrap().unwrap();
    assert_eq!(store.read_dir(l, empty.ino, None).count(), 0);

    // Byte ranges of an object file.
    let large = store.lookup(l, dir.ino, b"large.bin").unwrap().unwrap();
    let node = store.node(l, large.ino).unwrap().unwrap();
    let data = fs::read(src.join("dir/large.bin")).unwrap();
    let mut buf = vec![0u8; 1000];
    assert_eq!(store.read(&node, 1 << 20, &mut buf).unwrap(), 1000);
    assert_eq!(buf, data[1 << 20..(1 << 20) + 1000]);
    assert_eq!(
        store.read(&node, data.len() as u64 - 10, &mut buf).unwrap(),
        10
    );
    assert_eq!(
        store.read(&node, data.len() as u64 + 10, &mut buf).unwrap(),
        0
    );
    // And of an inline one.
    let small = store.lookup(l, ROOT_INO, b"small.txt").unwrap().unwrap();
    let node = store.node(l, small.ino).unwrap().unwrap();
    assert_eq!(store.read(&node, 7, &mut buf).unwrap(), 6);
    assert_eq!(&buf[..6], b"world\n");
    assert_eq!(store.read(&node, 100, &mut buf).unwrap(), 0);
    assert_eq!(store.xattrs(l, small.ino).unwrap().unwrap().len(), 2);
    assert!(store.readlink(&node).is_err(), "readlink of a file");
}

#[test]
fn ingest_overlay_upper_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let up = tmp.path().join("upper");
    fs::create_dir_all(up.join("opq-xattr/inner")).unwrap();
    fs::create_dir_all(up.join("opq-marker")).unwrap();
    fs::create_dir_all(up.join("plain")).unwrap();
    fs::create_dir_all(up.join("not-opaque")).unwrap();
    mknod(&up.join("gone"), libc::S_IFCHR, 0);
    mknod(&up.join("plain/gone-too"), libc::S_IFCHR, 0);
    set_xattr(&up.join("opq-xattr"), "user.overlay.opaque", b"y");
    fs::write(up.join("opq-xattr/inner/f"), b"f").unwrap();
    fs::write(up.join("opq-marker/.wh..wh..opq"), b"").unwrap();
    fs::write(up.join("opq-marker/kept"), b"kept").unwrap();
    set_xattr(&up.join("plain"), "user.overlay.origin", b"\x00garbage");
    set_xattr(&up.join("plain"), "user.keep", b"1");
    set_xattr(&up.join("not-opaque"), "user.overlay.opaque", b"x");
    if is_root() {
        fs::create_dir(up.join("opq-trusted")).unwrap();
        set_xattr(&up.join("opq-trusted"), "trusted.overlay.opaque", b"y");
        set_xattr(&up.join("plain"), "trusted.overlay.redirect", b"/elsewhere");
    }
    set_all_times(&up);
    let snap = snapshot(&up);
    let store = Store::open(&tmp.path().join("home")).unwrap();
    let s = ingest_dir(&store, &up, &NoProgress).unwrap();
    let img = store
        .commit_image("upper", None, &s, ImageState::Sealed)
        .unwrap();
    assert_layer_matches(&store, img.layer, &up, &snap);

    let layer = walk_layer(&store, img.layer);
    let node = |p: &str| layer[Path::new(p)].1.clone();
    assert_eq!(node("gone").kind, NodeKind::Whiteout);
    assert_eq!(node("gone").st_mode() & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(node("plain/gone-too").kind, NodeKind::Whiteout);
    assert!(node("opq-xattr").opaque);
    assert!(node("opq-marker").opaque);
    assert!(!node("plain").opaque && !node("not-opaque").opaque && !node("").opaque);
    assert!(!layer.contains_key(Path::new("opq-marker/.wh..wh..opq")));
    let plain = node("plain");
    let names: Vec<&[u8]> = plain.xattrs.iter().map(|x| x.name.as_slice()).collect();
    assert_eq!(names, vec![&b"user.keep"[..]], "overlay xattrs are dropped");
    assert!(node("opq-xattr").xattrs.is_empty());
    if is_root() {
        assert!(node("opq-trusted").opaque);
        assert!(node("opq-trusted").xattrs.is_empty());
    }
}

#[test]
fn ingest_refuses_what_is_not_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("home")).unwrap();
    let file = tmp.path().join("file");
    fs::write(&file, b"x").unwrap();
    let err = ingest_dir(&store, &file, &NoProgress).unwrap_err();
    assert!(matches!(err, Error::BadInput(_)), "{err}");
    let missing = tmp.path().join("missing");
    let err = ingest_dir(&store, &missing, &NoProgress).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(
        store.layer_records().unwrap().is_empty(),
        "nothing left behind"
    );
}

#[test]
fn unreadable_file_is_named_and_nothing_is_left() {
    if unsafe { libc::geteuid() } == 0 {
        // Root (in any user namespace) reads everything; run this as an unprivileged user to exercise it.
        eprintln!("skipped: running as root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), bytes(1, 10_000)).unwrap();
    fs::write(src.join("secret"), b"x").unwrap();
    fs::set_permissions(
        src.join("secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    let store = Store::open(&tmp.path().join("home")).unwrap();
    let err = ingest_dir(&store, &src, &NoProgress).unwrap_err();
    assert!(err.to_string().contains("secret"), "{err}");
    assert!(store.layer_records().unwrap().is_empty());
    assert_eq!(objects_on_disk(store.home()).0, 0);
    assert_eq!(temp_files(store.home()), 0);
}

#[test]
fn wide_directory_lists_in_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("home")).unwrap();
    let mut b = store.layer_builder().unwrap();
    let n = 10_000u32;
    for i in (0..n).rev() {
        let name = format!("f{i:05}");
        b.add_file(
            ROOT_INO,
            name.as_bytes(),
            Node::new(NodeKind::File, 0o644),
            &mut &name.as_bytes()[..],
        )
        .unwrap();
    }
    // Entries flushed in earlier batches and the pending ones are all visible.
    assert!(b.lookup(ROOT_INO, b"f09999").unwrap().is_some());
    assert!(b.lookup(ROOT_INO, b"f00000").unwrap().is_some());
    let s = b.finish().unwrap();
    assert_eq!(s.files, n as u64);
    let img = store
        .commit_image("wide", None, &s, ImageState::Sealed)
        .unwrap();
    let mut seen = Vec::new();
    let mut cookie: Option<Vec<u8>> = None;
    loop {
        let page: Vec<_> = store
            .read_dir(img.layer, ROOT_INO, cookie.as_deref())
            .take(97)
            .map(|e| e.unwrap())
            .collect();
        let Some(last) = page.last() else { break };
        cookie = Some(last.name.clone());
        seen.extend(page.into_iter().map(|e| e.name));
    }
    let want: Vec<Vec<u8>> = (0..n).map(|i| format!("f{i:05}").into_bytes()).collect();
    assert_eq!(seen, want);
    let e = store
        .lookup(img.layer, ROOT_INO, b"f01234")
        .unwrap()
        .unwrap();
    let node = store.node(img.layer, e.ino).unwrap().unwrap();
    assert_eq!(read_all(&store, &node), b"f01234");
}

/// Files of a MiB and more take the in-kernel copy path (`copy_file_range`
/// while another thread hashes): content, digest and dedup must be exactly
/// those of the streamed path.
#[test]
fn large_files_are_copied_in_kernel_and_hashed_right() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, src) = (tmp.path().join("home"), tmp.path().join("src"));
    fs::create_dir(&src).unwrap();
    // Sizes around the chunk and buffer boundaries of the copy and the hash.
    let sizes = [1 << 20, (1 << 20) + 1, 3 * (1 << 20) - 7, (64 << 20) + 4097];
    for (i, len) in sizes.iter().enumerate() {
        fs::write(src.join(format!("f{i}")), bytes(i as u64 + 7, *len)).unwrap();
    }
    fs::write(src.join("same"), bytes(7, sizes[0])).unwrap(); // = f0
    let store = Store::open(&home).unwrap();
    let layer = ingest_dir(&store, &src, &NoProgress).unwrap();
    store
        .commit_image("big", None, &layer, ImageState::Sealed)
        .unwrap();
    let nodes = walk_layer(&store, layer.layer);
    for (i, len) in sizes.iter().enumerate() {
        let (_, node) = &nodes[Path::new(&format!("f{i}"))];
        let want = bytes(i as u64 + 7, *len);
        let Content::Object(id) = &node.content else {
            panic!("f{i} is not an object: {:?}", node.content)
        };
        assert_eq!(id.0, *blake3::hash(&want).as_bytes(), "digest of f{i}");
        assert_eq!(node.size, *len as u64);
        assert_eq!(read_all(&store, node), want, "content of f{i}");
    }
    assert_eq!(
        nodes[Path::new("same")].1.content,
        nodes[Path::new("f0")].1.content
    );
    let total: u64 = sizes.iter().map(|&l| l as u64).sum();
    assert_eq!(objects_on_disk(&home), (sizes.len() as u64, total));
    assert_eq!(temp_files(&home), 0);
}

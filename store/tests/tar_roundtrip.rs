//! Tar import → export → import keeps the tree: every node field but ctime,
//! names, hard-link structure, xattrs, whiteouts and opaque flags; and
//! export is deterministic.

mod tar_support;

use stacko_store::{NodeKind, ROOT_INO};
use tar_support::*;

/// A tree using everything a layer can hold.
fn rich_entries() -> Vec<E> {
    let big: Vec<u8> = noise(10_000, 1);
    let long_dir = format!("deep/{}", "d".repeat(90));
    let long_file = format!("{long_dir}/{}", "f".repeat(60)); // > 100 bytes
    vec![
        E::dir("./").mode(0o750).owner(0, 0).mtime("1600000000.5"),
        E::dir("etc/").xattr("user.comment", "etc dir"),
        E::file("etc/hosts", "127.0.0.1 localhost\n")
            .mtime("1700000001.000000001")
            .atime("1700000002.999999999"),
        E::file("etc/empty", ""),
        E::file("big.bin", &big)
            .mode(0o4755)
            .owner(3_000_000, 3_000_001),
        E::file("xattrs", "x")
            .xattr("user.plain", "value")
            .xattr("user.binary", b"line1\nline2\n\x00\xff=")
            .xattr("security.capability", [1u8, 0, 0, 2, 0x0a, 0, 0, 0])
            .xattr("user.odd=name%", "odd"),
        E::symlink("etc/link", "../big.bin"),
        E::symlink("dangling", "/nowhere/at/all"),
        E::hardlink("big.hardlink", "big.bin"),
        E::hardlink("etc/hosts.2", "etc/hosts"),
        E::hardlink("etc/hosts.3", "./etc/hosts"),
        E::fifo("run.fifo").mode(0o600),
        E::chardev("null", 1, 3).mode(0o666),
        E::file(".wh.gone", ""),
        E::dir("opaque/").mode(0o700),
        E::file("opaque/.wh..wh..opq", ""),
        E::file("opaque/kept", "kept"),
        E::file(&long_file, "long name"),
        E::file(b"bin\xff\xfename", "not utf-8"),
        E::file("old", "before the epoch").mtime("-1.25"),
        E::file("implicit/parent/file", "parents not listed"),
    ]
}

fn rich_archive() -> Vec<u8> {
    archive(&rich_entries())
}

/// What the rich tree must look like once imported: checks the import
/// itself, so that a round trip of a wrongly imported tree cannot pass.
fn check_rich(snap: &Snapshot) {
    let root = &snap[&b""[..]];
    assert_eq!((root.mode, root.uid, root.gid), (0o750, 0, 0));
    assert_eq!(root.mtime, ts(1_600_000_000, 500_000_000));
    let hosts = &snap[&b"etc/hosts"[..]];
    assert_eq!(hosts.data, b"127.0.0.1 localhost\n");
    assert_eq!(hosts.mtime, ts(1_700_000_001, 1));
    assert_eq!(hosts.atime, ts(1_700_000_002, 999_999_999));
    assert_eq!((hosts.uid, hosts.gid, hosts.mode), (1000, 100, 0o644));
    assert_eq!(hosts.nlink, 3);
    assert_eq!(
        snap[&b"etc/hosts.2"[..]].link_group,
        Some(b"etc/hosts".to_vec())
    );
    assert_eq!(
        snap[&b"etc/hosts.3"[..]].link_group,
        Some(b"etc/hosts".to_vec())
    );
    let big = &snap[&b"big.bin"[..]];
    assert_eq!(big.data, noise(10_000, 1));
    assert_eq!(
        (big.size, big.mode, big.uid, big.gid),
        (10_000, 0o4755, 3_000_000, 3_000_001)
    );
    assert_eq!(big.nlink, 2);
    assert_eq!(
        snap[&b"big.hardlink"[..]].link_group,
        Some(b"big.bin".to_vec())
    );
    assert_eq!(snap[&b"etc/empty"[..]].size, 0);
    let x = &snap[&b"xattrs"[..]];
    let names: Vec<&[u8]> = x.xattrs.iter().map(|x| &x.name[..]).collect();
    assert_eq!(
        names,
        vec![
            &b"security.capability"[..],
            b"user.binary",
            b"user.odd=name%",
            b"user.plain"
        ]
    );
    assert_eq!(x.xattrs[1].value, b"line1\nline2\n\x00\xff=");
    assert_eq!(snap[&b"etc"[..]].xattrs[0].value, b"etc dir");
    let link = &snap[&b"etc/link"[..]];
    assert_eq!(
        (link.kind, &link.data[..], link.size),
        (NodeKind::Symlink, &b"../big.bin"[..], 10)
    );
    assert_eq!(snap[&b"run.fifo"[..]].kind, NodeKind::Fifo);
    let null = &snap[&b"null"[..]];
    assert_eq!(
        (null.kind, null.rdev, null.mode),
        (NodeKind::CharDev, libc::makedev(1, 3), 0o666)
    );
    let gone = &snap[&b"gone"[..]];
    assert_eq!((gone.kind, gone.mode), (NodeKind::Whiteout, 0));
    assert!(!snap.contains_key(&b".wh.gone"[..]));
    assert!(snap[&b"opaque"[..]].opaque);
    assert!(!snap.contains_key(&b"opaque/.wh..wh..opq"[..]));
    let long = format!("deep/{}/{}", "d".repeat(90), "f".repeat(60));
    assert_eq!(snap[long.as_bytes()].data, b"long name");
    assert_eq!(snap[&b"bin\xff\xfename"[..]].data, b"not utf-8");
    assert_eq!(snap[&b"old"[..]].mtime, ts(-2, 750_000_000));
    let implicit = &snap[&b"implicit/parent"[..]];
    assert_eq!(
        (implicit.kind, implicit.mode, implicit.uid),
        (NodeKind::Dir, 0o755, 0)
    );
    assert_eq!(snap[&b"implicit"[..]].nlink, 3);
}

fn round_trip(input: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let first = import_as(&store, "first", None, input);
    let snap1 = snapshot(&store, first);
    check_rich(&snap1);

    let exported = export(&store, &[first], false);
    let second = import_as(&store, "second", None, &exported);
    assert_eq!(snapshot(&store, second), snap1);

    // Same store state, same bytes; and the re-imported layer exports the same.
    assert_eq!(export(&store, &[first], false), exported);
    assert_eq!(export(&store, &[second], false), exported);
}

#[test]
fn plain_archive_round_trips() {
    round_trip(&rich_archive());
}

#[test]
fn gzip_archive_round_trips() {
    round_trip(&gzip(&rich_archive()));
}

#[test]
fn zstd_archive_round_trips() {
    round_trip(&zstd(&rich_archive()));
}

#[test]
fn export_writes_oci_markers_and_hard_links() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let layer = import_as(&store, "img", None, &rich_archive());
    let list = listing(&export(&store, &[layer], false));
    let has = |path: &[u8], kind: u8| list.iter().any(|(p, k)| p == path && *k == kind);
    assert_eq!(list[0], (b"./".to_vec(), b'5'));
    assert!(has(b".wh.gone", b'0'));
    assert!(has(b"opaque/", b'5'));
    assert!(has(b"opaque/.wh..wh..opq", b'0'));
    let opq = list
        .iter()
        .position(|(p, _)| p == b"opaque/.wh..wh..opq")
        .unwrap();
    assert_eq!(
        list[opq - 1].0,
        b"opaque/",
        "the opaque marker follows its directory"
    );
    assert!(has(b"big.bin", b'0'));
    assert!(has(b"big.hardlink", b'1'));
    assert!(has(b"etc/hosts", b'0'));
    assert!(has(b"etc/hosts.2", b'1') && has(b"etc/hosts.3", b'1'));
    assert!(has(b"null", b'3') && has(b"run.fifo", b'6') && has(b"etc/link", b'2'));
    // Depth-first, names in byte order.
    let paths: Vec<&[u8]> = list.iter().map(|(p, _)| &p[..]).collect();
    let pos = |p: &[u8]| paths.iter().position(|q| *q == p).unwrap();
    assert!(pos(b"etc/") < pos(b"etc/empty") && pos(b"etc/empty") < pos(b"etc/hosts"));
    assert!(pos(b"etc/link") < pos(b"implicit/"));
    // Whiteouts sort by the name they hide ("gone"), not by their marker.
    assert!(pos(b"etc/link") < pos(b".wh.gone") && pos(b".wh.gone") < pos(b"implicit/"));
}

#[test]
fn gnu_sparse_entries_are_stored_expanded() {
    let dir = tempfile::tempdir().unwrap();
    let sparse = dir.path().join("sparse");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(&sparse).unwrap();
        f.set_len(1 << 20).unwrap();
        f.seek(SeekFrom::Start(512 * 1024)).unwrap();
        f.write_all(b"data in the middle").unwrap();
    }
    let mut b = tar::Builder::new(Vec::new());
    b.sparse(true);
    b.append_path_with_name(&sparse, "sparse").unwrap();
    let bytes = b.into_inner().unwrap();
    let kinds: Vec<u8> = listing(&bytes).into_iter().map(|(_, k)| k).collect();
    assert_eq!(
        kinds,
        vec![b'S'],
        "the filesystem made no hole: the test would prove nothing"
    );

    let store = open(&dir.path().join("store"));
    let layer = import_as(&store, "sparse", None, &bytes);
    let snap = snapshot(&store, layer);
    assert_eq!(snap[&b"sparse"[..]].data, std::fs::read(&sparse).unwrap());
    assert_eq!(snap[&b"sparse"[..]].size, 1 << 20);
}

#[test]
fn overlay_style_markers_in_a_tar_become_whiteouts_and_opaque_flags() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes = archive(&[
        E::chardev("wh", 0, 0),
        E::dir("d/")
            .xattr("trusted.overlay.opaque", "y")
            .xattr("user.overlay.origin", "x")
            .xattr("user.kept", "1"),
    ]);
    let layer = import_as(&store, "ov", None, &bytes);
    let snap = snapshot(&store, layer);
    assert_eq!(snap[&b"wh"[..]].kind, NodeKind::Whiteout);
    let d = &snap[&b"d"[..]];
    assert!(d.opaque);
    assert_eq!(d.xattrs.len(), 1);
    assert_eq!(d.xattrs[0].name, b"user.kept");
}

#[test]
fn a_directory_listed_after_its_children_takes_its_own_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes = archive(&[
        E::file("a/b/c", "c"),
        E::dir("a/b/").mode(0o711).owner(5, 6).mtime("1234.5"),
        E::dir("a/b").mode(0o701), // listed twice: the later entry wins
    ]);
    let layer = import_as(&store, "late", None, &bytes);
    let snap = snapshot(&store, layer);
    let b = &snap[&b"a/b"[..]];
    assert_eq!((b.mode, b.uid, b.gid), (0o701, 1000, 100));
    assert_eq!(b.nlink, 2);
    assert_eq!(snap[&b"a"[..]].nlink, 3);
    assert_eq!(store.node(layer, ROOT_INO).unwrap().unwrap().nlink, 3);
}

#[test]
fn blank_numeric_fields_read_as_zero() {
    // Some writers (the tar crate's bare headers among them) leave uid, gid
    // and mtime as NULs.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o600);
    h.set_size(2);
    h.set_path("f").unwrap();
    h.set_cksum();
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend_from_slice(b"hi");
    bytes.resize(512 * 2, 0);
    end(&mut bytes);
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let snap = snapshot(&store, import_as(&store, "blank", None, &bytes));
    let f = &snap[&b"f"[..]];
    assert_eq!((f.uid, f.gid, f.mode, f.mtime), (0, 0, 0o600, ts(0, 0)));
    assert_eq!(f.data, b"hi");
}

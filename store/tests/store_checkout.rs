//! Checkouts in kernel overlayfs lowerdir format: they match the layer,
//! share file data with the object directory, and mount.

mod store_common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use stacko_store::checkout::checkout;
use stacko_store::ingest::ingest_dir;
use stacko_store::progress::NoProgress;
use stacko_store::{Content, Error, ImageState, LayerId, NodeKind, Store};
use store_common::*;

/// Inode numbers of every file in the variants directory and the object directory.
fn shared_inodes(home: &Path) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    let variants = home.join("checkouts/.variants");
    if let Ok(d) = fs::read_dir(&variants) {
        for e in d {
            out.insert(e.unwrap().metadata().unwrap().ino());
        }
    }
    for fan in fs::read_dir(home.join("objects")).unwrap() {
        for obj in fs::read_dir(fan.unwrap().path()).unwrap() {
            out.insert(obj.unwrap().metadata().unwrap().ino());
        }
    }
    out
}

fn import(store: &Store, src: &Path, name: &str, parent: Option<&str>) -> LayerId {
    let s = ingest_dir(store, src, &NoProgress).unwrap();
    store
        .commit_image(name, parent, &s, ImageState::Sealed)
        .unwrap()
        .layer
}

/// Checks that the checkout at `co` shows exactly the layer.
fn assert_checkout_matches(store: &Store, layer: LayerId, co: &Path) {
    let nodes = walk_layer(store, layer);
    let snap = snapshot(co);
    let got: Vec<&PathBuf> = snap.keys().collect();
    let want: Vec<&PathBuf> = nodes.keys().collect();
    assert_eq!(got, want, "same names");
    let shared = shared_inodes(store.home());
    for (path, (ino, node)) in &nodes {
        let disk = &snap[path];
        let full = co.join(path);
        let what = path.display();
        assert_eq!(disk.kind, node.kind, "{what}");
        assert_eq!(disk.opaque, node.opaque, "{what}");
        assert_eq!(disk.xattrs, node.xattrs, "{what}");
        assert_eq!(disk.mtime, node.mtime, "{what}");
        assert_eq!(disk.rdev, node.rdev, "{what}");
        if node.kind != NodeKind::Symlink {
            assert_eq!(disk.mode, node.mode, "{what}");
        }
        if is_root() {
            assert_eq!((disk.uid, disk.gid), (node.uid, node.gid), "{what}");
        }
        match node.kind {
            NodeKind::File => assert_eq!(fs::read(&full).unwrap(), read_all(store, node), "{what}"),
            NodeKind::Symlink => {
                assert_eq!(
                    fs::read_link(&full).unwrap().as_os_str().as_bytes(),
                    store.readlink(node).unwrap()
                )
            }
            NodeKind::Dir => assert_eq!(disk.nlink, node.nlink, "{what}"),
            _ => {}
        }
        let m = fs::symlink_metadata(&full).unwrap();
        if let Content::Object(_) = node.content {
            assert!(m.nlink() > 1, "{what} is linked, not copied");
            assert!(
                shared.contains(&m.ino()),
                "{what} is the object or a variant"
            );
        }
        if node.nlink > 1 && node.kind != NodeKind::Dir {
            for (other, (other_ino, _)) in &nodes {
                if other_ino == ino {
                    let om = fs::symlink_metadata(co.join(other)).unwrap();
                    assert_eq!(
                        om.ino(),
                        m.ino(),
                        "hard links {what} and {}",
                        other.display()
                    );
                }
            }
        }
    }
}

fn fixture_with_overlay_bits(src: &Path) {
    make_fixture(src);
    mknod(&src.join("dir/whited-out"), libc::S_IFCHR, 0);
    fs::create_dir(src.join("opaque")).unwrap();
    set_xattr(&src.join("opaque"), "user.overlay.opaque", b"y");
    fs::write(src.join("opaque/f"), bytes(77, 6000)).unwrap();
    fs::set_permissions(
        src.join("dir/sub/deeper"),
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .unwrap();
    set_all_times(src);
}

#[test]
fn checkout_matches_the_layer_and_links_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fixture_with_overlay_bits(&src);
    let home = tmp.path().join("home");
    let store = Store::open(&home).unwrap();
    let layer = import(&store, &src, "img", None);
    let co = store.checkouts_dir().join("one");
    checkout(&store, layer, &co, &NoProgress).unwrap();
    assert_checkout_matches(&store, layer, &co);
    let wh = fs::symlink_metadata(co.join("dir/whited-out")).unwrap();
    assert_eq!((wh.mode() & libc::S_IFMT, wh.rdev()), (libc::S_IFCHR, 0));
    let opq = get_xattrs(&co.join("opaque"));
    assert!(opq
        .iter()
        .any(|x| x.name == b"user.overlay.opaque" && x.value == b"y"));
    if is_root() {
        assert!(opq
            .iter()
            .any(|x| x.name == b"trusted.overlay.opaque" && x.value == b"y"));
    }

    // A second checkout of the same layer shares every object-backed inode.
    let co2 = store.checkouts_dir().join("two");
    checkout(&store, layer, &co2, &NoProgress).unwrap();
    assert_checkout_matches(&store, layer, &co2);
    for p in [
        "dir/large.bin",
        "just-over",
        "setuid",
        "dir/hard1",
        "opaque/f",
    ] {
        let a = fs::metadata(co.join(p)).unwrap();
        let b = fs::metadata(co2.join(p)).unwrap();
        assert_eq!(a.ino(), b.ino(), "{p}");
    }
    // Inline files are written, not shared.
    assert_ne!(
        fs::metadata(co.join("small.txt")).unwrap().ino(),
        fs::metadata(co2.join("small.txt")).unwrap().ino()
    );
    // No temp directory is left beside the checkouts.
    let names: BTreeSet<String> = fs::read_dir(store.checkouts_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [".variants", "one", "two"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );

    let err = checkout(&store, layer, &co, &NoProgress).unwrap_err();
    assert!(matches!(err, Error::Exists { .. }), "{err}");
}

#[test]
fn differing_metadata_gets_its_own_variant() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bytes(5, 100_000);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (dir, mode) in [(&a, 0o755), (&b, 0o640)] {
        fs::create_dir(dir).unwrap();
        fs::write(dir.join("f"), &data).unwrap();
        fs::write(dir.join("g"), &data).unwrap();
        fs::write(dir.join("h"), &data).unwrap();
        set_times(&dir.join("h"), (1, 0), (2_000_000, 7));
        fs::set_permissions(
            dir.join("f"),
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .unwrap();
        set_times(&dir.join("f"), (1, 0), (1_000_000, 5));
        set_times(&dir.join("g"), (1, 0), (1_000_000, 5));
    }
    set_xattr(&b.join("g"), "user.extra", b"1");
    let home = tmp.path().join("home");
    let store = Store::open(&home).unwrap();
    let la = import(&store, &a, "a", None);
    let lb = import(&store, &b, "b", None);
    let (ca, cb) = (
        store.checkouts_dir().join("a"),
        store.checkouts_dir().join("b"),
    );
    checkout(&store, la, &ca, &NoProgress).unwrap();
    checkout(&store, lb, &cb, &NoProgress).unwrap();
    assert_checkout_matches(&store, la, &ca);
    assert_checkout_matches(&store, lb, &cb);
    let ino = |p: &Path| fs::metadata(p).unwrap().ino();
    // Same content with other metadata: other inodes, each right.
    assert_ne!(ino(&ca.join("f")), ino(&cb.join("f")));
    assert_ne!(ino(&ca.join("g")), ino(&cb.join("g")));
    // Same content and metadata in two images: one inode.
    assert_eq!(ino(&ca.join("h")), ino(&cb.join("h")));
    assert_eq!(fs::metadata(cb.join("f")).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(fs::metadata(ca.join("f")).unwrap().mode() & 0o7777, 0o755);
    for p in [ca.join("f"), ca.join("g"), cb.join("f"), cb.join("g")] {
        assert_eq!(fs::read(&p).unwrap(), data);
    }
    // One object on disk; at most one variant took the object's inode.
    assert_eq!(objects_on_disk(&home).0, 1);
    let obj_ino = {
        let fan = fs::read_dir(home.join("objects"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| !p.ends_with("tmp"))
            .unwrap();
        let obj = fs::read_dir(fan).unwrap().next().unwrap().unwrap().path();
        ino(&obj)
    };
    let claimed = [ca.join("f"), ca.join("g"), cb.join("f"), cb.join("g")]
        .iter()
        .filter(|p| ino(p) == obj_ino)
        .count();
    assert!(claimed <= 1, "{claimed} files share the object inode");

    // Unused variants go at the next open; used ones stay.
    fs::remove_dir_all(&ca).unwrap();
    drop(store);
    let store = Store::open(&home).unwrap();
    assert_checkout_matches(&store, lb, &cb);
    let variants = fs::read_dir(home.join("checkouts/.variants"))
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".claim")
        })
        .count();
    assert_eq!(variants, 3, "the three variants of b stay");
    fs::remove_dir_all(&cb).unwrap();
    drop(store);
    let _store = Store::open(&home).unwrap();
    assert_eq!(
        fs::read_dir(home.join("checkouts/.variants"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn checkouts_mount_as_overlay_lower_layers() {
    if !is_root() {
        eprintln!("skipped: mounting overlayfs needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (base, top) = (tmp.path().join("base"), tmp.path().join("top"));
    fs::create_dir_all(base.join("d")).unwrap();
    fs::write(base.join("a"), b"a").unwrap();
    fs::write(base.join("b"), bytes(1, 9000)).unwrap();
    fs::write(base.join("d/x"), b"x").unwrap();
    fs::create_dir_all(top.join("d")).unwrap();
    mknod(&top.join("a"), libc::S_IFCHR, 0);
    set_xattr(&top.join("d"), "user.overlay.opaque", b"y");
    fs::write(top.join("d/y"), b"y").unwrap();
    let store = Store::open(&tmp.path().join("home")).unwrap();
    let lb = import(&store, &base, "base", None);
    let lt = import(&store, &top, "top", Some("base"));
    let (cb, ct) = (
        store.checkouts_dir().join("base"),
        store.checkouts_dir().join("top"),
    );
    checkout(&store, lb, &cb, &NoProgress).unwrap();
    checkout(&store, lt, &ct, &NoProgress).unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    for opts in [
        format!("userxattr,lowerdir={}:{}", ct.display(), cb.display()),
        format!("lowerdir={}:{}", ct.display(), cb.display()),
    ] {
        let ok = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&mnt)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("skipped: mount -t overlay -o {opts} failed here");
            continue;
        }
        let seen = (
            mnt.join("a").exists(),
            fs::read(mnt.join("b")).ok(),
            mnt.join("d/x").exists(),
            fs::read(mnt.join("d/y")).ok(),
        );
        let _ = Command::new("umount").arg(&mnt).status();
        assert_eq!(
            seen,
            (false, Some(bytes(1, 9000)), false, Some(b"y".to_vec())),
            "with {opts}"
        );
    }
}

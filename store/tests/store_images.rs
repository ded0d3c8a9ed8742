//! Image records, transactions, deduplication, deletion, garbage
//! collection and the lock.

mod store_common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

use stacko_store::ingest::{ingest_dir, LayerSummary};
use stacko_store::progress::NoProgress;
use stacko_store::store::StoreOptions;
use stacko_store::{Error, ImageState, LayerState, Node, NodeKind, Store, INLINE_MAX, ROOT_INO};
use store_common::*;

fn open(home: &Path) -> Store {
    Store::open(home).unwrap()
}

fn ingest(store: &Store, src: &Path) -> LayerSummary {
    ingest_dir(store, src, &NoProgress).unwrap()
}

/// Writes `files` (name → content) under `dir`.
fn write_tree(dir: &Path, files: &[(&str, Vec<u8>)]) {
    for (name, data) in files {
        let p = dir.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
}

#[test]
fn image_lifecycle_and_bad_names() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let base = store.create_image("base", None).unwrap();
    assert_eq!(
        (base.state, base.parent.as_deref(), base.files),
        (ImageState::Open, None, 0)
    );
    let root = store.node(base.layer, ROOT_INO).unwrap().unwrap();
    assert_eq!(
        (root.kind, root.mode, root.nlink),
        (NodeKind::Dir, 0o755, 2)
    );
    assert_eq!(store.read_dir(base.layer, ROOT_INO, None).count(), 0);

    let sealed = store.set_image_state("base", ImageState::Sealed).unwrap();
    assert_eq!(sealed.state, ImageState::Sealed);
    store.create_image("app", Some("base")).unwrap();
    store.create_image("app2", Some("app")).unwrap();
    let chain: Vec<String> = store
        .image_chain("app2")
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(chain, ["app2", "app", "base"]);
    let names: Vec<String> = store
        .images()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["app", "app2", "base"]);

    let long = "x".repeat(256);
    for bad in ["", "a/b", ".", "..", long.as_str(), "-x", "a\nb"] {
        let err = store.create_image(bad, None).unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{bad:?}: {err}");
    }
    assert!(store.create_image(&"y".repeat(255), None).is_ok());
    let err = store.create_image("base", None).unwrap_err();
    assert!(matches!(err, Error::Exists { what: "image", .. }), "{err}");
    let err = store.create_image("c", Some("nope")).unwrap_err();
    assert!(
        matches!(err, Error::NotFound { what: "image", ref name } if name == "nope"),
        "{err}"
    );
    let err = store.set_image_state("nope", ImageState::Open).unwrap_err();
    assert!(
        matches!(err, Error::NotFound { what: "image", .. }),
        "{err}"
    );
    assert!(matches!(
        store.image_chain("nope").unwrap_err(),
        Error::NotFound { .. }
    ));

    let err = store.delete_image("base").unwrap_err();
    assert_eq!(
        err.to_string(),
        "image base has child image app; delete it first"
    );
    assert_eq!(err.errno(), libc::EBUSY);
    assert!(store.image("base").unwrap().is_some());
    store.delete_image("app2").unwrap();
    store.delete_image("app").unwrap();
    store.delete_image("base").unwrap();
    store.delete_image(&"y".repeat(255)).unwrap();
    assert!(matches!(
        store.delete_image("base").unwrap_err(),
        Error::NotFound { .. }
    ));
    assert!(store.images().unwrap().is_empty());
    assert!(
        store.layer_records().unwrap().is_empty(),
        "every layer went with its image"
    );
}

#[test]
fn failed_commit_discards_the_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_tree(&src, &[("big", bytes(1, 50_000))]);
    let store = open(&tmp.path().join("home"));
    store.create_image("taken", None).unwrap();
    let before = store.layer_records().unwrap();
    let s = ingest(&store, &src);
    let err = store
        .commit_image("taken", None, &s, ImageState::Sealed)
        .unwrap_err();
    assert!(matches!(err, Error::Exists { .. }));
    let s2 = ingest(&store, &src);
    let err = store
        .commit_image("new", Some("missing"), &s2, ImageState::Sealed)
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }));
    assert_eq!(store.layer_records().unwrap(), before, "store unchanged");
    assert_eq!(objects_on_disk(store.home()), (0, 0));
    // A summary cannot be committed twice, nor after it was discarded.
    let s3 = ingest(&store, &src);
    store
        .commit_image("ok", None, &s3, ImageState::Sealed)
        .unwrap();
    let err = store
        .commit_image("again", None, &s3, ImageState::Sealed)
        .unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    assert!(store.image("again").unwrap().is_none());
    assert_eq!(
        objects_on_disk(store.home()).0,
        1,
        "the committed image keeps its object"
    );
}

#[test]
fn dedup_stores_each_content_once() {
    let tmp = tempfile::tempdir().unwrap();
    let shared: Vec<Vec<u8>> = (0..5)
        .map(|i| bytes(100 + i, 5_000 + 1000 * i as usize))
        .collect();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    write_tree(
        &a,
        &[
            ("s0", shared[0].clone()),
            ("d/s1", shared[1].clone()),
            ("s2", shared[2].clone()),
            ("s3", shared[3].clone()),
            ("copy-of-s0", shared[0].clone()),
            ("only-a", bytes(1, 20_000)),
            ("small", b"small".to_vec()),
        ],
    );
    write_tree(
        &b,
        &[
            ("other/name0", shared[0].clone()),
            ("s1", shared[1].clone()),
            ("s2", shared[2].clone()),
            ("x/y/s4", shared[4].clone()),
            ("only-b", bytes(2, 30_000)),
            ("small", b"small".to_vec()),
        ],
    );
    fs::set_permissions(
        b.join("s2"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let home = tmp.path().join("home");
    let store = open(&home);
    let sa = ingest(&store, &a);
    store
        .commit_image("a", None, &sa, ImageState::Sealed)
        .unwrap();
    let sb = ingest(&store, &b);
    store
        .commit_image("b", Some("a"), &sb, ImageState::Sealed)
        .unwrap();

    let mut unique: BTreeSet<Vec<u8>> = shared.iter().cloned().collect();
    unique.insert(bytes(1, 20_000));
    unique.insert(bytes(2, 30_000));
    let want = (
        unique.len() as u64,
        unique.iter().map(|u| u.len() as u64).sum::<u64>(),
    );
    assert_eq!(objects_on_disk(&home), want);
    assert_eq!(store.objects().total_bytes().unwrap(), want.1);
    // Sizes in the records are before dedup.
    let ra = store.image("a").unwrap().unwrap();
    assert_eq!(
        ra.size,
        shared[..4].iter().map(|s| s.len() as u64).sum::<u64>() + 5_000 + 20_000 + 5
    );
    assert_eq!(ra.files, 7);

    // Deleting b removes only what b alone used; a still reads everything.
    store.delete_image("a").unwrap_err();
    store.delete_image("b").unwrap();
    let mut left: BTreeSet<Vec<u8>> = shared[..4].iter().cloned().collect();
    left.insert(bytes(1, 20_000));
    assert_eq!(
        objects_on_disk(&home),
        (
            left.len() as u64,
            left.iter().map(|u| u.len() as u64).sum::<u64>()
        )
    );
    let layer = walk_layer(&store, ra.layer);
    for (path, (_, node)) in &layer {
        if node.kind == NodeKind::File {
            assert_eq!(
                read_all(&store, node),
                fs::read(a.join(path)).unwrap(),
                "{}",
                path.display()
            );
        }
    }
    store.delete_image("a").unwrap();
    assert_eq!(objects_on_disk(&home), (0, 0));
    drop(store);
    // Reopening finds nothing to collect.
    let store = open(&home);
    assert_eq!(store.collect_garbage().unwrap().layers, 0);
}

#[test]
fn replace_layer_swaps_and_releases_the_old_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let v1 = tmp.path().join("v1");
    let v2 = tmp.path().join("v2");
    write_tree(&v1, &[("keep", bytes(1, 9000)), ("drop", bytes(2, 9000))]);
    write_tree(&v2, &[("keep", bytes(1, 9000)), ("new", bytes(3, 9000))]);
    let home = tmp.path().join("home");
    let store = open(&home);
    let s1 = ingest(&store, &v1);
    let old = store
        .commit_image("img", None, &s1, ImageState::Open)
        .unwrap();
    let s2 = ingest(&store, &v2);
    let new = store.replace_layer("img", &s2, ImageState::Sealed).unwrap();
    assert_eq!(
        (new.layer, new.state, new.created),
        (s2.layer, ImageState::Sealed, old.created)
    );
    assert!(
        store.node(old.layer, ROOT_INO).unwrap().is_none(),
        "old layer purged"
    );
    assert_eq!(objects_on_disk(&home), (2, 18_000));
    let layers: Vec<_> = store
        .layer_records()
        .unwrap()
        .into_iter()
        .map(|(id, r)| (id, r.state))
        .collect();
    assert_eq!(layers, vec![(s2.layer, LayerState::Live)]);
    let s3 = ingest(&store, &v1);
    let err = store
        .replace_layer("nope", &s3, ImageState::Sealed)
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }));
    assert_eq!(store.layer_records().unwrap().len(), 1);
}

#[test]
fn builder_checks_and_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let mut b = store.layer_builder().unwrap();
    let d = b
        .add(ROOT_INO, b"d", Node::new(NodeKind::Dir, 0o755))
        .unwrap();
    let e = b.add(d, b"e", Node::new(NodeKind::Dir, 0o755)).unwrap();
    b.add(ROOT_INO, b"d2", Node::new(NodeKind::Dir, 0o700))
        .unwrap();
    let f = b
        .add_file(
            e,
            b"f",
            Node::new(NodeKind::File, 0o644),
            &mut &bytes(1, 5000)[..],
        )
        .unwrap();
    assert_eq!((d, e, f), (2, 3, 5), "inos are given out in order from 2");
    assert_eq!(b.node(ROOT_INO).unwrap().unwrap().nlink, 4);
    assert_eq!(b.node(d).unwrap().unwrap().nlink, 3);
    b.link(ROOT_INO, b"f-again", f).unwrap();
    assert_eq!(b.node(f).unwrap().unwrap().nlink, 2);
    assert!(matches!(
        b.add(ROOT_INO, b"d", Node::new(NodeKind::File, 0o644))
            .unwrap_err(),
        Error::Exists { .. }
    ));
    for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
        assert!(matches!(
            b.add(ROOT_INO, bad, Node::new(NodeKind::Fifo, 0o644))
                .unwrap_err(),
            Error::BadInput(_)
        ));
    }
    assert!(b
        .add(f, b"under-a-file", Node::new(NodeKind::Fifo, 0o644))
        .is_err());
    assert!(b.link(ROOT_INO, b"dir-link", d).is_err());
    assert!(b.update(f, Node::new(NodeKind::Dir, 0o755)).is_err());
    let mut link = Node::new(NodeKind::Symlink, 0o777);
    assert!(b.add(ROOT_INO, b"no-target", link.clone()).is_err());
    link.content = stacko_store::Content::Inline(b"target".to_vec());
    let l = b.add(ROOT_INO, b"link", link).unwrap();
    assert_eq!(b.node(l).unwrap().unwrap().size, 6);
    let mut upd = Node::new(NodeKind::Dir, 0o711);
    upd.opaque = true;
    b.update(d, upd).unwrap();
    let dn = b.node(d).unwrap().unwrap();
    assert_eq!((dn.mode, dn.opaque, dn.nlink), (0o711, true, 3));
    let s = b.finish().unwrap();
    assert_eq!((s.files, s.bytes), (2, 5000));
    let img = store
        .commit_image("x", None, &s, ImageState::Sealed)
        .unwrap();
    let rec = store.layer_records().unwrap();
    assert_eq!(rec[0].1.next_ino, 7);
    assert_eq!(rec[0].0, img.layer);
}

#[test]
fn dropped_builder_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let mut b = store.layer_builder().unwrap();
    for i in 0..5000u64 {
        b.add_file(
            ROOT_INO,
            format!("f{i}").as_bytes(),
            Node::new(NodeKind::File, 0o644),
            &mut &bytes(i, INLINE_MAX as usize + 1 + i as usize)[..],
        )
        .unwrap();
    }
    let layer = b.layer();
    let err = b
        .add(ROOT_INO, b"a/b", Node::new(NodeKind::Fifo, 0o644))
        .unwrap_err();
    assert!(matches!(err, Error::BadInput(_)));
    drop(b);
    assert!(store.layer_records().unwrap().is_empty());
    assert!(store.node(layer, ROOT_INO).unwrap().is_none());
    assert_eq!(objects_on_disk(store.home()), (0, 0));
    assert_eq!(temp_files(store.home()), 0);
}

#[test]
fn interrupted_layers_disappear_at_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_tree(
        &src,
        &[
            ("a", bytes(1, 10_000)),
            ("b/c", bytes(2, 10_000)),
            ("s", b"s".to_vec()),
        ],
    );
    let home = tmp.path().join("home");
    let store = open(&home);
    let kept = ingest(&store, &src);
    store
        .commit_image("kept", None, &kept, ImageState::Sealed)
        .unwrap();

    // A builder that never finishes (the process died): objects written to
    // temp files, some published by an earlier batch, nodes in sled.
    let mut b = store.layer_builder().unwrap();
    let lost = b.layer();
    for i in 0..4100u64 {
        b.add_file(
            ROOT_INO,
            format!("f{i}").as_bytes(),
            Node::new(NodeKind::File, 0o644),
            &mut &bytes(1000 + i, 5000)[..],
        )
        .unwrap();
    }
    std::mem::forget(b);
    // A layer finished but never committed.
    let unfinished_src = tmp.path().join("src2");
    write_tree(&unfinished_src, &[("z", bytes(9, 70_000))]);
    let uncommitted = ingest(&store, &unfinished_src);
    assert!(objects_on_disk(&home).0 > 2);
    drop(store);

    let store = open(&home);
    let layers: Vec<_> = store
        .layer_records()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(layers, vec![kept.layer]);
    assert!(store.node(lost, ROOT_INO).unwrap().is_none());
    assert!(store.node(uncommitted.layer, ROOT_INO).unwrap().is_none());
    assert_eq!(objects_on_disk(&home), (2, 20_000));
    assert_eq!(temp_files(&home), 0);
    assert_eq!(store.images().unwrap().len(), 1);
}

#[test]
fn second_open_is_locked_and_waits() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().to_path_buf();
    let first = open(&home);
    let err = Store::open(&home).err().expect("second open must fail");
    assert!(matches!(err, Error::Locked(_)), "{err}");
    assert_eq!(err.errno(), libc::EAGAIN);
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        tx.send(()).unwrap();
        let opts = StoreOptions {
            lock_timeout: Duration::from_secs(120),
            ..StoreOptions::default()
        };
        Store::open_with(&home, &opts).map(|s| s.images().unwrap().len())
    });
    rx.recv().unwrap();
    first.create_image("made-by-first", None).unwrap();
    drop(first);
    assert_eq!(
        waiter.join().unwrap().unwrap(),
        1,
        "the waiter opened the store once it was free"
    );
}

/// A builder writes its object rows later, in batches: an object it has
/// claimed must survive the deletion of the only image that had a row for
/// it in the meantime.
#[test]
fn object_claimed_by_a_builder_survives_deleting_its_last_image() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let src = tmp.path().join("src");
    let data = bytes(42, 10_000);
    write_tree(&src, &[("f", data.clone())]);
    let store = open(&home);
    let a = ingest(&store, &src);
    store
        .commit_image("a", None, &a, ImageState::Sealed)
        .unwrap();
    let node = store
        .lookup(a.layer, ROOT_INO, b"f")
        .unwrap()
        .map(|e| store.node(a.layer, e.ino).unwrap().unwrap())
        .unwrap();
    let mut builder = store.layer_builder().unwrap();
    builder.add(ROOT_INO, b"g", node.clone()).unwrap();
    store.delete_image("a").unwrap();
    assert_eq!(objects_on_disk(&home), (1, 10_000));
    let b = builder.finish().unwrap();
    store
        .commit_image("b", None, &b, ImageState::Sealed)
        .unwrap();
    let e = store.lookup(b.layer, ROOT_INO, b"g").unwrap().unwrap();
    let g = store.node(b.layer, e.ino).unwrap().unwrap();
    assert_eq!(read_all(&store, &g), data);
    store.delete_image("b").unwrap();
    assert_eq!(objects_on_disk(&home), (0, 0));
}

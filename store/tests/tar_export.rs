//! Export details: progress reporting, and a failed export never looking
//! like a complete archive.

mod tar_support;

use std::sync::atomic::{AtomicU64, Ordering};

use stacko_store::progress::{NoProgress, Progress};
use stacko_store::tar::{export_tar, import_tar};
use stacko_store::{Content, Error, ROOT_INO};
use tar_support::*;

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

fn entries() -> Vec<E> {
    vec![
        E::dir("./"),
        E::file("a", "12345"),
        E::file("big", noise(50_000, 9)),
        E::dir("d/"),
        E::hardlink("d/h", "a"),
    ]
}

#[test]
fn progress_counts_every_entry_and_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let count = Count::default();
    let bytes = archive(&entries());
    let summary = import_tar(&store, &mut &bytes[..], &count).unwrap();
    assert_eq!(count.files.load(Ordering::Relaxed), 5);
    assert_eq!(count.bytes.load(Ordering::Relaxed), 50_005);
    assert_eq!((summary.bytes, summary.files), (50_005, 2));

    let count = Count::default();
    let mut out = Vec::new();
    export_tar(&store, &[summary.layer], false, &mut out, &count).unwrap();
    assert_eq!(count.files.load(Ordering::Relaxed), 5);
    assert_eq!(count.bytes.load(Ordering::Relaxed), 50_005);
}

#[test]
fn a_failed_export_is_not_a_valid_archive() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let layer = import_as(&store, "img", None, &archive(&entries()));
    let big = store.lookup(layer, ROOT_INO, b"big").unwrap().unwrap();
    let Content::Object(id) = store.node(layer, big.ino).unwrap().unwrap().content else {
        panic!("50 kB must be an object");
    };
    std::fs::remove_file(store.objects().path(&id)).unwrap();

    let mut out = Vec::new();
    let err = export_tar(&store, &[layer], false, &mut out, &NoProgress).unwrap_err();
    assert!(!matches!(err, Error::BadInput(_)), "{err:?}");
    assert!(
        !out.ends_with(&[0u8; 1024]),
        "no end-of-archive marker after a failure"
    );
    match import(&store, &out) {
        Err(Error::BadInput(msg)) => assert!(msg.contains("truncated"), "{msg}"),
        other => panic!("the partial export was accepted: {other:?}"),
    }
}

#[test]
fn oversized_extended_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut bytes = Vec::new();
    let huge = vec![b'a'; 17 << 20];
    raw_entry(&mut bytes, b"pax", tar::EntryType::XHeader, &huge, b"");
    raw_entry(&mut bytes, b"f", tar::EntryType::Regular, b"x", b"");
    end(&mut bytes);
    match import(&store, &bytes) {
        Err(Error::BadInput(msg)) => assert!(msg.contains("exceed"), "{msg}"),
        other => panic!("expected BadInput, got {other:?}"),
    }
}

#[test]
fn an_empty_layer_exports_as_its_root_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let layer = import_as(&store, "empty", None, &archive(&[E::dir("./")]));
    let out = export(&store, &[layer], false);
    assert_eq!(listing(&out), vec![(b"./".to_vec(), b'5')]);
    let again = import_as(&store, "again", None, &out);
    assert_eq!(snapshot(&store, again), snapshot(&store, layer));
}

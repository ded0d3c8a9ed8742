//! Flattened export: the merged view of a stack of layers, as overlayfs
//! would show it, with no whiteouts in the output.

mod tar_support;

use tar_support::*;

fn bottom() -> Vec<E> {
    vec![
        E::dir("./"),
        E::dir("b/"),
        E::file("b/old0", "hidden by the opaque b of the top"),
        E::dir("g/"),
        E::file("g/bottom", "hidden by the opaque g of the middle"),
        E::file("z", "only in the bottom"),
    ]
}

fn middle() -> Vec<E> {
    vec![
        E::dir("./"),
        E::dir("a/"),
        E::file("a/x", "x-middle"),
        E::file("a/y", "y-middle"),
        E::dir("b/"),
        E::file("b/1", "hidden"),
        E::file("c", "c-middle"),
        E::dir("d/"),
        E::file("d/old", "hidden by the file d"),
        E::file("e", "hidden by the directory e"),
        E::dir("g/").mode(0o701),
        E::file("g/.wh..wh..opq", ""),
        E::file("g/mid", "mid"),
        E::file("h1", "linked"),
        E::hardlink("h2", "h1"),
        E::hardlink("h3", "h1"),
        E::file("keep", "kept"),
        E::dir("s/"),
        E::dir("s/sub/").mode(0o700),
        E::file("s/sub/deep", "deep"),
        E::file(".wh.z", ""),
    ]
}

fn top() -> Vec<E> {
    vec![
        E::dir("./").mode(0o700).mtime("1800000000.25"),
        E::file(".wh.c", ""),
        E::file(".wh.h1", ""),
        E::file(".wh.nothing", ""),
        E::dir("a/").mode(0o711),
        E::file("a/y", "y-top"),
        E::dir("b/").owner(7, 7),
        E::file("b/.wh..wh..opq", ""),
        E::file("b/2", "2"),
        E::file("d", "d is a file now"),
        E::dir("e/"),
        E::file("e/f", "f"),
        E::file("f", "new"),
        E::dir("s/").mode(0o750),
        E::file("s/new", "n"),
    ]
}

/// What overlayfs would show for top over middle over bottom.
fn merged() -> Vec<E> {
    vec![
        E::dir("./").mode(0o700).mtime("1800000000.25"),
        E::dir("a/").mode(0o711),
        E::file("a/x", "x-middle"),
        E::file("a/y", "y-top"),
        E::dir("b/").owner(7, 7),
        E::file("b/2", "2"),
        E::file("d", "d is a file now"),
        E::dir("e/"),
        E::file("e/f", "f"),
        E::file("f", "new"),
        E::dir("g/").mode(0o701),
        E::file("g/mid", "mid"),
        E::file("h2", "linked"),
        E::hardlink("h3", "h2"),
        E::file("keep", "kept"),
        E::dir("s/").mode(0o750),
        E::file("s/new", "n"),
        E::dir("s/sub/").mode(0o700),
        E::file("s/sub/deep", "deep"),
    ]
}

#[test]
fn flattened_export_is_the_merged_tree() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let l0 = import_as(&store, "bottom", None, &archive(&bottom()));
    let l1 = import_as(&store, "middle", Some("bottom"), &archive(&middle()));
    let l2 = import_as(&store, "top", Some("middle"), &archive(&top()));
    let expected = import_as(&store, "expected", None, &archive(&merged()));

    let flat = export(&store, &[l2, l1, l0], true);
    assert!(
        listing(&flat)
            .iter()
            .all(|(p, _)| !p.windows(4).any(|w| w == b".wh.")),
        "no whiteouts in a flattened export"
    );
    let got = import_as(&store, "flat", None, &flat);
    let got = snapshot(&store, got);
    let want = snapshot(&store, expected);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    assert_eq!(got, want);
    // Same bytes as exporting the expected tree itself.
    assert_eq!(flat, export(&store, &[expected], false));
}

#[test]
fn without_flatten_only_the_top_layer_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let l0 = import_as(&store, "bottom", None, &archive(&bottom()));
    let l1 = import_as(&store, "middle", Some("bottom"), &archive(&middle()));
    assert_eq!(
        export(&store, &[l1, l0], false),
        export(&store, &[l1], false)
    );
    let names: Vec<Vec<u8>> = listing(&export(&store, &[l1, l0], false))
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert!(names.contains(&b".wh.z".to_vec()));
    assert!(names.contains(&b"g/.wh..wh..opq".to_vec()));
    assert!(!names.contains(&b"z".to_vec()));
}

#[test]
fn an_opaque_root_hides_every_lower_layer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let l0 = import_as(&store, "bottom", None, &archive(&bottom()));
    let l1 = import_as(
        &store,
        "fresh",
        Some("bottom"),
        &archive(&[
            E::dir("./"),
            E::file(".wh..wh..opq", ""),
            E::file("only", "me"),
        ]),
    );
    let flat = export(&store, &[l1, l0], true);
    let names: Vec<Vec<u8>> = listing(&flat).into_iter().map(|(p, _)| p).collect();
    assert_eq!(names, vec![b"./".to_vec(), b"only".to_vec()]);
    // As stored, the root keeps its marker.
    let stored: Vec<Vec<u8>> = listing(&export(&store, &[l1], false))
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        stored,
        vec![b"./".to_vec(), b".wh..wh..opq".to_vec(), b"only".to_vec()]
    );
}

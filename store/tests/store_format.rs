//! Golden bytes: these tests freeze the on-disk record format. If one
//! fails, the format changed: bump `FORMAT_VERSION` and keep a decoder for
//! the old version instead of editing the expected bytes.

use stacko_store::{
    decode, encode, Content, DirentRecord, Error, ImageRecord, ImageState, LayerRecord, LayerState,
    Node, NodeKind, ObjectId, Timestamp, Xattr,
};

fn ts(sec: i64, nsec: u32) -> Timestamp {
    Timestamp { sec, nsec }
}

fn sample_node() -> Node {
    Node {
        kind: NodeKind::File,
        mode: 0o4755,
        uid: 1000,
        gid: 100,
        atime: ts(1, 2),
        mtime: ts(1_700_000_000, 999_999_999),
        ctime: ts(-5, 6),
        size: 5,
        rdev: 0,
        nlink: 2,
        content: Content::Inline(b"hello".to_vec()),
        xattrs: vec![Xattr {
            name: b"user.a".to_vec(),
            value: b"b".to_vec(),
        }],
        opaque: false,
    }
}

fn object_node() -> Node {
    Node {
        kind: NodeKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        atime: ts(0, 0),
        mtime: ts(0, 0),
        ctime: ts(0, 0),
        size: 0,
        rdev: 0x0801,
        nlink: 3,
        content: Content::Object(ObjectId([0xab; 32])),
        xattrs: vec![],
        opaque: true,
    }
}

fn sample_image() -> ImageRecord {
    ImageRecord {
        name: "base".into(),
        parent: Some("root".into()),
        layer: 7,
        state: ImageState::Sealed,
        created: ts(1_700_000_000, 5),
        size: 4096,
        files: 3,
    }
}

fn sample_layer() -> LayerRecord {
    LayerRecord {
        state: LayerState::Live,
        created: ts(1, 0),
        next_ino: 42,
    }
}

const NODE: &[u8] = &[
    1, 0, 237, 19, 232, 7, 100, 2, 2, 128, 196, 159, 213, 12, 255, 147, 235, 220, 3, 9, 6, 5, 0, 2,
    1, 5, 104, 101, 108, 108, 111, 1, 6, 117, 115, 101, 114, 46, 97, 1, 98, 0,
];

const OBJECT_NODE: &[u8] = &[
    1, 1, 237, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 129, 16, 3, 2, 171, 171, 171, 171, 171, 171, 171, 171,
    171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171,
    171, 171, 171, 171, 171, 0, 1,
];

const DIRENT: &[u8] = &[1, 172, 2, 7];

const IMAGE: &[u8] = &[
    1, 4, 98, 97, 115, 101, 1, 4, 114, 111, 111, 116, 7, 1, 128, 196, 159, 213, 12, 5, 128, 32, 3,
];

const LAYER: &[u8] = &[1, 1, 2, 0, 42];

#[test]
fn node_golden_bytes() {
    assert_eq!(encode(&sample_node()), NODE);
    assert_eq!(decode::<Node>("nodes", NODE).unwrap(), sample_node());
    assert_eq!(encode(&object_node()), OBJECT_NODE);
    assert_eq!(decode::<Node>("nodes", OBJECT_NODE).unwrap(), object_node());
}

#[test]
fn dirent_golden_bytes() {
    let rec = DirentRecord {
        ino: 300,
        kind: NodeKind::Whiteout,
    };
    assert_eq!(encode(&rec), DIRENT);
    assert_eq!(decode::<DirentRecord>("dirents", DIRENT).unwrap(), rec);
}

#[test]
fn image_golden_bytes() {
    assert_eq!(encode(&sample_image()), IMAGE);
    assert_eq!(
        decode::<ImageRecord>("images", IMAGE).unwrap(),
        sample_image()
    );
}

#[test]
fn layer_golden_bytes() {
    assert_eq!(encode(&sample_layer()), LAYER);
    assert_eq!(
        decode::<LayerRecord>("layers", LAYER).unwrap(),
        sample_layer()
    );
}

#[test]
fn decode_rejects_other_versions() {
    for version in [0u8, 2, 255] {
        let mut bytes = LAYER.to_vec();
        bytes[0] = version;
        let err = decode::<LayerRecord>("layers", &bytes).unwrap_err();
        assert!(matches!(err, Error::Format { tree: "layers", .. }), "{err}");
        assert!(err.to_string().contains("version"), "{err}");
    }
}

#[test]
fn decode_rejects_trailing_bytes() {
    let mut bytes = IMAGE.to_vec();
    bytes.push(0);
    let err = decode::<ImageRecord>("images", &bytes).unwrap_err();
    assert!(err.to_string().contains("1 trailing bytes"), "{err}");
}

#[test]
fn decode_rejects_empty_and_truncated_values() {
    assert!(decode::<Node>("nodes", &[]).is_err());
    for len in 1..NODE.len() {
        assert!(
            decode::<Node>("nodes", &NODE[..len]).is_err(),
            "prefix of {len} bytes decoded"
        );
    }
}

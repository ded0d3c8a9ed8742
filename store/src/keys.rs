//! sled keys, built by hand as big-endian bytes so that sled's byte order
//! is the order we want: all nodes of a layer together, all entries of a
//! directory together and sorted by name.

use crate::records::{Ino, LayerId, ObjectId};

/// `nodes` tree: layer ‖ ino.
pub fn node(layer: LayerId, ino: Ino) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&layer.to_be_bytes());
    k[8..].copy_from_slice(&ino.to_be_bytes());
    k
}

/// `dirents` tree: layer ‖ parent ino ‖ name.
pub fn dirent(layer: LayerId, parent: Ino, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + name.len());
    k.extend_from_slice(&layer.to_be_bytes());
    k.extend_from_slice(&parent.to_be_bytes());
    k.extend_from_slice(name);
    k
}

/// Prefix of all entries of one directory in the `dirents` tree.
pub fn dir_prefix(layer: LayerId, parent: Ino) -> [u8; 16] {
    node(layer, parent)
}

/// Prefix of everything a layer owns in `nodes` and `dirents`.
pub fn layer_prefix(layer: LayerId) -> [u8; 8] {
    layer.to_be_bytes()
}

/// `layers` tree key.
pub fn layer(layer: LayerId) -> [u8; 8] {
    layer.to_be_bytes()
}

/// `object_layers` tree: object digest ‖ layer.
pub fn object_layer(obj: &ObjectId, layer: LayerId) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(&obj.0);
    k[32..].copy_from_slice(&layer.to_be_bytes());
    k
}

/// Splits a `dirents` key into (layer, parent, name).
pub fn split_dirent(key: &[u8]) -> Option<(LayerId, Ino, &[u8])> {
    if key.len() < 16 {
        return None;
    }
    let layer = u64::from_be_bytes(key[..8].try_into().ok()?);
    let parent = u64::from_be_bytes(key[8..16].try_into().ok()?);
    Some((layer, parent, &key[16..]))
}

/// Decodes a big-endian u64 (from a key or a tail of one).
pub fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_keys() {
        assert_eq!(
            node(0x0102, 0x0304),
            [0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 3, 4]
        );
        assert_eq!(
            dirent(1, 2, b"ab"),
            vec![0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, b'a', b'b']
        );
        assert_eq!(split_dirent(&dirent(7, 9, b"x")), Some((7, 9, &b"x"[..])));
    }

    #[test]
    fn entries_of_a_directory_sort_by_name_and_stay_together() {
        let a = dirent(1, 2, b"a");
        let b = dirent(1, 2, b"b");
        let next_dir = dirent(1, 3, b"");
        assert!(a < b && b < next_dir);
        assert!(dirent(1, u64::MAX, b"zzz") < dirent(2, 0, b""));
    }
}

//! Every kind of bad archive is refused with `BadInput`, and leaves the
//! store as it was: same images, same objects, and (after reopening) no
//! leftover layer for garbage collection to find.

mod tar_support;

use std::io::{self, Read};

use stacko_store::progress::NoProgress;
use stacko_store::store::GcStats;
use stacko_store::tar::import_tar;
use stacko_store::Error;
use tar::EntryType;
use tar_support::*;

/// A valid archive whose second file is big enough to be an object.
fn valid() -> Vec<u8> {
    archive(&[
        E::dir("d/"),
        E::file("d/small", "small"),
        E::file("d/big", noise(100_000, 7)),
        E::file("d/after", "after"),
    ])
}

/// Offset of the middle of d/big's data in `valid()`.
fn middle_of_big(bytes: &[u8]) -> usize {
    let needle = &noise(100_000, 7)[..64];
    let start = bytes.windows(64).position(|w| w == needle).unwrap();
    start + 50_000
}

/// Name, type, data, link name.
type Raw<'a> = (&'a [u8], EntryType, &'a [u8], &'a [u8]);

fn hostile(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data, link) in entries {
        raw_entry(&mut out, name, *kind, data, link);
    }
    end(&mut out);
    out
}

/// Imports `bytes`, expects BadInput mentioning `needle`, and checks the
/// store is unchanged, before and after reopening.
fn refused(bytes: &[u8], needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (images, objects) = {
        let store = open(dir.path());
        import_as(&store, "base", None, &valid());
        let images = store.images().unwrap();
        let objects = store.objects().total_bytes().unwrap();
        match import(&store, bytes) {
            Err(Error::BadInput(msg)) => {
                assert!(msg.contains(needle), "{msg:?} should mention {needle:?}")
            }
            other => panic!("expected BadInput({needle:?}), got {other:?}"),
        }
        assert_eq!(store.images().unwrap(), images);
        (images, objects)
    };
    let store = open(dir.path());
    assert_eq!(store.images().unwrap(), images);
    assert_eq!(
        store.collect_garbage().unwrap(),
        GcStats::default(),
        "a layer was left behind"
    );
    assert_eq!(store.objects().total_bytes().unwrap(), objects);
}

#[test]
fn the_valid_archive_is_accepted() {
    // The baseline the refusals below are cut from.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let layer = import_as(&store, "ok", None, &valid());
    assert_eq!(
        snapshot(&store, layer)[&b"d/big"[..]].data,
        noise(100_000, 7)
    );
    import_as(&store, "gz", None, &gzip(&valid()));
    import_as(&store, "zst", None, &zstd(&valid()));
}

#[test]
fn parent_directory_components_are_refused() {
    refused(
        &hostile(&[(b"../x", EntryType::Regular, b"x", b"")]),
        "`..`",
    );
    refused(
        &hostile(&[(b"a/../../x", EntryType::Regular, b"x", b"")]),
        "`..`",
    );
    refused(
        &hostile(&[(b"a/b/..", EntryType::Directory, b"", b"")]),
        "`..`",
    );
}

#[test]
fn absolute_paths_are_refused() {
    refused(
        &hostile(&[(b"/abs", EntryType::Regular, b"x", b"")]),
        "absolute path",
    );
    refused(
        &hostile(&[(b"/", EntryType::Directory, b"", b"")]),
        "absolute path",
    );
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let bytes = archive(&[
        E::symlink("l", "/etc"),
        E::file("l/passwd", "root::0:0::/:/bin/sh\n"),
    ]);
    refused(&bytes, "symlink");
    let bytes = archive(&[E::dir("d/"), E::symlink("d/l", "."), E::dir("d/l/sub/")]);
    refused(&bytes, "symlink");
}

#[test]
fn a_file_used_as_a_directory_is_refused() {
    refused(
        &archive(&[E::file("f", "x"), E::file("f/g", "y")]),
        "not a directory",
    );
}

#[test]
fn hard_links_outside_the_archive_are_refused() {
    refused(
        &archive(&[E::hardlink("h", "etc/shadow")]),
        "outside the archive",
    );
    refused(
        &archive(&[E::hardlink("h", "/etc/shadow")]),
        "outside the archive",
    );
    refused(
        &hostile(&[(b"h", EntryType::Link, b"", b"../x")]),
        "outside the archive",
    );
    // A later entry is not there yet when the link is read.
    refused(
        &archive(&[E::hardlink("h", "later"), E::file("later", "x")]),
        "outside the archive",
    );
    refused(
        &archive(&[E::dir("d/"), E::hardlink("h", "d")]),
        "directory",
    );
}

#[test]
fn duplicate_names_are_refused() {
    refused(&archive(&[E::file("a", "1"), E::file("a", "2")]), "twice");
    refused(&archive(&[E::dir("a/"), E::file("a", "2")]), "twice");
    refused(
        &archive(&[E::file(".wh.a", ""), E::file("a", "2")]),
        "twice",
    );
}

#[test]
fn truncated_plain_archives_are_refused() {
    let bytes = valid();
    refused(&bytes[..middle_of_big(&bytes)], "truncated");
    // Cut inside a header block.
    refused(&bytes[..512 + 100], "truncated");
    // Cut exactly between two entries: every entry is whole, but the
    // end-of-archive marker is missing.
    // The last entry is a PAX header and its records, a header and "after": 4 blocks.
    let boundary = bytes.len() - 1024 - 4 * 512;
    assert_eq!(&bytes[boundary + 257..boundary + 262], b"ustar");
    refused(&bytes[..boundary], "truncated");
    refused(&bytes[..bytes.len() - 1024], "end-of-archive");
    refused(b"", "truncated");
}

#[test]
fn truncated_compressed_archives_are_refused() {
    let gz = gzip(&valid());
    refused(&gz[..gz.len() / 2], "truncated");
    refused(&gz[..gz.len() - 4], "truncated"); // all the data, but not the trailer
    let zst = zstd(&valid());
    refused(&zst[..zst.len() / 2], "truncated");
    refused(&zst[..zst.len() - 3], "truncated");
}

#[test]
fn garbage_is_refused() {
    refused(&noise(10_000, 42), "corrupt");
    let mut fake_gzip = vec![0x1f, 0x8b];
    fake_gzip.extend(noise(5_000, 3));
    refused(&fake_gzip, "corrupt");
    let mut fake_zstd = vec![0x28, 0xb5, 0x2f, 0xfd];
    fake_zstd.extend(noise(5_000, 4));
    refused(&fake_zstd, "corrupt");
    // A valid header followed by a flipped byte in the next header.
    let mut bytes = valid();
    bytes[512 + 512 + 10] ^= 0x55;
    refused(&bytes, "corrupt");
}

#[test]
fn unsupported_entry_types_are_refused() {
    refused(
        &hostile(&[(b"label", EntryType::new(b'V'), b"", b"")]),
        "cannot be stored",
    );
    refused(
        &hostile(&[(b"dump", EntryType::new(b'D'), b"", b"")]),
        "cannot be stored",
    );
    refused(
        &hostile(&[(b"multi", EntryType::new(b'M'), b"", b"")]),
        "cannot be stored",
    );
}

#[test]
fn bad_whiteouts_are_refused() {
    refused(&archive(&[E::file(".wh.", "")]), "invalid name");
    refused(&archive(&[E::dir(".wh.d/")]), "whiteout");
    refused(&archive(&[E::file(".wh..wh.plnk", "")]), "aufs");
}

#[test]
fn bad_pax_records_are_refused() {
    refused(&archive(&[E::file("f", "x").mtime("yesterday")]), "mtime");
    let mut bytes = Vec::new();
    raw_entry(&mut bytes, b"pax", EntryType::XHeader, b"99 path=x\n", b"");
    raw_entry(&mut bytes, b"f", EntryType::Regular, b"x", b"");
    end(&mut bytes);
    refused(&bytes, "PAX");
}

/// A reader that fails after `ok` bytes, as a broken pipe or disk would.
struct Failing<'a> {
    data: &'a [u8],
    ok: usize,
}

impl Read for Failing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ok == 0 {
            return Err(io::Error::other("the disk is on fire"));
        }
        let n = buf.len().min(self.ok).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.ok -= n;
        Ok(n)
    }
}

#[test]
fn a_failing_source_is_an_io_error_not_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes = valid();
    for (input, ok) in [
        (bytes.clone(), 30_000),
        (gzip(&bytes), 500),
        (zstd(&bytes), 500),
    ] {
        let mut src = Failing { data: &input, ok };
        match import_tar(&store, &mut src, &NoProgress) {
            Err(Error::Io { source, .. }) => assert!(source.to_string().contains("on fire")),
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }
    assert!(store.images().unwrap().is_empty());
}

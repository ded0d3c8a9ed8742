//! Lower-layer fixtures in overlayfs lowerdir format, built identically for each engine.
//!
//! The differential fixture has two layers. The top one holds a whiteout (char 0:0) over a
//! bottom file, a whiteout over nothing, an opaque directory (`user.overlay.opaque=y`, the form
//! kernel overlayfs reads with `-o userxattr`), a setuid file, and a hard-link pair; the bottom
//! one holds files (one of 70 KB), symlinks, a fifo, a setgid directory, hard links within and
//! across directories, a directory hidden by the opaque one, and user xattrs. Every entry gets
//! an explicit, distinct mtime (in 2004-2005) so that the tests can tell preserved times from
//! times set by the engine.

use super::sys;
use std::path::{Path, PathBuf};

/// Who owns what in the fixture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Mounted and used by root: a few files belong to uid/gid 1000.
    Root,
    /// Used by an unprivileged user: root-owned files it may read but not change, files it may
    /// write (0666) whose root ownership must survive copy-up, a dir it owns, a sticky dir.
    User {
        /// The user's uid.
        uid: u32,
        /// The user's gid.
        gid: u32,
    },
}

/// The built fixture.
#[derive(Clone, Debug)]
pub struct Fixture {
    /// Lower dirs, top first (the `lowerdir=` order).
    pub lowers: Vec<PathBuf>,
    /// Groups of paths (relative to the mount root) that are one inode (hard links).
    pub link_groups: Vec<Vec<String>>,
}

/// Start of the explicit-mtime era used by fixtures and utimens ops; anything set by the
/// engine itself ("now") is later than [`EXPLICIT_TIME_END`].
pub const EXPLICIT_TIME_START: i64 = 1_000_000_000;
/// End of the explicit-mtime era.
pub const EXPLICIT_TIME_END: i64 = 1_400_000_000;

/// A deterministic byte pattern.
pub fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(12345);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 3) as u8
        })
        .collect()
}

struct Builder {
    root: PathBuf,
    times: Vec<(PathBuf, i64)>,
    next_time: i64,
}

impl Builder {
    fn new(root: &Path, first_time: i64) -> Builder {
        std::fs::create_dir_all(root).expect("create layer dir");
        let mut b = Builder {
            root: root.to_path_buf(),
            times: Vec::new(),
            next_time: first_time,
        };
        b.stamp("");
        b
    }
    fn p(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }
    fn stamp(&mut self, rel: &str) {
        let t = self.next_time;
        self.next_time += 1000;
        self.times.push((self.p(rel), t));
    }
    fn own(&self, rel: &str, mode: u32, uid: u32, gid: u32, is_link: bool) {
        let p = self.p(rel);
        sys::lchown(&p, uid, gid)
            .unwrap_or_else(|e| panic!("lchown {}: {}", p.display(), sys::errno_name(e)));
        if !is_link {
            sys::chmod(&p, mode)
                .unwrap_or_else(|e| panic!("chmod {}: {}", p.display(), sys::errno_name(e)));
        }
    }
    fn dir(&mut self, rel: &str, mode: u32, uid: u32, gid: u32) {
        let p = self.p(rel);
        if !rel.is_empty() {
            sys::mkdir(&p, 0o700)
                .unwrap_or_else(|e| panic!("mkdir {}: {}", p.display(), sys::errno_name(e)));
            self.stamp(rel);
        }
        self.own(rel, mode, uid, gid, false);
    }
    fn file(&mut self, rel: &str, data: &[u8], mode: u32, uid: u32, gid: u32) {
        let p = self.p(rel);
        sys::write_file(&p, data, 0o600)
            .unwrap_or_else(|e| panic!("write {}: {}", p.display(), sys::errno_name(e)));
        self.own(rel, mode, uid, gid, false);
        self.stamp(rel);
    }
    fn symlink(&mut self, rel: &str, target: &str, uid: u32, gid: u32) {
        let p = self.p(rel);
        sys::symlink(target, &p)
            .unwrap_or_else(|e| panic!("symlink {}: {}", p.display(), sys::errno_name(e)));
        self.own(rel, 0, uid, gid, true);
        self.stamp(rel);
    }
    fn fifo(&mut self, rel: &str, mode: u32, uid: u32, gid: u32) {
        let p = self.p(rel);
        sys::mknod(&p, libc::S_IFIFO | 0o600, 0)
            .unwrap_or_else(|e| panic!("mkfifo {}: {}", p.display(), sys::errno_name(e)));
        self.own(rel, mode, uid, gid, false);
        self.stamp(rel);
    }
    fn whiteout(&mut self, rel: &str) {
        let p = self.p(rel);
        sys::mknod(&p, libc::S_IFCHR | 0o600, 0)
            .unwrap_or_else(|e| panic!("whiteout {}: {}", p.display(), sys::errno_name(e)));
    }
    fn hardlink(&mut self, existing: &str, rel: &str) {
        sys::link(&self.p(existing), &self.p(rel))
            .unwrap_or_else(|e| panic!("link {rel}: {}", sys::errno_name(e)));
    }
    fn xattr(&mut self, rel: &str, name: &str, value: &[u8]) {
        let p = self.p(rel);
        sys::setxattr(&p, name, value, false)
            .unwrap_or_else(|e| panic!("setxattr {}: {}", p.display(), sys::errno_name(e)));
    }
    fn finish(self) {
        for (p, t) in self.times.iter().rev() {
            sys::utimens(p, (*t + 7, 0), (*t, 500_000_000), false)
                .unwrap_or_else(|e| panic!("utimens {}: {}", p.display(), sys::errno_name(e)));
        }
    }
}

/// Builds the two-layer differential fixture under `base` (`base/l1` top, `base/l0` bottom).
pub fn build_diff_lowers(base: &Path, flavor: Flavor) -> Fixture {
    let (uu, ug) = match flavor {
        Flavor::Root => (1000, 1000),
        Flavor::User { uid, gid } => (uid, gid),
    };
    let user = matches!(flavor, Flavor::User { .. });
    let top = base.join("l1");
    let bottom = base.join("l0");

    // Bottom layer.
    let mut b = Builder::new(&bottom, 1_100_000_000);
    b.dir("", 0o755, 0, 0);
    b.file("a", b"L0:a\n", 0o644, 0, 0);
    b.file(
        "b",
        &pattern(1, 3000),
        if user { 0o666 } else { 0o644 },
        0,
        0,
    );
    b.xattr("b", "user.k", b"b0");
    b.symlink("c", "b", 0, 0);
    b.file("x", &pattern(2, 100), 0o600, 0, 0);
    b.dir("d1", 0o755, 0, 0);
    b.file("d1/a", &pattern(3, 10), 0o644, 0, 0);
    b.file("d1/b", b"L0:d1/b (whited out above)\n", 0o644, 0, 0);
    b.symlink("d1/c", "a", 0, 0);
    b.dir("d1/s", 0o2775, 0, 100);
    b.file("d1/s/a", &pattern(4, 5000), 0o664, 0, 100);
    b.hardlink("x", "d1/s/x");
    b.dir("d2", 0o755, 0, 0);
    b.file("d2/a", b"L0:d2/a (hidden by opaque d2)\n", 0o644, 0, 0);
    b.file("d2/b", b"L0:d2/b (hidden)\n", 0o644, 0, 0);
    b.dir("d2/s", 0o755, 0, 0);
    b.file("d2/s/a", b"hidden\n", 0o644, 0, 0);
    b.dir("d3", if user { 0o755 } else { 0o700 }, uu, ug);
    b.file("d3/a", &pattern(5, 70_000), 0o644, uu, ug);
    b.hardlink("d3/a", "d3/b");
    b.dir("d3/x", 0o755, uu, ug);
    b.file("d3/x/y", &pattern(8, 33), 0o640, uu, ug);
    b.fifo("d3/y", 0o644, uu, ug);
    b.xattr("d3/x", "user.k", b"d3x");
    b.finish();

    // Top layer.
    let mut t = Builder::new(&top, 1_200_000_000);
    t.dir("", 0o755, 0, 0);
    t.file("a", b"L1:a (top)\n", 0o640, 0, 0);
    t.xattr("a", "user.k", b"a1");
    t.dir("d1", 0o755, 0, 0);
    t.whiteout("d1/b");
    t.file("d1/x", &pattern(6, 4096), 0o644, 0, 0);
    t.symlink("d1/y", "s/a", 0, 0);
    t.dir(
        "d2",
        0o750,
        if user { uu } else { 0 },
        if user { ug } else { 0 },
    );
    t.xattr("d2", "user.overlay.opaque", b"y");
    t.xattr("d2", "user.k", b"d2");
    t.file("d2/x", b"L1:d2/x\n", 0o644, if user { uu } else { 0 }, 0);
    t.dir("s", if user { 0o1777 } else { 0o755 }, 0, 0);
    t.file("s/a", &pattern(7, 1), 0o4755, 0, 0);
    t.hardlink("d1/x", "s/y");
    t.whiteout("y");
    t.finish();

    Fixture {
        lowers: vec![top, bottom],
        link_groups: vec![
            vec!["x".into(), "d1/s/x".into()],
            vec!["d3/a".into(), "d3/b".into()],
            vec!["d1/x".into(), "s/y".into()],
        ],
    }
}

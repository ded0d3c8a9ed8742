//! The merged lower-directory index (issue 3 item 1: lookup cost must not grow with the
//! number of layers): lookups in an indexed directory do not ask every layer, and the
//! index gives the same merged tree as the layer-by-layer walk, whiteouts, opaque
//! directories and redirects included.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use stacko_fusefs::config::FsConfig;
use stacko_fusefs::dirlower::DirLower;
use stacko_fusefs::lower::{LowerAttr, LowerEntry, LowerFile, LowerIno};
use stacko_fusefs::upper::Upper;
use stacko_fusefs::{Errno, Kind, Lower, OverlayFs, Result};

/// A layer that counts the calls made to it.
struct Counting {
    inner: DirLower,
    lookups: AtomicUsize,
    read_dirs: AtomicUsize,
}

impl Lower for Counting {
    fn root(&self) -> LowerIno {
        self.inner.root()
    }
    fn lookup(&self, dir: LowerIno, name: &OsStr) -> Result<Option<LowerEntry>> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        self.inner.lookup(dir, name)
    }
    fn getattr(&self, ino: LowerIno) -> Result<LowerAttr> {
        self.inner.getattr(ino)
    }
    fn is_opaque(&self, dir: LowerIno) -> Result<bool> {
        self.inner.is_opaque(dir)
    }
    fn read_dir(
        &self,
        dir: LowerIno,
        after: Option<&OsStr>,
        f: &mut dyn FnMut(&OsStr, LowerEntry) -> bool,
    ) -> Result<()> {
        self.read_dirs.fetch_add(1, Ordering::Relaxed);
        self.inner.read_dir(dir, after, f)
    }
    fn open(&self, ino: LowerIno) -> Result<Box<dyn LowerFile>> {
        self.inner.open(ino)
    }
    fn readlink(&self, ino: LowerIno) -> Result<Vec<u8>> {
        self.inner.readlink(ino)
    }
    fn list_xattrs(&self, ino: LowerIno) -> Result<Vec<OsString>> {
        self.inner.list_xattrs(ino)
    }
    fn get_xattr(&self, ino: LowerIno, name: &OsStr) -> Result<Option<Vec<u8>>> {
        self.inner.get_xattr(ino, name)
    }
}

fn set_opaque(p: &Path) {
    set_user_xattr(p, "user.overlay.opaque", b"y");
}

fn counting_layers(root: &Path, n: usize) -> Vec<Arc<Counting>> {
    (0..n)
        .map(|i| {
            Arc::new(Counting {
                inner: DirLower::open(&root.join(format!("l{i}"))).unwrap(),
                lookups: AtomicUsize::new(0),
                read_dirs: AtomicUsize::new(0),
            })
        })
        .collect()
}

fn as_lowers(c: &[Arc<Counting>]) -> Vec<Arc<dyn Lower>> {
    c.iter().map(|l| l.clone() as Arc<dyn Lower>).collect()
}

fn total(c: &[Arc<Counting>], f: impl Fn(&Counting) -> usize) -> usize {
    c.iter().map(|l| f(l)).sum()
}

#[test]
fn lookups_in_an_indexed_directory_do_not_ask_every_layer() {
    const LAYERS: usize = 60;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for i in 0..LAYERS {
        write(&root.join(format!("l{i}/d/f{i}")), &i.to_string());
        write(&root.join(format!("l{i}/d/shared")), &i.to_string());
    }
    let names: Vec<String> = (0..LAYERS)
        .map(|i| format!("f{i}"))
        .chain(["shared".into()])
        .collect();
    let missing: Vec<String> = (0..LAYERS).map(|i| format!("nope{i}")).collect();

    // Layer by layer (index off): the walk asks every layer, which is what the index avoids;
    // this also shows the counting wrapper sees the lookups.
    let off = counting_layers(root, LAYERS);
    let cfg_off = FsConfig {
        lower_index_entries: 0,
        ..FsConfig::default()
    };
    let f = OverlayFs::new(as_lowers(&off), None, cfg_off).unwrap();
    for n in &names {
        walk(&f, &format!("d/{n}")).unwrap();
    }
    for n in &missing {
        assert_eq!(walk(&f, &format!("d/{n}")), Err(Errno::ENOENT));
    }
    let walked = total(&off, |l| l.lookups.load(Ordering::Relaxed));
    assert!(
        walked >= LAYERS * missing.len(),
        "layer-by-layer lookups ask every layer for a missing name ({walked})"
    );

    // Indexed: each layer's listing is read once per directory, and no name is looked up
    // layer by layer, hits and misses alike.
    let on = counting_layers(root, LAYERS);
    let f = OverlayFs::new(as_lowers(&on), None, FsConfig::default()).unwrap();
    for round in 0..3 {
        for n in &names {
            let ino = walk(&f, &format!("d/{n}")).unwrap();
            assert_ne!(ino, 0);
        }
        for n in &missing {
            assert_eq!(walk(&f, &format!("d/{n}")), Err(Errno::ENOENT));
        }
        let lookups = total(&on, |l| l.lookups.load(Ordering::Relaxed));
        let read_dirs = total(&on, |l| l.read_dirs.load(Ordering::Relaxed));
        assert!(
            lookups < LAYERS,
            "round {round}: {lookups} layer lookups for {} names",
            names.len() + missing.len()
        );
        assert!(
            read_dirs <= 2 * LAYERS,
            "round {round}: {read_dirs} listings read (root and d, once per layer)"
        );
    }
    // The top layer's copy of the shared name wins.
    let a = f
        .lookup(walk(&f, "d").unwrap(), OsStr::new("shared"))
        .unwrap();
    let o = f.open(a.ino, libc::O_RDONLY).unwrap();
    assert_eq!(f.read(o.fh, 0, 100).unwrap(), b"0");
    f.release(o.fh);
}

/// A small deterministic generator (xorshift), so failures are reproducible by seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random layers over a small name space: files, dirs, whiteouts (both forms), opaque
/// dirs (both forms), and files replacing dirs between layers.
fn random_layers(root: &Path, layers: usize, seed: u64) {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let names = ["a", "b", "c", "d", "e"];
    for i in 0..layers {
        let l = root.join(format!("l{i}"));
        fs::create_dir_all(&l).unwrap();
        for _ in 0..12 {
            let depth = r.below(3) as usize;
            let mut p = l.clone();
            for _ in 0..depth {
                p.push(names[r.below(3) as usize]);
            }
            // parents must be directories: skip if a non-directory is in the way
            if p.ancestors().take(depth).any(|a| a.exists() && !a.is_dir()) {
                continue;
            }
            let leaf = p.join(names[r.below(names.len() as u64) as usize]);
            if fs::symlink_metadata(&leaf).is_ok() {
                continue;
            }
            match r.below(7) {
                0 | 1 => write(&leaf, &format!("{i}:{}", leaf.display())),
                2 | 3 => fs::create_dir_all(&leaf).unwrap(),
                4 => whiteout(&leaf),
                5 => {
                    fs::create_dir_all(&leaf).unwrap();
                    if r.below(2) == 0 {
                        set_opaque(&leaf);
                    } else {
                        write(&leaf.join(".wh..wh..opq"), "");
                    }
                }
                _ => {
                    let name = leaf.file_name().unwrap().to_os_string();
                    let mut wh = OsString::from(".wh.");
                    wh.push(&name);
                    write(&leaf.with_file_name(wh), "");
                }
            }
        }
    }
}

type Tree = BTreeMap<String, (Kind, u64, Vec<u8>)>;

fn tree(f: &OverlayFs) -> Tree {
    fn rec(f: &OverlayFs, ino: u64, path: &str, out: &mut Tree) {
        let fh = f.opendir(ino).unwrap();
        let list = f.readdir(fh, 0).unwrap();
        f.releasedir(fh);
        for e in list.iter().filter(|e| e.name != "." && e.name != "..") {
            let name = e.name.to_string_lossy().into_owned();
            let p = format!("{path}/{name}");
            let a = f
                .lookup(ino, &e.name)
                .unwrap_or_else(|err| panic!("listed {p} but lookup fails: {err}"));
            assert_eq!(
                a.ino, e.ino,
                "{p}: listing and lookup disagree on the inode"
            );
            let data = if a.kind == Kind::File {
                let o = f.open(a.ino, libc::O_RDONLY).unwrap();
                let d = f.read(o.fh, 0, 1 << 16).unwrap();
                f.release(o.fh);
                d
            } else {
                Vec::new()
            };
            out.insert(p.clone(), (a.kind, a.ino, data));
            if a.kind == Kind::Dir {
                rec(f, a.ino, &p, out);
            }
        }
        // misses answer like the walk does
        for n in ["a", "b", "c", "d", "e", "zz"] {
            let listed = list.iter().any(|e| e.name == n);
            assert_eq!(f.lookup(ino, OsStr::new(n)).is_ok(), listed, "{path}/{n}");
        }
    }
    let mut out = Tree::new();
    rec(f, 1, "", &mut out);
    out
}

fn mount(
    root: &Path,
    layers: usize,
    cfg: FsConfig,
    upper: Option<(PathBuf, PathBuf)>,
) -> OverlayFs {
    let lowers: Vec<Arc<dyn Lower>> = (0..layers)
        .map(|i| Arc::new(DirLower::open(&root.join(format!("l{i}"))).unwrap()) as Arc<dyn Lower>)
        .collect();
    let up = upper.map(|(u, w)| Upper::open(&u, &w).unwrap());
    OverlayFs::new(lowers, up, cfg).unwrap()
}

#[test]
fn index_gives_the_same_tree_as_the_layer_walk() {
    for seed in 1..=40u64 {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let layers = 2 + (seed as usize % 7);
        random_layers(root, layers, seed);
        let walk_cfg = FsConfig {
            lower_index_entries: 0,
            ..FsConfig::default()
        };
        let expect = tree(&mount(root, layers, walk_cfg, None));
        let got = tree(&mount(root, layers, FsConfig::default(), None));
        assert_eq!(
            got, expect,
            "seed {seed}: indexed tree differs from the layer walk"
        );
        // chains too big to index fall back to per-name answers
        let tiny = FsConfig {
            lower_index_dir_entries: 1,
            ..FsConfig::default()
        };
        let got = tree(&mount(root, layers, tiny, None));
        assert_eq!(
            got, expect,
            "seed {seed}: per-name fallback differs from the layer walk"
        );
    }
}

#[test]
fn renamed_lower_directory_keeps_its_lower_content_through_the_index() {
    const LAYERS: usize = 8;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for i in 0..LAYERS {
        write(&root.join(format!("l{i}/src/f{i}")), &i.to_string());
    }
    whiteout(&root.join("l2/src/f5"));
    fs::create_dir(root.join("u")).unwrap();
    fs::create_dir(root.join("w")).unwrap();
    let up = Some((root.join("u"), root.join("w")));
    let f = mount(root, LAYERS, FsConfig::default(), up.clone());
    let before = tree(&f);
    f.rename(1, OsStr::new("src"), 1, OsStr::new("dst"), 0)
        .unwrap();
    let rename = |t: &Tree| -> Tree {
        t.iter()
            .map(|(k, v)| (k.replacen("/src", "/dst", 1), v.clone()))
            .collect()
    };
    assert_eq!(tree(&f), rename(&before));
    drop(f);
    // after a remount the redirect is followed through the index as well
    let f = mount(root, LAYERS, FsConfig::default(), up);
    assert_eq!(tree(&f), rename(&before));
    assert!(walk(&f, "dst/f5").is_err() && walk(&f, "src").is_err());
}

//! Committing an edit: a new layer that is an image's own layer with an
//! overlayfs upper directory applied on top ([`apply_upper`]).
//!
//! Rules, per name in a directory:
//! - an upper entry replaces the own layer's entry (files, symlinks,
//!   devices are read exactly as [`crate::ingest::ingest_dir`] reads them,
//!   hard links inside the upper included);
//! - an upper whiteout removes the own layer's entry, and stays a whiteout
//!   only where an ancestor layer still has the name;
//! - an opaque upper directory replaces the own directory entirely and
//!   stays opaque; a non-opaque one is merged with the own directory (it
//!   becomes opaque where the own layer had a non-directory or a whiteout
//!   there, since that already hid the ancestors);
//! - entries only in the own layer are kept as they are (hard links too).
//!
//! The upper's root directory gives the new root's metadata.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::error::{Error, Result};
use crate::ingest::{list_dir, lstat, node_from_meta, Frame, Ingest, LayerSummary};
use crate::progress::Progress;
use crate::records::{DirEntry, Ino, LayerId, NodeKind, ROOT_INO};
use crate::store::Store;

/// Builds a new layer: `base` (an image's own layer) with the overlayfs
/// upper directory `upper` applied. `ancestors` are the layers below
/// `base`, top first (they decide which whiteouts are still needed). The
/// layer is finished but not committed: pass it to
/// [`Store::replace_layer`].
pub fn apply_upper(
    store: &Store,
    base: LayerId,
    ancestors: &[LayerId],
    upper: &Path,
    progress: &dyn Progress,
) -> Result<LayerSummary> {
    let meta = lstat(upper)?;
    if !meta.is_dir() {
        return Err(Error::BadInput(format!(
            "{} is not a directory",
            upper.display()
        )));
    }
    let base_root = store.node(base, ROOT_INO)?.ok_or_else(|| Error::Format {
        tree: "nodes",
        detail: format!("layer {base} has no root directory"),
    })?;
    let mut apply = Apply {
        ingest: Ingest::new(store.layer_builder()?, progress),
        store,
        base,
        base_links: HashMap::new(),
    };
    let listing = list_dir(upper)?;
    let mut root = node_from_meta(upper, &meta)?;
    let upper_opaque = root.opaque || listing.opaque;
    root.opaque = upper_opaque || base_root.opaque;
    apply.ingest.builder.set_root(root)?;
    if upper_opaque {
        apply.ingest.walk(Frame {
            path: upper.to_path_buf(),
            ino: ROOT_INO,
            names: listing.names.into_iter(),
        })?;
    } else {
        let mut anc = Vec::new();
        if !base_root.opaque {
            for &layer in ancestors {
                anc.push((layer, ROOT_INO));
                if store.node(layer, ROOT_INO)?.is_some_and(|n| n.opaque) {
                    break;
                }
            }
        }
        apply.merge(ROOT_INO, Some(ROOT_INO), upper, listing.names, &anc)?;
    }
    apply.ingest.builder.finish()
}

/// State of one [`apply_upper`] run.
struct Apply<'s, 'p> {
    ingest: Ingest<'s, 'p>,
    store: &'s Store,
    base: LayerId,
    /// Base nodes with several links → the node they became.
    base_links: HashMap<Ino, Ino>,
}

/// The directories of the ancestor layers at one path, top first, down to
/// the first opaque one.
type Ancestors = [(LayerId, Ino)];

impl Apply<'_, '_> {
    /// Fills new directory `dir` from base directory `base_dir` and upper directory `upper`.
    fn merge(
        &mut self,
        dir: Ino,
        base_dir: Option<Ino>,
        upper: &Path,
        upper_names: Vec<OsString>,
        anc: &Ancestors,
    ) -> Result<()> {
        let mut names: BTreeMap<Vec<u8>, (Option<DirEntry>, bool)> = BTreeMap::new();
        if let Some(b) = base_dir {
            for e in self.store.read_dir(self.base, b, None) {
                let e = e?;
                names.insert(e.name.clone(), (Some(e), false));
            }
        }
        for n in upper_names {
            names
                .entry(n.as_bytes().to_vec())
                .or_insert((None, false))
                .1 = true;
        }
        for (name, (base_entry, in_upper)) in names {
            if in_upper {
                let path = upper.join(OsStr::from_bytes(&name));
                self.upper_entry(dir, &name, &path, base_entry, anc)?;
            } else if let Some(e) = base_entry {
                self.copy_base(dir, &e)?;
            }
        }
        Ok(())
    }

    /// Applies one upper entry `name` (at `path`) in new directory `dir`.
    fn upper_entry(
        &mut self,
        dir: Ino,
        name: &[u8],
        path: &Path,
        base_entry: Option<DirEntry>,
        anc: &Ancestors,
    ) -> Result<()> {
        let meta = lstat(path)?;
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            if self.ancestors_have(anc, name)? {
                let node = node_from_meta(path, &meta)?;
                self.ingest.builder.add(dir, name, node)?;
            }
            self.ingest.progress.advance(0, 1);
            return Ok(());
        }
        if !ft.is_dir() {
            self.ingest.entry(dir, path, name)?;
            return Ok(());
        }
        let listing = list_dir(path)?;
        let mut node = node_from_meta(path, &meta)?;
        if node.opaque || listing.opaque {
            node.opaque = true;
            let ino = self.ingest.builder.add(dir, name, node)?;
            self.ingest.progress.advance(0, 1);
            return self.ingest.walk(Frame {
                path: path.to_path_buf(),
                ino,
                names: listing.names.into_iter(),
            });
        }
        let (base_dir, hides) = match &base_entry {
            Some(e) if e.kind == NodeKind::Dir => {
                let opaque = self.store.node(self.base, e.ino)?.is_some_and(|n| n.opaque);
                (Some(e.ino), opaque)
            }
            Some(_) => (None, true),
            None => (None, false),
        };
        node.opaque = hides;
        let child_anc = if hides {
            Vec::new()
        } else {
            self.child_ancestors(anc, name)?
        };
        let ino = self.ingest.builder.add(dir, name, node)?;
        self.ingest.progress.advance(0, 1);
        self.merge(ino, base_dir, path, listing.names, &child_anc)
    }

    /// Whether a layer below the base still shows `name` (so a whiteout is needed).
    fn ancestors_have(&self, anc: &Ancestors, name: &[u8]) -> Result<bool> {
        for &(layer, d) in anc {
            match self.store.lookup(layer, d, name)? {
                None => continue,
                Some(e) => return Ok(e.kind != NodeKind::Whiteout),
            }
        }
        Ok(false)
    }

    /// The ancestor directories named `name` below the directories `anc`.
    fn child_ancestors(&self, anc: &Ancestors, name: &[u8]) -> Result<Vec<(LayerId, Ino)>> {
        let mut out = Vec::new();
        for &(layer, d) in anc {
            match self.store.lookup(layer, d, name)? {
                None => continue,
                Some(e) if e.kind == NodeKind::Dir => {
                    out.push((layer, e.ino));
                    if self.store.node(layer, e.ino)?.is_some_and(|n| n.opaque) {
                        break;
                    }
                }
                Some(_) => break,
            }
        }
        Ok(out)
    }

    /// Copies base entry `e` (and, for a directory, everything below it) into new directory `dir`.
    fn copy_base(&mut self, dir: Ino, e: &DirEntry) -> Result<()> {
        if e.kind != NodeKind::Dir {
            if let Some(&target) = self.base_links.get(&e.ino) {
                self.ingest.builder.link(dir, &e.name, target)?;
                self.ingest.progress.advance(0, 1);
                return Ok(());
            }
        }
        let node = self
            .store
            .node(self.base, e.ino)?
            .ok_or_else(|| Error::Format {
                tree: "nodes",
                detail: format!(
                    "entry {:?} names a missing node",
                    String::from_utf8_lossy(&e.name)
                ),
            })?;
        let (is_dir, nlink, size) = (node.kind == NodeKind::Dir, node.nlink, node.size);
        let ino = self.ingest.builder.add(dir, &e.name, node)?;
        if is_dir {
            self.ingest.progress.advance(0, 1);
            let children: Vec<DirEntry> = self
                .store
                .read_dir(self.base, e.ino, None)
                .collect::<Result<_>>()?;
            for c in &children {
                self.copy_base(ino, c)?;
            }
        } else {
            if nlink > 1 {
                self.base_links.insert(e.ino, ino);
            }
            self.ingest.progress.advance(size, 1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::ingest_dir;
    use crate::progress::NoProgress;
    use crate::records::ImageState;
    use std::fs;

    fn whiteout(p: &Path) {
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path.
        assert_eq!(
            unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, 0) },
            0,
            "mknod {}",
            p.display()
        );
    }

    fn opaque(p: &Path) {
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path and value.
        let r = unsafe {
            libc::setxattr(
                c.as_ptr(),
                c"user.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        assert_eq!(r, 0, "setxattr {}", p.display());
    }

    /// (name, kind) of every entry of a layer, depth first, with paths.
    fn listing(store: &Store, layer: LayerId) -> Vec<(String, NodeKind, bool)> {
        fn walk(
            store: &Store,
            layer: LayerId,
            dir: Ino,
            prefix: &str,
            out: &mut Vec<(String, NodeKind, bool)>,
        ) {
            for e in store.read_dir(layer, dir, None) {
                let e = e.unwrap();
                let path = format!("{prefix}/{}", String::from_utf8_lossy(&e.name));
                let node = store.node(layer, e.ino).unwrap().unwrap();
                out.push((path.clone(), e.kind, node.opaque));
                if e.kind == NodeKind::Dir {
                    walk(store, layer, e.ino, &path, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(store, layer, ROOT_INO, "", &mut out);
        out
    }

    fn content(store: &Store, layer: LayerId, path: &str) -> Vec<u8> {
        let mut ino = ROOT_INO;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            ino = store
                .lookup(layer, ino, part.as_bytes())
                .unwrap()
                .unwrap()
                .ino;
        }
        let node = store.node(layer, ino).unwrap().unwrap();
        let mut buf = vec![0u8; node.size as usize];
        store.read(&node, 0, &mut buf).unwrap();
        buf
    }

    #[test]
    fn upper_is_applied_on_the_own_layer() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("home")).unwrap();
        // Ancestor: /gone (file), /keep (file), /d/x.
        let anc = t.path().join("anc");
        fs::create_dir_all(anc.join("d")).unwrap();
        fs::write(anc.join("gone"), b"a").unwrap();
        fs::write(anc.join("keep"), b"k").unwrap();
        fs::write(anc.join("d/x"), b"x").unwrap();
        let anc_layer = ingest_dir(&store, &anc, &NoProgress).unwrap();
        store
            .commit_image("anc", None, &anc_layer, ImageState::Sealed)
            .unwrap();
        // Own layer: /own1, /own2 (hard link of own1), /big (object), /o/{a,b}, /m/{p,q}.
        let own = t.path().join("own");
        fs::create_dir_all(own.join("o")).unwrap();
        fs::create_dir_all(own.join("m")).unwrap();
        fs::write(own.join("own1"), b"1").unwrap();
        fs::hard_link(own.join("own1"), own.join("own2")).unwrap();
        fs::write(own.join("big"), vec![7u8; 10_000]).unwrap();
        fs::write(own.join("o/a"), b"a").unwrap();
        fs::write(own.join("o/b"), b"b").unwrap();
        fs::write(own.join("m/p"), b"p").unwrap();
        fs::write(own.join("m/q"), b"q").unwrap();
        let own_layer = ingest_dir(&store, &own, &NoProgress).unwrap();
        store
            .commit_image("img", Some("anc"), &own_layer, ImageState::Open)
            .unwrap();
        // Upper: whiteouts for /gone (ancestor has it) and /own2 (only own has it),
        // opaque /o with c, /m merged with p replaced and q whited out, a new /new.
        let up = t.path().join("upper");
        fs::create_dir_all(up.join("o")).unwrap();
        fs::create_dir_all(up.join("m")).unwrap();
        whiteout(&up.join("gone"));
        whiteout(&up.join("own2"));
        opaque(&up.join("o"));
        fs::write(up.join("o/c"), b"c").unwrap();
        fs::write(up.join("m/p"), b"P2").unwrap();
        whiteout(&up.join("m/q"));
        fs::write(up.join("new"), b"n").unwrap();

        let new = apply_upper(
            &store,
            own_layer.layer,
            &[anc_layer.layer],
            &up,
            &NoProgress,
        )
        .unwrap();
        store
            .replace_layer("img", &new, ImageState::Sealed)
            .unwrap();
        let got = listing(&store, new.layer);
        let want: Vec<(String, NodeKind, bool)> = vec![
            ("/big".into(), NodeKind::File, false),
            ("/gone".into(), NodeKind::Whiteout, false),
            ("/m".into(), NodeKind::Dir, false),
            ("/m/p".into(), NodeKind::File, false),
            ("/new".into(), NodeKind::File, false),
            ("/o".into(), NodeKind::Dir, true),
            ("/o/c".into(), NodeKind::File, false),
            ("/own1".into(), NodeKind::File, false),
        ];
        assert_eq!(got, want);
        assert_eq!(content(&store, new.layer, "m/p"), b"P2");
        assert_eq!(content(&store, new.layer, "big"), vec![7u8; 10_000]);
        assert_eq!(content(&store, new.layer, "own1"), b"1");
        // The old layer is gone; the image points at the new one.
        assert_eq!(store.image("img").unwrap().unwrap().layer, new.layer);
        assert!(store.node(own_layer.layer, ROOT_INO).unwrap().is_none());
    }

    #[test]
    fn base_hard_links_stay_links_and_a_replaced_dir_becomes_opaque() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("home")).unwrap();
        let anc = t.path().join("anc");
        fs::create_dir_all(anc.join("x")).unwrap();
        fs::write(anc.join("x/under"), b"u").unwrap();
        let anc_layer = ingest_dir(&store, &anc, &NoProgress).unwrap();
        let own = t.path().join("own");
        fs::create_dir_all(&own).unwrap();
        fs::write(own.join("h1"), b"h").unwrap();
        fs::hard_link(own.join("h1"), own.join("h2")).unwrap();
        fs::write(own.join("x"), b"file hiding the ancestor dir").unwrap();
        let own_layer = ingest_dir(&store, &own, &NoProgress).unwrap();
        let up = t.path().join("upper");
        fs::create_dir_all(up.join("x")).unwrap();
        fs::write(up.join("x/in"), b"i").unwrap();
        let new = apply_upper(
            &store,
            own_layer.layer,
            &[anc_layer.layer],
            &up,
            &NoProgress,
        )
        .unwrap();
        let got = listing(&store, new.layer);
        assert_eq!(
            got,
            vec![
                ("/h1".to_string(), NodeKind::File, false),
                ("/h2".to_string(), NodeKind::File, false),
                ("/x".to_string(), NodeKind::Dir, true),
                ("/x/in".to_string(), NodeKind::File, false),
            ]
        );
        let h1 = store.lookup(new.layer, ROOT_INO, b"h1").unwrap().unwrap();
        let h2 = store.lookup(new.layer, ROOT_INO, b"h2").unwrap().unwrap();
        assert_eq!(h1.ino, h2.ino);
        assert_eq!(store.node(new.layer, h1.ino).unwrap().unwrap().nlink, 2);
    }
}

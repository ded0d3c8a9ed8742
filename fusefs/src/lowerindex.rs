//! Merged indexes of lower directories, so that a lookup does not walk every layer.
//!
//! A merged directory with lower parts has a *chain*: the lower directories merged below it,
//! top first (`NodeState::lower_dirs`). Looking a name up layer by layer costs one
//! [`Lower::lookup`] per layer of the chain, so the cost grew with the depth of the stack.
//!
//! A [`DirIndex`] is built once per chain by reading each layer's listing once (one
//! [`Lower::read_dir`] per layer) and merging them: for every visible name it keeps the
//! layers that hold it, top first, up to the first whiteout or non-directory (what a
//! layer-by-layer walk would have visited). A lookup is then one hash probe, whatever the
//! depth; a name absent from the index is a negative answer. Opaque lower directories are
//! applied when a hit is turned into a [`LowerHit`] (the layer caches its opaque flags).
//!
//! Lower layers never change while mounted, so an index never goes stale: changes made
//! through the mount live in the upper directory, which the callers check first. Indexes
//! are kept in a bounded LRU, counted both in directories and in entries. A directory whose
//! chain holds more than [`LowerIndex::max_dir_entries`] names is not indexed: its lookups
//! go layer by layer, with the answers kept in a bounded per-name LRU.
//!
//! Short chains (one or two layers) are not indexed for a lookup alone (reading a whole
//! listing to answer one name would cost more than the walk); they are indexed when the
//! directory is listed anyway, which makes the lookups that follow a listing free.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::num::NonZeroUsize;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::error::Result;
use crate::lower::{Kind, Lower, LowerEntry};
use crate::node::LowerRef;

/// Chains at least this long are indexed on the first lookup.
pub const INDEX_ON_LOOKUP_MIN_LAYERS: usize = 3;

/// The layers that hold one name, top first (whiteouts excluded: a whiteout ends the list,
/// and a name whose top entry is a whiteout is not in the index at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hits {
    /// Held by one layer (the common case, kept inline).
    One([(u32, LowerEntry); 1]),
    /// Held by several layers (a directory present in more than one layer).
    Many(Box<[(u32, LowerEntry)]>),
}

impl Hits {
    /// A name held by one layer.
    pub fn one(layer: usize, e: LowerEntry) -> Hits {
        Hits::One([(layer as u32, e)])
    }

    /// The hits, top first, as (layer index, entry).
    pub fn as_slice(&self) -> &[(u32, LowerEntry)] {
        match self {
            Hits::One(a) => a,
            Hits::Many(v) => v,
        }
    }

    /// The topmost (layer, entry).
    pub fn top(&self) -> (usize, LowerEntry) {
        let (l, e) = self.as_slice()[0];
        (l as usize, e)
    }

    fn push(&mut self, layer: u32, e: LowerEntry) {
        match self {
            Hits::One([(l, e0)]) => {
                *self = Hits::Many(vec![(*l, *e0), (layer, e)].into_boxed_slice())
            }
            Hits::Many(v) => {
                let mut nv = std::mem::take(v).into_vec();
                nv.push((layer, e));
                *v = nv.into_boxed_slice();
            }
        }
    }

    fn last_kind(&self) -> Kind {
        let s = self.as_slice();
        s[s.len() - 1].1.kind
    }
}

/// The merged lower part of one directory: visible name -> the layers holding it.
#[derive(Debug)]
pub struct DirIndex {
    chain: Box<[LowerRef]>,
    names: HashMap<Box<[u8]>, Hits>,
}

/// Building state of one name.
struct Building {
    hits: Option<Hits>,
    /// No lower layer can add to this name any more.
    closed: bool,
}

impl DirIndex {
    /// Builds the index of `chain` by reading every layer's listing once. Returns `None` if
    /// more than `max_entries` names turn up.
    pub fn build(
        lowers: &[Arc<dyn Lower>],
        chain: &[LowerRef],
        max_entries: usize,
    ) -> Result<Option<DirIndex>> {
        let mut map: HashMap<Box<[u8]>, Building> = HashMap::new();
        let mut too_big = false;
        for &(layer, dir) in chain {
            let mut err = None;
            lowers[layer]
                .read_dir(dir, None, &mut |name, e| {
                    match map.get_mut(name.as_bytes()) {
                        None => {
                            if map.len() >= max_entries {
                                too_big = true;
                                return false;
                            }
                            let b = if e.kind == Kind::Whiteout {
                                Building {
                                    hits: None,
                                    closed: true,
                                }
                            } else {
                                Building {
                                    hits: Some(Hits::one(layer, e)),
                                    closed: e.kind != Kind::Dir,
                                }
                            };
                            map.insert(name.as_bytes().into(), b);
                        }
                        Some(b) if b.closed => {}
                        Some(b) => {
                            // the name is an open directory: this layer continues or ends it
                            match e.kind {
                                Kind::Dir => {
                                    if let Some(h) = &mut b.hits {
                                        debug_assert_eq!(h.last_kind(), Kind::Dir);
                                        h.push(layer as u32, e);
                                    }
                                }
                                _ => b.closed = true,
                            }
                        }
                    }
                    true
                })
                .unwrap_or_else(|e| err = Some(e));
            if let Some(e) = err {
                return Err(e);
            }
            if too_big {
                return Ok(None);
            }
        }
        let names = map
            .into_iter()
            .filter_map(|(n, b)| b.hits.map(|h| (n, h)))
            .collect();
        Ok(Some(DirIndex {
            chain: chain.into(),
            names,
        }))
    }

    /// The layers holding `name`, or `None` if no lower layer shows it.
    pub fn get(&self, name: &OsStr) -> Option<&Hits> {
        self.names.get(name.as_bytes())
    }

    /// Number of visible names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no lower layer shows any name here.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Every visible name with its topmost (layer, entry), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&OsStr, (usize, LowerEntry))> {
        self.names
            .iter()
            .map(|(n, h)| (OsStr::from_bytes(n), h.top()))
    }

    /// The chain this index merges.
    pub fn chain(&self) -> &[LowerRef] {
        &self.chain
    }
}

struct Inner {
    dirs: LruCache<LowerRef, Arc<DirIndex>>,
    entries: usize,
    /// Chains found too big to index (by top directory).
    too_big: LruCache<LowerRef, ()>,
}

/// Bounded cache of [`DirIndex`]es by chain, plus per-name answers for unindexed chains.
pub struct LowerIndex {
    inner: Mutex<Inner>,
    names: Mutex<LruCache<(LowerRef, usize, OsString), Option<Hits>>>,
    max_entries: usize,
    /// Chains with more names than this are not indexed.
    pub max_dir_entries: usize,
}

impl std::fmt::Debug for LowerIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("LowerIndex")
            .field("dirs", &g.dirs.len())
            .field("entries", &g.entries)
            .finish()
    }
}

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n.max(1)).unwrap_or(NonZeroUsize::MIN)
}

impl LowerIndex {
    /// A cache of at most `max_dirs` indexes holding at most `max_entries` names in all;
    /// one chain may hold at most `max_dir_entries` names to be indexed; `max_names`
    /// per-name answers are kept for unindexed chains.
    pub fn new(
        max_dirs: usize,
        max_entries: usize,
        max_dir_entries: usize,
        max_names: usize,
    ) -> LowerIndex {
        LowerIndex {
            inner: Mutex::new(Inner {
                dirs: LruCache::new(nz(max_dirs)),
                entries: 0,
                too_big: LruCache::new(nz(max_dirs)),
            }),
            names: Mutex::new(LruCache::new(nz(max_names))),
            max_entries: max_entries.max(1),
            max_dir_entries: max_dir_entries.min(max_entries).max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached index of `chain`, if any.
    pub fn get(&self, chain: &[LowerRef]) -> Option<Arc<DirIndex>> {
        let top = *chain.first()?;
        let mut g = self.lock();
        let ix = g.dirs.get(&top)?;
        if &*ix.chain == chain {
            Some(ix.clone())
        } else {
            None
        }
    }

    /// Whether `chain` is known to be too big to index.
    pub fn is_too_big(&self, chain: &[LowerRef]) -> bool {
        match chain.first() {
            Some(top) => self.lock().too_big.contains(top),
            None => false,
        }
    }

    /// The index of `chain`, built (and cached) if needed; `None` if it is too big.
    pub fn get_or_build(
        &self,
        lowers: &[Arc<dyn Lower>],
        chain: &[LowerRef],
    ) -> Result<Option<Arc<DirIndex>>> {
        if let Some(ix) = self.get(chain) {
            return Ok(Some(ix));
        }
        let Some(&top) = chain.first() else {
            return Ok(None);
        };
        if self.is_too_big(chain) {
            return Ok(None);
        }
        // Built outside the lock: two threads may build the same index; one wins.
        match DirIndex::build(lowers, chain, self.max_dir_entries)? {
            None => {
                self.lock().too_big.put(top, ());
                Ok(None)
            }
            Some(ix) => {
                let ix = Arc::new(ix);
                let mut g = self.lock();
                let n = ix.len();
                if let Some(old) = g.dirs.put(top, ix.clone()) {
                    g.entries -= old.len();
                }
                g.entries += n;
                while g.entries > self.max_entries && g.dirs.len() > 1 {
                    match g.dirs.pop_lru() {
                        Some((_, old)) => g.entries -= old.len(),
                        None => break,
                    }
                }
                Ok(Some(ix))
            }
        }
    }

    /// A cached per-name answer for an unindexed chain.
    pub fn get_name(&self, chain: &[LowerRef], name: &OsStr) -> Option<Option<Hits>> {
        let top = *chain.first()?;
        let key = (top, chain.len(), name.to_os_string());
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
    }

    /// Remembers a per-name answer for an unindexed chain.
    pub fn put_name(&self, chain: &[LowerRef], name: &OsStr, hits: Option<Hits>) {
        if let Some(&top) = chain.first() {
            self.names
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .put((top, chain.len(), name.to_os_string()), hits);
        }
    }

    /// Number of cached indexes and of the names they hold.
    pub fn stats(&self) -> (usize, usize) {
        let g = self.lock();
        (g.dirs.len(), g.entries)
    }
}

/// Walks `chain` layer by layer for `name` (the unindexed path), returning what an index
/// would hold for it.
pub fn walk_layers(
    lowers: &[Arc<dyn Lower>],
    chain: &[LowerRef],
    name: &OsStr,
) -> Result<Option<Hits>> {
    let mut hits: Option<Hits> = None;
    for &(layer, d) in chain {
        match lowers[layer].lookup(d, name)? {
            None => continue,
            Some(e) if e.kind == Kind::Whiteout => break,
            Some(e) => {
                let is_dir = e.kind == Kind::Dir;
                match &mut hits {
                    None => hits = Some(Hits::one(layer, e)),
                    Some(h) => {
                        if !is_dir {
                            break;
                        }
                        h.push(layer as u32, e);
                    }
                }
                if !is_dir {
                    break;
                }
                // Opaque directories end the walk; checked here to avoid needless lookups.
                if lowers[layer].is_opaque(e.ino)? {
                    break;
                }
            }
        }
    }
    Ok(hits)
}

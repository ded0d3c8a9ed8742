//! Merged directory listings, kept in a bounded LRU cache and dropped whenever stacko
//! changes the directory.

use std::ffi::OsString;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::lower::Kind;

/// One entry of a merged listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Entry name.
    pub name: OsString,
    /// Kind of the entry.
    pub kind: Kind,
    /// Merged inode number the entry has (as a lookup would give it).
    pub ino: u64,
}

/// A merged listing, shared between the cache and open directory handles.
pub type Listing = Arc<Vec<DirEntry>>;

const GEN_SLOTS: usize = 256;

/// Bounded cache of merged listings by directory node number.
///
/// A listing is built without locks while the directory may change; each invalidation bumps
/// a generation (per slot of directory numbers), and a listing is only cached if no
/// invalidation of its slot happened since it started ([`DirCache::generation`],
/// [`DirCache::put_if_unchanged`]). Otherwise a listing read just before a concurrent
/// rename could be cached after that rename's invalidation, and hide the moved entry.
#[derive(Debug)]
pub struct DirCache {
    lru: Mutex<LruCache<u64, Listing>>,
    gens: Vec<AtomicU64>,
}

fn slot(dir: u64) -> usize {
    (dir.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize % GEN_SLOTS
}

impl DirCache {
    /// A cache holding at most `cap` listings (at least one).
    pub fn new(cap: usize) -> Self {
        DirCache {
            lru: Mutex::new(LruCache::new(
                NonZeroUsize::new(cap.max(1)).unwrap_or(NonZeroUsize::MIN),
            )),
            gens: (0..GEN_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The invalidation generation of `dir`: read it before building a listing, and cache
    /// the result with [`DirCache::put_if_unchanged`].
    pub fn generation(&self, dir: u64) -> u64 {
        self.gens[slot(dir)].load(Ordering::Acquire)
    }

    /// Caches the listing of `dir` unless `dir` may have changed since `generation`.
    pub fn put_if_unchanged(&self, dir: u64, l: Listing, generation: u64) {
        let mut lru = self.lru.lock().unwrap_or_else(|e| e.into_inner());
        if self.gens[slot(dir)].load(Ordering::Acquire) == generation {
            lru.put(dir, l);
        }
    }

    /// The cached listing of `dir`.
    pub fn get(&self, dir: u64) -> Option<Listing> {
        self.lru
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&dir)
            .cloned()
    }

    /// Caches the listing of `dir`.
    pub fn put(&self, dir: u64, l: Listing) {
        self.lru
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(dir, l);
    }

    /// Drops the listing of `dir` (call on every change inside it).
    pub fn invalidate(&self, dir: u64) {
        let mut lru = self.lru.lock().unwrap_or_else(|e| e.into_inner());
        self.gens[slot(dir)].fetch_add(1, Ordering::AcqRel);
        lru.pop(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_invalidated() {
        let c = DirCache::new(2);
        let l = |n: &str| {
            Arc::new(vec![DirEntry {
                name: n.into(),
                kind: Kind::File,
                ino: 5,
            }])
        };
        c.put(1, l("a"));
        c.put(2, l("b"));
        c.put(3, l("c"));
        assert!(c.get(1).is_none(), "least recently used listing evicted");
        assert_eq!(c.get(3).map(|x| x[0].name.clone()), Some("c".into()));
        c.invalidate(3);
        assert!(c.get(3).is_none());
    }

    #[test]
    fn a_listing_built_across_an_invalidation_is_not_cached() {
        let c = DirCache::new(4);
        let l = Arc::new(vec![DirEntry {
            name: "old".into(),
            kind: Kind::File,
            ino: 5,
        }]);
        let g = c.generation(7);
        c.invalidate(7); // a rename in dir 7 while its listing was being read
        c.put_if_unchanged(7, l.clone(), g);
        assert!(c.get(7).is_none());
        let g = c.generation(7);
        c.put_if_unchanged(7, l, g);
        assert!(c.get(7).is_some());
    }
}

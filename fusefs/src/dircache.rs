//! Merged directory listings, kept in a bounded LRU cache and dropped whenever stacko
//! changes the directory.

use std::ffi::OsString;
use std::num::NonZeroUsize;
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

/// Bounded cache of merged listings by directory node number.
#[derive(Debug)]
pub struct DirCache {
    lru: Mutex<LruCache<u64, Listing>>,
}

impl DirCache {
    /// A cache holding at most `cap` listings (at least one).
    pub fn new(cap: usize) -> Self {
        DirCache { lru: Mutex::new(LruCache::new(NonZeroUsize::new(cap.max(1)).unwrap_or(NonZeroUsize::MIN))) }
    }

    /// The cached listing of `dir`.
    pub fn get(&self, dir: u64) -> Option<Listing> {
        self.lru.lock().unwrap_or_else(|e| e.into_inner()).get(&dir).cloned()
    }

    /// Caches the listing of `dir`.
    pub fn put(&self, dir: u64, l: Listing) {
        self.lru.lock().unwrap_or_else(|e| e.into_inner()).put(dir, l);
    }

    /// Drops the listing of `dir` (call on every change inside it).
    pub fn invalidate(&self, dir: u64) {
        self.lru.lock().unwrap_or_else(|e| e.into_inner()).pop(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_invalidated() {
        let c = DirCache::new(2);
        let l = |n: &str| Arc::new(vec![DirEntry { name: n.into(), kind: Kind::File, ino: 5 }]);
        c.put(1, l("a"));
        c.put(2, l("b"));
        c.put(3, l("c"));
        assert!(c.get(1).is_none(), "least recently used listing evicted");
        assert_eq!(c.get(3).map(|x| x[0].name.clone()), Some("c".into()));
        c.invalidate(3);
        assert!(c.get(3).is_none());
    }
}

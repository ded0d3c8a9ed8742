//! A hash map split into independently locked shards, so that concurrent readers and writers
//! of different keys rarely contend (no global lock on the read path).

use std::collections::HashMap;
use std::sync::RwLock;

const SHARDS: usize = 32;

/// A `u64`-keyed map in [`SHARDS`] `RwLock`ed shards.
#[derive(Debug)]
pub struct ShardedMap<V> {
    shards: Vec<RwLock<HashMap<u64, V>>>,
}

impl<V> Default for ShardedMap<V> {
    fn default() -> Self {
        Self::new()
    }
}

fn shard_of(key: u64) -> usize {
    // Fibonacci hashing spreads sequential and high-bit-tagged keys alike.
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS
}

impl<V> ShardedMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        ShardedMap { shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect() }
    }

    fn shard(&self, key: u64) -> &RwLock<HashMap<u64, V>> {
        &self.shards[shard_of(key)]
    }

    /// Runs `f` on the value of `key`, if present, under the shard's read lock.
    pub fn with<R>(&self, key: u64, f: impl FnOnce(&V) -> R) -> Option<R> {
        let g = self.shard(key).read().unwrap_or_else(|e| e.into_inner());
        g.get(&key).map(f)
    }

    /// Runs `f` on the shard holding `key`, under its write lock.
    pub fn with_mut<R>(&self, key: u64, f: impl FnOnce(&mut HashMap<u64, V>) -> R) -> R {
        let mut g = self.shard(key).write().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// Number of entries (sums every shard; for tests and statistics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V: Clone> ShardedMap<V> {
    /// A clone of the value of `key`.
    pub fn get(&self, key: u64) -> Option<V> {
        self.with(key, |v| v.clone())
    }
}

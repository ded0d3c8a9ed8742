//! A hash map split into independently locked shards, so that concurrent readers and writers
//! of different keys rarely contend (no global lock on the read path).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::RwLock;

/// Hasher for the `u64` keys (inode numbers, handles): a splitmix64 finalizer, much cheaper
/// than the default SipHash on the per-entry paths (lookup, readdirplus), and mixed
/// independently of [`shard_of`] so that keys of one shard still spread over its table.
#[derive(Debug, Default, Clone, Copy)]
pub struct U64Hasher(u64);

impl Hasher for U64Hasher {
    fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        // only u64 keys are hashed; fold anything else in byte by byte
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 ^= i;
    }
}

/// The map type of one shard.
type Shard<V> = HashMap<u64, V, BuildHasherDefault<U64Hasher>>;

const SHARDS: usize = 32;

/// A `u64`-keyed map in [`SHARDS`] `RwLock`ed shards.
#[derive(Debug)]
pub struct ShardedMap<V> {
    shards: Vec<RwLock<Shard<V>>>,
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
        ShardedMap {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
        }
    }

    fn shard(&self, key: u64) -> &RwLock<Shard<V>> {
        &self.shards[shard_of(key)]
    }

    /// Runs `f` on the value of `key`, if present, under the shard's read lock.
    pub fn with<R>(&self, key: u64, f: impl FnOnce(&V) -> R) -> Option<R> {
        let g = self.shard(key).read().unwrap_or_else(|e| e.into_inner());
        g.get(&key).map(f)
    }

    /// Runs `f` on the shard holding `key`, under its write lock.
    pub fn with_mut<R>(&self, key: u64, f: impl FnOnce(&mut Shard<V>) -> R) -> R {
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

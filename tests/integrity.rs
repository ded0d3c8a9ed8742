//! Data-integrity exerciser on the engine under test, as root.
//!
//! 100,000 seeded random operations (pwrite at random offsets up to 256 KiB, ftruncate grow and
//! shrink, fallocate PUNCH_HOLE|KEEP_SIZE, shared writable mmap + msync, pread, fsync,
//! close/reopen) over files that start in the lower layers (copy-up on first write; one is
//! chmod-ed first for a metadata-only copy-up) and files created in the upper layer. A model
//! (`Vec<u8>` per file) is compared byte for byte at every read and mmap, in full at the end, and
//! again after an unmount + remount. Zero mismatches required; a mismatch reports seed, op index,
//! file and offset. See `common/integrity.rs`.
//!
//! Env: `STACKO_E2E_SEED` (replay a seed), `STACKO_E2E_INTEGRITY_OPS` (default 100000).

mod common;

use common::actor::Actor;
use common::integrity::{self, Config};

#[test]
fn integrity_100k_ops() {
    let Some(engine) = common::setup("integrity") else {
        return;
    };
    let cfg = Config {
        ops: common::env_u64("STACKO_E2E_INTEGRITY_OPS", 100_000),
        seed: common::seed_from_env("STACKO_E2E_SEED"),
        max_size: 4 * 1024 * 1024,
        max_io: 256 * 1024,
    };
    eprintln!("integrity: {} ops", cfg.ops);
    let actor = Actor::new(None);
    if let Err(m) = integrity::run(&engine, &actor, &cfg) {
        panic!("integrity (seed {}): {m}", cfg.seed);
    }
}

//! Model-checked data-integrity exerciser.
//!
//! Files that start in lower layers (so their first write copies them up; one gets a
//! metadata-only copy-up by chmod first) and files created in the upper layer are driven by a
//! seeded random sequence of pwrite (random offset, up to 256 KiB), ftruncate (grow/shrink),
//! fallocate(PUNCH_HOLE|KEEP_SIZE), shared writable mmap + msync, pread, fsync and close/reopen.
//! A model (`Vec<u8>` per file) is checked byte for byte at every read (and the file size at
//! every read), every mmap (the mapping must show the model before it is written), in full at
//! the end, and again after the engine is unmounted and remounted. Any mismatch reports the
//! seed, op index, file and first differing offset.

use super::actor::Actor;
use super::mount::{EngineMount, EngineOpts};
use super::sys::{self, errno_name, Fd};
use super::{layers, Engine, Rng};
use std::path::{Path, PathBuf};

/// Parameters of one run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Number of random operations.
    pub ops: u64,
    /// PRNG seed (printed by the caller).
    pub seed: u64,
    /// Largest file size the ops produce.
    pub max_size: u64,
    /// Largest single write/read/mmap.
    pub max_io: u64,
}

struct File {
    rel: String,
    model: Vec<u8>,
    fd: Option<Fd>,
    history: Vec<String>,
}

const PAGE: u64 = 4096;

fn fill(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(
        a.iter()
            .zip(b.iter())
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len())),
    )
}

/// Builds the lower layers: returns (lowers top-first, names of lower-origin files).
fn build_lowers(base: &Path, owner: (u32, u32)) -> (Vec<PathBuf>, Vec<String>) {
    let l1 = base.join("l1");
    let l0 = base.join("l0");
    for d in [&l1, &l0, &l0.join("sub")] {
        std::fs::create_dir_all(d).expect("mkdir lower");
        sys::lchown(d, owner.0, owner.1).expect("chown lower dir");
    }
    let files: [(&PathBuf, &str, usize, u32, bool); 5] = [
        (&l0, "lo0", 0, 0o644, true),
        (&l0, "lo1", 100 * 1024, 0o644, true),
        (&l0, "lo2", 1024 * 1024 + 123, 0o644, true),
        (&l0, "sub/lo3", 300 * 1024, 0o666, false), // root-owned, world-writable
        (&l1, "lo4", 50 * 1024 + 7, 0o644, true),
    ];
    let mut names = Vec::new();
    for (i, (dir, name, len, mode, owned)) in files.iter().enumerate() {
        let p = dir.join(name);
        sys::write_file(&p, &layers::pattern(100 + i as u32, *len), 0o600)
            .expect("write lower file");
        if *owned {
            sys::lchown(&p, owner.0, owner.1).expect("chown lower file");
        }
        sys::chmod(&p, *mode).expect("chmod lower file");
        names.push(name.to_string());
    }
    (vec![l1, l0], names)
}

fn open_rw(root: &Path, rel: &str) -> Result<Fd, String> {
    sys::open(&root.join(rel), libc::O_RDWR, 0)
        .map_err(|e| format!("open {rel} O_RDWR: {}", errno_name(e)))
}

fn verify_whole(root: &Path, f: &File) -> Result<(), String> {
    let got = sys::read_file(&root.join(&f.rel))
        .map_err(|e| format!("read {}: {}", f.rel, errno_name(e)))?;
    if let Some(at) = first_diff(&f.model, &got) {
        return Err(format!(
            "file {} differs at offset {at} (model {} bytes, file {} bytes)",
            f.rel,
            f.model.len(),
            got.len()
        ));
    }
    Ok(())
}

/// Runs the exerciser on a fresh engine mount. `actor` does all file I/O (as the user in the
/// rootless tier; the engine then runs as that user too).
pub fn run(engine: &Engine, actor: &Actor, cfg: &Config) -> Result<(), String> {
    let dir = super::tempdir("stacko-integrity-");
    let owner = actor.creds.unwrap_or((0, 0));
    let (lowers, lower_names) = build_lowers(dir.path(), owner);
    for d in ["u", "w", "m"] {
        let p = dir.path().join(d);
        sys::mkdir(&p, 0o755).expect("mkdir");
        sys::lchown(&p, owner.0, owner.1).expect("chown");
    }
    let opts = EngineOpts {
        lowers,
        upper_work: Some((dir.path().join("u"), dir.path().join("w"))),
        mnt: dir.path().join("m"),
        user: actor.creds,
        log: dir.path().join("engine.log"),
    };
    let mut mount = EngineMount::mount(engine, &opts)?;
    let root = opts.mnt.clone();
    let cfg2 = cfg.clone();
    let result = actor.run(move || exercise(&root, lower_names, &cfg2));
    let files = match result {
        Ok(files) => files,
        Err(m) => return Err(format!("{m}\n--- engine log ---\n{}", mount.log())),
    };
    mount.unmount()?;
    let mut mount = EngineMount::mount(engine, &opts)?;
    let root = opts.mnt.clone();
    let seed = cfg.seed;
    actor
        .run(move || -> Result<(), String> {
            for f in &files {
                verify_whole(&root, f).map_err(|m| format!("seed {seed}: after remount: {m}"))?;
            }
            Ok(())
        })
        .map_err(|m| format!("{m}\n--- engine log ---\n{}", mount.log()))?;
    mount.unmount()?;
    drop(dir);
    Ok(())
}

fn exercise(root: &Path, lower_names: Vec<String>, cfg: &Config) -> Result<Vec<File>, String> {
    let seed = cfg.seed;
    let mut rng = Rng::new(seed);
    let mut files = Vec::new();
    for name in &lower_names {
        let model = sys::read_file(&root.join(name))
            .map_err(|e| format!("read lower-origin {name}: {}", errno_name(e)))?;
        // The content seen through the mount must be the lower file's.
        let i = lower_names.iter().position(|n| n == name).unwrap_or(0);
        let expect_len = [
            0usize,
            100 * 1024,
            1024 * 1024 + 123,
            300 * 1024,
            50 * 1024 + 7,
        ][i];
        if model != layers::pattern(100 + i as u32, expect_len) {
            return Err(format!(
                "seed {seed}: lower-origin file {name} does not read back as in the lower layer"
            ));
        }
        files.push(File {
            rel: name.clone(),
            model,
            fd: None,
            history: Vec::new(),
        });
    }
    // Metadata-only copy-up first, then data.
    sys::chmod(&root.join("lo1"), 0o664).map_err(|e| format!("chmod lo1: {}", errno_name(e)))?;
    for i in 0..3 {
        let rel = format!("up{i}");
        let fd = sys::open(
            &root.join(&rel),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
            0o644,
        )
        .map_err(|e| format!("create {rel}: {}", errno_name(e)))?;
        files.push(File {
            rel,
            model: Vec::new(),
            fd: Some(fd),
            history: Vec::new(),
        });
    }
    let max_size = cfg.max_size;
    let max_io = cfg.max_io;
    for n in 0..cfg.ops {
        let fi = rng.below(files.len() as u64) as usize;
        let f = &mut files[fi];
        if f.fd.is_none() {
            f.fd = Some(open_rw(root, &f.rel).map_err(|m| format!("seed {seed} op {n}: {m}"))?);
        }
        let size = f.model.len() as u64;
        let roll = rng.below(100);
        let ctx = |f: &File, what: String| {
            let h: Vec<_> = f.history.iter().rev().take(8).rev().cloned().collect();
            format!(
                "seed {seed}, op {n}, file {}: {what}\n  recent ops on this file: {h:?}",
                f.rel
            )
        };
        let fd = f.fd.as_ref().expect("open");
        if roll < 32 {
            // pwrite
            let off = rng.below((size + 64 * 1024).min(max_size));
            let len = rng.len_up_to(max_io).min(max_size - off);
            let data = fill(&mut rng, len as usize);
            f.history
                .push(format!("op {n}: pwrite off {off} len {len}"));
            let w = sys::pwrite_all(fd, &data, off)
                .map_err(|e| ctx(f, format!("pwrite off {off} len {len}: {}", errno_name(e))))?;
            if w != data.len() {
                return Err(ctx(f, format!("pwrite returned {w}, expected {len}")));
            }
            let end = (off + len) as usize;
            if f.model.len() < end {
                f.model.resize(end, 0);
            }
            f.model[off as usize..end].copy_from_slice(&data);
        } else if roll < 60 {
            // pread + verify
            let off = rng.below(size + 4096);
            let len = rng.len_up_to(max_io);
            f.history.push(format!("op {n}: pread off {off} len {len}"));
            let got = sys::pread(fd, len as usize, off)
                .map_err(|e| ctx(f, format!("pread off {off}: {}", errno_name(e))))?;
            let lo = (off as usize).min(f.model.len());
            let hi = ((off + len) as usize).min(f.model.len());
            let want = &f.model[lo..hi];
            if let Some(at) = first_diff(want, &got) {
                return Err(ctx(
                    f,
                    format!(
                        "MISMATCH reading off {off} len {len}: first difference at file offset {} (expected {} bytes, got {})",
                        off + at as u64,
                        want.len(),
                        got.len()
                    ),
                ));
            }
            let st = sys::fstat(fd).map_err(|e| ctx(f, format!("fstat: {}", errno_name(e))))?;
            if st.st_size as u64 != f.model.len() as u64 {
                return Err(ctx(
                    f,
                    format!(
                        "MISMATCH size: fstat {} vs model {}",
                        st.st_size,
                        f.model.len()
                    ),
                ));
            }
        } else if roll < 68 {
            // truncate grow or shrink
            let new = if rng.chance(1, 2) {
                rng.below(size + 1)
            } else {
                size + rng.below((max_size - size).max(1)).min(512 * 1024)
            };
            f.history.push(format!("op {n}: ftruncate {size} -> {new}"));
            sys::ftruncate(fd, new)
                .map_err(|e| ctx(f, format!("ftruncate {new}: {}", errno_name(e))))?;
            f.model.resize(new as usize, 0);
        } else if roll < 76 {
            // punch hole, keep size
            if size == 0 {
                continue;
            }
            let off = rng.below(size);
            let len = rng.len_up_to(max_io);
            f.history.push(format!("op {n}: punch off {off} len {len}"));
            sys::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
            .map_err(|e| {
                ctx(
                    f,
                    format!(
                        "fallocate(PUNCH_HOLE|KEEP_SIZE) off {off} len {len}: {}",
                        errno_name(e)
                    ),
                )
            })?;
            let hi = ((off + len) as usize).min(f.model.len());
            f.model[off as usize..hi].iter_mut().for_each(|b| *b = 0);
        } else if roll < 88 {
            // shared writable mmap + msync
            if size == 0 {
                continue;
            }
            let pg = rng.below(size.div_ceil(PAGE));
            let off = pg * PAGE;
            let len = rng.len_up_to(max_io).min(size - off);
            f.history
                .push(format!("op {n}: mmap write off {off} len {len}"));
            let data = fill(&mut rng, len as usize);
            let map = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd.0,
                    off as libc::off_t,
                )
            };
            if map == libc::MAP_FAILED {
                let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                return Err(ctx(
                    f,
                    format!(
                        "mmap(MAP_SHARED, RW) off {off} len {len}: {}",
                        errno_name(e)
                    ),
                ));
            }
            let slice = unsafe { std::slice::from_raw_parts_mut(map as *mut u8, len as usize) };
            let want = &f.model[off as usize..(off + len) as usize];
            if let Some(at) = first_diff(want, slice) {
                unsafe { libc::munmap(map, len as usize) };
                return Err(ctx(
                    f,
                    format!(
                        "MISMATCH in mmap view before writing: first difference at file offset {}",
                        off + at as u64
                    ),
                ));
            }
            slice.copy_from_slice(&data);
            let r = unsafe { libc::msync(map, len as usize, libc::MS_SYNC) };
            let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            unsafe { libc::munmap(map, len as usize) };
            if r != 0 {
                return Err(ctx(f, format!("msync: {}", errno_name(e))));
            }
            f.model[off as usize..(off + len) as usize].copy_from_slice(&data);
        } else if roll < 94 {
            // close and reopen (close reports flush errors)
            f.history.push(format!("op {n}: close/reopen"));
            let fd = f.fd.take().expect("open");
            fd.close()
                .map_err(|e| ctx(f, format!("close: {}", errno_name(e))))?;
            f.fd = Some(open_rw(root, &f.rel).map_err(|m| ctx(f, m))?);
        } else if roll < 96 {
            f.history.push(format!("op {n}: fsync"));
            sys::fsync(fd).map_err(|e| ctx(f, format!("fsync: {}", errno_name(e))))?;
        } else {
            f.history.push(format!("op {n}: verify whole file"));
            verify_whole(root, f).map_err(|m| ctx(f, format!("MISMATCH {m}")))?;
        }
        if f.history.len() > 64 {
            f.history.drain(..32);
        }
    }
    for f in &mut files {
        if let Some(fd) = f.fd.take() {
            fd.close()
                .map_err(|e| format!("seed {seed}: close {}: {}", f.rel, errno_name(e)))?;
        }
    }
    for f in &files {
        verify_whole(root, f).map_err(|m| format!("seed {seed}: at the end: MISMATCH {m}"))?;
    }
    Ok(files)
}

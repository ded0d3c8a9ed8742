//! Concurrency: 8 threads on one engine mount doing copy-up, rename and readdir over
//! overlapping names; no hang, no lost or duplicated write.
//!
//! The lower layer holds `shared/f00..f11` and dirs `dA`, `dB` with `g0..g3`, each file one
//! "init" line. Each thread, for a bounded number of iterations (seeded), picks among:
//! * append: open an existing name O_WRONLY|O_APPEND (the first one copies the lower file up),
//!   write a record `T<thread>-<seq>\n`, close; acknowledged when write and close succeed;
//! * rename: RENAME_EXCHANGE of two file names, or RENAME_NOREPLACE to a spare name (files move
//!   but are never overwritten), across dirs too;
//! * directory rename: RENAME_NOREPLACE among `dA`, `dB`, `dC` (lower dirs);
//! * readdir of the shared dirs and the root.
//! Only the errors concurrent renames explain are allowed (ENOENT: a name moved away meanwhile;
//! EEXIST: a RENAME_NOREPLACE target taken); any other errno fails the test. A watchdog fails the test
//! (and kills the engine, which unblocks hung syscalls) if the threads have not finished after
//! 120 s: a liveness bound, not a timing assertion. Then every file in the mount is read: every
//! acknowledged record must be present exactly once, unacknowledged ones at most once, every
//! init line exactly once, and no other (torn) line may appear. Checked again after a remount.
//!
//! Env: `STACKO_E2E_SEED`, `STACKO_E2E_CONC_ITERS` (per thread, default 2000).

mod common;

use common::mount::{EngineMount, EngineOpts};
use common::sys::{self, errno_name};
use common::Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const THREADS: usize = 8;
const WATCHDOG: Duration = Duration::from_secs(120);

fn file_names() -> Vec<String> {
    let mut v: Vec<String> = (0..18).map(|i| format!("shared/f{i:02}")).collect();
    for d in ["dA", "dB", "dC"] {
        for g in 0..6 {
            v.push(format!("{d}/g{g}"));
        }
    }
    v
}

#[derive(Default)]
struct Outcome {
    acked: Vec<String>,
    maybe: Vec<String>,
    errors: BTreeMap<String, u64>,
}

fn worker(
    root: &Path,
    tid: usize,
    seed: u64,
    iters: u64,
    status: Arc<Mutex<String>>,
) -> Result<Outcome, String> {
    let mut rng = Rng::new(seed.wrapping_add(tid as u64 * 7919));
    let names = file_names();
    let mut out = Outcome::default();
    for seq in 0..iters {
        let roll = rng.below(100);
        if roll < 45 {
            let name = &names[rng.below(names.len() as u64) as usize];
            let rec = format!("T{tid}-{seq:06}");
            *status.lock().unwrap() = format!("append {rec} to {name}");
            let fd = match sys::open(&root.join(name), libc::O_WRONLY | libc::O_APPEND, 0) {
                Ok(fd) => fd,
                Err(e) => {
                    *out.errors
                        .entry(format!("open: {}", errno_name(e)))
                        .or_insert(0) += 1;
                    continue;
                }
            };
            let line = format!("{rec}\n");
            match sys::write_all(&fd, line.as_bytes()) {
                Ok(_) => match fd.close() {
                    Ok(()) => out.acked.push(rec),
                    Err(e) => {
                        *out.errors
                            .entry(format!("close: {}", errno_name(e)))
                            .or_insert(0) += 1;
                        out.maybe.push(rec);
                    }
                },
                Err(e) => {
                    *out.errors
                        .entry(format!("write: {}", errno_name(e)))
                        .or_insert(0) += 1;
                    out.maybe.push(rec);
                }
            }
        } else if roll < 65 {
            let a = &names[rng.below(names.len() as u64) as usize];
            let b = &names[rng.below(names.len() as u64) as usize];
            let flags = if rng.chance(1, 2) {
                libc::RENAME_EXCHANGE
            } else {
                libc::RENAME_NOREPLACE
            };
            *status.lock().unwrap() = format!("rename {a} {b} flags {flags}");
            if let Err(e) = sys::rename2(&root.join(a), &root.join(b), flags) {
                *out.errors
                    .entry(format!("rename: {}", errno_name(e)))
                    .or_insert(0) += 1;
            }
        } else if roll < 73 {
            let ds = ["dA", "dB", "dC"];
            let a = ds[rng.below(3) as usize];
            let b = ds[rng.below(3) as usize];
            *status.lock().unwrap() = format!("rename dir {a} {b}");
            if let Err(e) = sys::rename2(&root.join(a), &root.join(b), libc::RENAME_NOREPLACE) {
                *out.errors
                    .entry(format!("dir rename: {}", errno_name(e)))
                    .or_insert(0) += 1;
            }
        } else {
            let d = ["", "shared", "dA", "dB", "dC"][rng.below(5) as usize];
            *status.lock().unwrap() = format!("readdir /{d}");
            match sys::readdir(&root.join(d)) {
                Ok(_) => {}
                Err(libc::ENOENT) if !d.is_empty() && d != "shared" => {}
                Err(e) => return Err(format!("thread {tid}: readdir /{d}: {}", errno_name(e))),
            }
        }
    }
    *status.lock().unwrap() = "done".into();
    Ok(out)
}

fn collect_lines(
    root: &Path,
    rel: &str,
    out: &mut BTreeMap<String, Vec<String>>,
) -> Result<(), String> {
    let p = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    for (name, _) in sys::readdir(&p).map_err(|e| format!("readdir /{rel}: {}", errno_name(e)))? {
        let r = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let st =
            sys::lstat(&root.join(&r)).map_err(|e| format!("lstat /{r}: {}", errno_name(e)))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            collect_lines(root, &r, out)?;
        } else {
            let data = sys::read_file(&root.join(&r))
                .map_err(|e| format!("read /{r}: {}", errno_name(e)))?;
            let text = String::from_utf8_lossy(&data);
            if !text.is_empty() && !text.ends_with('\n') {
                return Err(format!(
                    "/{r}: does not end with a newline (torn record): {:?}",
                    text.lines().last()
                ));
            }
            for line in text.lines() {
                out.entry(line.to_string()).or_default().push(r.clone());
            }
        }
    }
    Ok(())
}

fn check_final(
    root: &Path,
    init: &[String],
    acked: &[String],
    maybe: &[String],
) -> Result<(), String> {
    let mut lines = BTreeMap::new();
    collect_lines(root, "", &mut lines)?;
    let mut problems = Vec::new();
    for l in init.iter().chain(acked.iter()) {
        match lines.get(l).map(|v| v.len()).unwrap_or(0) {
            1 => {}
            0 => problems.push(format!("LOST: {l:?} is missing")),
            n => problems.push(format!(
                "DUPLICATED: {l:?} appears {n} times in {:?}",
                lines[l]
            )),
        }
    }
    for l in maybe {
        if lines.get(l).map(|v| v.len()).unwrap_or(0) > 1 {
            problems.push(format!(
                "DUPLICATED (unacknowledged): {l:?} in {:?}",
                lines[l]
            ));
        }
    }
    let known: std::collections::HashSet<&String> = init.iter().chain(acked).chain(maybe).collect();
    for (l, where_) in &lines {
        if !known.contains(l) {
            problems.push(format!("UNKNOWN/TORN line {l:?} in {where_:?}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        let n = problems.len();
        problems.truncate(40);
        Err(format!("{n} problems:\n  {}", problems.join("\n  ")))
    }
}

#[test]
fn eight_threads_copy_up_rename_readdir() {
    let Some(engine) = common::setup("concurrency") else {
        return;
    };
    let seed = common::seed_from_env("STACKO_E2E_SEED");
    let iters = common::env_u64("STACKO_E2E_CONC_ITERS", 2000);
    let dir = common::tempdir("stacko-conc-");
    let l0 = dir.path().join("l0");
    let mut init = Vec::new();
    for d in ["shared", "dA", "dB"] {
        std::fs::create_dir_all(l0.join(d)).unwrap();
    }
    for i in 0..12 {
        let rel = format!("shared/f{i:02}");
        let line = format!("init {rel}");
        sys::write_file(&l0.join(&rel), format!("{line}\n").as_bytes(), 0o644).unwrap();
        init.push(line);
    }
    for d in ["dA", "dB"] {
        for g in 0..4 {
            let rel = format!("{d}/g{g}");
            let line = format!("init {rel}");
            sys::write_file(&l0.join(&rel), format!("{line}\n").as_bytes(), 0o644).unwrap();
            init.push(line);
        }
    }
    for d in ["u", "w", "m"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    let opts = EngineOpts {
        lowers: vec![l0.clone()],
        upper_work: Some((dir.path().join("u"), dir.path().join("w"))),
        mnt: dir.path().join("m"),
        user: None,
        log: dir.path().join("engine.log"),
    };
    let mut mount = EngineMount::mount(&engine, &opts).unwrap_or_else(|m| panic!("{m}"));
    let root: PathBuf = opts.mnt.clone();

    let (tx, rx) = channel();
    let statuses: Vec<Arc<Mutex<String>>> = (0..THREADS)
        .map(|_| Arc::new(Mutex::new("starting".into())))
        .collect();
    for (tid, status) in statuses.iter().enumerate() {
        let (tx, root, status) = (tx.clone(), root.clone(), status.clone());
        std::thread::spawn(move || {
            let r = worker(&root, tid, seed, iters, status);
            let _ = tx.send((tid, r));
        });
    }
    drop(tx);
    let start = Instant::now();
    let mut results: Vec<Option<Result<Outcome, String>>> = (0..THREADS).map(|_| None).collect();
    let mut done = 0;
    while done < THREADS {
        let left = WATCHDOG.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok((tid, r)) => {
                results[tid] = Some(r);
                done += 1;
            }
            Err(_) => {
                let stuck: Vec<String> = statuses
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| results[*i].is_none())
                    .map(|(i, s)| {
                        format!(
                            "thread {i}: {}",
                            s.lock().map(|s| s.clone()).unwrap_or_default()
                        )
                    })
                    .collect();
                mount.kill();
                panic!(
                    "watchdog: {} of {THREADS} threads still running after {WATCHDOG:?} (deadlock or hang; seed {seed}):\n  {}\n--- engine log ---\n{}",
                    THREADS - done,
                    stuck.join("\n  "),
                    mount.log()
                );
            }
        }
    }
    let mut acked = Vec::new();
    let mut maybe = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for r in results.into_iter().flatten() {
        let o =
            r.unwrap_or_else(|m| panic!("seed {seed}: {m}\n--- engine log ---\n{}", mount.log()));
        acked.extend(o.acked);
        maybe.extend(o.maybe);
        for (k, v) in o.errors {
            *errors.entry(k).or_insert(0) += v;
        }
    }
    eprintln!(
        "concurrency: {} acknowledged appends, {} unacknowledged; errors seen: {errors:?}",
        acked.len(),
        maybe.len()
    );
    // Only the errors that concurrent renames explain are acceptable: a name moved away (ENOENT)
    // or a RENAME_NOREPLACE target taken (EEXIST). EXDEV for a directory rename is a missing
    // stacko improvement (tolerated only with STACKO_E2E_LAX=1, for peers).
    let lax = std::env::var("STACKO_E2E_LAX")
        .map(|v| v == "1")
        .unwrap_or(false);
    let unexpected: Vec<(&String, &u64)> = errors
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "open: ENOENT"
                    | "rename: ENOENT"
                    | "rename: EEXIST"
                    | "dir rename: ENOENT"
                    | "dir rename: EEXIST"
            ) && !(lax && k.as_str() == "dir rename: EXDEV")
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "seed {seed}: unexpected errors under concurrency: {unexpected:?}\n--- engine log ---\n{}",
        mount.log()
    );
    assert!(
        acked.len() as u64 > iters,
        "seed {seed}: too few appends succeeded ({}); errors: {errors:?}",
        acked.len()
    );
    if let Err(m) = check_final(&root, &init, &acked, &maybe) {
        panic!("seed {seed}: after the threads finished: {m}");
    }
    mount.unmount().unwrap_or_else(|m| panic!("{m}"));
    let mut mount = EngineMount::mount(&engine, &opts).unwrap_or_else(|m| panic!("{m}"));
    if let Err(m) = check_final(&root, &init, &acked, &maybe) {
        panic!("seed {seed}: after remount: {m}");
    }
    mount.unmount().unwrap_or_else(|m| panic!("{m}"));
}

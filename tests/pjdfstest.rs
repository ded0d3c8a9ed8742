//! pjdfstest (the Rust rewrite from crates.io, `cargo install pjdfstest`) on kernel overlayfs and
//! on the engine under test, as root, over identical lower layers; the engine must show no
//! failing test case that kernel overlayfs does not also fail.
//!
//! Both runs go in parallel, each in a directory that exists in the lower layer (a merged dir).
//! `naptime` is 0.05 s: above the kernel's coarse timestamp granularity (with 0.001 s, kernel
//! overlayfs itself fails timestamp cases at random), far below the default 1 s.
//! pjdfstest prints one line per case, `<name>  ok|FAILED|skipped`, detail lines indented, and a
//! final `Summary: N failed, N skipped, N passed, ...`; the parser checks its counts against
//! that summary so that a format change cannot pass silently. pjdfstest switches to the dummy
//! users `nobody` (group `nogroup`/`nobody`) and `tests` (group `tests`), which must exist.
//!
//! Env: `STACKO_PJDFSTEST` (binary; default `pjdfstest` on PATH or in ~/.cargo/bin),
//! `STACKO_PJDFSTEST_ARGS` (extra test-name patterns, e.g. `chmod` to run a subset).

mod common;

use common::mount::{EngineMount, EngineOpts, KernelOverlay};
use common::sys;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Liveness bound for one pjdfstest run (it takes about a minute on kernel overlayfs).
const LIVENESS: Duration = Duration::from_secs(1200);

fn find_pjdfstest() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("STACKO_PJDFSTEST") {
        return common::resolve_program(&p)
            .or_else(|| panic!("STACKO_PJDFSTEST={p:?} is not executable"));
    }
    common::resolve_program("pjdfstest").or_else(|| {
        let home = std::env::var_os("HOME")?;
        let p = Path::new(&home).join(".cargo/bin/pjdfstest");
        p.exists().then_some(p)
    })
}

/// Parsed pjdfstest output.
#[derive(Debug, Default)]
struct Report {
    ok: BTreeSet<String>,
    failed: BTreeSet<String>,
    skipped: BTreeSet<String>,
    details: Vec<(String, String)>,
}

fn parse(out: &str) -> Result<Report, String> {
    let mut r = Report::default();
    let mut current_failed: Option<(String, String)> = None;
    let mut summary = None;
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("Summary: ") {
            // "39 failed, 48 skipped, 311 passed, 0 expected failures, 398 total"
            let nums: Vec<u64> = rest
                .split(", ")
                .filter_map(|p| p.split(' ').next()?.parse().ok())
                .collect();
            summary = Some(nums);
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 2 && f[0].contains("::") && !line.starts_with(char::is_whitespace) {
            if let Some(d) = current_failed.take() {
                r.details.push(d);
            }
            let name = f[0].to_string();
            match f[1] {
                "ok" => {
                    r.ok.insert(name);
                }
                "FAILED" => {
                    r.failed.insert(name.clone());
                    current_failed = Some((name, String::new()));
                }
                "skipped" => {
                    r.skipped.insert(name);
                }
                _ => return Err(format!("unexpected status in line {line:?}")),
            }
        } else if let Some((_, d)) = current_failed.as_mut() {
            if line.starts_with('\t')
                && d.lines().count() < 3
                && !line.trim_start().starts_with(|c: char| c.is_ascii_digit())
            {
                d.push_str(line.trim());
                d.push(' ');
            }
        }
    }
    if let Some(d) = current_failed.take() {
        r.details.push(d);
    }
    let Some(s) = summary else {
        return Err("no `Summary:` line in pjdfstest output".into());
    };
    if s.len() < 3
        || s[0] != r.failed.len() as u64
        || s[1] != r.skipped.len() as u64
        || s[2] != r.ok.len() as u64
    {
        return Err(format!(
            "parsed {} failed / {} skipped / {} passed but pjdfstest's summary says {s:?}",
            r.failed.len(),
            r.skipped.len(),
            r.ok.len()
        ));
    }
    if r.ok.len() < 100 {
        return Err(format!(
            "only {} passing cases parsed: suspicious",
            r.ok.len()
        ));
    }
    Ok(r)
}

fn run_pjdfstest(bin: &Path, conf: &Path, dir: &Path, log: &Path) -> Result<String, String> {
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(conf).arg("-p").arg(dir);
    if let Ok(extra) = std::env::var("STACKO_PJDFSTEST_ARGS") {
        cmd.args(extra.split_whitespace());
    }
    let out = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let start = Instant::now();
    loop {
        if let Some(_st) = child.try_wait().map_err(|e| e.to_string())? {
            break;
        }
        if start.elapsed() > LIVENESS {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "pjdfstest on {} still running after {LIVENESS:?}: killed (hang?)",
                dir.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(log).map_err(|e| e.to_string())
}

fn build_lower(l: &Path) {
    std::fs::create_dir_all(l.join("t/sub")).unwrap();
    sys::write_file(&l.join("t/lowerfile"), b"lower\n", 0o644).unwrap();
    sys::write_file(&l.join("t/sub/f"), b"lower\n", 0o644).unwrap();
    sys::chmod(&l.join("t"), 0o755).unwrap();
}

#[test]
fn pjdfstest_no_failure_beyond_kernel_overlayfs() {
    let Some(engine) = common::setup("pjdfstest") else {
        return;
    };
    let Some(bin) = find_pjdfstest() else {
        common::missing(
            "pjdfstest: binary not found (cargo install pjdfstest, or set STACKO_PJDFSTEST)",
        );
        return;
    };
    let nobody_group = ["nogroup", "nobody"]
        .into_iter()
        .find(|g| common::lookup_group(g).is_some());
    let (Some(_), Some(ng), Some(_), Some(_)) = (
        common::lookup_user("nobody"),
        nobody_group,
        common::lookup_user("tests"),
        common::lookup_group("tests"),
    ) else {
        common::missing("pjdfstest: needs users `nobody`, `tests` and groups `nogroup` (or `nobody`), `tests` (useradd -M tests)");
        return;
    };
    let dir = common::tempdir("stacko-pjd-");
    let conf = dir.path().join("pjdfstest.toml");
    std::fs::write(
        &conf,
        format!(
            "[features]\nposix_fallocate = {{}}\nrename_ctime = {{}}\nutime_now = {{}}\nutimensat = {{}}\n\n\
             [settings]\nnaptime = 0.05\nallow_remount = false\n\n\
             [dummy_auth]\nentries = [[\"nobody\", \"{ng}\"], [\"tests\", \"tests\"]]\n"
        ),
    )
    .unwrap();
    let mut paths = Vec::new();
    for side in ["k", "e"] {
        let b = dir.path().join(side);
        build_lower(&b.join("l0"));
        for d in ["u", "w", "m"] {
            std::fs::create_dir_all(b.join(d)).unwrap();
            sys::chmod(&b.join(d), 0o755).unwrap();
        }
        paths.push(b);
    }
    let (kb, eb) = (&paths[0], &paths[1]);
    let _kernel = KernelOverlay::mount(
        &[kb.join("l0")],
        &kb.join("u"),
        &kb.join("w"),
        &kb.join("m"),
    )
    .unwrap_or_else(|m| panic!("{m}"));
    let opts = EngineOpts {
        lowers: vec![eb.join("l0")],
        upper_work: Some((eb.join("u"), eb.join("w"))),
        mnt: eb.join("m"),
        user: None,
        log: dir.path().join("engine.log"),
    };
    let mut engine_mount = EngineMount::mount(&engine, &opts).unwrap_or_else(|m| panic!("{m}"));

    let (bk, be, conf2) = (bin.clone(), bin.clone(), conf.clone());
    let (kd, kl) = (kb.join("m/t"), dir.path().join("kernel.out"));
    let (ed, el) = (eb.join("m/t"), dir.path().join("engine.out"));
    let tk = std::thread::spawn(move || run_pjdfstest(&bk, &conf2, &kd, &kl));
    let conf3 = conf.clone();
    let te = std::thread::spawn(move || run_pjdfstest(&be, &conf3, &ed, &el));
    let kout = tk
        .join()
        .expect("kernel run thread")
        .unwrap_or_else(|m| panic!("{m}"));
    let eout = te.join().expect("engine run thread");
    let eout = match eout {
        Ok(o) => o,
        Err(m) => {
            engine_mount.kill();
            panic!("{m}\n--- engine log ---\n{}", engine_mount.log());
        }
    };
    let k = parse(&kout)
        .unwrap_or_else(|m| panic!("parsing pjdfstest output on kernel overlayfs: {m}\n{kout}"));
    let e = parse(&eout).unwrap_or_else(|m| {
        panic!(
            "parsing pjdfstest output on the engine: {m}\n{}",
            eout.chars().take(20_000).collect::<String>()
        )
    });
    let extra: Vec<&String> = e.failed.difference(&k.failed).collect();
    let fixed: Vec<&String> = k.failed.difference(&e.failed).collect();
    eprintln!(
        "pjdfstest: kernel overlayfs {} failed / {} passed; engine {} failed / {} passed",
        k.failed.len(),
        k.ok.len(),
        e.failed.len(),
        e.ok.len()
    );
    eprintln!("kernel failures: {:?}", k.failed);
    eprintln!("engine failures: {:?}", e.failed);
    if !fixed.is_empty() {
        eprintln!("engine passes where kernel fails: {fixed:?}");
    }
    let unlisted: Vec<&String> =
        k.ok.iter()
            .chain(k.failed.iter())
            .filter(|n| !e.ok.contains(*n) && !e.failed.contains(*n) && !e.skipped.contains(*n))
            .collect();
    let mut msg = Vec::new();
    if !extra.is_empty() {
        let details: Vec<String> = e
            .details
            .iter()
            .filter(|(n, _)| extra.contains(&n))
            .map(|(n, d)| format!("{n}: {d}"))
            .collect();
        msg.push(format!(
            "{} failures on the engine that kernel overlayfs does not have:\n  {}",
            extra.len(),
            details.join("\n  ")
        ));
    }
    if !unlisted.is_empty() {
        msg.push(format!(
            "cases run on kernel overlayfs but missing from the engine's run: {unlisted:?}"
        ));
    }
    engine_mount.unmount().unwrap_or_else(|m| panic!("{m}"));
    if !msg.is_empty() {
        panic!("{}", msg.join("\n"));
    }
}

/// The parser on pjdfstest 0.2.2's real output format (no root needed): statuses, indented
/// details, and the summary cross-check that makes a format change fail instead of pass.
#[test]
fn pjdfstest_output_parser() {
    let mut out = String::new();
    for i in 0..120 {
        out.push_str(&format!(
            "chmod::case_{i:03}                                   ok\n"
        ));
    }
    out.push_str(
        "unlink::erofs_named                                                      skipped\n",
    );
    out.push_str("\tRemounts (allow_remount) are not allowed in the configuration file\n");
    out.push_str(
        "unlink::enotdir_component::char                                           FAILED\n",
    );
    out.push_str("\tcalled `Result::unwrap()` on an `Err` value: EPERM\nBacktrace:\n   0: pjdfstest::main::{{closure}}\n");
    out.push_str(
        "open::open_trunc                                                           FAILED\n",
    );
    out.push_str("\tTimestamps did not change as expected\n\n");
    let good = format!("{out}Summary: 2 failed, 1 skipped, 120 passed, 0 expected failures, 123 total\nError: Some tests have failed\n");
    let r = parse(&good).expect("parses");
    assert_eq!(
        r.failed.iter().map(String::as_str).collect::<Vec<_>>(),
        ["open::open_trunc", "unlink::enotdir_component::char"]
    );
    assert_eq!((r.ok.len(), r.skipped.len()), (120, 1));
    assert!(r
        .details
        .iter()
        .any(|(n, d)| n == "open::open_trunc" && d.contains("Timestamps did not change")));
    let bad =
        format!("{out}Summary: 3 failed, 1 skipped, 120 passed, 0 expected failures, 124 total\n");
    assert!(
        parse(&bad).is_err(),
        "a summary that disagrees with the parsed lines must be rejected"
    );
    assert!(
        parse(&out).is_err(),
        "output without a summary must be rejected"
    );
}

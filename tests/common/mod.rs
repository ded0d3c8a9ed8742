//! Shared harness of the stacko end-to-end tests.
//!
//! * [`setup`] finds the engine under test and checks privileges (failing loudly unless
//!   `STACKO_E2E_ALLOW_MISSING=1`);
//! * [`sys`] wraps the syscalls the tests issue so that each returns `Ok(value)` or the errno;
//! * [`mount`] mounts kernel overlayfs and the engine, and unmounts them in `Drop` guards;
//! * [`layers`] builds the lower-layer fixtures (whiteouts, opaque dirs, hard links, symlinks);
//! * [`tree`] snapshots a mounted tree and compares two snapshots;
//! * [`actor`] runs closures on a thread with another user's credentials;
//! * [`diff`] is the differential engine-vs-kernel runner shared by the root and rootless tiers;
//! * [`integrity`] is the model-checked data-integrity exerciser.
#![allow(dead_code)]

pub mod actor;
pub mod diff;
pub mod integrity;
pub mod layers;
pub mod mount;
pub mod sys;
pub mod tree;

use std::path::{Path, PathBuf};

/// Env var: path (or PATH name) of the engine under test.
pub const ENV_ENGINE: &str = "STACKO_OVERLAY";
/// Env var: a peer engine (e.g. `fuse-overlayfs`) used only when no stacko-overlay is found.
pub const ENV_PEER: &str = "STACKO_OVERLAY_PEER";
/// Env var: extra `-o` options appended for the engine (e.g. `allow_other` for a peer such
/// as fuse-overlayfs; stacko-overlay as root must not need it).
pub const ENV_EXTRA_OPTS: &str = "STACKO_OVERLAY_OPTS";
/// Env var: `1` turns missing prerequisites (binary, root, user, pjdfstest) into a skip.
pub const ENV_ALLOW_MISSING: &str = "STACKO_E2E_ALLOW_MISSING";
/// Env var: directory under which the tests make their temporary trees (must be ext4/xfs-like:
/// user xattrs, d_type, usable as overlayfs upper).
pub const ENV_TMP: &str = "STACKO_E2E_TMP";

/// What the tests need to know about the engine under test.
#[derive(Clone, Debug)]
pub struct Engine {
    /// Absolute path of the binary.
    pub path: PathBuf,
}

impl Engine {
    /// True when the binary is fuse-overlayfs (used only to label known peer differences).
    pub fn is_fuse_overlayfs(&self) -> bool {
        self.path
            .file_name()
            .map(|n| n == "fuse-overlayfs")
            .unwrap_or(false)
    }
}

/// True when `STACKO_E2E_ALLOW_MISSING=1`.
pub fn allow_missing() -> bool {
    std::env::var(ENV_ALLOW_MISSING)
        .map(|v| v == "1")
        .unwrap_or(false)
}

/// Fails the test with `msg`, or, with `STACKO_E2E_ALLOW_MISSING=1`, prints it and returns
/// (the caller then returns early: a skip).
pub fn missing(msg: &str) {
    if allow_missing() {
        eprintln!("SKIPPED (STACKO_E2E_ALLOW_MISSING=1): {msg}");
    } else {
        panic!("{msg}\n(set {ENV_ALLOW_MISSING}=1 to skip instead of failing)");
    }
}

/// Resolves `name_or_path`: a path with a slash is taken as is, a bare name is looked up in PATH.
pub fn resolve_program(name_or_path: &str) -> Option<PathBuf> {
    if name_or_path.contains('/') {
        let p = PathBuf::from(name_or_path);
        return is_executable(&p).then(|| p.canonicalize().unwrap_or(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name_or_path))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Where an unset `STACKO_OVERLAY` looks for the binary, in order: beside
/// this test binary (the same cargo target directory and profile), then in
/// the workspace's `target/` and `$CARGO_TARGET_DIR`.
pub fn default_engine_candidates() -> Vec<PathBuf> {
    let mut v = Vec::new();
    // target/<profile>/deps/<test> -> target/<profile>/stacko-overlay
    if let Some(profile_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
    {
        v.push(profile_dir.join("stacko-overlay"));
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    v.push(ws.join("target/release/stacko-overlay"));
    v.push(ws.join("target/debug/stacko-overlay"));
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        v.push(t.join("release/stacko-overlay"));
        v.push(t.join("debug/stacko-overlay"));
    }
    v
}

/// Finds the engine under test: `STACKO_OVERLAY`, else the default build locations, else
/// `STACKO_OVERLAY_PEER`. An explicitly set but unusable `STACKO_OVERLAY` always fails.
pub fn find_engine() -> Result<Engine, String> {
    if let Ok(v) = std::env::var(ENV_ENGINE) {
        return match resolve_program(&v) {
            Some(path) => Ok(Engine { path }),
            None => panic!("{ENV_ENGINE}={v:?} is not an executable file (nor a name on PATH)"),
        };
    }
    let cands = default_engine_candidates();
    if let Some(p) = cands.iter().find(|p| is_executable(p)) {
        return Ok(Engine {
            path: p.canonicalize().unwrap_or_else(|_| p.clone()),
        });
    }
    if let Ok(v) = std::env::var(ENV_PEER) {
        if let Some(path) = resolve_program(&v) {
            eprintln!(
                "NOTE: no stacko-overlay found; testing the PEER engine {} ({ENV_PEER})",
                path.display()
            );
            return Ok(Engine { path });
        }
        return Err(format!(
            "{ENV_PEER}={v:?} is not an executable file (nor a name on PATH)"
        ));
    }
    Err(format!(
        "engine under test not found: set {ENV_ENGINE}=/path/to/stacko-overlay or build it; looked in {:?}",
        cands
    ))
}

/// True when the process runs with euid 0.
pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// The common prologue of every test: root (kernel overlayfs is the oracle, mounts need it)
/// and an engine binary. `None` means "skip" (only with `STACKO_E2E_ALLOW_MISSING=1`).
pub fn setup(test: &str) -> Option<Engine> {
    if !is_root() {
        missing(&format!(
            "{test}: these tests need root (kernel overlayfs is the oracle and is mounted by root)"
        ));
        return None;
    }
    match find_engine() {
        Ok(e) => {
            eprintln!("{test}: engine under test = {}", e.path.display());
            Some(e)
        }
        Err(msg) => {
            missing(&format!("{test}: {msg}"));
            None
        }
    }
}

/// A fresh temporary directory (mode 0755 so that a dropped-privilege user can traverse it).
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    let base = std::env::var_os(ENV_TMP)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let d = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .expect("create temp dir");
    sys::chmod(d.path(), 0o755).expect("chmod temp dir");
    d
}

/// Reads a `u64` from env `name`, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// A seed from env `name`, else from the clock; printed so that a failing run can be replayed.
pub fn seed_from_env(name: &str) -> u64 {
    let seed = match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            t.as_nanos() as u64 ^ (std::process::id() as u64) << 32
        }
    };
    eprintln!("seed = {seed} (replay with {name}={seed})");
    seed
}

/// Looks a user up by name: (uid, gid).
pub fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let c = std::ffi::CString::new(name).ok()?;
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    unsafe { Some(((*pw).pw_uid, (*pw).pw_gid)) }
}

/// Looks a group up by name.
pub fn lookup_group(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        return None;
    }
    unsafe { Some((*gr).gr_gid) }
}

/// A small deterministic PRNG (splitmix64) so that seeded runs replay exactly, without a
/// dependency on a particular `rand` version's stream.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeds the generator.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Log-uniform-ish length in `1..=max`: small sizes as likely as large ones.
    pub fn len_up_to(&mut self, max: u64) -> u64 {
        let bits = 64 - max.leading_zeros() as u64;
        let b = self.below(bits + 1);
        let cap = if b >= 63 {
            max
        } else {
            ((1u64 << b).min(max)).max(1)
        };
        1 + self.below(cap)
    }
    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

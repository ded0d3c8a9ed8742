//! End-to-end tests of image editing, stackpoints and instances with real
//! mounts: the `stacko` binary and its daemon, a temp home per test, at
//! three privilege levels (root; the unprivileged user `stackotest` through
//! fusermount3; root without CAP_SYS_ADMIN through `stacko run`).
//!
//! Every test needs root (to switch privilege levels and clean up mounts);
//! without it, it says SKIP and passes.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{assert_clean_failure, assert_ok, show};

const BIN: &str = env!("CARGO_BIN_EXE_stacko");

/// Bound for things that must eventually happen; never an assertion about speed.
const PATIENCE: Duration = Duration::from_secs(60);

/// The unprivileged test user (exists on the test machines).
const TEST_USER: &str = "stackotest";

/// How a command is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Priv {
    /// As root, with every capability.
    Root,
    /// As the unprivileged test user.
    User,
    /// As root without CAP_SYS_ADMIN.
    NoSysAdmin,
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("SKIP: needs root");
            return;
        }
    };
}

/// A temp directory with the stacko home, a copy of the binary readable by
/// everyone, and scratch space. Dropping it unmounts whatever is mounted
/// below it and kills the daemon.
struct Env {
    root: tempfile::TempDir,
    home: PathBuf,
    bin: PathBuf,
    p: Priv,
}

impl Env {
    fn new(p: Priv) -> Env {
        let root = tempfile::Builder::new()
            .prefix("stkp")
            .tempdir_in("/tmp")
            .expect("temp dir");
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let owned = root.path().join("h");
        fs::create_dir(&owned).unwrap();
        let bin_dir = root.path().join("bin");
        fs::create_dir(&bin_dir).unwrap();
        fs::set_permissions(&bin_dir, fs::Permissions::from_mode(0o755)).unwrap();
        let bin = bin_dir.join("stacko");
        // Copied by a child process: a write descriptor open in this (multi-threaded)
        // process could leak into another test's fork and make exec fail with ETXTBSY.
        let st = Command::new("cp").arg(BIN).arg(&bin).status().expect("cp");
        assert!(st.success(), "copy the stacko binary");
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        if p == Priv::User {
            let st = Command::new("chown")
                .arg(TEST_USER)
                .arg(&owned)
                .status()
                .unwrap();
            assert!(st.success(), "chown {TEST_USER}");
        }
        Env {
            home: owned.join("home"),
            root,
            bin,
            p,
        }
    }

    /// A scratch directory (readable by everyone).
    fn scratch(&self, name: &str) -> PathBuf {
        let p = self.root.path().join("scratch").join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// A command at this environment's privilege level.
    fn command(&self, program: &Path) -> Command {
        let mut c = match self.p {
            Priv::Root => Command::new(program),
            Priv::User => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={TEST_USER}"),
                    &format!("--regid={TEST_USER}"),
                    "--clear-groups",
                ]);
                c.arg(program);
                c
            }
            Priv::NoSysAdmin => {
                let mut c = Command::new("setpriv");
                c.args(["--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin"]);
                c.arg(program);
                c
            }
        };
        c.env("HOME", self.root.path().join("h"))
            .env("STACKO_HOME", &self.home)
            .env("STACKO_DAEMON_IDLE_SECS", "2")
            .current_dir("/")
            .stdin(Stdio::null());
        c
    }

    fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.command(&self.bin)
            .args(args)
            .output()
            .expect("run stacko")
    }

    /// Runs a stacko command that must succeed; returns its stdout, trimmed.
    fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert_ok(&out, args);
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Runs a stacko command that must fail cleanly (exit 1, one error line); returns the line.
    fn fail<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        assert_clean_failure(&self.run(args), args)
    }

    /// Runs a shell script at this privilege level; returns stdout (must succeed).
    fn sh(&self, script: &str) -> String {
        let out = self
            .command(Path::new("/bin/sh"))
            .arg("-c")
            .arg(script)
            .output()
            .expect("run sh");
        assert!(
            out.status.success(),
            "sh -c {script:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json<S: AsRef<OsStr>>(&self, args: &[S]) -> Value {
        serde_json::from_str(&self.ok(args)).expect("JSON")
    }

    /// Everything the list commands show (to check that a refused command changed nothing).
    fn state(&self) -> (Value, Value, Value) {
        let mut images = self.json(&["list-images", "--json"]);
        for i in images.as_array_mut().unwrap() {
            // The size and file counts are compared; times do not change either.
            i.as_object_mut().unwrap().remove("created");
        }
        (
            images,
            self.json(&["list-stackpoints", "--json"]),
            self.json(&["list-instances", "--json"]),
        )
    }

    fn stackpoint(&self, name: &str) -> Value {
        let all = self.json(&["list-stackpoints", "--json"]);
        all.as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no stackpoint {name}"))
    }

    fn is_mounted(&self, name: &str) -> bool {
        let out = self.run(&["is-stackpoint-mounted", name]);
        match out.status.code() {
            Some(0) => true,
            Some(1) if out.stderr.is_empty() => false,
            _ => panic!("is-stackpoint-mounted {name}: {out:?}"),
        }
    }

    fn daemon_pid(&self) -> Option<i32> {
        fs::read_to_string(self.home.join("daemon.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Kills the daemon with SIGKILL and waits until it is gone.
    fn kill_daemon(&self) {
        let pid = self.daemon_pid().expect("a daemon pid file");
        assert!(is_daemon_of(pid, &self.home), "pid {pid} is not our daemon");
        // SAFETY: a signal to a process we checked is our daemon.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let start = Instant::now();
        while is_daemon_of(pid, &self.home) {
            assert!(start.elapsed() < PATIENCE, "daemon {pid} did not die");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Detaches every mount below this environment's directory (a reboot, as far as mounts go).
    fn unmount_everything(&self) {
        unmount_below(self.root.path());
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        unmount_below(self.root.path());
        if let Some(pid) = self.daemon_pid() {
            if is_daemon_of(pid, &self.home) {
                // SAFETY: as in kill_daemon.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        unmount_below(self.root.path());
    }
}

/// Whether `pid` is a live `stacko daemon` for `home`.
fn is_daemon_of(pid: i32, home: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true);
    let home = home.as_os_str().as_bytes();
    !zombie
        && cmdline.split(|&b| b == 0).any(|a| a == home)
        && cmdline.split(|&b| b == 0).any(|a| a == b"daemon")
}

/// (mount point, filesystem type) of every mount, in mount order.
fn mounts() -> Vec<(PathBuf, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|&x| x == "-")?;
            let mp = f.get(4)?.replace("\\040", " ");
            Some((PathBuf::from(mp), f.get(sep + 1)?.to_string()))
        })
        .collect()
}

/// The type of the filesystem mounted at `dir`, if any.
fn fs_type(dir: &Path) -> Option<String> {
    mounts()
        .into_iter()
        .rev()
        .find(|(m, _)| m == dir)
        .map(|(_, t)| t)
}

fn unmount_below(root: &Path) {
    for _ in 0..10 {
        let below: Vec<PathBuf> = mounts()
            .into_iter()
            .map(|(m, _)| m)
            .filter(|m| m.starts_with(root))
            .collect();
        if below.is_empty() {
            return;
        }
        for m in below.iter().rev() {
            let c = std::ffi::CString::new(m.as_os_str().as_bytes()).unwrap();
            // SAFETY: valid path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// The original tool's example, at `env`'s privilege level, with `backend`
/// (automatic when `None`). Checks the mount type is `want_type`.
fn example(env: &Env, backend: Option<&str>, want_type: &str) {
    let with_backend = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if let Some(b) = backend {
            v.push("--backend".into());
            v.push(b.into());
        }
        v
    };
    // base: edited through a writable mount.
    env.ok(&["new-image", "base"]);
    let dir = env.ok(&with_backend(&["edit-image", "base"]));
    assert_eq!(env.ok(&["get-image-dir", "base"]), dir);
    assert!(
        fs_type(Path::new(&dir)).is_some_and(|t| t.starts_with(want_type)),
        "edit mount of type {want_type}"
    );
    env.sh(&format!(
        "set -e; cd {dir}; mkdir -p etc bin; echo 'base config' > etc/config; echo tool > bin/tool; \
         echo gone > old; ln -s config etc/link"
    ));
    env.ok(&["close-image", "base"]);
    assert!(
        fs_type(Path::new(&dir)).is_none(),
        "close-image must unmount"
    );
    env.fail(&["get-image-dir", "base"]);
    // app-1 and app-2 on base.
    for (name, version) in [("app-1", "v1"), ("app-2", "v2")] {
        env.ok(&["new-image", name, "base"]);
        let d = env.ok(&with_backend(&["edit-image", name]));
        env.sh(&format!(
            "set -e; cd {d}; mkdir -p app; echo {version} > app/version; rm old; cat etc/config"
        ));
        env.ok(&["close-image", name]);
    }
    let images = env.json(&["list-images", "--json"]);
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] == "sealed"),
        "{images}"
    );
    // The stackpoint.
    let first = env.ok(&["new-stackpoint", "sp", "app-1"]);
    env.ok(&with_backend(&["mount-stackpoint", "sp"]));
    assert!(env.is_mounted("sp"));
    let sp = env.ok(&["get-stackpoint-dir", "sp"]);
    assert!(
        fs_type(Path::new(&sp)).is_some_and(|t| t.starts_with(want_type)),
        "stackpoint of type {want_type}"
    );
    assert_eq!(
        env.sh(&format!("cat {sp}/app/version {sp}/etc/link")),
        "v1\nbase config\n"
    );
    assert_eq!(env.sh(&format!("ls {sp}")), "app\nbin\netc\n");
    env.sh(&format!(
        "echo mine > {sp}/written; echo changed > {sp}/etc/config"
    ));
    // Cut over: app-2, the file written is gone.
    let second = env.ok(&["cutover-stackpoint", "sp", "app-2"]);
    assert_ne!(first, second);
    assert!(env.is_mounted("sp"));
    assert_eq!(
        env.sh(&format!("cat {sp}/app/version {sp}/etc/config")),
        "v2\nbase config\n"
    );
    assert_eq!(env.sh(&format!("ls {sp}")), "app\nbin\netc\n");
    // Fall back: app-1 and the written file again.
    assert_eq!(env.ok(&["fallback-stackpoint", "sp"]), first);
    assert_eq!(
        env.sh(&format!(
            "cat {sp}/app/version {sp}/written {sp}/etc/config"
        )),
        "v1\nmine\nchanged\n"
    );
    // The other spelling, forward again by instance.
    env.ok(&["fallback-stackpoint-instance", "sp", "--to", &second]);
    assert_eq!(env.sh(&format!("cat {sp}/app/version")), "v2\n");
    env.ok(&["set-stackpoint-instance", "sp", &first]);
    assert_eq!(env.sh(&format!("cat {sp}/written")), "mine\n");
    let info = env.stackpoint("sp");
    assert_eq!(info["current"].to_string(), first);
    assert_eq!(
        info["mounted"],
        if want_type == "overlay" {
            "kernel"
        } else {
            "fuse"
        }
    );
    env.ok(&["umount-stackpoint", "sp"]);
    assert!(!env.is_mounted("sp"));
    assert!(fs_type(Path::new(&sp)).is_none());
}

#[test]
fn example_as_root_with_the_kernel_backend() {
    need_root!();
    let env = Env::new(Priv::Root);
    example(&env, None, "overlay");
    // Checkouts are made once per layer and reused.
    let checkouts: Vec<_> = fs::read_dir(env.home.join("checkouts"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u64>().is_ok())
        })
        .collect();
    assert_eq!(
        checkouts.len(),
        3,
        "one checkout per live layer (base, app-1, app-2)"
    );
    env.ok(&["delete-stackpoint", "sp"]);
    assert!(env
        .json(&["list-instances", "--json"])
        .as_array()
        .unwrap()
        .is_empty());
    assert!(fs::read_dir(env.home.join("instances"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn example_as_root_with_fuse() {
    need_root!();
    let env = Env::new(Priv::Root);
    example(&env, Some("fuse"), "fuse");
    // --backend fuse was remembered: a plain mount uses it again.
    env.ok(&["mount-stackpoint", "sp"]);
    let sp = env.ok(&["get-stackpoint-dir", "sp"]);
    assert!(fs_type(Path::new(&sp)).is_some_and(|t| t.starts_with("fuse")));
    // What only the FUSE engine can do: a metadata-only chmod of a lower
    // file, a real rename of a lower directory.
    env.sh(&format!("chmod 600 {sp}/bin/tool; mv {sp}/etc {sp}/etc2"));
    // The same instance, mounted by the other engine, shows the same data.
    env.ok(&["umount-stackpoint", "sp"]);
    env.ok(&["mount-stackpoint", "sp", "--backend", "kernel"]);
    assert_eq!(fs_type(Path::new(&sp)).as_deref(), Some("overlay"));
    assert_eq!(
        env.sh(&format!("cat {sp}/written {sp}/app/version")),
        "mine\nv1\n"
    );
    assert_eq!(
        env.sh(&format!(
            "ls {sp}; stat -c %a {sp}/bin/tool; cat {sp}/bin/tool {sp}/etc2/config {sp}/etc2/link"
        )),
        "app\nbin\netc2\nwritten\n600\ntool\nchanged\nchanged\n"
    );
    env.ok(&["delete-stackpoint", "sp"]);
}

#[test]
fn example_as_an_unprivileged_user_through_fusermount3() {
    need_root!();
    let env = Env::new(Priv::User);
    example(&env, None, "fuse.");
    let pid = env.daemon_pid().expect("daemon");
    let owner = fs::metadata(format!("/proc/{pid}")).unwrap();
    assert_ne!(
        std::os::unix::fs::MetadataExt::uid(&owner),
        0,
        "the daemon runs as the user"
    );
}

#[test]
fn example_without_cap_sys_admin_through_stacko_run() {
    need_root!();
    let env = Env::new(Priv::NoSysAdmin);
    let src = env.scratch("src");
    for (dir, file, content) in [
        ("base", "etc/config", "base config"),
        ("a1", "app/version", "v1"),
        ("a2", "app/version", "v2"),
    ] {
        let p = src.join(dir).join(file);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, format!("{content}\n")).unwrap();
    }
    env.ok(&[
        OsStr::new("import-image"),
        OsStr::new("base"),
        src.join("base").as_os_str(),
    ]);
    // Editing needs a mount in this namespace: a clear error that says what to do.
    let e = env.fail(&["edit-image", "base"]);
    assert!(e.contains("import-image"), "{e}");
    assert!(!env.home.join("edits/base").exists());
    for (name, dir) in [("app-1", "a1"), ("app-2", "a2")] {
        env.ok(&[
            OsStr::new("import-image"),
            OsStr::new(name),
            src.join(dir).as_os_str(),
            OsStr::new("--parent"),
            OsStr::new("base"),
        ]);
    }
    let first = env.ok(&["new-stackpoint", "sp", "app-1"]);
    let e = env.fail(&["mount-stackpoint", "sp"]);
    assert!(e.contains("stacko run sp"), "{e}");
    let sp = env.ok(&["get-stackpoint-dir", "sp"]);
    let run = |cmd: &str| env.ok(&["run", "sp", "--", "sh", "-c", cmd]);
    assert_eq!(
        run(&format!("cat {sp}/app/version {sp}/etc/config")),
        "v1\nbase config"
    );
    run(&format!("echo mine > {sp}/written"));
    // The mount was only in the command's namespace.
    assert!(fs_type(Path::new(&sp)).is_none());
    assert!(!env.is_mounted("sp"));
    env.ok(&["cutover-stackpoint", "sp", "app-2"]);
    assert_eq!(
        run(&format!("cat {sp}/app/version; ls {sp}")),
        "v2\napp\netc"
    );
    assert_eq!(env.ok(&["fallback-stackpoint", "sp"]), first);
    assert_eq!(
        env.ok(&["run", "sp", "--", "cat", &format!("{sp}/written")]),
        "mine"
    );
    // The command's exit status is forwarded.
    let out = env.run(&["run", "sp", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
}

/// Writes `content` to `path` and fsyncs it.
fn write_synced(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(content)?;
    f.sync_all()
}

#[test]
fn reboot_brings_back_the_same_instance_with_its_changes() {
    need_root!();
    let env = Env::new(Priv::Root);
    let src = env.scratch("img");
    fs::write(src.join("in-image"), b"image\n").unwrap();
    env.ok(&[
        OsStr::new("import-image"),
        OsStr::new("img"),
        src.as_os_str(),
    ]);
    env.ok(&["new-stackpoint", "sp", "img"]);
    env.ok(&["new-stackpoint", "sf", "img"]);
    let second = env.ok(&["cutover-stackpoint", "sp", "img"]);
    env.ok(&["mount-stackpoint", "sp", "--backend", "kernel"]);
    env.ok(&["mount-stackpoint", "sf", "--backend", "fuse"]);
    let sp = PathBuf::from(env.ok(&["get-stackpoint-dir", "sp"]));
    let sf = PathBuf::from(env.ok(&["get-stackpoint-dir", "sf"]));
    write_synced(&sp.join("kept"), b"kernel data\n").unwrap();
    write_synced(&sf.join("kept"), b"fuse data\n").unwrap();
    let before = env.state();
    // "Reboot": every stacko process killed, every mount gone.
    env.kill_daemon();
    env.unmount_everything();
    assert!(!env.is_mounted("sp"));
    assert!(!env.is_mounted("sf"));
    assert_eq!(env.state().0, before.0);
    env.ok(&["mount-stackpoint", "sp"]);
    env.ok(&["mount-stackpoint", "sf"]);
    assert_eq!(env.stackpoint("sp")["current"].to_string(), second);
    assert_eq!(fs::read(sp.join("kept")).unwrap(), b"kernel data\n");
    assert_eq!(fs::read(sp.join("in-image")).unwrap(), b"image\n");
    assert_eq!(fs::read(sf.join("kept")).unwrap(), b"fuse data\n");
    assert_eq!(env.stackpoint("sp")["mounted"], "kernel");
    assert_eq!(env.stackpoint("sf")["mounted"], "fuse");
}

#[test]
fn kill_9_of_the_daemon_during_fuse_writes_keeps_what_was_fsynced() {
    need_root!();
    let env = Env::new(Priv::Root);
    env.ok(&["new-image", "img"]);
    env.ok(&["close-image", "img"]);
    env.ok(&["new-stackpoint", "sp", "img"]);
    env.ok(&["mount-stackpoint", "sp", "--backend", "fuse"]);
    let sp = PathBuf::from(env.ok(&["get-stackpoint-dir", "sp"]));
    let synced = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (sp, synced) = (sp.clone(), Arc::clone(&synced));
        std::thread::spawn(move || {
            for i in 0.. {
                let content = format!("file {i}\n").repeat(1000);
                if write_synced(&sp.join(format!("f{i}")), content.as_bytes()).is_err() {
                    return i;
                }
                synced.store(i + 1, Ordering::SeqCst);
            }
            unreachable!()
        })
    };
    let start = Instant::now();
    while synced.load(Ordering::SeqCst) < 30 {
        assert!(start.elapsed() < PATIENCE, "the writer made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    env.kill_daemon();
    let stopped_at = writer.join().unwrap();
    let done = synced.load(Ordering::SeqCst);
    assert!(done >= 30 && stopped_at >= done - 1);
    // The dead mount is "not mounted"; the store opens; the next mount cleans up.
    assert!(!env.is_mounted("sp"));
    env.ok(&["list-images"]);
    env.ok(&["mount-stackpoint", "sp"]);
    assert_eq!(
        fs_type(&sp).as_deref().map(|t| t.starts_with("fuse")),
        Some(true)
    );
    for i in 0..done {
        let got = fs::read_to_string(sp.join(format!("f{i}"))).unwrap();
        assert_eq!(got, format!("file {i}\n").repeat(1000), "file f{i}");
    }
}

#[test]
fn two_stackpoints_under_heavy_io_while_commands_run() {
    need_root!();
    let env = Env::new(Priv::Root);
    env.ok(&["new-image", "img"]);
    env.ok(&["close-image", "img"]);
    env.ok(&["new-stackpoint", "a", "img"]);
    env.ok(&["new-stackpoint", "b", "img"]);
    env.ok(&["mount-stackpoint", "a", "--backend", "fuse"]);
    env.ok(&["mount-stackpoint", "b"]);
    let dirs = [
        PathBuf::from(env.ok(&["get-stackpoint-dir", "a"])),
        PathBuf::from(env.ok(&["get-stackpoint-dir", "b"])),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = dirs
        .iter()
        .flat_map(|d| [(d.clone(), 0u8), (d.clone(), 1u8)])
        .map(|(dir, n)| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut files = 0;
                while !stop.load(Ordering::SeqCst) || files < 20 {
                    let data: Vec<u8> = (0..256 * 1024)
                        .map(|i: u32| (i as u8) ^ n ^ (files as u8))
                        .collect();
                    let p = dir.join(format!("w{n}-{files}"));
                    write_synced(&p, &data).unwrap();
                    assert_eq!(fs::read(&p).unwrap(), data, "{}", p.display());
                    files += 1;
                }
                files
            })
        })
        .collect();
    for i in 0..5 {
        env.ok(&["list-images"]);
        env.ok(&["new-image", &format!("more-{i}"), "img"]);
        env.ok(&["list-stackpoints"]);
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        assert!(w.join().unwrap() >= 20);
    }
    assert_eq!(
        env.json(&["list-images", "--json"])
            .as_array()
            .unwrap()
            .len(),
        6
    );
    assert!(env.is_mounted("a") && env.is_mounted("b"));
}

#[test]
fn bad_input_gives_a_clear_error_and_changes_nothing() {
    need_root!();
    let env = Env::new(Priv::Root);
    env.ok(&["new-image", "base"]);
    env.ok(&["close-image", "base"]);
    env.ok(&["new-image", "app", "base"]);
    env.ok(&["close-image", "app"]);
    env.ok(&["new-image", "lonely"]);
    env.ok(&["close-image", "lonely"]);
    let taken = env.scratch("taken");
    let sp_id = env.ok(&[
        OsStr::new("new-stackpoint"),
        OsStr::new("sp"),
        OsStr::new("app"),
        OsStr::new("--dir"),
        taken.as_os_str(),
    ]);
    env.ok(&["new-stackpoint", "other", "base"]);
    let file = env.scratch("x").join("file");
    fs::write(&file, b"x").unwrap();
    let full = env.scratch("full");
    fs::write(full.join("something"), b"x").unwrap();
    let before = env.state();
    let used = format!("image app is used by instance {sp_id} of stackpoint sp");
    let (taken_in, in_home) = (taken.join("in"), env.home.join("x"));
    let cases: Vec<(Vec<&OsStr>, &str)> = vec![
        (
            vec!["new-stackpoint".as_ref(), "n".as_ref(), "nope".as_ref()],
            "does not exist",
        ),
        (
            vec!["new-stackpoint".as_ref(), "sp".as_ref(), "app".as_ref()],
            "already exists",
        ),
        (
            vec!["new-stackpoint".as_ref(), "a/b".as_ref(), "app".as_ref()],
            "invalid name",
        ),
        (
            vec![
                "new-stackpoint".as_ref(),
                "n".as_ref(),
                "app".as_ref(),
                "--dir".as_ref(),
                file.as_os_str(),
            ],
            "not a directory",
        ),
        (
            vec![
                "new-stackpoint".as_ref(),
                "n".as_ref(),
                "app".as_ref(),
                "--dir".as_ref(),
                full.as_os_str(),
            ],
            "not empty",
        ),
        (
            vec![
                "new-stackpoint".as_ref(),
                "n".as_ref(),
                "app".as_ref(),
                "--dir".as_ref(),
                taken_in.as_os_str(),
            ],
            "stackpoint sp",
        ),
        (
            vec![
                "new-stackpoint".as_ref(),
                "n".as_ref(),
                "app".as_ref(),
                "--dir".as_ref(),
                in_home.as_os_str(),
            ],
            "inside the stacko home",
        ),
        (
            vec!["mount-stackpoint".as_ref(), "nope".as_ref()],
            "does not exist",
        ),
        (
            vec!["umount-stackpoint".as_ref(), "sp".as_ref()],
            "not mounted",
        ),
        (
            vec!["get-stackpoint-dir".as_ref(), "nope".as_ref()],
            "does not exist",
        ),
        (
            vec!["delete-stackpoint".as_ref(), "nope".as_ref()],
            "does not exist",
        ),
        (
            vec![
                "cutover-stackpoint".as_ref(),
                "sp".as_ref(),
                "nope".as_ref(),
            ],
            "does not exist",
        ),
        (
            vec![
                "cutover-stackpoint".as_ref(),
                "nope".as_ref(),
                "app".as_ref(),
            ],
            "does not exist",
        ),
        (
            vec!["fallback-stackpoint".as_ref(), "sp".as_ref()],
            "no earlier instance",
        ),
        (
            vec![
                "delete-stackpoint-instance".as_ref(),
                "sp".as_ref(),
                sp_id.as_ref(),
            ],
            "current instance",
        ),
        (
            vec![
                "set-stackpoint-instance".as_ref(),
                "sp".as_ref(),
                "999999".as_ref(),
            ],
            "does not exist",
        ),
        (
            vec![
                "set-stackpoint-instance".as_ref(),
                "sp".as_ref(),
                "x1".as_ref(),
            ],
            "invalid instance",
        ),
        (
            vec![
                "new-stackpoint-instance".as_ref(),
                "sp".as_ref(),
                "nope".as_ref(),
            ],
            "does not exist",
        ),
        (vec!["delete-image".as_ref(), "app".as_ref()], &used),
        (
            vec!["edit-image".as_ref(), "base".as_ref()],
            "new image on top",
        ),
        (
            vec!["edit-image".as_ref(), "app".as_ref()],
            "new image on top",
        ),
        (
            vec!["close-image".as_ref(), "app".as_ref()],
            "nothing to close",
        ),
        (
            vec!["get-image-dir".as_ref(), "app".as_ref()],
            "not being edited",
        ),
        (
            vec!["is-stackpoint-mounted".as_ref(), "nope".as_ref()],
            "does not exist",
        ),
        (
            vec![
                "mount-stackpoint".as_ref(),
                "sp".as_ref(),
                "--backend".as_ref(),
                "kernel".as_ref(),
                "--backend".as_ref(),
                "fuse".as_ref(),
            ],
            "",
        ),
    ];
    for (args, want) in &cases {
        if want.is_empty() {
            // A usage error: clap's exit code 2, nothing changed.
            assert_eq!(env.run(args).status.code(), Some(2));
            continue;
        }
        let e = env.fail(args);
        assert!(
            e.contains(want),
            "stacko {}: {e:?} should say {want:?}",
            show(args)
        );
        assert_eq!(
            env.state(),
            before,
            "stacko {} changed the state",
            show(args)
        );
    }
    assert!(fs::read_dir(&taken).unwrap().next().is_none());
    assert!(!env.scratch("x").join("in").exists());
    // The other stackpoint's instance cannot be used here.
    let other = env.stackpoint("other")["current"].to_string();
    let e = env.fail(&["set-stackpoint-instance", "sp", &other]);
    assert!(e.contains("belongs to stackpoint other"), "{e}");
    // A busy mount: umount, cutover and delete refuse and change nothing.
    env.ok(&["mount-stackpoint", "sp"]);
    let busy = fs::File::open(taken.join(".")).unwrap();
    let open_file = {
        fs::write(taken.join("f"), b"x").unwrap();
        fs::File::open(taken.join("f")).unwrap()
    };
    let before = env.state();
    for args in [
        vec!["umount-stackpoint", "sp"],
        vec!["cutover-stackpoint", "sp", "base"],
        vec!["delete-stackpoint", "sp"],
    ] {
        let e = env.fail(&args);
        assert!(e.contains("busy"), "{e}");
        assert_eq!(
            env.state(),
            before,
            "stacko {} changed the state",
            args.join(" ")
        );
        assert!(env.is_mounted("sp"));
    }
    // --lazy detaches it anyway.
    env.ok(&["umount-stackpoint", "sp", "--lazy"]);
    assert!(!env.is_mounted("sp"));
    drop(open_file);
    drop(busy);
    // A missing --dir is created; --force accepts a non-empty one.
    let fresh = env.scratch("new").join("deep/er");
    env.ok(&[
        OsStr::new("new-stackpoint"),
        OsStr::new("n1"),
        OsStr::new("app"),
        OsStr::new("--dir"),
        fresh.as_os_str(),
    ]);
    assert!(fresh.is_dir());
    env.ok(&[
        OsStr::new("new-stackpoint"),
        OsStr::new("n2"),
        OsStr::new("app"),
        OsStr::new("--dir"),
        full.as_os_str(),
        OsStr::new("--force"),
    ]);
    // Deleting what uses an image lets it be deleted.
    for sp in ["sp", "n1", "n2"] {
        env.ok(&["delete-stackpoint", sp]);
    }
    env.ok(&["delete-image", "app"]);
}

#[test]
fn instances_are_many_per_image_and_reuse_picks_the_latest() {
    need_root!();
    let env = Env::new(Priv::Root);
    env.ok(&["new-image", "a"]);
    env.ok(&["close-image", "a"]);
    env.ok(&["new-image", "b"]);
    env.ok(&["close-image", "b"]);
    let i1 = env.ok(&["new-stackpoint", "sp", "a"]);
    let i2 = env.ok(&["new-stackpoint-instance", "sp", "a"]);
    let i3 = env.ok(&["new-stackpoint-instance", "sp", "b"]);
    let list = env.json(&["list-instances", "sp", "--json"]);
    let ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].to_string())
        .collect();
    assert_eq!(ids, [i1.clone(), i2.clone(), i3.clone()]);
    assert_eq!(env.ok(&["cutover-stackpoint", "sp", "b", "--reuse"]), i3);
    assert_eq!(
        env.ok(&["cutover-stackpoint-instance", "sp", "a", "--reuse"]),
        i2
    );
    let sp = env.stackpoint("sp");
    assert_eq!(sp["history"].to_string(), format!("[{i1},{i3},{i2}]"));
    env.ok(&["delete-stackpoint-instance", "sp", &i1]);
    assert_eq!(env.ok(&["fallback-stackpoint", "sp"]), i3);
    assert!(!env.home.join("instances").join(&i1).exists());
    assert!(env.home.join("instances").join(&i2).join("upper").is_dir());
}

#[test]
fn the_daemon_stays_while_it_serves_fuse_and_unmounts_on_sigterm() {
    need_root!();
    let env = Env::new(Priv::Root);
    env.ok(&["new-image", "img"]);
    env.ok(&["close-image", "img"]);
    env.ok(&["new-stackpoint", "sp", "img"]);
    env.ok(&["mount-stackpoint", "sp", "--backend", "fuse"]);
    let sp = PathBuf::from(env.ok(&["get-stackpoint-dir", "sp"]));
    let pid = env.daemon_pid().expect("daemon");
    // Longer than the idle period (2 s here): a daemon serving FUSE must not go.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        is_daemon_of(pid, &env.home),
        "the daemon exited while serving a FUSE mount"
    );
    write_synced(&sp.join("f"), b"still served\n").unwrap();
    // SIGTERM: it unmounts what it serves, then exits.
    // SAFETY: a signal to a process we checked is our daemon.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let start = Instant::now();
    while is_daemon_of(pid, &env.home) {
        assert!(
            start.elapsed() < PATIENCE,
            "the daemon did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        fs_type(&sp),
        None,
        "the FUSE mount must be gone, not left dead"
    );
    env.ok(&["mount-stackpoint", "sp"]);
    assert_eq!(fs::read(sp.join("f")).unwrap(), b"still served\n");
}

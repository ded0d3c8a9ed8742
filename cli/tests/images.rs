//! End-to-end tests of the image commands: the real `stacko` binary, its
//! daemon, and a store in a temp home per test.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{assert_clean_failure, assert_ok};

const BIN: &str = env!("CARGO_BIN_EXE_stacko");

/// Generous bound for things that must eventually happen (a daemon exiting);
/// never an assertion about speed.
const PATIENCE: Duration = Duration::from_secs(60);

/// A temp home; kills the daemon serving it when dropped.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home {
            dir: tempfile::Builder::new()
                .prefix("stk")
                .tempdir_in("/tmp")
                .expect("temp dir"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A scratch directory beside the home, removed with it.
    fn scratch(&self, name: &str) -> PathBuf {
        let p = self.path().join("scratch").join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }

    fn cmd_with(&self, bin: &Path) -> Command {
        let mut c = Command::new(bin);
        c.arg("--home")
            .arg(self.path())
            .env("STACKO_DAEMON_IDLE_SECS", "2")
            .env_remove("STACKO_HOME")
            .stdin(Stdio::null());
        c
    }

    fn cmd(&self) -> Command {
        self.cmd_with(Path::new(BIN))
    }

    fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.cmd().args(args).output().expect("run stacko")
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert_ok(&out, args);
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must fail cleanly; returns its error line.
    fn fail<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        assert_clean_failure(&self.run(args), args)
    }

    fn images(&self) -> Vec<Value> {
        let v: Value = serde_json::from_str(&self.ok(&["list-images", "--json"])).unwrap();
        v.as_array().unwrap().clone()
    }

    fn image(&self, name: &str) -> Option<Value> {
        self.images().into_iter().find(|i| i["name"] == name)
    }

    fn daemon_pid(&self) -> Option<i32> {
        fs::read_to_string(self.path().join("daemon.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Whether `pid` is a live stacko daemon of this home.
    fn is_our_daemon(&self, pid: i32) -> bool {
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        if is_zombie(pid) {
            return false;
        }
        let home = self.path().as_os_str().as_bytes();
        cmdline.split(|&b| b == 0).any(|a| a == home) && cmdline.windows(6).any(|w| w == b"daemon")
    }

    fn kill_daemon(&self) -> i32 {
        let pid = self.daemon_pid().expect("a daemon pid file");
        assert!(self.is_our_daemon(pid), "pid {pid} is not our daemon");
        // SAFETY: sending a signal to a process we checked is our daemon.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait_gone(pid);
        pid
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        if let Some(pid) = self.daemon_pid() {
            if self.is_our_daemon(pid) {
                // SAFETY: as in kill_daemon.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(true)
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

fn wait_gone(pid: i32) {
    let start = Instant::now();
    while alive(pid) {
        assert!(start.elapsed() < PATIENCE, "process {pid} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write(root: &Path, rel: &str, content: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// A tree with the kinds of entries an image holds.
fn sample_tree(root: &Path) {
    write(root, "hello.txt", b"hello\n");
    write(root, "empty", b"");
    let big: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write(root, "big.bin", &big);
    write(root, "sub/dir/deep.txt", b"deep\n");
    fs::create_dir_all(root.join("emptydir")).unwrap();
    std::os::unix::fs::symlink("hello.txt", root.join("link")).unwrap();
    fs::hard_link(root.join("hello.txt"), root.join("sub/hard")).unwrap();
    let (p, name, val) = (cstr(&root.join("big.bin")), c"user.stacko.test", b"value");
    // SAFETY: valid C strings and buffer.
    let r = unsafe { libc::setxattr(p.as_ptr(), name.as_ptr(), val.as_ptr().cast(), val.len(), 0) };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
}

/// Runs the system tar to unpack `archive` into a fresh directory.
fn untar(archive: &Path, into: &Path) {
    fs::create_dir_all(into).unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(st.success(), "tar -xf {}", archive.display());
}

/// Every regular file under `root` (relative path -> content), symlinks as "-> target".
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(root, &p, out);
            } else if m.file_type().is_symlink() {
                let t = fs::read_link(&p).unwrap();
                out.insert(rel, format!("-> {}", t.display()).into_bytes());
            } else if m.is_file() {
                out.insert(rel, fs::read(&p).unwrap());
            } else {
                out.insert(rel, b"(special)".to_vec());
            }
        }
    }
    walk(root, root, &mut out);
    out
}

fn tar_names(archive: &Path) -> Vec<String> {
    let out = Command::new("tar")
        .arg("-tf")
        .arg(archive)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut v: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty() && l != ".")
        .collect();
    v.sort();
    v
}

fn wait_with_patience(mut child: Child) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            panic!("stacko did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn new_list_delete() {
    let h = Home::new();
    assert_eq!(
        h.ok(&["list-images"]),
        "NAME  PARENT  STATE  SIZE  FILES  CREATED\n"
    );
    assert_eq!(h.ok(&["list-images", "--json"]).trim(), "[]");
    assert_eq!(h.ok(&["new-image", "base"]), "");
    h.ok(&["new-image", "apps-1.0", "base"]);
    h.ok(&["new-image", "apps-1.1", "apps-1.0"]);
    h.ok(&["new-image", "tools", "base"]);

    let table = h.ok(&["list-images"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    let head: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        head,
        ["NAME", "PARENT", "STATE", "SIZE", "FILES", "CREATED"]
    );
    let row: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        &row[..6],
        ["apps-1.1", "apps-1.0", "open", "0", "B", "0"],
        "{table}"
    );
    // Columns line up: every row's PARENT starts where the header's does.
    let col = lines[0].find("PARENT").unwrap();
    for l in &lines[1..] {
        assert_ne!(l.as_bytes()[col], b' ', "{table}");
        assert_eq!(l.as_bytes()[col - 1], b' ', "{table}");
    }

    let imgs = h.images();
    let names: Vec<&str> = imgs.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["apps-1.0", "apps-1.1", "base", "tools"]);
    let base = &imgs[2];
    assert_eq!(base["parent"], Value::Null);
    assert_eq!(base["state"], "open");
    assert_eq!(base["size"], 0);
    assert_eq!(base["files"], 0);
    assert!(base["created_unix"].as_i64().unwrap() > 1_600_000_000);
    let created = base["created"].as_str().unwrap();
    assert_eq!(created.len(), 25, "{created}");
    assert_eq!(&created[10..11], "T");
    assert_eq!(imgs[0]["parent"], "base");

    let tree = h.ok(&["list-images", "--tree"]);
    let shape: Vec<&str> = tree
        .lines()
        .map(|l| l.split("  (").next().unwrap())
        .collect();
    assert_eq!(
        shape,
        ["base", "├── apps-1.0", "│   └── apps-1.1", "└── tools"],
        "{tree}"
    );
    let tj: Value = serde_json::from_str(&h.ok(&["list-images", "--tree", "--json"])).unwrap();
    assert_eq!(tj[0]["name"], "base");
    assert_eq!(tj[0]["children"][0]["children"][0]["name"], "apps-1.1");

    h.ok(&["delete-image", "apps-1.1"]);
    h.ok(&["delete-image", "tools"]);
    let names: Vec<String> = h
        .images()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["apps-1.0", "base"]);
}

#[test]
fn delete_refused_while_a_child_exists() {
    let h = Home::new();
    h.ok(&["new-image", "base"]);
    h.ok(&["new-image", "child", "base"]);
    let before = h.ok(&["list-images", "--json"]);
    let err = h.fail(&["delete-image", "base"]);
    assert!(err.contains("child"), "{err}");
    assert_eq!(h.ok(&["list-images", "--json"]), before);
    let err = h.fail(&["delete-image", "nope"]);
    assert!(err.contains("does not exist"), "{err}");
    h.ok(&["delete-image", "child"]);
    h.ok(&["delete-image", "base"]);
    assert!(h.images().is_empty());
}

#[test]
fn bad_names_fail_cleanly_and_change_nothing() {
    let h = Home::new();
    let src = h.scratch("src");
    write(&src, "f", b"data");
    h.ok(&["new-image", "good"]);
    let before = h.ok(&["list-images", "--json"]);
    let long = "x".repeat(256);
    let bad = ["", "a/b", ".", "..", long.as_str(), "/abs"];
    for name in bad {
        h.fail(&["new-image", name]);
        h.fail(&["new-image", "fine", name]);
        h.fail(&[
            OsStr::new("import-image"),
            OsStr::new(name),
            src.as_os_str(),
        ]);
        h.fail(&[
            OsStr::new("import-image"),
            OsStr::new("fine"),
            src.as_os_str(),
            OsStr::new("--parent"),
            OsStr::new(name),
        ]);
        h.fail(&["delete-image", name]);
        h.fail(&["export-image", name, "-"]);
        assert_eq!(
            h.ok(&["list-images", "--json"]),
            before,
            "after name {name:?}"
        );
    }
    // 255 bytes is still a valid name.
    let max = "y".repeat(255);
    h.ok(&["new-image", max.as_str()]);
    assert!(h.image(&max).is_some());
}

#[test]
fn bad_name_fails_before_reading_stdin() {
    let h = Home::new();
    h.ok(&["new-image", "taken"]);
    for name in ["a/b", "taken"] {
        // stdin is a pipe nobody writes to and nobody closes: reading it would hang.
        let child = h
            .cmd()
            .args(["import-image", name, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_with_patience(child);
        let err = assert_clean_failure(&out, &["import-image", name, "-"]);
        if name == "taken" {
            assert!(err.contains("already exists"), "{err}");
        }
    }
}

#[test]
fn missing_parent_and_existing_name() {
    let h = Home::new();
    let src = h.scratch("src");
    write(&src, "f", b"data");
    h.ok(&["new-image", "base"]);
    let before = h.ok(&["list-images", "--json"]);
    let err = h.fail(&["new-image", "child", "nope"]);
    assert!(
        err.contains("nope") && err.contains("does not exist"),
        "{err}"
    );
    let err = h.fail(&[
        OsStr::new("import-image"),
        OsStr::new("child"),
        src.as_os_str(),
        OsStr::new("--parent"),
        OsStr::new("nope"),
    ]);
    assert!(err.contains("does not exist"), "{err}");
    let err = h.fail(&["new-image", "base"]);
    assert!(err.contains("already exists"), "{err}");
    let err = h.fail(&[
        OsStr::new("import-image"),
        OsStr::new("base"),
        src.as_os_str(),
    ]);
    assert!(err.contains("already exists"), "{err}");
    let err = h.fail(&["import-image", "other", "/nonexistent/source"]);
    assert!(err.contains("does not exist"), "{err}");
    assert_eq!(h.ok(&["list-images", "--json"]), before);
}

#[test]
fn usage_errors_exit_2() {
    let h = Home::new();
    assert_eq!(h.run(&["new-image"]).status.code(), Some(2));
    assert_eq!(h.run(&["no-such-command"]).status.code(), Some(2));
}

#[test]
fn import_export_round_trip() {
    let h = Home::new();
    let src = h.scratch("src");
    sample_tree(&src);
    let out = h.ok(&[OsStr::new("import-image"), OsStr::new("a"), src.as_os_str()]);
    assert!(out.starts_with("imported a: "), "{out}");
    let a = h.image("a").unwrap();
    assert_eq!(a["state"], "sealed");
    // hello.txt+hard (one node), empty, big.bin, deep.txt, link.
    assert_eq!(a["files"], 5, "{a}");

    let t = h.scratch("out");
    let a_tar = t.join("a.tar");
    h.ok(&[
        OsStr::new("export-image"),
        OsStr::new("a"),
        a_tar.as_os_str(),
    ]);
    h.ok(&[
        OsStr::new("import-image"),
        OsStr::new("b"),
        a_tar.as_os_str(),
    ]);
    let b_tar = t.join("b.tar");
    h.ok(&[
        OsStr::new("export-image"),
        OsStr::new("b"),
        b_tar.as_os_str(),
    ]);
    assert_eq!(
        fs::read(&a_tar).unwrap(),
        fs::read(&b_tar).unwrap(),
        "exports differ"
    );

    // Export to stdout gives the same bytes.
    let c_tar = t.join("c.tar");
    let st = h
        .cmd()
        .args(["export-image", "b", "-"])
        .stdout(fs::File::create(&c_tar).unwrap())
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(fs::read(&a_tar).unwrap(), fs::read(&c_tar).unwrap());

    // The archive holds the tree: contents, symlink, hard link, xattr.
    let x = t.join("x");
    untar(&a_tar, &x);
    assert_eq!(snapshot(&x), snapshot(&src));
    let m1 = fs::metadata(x.join("hello.txt")).unwrap();
    let m2 = fs::metadata(x.join("sub/hard")).unwrap();
    assert_eq!(m1.ino(), m2.ino(), "hard link lost");
    let out = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=user.*", "-xf"])
        .arg(&a_tar)
        .arg("-C")
        .arg(t.join("x"))
        .status()
        .unwrap();
    assert!(out.success());
    let mut buf = [0u8; 64];
    let (p, name) = (cstr(&x.join("big.bin")), c"user.stacko.test");
    // SAFETY: valid C strings and buffer.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, 5, "xattr lost: {}", std::io::Error::last_os_error());
    assert_eq!(&buf[..5], b"value");
}

#[test]
fn export_destinations() {
    let h = Home::new();
    let src = h.scratch("src");
    write(&src, "f", b"data");
    h.ok(&[OsStr::new("import-image"), OsStr::new("a"), src.as_os_str()]);
    let t = h.scratch("out");
    let dest = t.join("a.tar");
    fs::write(&dest, b"precious").unwrap();
    let err = h.fail(&[
        OsStr::new("export-image"),
        OsStr::new("a"),
        dest.as_os_str(),
    ]);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(fs::read(&dest).unwrap(), b"precious");
    h.ok(&[
        OsStr::new("export-image"),
        OsStr::new("a"),
        dest.as_os_str(),
        OsStr::new("--force"),
    ]);
    assert_eq!(tar_names(&dest), ["f"]);

    // Failures leave nothing behind: no destination, no temp file.
    let missing = t.join("missing.tar");
    h.fail(&[
        OsStr::new("export-image"),
        OsStr::new("nope"),
        missing.as_os_str(),
    ]);
    h.fail(&[
        OsStr::new("export-image"),
        OsStr::new("a"),
        t.join("no/such/dir.tar").as_os_str(),
    ]);
    h.fail(&[OsStr::new("export-image"), OsStr::new("a"), t.as_os_str()]);
    let left: Vec<_> = fs::read_dir(&t)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [OsStr::new("a.tar")], "left behind: {left:?}");

    // A relative destination is taken from the caller's working directory.
    let st = h
        .cmd()
        .current_dir(&t)
        .args(["export-image", "a", "rel.tar"])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(tar_names(&t.join("rel.tar")), ["f"]);
}

#[test]
fn flattened_export_of_a_stack() {
    let h = Home::new();
    let base = h.scratch("base");
    write(&base, "a", b"1");
    write(&base, "b", b"2");
    write(&base, "d/x", b"x");
    let upper = h.scratch("upper");
    write(&upper, "b", b"22");
    write(&upper, "c", b"3");
    // An overlayfs whiteout hides base's "a".
    let wh = cstr(&upper.join("a"));
    // SAFETY: valid path; a 0:0 char device is an overlay whiteout.
    let r = unsafe { libc::mknod(wh.as_ptr(), libc::S_IFCHR | 0o600, 0) };
    assert_eq!(r, 0, "mknod: {}", std::io::Error::last_os_error());
    h.ok(&[
        OsStr::new("import-image"),
        OsStr::new("base"),
        base.as_os_str(),
    ]);
    h.ok(&[
        OsStr::new("import-image"),
        OsStr::new("top"),
        upper.as_os_str(),
        OsStr::new("--parent"),
        OsStr::new("base"),
    ]);
    assert_eq!(h.image("top").unwrap()["parent"], "base");

    let t = h.scratch("out");
    let own = t.join("own.tar");
    h.ok(&[
        OsStr::new("export-image"),
        OsStr::new("top"),
        own.as_os_str(),
    ]);
    assert_eq!(tar_names(&own), [".wh.a", "b", "c"]);

    let flat = t.join("flat.tar");
    h.ok(&[
        OsStr::new("export-image"),
        OsStr::new("top"),
        flat.as_os_str(),
        OsStr::new("--flatten"),
    ]);
    let x = t.join("x");
    untar(&flat, &x);
    let snap = snapshot(&x);
    let want: BTreeMap<String, Vec<u8>> =
        [("b", &b"22"[..]), ("c", b"3"), ("d/", b""), ("d/x", b"x")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
    assert_eq!(snap, want);
}

#[test]
fn import_gzip_from_stdin() {
    let h = Home::new();
    let src = h.scratch("src");
    write(&src, "one", b"1\n");
    write(&src, "dir/two", &vec![7u8; 10_000]);
    let gz = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .args(["-czf", "-", "."])
        .output()
        .unwrap();
    assert!(gz.status.success());
    assert_eq!(&gz.stdout[..2], &[0x1f, 0x8b], "not gzip");
    let mut child = h
        .cmd()
        .args(["import-image", "g", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&gz.stdout).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_ok(&out, &["import-image", "g", "-"]);
    assert!(
        out.stderr.is_empty(),
        "progress or noise on a non-terminal stderr"
    );
    let g = h.image("g").unwrap();
    assert_eq!(g["files"], 2);
    assert_eq!(g["size"], 10_002);
    let t = h.scratch("out");
    let tar = t.join("g.tar");
    h.ok(&[OsStr::new("export-image"), OsStr::new("g"), tar.as_os_str()]);
    let x = t.join("x");
    untar(&tar, &x);
    assert_eq!(snapshot(&x), snapshot(&src));

    // Garbage on stdin is refused and leaves no image.
    let mut child = h
        .cmd()
        .args(["import-image", "junk", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&gz.stdout[..gz.stdout.len() / 2])
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_clean_failure(&out, &["import-image", "junk", "-"]);
    assert!(h.image("junk").is_none());
}

#[test]
fn concurrent_commands_all_succeed() {
    let h = Home::new();
    let src = h.scratch("src");
    for i in 0..200 {
        write(
            &src,
            &format!("d{}/f{i}", i % 7),
            format!("file {i}\n").as_bytes(),
        );
    }
    // No daemon yet: all nine race to start one.
    let mut children = Vec::new();
    for _ in 0..8 {
        children.push((
            "list-images",
            h.cmd()
                .arg("list-images")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        ));
    }
    children.push((
        "import-image",
        h.cmd()
            .arg("import-image")
            .arg("imp")
            .arg(&src)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    for (what, c) in children {
        let out = wait_with_patience(c);
        assert_ok(&out, &[what]);
    }
    assert_eq!(h.image("imp").unwrap()["files"], 200);
}

#[test]
fn kill_9_of_the_daemon_during_an_import() {
    let h = Home::new();
    let src = h.scratch("big");
    for d in 0..20 {
        for f in 0..1000 {
            write(
                &src,
                &format!("d{d:02}/f{f:04}"),
                format!("file {d} {f}\n").as_bytes(),
            );
        }
    }
    let tar = h.path().join("scratch/big.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let bytes = fs::read(&tar).unwrap();

    let mut child = h
        .cmd()
        .args(["import-image", "big", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Once this returns, the daemon has read all but a pipe buffer of it:
    // the import is half done and blocked on the rest.
    stdin.write_all(&bytes[..bytes.len() / 2]).unwrap();
    h.kill_daemon();
    drop(stdin);
    let out = wait_with_patience(child);
    let err = assert_clean_failure(&out, &["import-image", "big", "-"]);
    assert!(err.contains("daemon"), "{err}");

    // A new daemon opens the store; no half image.
    assert!(h.image("big").is_none());
    h.ok(&[
        OsStr::new("import-image"),
        OsStr::new("big"),
        src.as_os_str(),
    ]);
    assert_eq!(h.image("big").unwrap()["files"], 20_000);
}

#[test]
fn stale_socket_after_a_crash_is_replaced() {
    let h = Home::new();
    h.ok(&["new-image", "x"]);
    let old = h.kill_daemon();
    assert!(
        h.path().join("daemon.sock").exists(),
        "the crash should leave the socket"
    );
    assert!(h.image("x").is_some());
    let new = h.daemon_pid().unwrap();
    assert_ne!(old, new);
    assert!(h.is_our_daemon(new));
}

#[test]
fn daemon_of_another_build_is_replaced() {
    let h = Home::new();
    h.ok(&["new-image", "x"]);
    let first = h.daemon_pid().unwrap();
    // A copy of the binary has another mtime, hence another build id.
    let other = h.scratch("bin").join("stacko-other");
    // By a child process, so that no write fd to it can leak into another test thread's
    // fork and make running it fail with ETXTBSY.
    assert!(Command::new("cp")
        .arg(BIN)
        .arg(&other)
        .status()
        .unwrap()
        .success());
    let out = h.cmd_with(&other).arg("list-images").output().unwrap();
    assert_ok(&out, &["list-images (other build)"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains('x'));
    wait_gone(first);
    let second = h.daemon_pid().unwrap();
    assert_ne!(first, second);
}

#[test]
fn daemon_exits_when_idle_and_comes_back() {
    let h = Home::new();
    h.ok(&["new-image", "x"]);
    let pid = h.daemon_pid().unwrap();
    wait_gone(pid);
    assert!(
        !h.path().join("daemon.sock").exists(),
        "socket left after an idle exit"
    );
    assert!(
        !h.path().join("daemon.pid").exists(),
        "pid file left after an idle exit"
    );
    assert!(h.image("x").is_some());
}

#[test]
fn daemon_stop_ends_the_daemon() {
    let h = Home::new();
    // Without a daemon, daemon-stop starts none.
    h.ok(&["daemon-stop"]);
    assert!(h.daemon_pid().is_none());
    h.ok(&["list-images"]);
    let pid = h.daemon_pid().unwrap();
    h.ok(&["daemon-stop"]);
    wait_gone(pid);
}

#[test]
fn home_from_the_environment() {
    let h = Home::new();
    let home = h.path().join("envhome");
    let out = Command::new(BIN)
        .args(["new-image", "e"])
        .env("STACKO_HOME", &home)
        .env("STACKO_DAEMON_IDLE_SECS", "2")
        .output()
        .unwrap();
    assert_ok(&out, &["new-image e (STACKO_HOME)"]);
    let mode = fs::metadata(&home).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o700);
    let sock = fs::metadata(home.join("daemon.sock")).unwrap().mode() & 0o777;
    assert_eq!(sock, 0o600);
    let pid: i32 = fs::read_to_string(home.join("daemon.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let st = Command::new(BIN)
        .arg("--home")
        .arg(&home)
        .arg("daemon-stop")
        .status()
        .unwrap();
    assert!(st.success());
    wait_gone(pid);
}

#[test]
fn killed_client_abandons_its_import() {
    let h = Home::new();
    let src = h.scratch("src");
    for i in 0..2000 {
        write(
            &src,
            &format!("d{}/f{i:04}", i % 10),
            format!("file {i}\n").as_bytes(),
        );
    }
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let bytes = tar.stdout;
    let mut child = h
        .cmd()
        .args(["import-image", "orphan", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&bytes[..bytes.len() / 2]).unwrap();
    // The client dies (kill -9). The daemon still holds the pipe: it either
    // notices first and stops reading (the write fails), or reads to the end.
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = stdin.write_all(&bytes[bytes.len() / 2..]);
    drop(stdin);
    let log = h.path().join("daemon.log");
    let start = Instant::now();
    loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("import-image:")) {
            assert!(line.contains("went away"), "{line}");
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the daemon never finished the import:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        h.image("orphan").is_none(),
        "an abandoned import was committed"
    );
    // The name is free again.
    h.ok(&[
        OsStr::new("import-image"),
        OsStr::new("orphan"),
        src.as_os_str(),
    ]);
    assert_eq!(h.image("orphan").unwrap()["files"], 2000);
}

#[test]
fn unusable_home_or_store_is_one_clear_line() {
    let h = Home::new();
    let file = h.scratch("x").join("plain-file");
    fs::write(&file, b"x").unwrap();
    let out = Command::new(BIN)
        .arg("--home")
        .arg(&file)
        .arg("list-images")
        .output()
        .unwrap();
    let err = assert_clean_failure(&out, &["list-images (home is a file)"]);
    assert!(err.contains("not a directory"), "{err}");

    // A store the daemon cannot open: its error reaches the user.
    let broken = h.path().join("scratch/broken");
    fs::create_dir_all(&broken).unwrap();
    fs::write(broken.join("db"), b"not a database").unwrap();
    let out = Command::new(BIN)
        .arg("--home")
        .arg(&broken)
        .arg("list-images")
        .env("STACKO_DAEMON_IDLE_SECS", "2")
        .output()
        .unwrap();
    let err = assert_clean_failure(&out, &["list-images (broken store)"]);
    assert!(err.contains("cannot open the store"), "{err}");
    assert!(!broken.join("daemon.sock").exists());
}

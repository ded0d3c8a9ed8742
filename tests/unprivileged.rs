//! Rootless tier: the engine mounted by an ordinary user (through fusermount3), checked against
//! kernel overlayfs mounted by root, with every operation issued as that user on both sides.
//!
//! The lower layers are built by root: root-owned files the user may read but not change, one
//! it may not read (0600), root-owned world-writable files whose owner must survive copy-up, a
//! directory owned by the user, a sticky directory, a setgid directory of a group the user is
//! not in. Tests: root-owned lower files are visible and readable with their owners shown as
//! stored; a smaller differential run (same harness as `overlay_diff.rs`, ops issued by a
//! thread running with the user's credentials); a smaller data-integrity run.
//!
//! Prerequisites (created by CI, never by the test): the user `STACKO_TEST_USER` (default
//! `stackotest`), `/dev/fuse` usable by it (mode 0666) and `fusermount3`.
//! Env: `STACKO_TEST_USER`, `STACKO_E2E_CASES` (default 12), `STACKO_E2E_SEED`,
//! `STACKO_E2E_INTEGRITY_OPS_ROOTLESS` (default 10000).

mod common;

use common::actor::Actor;
use common::diff::{self, How::*, Op, Op::*};
use common::layers::{self, Flavor};
use common::mount::{EngineMount, EngineOpts};
use common::sys::{self, errno_name};
use common::Engine;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

/// Root check, engine, user, /dev/fuse and fusermount3; `None` = skip (allowed missing).
fn setup(test: &str) -> Option<(Engine, (u32, u32))> {
    let engine = common::setup(test)?;
    let name = std::env::var("STACKO_TEST_USER").unwrap_or_else(|_| "stackotest".into());
    let Some((uid, gid)) = common::lookup_user(&name) else {
        common::missing(&format!("{test}: user {name:?} does not exist (CI runs `useradd -M {name}`; or set STACKO_TEST_USER)"));
        return None;
    };
    if uid == 0 {
        panic!(
            "{test}: STACKO_TEST_USER={name:?} is root; the rootless tier needs an ordinary user"
        );
    }
    if common::resolve_program("fusermount3").is_none() {
        common::missing(&format!(
            "{test}: fusermount3 not found (apt-get install fuse3)"
        ));
        return None;
    }
    let actor = Actor::new(Some((uid, gid)));
    let fuse_ok =
        actor.run(|| sys::open(std::path::Path::new("/dev/fuse"), libc::O_RDWR, 0).map(|_| ()));
    if let Err(e) = fuse_ok {
        common::missing(&format!(
            "{test}: user {name:?} cannot open /dev/fuse ({}): CI must `chmod 666 /dev/fuse`",
            errno_name(e)
        ));
        return None;
    }
    eprintln!("{test}: rootless as {name} ({uid}:{gid})");
    Some((engine, (uid, gid)))
}

#[test]
fn rootless_root_owned_lower_files_visible_and_readable() {
    let Some((engine, (uid, gid))) = setup("unprivileged") else {
        return;
    };
    let actor = Actor::new(Some((uid, gid)));
    let dir = common::tempdir("stacko-rootless-");
    let fx = layers::build_diff_lowers(dir.path(), Flavor::User { uid, gid });
    for d in ["u", "w", "m"] {
        let p = dir.path().join(d);
        sys::mkdir(&p, 0o755).unwrap();
        sys::lchown(&p, uid, gid).unwrap();
    }
    let opts = EngineOpts {
        lowers: fx.lowers.clone(),
        upper_work: Some((dir.path().join("u"), dir.path().join("w"))),
        mnt: dir.path().join("m"),
        user: Some((uid, gid)),
        log: dir.path().join("engine.log"),
    };
    let mut mount = EngineMount::mount(&engine, &opts).unwrap_or_else(|m| panic!("{m}"));
    let fstype = sys::mount_fstype(&opts.mnt).unwrap_or_default();
    assert!(
        fstype.starts_with("fuse"),
        "rootless mount has fstype {fstype:?}, expected fuse*"
    );
    let root = opts.mnt.clone();
    let problems: Vec<String> = actor.run(move || {
        let mut p = Vec::new();
        let expect: [(&str, Vec<u8>, u32); 4] = [
            ("a", b"L1:a (top)\n".to_vec(), 0o640),
            ("d1/a", layers::pattern(3, 10), 0o644),
            ("d1/s/a", layers::pattern(4, 5000), 0o664),
            ("s/a", layers::pattern(7, 1), 0o4755),
        ];
        for (rel, data, mode) in expect {
            match sys::lstat(&root.join(rel)) {
                Ok(st) if st.st_uid == 0 && st.st_mode & 0o7777 == mode => {}
                Ok(st) => p.push(format!(
                    "{rel}: shown as {}:{} mode {:o}, stored as root-owned {mode:o}",
                    st.st_uid,
                    st.st_gid,
                    st.st_mode & 0o7777
                )),
                Err(e) => p.push(format!("{rel}: lstat {}", errno_name(e))),
            }
            if rel != "a" {
                match sys::read_file(&root.join(rel)) {
                    Ok(d) if d == data => {}
                    Ok(d) => p.push(format!(
                        "{rel}: read {} bytes, not the lower content",
                        d.len()
                    )),
                    Err(e) => p.push(format!("{rel}: read as the user: {}", errno_name(e))),
                }
            }
        }
        // 0640 root:root and 0600 root:root stay unreadable to the user, as on kernel overlayfs.
        for rel in ["a", "x"] {
            if sys::read_file(&root.join(rel)) != Err(libc::EACCES) {
                p.push(format!(
                    "{rel}: expected EACCES reading a root-only file as the user"
                ));
            }
        }
        match sys::readdir(&root.join("d1")) {
            Ok(l) => {
                let names: Vec<&str> = l.iter().map(|(n, _)| n.as_str()).collect();
                if names != ["a", "c", "s", "x", "y"] {
                    p.push(format!("readdir d1 = {names:?}"));
                }
            }
            Err(e) => p.push(format!("readdir d1: {}", errno_name(e))),
        }
        p
    });
    mount.unmount().unwrap_or_else(|m| panic!("{m}"));
    assert!(
        problems.is_empty(),
        "rootless mount of root-owned layers:\n  {}",
        problems.join("\n  ")
    );
}

fn replay(ops: &[Op]) {
    let Some((engine, creds)) = setup("unprivileged") else {
        return;
    };
    let actor = Actor::new(Some(creds));
    let flavor = Flavor::User {
        uid: creds.0,
        gid: creds.1,
    };
    if let Err(m) = diff::run_case(&engine, flavor, &actor, ops, false) {
        panic!("{m}");
    }
}

#[test]
fn rootless_differential_random_sequences() {
    let Some((engine, creds)) = setup("unprivileged") else {
        return;
    };
    let actor = Actor::new(Some(creds));
    let flavor = Flavor::User {
        uid: creds.0,
        gid: creds.1,
    };
    let mut runner = TestRunner::new(Config {
        cases: common::env_u64("STACKO_E2E_CASES", 12) as u32,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/regressions/unprivileged.txt"
        )))),
        max_shrink_iters: 300,
        max_shrink_time: 120_000,
        ..Config::default()
    });
    let result = runner.run(&diff::case(15, 40), |(ops, end_only)| {
        diff::run_case(&engine, flavor, &actor, &ops, end_only).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Permission-sensitive ops as the user: writing a root-owned 0666 lower file (its root owner
/// must survive copy-up), creating in a root dir (EACCES), deleting in a sticky dir (EPERM),
/// chown to another user (EPERM), work in the user's own lower dir.
#[test]
fn rootless_permissions_and_ownership() {
    replay(&[
        Write {
            path: "b",
            how: Append,
            mode: 0o644,
            off: 0,
            len: 10,
            seed: 1,
        },
        Stat { path: "b" },
        Write {
            path: "d1/n",
            how: Create,
            mode: 0o644,
            off: 0,
            len: 1,
            seed: 1,
        },
        Unlink { path: "s/a" },
        Write {
            path: "s/b",
            how: Create,
            mode: 0o600,
            off: 0,
            len: 3,
            seed: 2,
        },
        Unlink { path: "s/b" },
        Chown {
            path: "d3/a",
            uid: 0,
            gid: 0,
        },
        Chmod {
            path: "d3/a",
            mode: 0o600,
        },
        Rename {
            from: "d3/x",
            to: "d3/a",
            flags: 2,
        },
        Mkdir {
            path: "d2/s",
            mode: 0o2775,
        },
        SetXattr {
            path: "d3/b",
            name: "user.n",
            value: 2,
        },
        Read {
            path: "x",
            off: 0,
            len: 10,
        },
        Readdir { path: "d3" },
    ]);
}

#[test]
fn rootless_integrity() {
    let Some((engine, creds)) = setup("unprivileged") else {
        return;
    };
    let actor = Actor::new(Some(creds));
    let cfg = common::integrity::Config {
        ops: common::env_u64("STACKO_E2E_INTEGRITY_OPS_ROOTLESS", 10_000),
        seed: common::seed_from_env("STACKO_E2E_SEED"),
        max_size: 2 * 1024 * 1024,
        max_io: 256 * 1024,
    };
    if let Err(m) = common::integrity::run(&engine, &actor, &cfg) {
        panic!("rootless integrity (seed {}): {m}", cfg.seed);
    }
}

// ---- Shrunk failures found while developing. ----

/// The user renames a root-owned lower symlink: it is copied up by the user, and its owner must
/// still show as root (stacko-overlay showed the user: user.* xattrs cannot be set on symlinks,
/// so the override must live elsewhere).
#[test]
fn regression_rootless_rename_root_owned_symlink() {
    replay(&[Rename {
        from: "c",
        to: "d2/x",
        flags: 0,
    }]);
}

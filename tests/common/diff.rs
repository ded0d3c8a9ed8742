//! Differential runner: the same operation sequence on kernel overlayfs (the oracle) and on the
//! engine under test, over identical lower layers, compared op by op and tree by tree.
//!
//! Per op: the outcome (value or errno) must be equal, or be one of the documented stacko
//! improvements listed in [`allowed_difference`], in the improvement's direction only; the
//! harness then applies the improvement's logical result to the kernel side (as `mv` would after
//! EXDEV, or re-linking hard links the kernel split on copy-up) so both sides stay comparable.
//! Per op, the engine must also keep `st_ino` across copy-up and rename, and keep hard links one
//! inode with the right `st_nlink` (issue 3, §3). After the sequence (and, in some cases, after
//! every op) the whole trees are compared ([`tree::compare`]); the engine is then unmounted and
//! remounted from its upper dir, and must show the same tree with the same inode numbers. The
//! lower layers must be byte-for-byte unchanged at the end.

use super::actor::Actor;
use super::layers::{self, Fixture, Flavor};
use super::mount::{EngineMount, EngineOpts, KernelOverlay};
use super::sys::{self, errno_name, Errno};
use super::tree::{self, Tree};
use super::Engine;
use proptest::prelude::*;
use std::path::{Path, PathBuf};

/// Paths the ops draw from: a few names over a few directories, so that ops collide.
pub const PATHS: &[&str] = &[
    "a", "b", "c", "s", "x", "y", "d1", "d2", "d3", "n", //
    "d1/a", "d1/b", "d1/c", "d1/s", "d1/x", "d1/y", //
    "d1/s/a", "d1/s/b", "d1/s/x", //
    "d2/a", "d2/b", "d2/s", "d2/x", //
    "d3/a", "d3/b", "d3/x", "d3/y", "d3/x/y", "d3/x/a", //
    "s/a", "s/b", "s/y", "n/a", "n/b",
];
/// Symlink targets: relative and without `..`, so no symlink can point out of the mount.
pub const TARGETS: &[&str] = &["a", "b", "s", "s/a", "x/y", "nonexistent", "c"];
/// Modes for mkdir/chmod/create.
pub const MODES: &[u32] = &[
    0o644, 0o600, 0o755, 0o4755, 0o2775, 0o1777, 0o000, 0o444, 0o666, 0o777,
];
/// Owners for chown.
pub const OWNERS: &[(u32, u32)] = &[(0, 0), (1000, 1000), (65534, 65534), (0, 100), (1002, 1002)];
/// User xattr names.
pub const XNAMES: &[&str] = &["user.k", "user.n"];

/// How a write opens its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// O_WRONLY.
    Plain,
    /// O_WRONLY|O_CREAT.
    Create,
    /// O_WRONLY|O_CREAT|O_EXCL.
    Excl,
    /// O_WRONLY|O_TRUNC.
    Trunc,
    /// O_WRONLY|O_CREAT|O_TRUNC.
    CreateTrunc,
    /// O_WRONLY|O_APPEND (writes go to the end whatever the offset).
    Append,
}

/// One filesystem operation. `Debug` output is valid Rust, so a failing sequence can be pasted
/// into a `regression_*` test.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// open (per `how`, mode `mode`), pwrite `len` pattern bytes at `off` (if len > 0), close.
    Write {
        path: &'static str,
        how: How,
        mode: u32,
        off: u64,
        len: usize,
        seed: u8,
    },
    /// truncate(2).
    Truncate { path: &'static str, len: u64 },
    /// open O_RDONLY, pread, close.
    Read {
        path: &'static str,
        off: u64,
        len: usize,
    },
    /// mkdir(2).
    Mkdir { path: &'static str, mode: u32 },
    /// rmdir(2).
    Rmdir { path: &'static str },
    /// unlink(2).
    Unlink { path: &'static str },
    /// renameat2(2); flags 0, 1 = RENAME_NOREPLACE, 2 = RENAME_EXCHANGE.
    Rename {
        from: &'static str,
        to: &'static str,
        flags: u32,
    },
    /// link(2).
    Link {
        from: &'static str,
        to: &'static str,
    },
    /// symlink(2).
    Symlink {
        target: &'static str,
        path: &'static str,
    },
    /// mknod(2) of a fifo, mode 0640.
    Mkfifo { path: &'static str },
    /// chmod(2).
    Chmod { path: &'static str, mode: u32 },
    /// chown(2).
    Chown {
        path: &'static str,
        uid: u32,
        gid: u32,
    },
    /// utimensat(2) with explicit times (follows symlinks).
    Utimens {
        path: &'static str,
        sec: i64,
        nsec: i64,
    },
    /// setxattr(2) (follows symlinks), value "v<value>".
    SetXattr {
        path: &'static str,
        name: &'static str,
        value: u8,
    },
    /// removexattr(2).
    RemoveXattr {
        path: &'static str,
        name: &'static str,
    },
    /// open O_WRONLY, fallocate(mode) (0, 1 = KEEP_SIZE, 3 = PUNCH_HOLE|KEEP_SIZE), close.
    Fallocate {
        path: &'static str,
        mode: i32,
        off: u64,
        len: u64,
    },
    /// readdir: names and d_types.
    Readdir { path: &'static str },
    /// lstat.
    Stat { path: &'static str },
}

/// The value an op returned.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    /// Success without a value.
    Unit,
    /// A byte count.
    N(u64),
    /// Data read.
    Data(Vec<u8>),
    /// A directory listing.
    List(Vec<(String, u8)>),
    /// lstat summary: kind, perm, uid, gid, size (non-dirs), nlink (non-dirs).
    Attr {
        kind: char,
        perm: u32,
        uid: u32,
        gid: u32,
        size: u64,
        nlink: u64,
    },
}

/// An op's outcome: value or errno.
pub type Outcome = Result<Val, Errno>;

/// Shows an outcome briefly.
pub fn show(o: &Outcome) -> String {
    match o {
        Ok(Val::Data(d)) if d.len() > 32 => format!("Ok(<{} bytes>)", d.len()),
        Ok(v) => format!("Ok({v:?})"),
        Err(e) => format!("Err({})", errno_name(*e)),
    }
}

fn p(root: &Path, rel: &str) -> PathBuf {
    root.join(rel)
}

/// Runs `op` under `root`.
pub fn apply(root: &Path, op: &Op) -> Outcome {
    use Op::*;
    match *op {
        Write {
            path,
            how,
            mode,
            off,
            len,
            seed,
        } => {
            let extra = match how {
                How::Plain => 0,
                How::Create => libc::O_CREAT,
                How::Excl => libc::O_CREAT | libc::O_EXCL,
                How::Trunc => libc::O_TRUNC,
                How::CreateTrunc => libc::O_CREAT | libc::O_TRUNC,
                How::Append => libc::O_APPEND,
            };
            let fd = sys::open(
                &p(root, path),
                libc::O_WRONLY | libc::O_NONBLOCK | extra,
                mode,
            )?;
            let data = layers::pattern(seed as u32, len);
            let n = if len == 0 {
                0
            } else if how == How::Append {
                sys::write_all(&fd, &data)?
            } else {
                sys::pwrite_all(&fd, &data, off)?
            };
            fd.close()?;
            Ok(Val::N(n as u64))
        }
        Truncate { path, len } => sys::truncate(&p(root, path), len).map(|_| Val::Unit),
        Read { path, off, len } => {
            let fd = sys::open(&p(root, path), libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
            let d = sys::pread(&fd, len, off)?;
            fd.close()?;
            Ok(Val::Data(d))
        }
        Mkdir { path, mode } => sys::mkdir(&p(root, path), mode).map(|_| Val::Unit),
        Rmdir { path } => sys::rmdir(&p(root, path)).map(|_| Val::Unit),
        Unlink { path } => sys::unlink(&p(root, path)).map(|_| Val::Unit),
        Rename { from, to, flags } => {
            sys::rename2(&p(root, from), &p(root, to), flags).map(|_| Val::Unit)
        }
        Link { from, to } => sys::link(&p(root, from), &p(root, to)).map(|_| Val::Unit),
        Symlink { target, path } => sys::symlink(target, &p(root, path)).map(|_| Val::Unit),
        Mkfifo { path } => sys::mknod(&p(root, path), libc::S_IFIFO | 0o640, 0).map(|_| Val::Unit),
        Chmod { path, mode } => sys::chmod(&p(root, path), mode).map(|_| Val::Unit),
        Chown { path, uid, gid } => sys::chown(&p(root, path), uid, gid).map(|_| Val::Unit),
        Utimens { path, sec, nsec } => {
            sys::utimens(&p(root, path), (sec - 5, 0), (sec, nsec), true).map(|_| Val::Unit)
        }
        SetXattr { path, name, value } => {
            sys::setxattr(&p(root, path), name, format!("v{value}").as_bytes(), true)
                .map(|_| Val::Unit)
        }
        RemoveXattr { path, name } => sys::removexattr(&p(root, path), name).map(|_| Val::Unit),
        Fallocate {
            path,
            mode,
            off,
            len,
        } => {
            let fd = sys::open(&p(root, path), libc::O_WRONLY | libc::O_NONBLOCK, 0)?;
            sys::fallocate(&fd, mode, off, len)?;
            fd.close()?;
            Ok(Val::Unit)
        }
        Readdir { path } => sys::readdir(&p(root, path)).map(Val::List),
        Stat { path } => {
            let st = sys::lstat(&p(root, path))?;
            let kind = sys::kind_of(st.st_mode);
            let dir = kind == 'd';
            Ok(Val::Attr {
                kind,
                perm: st.st_mode & 0o7777,
                uid: st.st_uid,
                gid: st.st_gid,
                size: if dir { 0 } else { st.st_size as u64 },
                nlink: if dir { 0 } else { st.st_nlink as u64 },
            })
        }
    }
}

/// A documented difference from kernel overlayfs that the harness accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// Kernel overlayfs (without `redirect_dir`) answers EXDEV to renaming a directory with
    /// lower-layer content; stacko renames it. Accepted only if the engine's outcome equals what
    /// `mv` semantics give (the harness replays the rename on the kernel side by copy + delete).
    DirRenameExdev,
    /// Kernel overlayfs (without `index=on`, impossible with `userxattr`) splits hard links on
    /// copy-up; stacko keeps them one inode. Accepted when the engine's group is intact; the
    /// harness re-links the kernel's names to the copied-up inode.
    HardLinkSplit,
    /// Kernel overlayfs shows the lower inode's stale `st_nlink` for a lower hard link whose
    /// sibling was removed or split; stacko shows the true count. Accepted only when the engine's
    /// value equals the harness's link model.
    NlinkStale,
    /// `rename(a, b)` (or RENAME_EXCHANGE) where `a` and `b` are hard links of one lower file:
    /// kernel overlayfs sees two inodes and removes `a` (or swaps them), changing the parents'
    /// mtimes; POSIX (and the VFS, for one inode, as in stacko) does nothing. Accepted when the
    /// engine kept both names; the harness re-creates `a` on the kernel side and restores the
    /// parents' times, and the tree comparison then checks the engine did nothing.
    RenameOntoOwnLink,
}

/// What the harness observed where kernel and engine differ.
#[derive(Debug)]
pub enum Observed<'a> {
    /// The outcome of one op differs.
    Op {
        op: &'a Op,
        kernel: &'a Outcome,
        engine: &'a Outcome,
        model_nlink: u64,
    },
    /// The link count of a non-directory differs (final or per-op tree comparison).
    Nlink {
        kernel: u64,
        engine: u64,
        model: u64,
    },
    /// A hard-link group: whether all names are one inode on each side.
    LinkGroup {
        kernel_joined: bool,
        engine_joined: bool,
    },
    /// After a successful rename or exchange of two names of one inode: whether the kernel
    /// changed anything (removed `a`, or touched the parents' mtimes), whether the engine kept `a`.
    RenameOntoOwnLink {
        kernel_changed: bool,
        engine_kept_source: bool,
    },
    /// A rename or exchange of two names of one inode (per the link model) whose outcome
    /// differs: kernel overlayfs can fail it (ESTALE after link(2) of a lower fifo, whose two
    /// names it shows as two inodes; EACCES/EPERM when the user may not write a parent, checked
    /// only because its two inodes differ); POSIX says it succeeds and does nothing, and the
    /// VFS returns 0 for one inode before any permission check (`vfs_rename`: `source ==
    /// target`; seen on ext4 as an ordinary user renaming onto its own link in a 0755 root dir).
    RenameOntoOwnLinkFailed {
        kernel: &'a Outcome,
        engine: &'a Outcome,
    },
}

/// The complete list of differences from kernel overlayfs the harness tolerates; each one is a
/// documented stacko improvement (issue 3, §3; NOTES "Overlay on-disk format") and is accepted
/// only in the direction of the improvement. Anything else is a failure.
pub fn allowed_difference(o: &Observed) -> Option<Allowed> {
    match *o {
        Observed::Op {
            op: Op::Rename { .. },
            kernel: Err(libc::EXDEV),
            engine,
            ..
        } if *engine != Err(libc::EXDEV) => Some(Allowed::DirRenameExdev),
        Observed::Op {
            op: Op::Stat { .. },
            kernel:
                Ok(Val::Attr {
                    kind: k0,
                    perm: k1,
                    uid: k2,
                    gid: k3,
                    size: k4,
                    nlink: kn,
                }),
            engine:
                Ok(Val::Attr {
                    kind: e0,
                    perm: e1,
                    uid: e2,
                    gid: e3,
                    size: e4,
                    nlink: en,
                }),
            model_nlink,
        } if (k0, k1, k2, k3, k4) == (e0, e1, e2, e3, e4) && kn != en && *en == model_nlink => {
            Some(Allowed::NlinkStale)
        }
        Observed::Nlink {
            kernel,
            engine,
            model,
        } if kernel != engine && engine == model => Some(Allowed::NlinkStale),
        Observed::LinkGroup {
            kernel_joined: false,
            engine_joined: true,
        } => Some(Allowed::HardLinkSplit),
        Observed::RenameOntoOwnLink {
            kernel_changed: true,
            engine_kept_source: true,
        } => Some(Allowed::RenameOntoOwnLink),
        Observed::RenameOntoOwnLinkFailed {
            kernel: Err(libc::ESTALE | libc::EACCES | libc::EPERM),
            engine: Ok(Val::Unit),
        } => Some(Allowed::RenameOntoOwnLink),
        _ => None,
    }
}

/// The harness's model of which visible names are one inode.
#[derive(Clone, Debug, Default)]
pub struct Links {
    groups: Vec<Vec<String>>,
}

fn under(p: &str, dir: &str) -> bool {
    p == dir || (p.len() > dir.len() && p.starts_with(dir) && p.as_bytes()[dir.len()] == b'/')
}

fn reprefix(p: &str, from: &str, to: &str) -> String {
    format!("{to}{}", &p[from.len()..])
}

impl Links {
    /// Starts from the fixture's groups.
    pub fn new(groups: &[Vec<String>]) -> Links {
        Links {
            groups: groups.to_vec(),
        }
    }
    fn find(&self, p: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.iter().any(|m| m == p))
    }
    /// Expected st_nlink of a non-directory.
    pub fn count(&self, p: &str) -> u64 {
        self.find(p)
            .map(|i| self.groups[i].len() as u64)
            .unwrap_or(1)
    }
    /// True when `a` and `b` are names of one inode.
    pub fn same(&self, a: &str, b: &str) -> bool {
        a == b || matches!((self.find(a), self.find(b)), (Some(x), Some(y)) if x == y)
    }
    /// Groups with more than one name.
    pub fn multi(&self) -> Vec<Vec<String>> {
        self.groups
            .iter()
            .filter(|g| g.len() > 1)
            .cloned()
            .collect()
    }
    fn remove(&mut self, p: &str) {
        for g in &mut self.groups {
            g.retain(|m| !under(m, p));
        }
        self.groups.retain(|g| !g.is_empty());
    }
    /// Applies a successful op.
    pub fn apply(&mut self, op: &Op) {
        match *op {
            Op::Link { from, to } => match self.find(from) {
                Some(i) => self.groups[i].push(to.to_string()),
                None => self.groups.push(vec![from.to_string(), to.to_string()]),
            },
            Op::Unlink { path } => self.remove(path),
            Op::Rename { from, to, flags } => {
                if from == to {
                    return;
                }
                if flags & libc::RENAME_EXCHANGE != 0 {
                    for g in &mut self.groups {
                        for m in g.iter_mut() {
                            if under(m, from) {
                                *m = reprefix(m, from, to);
                            } else if under(m, to) {
                                *m = reprefix(m, to, from);
                            }
                        }
                    }
                    return;
                }
                if self.same(from, to) {
                    return; // POSIX: renaming onto another name of the same file does nothing
                }
                self.remove(to);
                for g in &mut self.groups {
                    for m in g.iter_mut() {
                        if under(m, from) {
                            *m = reprefix(m, from, to);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// Which paths must keep their `st_ino` across a successful op: (path before, path after,
/// follow symlinks).
fn ino_keepers(op: &Op) -> Vec<(&'static str, &'static str, bool)> {
    use Op::*;
    match *op {
        Write { path, .. }
        | Truncate { path, .. }
        | Chmod { path, .. }
        | Chown { path, .. }
        | Utimens { path, .. }
        | SetXattr { path, .. }
        | RemoveXattr { path, .. }
        | Fallocate { path, .. } => vec![(path, path, true)],
        Link { from, .. } => vec![(from, from, false)],
        Rename { from, to, flags } if from != to => {
            if flags & libc::RENAME_EXCHANGE != 0 {
                vec![(from, to, false), (to, from, false)]
            } else {
                vec![(from, to, false)]
            }
        }
        _ => vec![],
    }
}

/// `mv` semantics for a rename the kernel refused with EXDEV, replayed on the kernel side by
/// copy + delete (as root). Returns the outcome a rename-capable overlay must give.
fn emulate_rename_by_copy(
    root: &Path,
    from: &str,
    to: &str,
    flags: u32,
) -> Result<Outcome, String> {
    let f = p(root, from);
    let t = p(root, to);
    let h = |what: &str, e: Errno| {
        format!(
            "harness: emulating rename {from} -> {to}: {what}: {}",
            errno_name(e)
        )
    };
    if flags & libc::RENAME_EXCHANGE != 0 {
        let t1 = t.with_file_name(".xchg1");
        let t2 = f.with_file_name(".xchg2");
        copy_tree(&f, &t1).map_err(|e| h("copy from", e))?;
        copy_tree(&t, &t2).map_err(|e| h("copy to", e))?;
        remove_tree(&f).map_err(|e| h("remove from", e))?;
        remove_tree(&t).map_err(|e| h("remove to", e))?;
        sys::rename2(&t2, &f, 0).map_err(|e| h("place to", e))?;
        sys::rename2(&t1, &t, 0).map_err(|e| h("place from", e))?;
        return Ok(Ok(Val::Unit));
    }
    match sys::lstat(&t) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
            if !sys::readdir(&t).map_err(|e| h("readdir to", e))?.is_empty() {
                return Ok(Err(libc::ENOTEMPTY));
            }
            sys::rmdir(&t).map_err(|e| h("rmdir to", e))?;
        }
        Ok(_) => return Ok(Err(libc::ENOTDIR)),
        Err(libc::ENOENT) => {}
        Err(e) => return Err(h("lstat to", e)),
    }
    copy_tree(&f, &t).map_err(|e| h("copy", e))?;
    remove_tree(&f).map_err(|e| h("remove", e))?;
    Ok(Ok(Val::Unit))
}

/// Copies a tree with owners, modes, xattrs and times (hard links are re-joined separately).
pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), Errno> {
    let st = sys::lstat(src)?;
    let perm = st.st_mode & 0o7777;
    let times = (
        (st.st_atime as i64, st.st_atime_nsec as i64),
        (st.st_mtime as i64, st.st_mtime_nsec as i64),
    );
    match sys::kind_of(st.st_mode) {
        'd' => {
            sys::mkdir(dst, 0o700)?;
            for (name, _) in sys::readdir(src)? {
                copy_tree(&src.join(&name), &dst.join(&name))?;
            }
        }
        'f' => sys::write_file(dst, &sys::read_file(src)?, 0o600)?,
        'l' => {
            let t = sys::readlink(src)?;
            sys::symlink(&String::from_utf8_lossy(&t), dst)?;
        }
        'p' => sys::mknod(dst, libc::S_IFIFO | 0o600, 0)?,
        _ => return Err(libc::EINVAL),
    }
    sys::lchown(dst, st.st_uid, st.st_gid)?;
    if sys::kind_of(st.st_mode) != 'l' {
        sys::chmod(dst, perm)?;
        for n in sys::llistxattr(src)? {
            if n.starts_with("user.") || n.starts_with("trusted.") {
                sys::setxattr(dst, &n, &sys::lgetxattr(src, &n)?, false)?;
            }
        }
    }
    sys::utimens(dst, times.0, times.1, false)
}

/// Removes a tree.
pub fn remove_tree(p: &Path) -> Result<(), Errno> {
    let st = sys::lstat(p)?;
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        for (name, _) in sys::readdir(p)? {
            remove_tree(&p.join(name))?;
        }
        sys::rmdir(p)
    } else {
        sys::unlink(p)
    }
}

/// The real identity of a kernel-side name: (is in the upper dir, inode number there or in the
/// lower layer). Kernel overlayfs's own `st_ino` is not usable for this: after a copy-up, a
/// name reached through the origin reports the lower inode number and a name created by
/// link(2) reports the upper one, for the same inode.
fn kernel_identity(
    k_upper: &Path,
    k_root: &Path,
    m: &str,
) -> Result<(bool, u64, libc::stat), String> {
    if let Ok(st) = sys::lstat(&k_upper.join(m)) {
        let whiteout = st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0;
        if !whiteout {
            return Ok((true, st.st_ino as u64, st));
        }
    }
    let st = sys::lstat(&p(k_root, m))
        .map_err(|e| format!("harness: lstat {m} on the kernel side: {}", errno_name(e)))?;
    Ok((false, st.st_ino as u64, st))
}

/// True when all names of `group` are one inode on the kernel side.
fn kernel_joined(k_upper: &Path, k_root: &Path, group: &[String]) -> Result<bool, String> {
    let ids: Vec<(bool, u64)> = group
        .iter()
        .map(|m| kernel_identity(k_upper, k_root, m).map(|(u, i, _)| (u, i)))
        .collect::<Result<_, _>>()?;
    Ok(ids.iter().all(|x| *x == ids[0]))
}

/// Makes every name of `group` one inode again on the kernel side: the copied-up name (most
/// recently changed) wins, the others are replaced by hard links to it.
fn rejoin(k_upper: &Path, root: &Path, group: &[String]) -> Result<(), String> {
    let ids: Vec<(String, (bool, u64, libc::stat))> = group
        .iter()
        .map(|m| kernel_identity(k_upper, root, m).map(|id| (m.clone(), id)))
        .collect::<Result<_, _>>()?;
    let canon = ids
        .iter()
        .max_by_key(|(_, (up, _, s))| (*up, s.st_ctime, s.st_ctime_nsec))
        .map(|(m, (up, ino, _))| (m.clone(), (*up, *ino)))
        .expect("non-empty group");
    for (m, (up, ino, _)) in &ids {
        if (*up, *ino) != canon.1 {
            let target = p(root, m);
            let tmp = target.with_file_name(".rejoin");
            // The re-link is the harness's doing: keep the parent's times as they were.
            let parent = target.parent().expect("parent").to_path_buf();
            let pst = sys::lstat(&parent)
                .map_err(|e| format!("harness: rejoin lstat parent of {m}: {}", errno_name(e)))?;
            sys::link(&p(root, &canon.0), &tmp).map_err(|e| {
                format!("harness: rejoin link {} -> {m}: {}", canon.0, errno_name(e))
            })?;
            sys::rename2(&tmp, &target, 0)
                .map_err(|e| format!("harness: rejoin rename onto {m}: {}", errno_name(e)))?;
            sys::utimens(
                &parent,
                (pst.st_atime as i64, pst.st_atime_nsec as i64),
                (pst.st_mtime as i64, pst.st_mtime_nsec as i64),
                false,
            )
            .map_err(|e| {
                format!(
                    "harness: rejoin restoring times of the parent of {m}: {}",
                    errno_name(e)
                )
            })?;
        }
    }
    if !kernel_joined(k_upper, root, group)? {
        return Err(format!("harness: rejoin of {group:?} did not join them"));
    }
    Ok(())
}

/// Env var: `1` = do not require stacko's improvements (for measuring peers like fuse-overlayfs;
/// never set in CI).
pub const ENV_LAX: &str = "STACKO_E2E_LAX";

fn lax() -> bool {
    std::env::var(ENV_LAX).map(|v| v == "1").unwrap_or(false)
}

/// The state of one differential case: two mounts over identical fixtures.
pub struct Case {
    // Field order = drop order: mounts go before the directory holding them.
    engine_mount: EngineMount,
    kernel_mount: KernelOverlay,
    actor_creds: Option<(u32, u32)>,
    k_root: PathBuf,
    k_upper: PathBuf,
    e_root: PathBuf,
    k_fixture: Fixture,
    e_fixture: Fixture,
    k_lowers_before: Vec<Tree>,
    e_lowers_before: Vec<Tree>,
    links: Links,
    transcript: Vec<String>,
    engine: Engine,
    _dir: tempfile::TempDir,
}

fn prepare_side(base: &Path, flavor: Flavor, owner: Option<(u32, u32)>) -> Fixture {
    std::fs::create_dir_all(base).expect("mkdir side");
    let fx = layers::build_diff_lowers(base, flavor);
    for d in ["u", "w", "m"] {
        let dp = base.join(d);
        sys::mkdir(&dp, 0o755).expect("mkdir u/w/m");
        if let Some((uid, gid)) = owner {
            sys::lchown(&dp, uid, gid).expect("chown u/w/m");
        }
    }
    sys::utimens(
        &base.join("u"),
        (1_300_000_007, 0),
        (1_300_000_000, 0),
        false,
    )
    .expect("utimens upper");
    fx
}

impl Case {
    /// Builds both sides and mounts them. `actor` performs every op and snapshot (as the user in
    /// the rootless tier); the engine then runs as that user too.
    pub fn start(engine: &Engine, flavor: Flavor, actor: &Actor) -> Result<Case, String> {
        let dir = super::tempdir("stacko-diff-");
        let kb = dir.path().join("k");
        let eb = dir.path().join("e");
        let user = actor.creds;
        let k_fixture = prepare_side(&kb, flavor, user);
        let e_fixture = prepare_side(&eb, flavor, user);
        let k_lowers_before = k_fixture
            .lowers
            .iter()
            .map(|l| tree::raw_snapshot(l))
            .collect();
        let e_lowers_before = e_fixture
            .lowers
            .iter()
            .map(|l| tree::raw_snapshot(l))
            .collect();
        let kernel_mount = KernelOverlay::mount(
            &k_fixture.lowers,
            &kb.join("u"),
            &kb.join("w"),
            &kb.join("m"),
        )?;
        let opts = EngineOpts {
            lowers: e_fixture.lowers.clone(),
            upper_work: Some((eb.join("u"), eb.join("w"))),
            mnt: eb.join("m"),
            user,
            log: dir.path().join("engine.log"),
        };
        let engine_mount = EngineMount::mount(engine, &opts)?;
        Ok(Case {
            engine_mount,
            kernel_mount,
            actor_creds: user,
            k_root: kb.join("m"),
            k_upper: kb.join("u"),
            e_root: eb.join("m"),
            links: Links::new(&k_fixture.link_groups),
            k_fixture,
            e_fixture,
            k_lowers_before,
            e_lowers_before,
            transcript: Vec::new(),
            engine: engine.clone(),
            _dir: dir,
        })
    }

    fn fail(&self, msg: String) -> String {
        let tail = self.engine_mount.log();
        let tail: String = tail
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        format!(
            "{msg}\n--- transcript (op -> kernel / engine) ---\n{}\n--- engine log (tail) ---\n{tail}",
            self.transcript.join("\n")
        )
    }

    fn snapshots(&self, actor: &Actor) -> (Tree, Tree) {
        let (k, e) = (self.k_root.clone(), self.e_root.clone());
        actor.run(move || (tree::snapshot(&k), tree::snapshot(&e)))
    }

    fn compare_trees(&self, actor: &Actor, when: &str) -> Result<(Tree, Tree), String> {
        let (k, e) = self.snapshots(actor);
        let links = self.links.clone();
        let judge = move |path: &str, kn: u64, en: u64| {
            allowed_difference(&Observed::Nlink {
                kernel: kn,
                engine: en,
                model: links.count(path),
            })
            .is_some()
        };
        let mut d = tree::compare(&k, &e, &judge);
        if !lax() {
            // The engine's link count must be the true one, even where the kernel's is stale
            // (e.g. a lower hard link whose sibling was unlinked) and both agree.
            for (path, n) in &e {
                if n.kind != 'd' && n.kind != '!' && n.nlink != self.links.count(path) {
                    d.push(format!(
                        "/{path}: engine nlink {} but the file has {} names",
                        n.nlink,
                        self.links.count(path)
                    ));
                }
            }
        }
        if d.is_empty() {
            Ok((k, e))
        } else {
            Err(self.fail(format!("trees differ {when}:\n  {}", d.join("\n  "))))
        }
    }

    /// Runs `op` on both sides and checks it (see the module doc).
    pub fn step(&mut self, actor: &Actor, i: usize, op: &Op) -> Result<(), String> {
        let strict = !lax();
        let keep = ino_keepers(op);
        let e_root = self.e_root.clone();
        let k_root = self.k_root.clone();
        let pre: Vec<Option<u64>> = {
            let (r, keep) = (e_root.clone(), keep.clone());
            actor.run(move || {
                keep.iter()
                    .map(|(b, _, follow)| ino_of(&r, b, *follow))
                    .collect()
            })
        };
        // Parent times on the kernel side before a rename onto another name of the same file,
        // for the RenameOntoOwnLink fix-up (POSIX: such a rename changes nothing).
        let own_link_parent_times: Vec<(PathBuf, libc::stat)> = match *op {
            Op::Rename { from, to, flags }
                if flags != libc::RENAME_NOREPLACE && from != to && self.links.same(from, to) =>
            {
                [from, to]
                    .iter()
                    .filter_map(|x| {
                        let par = p(&k_root, x).parent()?.to_path_buf();
                        sys::lstat(&par).ok().map(|st| (par, st))
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        let k = {
            let (r, op) = (k_root.clone(), op.clone());
            actor.run(move || apply(&r, &op))
        };
        let e = {
            let (r, op) = (e_root.clone(), op.clone());
            actor.run(move || apply(&r, &op))
        };
        self.transcript.push(format!(
            "#{i} {op:?} -> kernel {} / engine {}",
            show(&k),
            show(&e)
        ));
        if strict {
            if let (Op::Rename { .. }, Err(libc::EXDEV)) = (op, &e) {
                return Err(self.fail(format!(
                    "op #{i} {op:?}: engine answered EXDEV to a rename inside one mount (issue 3 §3: renaming a lower directory must work)"
                )));
            }
        }
        if k != e {
            let model_nlink = match op {
                Op::Stat { path } => self.links.count(path),
                _ => 0,
            };
            let own_link = matches!(*op, Op::Rename { from, to, flags }
                if flags != libc::RENAME_NOREPLACE && from != to && self.links.same(from, to));
            let observed = if own_link {
                Observed::RenameOntoOwnLinkFailed {
                    kernel: &k,
                    engine: &e,
                }
            } else {
                Observed::Op {
                    op,
                    kernel: &k,
                    engine: &e,
                    model_nlink,
                }
            };
            match allowed_difference(&observed) {
                Some(Allowed::DirRenameExdev) => {
                    let Op::Rename { from, to, flags } = *op else {
                        unreachable!()
                    };
                    let ideal = emulate_rename_by_copy(&k_root, from, to, flags)
                        .map_err(|m| self.fail(m))?;
                    if ideal != e {
                        return Err(self.fail(format!(
                            "op #{i} {op:?}: kernel EXDEV; expected the engine's rename to give {} (mv semantics), got {}",
                            show(&ideal),
                            show(&e)
                        )));
                    }
                    self.transcript.push(format!(
                        "   (allowed: {:?}; kernel side replayed by copy)",
                        Allowed::DirRenameExdev
                    ));
                }
                Some(a) => self.transcript.push(format!("   (allowed: {a:?})")),
                None => {
                    return Err(self.fail(format!(
                        "op #{i} {op:?}: outcome differs: kernel {} vs engine {}",
                        show(&k),
                        show(&e)
                    )))
                }
            }
        }
        if e.is_ok() {
            // rename/exchange of two names of the same inode: POSIX (and the VFS, for one inode)
            // says nothing happens.
            if let Op::Rename { from, to, flags } = *op {
                if flags != libc::RENAME_NOREPLACE && from != to && self.links.same(from, to) {
                    let (kr, er) = (k_root.clone(), e_root.clone());
                    let (kk, ek) = actor.run(move || {
                        (
                            sys::lstat(&kr.join(from)).is_ok(),
                            sys::lstat(&er.join(from)).is_ok(),
                        )
                    });
                    let times_changed = own_link_parent_times.iter().any(|(par, st)| {
                        sys::lstat(par)
                            .map(|n| {
                                (n.st_mtime, n.st_mtime_nsec) != (st.st_mtime, st.st_mtime_nsec)
                            })
                            .unwrap_or(true)
                    });
                    let kernel_changed = !kk || times_changed;
                    let obs = Observed::RenameOntoOwnLink {
                        kernel_changed,
                        engine_kept_source: ek,
                    };
                    match allowed_difference(&obs) {
                        Some(a) => {
                            if !kk {
                                sys::link(&k_root.join(to), &k_root.join(from))
                                    .map_err(|er| self.fail(format!("harness: re-creating {from}: {}", errno_name(er))))?;
                            }
                            for (par, st) in &own_link_parent_times {
                                sys::utimens(
                                    par,
                                    (st.st_atime as i64, st.st_atime_nsec as i64),
                                    (st.st_mtime as i64, st.st_mtime_nsec as i64),
                                    false,
                                )
                                .map_err(|er| self.fail(format!("harness: restoring times of {}: {}", par.display(), errno_name(er))))?;
                            }
                            self.transcript.push(format!("   (allowed: {a:?}; kernel side made a no-op)"));
                        }
                        None if ek => {}
                        None if !strict => {
                            if flags == 0 {
                                self.links.remove(from);
                            }
                        }
                        None => {
                            return Err(self.fail(format!(
                                "op #{i} {op:?}: {from} and {to} are one file: POSIX rename must do nothing, but the engine removed {from}"
                            )))
                        }
                    }
                }
            }
            self.links.apply(op);
        }
        // st_ino must survive copy-up and rename on the engine.
        if e.is_ok() && !keep.is_empty() {
            let (r, keep2) = (e_root.clone(), keep.clone());
            let post: Vec<Option<u64>> = actor.run(move || {
                keep2
                    .iter()
                    .map(|(_, a, follow)| ino_of(&r, a, *follow))
                    .collect()
            });
            for ((b, a, _), (x, y)) in keep.iter().zip(pre.iter().zip(post.iter())) {
                if let (Some(x), Some(y)) = (x, y) {
                    if x != y && strict {
                        return Err(self.fail(format!(
                            "op #{i} {op:?}: engine st_ino of {b} was {x} before, {a} is {y} after (must be stable across copy-up/rename)"
                        )));
                    }
                }
            }
        }
        // Hard links: one inode with the right count on the engine; re-join the kernel's.
        for g in self.links.multi() {
            let (er, g2) = (e_root.clone(), g.clone());
            let es = actor.run(move || {
                g2.iter()
                    .map(|m| sys::lstat(&er.join(m)).map(|s| (s.st_ino, s.st_nlink as u64)))
                    .collect::<Vec<_>>()
            });
            // Names the actor cannot reach (e.g. a parent dir chmod'ed to no search
            // permission) on both sides, with the same errno, cannot be checked.
            if es.iter().any(|r| r.is_err()) {
                let (kr, g3) = (k_root.clone(), g.clone());
                let ks = actor.run(move || {
                    g3.iter()
                        .map(|m| sys::lstat(&kr.join(m)).map(|_| ()).err())
                        .collect::<Vec<_>>()
                });
                let unreachable_both = es.iter().zip(ks.iter()).any(
                    |(e, k)| matches!((e, k), (Err(x), Some(y)) if x == y && *x == libc::EACCES),
                );
                if unreachable_both {
                    continue;
                }
            }
            let e_ok = es.iter().all(|r| r.is_ok())
                && es
                    .iter()
                    .all(|r| r.as_ref().map(|x| x.0).ok() == es[0].as_ref().map(|x| x.0).ok())
                && es
                    .iter()
                    .all(|r| r.as_ref().map(|x| x.1).ok() == Some(g.len() as u64));
            let k_joined = kernel_joined(&self.k_upper, &k_root, &g)
                .map_err(|m| self.fail(format!("{m} (link model {g:?})")))?;
            if !e_ok && strict {
                return Err(self.fail(format!(
                    "after op #{i} {op:?}: engine hard links {g:?} are not one inode with nlink {}: (ino, nlink) = {es:?}",
                    g.len()
                )));
            }
            if !k_joined {
                match allowed_difference(&Observed::LinkGroup {
                    kernel_joined: false,
                    engine_joined: e_ok,
                }) {
                    Some(_) => rejoin(&self.k_upper, &k_root, &g).map_err(|m| self.fail(m))?,
                    None => {} // lax mode, engine split like the kernel
                }
            }
        }
        Ok(())
    }

    /// Finishes a case: compare trees, remount the engine (same tree, same inode numbers),
    /// unmount both, check the lower layers are unchanged.
    pub fn finish(mut self, actor: &Actor) -> Result<(), String> {
        let strict = !lax();
        let (_, e_before) = self.compare_trees(actor, "at the end")?;
        self.engine_mount
            .unmount()
            .map_err(|m| self.fail(format!("engine unmount: {m}")))?;
        let opts = self.engine_mount.opts().clone();
        self.engine_mount = EngineMount::mount(&self.engine, &opts)
            .map_err(|m| self.fail(format!("engine remount: {m}")))?;
        self.transcript
            .push("-- engine unmounted and remounted --".into());
        let (_, e_after) = self.compare_trees(actor, "after the engine was remounted")?;
        let moved = tree::ino_changes(&e_before, &e_after);
        if !moved.is_empty() && strict {
            return Err(self.fail(format!(
                "st_ino changed across an engine remount:\n  {}",
                moved.join("\n  ")
            )));
        }
        self.engine_mount
            .unmount()
            .map_err(|m| self.fail(format!("engine unmount: {m}")))?;
        self.kernel_mount
            .unmount()
            .map_err(|m| self.fail(format!("kernel unmount: {m}")))?;
        for (fx, before, who) in [
            (&self.k_fixture, &self.k_lowers_before, "kernel"),
            (&self.e_fixture, &self.e_lowers_before, "engine"),
        ] {
            for (l, b) in fx.lowers.iter().zip(before.iter()) {
                let after = tree::raw_snapshot(l);
                let d = tree::compare_raw(b, &after);
                if !d.is_empty() {
                    return Err(self.fail(format!(
                        "{who}: lower layer {} was modified:\n  {}",
                        l.display(),
                        d.join("\n  ")
                    )));
                }
            }
        }
        let _ = self.actor_creds;
        Ok(())
    }

    /// Checks the freshly mounted trees agree before any op.
    pub fn check_initial(&self, actor: &Actor) -> Result<(), String> {
        self.compare_trees(actor, "right after mounting")
            .map(|_| ())
    }

    /// Compares the trees now (used after every op in some cases).
    pub fn check_now(&self, actor: &Actor, i: usize) -> Result<(), String> {
        self.compare_trees(actor, &format!("after op #{i}"))
            .map(|_| ())
    }

    /// The mount roots (kernel, engine).
    pub fn roots(&self) -> (PathBuf, PathBuf) {
        (self.k_root.clone(), self.e_root.clone())
    }
}

fn ino_of(root: &Path, rel: &str, follow: bool) -> Option<u64> {
    let q = root.join(rel);
    let st = if follow {
        sys::stat(&q)
    } else {
        sys::lstat(&q)
    };
    st.ok().map(|s| s.st_ino as u64)
}

/// Runs one whole case; `Err` carries a full report.
pub fn run_case(
    engine: &Engine,
    flavor: Flavor,
    actor: &Actor,
    ops: &[Op],
    end_only: bool,
) -> Result<(), String> {
    let mut case = Case::start(engine, flavor, actor)?;
    case.check_initial(actor)?;
    for (i, op) in ops.iter().enumerate() {
        let r = case.step(actor, i, op).and_then(|()| {
            if end_only {
                Ok(())
            } else {
                case.check_now(actor, i)
            }
        });
        if let Err(m) = r {
            return Err(format!(
                "{m}\n--- replay (ops up to the failing one) ---\n{}",
                replay_text(&ops[..=i])
            ));
        }
    }
    case.finish(actor)
        .map_err(|m| format!("{m}\n--- replay ---\n{}", replay_text(ops)))
}

/// The ops as Rust source for a `regression_*` test.
pub fn replay_text(ops: &[Op]) -> String {
    let mut s = String::from("replay(&[\n");
    for op in ops {
        s.push_str(&format!("    {op:?},\n"));
    }
    s.push_str("]);");
    s
}

// ---- proptest strategies ----

fn path() -> impl Strategy<Value = &'static str> {
    prop::sample::select(PATHS)
}

fn mode() -> impl Strategy<Value = u32> {
    prop::sample::select(MODES)
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 0..5000u64, 65_000..75_000u64, Just(200_000u64)]
}

fn length() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        1..200usize,
        4000..9000usize,
        Just(70_000usize)
    ]
}

fn how() -> impl Strategy<Value = How> {
    prop_oneof![
        Just(How::Plain),
        Just(How::Create),
        Just(How::Excl),
        Just(How::Trunc),
        Just(How::CreateTrunc),
        Just(How::Append)
    ]
}

/// One random op.
pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => (path(), how(), prop::sample::select(&[0o644u32, 0o600, 0o755][..]), offset(), length(), any::<u8>())
            .prop_map(|(path, how, mode, off, len, seed)| Op::Write { path, how, mode, off, len, seed }),
        5 => (path(), prop_oneof![Just(0u64), 1..5000u64, 60_000..80_000u64]).prop_map(|(path, len)| Op::Truncate { path, len }),
        6 => (path(), offset(), 1..80_000usize).prop_map(|(path, off, len)| Op::Read { path, off, len }),
        6 => (path(), mode()).prop_map(|(path, mode)| Op::Mkdir { path, mode }),
        4 => path().prop_map(|path| Op::Rmdir { path }),
        6 => path().prop_map(|path| Op::Unlink { path }),
        10 => (path(), path(), prop::sample::select(&[0u32, 0, 1, 2][..])).prop_map(|(from, to, flags)| Op::Rename { from, to, flags }),
        4 => (path(), path()).prop_map(|(from, to)| Op::Link { from, to }),
        3 => (prop::sample::select(TARGETS), path()).prop_map(|(target, path)| Op::Symlink { target, path }),
        2 => path().prop_map(|path| Op::Mkfifo { path }),
        4 => (path(), mode()).prop_map(|(path, mode)| Op::Chmod { path, mode }),
        3 => (path(), prop::sample::select(OWNERS)).prop_map(|(path, (uid, gid))| Op::Chown { path, uid, gid }),
        3 => (path(), 0..1000i64, prop::sample::select(&[0i64, 123_456_789][..]))
            .prop_map(|(path, k, nsec)| Op::Utimens { path, sec: 1_350_000_000 + k * 1000, nsec }),
        4 => (path(), prop::sample::select(XNAMES), 0..4u8).prop_map(|(path, name, value)| Op::SetXattr { path, name, value }),
        2 => (path(), prop::sample::select(XNAMES)).prop_map(|(path, name)| Op::RemoveXattr { path, name }),
        4 => (path(), prop::sample::select(&[0i32, 1, 3][..]), offset(), 1..70_000u64)
            .prop_map(|(path, mode, off, len)| Op::Fallocate { path, mode, off, len }),
        4 => path().prop_map(|path| Op::Readdir { path }),
        4 => path().prop_map(|path| Op::Stat { path }),
    ]
}

/// A case: an op sequence and `end_only` (compare whole trees only at the end; `false`, the
/// value proptest shrinks towards, compares after every op so that a shrunk failure names the
/// first op that diverges).
///
/// Each generated slot holds `Option<Op>` (almost always `Some`): shrinking turns slots into
/// `None`, so a shrunk sequence can be shorter than `min` while fresh cases have `min..=max` ops.
pub fn case(min: usize, max: usize) -> impl Strategy<Value = (Vec<Op>, bool)> {
    (
        prop::collection::vec(prop::option::weighted(0.98, op()), min..=max)
            .prop_map(|v| v.into_iter().flatten().collect::<Vec<Op>>()),
        any::<bool>(),
    )
}
